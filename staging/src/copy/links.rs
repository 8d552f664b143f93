//! Hard links and symbolic links at the destination: a hard link is made once its primary
//! is verified, a symlink is copied as a link (never followed), and one pointing out of
//! the tree is told.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{classify, Change, CopyReport, Failure, FailureKind};
use crate::error::{Error, IoContext, Result};
use crate::hash::Digest;
use crate::storage::Storage;
use crate::walk::{Entry, Meta, TMP_PREFIX};

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

/// Hard links, once their primary is verified (`known` holds the verified files and gets
/// the links), then symbolic links; what was done or failed goes into `report`.
pub(super) fn place_links(
    src: &dyn Storage,
    dest: &Path,
    links: &[(PathBuf, PathBuf, Meta)],
    symlinks: &[&Entry],
    known: &mut Vec<(PathBuf, Digest)>,
    report: &mut CopyReport,
) {
    let digest_of: HashMap<PathBuf, Digest> = known.iter().cloned().collect();
    for (rel, primary, _) in links {
        let Some(digest) = digest_of.get(primary).copied() else {
            report.failed.push(Failure {
                path: rel.clone(),
                kind: FailureKind::NotAttempted,
                error: Error::io(
                    src.display(rel),
                    std::io::Error::other(format!(
                        "hard link to {} which was not copied",
                        primary.display()
                    )),
                ),
            });
            continue;
        };
        let (target, link) = (dest.join(primary), dest.join(rel));
        if !same_inode(&link, &target) {
            if let Err(e) = replace_with_hard_link(&target, &link) {
                report.failed.push(Failure {
                    path: rel.clone(),
                    kind: classify(&e),
                    error: e,
                });
                continue;
            }
            report.changes.push((rel.clone(), Change::HardLink));
        }
        report.hard_links += 1;
        known.push((rel.clone(), digest));
    }

    for s in symlinks {
        match copy_symlink(src, dest, &s.rel) {
            Ok(changed) => {
                report.symlinks += 1;
                if changed {
                    report.changes.push((s.rel.clone(), Change::Symlink));
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
