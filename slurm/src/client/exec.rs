//! Running one SLURM command: finding it, a cleaned environment, the timeout that
//! kills its process group, the retries with backoff, and the errors that name the
//! command line. See the module docs of [`super`] for the rules.

use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use jiff::Timestamp;
use tokio::process::Command;

use super::SlurmClient;
use crate::error::{Error, Result};

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
        std::iter::once(program.as_ref())
            .chain(self.args.iter().map(String::as_str))
            .map(shell_word)
            .collect::<Vec<_>>()
            .join(" ")
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

pub(super) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // `RandomState` is seeded from the OS per process and varies per instance: enough
    // randomness for jitter and tokens without another dependency.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_i128(Timestamp::now().as_nanosecond());
    hasher.finish()
}

/// Kills the process group a child leads (it was spawned with `process_group(0)`).
pub(super) fn kill_process_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        crate::process::kill_group(pid);
    }
}

pub(super) fn current_uid() -> u32 {
    // SAFETY: getuid(2) has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

impl SlurmClient {
    pub(super) fn block_on<F: Future>(&self, fut: F) -> Result<F::Output> {
        let runtime = match self.runtime.get() {
            Some(rt) => rt,
            None => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(Error::Runtime)?;
                self.runtime.get_or_init(|| rt)
            }
        };
        Ok(runtime.block_on(fut))
    }

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
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
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
    pub(super) async fn run_once(&self, inv: &Invocation) -> Result<Outcome> {
        let mut tries = 0;
        let child = loop {
            match self.command(inv).spawn() {
                Ok(child) => break child,
                // ETXTBSY: a wrapper script just written is still open for writing in a
                // child another thread forked; that lasts until its exec.
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 5 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20 * tries)).await;
                }
                Err(source) => {
                    return Err(Error::Spawn {
                        command: inv.command_line(),
                        error: source,
                    })
                }
            }
        };
        let pid = child.id();
        match tokio::time::timeout(self.settings.timeout, child.wait_with_output()).await {
            Ok(Ok(output)) => Ok(Outcome::Exited(output)),
            Ok(Err(source)) => {
                kill_process_group(pid);
                Err(Error::Spawn {
                    command: inv.command_line(),
                    error: source,
                })
            }
            Err(_elapsed) => {
                // The child itself is killed on drop; its descendants share its group.
                kill_process_group(pid);
                Ok(Outcome::TimedOut)
            }
        }
    }

    /// Runs a query command, retrying timeouts and transient errors with backoff.
    /// Returns the output of the first run that exited with a non-transient result
    /// (success or not).
    pub(super) async fn run_retrying(&self, inv: &Invocation) -> Result<Output> {
        let attempts = self.settings.retries + 1;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match self.run_once(inv).await? {
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
            tokio::time::sleep(self.backoff(attempt)).await;
        }
    }

    /// Runs a query command (retrying as [`Self::run_retrying`] does) and reads its
    /// output with `read`. `None` when it failed with a stderr `absent` recognises (a
    /// job id the controller does not know, accounting disabled); any other failure is
    /// an error naming the command.
    pub(super) async fn ask<T>(
        &self,
        name: &str,
        args: Vec<String>,
        absent: fn(&str) -> bool,
        read: impl FnOnce(&str) -> Result<T>,
    ) -> Result<Option<T>> {
        let inv = self.query_invocation(name, args)?;
        let out = self.run_retrying(&inv).await?;
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
    pub(super) async fn ask_text(&self, name: &str, args: Vec<String>) -> Result<String> {
        let text = self
            .ask(name, args, |_| false, |t| Ok(t.to_owned()))
            .await?;
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
        let unit = (random_u64() >> 11) as f64 / (1u64 << 53) as f64;
        half + half.mul_f64(unit)
    }
}

/// Quotes a word for a shell only when it needs it (`--jobs=1,2` stays as is).
pub(super) fn shell_word(word: &str) -> std::borrow::Cow<'_, str> {
    let plain = !word.is_empty()
        && word.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'_' | b'.' | b'/' | b'=' | b':' | b',' | b'%' | b'@' | b'+'
                )
        });
    if plain {
        word.into()
    } else {
        format!("'{}'", word.replace('\'', r"'\''")).into()
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
    std::env::split_paths(&path?)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

pub(super) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
