//! A local folder as a [`Storage`]: a written file stays under a temporary name
//! (`.hpcstage-tmp.*` next to its final one) until it was flushed, read back and renamed.
//!
//! As a copy source it says where it is ([`Storage::local_root`]): the bulk engine in
//! `copy` reads it on its local fast path (O_DIRECT, holes, hard links by inode) rather
//! than file by file through [`Storage::read`].

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::place::{place_local, PlaceOptions, Placement};
use super::{Capabilities, Retention, Storage, Upload, UploadHash, Written};
use crate::error::{Error, IoContext, Result};
use crate::hash::{self, Digest};
use crate::walk::{self, Filter, Meta, Tree, TMP_PREFIX};

/// A folder on this machine.
#[derive(Debug, Clone)]
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalDir { root: root.into() }
    }
}

impl Storage for LocalDir {
    fn display(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            rename: true,
            manifest_marks_complete: false,
            symlinks: true,
            hard_links: true,
            holes: true,
        }
    }

    fn list(&self, filter: &Filter) -> Result<Tree> {
        walk::walk(&self.root, filter)
    }

    fn stat(&self, rel: &Path) -> Result<Option<Meta>> {
        let path = self.root.join(rel);
        match std::fs::symlink_metadata(&path) {
            Ok(m) => Ok(Some(Meta::from_std(&m))),
            // Nothing there, also when a folder on the way is a file.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn read(
        &self,
        rel: &Path,
        from: u64,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<Meta> {
        let path = self.root.join(rel);
        let mut file = File::open(&path).at(&path)?;
        let meta = Meta::from_std(&file.metadata().at(&path)?);
        file.seek(SeekFrom::Start(from)).at(&path)?;
        hash::for_each_block(&mut file, &path, sink)?;
        Ok(meta)
    }

    fn create(&self, rel: &Path, _size: u64, digest: Digest) -> Result<Box<dyn Upload + '_>> {
        let path = self.root.join(rel);
        let parent = path.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&parent).at(&parent)?;
        let tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .permissions(std::fs::Permissions::from_mode(0o600))
            .tempfile_in(&parent)
            .at(&parent)?;
        let (file, tmp) = tmp.into_parts();
        Ok(Box::new(LocalUpload {
            rel: rel.to_path_buf(),
            file,
            tmp,
            hash: UploadHash::new(digest),
        }))
    }

    fn verify(&self, written: &Written) -> Result<()> {
        let path = written.stored_at(self.root.join(&written.rel));
        if let Ok(f) = File::open(&path) {
            hash::drop_cache(&f);
        }
        let (read, len) = hash::hash_file(&path)?;
        written.compare_read_back(path, read, len)
    }

    fn commit(&self, written: &Written) -> Result<()> {
        let path = self.root.join(&written.rel);
        if let Some(tmp) = &written.pending {
            std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o644)).at(tmp)?;
            std::fs::rename(tmp, &path).at(&path)?;
        }
        Ok(())
    }

    fn protect(&self, written: &Written, _retention: Option<Retention>) -> Result<()> {
        let path = self.root.join(&written.rel);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).at(&path)
    }

    fn remove(&self, rel: &Path) -> Result<()> {
        let path = self.root.join(rel);
        std::fs::remove_file(&path).at(&path)
    }

    fn rooted_at(&self, root: &Path) -> Box<dyn Storage> {
        Box::new(LocalDir::new(root))
    }

    fn protect_tree(&self, _retention: Retention) -> Result<()> {
        crate::worm::protect(&self.root, false).map(|_| ())
    }

    fn place(&self, rel: &Path, opts: &PlaceOptions) -> Result<Box<dyn Placement + '_>> {
        place_local(&self.root.join(rel), opts)
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }

    fn read_link(&self, rel: &Path) -> Result<PathBuf> {
        let path = self.root.join(rel);
        std::fs::read_link(&path).at(&path)
    }
}

struct LocalUpload {
    rel: PathBuf,
    file: File,
    tmp: tempfile::TempPath,
    hash: UploadHash,
}

impl Upload for LocalUpload {
    fn write(&mut self, block: &[u8]) -> Result<()> {
        self.hash.update(block);
        self.file.write_all(block).at(&*self.tmp)
    }

    fn finish(self: Box<Self>) -> Result<Written> {
        let mut this = *self;
        let (digest, bytes) = this.hash.finish(&this.rel)?;
        this.file.sync_all().at(&*this.tmp)?;
        // Kept under its temporary name until commit renames it; one whose read-back
        // failed stays a `.hpcstage-tmp.*` file, which walks skip and the next run sweeps.
        let pending = this
            .tmp
            .keep()
            .map_err(|e| Error::io(e.path.to_path_buf(), e.error))?;
        Ok(Written {
            rel: this.rel,
            digest,
            bytes,
            version: None,
            pending: Some(pending),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_file_has_no_final_name_until_verified_and_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDir::new(dir.path());
        let rel = Path::new("a/b.txt");
        let mut upload = store.create(rel, 5, Digest::of(b"hello")).unwrap();
        upload.write(b"hel").unwrap();
        upload.write(b"lo").unwrap();
        let written = upload.finish().unwrap();
        assert!(store.stat(rel).unwrap().is_none(), "visible before commit");
        store.verify(&written).unwrap();
        store.commit(&written).unwrap();
        assert_eq!(std::fs::read(dir.path().join(rel)).unwrap(), b"hello");
        let mut read = Vec::new();
        store
            .read(rel, 2, &mut |b| {
                read.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
        assert_eq!(read, b"llo");
    }

    #[test]
    fn bytes_that_do_not_hash_to_the_source_digest_are_refused_and_a_bad_read_back_caught() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDir::new(dir.path());
        let mut upload = store
            .create(Path::new("x"), 5, Digest::of(b"hello"))
            .unwrap();
        upload.write(b"HELLO").unwrap();
        assert!(matches!(upload.finish(), Err(Error::SourceChanged { .. })));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "temporary left"
        );

        let mut upload = store.create(Path::new("y"), 2, Digest::of(b"ok")).unwrap();
        upload.write(b"ok").unwrap();
        let written = upload.finish().unwrap();
        std::fs::write(written.pending.as_ref().unwrap(), b"KO").unwrap();
        assert!(matches!(
            store.verify(&written),
            Err(Error::ReadBackMismatch { .. })
        ));
    }
}
