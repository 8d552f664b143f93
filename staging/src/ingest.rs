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
use crate::host::{current_user, hostname};
use crate::lock::lock_or_refuse;
use crate::manifest::{write_verified, Manifest, ManifestEntry};
use crate::progress::Progress;
use crate::record::{json_bytes, DatasetInfo};
use crate::remote::{Location, Remote, RemoteErrorKind, SshOptions, UploadOptions};
use crate::stage::check_name;
use crate::storage::{put_tree, put_verified, PutOptions, S3Options, S3Store, S3Url, Storage};
use crate::walk::{MANIFEST_NAME, STATE_DIR};
use crate::worm::{make_read_only, seal, Protection};

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
    let nas_root = match &settings.nas_root {
        Location::Local(root) => root,
        Location::Remote(spec) => {
            let remote = Remote::connect(spec, &settings.ssh)?;
            return ingest_remote(settings, &remote, progress);
        }
        Location::S3(url) => return ingest_s3(settings, url, progress),
    };
    let final_path = raw_path(nas_root, &settings.project, &settings.dataset);
    let exists = |final_path: &Path| {
        std::fs::symlink_metadata(final_path)
            .is_ok()
            .then(|| Error::DatasetExists {
                path: final_path.to_path_buf(),
            })
    };
    // Before the lock too: who may not write in raw/ still hears that the dataset exists.
    if let Some(e) = exists(&final_path) {
        return Err(e);
    }
    let raw = final_path.parent().expect("raw path has a parent");
    // Held until this ingest is over: another ingest of the same name must not take
    // over (or remove) the folder this one is filling.
    let _lock = (!settings.copy.dry_run)
        .then(|| IngestLock::acquire(raw, &settings.dataset, &final_path))
        .transpose()?;
    if let Some(e) = exists(&final_path) {
        return Err(e);
    }
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
            retention: None,
            snapshot: None,
        });
    }

    let mut info = dataset_info(
        settings,
        &report.manifest,
        report.files_total,
        report.bytes_total,
    );
    let info_path = partial.join("dataset.json");
    let info_digest = write_verified(&info_path, &json_bytes(&info_path, &info)?)?;
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
    // Read-only before it gets its final name, so that no crash can leave a writable
    // dataset there (a rename in the same folder needs no write permission on what it
    // moves); the immutable flag, which forbids the rename, comes after it.
    make_read_only(&partial)?;

    crate::place::rename_noreplace(&partial, &final_path).map_err(|e| {
        // Left where it is: writable again, so that its owner can remove it.
        let _ = crate::worm::make_writable(&partial);
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::DatasetExists {
                path: final_path.clone(),
            }
        } else {
            Error::io(&final_path, e)
        }
    })?;
    let protection = seal(&final_path, settings.immutable);
    let snapshot = crate::zfs::snapshot_and_hold(
        &final_path,
        &format!("{}-{}", settings.project, settings.dataset),
        "ingest",
    );
    info.manifest_digest = Some(report.manifest.digest());
    Ok(IngestOutcome {
        report,
        path: final_path,
        info: Some(info),
        protection: Some(protection),
        retention: None,
        snapshot: Some(snapshot),
    })
}

/// The lock of one dataset name in a raw folder: `raw/.NAME.ingest.lock`, next to the
/// folder being filled (not in it: a new ingest may remove that folder). Held by `flock`
/// while the ingest runs; it holds the owner's pid. The file is removed once the dataset
/// is in place: whoever locks a file removed or about to be finds the dataset there and
/// stops, and a failed ingest keeps it for its rerun.
struct IngestLock {
    path: PathBuf,
    final_path: PathBuf,
    _lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

impl IngestLock {
    fn acquire(raw: &Path, dataset: &str, final_path: &Path) -> Result<Self> {
        std::fs::create_dir_all(raw).at(raw)?;
        let path = raw.join(format!(".{dataset}.ingest.lock"));
        let lock = lock_or_refuse(&path, final_path)?;
        Ok(IngestLock {
            path,
            final_path: final_path.to_path_buf(),
            _lock: lock,
        })
    }
}

impl Drop for IngestLock {
    fn drop(&mut self) {
        if self.final_path.exists() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
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

/// `dataset.json` for the files of `manifest`.
fn dataset_info(
    settings: &IngestSettings,
    manifest: &Manifest,
    files: u64,
    bytes: u64,
) -> DatasetInfo {
    let mut formats = BTreeMap::new();
    for e in &manifest.entries {
        let ext = e
            .path
            .extension()
            .map(|x| x.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        *formats.entry(ext).or_insert(0u64) += 1;
    }
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
        manifest_digest: Some(manifest.digest()),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// Ingest into a NAS reached over SSH: a verified upload into a hidden folder next to
/// `raw/NAME`, `dataset.json` and `MANIFEST.sha256`, one rename into place (never over an
/// existing dataset), then `chmod -R a-w` there. The immutable flag cannot be set over
/// SFTP and is reported as not applied.
fn ingest_remote(
    settings: &IngestSettings,
    remote: &Remote,
    progress: &dyn Progress,
) -> Result<IngestOutcome> {
    let final_path = raw_path(remote.root(), &settings.project, &settings.dataset);
    // Refused at the start (or, if one appeared meanwhile, at the rename into place):
    // raw data is never replaced.
    let shown = remote.display(&final_path);
    let exists = |e: Error| match e {
        Error::Remote {
            kind: RemoteErrorKind::AlreadyExists,
            ref path,
            ..
        } if *path == shown => Error::DatasetExists {
            path: shown.clone(),
        },
        e => e,
    };
    if settings.copy.dry_run {
        return Err(Error::Invalid {
            what: "option",
            value: "--dry-run".to_string(),
            reason: "not available for a remote NAS; list the source with `find` instead"
                .to_string(),
        });
    }
    let upload = remote.begin_upload(&final_path).map_err(exists)?;
    let opts = UploadOptions {
        filter: settings.copy.filter.clone(),
        remote_verify: settings.remote_verify,
        preserve_mtime: true,
        use_source_manifest: settings.copy.use_source_manifest,
    };
    let sent = upload.put_tree(&settings.source, &opts, progress)?;
    let data = upload.manifest();
    let info = dataset_info(settings, &data, sent.files, sent.bytes);
    let json = json_bytes(&remote.display(&upload.tmp().join("dataset.json")), &info)?;
    upload.put_bytes(Path::new("dataset.json"), &json)?;
    let manifest = upload.finish(settings.remote_verify).map_err(exists)?;
    remote.protect(&final_path)?;
    let report = CopyReport {
        files_total: sent.files,
        bytes_total: sent.bytes,
        bytes_to_copy: sent.bytes,
        copied: sent.files - sent.resumed,
        bytes_copied: sent.bytes,
        skipped: sent.resumed,
        symlinks: sent.symlinks,
        dirs: sent.dirs,
        manifest,
        elapsed: sent.elapsed,
        warnings: remote.reconnect_note().into_iter().collect(),
        ..CopyReport::default()
    };
    Ok(IngestOutcome {
        report,
        path: remote.display(&final_path),
        info: Some(info),
        protection: Some(Protection {
            read_only: true,
            immutable: settings
                .immutable
                .then(|| Err("the immutable flag cannot be set over SFTP; ask the NAS administrator (chattr +i)".to_string())),
        }),
        snapshot: None,
        retention: None,
    })
}

/// Ingest into an S3 prefix: every object uploaded, read back and given the Object Lock
/// retention of `[s3]`, then `dataset.json`, then `MANIFEST.sha256` last, which is what
/// makes the prefix a dataset. A bucket without Object Lock is refused before anything is
/// written (ingest write-protects what it places); a rerun of a stopped ingest aborts the
/// multipart uploads it left and skips the objects already verified and protected.
fn ingest_s3(
    settings: &IngestSettings,
    url: &S3Url,
    progress: &dyn Progress,
) -> Result<IngestOutcome> {
    if settings.copy.dry_run {
        return Err(Error::Invalid {
            what: "option",
            value: "--dry-run".to_string(),
            reason: "not available for an S3 NAS; list the source with `find` instead".to_string(),
        });
    }
    let prefix = raw_path(&url.prefix, &settings.project, &settings.dataset);
    let store = S3Store::connect(&url.with_prefix(prefix), &settings.s3)?;
    let shown = store.display(Path::new(""));
    if store.stat(Path::new(MANIFEST_NAME))?.is_some() {
        return Err(Error::DatasetExists { path: shown });
    }
    let retention = settings.s3.retention;
    store.require_object_lock()?;
    store.abort_orphans()?;
    let opts = PutOptions {
        filter: settings.copy.filter.clone(),
        jobs: settings.copy.jobs,
        retention: Some(retention),
        use_source_manifest: settings.copy.use_source_manifest,
    };
    let sent = put_tree(&settings.source, &store, &opts, progress)?;
    let mut report = CopyReport {
        files_total: sent.files,
        bytes_total: sent.bytes,
        bytes_to_copy: sent.bytes,
        copied: sent.manifest.entries.len() as u64 - sent.resumed,
        bytes_copied: sent.bytes,
        skipped: sent.resumed,
        source_manifest_digest: sent.source_manifest_digest,
        elapsed: sent.elapsed,
        warnings: sent.warnings,
        failed: sent.failed,
        ..CopyReport::default()
    };
    if !report.ok() {
        return Ok(IngestOutcome {
            report,
            path: shown,
            info: None,
            protection: None,
            retention: None,
            snapshot: None,
        });
    }
    let mut info = dataset_info(settings, &sent.manifest, sent.files, sent.bytes);
    let info_rel = Path::new("dataset.json");
    let json = json_bytes(&store.display(info_rel), &info)?;
    let info_written = put_verified(&store, info_rel, &json, Some(retention))?;
    let mut entries = sent.manifest.entries.clone();
    entries.push(ManifestEntry {
        path: info_rel.into(),
        digest: info_written.digest,
    });
    let manifest = Manifest::from_entries(entries);
    put_verified(
        &store,
        Path::new(MANIFEST_NAME),
        &manifest.to_bytes(),
        Some(retention),
    )?;
    info.manifest_digest = Some(sent.manifest.digest());
    report.manifest = manifest;
    Ok(IngestOutcome {
        report,
        path: shown,
        info: Some(info),
        protection: None,
        snapshot: None,
        retention: Some(format!(
            "Object Lock {} for {} on every object (read back from the server)",
            retention.mode.as_str(),
            humantime::format_duration(retention.keep)
        )),
    })
}
