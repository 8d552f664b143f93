//! Ingest: instrument data into the NAS raw area, verified, described and write-protected.
//!
//! The copy is assembled in a hidden `.NAME.ingest` folder next to its final place (so a
//! killed ingest resumes there), described by `dataset.json` and `MANIFEST.sha256`, then
//! renamed into `raw/NAME` with RENAME_NOREPLACE: an existing dataset is never
//! overwritten or appended to, even by a concurrent ingest of the same name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jiff::Timestamp;

use crate::copy::{copy_tree, CopyOptions, CopyReport};
use crate::error::{Error, IoContext, Result};
use crate::hash::hash_file;
use crate::manifest::{Manifest, ManifestEntry};
use crate::progress::Progress;
use crate::record::{current_user, hostname, write_json, DatasetInfo};
use crate::stage::check_name;
use crate::walk::{MANIFEST_NAME, STATE_DIR};
use crate::worm::{protect, Protection};

/// An ingest, resolved.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub source: PathBuf,
    pub nas_root: PathBuf,
    pub project: String,
    pub dataset: String,
    pub immutable: bool,
    pub copy: CopyOptions,
}

/// What an ingest did.
#[derive(Debug)]
pub struct IngestOutcome {
    pub report: CopyReport,
    /// The final dataset folder (present only when everything verified).
    pub path: PathBuf,
    pub info: Option<DatasetInfo>,
    pub protection: Option<Protection>,
}

/// `<nas_root>/<project>/raw/<dataset>`.
pub fn raw_path(nas_root: &Path, project: &str, dataset: &str) -> PathBuf {
    nas_root.join(project).join("raw").join(dataset)
}

/// Ingests `settings.source` into the NAS raw area.
pub fn ingest(settings: &IngestSettings, progress: &dyn Progress) -> Result<IngestOutcome> {
    check_name("project", &settings.project)?;
    check_name("dataset", &settings.dataset)?;
    let final_path = raw_path(&settings.nas_root, &settings.project, &settings.dataset);
    if std::fs::symlink_metadata(&final_path).is_ok() {
        return Err(Error::DatasetExists { path: final_path });
    }
    if settings.source.join("dataset.json").is_file() {
        return Err(Error::Invalid {
            what: "source",
            value: settings.source.display().to_string(),
            reason: "it holds its own dataset.json at the top, which ingest writes; rename that file first"
                .to_string(),
        });
    }
    let raw = final_path.parent().expect("raw path has a parent");
    let partial = raw.join(format!(".{}.ingest", settings.dataset));
    // A half-done ingest resumes only from the same source; another one starts afresh.
    let origin_path = partial.join(STATE_DIR).join("origin");
    let origin = std::fs::canonicalize(&settings.source)
        .unwrap_or(settings.source.clone())
        .display()
        .to_string();
    if partial.exists()
        && std::fs::read_to_string(&origin_path).ok().as_deref() != Some(origin.as_str())
        && !settings.copy.dry_run
    {
        crate::worm::make_writable(&partial)?;
        std::fs::remove_dir_all(&partial).at(&partial)?;
    }
    if !settings.copy.dry_run {
        std::fs::create_dir_all(partial.join(STATE_DIR)).at(&partial)?;
        std::fs::write(&origin_path, &origin).at(&origin_path)?;
    }
    let mut copy = settings.copy.clone();
    copy.preserve_mtime = true;
    let report = copy_tree(&settings.source, &partial, &copy, progress)?;
    if copy.dry_run || !report.ok() {
        return Ok(IngestOutcome {
            report,
            path: final_path,
            info: None,
            protection: None,
        });
    }

    let mut formats = BTreeMap::new();
    for e in &report.manifest.entries {
        let ext = e
            .path
            .extension()
            .map(|x| x.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        *formats.entry(ext).or_insert(0u64) += 1;
    }
    let source_path = std::fs::canonicalize(&settings.source).unwrap_or(settings.source.clone());
    let mut info = DatasetInfo {
        project: settings.project.clone(),
        dataset: settings.dataset.clone(),
        source_host: hostname(),
        source_path: source_path.display().to_string(),
        formats,
        files: report.files_total,
        bytes: report.bytes_total,
        ingested_at: Timestamp::now(),
        ingested_by: current_user(),
        manifest_digest: Some(report.manifest.digest()),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let info_path = partial.join("dataset.json");
    write_json(&info_path, &info)?;
    let (info_digest, _) = hash_file(&info_path)?;
    let mut entries = report.manifest.entries.clone();
    entries.retain(|e| e.path != Path::new("dataset.json"));
    entries.push(ManifestEntry {
        path: "dataset.json".into(),
        digest: info_digest,
    });
    let manifest = Manifest::from_entries(entries);
    manifest.write_atomic(&partial.join(MANIFEST_NAME))?;
    crate::place::prune_unlisted(&partial, &manifest)?;
    let state = partial.join(STATE_DIR);
    std::fs::remove_dir_all(&state).at(&state)?;

    crate::place::rename_noreplace(&partial, &final_path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::DatasetExists {
                path: final_path.clone(),
            }
        } else {
            Error::io(&final_path, e)
        }
    })?;
    let protection = protect(&final_path, settings.immutable)?;
    info.manifest_digest = Some(report.manifest.digest());
    Ok(IngestOutcome {
        report,
        path: final_path,
        info: Some(info),
        protection: Some(protection),
    })
}
