//! Parallel timestamp scan of a staged folder or run folder, for purge deadlines.
//!
//! Folders are read in parallel (one task per folder), each entry is `lstat`ed once, and
//! the results are reduced to the oldest atime/mtime/ctime, counts and sizes. The scan
//! reads metadata only; it never opens, reads or touches a file (touching would reset
//! the very timestamps a purge looks at).

use std::path::Path;

use rayon::prelude::*;

use crate::error::Error;
use crate::policy::OldestTimes;
use crate::walk::{is_bookkeeping, is_temporary, Meta, STATE_DIR};

/// What a scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Regular files, not counting hpcstage's own bookkeeping at the top
    /// (`MANIFEST.sha256`, `verify_*.log`) nor temporary files: the number `stage`
    /// reports for the same folder.
    pub files: u64,
    /// Bytes of every regular file (bookkeeping and temporaries included: the purge takes
    /// them too).
    pub bytes: u64,
    /// Temporary files an interrupted copy left (`.hpcstage-tmp.*`), and their bytes.
    pub temporaries: u64,
    pub temporary_bytes: u64,
    pub oldest: OldestTimes,
    /// Folders or entries that could not be read.
    pub errors: Vec<Error>,
}

impl Scan {
    fn merge(mut self, other: Scan) -> Scan {
        self.files += other.files;
        self.bytes += other.bytes;
        self.temporaries += other.temporaries;
        self.temporary_bytes += other.temporary_bytes;
        self.oldest.merge(&other.oldest);
        self.errors.extend(other.errors);
        self
    }
}

/// Scans `root` (not following links), skipping its `.hpcstage/` folder. Memory holds
/// the folders being read, never the tree: which files a purge already removed is found
/// by walking in path order beside the manifest (`hpcstage_staging::sorted`).
pub fn scan(root: &Path) -> Scan {
    scan_dir(root, Path::new(""), true)
}

fn scan_dir(root: &Path, rel: &Path, top: bool) -> Scan {
    let dir = root.join(rel);
    let mut here = Scan::default();
    let read = match std::fs::read_dir(&dir) {
        Ok(r) => r,
        Err(e) => {
            here.errors.push(Error::io(&dir, e));
            return here;
        }
    };
    let mut subdirs = Vec::new();
    for entry in read {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                here.errors.push(Error::io(&dir, e));
                continue;
            }
        };
        let name = entry.file_name();
        if top && name == STATE_DIR {
            continue;
        }
        let child = rel.join(&name);
        let meta = match std::fs::symlink_metadata(entry.path()) {
            Ok(m) => m,
            Err(e) => {
                // Gone between readdir and stat: a purge at work, or a job cleaning up.
                if e.kind() != std::io::ErrorKind::NotFound {
                    here.errors.push(Error::io(entry.path(), e));
                }
                continue;
            }
        };
        if meta.is_dir() {
            subdirs.push(child);
        } else if meta.is_file() {
            let m = Meta::from_std(&meta);
            here.bytes += m.size;
            here.oldest.add(&m);
            if is_temporary(&name) {
                here.temporaries += 1;
                here.temporary_bytes += m.size;
            } else if !(top && is_bookkeeping(&child)) {
                here.files += 1;
            }
        }
    }
    subdirs
        .into_par_iter()
        .map(|sub| scan_dir(root, &sub, false))
        .reduce(Scan::default, Scan::merge)
        .merge(here)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_oldest_times_and_skips_bookkeeping() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(root.join(".hpcstage")).unwrap();
        std::fs::write(root.join(".hpcstage/journal"), "xxxx").unwrap();
        std::fs::write(root.join("a/b/old"), "12").unwrap();
        std::fs::write(root.join("new"), "123").unwrap();
        std::fs::write(root.join("MANIFEST.sha256"), "m").unwrap();
        std::fs::write(root.join("a/.hpcstage-tmp.x"), "tmp").unwrap();
        let old = filetime::FileTime::from_unix_time(1_600_000_000, 0);
        filetime::set_file_times(root.join("a/b/old"), old, old).unwrap();
        let s = scan(root);
        assert_eq!(
            (s.files, s.bytes),
            (2, 9),
            "the manifest and temporaries are not data"
        );
        assert_eq!((s.temporaries, s.temporary_bytes), (1, 3));
        assert_eq!(s.oldest.mtime_ns, Some(1_600_000_000_000_000_000));
        assert_eq!(s.oldest.atime_ns, Some(1_600_000_000_000_000_000));
        assert!(s.errors.is_empty());
    }
}
