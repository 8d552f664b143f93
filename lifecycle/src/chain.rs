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
use hpcstage_slurm::template::{RenderContext, Rendered, ResourceOverrides, Template};
use hpcstage_staging::record::{write_json, StageRecord};
use jiff::Timestamp;

use crate::backend::{from_local, Backend};
use crate::error::{Error, Result};
use crate::run::{new_record, new_run_id, Event, Executor, InputRef, JobRole, RunRecord, RunStore};

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
    })
}

pub use hpcstage_staging::fmt::shell_quote;

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
         # with afterany, so it runs whatever the compute job's fate.\n\
         #SBATCH --job-name=pull-{short}\n\
         #SBATCH --partition={partition}\n\
         #SBATCH --time={time}\n\
         #SBATCH --cpus-per-task=1\n\
         #SBATCH --output={run_dir}/logs/pull-%j.out\n\
         #SBATCH --comment={token}\n\
         set -euo pipefail\n\
         export HPCSTAGE_STATE={state}\n\
         exec {exe} pull {idq}\n",
        id = record.id,
        partition = s.pull_partition,
        time = s.pull_time,
        state = shell_quote(&s.state_dir.display().to_string()),
        exe = shell_quote(&s.hpcstage.display().to_string()),
        idq = shell_quote(&record.id),
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
                    array_size: array_size(&p.rendered),
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
            let mut steps = vec![LocalStep::new(&p.compute_script, run_dir)];
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
                            array_size(&p.rendered)
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

fn array_size(r: &Rendered) -> Option<u32> {
    let array = r.sbatch.array.as_ref()?;
    u32::try_from(array.tasks().len()).ok()
}

/// Runs the local jobs of a run (in this process) and records how they ended. This is
/// what the detached `hpcstage run-local` does after `submit` on a machine without SLURM.
pub fn run_local(store: &RunStore, run_id: &str, exec: &LocalExecutor) -> Result<()> {
    let view = store.load(run_id)?;
    let ids: Vec<(JobRole, u64)> = view
        .jobs
        .iter()
        .filter_map(|j| j.job_id.parse().ok().map(|n| (j.role, n)))
        .collect();
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
