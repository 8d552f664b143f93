//! Writing objects: a single PUT for a small one, a multipart upload with parts in
//! flight for a big one, Content-MD5 on each and the SHA-256 in the metadata; an upload
//! dropped unfinished is aborted. A file whose SHA-256 had to be learnt before its upload
//! (a multipart upload sends it with its first request) was read once already: that pass
//! also took the MD5 of each part ([`Prehashed`]), so its upload sends the bytes without
//! hashing them again. The server checks each part against the MD5 of the first pass
//! (a file changed in between is refused, `BadDigest`) and the read-back checks the
//! whole object against its SHA-256. The body is sent with an unsigned payload
//! (`x-amz-content-sha256: UNSIGNED-PAYLOAD`): the signed Content-MD5, which the server
//! checks, and the read-back already prove the bytes, so neither side hashes them a third
//! time for the signature.

use std::path::{Path, PathBuf};

use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use base64::Engine as _;
use sha2::Sha256;

use super::md5sum::{md5, Md5};

use super::{part_size, S3Store, PARTS_IN_FLIGHT, SHA256_KEY, SINGLE_PUT_MAX};

/// The smallest part of an archive chunk's upload.
const ARCHIVE_PART: usize = 16 << 20;
use crate::error::{Error, Result};
use crate::hash::Digest;
use crate::storage::{Storage, Upload, Written};

impl S3Store {
    /// An upload of `rel` (`size` bytes) whose SHA-256 is learnt from its bytes, for a
    /// file no manifest lists: possible for a single PUT, whose bytes are all in hand
    /// before it is sent with the digest in its metadata; `None` for a multipart upload,
    /// whose metadata goes with its first request.
    pub fn create_unhashed(&self, rel: &Path, size: u64) -> Option<Box<dyn Upload + '_>> {
        (size <= SINGLE_PUT_MAX).then(|| Box::new(self.sized_upload(rel, None, size)) as _)
    }

    /// An upload of `rel` (`size` bytes) whose SHA-256 (`digest`) a pass over its bytes
    /// took just before: they are sent without being hashed again, each part with the
    /// MD5 of the bytes it holds (taken as it is sent, while the parts before it are on
    /// the way). Nothing here proves that they are the bytes of that pass: the caller
    /// must read the object back and compare it with `digest` ([`Storage::verify`])
    /// before counting it, and tell a mismatch from a file changed in between by hashing
    /// the file again. A byte count other than `size` fails with `SourceChanged` before
    /// the upload completes.
    pub fn create_read_back_checked(
        &self,
        rel: &Path,
        size: u64,
        digest: Digest,
    ) -> Box<dyn Upload + '_> {
        let mut upload = self.sized_upload(rel, Some(digest), size);
        upload.unhashed = Some(size);
        Box::new(upload)
    }

    /// An upload of `rel` whose bytes were hashed before it (`pre`): they are sent as they
    /// come, each part (or the single PUT) with the MD5 `pre` took of it; bytes that
    /// differ from that pass (a file changed in between) fail with `SourceChanged`.
    pub fn create_prehashed(&self, rel: &Path, pre: Prehashed) -> Box<dyn Upload + '_> {
        let mut upload = self.sized_upload(rel, Some(pre.digest), pre.bytes);
        upload.prehashed = Some(pre);
        Box::new(upload)
    }

    /// Starts a multipart upload of `rel` whose digest is not known before its bytes are
    /// (an archive chunk): parts of `part` bytes (at least 16 MiB), each with its
    /// Content-MD5; no SHA-256 in its metadata. Aborted when dropped unfinished.
    pub fn create_multipart(&self, rel: &Path, part: usize) -> Box<dyn Upload + '_> {
        let part = part.max(ARCHIVE_PART);
        Box::new(self.upload(rel, None, true, part, part))
    }

    /// An upload of `rel` (`size` bytes), split as [`Etag::for_size`] splits it.
    pub(super) fn sized_upload(
        &self,
        rel: &Path,
        expected: Option<Digest>,
        size: u64,
    ) -> S3Upload<'_> {
        let part = part_size(size);
        let multipart = size > SINGLE_PUT_MAX;
        let capacity = if multipart {
            part
        } else {
            usize::try_from(size).unwrap_or(part) + 1
        };
        self.upload(rel, expected, multipart, part, capacity)
    }

    /// An upload of `rel`, nothing sent yet.
    pub(super) fn upload(
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
            prehashed: None,
            unhashed: None,
        }
    }
}

/// What one pass over a file's bytes gives its upload: their SHA-256, their length and
/// the MD5 of each part its upload sends (one for a single PUT), as split by
/// [`Etag::for_size`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prehashed {
    pub digest: Digest,
    pub bytes: u64,
    md5s: Vec<[u8; 16]>,
}

impl Prehashed {
    /// From the pass: `digest` of `bytes` bytes, `etag` fed the same bytes.
    pub fn new(digest: Digest, bytes: u64, etag: Etag) -> Prehashed {
        Prehashed {
            digest,
            bytes,
            md5s: etag.into_part_md5s(),
        }
    }

    /// The Content-MD5 of part `number` (from 1), `None` past the last part.
    fn content_md5(&self, number: i32) -> Option<String> {
        let i = usize::try_from(number).ok()?.checked_sub(1)?;
        let md5 = self.md5s.get(i)?;
        Some(base64::engine::general_purpose::STANDARD.encode(md5))
    }

    /// The ETag a server gives the object uploaded from these bytes.
    pub fn etag(&self) -> String {
        etag_of(self.bytes > SINGLE_PUT_MAX, &self.md5s)
    }
}

/// One object being written: a single PUT for a small one, a multipart upload for a big
/// one; aborted when dropped unfinished.
pub(super) struct S3Upload<'a> {
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
    /// The bytes were hashed before: not hashed again, each part sent with its MD5 from
    /// that pass.
    prehashed: Option<Prehashed>,
    /// The bytes are not hashed: `expected` is taken as their digest, to be proven by the
    /// read-back; the byte count they must have.
    unhashed: Option<u64>,
}

/// What sending one part gave.
type PartSent = std::result::Result<
    aws_sdk_s3::operation::upload_part::UploadPartOutput,
    SdkError<
        aws_sdk_s3::operation::upload_part::UploadPartError,
        aws_sdk_s3::config::http::HttpResponse,
    >,
>;

pub(super) fn content_md5(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(md5(bytes))
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
        let md5 = self.prehashed_md5(number)?;
        let request = store
            .client
            .upload_part()
            .bucket(&store.url.bucket)
            .key(&self.key)
            .set_upload_id(self.upload_id.clone())
            .part_number(number);
        // The part's MD5, when not known yet, is taken on a thread of its own: this one
        // goes on reading (and hashing) the next part meanwhile.
        let sent = store.runtime.spawn(async move {
            let (md5, body) = match md5 {
                Some(md5) => (md5, body),
                None => tokio::task::spawn_blocking(move || (content_md5(&body), body))
                    .await
                    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
            };
            request
                .content_md5(md5)
                .body(ByteStream::from(body))
                .customize()
                .disable_payload_signing()
                .send()
                .await
        });
        self.in_flight.push_back((number, sent));
        if self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.wait_part()?;
        }
        self.buffer = Vec::with_capacity(self.part);
        Ok(())
    }

    /// The Content-MD5 of part `number` (from 1) taken by the pass that hashed the bytes
    /// before (a part that pass did not see means the file grew since); `None` when no
    /// pass did: the MD5 is taken of the bytes sent.
    fn prehashed_md5(&self, number: i32) -> Result<Option<String>> {
        match &self.prehashed {
            None => Ok(None),
            Some(pre) => pre
                .content_md5(number)
                .map(Some)
                .ok_or_else(|| self.changed()),
        }
    }

    /// The Content-MD5 of part `number` (from 1) holding `body`.
    fn part_md5(&self, number: i32, body: &[u8]) -> Result<String> {
        Ok(self
            .prehashed_md5(number)?
            .unwrap_or_else(|| content_md5(body)))
    }

    /// The bytes sent are not those hashed before.
    fn changed(&self) -> Error {
        Error::SourceChanged {
            path: self.rel.clone(),
        }
    }

    /// The error of a failed request: a Content-MD5 refused by the server, of bytes
    /// hashed before, means they changed since.
    fn refused<E, R>(&self, op: &str, e: SdkError<E, R>) -> Error
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + super::errors::HasStatus,
    {
        use aws_sdk_s3::error::ProvideErrorMetadata as _;
        if self.prehashed.is_some() && e.code() == Some("BadDigest") {
            return self.changed();
        }
        self.store.error(op, Some(&self.rel), e)
    }

    /// Waits for the oldest part in flight and records it.
    fn wait_part(&mut self) -> Result<()> {
        let Some((number, sent)) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let store = self.store;
        let out = match store.runtime.block_on(sent) {
            Ok(done) => done.map_err(|e| self.refused("UploadPart", e))?,
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
        if self.prehashed.is_none() && self.unhashed.is_none() {
            self.hasher.update(block);
        }
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
        let digest = match &self.prehashed {
            // What was hashed before; the parts' MD5s (checked by the server) and the
            // read-back (against this digest) prove the bytes sent.
            Some(pre) if pre.bytes == self.bytes => pre.digest,
            Some(_) => return Err(self.changed()),
            None => match (self.unhashed, self.expected) {
                // To be proven by the read-back.
                (Some(size), Some(expected)) if size == self.bytes => expected,
                (Some(_), _) => return Err(self.changed()),
                (None, _) => Digest(self.hasher.clone().finalize().into()),
            },
        };
        if self.expected.is_some_and(|e| e != digest) {
            // Dropping `self` aborts the multipart upload.
            return Err(Error::SourceChanged {
                path: self.rel.clone(),
            });
        }
        let store = self.store;
        let version = if !self.multipart {
            let body = std::mem::take(&mut self.buffer);
            let md5 = self.part_md5(1, &body)?;
            let out = store
                .runtime
                .block_on(
                    store
                        .client
                        .put_object()
                        .bucket(&store.url.bucket)
                        .key(&self.key)
                        .content_md5(md5)
                        .metadata(SHA256_KEY, digest.to_hex())
                        .body(ByteStream::from(body))
                        .customize()
                        .disable_payload_signing()
                        .send(),
                )
                .map_err(|e| self.refused("PutObject", e))?;
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

/// The ETag an S3 server gives the object this crate uploads from `size` bytes: the hex
/// MD5 of the bytes for a single PUT, or for a multipart upload the hex MD5 of the parts'
/// MD5s, then `-` and the number of parts (what RGW, MinIO and AWS compute without
/// server-side encryption). Fed the local bytes, it tells whether an object is theirs.
pub struct Etag {
    part: usize,
    multipart: bool,
    current: Md5,
    in_part: usize,
    /// The MD5 of each closed part, one after the other.
    parts: Vec<u8>,
}

impl Etag {
    /// For a file of `size` bytes, split as [`Storage::create`] splits it.
    pub fn for_size(size: u64) -> Etag {
        Etag::with_part(part_size(size), size > SINGLE_PUT_MAX)
    }

    fn with_part(part: usize, multipart: bool) -> Etag {
        Etag {
            part,
            multipart,
            current: Md5::new(),
            in_part: 0,
            parts: Vec::new(),
        }
    }

    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let n = if self.multipart {
                (self.part - self.in_part).min(bytes.len())
            } else {
                bytes.len()
            };
            self.current.update(&bytes[..n]);
            self.in_part += n;
            bytes = &bytes[n..];
            if self.multipart && self.in_part == self.part {
                self.close_part();
            }
        }
    }

    fn close_part(&mut self) {
        let done = std::mem::replace(&mut self.current, Md5::new()).finish();
        self.parts.extend_from_slice(&done);
        self.in_part = 0;
    }

    /// The MD5 of each part (of the whole for a single PUT), the last one closed.
    fn into_part_md5s(mut self) -> Vec<[u8; 16]> {
        if self.in_part > 0 || self.parts.is_empty() {
            self.close_part();
        }
        self.parts
            .chunks_exact(16)
            .map(|md5| md5.try_into().expect("16 bytes"))
            .collect()
    }

    /// The ETag, unquoted.
    pub fn finish(self) -> String {
        let multipart = self.multipart;
        etag_of(multipart, &self.into_part_md5s())
    }
}

/// The ETag of an upload whose parts have the MD5s `md5s` (one for a single PUT).
fn etag_of(multipart: bool, md5s: &[[u8; 16]]) -> String {
    if !multipart {
        return md5s
            .first()
            .map_or_else(String::new, |md5| faster_hex::hex_string(md5));
    }
    format!(
        "{}-{}",
        faster_hex::hex_string(&md5(&md5s.concat())),
        md5s.len()
    )
}

#[cfg(test)]
mod tests {
    use super::Etag;
    use crate::storage::s3::{part_size, MAX_PARTS, PART};

    #[test]
    fn parts_grow_past_ten_thousand_of_the_default_size() {
        assert_eq!(part_size(0), PART);
        assert_eq!(part_size(1 << 30), PART);
        assert_eq!(part_size(PART as u64 * MAX_PARTS), PART);
        // 1 TB: 10,000 parts of whole MiB, none more.
        let size = 1_000_000_000_000u64;
        let part = part_size(size) as u64;
        assert_eq!(part % (1 << 20), 0);
        assert!(size.div_ceil(part) <= MAX_PARTS);
        assert!(size.div_ceil(part - (1 << 20)) > MAX_PARTS);
    }

    fn etag(part: usize, multipart: bool, blocks: &[&[u8]]) -> String {
        let mut e = Etag::with_part(part, multipart);
        for b in blocks {
            e.update(b);
        }
        e.finish()
    }

    #[test]
    fn a_single_put_etag_is_the_md5_and_a_multipart_one_the_md5_of_the_parts_md5s() {
        // `printf abc | md5sum`
        assert_eq!(
            etag(4, false, &[b"ab", b"c"]),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        assert_eq!(etag(4, false, &[]), "d41d8cd98f00b204e9800998ecf8427e");
        // Parts "abcd", "efgh", "ij", however the bytes come:
        // md5 of md5("abcd") || md5("efgh") || md5("ij"), then "-3".
        use md5::{Digest as _, Md5};
        let mut parts = Vec::new();
        for p in [&b"abcd"[..], b"efgh", b"ij"] {
            parts.extend_from_slice(&Md5::digest(p));
        }
        let want = format!("{}-3", faster_hex::hex_string(&Md5::digest(&parts)));
        assert_eq!(etag(4, true, &[b"abcdefghij"]), want);
        assert_eq!(etag(4, true, &[b"a", b"bcdefg", b"hij"]), want);
        // A whole number of parts has no empty last part.
        assert!(etag(4, true, &[b"abcdefgh"]).ends_with("-2"));
    }
}
