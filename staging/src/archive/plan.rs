//! The plan of an archive: which members, in which order, in which chunk, at which byte.
//!
//! Everything is decided here, before a byte is written, from the dataset alone: files,
//! links and then folders, each in the byte order of their paths (the dataset's
//! `MANIFEST.sha256` among the files), each
//! hard link right after the first name of its inode (so that the link and its data share
//! a chunk), members packed greedily into chunks of at most the chunk size, and a file too
//! big for a chunk cut into parts of its own. The offsets follow from the header sizes.
//! That is what makes the chunks deterministic and a killed archive resumable: a rerun
//! plans the same layout and skips the chunks already verified.
//!
//! See docs/ARCHITECTURE.md#archives.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::chunk::{header_bytes, padded, sparse_map, sparse_stored, Head, HeadKind, Regions, END};
use crate::error::{Error, IoContext, Result};
use crate::hash::Digest;
use crate::manifest::{display_name, Manifest};
use crate::walk::{self, Filter, Kind, MANIFEST_NAME};

/// The smallest chunk size taken (room for the headers of a long name, and some data).
pub const MIN_CHUNK: u64 = 1 << 20;

/// What a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberKind {
    Dir,
    File,
    /// A file stored with its holes (GNU sparse 1.0).
    Sparse,
    Symlink,
    /// Another name of a file archived earlier.
    HardLink,
    /// One part of a file too big for a chunk.
    Part,
}

impl MemberKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberKind::Dir => "dir",
            MemberKind::File => "file",
            MemberKind::Sparse => "sparse",
            MemberKind::Symlink => "symlink",
            MemberKind::HardLink => "hardlink",
            MemberKind::Part => "part",
        }
    }
}

/// One tar member.
#[derive(Debug, Clone)]
pub struct Member {
    pub kind: MemberKind,
    /// The path of the file it restores, relative to the dataset.
    pub rel: PathBuf,
    /// For a part: its number (from 1) and how many parts the file has.
    pub part: Option<(u32, u32)>,
    pub mode: u32,
    pub mtime_ns: i64,
    /// Bytes of the file (a part: bytes of the part).
    pub size: u64,
    /// For a part: where it starts in the file.
    pub start: u64,
    /// Data bytes the member stores (its map and regions for a sparse file).
    pub stored: u64,
    /// Link target (a symlink's text, or a hard link's first name, relative to the dataset).
    pub target: Option<PathBuf>,
    pub regions: Option<Regions>,
    /// The digest of the file, from the dataset's manifest (a part's comes when written).
    pub digest: Option<Digest>,
    /// Where the member's headers start in its chunk, and how long they are.
    pub chunk: usize,
    pub header_offset: u64,
    pub header_len: u64,
}

impl Member {
    /// Where its data starts in its chunk.
    pub fn data_offset(&self) -> u64 {
        self.header_offset + self.header_len
    }

    /// Its name in the archive's tar, relative to the top folder.
    pub fn tar_rel(&self) -> Vec<u8> {
        let mut name = self.rel.as_os_str().as_bytes().to_vec();
        if let Some((n, of)) = self.part {
            name.extend_from_slice(part_suffix(n, of).as_bytes());
        }
        name
    }

    /// The header blocks of the member, under the top folder `top`.
    pub fn header(&self, top: &[u8]) -> Vec<u8> {
        let name = tar_name(top, &self.tar_rel(), self.kind == MemberKind::Dir);
        let kind = match self.kind {
            MemberKind::Dir => HeadKind::Dir,
            MemberKind::File | MemberKind::Part => HeadKind::File { size: self.stored },
            MemberKind::Sparse => HeadKind::Sparse {
                stored: self.stored,
                real: self.size,
            },
            MemberKind::Symlink => HeadKind::Symlink {
                target: self.target_bytes().to_vec(),
            },
            MemberKind::HardLink => HeadKind::HardLink {
                target: tar_name(top, self.target_bytes(), false),
            },
        };
        header_bytes(&Head {
            name: &name,
            kind,
            mode: self.mode,
            mtime_ns: self.mtime_ns,
        })
    }

    fn target_bytes(&self) -> &[u8] {
        self.target
            .as_deref()
            .map(|t| t.as_os_str().as_bytes())
            .unwrap_or_default()
    }

    /// The sparse map that starts the member's data.
    pub fn map(&self) -> Option<Vec<u8>> {
        self.regions.as_ref().map(|r| sparse_map(r, self.size))
    }
}

/// `.part-0001`: the suffix of a part's name (four digits, more for 10,000 parts or more).
pub fn part_suffix(n: u32, of: u32) -> String {
    let width = of.to_string().len().max(4);
    format!(".part-{n:0width$}")
}

/// `top/rel` (with a trailing `/` for a folder); the top folder itself for an empty `rel`.
pub fn tar_name(top: &[u8], rel: &[u8], dir: bool) -> Vec<u8> {
    let mut name = top.to_vec();
    if !rel.is_empty() {
        name.push(b'/');
        name.extend_from_slice(rel);
    }
    if dir {
        name.push(b'/');
    }
    name
}

/// One chunk of the layout.
#[derive(Debug, Clone)]
pub struct ChunkPlan {
    /// `chunk-00001.tar`.
    pub name: String,
    /// Its members: a range of [`Plan::members`].
    pub members: std::ops::Range<usize>,
    /// Its length in bytes, end-of-archive marker included.
    pub bytes: u64,
}

/// The whole layout.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The top folder of every member's name (the dataset's name).
    pub top: String,
    pub chunk_size: u64,
    pub members: Vec<Member>,
    pub chunks: Vec<ChunkPlan>,
    /// Files and bytes of the dataset (regular files, each inode once).
    pub files: u64,
    pub bytes: u64,
    /// SHA-256 of the dataset's manifest.
    pub manifest_digest: Digest,
    /// A digest of the whole layout: a journal written under another plan is not resumed.
    pub fingerprint: Digest,
}

/// Plans the archive of the dataset folder `root`, named `top` inside the chunks.
pub fn plan(root: &Path, top: &str, chunk_size: u64) -> Result<Plan> {
    if chunk_size < MIN_CHUNK {
        return Err(Error::Invalid {
            what: "chunk size",
            value: chunk_size.to_string(),
            reason: format!("chunks hold at least {} bytes (1 MiB)", MIN_CHUNK),
        });
    }
    let manifest_path = root.join(MANIFEST_NAME);
    let manifest_bytes = std::fs::read(&manifest_path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Invalid {
                what: "dataset",
                value: root.display().to_string(),
                reason: format!(
                    "it has no {MANIFEST_NAME}, so nothing could check the archive against it; \
                     create one first: hpcstage manifest create {}",
                    root.display()
                ),
            }
        } else {
            Error::io(&manifest_path, e)
        }
    })?;
    let manifest = Manifest::parse(&manifest_bytes, &manifest_path)?;
    let manifest_digest = Digest::of(&manifest_bytes);
    let listed = manifest.to_map();

    let tree = walk::walk(root, &Filter::default())?;
    if let Some(e) = tree.errors.into_iter().next() {
        return Err(e);
    }
    let root_meta = std::fs::symlink_metadata(root).at(root)?;
    let mut entries = tree.entries;
    walk::sort_by_bytes(&mut entries, |e| &e.rel);

    let mut unlisted = Vec::new();
    let mut seen_files = std::collections::HashSet::new();
    for e in &entries {
        match e.kind {
            Kind::Other => {
                return Err(Error::Invalid {
                    what: "dataset entry",
                    value: root.join(&e.rel).display().to_string(),
                    reason:
                        "a socket, FIFO or device cannot be archived; remove it from the dataset"
                            .into(),
                })
            }
            Kind::File if !listed.contains_key(e.rel.as_path()) => unlisted.push(e.rel.clone()),
            Kind::File => {
                seen_files.insert(e.rel.as_path());
            }
            _ => {}
        }
    }
    if let Some(first) = unlisted.first() {
        return Err(Error::Invalid {
            what: "dataset",
            value: root.display().to_string(),
            reason: format!(
                "{} files are not in its {MANIFEST_NAME} (the first: {}), so they could not be \
                 checked; an archive holds only checked data (see `hpcstage manifest verify {}`)",
                unlisted.len(),
                display_name(first),
                root.display()
            ),
        });
    }
    if let Some(missing) = manifest
        .entries
        .iter()
        .find(|m| !seen_files.contains(m.path.as_path()))
    {
        return Err(Error::ArchiveMismatch {
            path: root.join(&missing.path),
            reason: format!("listed in {MANIFEST_NAME} but not in the dataset (or not a regular file); the dataset is not complete"),
        });
    }

    let top_bytes = top.as_bytes();
    let mut members: Vec<Member> = Vec::new();
    let mut files = 0u64;
    let mut bytes = 0u64;
    let mut first_name: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut links_of: HashMap<PathBuf, Vec<usize>> = HashMap::new();
    let base = |kind, rel: PathBuf, mode: u32, mtime_ns: i64| Member {
        kind,
        rel,
        part: None,
        mode: mode & 0o7777,
        mtime_ns,
        size: 0,
        start: 0,
        stored: 0,
        target: None,
        regions: None,
        digest: None,
        chunk: 0,
        header_offset: 0,
        header_len: 0,
    };
    // Folders go after everything else (in byte order too), so that extracting the chunks
    // one after the other with plain tar creates them writable as it goes and gives them
    // their modes and times last: a read-only folder of chunk 1 would refuse the files of
    // chunk 2, and a file written into a folder changes its mtime.
    let mut dirs: Vec<Member> = Vec::new();
    dirs.push(base(
        MemberKind::Dir,
        PathBuf::new(),
        root_meta_mode(&root_meta),
        crate::walk::Meta::from_std(&root_meta).mtime_ns,
    ));
    // The manifest goes in at its place in byte order, as a file of the dataset.
    let manifest_meta = std::fs::symlink_metadata(&manifest_path).at(&manifest_path)?;
    let manifest_entry = walk::Entry {
        rel: PathBuf::from(MANIFEST_NAME),
        kind: Kind::File,
        meta: crate::walk::Meta::from_std(&manifest_meta),
    };
    let at = entries.partition_point(|e| e.rel.as_os_str().as_bytes() < MANIFEST_NAME.as_bytes());
    entries.insert(at, manifest_entry);

    for e in entries {
        let m = &e.meta;
        match e.kind {
            Kind::Dir => dirs.push(base(MemberKind::Dir, e.rel, m.mode, m.mtime_ns)),
            Kind::Symlink => {
                let path = root.join(&e.rel);
                let mut member = base(MemberKind::Symlink, e.rel, 0o777, m.mtime_ns);
                member.target = Some(std::fs::read_link(&path).at(&path)?);
                members.push(member);
            }
            Kind::File => {
                if m.nlink > 1 {
                    if let Some(first) = first_name.get(&(m.dev, m.ino)) {
                        let mut member = base(MemberKind::HardLink, e.rel, m.mode, m.mtime_ns);
                        member.target = Some(first.clone());
                        member.digest = listed.get(member.rel.as_path()).copied();
                        links_of
                            .entry(first.clone())
                            .or_default()
                            .push(members.len());
                        members.push(member);
                        continue;
                    }
                    first_name.insert((m.dev, m.ino), e.rel.clone());
                }
                files += 1;
                bytes += m.size;
                let path = root.join(&e.rel);
                let digest = match listed.get(e.rel.as_path()) {
                    Some(d) => *d,
                    None => Digest::of(&manifest_bytes), // the manifest itself
                };
                let mut member = base(MemberKind::File, e.rel, m.mode, m.mtime_ns);
                member.size = m.size;
                member.stored = m.size;
                member.digest = Some(digest);
                if m.is_sparse() {
                    if let Some(regions) = data_regions(&path, m.size)? {
                        member.kind = MemberKind::Sparse;
                        member.stored = sparse_stored(&regions, m.size);
                        member.regions = Some(regions);
                    }
                }
                members.push(member);
            }
            Kind::Other => unreachable!("refused above"),
        }
    }
    // Hard links right after their first name, in byte order among themselves.
    let order = group_links(&members, &links_of);
    let mut members: Vec<Member> = order.into_iter().map(|i| members[i].clone()).collect();
    members.extend(dirs);

    let (members, chunks) = layout(members, top_bytes, chunk_size);
    let mut plan = Plan {
        top: top.to_string(),
        chunk_size,
        members,
        chunks,
        files,
        bytes,
        manifest_digest,
        fingerprint: Digest([0; 32]),
    };
    plan.fingerprint = fingerprint(&plan);
    Ok(plan)
}

fn root_meta_mode(m: &std::fs::Metadata) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&m.permissions())
}

/// Member indices with every hard link moved right after the first name of its file.
fn group_links(members: &[Member], links_of: &HashMap<PathBuf, Vec<usize>>) -> Vec<usize> {
    let mut order = Vec::with_capacity(members.len());
    for (i, m) in members.iter().enumerate() {
        if m.kind == MemberKind::HardLink {
            continue;
        }
        order.push(i);
        if matches!(m.kind, MemberKind::File | MemberKind::Sparse) {
            if let Some(links) = links_of.get(&m.rel) {
                order.extend(links);
            }
        }
    }
    order
}

/// Packs members into chunks; a file that does not fit a chunk alone becomes parts, each in
/// a chunk of its own (its hard links then cannot be tar links: they are kept in the index
/// only, with `ln` in the README).
fn layout(members: Vec<Member>, top: &[u8], chunk_size: u64) -> (Vec<Member>, Vec<ChunkPlan>) {
    let mut out: Vec<Member> = Vec::with_capacity(members.len());
    let mut chunks: Vec<ChunkPlan> = Vec::new();
    let mut used = 0u64;
    let mut start = 0usize;
    let mut split_files: std::collections::HashSet<PathBuf> = Default::default();
    let close = |chunks: &mut Vec<ChunkPlan>, start: &mut usize, end: usize, used: &mut u64| {
        if end > *start {
            chunks.push(ChunkPlan {
                name: format!("chunk-{:05}.tar", chunks.len() + 1),
                members: *start..end,
                bytes: *used + END,
            });
        }
        *start = end;
        *used = 0;
    };
    // Groups: a member and the hard links that follow it.
    let mut i = 0;
    while i < members.len() {
        let mut j = i + 1;
        while j < members.len()
            && members[j].kind == MemberKind::HardLink
            && members[j].target.as_ref() == Some(&members[i].rel)
        {
            j += 1;
        }
        let mut group: Vec<Member> = members[i..j].to_vec();
        for m in &mut group {
            m.header_len = m.header(top).len() as u64;
        }
        let need: u64 = group.iter().map(|m| m.header_len + padded(m.stored)).sum();
        if need + END <= chunk_size {
            if used + need + END > chunk_size {
                close(&mut chunks, &mut start, out.len(), &mut used);
            }
            for mut m in group {
                if m.kind == MemberKind::HardLink
                    && m.target.as_ref().is_some_and(|t| split_files.contains(t))
                {
                    m.chunk = usize::MAX;
                    out.push(m);
                    continue;
                }
                m.chunk = chunks.len();
                m.header_offset = used;
                used += m.header_len + padded(m.stored);
                out.push(m);
            }
        } else {
            // A file bigger than a chunk: parts of their own.
            close(&mut chunks, &mut start, out.len(), &mut used);
            let file = group.remove(0);
            split_files.insert(file.rel.clone());
            let mut probe = file.clone();
            probe.kind = MemberKind::Part;
            probe.regions = None;
            probe.part = Some((u32::MAX, u32::MAX));
            let header = probe.header(top).len() as u64 + 64; // room for a longer number
            let cap = (chunk_size - END - header) / 512 * 512;
            let parts = file.size.div_ceil(cap).max(1);
            let parts = u32::try_from(parts).unwrap_or(u32::MAX);
            for n in 0..parts {
                let mut part = file.clone();
                part.kind = MemberKind::Part;
                part.regions = None;
                part.part = Some((n + 1, parts));
                part.start = u64::from(n) * cap;
                part.size = cap.min(file.size - part.start);
                part.stored = part.size;
                part.digest = None;
                part.header_len = part.header(top).len() as u64;
                part.chunk = chunks.len();
                part.header_offset = 0;
                used = part.header_len + padded(part.stored);
                out.push(part);
                close(&mut chunks, &mut start, out.len(), &mut used);
            }
            // The file's own row (whole size and digest) for the index: no tar member.
            let mut whole = file;
            whole.kind = MemberKind::File;
            whole.chunk = usize::MAX;
            whole.stored = 0;
            whole.regions = None;
            out.push(whole);
            start = out.len();
            for mut link in group {
                link.chunk = usize::MAX;
                out.push(link);
            }
            start = out.len().max(start);
        }
        i = j;
    }
    close(&mut chunks, &mut start, out.len(), &mut used);
    (out, chunks)
}

/// The data regions of a sparse file from `SEEK_DATA`/`SEEK_HOLE`; `None` when the
/// filesystem does not tell, or the file has no hole after all.
fn data_regions(path: &Path, size: u64) -> Result<Option<Regions>> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).at(path)?;
    let fd = file.as_raw_fd();
    let mut regions = Vec::new();
    let mut pos: i64 = 0;
    let end = i64::try_from(size).unwrap_or(i64::MAX);
    while pos < end {
        // SAFETY: lseek on a descriptor we own.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole from here on
            }
            return Ok(None);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Ok(None);
        }
        let hole = hole.min(end);
        regions.push((data as u64, (hole - data) as u64));
        pos = hole;
    }
    let data: u64 = regions.iter().map(|r| r.1).sum();
    Ok((data < size).then_some(regions))
}

/// A digest of everything the layout decided (chunk size, names, kinds, sizes, modes,
/// times, targets, digests, places).
fn fingerprint(plan: &Plan) -> Digest {
    let mut h = Sha256::new();
    h.update(format!(
        "hpcstage-archive-1\n{}\n{}\n",
        plan.top, plan.chunk_size
    ));
    h.update(plan.manifest_digest.0);
    for m in &plan.members {
        h.update(m.tar_rel());
        h.update([0]);
        h.update(m.target_bytes());
        h.update(format!(
            "\0{} {} {} {} {} {} {} {:?}\n",
            m.kind.as_str(),
            m.mode,
            m.mtime_ns,
            m.size,
            m.stored,
            m.chunk,
            m.header_offset,
            m.regions
        ));
        if let Some(d) = m.digest {
            h.update(d.0);
        }
    }
    Digest::from_hasher(h)
}
