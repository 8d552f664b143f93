//! Creating a run and submitting its chain: compute job, then a pull-back job that
//! depends on it with `afterany` (an `afterok` chain would hang forever when the compute
//! job fails; the pull-back job decides itself what a failed job gets).
//!
//! Everything the later steps need is written before anything is submitted: the run
//! folder with the rendered script, `.hpcstage/run.json` and `.hpcstage/rendered.json`
//! (outputs, intermediates), and the run in the ledger. A submission that fails leaves a
//! `submit-failed` event, never a half-known job.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hpcstage_slurm::client::{new_token, SubmitRequest};
use hpcstage_slurm::local::{LocalExecutor, LocalStep};
use hpcstage_staging::record::{write_json, StageRecord};
use hpcstage_template::{ArraySpec, RenderContext, Rendered, ResourceOverrides, Template};
use jiff::Timestamp;

use crate::backend::{from_local, Backend};
use crate::error::{Error, Result};
use crate::refresh::ended;
use crate::run::{
    new_record, new_run_id, Event, Executor, InputRef, JobRole, JobView, Phase, RunRecord,
    RunStore, RunView,
};

/// File names inside a run folder.
pub const RUN_MARKER: &str = ".hpcstage/run.json";
pub const RENDERED_FILE: &str = ".hpcstage/rendered.json";
pub const PULL_SCRIPT: &str = "pull.sbatch";

/// What to submit.
pub struct SubmitSettings<'a> {
    pub template: &'a Template,
    pub params: BTreeMap<String, String>,
    pub overrides: ResourceOverrides,
    pub input: &'a StageRecord,
    pub scratch_root: &'a Path,
    /// The NAS results folder of this run; `None`: `<nas_root>/<project>/results/<workflow>/<run>`.
    pub results_dir: Option<PathBuf>,
    pub nas_root: Option<&'a Path>,
    pub state_dir: &'a Path,
    /// The hpcstage executable the pull-back job runs (must be visible on the nodes).
    pub hpcstage: &'a Path,
    pub executor: Executor,
    /// Submit the pull-back job too.
    pub pull_back: bool,
    /// Partition of the pull-back job.
    pub pull_partition: String,
    /// Time limit of the pull-back job, SLURM format.
    pub pull_time: String,
    /// The pull-back job write-protects the results (`pull --worm`).
    pub worm: bool,
}

/// A run ready to submit.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub record: RunRecord,
    pub rendered: Rendered,
    pub compute_script: PathBuf,
    pub pull_script: PathBuf,
    pub compute_token: String,
    pub pull_token: String,
    /// Submit only these array tasks (SLURM's `--array` syntax) instead of the script's.
    pub array_override: Option<String>,
}

/// What was submitted.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Chain {
    pub run_id: String,
    pub run_dir: PathBuf,
    pub results_dir: PathBuf,
    pub executor: Executor,
    pub compute_job: String,
    pub pull_job: Option<String>,
    /// Job ids the local executor must still run (empty for SLURM).
    #[serde(skip)]
    pub local_jobs: Vec<u64>,
}

/// Renders the template into a new run folder and records the run. Nothing is submitted.
pub fn prepare(store: &RunStore, s: &SubmitSettings<'_>) -> Result<Prepared> {
    let input = s.input;
    let id = new_run_id(s.template.name(), &input.dataset, Timestamp::now());
    let run_dir = s.scratch_root.join(&input.project).join("runs").join(&id);
    let compute_token = format!("{}-compute", new_token());
    let pull_token = format!("{}-pull", new_token());
    let mut ctx = RenderContext::new(
        &run_dir,
        &input.destination,
        &id,
        &compute_token,
        s.hpcstage,
    );
    ctx.resources = s.overrides.clone();
    let rendered = s.template.render(&s.params, &ctx)?;
    let results_dir = match (&s.results_dir, s.nas_root) {
        (Some(dir), _) => dir.clone(),
        (None, Some(nas)) => nas
            .join(&input.project)
            .join("results")
            .join(&rendered.workflow)
            .join(&id),
        (None, None) => {
            return Err(Error::Staging(hpcstage_staging::Error::Invalid {
                what: "results folder",
                value: String::new(),
                reason: "no nas_root configured and no --results given".into(),
            }))
        }
    };
    std::fs::create_dir_all(&run_dir).map_err(|e| hpcstage_staging::Error::io(&run_dir, e))?;
    let compute_script = rendered.write()?;
    let record = new_record(
        id.clone(),
        input.project.clone(),
        rendered.template.clone(),
        rendered.version.clone(),
        rendered.template_hash.clone(),
        rendered.workflow.clone(),
        s.params.clone(),
        InputRef {
            stage_id: input.id.clone(),
            path: input.destination.clone(),
            manifest_digest: input.manifest_digest.to_hex(),
            source: input.source.clone(),
        },
        run_dir.clone(),
        results_dir,
        s.executor,
    );
    let pull_script = run_dir.join(PULL_SCRIPT);
    write_pull_script(&pull_script, &record, s, &pull_token)?;
    write_json(&run_dir.join(RUN_MARKER), &record)?;
    write_json(&run_dir.join(RENDERED_FILE), &rendered)?;
    store.create(&record)?;
    Ok(Prepared {
        record,
        rendered,
        compute_script,
        pull_script,
        compute_token,
        pull_token,
        array_override: None,
    })
}

pub use hpcstage_staging::human::shell_quote;

fn write_pull_script(
    path: &Path,
    record: &RunRecord,
    s: &SubmitSettings<'_>,
    token: &str,
) -> Result<()> {
    let run_dir = record.run_dir.display().to_string();
    let short: String = record.id.chars().take(40).collect();
    let text = format!(
        "#!/bin/bash\n\
         # Pull-back job of run {id}: validates the compute job's outputs and copies them to\n\
         # the NAS (or, for a failed job, its logs to _failed/). Depends on the compute job\n\
         # with afterany, so it runs whatever the compute job's fate; --wait lets the\n\
         # accounting catch up when it still shows the compute job running.\n\
         #SBATCH --job-name=pull-{short}\n\
         #SBATCH --partition={partition}\n\
         #SBATCH --time={time}\n\
         #SBATCH --cpus-per-task=1\n\
         #SBATCH --output={run_dir}/logs/pull-%j.out\n\
         #SBATCH --comment={token}\n\
         set -euo pipefail\n\
         export HPCSTAGE_STATE={state}\n\
         exec {exe} pull --wait {idq}{worm}\n",
        id = record.id,
        partition = s.pull_partition,
        time = s.pull_time,
        state = shell_quote(&s.state_dir.display().to_string()),
        exe = shell_quote(&s.hpcstage.display().to_string()),
        idq = shell_quote(&record.id),
        worm = if s.worm { " --worm" } else { "" },
    );
    std::fs::write(path, text).map_err(|e| hpcstage_staging::Error::io(path, e))?;
    Ok(())
}

/// Submits the compute job and (when asked) the pull-back job, recording each.
pub fn submit(store: &RunStore, p: &Prepared, backend: &Backend, pull_back: bool) -> Result<Chain> {
    let id = &p.record.id;
    let run_dir = &p.record.run_dir;
    let mut chain = Chain {
        run_id: id.clone(),
        run_dir: run_dir.clone(),
        results_dir: p.record.results_dir.clone(),
        executor: p.record.executor,
        compute_job: String::new(),
        pull_job: None,
        local_jobs: Vec::new(),
    };
    let record_failure = |role: JobRole, e: &Error| {
        let _ = store.append(
            id,
            Event::SubmitFailed {
                role,
                error: e.to_string(),
            },
        );
    };
    match backend {
        Backend::Slurm(client) => {
            let mut req = SubmitRequest::new(&p.compute_script);
            req.workdir = Some(run_dir.clone());
            req.token = p.compute_token.clone();
            if let Some(array) = &p.array_override {
                // The command line wins over the script's `#SBATCH --array`.
                req.args.push(format!("--array={array}"));
            }
            let sub = client
                .submit(&req)
                .map_err(Error::from)
                .inspect_err(|e| record_failure(JobRole::Compute, e))?;
            chain.compute_job = sub.id.to_string();
            store.append(
                id,
                Event::Submitted {
                    role: JobRole::Compute,
                    job_id: chain.compute_job.clone(),
                    token: sub.token,
                    array_size: array_size(p),
                },
            )?;
            if pull_back {
                let mut req = SubmitRequest::new(&p.pull_script);
                req.workdir = Some(run_dir.clone());
                req.token = p.pull_token.clone();
                req.args = vec![format!("--dependency=afterany:{}", sub.id)];
                let pull = client
                    .submit(&req)
                    .map_err(Error::from)
                    .inspect_err(|e| record_failure(JobRole::PullBack, e))?;
                chain.pull_job = Some(pull.id.to_string());
                store.append(
                    id,
                    Event::Submitted {
                        role: JobRole::PullBack,
                        job_id: pull.id.to_string(),
                        token: pull.token,
                        array_size: None,
                    },
                )?;
            }
        }
        Backend::Local(exec) => {
            let script = match &p.array_override {
                Some(array) => local_retry_script(p, array)?,
                None => p.compute_script.clone(),
            };
            let mut steps = vec![LocalStep::new(&script, run_dir)];
            if pull_back {
                steps.push(LocalStep::new(&p.pull_script, run_dir).after_any());
            }
            let ids = exec
                .submit(&steps)
                .map_err(Error::from)
                .inspect_err(|e| record_failure(JobRole::Compute, e))?;
            for (role, job) in [JobRole::Compute, JobRole::PullBack].into_iter().zip(&ids) {
                store.append(
                    id,
                    Event::Submitted {
                        role,
                        job_id: job.to_string(),
                        token: String::new(),
                        array_size: if role == JobRole::Compute {
                            array_size(p)
                        } else {
                            None
                        },
                    },
                )?;
            }
            chain.compute_job = ids[0].to_string();
            chain.pull_job = ids.get(1).map(|j| j.to_string());
            chain.local_jobs = ids;
        }
    }
    Ok(chain)
}

fn array_size(p: &Prepared) -> Option<u32> {
    let tasks = match &p.array_override {
        Some(a) => ArraySpec::parse(a).ok()?.tasks().len(),
        None => p.rendered.sbatch.array.as_ref()?.tasks().len(),
    };
    u32::try_from(tasks).ok()
}

/// The local executor reads `--array` from the script only: a copy of the job script
/// with its array line replaced, kept with the run's records.
fn local_retry_script(p: &Prepared, array: &str) -> Result<PathBuf> {
    let io = |path: &Path, e| Error::Staging(hpcstage_staging::Error::io(path, e));
    let text = std::fs::read_to_string(&p.compute_script).map_err(|e| io(&p.compute_script, e))?;
    let mut replaced = false;
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with("#SBATCH --array=") && !replaced {
            out.push(format!("#SBATCH --array={array}"));
            replaced = true;
        } else {
            out.push(line.to_string());
        }
    }
    if !replaced {
        // A script without an array: the directive goes with the other #SBATCH lines.
        let at = out
            .iter()
            .rposition(|l| l.starts_with("#SBATCH "))
            .map_or(1, |i| i + 1);
        out.insert(at.min(out.len()), format!("#SBATCH --array={array}"));
    }
    let path = p
        .record
        .run_dir
        .join(".hpcstage")
        .join(format!("retry-{}.sbatch", p.compute_token));
    std::fs::write(&path, out.join("\n") + "\n").map_err(|e| io(&path, e))?;
    Ok(path)
}

/// Resubmits the array tasks of a run's last compute job that did not complete (or the
/// tasks `array` names, in SLURM's syntax) into the same run folder, with a new pull-back
/// job: outputs of the earlier tasks stay where they are, so that one pull collects
/// them all. A job without an array is resubmitted whole. `view` must be refreshed.
pub fn retry(
    store: &RunStore,
    view: &RunView,
    backend: &Backend,
    array: Option<&str>,
) -> Result<Chain> {
    let record = &view.record;
    let not_now = |reason: String| Error::NotNow {
        id: record.id.clone(),
        reason,
    };
    match view.phase {
        Phase::Pulled => {
            return Err(not_now(format!(
                "its results were pulled to {}; there is nothing to retry",
                record.results_dir.display()
            )))
        }
        Phase::Dismissed => return Err(not_now("it was dismissed".into())),
        _ => {}
    }
    let compute = view.job(JobRole::Compute).ok_or_else(|| Error::NoJob {
        id: record.id.clone(),
        role: "compute".into(),
    })?;
    for job in [Some(compute), view.job(JobRole::PullBack)]
        .into_iter()
        .flatten()
    {
        let state = job.facts.as_ref().map_or("submitted", |f| f.state.as_str());
        if !ended(state) {
            return Err(not_now(format!(
                "its {} job {} is {state}; retry once it has ended",
                if job.role == JobRole::Compute {
                    "compute"
                } else {
                    "pull-back"
                },
                job.job_id
            )));
        }
    }
    let facts = compute.facts.as_ref();
    let tasks = match array {
        Some(a) => Some(a.to_string()),
        None => {
            let failed = failed_task_ids(compute);
            let whole_job_failed =
                facts.is_some_and(|f| f.tasks.is_empty() && f.state != "COMPLETED");
            if failed.is_empty() && !whole_job_failed {
                return Err(not_now(format!(
                    "every task of compute job {} completed; nothing failed to retry (give --array LIST \
                     to re-run chosen tasks; if only the pull failed, run `hpcstage pull {}` again)",
                    compute.job_id, record.id
                )));
            }
            (!failed.is_empty()).then(|| {
                failed
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            })
        }
    };
    let rendered: Rendered =
        hpcstage_staging::record::read_json(&record.run_dir.join(RENDERED_FILE))?;
    // Keep the run's throttle (`%N`).
    let tasks = tasks.map(|t| {
        match rendered
            .sbatch
            .array
            .as_ref()
            .and_then(ArraySpec::max_parallel)
        {
            Some(n) if !t.contains('%') && n > 0 => format!("{t}%{n}"),
            _ => t,
        }
    });
    if let Some(t) = &tasks {
        ArraySpec::parse(t).map_err(|reason| hpcstage_template::TemplateError::Resource {
            field: "array",
            value: t.clone(),
            reason,
        })?;
    }
    let prepared = Prepared {
        record: record.clone(),
        compute_script: record.run_dir.join(hpcstage_template::SCRIPT_FILE),
        pull_script: record.run_dir.join(PULL_SCRIPT),
        rendered,
        compute_token: format!("{}-compute", new_token()),
        pull_token: format!("{}-pull", new_token()),
        array_override: tasks.clone(),
    };
    store.append(
        &record.id,
        Event::Note {
            text: format!(
                "retry of compute job {}: {}",
                compute.job_id,
                tasks
                    .as_deref()
                    .map_or("the whole job".into(), |t| format!("array tasks {t}"))
            ),
        },
    )?;
    submit(store, &prepared, backend, prepared.pull_script.is_file())
}

/// The array task ids of a job that ended other than COMPLETED, from its recorded tasks
/// (`<job>_<task>` → state).
pub fn failed_task_ids(job: &JobView) -> Vec<u32> {
    let Some(facts) = &job.facts else {
        return Vec::new();
    };
    let mut ids: Vec<u32> = facts
        .tasks
        .iter()
        .filter(|(_, state)| state.as_str() != "COMPLETED")
        .filter_map(|(key, _)| key.rsplit_once('_').and_then(|(_, t)| t.parse().ok()))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Runs the local jobs of a run (in this process) and records how they ended. This is
/// what the detached `hpcstage run-local` does after `submit` on a machine without SLURM.
pub fn run_local(store: &RunStore, run_id: &str, exec: &LocalExecutor) -> Result<()> {
    let view = store.load(run_id)?;
    // Only the jobs still pending: a retried run also holds the jobs that ran before.
    let mut ids: Vec<(JobRole, u64)> = Vec::new();
    for j in &view.jobs {
        let Ok(n) = j.job_id.parse::<u64>() else {
            continue;
        };
        if exec
            .job(n)?
            .is_some_and(|job| job.state == hpcstage_slurm::local::LocalState::Pending)
        {
            ids.push((j.role, n));
        }
    }
    let numbers: Vec<u64> = ids.iter().map(|(_, n)| *n).collect();
    let jobs = exec.run_submitted(&numbers)?;
    for (job, (role, _)) in jobs.iter().zip(&ids) {
        store.append(
            run_id,
            Event::JobState {
                role: *role,
                job_id: job.job_id.to_string(),
                facts: Box::new(from_local(job).facts),
                observer: "local".into(),
            },
        )?;
    }
    Ok(())
}
