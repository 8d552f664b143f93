//! A local tree uploaded into an S3 prefix, verified object by object, for `ingest` (and
//! next `pull`) to an object store.
//!
//! Per file: hash the local file (checked against the source's `MANIFEST.sha256`), upload
//! it (a file that changed meanwhile is refused), read the object back with a GET and
//! compare, then set its retention and read that back. The upload hashes the bytes it
//! sends (the SHA-256, and each part's MD5 as the part goes). A multipart upload whose
//! digest no manifest lists needs it with its first request: a first pass takes the
//! SHA-256 alone (the cheap hash), and the upload then takes only the parts' MD5s, while
//! earlier parts are on the way; the read-back proves the object against that SHA-256
//! (a mismatch where the file changed in between is SOURCE CHANGED). Each byte is so
//! hashed once with each hash on the way up, and once more on the way back.
//! A rerun does not send again an object an earlier run left complete and equal: same
//! size, the server's ETag equal to the one computed from the local bytes (MD5, or the
//! MD5 of the parts' MD5s), the SHA-256 in its metadata; it is read back and compared
//! (unless it already has the asked retention, set only after a read-back matched).
//! The objects there are listed once per run, so a first upload asks nothing per object.
//! The caller writes the tree's `MANIFEST.sha256` last, only when nothing failed.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::{Etag, Prehashed, Retention, S3Store, Storage};
use crate::copy::{Failure, FailureKind};
use crate::error::{Error, IoContext, Result, StorageErrorKind};
use crate::hash::{self, Digest};
use crate::manifest::{check_listed, Manifest, ManifestEntry};
use crate::progress::Progress;
use crate::walk::{self, Filter, Kind, Meta};

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
    /// Size and ETag of each object under the prefix ([`S3Store::etags`]), when the
    /// caller listed them already; `None`: listed here.
    pub present: Option<HashMap<PathBuf, (u64, String)>>,
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
    // What an earlier, stopped run left: one listing, so that a first upload asks nothing
    // of each object.
    let listed;
    let present = match &opts.present {
        Some(present) => present,
        None => {
            listed = store.etags()?;
            &listed
        }
    };

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
                let file = FileToPut {
                    rel: &e.rel,
                    size: e.meta.size,
                    meta: &e.meta,
                    listed: expected.get(e.rel.as_path()).copied(),
                    there: present.get(&e.rel),
                };
                let r = put_file(src, store, &file, opts, progress);
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

/// One file to upload, and what is known of it.
#[derive(Clone, Copy)]
struct FileToPut<'a> {
    rel: &'a Path,
    size: u64,
    /// What the walk saw of it.
    meta: &'a Meta,
    /// Its line in the source's manifest.
    listed: Option<Digest>,
    /// Size and ETag of the object at its key, left by an earlier run.
    there: Option<&'a (u64, String)>,
}

/// One file: hashed, uploaded, read back, protected; or found so by an earlier run.
fn put_file(
    src: &Path,
    store: &S3Store,
    file: &FileToPut<'_>,
    opts: &PutOptions,
    progress: &dyn Progress,
) -> Result<(Digest, bool)> {
    let FileToPut {
        rel, size, listed, ..
    } = *file;
    let path = src.join(rel);
    // With a line in the source manifest, the upload itself checks the bytes against it
    // (before the object is completed), so the file is read once. A file no manifest
    // lists, small enough for one PUT, is read once too: its digest comes from the bytes
    // sent, and a change while it was read from its metadata after. A bigger one is
    // read twice: its SHA-256 first (it goes with the upload's first request), then by
    // the upload, which takes each part's MD5 as it is sent (the server checks it) but
    // not the SHA-256 again: the read-back checks the object against it, and a mismatch
    // is told apart (the file hashed again) as a file changed in between.
    // Either way a file that differs from its line is SOURCE CORRUPT.
    let pre = match resumed(src, store, file, opts)? {
        Resumed::Kept(digest) => {
            progress.add_bytes(size);
            return Ok((digest, true));
        }
        Resumed::Read(pre) => Some(pre),
        Resumed::Absent => None,
    };
    // Sent as hashed by a pass just before, without being hashed again: proven by the
    // read-back alone.
    let mut read_back_checked = false;
    let (mut upload, known) = match (pre, listed) {
        (Some(pre), _) => (store.create_prehashed(rel, pre), true),
        (None, Some(digest)) => (store.create(rel, size, digest)?, true),
        (None, None) => match store.create_unhashed(rel, size) {
            Some(upload) => (upload, false),
            None => {
                read_back_checked = true;
                let digest = digest_of(&path, size)?;
                (store.create_read_back_checked(rel, size, digest), true)
            }
        },
    };
    let opened = File::open(&path).at(&path)?;
    hash::for_each_block(&opened, &path, &mut |block| {
        upload.write(block)?;
        progress.add_bytes(block.len() as u64);
        Ok(())
    })?;
    if !known {
        let after = opened.metadata().at(&path)?;
        if !Meta::from_std(&after).unchanged(file.meta) {
            return Err(Error::SourceChanged { path });
        }
    }
    let written = upload.finish().map_err(|e| match e {
        // The bytes read differ from the digest: read again to tell a file that differs
        // from its manifest line (corrupt) from one that changed while it was read.
        Error::SourceChanged { .. } => match prehash(&path, size, listed) {
            Ok(_) => Error::SourceChanged { path: path.clone() },
            Err(e) => e,
        },
        e => e,
    })?;
    store.verify(&written).map_err(|e| match e {
        // The object is not the bytes hashed before the upload: the file changed in
        // between, or the storage changed them. The object is not listed, so no
        // manifest names it; a rerun sends the file again.
        Error::ReadBackMismatch { .. } if read_back_checked => match digest_of(&path, size) {
            Ok(now) if now == written.digest => e,
            Ok(_) => Error::SourceChanged { path: path.clone() },
            Err(e) => e,
        },
        e => e,
    })?;
    store.commit(&written)?;
    store.protect(&written, opts.retention)?;
    Ok((written.digest, false))
}

/// The SHA-256 of the file at `path`, which must still have `size` bytes. Read through
/// the page cache, where the upload that follows finds the bytes again.
fn digest_of(path: &Path, size: u64) -> Result<Digest> {
    let file = File::open(path).at(path)?;
    let (digest, bytes) = hash::with_buffer(|buf| hash::hash_reader(file, buf)).at(path)?;
    if bytes != size {
        return Err(Error::SourceChanged {
            path: path.to_path_buf(),
        });
    }
    Ok(digest)
}

/// One pass over the file at `path` (`size` bytes, as listed): its SHA-256, checked
/// against its manifest line, and the MD5 of each part its upload sends.
fn prehash(path: &Path, size: u64, listed: Option<Digest>) -> Result<Prehashed> {
    use sha2::Digest as _;
    let mut sha = sha2::Sha256::new();
    let mut etag = Etag::for_size(size);
    let mut bytes = 0u64;
    hash::for_each_block(File::open(path).at(path)?, path, &mut |block| {
        sha.update(block);
        etag.update(block);
        bytes += block.len() as u64;
        Ok(())
    })?;
    let digest = Digest::from_hasher(sha);
    check_listed(path, listed, digest)?;
    if bytes != size {
        return Err(Error::SourceChanged {
            path: path.to_path_buf(),
        });
    }
    Ok(Prehashed::new(digest, bytes, etag))
}

/// What [`resumed`] found of a file's object left by an earlier run.
enum Resumed {
    /// Kept: the file's bytes, verified (and protected); its digest.
    Kept(Digest),
    /// Not kept, the file read meanwhile.
    Read(Prehashed),
    /// None of the file's size.
    Absent,
}

/// The object an earlier run left at `rel` (`there`: its size and ETag in the listing),
/// when it holds this file's bytes: the file is read once, hashing its SHA-256 (checked
/// against its manifest line) and the ETag its upload would get, and the object is kept
/// only when the server's ETag, computed from the bytes it received, equals that one and
/// its metadata holds the SHA-256; client-declared metadata alone is never trusted. It is
/// then read back and compared (unless it already carries the asked retention, set only
/// after a read-back matched) and protected: everything an upload does but the upload.
fn resumed(
    src: &Path,
    store: &S3Store,
    file: &FileToPut<'_>,
    opts: &PutOptions,
) -> Result<Resumed> {
    let FileToPut {
        rel,
        size,
        listed,
        there,
        ..
    } = *file;
    let Some((_, etag)) = there.filter(|(there_size, _)| *there_size == size) else {
        return Ok(Resumed::Absent);
    };
    let pre = prehash(&src.join(rel), size, listed)?;
    if pre.etag() != *etag {
        return Ok(Resumed::Read(pre));
    }
    let Some(written) = store.already_there(rel, size, pre.digest, etag)? else {
        return Ok(Resumed::Read(pre));
    };
    let protected = match opts.retention {
        Some(r) => store.holds_retention(rel, written.version.as_deref(), r)?,
        None => false,
    };
    if !protected {
        store.verify(&written)?;
        store.protect(&written, opts.retention)?;
    }
    Ok(Resumed::Kept(pre.digest))
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
