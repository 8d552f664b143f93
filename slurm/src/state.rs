//! What SLURM says about a job, as types: ids, array tasks, states, exit codes and job
//! records, and how the rows of one array are summarised into one record.
//!
//! The text SLURM prints is read into these types by `parse.rs`; this module runs no
//! processes (that is `client/`) and parses only its own values (`123_4`, `0:15`,
//! `CANCELLED by 0`).
//!
//! - States are printed in full by `--parsable2`, including `CANCELLED by <uid>`; a
//!   trailing `+` (a truncated column) is tolerated.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_with::{DeserializeFromStr, SerializeDisplay};

use crate::error::{Error, Result};
use crate::parse::parse_error;

/// A SLURM job id: a plain job, or the base id of a job array.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<u64> for JobId {
    fn from(id: u64) -> Self {
        Self(id)
    }
}

impl FromStr for JobId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(parse_error("job id", s));
        }
        t.parse().map(Self).map_err(|_| parse_error("job id", s))
    }
}

/// The task part of an array job id: `4` in `123_4`, `[2-5%2]` in `123_[2-5%2]`.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, SerializeDisplay, DeserializeFromStr,
)]
pub enum ArrayTask {
    /// One task, by index.
    Index(u32),
    /// Tasks not yet split from the array record (still pending), as SLURM prints their
    /// index expression, without brackets: `2-5`, `1,3,7-9%2`.
    Pending(String),
}

impl ArrayTask {
    /// The lowest index mentioned, for sorting.
    fn first_index(&self) -> u32 {
        match self {
            Self::Index(i) => *i,
            Self::Pending(spec) => {
                let digits: String = spec.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().unwrap_or(u32::MAX)
            }
        }
    }
}

impl fmt::Display for ArrayTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Index(i) => write!(f, "{i}"),
            Self::Pending(spec) => write!(f, "[{spec}]"),
        }
    }
}

impl FromStr for ArrayTask {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        if let Some(inner) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            if !inner.is_empty()
                && inner
                    .chars()
                    .all(|c| c.is_ascii_digit() || matches!(c, '-' | ',' | '%' | ':'))
            {
                return Ok(Self::Pending(inner.to_owned()));
            }
        } else if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(i) = t.parse() {
                return Ok(Self::Index(i));
            }
        }
        Err(parse_error("array task id", s))
    }
}

/// A job as SLURM writes it in `JobID` columns: `123`, `123_4` or `123_[2-5]`.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, SerializeDisplay, DeserializeFromStr,
)]
pub struct JobRef {
    /// The job id, or the array's base id.
    pub job: JobId,
    /// The array task, for array jobs.
    pub task: Option<ArrayTask>,
}

impl From<JobId> for JobRef {
    fn from(job: JobId) -> Self {
        Self { job, task: None }
    }
}

impl fmt::Display for JobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.task {
            Some(task) => write!(f, "{}_{task}", self.job),
            None => write!(f, "{}", self.job),
        }
    }
}

impl FromStr for JobRef {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        let (job, task) = match t.split_once('_') {
            Some((job, task)) => (
                job,
                Some(task.parse().map_err(|_| parse_error("job id", s))?),
            ),
            None => (t, None),
        };
        let job = job.parse().map_err(|_| parse_error("job id", s))?;
        Ok(Self { job, task })
    }
}

/// A job state, spelled as SLURM spells it (`JOB STATE CODES` in sacct(1)).
#[derive(Clone, Debug, PartialEq, Eq, Hash, SerializeDisplay, DeserializeFromStr)]
pub enum JobState {
    /// Waiting for resources, a dependency or a begin time.
    Pending,
    /// Has an allocation.
    Running,
    /// Suspended by an administrator or the preemption logic.
    Suspended,
    /// Finished; the controller waits for the nodes (and the `Epilog`) to clean up.
    Completing,
    /// Every process exited 0.
    Completed,
    /// Non-zero exit or another failure.
    Failed,
    /// Cancelled; `CANCELLED by <uid>` keeps the uid.
    Cancelled {
        /// The uid that cancelled the job, when SLURM says.
        by: Option<u32>,
    },
    /// Reached its time limit.
    Timeout,
    /// Killed by the out-of-memory handling.
    OutOfMemory,
    /// A node of the allocation failed.
    NodeFail,
    /// Preempted and not requeued.
    Preempted,
    /// Requeued: it will run again.
    Requeued,
    /// The node could not be booted.
    BootFail,
    /// Reached its deadline (`--deadline`) before it could run.
    Deadline,
    /// A federated sibling that was revoked (ran on another cluster).
    Revoked,
    /// Changing size.
    Resizing,
    /// Anything else SLURM prints (`SPECIAL_EXIT`, `STOPPED`, `REQUEUE_HOLD`, ...), or
    /// `NOT_FOUND` when no source knows the job. Never terminal.
    Unknown(String),
}

/// The state given to a job no source knows (see `client/`).
pub const NOT_FOUND: &str = "NOT_FOUND";

impl JobState {
    /// The job will not run again: it is over, successfully or not.
    ///
    /// `REQUEUED` is not terminal (the job runs again); `PREEMPTED` is, because a job
    /// that is preempted *and requeued* is reported as `REQUEUED`/`PENDING` instead.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Completed
                | Self::Failed
                | Self::Cancelled { .. }
                | Self::Timeout
                | Self::OutOfMemory
                | Self::NodeFail
                | Self::Preempted
                | Self::BootFail
                | Self::Deadline
                | Self::Revoked
        )
    }

    /// Only `COMPLETED` is a success.
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Completed)
    }

    /// The bare SLURM name, without `by <uid>`.
    pub fn name(&self) -> &str {
        match self {
            Self::Pending => "PENDING",
            Self::Running => "RUNNING",
            Self::Suspended => "SUSPENDED",
            Self::Completing => "COMPLETING",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Cancelled { .. } => "CANCELLED",
            Self::Timeout => "TIMEOUT",
            Self::OutOfMemory => "OUT_OF_MEMORY",
            Self::NodeFail => "NODE_FAIL",
            Self::Preempted => "PREEMPTED",
            Self::Requeued => "REQUEUED",
            Self::BootFail => "BOOT_FAIL",
            Self::Deadline => "DEADLINE",
            Self::Revoked => "REVOKED",
            Self::Resizing => "RESIZING",
            Self::Unknown(s) => s,
        }
    }

    /// How strongly a state describes an array as a whole (higher wins when tasks
    /// disagree): running beats pending, any failure beats success.
    fn activity_rank(&self) -> u8 {
        match self {
            Self::Running => 9,
            Self::Completing => 8,
            Self::Resizing => 7,
            Self::Suspended => 6,
            Self::Requeued => 5,
            Self::Unknown(_) => 4,
            Self::Pending => 3,
            _ => 0,
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cancelled { by: Some(uid) } => write!(f, "CANCELLED by {uid}"),
            other => f.write_str(other.name()),
        }
    }
}

impl FromStr for JobState {
    type Err = std::convert::Infallible;

    /// Never fails: unrecognised text becomes [`JobState::Unknown`].
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let t = s.trim().trim_end_matches('+').trim();
        let (word, rest) = match t.split_once(char::is_whitespace) {
            Some((w, r)) => (w, r.trim()),
            None => (t, ""),
        };
        let state = match word {
            "PENDING" => Self::Pending,
            "RUNNING" => Self::Running,
            "SUSPENDED" => Self::Suspended,
            "COMPLETING" => Self::Completing,
            "COMPLETED" => Self::Completed,
            "FAILED" => Self::Failed,
            "CANCELLED" => Self::Cancelled {
                by: rest.strip_prefix("by").and_then(|u| u.trim().parse().ok()),
            },
            "TIMEOUT" => Self::Timeout,
            "OUT_OF_MEMORY" => Self::OutOfMemory,
            "NODE_FAIL" => Self::NodeFail,
            "PREEMPTED" => Self::Preempted,
            "REQUEUED" => Self::Requeued,
            "BOOT_FAIL" => Self::BootFail,
            "DEADLINE" => Self::Deadline,
            "REVOKED" => Self::Revoked,
            "RESIZING" => Self::Resizing,
            _ => Self::Unknown(t.to_owned()),
        };
        Ok(state)
    }
}

/// `ExitCode`/`DerivedExitCode`: `status:signal`, e.g. `0:0`, `1:0`, `0:9`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExitCode {
    /// The exit status of the script (or the highest of the steps, when derived).
    pub status: i32,
    /// The signal that killed it, 0 if none.
    pub signal: i32,
}

impl ExitCode {
    /// Exited 0 and was not killed by a signal.
    pub fn is_success(self) -> bool {
        self.status == 0 && self.signal == 0
    }
}

impl fmt::Display for ExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.status, self.signal)
    }
}

impl FromStr for ExitCode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let (status, signal) = s
            .trim()
            .split_once(':')
            .ok_or_else(|| parse_error("exit code", s))?;
        Ok(Self {
            status: status.parse().map_err(|_| parse_error("exit code", s))?,
            signal: signal.parse().map_err(|_| parse_error("exit code", s))?,
        })
    }
}

/// Which command a [`JobInfo`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The accounting database (`sacct`).
    Sacct,
    /// The controller's queue (`squeue`): no exit codes.
    Squeue,
    /// The controller's full record (`scontrol show job`).
    Scontrol,
    /// No source knows the job: it is *not* assumed done.
    NotFound,
}

/// One job (or array task) as SLURM reports it.
///
/// For an array job, the record returned by the client summarises the array and
/// `tasks` holds one record per task (or per combined pending row): its `state` is
/// terminal only when every task is, `COMPLETED` only when every task completed, and
/// otherwise the state (and exit codes) of the first task that did not complete.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    /// The job id, or the array's base id for array tasks.
    pub id: JobId,
    /// SLURM's own id of this record (`JobIDRaw`, `%A`): a task's own job id.
    pub raw_id: JobId,
    /// The array task this record describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array_task: Option<ArrayTask>,
    /// The job name.
    pub name: String,
    /// The state.
    pub state: JobState,
    /// The batch script's exit code (not known to `squeue`).
    pub exit_code: Option<ExitCode>,
    /// The highest exit code of the job's steps (`DerivedExitCode`).
    pub derived_exit_code: Option<ExitCode>,
    /// Run time so far, in seconds.
    pub elapsed_secs: Option<u64>,
    /// When it started; unset while pending.
    pub start: Option<Timestamp>,
    /// When it ended; unset until it is terminal.
    pub end: Option<Timestamp>,
    /// The allocated node list (`localhost`, `node[01-04]`).
    pub nodes: Option<String>,
    /// The partition.
    pub partition: Option<String>,
    /// The account.
    pub account: Option<String>,
    /// The allocated trackable resources as printed (`billing=1,cpu=1,gres/gpu=1,...`).
    pub alloc_tres: Option<String>,
    /// GPUs allocated (`gres/gpu=N` in the TRES; from `squeue` the GPUs per node asked).
    pub gpus: u32,
    /// How often it was requeued (only `scontrol` says).
    pub restarts: Option<u32>,
    /// The user name.
    pub user: Option<String>,
    /// The job comment (holds the submission token).
    pub comment: Option<String>,
    /// Why it waits or why it ended, as SLURM says (`Dependency`, `None`, ...).
    pub reason: Option<String>,
    /// Where this record came from.
    pub source: Source,
    /// For an array job: one record per task, by index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<JobInfo>,
}

impl JobInfo {
    /// A record for a job that no source knows: state `NOT_FOUND`, never terminal.
    pub fn not_found(id: JobId) -> Self {
        Self {
            id,
            raw_id: id,
            array_task: None,
            name: String::new(),
            state: JobState::Unknown(NOT_FOUND.to_owned()),
            exit_code: None,
            derived_exit_code: None,
            elapsed_secs: None,
            start: None,
            end: None,
            nodes: None,
            partition: None,
            account: None,
            alloc_tres: None,
            gpus: 0,
            restarts: None,
            user: None,
            comment: None,
            reason: None,
            source: Source::NotFound,
            tasks: Vec::new(),
        }
    }

    /// Whether this is a job array (has task records).
    pub fn is_array(&self) -> bool {
        !self.tasks.is_empty()
    }

    /// The `JobID` column form: `123`, `123_4`, `123_[2-5]`.
    pub fn job_ref(&self) -> JobRef {
        JobRef {
            job: self.id,
            task: self.array_task.clone(),
        }
    }

    /// Finishes a record: drops times SLURM prints only as estimates.
    pub(crate) fn settle(mut self) -> Self {
        if matches!(self.state, JobState::Pending | JobState::Requeued) {
            self.start = None;
        }
        if !self.state.is_terminal() {
            self.end = None;
        }
        self
    }

    /// Summarises rows of one array (see the type's docs). `rows` must not be empty.
    pub(crate) fn summarise_array(id: JobId, mut rows: Vec<JobInfo>) -> Self {
        rows.sort_by(|a, b| {
            let ka = a.array_task.as_ref().map(ArrayTask::first_index);
            let kb = b.array_task.as_ref().map(ArrayTask::first_index);
            ka.cmp(&kb).then_with(|| a.raw_id.cmp(&b.raw_id))
        });
        let all_terminal = rows.iter().all(|r| r.state.is_terminal());
        let representative = if all_terminal {
            rows.iter()
                .find(|r| !r.state.is_success())
                .unwrap_or(&rows[0])
        } else {
            rows.iter()
                .filter(|r| !r.state.is_terminal())
                .max_by_key(|r| r.state.activity_rank())
                .unwrap_or(&rows[0])
        };
        let mut summary = representative.clone();
        summary.id = id;
        summary.raw_id = id;
        summary.array_task = None;
        summary.start = rows.iter().filter_map(|r| r.start).min();
        summary.end = if all_terminal {
            rows.iter().filter_map(|r| r.end).max()
        } else {
            None
        };
        summary.elapsed_secs = rows.iter().filter_map(|r| r.elapsed_secs).max();
        summary.gpus = rows.iter().map(|r| r.gpus).max().unwrap_or(0);
        summary.tasks = rows;
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_refs_round_trip() {
        for s in ["123", "123_4", "123_[2-5]", "123_[1,3,7-9%2]"] {
            let r: JobRef = s.parse().unwrap();
            assert_eq!(r.to_string(), s);
        }
        let r: JobRef = "123_[2-5]".parse().unwrap();
        assert_eq!(r.job, JobId(123));
        assert_eq!(r.task, Some(ArrayTask::Pending("2-5".to_owned())));
        assert!("123_".parse::<JobRef>().is_err());
        assert!("123_[a]".parse::<JobRef>().is_err());
        assert!("x_1".parse::<JobRef>().is_err());
        assert_eq!(
            serde_json::to_string(&"123_4".parse::<JobRef>().unwrap()).unwrap(),
            "\"123_4\""
        );
    }

    #[test]
    fn states_parse_display_and_classify() {
        let all = [
            ("PENDING", JobState::Pending, false),
            ("RUNNING", JobState::Running, false),
            ("SUSPENDED", JobState::Suspended, false),
            ("COMPLETING", JobState::Completing, false),
            ("COMPLETED", JobState::Completed, true),
            ("FAILED", JobState::Failed, true),
            ("CANCELLED", JobState::Cancelled { by: None }, true),
            ("CANCELLED by 0", JobState::Cancelled { by: Some(0) }, true),
            (
                "CANCELLED by 1000",
                JobState::Cancelled { by: Some(1000) },
                true,
            ),
            ("TIMEOUT", JobState::Timeout, true),
            ("OUT_OF_MEMORY", JobState::OutOfMemory, true),
            ("NODE_FAIL", JobState::NodeFail, true),
            ("PREEMPTED", JobState::Preempted, true),
            ("REQUEUED", JobState::Requeued, false),
            ("BOOT_FAIL", JobState::BootFail, true),
            ("DEADLINE", JobState::Deadline, true),
            ("REVOKED", JobState::Revoked, true),
            ("RESIZING", JobState::Resizing, false),
            (
                "SPECIAL_EXIT",
                JobState::Unknown("SPECIAL_EXIT".into()),
                false,
            ),
        ];
        for (text, state, terminal) in all {
            let parsed: JobState = text.parse().unwrap();
            assert_eq!(parsed, state, "{text}");
            assert_eq!(parsed.to_string(), text);
            assert_eq!(parsed.is_terminal(), terminal, "{text}");
            assert_eq!(parsed.is_success(), text == "COMPLETED");
            let json = serde_json::to_string(&parsed).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<JobState>(&json).unwrap(), parsed);
        }
        // A truncated column (non-parsable sacct output) ends in `+`.
        assert_eq!(
            "CANCELLED+".parse::<JobState>().unwrap(),
            JobState::Cancelled { by: None }
        );
    }

    #[test]
    fn exit_codes() {
        assert_eq!(
            "0:0".parse::<ExitCode>().unwrap(),
            ExitCode {
                status: 0,
                signal: 0
            }
        );
        assert_eq!(
            "1:0".parse::<ExitCode>().unwrap(),
            ExitCode {
                status: 1,
                signal: 0
            }
        );
        let killed: ExitCode = "0:9".parse().unwrap();
        assert_eq!(
            killed,
            ExitCode {
                status: 0,
                signal: 9
            }
        );
        assert!(!killed.is_success());
        assert_eq!(killed.to_string(), "0:9");
        for bad in ["", "0", "a:b", "1:"] {
            assert!(bad.parse::<ExitCode>().is_err(), "{bad:?}");
        }
    }
}
