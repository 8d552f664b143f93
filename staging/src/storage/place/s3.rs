//! Placing a tree into an S3 prefix: every object uploaded, read back and (when protected)
//! given the Object Lock retention, then `dataset.json` (`run.json`, `README.md`), then
//! `MANIFEST.sha256` last, which is what makes the prefix a tree. A bucket without Object
//! Lock is refused before anything is written when the tree is to be protected; a rerun
//! of a stopped placement aborts the multipart uploads it left and skips the objects
//! already verified (and protected).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{Listed, PlaceOptions, Placed, Placement};
use crate::copy::CopyReport;
use crate::error::{Error, Result};
use crate::hash::Digest;
use crate::manifest::{Manifest, ManifestEntry};
use crate::progress::Progress;
use crate::sorted::InOrder;
use crate::storage::{put_tree, put_verified, PutOptions, S3Store, Storage};
use crate::walk::MANIFEST_NAME;

struct S3Placement {
    store: S3Store,
    opts: PlaceOptions,
    /// What `put_tree` uploaded and verified (the bucket's listing is held anyway).
    sent: Manifest,
    /// The lock object `.NAME.ingest.lock` next to the prefix, and where it is; removed
    /// when the placement ends, finished or not.
    lock: Option<(S3Store, PathBuf, Option<String>)>,
    /// Size and ETag of each object already under the prefix, listed while the
    /// multipart uploads left there were looked for; taken by `put_tree`.
    present: Option<HashMap<PathBuf, (u64, String)>>,
    /// Files given by [`Placement::put_bytes`] being written and read back, each on a
    /// thread of its own: all must have ended, verified, before the manifest is written.
    described: Vec<std::thread::JoinHandle<Result<()>>>,
}

impl Drop for S3Placement {
    fn drop(&mut self) {
        for writing in self.described.drain(..) {
            let _ = writing.join();
        }
        if let Some((parent, rel, version)) = self.lock.take() {
            let _ = parent.unlock(&rel, version.as_deref());
        }
    }
}

/// Starts placing a tree at the prefix `store` is rooted at.
pub(crate) fn place_s3(store: S3Store, opts: &PlaceOptions) -> Result<Box<dyn Placement>> {
    if opts.copy.dry_run {
        return Err(Error::Invalid {
            what: "option",
            value: "--dry-run".to_string(),
            reason: "not available for an S3 NAS; list the source with `find` instead".to_string(),
        });
    }
    let exists = |store: &S3Store| -> Result<()> {
        match store.stat(Path::new(MANIFEST_NAME))? {
            Some(_) => Err(Error::DatasetExists {
                path: store.display(Path::new("")),
            }),
            None => Ok(()),
        }
    };
    exists(&store)?;
    if opts.protect {
        store.require_object_lock()?;
    }
    // One ingest of a name at a time, as the lock file next to a local dataset does: a
    // lock object next to the prefix, taken only where none is.
    let prefix = store.url().prefix.clone();
    let parent = store.at(prefix.parent().unwrap_or(Path::new("")));
    let name = prefix.file_name().unwrap_or_default().to_string_lossy();
    let lock_rel = PathBuf::from(format!(".{name}.{}.lock", opts.hidden));
    let lock = if opts.exclusive {
        let version = parent.lock(&lock_rel, &store.display(Path::new("")))?;
        Some((parent, lock_rel, version))
    } else {
        None
    };
    let mut placement = S3Placement {
        store,
        opts: opts.clone(),
        sent: Manifest::default(),
        lock,
        present: None,
        described: Vec::new(),
    };
    if opts.exclusive {
        // Checked again under the lock: a dataset finished meanwhile is not written to.
        exists(&placement.store)?;
    }
    // The multipart uploads a stopped run left are aborted before anything is sent (a
    // listing of them after our first upload started would take it for one of theirs);
    // the objects there are listed meanwhile, for `put_tree`.
    let store = &placement.store;
    let (aborted, present) = std::thread::scope(|s| {
        let listing = s.spawn(|| store.etags());
        let aborted = store.abort_orphans();
        let present = listing
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (aborted, present)
    });
    aborted?;
    placement.present = Some(present?);
    Ok(Box::new(placement))
}

impl S3Placement {
    /// The retention of every object: only for a protected tree.
    fn retention(&self) -> Option<crate::storage::Retention> {
        self.opts.protect.then_some(self.opts.retention)
    }
}

impl Placement for S3Placement {
    fn path(&self) -> PathBuf {
        self.store.display(Path::new(""))
    }

    fn display(&self, rel: &Path) -> PathBuf {
        self.store.display(rel)
    }

    fn put_tree(&mut self, src: &Path, progress: &dyn Progress) -> Result<CopyReport> {
        let opts = PutOptions {
            filter: self.opts.copy.filter.clone(),
            jobs: self.opts.copy.jobs,
            retention: self.retention(),
            use_source_manifest: self.opts.copy.use_source_manifest,
            present: self.present.take(),
        };
        let mut sent = put_tree(src, &self.store, &opts, progress)?;
        let listed = std::mem::take(&mut sent.manifest);
        let digest = listed.digest();
        let count = listed.len() as u64;
        self.sent = listed;
        Ok(CopyReport {
            files_total: sent.files,
            bytes_total: sent.bytes,
            bytes_to_copy: sent.bytes,
            copied: count - sent.resumed,
            bytes_copied: sent.bytes,
            skipped: sent.resumed,
            source_manifest_digest: sent.source_manifest_digest,
            elapsed: sent.elapsed,
            warnings: sent.warnings,
            failed: sent.failed,
            manifest_digest: Some(digest),
            ..CopyReport::default()
        })
    }

    fn listed(&self) -> Result<InOrder> {
        Ok(InOrder::from_manifest(self.sent.clone()))
    }

    /// Written (and read back, and protected) while the next one is, or while the
    /// caller goes on: [`Placement::finish`] waits for them all before the manifest.
    fn put_bytes(&mut self, rel: &Path, bytes: &[u8]) -> Result<Digest> {
        let store = self.store.at(self.store.url().prefix.clone());
        let (rel, owned, retention) = (rel.to_path_buf(), bytes.to_vec(), self.retention());
        self.described.push(std::thread::spawn(move || {
            put_verified(&store, &rel, &owned, retention).map(|_| ())
        }));
        Ok(Digest::of(bytes))
    }

    fn finish(mut self: Box<Self>, described: &[ManifestEntry]) -> Result<Placed> {
        for writing in std::mem::take(&mut self.described) {
            writing
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        }
        let manifest = super::manifest_with(
            InOrder::from_manifest(std::mem::take(&mut self.sent)),
            described,
        )?;
        let listed = Listed {
            files: manifest.len() as u64,
            digest: manifest.digest(),
        };
        put_verified(
            &self.store,
            Path::new(MANIFEST_NAME),
            &manifest.to_bytes(),
            self.retention(),
        )?;
        let Some(retention) = self.retention() else {
            return Ok(Placed::unprotected(listed));
        };
        Ok(Placed {
            listed,
            protection: None,
            snapshot: None,
            retention: Some(format!(
                "Object Lock {} for {} on every object (read back from the server)",
                retention.mode.as_str(),
                humantime::format_duration(retention.keep)
            )),
        })
    }
}
