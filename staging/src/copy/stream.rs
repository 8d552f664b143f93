//! Small files from a source that streams many at once ([`crate::storage::BatchRead`]: an
//! SSH host running tar, issue 18): consecutive small jobs of the streamed plan grouped
//! into batches as they come (memory holds one batch per stream, whatever the tree),
//! one stream each, every file written to its temporary and checked as a file read
//! alone is (hashed as received, against the source manifest) before it joins the
//! pipeline for its read-back. A file the manifest vouches for joins it at once; the
//! others when the stream ended trusted. A file the stream does not deliver, and every
//! file a stream that cannot be trusted held back, is read one by one (`copy_one`);
//! bigger files never enter a batch. This module never decides by the source's kind: it
//! asks the source for the capability.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};

use sha2::{Digest as _, Sha256};

use super::pipeline::{checked, copy_one, elsewhere, temporary, Ctx, Staged};
use super::plan::Job;
use super::read::{start_writeback, FileCopy};
use super::{classify, Failure, FailureKind};
use crate::error::{Error, IoContext};
use crate::hash;
use crate::interrupt;
use crate::walk::Meta;

/// At most this many files in one stream, so that several streams share the work.
const BATCH_FILES: usize = 1024;
/// At least this many (fewer only at the end), so that a stream's start is worth it.
const MIN_BATCH_FILES: usize = 32;
/// At most this many bytes of files in one stream: what a failed stream costs again.
const BATCH_BYTES: u64 = 64 << 20;
/// At most this many bytes of names: the list is written before the archive is read,
/// and must fit the channel's window (2 MiB in OpenSSH) so that writing never waits.
const BATCH_NAMES: usize = 256 << 10;

/// What one copy worker takes on: a file, or a batch of small ones with the stream slot
/// it holds until it is dropped.
pub(super) enum Unit {
    One(Job),
    Batch(Vec<Job>, Slot),
}

/// One of the streams that may run at once, taken by a batch when it is handed out and
/// given back when the batch is dropped: a batch is formed only for a free stream, so
/// however many workers wait, at most that many batches (and the one being filled) are
/// held, whatever the tree.
pub(super) struct Slot(Arc<(Mutex<usize>, Condvar)>);

impl Slot {
    /// Waits until fewer than `limit` slots of `slots` are taken, and takes one.
    fn take(slots: &Arc<(Mutex<usize>, Condvar)>, limit: usize) -> Slot {
        let (taken, freed) = &**slots;
        let mut n = taken.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= limit {
            n = freed.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        Slot(Arc::clone(slots))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (taken, freed) = &*self.0;
        *taken.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        freed.notify_one();
        // The batch's many small allocations were made by whichever worker threads ran
        // it, in their own malloc arenas; glibc keeps the freed pages of an arena unless
        // asked, so without this the resident size grows with the batches run.
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only returns free memory to the system.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Batches each stream takes on in a run, at least: every stream of a batch starts a
/// command on the host (a connection, a shell, tar), so fewer is cheaper, but the last
/// batches of a run are not shared among the streams, so one per stream is too few.
const BATCHES_PER_STREAM: u64 = 2;

/// The jobs as units of work, formed as they come (nothing held but the batch being
/// filled): where the source streams (`stream`: its size limit and how many streams run
/// at once), consecutive files up to that size in batches (at most [`BATCH_FILES`],
/// [`BATCH_BYTES`] and [`BATCH_NAMES`], and small enough that each stream gets
/// [`BATCHES_PER_STREAM`] of the about `planned` jobs), the others one by one.
pub(super) fn units<'a>(
    stream: Option<(u64, usize)>,
    jobs: impl Iterator<Item = Job> + Send + 'a,
    planned: u64,
) -> impl Iterator<Item = Unit> + Send + 'a {
    let max = stream.map(|(max, _)| max);
    let streams = stream.map_or(1, |(_, n)| n.max(1));
    let per_batch = usize::try_from(planned / (streams as u64 * BATCHES_PER_STREAM))
        .unwrap_or(usize::MAX)
        .clamp(MIN_BATCH_FILES, BATCH_FILES);
    Batches {
        jobs,
        max,
        per_batch,
        streams,
        slots: Arc::default(),
        batch: Vec::new(),
        bytes: 0,
        names: 0,
        pending: None,
    }
}

/// [`units`]' iterator: a small job joins the batch being filled, a full batch is handed
/// out before the job that did not fit, a big job goes alone.
struct Batches<I> {
    jobs: I,
    /// The size limit of a streamed file; `None`, every job alone.
    max: Option<u64>,
    per_batch: usize,
    /// How many batches may be out at once (one per stream).
    streams: usize,
    slots: Arc<(Mutex<usize>, Condvar)>,
    batch: Vec<Job>,
    bytes: u64,
    names: usize,
    /// A big job seen while a batch was being filled: it goes after that batch.
    pending: Option<Job>,
}

impl<I: Iterator<Item = Job>> Iterator for Batches<I> {
    type Item = Unit;

    fn next(&mut self) -> Option<Unit> {
        if let Some(job) = self.pending.take() {
            return Some(Unit::One(job));
        }
        let Some(max) = self.max else {
            return self.jobs.next().map(Unit::One);
        };
        loop {
            let Some(job) = self.jobs.next() else {
                return (!self.batch.is_empty()).then(|| self.take(Vec::new()));
            };
            if job.meta.size > max {
                if self.batch.is_empty() {
                    return Some(Unit::One(job));
                }
                self.pending = Some(job);
                return Some(self.take(Vec::new()));
            }
            let name = job.rel.as_os_str().len() + 1;
            let full = self.batch.len() >= self.per_batch
                || self.bytes + job.meta.size > BATCH_BYTES
                || self.names + name > BATCH_NAMES;
            if full && !self.batch.is_empty() {
                let unit = self.take(Vec::with_capacity(self.per_batch));
                self.push(job, name);
                return Some(unit);
            }
            self.push(job, name);
        }
    }
}

impl<I> Batches<I> {
    fn push(&mut self, job: Job, name: usize) {
        self.bytes += job.meta.size;
        self.names += name;
        self.batch.push(job);
    }

    /// The batch filled so far, `next` taking its place, once a stream is free for it.
    fn take(&mut self, next: Vec<Job>) -> Unit {
        let slot = Slot::take(&self.slots, self.streams);
        (self.bytes, self.names) = (0, 0);
        Unit::Batch(std::mem::replace(&mut self.batch, next), slot)
    }
}

/// How receiving one file of a stream failed.
enum Received {
    /// The stream broke: the batch cannot be trusted.
    Stream(Error),
    /// This file failed on our side, or was refused (SOURCE CORRUPT).
    File(FailureKind, Error),
}

/// What became of one file of a batch while its stream ran.
enum Got {
    /// Not delivered (yet).
    Not,
    /// Received and checked against the source manifest: passed on at once.
    Sent,
    /// Received, waiting for the stream's end to be trusted (or refused).
    Held(std::result::Result<Staged, (FailureKind, Error)>),
}

/// Copies the files of `batch` through one stream of the source, passing each outcome
/// to `send`; files the stream did not deliver go one by one.
///
/// A file whose digest matches the source manifest is passed on as soon as it is
/// received: its bytes are the listed ones whatever becomes of the stream, so it is
/// flushed and read back while the stream goes on. Any other outcome waits for the
/// stream's end, which alone says whether tar read every file whole and unchanged.
pub(super) fn copy_batch(
    ctx: &Ctx<'_>,
    batch: Vec<Job>,
    send: &mut dyn FnMut(std::result::Result<(Job, Staged), Failure>),
) {
    let mut got: Vec<Got> = batch.iter().map(|_| Got::Not).collect();
    let stopping = || ctx.abort.load(Ordering::Relaxed) || interrupt::received().is_some();
    if let (Some(reader), false) = (ctx.src.batch_read(), stopping()) {
        let files: Vec<(&Path, &Meta)> = batch.iter().map(|j| (j.rel.as_path(), &j.meta)).collect();
        let mut fatal: Option<(usize, (FailureKind, Error))> = None;
        let streamed = reader.read_batch(&files, &mut |k, bytes| {
            let job = &batch[k];
            if interrupt::received().is_some() {
                return Err(Error::io(ctx.src.display(&job.rel), interrupt::stopped()));
            }
            match receive(ctx, job, bytes) {
                Ok(staged) if job.expected.is_some() => {
                    ctx.progress.add_bytes(job.meta.size);
                    send(Ok((job.clone(), staged)));
                    got[k] = Got::Sent;
                }
                Ok(staged) => got[k] = Got::Held(Ok(staged)),
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
                Err(Received::File(kind, e)) => got[k] = Got::Held(Err((kind, e))),
            }
            Ok(())
        });
        if streamed.is_err() {
            // Nothing held of a stream that cannot be trusted is kept (the temporaries
            // go with their handles): those files are read again one by one.
            for g in &mut got {
                if matches!(g, Got::Held(_)) {
                    *g = Got::Not;
                }
            }
        }
        if let Some((k, e)) = fatal {
            got[k] = Got::Held(Err(e));
        }
    }
    for (job, got) in batch.into_iter().zip(got) {
        match got {
            Got::Sent => {}
            Got::Held(Ok(staged)) => {
                ctx.progress.add_bytes(job.meta.size);
                send(Ok((job, staged)));
            }
            Got::Held(Err((kind, error))) => send(Err(Failure {
                path: job.rel,
                kind,
                error,
            })),
            Got::Not => send(copy_one(ctx, job)),
        }
    }
}

/// One file of a stream into its temporary, hashed as it arrives, then checked.
fn receive(
    ctx: &Ctx<'_>,
    job: &Job,
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
    } else {
        // Its writeback starts now; the read-back waits for it (`finish::write_back`).
        start_writeback(&out, 0, total);
    }
    drop(out);
    let copy = FileCopy::unread(hasher, total);
    checked(ctx, job, tmp, copy, (job.meta, job.meta), synced)
        .map(|staged| Staged {
            own_flush: !synced,
            ..staged
        })
        .map_err(|(k, e)| Received::File(k, e))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::path::PathBuf;

    use super::*;
    use crate::copy::Change;

    fn job(name: &str, size: u64) -> Job {
        Job {
            rel: PathBuf::from(name),
            meta: Meta {
                size,
                ..Meta::default()
            },
            change: Change::New,
            expected: None,
        }
    }

    /// The names of each unit, a batch in brackets.
    fn shape(units: impl Iterator<Item = Unit>) -> Vec<String> {
        units
            .map(|u| match u {
                Unit::One(j) => j.rel.display().to_string(),
                Unit::Batch(b, _) => format!(
                    "[{}]",
                    b.iter()
                        .map(|j| j.rel.display().to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            })
            .collect()
    }

    #[test]
    fn consecutive_small_files_go_in_batches_and_big_ones_alone_in_order() {
        let jobs = vec![
            job("a", 10),
            job("b", 10),
            job("big1", 2000),
            job("c", 10),
            job("big2", 2000),
            job("big3", 2000),
        ];
        let got = shape(units(Some((1000, 2)), jobs.into_iter(), 6));
        assert_eq!(got, ["[a b]", "big1", "[c]", "big2", "big3"]);
    }

    #[test]
    fn a_batch_ends_at_its_file_count_and_its_bytes() {
        let many = (0..70).map(|i| job(&format!("f{i:02}"), 1));
        let got = units(Some((1000, 2)), many, 70).map(|u| match u {
            Unit::Batch(b, _) => b.len(),
            Unit::One(_) => 0,
        });
        // 70 files for 2 streams: batches of the minimum count.
        assert_eq!(
            got.collect::<Vec<_>>(),
            [MIN_BATCH_FILES, MIN_BATCH_FILES, 6]
        );
        let heavy = (0..5).map(|i| job(&format!("h{i}"), BATCH_BYTES / 2));
        let got = shape(units(Some((BATCH_BYTES, 1)), heavy, 5));
        assert_eq!(got, ["[h0 h1]", "[h2 h3]", "[h4]"]);
    }

    #[test]
    fn without_a_stream_every_file_goes_alone() {
        let jobs = vec![job("a", 1), job("b", 1)];
        assert_eq!(shape(units(None, jobs.into_iter(), 2)), ["a", "b"]);
    }

    #[test]
    fn jobs_are_taken_only_as_units_are_handed_out() {
        let taken = Cell::new(0usize);
        let jobs = (0..100_000).map(|i| {
            taken.set(taken.get() + 1);
            job(&format!("f{i}"), 1)
        });
        let mut units = Batches {
            jobs,
            max: Some(1000),
            per_batch: BATCH_FILES,
            streams: 1,
            slots: Arc::default(),
            batch: Vec::new(),
            bytes: 0,
            names: 0,
            pending: None,
        };
        let first = units.next();
        assert!(matches!(first, Some(Unit::Batch(ref b, _)) if b.len() == BATCH_FILES));
        // The batch, and the one job that did not fit it.
        assert_eq!(taken.get(), BATCH_FILES + 1);
    }

    #[test]
    fn no_more_batches_are_out_than_streams() {
        use std::sync::mpsc::channel;
        use std::time::Duration;

        let jobs = (0..10 * MIN_BATCH_FILES).map(|i| job(&format!("f{i:03}"), 1));
        let mut units = units(Some((1000, 2)), jobs, 10 * MIN_BATCH_FILES as u64);
        let first = units.next();
        let second = units.next();
        assert!(matches!(first, Some(Unit::Batch(..))) && matches!(second, Some(Unit::Batch(..))));
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let third = units.next();
            tx.send(matches!(third, Some(Unit::Batch(..)))).unwrap();
        });
        // Both streams are busy: the third batch waits for one of them.
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        drop(first);
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(true));
        drop(second);
    }
}
