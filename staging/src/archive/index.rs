//! `ARCHIVE-INDEX.tsv`: every member with its chunk, the byte offset of its data in the
//! chunk, its size and SHA-256, and every chunk's SHA-256.
//!
//! Plain text, one record a line, fields separated by TAB, so that `grep`, `awk` and `dd`
//! are enough to use it in 2036 (README.txt shows how). In names a backslash, TAB,
//! newline and CR are written `\\`, `\t`, `\n`, `\r`; nothing else is escaped.
//!
//! See docs/ARCHITECTURE.md#archives.

use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::chunk::pax_time;
use super::plan::{MemberKind, Plan};
use crate::error::{Error, Result};
use crate::hash::Digest;

/// File name of the index.
pub const INDEX_NAME: &str = "ARCHIVE-INDEX.tsv";

/// One chunk as the index lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkRow {
    pub name: String,
    pub bytes: u64,
    pub sha256: Digest,
}

/// One member as the index lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Row {
    /// The chunk holding it; `None` for the row of a split file (its parts are members)
    /// and for a hard link to one.
    pub chunk: Option<String>,
    /// Byte offset of its data in the chunk.
    pub offset: u64,
    /// Bytes of data the member stores (a sparse file: its map and data regions).
    pub stored: u64,
    /// dir, file, sparse, symlink, hardlink, part, split.
    pub kind: String,
    /// Bytes of the file (a part: of the part).
    pub size: u64,
    pub mode: u32,
    pub mtime_ns: i64,
    pub sha256: Option<Digest>,
    /// Path relative to the dataset (a part: the part's own name).
    #[serde(serialize_with = "ser_path")]
    pub path: PathBuf,
    /// Symlink text, hard link's first name, or the file a part belongs to.
    #[serde(serialize_with = "ser_opt_path")]
    pub target: Option<PathBuf>,
}

fn ser_path<S: serde::Serializer>(p: &Path, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(p.as_os_str().as_bytes()))
}

fn ser_opt_path<S: serde::Serializer>(
    p: &Option<PathBuf>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match p {
        Some(p) => ser_path(p, s),
        None => s.serialize_none(),
    }
}

/// The index of an archive.
#[derive(Debug, Clone, Default)]
pub struct Index {
    pub archive: String,
    pub dataset: String,
    /// The folder every member's name starts with.
    pub top: String,
    pub chunk_size: u64,
    pub chunks: Vec<ChunkRow>,
    pub rows: Vec<Row>,
}

impl Index {
    /// The index of a finished plan: `chunks` are the chunks' digests, `part_digests`
    /// those of the parts of split files, by member number.
    pub fn from_plan(
        archive: &str,
        dataset: &str,
        plan: &Plan,
        chunks: Vec<ChunkRow>,
        part_digests: &std::collections::BTreeMap<usize, Digest>,
    ) -> Index {
        let rows = plan
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let in_chunk = m.chunk != usize::MAX;
                let kind = match m.kind {
                    MemberKind::File | MemberKind::Sparse if !in_chunk => "split",
                    k => k.as_str(),
                };
                let (path, target) = match m.kind {
                    MemberKind::Part => (
                        PathBuf::from(std::ffi::OsString::from_vec(m.tar_rel())),
                        Some(m.rel.clone()),
                    ),
                    _ => (m.rel.clone(), m.target.clone()),
                };
                Row {
                    chunk: in_chunk.then(|| chunks[m.chunk].name.clone()),
                    offset: if in_chunk { m.data_offset() } else { 0 },
                    stored: m.stored,
                    kind: kind.to_string(),
                    size: m.size,
                    mode: m.mode,
                    mtime_ns: m.mtime_ns,
                    sha256: m.digest.or_else(|| part_digests.get(&i).copied()),
                    path,
                    target,
                }
            })
            .collect();
        Index {
            archive: archive.to_string(),
            dataset: dataset.to_string(),
            top: plan.top.clone(),
            chunk_size: plan.chunk_size,
            chunks,
            rows,
        }
    }

    /// The text of `ARCHIVE-INDEX.tsv`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(HEADER.as_bytes());
        for (k, v) in [
            ("archive", self.archive.as_str()),
            ("dataset", self.dataset.as_str()),
            ("top", self.top.as_str()),
        ] {
            line(&mut out, &[k.as_bytes(), &escape(v.as_bytes())]);
        }
        line(
            &mut out,
            &[b"chunk-size", self.chunk_size.to_string().as_bytes()],
        );
        for c in &self.chunks {
            line(
                &mut out,
                &[
                    b"chunk",
                    c.name.as_bytes(),
                    c.bytes.to_string().as_bytes(),
                    c.sha256.to_hex().as_bytes(),
                ],
            );
        }
        for r in &self.rows {
            let digest = r.sha256.map_or("-".to_string(), |d| d.to_hex());
            let target = r
                .target
                .as_deref()
                .map(|t| escape(t.as_os_str().as_bytes()))
                .unwrap_or_default();
            line(
                &mut out,
                &[
                    b"member",
                    r.chunk.as_deref().unwrap_or("-").as_bytes(),
                    r.chunk
                        .as_ref()
                        .map_or("-".to_string(), |_| r.offset.to_string())
                        .as_bytes(),
                    r.stored.to_string().as_bytes(),
                    r.kind.as_bytes(),
                    r.size.to_string().as_bytes(),
                    format!("{:04o}", r.mode).as_bytes(),
                    pax_time(r.mtime_ns).as_bytes(),
                    digest.as_bytes(),
                    &escape(r.path.as_os_str().as_bytes()),
                    &target,
                ],
            );
        }
        out
    }

    /// Reads an index; `origin` names it in errors.
    pub fn parse(text: &[u8], origin: &Path) -> Result<Index> {
        let mut index = Index::default();
        for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
            if raw.is_empty() || raw.starts_with(b"#") {
                continue;
            }
            let bad = |reason: &str| Error::Manifest {
                path: origin.to_path_buf(),
                line: i + 1,
                reason: reason.to_string(),
            };
            let f: Vec<&[u8]> = raw.split(|&b| b == b'\t').collect();
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            let num = |b: &[u8]| -> Result<u64> {
                std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| bad("expected a number"))
            };
            let digest = |b: &[u8]| -> Result<Digest> {
                std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| bad("expected 64 hex digits"))
            };
            let unesc = |b: &[u8]| -> Result<PathBuf> {
                unescape(b)
                    .map(|v| PathBuf::from(std::ffi::OsString::from_vec(v)))
                    .ok_or_else(|| bad("bad escape in a name"))
            };
            match (f[0], f.len()) {
                (b"archive", 2) => index.archive = text(&unesc(f[1])?.into_os_string().into_vec()),
                (b"dataset", 2) => index.dataset = text(&unesc(f[1])?.into_os_string().into_vec()),
                (b"top", 2) => index.top = text(&unesc(f[1])?.into_os_string().into_vec()),
                (b"chunk-size", 2) => index.chunk_size = num(f[1])?,
                (b"chunk", 4) => index.chunks.push(ChunkRow {
                    name: text(f[1]),
                    bytes: num(f[2])?,
                    sha256: digest(f[3])?,
                }),
                (b"member", 11) => {
                    let chunk = (f[1] != b"-").then(|| text(f[1]));
                    index.rows.push(Row {
                        offset: if chunk.is_some() { num(f[2])? } else { 0 },
                        chunk,
                        stored: num(f[3])?,
                        kind: text(f[4]),
                        size: num(f[5])?,
                        mode: u32::from_str_radix(&text(f[6]), 8).map_err(|_| bad("expected an octal mode"))?,
                        mtime_ns: parse_time(&text(f[7])).ok_or_else(|| bad("expected a time"))?,
                        sha256: if f[8] == b"-" { None } else { Some(digest(f[8])?) },
                        path: unesc(f[9])?,
                        target: if f[10].is_empty() { None } else { Some(unesc(f[10])?) },
                    });
                }
                _ => return Err(bad("not an index line (expected archive, dataset, top, chunk-size, chunk or member with their fields)")),
            }
        }
        Ok(index)
    }

    /// The row of the file at `path` (relative to the dataset) that a restore takes:
    /// not a part, not a folder.
    pub fn find(&self, path: &Path) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.path == path && r.kind != "part")
    }

    /// The parts of the split file `path`, in order.
    pub fn parts_of(&self, path: &Path) -> Vec<&Row> {
        self.rows
            .iter()
            .filter(|r| r.kind == "part" && r.target.as_deref() == Some(path))
            .collect()
    }
}

const HEADER: &str = "\
# hpcstage archive index, format 1. Fields are separated by TAB. In names a backslash,
# TAB, newline and CR are written \\\\, \\t, \\n and \\r.
# chunk   NAME BYTES SHA256
# member  CHUNK OFFSET STORED KIND SIZE MODE MTIME SHA256 PATH TARGET
#   OFFSET: where the member's data starts in CHUNK (after its tar headers), in bytes.
#   STORED: bytes of data in the chunk; SIZE: bytes of the file; for KIND sparse the data
#   is a GNU sparse map followed by the file's data regions.
#   KIND: dir file sparse symlink hardlink (TARGET: its first name) part (TARGET: the
#   file it belongs to) split (a file stored as parts; CHUNK and OFFSET are -).
#   PATH is relative to the dataset; in the chunks every name starts with the top folder.
";

fn line(out: &mut Vec<u8>, fields: &[&[u8]]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        out.extend_from_slice(f);
    }
    out.push(b'\n');
}

/// `\\`, `\t`, `\n`, `\r`.
pub fn escape(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len());
    for &b in name {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
    out
}

fn unescape(name: &[u8]) -> Option<Vec<u8>> {
    crate::manifest::unescape_with(
        name,
        &[(b'\\', b'\\'), (b't', b'\t'), (b'n', b'\n'), (b'r', b'\r')],
    )
}

fn parse_time(s: &str) -> Option<i64> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, nanos) = s.split_once('.')?;
    let v = secs.parse::<i64>().ok()? * 1_000_000_000 + nanos.parse::<i64>().ok()?;
    Some(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_reads_back_what_it_wrote() {
        let index = Index {
            archive: "P-d-1".into(),
            dataset: "P/d".into(),
            top: "d".into(),
            chunk_size: 1 << 20,
            chunks: vec![ChunkRow {
                name: "chunk-00001.tar".into(),
                bytes: 10240,
                sha256: Digest::of(b"x"),
            }],
            rows: vec![Row {
                chunk: Some("chunk-00001.tar".into()),
                offset: 1536,
                stored: 3,
                kind: "file".into(),
                size: 3,
                mode: 0o644,
                mtime_ns: -1_500_000_000,
                sha256: Some(Digest::of(b"abc")),
                path: PathBuf::from("new\nline\\x\ty"),
                target: None,
            }],
        };
        let text = index.to_bytes();
        let back = Index::parse(&text, Path::new("i")).unwrap();
        assert_eq!(back.rows, index.rows);
        assert_eq!(back.chunks, index.chunks);
        assert_eq!(back.top, "d");
    }
}
