//! Reading objects: HEAD, a GET that resumes where a stream broke off (pinned to the
//! version first read), bounded range GETs and the read-back of a written object.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::DateTime;
use aws_sdk_s3::types::Object;
use md5::{Digest as _, Md5};
use sha2::Sha256;

use super::errors::{gone, HasStatus};
use super::{S3Store, SHA256_KEY};
use crate::error::{Error, Result, StorageErrorKind};
use crate::hash::Digest;
use crate::storage::{Storage, Written};
use crate::walk::Meta;

impl S3Store {
    /// Gives `each` every object under this prefix (its path below the prefix, and what
    /// ListObjectsV2 says of it); folder markers and keys that are not plain paths are
    /// left out.
    pub(super) fn each_object(&self, each: &mut dyn FnMut(&str, &Object)) -> Result<()> {
        let prefix = self.dir_prefix();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .runtime
                .block_on(
                    self.client
                        .list_objects_v2()
                        .bucket(&self.url.bucket)
                        .prefix(&prefix)
                        .set_continuation_token(token.take())
                        .send(),
                )
                .map_err(|e| self.error("ListObjectsV2", None, e))?;
            for o in page.contents() {
                let Some(rel) = o.key().and_then(|k| k.strip_prefix(&prefix)) else {
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
                each(rel, o);
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => return Ok(()),
            }
        }
    }

    /// The objects under this prefix with their size and ETag (what the server computed
    /// from the bytes it received), by path: what a rerun of an upload compares with the
    /// local files before it sends them again.
    pub fn etags(&self) -> Result<HashMap<PathBuf, (u64, String)>> {
        let mut out = HashMap::new();
        self.each_object(&mut |rel, o| {
            if let Some(etag) = o.e_tag() {
                let size = u64::try_from(o.size().unwrap_or(0)).unwrap_or(0);
                out.insert(
                    PathBuf::from(rel),
                    (size, etag.trim_matches('"').to_string()),
                );
            }
        })?;
        Ok(out)
    }

    /// Size, version and stored SHA-256 of the current version of `rel`.
    pub(super) fn head(&self, rel: &Path) -> Result<Option<Head>> {
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
                Ok(Some(Head {
                    meta,
                    version: out.version_id().map(str::to_string),
                    stored,
                    etag: out.e_tag().map(|e| e.trim_matches('"').to_string()),
                }))
            }
            Err(e) if e.raw_response().map(HasStatus::status) == Some(404) => Ok(None),
            Err(e) => Err(self.error("HeadObject", Some(rel), e)),
        }
    }

    /// Hashes a version of `rel` as stored (`size` bytes, as far as the caller knows); also
    /// returns that version's metadata.
    pub(super) fn hash_stored(
        &self,
        rel: &Path,
        version: Option<&str>,
        size: u64,
    ) -> Result<(Digest, u64, Meta)> {
        use sha2::Digest as _;
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        let mut sink = |block: &[u8]| {
            hasher.update(block);
            bytes += block.len() as u64;
            Ok(())
        };
        let meta = self.get_sized(rel, version, size, &mut sink)?;
        Ok((Digest::from_hasher(hasher), bytes, meta))
    }

    /// [`Storage::verify`], returning the metadata of the version read back (its identity
    /// is what a resume journal records).
    pub fn verify_read(&self, written: &Written) -> Result<Meta> {
        let (read, len, meta) =
            self.hash_stored(&written.rel, written.version.as_deref(), written.bytes)?;
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

    /// GETs `rel` (a given version, or the current one) from byte `from` (to byte `end`,
    /// exclusive, when given: a bounded range, so the server sends nothing more); a
    /// stream cut off midway resumes at the byte reached, on the same version.
    pub(super) fn get(
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
}

/// What HeadObject says of the current version of an object.
pub(super) struct Head {
    pub(super) meta: Meta,
    pub(super) version: Option<String>,
    /// The SHA-256 in its metadata (`x-amz-meta-sha256`).
    pub(super) stored: Option<Digest>,
    /// Its ETag, unquoted: computed by the server from the bytes it received.
    pub(super) etag: Option<String>,
}

/// What the engine compares of an object: its size, mtime and an identity from the ETag
/// (in `ino`), which changes when the object is replaced.
pub(super) fn object_meta(size: i64, modified: Option<&DateTime>, etag: Option<&str>) -> Meta {
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
