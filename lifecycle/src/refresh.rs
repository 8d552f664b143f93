//! Bringing runs up to date: ask the scheduler about every job that has not ended, in one
//! batched query per backend, and record what changed as events.

use hpcstage_slurm::client::ClientSettings;
use std::path::Path;

use crate::backend::Backend;
use crate::run::{Event, Executor, RunStore, RunView};

/// True when a job's last known state is final (SLURM's spelling, as recorded).
pub fn ended(state: &str) -> bool {
    state
        .parse::<hpcstage_slurm::state::JobState>()
        .is_ok_and(|s| s.is_terminal())
}

/// Queries the jobs of `views` that have not ended and records their new states.
/// Returns warnings (a scheduler that did not answer is a warning, not a failure:
/// status must still show what is known).
pub fn refresh(
    store: &RunStore,
    views: &mut [RunView],
    state_dir: &Path,
    client: &ClientSettings,
) -> Vec<String> {
    let mut warnings = Vec::new();
    for executor in [Executor::Slurm, Executor::Local] {
        let pending: Vec<(usize, usize, String)> = views
            .iter()
            .enumerate()
            .filter(|(_, v)| v.record.executor == executor)
            .flat_map(|(vi, v)| {
                v.jobs.iter().enumerate().filter_map(move |(ji, j)| {
                    let done = j.facts.as_ref().is_some_and(|f| ended(&f.state));
                    (!done).then(|| (vi, ji, j.job_id.clone()))
                })
            })
            .collect();
        if pending.is_empty() {
            continue;
        }
        let backend = Backend::for_executor(executor, state_dir, client);
        if let Some(warning) = controller_warning(&backend) {
            warnings.push(warning);
        }
        let ids: Vec<String> = pending.iter().map(|p| p.2.clone()).collect();
        let observed = match backend.observe(&ids) {
            Ok(o) => o,
            Err(e) => {
                warnings.push(format!("job states may be out of date: {e}"));
                continue;
            }
        };
        for ((vi, ji, _), (_, obs)) in pending.into_iter().zip(observed) {
            let Some(obs) = obs else { continue };
            let job = &mut views[vi].jobs[ji];
            if job.facts.as_ref() == Some(&obs.facts) {
                continue;
            }
            let event = Event::JobState {
                role: job.role,
                job_id: job.job_id.clone(),
                facts: Box::new(obs.facts.clone()),
                observer: "status".into(),
            };
            if let Err(e) = store.append(&views[vi].record.id, event) {
                warnings.push(format!("could not record a job state: {e}"));
            }
            job.facts = Some(obs.facts);
        }
    }
    warnings
}

/// A warning when the SLURM controller does not answer. `sacct` asks slurmdbd, not
/// slurmctld, so with the controller down the query still "succeeds" with the last states
/// accounting recorded (RUNNING, PENDING): without this check status would show them as
/// current and say nothing.
fn controller_warning(backend: &Backend) -> Option<String> {
    let Backend::Slurm(client) = backend else {
        return None;
    };
    match client.ping() {
        Ok(true) => None,
        Ok(false) => Some(
            "the SLURM controller (slurmctld) does not answer `scontrol ping`: job states \
             shown are the last ones accounting or the ledger recorded and may be out of date; \
             jobs that ended meanwhile are picked up once it is back"
                .into(),
        ),
        Err(e) => Some(format!(
            "could not ask the SLURM controller (slurmctld) whether it is up: {e}; job states may be out of date"
        )),
    }
}
