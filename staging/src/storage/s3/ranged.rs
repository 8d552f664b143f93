//! Reading a large object with several range GETs in flight, as `aws s3` and rclone do: a
//! single stream is paced by the server's handling of one request, not by the link. The
//! ranges are handed on in order, so the caller still hashes the object as one stream, and
//! every range comes from the version (in a bucket without versions, the ETag) the first
//! one came from. A range whose body breaks off is read again with [`S3Store::get`], which
//! resumes.

use std::collections::VecDeque;
use std::path::Path;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::primitives::AggregatedBytes;

use super::get::object_meta;
use super::S3Store;
use crate::error::Result;
use crate::walk::Meta;

/// Bytes of one range GET.
const RANGE: u64 = 8 << 20;
/// Range GETs of one object in flight at once (at most this many ranges held in memory).
const RANGES_IN_FLIGHT: usize = 4;
/// Objects of this size and more are read in ranges (below, one stream: on a loaded
/// server of two cores, 16 MiB objects came no faster in two ranges).
pub(super) const RANGED_FROM: u64 = 4 * RANGE;

/// Why one range was not read.
enum RangeFailure {
    /// The server refused or did not answer: the read fails with its error.
    Request(Box<SdkError<GetObjectError, HttpResponse>>),
    /// The body broke off: the range is read again.
    Body,
}

type RangeTask = tokio::task::JoinHandle<std::result::Result<AggregatedBytes, RangeFailure>>;

/// The ranges in flight, stopped when the read ends early.
struct InFlight(VecDeque<(u64, u64, RangeTask)>);

impl Drop for InFlight {
    fn drop(&mut self) {
        for (_, _, task) in self.0.drain(..) {
            task.abort();
        }
    }
}

impl S3Store {
    /// [`S3Store::get`] of a whole object (a version, or the current one) with up to
    /// [`RANGES_IN_FLIGHT`] range GETs of [`RANGE`] bytes at once; returns the metadata of
    /// the version read.
    pub(super) fn get_ranged(
        &self,
        rel: &Path,
        version: Option<&str>,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<Meta> {
        let key = self.key(rel);
        let first = self.runtime.block_on(
            self.client
                .get_object()
                .bucket(&self.url.bucket)
                .key(&key)
                .set_version_id(version.map(str::to_string))
                .range(format!("bytes=0-{}", RANGE - 1))
                .send(),
        );
        let first = match first {
            Ok(out) => out,
            // An empty object has no byte 0.
            Err(e) if e.code() == Some("InvalidRange") => {
                return self.get(rel, version, 0, None, sink)
            }
            Err(e) => return Err(self.error("GetObject", Some(rel), e)),
        };
        let size = first
            .content_range()
            .and_then(|r| r.rsplit('/').next()?.parse::<u64>().ok())
            .unwrap_or_else(|| u64::try_from(first.content_length().unwrap_or(0)).unwrap_or(0));
        let meta = object_meta(
            i64::try_from(size).unwrap_or(i64::MAX),
            first.last_modified(),
            first.e_tag(),
        );
        let version = version
            .map(str::to_string)
            .or_else(|| first.version_id().map(str::to_string));
        let etag = first.e_tag().map(str::to_string);
        let range = |start: u64| -> (u64, u64, RangeTask) {
            let end = (start + RANGE).min(size);
            let req = self
                .client
                .get_object()
                .bucket(&self.url.bucket)
                .key(&key)
                .range(format!("bytes={start}-{}", end - 1));
            let req = match &version {
                Some(v) => req.version_id(v),
                None => req.set_if_match(etag.clone()),
            };
            let task = self.runtime.spawn(async move {
                let out = req
                    .send()
                    .await
                    .map_err(|e| RangeFailure::Request(Box::new(e)))?;
                out.body.collect().await.map_err(|_| RangeFailure::Body)
            });
            (start, end, task)
        };
        let first_end = RANGE.min(size);
        let mut next = first_end;
        let mut in_flight = InFlight(VecDeque::new());
        while in_flight.0.len() + 1 < RANGES_IN_FLIGHT && next < size {
            in_flight.0.push_back(range(next));
            next = (next + RANGE).min(size);
        }
        // The first range streams into `sink` while the next ones are on their way.
        let mut at = 0u64;
        let mut body = first.body;
        let mut failed: Option<crate::Error> = None;
        let broke = self.runtime.block_on(async {
            while let Some(block) = body.next().await {
                let Ok(block) = block else { return true };
                if let Err(e) = sink(&block) {
                    failed = Some(e);
                    return false;
                }
                at += block.len() as u64;
            }
            false
        });
        if let Some(e) = failed {
            return Err(e);
        }
        if broke {
            self.get(rel, version.as_deref(), at, Some(first_end), sink)?;
        }
        while let Some((start, end, task)) = in_flight.0.pop_front() {
            if next < size {
                in_flight.0.push_back(range(next));
                next = (next + RANGE).min(size);
            }
            match self.runtime.block_on(task) {
                Ok(Ok(bytes)) => sink(&bytes.into_bytes())?,
                Ok(Err(RangeFailure::Request(e))) => {
                    return Err(self.error("GetObject", Some(rel), *e))
                }
                Ok(Err(RangeFailure::Body)) | Err(_) => {
                    self.get(rel, version.as_deref(), start, Some(end), sink)?;
                }
            }
        }
        Ok(meta)
    }
}
