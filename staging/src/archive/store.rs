//! Where chunks go: one small interface ([`ChunkStore`]) with two backends, a folder
//! ([`FolderStore`]: a tape staging area, a mounted LTFS volume) and an S3 bucket prefix
//! ([`super::bucket::BucketStore`]: `create` is a multipart upload that `commit` completes
//! and reads back, `read_range` a range GET, retention Object Lock on every object).
//! The archive code above never asks which backend it has.
//!
//! A folder keeps the verified-copy contract (docs/ARCHITECTURE.md#the-verified-copy): a
//! chunk is written under a temporary name, flushed, read back from storage past the page
//! cache (`O_DIRECT`, or buffered after dropping its clean pages where the filesystem
//! refuses direct I/O) and compared, and only then renamed into place.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::direct::{self, Aligned, ALIGN};
use crate::error::{Error, IoContext, Result};
use crate::hash::{self, Digest};
use crate::walk::{STATE_DIR, TMP_PREFIX};
use crate::worm::Protection;

/// What a store knows of an object under its final name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stored {
    pub bytes: u64,
    /// Identity of the stored object (inode and mtime on a folder): a journal entry holds
    /// only while it is the same object.
    pub identity: (u64, i64),
}

/// A chunk being written: invisible under its name until [`ChunkWriter::commit`].
pub trait ChunkWriter: Write + Send {
    /// Makes the bytes durable, reads them back from storage, compares them with
    /// `expected` (digest and length) and only then puts the object under its name.
    fn commit(self: Box<Self>, expected: Digest, len: u64) -> Result<Stored>;
}

/// A place that holds an archive's objects (chunks, index, manifest, README).
pub trait ChunkStore: Send + Sync {
    /// Where it is, for messages and records (a path, or a URL).
    fn location(&self) -> String;
    /// Gets ready to write: refuses what cannot be written as asked (a bucket without
    /// Object Lock when retention is asked) before anything is, and clears what a killed
    /// run left (temporaries, multipart uploads).
    fn prepare(&self) -> Result<()>;
    /// True when the archive here was finished (its manifest written, its resume journal
    /// gone).
    fn complete(&self) -> Result<bool>;
    /// The object `name`, if present under its final name.
    fn stat(&self, name: &str) -> Result<Option<Stored>>;
    /// Starts writing the object `name`.
    fn create(&self, name: &str) -> Result<Box<dyn ChunkWriter + '_>>;
    /// Calls `each` with the bytes `offset..offset + len` of `name` (fewer at its end),
    /// read from storage, in order, reading nothing else (a seek, a range GET); returns
    /// how many there were.
    fn read_range(
        &self,
        name: &str,
        offset: u64,
        len: u64,
        each: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<u64>;
    /// Writes a small object, verified as a chunk is; returns its digest.
    fn put_small(&self, name: &str, bytes: &[u8]) -> Result<Digest>;
    /// Reads a small object whole.
    fn get_small(&self, name: &str) -> Result<Vec<u8>>;
    /// The local file that holds the resume journal (a bucket's is in the ledger's
    /// folder: an S3 object cannot be appended to).
    fn journal_path(&self) -> PathBuf;
    /// The resume journal (empty when there is none).
    fn journal(&self) -> Result<Vec<u8>> {
        let path = self.journal_path();
        match std::fs::read(&path) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io(path, e)),
        }
    }
    /// Appends one line to the resume journal, durably.
    fn append_journal(&self, line: &[u8]) -> Result<()> {
        let path = self.journal_path();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .at(&path)?;
        f.write_all(line).at(&path)?;
        f.sync_data().at(path)
    }
    /// Removes what only a write in progress needs (journal, lock, temporaries), once the
    /// archive is complete.
    fn finish(&self) -> Result<()>;
    /// Write protection: read-only, and the immutable flag when asked for and allowed
    /// (a folder); what was applied to every object as it was written (a bucket).
    fn retain(&self, immutable: bool) -> Result<Protection>;
    /// The protection of a finished archive found unprotected (killed between its last
    /// write and its protection), applied now; `None` when it is protected.
    fn protect_finished(&self, immutable: bool) -> Result<Option<Protection>>;
    /// The Object Lock retention given to every object, for the record (`None`: none).
    fn retention(&self) -> Option<String> {
        None
    }
}

/// An archive in a local (or mounted) folder.
#[derive(Debug, Clone)]
pub struct FolderStore {
    dir: PathBuf,
}

impl FolderStore {
    /// The archive folder `dir` (created by [`FolderStore::prepare`]).
    pub fn new(dir: &Path) -> Self {
        FolderStore {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

struct FolderWriter {
    out: BufWriter<File>,
    tmp: tempfile::TempPath,
    dest: PathBuf,
}

impl Write for FolderWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

impl ChunkWriter for FolderWriter {
    fn commit(self: Box<Self>, expected: Digest, len: u64) -> Result<Stored> {
        let FolderWriter { out, tmp, dest } = *self;
        let file = out
            .into_inner()
            .map_err(|e| Error::io(tmp.to_path_buf(), e.into_error()))?;
        file.sync_all().at(tmp.to_path_buf())?;
        drop(file);
        let (read, read_len) = hash::hash_from_storage(&tmp)?;
        if read != expected || read_len != len {
            return Err(Error::ReadBackMismatch {
                path: dest,
                wrote: expected.to_hex(),
                wrote_len: len,
                read: read.to_hex(),
                read_len,
            });
        }
        tmp.persist(&dest).map_err(|e| Error::io(&dest, e.error))?;
        sync_dir(dest.parent().unwrap_or(Path::new(".")));
        let meta = std::fs::metadata(&dest).at(&dest)?;
        Ok(stored(&meta))
    }
}

fn stored(meta: &std::fs::Metadata) -> Stored {
    Stored {
        bytes: meta.len(),
        identity: (meta.ino(), meta.mtime() * 1_000_000_000 + meta.mtime_nsec()),
    }
}

/// Makes a rename in `dir` durable (best effort: some filesystems refuse fsync on a folder).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl ChunkStore for FolderStore {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    /// Creates the folder and its state folder, and removes temporaries a killed run left.
    fn prepare(&self) -> Result<()> {
        let state = self.dir.join(STATE_DIR);
        std::fs::create_dir_all(&state).at(&state)?;
        for e in std::fs::read_dir(&self.dir).at(&self.dir)?.flatten() {
            if crate::walk::is_temporary(&e.file_name()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    fn complete(&self) -> Result<bool> {
        Ok(self.dir.join(super::MANIFEST_NAME).is_file() && !self.dir.join(STATE_DIR).exists())
    }

    fn stat(&self, name: &str) -> Result<Option<Stored>> {
        let path = self.dir.join(name);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(stored(&m))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn create(&self, name: &str) -> Result<Box<dyn ChunkWriter + '_>> {
        let tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempfile_in(&self.dir)
            .at(&self.dir)?;
        let (file, tmp) = tmp.into_parts();
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o644);
        file.set_permissions(mode).at(tmp.to_path_buf())?;
        Ok(Box::new(FolderWriter {
            out: BufWriter::with_capacity(4 << 20, file),
            tmp,
            dest: self.dir.join(name),
        }))
    }

    fn read_range(
        &self,
        name: &str,
        offset: u64,
        len: u64,
        each: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<u64> {
        let path = self.dir.join(name);
        read_range(&path, offset, len, each)
    }

    fn put_small(&self, name: &str, bytes: &[u8]) -> Result<Digest> {
        crate::manifest::write_verified(&self.dir.join(name), bytes)
    }

    fn get_small(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.dir.join(name);
        std::fs::read(&path).at(path)
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.join(STATE_DIR).join("archive-journal")
    }

    fn finish(&self) -> Result<()> {
        let state = self.dir.join(STATE_DIR);
        match std::fs::remove_dir_all(&state) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(state, e)),
            _ => {
                sync_dir(&self.dir);
                Ok(())
            }
        }
    }

    fn retain(&self, immutable: bool) -> Result<Protection> {
        crate::worm::protect(&self.dir, immutable)
    }

    fn protect_finished(&self, immutable: bool) -> Result<Option<Protection>> {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&self.dir)
            .at(&self.dir)?
            .permissions()
            .mode();
        (mode & 0o222 != 0)
            .then(|| self.retain(immutable))
            .transpose()
    }
}

/// Reads `offset..offset + len` of the file at `path` from storage: with `O_DIRECT` in
/// aligned blocks covering the range (no read-ahead past it, no page cache), else
/// buffered after dropping the file's clean cached pages.
pub fn read_range(
    path: &Path,
    offset: u64,
    len: u64,
    each: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = Aligned::new();
    let block = direct::BLOCK as u64;
    let align = ALIGN as u64;
    let end = offset.saturating_add(len);
    let mut done = 0u64;
    if let Ok(file) = direct::open_read(path) {
        hash::drop_cache(&file);
        let mut pos = offset / align * align;
        let mut ok = true;
        while pos < end {
            let want = ((end - pos).min(block).div_ceil(align) * align) as usize;
            let n = match read_at_full(&file, &mut buf.buf()[..want], pos) {
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) && done == 0 => {
                    ok = false;
                    break;
                }
                Err(e) => return Err(Error::io(path, e)),
            };
            let skip = offset.saturating_sub(pos) as usize;
            let upto = ((end - pos) as usize).min(n);
            if skip < upto {
                each(&buf.data(n)[skip..upto])?;
                done += (upto - skip) as u64;
            }
            if n < want {
                break; // the file's end
            }
            pos += n as u64;
        }
        if ok {
            return Ok(done);
        }
    }
    // Buffered, after dropping the clean cached pages: what follows comes from storage.
    let file = File::open(path).at(path)?;
    hash::drop_cache(&file);
    let mut pos = offset;
    while pos < end {
        let want = (end - pos).min(block) as usize;
        let n = file.read_at(&mut buf.buf()[..want], pos).at(path)?;
        if n == 0 {
            break;
        }
        each(buf.data(n))?;
        pos += n as u64;
        done += n as u64;
    }
    Ok(done)
}

fn read_at_full(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], at + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
