//! Validation of a run folder: the spec's expected outputs and its validation command.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hpcstage_slurm::process::{kill_group, own_group};
use hpcstage_staging::walk::STATE_DIR;
use hpcstage_template::{Expected, OutputCheck, Rendered};
use serde::Serialize;

use crate::error::Result;

/// The result of validating a run folder.
#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    pub checks: Vec<OutputCheck>,
    pub command: Option<CommandResult>,
    pub ok: bool,
}

/// The spec's validation command and how it went.
#[derive(Debug, Clone, Serialize)]
pub struct CommandResult {
    pub command: String,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub output: String,
}

/// Checks the spec's expected outputs and runs its validation command.
pub fn validate(rendered: &Rendered, run_dir: &Path, timeout: Duration) -> Result<Validation> {
    let checks = rendered.check_outputs(run_dir)?;
    let command = rendered
        .outputs
        .validate
        .as_ref()
        .map(|cmd| run_validation(cmd, run_dir, timeout));
    let ok = checks.iter().all(|c| c.ok) && command.as_ref().is_none_or(|c| c.exit_code == Some(0));
    Ok(Validation {
        checks,
        command,
        ok,
    })
}

fn run_validation(cmd: &str, dir: &Path, timeout: Duration) -> CommandResult {
    let out_path = dir.join(STATE_DIR).join("validate.out");
    let result = (|| -> std::io::Result<(Option<i32>, bool)> {
        let out = std::fs::File::create(&out_path)?;
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg(cmd)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // Its own process group, so that a timeout stops what it started too.
        let mut child = own_group(&mut command).spawn()?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok((status.code(), false));
            }
            if started.elapsed() > timeout {
                kill_group(child.id());
                let _ = child.wait();
                return Ok((None, true));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })();
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let output: String = output.chars().take(4000).collect();
    match result {
        Ok((exit_code, timed_out)) => CommandResult {
            command: cmd.to_string(),
            exit_code,
            timed_out,
            output,
        },
        Err(e) => CommandResult {
            command: cmd.to_string(),
            exit_code: None,
            timed_out: false,
            output: format!("could not run the validation command: {e}"),
        },
    }
}

/// True when no expected output validated: no rule of one output per input matched a
/// file with content (the results themselves; a rule like the model's checksum, written
/// when the job starts, says nothing of them), or, without such rules, no rule did; and,
/// without any rules, the validation command failed.
pub(super) fn nothing_validates(v: &Validation) -> bool {
    if v.checks.is_empty() {
        return !v.ok;
    }
    let per_input: Vec<&OutputCheck> = v
        .checks
        .iter()
        .filter(|c| matches!(c.expected, Expected::Exactly(_)))
        .collect();
    let rules = if per_input.is_empty() {
        v.checks.iter().collect()
    } else {
        per_input
    };
    rules
        .iter()
        .all(|c| c.matched.iter().all(|m| c.empty.contains(m)))
}

/// What a partial pull lacks: each output rule that failed, with how many matched, and
/// the inputs (of `.hpcstage/inputs.list`) none of whose outputs of that rule is there,
/// told by the input's name before its first dot (`img2.tif` → `masks/img2.ome.tif`).
pub(super) fn missing_outputs(v: &Validation, run_dir: &Path) -> Vec<String> {
    let inputs: Vec<String> = hpcstage_template::read_inputs(run_dir)
        .unwrap_or_default()
        .iter()
        .map(|l| {
            let name = Path::new(l)
                .file_name()
                .map_or_else(|| l.to_string(), |n| n.to_string_lossy().into_owned());
            name.split('.').next().unwrap_or(&name).to_string()
        })
        .collect();
    let mut out = Vec::new();
    for c in v.checks.iter().filter(|c| !c.ok) {
        let good: Vec<&String> = c.matched.iter().filter(|m| !c.empty.contains(m)).collect();
        let stem = |m: &str| {
            let name = m.rsplit('/').next().unwrap_or(m);
            name.split('.').next().unwrap_or(name).to_string()
        };
        let have: std::collections::HashSet<String> = good.iter().map(|m| stem(m)).collect();
        let lacking: Vec<&String> = inputs.iter().filter(|i| !have.contains(*i)).collect();
        let mut line = format!("{}: {} of {}", c.glob, good.len(), expected(c.expected));
        if !c.empty.is_empty() {
            let _ = write!(line, "; empty: {}", c.empty.join(", "));
        }
        // Only when the rule is one output per input is an input without one a gap.
        if matches!(c.expected, Expected::Exactly(n) if n as usize == inputs.len())
            && !lacking.is_empty()
        {
            let names: Vec<&str> = lacking.iter().map(|s| s.as_str()).collect();
            let _ = write!(line, "; no output for input {}", names.join(", "));
        }
        out.push(line);
    }
    out.extend(command_failure(v));
    out
}

/// An output rule's expected count, in words.
fn expected(e: Expected) -> String {
    match e {
        Expected::AtLeast(n) => format!("at least {n}"),
        Expected::Exactly(n) => format!("{n}"),
    }
}

/// How the validation command failed, if it did.
fn command_failure(v: &Validation) -> Option<String> {
    let c = v.command.as_ref().filter(|c| c.exit_code != Some(0))?;
    Some(if c.timed_out {
        "validation command timed out".into()
    } else {
        match c.exit_code {
            Some(code) => format!("validation command exited {code}"),
            None => "validation command was killed by a signal".into(),
        }
    })
}

pub(super) fn summarize(v: &Validation) -> String {
    let mut parts: Vec<String> = v
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| {
            let mut text = format!(
                "{} matched {} (expected {})",
                c.glob,
                c.matched.len(),
                expected(c.expected)
            );
            if !c.empty.is_empty() {
                let _ = write!(text, ", {} of them empty", c.empty.len());
            }
            if !c.invalid.is_empty() {
                let _ = write!(text, ", {} of them invalid", c.invalid.len());
            }
            // Each invalid output named with its reason (validation.json lists them all).
            for bad in c.invalid.iter().take(10) {
                let _ = write!(text, "; {}: {}", bad.path, bad.reason);
            }
            text
        })
        .collect();
    parts.extend(command_failure(v));
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// True while `pid` exists and is not a zombie.
    fn running(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
    }

    #[test]
    fn a_validation_command_past_its_timeout_is_stopped_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(STATE_DIR)).unwrap();
        let result = run_validation(
            "sleep 300 & echo $! > child.pid; wait",
            dir.path(),
            Duration::from_millis(500),
        );
        assert!(result.timed_out, "{result:?}");
        let child = std::fs::read_to_string(dir.path().join("child.pid")).unwrap();
        let child = child.trim();
        let started = Instant::now();
        while running(child) {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the validation command's child {child} outlived its timeout"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
