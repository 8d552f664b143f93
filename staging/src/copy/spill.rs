//! The plan of a copy, kept on disk: one record per source file in path order (skipped as
//! verified, to copy, or a hard link to another), written while the tree is walked and
//! read back twice (to feed the copy, then to write the manifest and the journal), so
//! that no list of every file is held in memory (docs/ARCHITECTURE.md#flat-memory).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::plan::Job;
use super::Change;
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::journal::JournalEntry;
use crate::walk::Meta;

/// One file of the plan.
#[derive(Debug, PartialEq)]
pub(super) enum Planned {
    /// Verified before and unchanged: what the journal says of it.
    Skip {
        rel: PathBuf,
        entry: JournalEntry,
    },
    Copy(Job),
    /// A hard link to `primary`, an earlier file of the plan.
    Link {
        rel: PathBuf,
        primary: PathBuf,
    },
}

const CHANGES: [Change; 7] = [
    Change::New,
    Change::Changed,
    Change::Unverified,
    Change::Repair,
    Change::HardLink,
    Change::Symlink,
    Change::Dir,
];

/// The plan's file: unnamed, in the destination's bookkeeping folder, gone when dropped.
pub(super) struct PlanFile {
    /// Where it lives, for messages.
    dir: PathBuf,
    writer: BufWriter<File>,
    pub(super) records: u64,
}

impl PlanFile {
    pub(super) fn new(dir: &Path) -> Result<PlanFile> {
        let file = tempfile::tempfile_in(dir).at(dir)?;
        Ok(PlanFile {
            dir: dir.to_path_buf(),
            writer: BufWriter::with_capacity(1 << 20, file),
            records: 0,
        })
    }

    pub(super) fn push(&mut self, p: &Planned) -> Result<()> {
        let mut buf = Vec::with_capacity(256);
        encode(&mut buf, p);
        self.records += 1;
        self.writer.write_all(&buf).at(&self.dir)
    }

    /// The records from the first, in the order they were pushed.
    pub(super) fn read(&mut self) -> Result<PlanReader> {
        self.writer.flush().at(&self.dir)?;
        let mut file = self.writer.get_ref().try_clone().at(&self.dir)?;
        file.rewind().at(&self.dir)?;
        Ok(PlanReader {
            dir: self.dir.clone(),
            reader: BufReader::with_capacity(1 << 20, file),
            left: self.records,
        })
    }
}

/// The records of a [`PlanFile`].
pub(super) struct PlanReader {
    dir: PathBuf,
    reader: BufReader<File>,
    left: u64,
}

impl Iterator for PlanReader {
    type Item = Result<Planned>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        Some(decode(&mut self.reader).map_err(|e| Error::io(&self.dir, e)))
    }
}

fn put_path(out: &mut Vec<u8>, p: &Path) {
    let bytes = p.as_os_str().as_bytes();
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_le_bytes());
}

fn encode(out: &mut Vec<u8>, p: &Planned) {
    match p {
        Planned::Skip { rel, entry } => {
            out.push(0);
            put_path(out, rel);
            out.extend_from_slice(&entry.digest.0);
            for n in [
                entry.size,
                entry.src_mtime_ns as u64,
                entry.dest_mtime_ns as u64,
                entry.dest_ino,
            ] {
                put(out, n);
            }
        }
        Planned::Copy(job) => {
            out.push(1);
            put_path(out, &job.rel);
            for n in job.meta.to_words() {
                put(out, n);
            }
            let change = CHANGES.iter().position(|c| *c == job.change);
            out.push(change.expect("a known change") as u8);
            match &job.expected {
                Some(d) => {
                    out.push(1);
                    out.extend_from_slice(&d.0);
                }
                None => out.push(0),
            }
        }
        Planned::Link { rel, primary } => {
            out.push(2);
            put_path(out, rel);
            put_path(out, primary);
        }
    }
}

fn decode(r: &mut impl Read) -> std::io::Result<Planned> {
    let byte = |r: &mut dyn Read| -> std::io::Result<u8> {
        let mut b = [0u8; 1];
        r.read_exact(&mut b)?;
        Ok(b[0])
    };
    let word = |r: &mut dyn Read| -> std::io::Result<u64> {
        let mut b = [0u8; 8];
        r.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    };
    let digest = |r: &mut dyn Read| -> std::io::Result<Digest> {
        let mut b = [0u8; 32];
        r.read_exact(&mut b)?;
        Ok(Digest(b))
    };
    let path = |r: &mut dyn Read| -> std::io::Result<PathBuf> {
        let mut len = [0u8; 4];
        r.read_exact(&mut len)?;
        let mut bytes = vec![0u8; u32::from_le_bytes(len) as usize];
        r.read_exact(&mut bytes)?;
        Ok(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
    };
    Ok(match byte(r)? {
        0 => Planned::Skip {
            rel: path(r)?,
            entry: JournalEntry {
                digest: digest(r)?,
                size: word(r)?,
                src_mtime_ns: word(r)? as i64,
                dest_mtime_ns: word(r)? as i64,
                dest_ino: word(r)?,
            },
        },
        1 => {
            let rel = path(r)?;
            let mut words = [0u64; 9];
            for w in &mut words {
                *w = word(r)?;
            }
            let meta = Meta::from_words(words);
            let change = *CHANGES
                .get(byte(r)? as usize)
                .ok_or_else(|| std::io::Error::other("a damaged plan record"))?;
            let expected = match byte(r)? {
                0 => None,
                _ => Some(digest(r)?),
            };
            Planned::Copy(Job {
                rel,
                meta,
                change,
                expected,
            })
        }
        2 => Planned::Link {
            rel: path(r)?,
            primary: path(r)?,
        },
        _ => return Err(std::io::Error::other("a damaged plan record")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_as_written_twice_over() {
        let dir = tempfile::tempdir().unwrap();
        let records = vec![
            Planned::Skip {
                rel: PathBuf::from("a b"),
                entry: JournalEntry {
                    digest: Digest::of(b"a"),
                    size: 1,
                    src_mtime_ns: -3,
                    dest_mtime_ns: 4,
                    dest_ino: 5,
                },
            },
            Planned::Copy(Job {
                rel: PathBuf::from("new\nline"),
                meta: Meta {
                    size: 7,
                    mode: 0o100644,
                    mtime_ns: -1,
                    atime_ns: 2,
                    ctime_ns: 3,
                    ino: 4,
                    dev: 5,
                    nlink: 2,
                    blocks: 8,
                },
                change: Change::Repair,
                expected: Some(Digest::of(b"x")),
            }),
            Planned::Copy(Job {
                rel: PathBuf::from("c"),
                meta: Meta::default(),
                change: Change::New,
                expected: None,
            }),
            Planned::Link {
                rel: PathBuf::from("d"),
                primary: PathBuf::from("new\nline"),
            },
        ];
        let mut plan = PlanFile::new(dir.path()).unwrap();
        for r in &records {
            plan.push(r).unwrap();
        }
        for _ in 0..2 {
            let back: Vec<Planned> = plan.read().unwrap().map(|r| r.unwrap()).collect();
            assert_eq!(back, records);
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the plan has a name"
        );
    }
}
