//! The copy journal: which destination files were verified, against which source state.
//!
//! One line per verified file, appended after the file was renamed into place:
//! `<sha256> <size> <source mtime ns> <dest mtime ns> <dest inode> <escaped path>`.
//! Only lines that end in a newline count, so a line torn by a killed process is ignored
//! and its file is simply checked again. The journal keeps the source's mtime, so the
//! destination does not have to carry it (see docs/ARCHITECTURE.md#purge-deadlines).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::error::{IoContext, Result};
use crate::manifest::{escape_into, unescape, write_atomic};

/// What the journal knows of one verified file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalEntry {
    pub digest: Digest,
    pub size: u64,
    pub src_mtime_ns: i64,
    pub dest_mtime_ns: i64,
    pub dest_ino: u64,
}

/// An append-only journal, loaded into a map.
pub struct Journal {
    path: PathBuf,
    entries: HashMap<PathBuf, JournalEntry>,
    lines: usize,
    writer: Option<BufWriter<File>>,
    /// Length up to the last complete line, and the file's length when loaded: a
    /// difference is a line torn by a killed process, cut off before appending.
    complete_len: u64,
    loaded_len: u64,
}

impl Journal {
    /// Loads the journal at `path` (missing means empty).
    pub fn load(path: &Path) -> Result<Self> {
        let mut entries = HashMap::new();
        let mut lines = 0;
        let (mut complete_len, mut loaded_len) = (0, 0);
        match std::fs::read(path) {
            Ok(bytes) => {
                let complete = match bytes.iter().rposition(|&b| b == b'\n') {
                    Some(end) => &bytes[..=end],
                    None => &[][..],
                };
                complete_len = complete.len() as u64;
                loaded_len = bytes.len() as u64;
                for line in complete.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    lines += 1;
                    if let Some((rel, entry)) = parse_line(line) {
                        entries.insert(rel, entry);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(crate::Error::io(path, e)),
        }
        Ok(Journal {
            path: path.to_path_buf(),
            entries,
            lines,
            writer: None,
            complete_len,
            loaded_len,
        })
    }

    /// The entry for `rel`, if it was verified before.
    pub fn get(&self, rel: &Path) -> Option<&JournalEntry> {
        self.entries.get(rel)
    }

    /// Records a verified file (buffered; see [`Journal::flush`]).
    pub fn record(&mut self, rel: &Path, entry: JournalEntry) -> Result<()> {
        if self.writer.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .at(&self.path)?;
            if self.loaded_len != self.complete_len {
                file.set_len(self.complete_len).at(&self.path)?;
                self.loaded_len = self.complete_len;
            }
            self.writer = Some(BufWriter::with_capacity(1 << 16, file));
        }
        let mut line = Vec::with_capacity(160);
        format_line(&mut line, rel, &entry);
        let writer = self.writer.as_mut().expect("opened above");
        writer.write_all(&line).at(&self.path)?;
        self.entries.insert(rel.to_path_buf(), entry);
        self.lines += 1;
        Ok(())
    }

    /// Forgets a file (its destination no longer matches).
    pub fn forget(&mut self, rel: &Path) {
        self.entries.remove(rel);
    }

    /// Pushes buffered lines to the file.
    pub fn flush(&mut self) -> Result<()> {
        if let Some(w) = self.writer.as_mut() {
            w.flush().at(&self.path)?;
        }
        Ok(())
    }

    /// Rewrites the journal with only the entries whose paths `keep` accepts, when that
    /// makes it noticeably shorter.
    pub fn compact(&mut self, keep: impl Fn(&Path) -> bool) -> Result<()> {
        self.flush()?;
        self.entries.retain(|p, _| keep(p));
        if self.lines <= self.entries.len() + self.entries.len() / 4 + 16 {
            return Ok(());
        }
        self.writer = None;
        let mut out = Vec::with_capacity(self.entries.len() * 120);
        for (rel, entry) in &self.entries {
            format_line(&mut out, rel, entry);
        }
        write_atomic(&self.path, &out)?;
        self.lines = self.entries.len();
        Ok(())
    }

    /// Number of known files.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no file is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn format_line(out: &mut Vec<u8>, rel: &Path, e: &JournalEntry) {
    out.extend_from_slice(
        format!(
            "{} {} {} {} {} ",
            e.digest, e.size, e.src_mtime_ns, e.dest_mtime_ns, e.dest_ino
        )
        .as_bytes(),
    );
    escape_into(out, rel.as_os_str().as_bytes());
    out.push(b'\n');
}

pub(crate) fn parse_line(line: &[u8]) -> Option<(PathBuf, JournalEntry)> {
    let mut parts = line.splitn(6, |&b| b == b' ');
    let mut text = || std::str::from_utf8(parts.next()?).ok();
    let digest = text()?.parse().ok()?;
    let size = text()?.parse().ok()?;
    let src_mtime_ns = text()?.parse().ok()?;
    let dest_mtime_ns = text()?.parse().ok()?;
    let dest_ino = text()?.parse().ok()?;
    let name = unescape(parts.next()?)?;
    if name.is_empty() {
        return None;
    }
    Some((
        PathBuf::from(std::ffi::OsString::from_vec(name)),
        JournalEntry {
            digest,
            size,
            src_mtime_ns,
            dest_mtime_ns,
            dest_ino,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64) -> JournalEntry {
        JournalEntry {
            digest: Digest::of(&n.to_le_bytes()),
            size: n,
            src_mtime_ns: -5,
            dest_mtime_ns: 7,
            dest_ino: 9,
        }
    }

    #[test]
    fn round_trips_and_ignores_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let mut j = Journal::load(&path).unwrap();
        j.record(Path::new("a b"), entry(1)).unwrap();
        j.record(Path::new("new\nline\\x"), entry(2)).unwrap();
        j.flush().unwrap();
        drop(j);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(b"deadbeef 12 3");
        std::fs::write(&path, bytes).unwrap();
        let mut j = Journal::load(&path).unwrap();
        assert_eq!(j.len(), 2);
        assert_eq!(j.get(Path::new("new\nline\\x")), Some(&entry(2)));
        // The torn line is cut off before the next append, which therefore survives.
        j.record(Path::new("after"), entry(3)).unwrap();
        j.flush().unwrap();
        drop(j);
        let j = Journal::load(&path).unwrap();
        assert_eq!(j.get(Path::new("after")), Some(&entry(3)));
        assert_eq!(j.len(), 3);
    }

    #[test]
    fn compaction_keeps_the_latest_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let mut j = Journal::load(&path).unwrap();
        for i in 0..100 {
            j.record(Path::new("f"), entry(i)).unwrap();
        }
        j.record(Path::new("gone"), entry(1)).unwrap();
        j.compact(|p| p != Path::new("gone")).unwrap();
        let j = Journal::load(&path).unwrap();
        assert_eq!(j.len(), 1);
        assert_eq!(j.get(Path::new("f")), Some(&entry(99)));
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    }
}
