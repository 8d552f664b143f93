//! Hard links and symbolic links at the destination: a hard link is made once its primary
//! is verified, a symlink is copied as a link (never followed), and one pointing out of
//! the tree is told.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{classify, Change, CopyReport, Failure, FailureKind};
use crate::error::{Error, IoContext, Result};
use crate::storage::Storage;
use crate::walk::{Entry, TMP_PREFIX};

pub(super) fn same_inode(a: &Path, b: &Path) -> bool {
    match (std::fs::symlink_metadata(a), std::fs::symlink_metadata(b)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

pub(super) fn replace_with_hard_link(target: &Path, link: &Path) -> Result<()> {
    let parent = link.parent().expect("a link path has a parent");
    let tmp = parent.join(format!("{TMP_PREFIX}link.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::fs::hard_link(target, &tmp).at(link)?;
    std::fs::rename(&tmp, link).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(link, e)
    })
}

pub(super) fn symlink_differs(src: &dyn Storage, dest: &Path, rel: &Path) -> bool {
    match (src.read_link(rel), std::fs::read_link(dest.join(rel))) {
        (Ok(a), Ok(b)) => a != b,
        _ => true,
    }
}

/// Copies a symlink as a link (never following it). Returns whether anything changed.
pub(super) fn copy_symlink(src: &dyn Storage, dest: &Path, rel: &Path) -> Result<bool> {
    let target = src.read_link(rel)?;
    let link = dest.join(rel);
    if std::fs::read_link(&link).is_ok_and(|t| t == target) {
        return Ok(false);
    }
    let parent = link.parent().expect("a link path has a parent");
    let tmp = parent.join(format!("{TMP_PREFIX}symlink.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&target, &tmp).at(&link)?;
    std::fs::rename(&tmp, &link).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(&link, e)
    })?;
    Ok(true)
}

pub(super) fn symlink_warning(src: &dyn Storage, rel: &Path) -> Option<String> {
    let target = src.read_link(rel).ok()?;
    let mut depth: i64 = rel.components().count() as i64 - 1;
    let outside = target.is_absolute()
        || target.components().any(|c| {
            match c {
                std::path::Component::ParentDir => depth -= 1,
                std::path::Component::Normal(_) => depth += 1,
                _ => {}
            }
            depth < 0
        });
    outside.then(|| {
        format!(
            "{}: symlink points outside the tree ({}); copied as a link, not followed",
            rel.display(),
            target.display()
        )
    })
}

/// Makes `rel` a hard link to `primary` (already verified) at `dest`, unless it is one.
/// Returns whether anything changed.
pub(super) fn place_hard_link(dest: &Path, rel: &Path, primary: &Path) -> Result<bool> {
    let (target, link) = (dest.join(primary), dest.join(rel));
    if same_inode(&link, &target) {
        return Ok(false);
    }
    replace_with_hard_link(&target, &link)?;
    Ok(true)
}

/// The failure of a hard link whose primary was not copied.
pub(super) fn primary_missing(src: &dyn Storage, rel: &Path, primary: &Path) -> Failure {
    Failure {
        path: rel.to_path_buf(),
        kind: FailureKind::NotAttempted,
        error: Error::io(
            src.display(rel),
            std::io::Error::other(format!(
                "hard link to {} which was not copied",
                primary.display()
            )),
        ),
    }
}

/// Symbolic links; what was done or failed goes into `report`.
pub(super) fn place_symlinks(
    src: &dyn Storage,
    dest: &Path,
    symlinks: &[Entry],
    report: &mut CopyReport,
) {
    for s in symlinks {
        match copy_symlink(src, dest, &s.rel) {
            Ok(changed) => {
                report.symlinks += 1;
                if changed {
                    report.note_change(&s.rel, Change::Symlink);
                }
                if let Some(w) = symlink_warning(src, &s.rel) {
                    report.warnings.push(w);
                }
            }
            Err(e) => report.failed.push(Failure {
                path: s.rel.clone(),
                kind: classify(&e),
                error: e,
            }),
        }
    }
}
