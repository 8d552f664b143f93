//! A run whose results are not accepted: its logs and a FAILED README in
//! `results/<workflow>/_failed/<run>/`, never in the validated area.

use std::fmt::Write as _;

use hpcstage_staging::progress::Progress;
use hpcstage_staging::walk::Filter;
use hpcstage_template::SIGNAL_MARKER;

use super::target::Target;
use super::{PullOptions, PullOutcome};
use crate::error::Result;
use crate::run::{Event, JobFacts, RunRecord, RunStore};

/// Why a run's results are not accepted, and the compute job's facts.
pub(super) struct Rejected<'a> {
    pub(super) reason: &'a str,
    pub(super) facts: &'a JobFacts,
    pub(super) job_id: &'a str,
    /// No expected output validated: `--allow-partial` has nothing to pull either.
    pub(super) nothing: bool,
}

/// Writes the logs of a run whose results are not accepted, with a FAILED README, to
/// `_failed/<run>` and records the refusal; the run's outcome is [`PullOutcome::Failed`].
pub(super) fn publish_failed_logs(
    store: &RunStore,
    record: &RunRecord,
    rejected: &Rejected<'_>,
    target: &Target,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<PullOutcome> {
    let reason = rejected.reason;
    let filter = Filter::new(
        &[
            "logs/**".into(),
            "job.sbatch".into(),
            "validation.json".into(),
            "qc/**".into(),
        ],
        // The pull-back job's own log is still being written (see pull_finished).
        &["logs/pull-*".into(), "logs/local-runner.log".into()],
    )?;
    let readme = failed_readme(record, rejected);
    let described = [("README.md", readme.into_bytes())];
    let place = |rel: &std::path::Path| {
        target.place(
            &record.id,
            Some(rel),
            &record.run_dir,
            filter.clone(),
            &described,
            false,
            opts,
            progress,
        )
    };
    let mut rel = Target::failed_rel(&record.id);
    // `None`: an earlier pull of this run left its logs there already. Those of the same
    // compute job are kept as they are; those of an earlier one (before a `retry`) too,
    // and this job's go next to them.
    if place(&rel)?.is_none() && !target.failed_names_job(&rel, rejected.job_id)? {
        rel = Target::failed_rel(&format!("{}.job-{}", record.id, rejected.job_id));
        place(&rel)?;
    }
    let shown_dir = target.sibling(&rel);
    store.append(
        &record.id,
        Event::PullFailed {
            reason: reason.to_string(),
        },
    )?;
    Ok(PullOutcome::Failed {
        failed_dir: shown_dir,
        reason: reason.to_string(),
    })
}

/// The FAILED README: why the results were not accepted and what to do next.
fn failed_readme(record: &RunRecord, rejected: &Rejected<'_>) -> String {
    let Rejected {
        reason,
        facts,
        job_id,
        nothing,
    } = *rejected;
    let mut text = format!(
        "# FAILED: run {id}\n\nThese are the logs of a run whose results were NOT accepted. \
         Nothing here is a validated result.\n\n- reason: {reason}\n- compute job: {job_id}, state {state}, exit code {exit}\n\
         - template: {template} {version}\n- scratch run folder (left as it was): {run_dir}\n",
        id = record.id,
        state = facts.state,
        exit = facts.exit_code.as_deref().unwrap_or("unknown"),
        template = record.template,
        version = record.template_version,
        run_dir = record.run_dir.display(),
    );
    let failed = crate::failures::failed_tasks(Some(facts), &record.run_dir);
    if !failed.is_empty() {
        let _ = writeln!(text, "- failed:");
        for t in &failed {
            let _ = writeln!(text, "  - {}", t.describe());
        }
    }
    if let Ok(signal) = std::fs::read_to_string(record.run_dir.join(SIGNAL_MARKER)) {
        let _ = writeln!(
            text,
            "- the job received its time-limit signal (USR1) before it ended; outputs may be partial:"
        );
        for line in signal.lines().filter(|l| !l.trim().is_empty()) {
            let _ = writeln!(text, "  - {}", line.trim());
        }
    }
    if nothing {
        let _ = writeln!(
            text,
            "\nNo expected output validated, so there is nothing to pull (`--allow-partial` is \
             refused too). After fixing the cause, re-run the failed tasks with `hpcstage retry \
             {id}`, or give the run up with `hpcstage dismiss {id}`.",
            id = record.id
        );
    } else {
        let _ = writeln!(
            text,
            "\nAfter fixing the cause, re-run the failed tasks with `hpcstage retry {id}`, pull what \
             there is with `hpcstage pull {id} --allow-partial`, or give the run up with \
             `hpcstage dismiss {id}`.",
            id = record.id
        );
    }
    text
}
