//! The local executor: runs job scripts with bash where there is no SLURM.
//!
//! It exists so that the demo, a laptop and CI without a cluster go through the same
//! scripts, directives and records as a real submission. It behaves like SLURM where the
//! scripts can tell the difference:
//! - the script's `#SBATCH` directives are honoured: `--array` tasks run one after the
//!   other, `--output`/`--error` patterns (`%x %j %A %a %N %u %%`) name the log files,
//!   `--chdir` sets the working folder, `--time` is enforced and `--signal=[B:]SIG@SECS` is
//!   delivered `SECS` before the limit; at the limit the job's process group gets SIGTERM,
//!   then SIGKILL after the kill wait (SLURM's `KillWait`), and the task ends TIMEOUT;
//! - each task sees SLURM's variables (`SLURM_JOB_ID`, `SLURM_ARRAY_*`, `SLURM_JOB_NAME`,
//!   `SLURM_SUBMIT_DIR`, `SLURM_CPUS_PER_TASK`, `SLURM_MEM_PER_NODE`, `SLURM_JOB_PARTITION=local`,
//!   `SLURM_JOB_NODELIST=<host>` ...), with any inherited `SLURM_*` removed first;
//! - job ids come from a counter in the state folder, one per array task as in SLURM, and
//!   every job has a record (`jobs/<id>.json`) that [`LocalExecutor::job`] reads like
//!   `sacct` would answer;
//! - chains honour `afterany` (the pull-back runs whatever the compute job did) and
//!   `afterok` (a dependent of a failed job is cancelled, never run).
//!
//! Everything here is synchronous: [`LocalExecutor::run_chain`] returns when the chain has
//! ended. To return at once and leave nothing attached to the user's terminal, split it:
//! [`LocalExecutor::submit`] reserves the ids and records the jobs as PENDING, then a
//! detached process (the caller spawns the `hpcstage` binary with `setsid`) calls
//! [`LocalExecutor::run_submitted`] with those ids. [`LocalExecutor::cancel`] is the local
//! `scancel`. This module prints nothing.

mod env;
mod store;
mod task;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::duration::SlurmDuration;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use env::short_hostname;
use store::process_alive;

/// Errors of the local executor. A job that fails is not an error: it is a result with
/// state FAILED; these are the cases where the executor itself cannot do its work.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// An I/O call failed on a named path.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        /// The operating system's error, printed in the message (and so not returned
        /// again as `source()`: each cause is printed once).
        error: std::io::Error,
    },

    /// A script's `#SBATCH` directive cannot be understood.
    #[error("{path}, line {line}: {reason}")]
    Directive {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    /// A job record in the state folder cannot be read.
    #[error("job record {path} is damaged: {reason}")]
    Record { path: PathBuf, reason: String },

    /// No record of that job id.
    #[error("no local job {job_id}")]
    UnknownJob { job_id: u64 },

    /// The job was already started (or ended) by another runner.
    #[error("local job {job_id} is {state}, not PENDING; it was run already")]
    NotPending { job_id: u64, state: LocalState },

    /// The first step of a chain cannot depend on a previous one.
    #[error("the first step of a chain has no previous step to depend on")]
    DanglingDependency,
}

/// Job and task states, named as SLURM names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LocalState {
    Pending,
    Running,
    Completed,
    Failed,
    Timeout,
    Cancelled,
    /// The runner disappeared (machine restarted, process killed) while the job was active.
    NodeFail,
}

impl LocalState {
    /// SLURM's spelling (`COMPLETED`, `TIMEOUT` ...).
    pub fn as_str(self) -> &'static str {
        match self {
            LocalState::Pending => "PENDING",
            LocalState::Running => "RUNNING",
            LocalState::Completed => "COMPLETED",
            LocalState::Failed => "FAILED",
            LocalState::Timeout => "TIMEOUT",
            LocalState::Cancelled => "CANCELLED",
            LocalState::NodeFail => "NODE_FAIL",
        }
    }

    /// Whether the state is final.
    pub fn is_terminal(self) -> bool {
        !matches!(self, LocalState::Pending | LocalState::Running)
    }

    /// How bad a final state is, to summarize an array (worst task wins).
    fn severity(self) -> u8 {
        match self {
            LocalState::Pending | LocalState::Running | LocalState::Completed => 0,
            LocalState::Failed => 1,
            LocalState::Timeout => 2,
            LocalState::Cancelled => 3,
            LocalState::NodeFail => 4,
        }
    }
}

impl std::fmt::Display for LocalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a step waits for the step before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dependency {
    /// Runs when its turn comes.
    #[default]
    None,
    /// Runs after the previous step ended, whatever its state (`afterany`).
    AfterAny,
    /// Runs only when the previous step COMPLETED; otherwise CANCELLED (`afterok`).
    AfterOk,
}

/// One job of a chain: a script and how to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalStep {
    pub script: PathBuf,
    /// `SLURM_SUBMIT_DIR`, and the working folder unless the script sets `--chdir`.
    pub submit_dir: PathBuf,
    pub dependency: Dependency,
    /// Extra environment variables for the job.
    pub env: Vec<(String, String)>,
}

impl LocalStep {
    /// A step running `script`, submitted from `submit_dir`, without dependency.
    pub fn new(script: impl Into<PathBuf>, submit_dir: impl Into<PathBuf>) -> Self {
        LocalStep {
            script: script.into(),
            submit_dir: submit_dir.into(),
            dependency: Dependency::None,
            env: Vec::new(),
        }
    }

    /// Run after the previous step, whatever its result (`afterany`).
    #[must_use]
    pub fn after_any(mut self) -> Self {
        self.dependency = Dependency::AfterAny;
        self
    }

    /// Run only if the previous step completed (`afterok`).
    #[must_use]
    pub fn after_ok(mut self) -> Self {
        self.dependency = Dependency::AfterOk;
        self
    }

    /// Add an environment variable.
    #[must_use]
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// The job a step depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DependsOn {
    pub kind: Dependency,
    pub job_id: u64,
}

/// Who runs (or ran) a job: to tell a live job from one whose runner is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runner {
    pub pid: u32,
    pub host: String,
}

/// The record and result of one array task (or of the job itself when it is no array).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalTask {
    /// `SLURM_JOB_ID` of this task.
    pub job_id: u64,
    pub array_task_id: Option<u32>,
    pub state: LocalState,
    /// The script's exit status, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    pub start: Option<Timestamp>,
    pub end: Option<Timestamp>,
    pub elapsed_secs: f64,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// Whether the `--signal` warning was delivered.
    pub warning_signal_sent: bool,
    /// Why it ended as it did, when the exit status does not say.
    pub reason: Option<String>,
}

/// The record and result of one job (all its array tasks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalJob {
    /// The job id; `SLURM_ARRAY_JOB_ID` of an array.
    pub job_id: u64,
    pub name: String,
    pub script: PathBuf,
    pub submit_dir: PathBuf,
    pub work_dir: PathBuf,
    /// The `--array` text, for an array job.
    pub array: Option<String>,
    pub depends_on: Option<DependsOn>,
    /// Summary: the worst task state once all ended (FAILED < TIMEOUT < CANCELLED <
    /// NODE_FAIL), RUNNING while any runs.
    pub state: LocalState,
    pub reason: Option<String>,
    pub submit_time: Timestamp,
    pub start: Option<Timestamp>,
    pub end: Option<Timestamp>,
    pub time_limit: Option<SlurmDuration>,
    pub tasks: Vec<LocalTask>,
    pub runner: Option<Runner>,
    /// Extra environment given at submission.
    #[serde(default)]
    pub env: Vec<(String, String)>,
}

impl LocalJob {
    /// The first non-zero exit code of a task, else 0 once ended.
    pub fn exit_code(&self) -> Option<i32> {
        let codes: Vec<i32> = self.tasks.iter().filter_map(|t| t.exit_code).collect();
        codes
            .iter()
            .copied()
            .find(|&c| c != 0)
            .or(codes.first().copied())
    }
}

/// Runs job scripts with bash, keeping SLURM-like records in a state folder.
#[derive(Debug, Clone)]
pub struct LocalExecutor {
    state_dir: PathBuf,
    kill_wait: Duration,
    poll: Duration,
    cancel_all: Option<Arc<AtomicBool>>,
    host: String,
}

/// SLURM's default `KillWait`.
const DEFAULT_KILL_WAIT: Duration = Duration::from_secs(30);

impl LocalExecutor {
    /// An executor keeping its counter and records under `state_dir` (created on use).
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        LocalExecutor {
            state_dir: state_dir.into(),
            kill_wait: DEFAULT_KILL_WAIT,
            poll: Duration::from_millis(50),
            cancel_all: None,
            host: short_hostname(),
        }
    }

    /// Time between SIGTERM and SIGKILL at the time limit or on cancel (default 30 s).
    #[must_use]
    pub fn with_kill_wait(mut self, wait: Duration) -> Self {
        self.kill_wait = wait;
        self
    }

    /// A flag that, once set, cancels the running task and every job not yet ended.
    #[must_use]
    pub fn with_cancel_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.cancel_all = Some(flag);
        self
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Record the steps as PENDING jobs with fresh ids and return the ids, in order.
    /// Nothing runs until [`Self::run_submitted`] is called with them.
    pub fn submit(&self, steps: &[LocalStep]) -> Result<Vec<u64>, LocalError> {
        if steps
            .first()
            .is_some_and(|s| s.dependency != Dependency::None)
        {
            return Err(LocalError::DanglingDependency);
        }
        let mut ids = Vec::with_capacity(steps.len());
        for step in steps {
            // The job runs in its own working folder: relative paths must not move with it.
            let absolute = |p: &Path| {
                std::path::absolute(p).map_err(|source| LocalError::Io {
                    path: p.to_path_buf(),
                    error: source,
                })
            };
            let step = &LocalStep {
                script: absolute(&step.script)?,
                submit_dir: absolute(&step.submit_dir)?,
                ..step.clone()
            };
            let plan = self.plan(step)?;
            let n = plan.tasks.as_ref().map_or(1, Vec::len) as u64;
            let job_id = self.reserve_ids(n)?;
            let depends_on = match (step.dependency, ids.last()) {
                (Dependency::None, _) | (_, None) => None,
                (kind, Some(&prev)) => Some(DependsOn { kind, job_id: prev }),
            };
            let job = LocalJob {
                job_id,
                name: plan.name.clone(),
                script: step.script.clone(),
                submit_dir: step.submit_dir.clone(),
                work_dir: plan.work_dir.clone(),
                array: plan.array_text.clone(),
                depends_on,
                state: LocalState::Pending,
                reason: None,
                submit_time: Timestamp::now(),
                start: None,
                end: None,
                time_limit: plan.time_limit,
                tasks: Vec::new(),
                runner: None,
                env: step.env.clone(),
            };
            self.save(&job)?;
            ids.push(job_id);
        }
        Ok(ids)
    }

    /// Run jobs recorded by [`Self::submit`], in order, honouring their dependencies.
    /// Returns their final records. Jobs not PENDING are refused before anything runs.
    pub fn run_submitted(&self, job_ids: &[u64]) -> Result<Vec<LocalJob>, LocalError> {
        let mut jobs = Vec::with_capacity(job_ids.len());
        for &id in job_ids {
            let job = self
                .load(id)?
                .ok_or(LocalError::UnknownJob { job_id: id })?;
            if job.state != LocalState::Pending {
                return Err(LocalError::NotPending {
                    job_id: id,
                    state: job.state,
                });
            }
            jobs.push(job);
        }
        let runner = Runner {
            pid: std::process::id(),
            host: self.host.clone(),
        };
        for job in &mut jobs {
            job.runner = Some(runner.clone());
            self.save(job)?;
        }
        let mut done: Vec<LocalJob> = Vec::with_capacity(jobs.len());
        for mut job in jobs {
            self.run_job(&mut job, &done)?;
            done.push(job);
        }
        Ok(done)
    }

    /// Submit and run a chain in the foreground; returns the final records in order.
    pub fn run_chain(&self, steps: &[LocalStep]) -> Result<Vec<LocalJob>, LocalError> {
        let ids = self.submit(steps)?;
        self.run_submitted(&ids)
    }

    /// Run one job in the foreground.
    pub fn run(&self, step: LocalStep) -> Result<LocalJob, LocalError> {
        let mut jobs = self.run_chain(&[step])?;
        Ok(jobs.remove(0))
    }

    /// The record of a job, as `sacct` would report it. A job recorded as active whose
    /// runner process on this host is gone is reported NODE_FAIL.
    pub fn job(&self, job_id: u64) -> Result<Option<LocalJob>, LocalError> {
        let Some(mut job) = self.load(job_id)? else {
            return Ok(None);
        };
        if !job.state.is_terminal() {
            if let Some(r) = &job.runner {
                if r.host == self.host && !process_alive(r.pid) {
                    job.state = LocalState::NodeFail;
                    job.reason = Some(format!(
                        "the local executor (pid {} on {}) is gone",
                        r.pid, r.host
                    ));
                }
            }
        }
        Ok(Some(job))
    }

    /// Ask for a job to be cancelled (the local `scancel`): a running task gets SIGTERM,
    /// then SIGKILL after the kill wait; a pending job never starts. Dependents follow their
    /// dependency (an `afterany` pull-back still runs).
    pub fn cancel(&self, job_id: u64) -> Result<(), LocalError> {
        if self.load(job_id)?.is_none() {
            return Err(LocalError::UnknownJob { job_id });
        }
        let path = self.cancel_path(job_id);
        std::fs::write(&path, b"").map_err(|source| LocalError::Io {
            path,
            error: source,
        })
    }
}
