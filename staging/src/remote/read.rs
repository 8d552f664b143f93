//! Reading a remote tree over SFTP: walking it, its manifest, links, and files streamed
//! block by block (resuming at the byte reached when the connection drops).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use ssh2::{FileStat, FileType, Sftp};

use super::pool::{Fault, Remote, RemoteErrorKind};
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::walk::{Entry, Filter, Gather, Kind, Meta, Tree, MANIFEST_NAME};

/// What SFTP tells of a file, in the engine's terms. SFTP carries no inode, link count,
/// ctime or block count: hard links arrive as separate files and holes as zeros.
pub(crate) fn meta_of(st: &FileStat) -> Meta {
    let secs = |t: Option<u64>| {
        t.map_or(0, |t| {
            i64::try_from(t).unwrap_or(i64::MAX / 2) * 1_000_000_000
        })
    };
    let size = st.size.unwrap_or(0);
    Meta {
        size,
        mode: st.perm.unwrap_or(0o644),
        mtime_ns: secs(st.mtime),
        atime_ns: secs(st.atime),
        ctime_ns: secs(st.mtime),
        ino: 0,
        dev: 0,
        nlink: 1,
        // Never "sparse": we cannot tell.
        blocks: size.div_ceil(512),
    }
}

fn kind_of(st: &FileStat) -> Kind {
    match st.file_type() {
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        FileType::RegularFile => Kind::File,
        _ => Kind::Other,
    }
}

impl Remote {
    /// Walks the remote root like [`crate::walk::walk`]: no links followed, bookkeeping
    /// and temporaries skipped, folders listed in parallel over the pool.
    pub fn walk(&self, filter: &Filter) -> Result<Tree> {
        self.walk_at(self.root(), filter)
    }

    /// [`Remote::walk`] of another folder of the host.
    pub fn walk_at(&self, root: &Path, filter: &Filter) -> Result<Tree> {
        self.check_root(root)?;
        Ok(self.walk_dir(root, Path::new(""), filter))
    }

    /// `Ok` when `root` is a folder of the host (links followed); a missing one is
    /// [`Error::SourceMissing`].
    pub(crate) fn check_root(&self, root: &Path) -> Result<()> {
        let root = root.to_path_buf();
        let st = self.run(&root, |sftp| sftp.stat(&root).map_err(Fault::of));
        match st {
            Ok(st) if st.is_dir() => {}
            Ok(_)
            | Err(Error::Remote {
                kind: RemoteErrorKind::NotFound,
                ..
            }) => {
                return Err(Error::SourceMissing {
                    path: self.display(&root),
                })
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    fn walk_dir(&self, root: &Path, rel_dir: &Path, filter: &Filter) -> Tree {
        let dir = root.join(rel_dir);
        let mut here = Tree::default();
        let listing = match self.run(&dir, |sftp| sftp.readdir(&dir).map_err(Fault::of)) {
            Ok(l) => l,
            Err(e) => {
                here.errors.push(e);
                return here;
            }
        };
        let mut subdirs = Vec::new();
        for (path, st) in listing {
            let Some(name) = path.file_name() else {
                continue;
            };
            let rel = rel_dir.join(name);
            if filter.leaves_out(&rel, name) {
                continue;
            }
            let kind = kind_of(&st);
            if !filter.keeps(kind, &rel) {
                continue;
            }
            if kind == Kind::Dir {
                subdirs.push(rel.clone());
            }
            here.entries.push(Entry {
                rel,
                kind,
                meta: meta_of(&st),
            });
        }
        subdirs
            .into_par_iter()
            .map(|sub| self.walk_dir(root, &sub, filter))
            .reduce(Tree::default, Tree::merge)
            .merge(here)
    }

    /// The whole of a small remote file.
    pub fn read_small(&self, rel: &Path) -> Result<Vec<u8>> {
        self.read_small_at(&self.path(rel))
    }

    /// [`Remote::read_small`] for an absolute remote path.
    pub fn read_small_at(&self, path: &Path) -> Result<Vec<u8>> {
        let path = path.to_path_buf();
        self.run(&path, |sftp| {
            let mut f = sftp.open(&path)?;
            let mut out = Vec::new();
            f.read_to_end(&mut out).map_err(Fault::io)?;
            Ok(out)
        })
    }

    /// The remote root's `MANIFEST.sha256`, when it has one.
    pub fn read_manifest(&self) -> Result<Option<Manifest>> {
        let rel = Path::new(MANIFEST_NAME);
        match self.read_small(rel) {
            Ok(bytes) => Manifest::parse(&bytes, &self.display(&self.path(rel))).map(Some),
            Err(Error::Remote {
                kind: RemoteErrorKind::NotFound,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Where a remote symlink points.
    pub fn read_link(&self, rel: &Path) -> Result<PathBuf> {
        let path = self.path(rel);
        self.run(&path, |sftp| sftp.readlink(&path).map_err(Fault::of))
    }

    /// Streams one remote file into `sink` block by block. A dropped connection is
    /// resumed at the byte reached, on a new connection, as long as the file's size and
    /// mtime did not move. Returns the metadata before and after the read and the bytes
    /// read. An error of `sink` ends the read and comes back as it is.
    ///
    /// `listed` is what the walk saw: it stands for the "before" metadata and the read
    /// stops at its size, which saves two of the six round trips a small file costs
    /// (a change meanwhile still shows in the metadata after the read).
    pub fn stream_file(
        &self,
        rel: &Path,
        listed: Option<Meta>,
        buf: &mut [u8],
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<(Meta, Meta, u64)> {
        let size = listed.map(|m| m.size);
        self.stream_file_at(&self.path(rel), listed, size, 0, buf, sink)
    }

    /// [`Remote::stream_file`] for an absolute remote path, from byte `from`; `size` is
    /// what the file is expected to hold, when known, to size the reads. Returns the bytes
    /// read from `from` on.
    pub fn stream_file_at(
        &self,
        path: &Path,
        listed: Option<Meta>,
        size: Option<u64>,
        from: u64,
        buf: &mut [u8],
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<(Meta, Meta, u64)> {
        let path = path.to_path_buf();
        let mut before = listed;
        let mut offset = from;
        let after = self.run(&path, |sftp: &Sftp| {
            let mut f = sftp.open(&path)?;
            if offset > from || before.is_none() {
                let now = meta_of(&f.stat()?);
                match before {
                    None => before = Some(now),
                    // Resuming: the bytes already taken must still be the file's.
                    Some(b) if !b.unchanged(&now) => {
                        return Err(Fault::Local(Error::SourceChanged {
                            path: self.display(&path),
                        }))
                    }
                    Some(_) => {}
                }
            }
            if offset > 0 {
                if offset > from {
                    self.resumed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                f.seek(SeekFrom::Start(offset)).map_err(Fault::io)?;
            }
            let stop_at = listed.map(|m| m.size);
            while stop_at.is_none_or(|size| offset < size) {
                let want = read_size(buf.len(), size, offset);
                let n = match f.read(&mut buf[..want]) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Fault::io(e)),
                };
                sink(&buf[..n]).map_err(Fault::Local)?;
                offset += n as u64;
            }
            Ok(meta_of(&f.stat()?))
        })?;
        Ok((
            before.expect("set by the first attempt"),
            after,
            offset - from,
        ))
    }
}

/// How much to ask of one read. libssh2 keeps four times the asked size in flight (in
/// requests of 30,000 bytes), whatever the file holds: a 256 KiB buffer on a 16 KiB file
/// costs some 35 requests the server answers with end-of-file. Asking a quarter of what
/// is left (at most the buffer) keeps exactly the file's bytes in flight.
fn read_size(buf_len: usize, size: Option<u64>, offset: u64) -> usize {
    match size {
        Some(size) if size > offset => {
            let left = usize::try_from((size - offset).div_ceil(4)).unwrap_or(usize::MAX);
            left.clamp(1, buf_len)
        }
        _ => buf_len,
    }
}

#[cfg(test)]
mod tests {
    use super::read_size;

    #[test]
    fn reads_ask_for_what_is_left_and_no_more() {
        assert_eq!(read_size(256 << 10, Some(16 << 10), 0), 4 << 10);
        assert_eq!(read_size(256 << 10, Some(16 << 10), (16 << 10) - 3), 1);
        assert_eq!(read_size(256 << 10, Some(1 << 30), 0), 256 << 10);
        // Unknown size, or a file that grew past what was listed: the whole buffer.
        assert_eq!(read_size(256 << 10, None, 0), 256 << 10);
        assert_eq!(read_size(256 << 10, Some(10), 20), 256 << 10);
    }
}
