//! Ingest: instrument data into the NAS raw area, verified, described and write-protected.
//!
//! One path whatever the NAS is (a folder, an SSH host, an S3 prefix): the NAS's storage
//! places the dataset ([`Storage::place`]): every file verified where it cannot be seen
//! under its final name, then `dataset.json`, then `MANIFEST.sha256` last, then protection
//! and the final name. An existing dataset is never overwritten or appended to; a killed
//! ingest resumes where it stopped (see `storage::place` for how each backend does it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jiff::Timestamp;

use crate::copy::{CopyOptions, CopyReport};
use crate::error::{Error, Result};
use crate::hash::Digest;
use crate::host::{current_user, hostname};
use crate::manifest::ManifestEntry;
use crate::progress::Progress;
use crate::record::{json_bytes, DatasetInfo};
use crate::remote::{Location, SshOptions};
use crate::stage::check_name;
use crate::storage::{PlaceOptions, S3Options, Storage};
use crate::worm::Protection;

/// An ingest, resolved.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub source: PathBuf,
    /// The NAS root: a local folder or `[user@]host[:port]:/path`.
    pub nas_root: Location,
    /// How to reach a remote NAS.
    pub ssh: SshOptions,
    /// How to reach an S3 NAS (and the retention of what ingest places there).
    pub s3: S3Options,
    /// On a remote NAS, also run `sha256sum -c` there before the rename.
    pub remote_verify: bool,
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
    /// On S3: the Object Lock retention set on every object (and read back).
    pub retention: Option<String>,
    /// The ZFS snapshot and hold taken of the placed dataset (see [`crate::zfs`]); `None`
    /// when nothing was placed or the NAS is remote.
    pub snapshot: Option<std::result::Result<Option<crate::zfs::Snapshot>, String>>,
}

/// `<nas_root>/<project>/raw/<dataset>`.
pub fn raw_path(nas_root: &Path, project: &str, dataset: &str) -> PathBuf {
    nas_root.join(project).join("raw").join(dataset)
}

/// Ingests `settings.source` into the NAS raw area.
pub fn ingest(settings: &IngestSettings, progress: &dyn Progress) -> Result<IngestOutcome> {
    check_name("project", &settings.project)?;
    check_name("dataset", &settings.dataset)?;
    check_source(&settings.source)?;
    let nas = crate::storage::open(&settings.nas_root, &settings.ssh, &settings.s3)?;
    ingest_into(settings, nas.as_ref(), progress)
}

/// [`ingest`] into the NAS storage already opened for `settings.nas_root`.
pub fn ingest_into(
    settings: &IngestSettings,
    nas: &dyn Storage,
    progress: &dyn Progress,
) -> Result<IngestOutcome> {
    let origin = std::fs::canonicalize(&settings.source)
        .unwrap_or(settings.source.clone())
        .display()
        .to_string();
    let opts = PlaceOptions {
        copy: settings.copy.clone(),
        origin,
        protect: true,
        hidden: "ingest",
        exclusive: true,
        immutable: settings.immutable,
        retention: settings.s3.retention,
        remote_verify: settings.remote_verify,
        label: format!("{}-{}", settings.project, settings.dataset),
    };
    let rel = raw_path(Path::new(""), &settings.project, &settings.dataset);
    let mut placing = nas.place(&rel, &opts)?;
    let mut report = placing.put_tree(&settings.source, progress)?;
    if settings.copy.dry_run || !report.ok() {
        return Ok(IngestOutcome {
            report,
            path: placing.path(),
            info: None,
            protection: None,
            retention: None,
            snapshot: None,
        });
    }
    let manifest_digest = report.manifest_digest();
    let mut info = dataset_info(
        settings,
        formats(placing.listed()?)?,
        manifest_digest,
        report.files_total,
        report.bytes_total,
    );
    let info_rel = Path::new("dataset.json");
    let info_digest =
        placing.put_bytes(info_rel, &json_bytes(&placing.display(info_rel), &info)?)?;
    let path = placing.path();
    let placed = placing.finish(&[ManifestEntry {
        path: info_rel.into(),
        digest: info_digest,
    }])?;
    info.manifest_digest = Some(manifest_digest);
    report.warnings.extend(nas.notes());
    report
        .warnings
        .extend(crate::storage::Capabilities::limits_note(nas));
    Ok(IngestOutcome {
        report,
        path,
        info: Some(info),
        protection: placed.protection,
        retention: placed.retention,
        snapshot: placed.snapshot,
    })
}

/// The source must not carry the file ingest writes.
fn check_source(source: &Path) -> Result<()> {
    if source.join("dataset.json").is_file() {
        return Err(Error::Invalid {
            what: "source",
            value: source.display().to_string(),
            reason: "it holds its own dataset.json at the top, which ingest writes; rename that file first"
                .to_string(),
        });
    }
    Ok(())
}

/// How many files of each extension (lowercase, `""` for none) `listed` holds.
fn formats(listed: impl Iterator<Item = Result<ManifestEntry>>) -> Result<BTreeMap<String, u64>> {
    let mut formats = BTreeMap::new();
    for e in listed {
        let ext = e?
            .path
            .extension()
            .map(|x| x.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        *formats.entry(ext).or_insert(0u64) += 1;
    }
    Ok(formats)
}

/// `dataset.json` for files of `formats`.
fn dataset_info(
    settings: &IngestSettings,
    formats: BTreeMap<String, u64>,
    manifest_digest: Digest,
    files: u64,
    bytes: u64,
) -> DatasetInfo {
    let source_path = std::fs::canonicalize(&settings.source).unwrap_or(settings.source.clone());
    DatasetInfo {
        project: settings.project.clone(),
        dataset: settings.dataset.clone(),
        source_host: hostname(),
        source_path: source_path.display().to_string(),
        formats,
        files,
        bytes,
        ingested_at: Timestamp::now(),
        ingested_by: current_user(),
        manifest_digest: Some(manifest_digest),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}
