//! Running one SLURM command: finding it, a cleaned environment, the timeout that
//! kills its process group, the retries with backoff, and the errors that name the
//! command line. See the module docs of [`super`] for the rules.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use std::process::Command;

use super::SlurmClient;
use crate::error::{Error, Result};
use crate::process::output_within;

/// Environment variables removed for query commands: exact names...
const CLEANED_VARS: &[&str] = &[
    "SQUEUE_FORMAT",
    "SQUEUE_FORMAT2",
    "SACCT_FORMAT",
    "SINFO_FORMAT",
    "SLURM_TIME_FORMAT",
    "SQUEUE_SORT",
];
/// ...and prefixes: `SQUEUE_USERS`, `SQUEUE_STATES`, `SQUEUE_PARTITION`,
/// `SQUEUE_ARRAY_UNIQUE` and friends filter or reshape what `squeue` lists.
const CLEANED_PREFIXES: &[&str] = &["SQUEUE_", "SACCT_", "SINFO_"];

/// One command to run.
#[derive(Debug)]
pub(super) struct Invocation {
    pub(super) program: PathBuf,
    pub(super) args: Vec<String>,
    pub(super) env: Vec<(String, String)>,
    pub(super) cwd: Option<PathBuf>,
    pub(super) clean_env: bool,
}

impl Invocation {
    /// The command as a user could paste it into a shell.
    pub(super) fn command_line(&self) -> String {
        let program = self.program.to_string_lossy();
        let words: Vec<&str> = std::iter::once(program.as_ref())
            .chain(self.args.iter().map(String::as_str))
            .collect();
        // Only a NUL byte cannot be quoted; such a word cannot reach a command anyway.
        shlex::try_join(words.iter().copied()).unwrap_or_else(|_| words.join(" "))
    }
}

/// How a single run ended.
pub(super) enum Outcome {
    Exited(Output),
    TimedOut,
}

/// What a failed command's stderr says about retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Failure {
    /// The request never reached the controller: safe to resend.
    NotDelivered,
    /// No answer; the request may or may not have been processed.
    Transient,
    /// A real answer (bad option, invalid partition, ...): retrying cannot help.
    Permanent,
}

pub(super) fn classify(stderr: &str) -> Failure {
    const NOT_DELIVERED: &[&str] = &[
        "connect failure",
        "connection refused",
        "temporarily unable to accept job",
    ];
    const TRANSIENT: &[&str] = &[
        "socket timed out",
        "unable to contact slurm controller",
        "zero bytes were transmitted",
        "communication connection failure",
        "connection reset",
        "transport endpoint is not connected",
        "unable to receive message",
        "unable to send message",
        "slurm_persist_conn_open",
        "problem talking to the database",
        "resource temporarily unavailable",
        "network is unreachable",
        "no route to host",
        "backup controller in standby mode",
        "temporary failure in name resolution",
    ];
    let s = stderr.to_ascii_lowercase();
    if NOT_DELIVERED.iter().any(|p| s.contains(p)) {
        Failure::NotDelivered
    } else if TRANSIENT.iter().any(|p| s.contains(p)) {
        Failure::Transient
    } else {
        Failure::Permanent
    }
}

pub(super) fn accounting_disabled(stderr: &str) -> bool {
    stderr
        .to_ascii_lowercase()
        .contains("accounting storage is disabled")
}

pub(super) fn invalid_job_id(stderr: &str) -> bool {
    stderr.to_ascii_lowercase().contains("invalid job id")
}

/// Stderr as a user should see it: lossy UTF-8, trimmed, at most 4 KiB.
pub(super) fn clean_stderr(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let mut end = text.len().min(4096);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

pub(super) fn current_uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

impl SlurmClient {
    /// The path of a SLURM command.
    pub(super) fn program(&self, name: &str) -> Result<PathBuf> {
        if let Some(dir) = &self.settings.bin_dir {
            let path = dir.join(name);
            return if path.is_file() {
                Ok(path)
            } else {
                Err(Error::NotInstalled {
                    program: path.display().to_string(),
                    on_path: false,
                })
            };
        }
        find_on_path(name, std::env::var_os("PATH")).ok_or_else(|| Error::NotInstalled {
            program: name.to_owned(),
            on_path: true,
        })
    }

    pub(super) fn query_invocation(&self, name: &str, args: Vec<String>) -> Result<Invocation> {
        Ok(Invocation {
            program: self.program(name)?,
            args,
            env: Vec::new(),
            cwd: None,
            clean_env: true,
        })
    }

    pub(super) fn command(&self, inv: &Invocation) -> Command {
        let mut cmd = Command::new(&inv.program);
        cmd.args(&inv.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if inv.clean_env {
            for var in CLEANED_VARS {
                cmd.env_remove(var);
            }
            for (key, _) in std::env::vars_os() {
                let k = key.to_string_lossy();
                if CLEANED_PREFIXES.iter().any(|p| k.starts_with(p)) {
                    cmd.env_remove(&key);
                }
            }
            cmd.env("LC_ALL", "C");
        }
        for (k, v) in &inv.env {
            cmd.env(k, v);
        }
        if let Some(dir) = &inv.cwd {
            cmd.current_dir(dir);
        }
        cmd
    }

    /// Runs once, within the timeout. Errors only when the command cannot be started.
    pub(super) fn run_once(&self, inv: &Invocation) -> Result<Outcome> {
        let mut tries = 0;
        loop {
            match output_within(&mut self.command(inv), self.settings.timeout) {
                Ok(Some(output)) => return Ok(Outcome::Exited(output)),
                Ok(None) => return Ok(Outcome::TimedOut),
                // ETXTBSY: a wrapper script just written is still open for writing in a
                // child another thread forked; that lasts until its exec.
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 5 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20 * tries));
                }
                Err(source) => {
                    return Err(Error::Spawn {
                        command: inv.command_line(),
                        error: source,
                    })
                }
            }
        }
    }

    /// Runs a query command, retrying timeouts and transient errors with backoff.
    /// Returns the output of the first run that exited with a non-transient result
    /// (success or not).
    pub(super) fn run_retrying(&self, inv: &Invocation) -> Result<Output> {
        let attempts = self.settings.retries + 1;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match self.run_once(inv)? {
                Outcome::Exited(out) if out.status.success() => return Ok(out),
                Outcome::Exited(out) => {
                    let stderr = clean_stderr(&out.stderr);
                    if classify(&stderr) == Failure::Permanent {
                        return Ok(out);
                    }
                    Error::ControllerUnreachable {
                        command: inv.command_line(),
                        attempts: attempt,
                        stderr,
                    }
                }
                Outcome::TimedOut => Error::Timeout {
                    command: inv.command_line(),
                    timeout: self.settings.timeout,
                    attempts: attempt,
                },
            };
            if attempt >= attempts {
                return Err(error);
            }
            std::thread::sleep(self.backoff(attempt));
        }
    }

    /// Runs a query command (retrying as [`Self::run_retrying`] does) and reads its
    /// output with `read`. `None` when it failed with a stderr `absent` recognises (a
    /// job id the controller does not know, accounting disabled); any other failure is
    /// an error naming the command.
    pub(super) fn ask<T>(
        &self,
        name: &str,
        args: Vec<String>,
        absent: fn(&str) -> bool,
        read: impl FnOnce(&str) -> Result<T>,
    ) -> Result<Option<T>> {
        let inv = self.query_invocation(name, args)?;
        let out = self.run_retrying(&inv)?;
        if !out.status.success() {
            if absent(&String::from_utf8_lossy(&out.stderr)) {
                return Ok(None);
            }
            return Err(failed(&inv, &out));
        }
        read(&String::from_utf8_lossy(&out.stdout))
            .map(Some)
            .map_err(|e| unexpected(&inv, e))
    }

    /// Like [`Self::ask`], for a command whose every failure is an error.
    pub(super) fn ask_text(&self, name: &str, args: Vec<String>) -> Result<String> {
        let text = self.ask(name, args, |_| false, |t| Ok(t.to_owned()))?;
        Ok(text.unwrap_or_default())
    }

    /// The delay after the `attempt`-th failure: exponential, capped, jittered between
    /// half and all of it.
    pub(super) fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(20);
        let full = self
            .settings
            .backoff_initial
            .saturating_mul(factor)
            .min(self.settings.backoff_max);
        let half = full / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

pub(super) fn failed(inv: &Invocation, out: &Output) -> Error {
    Error::CommandFailed {
        command: inv.command_line(),
        status: out.status,
        stderr: clean_stderr(&out.stderr),
    }
}

pub(super) fn unexpected(inv: &Invocation, e: Error) -> Error {
    match e {
        Error::Parse { what, text } => Error::UnexpectedOutput {
            command: inv.command_line(),
            what,
            text,
        },
        other => other,
    }
}

pub(super) fn find_on_path(name: &str, path: Option<OsString>) -> Option<PathBuf> {
    // An empty entry would mean the current folder: never look for SLURM there.
    let path = path?;
    let dirs = std::env::split_paths(&path).filter(|dir| !dir.as_os_str().is_empty());
    let path = std::env::join_paths(dirs).ok()?;
    let cwd = std::env::current_dir().ok()?;
    which::which_in(name, Some(path), cwd).ok()
}
