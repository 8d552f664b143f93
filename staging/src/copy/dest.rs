//! The destination folder: made writable, checked for space before a copy, guarded by
//! one writer at a time, and swept of the temporaries a killed run left.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::finish::perm;
use crate::error::{Error, IoContext, Result};
use crate::lock::lock_or_refuse;
use crate::walk;

/// Makes sure `path` is a folder we can write into; returns its mode now (without the
/// file type bits) and its device.
pub(super) fn ensure_writable_dir(path: &Path) -> Result<(u32, u64)> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let mode = m.permissions().mode() & 0o7777;
            if mode & 0o700 != 0o700 {
                std::fs::set_permissions(path, perm(mode | 0o700)).at(path)?;
                return Ok((mode | 0o700, m.dev()));
            }
            Ok((mode, m.dev()))
        }
        Ok(_) => Err(Error::io(
            path,
            std::io::Error::other("exists at the destination but is not a folder"),
        )),
        Err(_) => {
            std::fs::create_dir_all(path).at(path)?;
            let m = std::fs::symlink_metadata(path).at(path)?;
            Ok((m.permissions().mode() & 0o7777, m.dev()))
        }
    }
}

pub(super) fn ensure_dir(path: &Path) -> Result<()> {
    ensure_writable_dir(path).map(|_| ())
}

pub(super) fn check_space(dest: &Path, bytes: u64, files: u64) -> Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    let mut probe = dest.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            return Ok(());
        }
    }
    let st = nix::sys::statvfs::statvfs(&probe).at(&probe)?;
    if st.blocks() == 0 {
        // No size reported (ramfs, some FUSE and network filesystems): nothing to check
        // against; a real shortage still shows up as "disk full" on the file it hits.
        return Ok(());
    }
    let available = st.blocks_available() as u64 * st.fragment_size() as u64;
    // Each file costs at least one block of metadata; keep a little headroom.
    let need = bytes + files * 4096;
    if need > available {
        return Err(Error::InsufficientSpace {
            path: dest.to_path_buf(),
            need,
            available,
        });
    }
    let inodes = st.files_available() as u64;
    if st.files() > 0 && files > inodes {
        return Err(Error::io(
            dest,
            std::io::Error::other(format!(
                "not enough inodes: {files} files to write, {inodes} inodes free"
            )),
        ));
    }
    Ok(())
}

/// Marks a destination as being written: an exclusive lock (one writer at a time) and a
/// `running` marker. A marker found at start means an earlier run was killed: its
/// temporary files are swept before anything else happens.
pub(super) struct RunGuard {
    marker: PathBuf,
    _lock: Option<nix::fcntl::Flock<File>>,
}

impl RunGuard {
    pub(super) fn acquire(state_dir: &Path, dest: &Path) -> Result<Self> {
        let lock_path = state_dir.join("lock");
        let lock = lock_or_refuse(&lock_path, dest)?;
        // Only its presence counts: a run was under way (the lock file says who runs).
        let marker = state_dir.join("running");
        if marker.exists() {
            sweep_temporaries(dest);
        }
        File::create(&marker).at(&marker)?;
        Ok(RunGuard {
            marker,
            _lock: lock,
        })
    }

    pub(super) fn finish(self, clean: bool) {
        if clean {
            let _ = std::fs::remove_file(&self.marker);
        }
    }
}

/// Removes temporary files an interrupted run left behind.
pub fn sweep_temporaries(dest: &Path) -> usize {
    let mut removed = 0;
    for e in walkdir::WalkDir::new(dest)
        .follow_links(false)
        .into_iter()
        .filter_map(|e| e.ok())
    {
        if walk::is_temporary(e.file_name())
            && !e.file_type().is_dir()
            && std::fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}
