//! Typed errors of the SLURM client and the local executor.
//!
//! Each variant carries what a user needs to act without rerunning with debug flags:
//! the command line that ran, how long we waited, the exit status and the child's
//! stderr (trimmed), or the text that could not be parsed. No variant is a catch-all
//! string: add a variant for a new failure instead.

use std::process::ExitStatus;
use std::time::Duration;

/// Errors from SLURM commands and the local executor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A SLURM command is not installed (not on `PATH`, or not in the configured
    /// `bin_dir`).
    #[error("SLURM is not installed here: `{program}` was not found{}", if *.on_path { " on PATH" } else { "" })]
    NotInstalled {
        /// The program looked for (a name, or the full path under `bin_dir`).
        program: String,
        /// Whether `PATH` was searched (no `bin_dir` configured).
        on_path: bool,
    },

    /// A command could not be started or waited for.
    #[error("could not run `{command}`: {error}")]
    Spawn {
        /// The command line.
        command: String,
        /// The operating system's error, printed in the message (not returned again as
        /// `source()`: each cause is printed once).
        error: std::io::Error,
    },

    /// A command did not finish in time (it was killed, with its process group).
    #[error("`{command}` did not finish within {:.1} s ({attempts} attempt{})", .timeout.as_secs_f64(), if *.attempts == 1 { "" } else { "s" })]
    Timeout {
        /// The command line.
        command: String,
        /// The per-call timeout.
        timeout: Duration,
        /// How many times it was tried.
        attempts: u32,
    },

    /// A command exited unsuccessfully with an error that retrying cannot fix.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its stderr, trimmed.
        stderr: String,
    },

    /// The controller (or the accounting daemon) did not answer, after retries.
    #[error("the SLURM controller is unreachable: `{command}` failed {attempts} time{}: {stderr}", if *.attempts == 1 { "" } else { "s" })]
    ControllerUnreachable {
        /// The command line.
        command: String,
        /// How many times it was tried.
        attempts: u32,
        /// The last stderr, trimmed (`Unable to contact slurm controller`, ...).
        stderr: String,
    },

    /// `sbatch` failed in a way that may have submitted the job, and looking the job
    /// up by its token failed too: resubmitting could duplicate it.
    #[error("`{command}` may or may not have submitted the job; looking it up by its token {token:?} failed, so it was not resubmitted (check `squeue --me --format=%i,%k` for the token before submitting again)")]
    SubmitUncertain {
        /// The submission token (the job's `--comment`).
        token: String,
        /// The sbatch command line.
        command: String,
        /// Why the lookup failed.
        #[source]
        lookup: Box<Error>,
    },

    /// A command succeeded but printed something we cannot read.
    #[error("could not read the {what} in the output of `{command}`: {text:?}")]
    UnexpectedOutput {
        /// The command line.
        command: String,
        /// What we looked for.
        what: &'static str,
        /// The offending output, trimmed.
        text: String,
    },

    /// A value SLURM prints (or a user typed) is malformed.
    #[error("invalid {what}: {text:?}")]
    Parse {
        /// What was being parsed (`job id`, `exit code`, `sacct line`, ...).
        what: &'static str,
        /// The offending text.
        text: String,
    },

    /// A submission token unusable for the de-duplication lookup.
    #[error("invalid submission token {token:?}: {reason}")]
    InvalidToken {
        /// The token.
        token: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The local executor failed.
    #[error(transparent)]
    Local(#[from] crate::local::LocalError),
}

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
