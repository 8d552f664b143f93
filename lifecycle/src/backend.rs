//! The two places a run's jobs execute, behind one interface: SLURM (through the client)
//! or the local executor (bash on this machine, when no SLURM is installed). Both report
//! job facts in the same shape, so runs, pulls and reports need not care which ran them.

use std::path::{Path, PathBuf};

use hpcstage_slurm::client::{ClientSettings, SlurmClient};
use hpcstage_slurm::local::{LocalExecutor, LocalJob};
use hpcstage_slurm::state::{JobId, JobInfo, JobState};

use crate::error::Result;
use crate::run::{Executor, JobFacts};

/// Where jobs run.
pub enum Backend {
    Slurm(SlurmClient),
    Local(LocalExecutor),
}

/// A job's facts plus whether it has ended and ended well.
#[derive(Debug, Clone)]
pub struct Observed {
    pub facts: JobFacts,
    pub terminal: bool,
    pub success: bool,
}

/// The local executor's folder inside the state folder.
pub fn local_state_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("local")
}

impl Backend {
    /// The backend a run's record names.
    pub fn for_executor(executor: Executor, state_dir: &Path, client: &ClientSettings) -> Backend {
        match executor {
            Executor::Slurm => Backend::Slurm(SlurmClient::new(client.clone())),
            Executor::Local => Backend::Local(LocalExecutor::new(local_state_dir(state_dir))),
        }
    }

    /// Observes several jobs at once (one `sacct` call for SLURM).
    pub fn observe(&self, job_ids: &[String]) -> Result<Vec<(String, Option<Observed>)>> {
        match self {
            Backend::Slurm(client) => {
                let ids: Vec<JobId> = job_ids.iter().filter_map(|j| j.parse().ok()).collect();
                let infos = if ids.is_empty() {
                    Default::default()
                } else {
                    client.query(&ids)?
                };
                Ok(job_ids
                    .iter()
                    .map(|j| {
                        let info = j.parse::<JobId>().ok().and_then(|id| infos.get(&id));
                        (j.clone(), info.map(from_slurm))
                    })
                    .collect())
            }
            Backend::Local(exec) => job_ids
                .iter()
                .map(|j| {
                    let job = match j.parse::<u64>() {
                        Ok(id) => exec.job(id)?,
                        Err(_) => None,
                    };
                    Ok((j.clone(), job.as_ref().map(from_local)))
                })
                .collect(),
        }
    }
}

fn code(c: Option<hpcstage_slurm::state::ExitCode>) -> Option<String> {
    c.map(|c| format!("{}:{}", c.status, c.signal))
}

/// Facts from a SLURM record.
pub fn from_slurm(info: &JobInfo) -> Observed {
    let terminal = info.state.is_terminal();
    let success =
        info.state == JobState::Completed && info.exit_code.is_none_or(|c| c.is_success());
    Observed {
        facts: JobFacts {
            state: info.state.to_string(),
            exit_code: code(info.exit_code),
            derived_exit_code: code(info.derived_exit_code),
            elapsed_secs: info.elapsed_secs,
            start: info.start.map(|t| t.to_string()),
            end: info.end.map(|t| t.to_string()),
            nodes: info.nodes.clone(),
            partition: info.partition.clone(),
            account: info.account.clone(),
            alloc_tres: info.alloc_tres.clone(),
            gpus: Some(info.gpus),
            restarts: info.restarts,
            tasks: info
                .tasks
                .iter()
                .map(|t| (t.job_ref().to_string(), t.state.to_string()))
                .collect(),
            task_exit_codes: info
                .tasks
                .iter()
                .filter(|t| t.state.is_terminal())
                .filter_map(|t| code(t.exit_code).map(|c| (t.job_ref().to_string(), c)))
                .collect(),
            reason: pending_reason(info),
        },
        terminal,
        success,
    }
}

/// Why a job (or the first of an array's tasks) waits: squeue's reason while it is
/// pending; `None` for "None" and once it runs.
fn pending_reason(info: &JobInfo) -> Option<String> {
    let waiting = |i: &JobInfo| matches!(i.state, JobState::Pending | JobState::Requeued);
    let row = if waiting(info) {
        Some(info)
    } else {
        info.tasks.iter().find(|t| waiting(t))
    }?;
    row.reason.clone().filter(|r| r != "None" && !r.is_empty())
}

/// Facts from a local executor record.
pub fn from_local(job: &LocalJob) -> Observed {
    let terminal = job.state.is_terminal();
    let exit = job.exit_code();
    let signal = job.tasks.iter().find_map(|t| t.signal).unwrap_or(0);
    Observed {
        facts: JobFacts {
            state: job.state.as_str().to_string(),
            exit_code: exit.map(|c| format!("{c}:{signal}")),
            derived_exit_code: None,
            elapsed_secs: Some(job.tasks.iter().map(|t| t.elapsed_secs).sum::<f64>() as u64),
            start: job.start.map(|t| t.to_string()),
            end: job.end.map(|t| t.to_string()),
            nodes: job.runner.as_ref().map(|r| r.host.clone()),
            partition: Some("local".into()),
            account: None,
            alloc_tres: None,
            gpus: None,
            restarts: Some(0),
            task_exit_codes: job
                .tasks
                .iter()
                .filter(|t| t.state.is_terminal())
                .filter_map(|t| {
                    let a = t.array_task_id?;
                    let code = t.exit_code?;
                    Some((
                        format!("{}_{a}", job.job_id),
                        format!("{code}:{}", t.signal.unwrap_or(0)),
                    ))
                })
                .collect(),
            reason: None,
            tasks: job
                .tasks
                .iter()
                .filter_map(|t| {
                    t.array_task_id
                        .map(|a| (format!("{}_{a}", job.job_id), t.state.as_str().to_string()))
                })
                .collect(),
        },
        terminal,
        success: job.state == hpcstage_slurm::local::LocalState::Completed
            && exit.is_none_or(|c| c == 0),
    }
}
