//! `manifest verify` for manifests of millions of lines: read, checked and reported one
//! entry at a time, so memory does not grow with the tree.
//!
//! A manifest sorted by path bytes (what `manifest create` and `stage` write) is streamed
//! three times: once to check every line before any file is read, once to hash the files
//! in manifest order (in parallel, with a bounded window), and once beside an ordered walk
//! of the folder to find the files it does not list. A manifest in any other order (for
//! example from `find | xargs sha256sum`) is checked in memory.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::manifest::{self, check_entry, Check, ManifestEntry};
use crate::progress::Progress;
use crate::sorted::{Entries, ManifestFile};
use crate::walk::{self, Filter};

/// Lines between the manifest reader and the reporter while the files are hashed.
const WINDOW: usize = 4096;

/// A manifest file checked line by line, ready to be verified against a folder.
#[derive(Debug)]
pub struct Plan {
    file: ManifestFile,
    /// Entries in the file, duplicates (same path, same checksum) counted once.
    pub entries: u64,
}

/// Totals of a verification (the per-file outcomes went to the caller as they came).
#[derive(Debug, Default)]
pub struct Totals {
    pub ok: usize,
    pub failed: usize,
    pub missing: usize,
    pub unreadable: usize,
    pub bytes: u64,
    /// Regular files present in the folder but not in the manifest, in path order.
    pub unlisted: Vec<PathBuf>,
}

impl Totals {
    /// True when every listed file is there and matches.
    pub fn all_ok(&self) -> bool {
        self.failed == 0 && self.missing == 0 && self.unreadable == 0
    }

    fn count(&mut self, check: &Check, bytes: u64) {
        match check {
            Check::Ok => self.ok += 1,
            Check::Failed(_) => self.failed += 1,
            Check::Missing => self.missing += 1,
            Check::Unreadable(_) => self.unreadable += 1,
        }
        self.bytes += bytes;
    }
}

impl Plan {
    /// Reads the whole manifest once, checking every line (malformed, absolute or
    /// climbing paths are errors with their line number, before any file is read).
    pub fn open(path: &Path) -> Result<Plan> {
        let file = ManifestFile::open(path)?;
        Ok(Plan {
            entries: file.entries,
            file,
        })
    }

    /// Sorted by path bytes: verified by streaming. Otherwise in memory.
    pub fn sorted(&self) -> bool {
        self.file.sorted()
    }

    /// Checks every listed file under `dir`, calling `report` with each outcome in
    /// manifest order as soon as it is known, then finds the files the manifest does not
    /// list. Files are hashed on the current rayon pool's threads.
    pub fn run(
        &self,
        dir: &Path,
        progress: &dyn Progress,
        report: &mut dyn FnMut(&Path, &Check),
    ) -> Result<Totals> {
        let mut totals = Totals::default();
        if let Some(m) = self.file.held() {
            let v = manifest::verify(dir, m, progress)?;
            for ((path, check), e) in v.checks.iter().zip(&m.entries) {
                debug_assert_eq!(path, &e.path);
                report(path, check);
                totals.count(check, 0);
            }
            totals.bytes = v.bytes;
            totals.unlisted = v.unlisted;
            return Ok(totals);
        }

        // Metadata first, in one parallel sweep (see walk::warm); then the files in order.
        walk::warm(dir, &Filter::default());
        let mut read_error = None;
        crate::ordered::ordered(
            rayon::current_num_threads(),
            WINDOW,
            |emit| {
                let mut entries = match Entries::open(self.file.path()) {
                    Ok(e) => e,
                    Err(e) => return read_error = Some(e),
                };
                loop {
                    match entries.next_entry() {
                        Ok(Some(e)) => {
                            // Cached by the sweep above; the size keeps big files apart.
                            let size =
                                std::fs::symlink_metadata(dir.join(&e.path)).map_or(0, |m| m.len());
                            emit(e, size);
                        }
                        Ok(None) => break,
                        // The file changed since it was checked.
                        Err(e) => return read_error = Some(e),
                    }
                }
            },
            |e: ManifestEntry| {
                let (check, n) = check_entry(dir, &e);
                progress.add_bytes(n);
                progress.add_file();
                (e.path, check, n)
            },
            |(path, check, n)| {
                report(&path, &check);
                totals.count(&check, n);
            },
        );
        if let Some(e) = read_error {
            return Err(e);
        }

        // Unlisted files: the folder walked in manifest order beside the manifest.
        let mut listed = Entries::open(self.file.path())?;
        let mut next = listed.next_entry()?;
        let mut walk_errors = Vec::new();
        let mut stream_error = None;
        walk::files_in_order(dir, &Filter::default(), &mut walk_errors, &mut |file| {
            let key = file.as_os_str().as_bytes();
            while let Some(e) = &next {
                if e.path.as_os_str().as_bytes() >= key {
                    break;
                }
                next = listed.next_entry().unwrap_or_else(|e| {
                    stream_error.get_or_insert(e);
                    None
                });
            }
            if next.as_ref().is_none_or(|e| e.path != file) {
                totals.unlisted.push(file);
            }
        })?;
        if let Some(e) = stream_error {
            return Err(e);
        }
        if let Some(e) = walk_errors.into_iter().next() {
            return Err(e);
        }
        Ok(totals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in [
            ("a b.txt", "one"),
            ("a/x.tif", "two"),
            ("a-c/y.tif", "three"),
            ("z.dat", "four"),
        ] {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        }
        dir
    }

    fn outcomes(dir: &Path, manifest: &Path) -> (Plan, Vec<(PathBuf, Check)>, Totals) {
        let plan = Plan::open(manifest).unwrap();
        let mut seen = Vec::new();
        let totals = plan
            .run(dir, &NoProgress, &mut |p, c| {
                seen.push((p.to_path_buf(), c.clone()))
            })
            .unwrap();
        (plan, seen, totals)
    }

    #[test]
    fn a_sorted_manifest_streams_and_an_unsorted_one_gives_the_same_answer() {
        let dir = tree();
        let m = manifest::create(dir.path(), &Filter::default(), &NoProgress)
            .unwrap()
            .manifest;
        let sorted = dir.path().join("MANIFEST.sha256");
        m.write_atomic(&sorted).unwrap();
        std::fs::write(dir.path().join("a/x.tif"), "TWO").unwrap();
        std::fs::remove_file(dir.path().join("z.dat")).unwrap();
        std::fs::write(dir.path().join("a/new.tif"), "new").unwrap();

        let (plan, streamed, totals) = outcomes(dir.path(), &sorted);
        assert!(plan.sorted());
        assert_eq!(plan.entries, 4);
        assert_eq!(
            (totals.ok, totals.failed, totals.missing),
            (2, 1, 1),
            "{streamed:?}"
        );
        assert_eq!(totals.unlisted, vec![PathBuf::from("a/new.tif")]);

        // The same lines in another order (and a duplicate far away) take the other road.
        let text = std::fs::read_to_string(&sorted).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.reverse();
        lines.push(lines[1]);
        let unsorted = dir.path().join("other.sha256");
        std::fs::write(&unsorted, lines.join("\n") + "\n").unwrap();
        let (plan, in_memory, totals2) = outcomes(dir.path(), &unsorted);
        assert!(!plan.sorted());
        assert_eq!(plan.entries, 4);
        let mut a = streamed.clone();
        let mut b = in_memory.clone();
        a.sort_by(|x, y| x.0.cmp(&y.0));
        b.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(a, b);
        // other.sha256 is a file of the folder too.
        assert_eq!(
            totals2.unlisted,
            vec![PathBuf::from("a/new.tif"), PathBuf::from("other.sha256")]
        );
        assert_eq!(streamed.iter().map(|s| &s.0).collect::<Vec<_>>(), {
            let mut p: Vec<&PathBuf> = m.entries.iter().map(|e| &e.path).collect();
            p.sort_by(|x, y| x.as_os_str().as_bytes().cmp(y.as_os_str().as_bytes()));
            p
        });
    }

    #[test]
    fn a_bad_line_is_refused_before_any_file_is_read() {
        let dir = tree();
        let path = dir.path().join("MANIFEST.sha256");
        let good = format!("{}  a b.txt\n", "0".repeat(64));
        std::fs::write(&path, format!("{good}{}  ../escape\n", "1".repeat(64))).unwrap();
        let e = Plan::open(&path).unwrap_err().to_string();
        assert!(e.contains(":2: refusing unsafe path"), "{e}");
        std::fs::write(&path, format!("{good}{}  a b.txt\n", "2".repeat(64))).unwrap();
        let e = Plan::open(&path).unwrap_err().to_string();
        assert!(e.contains("listed twice"), "{e}");
    }
}
