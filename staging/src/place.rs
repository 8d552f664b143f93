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

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;

use crate::error::{IoContext, Result};
use crate::manifest::ManifestEntry;
use crate::sorted::Cursor;
use crate::walk::{self, MANIFEST_NAME, STATE_DIR};

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

/// Removes regular files under `dir` that `listed` (entries in path order) does not list
/// (left in an assembly folder by an earlier, different attempt, temporaries included),
/// so they cannot slip into the final folder. The manifest itself and `.hpcstage/` are
/// kept. The folder is walked in path order beside the list, so neither is held whole
/// (docs/ARCHITECTURE.md#flat-memory). Returns what was removed.
pub fn prune_unlisted(
    dir: &Path,
    listed: impl Iterator<Item = Result<ManifestEntry>>,
) -> Result<Vec<PathBuf>> {
    let leaves_out =
        |rel: &Path, _: &OsStr| rel == Path::new(STATE_DIR) || rel == Path::new(MANIFEST_NAME);
    let mut listed = Cursor::new(listed);
    let (mut errors, mut removed, mut failed) = (Vec::new(), Vec::new(), None);
    walk::every_file_in_order(dir, &leaves_out, &mut errors, &mut |rel| {
        if failed.is_some() {
            return;
        }
        match listed.find(&rel) {
            Ok(Some(_)) => {}
            Ok(None) => {
                let path = dir.join(&rel);
                match std::fs::remove_file(&path).at(&path) {
                    Ok(()) => removed.push(rel),
                    Err(e) => failed = Some(e),
                }
            }
            Err(e) => failed = Some(e),
        }
    });
    match failed.or_else(|| errors.into_iter().next()) {
        Some(e) => Err(e),
        None => Ok(removed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

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

    fn listed(names: &[&str]) -> Vec<ManifestEntry> {
        let mut entries: Vec<ManifestEntry> = names
            .iter()
            .map(|n| ManifestEntry {
                path: n.into(),
                digest: crate::hash::Digest::of(n.as_bytes()),
            })
            .collect();
        walk::sort_by_bytes(&mut entries, |e| &e.path);
        entries
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
        let m = listed(&["s/keep"]);
        assert_eq!(
            prune_unlisted(root, m.into_iter().map(Ok)).unwrap(),
            vec![PathBuf::from("s/stale")]
        );
        assert!(root.join("s/keep").exists() && root.join(".hpcstage/journal").exists());
    }

    #[test]
    fn prune_keeps_exactly_the_listed_files_whatever_their_names() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Names whose byte order differs from a per-component order ("a b" < "a/x" <
        // "a0"), escaped names, bytes that are not UTF-8, a temporary left by a killed
        // copy, and a deeper MANIFEST.sha256 and .hpcstage that are data, not bookkeeping.
        let keep = [
            "a b",
            "a/x",
            "a/y/z",
            "a0",
            "back\\slash",
            "new\nline",
            "d/.hpcstage/kept",
            "d/MANIFEST.sha256",
        ];
        let stale = [
            "a/w",
            "a/y/old",
            "a1",
            "c/only/stale",
            ".hpcstage-tmp.x1",
            "d/.hpcstage-tmp.y",
        ];
        let odd = std::ffi::OsStr::from_bytes(b"bad\xff\xfe");
        for f in keep.iter().chain(&stale) {
            let path = root.join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, f).unwrap();
        }
        std::fs::write(root.join(odd), "odd").unwrap();
        std::fs::write(root.join(std::ffi::OsStr::from_bytes(b"bad\xff")), "gone").unwrap();
        let mut names: Vec<ManifestEntry> = listed(&keep);
        names.push(ManifestEntry {
            path: odd.into(),
            digest: crate::hash::Digest::of(b"odd"),
        });
        walk::sort_by_bytes(&mut names, |e| &e.path);
        let mut removed = prune_unlisted(root, names.into_iter().map(Ok)).unwrap();
        removed.sort();
        let mut expected: Vec<PathBuf> = stale.iter().map(PathBuf::from).collect();
        expected.push(std::ffi::OsStr::from_bytes(b"bad\xff").into());
        expected.sort();
        assert_eq!(removed, expected);
        for f in keep {
            assert!(root.join(f).is_file(), "{f} was removed");
        }
        assert!(root.join(odd).is_file());
    }

    #[test]
    fn prune_stops_at_a_list_it_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "f").unwrap();
        let broken = std::iter::once(Err(Error::io(
            dir.path().join("MANIFEST.sha256"),
            std::io::Error::other("torn"),
        )));
        assert!(prune_unlisted(dir.path(), broken).is_err());
        assert!(
            dir.path().join("f").exists(),
            "nothing removed on a bad list"
        );
    }
}
