//! Where a run's results go, and how they get there: the NAS location of `results_dir` (a
//! folder, `host:/path` or `s3://bucket/prefix`) opened once as a storage
//! (docs/ARCHITECTURE.md#storage), and every tree pull writes (the results, a failed
//! run's `_failed/<run>` logs) placed through `Storage::place`, the path `ingest` takes:
//! files verified one by one in a place that is not final (a hidden folder next to it;
//! on S3, objects that count only once the manifest is there), then `run.json` and
//! `README.md`, then `MANIFEST.sha256` last, then the final name. What differs between a
//! folder, an SSH host and an S3 prefix is the backend's, not this file's.

use std::path::{Path, PathBuf};

use hpcstage_staging::copy::{CopyOptions, Failure};
use hpcstage_staging::error::StorageErrorKind;
use hpcstage_staging::manifest::ManifestEntry;
use hpcstage_staging::progress::Progress;
use hpcstage_staging::remote::Location;
use hpcstage_staging::storage::{open, Listed, PlaceOptions, Storage};
use hpcstage_staging::walk::Filter;

use super::PullOptions;
use crate::error::{Error, Result};

/// A run's results location.
#[derive(Debug)]
pub(super) struct Target {
    /// The results folder: is it there, its manifest, its files, its protection.
    pub(super) store: Box<dyn Storage>,
    /// The folder that holds it (and `_failed/`), where new trees are placed.
    parent: Box<dyn Storage>,
    /// Where `parent` is rooted (a folder, a path on the host, a key prefix).
    parent_path: PathBuf,
    /// The results folder's name in `parent`.
    name: PathBuf,
}

/// What a placement wrote: what its manifest lists and the bytes of the files copied from
/// scratch.
pub(super) type Written = (Listed, u64);

impl Target {
    /// Opens `results_dir`; a remote one is connected to at once, so bad credentials or an
    /// unknown host key are the first thing reported.
    pub(super) fn open(results_dir: &Path, opts: &PullOptions) -> Result<Target> {
        let location = Location::parse(results_dir.as_os_str())?;
        let path = location.path();
        let parent_path = path.parent().unwrap_or(Path::new(""));
        let name = PathBuf::from(path.file_name().unwrap_or_default());
        let parent = open(&location.with_path(parent_path), &opts.ssh, &opts.s3)?;
        let store = parent.rooted_at(path);
        Ok(Target {
            store,
            parent,
            parent_path: parent_path.to_path_buf(),
            name,
        })
    }

    /// `--worm` on results in place: every file made read-only, or every object given
    /// the Object Lock retention of `[s3]` (read back from the server) where it lacks it.
    pub(super) fn protect(&self, opts: &PullOptions) -> Result<()> {
        Ok(self.store.protect_tree(opts.s3.retention)?)
    }

    /// `rel` of the results' parent as the user reads it.
    pub(super) fn sibling(&self, rel: &Path) -> PathBuf {
        self.parent.display(rel)
    }

    /// True when the FAILED README of the logs at `rel` (see `failed.rs`) is about compute
    /// job `job_id`.
    pub(super) fn failed_names_job(&self, rel: &Path, job_id: &str) -> Result<bool> {
        let readme = self
            .parent
            .rooted_at(&self.parent_path.join(rel))
            .read_small(Path::new("README.md"))?;
        Ok(readme.is_some_and(|text| {
            String::from_utf8_lossy(&text).contains(&format!("- compute job: {job_id},"))
        }))
    }

    /// `_failed/<id>` next to the results folder, as placed by [`Target::place`].
    pub(super) fn failed_rel(id: &str) -> PathBuf {
        Path::new("_failed").join(id)
    }

    /// Places the files of run `id`'s `run_dir` that `filter` takes, then `described`
    /// (name and bytes), at `rel` of the results' parent (the results folder itself when `None`),
    /// listed in a `MANIFEST.sha256` written last; write-protected when `protect`.
    /// `Ok(None)`: a tree is there already (placed by an earlier pull, or meanwhile).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn place(
        &self,
        id: &str,
        rel: Option<&Path>,
        run_dir: &Path,
        filter: Filter,
        described: &[(&str, Vec<u8>)],
        protect: bool,
        opts: &PullOptions,
        progress: &dyn Progress,
    ) -> Result<Option<Written>> {
        let rel = rel.unwrap_or(&self.name);
        let shown = self.parent.display(rel);
        let nas = |e: hpcstage_staging::Error| nas_failure(&shown, e);
        let place_opts = PlaceOptions {
            copy: copy_options(opts, filter),
            origin: run_dir.display().to_string(),
            protect,
            hidden: "partial",
            // The run's lock keeps pulls of one run apart.
            exclusive: false,
            immutable: false,
            retention: opts.s3.retention,
            remote_verify: opts.remote_verify,
            label: String::new(),
        };
        let mut placing = match self.parent.place(rel, &place_opts) {
            Err(hpcstage_staging::Error::DatasetExists { .. }) => return Ok(None),
            // Another process fills the same hidden folder (a pull that holds no run
            // lock, on a filesystem without `flock`).
            Err(hpcstage_staging::Error::Locked { holder, .. }) => {
                return Err(Error::PullBusy {
                    id: id.to_string(),
                    holder,
                })
            }
            other => other.map_err(nas)?,
        };
        progress.phase("writing to the NAS");
        let report = placing.put_tree(run_dir, progress).map_err(nas)?;
        if let Some(first) = report.failed.first() {
            return Err(not_copied(
                &shown,
                first,
                report.failed_total(),
                report.files_total,
            ));
        }
        let mut entries = Vec::with_capacity(described.len());
        for (name, bytes) in described {
            entries.push(ManifestEntry {
                path: name.into(),
                digest: placing.put_bytes(Path::new(name), bytes).map_err(nas)?,
            });
        }
        match placing.finish(&entries) {
            // The bytes of every file the manifest lists: the copied ones and those
            // written beside them (`run.json`, `README.md`), as an adopting pull counts.
            Ok(placed) => Ok(Some((
                placed.listed,
                report.bytes_total + described.iter().map(|(_, b)| b.len() as u64).sum::<u64>(),
            ))),
            // A tree appeared under the final name meanwhile: ours stays hidden.
            Err(hpcstage_staging::Error::DatasetExists { .. }) => Ok(None),
            Err(e) => Err(nas(e)),
        }
    }
}

/// How pull copies files of the run folder to the NAS: verified, mtimes kept; no source
/// manifest (the run folder has none).
fn copy_options(opts: &PullOptions, filter: Filter) -> CopyOptions {
    CopyOptions {
        jobs: opts.jobs,
        preserve_mtime: true,
        use_source_manifest: false,
        filter,
        ..CopyOptions::default()
    }
}

/// Files that could not be written to the NAS, the first named; nothing was placed, so
/// scratch is as it was and the run can be pulled again.
fn not_copied(to: &Path, first: &Failure, failed: u64, total: u64) -> Error {
    Error::Staging(hpcstage_staging::Error::Storage {
        location: to.display().to_string(),
        kind: StorageErrorKind::Other,
        reason: format!(
            "{failed} of {total} files could not be copied to the NAS (first: {}: {}), so no MANIFEST.sha256 was written",
            first.path.display(),
            first.error
        ),
        hint: "scratch is untouched; pull the run again (it resumes)".to_string(),
    })
}

/// An I/O failure while writing to the NAS, saying what it means for the run. Other
/// errors (no space, a lock, a refused bucket) already say what to do and pass through.
pub(super) fn nas_failure(to: &Path, e: hpcstage_staging::Error) -> Error {
    match e {
        hpcstage_staging::Error::Io { .. } => Error::Staging(hpcstage_staging::Error::io(
            to,
            std::io::Error::other(format!(
                "cannot write the results to the NAS ({e}); scratch is untouched and the run can be pulled again"
            )),
        )),
        other => Error::Staging(other),
    }
}
