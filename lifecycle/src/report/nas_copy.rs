//! Whether a staged copy on scratch is still the verified copy of its NAS source, file by
//! file, in memory that does not grow with the number of files.
//!
//! The scratch manifest, the NAS manifest, the stage journal and an ordered walk of the
//! staged folder are all read in path-byte order and stepped through together
//! (`hpcstage_staging::sorted`): a staged folder of ten million files is judged with a
//! few entries of each list in memory, never a map of all its paths. Only a remote NAS
//! (SFTP, S3) is still read whole: its manifest and its listing come over the network in
//! one piece (see `hpcstage_staging::remote`).
//!
//! What it must not do: call a copy verified that it could not check to the last file
//! (a list that cannot be read to its end is an error, not a shorter list).

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use hpcstage_staging::hash::hash_file;
use hpcstage_staging::record::StageRecord;
use hpcstage_staging::sorted::{Cursor, JournalInOrder, ManifestFile};
use hpcstage_staging::storage::{NasAccess, Storage};
use hpcstage_staging::walk::{files_in_order, Filter, Meta, STATE_DIR};

/// How many changed files a reason names before it gives the count of the rest.
const NAMED: usize = 3;

/// Why a staged copy cannot be called a verified copy of its NAS source.
pub(super) enum Check {
    /// Something on scratch is not on the NAS as it was staged: scratch may hold the only
    /// copy.
    Differs(String),
    /// It could not be checked (the scratch manifest or journal is unreadable).
    Unknown(String),
}

/// The staged folder's files beside its manifest: what the manifest lists that is gone,
/// and what is there that it does not list.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct TreeDiff {
    /// Listed files that are not in the folder.
    pub(super) missing: u64,
    /// Files in the folder that the manifest does not list.
    pub(super) extra: u64,
    /// The first of them in path order (at most [`NAMED`]).
    pub(super) first_extra: Vec<PathBuf>,
}

/// Walks `dir` in path order beside the manifest `listed` (the walk leaves out
/// hpcstage's own bookkeeping and temporaries). Folders that cannot be read are passed
/// over: their files count neither as present nor as extra.
pub(super) fn tree_diff(dir: &Path, listed: &ManifestFile) -> hpcstage_staging::Result<TreeDiff> {
    let mut entries = listed.in_order()?;
    let mut next = entries.next().transpose()?;
    let mut diff = TreeDiff::default();
    let mut stream_error = None;
    let mut walk_errors = Vec::new();
    files_in_order(dir, &Filter::default(), &mut walk_errors, &mut |file| {
        let key = file.as_os_str().as_bytes();
        // Listed files before this one were not in the folder.
        while let Some(e) = &next {
            let listed = e.path.as_os_str().as_bytes();
            if listed >= key {
                break;
            }
            diff.missing += 1;
            next = entries.next().transpose().unwrap_or_else(|e| {
                stream_error.get_or_insert(e);
                None
            });
        }
        if next.as_ref().is_some_and(|e| e.path == file) {
            next = entries.next().transpose().unwrap_or_else(|e| {
                stream_error.get_or_insert(e);
                None
            });
        } else {
            diff.extra += 1;
            keep_smallest(&mut diff.first_extra, file);
        }
    })?;
    if let Some(e) = stream_error {
        return Err(e);
    }
    while next.is_some() {
        diff.missing += 1;
        next = entries.next().transpose()?;
    }
    Ok(diff)
}

/// Keeps the [`NAMED`] smallest paths (by `Path`'s order, the order reasons name them in).
fn keep_smallest(first: &mut Vec<PathBuf>, path: PathBuf) {
    if first.len() == NAMED && first.last().is_some_and(|last| *last <= path) {
        return;
    }
    let at = first.partition_point(|p| *p < path);
    first.insert(at, path);
    first.truncate(NAMED);
}

/// The digest of a folder's `MANIFEST.sha256` (as `Manifest::digest` computes it),
/// streamed (a remote one copied to this machine first); `Ok(None)` when it has none.
pub(super) fn manifest_digest(
    folder: &dyn Storage,
) -> hpcstage_staging::Result<Option<hpcstage_staging::digest::Digest>> {
    folder.manifest_file()?.map(|m| m.file.digest()).transpose()
}

/// Up to [`NAMED`] reasons and how many there are.
#[derive(Default)]
struct Changed {
    named: Vec<String>,
    count: usize,
}

impl Changed {
    fn push(&mut self, why: impl FnOnce() -> String) {
        if self.named.len() < NAMED {
            self.named.push(why());
        }
        self.count += 1;
    }
}

/// Checks a staged copy file by file against its NAS source: every file of the scratch
/// manifest must be in the NAS manifest with the same checksum, present on the NAS with
/// the same size (a file appended to on the NAS), and unchanged on scratch since it was
/// verified (edited in place); no file may have been written into the folder after
/// staging (`tree`, the folder beside its manifest). The reason names the first files
/// that differ and how many there are.
pub(super) fn nas_copy_state(
    record: &StageRecord,
    scratch: Option<&ManifestFile>,
    tree: Option<&TreeDiff>,
) -> std::result::Result<(), Check> {
    let dest = &record.destination;
    let unknown = || Check::Unknown("the scratch copy has no readable MANIFEST.sha256".into());
    let scratch = scratch.ok_or_else(unknown)?;
    let entries = scratch.in_order().map_err(|_| unknown())?;
    // What each file looked like when it was verified (hard links have no entry of their
    // own; their inode is checked through the file they link to).
    let journal_path = dest.join(STATE_DIR).join("journal");
    let mut journal = Cursor::new(
        JournalInOrder::open(&journal_path)
            .map_err(|e| Check::Unknown(format!("the stage journal cannot be read ({e})")))?,
    );
    let source = Path::new(&record.source);
    if let (Ok(src), Ok(dst)) = (std::fs::canonicalize(source), std::fs::canonicalize(dest)) {
        if src.starts_with(&dst) || dst.starts_with(&src) {
            return Err(Check::Differs(format!(
                "the recorded source {} is the scratch copy itself (or overlaps it)",
                source.display()
            )));
        }
    }
    let no_manifest = |why: String| {
        Check::Differs(format!(
            "no readable MANIFEST.sha256 at the NAS source {}{why}; nothing proves a verified copy there",
            source.display()
        ))
    };
    let folder = NasAccess::shared()
        .folder(source)
        .map_err(|e| no_manifest(format!(" ({e})")))?;
    // The NAS source's manifest in path order, streamed from a file on this machine (a
    // remote one copied here first, kept while it is read).
    let nas_manifest = folder
        .manifest_file()
        .map_err(|e| no_manifest(format!(" ({e})")))?
        .ok_or_else(|| no_manifest(String::new()))?;
    let mut nas = Cursor::new(
        nas_manifest
            .file
            .in_order()
            .map_err(|e| no_manifest(format!(" ({e})")))?,
    );
    // A remote NAS is listed once (one round trip per folder) instead of a stat per file.
    let local = folder.local_root().map(Path::to_path_buf);
    let mut remote_sizes = if local.is_none() {
        Some(Cursor::new(folder.file_sizes().map_err(|e| {
            Check::Differs(format!(
                "the NAS source {} cannot be listed ({e}); scratch may hold the only copy",
                source.display()
            ))
        })?))
    } else {
        None
    };
    // A list that stops part way proves nothing about the rest.
    let unread = |what: &str, e: hpcstage_staging::Error| {
        Check::Unknown(format!("the {what} cannot be read to its end ({e})"))
    };
    let mut changed = Changed::default();
    for e in entries {
        let e = e.map_err(|e| unread("scratch MANIFEST.sha256", e))?;
        let name = e.path.display();
        let listed = nas
            .find(&e.path)
            .map_err(|e| no_manifest(format!(" ({e})")))?
            .map(|n| n.digest);
        match listed {
            Some(d) if d == e.digest => {
                // The manifest vouches for the bytes; the file itself must still be there.
                let on_nas = match &mut remote_sizes {
                    Some(sizes) => sizes
                        .find(&e.path)
                        .map_err(|e| unread("NAS listing", e))?
                        .map(|(_, size)| *size),
                    None => std::fs::metadata(local.as_deref().unwrap_or(source).join(&e.path))
                        .map(|m| m.size())
                        .ok(),
                };
                let on_scratch = std::fs::symlink_metadata(dest.join(&e.path));
                match (on_nas, on_scratch) {
                    (None, _) => changed.push(|| format!("{name} (missing at the NAS source)")),
                    (Some(n), Ok(s)) if n != s.size() => changed.push(|| {
                        format!(
                            "{name} (changed on the NAS or on scratch: {n} bytes there, {} here)",
                            s.size()
                        )
                    }),
                    (_, Ok(s)) => {
                        // Edited in place after staging (same size, say): the scratch
                        // copy may hold work that exists nowhere else. A file whose inode
                        // or mtime moved since it was verified is read again; only its
                        // content decides (a `touch` is not an edit).
                        let now = Meta::from_std(&s);
                        let moved = journal
                            .find(&e.path)
                            .map_err(|e| unread("stage journal", e))?
                            .is_some_and(|(_, j)| {
                                j.dest_ino != now.ino || j.dest_mtime_ns != now.mtime_ns
                            });
                        if moved
                            && hash_file(&dest.join(&e.path)).map(|h| h.0).ok() != Some(e.digest)
                        {
                            changed.push(|| {
                                format!("{name} (edited on scratch after it was verified)")
                            });
                        }
                    }
                    _ => {}
                }
            }
            Some(_) => changed.push(|| {
                format!("{name} (the NAS manifest has another checksum: the NAS source changed)")
            }),
            None => changed.push(|| format!("{name} (on scratch but not in the NAS manifest)")),
        }
    }
    // Files written into the staged folder after staging exist only here.
    if let Some(tree) = tree {
        for p in &tree.first_extra {
            changed.push(|| {
                format!(
                    "{} (written after staging: not in the stage manifest)",
                    p.display()
                )
            });
        }
        changed.count += (tree.extra as usize).saturating_sub(tree.first_extra.len());
    }
    if changed.count == 0 {
        return Ok(());
    }
    let n = changed.count;
    let mut text = format!(
        "{} {} not the verified NAS copy: {}",
        hpcstage_staging::human::count(n as u64, "file"),
        if n == 1 { "is" } else { "are" },
        changed.named.join(", ")
    );
    if n > NAMED {
        text.push_str(&format!(" and {} more", n - NAMED));
    }
    Err(Check::Differs(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, f).unwrap();
        }
        dir
    }

    fn manifest(dir: &Path, names: &[&str]) -> ManifestFile {
        let text: String = names
            .iter()
            .map(|n| format!("{}  {n}\n", "0".repeat(64)))
            .collect();
        let path = dir.join(hpcstage_staging::walk::MANIFEST_NAME);
        std::fs::write(&path, text).unwrap();
        ManifestFile::open(&path).unwrap()
    }

    #[test]
    fn the_walk_beside_the_manifest_finds_missing_and_extra_files() {
        // Names around '/' in byte order: "a b" < "a-c/y" < "a.d" < "a/x" < "ab".
        let dir = tree(&["a b", "a/x", "a-c/y", "ab", "z/new", "a/.hpcstage-tmp.1"]);
        std::fs::create_dir(dir.path().join(STATE_DIR)).unwrap();
        std::fs::write(dir.path().join(STATE_DIR).join("journal"), "").unwrap();
        let listed = manifest(dir.path(), &["a b", "a-c/y", "a.d", "a/x", "ab", "zz"]);
        let diff = tree_diff(dir.path(), &listed).unwrap();
        assert_eq!(
            diff,
            TreeDiff {
                missing: 2,
                extra: 1,
                first_extra: vec![PathBuf::from("z/new")],
            },
            "a.d and zz are gone; z/new is new; the manifest, the temporary and \
             .hpcstage are bookkeeping"
        );
        // The same lines in another order give the same answer.
        let listed = manifest(dir.path(), &["zz", "ab", "a/x", "a.d", "a-c/y", "a b"]);
        assert!(!listed.sorted());
        assert_eq!(tree_diff(dir.path(), &listed).unwrap(), diff);
    }

    #[test]
    fn extra_files_are_named_by_the_first_in_path_order() {
        let names: Vec<String> = (0..20).rev().map(|i| format!("d{}/f", i % 7)).collect();
        let mut first = Vec::new();
        for n in &names {
            keep_smallest(&mut first, PathBuf::from(n));
        }
        // Path order compares components: "a/x" sorts before "a b", unlike bytes.
        keep_smallest(&mut first, PathBuf::from("a b"));
        keep_smallest(&mut first, PathBuf::from("a/x"));
        assert_eq!(
            first,
            vec![
                PathBuf::from("a/x"),
                PathBuf::from("a b"),
                PathBuf::from("d0/f")
            ]
        );
    }
}
