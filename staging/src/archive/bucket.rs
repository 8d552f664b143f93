//! An archive in an S3 bucket prefix (`archive --to s3://bucket/prefix`): the objects of
//! `<prefix>/<ID>/` through the storage layer's [`S3Store`].
//!
//! S3 has no rename, so the verified-copy contract (docs/ARCHITECTURE.md#the-verified-copy)
//! becomes: a chunk is a multipart upload (Content-MD5 on every part) that
//! [`ChunkWriter::commit`] completes, then reads back with a GET of the version written,
//! hashes and compares, then gives Object Lock retention (read back) when asked; only then
//! does the resume journal count it. A chunk completed but not yet read back when the
//! process dies is visible, but no journal line vouches for it, so the rerun writes it
//! again. The archive exists once `ARCHIVE-MANIFEST.sha256`, written last, is there.
//!
//! The resume journal cannot be appended to on S3: it is a local file in the ledger's
//! folder (`<state>/archive-journals/`), so a killed archive is resumed by the same user.
//! This module must not print, and never holds or shows credentials.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::store::{ChunkStore, ChunkWriter, Stored};
use super::MANIFEST_NAME;
use crate::error::{Error, IoContext, Result, StorageErrorKind};
use crate::hash::Digest;
use crate::ledger::Ledger;
use crate::storage::{
    put_verified, Retention, S3Options, S3Store, S3Url, Storage, Upload, Written,
};
use crate::walk::Meta;
use crate::worm::Protection;

/// S3 allows 10,000 parts per upload: the part size grows with the chunk size.
const MAX_PARTS: u64 = 9_000;

/// An archive under an S3 prefix.
#[derive(Debug)]
pub struct BucketStore {
    s3: S3Store,
    /// The local resume journal.
    journal: PathBuf,
    retention: Option<Retention>,
    part: usize,
}

impl BucketStore {
    /// Connects to the archive at `url` (the archive's own prefix, ending with its id);
    /// `retention` is given to every object written; `chunk_size` sizes the parts.
    pub fn connect(
        url: &S3Url,
        opts: &S3Options,
        ledger: &Ledger,
        retention: Option<Retention>,
        chunk_size: u64,
    ) -> Result<BucketStore> {
        let s3 = S3Store::connect(url, opts)?;
        let journal = ledger
            .root()
            .join("archive-journals")
            .join(super::record_file_name(
                &url.prefix.file_name().unwrap_or_default().to_string_lossy(),
                &url.to_string(),
            ));
        let part = usize::try_from(chunk_size.div_ceil(MAX_PARTS)).unwrap_or(usize::MAX);
        Ok(BucketStore {
            s3,
            journal,
            retention,
            part,
        })
    }
}

fn stored(meta: &Meta) -> Stored {
    Stored {
        bytes: meta.size,
        // The ETag's digest and the time of the version: another upload, even of the same
        // bytes, is another object.
        identity: (meta.ino, meta.mtime_ns),
    }
}

/// A chunk being uploaded.
struct BucketWriter<'a> {
    store: &'a BucketStore,
    upload: Box<dyn Upload + 'a>,
}

impl Write for BucketWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.upload.write(buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ChunkWriter for BucketWriter<'_> {
    fn commit(self: Box<Self>, expected: Digest, len: u64) -> Result<Stored> {
        let BucketWriter { store, upload } = *self;
        let written = upload.finish()?;
        if written.digest != expected || written.bytes != len {
            return Err(Error::ReadBackMismatch {
                path: store.s3.display(&written.rel),
                wrote: expected.to_hex(),
                wrote_len: len,
                read: written.digest.to_hex(),
                read_len: written.bytes,
            });
        }
        let meta = store.s3.verify_read(&written)?;
        store.s3.protect(&written, store.retention)?;
        Ok(stored(&meta))
    }
}

impl ChunkStore for BucketStore {
    fn location(&self) -> String {
        self.s3.url().to_string()
    }

    fn prepare(&self) -> Result<()> {
        if self.retention.is_some() {
            self.s3.require_object_lock()?;
        }
        self.s3.abort_orphans()?;
        let dir = self.journal.parent().expect("the journal has a folder");
        std::fs::create_dir_all(dir).at(dir)
    }

    fn complete(&self) -> Result<bool> {
        Ok(self.s3.stat(Path::new(MANIFEST_NAME))?.is_some() && !self.journal.exists())
    }

    fn stat(&self, name: &str) -> Result<Option<Stored>> {
        Ok(self.s3.stat(Path::new(name))?.as_ref().map(stored))
    }

    fn create(&self, name: &str) -> Result<Box<dyn ChunkWriter + '_>> {
        Ok(Box::new(BucketWriter {
            store: self,
            upload: self.s3.create_multipart(Path::new(name), self.part),
        }))
    }

    fn read_range(
        &self,
        name: &str,
        offset: u64,
        len: u64,
        each: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<u64> {
        self.s3.read_range(Path::new(name), offset, len, each)
    }

    fn put_small(&self, name: &str, bytes: &[u8]) -> Result<Digest> {
        let written: Written = put_verified(&self.s3, Path::new(name), bytes, self.retention)?;
        Ok(written.digest)
    }

    fn get_small(&self, name: &str) -> Result<Vec<u8>> {
        self.s3
            .read_small(Path::new(name))?
            .ok_or_else(|| Error::Storage {
                location: self.s3.display(Path::new(name)).display().to_string(),
                kind: StorageErrorKind::NotFound,
                reason: "no such object".into(),
                hint: "is this an archive written by `hpcstage archive --to s3://...`? name the prefix that holds ARCHIVE-INDEX.tsv".into(),
            })
    }

    fn journal_path(&self) -> PathBuf {
        self.journal.clone()
    }

    fn finish(&self) -> Result<()> {
        match std::fs::remove_file(&self.journal) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&self.journal, e)),
            _ => Ok(()),
        }
    }

    fn retain(&self, _immutable: bool) -> Result<Protection> {
        // No permission bits on S3: every object got its retention (read back) when it
        // was written, which `retention` describes.
        Ok(Protection {
            read_only: false,
            immutable: None,
        })
    }

    fn protect_finished(&self, immutable: bool) -> Result<Option<Protection>> {
        // Nothing to apply after the fact: the objects keep the retention they were
        // written with (the archive's record says which).
        self.retain(immutable).map(Some)
    }

    fn retention(&self) -> Option<String> {
        self.retention.map(|r| {
            format!(
                "Object Lock {} for {} on every object (read back from the server)",
                r.mode.as_str(),
                humantime::format_duration(r.keep)
            )
        })
    }
}
