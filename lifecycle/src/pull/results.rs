//! Writing validated results to the NAS: assembled, verified, described and placed, or
//! adopted when a stopped pull already placed them; then the bookkeeping.

use std::path::{Path, PathBuf};

use hpcstage_staging::digest::Digest;
use hpcstage_staging::host::{current_user, hostname};
use hpcstage_staging::progress::Progress;
use hpcstage_staging::record::{json_bytes, read_json, write_json};
use hpcstage_staging::sorted::{Cursor, ManifestFile};
use hpcstage_staging::walk::{Filter, MANIFEST_NAME, STATE_DIR};
use hpcstage_template::{Rendered, SIGNAL_MARKER};
use jiff::Timestamp;

use super::failed::{publish_failed_logs, Rejected};
use super::provenance::{earlier_compute_jobs, gpu_lines, param_values, readme_text, Provenance};
use super::target::Target;
use super::validate::{missing_outputs, nothing_validates, summarize, validate};
use super::{PullOptions, PullOutcome};
use crate::backend::Observed;
use crate::chain::RENDERED_FILE;
use crate::error::{Error, Result};
use crate::run::{Event, RunRecord, RunStore, RunView};
use crate::run::{PulledMarker, PULLED_MARKER};

pub(super) fn pull_finished(
    store: &RunStore,
    view: &RunView,
    job_id: &str,
    array_size: Option<u32>,
    observed: &Observed,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<PullOutcome> {
    let record = &view.record;
    let run_dir = &record.run_dir;
    let rendered: Rendered = read_json(&run_dir.join(RENDERED_FILE))?;
    let results_dir = &record.results_dir;
    let target = &Target::open(results_dir, opts)?;
    if target.store.tree_exists()? {
        // Placed (or, on S3, its manifest written) by a pull stopped before its bookkeeping.
        return adopt(store, record, &rendered, target, opts);
    }
    let validation = validate(&rendered, run_dir, opts.validate_timeout)?;
    write_json(&run_dir.join("validation.json"), &validation)?;
    let timed_out_warning = run_dir.join(SIGNAL_MARKER).exists();

    let job_ok = observed.success;
    let incomplete = !(job_ok && validation.ok);
    // A pull in which nothing validates would publish nothing but logs as results: it is
    // refused even with --allow-partial.
    let nothing = incomplete && nothing_validates(&validation);
    if incomplete && (!opts.allow_partial || nothing) {
        let mut reasons = Vec::new();
        if !job_ok {
            reasons.push(format!(
                "compute job {job_id} ended {} (exit code {})",
                observed.facts.state,
                observed.facts.exit_code.as_deref().unwrap_or("unknown")
            ));
        }
        if !validation.ok {
            reasons.push(format!(
                "outputs did not validate: {}",
                summarize(&validation)
            ));
        }
        if nothing && opts.allow_partial {
            reasons.push(
                "no expected output validated, so there is nothing to pull even with \
                 --allow-partial"
                    .to_string(),
            );
        }
        let rejected = Rejected {
            reason: &reasons.join("; "),
            facts: &observed.facts,
            job_id,
            nothing,
        };
        return publish_failed_logs(store, record, &rejected, target, opts, progress);
    }

    // Exactly what the purge will remove stays behind: the same resolved paths, so that
    // nothing is left off the NAS and then purged from scratch.
    let intermediates: Vec<PathBuf> = rendered
        .outputs
        .intermediate_paths(run_dir)?
        .into_iter()
        .filter_map(|p| p.strip_prefix(run_dir).ok().map(Path::to_path_buf))
        .collect();
    let mut exclude: Vec<String> = vec![crate::chain::PULL_SCRIPT.to_string()];
    // The pull-back job's own log (and the local runner's) are being written while this
    // copy runs; they would fail the source-changed check and say nothing about results.
    exclude.push("logs/pull-*".to_string());
    exclude.push("logs/local-runner.log".to_string());
    let filter = Filter::new(&[], &exclude)?.excluding_paths(intermediates);

    let provenance = Provenance {
        run: record,
        compute_job_id: job_id.to_string(),
        compute_job: &observed.facts,
        array_size,
        earlier_compute_jobs: earlier_compute_jobs(view),
        model: crate::digests::model_info(record, run_dir),
        param_inputs: crate::digests::param_inputs(&rendered),
        gpus: gpu_lines(run_dir),
        validation: &validation,
        partial: incomplete,
        missing: if incomplete {
            missing_outputs(&validation, run_dir)
        } else {
            Vec::new()
        },
        timed_out_warning,
        pulled_at: Timestamp::now(),
        pulled_by: current_user(),
        pulled_on: hostname(),
        hpcstage_version: env!("CARGO_PKG_VERSION"),
    };
    let described = [
        (
            "run.json",
            json_bytes(&results_dir.join("run.json"), &provenance)?,
        ),
        (
            "README.md",
            readme_text(&provenance, &param_values(&rendered))?.into_bytes(),
        ),
    ];
    let written = target.place(
        &record.id, None, run_dir, filter, &described, opts.worm, opts, progress,
    )?;
    let Some((listed, bytes)) = written else {
        // A results folder appeared meanwhile: the one in place is adopted only if it is
        // this run's.
        return adopt(store, record, &rendered, target, opts);
    };
    let placed = Placed {
        files: listed.files,
        bytes,
        digest: listed.digest.to_hex(),
        missing: incomplete.then(|| provenance.missing.clone()),
        // Placed write-protected (`--worm`), per backend.
        protected: opts.worm,
    };
    finish(store, record, &rendered, target, opts, placed)
}

/// What follows a results folder in place, in an order a killed pull can resume:
/// write protection, purge of the intermediates, the run folder's marker, the ledger.
/// A partial pull (`--allow-partial` of a failed or invalid job, `partial` lists what is
/// missing) purges nothing: scratch of a failed job is left as it is, for whoever finds
/// out why.
fn finish(
    store: &RunStore,
    record: &RunRecord,
    rendered: &Rendered,
    target: &Target,
    opts: &PullOptions,
    placed: Placed,
) -> Result<PullOutcome> {
    let Placed {
        files,
        bytes,
        digest,
        missing: partial,
        protected,
    } = placed;
    let results_dir = &record.results_dir;
    if opts.worm && !protected {
        target.protect(opts)?;
    }
    let purged = if partial.is_none() {
        purge_intermediates(rendered, record)?
    } else {
        Vec::new()
    };
    write_json(
        &record.run_dir.join(STATE_DIR).join(PULLED_MARKER),
        &PulledMarker {
            run_id: record.id.clone(),
            results_dir: results_dir.clone(),
            manifest_digest: digest.clone(),
            pulled_at: Timestamp::now(),
            partial: partial.clone(),
        },
    )?;
    store.append(
        &record.id,
        Event::Pulled {
            results_dir: results_dir.clone(),
            manifest_digest: digest.clone(),
            partial: partial.clone(),
        },
    )?;
    Ok(PullOutcome::Pulled {
        results_dir: results_dir.clone(),
        files,
        bytes,
        manifest_digest: digest,
        purged,
        partial: partial.is_some(),
        missing: partial.unwrap_or_default(),
    })
}

/// Results in place: how many files and bytes, the manifest's digest, and for a partial
/// pull what is missing.
struct Placed {
    files: u64,
    bytes: u64,
    digest: String,
    missing: Option<Vec<String>>,
    /// Already write-protected as it was written.
    protected: bool,
}

/// Takes over a results folder already under its final name: it is complete (folders are
/// renamed into place only once verified) when its `run.json` names this run and every
/// file of its manifest is there. Anything else at that name is left alone.
fn adopt(
    store: &RunStore,
    record: &RunRecord,
    rendered: &Rendered,
    target: &Target,
    opts: &PullOptions,
) -> Result<PullOutcome> {
    let results_dir = &record.results_dir;
    let not_ours = |why: String| Error::Record {
        path: results_dir.clone(),
        reason: format!(
            "the results folder exists but {why}; it was left as it is: move it away and pull again"
        ),
    };
    let provenance: serde_json::Value = target
        .store
        .read_small(Path::new("run.json"))
        .map_err(|e| e.to_string())
        .and_then(|b| b.ok_or_else(|| "it is missing".to_string()))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| not_ours(format!("its run.json cannot be read ({e})")))?;
    let owner = provenance["run"]["id"].as_str().unwrap_or_default();
    if owner != record.id {
        return Err(not_ours(format!("holds run {owner:?}, not {}", record.id)));
    }
    let (files, bytes, digest) = match target.store.local_root() {
        Some(dir) => listed_in_folder(dir),
        None => listed_in_store(target.store.as_ref()),
    }
    .map_err(not_ours)?;
    let digest = digest.to_hex();
    let partial = provenance["partial"].as_bool().unwrap_or(false);
    let missing: Vec<String> = provenance["missing"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let placed = Placed {
        files,
        bytes,
        digest,
        missing: partial.then_some(missing),
        protected: false,
    };
    finish(store, record, rendered, target, opts, placed)
}

/// What the manifest of results in place lists (files, their bytes, its digest), each
/// listed file found: or why they are not whole.
type Listed = std::result::Result<(u64, u64, Digest), String>;

/// [`Listed`] of results in a folder of this machine: the manifest read line by line and
/// each file it lists looked at in turn, so that a million of them are never held.
fn listed_in_folder(dir: &Path) -> Listed {
    let manifest = ManifestFile::open(&dir.join(MANIFEST_NAME)).map_err(unreadable)?;
    listed(&manifest, |rel| {
        Ok(std::fs::symlink_metadata(dir.join(rel))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len()))
    })
}

/// [`Listed`] of results on an SSH host or S3: the manifest copied to this machine and
/// the listing spilled to disk in path order, both read alongside, never held whole.
fn listed_in_store(store: &dyn hpcstage_staging::storage::Storage) -> Listed {
    let manifest = store
        .manifest_file()
        .map_err(unreadable)?
        .ok_or_else(|| "its manifest cannot be read (it is missing)".to_string())?;
    let mut sizes = Cursor::new(
        store
            .file_sizes()
            .map_err(|e| format!("it cannot be listed ({e})"))?,
    );
    listed(&manifest.file, |rel| {
        sizes
            .find(rel)
            .map(|found| found.map(|(_, size)| *size))
            .map_err(|e| format!("it cannot be listed ({e})"))
    })
}

/// Files, bytes and digest of `manifest`, each of its files sized by `size_of` in path
/// order (`None`: not there).
fn listed(
    manifest: &ManifestFile,
    mut size_of: impl FnMut(&Path) -> std::result::Result<Option<u64>, String>,
) -> Listed {
    let mut bytes = 0;
    for entry in manifest.in_order().map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        bytes += size_of(&entry.path)?.ok_or_else(|| missing_file(&entry.path))?;
    }
    Ok((
        manifest.entries,
        bytes,
        manifest.digest().map_err(unreadable)?,
    ))
}

fn unreadable(e: hpcstage_staging::Error) -> String {
    match &e {
        hpcstage_staging::Error::Io { error, .. }
            if error.kind() == std::io::ErrorKind::NotFound =>
        {
            "its manifest cannot be read (it is missing)".to_string()
        }
        _ => format!("its manifest cannot be read ({e})"),
    }
}

fn missing_file(rel: &Path) -> String {
    format!("{} of its manifest is missing", rel.display())
}

/// Removes the spec's intermediates from the run folder: never the input, never anything
/// outside the run folder.
fn purge_intermediates(rendered: &Rendered, record: &RunRecord) -> Result<Vec<PathBuf>> {
    let run_dir = std::fs::canonicalize(&record.run_dir)
        .map_err(|e| hpcstage_staging::Error::io(&record.run_dir, e))?;
    let input = std::fs::canonicalize(&record.input.path).unwrap_or(record.input.path.clone());
    let mut purged = Vec::new();
    for path in rendered.outputs.intermediate_paths(&record.run_dir)? {
        // The path itself, not what a link there points to: a link to masks/ must not
        // take masks/ with it.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let Some(parent) = path.parent().and_then(|p| std::fs::canonicalize(p).ok()) else {
            continue;
        };
        let real = parent.join(path.file_name().unwrap_or_default());
        if !real.starts_with(&run_dir) || real == run_dir || real.starts_with(&input) {
            continue;
        }
        let result = if meta.is_dir() {
            std::fs::remove_dir_all(&real)
        } else {
            std::fs::remove_file(&real)
        };
        result.map_err(|e| hpcstage_staging::Error::io(&real, e))?;
        purged.push(path);
    }
    Ok(purged)
}
