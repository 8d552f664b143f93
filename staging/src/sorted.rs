//! Manifests and journals read in path order, one entry at a time: for the commands that
//! compare a tree of millions of files with its manifests and its journal (`manifest
//! verify`, `report`, `status`, `clean`) without holding any of them whole.
//!
//! Everything here yields entries sorted by the bytes of their paths, the order
//! `manifest create` and `stage` write manifests in and the order
//! [`crate::walk::files_in_order`] walks a folder in, so that two lists are compared by
//! stepping through both at once ([`Cursor`]). A manifest that is not in that order (one
//! made by `find | xargs sha256sum`, say) is held in memory and sorted; a journal, which
//! the copy engine appends to in the order files finish, is sorted on disk in bounded
//! memory (the `extsort` crate, temporary files under `$TMPDIR`, removed when done).
//!
//! What must not happen here: holding every path of a tree at once, or reading a manifest
//! that is partly malformed as if it were whole (every line is checked before any entry
//! is handed out, with the line number of the first bad one, as `Manifest::read` does).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::journal::{parse_line, JournalEntry};
use crate::manifest::{self, write_line, LineReader, Manifest, ManifestEntry};
use crate::spilled::{read_bytes, read_word};
use crate::walk;

/// The entries of a manifest file one at a time, adjacent duplicates dropped (a duplicate
/// with another checksum is an error, as for [`Manifest::parse`]).
pub(crate) struct Entries {
    reader: BufReader<std::fs::File>,
    origin: PathBuf,
    line_no: usize,
    buf: Vec<u8>,
    lines: LineReader,
    last: Option<ManifestEntry>,
}

impl Entries {
    pub(crate) fn open(path: &Path) -> Result<Entries> {
        let file = std::fs::File::open(path).at(path)?;
        Ok(Entries {
            reader: BufReader::with_capacity(1 << 20, file),
            origin: path.to_path_buf(),
            line_no: 0,
            buf: Vec::new(),
            lines: LineReader::default(),
            last: None,
        })
    }

    /// The next entry; `Ok(None)` at the end.
    pub(crate) fn next_entry(&mut self) -> Result<Option<ManifestEntry>> {
        loop {
            self.buf.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .at(&self.origin)?;
            if n == 0 {
                return Ok(None);
            }
            self.line_no += 1;
            if self.buf.last() == Some(&b'\n') {
                self.buf.pop();
            }
            let Some(entry) = self.lines.entry(&self.buf, self.line_no, &self.origin)? else {
                continue;
            };
            if let Some(last) = &self.last {
                if last.path == entry.path {
                    if last.digest != entry.digest {
                        return Err(manifest::listed_twice(&self.origin, self.line_no));
                    }
                    continue;
                }
            }
            self.last = Some(entry.clone());
            return Ok(Some(entry));
        }
    }
}

/// A manifest file whose every line was checked, ready to be read in path order.
#[derive(Debug)]
pub struct ManifestFile {
    path: PathBuf,
    /// Entries in the file, duplicates (same path, same checksum) counted once.
    pub entries: u64,
    /// A manifest not sorted by path bytes, held in memory in the file's order; `None`:
    /// streamed from the file.
    unsorted: Option<Manifest>,
    digest: Digest,
}

impl ManifestFile {
    /// Reads the whole manifest once, checking every line (malformed, absolute or
    /// climbing paths are errors with their line number, before any entry is used).
    pub fn open(path: &Path) -> Result<ManifestFile> {
        let mut entries = Entries::open(path)?;
        let (mut count, mut sorted) = (0u64, true);
        let mut previous: Option<PathBuf> = None;
        let mut hasher = Sha256::new();
        let mut line = Vec::with_capacity(256);
        while let Some(e) = entries.next_entry()? {
            if let Some(p) = &previous {
                sorted &= p.as_os_str().as_bytes() < e.path.as_os_str().as_bytes();
            }
            count += 1;
            line.clear();
            write_line(&mut line, &e.digest, e.path.as_os_str().as_bytes());
            hasher.update(&line);
            previous = Some(e.path);
        }
        // Duplicates far apart, and the order, need the whole list anyway.
        let unsorted = (!sorted).then(|| Manifest::read(path)).transpose()?;
        let digest = match &unsorted {
            Some(m) => {
                count = m.len() as u64;
                m.digest()
            }
            None => Digest::from_hasher(hasher),
        };
        Ok(ManifestFile {
            path: path.to_path_buf(),
            entries: count,
            unsorted,
            digest,
        })
    }

    /// The file the entries come from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sorted by path bytes: read by streaming. Otherwise held in memory.
    pub fn sorted(&self) -> bool {
        self.unsorted.is_none()
    }

    /// The manifest held in memory, in the file's order, when it is not sorted.
    pub fn held(&self) -> Option<&Manifest> {
        self.unsorted.as_ref()
    }

    /// The entries in path-byte order.
    pub fn in_order(&self) -> Result<InOrder> {
        Ok(match &self.unsorted {
            None => InOrder(Source::Streamed(Entries::open(&self.path)?)),
            Some(m) => InOrder::from_manifest(m.clone()),
        })
    }

    /// [`Manifest::digest`] of the file, computed as it was checked.
    pub fn digest(&self) -> Result<Digest> {
        Ok(self.digest)
    }
}

/// The entries of a [`ManifestFile`] in path-byte order.
pub struct InOrder(Source);

enum Source {
    Streamed(Entries),
    Held(std::vec::IntoIter<ManifestEntry>),
}

impl InOrder {
    /// The entries of a manifest already in memory, sorted.
    pub fn from_manifest(m: Manifest) -> InOrder {
        let mut entries = m.entries;
        walk::sort_by_bytes(&mut entries, |e| &e.path);
        InOrder(Source::Held(entries.into_iter()))
    }

    /// The entries of a manifest file this program wrote in path order (the copy
    /// engine's `MANIFEST.sha256`), streamed without the checking pass of
    /// [`ManifestFile::open`]: a malformed line is still an error when it is reached.
    pub fn streamed(path: &Path) -> Result<InOrder> {
        Ok(InOrder(Source::Streamed(Entries::open(path)?)))
    }
}

/// The entries of `listed` (in path order) with `extra` in their places, in path order: an
/// entry of `extra` replaces the one of `listed` with the same path. For the few files
/// written beside a placed tree (`dataset.json`, `run.json`, `README.md`) added to the
/// list of a million, which is read and never held.
pub fn overlay<I>(listed: I, extra: &[ManifestEntry]) -> Overlay<I>
where
    I: Iterator<Item = Result<ManifestEntry>>,
{
    let mut extra = extra.to_vec();
    walk::sort_by_bytes(&mut extra, |e| &e.path);
    extra.dedup_by(|a, b| a.path == b.path);
    Overlay {
        listed: listed.peekable(),
        extra: extra.into_iter().peekable(),
    }
}

/// See [`overlay`].
pub struct Overlay<I: Iterator<Item = Result<ManifestEntry>>> {
    listed: std::iter::Peekable<I>,
    extra: std::iter::Peekable<std::vec::IntoIter<ManifestEntry>>,
}

impl<I: Iterator<Item = Result<ManifestEntry>>> Iterator for Overlay<I> {
    type Item = Result<ManifestEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        let Some(Ok(listed)) = self.listed.peek() else {
            // At the end of the list, or at an error in it: the error first.
            return self.listed.next().or_else(|| self.extra.next().map(Ok));
        };
        let (a, b) = match self.extra.peek() {
            Some(extra) => (
                listed.path.as_os_str().as_bytes(),
                extra.path.as_os_str().as_bytes(),
            ),
            None => return self.listed.next(),
        };
        match a.cmp(b) {
            std::cmp::Ordering::Less => self.listed.next(),
            std::cmp::Ordering::Equal => {
                self.listed.next();
                self.extra.next().map(Ok)
            }
            std::cmp::Ordering::Greater => self.extra.next().map(Ok),
        }
    }
}

impl Iterator for InOrder {
    type Item = Result<ManifestEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            Source::Streamed(e) => e.next_entry().transpose(),
            Source::Held(it) => it.next().map(Ok),
        }
    }
}

/// Something with a path, for [`Cursor`].
pub trait Keyed {
    fn key(&self) -> &Path;
}

impl Keyed for ManifestEntry {
    fn key(&self) -> &Path {
        &self.path
    }
}

impl Keyed for (PathBuf, JournalEntry) {
    fn key(&self) -> &Path {
        &self.0
    }
}

/// Lookups by path in a list sorted by path bytes, for keys asked in that same order:
/// each step moves forward only, so the list is read once, whatever its length.
pub struct Cursor<I: Iterator<Item = Result<T>>, T> {
    items: I,
    current: Option<T>,
    started: bool,
    read: u64,
}

impl<I: Iterator<Item = Result<T>>, T: Keyed> Cursor<I, T> {
    pub fn new(items: I) -> Self {
        Cursor {
            items,
            current: None,
            started: false,
            read: 0,
        }
    }

    fn advance(&mut self) -> Result<()> {
        self.current = self.items.next().transpose()?;
        self.read += u64::from(self.current.is_some());
        Ok(())
    }

    /// Reads the rest of the list and says how many items it held.
    pub fn count_all(mut self) -> Result<u64> {
        if !self.started {
            self.started = true;
            self.advance()?;
        }
        while self.current.is_some() {
            self.advance()?;
        }
        Ok(self.read)
    }

    /// The item for `key`, if the list has one. Keys must come in ascending byte order;
    /// items before `key` are passed over for good.
    pub fn find(&mut self, key: &Path) -> Result<Option<&T>> {
        let key = key.as_os_str().as_bytes();
        if !self.started {
            self.started = true;
            self.advance()?;
        }
        while self
            .current
            .as_ref()
            .is_some_and(|c| c.key().as_os_str().as_bytes() < key)
        {
            self.advance()?;
        }
        Ok(self
            .current
            .as_ref()
            .filter(|c| c.key().as_os_str().as_bytes() == key))
    }
}

/// Journal entries held in memory at once while the journal is sorted; a bigger journal
/// is sorted in runs of this many, written to temporary files and merged.
const SORT_RUN: usize = 1 << 16;

/// One journal line with its position, so that the latest line of a path wins.
struct Line {
    rel: Vec<u8>,
    seq: u64,
    entry: JournalEntry,
}

impl extsort::Sortable for Line {
    fn encode<W: Write>(&self, w: &mut W) -> std::io::Result<()> {
        let e = &self.entry;
        w.write_all(&(self.rel.len() as u64).to_le_bytes())?;
        w.write_all(&self.rel)?;
        w.write_all(&self.seq.to_le_bytes())?;
        w.write_all(&e.digest.0)?;
        for n in [
            e.size,
            e.src_mtime_ns as u64,
            e.dest_mtime_ns as u64,
            e.dest_ino,
        ] {
            w.write_all(&n.to_le_bytes())?;
        }
        Ok(())
    }

    fn decode<R: Read>(r: &mut R) -> std::io::Result<Line> {
        let next = read_word;
        let rel = read_bytes(r)?;
        let seq = next(r)?;
        let mut digest = [0u8; 32];
        r.read_exact(&mut digest)?;
        let size = next(r)?;
        let src_mtime_ns = next(r)? as i64;
        let dest_mtime_ns = next(r)? as i64;
        let dest_ino = next(r)?;
        Ok(Line {
            rel,
            seq,
            entry: JournalEntry {
                digest: Digest(digest),
                size,
                src_mtime_ns,
                dest_mtime_ns,
                dest_ino,
            },
        })
    }
}

/// The lines of a journal file as they come, each with its position. Only lines that end
/// in a newline count: the last one, torn by a killed process, does not (and ends the
/// journal); lines that do not parse are passed over.
struct Lines {
    reader: Option<BufReader<std::fs::File>>,
    buf: Vec<u8>,
    seq: u64,
}

impl Lines {
    fn open(path: &Path) -> Result<Lines> {
        let reader = match std::fs::File::open(path) {
            Ok(f) => Some(BufReader::with_capacity(1 << 20, f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(path, e)),
        };
        Ok(Lines {
            reader,
            buf: Vec::with_capacity(256),
            seq: 0,
        })
    }
}

impl Iterator for Lines {
    type Item = std::io::Result<Line>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let r = self.reader.as_mut()?;
            self.buf.clear();
            match r.read_until(b'\n', &mut self.buf) {
                Ok(_) if self.buf.last() != Some(&b'\n') => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(e)),
            }
            self.buf.pop();
            self.seq += 1;
            if let Some((rel, entry)) = parse_line(&self.buf) {
                return Some(Ok(Line {
                    rel: rel.into_os_string().into_vec(),
                    seq: self.seq,
                    entry,
                }));
            }
        }
    }
}

/// Whether the complete lines of the journal at `path` name their paths in strictly
/// ascending byte order (so, each once): one pass that reads the names only, much cheaper
/// than sorting.
fn in_path_order(path: &Path) -> Result<bool> {
    let mut reader = match std::fs::File::open(path) {
        Ok(f) => BufReader::with_capacity(1 << 20, f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(Error::io(path, e)),
    };
    let (mut buf, mut previous) = (Vec::with_capacity(256), Vec::with_capacity(256));
    loop {
        buf.clear();
        reader.read_until(b'\n', &mut buf).at(path)?;
        if buf.pop() != Some(b'\n') {
            return Ok(true);
        }
        // The name is what follows the fifth space.
        let Some(name) = buf.splitn(6, |&b| b == b' ').nth(5) else {
            continue;
        };
        let name = if name.contains(&b'\\') {
            match manifest::unescape(name) {
                Some(n) => std::borrow::Cow::Owned(n),
                None => continue,
            }
        } else {
            std::borrow::Cow::Borrowed(name)
        };
        if !previous.is_empty() && previous.as_slice() >= name.as_ref() {
            return Ok(false);
        }
        previous.clear();
        previous.extend_from_slice(&name);
    }
}

/// A copy journal in path-byte order, one entry per path: the one of its latest line, as
/// the journal's lines mean it. Lines torn by a killed process and lines that do not
/// parse are left out. A journal already in path order (as a copy leaves it) is read as
/// it is; another is sorted on disk first.
pub struct JournalInOrder {
    path: PathBuf,
    lines: Box<dyn Iterator<Item = std::io::Result<Line>> + Send>,
    pending: Option<Line>,
    was_sorted: bool,
}

impl JournalInOrder {
    /// Sorts the journal at `path` (missing means empty).
    pub fn open(path: &Path) -> Result<JournalInOrder> {
        Self::sorted_in_runs(path, SORT_RUN)
    }

    /// True when the file was in path order already, one line per path.
    pub fn was_sorted(&self) -> bool {
        self.was_sorted
    }

    /// [`Self::open`], holding at most `run` lines in memory at once.
    fn sorted_in_runs(path: &Path, run: usize) -> Result<JournalInOrder> {
        let in_order = in_path_order(path)?;
        if in_order {
            return Ok(JournalInOrder {
                path: path.to_path_buf(),
                lines: Box::new(Lines::open(path)?),
                pending: None,
                was_sorted: true,
            });
        }
        let mut read_error = None;
        let mut lines = Lines::open(path)?;
        let lines = std::iter::from_fn(|| match lines.next()? {
            Ok(l) => Some(l),
            Err(e) => {
                read_error = Some(e);
                None
            }
        });
        let sorted = extsort::ExternalSorter::new()
            .with_segment_size(run)
            .sort_by(lines, |a: &Line, b: &Line| {
                a.rel.cmp(&b.rel).then(a.seq.cmp(&b.seq))
            })
            .map_err(|e| Error::io(std::env::temp_dir(), e))?;
        if let Some(e) = read_error {
            return Err(Error::io(path, e));
        }
        Ok(JournalInOrder {
            path: path.to_path_buf(),
            lines: Box::new(sorted),
            pending: None,
            was_sorted: false,
        })
    }

    fn next_line(&mut self) -> Result<Option<Line>> {
        if let Some(l) = self.pending.take() {
            return Ok(Some(l));
        }
        self.lines
            .next()
            .transpose()
            .map_err(|e| Error::io(&self.path, e))
    }
}

impl Iterator for JournalInOrder {
    type Item = Result<(PathBuf, JournalEntry)>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut latest = match self.next_line() {
            Ok(Some(l)) => l,
            Ok(None) => return None,
            Err(e) => return Some(Err(e)),
        };
        loop {
            match self.next_line() {
                Ok(Some(l)) if l.rel == latest.rel => latest = l,
                Ok(Some(l)) => {
                    self.pending = Some(l);
                    break;
                }
                Ok(None) => break,
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok((
            PathBuf::from(std::ffi::OsString::from_vec(latest.rel)),
            latest.entry,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Journal;

    fn all(j: JournalInOrder) -> Vec<(PathBuf, JournalEntry)> {
        j.collect::<Result<Vec<_>>>().unwrap()
    }

    fn manifest_entry(name: &[u8], n: u8) -> ManifestEntry {
        ManifestEntry {
            path: std::ffi::OsStr::from_bytes(name).into(),
            digest: Digest([n; 32]),
        }
    }

    #[test]
    fn an_overlay_puts_the_extra_entries_in_path_order_and_in_place_of_listed_ones() {
        let listed = [
            manifest_entry(b"a b", 1),
            manifest_entry(b"a/x", 2),
            manifest_entry(b"dataset.json", 3),
            manifest_entry(b"new\nline", 4),
            manifest_entry(b"z\xff", 5),
        ];
        // Unsorted, one before everything, one replacing, one between two.
        let extra = [
            manifest_entry(b"zz", 9),
            manifest_entry(b"dataset.json", 8),
            manifest_entry(b"a0", 7),
            manifest_entry(b"A", 6),
        ];
        let merged = overlay(listed.iter().cloned().map(Ok), &extra)
            .collect::<Result<Vec<_>>>()
            .unwrap();
        let expected = [
            manifest_entry(b"A", 6),
            manifest_entry(b"a b", 1),
            manifest_entry(b"a/x", 2),
            manifest_entry(b"a0", 7),
            manifest_entry(b"dataset.json", 8),
            manifest_entry(b"new\nline", 4),
            // By bytes, not by characters: 'z' (0x7a) comes before 0xff.
            manifest_entry(b"zz", 9),
            manifest_entry(b"z\xff", 5),
        ];
        assert_eq!(merged, expected);
        // Nothing listed, nothing extra.
        let only_extra = overlay(std::iter::empty(), &extra[..1])
            .collect::<Result<Vec<_>>>()
            .unwrap();
        assert_eq!(only_extra, [manifest_entry(b"zz", 9)]);
        assert_eq!(overlay(listed.iter().cloned().map(Ok), &[]).count(), 5);
    }

    #[test]
    fn an_overlay_hands_on_an_error_of_the_list() {
        let listed = vec![
            Ok(manifest_entry(b"a", 1)),
            Err(Error::io(Path::new("M"), std::io::Error::other("torn"))),
        ];
        let mut merged = overlay(listed.into_iter(), &[manifest_entry(b"b", 2)]);
        assert!(merged.next().unwrap().is_ok());
        assert!(merged.next().unwrap().is_err());
    }

    #[test]
    fn a_manifest_written_from_an_overlay_is_what_sha256sum_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("MANIFEST.sha256");
        let listed = Manifest::from_entries(vec![
            manifest_entry(b"b", 2),
            manifest_entry(b"back\\slash", 3),
        ]);
        std::fs::write(&path, listed.to_bytes()).unwrap();
        let extra = [manifest_entry(b"a", 1)];
        let (files, digest) = manifest::write_entries_atomic(
            &path,
            overlay(InOrder::streamed(&path).unwrap(), &extra),
        )
        .unwrap();
        let expected = Manifest::from_entries(vec![
            manifest_entry(b"a", 1),
            manifest_entry(b"b", 2),
            manifest_entry(b"back\\slash", 3),
        ]);
        assert_eq!((files, digest), (3, expected.digest()));
        assert_eq!(std::fs::read(&path).unwrap(), expected.to_bytes());
    }

    #[test]
    fn a_journal_comes_in_path_order_with_the_latest_line_of_each_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let mut j = Journal::open(&path).unwrap();
        // Written in the order files finish, a path again when it was copied again.
        for (name, n) in [("b", 1), ("a/x", 2), ("a b", 3), ("b", 4), ("new\nline", 5)] {
            j.record(Path::new(name), JournalEntry::sample(n)).unwrap();
        }
        j.flush().unwrap();
        drop(j);
        // A line torn by a killed process does not count; nor does a damaged one.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(b"garbage line\n");
        bytes.extend_from_slice(format!("{} 1 2 3 4 a b", Digest::of(b"x")).as_bytes());
        std::fs::write(&path, bytes).unwrap();
        let expected = vec![
            (PathBuf::from("a b"), JournalEntry::sample(3)),
            (PathBuf::from("a/x"), JournalEntry::sample(2)),
            (PathBuf::from("b"), JournalEntry::sample(4)),
            (PathBuf::from("new\nline"), JournalEntry::sample(5)),
        ];
        let j = JournalInOrder::open(&path).unwrap();
        assert!(!j.was_sorted());
        assert_eq!(all(j), expected);
        assert!(all(JournalInOrder::open(&dir.path().join("none")).unwrap()).is_empty());
    }

    #[test]
    fn a_journal_bigger_than_memory_is_sorted_on_disk_with_the_same_result() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let mut j = Journal::open(&path).unwrap();
        // 1,000 paths, each written three times, in an order far from sorted.
        for round in 0..3u64 {
            for i in 0..1000u64 {
                let k = (i * 7919) % 1000;
                j.record(
                    Path::new(&format!("d{}/f{k}", k % 13)),
                    JournalEntry::sample(round * 1000 + k),
                )
                .unwrap();
            }
        }
        j.flush().unwrap();
        let in_memory = all(JournalInOrder::sorted_in_runs(&path, 1 << 20).unwrap());
        let on_disk = all(JournalInOrder::sorted_in_runs(&path, 64).unwrap());
        assert_eq!(in_memory.len(), 1000);
        assert_eq!(on_disk, in_memory);
        assert!(in_memory
            .windows(2)
            .all(|w| w[0].0.as_os_str().as_bytes() < w[1].0.as_os_str().as_bytes()));
        assert!(
            in_memory.iter().all(|(_, e)| e.size >= 2000),
            "an older line won"
        );
    }

    #[test]
    fn a_journal_in_path_order_is_read_as_it_is_and_counted_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let mut r = crate::journal::Rewrite::new(&path).unwrap();
        for (name, n) in [("a b", 1), ("a/x", 2), ("b", 3)] {
            r.push(Path::new(name), &JournalEntry::sample(n)).unwrap();
        }
        r.commit().unwrap();
        let j = JournalInOrder::open(&path).unwrap();
        assert!(j.was_sorted());
        let mut c = Cursor::new(j);
        assert_eq!(
            c.find(Path::new("a/x")).unwrap().unwrap().1,
            JournalEntry::sample(2)
        );
        assert_eq!(
            c.count_all().unwrap(),
            3,
            "every entry counted, found or not"
        );
        // A path twice is not in order: the latest line must win.
        let mut j = Journal::open(&path).unwrap();
        j.record(Path::new("b"), JournalEntry::sample(9)).unwrap();
        j.flush().unwrap();
        let j = JournalInOrder::open(&path).unwrap();
        assert!(!j.was_sorted());
        assert_eq!(
            all(j).last().unwrap(),
            &(PathBuf::from("b"), JournalEntry::sample(9))
        );
    }

    fn write_manifest(path: &Path, names: &[&str]) {
        let text: String = names
            .iter()
            .map(|n| format!("{}  {n}\n", Digest::of(n.as_bytes())))
            .collect();
        std::fs::write(path, text).unwrap();
    }

    fn names(it: InOrder) -> Vec<PathBuf> {
        it.map(|e| e.unwrap().path).collect()
    }

    #[test]
    fn a_manifest_comes_in_path_order_whether_or_not_its_file_is_sorted() {
        let dir = tempfile::tempdir().unwrap();
        // An adjacent duplicate counts once; one apart, it still counts once.
        for (name, lines, sorted) in [
            ("sorted", ["a b", "a/x", "a/x", "b"], true),
            ("unsorted", ["b", "a/x", "a b", "a/x"], false),
        ] {
            let path = dir.path().join(name);
            write_manifest(&path, &lines);
            let m = ManifestFile::open(&path).unwrap();
            assert_eq!(m.sorted(), sorted, "{name}");
            assert_eq!(m.entries, 3, "{name}");
            assert_eq!(
                names(m.in_order().unwrap()),
                ["a b", "a/x", "b"].map(PathBuf::from),
                "{name}"
            );
            assert_eq!(
                m.digest().unwrap(),
                Manifest::read(&path).unwrap().digest(),
                "{name}"
            );
        }
    }

    #[test]
    fn a_bad_line_anywhere_is_refused_before_any_entry_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let good = format!("{}  a\n", Digest::of(b"a"));
        std::fs::write(&path, format!("{good}{}  ../up\n", Digest::of(b"b"))).unwrap();
        let e = ManifestFile::open(&path).unwrap_err().to_string();
        assert!(e.contains(":2: refusing unsafe path"), "{e}");
        std::fs::write(&path, format!("{good}{}  a\n", Digest::of(b"c"))).unwrap();
        let e = ManifestFile::open(&path).unwrap_err().to_string();
        assert!(e.contains("listed twice"), "{e}");
    }

    #[test]
    fn a_cursor_finds_keys_asked_in_order_and_reads_the_list_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        write_manifest(&path, &["a", "a b", "a/x", "c", "e"]);
        let m = ManifestFile::open(&path).unwrap();
        let mut c = Cursor::new(m.in_order().unwrap());
        let mut found = |k: &str| c.find(Path::new(k)).unwrap().map(|e| e.path.clone());
        assert_eq!(found("a"), Some(PathBuf::from("a")));
        assert_eq!(found("a-"), None, "between a b and a/x");
        assert_eq!(found("a/x"), Some(PathBuf::from("a/x")));
        assert_eq!(found("d"), None);
        assert_eq!(found("e"), Some(PathBuf::from("e")));
        assert_eq!(found("z"), None, "past the end");
    }
}
