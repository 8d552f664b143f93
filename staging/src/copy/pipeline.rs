//! The copy pipeline: copy workers write temporary files, a flusher makes each batch
//! durable with one `syncfs`, verify workers read it back and rename it into place, the
//! three overlapping (docs/ARCHITECTURE.md#the-verified-copy).

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rayon::prelude::*;
use tempfile::TempPath;

use super::finish::finish_file;
use super::plan::Job;
use super::read::{read_local, read_store, FileCopy};
use super::stream::{self, Unit};
use super::{classify, CopyOptions, Failure, FailureKind};
use crate::error::{Error, IoContext};
use crate::hash::Digest;
use crate::interrupt;
use crate::journal::Journal;
use crate::manifest::check_listed;
use crate::progress::Progress;
use crate::storage::Storage;
use crate::walk::{Meta, TMP_PREFIX};

/// A file copied to its temporary name, awaiting read-back.
pub(super) struct Staged {
    pub(super) tmp: TempPath,
    pub(super) digest: Digest,
    pub(super) meta: Meta,
    /// Already on storage (flushed by itself: a big file, or one on a filesystem mounted
    /// inside the destination), so no batch flush is needed.
    pub(super) synced: bool,
    /// Written to storage by itself when it is read back (`finish::write_back`), not by
    /// a batch `syncfs`: a file of a stream, whose flush then waits for its own pages
    /// only, not for whatever else is dirty on the filesystem; the run ends with one
    /// `syncfs` for all of them.
    pub(super) own_flush: bool,
    /// Digest and length read back from storage during the copy, if it was.
    pub(super) readback: Option<(Digest, u64)>,
}

pub(super) struct Ctx<'a> {
    pub(super) src: &'a dyn Storage,
    pub(super) dest: &'a Path,
    /// Opened once before the first write: `syncfs` reports writeback errors that
    /// happened since the handle was opened (Linux 5.8+), so a handle opened per batch
    /// could miss an error of an earlier batch.
    pub(super) dest_handle: &'a File,
    /// Folders of the destination on another filesystem than its own (mounted inside
    /// it), which `syncfs` on `dest_handle` does not flush.
    pub(super) elsewhere: &'a HashSet<PathBuf>,
    pub(super) opts: &'a CopyOptions,
    pub(super) progress: &'a dyn Progress,
    pub(super) abort: &'a AtomicBool,
}

/// A file copied and verified (its digest and its metadata at the destination), or not.
pub(super) type BatchResult = std::result::Result<(Job, Digest, Meta), Failure>;

/// Copies, flushes and verifies with the three steps overlapping: copy workers write
/// temporary files; a flusher gathers them into batches (by bytes, count, or a short
/// pause) and makes each batch durable with one `syncfs`; verify workers read each flushed
/// batch back from storage and rename it into place while the next files are being copied.
/// The jobs are taken from `jobs` (about `planned` of them) as copiers get free, and each
/// outcome goes to `done` (from any thread): nothing here grows with the number of files. Returns the errors of
/// writing the journal.
pub(super) fn run_pipeline(
    ctx: &Ctx<'_>,
    jobs: impl Iterator<Item = Job> + Send,
    planned: u64,
    copy_pool: &rayon::ThreadPool,
    verify_pool: &rayon::ThreadPool,
    journal: &Mutex<Journal>,
    done: &(dyn Fn(BatchResult) + Sync),
) -> Vec<Error> {
    use std::sync::mpsc::{sync_channel, RecvTimeoutError};

    let journal_errors: Mutex<Vec<Error>> = Mutex::new(Vec::new());
    let own_flushed = AtomicBool::new(false);
    let own_flushed = &own_flushed;
    let push = done;
    let batch_bytes = ctx.opts.batch_bytes.max(1);
    let batch_files = ctx.opts.batch_files.max(1);

    std::thread::scope(|scope| {
        let (staged_tx, staged_rx) =
            sync_channel::<std::result::Result<(Job, Staged), Failure>>(1024);
        let (flushed_tx, flushed_rx) = sync_channel::<Vec<(Job, Staged)>>(2);

        // Flusher.
        let push_f = push;
        scope.spawn(move || {
            let mut batch: Vec<(Job, Staged)> = Vec::new();
            let mut bytes = 0u64;
            let flush = |batch: Vec<(Job, Staged)>| {
                if batch.is_empty() {
                    return;
                }
                // Files that flush themselves at their read-back need no syncfs.
                if batch.iter().any(|(_, s)| s.own_flush) {
                    own_flushed.store(true, Ordering::Relaxed);
                }
                if batch.iter().all(|(_, s)| s.own_flush) {
                    let _ = flushed_tx.send(batch);
                    return;
                }
                match nix::unistd::syncfs(ctx.dest_handle.as_raw_fd()).at(ctx.dest) {
                    Ok(()) => {
                        let _ = flushed_tx.send(batch);
                    }
                    Err(e) => {
                        ctx.abort.store(true, Ordering::Relaxed);
                        for (job, _) in batch {
                            push_f(Err(Failure {
                                path: job.rel,
                                kind: classify(&e),
                                error: Error::io(ctx.dest, std::io::Error::other(e.to_string())),
                            }));
                        }
                    }
                }
            };
            loop {
                match staged_rx.recv_timeout(Duration::from_millis(30)) {
                    Ok(Ok((job, s))) if s.synced => {
                        let _ = flushed_tx.send(vec![(job, s)]);
                    }
                    Ok(Ok((job, s))) => {
                        bytes += s.meta.size;
                        batch.push((job, s));
                        if bytes >= batch_bytes || batch.len() >= batch_files {
                            flush(std::mem::take(&mut batch));
                            bytes = 0;
                        }
                    }
                    Ok(Err(f)) => push_f(Err(f)),
                    Err(RecvTimeoutError::Timeout) => {
                        flush(std::mem::take(&mut batch));
                        bytes = 0;
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        flush(std::mem::take(&mut batch));
                        break;
                    }
                }
            }
        });

        // Verifiers.
        let push_v = push;
        let journal_errors = &journal_errors;
        scope.spawn(move || {
            for batch in flushed_rx {
                verify_pool.install(|| {
                    batch.into_par_iter().for_each(|(job, s)| {
                        let result = finish_file(ctx, &job, s, journal);
                        ctx.progress.add_file();
                        push_v(match result {
                            Ok((digest, meta)) => Ok((job, digest, meta)),
                            Err((kind, error)) => {
                                if kind.is_fatal() {
                                    ctx.abort.store(true, Ordering::Relaxed);
                                }
                                Err(Failure {
                                    path: job.rel,
                                    kind,
                                    error,
                                })
                            }
                        })
                    })
                });
                if let Err(e) = journal.lock().expect("journal lock").flush() {
                    ctx.abort.store(true, Ordering::Relaxed);
                    journal_errors.lock().expect("errors lock").push(e);
                }
            }
        });

        // Copiers (this thread waits for them): files one by one, and batches of small
        // files where the source streams many at once.
        let stream = ctx
            .src
            .batch_read()
            .map(|r| (r.max_file_size(), r.streams()));
        let units = stream::units(stream, jobs, planned);
        copy_pool.install(|| {
            units
                .par_bridge()
                .for_each_with(staged_tx, |tx, unit| match unit {
                    Unit::One(job) => {
                        let _ = tx.send(copy_one(ctx, job));
                    }
                    // The stream slot is given back when the batch is done.
                    Unit::Batch(batch, _slot) => stream::copy_batch(ctx, batch, &mut |r| {
                        let _ = tx.send(r);
                    }),
                });
        });
    });
    let mut errors = journal_errors.into_inner().expect("errors lock");
    // Files that flushed themselves were read back from storage, but their metadata
    // and the device's cache are made durable here, once, before the run counts them.
    if own_flushed.load(Ordering::Relaxed) {
        if let Err(e) = nix::unistd::syncfs(ctx.dest_handle.as_raw_fd()).at(ctx.dest) {
            ctx.abort.store(true, Ordering::Relaxed);
            errors.push(e);
        }
    }
    errors
}

/// One file read by itself, unless the run is stopping: its temporary, or why not.
pub(super) fn copy_one(ctx: &Ctx<'_>, job: Job) -> std::result::Result<(Job, Staged), Failure> {
    let fail = |job: Job, kind, error| Failure {
        path: job.rel,
        kind,
        error,
    };
    if ctx.abort.load(Ordering::Relaxed) {
        let error = Error::io(
            ctx.src.display(&job.rel),
            std::io::Error::other(
                "not attempted: the run stopped after a fatal error (disk full, or the NAS host gone)",
            ),
        );
        return Err(fail(job, FailureKind::NotAttempted, error));
    }
    if interrupt::received().is_some() {
        let error = Error::io(ctx.src.display(&job.rel), interrupt::stopped());
        return Err(fail(job, FailureKind::NotAttempted, error));
    }
    match copy_to_temporary(ctx, &job) {
        Ok(staged) => Ok((job, staged)),
        Err((kind, e)) => {
            if kind.is_fatal() {
                ctx.abort.store(true, Ordering::Relaxed);
            }
            Err(fail(job, kind, e))
        }
    }
}

/// A private temporary file in the folder `rel` goes to, and its path.
pub(super) fn temporary(
    ctx: &Ctx<'_>,
    rel: &Path,
) -> std::result::Result<(File, TempPath), (FailureKind, Error)> {
    let dest_path = ctx.dest.join(rel);
    let parent = dest_path.parent().unwrap_or(ctx.dest);
    let tmp = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(parent)
        .at(parent)
        .map_err(|e| (classify(&e), e))?;
    Ok(tmp.into_parts())
}

/// Whether `rel` goes to a folder that is another filesystem (something mounted inside
/// the destination): the batch's syncfs of the destination's own does not flush it, so
/// its files are flushed one by one, or their read-back could be answered by dirty
/// cached pages.
pub(super) fn elsewhere(ctx: &Ctx<'_>, rel: &Path) -> bool {
    rel.parent().is_some_and(|p| ctx.elsewhere.contains(p))
}

/// A copied file's checks before it waits for its read-back: the source did not change
/// while it was read (`before` and `after`, and the bytes read), and its digest is the
/// one the source manifest lists.
pub(super) fn checked(
    ctx: &Ctx<'_>,
    job: &Job,
    tmp: TempPath,
    copy: FileCopy,
    (before, after): (Meta, Meta),
    synced: bool,
) -> std::result::Result<Staged, (FailureKind, Error)> {
    let src_path = ctx.src.display(&job.rel);
    if !before.unchanged(&after) || copy.bytes != before.size {
        return Err((
            FailureKind::SourceChanged,
            Error::SourceChanged { path: src_path },
        ));
    }
    check_listed(&src_path, job.expected, copy.digest)
        .map_err(|e| (FailureKind::SourceCorrupt, e))?;
    Ok(Staged {
        tmp,
        digest: copy.digest,
        meta: before,
        synced,
        own_flush: false,
        readback: copy.readback,
    })
}

/// Reads the source once (hashing), writes a temporary file next to the destination.
fn copy_to_temporary(
    ctx: &Ctx<'_>,
    job: &Job,
) -> std::result::Result<Staged, (FailureKind, Error)> {
    let io = |e: Error| (classify(&e), e);
    let (mut out, tmp) = temporary(ctx, &job.rel)?;
    let tmp_path = tmp.to_path_buf();
    let big = job.meta.size >= ctx.opts.batch_bytes;
    // A local folder is read on the engine's fast path (its backend says where it is);
    // any other storage streams its files through the trait.
    let (copy, before, after) = match ctx.src.local_root() {
        Some(root) => read_local(ctx, &root.join(&job.rel), &mut out, &tmp_path, big)?,
        None => read_store(ctx, job, &mut out, &tmp_path, big).map_err(io)?,
    };
    let synced = big || elsewhere(ctx, &job.rel);
    if synced {
        // For a big file: most of it is on its way to storage already (see
        // copy_streamed); one fdatasync per file this big costs little and lets its
        // read-back start at once, instead of waiting for a batch flush of the whole
        // filesystem.
        out.sync_data().at(&tmp_path).map_err(io)?;
    }
    drop(out);
    checked(ctx, job, tmp, copy, (before, after), synced)
}
