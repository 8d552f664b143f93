//! Writing the chunks of a plan: each member read once from the dataset and hashed as it
//! is read (checked against the dataset's `MANIFEST.sha256`), the chunk hashed as it is
//! written, then committed by the store (flushed, read back from storage, compared,
//! renamed) and only then recorded in the resume journal.
//!
//! A rerun of a killed archive plans the same layout; the journal says which chunks were
//! verified under that plan, and those whose object is still the one recorded are kept.
//!
//! See docs/ARCHITECTURE.md#archives.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::chunk::{padded, END};
use super::index::ChunkRow;
use super::plan::{MemberKind, Plan};
use super::store::{ChunkStore, ChunkWriter, Stored};
use crate::error::{Error, IoContext, Result};
use crate::hash::{self, Digest};
use crate::manifest::check_listed;
use crate::progress::Progress;

/// One line of the resume journal: a chunk verified under a plan.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct JournalLine {
    plan: Digest,
    chunk: usize,
    name: String,
    sha256: Digest,
    stored: Stored,
    /// Digests of the parts of split files in this chunk, by member number.
    parts: Vec<(usize, Digest)>,
}

/// What writing the chunks gave.
pub struct Written {
    pub chunks: Vec<ChunkRow>,
    pub part_digests: BTreeMap<usize, Digest>,
    /// Chunks kept from an earlier run, and written by this one.
    pub resumed: usize,
    pub written: usize,
}

/// Writes every chunk of `plan` that the journal does not already vouch for.
pub fn write_chunks(
    root: &Path,
    plan: &Plan,
    store: &dyn ChunkStore,
    progress: &dyn Progress,
) -> Result<Written> {
    let mut done: HashMap<usize, JournalLine> = HashMap::new();
    for line in store.journal()?.split(|&b| b == b'\n') {
        // A torn last line (killed while appending) is ignored: that chunk is written again.
        if let Ok(l) = serde_json::from_slice::<JournalLine>(line) {
            if l.plan == plan.fingerprint {
                done.insert(l.chunk, l);
            }
        }
    }
    let total: u64 = plan.chunks.iter().map(|c| c.bytes).sum();
    progress.start(plan.chunks.len() as u64, total);
    let mut out = Written {
        chunks: Vec::with_capacity(plan.chunks.len()),
        part_digests: BTreeMap::new(),
        resumed: 0,
        written: 0,
    };
    let mut wholes = WholeHashers::default();
    for (ci, chunk) in plan.chunks.iter().enumerate() {
        let kept = done.get(&ci).filter(|l| {
            l.name == chunk.name && store.stat(&chunk.name).ok().flatten() == Some(l.stored)
        });
        let (digest, parts) = match kept {
            Some(l) => {
                out.resumed += 1;
                progress.add_bytes(chunk.bytes);
                (l.sha256, l.parts.clone())
            }
            None => {
                if let Some(signal) = crate::interrupt::received() {
                    return Err(Error::Interrupted {
                        signal,
                        verified: ci as u64,
                        total: plan.chunks.len() as u64,
                        dest: PathBuf::from(store.location()),
                    });
                }
                let writer = store.create(&chunk.name)?;
                let mut w = Hashing {
                    inner: writer,
                    hasher: Sha256::new(),
                    bytes: 0,
                    progress,
                    name: PathBuf::from(store.location()).join(&chunk.name),
                };
                let parts = write_members(root, plan, ci, &mut w, &mut wholes)?;
                w.write_all(&[0u8; END as usize]).at(w.name.clone())?;
                let Hashing {
                    inner,
                    hasher,
                    bytes,
                    ..
                } = w;
                assert_eq!(bytes, chunk.bytes, "the plan's length of {}", chunk.name);
                let digest = Digest::from_hasher(hasher);
                let stored = inner.commit(digest, bytes)?;
                let line = JournalLine {
                    plan: plan.fingerprint,
                    chunk: ci,
                    name: chunk.name.clone(),
                    sha256: digest,
                    stored,
                    parts: parts.clone(),
                };
                let mut text = serde_json::to_vec(&line).expect("journal lines serialize");
                text.push(b'\n');
                store.append_journal(&text)?;
                out.written += 1;
                (digest, parts)
            }
        };
        progress.add_file();
        out.part_digests.extend(parts);
        out.chunks.push(ChunkRow {
            name: chunk.name.clone(),
            bytes: chunk.bytes,
            sha256: digest,
        });
    }
    Ok(out)
}

/// Counts and hashes what goes to the store.
struct Hashing<'a> {
    inner: Box<dyn ChunkWriter + 'a>,
    hasher: Sha256,
    bytes: u64,
    progress: &'a dyn Progress,
    /// The chunk, for errors.
    name: PathBuf,
}

impl Write for Hashing<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        self.progress.add_bytes(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes of split files in progress, by path: (hasher, bytes hashed so far).
#[derive(Default)]
struct WholeHashers(HashMap<PathBuf, (Sha256, u64)>);

/// Writes the members of chunk `ci`; returns the digests of the parts among them.
fn write_members(
    root: &Path,
    plan: &Plan,
    ci: usize,
    out: &mut Hashing<'_>,
    wholes: &mut WholeHashers,
) -> Result<Vec<(usize, Digest)>> {
    let top = plan.top.as_bytes();
    let range = plan.chunks[ci].members.clone();
    let mut parts = Vec::new();
    for i in range {
        let m = &plan.members[i];
        debug_assert_eq!(m.chunk, ci);
        debug_assert_eq!(m.header_offset, out.bytes);
        out.write_all(&m.header(top)).at(out.name.clone())?;
        let path = root.join(&m.rel);
        match m.kind {
            MemberKind::Dir | MemberKind::Symlink | MemberKind::HardLink => {}
            MemberKind::File => {
                let mut hasher = Sha256::new();
                copy_range_into(&path, 0, m.size, out, &mut [&mut hasher])?;
                check_listed(&path, m.digest, Digest::from_hasher(hasher))?;
            }
            MemberKind::Part => {
                let (whole, hashed) = wholes
                    .0
                    .remove(&m.rel)
                    .filter(|(_, at)| *at == m.start)
                    .map_or_else(|| prefix_hash(&path, m.start), Ok)?;
                let mut part = Sha256::new();
                let mut whole = whole;
                {
                    let mut sinks: [&mut Sha256; 2] = [&mut part, &mut whole];
                    copy_range_into(&path, m.start, m.size, out, &mut sinks)?;
                }
                parts.push((i, Digest::from_hasher(part)));
                let (n, of) = m.part.expect("a part has its number");
                if n == of {
                    let file_row = plan.members[i + 1..]
                        .iter()
                        .find(|w| w.rel == m.rel && w.kind == MemberKind::File)
                        .expect("a split file has its own row");
                    check_listed(&path, file_row.digest, Digest::from_hasher(whole))?;
                } else {
                    wholes.0.insert(m.rel.clone(), (whole, hashed + m.size));
                }
            }
            MemberKind::Sparse => {
                let map = m.map().expect("a sparse member has its map");
                out.write_all(&map).at(out.name.clone())?;
                let mut logical = Sha256::new();
                let mut at = 0u64;
                for &(offset, len) in m.regions.as_ref().expect("regions") {
                    hash_zeros(&mut logical, offset - at);
                    copy_range_into(&path, offset, len, out, &mut [&mut logical])?;
                    at = offset + len;
                }
                hash_zeros(&mut logical, m.size - at);
                check_listed(&path, m.digest, Digest::from_hasher(logical))?;
            }
        }
        let pad = padded(m.stored) - m.stored;
        out.write_all(&vec![0u8; pad as usize])
            .at(out.name.clone())?;
    }
    Ok(parts)
}

/// Hashes the first `len` bytes of the file (a split file resumed after its first parts).
fn prefix_hash(path: &Path, len: u64) -> Result<(Sha256, u64)> {
    let mut hasher = Sha256::new();
    let mut file = File::open(path).at(path)?;
    hash::advise_sequential(&file);
    let n = std::io::copy(&mut (&mut file).take(len), &mut HashSink(&mut hasher)).at(path)?;
    if n != len {
        return Err(Error::SourceChanged {
            path: path.to_path_buf(),
        });
    }
    Ok((hasher, len))
}

struct HashSink<'a>(&'a mut Sha256);

impl Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Hashes `n` zero bytes (the holes of a sparse file).
pub(crate) fn hash_zeros(hasher: &mut Sha256, mut n: u64) {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        hasher.update(&ZEROS[..k]);
        n -= k as u64;
    }
}

/// Copies `start..start + len` of the file at `path` into the chunk, feeding `sinks`;
/// a file shorter than that changed since it was planned.
fn copy_range_into(
    path: &Path,
    start: u64,
    len: u64,
    out: &mut Hashing<'_>,
    sinks: &mut [&mut Sha256],
) -> Result<()> {
    let mut file = File::open(path).at(path)?;
    hash::advise_sequential(&file);
    if start > 0 {
        file.seek(SeekFrom::Start(start)).at(path)?;
    }
    let mut left = len;
    hash::with_buffer(|buf| -> Result<()> {
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = match file.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(Error::SourceChanged {
                        path: path.to_path_buf(),
                    })
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(path, e)),
            };
            for s in sinks.iter_mut() {
                s.update(&buf[..n]);
            }
            out.write_all(&buf[..n])
                .map_err(|e| Error::io(&out.name, e))?;
            left -= n as u64;
        }
        Ok(())
    })?;
    Ok(())
}
