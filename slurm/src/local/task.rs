//! Running one job: reading its directives into a plan, deciding its dependency, and
//! running each (array) task with its logs, time limit, warning signal and cancel.

use std::fs::{File, OpenOptions};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jiff::Timestamp;

use super::env::{expand_pattern, PatternVars};
use super::{Dependency, LocalError, LocalExecutor, LocalJob, LocalState, LocalStep, LocalTask};
use crate::duration::SlurmDuration;
use crate::process::{signal_group, signal_process};
use crate::sbatch::SbatchArgs;

/// What a task needs from the script's directives.
#[derive(Debug, Clone)]
pub(super) struct JobPlan {
    pub(super) name: String,
    pub(super) work_dir: PathBuf,
    pub(super) tasks: Option<Vec<u32>>,
    pub(super) array_text: Option<String>,
    pub(super) time_limit: Option<SlurmDuration>,
    pub(super) signal: Option<(bool, i32, u64)>,
    pub(super) output: Option<String>,
    pub(super) error: Option<String>,
    pub(super) append: bool,
    pub(super) cpus_per_task: Option<u32>,
    pub(super) mem_mb: Option<u64>,
}

impl LocalExecutor {
    /// Read the script's directives into what the run needs.
    pub(super) fn plan(&self, step: &LocalStep) -> Result<JobPlan, LocalError> {
        let text = std::fs::read_to_string(&step.script).map_err(|source| LocalError::Io {
            path: step.script.clone(),
            error: source,
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

    pub(super) fn run_job(&self, job: &mut LocalJob, done: &[LocalJob]) -> Result<(), LocalError> {
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

    pub(super) fn unrun_task(
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

    pub(super) fn run_task(
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
                error: source,
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
