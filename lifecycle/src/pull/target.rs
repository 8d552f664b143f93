//! Where a run's results go: a NAS folder (local, or on an SSH host) or an S3 prefix.
//!
//! An S3 prefix is written through the storage layer (docs/ARCHITECTURE.md#storage):
//! every file hashed on scratch, uploaded with its bytes hashed again as they are sent,
//! read back with a GET and compared, then `run.json` and `README.md`, then
//! `MANIFEST.sha256` last, which is what makes the prefix a results folder. S3 has no
//! rename, so the manifest plays the part the final rename plays on a folder. A rerun of
//! a stopped pull aborts the multipart uploads it left and writes the results again.

use std::path::Path;
use std::sync::Arc;

use hpcstage_staging::copy::Failure;
use hpcstage_staging::error::StorageErrorKind;
use hpcstage_staging::manifest::{Manifest, ManifestEntry};
use hpcstage_staging::progress::Progress;
use hpcstage_staging::remote::{Location, NasAccess, NasFolder};
use hpcstage_staging::storage::{
    protect_listed, put_tree, put_verified, PutOptions, Retention, S3Store, Storage,
};
use hpcstage_staging::walk::{Filter, MANIFEST_NAME};

use super::PullOptions;
use crate::error::{Error, Result};

/// A run's results location.
#[derive(Debug)]
pub(super) struct Target {
    /// The whole-folder questions: is it there, its manifest, its files.
    pub(super) folder: NasFolder,
    /// The writer of an S3 prefix; `None` for a folder, written by the copy engine.
    pub(super) store: Option<Arc<S3Store>>,
}

impl Target {
    /// Opens `results_dir` (a folder, `host:/path` or `s3://bucket/prefix`); a remote one
    /// is connected to at once, so bad credentials are the first thing reported.
    pub(super) fn open(results_dir: &Path, opts: &PullOptions) -> Result<Target> {
        if let Location::S3(url) = Location::parse(results_dir.as_os_str())? {
            let store = Arc::new(S3Store::connect(&url, &opts.s3)?);
            return Ok(Target {
                folder: NasFolder::Store(store.clone()),
                store: Some(store),
            });
        }
        Ok(Target {
            folder: NasAccess::new(opts.ssh.clone()).folder(results_dir)?,
            store: None,
        })
    }

    /// Refuses, before anything is written, results that `--worm` could not protect: an
    /// S3 bucket without Object Lock. (A folder is made read-only once in place.)
    pub(super) fn check_protectable(&self) -> Result<()> {
        if let Some(store) = &self.store {
            store.require_object_lock()?;
        }
        Ok(())
    }

    /// `--worm`: the folder made read-only, or every object of the prefix given the
    /// Object Lock retention of `[s3]` (read back from the server) where it lacks it.
    pub(super) fn protect(&self, opts: &PullOptions) -> Result<()> {
        let Some(store) = &self.store else {
            return Ok(self.folder.protect()?);
        };
        store.require_object_lock()?;
        let manifest = self.folder.manifest()?.ok_or_else(|| Error::Record {
            path: store.display(Path::new(MANIFEST_NAME)),
            reason: "the results have no manifest, so they cannot be protected; pull again"
                .to_string(),
        })?;
        protect_listed(store, &manifest, opts.s3.retention)?;
        Ok(())
    }
}

/// Uploads the files of `run_dir` that `filter` takes into `store`, then `described`
/// (name and bytes), then `MANIFEST.sha256` listing them all, last; every object read back
/// and compared, and given `retention` when asked. Returns the manifest and the bytes of
/// the uploaded files.
pub(super) fn upload_to_store(
    store: &S3Store,
    run_dir: &Path,
    filter: Filter,
    described: &[(&str, Vec<u8>)],
    retention: Option<Retention>,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> hpcstage_staging::Result<(Manifest, u64)> {
    // Multipart uploads a killed pull left under this prefix (pulls of one run take
    // turns under the run lock, so none of them is in flight).
    store.abort_orphans()?;
    let put = PutOptions {
        filter,
        jobs: opts.jobs,
        retention,
        use_source_manifest: false,
    };
    progress.phase("uploading");
    let sent = put_tree(run_dir, store, &put, progress)?;
    if let Some(first) = sent.failed.first() {
        return Err(not_uploaded(store, first, sent.failed.len(), sent.files));
    }
    let mut entries = sent.manifest.entries;
    entries.retain(|e| described.iter().all(|(name, _)| e.path != Path::new(name)));
    for (name, bytes) in described {
        let written = put_verified(store, Path::new(name), bytes, retention)?;
        entries.push(ManifestEntry {
            path: name.into(),
            digest: written.digest,
        });
    }
    let manifest = Manifest::from_entries(entries);
    put_verified(
        store,
        Path::new(MANIFEST_NAME),
        &manifest.to_bytes(),
        retention,
    )?;
    Ok((manifest, sent.bytes))
}

/// Files that could not be uploaded, the first named; no manifest was written, so the
/// prefix is not a results folder, and the run can be pulled again.
fn not_uploaded(
    store: &S3Store,
    first: &Failure,
    failed: usize,
    total: u64,
) -> hpcstage_staging::Error {
    hpcstage_staging::Error::Storage {
        location: store.display(Path::new("")).display().to_string(),
        kind: StorageErrorKind::Other,
        reason: format!(
            "{failed} of {total} files could not be uploaded (first: {}), so no MANIFEST.sha256 was written",
            first.error
        ),
        hint: "scratch is untouched; pull the run again (it resumes)".to_string(),
    }
}
