//! A run whose results are not accepted: its logs and a FAILED README in
//! `results/<workflow>/_failed/<run>/`, never in the validated area.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use hpcstage_staging::copy::copy_tree;
use hpcstage_staging::manifest::{write_verified, Manifest, ManifestEntry};
use hpcstage_staging::progress::Progress;
use hpcstage_staging::remote::NasFolder;
use hpcstage_staging::storage::Storage;
use hpcstage_staging::walk::{Filter, MANIFEST_NAME, STATE_DIR};
use hpcstage_template::SIGNAL_MARKER;

use super::results::{already_exists, copy_options, nas_failure, outbox, place_remote};
use super::target::{upload_to_store, Target};
use super::{PullOptions, PullOutcome};
use crate::error::{Error, Result};
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
    let results_parent = record.results_dir.parent().unwrap_or(&record.results_dir);
    let failed_dir = results_parent.join("_failed").join(&record.id);
    let shown_dir = match &target.store {
        Some(objects) => {
            let objects = objects.at(objects
                .url()
                .prefix
                .parent()
                .unwrap_or(Path::new(""))
                .join("_failed")
                .join(&record.id));
            let shown = objects.display(Path::new(""));
            // An earlier pull of this run left its logs there already.
            if objects.stat(Path::new(MANIFEST_NAME))?.is_none() {
                upload_to_store(
                    &objects,
                    &record.run_dir,
                    filter,
                    &[("README.md", readme.into_bytes())],
                    None,
                    opts,
                    progress,
                )
                .map_err(|e| nas_failure(&shown, e))?;
            }
            shown
        }
        None => write_failed_folder(
            record,
            &target.folder,
            &failed_dir,
            filter,
            &readme,
            opts,
            progress,
        )?,
    };
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

/// The logs into `failed_dir` of a local NAS, or assembled on scratch and uploaded to
/// an SSH NAS; returns the folder as shown to the user.
fn write_failed_folder(
    record: &RunRecord,
    nas_folder: &NasFolder,
    failed_dir: &Path,
    filter: Filter,
    readme: &str,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<PathBuf> {
    // On a remote NAS the folder is assembled on scratch, then uploaded.
    let remote_failed = nas_folder.remote().map(|(remote, root)| {
        let parent = root.parent().unwrap_or(root);
        (remote, parent.join("_failed").join(&record.id))
    });
    let (failed_dir, shown_dir) = match &remote_failed {
        Some((remote, dest)) => (
            outbox(&record.run_dir, &format!("_failed-{}", record.id)),
            remote.display(dest),
        ),
        None => (failed_dir.to_path_buf(), failed_dir.to_path_buf()),
    };
    let copy = copy_options(opts, filter);
    let report = copy_tree(&record.run_dir, &failed_dir, &copy, progress)
        .map_err(|e| nas_failure(&failed_dir, e))?;
    let readme = write_verified(&failed_dir.join("README.md"), readme.as_bytes())?;
    if !report.ok() {
        return Err(Error::Staging(hpcstage_staging::Error::io(
            &failed_dir,
            std::io::Error::other("some logs could not be copied"),
        )));
    }
    // Like a results folder: a manifest of everything, README included, and no
    // bookkeeping of the copy left on the NAS.
    let mut entries = report.manifest.entries.clone();
    entries.retain(|e| e.path != Path::new("README.md"));
    entries.push(ManifestEntry {
        path: "README.md".into(),
        digest: readme,
    });
    let manifest = Manifest::from_entries(entries);
    manifest.write_atomic(&failed_dir.join(MANIFEST_NAME))?;
    let state = failed_dir.join(STATE_DIR);
    match std::fs::remove_dir_all(&state) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(hpcstage_staging::Error::io(&state, e).into())
        }
        _ => {}
    }
    if let Some((remote, dest)) = &remote_failed {
        match place_remote(remote, dest, &failed_dir, &manifest, opts, progress) {
            // An earlier pull of this run left its logs there already.
            Err(e) if already_exists(&e) => {
                let _ = std::fs::remove_dir_all(&failed_dir);
            }
            other => other.map_err(|e| nas_failure(&shown_dir, e))?,
        }
    }
    Ok(shown_dir)
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
