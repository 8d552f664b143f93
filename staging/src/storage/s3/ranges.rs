//! Reading a big object back (after its upload) as bounded range GETs in flight at once,
//! its bytes given in order.
//!
//! One GET stream of a big object runs at a fraction of what the server gives to several
//! at once (RGW reads an object's stripes one window after the other per request): two
//! objects of 128 MiB came in 1.5-1.8 s as one stream each and 0.7-0.9 s as four ranges
//! each. So an object of at least [`RANGED_MIN`] bytes is read as ranges of [`RANGE`]
//! bytes, up to [`RANGES_PER_OBJECT`] of them on the way, each held whole until the ranges
//! before it were given on. What the ranges of one process hold at once is bounded
//! ([`RANGES_IN_FLIGHT`]): a range is sent only while that budget has room, never waited
//! for (objects read side by side cannot block each other); an object that finds none
//! is read as one stream (from where its ranges ended), as a small one is.
//!
//! Every range is of the same object: of the version asked for, or else each range must
//! carry the first one's ETag (an object replaced while it is read is an error, never
//! bytes of two objects). The object's size is known beforehand (listed, or the bytes
//! written); an object of another size is read as one stream instead, before any byte is
//! given on, so the caller's comparison sees what is really there.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::primitives::{AggregatedBytes, DateTime};

use super::get::object_meta;
use super::S3Store;
use crate::error::{Error, Result, StorageErrorKind};
use crate::walk::Meta;

/// Bytes of one range GET.
pub(super) const RANGE: u64 = 16 << 20;
/// Objects of at least this size are read in ranges; smaller ones as one stream.
pub(super) const RANGED_MIN: u64 = 2 * RANGE;
/// Ranges of one object on the way at most.
const RANGES_PER_OBJECT: usize = 4;
/// Ranges on the way at once in the whole process (each held whole in memory, up to
/// [`RANGE`] bytes, until it is given on).
const RANGES_IN_FLIGHT: usize = 8;
/// Attempts at one range whose body broke off (the request itself is retried by the SDK).
const RANGE_ATTEMPTS: u32 = 5;

/// Ranges on the way in the whole process.
static BUDGET: AtomicUsize = AtomicUsize::new(0);

/// What one range GET gave.
struct Got {
    /// The object's whole size (from `Content-Range`).
    size: u64,
    etag: Option<String>,
    version: Option<String>,
    modified: Option<DateTime>,
    body: AggregatedBytes,
}

/// Why a range GET failed.
enum Failed {
    Request(Box<SdkError<GetObjectError, aws_sdk_s3::config::http::HttpResponse>>),
    Body(String),
}

/// One range on the way (it holds a place in the process's budget).
type Task = tokio::task::JoinHandle<std::result::Result<Got, Failed>>;

/// Takes a place in the process's budget of ranges on the way; false when it is full.
fn take_budget() -> bool {
    BUDGET
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < RANGES_IN_FLIGHT).then_some(n + 1)
        })
        .is_ok()
}

impl S3Store {
    /// Streams the whole of `rel` (a given version, or the current one), `size` bytes as
    /// far as the caller knows, to `sink`: in ranges on the way at once when it is big,
    /// else (or when it has another size) as one stream ([`S3Store::get`]).
    pub(super) fn get_sized(
        &self,
        rel: &Path,
        version: Option<&str>,
        size: u64,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<Meta> {
        if size < RANGED_MIN {
            return self.get(rel, version, 0, None, sink);
        }
        match self.get_ranges(rel, version, size, sink)? {
            Some(meta) => Ok(meta),
            None => self.get(rel, version, 0, None, sink),
        }
    }

    /// [`S3Store::get_sized`] in ranges; `None` (nothing given to `sink`) when the object
    /// is not of `size` bytes, or when the process's budget has no room for its first
    /// range. An object whose ranges find no room in the budget part way has the rest
    /// read as one stream.
    fn get_ranges(
        &self,
        rel: &Path,
        version: Option<&str>,
        size: u64,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<Option<Meta>> {
        let count = size.div_ceil(RANGE);
        let mut next = 0u64;
        let mut queue: VecDeque<Task> = VecDeque::new();
        // The version and what the first range said of the object.
        let mut first: Option<(Option<String>, Meta)> = None;
        let result = (|| {
            loop {
                while next < count && queue.len() < RANGES_PER_OBJECT && take_budget() {
                    let start = next * RANGE;
                    let end = (start + RANGE).min(size);
                    let pinned = first
                        .as_ref()
                        .map_or_else(|| version.map(str::to_string), |(v, _)| v.clone());
                    queue.push_back(self.spawn_range(rel, pinned, start, end));
                    next += 1;
                }
                let Some(task) = queue.pop_front() else {
                    let Some((pinned, seen)) = first else {
                        // No room for a first range: the whole object as one stream.
                        return Ok(None);
                    };
                    if next < count {
                        // No room for more ranges: the rest as one stream.
                        let rest =
                            self.get(rel, pinned.as_deref(), next * RANGE, Some(size), sink)?;
                        self.same_object(rel, &seen, &rest)?;
                    }
                    return Ok(Some(seen));
                };
                let got = self.runtime.block_on(task);
                BUDGET.fetch_sub(1, Ordering::AcqRel);
                let got = match got {
                    Ok(Ok(got)) => got,
                    Ok(Err(Failed::Request(e))) => {
                        return Err(self.error("GetObject", Some(rel), *e))
                    }
                    Ok(Err(Failed::Body(e))) => return Err(self.broke_off(rel, e)),
                    Err(e) => return Err(self.broke_off(rel, e.to_string())),
                };
                let meta = object_meta(
                    i64::try_from(got.size).unwrap_or(i64::MAX),
                    got.modified.as_ref(),
                    got.etag.as_deref(),
                );
                match &first {
                    None if got.size != size => return Ok(None),
                    None => first = Some((got.version.clone(), meta)),
                    Some((_, seen)) => self.same_object(rel, seen, &meta)?,
                }
                for block in got.body.into_segments() {
                    sink(&block)?;
                }
            }
        })();
        for task in queue.drain(..) {
            task.abort();
            BUDGET.fetch_sub(1, Ordering::AcqRel);
        }
        result
    }

    /// An error unless `got` is of the object `seen` (same ETag and size).
    fn same_object(&self, rel: &Path, seen: &Meta, got: &Meta) -> Result<()> {
        if seen.ino == got.ino && seen.size == got.size {
            return Ok(());
        }
        Err(Error::Storage {
            location: self.display_key(rel),
            kind: StorageErrorKind::Other,
            reason: "the object was replaced while it was read".into(),
            hint: "run again once nothing else writes to this prefix".into(),
        })
    }

    /// Starts the GET of bytes `start..end` of `rel` (of `version` when given).
    fn spawn_range(&self, rel: &Path, version: Option<String>, start: u64, end: u64) -> Task {
        let request = self
            .client
            .get_object()
            .bucket(&self.url.bucket)
            .key(self.key(rel))
            .set_version_id(version)
            .range(format!("bytes={start}-{}", end - 1));
        self.runtime.spawn(async move {
            let mut attempt = 1;
            loop {
                let out = request
                    .clone()
                    .send()
                    .await
                    .map_err(|e| Failed::Request(Box::new(e)))?;
                let size = out
                    .content_range()
                    .and_then(|r| r.rsplit('/').next()?.parse().ok())
                    .unwrap_or(0);
                let etag = out.e_tag().map(str::to_string);
                let version = out.version_id().map(str::to_string);
                let modified = out.last_modified().copied();
                match out.body.collect().await {
                    Ok(body) => {
                        return Ok(Got {
                            size,
                            etag,
                            version,
                            modified,
                            body,
                        })
                    }
                    Err(e) if attempt >= RANGE_ATTEMPTS => return Err(Failed::Body(e.to_string())),
                    Err(_) => attempt += 1,
                }
            }
        })
    }

    fn display_key(&self, rel: &Path) -> String {
        format!("s3://{}/{}", self.url.bucket, self.key(rel))
    }

    /// A download that broke off for good.
    fn broke_off(&self, rel: &Path, e: String) -> Error {
        Error::Storage {
            location: self.display_key(rel),
            kind: StorageErrorKind::Unreachable,
            reason: format!("the download broke off: {e}"),
            hint: "run again (it resumes)".into(),
        }
    }
}
