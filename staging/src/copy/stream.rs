//! Small files from a source that streams many at once ([`crate::storage::BatchRead`]: an
//! SSH host running tar, issue 18): grouped into batches, one stream each, every file
//! written to its temporary and checked as a file read alone is (hashed as received,
//! against the source manifest) before it joins the pipeline for its read-back. A file the stream does not
//! deliver, and every file of a batch whose stream cannot be trusted, is read one by one
//! (`copy_one`); bigger files never enter a batch. This module never decides by the
//! source's kind: it asks the source for the capability.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::Ordering;

use sha2::{Digest as _, Sha256};

use super::pipeline::{checked, copy_one, elsewhere, temporary, Ctx, Staged};
use super::plan::Job;
use super::read::FileCopy;
use super::{classify, Failure, FailureKind};
use crate::error::{Error, IoContext};
use crate::hash;
use crate::interrupt;
use crate::storage::Storage;
use crate::walk::Meta;

/// At most this many files in one stream, so that several streams share the work.
const BATCH_FILES: usize = 1024;
/// At least this many (fewer only at the end), so that a stream's start is worth it.
const MIN_BATCH_FILES: usize = 32;
/// At most this many bytes of files in one stream: what a failed stream costs again.
const BATCH_BYTES: u64 = 32 << 20;
/// At most this many bytes of names: the list is written before the archive is read,
/// and must fit the channel's window (2 MiB in OpenSSH) so that writing never waits.
const BATCH_NAMES: usize = 256 << 10;

/// What one copy worker takes on: a file, or a batch of small ones (indices into jobs).
pub(super) enum Unit {
    One(usize),
    Batch(Vec<usize>),
}

/// The jobs as units of work: where the source streams, files up to its size limit in
/// batches (at most [`BATCH_FILES`], [`BATCH_BYTES`] and [`BATCH_NAMES`], and small
/// enough that every worker gets some), the others one by one.
pub(super) fn units(src: &dyn Storage, jobs: &[Job], workers: usize) -> Vec<Unit> {
    let Some(reader) = src.batch_read() else {
        return (0..jobs.len()).map(Unit::One).collect();
    };
    let max = reader.max_file_size();
    let small = jobs.iter().filter(|j| j.meta.size <= max).count();
    let per_batch = (small / workers.max(1)).clamp(MIN_BATCH_FILES, BATCH_FILES);
    let mut units = Vec::new();
    let mut batch: Vec<usize> = Vec::new();
    let (mut bytes, mut names) = (0u64, 0usize);
    for (i, job) in jobs.iter().enumerate() {
        if job.meta.size > max {
            units.push(Unit::One(i));
            continue;
        }
        let name = job.rel.as_os_str().len() + 1;
        let full = batch.len() >= per_batch
            || bytes + job.meta.size > BATCH_BYTES
            || names + name > BATCH_NAMES;
        if full && !batch.is_empty() {
            units.push(Unit::Batch(std::mem::take(&mut batch)));
            (bytes, names) = (0, 0);
        }
        batch.push(i);
        bytes += job.meta.size;
        names += name;
    }
    if !batch.is_empty() {
        units.push(Unit::Batch(batch));
    }
    units
}

/// How receiving one file of a stream failed.
enum Received {
    /// The stream broke: the batch cannot be trusted.
    Stream(Error),
    /// This file failed on our side, or was refused (SOURCE CORRUPT).
    File(FailureKind, Error),
}

/// Copies the files `batch` (indices into `jobs`) through one stream of the source,
/// passing each outcome to `send`; files the stream did not deliver go one by one.
pub(super) fn copy_batch(
    ctx: &Ctx<'_>,
    jobs: &[Job],
    batch: &[usize],
    send: &mut dyn FnMut(std::result::Result<Staged, Failure>),
) {
    let failure = |i: usize, (kind, error): (FailureKind, Error)| Failure {
        path: jobs[i].rel.clone(),
        kind,
        error,
    };
    let mut got: Vec<Option<std::result::Result<Staged, (FailureKind, Error)>>> =
        batch.iter().map(|_| None).collect();
    let stopping = || ctx.abort.load(Ordering::Relaxed) || interrupt::received().is_some();
    if let (Some(reader), false) = (ctx.src.batch_read(), stopping()) {
        let files: Vec<(&Path, &Meta)> = batch
            .iter()
            .map(|&i| (jobs[i].rel.as_path(), &jobs[i].meta))
            .collect();
        let mut fatal: Option<(usize, (FailureKind, Error))> = None;
        let streamed = reader.read_batch(&files, &mut |k, bytes| {
            let (i, job) = (batch[k], &jobs[batch[k]]);
            if interrupt::received().is_some() {
                return Err(Error::io(ctx.src.display(&job.rel), interrupt::stopped()));
            }
            match receive(ctx, job, i, bytes) {
                Ok(staged) => got[k] = Some(Ok(staged)),
                Err(Received::Stream(e)) => return Err(e),
                Err(Received::File(kind, e)) if kind.is_fatal() => {
                    ctx.abort.store(true, Ordering::Relaxed);
                    let stop = Error::io(
                        ctx.src.display(&job.rel),
                        std::io::Error::other("the run stopped after a fatal error"),
                    );
                    fatal = Some((k, (kind, e)));
                    return Err(stop);
                }
                Err(Received::File(kind, e)) => got[k] = Some(Err((kind, e))),
            }
            Ok(())
        });
        if streamed.is_err() {
            // Nothing of a stream that cannot be trusted is kept (the temporaries go
            // with their handles): its files are read again one by one.
            got.iter_mut().for_each(|g| *g = None);
        }
        if let Some((k, e)) = fatal {
            got[k] = Some(Err(e));
        }
    }
    for (k, &i) in batch.iter().enumerate() {
        match got[k].take() {
            Some(Ok(staged)) => {
                ctx.progress.add_bytes(jobs[i].meta.size);
                send(Ok(staged));
            }
            Some(Err(e)) => send(Err(failure(i, e))),
            None => send(copy_one(ctx, jobs, i)),
        }
    }
}

/// One file of a stream into its temporary, hashed as it arrives, then checked.
fn receive(
    ctx: &Ctx<'_>,
    job: &Job,
    job_index: usize,
    bytes: &mut dyn Read,
) -> std::result::Result<Staged, Received> {
    let (mut out, tmp) = temporary(ctx, &job.rel).map_err(|(k, e)| Received::File(k, e))?;
    let local = |e: Error| Received::File(classify(&e), e);
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    hash::with_buffer(|buf| loop {
        let n = match bytes.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Received::Stream(Error::io(ctx.src.display(&job.rel), e))),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).at(&tmp).map_err(local)?;
        total += n as u64;
    })?;
    let synced = elsewhere(ctx, &job.rel);
    if synced {
        out.sync_data().at(&tmp).map_err(local)?;
    }
    drop(out);
    let copy = FileCopy::unread(hasher, total);
    checked(ctx, job, job_index, tmp, copy, (job.meta, job.meta), synced)
        .map_err(|(k, e)| Received::File(k, e))
}
