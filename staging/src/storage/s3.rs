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
//!
//! This file holds the connection and the [`Storage`] face; the work is split by role:
//! `put` (uploads), `get` (reads, the read-back), `versions` (retention, versions,
//! multipart uploads left behind), `lock` (the ingest lock object), `errors` (what a
//! failed request tells the user).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;

use super::place::{place_s3, PlaceOptions, Placement};
use super::{Capabilities, LockMode, Retention, S3Url, Storage, Upload, Written};
use crate::error::{Error, Result};
use crate::hash::Digest;
use crate::spilled::{Listing, Spill};
use crate::walk::{Entry, Filter, Kind, Meta, Tree, MANIFEST_NAME};

mod errors;
mod get;
mod lock;
mod md5sum;
mod put;
mod ranges;
mod versions;

use get::object_meta;
pub use put::{Etag, Prehashed};

/// Parts of a multipart upload (S3 allows 5 MiB to 5 GiB, and 10,000 parts); an object
/// of more than 10,000 of them has bigger parts ([`part_size`]). 8 MiB parts measured no
/// faster on RGW (bench/run.sh, 10).
const PART: usize = 16 << 20;
/// Objects up to this size are sent in one PUT, bigger ones in a multipart upload.
const SINGLE_PUT_MAX: u64 = PART as u64;
/// Parts of one multipart upload at most (S3's limit).
const MAX_PARTS: u64 = 10_000;
/// Parts of one upload sent at once.
const PARTS_IN_FLIGHT: usize = 4;
/// The part size of a multipart upload of `size` bytes: [`PART`], or the smallest whole
/// number of MiB that keeps it within [`MAX_PARTS`] parts.
fn part_size(size: u64) -> usize {
    let needed = size.div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20;
    usize::try_from(needed).unwrap_or(usize::MAX).max(PART)
}

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
            if plain_http(opts.endpoint.as_deref()) {
                // No TLS to set up: the default client would read every system root
                // certificate first (20 to 60 ms of each command here).
                loader = loader.http_client(
                    aws_smithy_http_client::hyper_014::HyperClientBuilder::new()
                        .build(hyper::client::HttpConnector::new()),
                );
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

    /// `prefix/` (or nothing at the bucket's root).
    fn dir_prefix(&self) -> String {
        let p = self.url.key(Path::new(""));
        if p.is_empty() {
            p
        } else {
            format!("{p}/")
        }
    }
}

impl S3Store {
    /// Every object the filter takes, as a file, and then the folders their keys imply,
    /// each handed to `each` as the listing pages come.
    fn list_each(&self, filter: &Filter, each: &mut dyn FnMut(Entry)) -> Result<()> {
        let mut dirs = std::collections::BTreeSet::new();
        self.each_object(&mut |rel, o| {
            let rel = PathBuf::from(rel);
            let hidden = rel
                .ancestors()
                .filter(|a| !a.as_os_str().is_empty())
                .any(|a| filter.leaves_out(a, a.file_name().unwrap_or_default()));
            if hidden || !filter.takes_file(&rel) {
                return;
            }
            let mut parent = rel.parent();
            while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                if !dirs.insert(p.to_path_buf()) {
                    break;
                }
                parent = p.parent();
            }
            each(Entry {
                meta: object_meta(o.size().unwrap_or(0), o.last_modified(), o.e_tag()),
                rel,
                kind: Kind::File,
            });
        })?;
        for rel in dirs {
            each(Entry {
                rel,
                kind: Kind::Dir,
                meta: Meta {
                    mode: 0o040_755,
                    ..Meta::default()
                },
            });
        }
        Ok(())
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
        let mut tree = Tree::default();
        self.list_each(filter, &mut |e| tree.entries.push(e))?;
        Ok(tree)
    }

    /// The objects spilled to disk page by page as they are listed, then read back in
    /// path order.
    fn list_in_order(&self, filter: &Filter) -> Result<Listing> {
        let mut spill = Spill::new();
        self.list_each(filter, &mut |e| spill.push(e))?;
        spill.done(Vec::new())
    }

    fn stat(&self, rel: &Path) -> Result<Option<Meta>> {
        Ok(self.head(rel)?.map(|h| h.meta))
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
        // One stream: range GETs on the way at once (as the read-back of an upload takes
        // them, `ranges`) measured no faster for a stage of 2 x 128 MiB on RGW (median
        // 1.20 s against 1.22 s, rclone 1.18 s), where writing, flushing and reading back
        // the local copy take their share, and would hold each range in memory.
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
        Ok(Box::new(self.sized_upload(rel, Some(digest), size)))
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
        match retention {
            Some(retention) => self.set_retention(written, retention),
            None => Ok(()),
        }
    }

    fn remove(&self, rel: &Path) -> Result<()> {
        self.unlock(rel, None)
    }
}

/// True when requests go to a plain `http://` endpoint: `configured`, else the one the
/// SDK takes from the environment (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`).
fn plain_http(configured: Option<&str>) -> bool {
    let from_env = || {
        ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    };
    configured
        .map(str::to_string)
        .or_else(from_env)
        .is_some_and(|e| e.starts_with("http://"))
}

/// The multipart uploads left under `url` (tests check that none are).
pub fn orphan_uploads(url: &S3Url, opts: &S3Options) -> Result<Vec<(String, String)>> {
    S3Store::connect(url, opts)?.multipart_uploads()
}
