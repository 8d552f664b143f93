//! Reading an archive back: `verify` (every chunk and every member against the index,
//! each chunk read once from storage) and `restore` (one member's bytes, read with a seek
//! or a range request and nothing else).
//!
//! See docs/ARCHITECTURE.md#archives.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::chunk::{parse_sparse_map, Regions};
use super::index::{Index, Row, INDEX_NAME};
use super::store::ChunkStore;
use super::{read_index, MANIFEST_NAME};
use crate::error::{Error, IoContext, Result};
use crate::hash::Digest;
use crate::manifest::{display_name, Manifest};
use crate::progress::Progress;

/// A piece of a member's file: bytes at an offset, or the length of a run of zeros (a
/// hole, which follows the previous piece).
enum Piece<'a> {
    Data(u64, &'a [u8]),
    Zeros(u64),
}

/// Turns the stored bytes of a member (a sparse member: its map, then its data regions)
/// into pieces of the file, in order.
struct Unpack {
    size: u64,
    sparse: bool,
    /// A sparse member's map, until it is whole.
    head: Vec<u8>,
    regions: Option<Regions>,
    region: usize,
    /// Bytes of the file passed on so far.
    at: u64,
}

impl Unpack {
    fn new(size: u64, sparse: bool) -> Self {
        Unpack {
            size,
            sparse,
            head: Vec::new(),
            regions: None,
            region: 0,
            at: 0,
        }
    }

    fn feed(&mut self, data: &[u8], out: &mut dyn FnMut(Piece<'_>) -> Result<()>) -> Result<()> {
        if !self.sparse {
            out(Piece::Data(self.at, data))?;
            self.at += data.len() as u64;
            return Ok(());
        }
        if self.regions.is_some() {
            return self.feed_regions(data, out);
        }
        self.head.extend_from_slice(data);
        let Some((regions, len)) = parse_sparse_map(&self.head) else {
            return Ok(());
        };
        if (self.head.len() as u64) < len {
            return Ok(()); // the map's padding is still to come
        }
        self.regions = Some(regions);
        let rest = self.head.split_off(len as usize);
        self.feed_regions(&rest, out)
    }

    /// The data regions of a sparse member, after its map.
    fn feed_regions(
        &mut self,
        mut data: &[u8],
        out: &mut dyn FnMut(Piece<'_>) -> Result<()>,
    ) -> Result<()> {
        let regions = self.regions.as_ref().expect("parsed above");
        while !data.is_empty() {
            while self.region < regions.len() && regions[self.region].1 == 0 {
                self.region += 1;
            }
            let Some(&(offset, len)) = regions.get(self.region) else {
                break; // past the last region: padding only
            };
            if self.at < offset {
                out(Piece::Zeros(offset - self.at))?;
                self.at = offset;
            }
            let k = ((offset + len - self.at) as usize).min(data.len());
            out(Piece::Data(self.at, &data[..k]))?;
            self.at += k as u64;
            data = &data[k..];
            if self.at == offset + len {
                self.region += 1;
            }
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut dyn FnMut(Piece<'_>) -> Result<()>) -> Result<()> {
        if self.at < self.size {
            out(Piece::Zeros(self.size - self.at))?;
            self.at = self.size;
        }
        Ok(())
    }
}

fn hash_piece(hasher: &mut Sha256, piece: Piece<'_>) {
    match piece {
        Piece::Data(_, d) => hasher.update(d),
        Piece::Zeros(n) => super::write::hash_zeros(hasher, n),
    }
}

/// A member whose bytes or digest differ from the index.
#[derive(Debug, Clone, Serialize)]
pub struct BadMember {
    pub path: String,
    pub chunk: Option<String>,
    pub expected: String,
    pub computed: String,
}

/// A chunk (or the index, or a README) that differs from the archive's records.
#[derive(Debug, Clone, Serialize)]
pub struct BadObject {
    pub name: String,
    pub reason: String,
}

/// What `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub archive: String,
    pub location: String,
    pub chunks: usize,
    pub members: usize,
    pub bytes_read: u64,
    pub bad_objects: Vec<BadObject>,
    pub bad_members: Vec<BadMember>,
}

impl Verified {
    pub fn ok(&self) -> bool {
        self.bad_objects.is_empty() && self.bad_members.is_empty()
    }
}

/// Re-reads every chunk of the archive in `store` from storage, checking each chunk's
/// length and digest and each member's digest against the index, and the index against
/// `ARCHIVE-MANIFEST.sha256` (and `expected_index`, the digest the records hold).
pub fn verify(
    store: &dyn ChunkStore,
    expected_index: Option<Digest>,
    progress: &dyn Progress,
) -> Result<Verified> {
    let index = read_index(store)?;
    let mut out = Verified {
        archive: index.archive.clone(),
        location: store.location(),
        chunks: index.chunks.len(),
        members: index.rows.len(),
        bytes_read: 0,
        bad_objects: Vec::new(),
        bad_members: Vec::new(),
    };
    let manifest_path = PathBuf::from(store.location()).join(MANIFEST_NAME);
    let manifest = Manifest::parse(&store.get_small(MANIFEST_NAME)?, &manifest_path)?;
    let listed = manifest.to_map();
    for (name, bytes) in [
        (INDEX_NAME, store.get_small(INDEX_NAME)?),
        (super::README_NAME, store.get_small(super::README_NAME)?),
    ] {
        let digest = Digest::of(&bytes);
        let want = listed.get(Path::new(name)).copied();
        if want != Some(digest) {
            out.bad_objects.push(BadObject {
                name: name.to_string(),
                reason: format!(
                    "hashes to {digest} but {MANIFEST_NAME} says {}",
                    want.map_or("nothing (not listed)".to_string(), |d| d.to_hex())
                ),
            });
        }
        if name == INDEX_NAME {
            if let Some(want) = expected_index.filter(|w| *w != digest) {
                out.bad_objects.push(BadObject {
                    name: name.to_string(),
                    reason: format!("hashes to {digest} but the archive's record says {want}"),
                });
            }
        }
    }
    let total: u64 = index.chunks.iter().map(|c| c.bytes).sum();
    progress.start(index.chunks.len() as u64, total);
    // Rows with data, by chunk, in offset order.
    let mut by_chunk: HashMap<&str, Vec<&Row>> = HashMap::new();
    for r in &index.rows {
        if let (Some(c), true) = (
            r.chunk.as_deref(),
            matches!(r.kind.as_str(), "file" | "sparse" | "part"),
        ) {
            by_chunk.entry(c).or_default().push(r);
        }
    }
    for rows in by_chunk.values_mut() {
        rows.sort_by_key(|r| r.offset);
    }
    let mut wholes: HashMap<PathBuf, Sha256> = HashMap::new();
    for c in &index.chunks {
        if listed.get(Path::new(&c.name)) != Some(&c.sha256) {
            out.bad_objects.push(BadObject {
                name: c.name.clone(),
                reason: format!("the index says {} but {MANIFEST_NAME} does not", c.sha256),
            });
        }
        let rows = by_chunk.remove(c.name.as_str()).unwrap_or_default();
        let mut state: Vec<(Sha256, Unpack)> = rows
            .iter()
            .map(|r| (Sha256::new(), Unpack::new(r.size, r.kind == "sparse")))
            .collect();
        let mut chunk_hasher = Sha256::new();
        let mut pos = 0u64;
        let mut first = 0usize;
        // One block more than the index says: a longer chunk is noticed.
        let read = store.read_range(&c.name, 0, c.bytes + 512, &mut |buf| {
            chunk_hasher.update(buf);
            let end = pos + buf.len() as u64;
            let mut i = first;
            while i < rows.len() && rows[i].offset < end {
                let r = rows[i];
                let (from, to) = (r.offset.max(pos), (r.offset + r.stored).min(end));
                if from < to {
                    let slice = &buf[(from - pos) as usize..(to - pos) as usize];
                    let (hasher, unpack) = &mut state[i];
                    unpack.feed(slice, &mut |p| {
                        hash_piece(hasher, p);
                        Ok(())
                    })?;
                    if r.kind == "part" {
                        if let Some(t) = &r.target {
                            wholes.entry(t.clone()).or_default().update(slice);
                        }
                    }
                }
                if r.offset + r.stored <= end && i == first {
                    first += 1;
                }
                i += 1;
            }
            progress.add_bytes(buf.len() as u64);
            pos = end;
            Ok(())
        });
        let read = match read {
            Ok(n) => n,
            Err(e) => {
                out.bad_objects.push(BadObject {
                    name: c.name.clone(),
                    reason: format!("cannot be read: {e}"),
                });
                continue;
            }
        };
        out.bytes_read += read;
        let digest = Digest::from_hasher(chunk_hasher);
        if read != c.bytes || digest != c.sha256 {
            out.bad_objects.push(BadObject {
                name: c.name.clone(),
                reason: format!(
                    "{read} bytes hashing to {digest}; the index says {} bytes, {}",
                    c.bytes, c.sha256
                ),
            });
        }
        for (r, (mut hasher, mut unpack)) in rows.iter().zip(state) {
            unpack.finish(&mut |p| {
                hash_piece(&mut hasher, p);
                Ok(())
            })?;
            check_row(r, Digest::from_hasher(hasher), &mut out);
        }
        progress.add_file();
    }
    for r in index.rows.iter().filter(|r| r.kind == "split") {
        let computed = wholes
            .remove(&r.path)
            .map(Digest::from_hasher)
            .unwrap_or(Digest::of(b""));
        check_row(r, computed, &mut out);
    }
    Ok(out)
}

fn check_row(r: &Row, computed: Digest, out: &mut Verified) {
    if let Some(expected) = r.sha256.filter(|e| *e != computed) {
        out.bad_members.push(BadMember {
            path: display_name(&r.path),
            chunk: r.chunk.clone(),
            expected: expected.to_hex(),
            computed: computed.to_hex(),
        });
    }
}

/// What `restore` did.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: Option<Digest>,
    /// Bytes read from the archive's chunks (the member's stored bytes).
    pub bytes_read: u64,
    pub chunks: Vec<String>,
}

/// Restores the member `file` (a path relative to the dataset) into the folder `to`,
/// reading only its bytes from the chunks that hold it, and checks its digest before it
/// gets its name.
pub fn restore(store: &dyn ChunkStore, file: &Path, to: &Path) -> Result<Restored> {
    let index = read_index(store)?;
    restore_from(store, &index, file, to)
}

/// [`restore`] with the index already read.
pub fn restore_from(
    store: &dyn ChunkStore,
    index: &Index,
    file: &Path,
    to: &Path,
) -> Result<Restored> {
    let file = file.strip_prefix(&index.top).unwrap_or(file);
    let Some(mut row) = index.find(file) else {
        let near: Vec<String> = index
            .rows
            .iter()
            .filter(|r| r.kind != "part" && r.kind != "dir")
            .filter(|r| r.path.file_name().is_some() && r.path.file_name() == file.file_name())
            .take(5)
            .map(|r| display_name(&r.path))
            .collect();
        return Err(Error::Invalid {
            what: "file",
            value: display_name(file),
            reason: if near.is_empty() {
                format!(
                    "not in archive {}; `hpcstage archive list {}` lists its files",
                    index.archive, index.archive
                )
            } else {
                format!(
                    "not in archive {}; did you mean: {}",
                    index.archive,
                    near.join(", ")
                )
            },
        });
    };
    let name = file.file_name().map(PathBuf::from).unwrap_or_default();
    std::fs::create_dir_all(to).at(to)?;
    let dest = to.join(&name);
    if std::fs::symlink_metadata(&dest).is_ok() {
        return Err(Error::Invalid {
            what: "restore destination",
            value: dest.display().to_string(),
            reason: "exists already; restore into another folder with --to DIR".into(),
        });
    }
    match row.kind.as_str() {
        "dir" => {
            return Err(Error::Invalid {
                what: "file",
                value: display_name(file),
                reason: "is a folder; restore whole folders by extracting the chunks with tar (see the archive's README.txt)".into(),
            })
        }
        "symlink" => {
            let target = row.target.clone().unwrap_or_default();
            std::os::unix::fs::symlink(&target, &dest).at(&dest)?;
            return Ok(Restored {
                path: dest,
                size: 0,
                sha256: None,
                bytes_read: 0,
                chunks: Vec::new(),
            });
        }
        "hardlink" => {
            let target = row.target.clone().unwrap_or_default();
            row = index.find(&target).ok_or_else(|| Error::ArchiveMismatch {
                path: PathBuf::from(store.location()).join(INDEX_NAME),
                reason: format!("{} is a hard link to {}, which the index does not list", display_name(file), display_name(&target)),
            })?;
        }
        _ => {}
    }
    let pieces: Vec<&Row> = if row.kind == "split" {
        index.parts_of(&row.path)
    } else {
        vec![row]
    };
    let tmp = tempfile::Builder::new()
        .prefix(crate::walk::TMP_PREFIX)
        .tempfile_in(to)
        .at(to)?;
    let mut hasher = Sha256::new();
    let mut bytes_read = 0u64;
    let mut chunks = Vec::new();
    let mut base = 0u64;
    for p in &pieces {
        let chunk = p.chunk.as_deref().ok_or_else(|| Error::ArchiveMismatch {
            path: PathBuf::from(store.location()).join(INDEX_NAME),
            reason: format!("{} has no chunk", display_name(&p.path)),
        })?;
        chunks.push(chunk.to_string());
        let mut unpack = Unpack::new(p.size, p.kind == "sparse");
        let f = tmp.as_file();
        let tmp_path = tmp.path().to_path_buf();
        let mut sink = |piece: Piece<'_>| -> Result<()> {
            if let Piece::Data(at, d) = &piece {
                f.write_all_at(d, base + at).at(&tmp_path)?;
            }
            hash_piece(&mut hasher, piece);
            Ok(())
        };
        let n = store.read_range(chunk, p.offset, p.stored, &mut |buf| {
            unpack.feed(buf, &mut sink)
        })?;
        unpack.finish(&mut sink)?;
        bytes_read += n;
        if n != p.stored {
            return Err(Error::ArchiveMismatch {
                path: PathBuf::from(store.location()).join(chunk),
                reason: format!(
                    "ends after {n} of the {} bytes of {}",
                    p.stored,
                    display_name(&p.path)
                ),
            });
        }
        base += p.size;
    }
    tmp.as_file().set_len(row.size).at(tmp.path())?;
    let computed = Digest::from_hasher(hasher);
    if let Some(expected) = row.sha256.filter(|e| *e != computed) {
        return Err(Error::ArchiveMismatch {
            path: PathBuf::from(store.location()).join(chunks.first().map(String::as_str).unwrap_or("")),
            reason: format!(
                "{} restores to bytes hashing to {computed}, but the index says {expected}; nothing was restored (run `hpcstage archive verify` on the archive)",
                display_name(file)
            ),
        });
    }
    tmp.as_file().sync_all().at(tmp.path())?;
    let perm = std::os::unix::fs::PermissionsExt::from_mode(row.mode);
    tmp.as_file().set_permissions(perm).at(tmp.path())?;
    let mtime = filetime::FileTime::from_unix_time(
        row.mtime_ns.div_euclid(1_000_000_000),
        row.mtime_ns.rem_euclid(1_000_000_000) as u32,
    );
    filetime::set_file_handle_times(tmp.as_file(), None, Some(mtime)).at(tmp.path())?;
    tmp.persist_noclobber(&dest)
        .map_err(|e| Error::io(&dest, e.error))?;
    Ok(Restored {
        path: dest,
        size: row.size,
        sha256: row.sha256,
        bytes_read,
        chunks,
    })
}
