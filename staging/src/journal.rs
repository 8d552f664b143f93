//! The copy journal: which destination files were verified, against which source state.
//!
//! One line per verified file, appended after the file was renamed into place:
//! `<sha256> <size> <source mtime ns> <dest mtime ns> <dest inode> <escaped path>`.
//! Only lines that end in a newline count, so a line torn by a killed process is ignored
//! and its file is simply checked again. The journal keeps the source's mtime, so the
//! destination does not have to carry it (see docs/ARCHITECTURE.md#purge-deadlines).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::error::{IoContext, Result};
use crate::manifest::{escape_into, unescape};
use crate::walk::TMP_PREFIX;

/// What the journal knows of one verified file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalEntry {
    pub digest: Digest,
    pub size: u64,
    pub src_mtime_ns: i64,
    pub dest_mtime_ns: i64,
    pub dest_ino: u64,
}

#[cfg(test)]
impl JournalEntry {
    /// An entry for tests whose every field follows from `n`, so two differ when their
    /// `n` do.
    pub(crate) fn sample(n: u64) -> Self {
        JournalEntry {
            digest: Digest::of(&n.to_le_bytes()),
            size: n,
            src_mtime_ns: -5,
            dest_mtime_ns: 7,
            dest_ino: n * 3,
        }
    }
}

/// An append-only journal. It holds nothing of what the file says: a copy reads the
/// journal in path order ([`crate::sorted::JournalInOrder`]) and merges it with its walk.
pub struct Journal {
    path: PathBuf,
    writer: Option<BufWriter<File>>,
    /// Length up to the last complete line, and the file's length when opened: a
    /// difference is a line torn by a killed process, cut off before appending.
    complete_len: u64,
    loaded_len: u64,
    appended: u64,
}

impl Journal {
    /// Opens the journal at `path` for appending (missing means empty); only its end is
    /// read, to find a line torn by a killed process.
    pub fn open(path: &Path) -> Result<Self> {
        let (complete_len, loaded_len) = match File::open(path) {
            Ok(file) => {
                let len = file.metadata().at(path)?.len();
                (complete_length(&file, len).at(path)?, len)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, 0),
            Err(e) => return Err(crate::Error::io(path, e)),
        };
        Ok(Journal {
            path: path.to_path_buf(),
            writer: None,
            complete_len,
            loaded_len,
            appended: 0,
        })
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
        self.appended += 1;
        Ok(())
    }

    /// Pushes buffered lines to the file.
    pub fn flush(&mut self) -> Result<()> {
        if let Some(w) = self.writer.as_mut() {
            w.flush().at(&self.path)?;
        }
        Ok(())
    }

    /// Lines appended since it was opened.
    pub fn appended(&self) -> u64 {
        self.appended
    }

    /// True when the file ended in a torn line when it was opened.
    pub fn torn(&self) -> bool {
        self.loaded_len != self.complete_len
    }
}

/// The length of `file` (`len` bytes) up to and with its last newline.
fn complete_length(file: &File, len: u64) -> std::io::Result<u64> {
    let mut end = len;
    let mut block = vec![0u8; 1 << 16];
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let chunk = &mut block[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// A journal written anew, in path order, from the entries a copy found current: it
/// replaces the old one atomically when [`Rewrite::commit`] is called, and not at all
/// when dropped before.
pub struct Rewrite {
    path: PathBuf,
    tmp: BufWriter<tempfile::NamedTempFile>,
    line: Vec<u8>,
}

impl Rewrite {
    pub fn new(path: &Path) -> Result<Rewrite> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempfile_in(dir)
            .at(dir)?;
        Ok(Rewrite {
            path: path.to_path_buf(),
            tmp: BufWriter::with_capacity(1 << 20, tmp),
            line: Vec::with_capacity(256),
        })
    }

    pub fn push(&mut self, rel: &Path, entry: &JournalEntry) -> Result<()> {
        self.line.clear();
        format_line(&mut self.line, rel, entry);
        self.tmp.write_all(&self.line).at(&self.path)
    }

    /// Makes the new journal durable and puts it in place of the old.
    pub fn commit(self) -> Result<()> {
        let tmp = self
            .tmp
            .into_inner()
            .map_err(|e| crate::Error::io(&self.path, e.into_error()))?;
        tmp.as_file().sync_data().at(&self.path)?;
        tmp.persist(&self.path)
            .map_err(|e| crate::Error::io(&self.path, e.error))?;
        Ok(())
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
    use crate::sorted::JournalInOrder;

    fn read(path: &Path) -> Vec<(PathBuf, JournalEntry)> {
        JournalInOrder::open(path)
            .unwrap()
            .collect::<Result<Vec<_>>>()
            .unwrap()
    }

    #[test]
    fn round_trips_and_ignores_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let mut j = Journal::open(&path).unwrap();
        j.record(Path::new("a b"), JournalEntry::sample(1)).unwrap();
        j.record(Path::new("new\nline\\x"), JournalEntry::sample(2))
            .unwrap();
        j.flush().unwrap();
        assert_eq!(j.appended(), 2);
        drop(j);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(b"deadbeef 12 3");
        std::fs::write(&path, bytes).unwrap();
        let mut j = Journal::open(&path).unwrap();
        assert!(j.torn());
        assert_eq!(read(&path).len(), 2);
        // The torn line is cut off before the next append, which therefore survives.
        j.record(Path::new("after"), JournalEntry::sample(3))
            .unwrap();
        j.flush().unwrap();
        drop(j);
        let all = read(&path);
        assert_eq!(all.len(), 3);
        assert!(all.contains(&(PathBuf::from("after"), JournalEntry::sample(3))));
        assert!(all.contains(&(PathBuf::from("new\nline\\x"), JournalEntry::sample(2))));
        assert!(!Journal::open(&path).unwrap().torn());
    }

    #[test]
    fn a_torn_line_longer_than_a_block_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let mut j = Journal::open(&path).unwrap();
        j.record(Path::new("a"), JournalEntry::sample(1)).unwrap();
        j.flush().unwrap();
        let whole = std::fs::metadata(&path).unwrap().len();
        drop(j);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend(std::iter::repeat_n(b'x', 200_000));
        std::fs::write(&path, bytes).unwrap();
        let file = File::open(&path).unwrap();
        assert_eq!(complete_length(&file, whole + 200_000).unwrap(), whole);
    }

    #[test]
    fn a_rewrite_replaces_the_journal_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let mut j = Journal::open(&path).unwrap();
        for i in 0..100 {
            j.record(Path::new("f"), JournalEntry::sample(i)).unwrap();
        }
        j.record(Path::new("gone"), JournalEntry::sample(1))
            .unwrap();
        j.flush().unwrap();
        drop(j);
        let mut r = Rewrite::new(&path).unwrap();
        r.push(Path::new("f"), &JournalEntry::sample(99)).unwrap();
        drop(r);
        assert_eq!(
            read(&path).len(),
            2,
            "a dropped rewrite changed the journal"
        );
        let mut r = Rewrite::new(&path).unwrap();
        r.push(Path::new("f"), &JournalEntry::sample(99)).unwrap();
        r.commit().unwrap();
        assert_eq!(
            read(&path),
            vec![(PathBuf::from("f"), JournalEntry::sample(99))]
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "a temporary was left behind");
    }
}
