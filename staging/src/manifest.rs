//! `MANIFEST.sha256`: reading and writing GNU `sha256sum` text, creating it for a tree
//! and checking a tree against it.
//!
//! Written manifests are byte-compatible with `sha256sum` (text mode, two spaces, names
//! relative to the manifest's folder, sorted by bytes, GNU escaping for `\`, newline and
//! CR). Reading takes what GNU `sha256sum -c` takes (see [`LineReader`]): binary-mode `*`
//! lines, `./` prefixes, BSD `--tag` lines, CRLF line ends and upper-case hex.
//! A manifest path that is absolute or climbs out with `..` is refused, never followed.
//!
//! See docs/ARCHITECTURE.md#manifests.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, IoContext, Result};
pub use crate::progress::{NoProgress, Progress};
use crate::walk::{self, Filter, MANIFEST_NAME};
use crate::{digest::Digest, hash::hash_file};

/// One manifest line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Relative path, checked to stay inside the manifest's folder.
    pub path: PathBuf,
    pub digest: Digest,
}

/// The entries of a manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// Builds a manifest from entries, sorted by path bytes.
    pub fn from_entries(mut entries: Vec<ManifestEntry>) -> Self {
        walk::sort_by_bytes(&mut entries, |e| &e.path);
        Manifest { entries }
    }

    /// The `MANIFEST.sha256` at the top of `dir`, if there is one (a malformed or hostile
    /// one is an error, not "none").
    pub fn read_if_present(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(MANIFEST_NAME);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Self::read(&path).map(Some),
            _ => Ok(None),
        }
    }

    /// Reads and parses a manifest file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read(path).at(path)?;
        Self::parse(&text, path)
    }

    /// Parses manifest text; `origin` names it in errors. Blank lines and `#` comments
    /// are skipped; any other malformed line is an error with its line number.
    pub fn parse(text: &[u8], origin: &Path) -> Result<Self> {
        let mut entries = Vec::new();
        let mut seen: HashMap<PathBuf, Digest> = HashMap::new();
        let mut lines = LineReader::default();
        for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
            let Some(entry) = lines.entry(raw, i + 1, origin)? else {
                continue;
            };
            if let Some(prev) = seen.insert(entry.path.clone(), entry.digest) {
                if prev != entry.digest {
                    return Err(listed_twice(origin, i + 1));
                }
                continue;
            }
            entries.push(entry);
        }
        Ok(Manifest { entries })
    }

    /// The manifest as `sha256sum` would print it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * 100);
        for e in &self.entries {
            write_line(&mut out, &e.digest, e.path.as_os_str().as_bytes());
        }
        out
    }

    /// SHA-256 of the manifest text: one value that stands for the whole tree.
    pub fn digest(&self) -> Digest {
        Digest::of(&self.to_bytes())
    }

    /// Writes the manifest atomically (temporary file, then rename), a line at a time.
    pub fn write_atomic(&self, path: &Path) -> Result<()> {
        write_entries_atomic(path, self.entries.iter().cloned().map(Ok)).map(|_| ())
    }

    /// Path → digest lookup.
    pub fn to_map(&self) -> HashMap<&Path, Digest> {
        self.entries
            .iter()
            .map(|e| (e.path.as_path(), e.digest))
            .collect()
    }

    /// Total number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the manifest lists nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename,
/// so readers see the old or the new content, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, &mut |w| w.write_all(bytes))
}

/// Writes what `entries` yields, in that order, as the manifest `path`, atomically and a
/// line at a time: the text is never whole in memory, however many files it lists.
/// Returns how many entries it holds and the digest of its text ([`Manifest::digest`]).
/// An error from `entries` stops it, and the old file stays as it was.
pub fn write_entries_atomic(
    path: &Path,
    entries: impl Iterator<Item = Result<ManifestEntry>>,
) -> Result<(u64, Digest)> {
    let mut manifest = ManifestWriter::create(path, None)?;
    for e in entries {
        manifest.push(&e?)?;
    }
    manifest.commit()
}

/// A manifest written a line at a time under a temporary name and given its own by
/// [`ManifestWriter::commit`]: readers see the old one or the new one, never a torn one,
/// and its text is never whole in memory. Dropped uncommitted, the temporary is removed.
pub struct ManifestWriter {
    file: AtomicFile,
    count: u64,
    hasher: Sha256,
    line: Vec<u8>,
}

impl ManifestWriter {
    /// Starts the manifest `path`, its temporary in `temporary_in` (by default the
    /// manifest's folder).
    pub fn create(path: &Path, temporary_in: Option<&Path>) -> Result<ManifestWriter> {
        Ok(ManifestWriter {
            file: AtomicFile::create_in(path, temporary_in)?,
            count: 0,
            hasher: Sha256::new(),
            line: Vec::with_capacity(256),
        })
    }

    /// One more line; entries come in the order the manifest lists them.
    pub fn push(&mut self, e: &ManifestEntry) -> Result<()> {
        self.line.clear();
        write_line(&mut self.line, &e.digest, e.path.as_os_str().as_bytes());
        self.hasher.update(&self.line);
        self.count += 1;
        let out = &mut self.file.out;
        out.write_all(&self.line)
            .at(out.get_ref().path().to_path_buf())
    }

    /// Gives the manifest its name. Returns how many entries it holds and the digest of
    /// its text ([`Manifest::digest`]).
    pub fn commit(self) -> Result<(u64, Digest)> {
        self.file.commit()?;
        Ok((self.count, Digest::from_hasher(self.hasher)))
    }
}

/// [`write_atomic`] of what `write` writes (buffered).
fn write_atomic_with(
    path: &Path,
    write: &mut dyn FnMut(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    write(&mut file.out).at(file.out.get_ref().path().to_path_buf())?;
    file.commit()
}

/// A file written under a temporary name in its folder and renamed to its own on
/// [`AtomicFile::commit`], so readers see the old or the new content, never a torn one;
/// dropped uncommitted, the temporary is removed.
pub(crate) struct AtomicFile {
    path: PathBuf,
    /// Where to write (buffered).
    pub(crate) out: std::io::BufWriter<tempfile::NamedTempFile>,
}

impl AtomicFile {
    pub(crate) fn create(path: &Path) -> Result<AtomicFile> {
        AtomicFile::create_in(path, None)
    }

    /// The temporary in `dir` (on the same filesystem), by default `path`'s folder.
    pub(crate) fn create_in(path: &Path, dir: Option<&Path>) -> Result<AtomicFile> {
        let dir = dir.unwrap_or(path.parent().unwrap_or(Path::new(".")));
        let tmp = tempfile::Builder::new()
            .prefix(walk::TMP_PREFIX)
            .tempfile_in(dir)
            .at(dir)?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            out: std::io::BufWriter::with_capacity(1 << 20, tmp),
        })
    }

    /// Flushes, syncs and gives the file its name (mode 0644).
    pub(crate) fn commit(self) -> Result<()> {
        let AtomicFile { path, mut out } = self;
        out.flush().at(out.get_ref().path().to_path_buf())?;
        let tmp = out
            .into_inner()
            .map_err(|e| Error::io(&path, e.into_error()))?;
        tmp.as_file().sync_data().at(tmp.path().to_path_buf())?;
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o644);
        tmp.as_file()
            .set_permissions(mode)
            .at(tmp.path().to_path_buf())?;
        tmp.persist(&path).map_err(|e| Error::io(&path, e.error))?;
        Ok(())
    }
}

/// [`write_atomic`], then reads the file back from storage (not the page cache) and
/// checks it holds `bytes`: for the small files hpcstage writes itself into a verified
/// folder (README.md, run.json, dataset.json). Returns their digest.
pub fn write_verified(path: &Path, bytes: &[u8]) -> Result<Digest> {
    write_atomic(path, bytes)?;
    let wrote = Digest::of(bytes);
    let (read, read_len) = crate::hash::hash_from_storage(path)?;
    if read != wrote || read_len != bytes.len() as u64 {
        return Err(Error::ReadBackMismatch {
            path: path.to_path_buf(),
            wrote: wrote.to_hex(),
            wrote_len: bytes.len() as u64,
            read: read.to_hex(),
            read_len,
        });
    }
    Ok(wrote)
}

/// Appends one GNU-format line for `name`.
pub fn write_line(out: &mut Vec<u8>, digest: &Digest, name: &[u8]) {
    let escape = needs_escape(name);
    if escape {
        out.push(b'\\');
    }
    digest.push_hex(out);
    out.extend_from_slice(b"  ");
    if escape {
        escape_into(out, name);
    } else {
        out.extend_from_slice(name);
    }
    out.push(b'\n');
}

/// True when GNU tools escape this name (it holds `\`, newline or CR).
pub fn needs_escape(name: &[u8]) -> bool {
    name.iter().any(|&b| matches!(b, b'\\' | b'\n' | b'\r'))
}

/// GNU escaping of a name: `\\`, `\n`, `\r`.
pub fn escape_into(out: &mut Vec<u8>, name: &[u8]) {
    for &b in name {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

/// A name for display on one line: escaped the GNU way when needed, with the `\` marker.
pub fn display_name(path: &Path) -> String {
    let bytes = path.as_os_str().as_bytes();
    if needs_escape(bytes) {
        let mut out = vec![b'\\'];
        escape_into(&mut out, bytes);
        String::from_utf8_lossy(&out).into_owned()
    } else {
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// Reverses [`escape_into`]; `None` for an unknown escape.
pub fn unescape(name: &[u8]) -> Option<Vec<u8>> {
    unescape_with(name, &[(b'\\', b'\\'), (b'n', b'\n'), (b'r', b'\r')])
}

/// Reverses backslash escapes: `\\` followed by the first byte of a pair of `escapes`
/// stands for its second byte; `None` for any other escape.
pub fn unescape_with(name: &[u8], escapes: &[(u8, u8)]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(name.len());
    let mut it = name.iter();
    while let Some(&b) = it.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let next = it.next()?;
        out.push(escapes.iter().find(|(k, _)| k == next)?.1);
    }
    Some(out)
}

/// Reads manifest lines one after another the way GNU `sha256sum -c` (coreutils 9.1)
/// does, so that a manifest it accepts is accepted here and one it refuses is refused:
/// - a trailing CR is dropped (Windows tools write CRLF), once: a second CR is part of
///   the name, as for GNU;
/// - leading blanks are skipped; hex digits may be upper case;
/// - `SHA256 (name) = hex` tag lines, with or without blanks around `=`, the name up to
///   the last `)`;
/// - `hex  name` (text), `hex *name` (binary), and the "reversed" `hex name` form; GNU
///   refuses a manifest that mixes the reversed form with the others, and so does this.
///
/// Where GNU only warns about a malformed line, this refuses it with its line number:
/// a manifest that is partly unreadable does not vouch for anything.
#[derive(Default)]
pub(crate) struct LineReader {
    /// `Some(true)` once a reversed `hex name` line was read, `Some(false)` once a
    /// `hex  name` or `hex *name` line was.
    reversed: Option<bool>,
}

impl LineReader {
    /// One line of manifest text (without its `\n`): `None` for a blank line or a `#`
    /// comment, an error naming `origin` and the line number for anything malformed or
    /// unsafe.
    pub(crate) fn entry(
        &mut self,
        raw: &[u8],
        line_no: usize,
        origin: &Path,
    ) -> Result<Option<ManifestEntry>> {
        if raw.starts_with(b"#") {
            return Ok(None);
        }
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.is_empty() {
            return Ok(None);
        }
        let (digest, name) = self.parse(raw).map_err(|reason| Error::Manifest {
            path: origin.to_path_buf(),
            line: line_no,
            reason: reason.to_string(),
        })?;
        let path = safe_relative(&name).ok_or_else(|| Error::UnsafePath {
            path: origin.to_path_buf(),
            line: line_no,
            entry: String::from_utf8_lossy(&name).into_owned(),
        })?;
        Ok(Some(ManifestEntry { path, digest }))
    }

    fn parse(&mut self, raw: &[u8]) -> std::result::Result<(Digest, Vec<u8>), &'static str> {
        let start = raw.iter().position(|b| !is_blank(*b)).unwrap_or(raw.len());
        let line = &raw[start..];
        let (escaped, line) = match line.strip_prefix(b"\\") {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let (hex, name) = match tag_body(line) {
            Some(body) => split_tag(body)?,
            None => self.split_plain(line)?,
        };
        let hex = std::str::from_utf8(hex).map_err(|_| "checksum is not hex")?;
        let digest: Digest = hex
            .parse()
            .map_err(|_| "bad checksum (expected 64 hex digits)")?;
        if name.is_empty() {
            return Err("missing path");
        }
        let name = if escaped {
            unescape(name).ok_or("bad escape in path (only \\\\, \\n and \\r are allowed)")?
        } else {
            name.to_vec()
        };
        Ok((digest, name))
    }

    /// `hex  name`, `hex *name` or the reversed `hex name`.
    fn split_plain<'a>(
        &mut self,
        line: &'a [u8],
    ) -> std::result::Result<(&'a [u8], &'a [u8]), &'static str> {
        if line.len() < 66 {
            return Err("truncated line (expected 64 hex digits, two spaces or ' *', a path)");
        }
        let (hex, rest) = line.split_at(64);
        if !is_blank(rest[0]) {
            return Err("malformed line (expected 64 hex digits, then '  ' or ' *', then a path)");
        }
        let rest = &rest[1..];
        let reversed = rest.len() == 1 || !matches!(rest[0], b' ' | b'*');
        if reversed {
            if self.reversed == Some(false) {
                return Err("a `hex name` line (one blank) among `hex  name` lines; GNU sha256sum refuses such a mix too");
            }
            self.reversed = Some(true);
            return Ok((hex, rest));
        }
        if self.reversed == Some(true) {
            // GNU keeps the whole rest as the name once the manifest is in reversed form.
            return Ok((hex, rest));
        }
        self.reversed = Some(false);
        Ok((hex, &rest[1..]))
    }
}

fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t')
}

/// What follows `SHA256 (` or `SHA256(` on a BSD tag line.
fn tag_body(line: &[u8]) -> Option<&[u8]> {
    let rest = line.strip_prefix(b"SHA256")?;
    let rest = rest.strip_prefix(b" ").unwrap_or(rest);
    rest.strip_prefix(b"(")
}

/// `name) = hex`: the name runs to the last `)` (BSD tools do not escape names), blanks
/// may surround the `=`.
fn split_tag(body: &[u8]) -> std::result::Result<(&[u8], &[u8]), &'static str> {
    const MALFORMED: &str = "malformed --tag line (expected `SHA256 (path) = hex`)";
    let close = body.iter().rposition(|&b| b == b')').ok_or(MALFORMED)?;
    let (name, after) = (&body[..close], &body[close + 1..]);
    let after = &after[after.iter().take_while(|b| is_blank(**b)).count()..];
    let after = after.strip_prefix(b"=").ok_or(MALFORMED)?;
    let hex = &after[after.iter().take_while(|b| is_blank(**b)).count()..];
    Ok((hex, name))
}

pub(crate) fn listed_twice(origin: &Path, line_no: usize) -> Error {
    Error::Manifest {
        path: origin.to_path_buf(),
        line: line_no,
        reason: "the same path is listed twice with different checksums".to_string(),
    }
}

/// Turns a manifest name into a relative path that stays inside its folder.
/// Strips `./` prefixes; refuses absolute paths, `..`, empty names and NUL bytes.
pub fn safe_relative(name: &[u8]) -> Option<PathBuf> {
    if name.contains(&0) {
        return None;
    }
    let path = PathBuf::from(std::ffi::OsString::from_vec(name.to_vec()));
    let mut clean = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!clean.as_os_str().is_empty()).then_some(clean)
}

/// Result of [`create`]: the manifest plus the files that could not be read.
#[derive(Debug, Default)]
pub struct Created {
    pub manifest: Manifest,
    pub bytes: u64,
    pub errors: Vec<Error>,
}

/// A file's digest as read against its line in the source's own manifest, when it has
/// one: a difference is corruption at the source.
pub fn check_listed(path: &Path, listed: Option<Digest>, computed: Digest) -> Result<()> {
    match listed {
        Some(listed) if listed != computed => Err(Error::SourceCorrupt {
            path: path.to_path_buf(),
            computed: computed.to_hex(),
            expected: listed.to_hex(),
        }),
        _ => Ok(()),
    }
}

/// Hashes every regular file under `dir` (not following links) in parallel.
/// Files that cannot be read are listed in `errors`, not silently left out.
pub fn create(dir: &Path, filter: &Filter, progress: &dyn Progress) -> Result<Created> {
    let mut text = Vec::new();
    let streamed = create_into(dir, filter, progress, &mut text)?;
    Ok(Created {
        manifest: Manifest::parse(&text, &dir.join(MANIFEST_NAME))?,
        bytes: streamed.bytes,
        errors: streamed.errors,
    })
}

/// What [`create_into`] wrote.
#[derive(Debug, Default)]
pub struct Streamed {
    pub files: u64,
    pub bytes: u64,
    /// Of the manifest text written (as [`Manifest::digest`]).
    pub digest: Option<Digest>,
    /// Files and folders that could not be read (left out of the text: the caller must
    /// not present it as complete).
    pub errors: Vec<Error>,
}

/// Files in flight between the folder walk and the writer of [`create_into`].
const STREAM_WINDOW: usize = 4096;

/// Hashes every regular file under `dir` (not following links) and writes the manifest
/// text to `out` as it goes, already in order: the folders are read one at a time in
/// manifest order and the files hashed on the current pool's threads, with a bounded
/// number in flight. Memory does not grow with the number of files.
pub fn create_into(
    dir: &Path,
    filter: &Filter,
    progress: &dyn Progress,
    out: &mut dyn Write,
) -> Result<Streamed> {
    if !dir.is_dir() {
        return Err(Error::SourceMissing {
            path: dir.to_path_buf(),
        });
    }
    // Metadata first, in one parallel sweep (see walk::warm); then the files in order.
    walk::warm(dir, filter);
    let walk_errors = std::sync::Mutex::new(Vec::new());
    let mut streamed = Streamed::default();
    let mut text_hash = Sha256::new();
    let mut write_error = None;
    let mut line = Vec::with_capacity(256);
    crate::ordered::ordered(
        rayon::current_num_threads(),
        STREAM_WINDOW,
        |emit| {
            let mut errors = Vec::new();
            // The folder was checked above; a walk error is collected, not returned.
            let _ = walk::files_in_order(dir, filter, &mut errors, &mut |rel| {
                // Cached by the sweep above; the size keeps big files apart.
                let size = std::fs::symlink_metadata(dir.join(&rel)).map_or(0, |m| m.len());
                emit(rel, size);
            });
            walk_errors.lock().expect("errors lock").extend(errors);
        },
        |rel: PathBuf| {
            let hashed = hash_file(&dir.join(&rel));
            if let Ok((_, n)) = &hashed {
                progress.add_bytes(*n);
            }
            progress.add_file();
            (rel, hashed)
        },
        |(rel, hashed)| match hashed {
            Ok((digest, n)) => {
                line.clear();
                write_line(&mut line, &digest, rel.as_os_str().as_bytes());
                text_hash.update(&line);
                if write_error.is_none() {
                    write_error = out.write_all(&line).err();
                }
                streamed.files += 1;
                streamed.bytes += n;
            }
            Err(e) => streamed.errors.push(e),
        },
    );
    if let Some(e) = write_error {
        return Err(Error::io(dir.join(MANIFEST_NAME), e));
    }
    streamed.digest = Some(Digest::from_hasher(text_hash));
    streamed
        .errors
        .extend(walk_errors.into_inner().expect("errors lock"));
    Ok(streamed)
}

/// Outcome for one manifest entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Ok,
    /// Content differs; carries the digest computed now.
    Failed(Digest),
    Missing,
    /// Present but could not be read (the message says why).
    Unreadable(String),
}

/// Result of [`verify`].
#[derive(Debug, Default)]
pub struct Verified {
    /// In manifest order.
    pub checks: Vec<(PathBuf, Check)>,
    /// Regular files present in the tree but not in the manifest.
    pub unlisted: Vec<PathBuf>,
    pub bytes: u64,
}

impl Verified {
    /// Counts of (ok, failed, missing, unreadable).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let mut c = (0, 0, 0, 0);
        for (_, check) in &self.checks {
            match check {
                Check::Ok => c.0 += 1,
                Check::Failed(_) => c.1 += 1,
                Check::Missing => c.2 += 1,
                Check::Unreadable(_) => c.3 += 1,
            }
        }
        c
    }

    /// True when every entry is OK (unlisted files do not make a tree corrupt).
    pub fn all_ok(&self) -> bool {
        self.checks.iter().all(|(_, c)| *c == Check::Ok)
    }
}

/// Checks every file listed in `manifest` under `dir`, in parallel, and finds the files
/// present but not listed.
pub fn verify(dir: &Path, manifest: &Manifest, progress: &dyn Progress) -> Result<Verified> {
    let checks: Vec<(PathBuf, Check, u64)> = manifest
        .entries
        .par_iter()
        .map(|e| {
            let result = check_entry(dir, e);
            progress.add_bytes(result.1);
            progress.add_file();
            (e.path.clone(), result.0, result.1)
        })
        .collect();
    let listed: std::collections::HashSet<&Path> =
        manifest.entries.iter().map(|e| e.path.as_path()).collect();
    let tree = walk::walk(dir, &Filter::default())?;
    let mut unlisted: Vec<PathBuf> = tree
        .files()
        .filter(|e| !listed.contains(e.rel.as_path()))
        .map(|e| e.rel.clone())
        .collect();
    walk::sort_by_bytes(&mut unlisted, |p| p);
    let bytes = checks.iter().map(|c| c.2).sum();
    Ok(Verified {
        checks: checks.into_iter().map(|(p, c, _)| (p, c)).collect(),
        unlisted,
        bytes,
    })
}

/// Hashes one listed file and compares: the outcome and the bytes read.
pub(crate) fn check_entry(dir: &Path, e: &ManifestEntry) -> (Check, u64) {
    let path = dir.join(&e.path);
    match std::fs::symlink_metadata(&path) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => (Check::Missing, 0),
        Ok(m) if !m.is_file() => (Check::Unreadable("not a regular file".to_string()), 0),
        _ => match hash_file(&path) {
            Ok((d, n)) if d == e.digest => (Check::Ok, n),
            Ok((d, n)) => (Check::Failed(d), n),
            Err(Error::Io { error: source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                (Check::Missing, 0)
            }
            Err(err) => (Check::Unreadable(err.to_string()), 0),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Digest {
        Digest::of(s.as_bytes())
    }

    #[test]
    fn writes_gnu_text_mode_sorted_by_bytes() {
        let m = Manifest::from_entries(vec![
            ManifestEntry {
                path: "b".into(),
                digest: d("b"),
            },
            ManifestEntry {
                path: "B".into(),
                digest: d("B"),
            },
            ManifestEntry {
                path: "a b".into(),
                digest: d("a"),
            },
        ]);
        let text = String::from_utf8(m.to_bytes()).unwrap();
        let names: Vec<&str> = text.lines().map(|l| &l[66..]).collect();
        assert_eq!(names, vec!["B", "a b", "b"]);
        assert_eq!(&text[64..66], "  ");
    }

    #[test]
    fn escapes_backslash_newline_and_cr_like_gnu() {
        let mut out = Vec::new();
        write_line(&mut out, &d("x"), b"a\\b\nc\rd");
        let expected = format!("\\{}  a\\\\b\\nc\\rd\n", d("x"));
        assert_eq!(String::from_utf8(out.clone()).unwrap(), expected);
        let m = Manifest::parse(&out, Path::new("M")).unwrap();
        assert_eq!(m.entries[0].path, PathBuf::from("a\\b\nc\rd"));
    }

    #[test]
    fn reads_binary_mode_dot_slash_and_bsd_tags() {
        let h = d("x").to_hex();
        let text = format!("{h} *./a\n{h}  ./sub/b\nSHA256 (c) = x) = {h}\n# note\n\n");
        let m = Manifest::parse(text.as_bytes(), Path::new("M")).unwrap();
        let paths: Vec<_> = m.entries.iter().map(|e| e.path.clone()).collect();
        assert_eq!(
            paths,
            vec![
                PathBuf::from("a"),
                PathBuf::from("sub/b"),
                PathBuf::from("c) = x")
            ]
        );
    }

    #[test]
    fn refuses_paths_that_escape() {
        let h = d("x").to_hex();
        for name in ["../etc/passwd", "/etc/passwd", "a/../../b", "./.."] {
            let text = format!("{h}  {name}\n");
            let err = Manifest::parse(text.as_bytes(), Path::new("M")).unwrap_err();
            assert!(
                matches!(err, Error::UnsafePath { line: 1, .. }),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn malformed_lines_name_their_line_number() {
        let h = d("x").to_hex();
        let cases = [
            format!("{h}  ok\n{}  short-hex\n", &h[..60]),
            format!("{h}  ok\n{h}\n"),
            format!("{h}  ok\nzz{}  bad-hex\n", &h[2..]),
            format!("{h}  ok\n{h} -x\n"),
            format!("{h}  ok\n\\{h}  bad\\qescape\n"),
        ];
        for text in cases {
            let err = Manifest::parse(text.as_bytes(), Path::new("M")).unwrap_err();
            assert!(
                matches!(err, Error::Manifest { line: 2, .. }),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn conflicting_duplicates_are_refused() {
        let text = format!("{}  a\n{}  ./a\n", d("1"), d("2"));
        assert!(Manifest::parse(text.as_bytes(), Path::new("M")).is_err());
        let same = format!("{}  a\n{}  ./a\n", d("1"), d("1"));
        assert_eq!(
            Manifest::parse(same.as_bytes(), Path::new("M"))
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn create_then_verify_finds_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("s")).unwrap();
        std::fs::write(dir.path().join("s/one"), "1").unwrap();
        std::fs::write(dir.path().join("two"), "2").unwrap();
        let created = create(dir.path(), &Filter::default(), &NoProgress).unwrap();
        assert_eq!(created.manifest.len(), 2);
        assert_eq!(created.bytes, 2);
        std::fs::write(dir.path().join("two"), "3").unwrap();
        std::fs::remove_file(dir.path().join("s/one")).unwrap();
        std::fs::write(dir.path().join("new"), "n").unwrap();
        let v = verify(dir.path(), &created.manifest, &NoProgress).unwrap();
        assert_eq!(v.counts(), (0, 1, 1, 0));
        assert_eq!(v.unlisted, vec![PathBuf::from("new")]);
        assert!(!v.all_ok());
    }
}
