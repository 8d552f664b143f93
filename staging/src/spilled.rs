//! The listing of a remote tree (an SSH host, an S3 prefix) handed out in path order
//! without being held whole: entries are pushed as the listing brings them, sorted in runs
//! of [`SEGMENT`] and written to temporary files (the `extsort` crate, under `$TMPDIR`,
//! removed when the listing is dropped), then merged as they are read.
//!
//! Held whole, a listing costs a few hundred bytes an entry (a pull adopting 10^6 results
//! on an SSH host, listing and manifest held, peaked at 461 MiB; 24 MiB with both read
//! from disk). Here memory is one run of entries while listing and one read buffer per
//! run while merging, whatever the tree's size (docs/ARCHITECTURE.md#flat-memory).
//!
//! What must not happen here: an entry dropped or handed out twice, or a listing that
//! could not be written to disk passed on as if whole (the error comes back from
//! [`Spill::done`]).

use std::cmp::Ordering;
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::walk::{Entry, Kind, Meta, Tree};

/// Entries sorted in memory at once; more are sorted in runs of this many on disk.
const SEGMENT: usize = 1 << 15;

fn by_path(a: &Entry, b: &Entry) -> Ordering {
    a.rel
        .as_os_str()
        .as_bytes()
        .cmp(b.rel.as_os_str().as_bytes())
}

type ByPath = fn(&Entry, &Entry) -> Ordering;

/// One little-endian `u64` of a spilled record.
pub(crate) fn read_word(r: &mut impl Read) -> std::io::Result<u64> {
    let mut word = [0u8; 8];
    r.read_exact(&mut word)?;
    Ok(u64::from_le_bytes(word))
}

/// Bytes written after their length as a [`read_word`].
pub(crate) fn read_bytes(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let len = usize::try_from(read_word(r)?).map_err(std::io::Error::other)?;
    let mut bytes = vec![0u8; len];
    r.read_exact(&mut bytes)?;
    Ok(bytes)
}

impl extsort::Sortable for Entry {
    fn encode<W: Write>(&self, w: &mut W) -> std::io::Result<()> {
        let rel = self.rel.as_os_str().as_bytes();
        let m = &self.meta;
        w.write_all(&(rel.len() as u64).to_le_bytes())?;
        w.write_all(rel)?;
        let kind = match self.kind {
            Kind::File => 0u8,
            Kind::Dir => 1,
            Kind::Symlink => 2,
            Kind::Other => 3,
        };
        w.write_all(&[kind])?;
        for n in m.to_words() {
            w.write_all(&n.to_le_bytes())?;
        }
        Ok(())
    }

    fn decode<R: Read>(r: &mut R) -> std::io::Result<Entry> {
        let rel = read_bytes(r)?;
        let mut kind = [0u8];
        r.read_exact(&mut kind)?;
        let kind = match kind[0] {
            0 => Kind::File,
            1 => Kind::Dir,
            2 => Kind::Symlink,
            _ => Kind::Other,
        };
        let mut words = [0u64; 9];
        for w in &mut words {
            *w = read_word(r)?;
        }
        let meta = Meta::from_words(words);
        Ok(Entry {
            rel: PathBuf::from(std::ffi::OsString::from_vec(rel)),
            kind,
            meta,
        })
    }
}

/// Entries being listed, in any order; [`Spill::done`] hands them out in path order.
pub struct Spill {
    sorter: extsort::PushExternalSorter<Entry, ByPath>,
    /// Where the spill is written, for the message when it cannot be.
    dir: PathBuf,
    /// The first failure to write a run to disk.
    failed: Option<std::io::Error>,
}

impl Default for Spill {
    fn default() -> Self {
        Self::new()
    }
}

impl Spill {
    pub fn new() -> Spill {
        Self::in_runs(SEGMENT)
    }

    /// A spill that holds at most `run` entries in memory at once.
    fn in_runs(run: usize) -> Spill {
        Spill {
            sorter: extsort::ExternalSorter::new()
                .with_segment_size(run)
                .pushed_by(by_path as ByPath),
            dir: std::env::temp_dir(),
            failed: None,
        }
    }

    /// Takes one entry (a failure to write it is kept for [`Spill::done`]).
    pub fn push(&mut self, entry: Entry) {
        if self.failed.is_none() {
            if let Err(e) = self.sorter.push(entry) {
                self.failed = Some(e);
            }
        }
    }

    /// The entries pushed, in path order, with `errors` (what the listing could not read).
    pub fn done(self, errors: Vec<Error>) -> Result<Listing> {
        if let Some(e) = self.failed {
            return Err(spill_failed(&self.dir, e));
        }
        let dir = self.dir;
        let sorted = self.sorter.done().map_err(|e| spill_failed(&dir, e))?;
        Ok(Listing {
            entries: Box::new(sorted),
            dir,
            errors,
        })
    }
}

fn spill_failed(dir: &Path, e: std::io::Error) -> Error {
    Error::io(
        dir,
        std::io::Error::new(
            e.kind(),
            format!("the listing could not be sorted on disk ({e}); free space there or set TMPDIR to a folder with room"),
        ),
    )
}

/// Regular files with their sizes in path-byte order ([`Listing::file_sizes`]).
pub type FileSizes = Box<dyn Iterator<Item = Result<(PathBuf, u64)>> + Send>;

/// A tree's entries in path-byte order, read from disk as they are handed out; see the
/// module documentation.
pub struct Listing {
    entries: Box<dyn Iterator<Item = std::io::Result<Entry>> + Send>,
    dir: PathBuf,
    /// Folders or entries that could not be read; the listing went on past them.
    pub errors: Vec<Error>,
}

impl Listing {
    /// The entries of a tree listed in memory, sorted.
    pub fn of_tree(tree: Tree) -> Listing {
        let mut entries = tree.entries;
        crate::walk::sort_by_bytes(&mut entries, |e| &e.rel);
        Listing {
            entries: Box::new(entries.into_iter().map(Ok)),
            dir: std::env::temp_dir(),
            errors: tree.errors,
        }
    }

    /// Regular files only, with their sizes, in path order; an entry that could not be
    /// read is an error. A listing that stopped part way is an error too (the first of
    /// its errors), since what it left out would look missing.
    pub fn file_sizes(mut self) -> Result<impl Iterator<Item = Result<(PathBuf, u64)>>> {
        if !self.errors.is_empty() {
            return Err(self.errors.swap_remove(0));
        }
        Ok(self.filter_map(|e| match e {
            Ok(e) if e.kind == Kind::File => Some(Ok((e.rel, e.meta.size))),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        }))
    }
}

impl Iterator for Listing {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Self::Item> {
        let dir = &self.dir;
        self.entries
            .next()
            .map(|r| r.map_err(|e| spill_failed(dir, e)))
    }
}

impl crate::sorted::Keyed for (PathBuf, u64) {
    fn key(&self) -> &Path {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(rel: &[u8], size: u64) -> Entry {
        Entry {
            rel: PathBuf::from(std::ffi::OsStr::from_bytes(rel)),
            kind: if size == 0 { Kind::Dir } else { Kind::File },
            meta: Meta {
                size,
                mode: 0o100_644,
                mtime_ns: -5,
                atime_ns: 7,
                ctime_ns: 1_700_000_000_000_000_000,
                ino: 3,
                dev: 4,
                nlink: 1,
                blocks: 8,
            },
        }
    }

    #[test]
    fn entries_come_back_in_path_order_across_runs_on_disk() {
        // 1,000 entries in runs of 64: 16 runs merged; reversed and shuffled order in,
        // names with a newline, a backslash and bytes that are not UTF-8.
        let mut names: Vec<Vec<u8>> = (0..997u32)
            .map(|i| format!("d{}/f{:05}", i % 7, (i * 7919) % 997).into_bytes())
            .collect();
        names.push(b"z/new\nline".to_vec());
        names.push(b"z/x\\y".to_vec());
        names.push(b"z/\xff\xfe".to_vec());
        let mut spill = Spill::in_runs(64);
        for (i, n) in names.iter().enumerate().rev() {
            spill.push(entry(n, i as u64 + 1));
        }
        spill.push(entry(b"d3", 0));
        let listing = spill.done(Vec::new()).unwrap();
        let got: Vec<Entry> = listing.map(|e| e.unwrap()).collect();
        let mut want = names.clone();
        want.push(b"d3".to_vec());
        want.sort();
        let rels: Vec<&[u8]> = got.iter().map(|e| e.rel.as_os_str().as_bytes()).collect();
        assert_eq!(rels, want.iter().map(Vec::as_slice).collect::<Vec<_>>());
        // Metadata and kind come back as they went in.
        let a = got.iter().find(|e| e.rel == Path::new("z/x\\y")).unwrap();
        let i = names.iter().position(|n| n == b"z/x\\y").unwrap();
        assert_eq!(a.meta, entry(b"z/x\\y", i as u64 + 1).meta);
        assert_eq!(a.kind, Kind::File);
        let d = got.iter().find(|e| e.rel == Path::new("d3")).unwrap();
        assert_eq!(d.kind, Kind::Dir);
    }

    #[test]
    fn file_sizes_leave_folders_out_and_refuse_a_partial_listing() {
        let mut spill = Spill::new();
        spill.push(entry(b"b", 2));
        spill.push(entry(b"a", 0));
        spill.push(entry(b"a/c", 3));
        let sizes: Vec<(PathBuf, u64)> = spill
            .done(Vec::new())
            .unwrap()
            .file_sizes()
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(sizes, [(PathBuf::from("a/c"), 3), (PathBuf::from("b"), 2)]);
        let partial = Spill::new()
            .done(vec![Error::io("/nas/x", std::io::Error::other("denied"))])
            .unwrap();
        let err = partial.file_sizes().err().unwrap().to_string();
        assert!(err.contains("/nas/x"), "{err}");
    }
}
