//! Putting an assembled folder in its final place: never over an existing one, on any
//! filesystem, and with nothing in it that its manifest does not list.
//!
//! `renameat2(RENAME_NOREPLACE)` is the atomic way, but the Linux NFS and SMB clients
//! reject rename flags (EINVAL). There the fallback is a plain rename after checking the
//! target is absent; rename(2) itself refuses to replace a non-empty folder, so an
//! existing dataset or results folder (never empty) still cannot be overwritten.
//!
//! renameat2 is called as a raw system call (Linux 3.15 and later), not through glibc's
//! wrapper: the wrapper only exists from glibc 2.28, and the portable binary of
//! `scripts/dist` must run on glibc 2.17. A kernel without it answers ENOSYS, which takes
//! the same fallback.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;

use crate::error::{Error, IoContext, Result};
use crate::manifest::Manifest;
use crate::walk::{MANIFEST_NAME, STATE_DIR};

/// Renames `from` to `to` unless `to` exists. An existing target is an
/// `ErrorKind::AlreadyExists` error.
pub fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    match renameat2_noreplace(from, to) {
        Ok(()) => Ok(()),
        Err(Errno::EEXIST | Errno::ENOTEMPTY) => Err(ErrorKind::AlreadyExists.into()),
        Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
            if std::fs::symlink_metadata(to).is_ok() {
                return Err(ErrorKind::AlreadyExists.into());
            }
            match std::fs::rename(from, to) {
                Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                    Err(ErrorKind::AlreadyExists.into())
                }
                other => other,
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// `renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE)` through `syscall(2)`.
fn renameat2_noreplace(from: &Path, to: &Path) -> std::result::Result<(), Errno> {
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL);
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: both paths are NUL-terminated strings that live across the call; the
    // system call reads them and nothing else.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(Errno::last())
    }
}

/// Removes regular files under `dir` that `manifest` does not list (left in an assembly
/// folder by an earlier, different attempt), so they cannot slip into the final folder.
/// The manifest itself and `.hpcstage/` are kept. Returns what was removed.
pub fn prune_unlisted(dir: &Path, manifest: &Manifest) -> Result<Vec<PathBuf>> {
    let listed: std::collections::HashSet<&Path> =
        manifest.entries.iter().map(|e| e.path.as_path()).collect();
    let mut removed = Vec::new();
    let mut it = walkdir::WalkDir::new(dir)
        .follow_links(false)
        .min_depth(1)
        .into_iter();
    while let Some(entry) = it.next() {
        let entry = entry.map_err(|e| Error::walk(dir, e))?;
        let rel = entry
            .path()
            .strip_prefix(dir)
            .expect("below dir")
            .to_path_buf();
        if rel == Path::new(STATE_DIR) {
            it.skip_current_dir();
            continue;
        }
        if entry.file_type().is_file()
            && rel != Path::new(MANIFEST_NAME)
            && !listed.contains(rel.as_path())
        {
            std::fs::remove_file(entry.path()).at(entry.path())?;
            removed.push(rel);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ManifestEntry;

    #[test]
    fn never_replaces_an_existing_folder() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(a.join("x")).unwrap();
        std::fs::create_dir_all(b.join("y")).unwrap();
        let err = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
        assert!(b.join("y").exists() && a.join("x").exists());
        let c = dir.path().join("c");
        rename_noreplace(&a, &c).unwrap();
        assert!(c.join("x").exists());
    }

    #[test]
    fn never_replaces_an_empty_folder_or_a_file() {
        // rename(2) alone would replace both; RENAME_NOREPLACE (or the check before the
        // fallback) must not.
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::create_dir_all(a.join("x")).unwrap();
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "keep").unwrap();
        for target in [&empty, &file] {
            let err = rename_noreplace(&a, target).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{}", target.display());
        }
        assert!(a.join("x").is_dir() && empty.is_dir());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
        // A path that cannot be a C string is an error, not a panic.
        let err = rename_noreplace(&a, Path::new("b\0c")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn prunes_what_the_manifest_does_not_list() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("s")).unwrap();
        std::fs::create_dir_all(root.join(".hpcstage")).unwrap();
        for f in ["s/keep", "s/stale", "MANIFEST.sha256", ".hpcstage/journal"] {
            std::fs::write(root.join(f), f).unwrap();
        }
        let m = Manifest::from_entries(vec![ManifestEntry {
            path: "s/keep".into(),
            digest: crate::hash::Digest::of(b"s/keep"),
        }]);
        assert_eq!(
            prune_unlisted(root, &m).unwrap(),
            vec![PathBuf::from("s/stale")]
        );
        assert!(root.join("s/keep").exists() && root.join(".hpcstage/journal").exists());
    }
}
