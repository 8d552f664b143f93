//! The SLURM client: `sbatch`, `sacct`, `squeue`, `scontrol` and `scancel`, run as
//! child processes with a timeout, retries and a cleaned environment.
//!
//! Why it exists: a login node's `slurmctld` is often busy, `sbatch` can time out after
//! the job was queued, accounting can lag or be disabled, and users set
//! `SQUEUE_FORMAT`/`SACCT_FORMAT` in their shell. Every caller of SLURM in hpcstage goes
//! through this module so that those cases are handled once. It parses nothing itself
//! (`state.rs` does) and prints nothing.
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

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use tokio::process::Command;
use tokio::runtime::Runtime;

use crate::error::{Error, Result};
use crate::state::{
    format_time, parse_sacct, parse_sbatch_output, parse_scontrol, parse_squeue, JobId, JobInfo,
    JobRef, JobState, SACCT_FORMAT, SQUEUE_FORMAT,
};

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

/// A fresh submission token: `hpcstage-<unix µs>-<pid>-<random>`.
pub fn new_token() -> String {
    let now = Timestamp::now();
    format!(
        "hpcstage-{}-{}-{:08x}",
        now.as_microsecond(),
        std::process::id(),
        random_u64() as u32
    )
}

fn validate_token(token: &str) -> Result<()> {
    let reason = if token.is_empty() {
        Some("it is empty")
    } else if token.len() > 200 {
        Some("it is longer than 200 characters")
    } else if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'+'))
    {
        Some("only letters, digits and - _ . : + are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidToken {
            token: token.to_owned(),
            reason,
        }),
        None => Ok(()),
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

/// Runs SLURM commands. The blocking methods drive a private single-threaded runtime
/// and must not be called from inside an async runtime: use the `_async` ones there.
#[derive(Debug, Default)]
pub struct SlurmClient {
    settings: ClientSettings,
    runtime: OnceLock<Runtime>,
}

/// One command to run.
#[derive(Debug)]
struct Invocation {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<PathBuf>,
    clean_env: bool,
}

impl Invocation {
    /// The command as a user could paste it into a shell.
    fn command_line(&self) -> String {
        let program = self.program.to_string_lossy();
        std::iter::once(program.as_ref())
            .chain(self.args.iter().map(String::as_str))
            .map(shell_word)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// How a single run ended.
enum Outcome {
    Exited(Output),
    TimedOut,
}

/// What a failed command's stderr says about retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// The request never reached the controller: safe to resend.
    NotDelivered,
    /// No answer; the request may or may not have been processed.
    Transient,
    /// A real answer (bad option, invalid partition, ...): retrying cannot help.
    Permanent,
}

fn classify(stderr: &str) -> Failure {
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

fn accounting_disabled(stderr: &str) -> bool {
    stderr
        .to_ascii_lowercase()
        .contains("accounting storage is disabled")
}

fn invalid_job_id(stderr: &str) -> bool {
    stderr.to_ascii_lowercase().contains("invalid job id")
}

/// Stderr as a user should see it: lossy UTF-8, trimmed, at most 4 KiB.
fn clean_stderr(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let mut end = text.len().min(4096);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // `RandomState` is seeded from the OS per process and varies per instance: enough
    // randomness for jitter and tokens without another dependency.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_i128(Timestamp::now().as_nanosecond());
    hasher.finish()
}

/// Kills the process group a child leads (it was spawned with `process_group(0)`).
fn kill_process_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        crate::process::kill_group(pid);
    }
}

fn current_uid() -> u32 {
    // SAFETY: getuid(2) has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

impl SlurmClient {
    /// A client with these settings.
    pub fn new(settings: ClientSettings) -> Self {
        Self {
            settings,
            runtime: OnceLock::new(),
        }
    }

    /// The settings in use.
    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// Whether `sbatch` is installed (on `PATH`, or in `bin_dir`).
    pub fn available(&self) -> bool {
        self.program("sbatch").is_ok()
    }

    /// Submits a job; see the module docs for the de-duplication.
    pub fn submit(&self, req: &SubmitRequest) -> Result<Submitted> {
        self.block_on(self.submit_async(req))?
    }

    /// Asks for the state of jobs, looking `sacct_lookback` back in accounting.
    ///
    /// Every requested id is a key of the answer; see the module docs.
    pub fn query(&self, ids: &[JobId]) -> Result<HashMap<JobId, JobInfo>> {
        self.block_on(self.query_async(ids, None))?
    }

    /// Like [`SlurmClient::query`], with the earliest submission time of the jobs as
    /// `sacct --starttime` (less an hour for clock skew).
    pub fn query_since(
        &self,
        ids: &[JobId],
        earliest: Timestamp,
    ) -> Result<HashMap<JobId, JobInfo>> {
        self.block_on(self.query_async(ids, Some(earliest)))?
    }

    /// Cancels a job (all tasks of an array). A job already finished is not an error.
    pub fn cancel(&self, id: JobId) -> Result<()> {
        self.block_on(self.cancel_async(id))?
    }

    /// What each partition's largest node offers, from `sinfo --Node` (see
    /// [`crate::partition`]).
    pub fn partitions(&self) -> Result<Vec<crate::partition::PartitionLimits>> {
        self.block_on(async {
            let inv = self.query_invocation(
                "sinfo",
                vec![
                    "--noheader".into(),
                    "--Node".into(),
                    format!("--format={}", crate::partition::SINFO_FORMAT),
                ],
            )?;
            let out = self.run_retrying(&inv).await?;
            if !out.status.success() {
                return Err(failed(&inv, &out));
            }
            Ok(crate::partition::parse_sinfo(&String::from_utf8_lossy(
                &out.stdout,
            )))
        })?
    }

    /// Whether the controller answers `scontrol ping` (one try, no retries).
    pub fn ping(&self) -> Result<bool> {
        self.block_on(self.ping_async())?
    }

    fn block_on<F: Future>(&self, fut: F) -> Result<F::Output> {
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
    fn program(&self, name: &str) -> Result<PathBuf> {
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

    fn query_invocation(&self, name: &str, args: Vec<String>) -> Result<Invocation> {
        Ok(Invocation {
            program: self.program(name)?,
            args,
            env: Vec::new(),
            cwd: None,
            clean_env: true,
        })
    }

    fn command(&self, inv: &Invocation) -> Command {
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
    async fn run_once(&self, inv: &Invocation) -> Result<Outcome> {
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
                        source,
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
                    source,
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
    async fn run_retrying(&self, inv: &Invocation) -> Result<Output> {
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

    /// The delay after the `attempt`-th failure: exponential, capped, jittered between
    /// half and all of it.
    fn backoff(&self, attempt: u32) -> Duration {
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

    fn user_filter(&self) -> String {
        match &self.settings.user {
            Some(user) => user.clone(),
            None => current_uid().to_string(),
        }
    }

    fn sbatch_invocation(&self, req: &SubmitRequest) -> Result<Invocation> {
        let mut args = vec!["--parsable".to_owned(), format!("--comment={}", req.token)];
        if let Some(name) = &req.name {
            args.push(format!("--job-name={name}"));
        }
        if let Some(dir) = &req.workdir {
            args.push(format!("--chdir={}", dir.display()));
        }
        args.extend(req.args.iter().cloned());
        args.push(req.script.to_string_lossy().into_owned());
        args.extend(req.script_args.iter().cloned());
        Ok(Invocation {
            program: self.program("sbatch")?,
            args,
            env: req.env.clone(),
            cwd: req.workdir.clone(),
            clean_env: false,
        })
    }

    /// Async form of [`SlurmClient::submit`].
    pub async fn submit_async(&self, req: &SubmitRequest) -> Result<Submitted> {
        validate_token(&req.token)?;
        let inv = self.sbatch_invocation(req)?;
        let first_try = Timestamp::now();
        let attempts = self.settings.retries + 1;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let found = |id| Submitted {
                id,
                cluster: None,
                token: req.token.clone(),
                found_by_lookup: true,
                attempts: attempt,
            };
            let (error, look_up) = match self.run_once(&inv).await? {
                Outcome::Exited(out) if out.status.success() => {
                    let stdout = String::from_utf8_lossy(&out.stdout);
                    if let Ok((id, cluster)) = parse_sbatch_output(&stdout) {
                        return Ok(Submitted {
                            id,
                            cluster,
                            token: req.token.clone(),
                            found_by_lookup: false,
                            attempts: attempt,
                        });
                    }
                    // Submitted, but the id is unreadable: the token finds it.
                    let unexpected = Error::UnexpectedOutput {
                        command: inv.command_line(),
                        what: "job id",
                        text: stdout.trim().to_owned(),
                    };
                    return match self.lookup_token(req, first_try).await {
                        Ok(Some(id)) => Ok(found(id)),
                        Ok(None) | Err(_) => Err(unexpected),
                    };
                }
                Outcome::Exited(out) => {
                    let stderr = clean_stderr(&out.stderr);
                    let failure = classify(&stderr);
                    if failure == Failure::Permanent {
                        return Err(Error::CommandFailed {
                            command: inv.command_line(),
                            status: out.status,
                            stderr,
                        });
                    }
                    let error = Error::ControllerUnreachable {
                        command: inv.command_line(),
                        attempts: attempt,
                        stderr,
                    };
                    (error, failure == Failure::Transient)
                }
                Outcome::TimedOut => {
                    let error = Error::Timeout {
                        command: inv.command_line(),
                        timeout: self.settings.timeout,
                        attempts: attempt,
                    };
                    (error, true)
                }
            };
            if look_up {
                // Wait first: a controller slow enough to time sbatch out may still be
                // registering the job.
                tokio::time::sleep(self.backoff(attempt)).await;
                match self.lookup_token(req, first_try).await {
                    Ok(Some(id)) => return Ok(found(id)),
                    Ok(None) => {}
                    Err(lookup) => {
                        return Err(Error::SubmitUncertain {
                            token: req.token.clone(),
                            command: inv.command_line(),
                            lookup: Box::new(lookup),
                        })
                    }
                }
            }
            if attempt >= attempts {
                return Err(error);
            }
            if !look_up {
                tokio::time::sleep(self.backoff(attempt)).await;
            }
        }
    }

    /// Finds the job carrying `req.token`; see the module docs.
    async fn lookup_token(&self, req: &SubmitRequest, since: Timestamp) -> Result<Option<JobId>> {
        let user = self.user_filter();
        let inv = self.query_invocation(
            "squeue",
            vec![
                "--noheader".into(),
                "--all".into(),
                "--states=all".into(),
                format!("--user={user}"),
                "--format=%F|%k".into(),
            ],
        )?;
        let out = self.run_retrying(&inv).await?;
        if !out.status.success() {
            return Err(failed(&inv, &out));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let ids: BTreeSet<JobId> = stdout
            .lines()
            .filter_map(|l| l.trim().split_once('|'))
            .filter(|(_, comment)| *comment == req.token)
            .filter_map(|(id, _)| id.parse().ok())
            .collect();
        if let Some(id) = ids.first() {
            return Ok(Some(*id));
        }

        let start = since
            .checked_sub(SignedDuration::from_mins(10))
            .unwrap_or(since);
        let inv = self.query_invocation(
            "sacct",
            vec![
                "-X".into(),
                "--parsable2".into(),
                "--noheader".into(),
                format!("--user={user}"),
                format!("--starttime={}", format_time(start)),
                "--format=JobID,Comment,JobName".into(),
            ],
        )?;
        let out = self.run_retrying(&inv).await?;
        if !out.status.success() {
            if accounting_disabled(&String::from_utf8_lossy(&out.stderr)) {
                return Ok(None);
            }
            return Err(failed(&inv, &out));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let ids: BTreeSet<JobId> = stdout
            .lines()
            .filter_map(|l| {
                let mut f = l.trim().splitn(3, '|');
                let (id, comment, name) = (f.next()?, f.next()?, f.next()?);
                (comment == req.token || name == req.token)
                    .then(|| id.parse::<JobRef>().ok().map(|r| r.job))
                    .flatten()
            })
            .collect();
        Ok(ids.first().copied())
    }

    /// Async form of [`SlurmClient::query`] / [`SlurmClient::query_since`].
    pub async fn query_async(
        &self,
        ids: &[JobId],
        earliest: Option<Timestamp>,
    ) -> Result<HashMap<JobId, JobInfo>> {
        let wanted: BTreeSet<JobId> = ids.iter().copied().collect();
        if wanted.is_empty() {
            return Ok(HashMap::new());
        }
        let since = match earliest {
            Some(t) => t.checked_sub(SignedDuration::from_hours(1)).unwrap_or(t),
            None => {
                let back = SignedDuration::try_from(self.settings.sacct_lookback)
                    .unwrap_or(SignedDuration::MAX);
                Timestamp::now()
                    .checked_sub(back)
                    .unwrap_or(Timestamp::UNIX_EPOCH)
            }
        };

        let mut found: HashMap<JobId, Vec<JobInfo>> = HashMap::new();
        let mut sacct_error = None;
        match self.sacct_rows(&wanted, since).await {
            Ok(Some(rows)) => assign(rows, &wanted, &mut found),
            Ok(None) => {}
            Err(e @ (Error::ControllerUnreachable { .. } | Error::Timeout { .. })) => {
                sacct_error = Some(e);
            }
            Err(e) => return Err(e),
        }

        // Ask the controller about jobs accounting does not know, or may not know
        // completely yet (see `accounting_unsure`), and about pending ones: why a job
        // waits is the controller's current word (accounting records it late).
        let ask: BTreeSet<JobId> = wanted
            .iter()
            .filter(|id| {
                found.get(id).is_none_or(|rows| {
                    accounting_unsure(**id, rows)
                        || rows.iter().any(|r| r.state == JobState::Pending)
                })
            })
            .copied()
            .collect();
        if !ask.is_empty() {
            let mut from_ctld: HashMap<JobId, Vec<JobInfo>> = HashMap::new();
            // Only a pending job's reason is at stake when accounting answered for every
            // job asked: its rows stand if the controller does not answer.
            let only_pending = ask.iter().all(|id| {
                found
                    .get(id)
                    .is_some_and(|rows| !accounting_unsure(*id, rows))
            });
            match self.squeue_rows(&ask).await {
                Ok(rows) => assign(rows, &ask, &mut from_ctld),
                Err(_) if only_pending => {}
                Err(e) => return Err(sacct_error.unwrap_or(e)),
            }
            // squeue knows no exit codes and no TRES: ask scontrol about finished jobs,
            // and about jobs that neither accounting nor squeue listed.
            for id in &ask {
                let needed = match from_ctld.get(id) {
                    Some(rows) => rows.iter().any(|r| r.state.is_terminal()),
                    None => !found.contains_key(id),
                };
                if !needed {
                    continue;
                }
                let mut rows = HashMap::new();
                match self.scontrol_rows(*id).await {
                    Ok(r) => assign(r, &BTreeSet::from([*id]), &mut rows),
                    Err(e) => return Err(sacct_error.unwrap_or(e)),
                }
                if let Some(r) = rows.remove(id) {
                    from_ctld.insert(*id, r);
                }
            }
            for (id, ctld_rows) in from_ctld {
                let rows = match found.remove(&id) {
                    Some(acct_rows) => prefer_settled(acct_rows, ctld_rows),
                    None => ctld_rows,
                };
                found.insert(id, rows);
            }
        }

        let mut answer = HashMap::new();
        for id in wanted {
            let info = match found.remove(&id) {
                Some(rows) => merge_rows(id, rows),
                None => match sacct_error.take() {
                    Some(e) => return Err(e),
                    None => JobInfo::not_found(id),
                },
            };
            answer.insert(id, info);
        }
        Ok(answer)
    }

    /// `sacct` rows for `ids`; `None` when accounting is disabled.
    async fn sacct_rows(
        &self,
        ids: &BTreeSet<JobId>,
        since: Timestamp,
    ) -> Result<Option<Vec<JobInfo>>> {
        let inv = self.query_invocation(
            "sacct",
            vec![
                "-X".into(),
                "--parsable2".into(),
                "--noheader".into(),
                format!("--jobs={}", join_ids(ids)),
                format!("--starttime={}", format_time(since)),
                format!("--format={SACCT_FORMAT}"),
            ],
        )?;
        let out = self.run_retrying(&inv).await?;
        if !out.status.success() {
            if accounting_disabled(&String::from_utf8_lossy(&out.stderr)) {
                return Ok(None);
            }
            return Err(failed(&inv, &out));
        }
        parse_sacct(&String::from_utf8_lossy(&out.stdout))
            .map(Some)
            .map_err(|e| unexpected(&inv, e))
    }

    async fn squeue_rows(&self, ids: &BTreeSet<JobId>) -> Result<Vec<JobInfo>> {
        let inv = self.query_invocation(
            "squeue",
            vec![
                "--noheader".into(),
                "--all".into(),
                "--states=all".into(),
                format!("--jobs={}", join_ids(ids)),
                format!("--format={SQUEUE_FORMAT}"),
            ],
        )?;
        let out = self.run_retrying(&inv).await?;
        if !out.status.success() {
            // One unknown id: `slurm_load_jobs error: Invalid job id specified`.
            if invalid_job_id(&String::from_utf8_lossy(&out.stderr)) {
                return Ok(Vec::new());
            }
            return Err(failed(&inv, &out));
        }
        parse_squeue(&String::from_utf8_lossy(&out.stdout)).map_err(|e| unexpected(&inv, e))
    }

    async fn scontrol_rows(&self, id: JobId) -> Result<Vec<JobInfo>> {
        let inv = self.query_invocation(
            "scontrol",
            vec![
                "--all".into(),
                "--oneliner".into(),
                "show".into(),
                "job".into(),
                id.to_string(),
            ],
        )?;
        let out = self.run_retrying(&inv).await?;
        if !out.status.success() {
            if invalid_job_id(&String::from_utf8_lossy(&out.stderr)) {
                return Ok(Vec::new());
            }
            return Err(failed(&inv, &out));
        }
        parse_scontrol(&String::from_utf8_lossy(&out.stdout)).map_err(|e| unexpected(&inv, e))
    }

    /// Async form of [`SlurmClient::cancel`].
    pub async fn cancel_async(&self, id: JobId) -> Result<()> {
        let inv = self.query_invocation("scancel", vec![id.to_string()])?;
        let out = self.run_retrying(&inv).await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("already completing or completed") {
            return Ok(());
        }
        if !out.status.success() {
            return Err(failed(&inv, &out));
        }
        Ok(())
    }

    /// Async form of [`SlurmClient::ping`].
    pub async fn ping_async(&self) -> Result<bool> {
        let inv = self.query_invocation("scontrol", vec!["ping".into()])?;
        match self.run_once(&inv).await? {
            Outcome::Exited(out) => {
                let stdout = String::from_utf8_lossy(&out.stdout);
                Ok(stdout.lines().any(|l| l.trim_end().ends_with(" is UP")))
            }
            Outcome::TimedOut => Ok(false),
        }
    }
}

/// Files rows under the requested id they answer: the array (or plain) job id, or a
/// task's own id when that is what was asked.
fn assign(rows: Vec<JobInfo>, wanted: &BTreeSet<JobId>, found: &mut HashMap<JobId, Vec<JobInfo>>) {
    for row in rows {
        if row.raw_id != row.id && wanted.contains(&row.raw_id) {
            found.entry(row.raw_id).or_default().push(row.clone());
        }
        if wanted.contains(&row.id) {
            found.entry(row.id).or_default().push(row);
        }
    }
}

/// Whether a finished accounting record is complete. slurmdbd briefly shows a job
/// that just ended as `COMPLETED` with an empty `Partition` (seen on 22.05: its start
/// record is written after its end), so a finished row without a partition is not
/// final yet.
fn settled(row: &JobInfo) -> bool {
    !(row.state.is_terminal() && row.partition.is_none())
}

/// Whether accounting's rows for one job may be incomplete: an unsettled row, or an
/// array whose recorded tasks are all finished (a task split from the array shortly
/// before may not be recorded yet, while the array record itself already shows the
/// last task done). A task asked for by its own id is one record, complete in itself.
fn accounting_unsure(id: JobId, rows: &[JobInfo]) -> bool {
    let array_done = rows.iter().any(|r| r.array_task.is_some() && r.id == id)
        && rows.iter().all(|r| r.state.is_terminal());
    array_done || !rows.iter().all(settled)
}

/// Merges one job's accounting rows into the controller's (which are more current):
/// a settled accounting row replaces the controller's row of the same finished task
/// (it is the final record); a record the controller no longer holds is kept.
fn prefer_settled(acct: Vec<JobInfo>, ctld: Vec<JobInfo>) -> Vec<JobInfo> {
    let mut rows = ctld;
    for a in acct {
        match rows.iter_mut().find(|c| c.raw_id == a.raw_id) {
            Some(c) => {
                if c.array_task == a.array_task && c.state.is_terminal() && settled(&a) {
                    *c = a;
                }
            }
            None => rows.push(a),
        }
    }
    rows
}

/// One record per requested id: a plain job's row, a task's row, or an array summary.
fn merge_rows(id: JobId, mut rows: Vec<JobInfo>) -> JobInfo {
    let asked_for_task = rows.len() == 1 && rows[0].raw_id == id && rows[0].id != id;
    if rows.iter().all(|r| r.array_task.is_none()) || asked_for_task {
        rows.swap_remove(0)
    } else {
        JobInfo::summarise_array(id, rows)
    }
}

/// Quotes a word for a shell only when it needs it (`--jobs=1,2` stays as is).
fn shell_word(word: &str) -> std::borrow::Cow<'_, str> {
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

fn join_ids(ids: &BTreeSet<JobId>) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn failed(inv: &Invocation, out: &Output) -> Error {
    Error::CommandFailed {
        command: inv.command_line(),
        status: out.status,
        stderr: clean_stderr(&out.stderr),
    }
}

fn unexpected(inv: &Invocation, e: Error) -> Error {
    match e {
        Error::Parse { what, text } => Error::UnexpectedOutput {
            command: inv.command_line(),
            what,
            text,
        },
        other => other,
    }
}

fn find_on_path(name: &str, path: Option<OsString>) -> Option<PathBuf> {
    std::env::split_paths(&path?)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    //! The client against fake SLURM commands: shell scripts in a temp `bin_dir` that
    //! log their arguments to `<name>.calls` and answer as recorded from real clusters.

    use super::*;
    use crate::state::{ExitCode, JobState, Source};
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    struct Fakes {
        dir: tempfile::TempDir,
    }

    impl Fakes {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// Writes a fake command; `$D` is its folder, `$N` how often it ran (this run
        /// included).
        fn write(&self, name: &str, body: &str) {
            let text = format!(
                "#!/bin/sh\nD=\"$(dirname \"$0\")\"\necho \"$*\" >> \"$D/{name}.calls\"\n\
                 N=$(grep -c '' \"$D/{name}.calls\")\n{body}\n"
            );
            let path = self.path(name);
            fs::write(&path, text).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }

        fn calls(&self, name: &str) -> Vec<String> {
            fs::read_to_string(self.path(&format!("{name}.calls")))
                .map(|s| s.lines().map(str::to_owned).collect())
                .unwrap_or_default()
        }

        fn settings(&self) -> ClientSettings {
            ClientSettings {
                timeout: Duration::from_secs(5),
                retries: 3,
                backoff_initial: Duration::from_millis(10),
                backoff_max: Duration::from_millis(40),
                bin_dir: Some(self.dir.path().to_owned()),
                sacct_lookback: Duration::from_secs(3600),
                user: None,
            }
        }

        fn client(&self) -> SlurmClient {
            SlurmClient::new(self.settings())
        }

        fn client_with_timeout(&self, timeout: Duration) -> SlurmClient {
            SlurmClient::new(ClientSettings {
                timeout,
                ..self.settings()
            })
        }
    }

    fn request(token: &str) -> SubmitRequest {
        SubmitRequest {
            script: PathBuf::from("/scratch/run/job.sbatch"),
            token: token.to_owned(),
            ..SubmitRequest::default()
        }
    }

    /// A fake sbatch that records the job in `$D/queue` (as `squeue --format=%F|%k`
    /// prints it), like a controller that accepted it.
    const SBATCH_RECORDS: &str = r#"tok=""
for a in "$@"; do case "$a" in --comment=*) tok="${a#--comment=}";; esac; done
echo "4242|$tok" >> "$D/queue""#;

    const SQUEUE_FROM_QUEUE: &str = r#"echo "17|(null)"
echo "18|someone-elses-token"
cat "$D/queue" 2>/dev/null
exit 0"#;

    fn process_gone(pid: u32) -> bool {
        match fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        }
    }

    #[test]
    fn submit_passes_everything_to_sbatch() {
        let f = Fakes::new();
        f.write(
            "sbatch",
            r#"echo "$HPCSTAGE_RUN" > "$D/env"; pwd > "$D/cwd"; echo 4242"#,
        );
        let workdir = tempfile::tempdir().unwrap();
        let req = SubmitRequest {
            script: PathBuf::from("/scratch/run/job.sbatch"),
            script_args: vec!["chunk 1".into()],
            workdir: Some(workdir.path().to_owned()),
            name: Some("unet-seg".into()),
            args: vec!["--partition=gpu".into(), "--dependency=afterany:41".into()],
            env: vec![("HPCSTAGE_RUN".into(), "run-7".into())],
            token: "hpcstage-abc.1".into(),
        };
        let sub = f.client().submit(&req).unwrap();
        assert_eq!(
            sub,
            Submitted {
                id: JobId(4242),
                cluster: None,
                token: "hpcstage-abc.1".into(),
                found_by_lookup: false,
                attempts: 1,
            }
        );
        let expected = format!(
            "--parsable --comment=hpcstage-abc.1 --job-name=unet-seg --chdir={} \
             --partition=gpu --dependency=afterany:41 /scratch/run/job.sbatch chunk 1",
            workdir.path().display()
        );
        assert_eq!(f.calls("sbatch"), vec![expected]);
        assert_eq!(fs::read_to_string(f.path("env")).unwrap(), "run-7\n");
        assert_eq!(
            fs::read_to_string(f.path("cwd")).unwrap().trim(),
            workdir.path().canonicalize().unwrap().to_str().unwrap()
        );
    }

    #[test]
    fn submit_reads_the_cluster() {
        let f = Fakes::new();
        f.write("sbatch", "echo 'sbatch: warning: x' >&2; echo '4243;north'");
        let sub = f.client().submit(&request("t1")).unwrap();
        assert_eq!(
            (sub.id, sub.cluster.as_deref()),
            (JobId(4243), Some("north"))
        );
    }

    #[test]
    fn timed_out_sbatch_that_submitted_is_found_not_resubmitted() {
        let f = Fakes::new();
        f.write(
            "sbatch",
            &format!("{SBATCH_RECORDS}\nsleep 30 &\necho $! > \"$D/sleep.pid\"\nwait"),
        );
        f.write("squeue", SQUEUE_FROM_QUEUE);
        f.write("sacct", "exit 0");
        let client = f.client_with_timeout(Duration::from_millis(500));
        let sub = client.submit(&request("tok-hang")).unwrap();
        assert_eq!(sub.id, JobId(4242));
        assert!(sub.found_by_lookup);
        assert_eq!(sub.attempts, 1);
        assert_eq!(f.calls("sbatch").len(), 1, "sbatch must not run twice");
        assert_eq!(
            f.calls("squeue"),
            vec![format!(
                "--noheader --all --states=all --user={} --format=%F|%k",
                current_uid()
            )]
        );
        assert!(f.calls("sacct").is_empty(), "squeue knew it");
        // The wrapper's `sleep` was in the killed process group.
        let pid: u32 = fs::read_to_string(f.path("sleep.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while !process_gone(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            process_gone(pid),
            "the hung sbatch's child {pid} still runs"
        );
    }

    #[test]
    fn timed_out_sbatch_that_did_not_submit_is_retried_once_looked_up() {
        let f = Fakes::new();
        f.write(
            "sbatch",
            r#"if [ "$N" -eq 1 ]; then sleep 30; fi
echo 4250"#,
        );
        f.write("squeue", SQUEUE_FROM_QUEUE);
        f.write("sacct", "echo '40|other|x'");
        let client = f.client_with_timeout(Duration::from_millis(400));
        let sub = client.submit(&request("tok-retry")).unwrap();
        assert_eq!(sub.id, JobId(4250));
        assert!(!sub.found_by_lookup);
        assert_eq!(sub.attempts, 2);
        assert_eq!(f.calls("squeue").len(), 1);
        let sacct = f.calls("sacct");
        assert_eq!(sacct.len(), 1);
        assert!(
            sacct[0].starts_with("-X --parsable2 --noheader --user=")
                && sacct[0].contains(" --starttime=")
                && sacct[0].ends_with(" --format=JobID,Comment,JobName"),
            "{sacct:?}"
        );
    }

    #[test]
    fn socket_timeout_after_submitting_is_found_in_accounting_by_name() {
        let f = Fakes::new();
        // The job ran and left the controller already; accounting has it, without
        // the comment (no AccountingStoreFlags=job_comment), under the token as name.
        f.write(
            "sbatch",
            "echo 'sbatch: error: Batch job submission failed: Socket timed out on send/recv operation' >&2; exit 1",
        );
        f.write("squeue", "exit 0");
        f.write(
            "sacct",
            "echo '4260||tok-name'\necho '4261_1||other'\necho '4262|tok-name-not|x'",
        );
        let mut req = request("tok-name");
        req.name = Some("tok-name".into());
        let sub = f.client().submit(&req).unwrap();
        assert_eq!((sub.id, sub.found_by_lookup), (JobId(4260), true));
        assert_eq!(f.calls("sbatch").len(), 1);
    }

    #[test]
    fn array_job_found_by_comment_in_accounting() {
        let f = Fakes::new();
        f.write("sbatch", "sleep 30");
        f.write("squeue", "exit 0");
        f.write(
            "sacct",
            "echo '4270_1|tok-arr|job'\necho '4270_[2-3]|tok-arr|job'",
        );
        let sub = f
            .client_with_timeout(Duration::from_millis(300))
            .submit(&request("tok-arr"))
            .unwrap();
        assert_eq!((sub.id, sub.found_by_lookup), (JobId(4270), true));
    }

    #[test]
    fn connect_failure_is_retried_without_lookup() {
        let f = Fakes::new();
        f.write(
            "sbatch",
            r#"if [ "$N" -le 2 ]; then
  echo 'sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)' >&2
  exit 1
fi
echo 99"#,
        );
        let sub = f.client().submit(&request("tok-cf")).unwrap();
        assert_eq!(
            (sub.id, sub.attempts, sub.found_by_lookup),
            (JobId(99), 3, false)
        );
        assert!(
            f.calls("squeue").is_empty(),
            "nothing was sent: no lookup needed"
        );
    }

    #[test]
    fn controller_down_gives_up_after_the_retries() {
        let f = Fakes::new();
        f.write(
            "sbatch",
            "echo 'sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)' >&2; exit 1",
        );
        let err = f.client().submit(&request("tok-down")).unwrap_err();
        match &err {
            Error::ControllerUnreachable {
                attempts, stderr, ..
            } => {
                assert_eq!(*attempts, 4);
                assert!(stderr.contains("Unable to contact slurm controller"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(f.calls("sbatch").len(), 4);
        assert!(err.to_string().contains("failed 4 times"), "{err}");
    }

    #[test]
    fn rejected_submission_fails_at_once_with_stderr() {
        let f = Fakes::new();
        f.write(
            "sbatch",
            "echo 'sbatch: error: Batch job submission failed: Invalid partition name specified' >&2; exit 1",
        );
        let mut req = request("tok-bad");
        req.args = vec!["--partition=nope".into()];
        let err = f.client().submit(&req).unwrap_err();
        match &err {
            Error::CommandFailed {
                command,
                status,
                stderr,
            } => {
                assert!(command.contains("--partition=nope"), "{command}");
                assert_eq!(status.code(), Some(1));
                assert_eq!(
                    stderr,
                    "sbatch: error: Batch job submission failed: Invalid partition name specified"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(f.calls("sbatch").len(), 1);
        assert!(f.calls("squeue").is_empty());
    }

    #[test]
    fn failed_lookup_stops_instead_of_risking_a_duplicate() {
        let f = Fakes::new();
        f.write("sbatch", "sleep 30");
        f.write(
            "squeue",
            "echo 'squeue: error: Socket timed out on send/recv operation' >&2; exit 1",
        );
        let err = f
            .client_with_timeout(Duration::from_millis(300))
            .submit(&request("tok-unsure"))
            .unwrap_err();
        match &err {
            Error::SubmitUncertain { token, lookup, .. } => {
                assert_eq!(token, "tok-unsure");
                assert!(matches!(**lookup, Error::ControllerUnreachable { .. }));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(f.calls("sbatch").len(), 1);
        assert_eq!(f.calls("squeue").len(), 4, "the lookup itself was retried");
        assert!(err.to_string().contains("tok-unsure"));
    }

    #[test]
    fn unreadable_sbatch_output_is_resolved_by_the_token() {
        let f = Fakes::new();
        f.write(
            "sbatch",
            &format!("{SBATCH_RECORDS}\necho 'queued, probably'"),
        );
        f.write("squeue", SQUEUE_FROM_QUEUE);
        let sub = f.client().submit(&request("tok-odd")).unwrap();
        assert_eq!((sub.id, sub.found_by_lookup), (JobId(4242), true));
    }

    #[test]
    fn bad_tokens_are_refused_before_running_anything() {
        let f = Fakes::new();
        f.write("sbatch", "echo 1");
        for token in ["", "has space", "a|b", "a,b"] {
            let err = f.client().submit(&request(token)).unwrap_err();
            assert!(
                matches!(err, Error::InvalidToken { .. }),
                "{token:?}: {err}"
            );
        }
        assert!(f.calls("sbatch").is_empty());
        let t = new_token();
        assert!(validate_token(&t).is_ok(), "{t}");
        assert_ne!(new_token(), t);
    }

    const SACCT_ROWS: &str = "\
41|41|COMPLETED|0:0|0:0|2|2024-05-02T10:00:01|2024-05-02T10:00:03|localhost|debug|root|billing=1,cpu=1,node=1|root|None|t41|hello
43|43|OUT_OF_MEMORY|0:125|0:0|12|2024-05-02T10:02:00|2024-05-02T10:02:12|localhost|gpu|lab|billing=2,cpu=2,gres/gpu=1,node=1|alice|None||unet
51|50_1|COMPLETED|0:0|0:0|3|2024-05-02T10:05:00|2024-05-02T10:05:03|localhost|debug|lab|billing=1,cpu=1,node=1|alice|None||arr
50|50_[2-3]|PENDING|0:0|0:0|0|Unknown|Unknown|None assigned|debug|lab||alice|Priority||arr";

    fn sacct_printing(rows: &str) -> String {
        format!("cat <<'EOF'\n{rows}\nEOF")
    }

    #[test]
    fn one_batched_sacct_call_answers_everything() {
        let f = Fakes::new();
        f.write("sacct", &sacct_printing(SACCT_ROWS));
        let since: Timestamp = "2024-05-02T08:00:00Z".parse().unwrap();
        let ids = [JobId(43), JobId(41), JobId(50), JobId(41)];
        let got = f.client().query_since(&ids, since).unwrap();
        let calls = f.calls("sacct");
        assert_eq!(
            calls,
            vec![format!(
                "-X --parsable2 --noheader --jobs=41,43,50 --starttime={} --format={SACCT_FORMAT}",
                format_time(since.checked_sub(SignedDuration::from_hours(1)).unwrap())
            )]
        );
        // Only the array with pending tasks is asked of the controller, for its reason;
        // the controller not answering leaves accounting's word.
        assert_eq!(f.calls("squeue").len(), 0, "no fake squeue: the call fails");
        assert_eq!(got[&JobId(50)].tasks[1].reason.as_deref(), Some("Priority"));
        assert_eq!(got.len(), 3);
        assert_eq!(got[&JobId(41)].state, JobState::Completed);
        assert_eq!(got[&JobId(43)].state, JobState::OutOfMemory);
        assert_eq!(got[&JobId(43)].gpus, 1);
        let array = &got[&JobId(50)];
        assert_eq!(array.state, JobState::Pending, "two tasks still pending");
        assert!(!array.state.is_terminal());
        assert_eq!(array.tasks.len(), 2);
        assert_eq!(array.tasks[0].raw_id, JobId(51));
    }

    #[test]
    fn a_pending_job_gets_the_controllers_current_reason() {
        let f = Fakes::new();
        f.write(
            "sacct",
            &sacct_printing(
                "70|70|PENDING|0:0|0:0|0|Unknown|Unknown|None assigned|gpu|lab||alice|None||unet\n\
                 41|41|COMPLETED|0:0|0:0|2|2024-05-02T10:00:01|2024-05-02T10:00:03|localhost|debug|root|billing=1,cpu=1,node=1|root|None|t41|hello",
            ),
        );
        f.write(
            "squeue",
            "echo '70|70|PENDING|0:00|N/A|N/A||gpu|lab|alice|PartitionConfig|gres:gpu:1|t70|unet'",
        );
        let got = f.client().query(&[JobId(70), JobId(41)]).unwrap();
        let squeue = f.calls("squeue");
        assert_eq!(squeue.len(), 1);
        assert!(
            squeue[0].contains("--jobs=70 "),
            "only the pending job: {squeue:?}"
        );
        assert_eq!(got[&JobId(70)].reason.as_deref(), Some("PartitionConfig"));
        assert_eq!(got[&JobId(70)].state, JobState::Pending);
        assert_eq!(got[&JobId(41)].state, JobState::Completed);
    }

    #[test]
    fn a_task_asked_for_by_its_own_id_is_answered_as_that_task() {
        let f = Fakes::new();
        f.write("sacct", &sacct_printing(SACCT_ROWS));
        let got = f.client().query(&[JobId(51)]).unwrap();
        let task = &got[&JobId(51)];
        assert_eq!(task.id, JobId(50));
        assert_eq!(task.array_task, Some(crate::state::ArrayTask::Index(1)));
        assert!(task.tasks.is_empty());
    }

    #[test]
    fn an_array_accounting_thinks_done_is_checked_with_the_controller() {
        let f = Fakes::new();
        // Task 2 (job 52) started moments ago and is not in accounting yet.
        f.write(
            "sacct",
            &sacct_printing(
                "51|50_1|COMPLETED|0:0|0:0|3|2024-05-02T10:05:00|2024-05-02T10:05:03|localhost|debug|lab|billing=1,cpu=1,node=1|alice|None||arr
50|50_3|COMPLETED|0:0|0:0|3|2024-05-02T10:05:00|2024-05-02T10:05:03|localhost|debug|lab|billing=1,cpu=1,node=1|alice|None||arr",
            ),
        );
        f.write(
            "squeue",
            "echo '52|50_2|RUNNING|0:01|2024-05-02T10:05:04|N/A|localhost|debug|lab|alice|None|N/A||arr'
echo '51|50_1|COMPLETED|0:03|2024-05-02T10:05:00|2024-05-02T10:05:03|localhost|debug|lab|alice|None|N/A||arr'
echo '50|50_3|COMPLETED|0:03|2024-05-02T10:05:00|2024-05-02T10:05:03|localhost|debug|lab|alice|None|N/A||arr'",
        );
        f.write(
            "scontrol",
            "echo 'JobId=52 ArrayJobId=50 ArrayTaskId=2 JobName=arr JobState=RUNNING Reason=None ExitCode=0:0 RunTime=00:00:01 StartTime=2024-05-02T10:05:04 EndTime=2024-05-02T11:05:04 Partition=debug NodeList=localhost TRES=cpu=1,node=1'
echo 'JobId=51 ArrayJobId=50 ArrayTaskId=1 JobName=arr JobState=COMPLETED Reason=None ExitCode=0:0 RunTime=00:00:03 StartTime=2024-05-02T10:05:00 EndTime=2024-05-02T10:05:03 Partition=debug NodeList=localhost TRES=cpu=1,node=1'
echo 'JobId=50 ArrayJobId=50 ArrayTaskId=3 JobName=arr JobState=COMPLETED Reason=None ExitCode=0:0 RunTime=00:00:03 StartTime=2024-05-02T10:05:00 EndTime=2024-05-02T10:05:03 Partition=debug NodeList=localhost TRES=cpu=1,node=1'",
        );
        let got = f.client().query(&[JobId(50)]).unwrap();
        let array = &got[&JobId(50)];
        assert_eq!(array.state, JobState::Running, "{array:#?}");
        let tasks: Vec<String> = array
            .tasks
            .iter()
            .map(|t| format!("{} {} {:?}", t.job_ref(), t.state, t.source))
            .collect();
        assert_eq!(
            tasks,
            [
                "50_1 COMPLETED Sacct",
                "50_2 RUNNING Scontrol",
                "50_3 COMPLETED Sacct"
            ]
        );
        assert_eq!(f.calls("scontrol"), ["--all --oneliner show job 50"]);
    }

    #[test]
    fn an_array_the_controller_forgot_is_taken_from_accounting() {
        let f = Fakes::new();
        f.write(
            "sacct",
            &sacct_printing(
                "51|50_1|COMPLETED|0:0|0:0|3|2024-05-02T10:05:00|2024-05-02T10:05:03|localhost|debug|lab|billing=1,cpu=1,node=1|alice|None||arr
50|50_2|FAILED|2:0|0:0|3|2024-05-02T10:05:00|2024-05-02T10:05:03|localhost|debug|lab|billing=1,cpu=1,node=1|alice|None||arr",
            ),
        );
        f.write(
            "squeue",
            "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1",
        );
        f.write("scontrol", "exit 99");
        let got = f.client().query(&[JobId(50)]).unwrap();
        let array = &got[&JobId(50)];
        assert_eq!(array.state, JobState::Failed);
        assert_eq!(
            array.exit_code,
            Some(ExitCode {
                status: 2,
                signal: 0
            })
        );
        assert_eq!(f.calls("squeue").len(), 1);
        assert!(f.calls("scontrol").is_empty());
    }

    #[test]
    fn an_unsettled_accounting_record_is_completed_from_the_controller() {
        let f = Fakes::new();
        // Recorded on the test cluster a moment after the job ended: no partition yet.
        f.write(
            "sacct",
            &sacct_printing(
                "34|34|COMPLETED|0:0|0:0|0|2026-11-27T21:43:20|2026-11-27T21:43:20|localhost||root|billing=1,cpu=1,node=1|root|None||race1",
            ),
        );
        f.write(
            "squeue",
            "echo '34|34|COMPLETED|0:00|2026-11-27T21:43:20|2026-11-27T21:43:20|localhost|debug|root|root|None|N/A|(null)|race1'",
        );
        f.write(
            "scontrol",
            "echo 'JobId=34 JobName=race1 UserId=root(0) Account=root JobState=COMPLETED Reason=None Restarts=0 ExitCode=0:0 DerivedExitCode=0:0 RunTime=00:00:00 StartTime=2026-11-27T21:43:20 EndTime=2026-11-27T21:43:20 Partition=debug NodeList=localhost TRES=cpu=1,node=1,billing=1'",
        );
        let got = f.client().query(&[JobId(34)]).unwrap();
        let job = &got[&JobId(34)];
        assert_eq!(job.source, Source::Scontrol);
        assert_eq!(job.partition.as_deref(), Some("debug"));
        assert_eq!(job.state, JobState::Completed);
    }

    #[test]
    fn socket_timeouts_are_retried_with_backoff() {
        let f = Fakes::new();
        f.write(
            "sacct",
            &format!(
                "if [ \"$N\" -le 2 ]; then echo 'sacct: error: slurm_persist_conn_open_without_init: failed to open persistent connection to host:localhost:6819: Socket timed out on send/recv operation' >&2; exit 1; fi\n{}",
                sacct_printing(SACCT_ROWS)
            ),
        );
        let started = std::time::Instant::now();
        let got = f.client().query(&[JobId(41)]).unwrap();
        assert_eq!(got[&JobId(41)].exit_code, Some(ExitCode::default()));
        assert_eq!(f.calls("sacct").len(), 3);
        // Two backoffs of at least 5 ms and 10 ms (half of 10 ms and 20 ms).
        assert!(started.elapsed() >= Duration::from_millis(15));
    }

    #[test]
    fn accounting_disabled_falls_back_to_squeue_then_scontrol() {
        let f = Fakes::new();
        f.write(
            "sacct",
            "echo 'sacct: error: Slurm accounting storage is disabled' >&2; exit 1",
        );
        f.write(
            "squeue",
            "echo '61|61|RUNNING|1:05|2024-05-02T10:00:00|2024-05-02T11:00:00|localhost|gpu|root|root|None|gres:gpu:1|t61|unet'
echo '62|62|COMPLETED|0:03|2024-05-02T10:00:00|2024-05-02T10:00:03|localhost|debug|root|root|None|N/A|t62|done'",
        );
        f.write(
            "scontrol",
            r#"case "$*" in
*" 62") echo 'JobId=62 JobName=done UserId=root(0) GroupId=root(0) Account=root QOS=normal JobState=COMPLETED Reason=None Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 DerivedExitCode=0:0 RunTime=00:00:03 TimeLimit=UNLIMITED SubmitTime=2024-05-02T10:00:00 StartTime=2024-05-02T10:00:00 EndTime=2024-05-02T10:00:03 Partition=debug NodeList=localhost TRES=cpu=1,mem=100M,node=1,billing=1 Comment=t62 Command=/x WorkDir=/tmp' ;;
*) echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1 ;;
esac"#,
        );
        let got = f
            .client()
            .query(&[JobId(61), JobId(62), JobId(63)])
            .unwrap();
        let squeue = f.calls("squeue");
        assert_eq!(squeue.len(), 1, "one batched squeue");
        assert!(squeue[0].contains("--jobs=61,62,63"), "{squeue:?}");
        assert_eq!(
            f.calls("scontrol"),
            vec![
                "--all --oneliner show job 62".to_owned(),
                "--all --oneliner show job 63".to_owned()
            ],
            "scontrol for the finished job and the one squeue did not list"
        );
        assert_eq!(got[&JobId(61)].state, JobState::Running);
        assert_eq!(got[&JobId(61)].source, Source::Squeue);
        assert_eq!(got[&JobId(61)].gpus, 1);
        let done = &got[&JobId(62)];
        assert_eq!(
            (done.source, done.exit_code),
            (Source::Scontrol, Some(ExitCode::default()))
        );
        let gone = &got[&JobId(63)];
        assert_eq!(gone.source, Source::NotFound);
        assert_eq!(gone.state.to_string(), "NOT_FOUND");
        assert!(
            !gone.state.is_terminal(),
            "a vanished job is never assumed done"
        );
    }

    #[test]
    fn a_job_nobody_knows_is_not_found_not_completed() {
        let f = Fakes::new();
        f.write("sacct", "exit 0");
        f.write(
            "squeue",
            "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1",
        );
        f.write(
            "scontrol",
            "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1",
        );
        let got = f.client().query(&[JobId(7)]).unwrap();
        assert_eq!(got[&JobId(7)], JobInfo::not_found(JobId(7)));
    }

    #[test]
    fn database_down_but_controller_knows_the_job() {
        let f = Fakes::new();
        f.write(
            "sacct",
            "echo 'sacct: error: Problem talking to the database: Connection refused' >&2; exit 1",
        );
        f.write(
            "squeue",
            "echo '70|70|PENDING|0:00|N/A|N/A||debug|root|root|Dependency|N/A|t|pull'",
        );
        let got = f.client().query(&[JobId(70)]).unwrap();
        assert_eq!(got[&JobId(70)].state, JobState::Pending);
        assert_eq!(f.calls("sacct").len(), 4);
    }

    #[test]
    fn database_down_and_job_gone_from_controller_is_an_error() {
        let f = Fakes::new();
        f.write(
            "sacct",
            "echo 'sacct: error: Problem talking to the database: Connection refused' >&2; exit 1",
        );
        f.write("squeue", "exit 0");
        f.write(
            "scontrol",
            "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1",
        );
        let err = f.client().query(&[JobId(71)]).unwrap_err();
        assert!(
            matches!(&err, Error::ControllerUnreachable { command, .. } if command.contains("sacct")),
            "{err:?}"
        );
    }

    #[test]
    fn controller_down_is_reported_after_retries() {
        let f = Fakes::new();
        let down = "echo 'error: Unable to contact slurm controller (connect failure)' >&2; exit 1";
        f.write(
            "sacct",
            "echo 'sacct: error: Problem talking to the database: Connection refused' >&2; exit 1",
        );
        f.write("squeue", down);
        let err = f.client().query(&[JobId(72)]).unwrap_err();
        assert!(
            matches!(err, Error::ControllerUnreachable { attempts: 4, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn hanging_commands_time_out_and_are_killed() {
        let f = Fakes::new();
        f.write("sacct", "sleep 30");
        let client = SlurmClient::new(ClientSettings {
            timeout: Duration::from_millis(200),
            retries: 1,
            ..f.settings()
        });
        let started = std::time::Instant::now();
        let err = client.query(&[JobId(1)]).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        match &err {
            Error::Timeout {
                attempts, timeout, ..
            } => assert_eq!((*attempts, *timeout), (2, Duration::from_millis(200))),
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            err.to_string().contains("within 0.2 s (2 attempts)"),
            "{err}"
        );
    }

    #[test]
    fn query_environment_is_cleaned_but_sbatch_keeps_the_callers() {
        // Values that would break parsing if they reached the commands. Other tests
        // running meanwhile see them too, which only makes them stricter.
        for (k, v) in [
            ("SQUEUE_FORMAT", "%all"),
            ("SQUEUE_FORMAT2", "all"),
            ("SACCT_FORMAT", "jobid%50"),
            ("SINFO_FORMAT", "%all"),
            ("SLURM_TIME_FORMAT", "relative"),
            ("SQUEUE_SORT", "-t"),
            ("SQUEUE_USERS", "nobody"),
        ] {
            std::env::set_var(k, v);
        }
        let f = Fakes::new();
        f.write("sacct", "env > \"$D/sacct.env\"; exit 0");
        f.write("squeue", "exit 0");
        f.write("scontrol", "exit 0");
        f.write("sbatch", "env > \"$D/sbatch.env\"; echo 5");
        f.client().query(&[JobId(1)]).unwrap();
        let env = fs::read_to_string(f.path("sacct.env")).unwrap();
        for var in [
            "SQUEUE_FORMAT=",
            "SQUEUE_FORMAT2=",
            "SACCT_FORMAT=",
            "SINFO_FORMAT=",
            "SLURM_TIME_FORMAT=",
            "SQUEUE_SORT=",
            "SQUEUE_USERS=",
        ] {
            assert!(!env.lines().any(|l| l.starts_with(var)), "{var} leaked");
        }
        assert!(env.lines().any(|l| l == "LC_ALL=C"));
        f.client().submit(&request("tok-env")).unwrap();
        let env = fs::read_to_string(f.path("sbatch.env")).unwrap();
        assert!(
            env.lines().any(|l| l == "SLURM_TIME_FORMAT=relative"),
            "sbatch exports its environment into the job: it is left alone"
        );
    }

    #[test]
    fn missing_commands_say_slurm_is_not_installed() {
        let f = Fakes::new();
        let client = f.client();
        assert!(!client.available());
        let err = client.submit(&request("tok-x")).unwrap_err();
        assert!(
            matches!(&err, Error::NotInstalled { program, on_path: false } if program.ends_with("/sbatch")),
            "{err:?}"
        );
        f.write("sbatch", "echo 1");
        assert!(client.available());

        let path = std::env::join_paths([f.dir.path()]).unwrap();
        assert_eq!(
            find_on_path("sbatch", Some(path.clone())),
            Some(f.path("sbatch"))
        );
        assert_eq!(find_on_path("sacct", Some(path)), None);
        fs::write(f.path("squeue"), "not executable").unwrap();
        let path = std::env::join_paths([f.dir.path()]).unwrap();
        assert_eq!(find_on_path("squeue", Some(path)), None);
        let err = SlurmClient::new(ClientSettings::default())
            .program("surely-not-a-slurm-command")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "SLURM is not installed here: `surely-not-a-slurm-command` was not found on PATH"
        );
    }

    #[test]
    fn cancel() {
        let f = Fakes::new();
        f.write("scancel", "exit 0");
        f.client().cancel(JobId(5)).unwrap();
        assert_eq!(f.calls("scancel"), vec!["5".to_owned()]);

        f.write(
            "scancel",
            "echo 'scancel: error: Kill job error on job id 6: Job/step already completing or completed' >&2; exit 1",
        );
        f.client().cancel(JobId(6)).unwrap();

        f.write(
            "scancel",
            "echo 'scancel: error: Kill job error on job id 7: Invalid job id specified' >&2; exit 1",
        );
        let err = f.client().cancel(JobId(7)).unwrap_err();
        assert!(matches!(err, Error::CommandFailed { .. }), "{err:?}");
    }

    #[test]
    fn ping() {
        let f = Fakes::new();
        f.write("scontrol", "echo 'Slurmctld(primary) at vm is UP'");
        assert!(f.client().ping().unwrap());
        f.write(
            "scontrol",
            "echo 'Slurmctld(primary) at vm is DOWN'; echo 'Slurmctld(backup) at b is UP'",
        );
        assert!(f.client().ping().unwrap(), "the backup answers");
        f.write(
            "scontrol",
            "echo 'Slurmctld(primary) at vm is DOWN'; exit 1",
        );
        assert!(!f.client().ping().unwrap());
        f.write("scontrol", "sleep 30");
        assert!(!f
            .client_with_timeout(Duration::from_millis(200))
            .ping()
            .unwrap());
    }

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let client = SlurmClient::new(ClientSettings {
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            ..ClientSettings::default()
        });
        for _ in 0..50 {
            let first = client.backoff(1);
            assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
            let third = client.backoff(3);
            assert!(third >= Duration::from_secs(2) && third <= Duration::from_secs(4));
            let late = client.backoff(40);
            assert!(late >= Duration::from_secs(15) && late <= Duration::from_secs(30));
        }
        let samples: BTreeSet<Duration> = (0..20).map(|_| client.backoff(2)).collect();
        assert!(samples.len() > 1, "jittered");
    }

    #[test]
    fn errors_name_the_command_and_keep_stderr() {
        let f = Fakes::new();
        f.write(
            "sacct",
            "echo '  sacct: fatal: Invalid field requested: \"Bogus\"  ' >&2; exit 1",
        );
        let err = f.client().query(&[JobId(3)]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("sacct -X --parsable2 --noheader --jobs=3"),
            "{text}"
        );
        assert!(
            text.ends_with(": sacct: fatal: Invalid field requested: \"Bogus\""),
            "{text}"
        );
        assert_eq!(f.calls("sacct").len(), 1, "a real answer is not retried");
    }

    #[test]
    fn command_lines_paste_into_a_shell() {
        assert_eq!(shell_word("--jobs=1,2"), "--jobs=1,2");
        assert_eq!(shell_word("--format=%F|%k"), "'--format=%F|%k'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn classification() {
        assert_eq!(
            classify("sbatch: error: Batch job submission failed: Socket timed out on send/recv operation"),
            Failure::Transient
        );
        assert_eq!(
            classify("squeue: error: Unable to contact slurm controller (connect failure)"),
            Failure::NotDelivered
        );
        assert_eq!(
            classify(
                "sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying"
            ),
            Failure::NotDelivered
        );
        assert_eq!(
            classify("sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified"),
            Failure::Permanent
        );
    }
}
