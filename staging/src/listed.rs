//! A list of paths on disk, one escaped path a line in path order (the file list of one
//! shard of `stage --shards`), asked "is this path listed?" without being held whole.
//!
//! A shard's list was read into a hash set, about 80 bytes a file: 25 MB for a shard of
//! 300,000 files, 800 MB for a shard of 10^7. The local walk asks in path order but for
//! a step back now and then (a folder's files come before what its subfolders hold), and
//! a remote listing asks in its own order, so a cursor stepping once through the list
//! would not do. Instead one pass over the list checks every line and its order and keeps the first
//! path of every [`BLOCK`] lines with its byte offset (a sparse index); a question finds
//! its block by binary search in that index and reads it (one seek, [`BLOCK`] lines) into
//! a cache of the [`CACHED`] blocks read last. A walk in path order reads the list once
//! more in all; a folder of up to [`CACHED`] × [`BLOCK`] files read in any order stays
//! within the blocks kept (a bigger one reads a block again for most of its files: slower,
//! never bigger). Memory: one index key per [`BLOCK`] paths plus [`CACHED`] × [`BLOCK`]
//! paths, whatever the list's length (docs/ARCHITECTURE.md#flat-memory).
//!
//! What it must not do: trust a list that is not in path order (a question would then get
//! a wrong "no"), or answer "no" when the list could not be read (the error is kept and
//! [`ListedPaths::check`] returns it).

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, IoContext, Result};
use crate::manifest::unescape;

/// Lines per block of the index.
const BLOCK: usize = 1024;
/// Blocks kept read.
const CACHED: usize = 16;

/// A sorted list of paths on disk; see the module documentation.
#[derive(Debug)]
pub struct ListedPaths {
    path: PathBuf,
    /// The first path of each block and the byte offset of its line.
    index: Vec<(Vec<u8>, u64)>,
    read: Mutex<Reading>,
}

#[derive(Debug)]
struct Reading {
    file: File,
    /// (block number, its paths), the one read last at the end.
    cache: Vec<(usize, Arc<Vec<Vec<u8>>>)>,
    /// The first failure to read a block again.
    error: Option<Error>,
}

impl ListedPaths {
    /// Reads the list at `path` once: every line must unescape and come after the one
    /// before it in path order (the bytes of the path). Empty lines are skipped.
    pub fn open(path: &Path) -> Result<ListedPaths> {
        let file = File::open(path).at(path)?;
        let mut reader = BufReader::with_capacity(1 << 20, &file);
        let mut index = Vec::new();
        let (mut line, mut last, mut offset, mut lines) = (Vec::new(), Vec::new(), 0u64, 0usize);
        let mut number = 0u64;
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).at(path)?;
            if n == 0 {
                break;
            }
            number += 1;
            let at = offset;
            offset += n as u64;
            let Some(key) = parse(&line) else {
                return Err(bad_line(path, number, "an unknown escape"));
            };
            if key.is_empty() {
                continue;
            }
            if lines > 0 && key <= last {
                return Err(bad_line(
                    path,
                    number,
                    "out of path order (or listed twice)",
                ));
            }
            if lines % BLOCK == 0 {
                index.push((key.clone(), at));
            }
            lines += 1;
            last = key;
        }
        Ok(ListedPaths {
            path: path.to_path_buf(),
            index,
            read: Mutex::new(Reading {
                file,
                cache: Vec::with_capacity(CACHED),
                error: None,
            }),
        })
    }

    /// True when `rel` is listed. A block that cannot be read again answers `false` and
    /// keeps the error for [`ListedPaths::check`].
    pub fn contains(&self, rel: &Path) -> bool {
        let key = rel.as_os_str().as_bytes();
        // The last block whose first path is not after `key`.
        let block = self
            .index
            .partition_point(|(first, _)| first.as_slice() <= key);
        let Some(block) = block.checked_sub(1) else {
            return false;
        };
        let mut read = self.read.lock().expect("no thread panics holding the list");
        match read.block(&self.path, block, self.index[block].1) {
            Ok(paths) => paths.binary_search_by(|p| p.as_slice().cmp(key)).is_ok(),
            Err(e) => {
                read.error.get_or_insert(e);
                false
            }
        }
    }

    /// The first failure to read the list again, if any: a walk that asked meanwhile may
    /// have left listed files out.
    pub fn check(&self) -> Result<()> {
        let mut read = self.read.lock().expect("no thread panics holding the list");
        match read.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Reading {
    /// The paths of block `block` (its line at `offset`), from the cache or read.
    fn block(&mut self, path: &Path, block: usize, offset: u64) -> Result<Arc<Vec<Vec<u8>>>> {
        if let Some(i) = self.cache.iter().position(|(b, _)| *b == block) {
            let hit = self.cache.remove(i);
            self.cache.push(hit.clone());
            return Ok(hit.1);
        }
        (&self.file).seek(SeekFrom::Start(offset)).at(path)?;
        let mut reader = BufReader::with_capacity(64 << 10, &self.file);
        let mut paths = Vec::with_capacity(BLOCK);
        let mut line = Vec::new();
        while paths.len() < BLOCK {
            line.clear();
            if reader.read_until(b'\n', &mut line).at(path)? == 0 {
                break;
            }
            match parse(&line) {
                Some(key) if key.is_empty() => {}
                Some(key) => paths.push(key),
                None => return Err(bad_line(path, 0, "an unknown escape (changed since read)")),
            }
        }
        let paths = Arc::new(paths);
        if self.cache.len() == CACHED {
            self.cache.remove(0);
        }
        self.cache.push((block, paths.clone()));
        Ok(paths)
    }
}

/// The path of one line (its newline off), unescaped.
fn parse(line: &[u8]) -> Option<Vec<u8>> {
    unescape(line.strip_suffix(b"\n").unwrap_or(line))
}

fn bad_line(path: &Path, number: u64, what: &str) -> Error {
    let at = if number > 0 {
        format!("line {number}: ")
    } else {
        String::new()
    };
    Error::Parse {
        path: path.to_path_buf(),
        reason: format!(
            "{at}{what}; a list of paths is one escaped path a line, in path order \
             (plan the sharded stage again)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::escape_into;

    fn write_list(dir: &Path, names: &[Vec<u8>]) -> PathBuf {
        let mut text = Vec::new();
        for n in names {
            escape_into(&mut text, n);
            text.push(b'\n');
        }
        let path = dir.join("0.list");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn rel(name: &[u8]) -> PathBuf {
        PathBuf::from(std::ffi::OsStr::from_bytes(name))
    }

    #[test]
    fn answers_in_any_order_over_many_blocks() {
        let dir = tempfile::tempdir().unwrap();
        // Every other file of 10 folders of 1,000, so that the unlisted ones fall between
        // listed ones in every block; one name with a newline and one with a backslash.
        let mut names: Vec<Vec<u8>> = (0..10_000)
            .filter(|i| i % 2 == 0)
            .map(|i| format!("d{:02}/c{i:06}", i / 1000).into_bytes())
            .collect();
        names.push(b"z/new\nline".to_vec());
        names.push(b"z/x\\y".to_vec());
        names.sort();
        let list = ListedPaths::open(&write_list(dir.path(), &names)).unwrap();
        assert!(list.index.len() > 4, "{} blocks", list.index.len());
        // Backwards, then forwards: every answer right, whatever the order.
        for i in (0..10_000).rev().chain(0..10_000) {
            let name = format!("d{:02}/c{i:06}", i / 1000);
            assert_eq!(list.contains(Path::new(&name)), i % 2 == 0, "{name}");
        }
        assert!(list.contains(&rel(b"z/new\nline")));
        assert!(list.contains(&rel(b"z/x\\y")));
        for absent in ["a", "d00", "d00/c", "d99/c000000", "z", "zz"] {
            assert!(!list.contains(Path::new(absent)), "{absent}");
        }
        list.check().unwrap();
        let cached = list.read.lock().unwrap().cache.len();
        assert!(cached <= CACHED, "{cached} blocks held");
    }

    #[test]
    fn an_empty_list_lists_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let list = ListedPaths::open(&write_list(dir.path(), &[])).unwrap();
        assert!(!list.contains(Path::new("a")));
    }

    #[test]
    fn a_list_out_of_order_is_refused_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        for names in [vec!["b", "a"], vec!["a", "a"], vec!["a/b", "a.b"]] {
            let names: Vec<Vec<u8>> = names.iter().map(|n| n.as_bytes().to_vec()).collect();
            let path = write_list(dir.path(), &names);
            let err = ListedPaths::open(&path).unwrap_err().to_string();
            assert!(err.contains("line 2: out of path order"), "{err}");
            assert!(err.contains("0.list"), "{err}");
        }
        std::fs::write(dir.path().join("bad.list"), b"a\\q\n").unwrap();
        let err = ListedPaths::open(&dir.path().join("bad.list"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1: an unknown escape"), "{err}");
    }
}
