//! Staging a dataset from the NAS to scratch: where it goes, the verified copy, and the
//! stage record with its purge deadline (in `DEST/.hpcstage/stage.json` and the ledger).

use std::path::{Component, Path, PathBuf};

use jiff::Timestamp;

use crate::copy::{copy_from, CopyOptions, CopyReport, FailureKind};
use crate::error::{Error, IoContext, Result};
use crate::host::{current_user, hostname};
use crate::ledger::Ledger;
use crate::policy::PurgePolicy;
use crate::progress::Progress;
use crate::record::{write_json, Incomplete, PurgeInfo, StageRecord};
use crate::remote::{Location, SshOptions};
use crate::storage::{S3Options, Storage};
use crate::walk::{MANIFEST_NAME, STATE_DIR};

/// Everything a stage needs, already resolved.
#[derive(Debug, Clone)]
pub struct StageSettings {
    /// A local folder or `[user@]host[:port]:/path`.
    pub source: Location,
    /// How to talk to a remote source.
    pub ssh: SshOptions,
    /// How to reach an S3 source.
    pub s3: S3Options,
    pub destination: PathBuf,
    pub project: String,
    pub dataset: String,
    pub policy: PurgePolicy,
    /// Stage a source even when it is a project's whole `raw/` area.
    pub allow_raw_area: bool,
    pub copy: CopyOptions,
}

/// The result of a stage: the copy report and, when everything verified, the record.
#[derive(Debug)]
pub struct StageOutcome {
    pub report: CopyReport,
    pub record: Option<StageRecord>,
}

/// Where a NAS path goes on scratch, and under which project and dataset name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub project: String,
    pub dataset: String,
    pub destination: PathBuf,
}

/// Derives `<scratch_root>/<project>/<dataset>` from a NAS path laid out as
/// `<nas_root>/<project>/raw/<dataset>` (or any folder below `<nas_root>/<project>`).
/// `project` and `dataset` override what the path says; outside the NAS root the project
/// must be given.
pub fn derive_target(
    source: &Path,
    nas_root: Option<&Path>,
    scratch_root: &Path,
    project: Option<&str>,
    dataset: Option<&str>,
) -> Result<Target> {
    let parts: Vec<String> = nas_root
        .and_then(|root| source.strip_prefix(root).ok())
        .map(|rel| {
            rel.components()
                .filter_map(|c| match c {
                    Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let derived_project = parts.first().cloned();
    let derived_dataset = match parts.as_slice() {
        [_, raw, rest @ ..] if raw == "raw" && !rest.is_empty() => Some(rest.join("-")),
        [_, rest @ ..] if !rest.is_empty() => Some(rest.join("-")),
        _ => None,
    };
    let project = project
        .map(str::to_string)
        .or(derived_project)
        .ok_or_else(|| Error::Invalid {
            what: "source",
            value: source.display().to_string(),
            reason:
                "it is not under the configured nas_root as <nas_root>/<project>/raw/<dataset>; \
                     pass --project (and optionally --dataset) or an explicit destination"
                    .to_string(),
        })?;
    let dataset = dataset
        .map(str::to_string)
        .or(derived_dataset)
        .or_else(|| source.file_name().map(|n| n.to_string_lossy().into_owned()))
        .ok_or_else(|| Error::Invalid {
            what: "source",
            value: source.display().to_string(),
            reason: "cannot tell the dataset name; pass --dataset".to_string(),
        })?;
    check_name("project", &project)?;
    check_name("dataset", &dataset)?;
    Ok(Target {
        destination: scratch_root.join(&project).join(&dataset),
        project,
        dataset,
    })
}

/// Refuses a source that is a project's `raw/` area (`<nas>/<project>/raw`), which holds
/// datasets, rather than one dataset: staging it by mistake (the dataset name forgotten)
/// copies every dataset of the project under a dataset named `raw`.
fn refuse_raw_area(source: &Location, store: &dyn Storage) -> Result<()> {
    let path = source.path();
    let named = |p: &Path, name: &str| p.file_name().is_some_and(|n| n == name);
    // `raw/raw` is a dataset that happens to be called `raw`.
    if !named(path, "raw") || path.parent().is_some_and(|p| named(p, "raw")) {
        return Ok(());
    }
    // Named where a look costs nothing (a folder on this machine).
    let examples = match store.local_root() {
        Some(dir) => std::fs::read_dir(dir)
            .map(|entries| {
                let mut names: Vec<String> = entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect();
                names.sort();
                names.truncate(3);
                names
            })
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let example = examples.first().map_or("NAME", String::as_str);
    let datasets = if examples.is_empty() {
        String::new()
    } else {
        format!(" (it holds {}, ...)", examples.join(", "))
    };
    Err(Error::Invalid {
        what: "source",
        value: source.to_string(),
        reason: format!(
            "this is a project's raw/ area{datasets}, not one dataset; stage one dataset, \
             e.g. {}, or pass --allow-raw-area to stage the whole area",
            Path::new(&source.to_string()).join(example).display()
        ),
    })
}

/// A project or dataset name must be one plain path component.
pub fn check_name(what: &'static str, name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.starts_with('.')
        || name.contains('/')
        || name.contains('\0')
        || name.chars().any(char::is_control);
    if bad {
        return Err(Error::Invalid {
            what,
            value: name.to_string(),
            reason: "must be a single folder name (no '/', not starting with '.', no control characters)"
                .to_string(),
        });
    }
    Ok(())
}

/// Writes the record of a first stage into `settings.destination` before its copy
/// starts, marked incomplete with `reason`, so that `status`, `report` and `clean` know
/// the folder (its deadline, its size so far) while the copy runs or after it was
/// killed; the stage that completes replaces it. Best effort: `None` when the record
/// could not be written (a scratch too full for it gets the copy's own clear error), or
/// when the destination already has one.
pub fn record_started(
    settings: &StageSettings,
    ledger: Option<&Ledger>,
    reason: &str,
) -> Option<StageRecord> {
    let record_path = settings.destination.join(STATE_DIR).join("stage.json");
    if record_path.exists() {
        return None;
    }
    let mut record = new_record(settings, &CopyReport::default(), Timestamp::now());
    record.incomplete = Some(Incomplete {
        at: record.staged_at,
        reason: reason.to_string(),
        failed: Vec::new(),
        failed_count: 0,
    });
    let written = (settings.destination.is_dir() || !settings.destination.exists())
        && write_json(&record_path, &record).is_ok();
    if !written {
        return None;
    }
    if let Some(ledger) = ledger {
        let _ = ledger.put_stage(&record);
    }
    Some(record)
}

/// Stages `settings.source` to `settings.destination` and records it.
///
/// The record (`DEST/.hpcstage/stage.json` and the ledger) is written before the copy
/// starts when there is none yet, marked incomplete, so that a stage stopped by a kill
/// still shows in `status`, `report` and `clean` with its deadline and size. A stage that
/// does not complete keeps the last complete stage's record and `MANIFEST.sha256`, marked
/// incomplete with what failed: the copy stays tracked, and nothing makes it
/// look complete.
pub fn stage(
    settings: &StageSettings,
    ledger: Option<&Ledger>,
    progress: &dyn Progress,
) -> Result<StageOutcome> {
    let source = crate::storage::open(&settings.source, &settings.ssh, &settings.s3)?;
    stage_from(settings, source.as_ref(), ledger, progress)
}

/// [`stage`] from the storage already opened for `settings.source`.
pub fn stage_from(
    settings: &StageSettings,
    source: &dyn Storage,
    ledger: Option<&Ledger>,
    progress: &dyn Progress,
) -> Result<StageOutcome> {
    if !settings.allow_raw_area {
        refuse_raw_area(&settings.source, source)?;
    }
    let mut copy = settings.copy.clone();
    copy.preserve_mtime = settings.policy.preserve_mtime();
    // The stage record needs the manifest's digest only: millions of entries stay on disk.
    copy.keep_manifest = false;
    let record_path = settings.destination.join(STATE_DIR).join("stage.json");
    let previous: Option<StageRecord> = crate::record::read_json(&record_path).ok();
    let manifest_path = settings.destination.join(MANIFEST_NAME);
    // The manifest of the last complete stage (the one its record names): the copy
    // removes it when a file fails. A hard link keeps it meanwhile, not its bytes (the
    // manifest of millions of files), and goes when the stage is over.
    let kept_manifest = settings.destination.join(STATE_DIR).join("manifest.last");
    let _ = std::fs::remove_file(&kept_manifest);
    let previous_manifest = (!copy.dry_run
        && previous.is_some()
        && std::fs::hard_link(&manifest_path, &kept_manifest).is_ok())
    .then(|| tempfile::TempPath::try_from_path(&kept_manifest).ok())
    .flatten();
    // A local source that is not there gets its own error before anything is written.
    let missing_source = source.local_root().is_some_and(|p| !p.is_dir());
    let provisional = if copy.dry_run || previous.is_some() || missing_source {
        None
    } else {
        record_started(
            settings,
            ledger,
            "staging started and has not finished (stopped, or still running)",
        )
    };
    let copied = copy_from(source, &settings.destination, &copy, progress);
    let report = match copied {
        Ok(report) => report,
        Err(e) => {
            // Nothing was copied (the source is missing, another stage holds the folder):
            // the provisional record goes again, unless a copy got under way.
            if let Some(record) = &provisional {
                if !settings
                    .destination
                    .join(STATE_DIR)
                    .join("running")
                    .exists()
                {
                    let _ = std::fs::remove_file(&record_path);
                    if let Some(ledger) = ledger {
                        let _ = ledger.remove_stage(record);
                    }
                    remove_empty(&settings.destination);
                }
            }
            return Err(e);
        }
    };
    let mut report = report;
    if copy.use_source_manifest && report.source_manifest_digest.is_none() {
        report.warnings.push(format!(
            "no MANIFEST.sha256 in {}: the copy is read back and checked on scratch, but \
             nothing checks the files against the NAS's own checksums end to end \
             (`hpcstage ingest` writes one for new data)",
            settings.source
        ));
    }
    if copy.dry_run {
        return Ok(StageOutcome {
            report,
            record: None,
        });
    }
    if !report.ok() {
        let mut report = report;
        let staged_at = Timestamp::now();
        let mut record = match previous {
            Some(previous) => previous,
            // A first stage: what it verified so far, with its deadline.
            None => new_record(settings, &report, staged_at),
        };
        record.incomplete = Some(incomplete_from(&report, staged_at));
        // The failures are the outcome (a full disk may refuse these writes too): what
        // could not be kept is told, not turned into another error.
        let mut keep = |what: &str, done: Result<()>| {
            if let Err(e) = done {
                report.warnings.push(format!(
                    "could not keep the {what} of the incomplete stage: {e}"
                ));
            }
        };
        if let Some(kept) = previous_manifest {
            let named = crate::hash::hash_file(&kept)
                .is_ok_and(|(digest, _)| digest == record.manifest_digest);
            if named && !manifest_path.exists() {
                keep(
                    "last complete MANIFEST.sha256",
                    std::fs::rename(&kept, &manifest_path).at(&manifest_path),
                );
            }
        }
        keep("stage record", write_json(&record_path, &record));
        if let Some(ledger) = ledger {
            keep("ledger entry", ledger.put_stage(&record).map(|_| ()));
        }
        return Ok(StageOutcome {
            report,
            record: None,
        });
    }
    if let Some(previous) = previous {
        let unchanged = report.changes_total == 0
            && previous.incomplete.is_none()
            && previous.manifest_digest == report.manifest_digest()
            && previous.source == settings.source.to_string();
        if unchanged {
            // A no-op re-stage: nothing to write (the deadline still follows the files,
            // which did not change either).
            if let Some(ledger) = ledger {
                ledger.put_stage_if_missing(&previous)?;
            }
            return Ok(StageOutcome {
                report,
                record: Some(previous),
            });
        }
    }
    let record = new_record(settings, &report, Timestamp::now());
    write_json(&record_path, &record)?;
    if let Some(ledger) = ledger {
        ledger.put_stage(&record)?;
    }
    Ok(StageOutcome {
        report,
        record: Some(record),
    })
}

/// The record of a stage whose copy ended with `report`.
fn new_record(settings: &StageSettings, report: &CopyReport, staged_at: Timestamp) -> StageRecord {
    let policy = &settings.policy;
    StageRecord {
        id: format!("{}/{}", settings.project, settings.dataset),
        project: settings.project.clone(),
        dataset: settings.dataset.clone(),
        source: settings.source.to_string(),
        destination: settings.destination.clone(),
        files: report.files_total,
        bytes: report.bytes_total,
        manifest_digest: report.manifest_digest(),
        source_manifest_digest: report.source_manifest_digest,
        staged_at,
        owner: current_user(),
        host: hostname(),
        purge: PurgeInfo {
            basis: policy.basis,
            age: crate::policy::format_age(policy.age),
            whole_folder: policy.whole_folder,
            oldest: policy.reference(&report.oldest, staged_at),
            deadline: policy.deadline(&report.oldest, staged_at),
        },
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        incomplete: None,
    }
}

/// What a copy with failures left undone, for the stage record.
fn incomplete_from(report: &CopyReport, at: Timestamp) -> Incomplete {
    let worst = report
        .failed
        .iter()
        .map(|f| f.kind)
        .min_by_key(|k| u8::from(*k != FailureKind::SourceCorrupt))
        .map_or("failed", failure_words);
    Incomplete {
        at,
        reason: format!(
            "the last stage did not complete ({} of {} files {worst}); rerun `hpcstage stage` to finish",
            report.failed_total(),
            report.files_total
        ),
        failed: report
            .failed
            .iter()
            .take(Incomplete::SHOWN)
            .map(|f| format!("{} {}", f.path.display(), failure_words(f.kind)))
            .collect(),
        failed_count: report.failed_total(),
    }
}

/// A failure kind as users read it.
fn failure_words(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::SourceCorrupt => "SOURCE CORRUPT",
        FailureKind::SourceChanged => "changed while read",
        FailureKind::VerifyFailed => "read back differently",
        FailureKind::DiskFull => "disk full",
        FailureKind::Unreachable => "NAS unreachable",
        FailureKind::Io => "unreadable or unwritable",
        FailureKind::NotAttempted => "not attempted",
    }
}

/// Removes `dir` and its `.hpcstage/` when they hold nothing else (a stage that never
/// started copying leaves no folder behind).
fn remove_empty(dir: &Path) {
    let state = dir.join(STATE_DIR);
    let _ = std::fs::remove_file(state.join("lock"));
    let _ = std::fs::remove_dir(&state);
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derives_project_and_dataset_from_the_nas_layout() {
        let t = derive_target(
            Path::new("/nas/lab/PRJ1/raw/plate7"),
            Some(Path::new("/nas/lab")),
            Path::new("/scratch/me"),
            None,
            None,
        )
        .unwrap();
        assert_eq!(t.project, "PRJ1");
        assert_eq!(t.dataset, "plate7");
        assert_eq!(t.destination, PathBuf::from("/scratch/me/PRJ1/plate7"));
    }

    #[test]
    fn outside_the_nas_root_the_project_must_be_given() {
        let err = derive_target(
            Path::new("/data/x"),
            Some(Path::new("/nas")),
            Path::new("/s"),
            None,
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("--project"), "{err}");
        let t =
            derive_target(Path::new("/data/x"), None, Path::new("/s"), Some("P"), None).unwrap();
        assert_eq!(t.destination, PathBuf::from("/s/P/x"));
        assert!(derive_target(
            Path::new("/data/x"),
            None,
            Path::new("/s"),
            Some("../etc"),
            None
        )
        .is_err());
    }
}
