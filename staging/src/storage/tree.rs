//! A local tree uploaded into an S3 prefix, verified object by object, for `ingest` (and
//! next `pull`) to an object store.
//!
//! Per file: hash the local file (checked against the source's `MANIFEST.sha256`), upload
//! it hashing the bytes again as they are sent (a file that changed meanwhile is refused),
//! read the object back with a GET and compare, then set its retention and read that back.
//! A rerun skips objects that already hold the same SHA-256 and the asked retention (the
//! retention is set only after the read-back matched, so it marks a verified object).
//! The caller writes the tree's `MANIFEST.sha256` last, only when nothing failed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::{Retention, S3Store, Storage};
use crate::copy::{Failure, FailureKind};
use crate::error::{Error, IoContext, Result, StorageErrorKind};
use crate::hash::{self, Digest};
use crate::manifest::{check_listed, Manifest, ManifestEntry};
use crate::progress::Progress;
use crate::walk::{self, Filter, Kind};

/// How to upload a tree.
#[derive(Debug, Clone)]
pub struct PutOptions {
    pub filter: Filter,
    /// Files in flight (at least 1).
    pub jobs: usize,
    /// Object Lock retention for every object; `None` for none.
    pub retention: Option<Retention>,
    /// Check local files against the source's own `MANIFEST.sha256`.
    pub use_source_manifest: bool,
}

/// What an upload did.
#[derive(Debug, Default)]
pub struct PutReport {
    pub files: u64,
    pub bytes: u64,
    /// Already there, verified and protected by an earlier run.
    pub resumed: u64,
    pub bytes_sent: u64,
    pub failed: Vec<Failure>,
    pub warnings: Vec<String>,
    /// The uploaded files (those verified).
    pub manifest: Manifest,
    pub source_manifest_digest: Option<Digest>,
    pub elapsed: Duration,
}

/// Uploads the files of `src` into `store`.
pub fn put_tree(
    src: &Path,
    store: &S3Store,
    opts: &PutOptions,
    progress: &dyn Progress,
) -> Result<PutReport> {
    let started = Instant::now();
    let tree = walk::walk(src, &opts.filter)?;
    let mut report = PutReport::default();
    let fail = |path: PathBuf, error: Error| Failure {
        kind: failure_kind(&error),
        path,
        error,
    };
    report
        .failed
        .extend(tree.errors.into_iter().map(|e| fail(src.to_path_buf(), e)));
    let source_manifest = if opts.use_source_manifest {
        Manifest::read_if_present(src)?
    } else {
        None
    };
    report.source_manifest_digest = source_manifest.as_ref().map(Manifest::digest);
    let expected = source_manifest
        .as_ref()
        .map(Manifest::to_map)
        .unwrap_or_default();
    let mut files: Vec<_> = tree
        .entries
        .iter()
        .filter(|e| e.kind == Kind::File)
        .collect();
    walk::sort_by_bytes(&mut files, |e| &e.rel);
    let links: Vec<_> = tree
        .entries
        .iter()
        .filter(|e| matches!(e.kind, Kind::Symlink | Kind::Other))
        .map(|e| e.rel.display().to_string())
        .collect();
    if !links.is_empty() {
        report.warnings.push(format!(
            "{}: {} not uploaded, S3 holds no links or special files ({})",
            store.display(Path::new("")).display(),
            crate::human::count(links.len() as u64, "symbolic link or special file"),
            links.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    report.files = files.len() as u64;
    report.bytes = files.iter().map(|e| e.meta.size).sum();
    progress.start(report.files, report.bytes);

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.jobs.clamp(1, 16))
        .build()
        .map_err(|e| Error::io(src, std::io::Error::other(e.to_string())))?;
    let abort = std::sync::atomic::AtomicBool::new(false);
    let results: Vec<(PathBuf, Result<(Digest, bool)>)> = pool.install(|| {
        files
            .par_iter()
            .map(|e| {
                if abort.load(std::sync::atomic::Ordering::Relaxed) {
                    return (
                        e.rel.clone(),
                        Err(Error::io(
                            src.join(&e.rel),
                            std::io::Error::other(
                                "not attempted: the upload stopped after a fatal error",
                            ),
                        )),
                    );
                }
                let listed = expected.get(e.rel.as_path()).copied();
                let r = put_file(src, store, &e.rel, e.meta.size, listed, opts, progress);
                if r.as_ref().is_err_and(|e| failure_kind(e).is_fatal()) {
                    abort.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                progress.add_file();
                (e.rel.clone(), r)
            })
            .collect()
    });
    let mut entries = Vec::new();
    for (rel, r) in results {
        match r {
            Ok((digest, resumed)) => {
                if resumed {
                    report.resumed += 1;
                }
                entries.push(ManifestEntry { path: rel, digest });
            }
            Err(e) => report.failed.push(fail(rel, e)),
        }
    }
    walk::sort_by_bytes(&mut report.failed, |f| &f.path);
    // A refused credential, a full quota or a gone endpoint is the run's outcome, not one
    // file's: said once, as an error.
    if let Some(i) = report.failed.iter().position(|f| {
        matches!(
            f.error,
            Error::Storage {
                kind: StorageErrorKind::Quota
                    | StorageErrorKind::Auth
                    | StorageErrorKind::Unreachable,
                ..
            }
        )
    }) {
        return Err(report.failed.swap_remove(i).error);
    }
    report.manifest = Manifest::from_entries(entries);
    report.elapsed = started.elapsed();
    Ok(report)
}

/// One file: hashed, uploaded, read back, protected; or found so by an earlier run.
fn put_file(
    src: &Path,
    store: &S3Store,
    rel: &Path,
    size: u64,
    listed: Option<Digest>,
    opts: &PutOptions,
    progress: &dyn Progress,
) -> Result<(Digest, bool)> {
    let path = src.join(rel);
    // With a line in the source manifest, the upload itself checks the bytes against it
    // (before the object is completed), so the file is read once; without one, it is
    // hashed first. Either way a file that differs from its line is SOURCE CORRUPT.
    let hashed_against_listing = || -> Result<Digest> {
        let (digest, _) = hash::hash_file(&path)?;
        check_listed(&path, listed, digest)?;
        Ok(digest)
    };
    let digest = match listed {
        Some(digest) => digest,
        None => hashed_against_listing()?,
    };
    if let Some(retention) = opts.retention {
        if store.holds_protected(rel, size, digest, retention)? {
            if listed.is_some() {
                hashed_against_listing()?;
            }
            progress.add_bytes(size);
            return Ok((digest, true));
        }
    }
    let mut upload = store.create(rel, size, digest)?;
    let file = File::open(&path).at(&path)?;
    hash::for_each_block(file, &path, &mut |block| {
        upload.write(block)?;
        progress.add_bytes(block.len() as u64);
        Ok(())
    })?;
    let written = upload.finish().map_err(|e| match e {
        // The bytes read differ from the digest: read again to tell a file that differs
        // from its manifest line (corrupt) from one that changed while it was read.
        Error::SourceChanged { .. } => match hashed_against_listing() {
            Ok(_) => Error::SourceChanged { path: path.clone() },
            Err(e) => e,
        },
        e => e,
    })?;
    store.verify(&written)?;
    store.commit(&written)?;
    store.protect(&written, opts.retention)?;
    Ok((digest, false))
}

/// The failure kind of an upload error (a full quota or a gone endpoint stops the run).
pub(crate) fn failure_kind(e: &Error) -> FailureKind {
    match e {
        Error::SourceCorrupt { .. } => FailureKind::SourceCorrupt,
        Error::SourceChanged { .. } => FailureKind::SourceChanged,
        Error::ReadBackMismatch { .. } => FailureKind::VerifyFailed,
        Error::Storage {
            kind: StorageErrorKind::Quota,
            ..
        } => FailureKind::DiskFull,
        Error::Storage {
            kind: StorageErrorKind::Unreachable | StorageErrorKind::Auth,
            ..
        } => FailureKind::Unreachable,
        _ => FailureKind::Io,
    }
}

/// Gives every object `manifest` lists, and the manifest itself, the `retention` where it
/// lacks it (results written without `--worm`, protected by a later `pull --worm`); each
/// object must still hold the SHA-256 the manifest lists. Returns how many were set now.
pub fn protect_listed(store: &S3Store, manifest: &Manifest, retention: Retention) -> Result<u64> {
    let bytes = store
        .read_small(Path::new(crate::walk::MANIFEST_NAME))?
        .unwrap_or_else(|| manifest.to_bytes());
    let listed = manifest
        .entries
        .iter()
        .map(|e| (e.path.clone(), e.digest))
        .chain([(
            PathBuf::from(crate::walk::MANIFEST_NAME),
            Digest::of(&bytes),
        )]);
    let mut set = 0;
    for (rel, digest) in listed {
        let size = store.stat(&rel)?.map_or(0, |m| m.size);
        if store.holds_protected(&rel, size, digest, retention)? {
            continue;
        }
        // `holds_protected` is false too for an object whose bytes are not the listed
        // ones: those are refused (read back and compared), never protected as results.
        let written = super::Written {
            rel,
            digest,
            bytes: size,
            version: None,
            pending: None,
        };
        store.verify(&written)?;
        store.protect(&written, Some(retention))?;
        set += 1;
    }
    Ok(set)
}
