//! The bytes of a chunk: POSIX pax tar headers (`--format=posix`), GNU sparse 1.0 maps and
//! the end-of-archive marker, made deterministic.
//!
//! Every header is a function of the member alone: owner 0:0 without names, the source's
//! permission bits and mtime (nanoseconds in a pax `mtime` record), no atime or ctime,
//! pax records sorted by key, fixed names for the extended headers. Nothing of the run
//! (time, host, user, pid) goes in, so the same dataset gives the same bytes.
//!
//! Readers: GNU tar 1.x and bsdtar read everything here. A name or link target that is not
//! printable ASCII, or does not fit the ustar fields, goes in a pax `path`/`linkpath`
//! record (with `hdrcharset=BINARY` when it is not ASCII: the bytes are restored as they
//! are, whatever the reader's locale); the ustar field then holds an
//! ASCII stand-in. A sparse file is a GNU sparse 1.0 member (what `tar --format=posix
//! --sparse` writes): the map of data regions at the start of its data, then the regions.
//!
//! See docs/ARCHITECTURE.md#archives.

use std::collections::BTreeMap;

/// Size of a tar block.
pub const BLOCK: u64 = 512;
/// The end-of-archive marker: two zero blocks.
pub const END: u64 = 2 * BLOCK;

/// `n` rounded up to whole blocks.
pub fn padded(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

/// What a member is, as far as its header goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadKind {
    Dir,
    /// A regular file (or a part of one) with this many bytes of data.
    File {
        size: u64,
    },
    /// A GNU sparse 1.0 file: `stored` bytes of data (map and regions) for `real` bytes.
    Sparse {
        stored: u64,
        real: u64,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// A hard link to an earlier member, named as in the archive.
    HardLink {
        target: Vec<u8>,
    },
}

/// One member's header fields.
#[derive(Debug, Clone)]
pub struct Head<'a> {
    /// The member's name in the archive (folders end with `/`).
    pub name: &'a [u8],
    pub kind: HeadKind,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    pub mtime_ns: i64,
}

/// The header blocks of a member: a pax extended header when needed, then the ustar
/// header. The member's data (if any) follows them, padded to a block.
pub fn header_bytes(h: &Head<'_>) -> Vec<u8> {
    let mut pax: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    // Names are bytes: with `hdrcharset=BINARY` readers restore them as they are, whatever
    // their locale (bsdtar in the C locale refuses UTF-8 names otherwise).
    let mut binary = !h.name.is_ascii();
    let mut ustar = tar::Header::new_ustar();
    let (type_flag, size, link) = match &h.kind {
        HeadKind::Dir => (tar::EntryType::Directory, 0, None),
        HeadKind::File { size } => (tar::EntryType::Regular, *size, None),
        HeadKind::Sparse { stored, real } => {
            pax.insert("GNU.sparse.major", b"1".to_vec());
            pax.insert("GNU.sparse.minor", b"0".to_vec());
            pax.insert("GNU.sparse.name", h.name.to_vec());
            pax.insert("GNU.sparse.realsize", real.to_string().into_bytes());
            (tar::EntryType::Regular, *stored, None)
        }
        HeadKind::Symlink { target } => (tar::EntryType::Symlink, 0, Some(target)),
        HeadKind::HardLink { target } => (tar::EntryType::Link, 0, Some(target)),
    };
    let sparse = matches!(h.kind, HeadKind::Sparse { .. });
    {
        let fields = ustar.as_ustar_mut().expect("a ustar header");
        let name_fits = !sparse && set_ustar_name(&mut fields.name, &mut fields.prefix, h.name);
        if !name_fits {
            let stand_in = if sparse {
                sparse_stand_in(h.name)
            } else {
                h.name.to_vec()
            };
            fill(&mut fields.name, &ascii_stand_in(&stand_in, 100));
            if !sparse {
                pax.insert("path", h.name.to_vec());
            }
        }
        if let Some(target) = link {
            binary |= !target.is_ascii();
            if plain_ascii(target) && target.len() <= 100 {
                fill(&mut fields.linkname, target);
            } else {
                fill(&mut fields.linkname, &ascii_stand_in(target, 100));
                pax.insert("linkpath", target.clone());
            }
        }
    }
    if binary {
        pax.insert("hdrcharset", b"BINARY".to_vec());
    }
    let (secs, nanos) = (
        h.mtime_ns.div_euclid(1_000_000_000),
        h.mtime_ns.rem_euclid(1_000_000_000),
    );
    if nanos != 0 || !(0..0o77777777777).contains(&secs) {
        pax.insert("mtime", pax_time(h.mtime_ns).into_bytes());
    }
    if size > 0o77777777777 {
        pax.insert("size", size.to_string().into_bytes());
    }
    ustar.set_entry_type(type_flag);
    ustar.set_mode(h.mode & 0o7777);
    ustar.set_uid(0);
    ustar.set_gid(0);
    ustar.set_size(size);
    ustar.set_mtime(u64::try_from(secs).unwrap_or(0).min(0o77777777777));
    ustar.set_device_major(0).expect("ustar has device fields");
    ustar.set_device_minor(0).expect("ustar has device fields");
    ustar.set_cksum();

    let mut out = Vec::with_capacity(1536);
    if !pax.is_empty() {
        out.extend_from_slice(&pax_header(h.name, &pax));
    }
    out.extend_from_slice(ustar.as_bytes());
    out
}

/// A pax extended header (`x`) holding `records`, named as GNU tar names them
/// (`PaxHeaders/<base name>`), so that a reader without pax support extracts a small
/// text file instead of failing.
fn pax_header(name: &[u8], records: &BTreeMap<&str, Vec<u8>>) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_pax_extensions(records.iter().map(|(k, v)| (*k, v.as_slice())))
        .expect("writing to memory cannot fail");
    let mut bytes = std::mem::take(builder.get_mut());
    // The builder's header has an empty name; give it GNU's.
    let mut header = tar::Header::new_ustar();
    header
        .as_mut_bytes()
        .copy_from_slice(&bytes[..BLOCK as usize]);
    let base = name
        .trim_ascii_end()
        .strip_suffix(b"/")
        .unwrap_or(name)
        .rsplit(|&b| b == b'/')
        .next()
        .unwrap_or(name);
    let mut pax_name = b"PaxHeaders/".to_vec();
    pax_name.extend_from_slice(base);
    let fields = header.as_ustar_mut().expect("a ustar header");
    fill(&mut fields.name, &ascii_stand_in(&pax_name, 100));
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    bytes[..BLOCK as usize].copy_from_slice(header.as_bytes());
    bytes
}

/// A pax time: seconds, a dot and nine digits of nanoseconds (negative times keep their
/// sign in front).
pub fn pax_time(ns: i64) -> String {
    let sign = if ns < 0 { "-" } else { "" };
    let abs = ns.unsigned_abs();
    format!("{sign}{}.{:09}", abs / 1_000_000_000, abs % 1_000_000_000)
}

/// Puts `name` in the ustar name (and prefix) fields when it is printable ASCII and fits;
/// returns whether it did.
fn set_ustar_name(name_field: &mut [u8; 100], prefix_field: &mut [u8; 155], name: &[u8]) -> bool {
    if !plain_ascii(name) {
        return false;
    }
    if name.len() <= 100 {
        fill(name_field, name);
        return true;
    }
    // Split at a '/' so that the prefix holds at most 155 bytes and the rest at most 100.
    let body = name.strip_suffix(b"/").unwrap_or(name);
    for (i, &b) in body.iter().enumerate().rev() {
        if b != b'/' {
            continue;
        }
        let (prefix, rest) = (&name[..i], &name[i + 1..]);
        if prefix.len() <= 155 && rest.len() <= 100 && !rest.is_empty() {
            fill(prefix_field, prefix);
            fill(name_field, rest);
            return true;
        }
        if rest.len() > 100 {
            return false;
        }
    }
    false
}

/// Printable ASCII without anything a ustar field would mangle.
fn plain_ascii(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| (0x20..0x7f).contains(&b))
}

/// An ASCII stand-in for a name that only a pax record can hold: other bytes become `_`,
/// cut to `max` bytes.
fn ascii_stand_in(name: &[u8], max: usize) -> Vec<u8> {
    name.iter()
        .take(max)
        .map(|&b| if (0x20..0x7f).contains(&b) { b } else { b'_' })
        .collect()
}

/// GNU's stand-in name of a sparse member: `<dir>/GNUSparseFile.0/<base>`.
fn sparse_stand_in(name: &[u8]) -> Vec<u8> {
    let (dir, base) = match name.iter().rposition(|&b| b == b'/') {
        Some(i) => (&name[..=i], &name[i + 1..]),
        None => (&b""[..], name),
    };
    let mut out = dir.to_vec();
    out.extend_from_slice(b"GNUSparseFile.0/");
    out.extend_from_slice(base);
    out
}

fn fill(field: &mut [u8], value: &[u8]) {
    field.fill(0);
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// The data regions of a sparse file: `(offset, length)`, in order.
pub type Regions = Vec<(u64, u64)>;

/// The GNU sparse 1.0 map that starts a sparse member's data: the number of regions, then
/// each region's offset and length, one decimal number per line, padded to a block. A file
/// that ends in a hole gets a last region of length 0 at its end, as GNU tar writes it.
pub fn sparse_map(regions: &Regions, real: u64) -> Vec<u8> {
    let mut all = regions.clone();
    if all.last().is_none_or(|&(o, l)| o + l < real) {
        all.push((real, 0));
    }
    let mut text = format!("{}\n", all.len());
    for (o, l) in &all {
        text.push_str(&format!("{o}\n{l}\n"));
    }
    let mut out = text.into_bytes();
    out.resize(padded(out.len() as u64) as usize, 0);
    out
}

/// Reads a sparse map back (as [`sparse_map`] wrote it) from the start of a member's
/// data; returns the regions and the map's length in bytes (a whole number of blocks).
/// `None` when `data` does not hold a whole map yet (or is not one).
pub fn parse_sparse_map(data: &[u8]) -> Option<(Regions, u64)> {
    let mut numbers = Vec::new();
    let mut pos = 0usize;
    let mut want = None;
    while want.is_none_or(|w| numbers.len() < w) {
        let end = data[pos..].iter().position(|&b| b == b'\n')? + pos;
        let n: u64 = std::str::from_utf8(&data[pos..end]).ok()?.parse().ok()?;
        pos = end + 1;
        if want.is_none() {
            want = Some(1 + 2 * usize::try_from(n).ok()?);
        }
        numbers.push(n);
    }
    let regions = numbers[1..].chunks(2).map(|p| (p[0], p[1])).collect();
    Some((regions, padded(pos as u64)))
}

/// Bytes a sparse member stores: its map and its regions.
pub fn sparse_stored(regions: &Regions, real: u64) -> u64 {
    sparse_map(regions, real).len() as u64 + regions.iter().map(|r| r.1).sum::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(name: &[u8], kind: HeadKind) -> Vec<u8> {
        header_bytes(&Head {
            name,
            kind,
            mode: 0o644,
            mtime_ns: 1_700_000_000_000_000_000,
        })
    }

    #[test]
    fn a_short_ascii_name_needs_only_a_ustar_header() {
        let h = head(b"top/a.txt", HeadKind::File { size: 3 });
        assert_eq!(h.len(), 512);
        let parsed = tar::Header::from_byte_slice(&h);
        assert_eq!(&*parsed.path_bytes(), b"top/a.txt");
        assert_eq!(parsed.size().unwrap(), 3);
        assert_eq!(parsed.mtime().unwrap(), 1_700_000_000);
    }

    #[test]
    fn odd_names_and_nanoseconds_go_in_pax_records() {
        let h = header_bytes(&Head {
            name: "top/new\nline ✓".as_bytes(),
            kind: HeadKind::File { size: 0 },
            mode: 0o600,
            mtime_ns: 1_700_000_000_123_456_789,
        });
        assert_eq!(h.len(), 3 * 512);
        let text = String::from_utf8_lossy(&h[512..1024]);
        assert!(text.contains("mtime=1700000000.123456789\n"), "{text}");
        assert!(text.contains("path=top/new\nline ✓\n"), "{text}");
    }

    #[test]
    fn the_same_member_gives_the_same_bytes() {
        let a = head(
            "top/ü".as_bytes(),
            HeadKind::Symlink {
                target: b"x".to_vec(),
            },
        );
        let b = head(
            "top/ü".as_bytes(),
            HeadKind::Symlink {
                target: b"x".to_vec(),
            },
        );
        assert_eq!(a, b);
    }

    #[test]
    fn sparse_maps_round_trip() {
        let regions = vec![(4096, 4096), (1 << 20, 10)];
        let map = sparse_map(&regions, 2 << 20);
        assert_eq!(map.len() % 512, 0);
        let (back, len) = parse_sparse_map(&map).unwrap();
        assert_eq!(back, vec![(4096, 4096), (1 << 20, 10), (2 << 20, 0)]);
        assert_eq!(len, map.len() as u64);
        assert!(parse_sparse_map(&map[..3]).is_none());
    }
}
