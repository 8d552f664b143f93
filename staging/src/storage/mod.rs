//! One interface for "a place that holds a tree of files": a local folder, a folder on an
//! SSH host or an S3 bucket prefix (see docs/ARCHITECTURE.md#storage).
//!
//! The engine asks a [`Storage`] to list, stat, read (with a byte offset, so an interrupted
//! read resumes), write a file that is not visible under its final name until committed,
//! read it back and compare, commit, protect and remove. What a backend cannot do is said
//! once, in its [`Capabilities`], never discovered by a branch on the backend's kind.
//! This module must not print, and must never hold or show credentials.

pub mod diagnose;
mod local;
mod open;
mod place;
mod s3;
mod sftp;
mod tree;
mod url;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::hash::Digest;
use crate::manifest::Manifest;
use crate::sorted::ManifestFile;
use crate::spilled::{FileSizes, Listing};
use crate::walk::{Filter, Meta, Tree, MANIFEST_NAME};

pub use local::LocalDir;
pub use open::{local_folder, open, NasAccess};
pub use place::{Listed, PlaceOptions, Placed, Placement};
pub use s3::{orphan_uploads, Etag, Prehashed, S3Options, S3Store};
pub use sftp::SftpStore;
pub use tree::{protect_listed, put_tree, PutOptions, PutReport};
pub use url::S3Url;

/// What a backend can and cannot do, said in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Files can be renamed: a written file stays under a temporary name until committed.
    /// Without it (S3), a file is visible once written, and a tree exists only once its
    /// `MANIFEST.sha256` is written, last.
    pub rename: bool,
    /// A tree without its `MANIFEST.sha256` is an incomplete upload, not a dataset.
    pub manifest_marks_complete: bool,
    pub symlinks: bool,
    pub hard_links: bool,
    /// Sparse files keep their holes.
    pub holes: bool,
}

impl Capabilities {
    /// What a run should be told once about what this backend does not keep.
    pub fn limits(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if !self.symlinks {
            out.push("symbolic links are not kept");
        }
        if !self.hard_links {
            out.push("hard links become separate files");
        }
        if !self.holes {
            out.push("sparse files are copied in full");
        }
        out
    }

    /// [`Capabilities::limits`] as the one line a run prints about `store`, if any.
    pub fn limits_note(store: &dyn Storage) -> Option<String> {
        let limits = store.capabilities().limits();
        (!limits.is_empty()).then(|| {
            format!(
                "{}: {}",
                store.display(Path::new("")).display(),
                limits.join("; ")
            )
        })
    }
}

/// How long protected data is kept write-once, and how strictly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Nobody, not even an administrator, can shorten or remove the retention.
    Compliance,
    /// Users with the bypass permission can.
    Governance,
}

impl LockMode {
    /// Reads `COMPLIANCE` or `GOVERNANCE` (any case).
    pub fn parse(text: &str) -> Option<LockMode> {
        match text.to_ascii_uppercase().as_str() {
            "COMPLIANCE" => Some(LockMode::Compliance),
            "GOVERNANCE" => Some(LockMode::Governance),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Compliance => "COMPLIANCE",
            LockMode::Governance => "GOVERNANCE",
        }
    }
}

/// Write protection asked of [`Storage::protect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub mode: LockMode,
    pub keep: Duration,
}

/// A file written but not yet committed under its final name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub rel: PathBuf,
    pub digest: Digest,
    pub bytes: u64,
    /// The S3 version written (objects in a versioned bucket), for retention and read-back.
    pub version: Option<String>,
    /// Where the bytes are until commit (a local temporary file).
    pub(crate) pending: Option<PathBuf>,
}

impl Written {
    /// What a read-back of the written file (at `path`, for the message) gave, compared
    /// with what was written: `ReadBackMismatch` when they differ.
    pub(crate) fn compare_read_back(&self, path: PathBuf, read: Digest, len: u64) -> Result<()> {
        if read != self.digest || len != self.bytes {
            return Err(crate::error::Error::ReadBackMismatch {
                path,
                wrote: self.digest.to_hex(),
                wrote_len: self.bytes,
                read: read.to_hex(),
                read_len: len,
            });
        }
        Ok(())
    }

    /// Where the written bytes are now: the temporary file until commit, else
    /// `committed` (the final name).
    pub(crate) fn stored_at(&self, committed: PathBuf) -> PathBuf {
        self.pending.clone().unwrap_or(committed)
    }
}

/// The bytes an [`Upload`] was given, hashed as they come, and the digest its caller
/// announced for them.
pub(crate) struct UploadHash {
    hasher: sha2::Sha256,
    bytes: u64,
    expected: Digest,
}

impl UploadHash {
    pub(crate) fn new(expected: Digest) -> Self {
        Self {
            hasher: sha2::Sha256::default(),
            bytes: 0,
            expected,
        }
    }

    pub(crate) fn update(&mut self, block: &[u8]) {
        sha2::Digest::update(&mut self.hasher, block);
        self.bytes += block.len() as u64;
    }

    /// The digest and length of the bytes given; `SourceChanged` for `rel` when the
    /// digest is not the announced one (the source changed while it was read).
    pub(crate) fn finish(&mut self, rel: &Path) -> Result<(Digest, u64)> {
        let digest = Digest::from_hasher(std::mem::take(&mut self.hasher));
        if digest != self.expected {
            return Err(Error::SourceChanged {
                path: rel.to_path_buf(),
            });
        }
        Ok((digest, self.bytes))
    }
}

/// A file being written: bytes go in with [`Upload::write`]; [`Upload::finish`] makes them
/// durable (the temporary file flushed, the multipart upload completed). Dropped without
/// `finish`, it leaves nothing behind (the temporary removed, the multipart upload
/// aborted).
pub trait Upload: Send {
    fn write(&mut self, block: &[u8]) -> Result<()>;
    /// Flushes; fails with `SourceChanged` when the bytes do not hash to the digest given
    /// to [`Storage::create`].
    fn finish(self: Box<Self>) -> Result<Written>;
}

/// Many files of a storage read in one stream, a capability a backend may offer
/// ([`Storage::batch_read`]): an SSH host running tar sends a batch of small files through
/// one pipe, sparing the round trips each file costs over SFTP.
pub trait BatchRead: Sync {
    /// The largest file worth streaming: bigger ones are read one by one (and resume
    /// where a dropped connection left them).
    fn max_file_size(&self) -> u64;
    /// How many streams run at once: batches are sized so that each gets several.
    fn streams(&self) -> usize;
    /// Files are about to be streamed: a backend may get its streams ready meanwhile
    /// (connect, start the command on the host), on threads of its own. Called when the
    /// plan holds a first file to copy, and before the listing when the destination is
    /// new; a second call changes nothing.
    fn prepare(&self) {}
    /// Streams `files` (relative paths with their listed metadata) and calls `each`, in
    /// order, with the index in `files` and the bytes of each file delivered: only files
    /// whose name, kind, size and mtime match the listing, each exactly its listed size.
    /// A file not delivered is read by the caller through [`Storage::read_listed`].
    /// `Ok` only when the whole batch can be trusted; after an `Err`, nothing `each` was
    /// given may be used (a file may have changed while it was read) unless its digest is
    /// the one the source manifest lists, and the caller reads the other files of the
    /// batch one by one. An error of `each` stops the stream and comes
    /// back as the `Err`.
    fn read_batch(
        &self,
        files: &[(&Path, &Meta)],
        each: &mut dyn FnMut(usize, &mut dyn std::io::Read) -> Result<()>,
    ) -> Result<()>;
}

/// A place that holds a tree of files. Paths are relative to the place's root.
pub trait Storage: std::fmt::Debug + Send + Sync {
    /// How `rel` is shown in messages (`/nas/x/a.tif`, `s3://bucket/prefix/a.tif`).
    fn display(&self, rel: &Path) -> PathBuf;
    fn capabilities(&self) -> Capabilities;
    /// The whole tree, bookkeeping and temporaries left out, in no particular order.
    fn list(&self, filter: &Filter) -> Result<Tree>;
    /// [`Storage::list`] in path-byte order, never held whole: a backend that lists a
    /// remote tree spills it to disk as it comes ([`Listing`]). The default sorts the
    /// listing in memory.
    fn list_in_order(&self, filter: &Filter) -> Result<Listing> {
        Ok(Listing::of_tree(self.list(filter)?))
    }
    /// `None` when there is nothing at `rel`.
    fn stat(&self, rel: &Path) -> Result<Option<Meta>>;
    /// Streams `rel` from byte `from` to the end into `sink`; returns the file's metadata
    /// as it was read (an object's identity moves when it is replaced).
    fn read(
        &self,
        rel: &Path,
        from: u64,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<Meta>;
    /// Starts writing `rel`, whose bytes must hash to `digest` (known from the source).
    fn create(&self, rel: &Path, size: u64, digest: Digest) -> Result<Box<dyn Upload + '_>>;
    /// Reads a written file back from storage and compares it with what was written.
    fn verify(&self, written: &Written) -> Result<()>;
    /// Gives a verified file its final name (a no-op where writing already did).
    fn commit(&self, written: &Written) -> Result<()>;
    /// Makes a committed file write-once; an error when that cannot be applied.
    fn protect(&self, written: &Written, retention: Option<Retention>) -> Result<()>;
    fn remove(&self, rel: &Path) -> Result<()>;
    /// Starts placing a new tree at `rel` (an ingested dataset) so that it appears
    /// complete or not at all; refused when one is there (see [`Placement`]).
    fn place(&self, rel: &Path, opts: &PlaceOptions) -> Result<Box<dyn Placement + '_>>;

    /// The folder on this machine that holds the tree, when it is one: the copy engine
    /// then reads it on its local fast path (O_DIRECT past the page cache, holes, hard
    /// links by inode, the source's own timestamps) rather than through [`Storage::read`].
    fn local_root(&self) -> Option<&Path> {
        None
    }

    /// Many files in one stream ([`BatchRead`]), where this backend can (and, for this
    /// run, still can) do that.
    fn batch_read(&self) -> Option<&dyn BatchRead> {
        None
    }

    /// Where the symbolic link `rel` points (backends with `symlinks` only).
    fn read_link(&self, rel: &Path) -> Result<PathBuf> {
        Err(crate::error::Error::io(
            self.display(rel),
            std::io::Error::other("this storage holds no symbolic links"),
        ))
    }

    /// [`Storage::read`] from the start of a file its listing described as `listed`; a
    /// backend may spare round trips with it (SFTP stops at the listed size). Returns the
    /// metadata after the read, comparable with `listed` by [`Meta::unchanged`]: a file
    /// replaced or rewritten meanwhile differs.
    fn read_listed(
        &self,
        rel: &Path,
        listed: &Meta,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<Meta> {
        let _ = listed;
        self.read(rel, 0, sink)
    }

    /// What a run should be told at its end about this storage (reconnects), if anything.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }

    /// The same storage, over the same connections, rooted at `root`: a path of the same
    /// kind as the location's (a folder, a path on the host, a key prefix in the bucket).
    fn rooted_at(&self, root: &Path) -> Box<dyn Storage>;

    /// Makes a whole placed tree write-once (a results folder written without
    /// protection, protected by a later `pull --worm`): read-only on a folder, the Object
    /// Lock `retention` on every object of an object store. An error when that cannot be
    /// applied.
    fn protect_tree(&self, retention: Retention) -> Result<()>;

    /// True when a complete tree is at the root: where a tree exists only with its
    /// manifest, that manifest is there; elsewhere anything is.
    fn tree_exists(&self) -> Result<bool> {
        if self.capabilities().manifest_marks_complete {
            return Ok(self.stat(Path::new(MANIFEST_NAME))?.is_some());
        }
        Ok(self.stat(Path::new(""))?.is_some())
    }

    /// An error unless a complete tree is at the root (see [`Storage::tree_exists`]): a
    /// prefix without its manifest is an incomplete upload, a folder that is not there
    /// is missing. What a stage checks before it plans anything.
    fn require_tree(&self) -> Result<()> {
        if self.tree_exists()? {
            return Ok(());
        }
        let location = self.display(Path::new(""));
        Err(if self.capabilities().manifest_marks_complete {
            Error::Incomplete {
                location: location.display().to_string(),
            }
        } else {
            Error::SourceMissing { path: location }
        })
    }

    /// The tree's `MANIFEST.sha256`; `None` when it has none.
    fn manifest(&self) -> Result<Option<Manifest>> {
        let origin = self.display(Path::new(MANIFEST_NAME));
        self.read_small(Path::new(MANIFEST_NAME))?
            .map(|bytes| Manifest::parse(&bytes, &origin))
            .transpose()
    }

    /// The tree's `MANIFEST.sha256` as a checked file on this machine, to be read in path
    /// order without being held ([`ManifestFile`]): a manifest of another machine is
    /// copied to a temporary file first. `None` when the tree has none.
    fn manifest_file(&self) -> Result<Option<FetchedManifest>> {
        let rel = Path::new(MANIFEST_NAME);
        if let Some(root) = self.local_root() {
            return match ManifestFile::open(&root.join(rel)) {
                Ok(file) => Ok(Some(FetchedManifest { file, _copy: None })),
                Err(Error::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {
                    Ok(None)
                }
                Err(e) => Err(e),
            };
        }
        if self.stat(rel)?.is_none() {
            return Ok(None);
        }
        let temp = std::env::temp_dir();
        let copy = tempfile::NamedTempFile::new().map_err(|e| Error::io(&temp, e))?;
        let mut out = std::io::BufWriter::new(copy.as_file());
        self.read(rel, 0, &mut |block| {
            std::io::Write::write_all(&mut out, block).map_err(|e| Error::io(copy.path(), e))
        })?;
        out.into_inner()
            .map_err(|e| Error::io(copy.path(), e.into_error()))?;
        // A line that does not read is named by where the manifest is, not by its copy.
        let file = ManifestFile::open(copy.path()).map_err(|e| match e {
            Error::Manifest { line, reason, .. } => Error::Manifest {
                path: self.display(rel),
                line,
                reason,
            },
            other => other,
        })?;
        Ok(Some(FetchedManifest {
            file,
            _copy: Some(copy),
        }))
    }

    /// Every regular file of the tree with its size (bookkeeping left out, links not
    /// followed) in path-byte order, from one listing spilled to disk
    /// ([`Storage::list_in_order`]); a listing that stopped part way is an error.
    fn file_sizes(&self) -> Result<FileSizes> {
        Ok(Box::new(
            self.list_in_order(&Filter::default())?.file_sizes()?,
        ))
    }

    /// A small file in full, or `None` when it does not exist.
    fn read_small(&self, rel: &Path) -> Result<Option<Vec<u8>>> {
        if self.stat(rel)?.is_none() {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        self.read(rel, 0, &mut |block| {
            bytes.extend_from_slice(block);
            Ok(())
        })?;
        Ok(Some(bytes))
    }
}

/// A tree's manifest on this machine ([`Storage::manifest_file`]); the temporary copy
/// of a remote one lives as long as this.
#[derive(Debug)]
pub struct FetchedManifest {
    pub file: ManifestFile,
    _copy: Option<tempfile::NamedTempFile>,
}

/// Writes `bytes` to `rel` through the whole sequence: write, read back, commit, protect.
pub fn put_verified(
    store: &dyn Storage,
    rel: &Path,
    bytes: &[u8],
    retention: Option<Retention>,
) -> Result<Written> {
    let mut upload = store.create(rel, bytes.len() as u64, Digest::of(bytes))?;
    upload.write(bytes)?;
    let written = upload.finish()?;
    store.verify(&written)?;
    store.commit(&written)?;
    store.protect(&written, retention)?;
    Ok(written)
}
