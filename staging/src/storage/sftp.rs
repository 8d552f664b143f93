//! A folder on an SSH host as a [`Storage`], over the connection pool of `remote::Remote`
//! (reconnects, resumed reads, the SFTP status codes sorted into errors).
//!
//! A written file goes to a `.hpcstage-tmp.*` name next to its final one, is flushed
//! (`fsync@openssh.com` where offered), read back over SFTP and compared, then renamed;
//! protection is `chmod a-w`. What SFTP cannot carry is said in [`Capabilities`]: no
//! inodes (hard links arrive as separate files), no block counts (holes arrive as zeros).
//! The SFTP code itself lives in `remote/`; this file only maps it onto the trait.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use sha2::{Digest as _, Sha256};
use ssh2::{OpenFlags, OpenType, RenameFlags};

use super::place::{place_sftp, PlaceOptions, Placement};
use super::{BatchRead, Capabilities, Retention, Storage, Upload, UploadHash, Written};
use crate::error::{Error, Result};
use crate::hash::{self, Digest};
use crate::remote::{flush_remote, meta_of, Fault, Remote, RemoteErrorKind};
use crate::spilled::{Listing, Spill};
use crate::walk::{Entry, Filter, Meta, Tree, TMP_PREFIX};

/// Files up to this size go through the tar stream ([`BatchRead`]); bigger ones over SFTP,
/// where a dropped connection resumes at the byte reached instead of costing the file
/// again. At 1 MiB the round trips SFTP spends on a file (open, read, stat, close: about
/// a millisecond on a LAN) are under a tenth of the time its bytes take on a 1 Gbit/s link.
const STREAM_MAX_FILE: u64 = 1 << 20;

/// A folder of an SSH host.
#[derive(Debug, Clone)]
pub struct SftpStore {
    remote: Arc<Remote>,
    /// Absolute on the host.
    root: PathBuf,
    /// Set once the host turned out unable to stream through tar: why, for the one note
    /// of the run; no stream is tried after it.
    no_stream: Arc<OnceLock<String>>,
    /// Streams that broke off or could not be trusted (their files were read again over
    /// SFTP), and the first one's reason.
    broken: Arc<Mutex<(u64, String)>>,
    /// Files a trusted stream did not deliver (changed since listed, unreadable there):
    /// each one was read over SFTP.
    unstreamed: Arc<AtomicU64>,
    /// Set once listing through `find` on the host failed: why, for the one note of the
    /// run; trees are listed over SFTP after it.
    no_find: Arc<OnceLock<String>>,
}

impl SftpStore {
    /// The folder the connection is rooted at.
    pub fn new(remote: Arc<Remote>) -> Self {
        let root = remote.root().to_path_buf();
        SftpStore {
            remote,
            root,
            no_stream: Arc::default(),
            broken: Arc::default(),
            unstreamed: Arc::default(),
            no_find: Arc::default(),
        }
    }

    /// Another folder of the same host, over the same connections.
    pub fn at(&self, root: impl Into<PathBuf>) -> Self {
        SftpStore {
            remote: self.remote.clone(),
            root: root.into(),
            no_stream: self.no_stream.clone(),
            broken: self.broken.clone(),
            unstreamed: self.unstreamed.clone(),
            no_find: self.no_find.clone(),
        }
    }

    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    fn path(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    /// `true` when the server says nothing is there.
    fn not_found(e: &Error) -> bool {
        matches!(
            e,
            Error::Remote {
                kind: RemoteErrorKind::NotFound,
                ..
            }
        )
    }

    /// A batch stream that did not deliver, as an error naming the folder.
    fn stream_failed(&self, reason: String) -> Error {
        Error::Remote {
            path: self.remote.display(&self.root),
            kind: RemoteErrorKind::Other,
            message: reason,
        }
    }

    /// Hashes a file of the host as the server returns it.
    fn hash_stored(&self, path: &Path, size: u64) -> Result<(Digest, u64)> {
        let mut hasher = Sha256::new();
        let (_, _, n) = hash::with_buffer(|buf| {
            self.remote
                .stream_file_at(path, None, Some(size), 0, buf, &mut |b| {
                    hasher.update(b);
                    Ok(())
                })
        })?;
        Ok((Digest::from_hasher(hasher), n))
    }
}

impl SftpStore {
    /// Lists the tree through `find` on the host, each entry handed to `each`, where the
    /// host runs commands; `Ok(false)` when it cannot (what `each` was given is then to
    /// be dropped) and the tree is to be walked over SFTP.
    fn find_each(&self, filter: &Filter, each: &mut dyn FnMut(Entry)) -> Result<bool> {
        let commands = self.remote.options().tar.is_some() && self.no_stream.get().is_none();
        if !commands || self.no_find.get().is_some() {
            return Ok(false);
        }
        self.remote.check_root(&self.root)?;
        match self.remote.find_each(&self.root, filter, each) {
            Ok(()) => Ok(true),
            Err((why, unusable)) => {
                if unusable {
                    let _ = self.no_find.set(why);
                }
                Ok(false)
            }
        }
    }
}

impl Storage for SftpStore {
    fn display(&self, rel: &Path) -> PathBuf {
        self.remote.display(&self.path(rel))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            rename: true,
            manifest_marks_complete: false,
            symlinks: true,
            // SFTP carries neither inodes nor link counts, nor block counts.
            hard_links: false,
            holes: false,
        }
    }

    /// In one round trip through `find` where the host runs commands (tar is set and has
    /// not failed as unusable); folder by folder over SFTP otherwise, or when find failed.
    fn list(&self, filter: &Filter) -> Result<Tree> {
        let mut tree = Tree::default();
        if self.find_each(filter, &mut |e| tree.entries.push(e))? {
            return Ok(tree);
        }
        self.remote.walk_at(&self.root, filter)
    }

    /// `find`'s listing spilled to disk as it comes over the channel, then read back in
    /// path order. The walk over SFTP, where find cannot run, is held and sorted.
    fn list_in_order(&self, filter: &Filter) -> Result<Listing> {
        let mut spill = Spill::new();
        if self.find_each(filter, &mut |e| spill.push(e))? {
            return spill.done(Vec::new());
        }
        drop(spill);
        Ok(Listing::of_tree(self.remote.walk_at(&self.root, filter)?))
    }

    fn stat(&self, rel: &Path) -> Result<Option<Meta>> {
        let path = self.path(rel);
        match self
            .remote
            .run(&path, |sftp| sftp.lstat(&path).map_err(Fault::of))
        {
            Ok(st) => Ok(Some(meta_of(&st))),
            Err(e) if Self::not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn read(
        &self,
        rel: &Path,
        from: u64,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<Meta> {
        let (_, after, _) = hash::with_buffer(|buf| {
            self.remote
                .stream_file_at(&self.path(rel), None, None, from, buf, sink)
        })?;
        Ok(after)
    }

    fn read_listed(
        &self,
        rel: &Path,
        listed: &Meta,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<Meta> {
        let (_, after, _) = hash::with_buffer(|buf| {
            self.remote.stream_file_at(
                &self.path(rel),
                Some(*listed),
                Some(listed.size),
                0,
                buf,
                sink,
            )
        })?;
        Ok(after)
    }

    fn batch_read(&self) -> Option<&dyn BatchRead> {
        (self.remote.options().tar.is_some() && self.no_stream.get().is_none())
            .then_some(self as &dyn BatchRead)
    }

    fn read_link(&self, rel: &Path) -> Result<PathBuf> {
        let path = self.path(rel);
        self.remote
            .run(&path, |sftp| sftp.readlink(&path).map_err(Fault::of))
    }

    fn create(&self, rel: &Path, _size: u64, digest: Digest) -> Result<Box<dyn Upload + '_>> {
        let path = self.path(rel);
        let parent = path.parent().unwrap_or(&self.root).to_path_buf();
        self.remote.mkdir_all(&parent)?;
        let tmp = parent.join(format!("{TMP_PREFIX}{}", fastrand::u64(..)));
        let file = self.remote.run(&tmp, |sftp| {
            sftp.open_mode(
                &tmp,
                OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCLUSIVE,
                0o600,
                OpenType::File,
            )
            .map_err(Fault::of)
        })?;
        Ok(Box::new(SftpUpload {
            store: self,
            rel: rel.to_path_buf(),
            tmp,
            file: Some(file),
            hash: UploadHash::new(digest),
        }))
    }

    fn verify(&self, written: &Written) -> Result<()> {
        let path = written.stored_at(self.path(&written.rel));
        let (read, len) = self.hash_stored(&path, written.bytes)?;
        written.compare_read_back(self.remote.display(&path), read, len)
    }

    fn commit(&self, written: &Written) -> Result<()> {
        let Some(tmp) = &written.pending else {
            return Ok(());
        };
        let path = self.path(&written.rel);
        self.remote.chmod(tmp, 0o644)?;
        self.remote.run(&path, |sftp| {
            sftp.rename(
                tmp,
                &path,
                Some(RenameFlags::OVERWRITE | RenameFlags::ATOMIC | RenameFlags::NATIVE),
            )
            .map_err(Fault::of)
        })
    }

    fn protect(&self, written: &Written, _retention: Option<Retention>) -> Result<()> {
        self.remote.chmod(&self.path(&written.rel), 0o444)
    }

    fn remove(&self, rel: &Path) -> Result<()> {
        let path = self.path(rel);
        self.remote
            .run(&path, |sftp| sftp.unlink(&path).map_err(Fault::of))
    }

    fn rooted_at(&self, root: &Path) -> Box<dyn Storage> {
        Box::new(self.at(root))
    }

    fn protect_tree(&self, _retention: Retention) -> Result<()> {
        self.remote.protect(&self.root).map(|_| ())
    }

    fn place(&self, rel: &Path, opts: &PlaceOptions) -> Result<Box<dyn Placement + '_>> {
        place_sftp(&self.remote, &self.path(rel), opts)
    }

    fn notes(&self) -> Vec<String> {
        let no_stream = self.no_stream.get().map(|why| {
            format!(
                "{}: small files were read over SFTP, one by one: the host could not stream them through tar ({why}); install GNU tar 1.29 or later there, or set [ssh] tar to its path",
                self.remote.spec().authority()
            )
        });
        let no_find = self.no_find.get().map(|why| {
            format!(
                "{}: the tree was listed over SFTP, folder by folder: {why}; install GNU find there for a listing in one round trip",
                self.remote.spec().authority()
            )
        });
        let broken = {
            let (count, first) = &*self.broken.lock().expect("stream failures lock");
            (*count > 0).then(|| {
                format!(
                    "{}: {count} tar stream(s) of small files broke off or could not be trusted (the first: {first}); their files were read again over SFTP",
                    self.remote.spec().authority()
                )
            })
        };
        let unstreamed = match self.unstreamed.load(Ordering::Relaxed) {
            0 => None,
            n => Some(format!(
                "{}: {n} small file(s) were not in their tar stream as listed (changed since the listing, or unreadable there) and were read over SFTP",
                self.remote.spec().authority()
            )),
        };
        self.remote
            .reconnect_note()
            .into_iter()
            .chain(no_stream)
            .chain(no_find)
            .chain(broken)
            .chain(unstreamed)
            .collect()
    }
}

impl BatchRead for SftpStore {
    fn max_file_size(&self) -> u64 {
        STREAM_MAX_FILE
    }

    fn streams(&self) -> usize {
        self.remote.options().sessions
    }

    fn prepare(&self) {
        if let Some(tar) = self.remote.options().tar.as_deref() {
            Remote::prepare_tar_stream(&self.remote, tar, &self.root);
        }
    }

    fn read_batch(
        &self,
        files: &[(&Path, &Meta)],
        each: &mut dyn FnMut(usize, &mut dyn std::io::Read) -> Result<()>,
    ) -> Result<()> {
        let Some(tar) = self.remote.options().tar.as_deref() else {
            return Err(self.stream_failed("no tar command is configured".into()));
        };
        let failure = match self.remote.tar_stream(tar, &self.root, files, each) {
            Ok(delivered) => {
                let missed = (files.len() - delivered) as u64;
                self.unstreamed.fetch_add(missed, Ordering::Relaxed);
                return Ok(());
            }
            Err(f) => f,
        };
        if let Some(e) = failure.local {
            return Err(e);
        }
        if failure.unusable {
            let _ = self.no_stream.set(failure.reason.clone());
        } else {
            let mut broken = self.broken.lock().expect("stream failures lock");
            if broken.0 == 0 {
                broken.1.clone_from(&failure.reason);
            }
            broken.0 += 1;
        }
        Err(self.stream_failed(failure.reason))
    }
}

/// A file being written to its temporary name on the host. A lost connection fails it
/// (the bytes already sent are gone with the stream that carried them); the caller's
/// rerun writes it again.
struct SftpUpload<'a> {
    store: &'a SftpStore,
    rel: PathBuf,
    tmp: PathBuf,
    file: Option<ssh2::File>,
    hash: UploadHash,
}

impl SftpUpload<'_> {
    fn failed(&self, reason: impl std::fmt::Display) -> Error {
        Error::Remote {
            path: self.store.remote.display(&self.tmp),
            kind: RemoteErrorKind::Other,
            message: reason.to_string(),
        }
    }
}

impl Upload for SftpUpload<'_> {
    fn write(&mut self, block: &[u8]) -> Result<()> {
        self.hash.update(block);
        let file = self.file.as_mut().expect("open until finish");
        let written = file.write_all(block);
        written.map_err(|e| self.failed(e))
    }

    fn finish(mut self: Box<Self>) -> Result<Written> {
        let (digest, bytes) = self.hash.finish(&self.rel)?;
        let mut file = self.file.take().expect("open until finish");
        let flushed = flush_remote(&mut file).and_then(|()| file.close().map_err(Fault::of));
        if let Err(fault) = flushed {
            let reason = match fault {
                Fault::Server(_, m) | Fault::Connection(m) => m,
                Fault::Local(e) => e.to_string(),
            };
            return Err(self.failed(reason));
        }
        let pending = std::mem::take(&mut self.tmp);
        Ok(Written {
            rel: std::mem::take(&mut self.rel),
            digest,
            bytes,
            version: None,
            pending: Some(pending),
        })
    }
}

impl Drop for SftpUpload<'_> {
    /// An upload dropped unfinished leaves no temporary behind (best effort: the next
    /// run's sweep removes what a lost connection kept).
    fn drop(&mut self) {
        if self.tmp.as_os_str().is_empty() {
            return;
        }
        drop(self.file.take());
        let tmp = self.tmp.clone();
        let _ = self
            .store
            .remote
            .run(&tmp, |sftp| sftp.unlink(&tmp).map_err(Fault::of));
    }
}
