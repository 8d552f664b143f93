//! `hpcstage template list|show|render`: the job templates users can run.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use hpcstage_template::{InputListing, RenderContext, ResourceOverrides, Template, TemplateStore};

use super::ExitStatus;
use crate::args::{JobArgs, RenderArgs};
use crate::config::{absolute, Settings};
use crate::output;

/// Built-in templates overridden by the site, user and configured folders.
pub(crate) fn store(settings: &Settings) -> TemplateStore {
    TemplateStore::with_dirs(
        settings
            .template_dirs
            .iter()
            .filter(|d| d.is_dir())
            .cloned(),
    )
}

/// `-p key=value` pairs; a later value for the same key wins.
pub(crate) fn params(raw: &[String]) -> Result<BTreeMap<String, String>> {
    raw.iter()
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .with_context(|| format!("-p {p:?}: expected KEY=VALUE"))?;
            if k.is_empty() {
                bail!("-p {p:?}: the parameter name is empty");
            }
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Resource overrides from the command line.
/// Says which symbolic links the input globs matched and left out (inputs are regular
/// files).
pub(crate) fn note_skipped_links(rendered: &hpcstage_template::Rendered) {
    let links = &rendered.skipped_links;
    if links.is_empty() {
        return;
    }
    const SHOWN: usize = 5;
    let mut names: Vec<&str> = links.iter().take(SHOWN).map(String::as_str).collect();
    let more = links.len().saturating_sub(SHOWN);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    names.sort_unstable();
    output::note(format!(
        "skipped {} symbolic link{} among the inputs (inputs are regular files): {}{more}",
        links.len(),
        if links.len() == 1 { "" } else { "s" },
        names.join(", ")
    ));
}

pub(crate) fn overrides(job: &JobArgs) -> ResourceOverrides {
    ResourceOverrides {
        time: job.time.clone(),
        partition: job.partition.clone(),
        account: job.account.clone(),
        array: job.array.clone(),
        ..ResourceOverrides::default()
    }
}

pub(crate) fn list(settings: &Settings, json: bool) -> Result<ExitStatus> {
    let infos = store(settings).list()?;
    if json {
        let rows: Vec<_> = infos
            .iter()
            .map(|i| {
                serde_json::json!({
                    "name": i.name, "version": i.version, "description": i.description,
                    "workflow": i.workflow, "origin": i.origin.to_string(), "problem": i.problem,
                })
            })
            .collect();
        output::json(&rows);
        return Ok(ExitStatus::Success);
    }
    let mut t = output::table(&["name", "version", "workflow", "origin", "description"]);
    for i in &infos {
        let description = match &i.problem {
            Some(p) => format!("UNUSABLE: {p}"),
            None => i.description.clone(),
        };
        t.add_row(vec![
            i.name.clone(),
            i.version.clone(),
            i.workflow.clone(),
            i.origin.to_string(),
            description,
        ]);
    }
    output::data(t.to_string());
    Ok(ExitStatus::Success)
}

pub(crate) fn show(settings: &Settings, name: &str) -> Result<ExitStatus> {
    let t: Template = store(settings).get(name)?;
    let m = &t.spec.template;
    output::data(format!(
        "{} {} ({}) — {}",
        m.name, m.version, t.origin, m.description
    ));
    output::data(format!("results go to: results/{}/<run>/", m.workflow));
    let mut table = output::table(&["parameter", "type", "default", "help"]);
    for p in &t.spec.params {
        let kind = if p.choices.is_empty() {
            p.kind.to_string()
        } else {
            format!("one of {}", p.choices.join(", "))
        };
        table.add_row(vec![
            p.name.clone(),
            kind,
            p.default
                .as_ref()
                .map_or("(required)".to_string(), |d| d.as_text()),
            p.help.clone(),
        ]);
    }
    output::data(table.to_string());
    output::data(format!("\n--- {}.toml ---\n{}", m.name, t.spec.source));
    output::data(format!("--- {}.sbatch.j2 ---\n{}", m.name, t.body));
    Ok(ExitStatus::Success)
}

pub(crate) fn render(settings: &Settings, args: &RenderArgs) -> Result<ExitStatus> {
    let template = store(settings).get(&args.name)?;
    let run_dir = std::env::temp_dir().join(format!("hpcstage-render-{}", std::process::id()));
    let (input_dir, listing) = match &args.input {
        Some(dir) => (absolute(dir)?, InputListing::Scan),
        None => (
            PathBuf::from("/path/to/staged/dataset"),
            InputListing::Unknown,
        ),
    };
    let exe = std::env::current_exe().context("cannot find the hpcstage executable")?;
    let mut ctx = RenderContext::new(&run_dir, &input_dir, "RUN-ID", "TOKEN", exe);
    ctx.inputs = listing;
    ctx.resources = overrides(&args.job);
    let rendered = template.render(&params(&args.job.params)?, &ctx)?;
    note_skipped_links(&rendered);
    output::data(&rendered.script);
    if args.check {
        let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
        let script = dir.path().join("job.sbatch");
        fs_err::write(&script, &rendered.script)?;
        let out = test_only(&script, dir.path(), settings.client.timeout)?;
        let text = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!("sbatch --test-only rejected the script: {}", text.trim());
        }
        output::note(format!("sbatch --test-only: {}", text.trim()));
    }
    Ok(ExitStatus::Success)
}

/// `sbatch --test-only SCRIPT`, killed after `timeout` like every other SLURM call (a
/// controller that does not answer would otherwise hang `render --check`). Its output is
/// one line, so the pipes are read only once it has exited.
fn test_only(
    script: &std::path::Path,
    dir: &std::path::Path,
    timeout: std::time::Duration,
) -> Result<std::process::Output> {
    use std::process::{Command, Stdio};
    let mut cmd = Command::new("sbatch");
    cmd.arg("--test-only")
        .arg(script)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = hpcstage_slurm::process::own_group(&mut cmd)
        .spawn()
        .context("`sbatch --test-only` could not run (is SLURM installed here?)")?;
    let started = std::time::Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if started.elapsed() > timeout {
            hpcstage_slurm::process::kill_group(child.id());
            let _ = child.wait();
            bail!(
                "`sbatch --test-only` did not answer within {} (is the SLURM controller up? try `scontrol ping`)",
                humantime::format_duration(timeout)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
