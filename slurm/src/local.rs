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

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::process::{signal_group, signal_process};
use crate::template::{SbatchArgs, SlurmDuration};

/// Errors of the local executor. A job that fails is not an error: it is a result with
/// state FAILED; these are the cases where the executor itself cannot do its work.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// An I/O call failed on a named path.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
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

/// What a task needs from the script's directives.
#[derive(Debug, Clone)]
struct JobPlan {
    name: String,
    work_dir: PathBuf,
    tasks: Option<Vec<u32>>,
    array_text: Option<String>,
    time_limit: Option<SlurmDuration>,
    signal: Option<(bool, i32, u64)>,
    output: Option<String>,
    error: Option<String>,
    append: bool,
    cpus_per_task: Option<u32>,
    mem_mb: Option<u64>,
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
/// `%a` of a job that is no array, as SLURM writes it (NO_VAL - 1).
const NO_ARRAY_TASK: &str = "4294967294";

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

    fn jobs_dir(&self) -> PathBuf {
        self.state_dir.join("jobs")
    }

    fn record_path(&self, job_id: u64) -> PathBuf {
        self.jobs_dir().join(format!("{job_id}.json"))
    }

    fn cancel_path(&self, job_id: u64) -> PathBuf {
        self.jobs_dir().join(format!("{job_id}.cancel"))
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
                    source,
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
        std::fs::write(&path, b"").map_err(|source| LocalError::Io { path, source })
    }

    fn cancel_requested(&self, job_id: u64) -> bool {
        self.cancel_all
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst))
            || self.cancel_path(job_id).exists()
    }

    /// Reserve `n` consecutive job ids from the counter file (locked with flock(2)).
    fn reserve_ids(&self, n: u64) -> Result<u64, LocalError> {
        let dir = &self.state_dir;
        std::fs::create_dir_all(dir).map_err(|source| LocalError::Io {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join("next-job-id");
        let io = |source| LocalError::Io {
            path: path.clone(),
            source,
        };
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        flock_exclusive(&f).map_err(io)?;
        let mut text = String::new();
        f.read_to_string(&mut text).map_err(io)?;
        let first: u64 = match text.trim() {
            "" => 1,
            t => t.parse().map_err(|_| LocalError::Record {
                path: path.clone(),
                reason: format!("counter {t:?} is not a number"),
            })?,
        };
        f.seek(SeekFrom::Start(0)).map_err(io)?;
        f.set_len(0).map_err(io)?;
        writeln!(f, "{}", first + n).map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(first)
    }

    fn load(&self, job_id: u64) -> Result<Option<LocalJob>, LocalError> {
        let path = self.record_path(job_id);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(LocalError::Io { path, source }),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| LocalError::Record {
                path,
                reason: e.to_string(),
            })
    }

    fn save(&self, job: &LocalJob) -> Result<(), LocalError> {
        let dir = self.jobs_dir();
        std::fs::create_dir_all(&dir).map_err(|source| LocalError::Io {
            path: dir.clone(),
            source,
        })?;
        let path = self.record_path(job.job_id);
        let tmp = dir.join(format!(".{}.json.{}", job.job_id, std::process::id()));
        let text = serde_json::to_string_pretty(job).map_err(|e| LocalError::Record {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(&tmp, text).map_err(|source| LocalError::Io {
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, &path).map_err(|source| LocalError::Io { path, source })
    }

    /// Read the script's directives into what the run needs.
    fn plan(&self, step: &LocalStep) -> Result<JobPlan, LocalError> {
        let text = std::fs::read_to_string(&step.script).map_err(|source| LocalError::Io {
            path: step.script.clone(),
            source,
        })?;
        let args =
            SbatchArgs::from_script(&text).map_err(|(line, reason)| LocalError::Directive {
                path: step.script.clone(),
                line,
                reason,
            })?;
        let name = args.job_name.clone().unwrap_or_else(|| {
            step.script.file_name().map_or_else(
                || "sbatch".to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        });
        let work_dir = match &args.chdir {
            Some(d) => step.submit_dir.join(d),
            None => step.submit_dir.clone(),
        };
        let signal = match &args.signal {
            Some(s) => Some((
                s.batch_only,
                s.number().ok_or_else(|| LocalError::Directive {
                    path: step.script.clone(),
                    line: 0,
                    reason: format!("unknown signal {}", s.signal),
                })?,
                u64::from(s.seconds),
            )),
            None => None,
        };
        Ok(JobPlan {
            name,
            work_dir,
            tasks: args.array.as_ref().map(|a| a.tasks().to_vec()),
            array_text: args.array.as_ref().map(ToString::to_string),
            time_limit: args.time,
            signal,
            output: args.output.clone(),
            error: args.error.clone(),
            append: args.open_mode.as_deref() == Some("append"),
            cpus_per_task: args.cpus_per_task,
            mem_mb: args.mem.as_deref().and_then(crate::partition::mem_to_mb),
        })
    }

    fn run_job(&self, job: &mut LocalJob, done: &[LocalJob]) -> Result<(), LocalError> {
        // Dependencies first, as slurmctld would decide them.
        if let Some(dep) = job.depends_on {
            let prev = done
                .iter()
                .find(|j| j.job_id == dep.job_id)
                .cloned()
                .or(self.job(dep.job_id)?);
            let prev_state = prev.map_or(LocalState::NodeFail, |p| p.state);
            if dep.kind == Dependency::AfterOk && prev_state != LocalState::Completed {
                job.state = LocalState::Cancelled;
                job.reason = Some(format!(
                    "dependency never satisfied: job {} ended {prev_state}",
                    dep.job_id
                ));
                job.end = Some(Timestamp::now());
                return self.save(job);
            }
        }
        let step = LocalStep {
            script: job.script.clone(),
            submit_dir: job.submit_dir.clone(),
            dependency: Dependency::None,
            env: job.env.clone(),
        };
        let plan = match self.plan(&step) {
            Ok(plan) => plan,
            Err(e) => {
                // The script changed or vanished since submission: this job fails, the
                // chain goes on (an afterany pull-back must still run).
                job.state = LocalState::Failed;
                job.reason = Some(e.to_string());
                job.end = Some(Timestamp::now());
                return self.save(job);
            }
        };
        job.start = Some(Timestamp::now());
        job.state = LocalState::Running;
        self.save(job)?;

        let task_ids: Vec<Option<u32>> = match &plan.tasks {
            Some(t) => t.iter().copied().map(Some).collect(),
            None => vec![None],
        };
        for (i, task_id) in task_ids.iter().enumerate() {
            let this_job = job.job_id + i as u64;
            let task = if self.cancel_requested(job.job_id) {
                self.unrun_task(
                    job,
                    &plan,
                    this_job,
                    *task_id,
                    "cancelled before it started",
                )
            } else {
                self.run_task(job, &plan, this_job, *task_id)?
            };
            job.tasks.push(task);
            self.save(job)?;
        }
        job.state = job
            .tasks
            .iter()
            .map(|t| t.state)
            .max_by_key(|s| s.severity())
            .unwrap_or(LocalState::Completed);
        job.end = Some(Timestamp::now());
        self.save(job)
    }

    fn unrun_task(
        &self,
        job: &LocalJob,
        plan: &JobPlan,
        this_job: u64,
        task_id: Option<u32>,
        reason: &str,
    ) -> LocalTask {
        let (stdout, stderr) = log_paths(job, plan, this_job, task_id, &self.host);
        LocalTask {
            job_id: this_job,
            array_task_id: task_id,
            state: LocalState::Cancelled,
            exit_code: None,
            signal: None,
            start: None,
            end: Some(Timestamp::now()),
            elapsed_secs: 0.0,
            stdout,
            stderr,
            warning_signal_sent: false,
            reason: Some(reason.to_string()),
        }
    }

    fn task_env(
        &self,
        job: &LocalJob,
        plan: &JobPlan,
        this_job: u64,
        task_id: Option<u32>,
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = Vec::new();
        let mut set = |k: &str, v: String| env.push((k.to_string(), v));
        set("SLURM_JOB_ID", this_job.to_string());
        set("SLURM_JOBID", this_job.to_string());
        set("SLURM_JOB_NAME", plan.name.clone());
        set("SLURM_SUBMIT_DIR", job.submit_dir.display().to_string());
        set("SLURM_SUBMIT_HOST", self.host.clone());
        set("SLURM_JOB_PARTITION", "local".to_string());
        set("SLURM_JOB_NODELIST", self.host.clone());
        set("SLURM_NODELIST", self.host.clone());
        set("SLURMD_NODENAME", self.host.clone());
        set("SLURM_CLUSTER_NAME", "local".to_string());
        set("SLURM_JOB_NUM_NODES", "1".to_string());
        set("SLURM_NNODES", "1".to_string());
        set("SLURM_NTASKS", "1".to_string());
        set("SLURM_RESTART_COUNT", "0".to_string());
        if let Ok(user) = std::env::var("USER") {
            set("SLURM_JOB_USER", user);
        }
        if let Some(c) = plan.cpus_per_task {
            set("SLURM_CPUS_PER_TASK", c.to_string());
            set("SLURM_JOB_CPUS_PER_NODE", c.to_string());
        }
        if let Some(mb) = plan.mem_mb {
            set("SLURM_MEM_PER_NODE", mb.to_string());
        }
        if let (Some(tasks), Some(t)) = (&plan.tasks, task_id) {
            let min = tasks.first().copied().unwrap_or(0);
            let max = tasks.last().copied().unwrap_or(0);
            let step = match tasks.as_slice() {
                [a, b, ..] if tasks.windows(2).all(|w| w[1] - w[0] == b - a) => b - a,
                _ => 1,
            };
            set("SLURM_ARRAY_JOB_ID", job.job_id.to_string());
            set("SLURM_ARRAY_TASK_ID", t.to_string());
            set("SLURM_ARRAY_TASK_COUNT", tasks.len().to_string());
            set("SLURM_ARRAY_TASK_MIN", min.to_string());
            set("SLURM_ARRAY_TASK_MAX", max.to_string());
            set("SLURM_ARRAY_TASK_STEP", step.to_string());
        }
        set("HPCSTAGE_EXECUTOR", "local".to_string());
        env.extend(job.env.iter().cloned());
        env
    }

    fn run_task(
        &self,
        job: &LocalJob,
        plan: &JobPlan,
        this_job: u64,
        task_id: Option<u32>,
    ) -> Result<LocalTask, LocalError> {
        let (stdout, stderr) = log_paths(job, plan, this_job, task_id, &self.host);
        let mut task = LocalTask {
            job_id: this_job,
            array_task_id: task_id,
            state: LocalState::Failed,
            exit_code: None,
            signal: None,
            start: Some(Timestamp::now()),
            end: None,
            elapsed_secs: 0.0,
            stdout: stdout.clone(),
            stderr: stderr.clone(),
            warning_signal_sent: false,
            reason: None,
        };
        let logs = match open_logs(&stdout, &stderr, plan.append) {
            Ok(l) => l,
            Err((path, e)) => {
                // slurmstepd cannot open the log either: the job fails at once.
                task.reason = Some(format!("cannot open log file {}: {e}", path.display()));
                task.end = Some(Timestamp::now());
                return Ok(task);
            }
        };

        let mut cmd = Command::new("bash");
        cmd.arg(&job.script)
            .current_dir(&plan.work_dir)
            .stdin(Stdio::null())
            .stdout(logs.0)
            .stderr(logs.1);
        crate::process::own_group(&mut cmd);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SLURM") {
                cmd.env_remove(&key);
            }
        }
        cmd.envs(self.task_env(job, plan, this_job, task_id));
        let started = Instant::now();
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                // A missing working folder or bash: the task fails, as it would in SLURM.
                task.reason = Some(format!(
                    "cannot start bash in {}: {e}",
                    plan.work_dir.display()
                ));
                task.end = Some(Timestamp::now());
                return Ok(task);
            }
        };
        let pid = child.id();

        let limit = plan.time_limit.map(SlurmDuration::to_std);
        let warn_at = match (limit, plan.signal) {
            (Some(l), Some((_, _, secs))) => Some(l.saturating_sub(Duration::from_secs(secs))),
            _ => None,
        };
        let mut ending: Option<(LocalState, Instant)> = None;
        let mut killed = false;
        let mut polls: u32 = 0;
        let status = loop {
            let status = child.try_wait().map_err(|source| LocalError::Io {
                path: job.script.clone(),
                source,
            })?;
            if let Some(status) = status {
                break status;
            }
            let now = started.elapsed();
            if let (Some(at), Some((batch_only, sig, _))) = (warn_at, plan.signal) {
                if !task.warning_signal_sent && now >= at && ending.is_none() {
                    // B: signals only the batch shell; otherwise the job's processes.
                    if batch_only {
                        signal_process(pid, sig);
                    } else {
                        signal_group(pid, sig);
                    }
                    task.warning_signal_sent = true;
                }
            }
            if ending.is_none() {
                let timed_out = limit.is_some_and(|l| now >= l);
                let cancelled = polls.is_multiple_of(5) && self.cancel_requested(job.job_id);
                if timed_out || cancelled {
                    let state = if timed_out {
                        LocalState::Timeout
                    } else {
                        LocalState::Cancelled
                    };
                    signal_group(pid, libc::SIGTERM);
                    ending = Some((state, Instant::now() + self.kill_wait));
                }
            }
            if let Some((_, kill_at)) = ending {
                if !killed && Instant::now() >= kill_at {
                    signal_group(pid, libc::SIGKILL);
                    killed = true;
                }
            }
            polls = polls.wrapping_add(1);
            std::thread::sleep(self.poll);
        };
        // Whatever the script left running in the background goes with it, as SLURM's
        // process tracking does at the end of a batch job.
        signal_group(pid, libc::SIGKILL);

        task.elapsed_secs = started.elapsed().as_secs_f64();
        task.end = Some(Timestamp::now());
        task.exit_code = status.code();
        task.signal = status.signal();
        task.state = match (ending, status.code()) {
            (Some((state, _)), _) => state,
            (None, Some(0)) => LocalState::Completed,
            (None, _) => LocalState::Failed,
        };
        if let Some((state, _)) = ending {
            task.reason = Some(match state {
                LocalState::Timeout => format!(
                    "time limit {} reached",
                    plan.time_limit.map(|t| t.to_slurm()).unwrap_or_default()
                ),
                _ => "cancelled".to_string(),
            });
        }
        Ok(task)
    }
}

/// Standard output and error paths of a task, patterns expanded, relative to the working
/// folder. SLURM's defaults: `slurm-%j.out` (`slurm-%A_%a.out` for arrays), stderr with
/// stdout.
fn log_paths(
    job: &LocalJob,
    plan: &JobPlan,
    this_job: u64,
    task_id: Option<u32>,
    host: &str,
) -> (PathBuf, PathBuf) {
    let default = if plan.tasks.is_some() {
        "slurm-%A_%a.out"
    } else {
        "slurm-%j.out"
    };
    let vars = PatternVars {
        job_id: this_job,
        array_job_id: if plan.tasks.is_some() {
            job.job_id
        } else {
            this_job
        },
        task_id,
        name: &plan.name,
        host,
    };
    let out_pattern = plan.output.as_deref().unwrap_or(default);
    let err_pattern = plan.error.as_deref().unwrap_or(out_pattern);
    let out = plan.work_dir.join(expand_pattern(out_pattern, &vars));
    let err = plan.work_dir.join(expand_pattern(err_pattern, &vars));
    (out, err)
}

/// Open the log files; one shared file when both paths are the same.
fn open_logs(
    stdout: &Path,
    stderr: &Path,
    append: bool,
) -> Result<(File, File), (PathBuf, std::io::Error)> {
    let open = |p: &Path| {
        let mut o = OpenOptions::new();
        o.create(true);
        if append {
            o.append(true);
        } else {
            o.write(true).truncate(true);
        }
        o.open(p).map_err(|e| (p.to_path_buf(), e))
    };
    let out = open(stdout)?;
    let err = if stdout == stderr {
        out.try_clone().map_err(|e| (stderr.to_path_buf(), e))?
    } else {
        open(stderr)?
    };
    Ok((out, err))
}

struct PatternVars<'a> {
    job_id: u64,
    array_job_id: u64,
    task_id: Option<u32>,
    name: &'a str,
    host: &'a str,
}

/// Expand SLURM's filename patterns (sbatch(1), "filename pattern"): `%%`, `%A`, `%a`,
/// `%j`, `%J`, `%N`, `%n`, `%s`, `%t`, `%u`, `%x`, with zero padding (`%4a`) for numbers.
/// Unknown patterns are kept as written.
fn expand_pattern(pattern: &str, v: &PatternVars<'_>) -> String {
    let mut out = String::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut width = String::new();
        while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
            width.push(d);
            chars.next();
        }
        let Some(spec) = chars.next() else {
            out.push('%');
            out.push_str(&width);
            break;
        };
        let pad = |n: String| -> String {
            let w: usize = width.parse().unwrap_or(0).min(10);
            format!("{n:0>w$}")
        };
        match spec {
            '%' => out.push('%'),
            'A' => out.push_str(&pad(v.array_job_id.to_string())),
            'a' => out.push_str(&pad(v
                .task_id
                .map_or_else(|| NO_ARRAY_TASK.to_string(), |t| t.to_string()))),
            'j' => out.push_str(&pad(v.job_id.to_string())),
            'J' => out.push_str(&format!("{}.batch", pad(v.job_id.to_string()))),
            'n' | 't' => out.push_str(&pad("0".to_string())),
            's' => out.push_str("batch"),
            'N' => out.push_str(v.host),
            'u' => out.push_str(&std::env::var("USER").unwrap_or_else(|_| "unknown".into())),
            'x' => out.push_str(v.name),
            other => {
                out.push('%');
                out.push_str(&width);
                out.push(other);
            }
        }
    }
    out
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn flock_exclusive(f: &File) -> std::io::Result<()> {
    // SAFETY: flock(2) on a descriptor we own; released when the file is closed.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// This machine's name up to the first dot, as SLURM names nodes.
fn short_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        std::env::var_os("HOSTNAME")
            .map(OsString::into_string)
            .and_then(Result::ok)
            .unwrap_or_else(|| "localhost".to_string())
    };
    name.split('.').next().unwrap_or("localhost").to_string()
}

#[cfg(test)]
mod tests;
