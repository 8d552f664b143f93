//! The SLURM client: `sbatch`, `sacct`, `squeue`, `scontrol` and `scancel`, run as
//! child processes with a timeout, retries and a cleaned environment.
//!
//! Why it exists: a login node's `slurmctld` is often busy, `sbatch` can time out after
//! the job was queued, accounting can lag or be disabled, and users set
//! `SQUEUE_FORMAT`/`SACCT_FORMAT` in their shell. Every caller of SLURM in hpcstage goes
//! through this module so that those cases are handled once. It parses nothing itself
//! (`parse.rs` does) and prints nothing.
//! The contract it keeps is docs/ARCHITECTURE.md#slurm-calls.
//!
//! **Every call** has a timeout (default 30 s); on timeout the child's whole process
//! group is killed (a wrapper script's `sleep` too). Query commands run with
//! `LC_ALL=C` and without `SQUEUE_*`, `SACCT_*`, `SINFO_*` and `SLURM_TIME_FORMAT`,
//! which would change what they print or which jobs they list. `sbatch` is the
//! exception: it copies its environment into the job (`--export=ALL` is the default),
//! so it runs with the caller's environment, untouched apart from
//! [`SubmitRequest::env`]; its `--parsable` output does not depend on the locale.
//!
//! **Retries.** Errors that say the controller or the database did not answer
//! (`Socket timed out`, `Unable to contact slurm controller`, `Connection refused`,
//! ...) and timeouts are retried with jittered exponential backoff (default 3 retries,
//! from ~1 s, capped at 30 s). Anything else (`Invalid partition name specified`) fails
//! at once with the command line, exit status and stderr.
//!
//! **No duplicate jobs.** Each submission carries a token in `--comment=<token>`. When
//! `sbatch` times out, or fails in a way that may have reached the controller (socket
//! timeouts; not `connect failure`/`Connection refused`, which mean nothing was sent),
//! the token is looked up *before* any retry:
//! 1. `squeue --noheader --all --states=all --user=<uid> --format=%F|%k`: the
//!    controller's own table, which holds every job (pending with a dependency, or
//!    finished less than `MinJobAge`, 300 s by default, ago) and always knows the
//!    comment;
//! 2. only if the controller does not list it (a job that already ran and was purged):
//!    `sacct -X --parsable2 --noheader --user=<uid> --starttime=<first attempt - 10 min>
//!    --format=JobID,Comment,JobName`, matching the comment, or the job name when the
//!    caller used the token as the name too. `sacct` shows the comment only with
//!    `AccountingStoreFlags=job_comment` (sacct(1), "Comment"), hence the name match.
//!
//! A job found this way is returned (`found_by_lookup`), never resubmitted. When the
//! lookup itself fails, the submission stops with [`Error::SubmitUncertain`] rather
//! than risk a second job. One race remains: a controller that answers the lookup
//! before processing the killed `sbatch`'s request; the backoff before the lookup
//! makes it unlikely.
//!
//! **Queries.** One batched `sacct -X --parsable2 --noheader --jobs=a,b,c
//! --starttime=<earliest>` per poll. `-X` drops steps (`123.batch`), not array tasks:
//! asking for an array job returns one row per task plus a combined row for tasks still
//! pending (`123_[2-5]`), which are summarised into one record with `tasks`. Jobs
//! `sacct` does not know (accounting disabled, or a job slurmdbd has not recorded yet)
//! are asked of `squeue --jobs=...` in one call, then of `scontrol show job -o <id>` for
//! exit codes and TRES. So are pending jobs, for the controller's current reason why
//! they wait (`Resources`, `PartitionConfig`, `JobHeldUser`), and jobs whose accounting
//! may be incomplete, as seen on the
//! test cluster (22.05): a job that just ended shows `COMPLETED` with an empty
//! `Partition` for a moment, and an array can show all its recorded tasks finished
//! before a task split off moments earlier is recorded at all. A job no source knows
//! is returned with state `NOT_FOUND`, never assumed done; if `sacct` failed and the
//! controller does not know a job either, the query fails instead.

mod exec;
mod query;
mod submit;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;

use crate::error::Result;
use crate::state::{JobId, JobInfo};

pub use submit::new_token;

/// How the client runs SLURM commands.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// Time limit for one command.
    pub timeout: Duration,
    /// Retries after the first attempt, for transient errors and timeouts.
    pub retries: u32,
    /// First backoff delay; doubled each retry, jittered (between half and all of it).
    pub backoff_initial: Duration,
    /// Upper bound of a backoff delay.
    pub backoff_max: Duration,
    /// Take the SLURM commands from this folder instead of `PATH`.
    pub bin_dir: Option<PathBuf>,
    /// How far back `query` asks `sacct` when the caller gives no start time.
    pub sacct_lookback: Duration,
    /// The user whose jobs a token lookup searches (name or uid); default: our uid.
    pub user: Option<String>,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            retries: 3,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            bin_dir: None,
            sacct_lookback: Duration::from_secs(60 * 24 * 3600),
            user: None,
        }
    }
}

/// What to submit.
#[derive(Clone, Debug, Default)]
pub struct SubmitRequest {
    /// The batch script.
    pub script: PathBuf,
    /// Arguments passed to the script.
    pub script_args: Vec<String>,
    /// The job's working directory (`--chdir`), and `sbatch`'s own.
    pub workdir: Option<PathBuf>,
    /// The job name (`--job-name`).
    pub name: Option<String>,
    /// Further `sbatch` options, e.g. `--dependency=afterany:123`, `--partition=gpu`,
    /// `--array=1-4`, `--output=...`, `--gres=gpu:1`.
    pub args: Vec<String>,
    /// Variables added to `sbatch`'s environment, hence to the job's (unless `args`
    /// holds an `--export` that leaves them out).
    pub env: Vec<(String, String)>,
    /// A unique token, passed as `--comment=<token>` to find the job again.
    pub token: String,
}

impl SubmitRequest {
    /// A request for `script`, with a fresh token.
    pub fn new(script: impl Into<PathBuf>) -> Self {
        Self {
            script: script.into(),
            token: new_token(),
            ..Self::default()
        }
    }
}

/// A submitted job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submitted {
    /// Its id.
    pub id: JobId,
    /// The cluster, when `sbatch --parsable` names one.
    pub cluster: Option<String>,
    /// The token it carries.
    pub token: String,
    /// `sbatch` failed or timed out, but the job was found by its token.
    pub found_by_lookup: bool,
    /// How many times `sbatch` ran.
    pub attempts: u32,
}

/// Runs SLURM commands, each as a child process that the calling thread waits for.
#[derive(Debug, Default)]
pub struct SlurmClient {
    settings: ClientSettings,
}

impl SlurmClient {
    /// A client with these settings.
    pub fn new(settings: ClientSettings) -> Self {
        Self { settings }
    }

    /// The settings in use.
    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// Whether `sbatch` is installed (on `PATH`, or in `bin_dir`).
    pub fn available(&self) -> bool {
        self.program("sbatch").is_ok()
    }

    /// Asks for the state of jobs, looking `sacct_lookback` back in accounting.
    ///
    /// Every requested id is a key of the answer; see the module docs.
    pub fn query(&self, ids: &[JobId]) -> Result<HashMap<JobId, JobInfo>> {
        self.query_from(ids, None)
    }

    /// Like [`SlurmClient::query`], with the earliest submission time of the jobs as
    /// `sacct --starttime` (less an hour for clock skew).
    pub fn query_since(
        &self,
        ids: &[JobId],
        earliest: Timestamp,
    ) -> Result<HashMap<JobId, JobInfo>> {
        self.query_from(ids, Some(earliest))
    }

    /// What each partition's largest node offers, by partition name, from `sinfo --Node` (see
    /// [`crate::partition`]).
    pub fn partitions(&self) -> Result<Vec<crate::partition::PartitionLimits>> {
        let args = vec![
            "--noheader".into(),
            "--Node".into(),
            format!("--format={}", crate::partition::SINFO_FORMAT),
        ];
        let text = self.ask_text("sinfo", args)?;
        // `sinfo --Node` lists node by node, so the first node's partitions come first;
        // by name, the order is the same on every call.
        let mut partitions = crate::partition::parse_sinfo(&text);
        partitions.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(partitions)
    }
}
