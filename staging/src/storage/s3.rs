//! The S3 backend (Ceph RGW, MinIO, StorageGRID, AWS) through `aws-sdk-s3`.
//!
//! The SDK is async; the engine is threads. A tokio runtime lives inside [`S3Store`] and
//! every call blocks on it, so nothing outside this file knows about async.
//!
//! What S3 forces (docs/ARCHITECTURE.md#objects-s3):
//! - No rename: an object is visible once its upload completes. A tree *exists* only once
//!   its `MANIFEST.sha256` object is written, last ([`Capabilities::manifest_marks_complete`]).
//! - Integrity is ours: Content-MD5 on every single PUT and every part (the server rejects a
//!   wrong one), the SHA-256 in the object's metadata (`x-amz-meta-sha256`) and in the
//!   manifest, and every object read back with a GET. RGW 16 neither checks nor stores
//!   `x-amz-checksum-sha256`, so nothing relies on it.
//! - WORM is Object Lock retention, set with PutObjectRetention after the upload completed
//!   (RGW ignores lock headers on CreateMultipartUpload) and read back with
//!   GetObjectRetention; a bucket without Object Lock is refused, never claimed protected.
//! - A multipart upload not completed is aborted (on drop, on failure); one left by a killed
//!   process is aborted by the next run under the same prefix ([`S3Store::abort_orphans`]).
//!
//! Credentials come from the SDK's standard chain (environment, `~/.aws/credentials`, a
//! profile) and never appear in an error, a log or a record. 503 SlowDown and other
//! transient errors are retried by the SDK with exponential back-off.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, ObjectLockEnabled, ObjectLockRetention,
    ObjectLockRetentionMode,
};
use aws_sdk_s3::Client;
use base64::Engine as _;
use md5::{Digest as _, Md5};
use sha2::Sha256;

use super::place::{place_s3, PlaceOptions, Placement};
use super::{Capabilities, LockMode, Retention, S3Url, Storage, Upload, Written};
use crate::error::{Error, Result, StorageErrorKind};
use crate::hash::Digest;
use crate::walk::{Entry, Filter, Kind, Meta, Tree, MANIFEST_NAME};

mod lock;

/// Parts of a multipart upload (S3 allows 5 MiB to 5 GiB; 10,000 parts at most).
const PART: usize = 16 << 20;
/// Parts of one upload sent at once.
const PARTS_IN_FLIGHT: usize = 4;
/// The metadata key of an object's SHA-256 (sent as `x-amz-meta-sha256`).
const SHA256_KEY: &str = "sha256";

/// How to reach the S3 service (`[s3]` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Options {
    /// e.g. `https://s3.lab.org`; `None`: the SDK's (AWS, or `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// A profile of `~/.aws/config` and `~/.aws/credentials`.
    pub profile: Option<String>,
    /// `http://host/bucket/key` rather than `http://bucket.host/key` (most on-site servers).
    pub path_style: bool,
    /// Retention of WORM data.
    pub retention: Retention,
    /// Attempts of one request on transient errors (503 SlowDown, timeouts, resets).
    pub attempts: u32,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            endpoint: None,
            region: None,
            profile: None,
            path_style: true,
            retention: Retention {
                mode: LockMode::Compliance,
                keep: Duration::from_secs(10 * 365 * 86_400 + 2 * 86_400),
            },
            attempts: 8,
        }
    }
}

static PROCESS_OPTIONS: std::sync::OnceLock<S3Options> = std::sync::OnceLock::new();

impl S3Options {
    /// Makes `opts` the settings of S3 locations found in records (a report or a clean
    /// asks about stages whose source is an S3 prefix); the binary sets them once from
    /// `[s3]`.
    pub fn set_process(opts: S3Options) {
        let _ = PROCESS_OPTIONS.set(opts);
    }

    /// The settings [`S3Options::set_process`] gave, or the defaults.
    pub fn process() -> S3Options {
        PROCESS_OPTIONS.get().cloned().unwrap_or_default()
    }
}

/// A bucket prefix as a [`Storage`].
pub struct S3Store {
    url: S3Url,
    client: Client,
    runtime: Arc<tokio::runtime::Runtime>,
    /// Where requests go, for messages (never the credentials).
    endpoint: String,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Store({} at {})", self.url, self.endpoint)
    }
}

impl S3Store {
    /// Connects and checks that the bucket is there and the credentials are accepted.
    pub fn connect(url: &S3Url, opts: &S3Options) -> Result<S3Store> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("hpcstage-s3")
            .build()
            .map_err(|e| Error::io("tokio runtime", e))?;
        let client = runtime.block_on(async {
            let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .retry_config(
                    RetryConfig::standard()
                        .with_max_attempts(opts.attempts.max(1))
                        .with_initial_backoff(Duration::from_millis(200))
                        .with_max_backoff(Duration::from_secs(20)),
                )
                .timeout_config(
                    TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(10))
                        .read_timeout(Duration::from_secs(120))
                        .build(),
                );
            if let Some(p) = &opts.profile {
                loader = loader.profile_name(p);
            }
            if let Some(r) = &opts.region {
                loader = loader.region(aws_config::Region::new(r.clone()));
            }
            if let Some(e) = &opts.endpoint {
                loader = loader.endpoint_url(e);
            }
            let shared = loader.load().await;
            // Integrity is ours (Content-MD5, SHA-256 in metadata, read-back): no CRC
            // headers or trailers of the SDK's, which RGW 16 rejects.
            let mut conf = aws_sdk_s3::config::Builder::from(&shared)
                .force_path_style(opts.path_style)
                .request_checksum_calculation(
                    aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
                )
                .response_checksum_validation(
                    aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
                );
            if shared.region().is_none() {
                // On-site servers take any region in the signature; AWS needs the right one.
                conf = conf.region(aws_config::Region::new("us-east-1"));
            }
            Client::from_conf(conf.build())
        });
        let endpoint = opts
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .unwrap_or_else(|| "AWS".to_string());
        let store = S3Store {
            url: url.clone(),
            client,
            runtime: Arc::new(runtime),
            endpoint,
        };
        store.check_bucket()?;
        Ok(store)
    }

    pub fn url(&self) -> &S3Url {
        &self.url
    }

    /// The same connection, rooted at another prefix of the same bucket.
    pub fn at(&self, prefix: impl Into<PathBuf>) -> S3Store {
        S3Store {
            url: self.url.with_prefix(prefix),
            client: self.client.clone(),
            runtime: Arc::clone(&self.runtime),
            endpoint: self.endpoint.clone(),
        }
    }

    fn key(&self, rel: &Path) -> String {
        self.url.key(rel)
    }

    /// The error of a failed request on `rel`, with what the user can do about it.
    fn error<E, R>(&self, op: &str, rel: Option<&Path>, e: SdkError<E, R>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + HasStatus,
    {
        let location = match rel {
            Some(rel) => format!("s3://{}/{}", self.url.bucket, self.key(rel)),
            None => format!("s3://{}", self.url.bucket),
        };
        let status = e.raw_response().map(HasStatus::status);
        let code = e.code().unwrap_or_default().to_string();
        let message = e.message().unwrap_or_default().to_string();
        let (kind, reason, hint) = match (&e, code.as_str(), status) {
            (SdkError::DispatchFailure(_) | SdkError::TimeoutError(_), _, _) => (
                StorageErrorKind::Unreachable,
                format!("{op}: no answer from the S3 endpoint {}", self.endpoint),
                "check that the endpoint in [s3] is right and the server is up, then run again (it resumes)".to_string(),
            ),
            (_, "QuotaExceeded", _) => (
                StorageErrorKind::Quota,
                format!("{op}: the bucket's quota is exceeded"),
                "free space in the bucket or ask its administrator to raise the quota, then run again (it resumes)".to_string(),
            ),
            (_, "NoSuchBucket", _) => (
                StorageErrorKind::NotFound,
                format!("{op}: the bucket {} does not exist", self.url.bucket),
                "check the bucket name (`aws s3 ls` lists yours)".to_string(),
            ),
            (_, "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied" | "InvalidToken" | "ExpiredToken", _)
            | (_, _, Some(401 | 403)) => (
                StorageErrorKind::Auth,
                format!("{op}: the S3 service refused the credentials ({})", if code.is_empty() { "403" } else { &code }),
                "check the access key and secret (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, or `profile` in [s3]) and that they may use this bucket".to_string(),
            ),
            (_, "SlowDown", _) | (_, _, Some(503)) => (
                StorageErrorKind::Unreachable,
                format!("{op}: the S3 service asked to slow down (503) and kept asking after the retries"),
                "run again later (it resumes); lower --jobs to send fewer requests at once".to_string(),
            ),
            (_, "NoSuchKey", _) | (_, _, Some(404)) => (
                StorageErrorKind::NotFound,
                format!("{op}: no such object"),
                "the object was removed meanwhile; run again".to_string(),
            ),
            _ => (
                StorageErrorKind::Other,
                format!(
                    "{op}: {}",
                    [code.as_str(), message.as_str()]
                        .iter()
                        .filter(|s| !s.is_empty())
                        .copied()
                        .collect::<Vec<_>>()
                        .join(": ")
                        .chars()
                        .take(300)
                        .collect::<String>()
                        .trim()
                        .to_string()
                        + if code.is_empty() && message.is_empty() { "request failed" } else { "" }
                ),
                "run again; if it persists, check the server's logs".to_string(),
            ),
        };
        Error::Storage {
            location,
            kind,
            reason,
            hint,
        }
    }

    fn check_bucket(&self) -> Result<()> {
        let done = self
            .runtime
            .block_on(self.client.head_bucket().bucket(&self.url.bucket).send());
        match done {
            Ok(_) => Ok(()),
            Err(e) => Err(match self.error("HeadBucket", None, e) {
                Error::Storage {
                    location,
                    kind: StorageErrorKind::NotFound,
                    ..
                } => Error::Storage {
                    location,
                    kind: StorageErrorKind::NotFound,
                    reason: format!("the bucket {} does not exist", self.url.bucket),
                    hint: "check the bucket name (`aws s3 ls` lists yours) or ask the storage administrator to create it".to_string(),
                },
                other => other,
            }),
        }
    }

    /// Refuses, before anything is written, a bucket without Object Lock when WORM is
    /// asked: its objects could not be protected.
    pub fn require_object_lock(&self) -> Result<()> {
        let done = self.runtime.block_on(
            self.client
                .get_object_lock_configuration()
                .bucket(&self.url.bucket)
                .send(),
        );
        let enabled = match done {
            Ok(out) => {
                out.object_lock_configuration()
                    .and_then(|c| c.object_lock_enabled())
                    == Some(&ObjectLockEnabled::Enabled)
            }
            Err(e) if e.code() == Some("ObjectLockConfigurationNotFoundError") => false,
            Err(e) => return Err(self.error("GetObjectLockConfiguration", None, e)),
        };
        if enabled {
            return Ok(());
        }
        Err(Error::Storage {
            location: format!("s3://{}", self.url.bucket),
            kind: StorageErrorKind::NoObjectLock,
            reason: "write protection (WORM) was asked, but the bucket has no Object Lock, so no retention can be set".to_string(),
            hint: "use a bucket created with Object Lock enabled (`aws s3api create-bucket --object-lock-enabled-for-bucket`); nothing was written".to_string(),
        })
    }

    /// Aborts the multipart uploads left under this prefix (by a killed run); returns how
    /// many there were.
    pub fn abort_orphans(&self) -> Result<usize> {
        let uploads = self.multipart_uploads()?;
        for (key, id) in &uploads {
            self.runtime
                .block_on(
                    self.client
                        .abort_multipart_upload()
                        .bucket(&self.url.bucket)
                        .key(key)
                        .upload_id(id)
                        .send(),
                )
                .map_err(|e| self.error("AbortMultipartUpload", Some(Path::new(key)), e))?;
        }
        Ok(uploads.len())
    }

    /// (key, upload id) of the multipart uploads under this prefix.
    pub fn multipart_uploads(&self) -> Result<Vec<(String, String)>> {
        let prefix = self.dir_prefix();
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let page = self
                .runtime
                .block_on(
                    self.client
                        .list_multipart_uploads()
                        .bucket(&self.url.bucket)
                        .prefix(&prefix)
                        .set_key_marker(key_marker.clone())
                        .set_upload_id_marker(id_marker.clone())
                        .send(),
                )
                .map_err(|e| self.error("ListMultipartUploads", None, e))?;
            for u in page.uploads() {
                if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
                    out.push((k.to_string(), id.to_string()));
                }
            }
            if page.is_truncated() != Some(true) {
                return Ok(out);
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
        }
    }

    /// `prefix/` (or nothing at the bucket's root).
    fn dir_prefix(&self) -> String {
        let p = self.url.key(Path::new(""));
        if p.is_empty() {
            p
        } else {
            format!("{p}/")
        }
    }

    /// The retention of one version, as the server reports it.
    fn retention_of(&self, rel: &Path, version: Option<&str>) -> Result<Option<(String, i64)>> {
        let done = self.runtime.block_on(
            self.client
                .get_object_retention()
                .bucket(&self.url.bucket)
                .key(self.key(rel))
                .set_version_id(version.map(str::to_string))
                .send(),
        );
        match done {
            Ok(out) => Ok(out.retention().and_then(|r| {
                Some((
                    r.mode()?.as_str().to_string(),
                    r.retain_until_date()?.secs(),
                ))
            })),
            // No retention on this version: AWS says NoSuchObjectLockConfiguration, Ceph
            // RGW 404 ObjectLockConfigurationNotFoundError.
            Err(e)
                if matches!(
                    e.code(),
                    Some("NoSuchObjectLockConfiguration" | "ObjectLockConfigurationNotFoundError")
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(self.error("GetObjectRetention", Some(rel), e)),
        }
    }

    /// True when the current version of `rel` holds `digest` in its metadata, has `size`
    /// bytes and carries a retention at least as strong as `retention` (the mark that it
    /// was verified and protected by an earlier run).
    pub fn holds_protected(
        &self,
        rel: &Path,
        size: u64,
        digest: Digest,
        retention: Retention,
    ) -> Result<bool> {
        let Some((meta, version, stored)) = self.head(rel)? else {
            return Ok(false);
        };
        if meta.size != size || stored != Some(digest) {
            return Ok(false);
        }
        Ok(self
            .retention_of(rel, version.as_deref())?
            .is_some_and(|(mode, _)| mode == retention.mode.as_str()))
    }

    /// Size, version and stored SHA-256 of the current version of `rel`.
    fn head(&self, rel: &Path) -> Result<Option<Head>> {
        let done = self.runtime.block_on(
            self.client
                .head_object()
                .bucket(&self.url.bucket)
                .key(self.key(rel))
                .send(),
        );
        match done {
            Ok(out) => {
                let meta = object_meta(
                    out.content_length().unwrap_or(0),
                    out.last_modified(),
                    out.e_tag(),
                );
                let stored = out
                    .metadata()
                    .and_then(|m| m.get(SHA256_KEY))
                    .and_then(|h| h.parse().ok());
                Ok(Some((meta, out.version_id().map(str::to_string), stored)))
            }
            Err(e) if e.raw_response().map(HasStatus::status) == Some(404) => Ok(None),
            Err(e) => Err(self.error("HeadObject", Some(rel), e)),
        }
    }

    /// Hashes a version of `rel` as stored; also returns that version's metadata.
    fn hash_stored(&self, rel: &Path, version: Option<&str>) -> Result<(Digest, u64, Meta)> {
        use sha2::Digest as _;
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        let meta = self.get(rel, version, 0, None, &mut |block| {
            hasher.update(block);
            bytes += block.len() as u64;
            Ok(())
        })?;
        Ok((Digest::from_hasher(hasher), bytes, meta))
    }

    /// [`Storage::verify`], returning the metadata of the version read back (its identity
    /// is what a resume journal records).
    pub fn verify_read(&self, written: &Written) -> Result<Meta> {
        let (read, len, meta) = self.hash_stored(&written.rel, written.version.as_deref())?;
        written.compare_read_back(self.display(&written.rel), read, len)?;
        Ok(meta)
    }

    /// Streams the bytes `offset..offset + len` of `rel` (fewer at its end) with one
    /// range GET that asks for nothing else; returns how many there were.
    pub fn read_range(
        &self,
        rel: &Path,
        offset: u64,
        len: u64,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<u64> {
        if len == 0 {
            return Ok(0);
        }
        let mut n = 0u64;
        self.get(rel, None, offset, Some(offset + len), &mut |block| {
            n += block.len() as u64;
            sink(block)
        })?;
        Ok(n)
    }

    /// Starts a multipart upload of `rel` whose digest is not known before its bytes are
    /// (an archive chunk): parts of `part` bytes (at least 16 MiB), each with its
    /// Content-MD5; no SHA-256 in its metadata. Aborted when dropped unfinished.
    pub fn create_multipart(&self, rel: &Path, part: usize) -> Box<dyn Upload + '_> {
        let part = part.max(PART);
        Box::new(self.upload(rel, None, true, part, part))
    }

    /// An upload of `rel`, nothing sent yet.
    fn upload(
        &self,
        rel: &Path,
        expected: Option<Digest>,
        multipart: bool,
        part: usize,
        capacity: usize,
    ) -> S3Upload<'_> {
        S3Upload {
            store: self,
            rel: rel.to_path_buf(),
            key: self.key(rel),
            expected,
            multipart,
            part,
            hasher: Sha256::default(),
            buffer: Vec::with_capacity(capacity),
            upload_id: None,
            parts: Vec::new(),
            in_flight: std::collections::VecDeque::new(),
            bytes: 0,
        }
    }

    /// GETs `rel` (a given version, or the current one) from byte `from` (to byte `end`,
    /// exclusive, when given: a bounded range, so the server sends nothing more); a
    /// stream cut off midway resumes at the byte reached, on the same version.
    fn get(
        &self,
        rel: &Path,
        version: Option<&str>,
        from: u64,
        end: Option<u64>,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<Meta> {
        let key = self.key(rel);
        let mut at = from;
        let mut pinned: Option<String> = version.map(str::to_string);
        let mut resumes = 0;
        loop {
            let mut req = self
                .client
                .get_object()
                .bucket(&self.url.bucket)
                .key(&key)
                .set_version_id(pinned.clone());
            match end {
                Some(end) if at >= end => {
                    return self
                        .stat(rel)?
                        .ok_or_else(|| gone(&format!("s3://{}/{key}", self.url.bucket)))
                }
                Some(end) => req = req.range(format!("bytes={at}-{}", end - 1)),
                None if at > 0 => req = req.range(format!("bytes={at}-")),
                None => {}
            }
            let out = match self.runtime.block_on(req.send()) {
                Ok(out) => out,
                // A range at the very end of the object.
                Err(e) if at > 0 && e.code() == Some("InvalidRange") => {
                    return self
                        .stat(rel)?
                        .ok_or_else(|| gone(&format!("s3://{}/{key}", self.url.bucket)))
                }
                Err(e) => return Err(self.error("GetObject", Some(rel), e)),
            };
            // The object's whole size: from Content-Range (`bytes a-b/size`) on a range.
            let size = out
                .content_range()
                .and_then(|r| r.rsplit('/').next()?.parse().ok())
                .unwrap_or(out.content_length().unwrap_or(0) + at as i64);
            let meta = object_meta(size, out.last_modified(), out.e_tag());
            if pinned.is_none() {
                pinned = out.version_id().map(str::to_string);
            }
            let mut body = out.body;
            let streamed: std::result::Result<(), String> = self.runtime.block_on(async {
                loop {
                    match body.next().await {
                        None => return Ok(()),
                        Some(Ok(bytes)) => {
                            sink(&bytes).map_err(|e| format!("\u{0}{e}"))?;
                            at += bytes.len() as u64;
                        }
                        Some(Err(e)) => return Err(e.to_string()),
                    }
                }
            });
            match streamed {
                Ok(()) => return Ok(meta),
                // The sink's own error (stopped, disk full) ends the read as it is.
                Err(e) if e.starts_with('\u{0}') => {
                    return Err(Error::io(
                        format!("s3://{}/{key}", self.url.bucket),
                        std::io::Error::other(e.trim_start_matches('\u{0}').to_string()),
                    ))
                }
                Err(e) if resumes < 5 && pinned.is_some() => {
                    resumes += 1;
                    let _ = e;
                }
                Err(e) => {
                    return Err(Error::Storage {
                        location: format!("s3://{}/{key}", self.url.bucket),
                        kind: StorageErrorKind::Unreachable,
                        reason: format!("the download broke off at byte {at}: {e}"),
                        hint: "run again (it resumes)".into(),
                    })
                }
            }
        }
    }

    /// Removes every version of every object under this prefix that can be removed
    /// (locked versions stay); for tests and for cleaning up a failed, unprotected upload.
    pub fn remove_all_versions(&self) -> Result<usize> {
        let prefix = self.dir_prefix();
        let mut removed = 0;
        let (mut key_marker, mut version_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let page = self
                .runtime
                .block_on(
                    self.client
                        .list_object_versions()
                        .bucket(&self.url.bucket)
                        .prefix(&prefix)
                        .set_key_marker(key_marker.clone())
                        .set_version_id_marker(version_marker.clone())
                        .send(),
                )
                .map_err(|e| self.error("ListObjectVersions", None, e))?;
            let versions = page
                .versions()
                .iter()
                .filter_map(|v| Some((v.key()?.to_string(), v.version_id().map(str::to_string))))
                .chain(page.delete_markers().iter().filter_map(|v| {
                    Some((v.key()?.to_string(), v.version_id().map(str::to_string)))
                }));
            for (key, version) in versions {
                let done = self.runtime.block_on(
                    self.client
                        .delete_object()
                        .bucket(&self.url.bucket)
                        .key(&key)
                        .set_version_id(version)
                        .send(),
                );
                if done.is_ok() {
                    removed += 1;
                }
            }
            if page.is_truncated() != Some(true) {
                return Ok(removed);
            }
            key_marker = page.next_key_marker().map(str::to_string);
            version_marker = page.next_version_id_marker().map(str::to_string);
        }
    }
}

/// The error of an object that went away while it was read.
fn gone(location: &str) -> Error {
    Error::Storage {
        location: location.to_string(),
        kind: StorageErrorKind::NotFound,
        reason: "the object went away while it was read".into(),
        hint: "run again".into(),
    }
}

/// An object's metadata, version and stored SHA-256 (from HeadObject).
type Head = (Meta, Option<String>, Option<Digest>);

/// The status code of a raw HTTP response, whatever the SDK's response type.
trait HasStatus {
    fn status(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status(&self) -> u16 {
        self.status().as_u16()
    }
}

/// What the engine compares of an object: its size, mtime and an identity from the ETag
/// (in `ino`), which changes when the object is replaced.
fn object_meta(size: i64, modified: Option<&DateTime>, etag: Option<&str>) -> Meta {
    let mtime_ns = modified.map_or(0, |t| {
        t.secs() * 1_000_000_000 + i64::from(t.subsec_nanos())
    });
    let id = etag.map_or(0, |e| {
        let d = Md5::digest(e.as_bytes());
        u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
    });
    let size = u64::try_from(size).unwrap_or(0);
    Meta {
        size,
        mode: 0o100_644,
        mtime_ns,
        atime_ns: mtime_ns,
        ctime_ns: mtime_ns,
        ino: id,
        dev: 0,
        nlink: 1,
        blocks: size.div_ceil(512),
    }
}

impl Storage for S3Store {
    fn display(&self, rel: &Path) -> PathBuf {
        PathBuf::from(format!("s3://{}/{}", self.url.bucket, self.key(rel)))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            rename: false,
            manifest_marks_complete: true,
            symlinks: false,
            hard_links: false,
            holes: false,
        }
    }

    fn list(&self, filter: &Filter) -> Result<Tree> {
        let prefix = self.dir_prefix();
        let mut tree = Tree::default();
        let mut dirs = std::collections::BTreeSet::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .runtime
                .block_on(
                    self.client
                        .list_objects_v2()
                        .bucket(&self.url.bucket)
                        .prefix(&prefix)
                        .set_continuation_token(token.clone())
                        .send(),
                )
                .map_err(|e| self.error("ListObjectsV2", None, e))?;
            for o in page.contents() {
                let Some(key) = o.key() else { continue };
                let Some(rel) = key.strip_prefix(&prefix) else {
                    continue;
                };
                // Folder markers of consoles, and anything that is not a plain path.
                if rel.is_empty()
                    || rel.ends_with('/')
                    || rel
                        .split('/')
                        .any(|p| p.is_empty() || p == "." || p == "..")
                {
                    continue;
                }
                let rel = PathBuf::from(rel);
                let hidden = rel
                    .ancestors()
                    .filter(|a| !a.as_os_str().is_empty())
                    .any(|a| filter.leaves_out(a, a.file_name().unwrap_or_default()));
                if hidden || !filter.takes_file(&rel) {
                    continue;
                }
                let mut parent = rel.parent();
                while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                    dirs.insert(p.to_path_buf());
                    parent = p.parent();
                }
                tree.entries.push(Entry {
                    meta: object_meta(o.size().unwrap_or(0), o.last_modified(), o.e_tag()),
                    rel,
                    kind: Kind::File,
                });
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        tree.entries.extend(dirs.into_iter().map(|rel| Entry {
            rel,
            kind: Kind::Dir,
            meta: Meta {
                mode: 0o040_755,
                ..Meta::default()
            },
        }));
        Ok(tree)
    }

    fn stat(&self, rel: &Path) -> Result<Option<Meta>> {
        Ok(self.head(rel)?.map(|(meta, _, _)| meta))
    }

    fn read(
        &self,
        rel: &Path,
        from: u64,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<Meta> {
        self.get(rel, None, from, None, sink)
    }

    fn place(&self, rel: &Path, opts: &PlaceOptions) -> Result<Box<dyn Placement + '_>> {
        place_s3(self.at(self.url.prefix.join(rel)), opts)
    }

    fn rooted_at(&self, root: &Path) -> Box<dyn Storage> {
        Box::new(self.at(root))
    }

    fn protect_tree(&self, retention: Retention) -> Result<()> {
        self.require_object_lock()?;
        let manifest = self.manifest()?.ok_or_else(|| Error::Invalid {
            what: "S3 prefix",
            value: self.display(Path::new(MANIFEST_NAME)).display().to_string(),
            reason: "it has no manifest, so it is not a complete tree and cannot be protected; write it again".to_string(),
        })?;
        super::protect_listed(self, &manifest, retention).map(|_| ())
    }

    fn read_listed(
        &self,
        rel: &Path,
        listed: &Meta,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<Meta> {
        let got = self.get(rel, None, 0, None, sink)?;
        // Compared: the size and the object's identity (its ETag, in `ino`); the listed
        // mtime is finer than the one a GET reports.
        Ok(Meta {
            size: got.size,
            ino: got.ino,
            ..*listed
        })
    }

    fn create(&self, rel: &Path, size: u64, digest: Digest) -> Result<Box<dyn Upload + '_>> {
        Ok(Box::new(self.upload(
            rel,
            Some(digest),
            size > PART as u64,
            PART,
            PART.min(size as usize + 1),
        )))
    }

    fn verify(&self, written: &Written) -> Result<()> {
        self.verify_read(written).map(|_| ())
    }

    fn commit(&self, _written: &Written) -> Result<()> {
        // Visible since the upload completed; the tree's manifest, written last, is what
        // makes it a dataset.
        Ok(())
    }

    fn protect(&self, written: &Written, retention: Option<Retention>) -> Result<()> {
        let Some(retention) = retention else {
            return Ok(());
        };
        let until = std::time::SystemTime::now() + retention.keep;
        let until = DateTime::from(until);
        let mode = match retention.mode {
            LockMode::Compliance => ObjectLockRetentionMode::Compliance,
            LockMode::Governance => ObjectLockRetentionMode::Governance,
        };
        self.runtime
            .block_on(
                self.client
                    .put_object_retention()
                    .bucket(&self.url.bucket)
                    .key(self.key(&written.rel))
                    .set_version_id(written.version.clone())
                    .retention(
                        ObjectLockRetention::builder()
                            .mode(mode)
                            .retain_until_date(until)
                            .build(),
                    )
                    .send(),
            )
            .map_err(|e| self.error("PutObjectRetention", Some(&written.rel), e))?;
        // Never claimed unless the server says so.
        match self.retention_of(&written.rel, written.version.as_deref())? {
            Some((m, date)) if m == retention.mode.as_str() && date + 86_400 >= until.secs() => {
                Ok(())
            }
            got => Err(Error::Storage {
                location: self.display(&written.rel).display().to_string(),
                kind: StorageErrorKind::NoObjectLock,
                reason: format!(
                    "the retention ({} until {}) was not applied: the server reports {got:?}",
                    retention.mode.as_str(),
                    until
                ),
                hint: "check the bucket's Object Lock settings with the storage administrator"
                    .into(),
            }),
        }
    }

    fn remove(&self, rel: &Path) -> Result<()> {
        self.unlock(rel, None)
    }
}

/// One object being written: a single PUT for a small one, a multipart upload for a big
/// one; aborted when dropped unfinished.
struct S3Upload<'a> {
    store: &'a S3Store,
    rel: PathBuf,
    key: String,
    /// The digest the bytes must have (`None`: known only once they are written).
    expected: Option<Digest>,
    multipart: bool,
    /// Bytes per part.
    part: usize,
    hasher: Sha256,
    buffer: Vec<u8>,
    upload_id: Option<String>,
    parts: Vec<CompletedPart>,
    /// Parts being sent (at most [`PARTS_IN_FLIGHT`]), oldest first.
    in_flight: std::collections::VecDeque<(i32, tokio::task::JoinHandle<PartSent>)>,
    bytes: u64,
}

/// What sending one part gave.
type PartSent = std::result::Result<
    aws_sdk_s3::operation::upload_part::UploadPartOutput,
    SdkError<
        aws_sdk_s3::operation::upload_part::UploadPartError,
        aws_sdk_s3::config::http::HttpResponse,
    >,
>;

fn content_md5(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(bytes))
}

impl S3Upload<'_> {
    fn send_part(&mut self) -> Result<()> {
        let store = self.store;
        if self.upload_id.is_none() {
            let mut req = store
                .client
                .create_multipart_upload()
                .bucket(&store.url.bucket)
                .key(&self.key);
            if let Some(expected) = self.expected {
                req = req.metadata(SHA256_KEY, expected.to_hex());
            }
            let out = store
                .runtime
                .block_on(req.send())
                .map_err(|e| store.error("CreateMultipartUpload", Some(&self.rel), e))?;
            self.upload_id = out.upload_id().map(str::to_string);
        }
        let number = i32::try_from(self.parts.len() + self.in_flight.len() + 1).unwrap_or(i32::MAX);
        let body = std::mem::take(&mut self.buffer);
        let md5 = content_md5(&body);
        let sent = store.runtime.spawn(
            store
                .client
                .upload_part()
                .bucket(&store.url.bucket)
                .key(&self.key)
                .set_upload_id(self.upload_id.clone())
                .part_number(number)
                .content_md5(md5)
                .body(ByteStream::from(body))
                .send(),
        );
        self.in_flight.push_back((number, sent));
        if self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.wait_part()?;
        }
        self.buffer = Vec::with_capacity(self.part);
        Ok(())
    }

    /// Waits for the oldest part in flight and records it.
    fn wait_part(&mut self) -> Result<()> {
        let Some((number, sent)) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let store = self.store;
        let out = match store.runtime.block_on(sent) {
            Ok(done) => done.map_err(|e| store.error("UploadPart", Some(&self.rel), e))?,
            Err(e) => {
                return Err(Error::io(
                    store.display(&self.rel),
                    std::io::Error::other(format!("UploadPart: {e}")),
                ))
            }
        };
        self.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_string))
                .build(),
        );
        Ok(())
    }
}

impl Upload for S3Upload<'_> {
    fn write(&mut self, mut block: &[u8]) -> Result<()> {
        use sha2::Digest as _;
        self.hasher.update(block);
        self.bytes += block.len() as u64;
        if !self.multipart {
            self.buffer.extend_from_slice(block);
            return Ok(());
        }
        while !block.is_empty() {
            let room = self.part - self.buffer.len();
            let n = room.min(block.len());
            self.buffer.extend_from_slice(&block[..n]);
            block = &block[n..];
            if self.buffer.len() == self.part {
                self.send_part()?;
            }
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<Written> {
        use sha2::Digest as _;
        let digest = Digest(self.hasher.clone().finalize().into());
        if self.expected.is_some_and(|e| e != digest) {
            // Dropping `self` aborts the multipart upload.
            return Err(Error::SourceChanged {
                path: self.rel.clone(),
            });
        }
        let store = self.store;
        let version = if !self.multipart {
            let body = std::mem::take(&mut self.buffer);
            let out = store
                .runtime
                .block_on(
                    store
                        .client
                        .put_object()
                        .bucket(&store.url.bucket)
                        .key(&self.key)
                        .content_md5(content_md5(&body))
                        .metadata(SHA256_KEY, digest.to_hex())
                        .body(ByteStream::from(body))
                        .send(),
                )
                .map_err(|e| store.error("PutObject", Some(&self.rel), e))?;
            out.version_id().map(str::to_string)
        } else {
            if !self.buffer.is_empty() || self.parts.len() + self.in_flight.len() == 0 {
                self.send_part()?;
            }
            while !self.in_flight.is_empty() {
                self.wait_part()?;
            }
            let parts = std::mem::take(&mut self.parts);
            let out = store
                .runtime
                .block_on(
                    store
                        .client
                        .complete_multipart_upload()
                        .bucket(&store.url.bucket)
                        .key(&self.key)
                        .set_upload_id(self.upload_id.clone())
                        .multipart_upload(
                            CompletedMultipartUpload::builder()
                                .set_parts(Some(parts))
                                .build(),
                        )
                        .send(),
                )
                .map_err(|e| store.error("CompleteMultipartUpload", Some(&self.rel), e))?;
            self.upload_id = None;
            out.version_id().map(str::to_string)
        };
        Ok(Written {
            rel: self.rel.clone(),
            digest,
            bytes: self.bytes,
            version,
            pending: None,
        })
    }
}

impl Drop for S3Upload<'_> {
    fn drop(&mut self) {
        for (_, sent) in self.in_flight.drain(..) {
            sent.abort();
            let _ = self.store.runtime.block_on(sent);
        }
        if let Some(id) = self.upload_id.take() {
            let store = self.store;
            let _ = store.runtime.block_on(
                store
                    .client
                    .abort_multipart_upload()
                    .bucket(&store.url.bucket)
                    .key(&self.key)
                    .upload_id(id)
                    .send(),
            );
        }
    }
}

/// The multipart uploads left under `url` (tests check that none are).
pub fn orphan_uploads(url: &S3Url, opts: &S3Options) -> Result<Vec<(String, String)>> {
    S3Store::connect(url, opts)?.multipart_uploads()
}
