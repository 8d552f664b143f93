//! Planning a copy: what each source file needs (copied, skipped as verified, repaired),
//! decided from the journal, the destination's metadata and the source manifest; and the
//! dry run's check of the source against its manifest.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{classify, Change, Failure};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::hash::{self, Digest};
use crate::journal::JournalEntry;
use crate::manifest::{check_listed, Manifest};
use crate::storage::Storage;
use crate::walk::{self, Entry, Meta, MANIFEST_NAME};

/// A planned regular-file copy.
pub(super) struct Job {
    pub(super) rel: PathBuf,
    pub(super) meta: Meta,
    pub(super) change: Change,
    pub(super) expected: Option<Digest>,
}

/// The files of `jobs` listed in the source manifest whose content no longer matches it,
/// as the failures the copy would report (read in parallel on the current pool).
pub(super) fn source_check(src: &dyn Storage, jobs: &[Job]) -> Vec<Failure> {
    let mut refused: Vec<Failure> = jobs
        .par_iter()
        .filter_map(|job| {
            let listed = job.expected?;
            let outcome = source_digest(src, &job.rel, &job.meta)
                .and_then(|digest| check_listed(&src.display(&job.rel), Some(listed), digest));
            let error = outcome.err()?;
            Some(Failure {
                path: job.rel.clone(),
                kind: classify(&error),
                error,
            })
        })
        .collect();
    walk::sort_by_bytes(&mut refused, |f| &f.path);
    refused
}

pub(super) enum Plan {
    Skip(Digest, Meta),
    Copy(Change),
}

/// What to do with one source file. `listed` is its digest in the source's manifest: a
/// source rewritten with its size and mtime kept (`cp -p`, `touch -r`) looks unchanged to
/// the journal, but not to a manifest made again since.
pub(super) fn plan_file(
    dest: &Path,
    e: &Entry,
    known: Option<&JournalEntry>,
    listed: Option<Digest>,
    verify: bool,
) -> Plan {
    let dest_path = dest.join(&e.rel);
    let Ok(dm) = std::fs::symlink_metadata(&dest_path) else {
        return Plan::Copy(Change::New);
    };
    let dm = Meta::from_std(&dm);
    let Some(j) = known else {
        return Plan::Copy(Change::Unverified);
    };
    if j.size != e.meta.size
        || j.src_mtime_ns != e.meta.mtime_ns
        || listed.is_some_and(|d| d != j.digest)
    {
        return Plan::Copy(Change::Changed);
    }
    if dm.size != j.size || dm.mtime_ns != j.dest_mtime_ns || dm.ino != j.dest_ino {
        return Plan::Copy(Change::Repair);
    }
    if verify {
        match hash::hash_from_storage(&dest_path) {
            Ok((d, _)) if d == j.digest => {}
            _ => return Plan::Copy(Change::Repair),
        }
    }
    Plan::Skip(j.digest, dm)
}

/// The source's `MANIFEST.sha256`, when it has one; on a storage where the manifest is what
/// makes a tree complete (S3), a tree without one is refused as incomplete.
pub(super) fn read_manifest(src: &dyn Storage) -> Result<Option<Manifest>> {
    let rel = Path::new(MANIFEST_NAME);
    match src.read_small(rel)? {
        Some(bytes) => Manifest::parse(&bytes, &src.display(rel)).map(Some),
        None if src.capabilities().manifest_marks_complete => Err(Error::Incomplete {
            location: src.display(Path::new("")).display().to_string(),
        }),
        None => Ok(None),
    }
}

/// The digest of the source file `rel` (a dry run's check against the manifest).
fn source_digest(src: &dyn Storage, rel: &Path, listed: &Meta) -> Result<Digest> {
    if let Some(root) = src.local_root() {
        return hash::hash_file(&root.join(rel)).map(|(digest, _)| digest);
    }
    let mut hasher = Sha256::new();
    src.read_listed(rel, listed, &mut |block| {
        hasher.update(block);
        Ok(())
    })?;
    Ok(Digest::from_hasher(hasher))
}
