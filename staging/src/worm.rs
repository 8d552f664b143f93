//! Write protection for raw data (WORM: write once, read many).
//!
//! `chmod -R a-w` always; `chattr +i` on request, where the filesystem and privileges
//! allow. Both outcomes are reported as they are: an immutable flag that could not be
//! set is said so, never claimed.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::error::{Error, IoContext, Result};

/// What protection was applied.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Protection {
    /// Write bits removed from every file and folder.
    pub read_only: bool,
    /// `None`: not requested; `Some(Ok)`: applied; `Some(Err(why))`: requested, not applied.
    pub immutable: Option<std::result::Result<(), String>>,
}

/// Removes write permission from everything under `dir` (files first, folders last, so
/// the walk itself is never locked out), then optionally sets the immutable flag.
pub fn protect(dir: &Path, immutable: bool) -> Result<Protection> {
    make_read_only(dir)?;
    Ok(seal(dir, immutable))
}

/// Sets the immutable flag on `dir`, already read-only (see [`make_read_only`]), when
/// `immutable` asks for it; says what was applied.
pub fn seal(dir: &Path, immutable: bool) -> Protection {
    Protection {
        read_only: true,
        immutable: immutable.then(|| set_immutable(dir)),
    }
}

/// Removes write permission from everything under `dir`, files first, folders last (so
/// the walk itself is never locked out). A tree that cannot be walked to its end is left
/// as it was: a first walk only checks, the second changes modes. Neither holds the tree
/// (a walk keeps the folders it is in, not what it has passed).
pub fn make_read_only(dir: &Path) -> Result<()> {
    let walk = || {
        walkdir::WalkDir::new(dir)
            .follow_links(false)
            .contents_first(true)
    };
    for e in walk() {
        e.map_err(|e| Error::walk(dir, e))?;
    }
    for e in walk() {
        let e = e.map_err(|e| Error::walk(dir, e))?;
        if e.file_type().is_symlink() {
            continue;
        }
        let meta = e.metadata().map_err(|err| {
            Error::io(
                e.path(),
                err.into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("stat failed")),
            )
        })?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o222 != 0 {
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(mode & !0o222))
                .at(e.path())?;
        }
    }
    Ok(())
}

fn set_immutable(dir: &Path) -> std::result::Result<(), String> {
    let out = Command::new("chattr")
        .arg("-R")
        .arg("+i")
        .arg("--")
        .arg(dir)
        .output()
        .map_err(|e| format!("chattr could not be run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(err
            .lines()
            .next()
            .unwrap_or("chattr failed")
            .trim()
            .to_string())
    }
}

/// Gives the owner write permission back on `dir` and everything in it (used before
/// removing a scratch copy that mirrored read-only raw data).
pub fn make_writable(dir: &Path) -> Result<()> {
    for e in walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .filter_map(|e| e.ok())
    {
        if e.file_type().is_symlink() {
            continue;
        }
        if let Ok(meta) = e.metadata() {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o200 == 0 {
                std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(mode | 0o200))
                    .at(e.path())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_every_write_bit() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("d");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/f"), "x").unwrap();
        let p = protect(&root, false).unwrap();
        assert!(p.read_only && p.immutable.is_none());
        for path in [root.clone(), root.join("sub"), root.join("sub/f")] {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o222, 0, "{}", path.display());
        }
        make_writable(&root).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }
}
