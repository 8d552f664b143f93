//! Walking a tree without following symlinks, with the metadata the copy engine and the
//! purge scanner need, and the include/exclude filter.
//!
//! Walking never follows a symlink (a link to `/` inside a dataset must not pull in the
//! whole machine) and skips hpcstage's own bookkeeping: the `.hpcstage/` folder, its
//! temporary files, and the top-level manifest and verify logs of the tree.
//!
//! See docs/ARCHITECTURE.md#one-file-from-stage-to-the-journal.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};
use crate::listed::ListedPaths;

/// Name of a tree's manifest.
pub const MANIFEST_NAME: &str = "MANIFEST.sha256";
/// Name of the bookkeeping folder inside a staged tree.
pub const STATE_DIR: &str = ".hpcstage";
/// Prefix of temporary files written before verification.
pub const TMP_PREFIX: &str = ".hpcstage-tmp.";

/// What a tree entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// Sockets, FIFOs, devices: reported, never copied.
    Other,
}

impl Kind {
    /// The kind of an entry of this type (a link itself, never what it points to).
    pub fn of(ft: std::fs::FileType) -> Kind {
        if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_file() {
            Kind::File
        } else {
            Kind::Other
        }
    }
}

/// The parts of `stat` the engine uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Meta {
    pub size: u64,
    pub mode: u32,
    pub mtime_ns: i64,
    pub atime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub dev: u64,
    pub nlink: u64,
    pub blocks: u64,
}

impl Meta {
    /// The fields as nine numbers, in the order spilled records write them
    /// ([`Meta::from_words`] reads them back).
    pub(crate) fn to_words(self) -> [u64; 9] {
        [
            self.size,
            u64::from(self.mode),
            self.mtime_ns as u64,
            self.atime_ns as u64,
            self.ctime_ns as u64,
            self.ino,
            self.dev,
            self.nlink,
            self.blocks,
        ]
    }

    /// The fields from the nine numbers of [`Meta::to_words`].
    pub(crate) fn from_words(w: [u64; 9]) -> Self {
        let [size, mode, mtime_ns, atime_ns, ctime_ns, ino, dev, nlink, blocks] = w;
        Meta {
            size,
            mode: mode as u32,
            mtime_ns: mtime_ns as i64,
            atime_ns: atime_ns as i64,
            ctime_ns: ctime_ns as i64,
            ino,
            dev,
            nlink,
            blocks,
        }
    }

    /// Reads the fields from std's metadata.
    pub fn from_std(m: &std::fs::Metadata) -> Self {
        Meta {
            size: m.size(),
            mode: m.mode(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            atime_ns: m.atime() * 1_000_000_000 + m.atime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            ino: m.ino(),
            dev: m.dev(),
            nlink: m.nlink(),
            blocks: m.blocks(),
        }
    }

    /// True when the file has holes (fewer blocks allocated than its size needs).
    pub fn is_sparse(&self) -> bool {
        self.blocks.saturating_mul(512) < self.size
    }

    /// Same content identity: size, mtime, ctime and inode all unchanged.
    pub fn unchanged(&self, other: &Meta) -> bool {
        self.size == other.size
            && self.mtime_ns == other.mtime_ns
            && self.ctime_ns == other.ctime_ns
            && self.ino == other.ino
            && self.dev == other.dev
    }
}

/// One entry of a walked tree.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Path relative to the root, never empty, never absolute.
    pub rel: PathBuf,
    pub kind: Kind,
    pub meta: Meta,
}

/// A walked tree plus what could not be read.
#[derive(Debug, Default)]
pub struct Tree {
    pub entries: Vec<Entry>,
    /// Folders or entries that could not be read; the walk continued past them.
    pub errors: Vec<Error>,
}

impl Tree {
    /// Regular files only.
    pub fn files(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.kind == Kind::File)
    }
}

/// Include/exclude globs. A glob without `/` matches a name at any depth (as rsync does);
/// a glob with `/` matches the path relative to the root.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    include_name: Option<GlobSet>,
    include_path: Option<GlobSet>,
    exclude_name: Option<GlobSet>,
    exclude_path: Option<GlobSet>,
    /// Exact relative paths to leave out (with everything below them).
    exclude_exact: std::collections::HashSet<PathBuf>,
    /// When set, only these exact relative file paths are taken.
    include_exact: Option<std::collections::HashSet<PathBuf>>,
    /// When set, only the relative file paths of this list on disk are taken.
    include_listed: Option<std::sync::Arc<ListedPaths>>,
}

impl Filter {
    /// Compiles the globs; an invalid glob is an error naming it.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self> {
        let (include_name, include_path) = compile(include)?;
        let (exclude_name, exclude_path) = compile(exclude)?;
        Ok(Filter {
            include_name,
            include_path,
            exclude_name,
            exclude_path,
            exclude_exact: Default::default(),
            include_exact: None,
            include_listed: None,
        })
    }

    /// Takes only these exact relative file paths (names are never read as globs).
    pub fn only_paths(paths: impl IntoIterator<Item = PathBuf>) -> Self {
        Filter {
            include_exact: Some(paths.into_iter().collect()),
            ..Filter::default()
        }
    }

    /// Takes only the relative file paths of the list at `list` (one escaped path a line,
    /// in path order: a shard's list), asked on disk rather than held
    /// ([`ListedPaths`]). After a walk, [`Filter::check`] says whether the list could be
    /// read throughout.
    pub fn only_listed(list: &Path) -> Result<Self> {
        Ok(Filter {
            include_listed: Some(std::sync::Arc::new(ListedPaths::open(list)?)),
            ..Filter::default()
        })
    }

    /// The first failure to read the list of [`Filter::only_listed`] during a walk, if
    /// any: that walk may have left listed files out.
    pub fn check(&self) -> Result<()> {
        self.include_listed.as_ref().map_or(Ok(()), |l| l.check())
    }

    /// Also leaves out these exact relative paths (and, for folders, what they hold).
    pub fn excluding_paths(mut self, paths: impl IntoIterator<Item = PathBuf>) -> Self {
        self.exclude_exact.extend(paths);
        self
    }

    /// True when there are include globs (then only matching files are taken).
    pub fn has_includes(&self) -> bool {
        self.include_name.is_some()
            || self.include_path.is_some()
            || self.include_exact.is_some()
            || self.include_listed.is_some()
    }

    fn matches(name: &Option<GlobSet>, path: &Option<GlobSet>, rel: &Path) -> bool {
        let by_name = name
            .as_ref()
            .zip(rel.file_name())
            .is_some_and(|(g, n)| g.is_match(n));
        by_name || path.as_ref().is_some_and(|g| g.is_match(rel))
    }

    /// True when `rel` (a file, link or folder) is excluded.
    pub fn excluded(&self, rel: &Path) -> bool {
        self.exclude_exact.contains(rel)
            || Self::matches(&self.exclude_name, &self.exclude_path, rel)
    }

    /// Whether a walk leaves `rel` (named `name`) out before looking at it: hpcstage's own
    /// bookkeeping and temporaries, and what `--exclude` names.
    pub fn leaves_out(&self, rel: &Path, name: &OsStr) -> bool {
        is_bookkeeping(rel) || is_temporary(name) || self.excluded(rel)
    }

    /// Whether a walk keeps an entry of this kind: files and links only when `--include`
    /// takes them; folders always (they are walked into).
    pub fn keeps(&self, kind: Kind, rel: &Path) -> bool {
        !matches!(kind, Kind::File | Kind::Symlink) || self.takes_file(rel)
    }

    /// True when a file at `rel` is taken.
    pub fn takes_file(&self, rel: &Path) -> bool {
        !self.excluded(rel)
            && match (&self.include_exact, &self.include_listed) {
                (Some(paths), _) => paths.contains(rel),
                (None, Some(list)) => list.contains(rel),
                (None, None) => {
                    !self.has_includes()
                        || Self::matches(&self.include_name, &self.include_path, rel)
                }
            }
    }
}

fn compile(globs: &[String]) -> Result<(Option<GlobSet>, Option<GlobSet>)> {
    let mut names = GlobSetBuilder::new();
    let mut paths = GlobSetBuilder::new();
    let (mut n, mut p) = (0, 0);
    for g in globs {
        let glob = Glob::new(g).map_err(|source| Error::Glob {
            glob: g.clone(),
            error: source,
        })?;
        if g.contains('/') {
            paths.add(glob);
            p += 1;
        } else {
            names.add(glob);
            n += 1;
        }
    }
    let build = |b: GlobSetBuilder, count: usize, g: &[String]| -> Result<Option<GlobSet>> {
        if count == 0 {
            return Ok(None);
        }
        b.build().map(Some).map_err(|source| Error::Glob {
            glob: g.join(" "),
            error: source,
        })
    };
    Ok((build(names, n, globs)?, build(paths, p, globs)?))
}

/// True for hpcstage's own files at the top of a tree (manifest, verify logs, state).
pub fn is_bookkeeping(rel: &Path) -> bool {
    let mut components = rel.components();
    let first = components.next().map(|c| c.as_os_str());
    let top_level = components.next().is_none();
    let Some(first) = first else { return false };
    if first == OsStr::new(STATE_DIR) {
        return true;
    }
    if top_level {
        let name = first.as_bytes();
        return name == MANIFEST_NAME.as_bytes()
            || (name.starts_with(b"verify_") && name.ends_with(b".log"));
    }
    false
}

/// True for a temporary file left by an interrupted copy.
pub fn is_temporary(name: &OsStr) -> bool {
    name.as_bytes().starts_with(TMP_PREFIX.as_bytes())
}

/// Walks `root` (not following links), skipping bookkeeping and temporary files and
/// whatever `filter` excludes. Folders are read in parallel (one task per folder), which
/// matters on network filesystems where each `stat` is a round trip. Entries come in no
/// particular order.
pub fn walk(root: &Path, filter: &Filter) -> Result<Tree> {
    let meta = std::fs::metadata(root).map_err(|_| Error::SourceMissing {
        path: root.to_path_buf(),
    })?;
    if !meta.is_dir() {
        return Err(Error::SourceMissing {
            path: root.to_path_buf(),
        });
    }
    Ok(walk_dir(root, Path::new(""), filter))
}

/// Reads every folder and inode of the tree in parallel, as [`walk`] does, keeping
/// nothing: on cold storage this brings the metadata into the cache in one parallel
/// sweep (inode tables read ahead in order), so that the files opened one by one later
/// wait for their data only. Returns how many entries were seen.
pub fn warm(root: &Path, filter: &Filter) -> u64 {
    walk_dir::<Seen>(root, Path::new(""), filter).0
}

/// What a parallel walk gathers from each folder; merged up the tree.
pub(crate) trait Gather: Default + Send {
    fn entry(&mut self, e: Entry);
    fn error(&mut self, e: Error);
    fn merge(self, other: Self) -> Self;
}

impl Gather for Tree {
    fn entry(&mut self, e: Entry) {
        self.entries.push(e);
    }

    fn error(&mut self, e: Error) {
        self.errors.push(e);
    }

    fn merge(mut self, other: Tree) -> Tree {
        self.entries.extend(other.entries);
        self.errors.extend(other.errors);
        self
    }
}

/// Counts and forgets.
#[derive(Default)]
struct Seen(u64);

impl Gather for Seen {
    fn entry(&mut self, _: Entry) {
        self.0 += 1;
    }

    fn error(&mut self, _: Error) {}

    fn merge(self, other: Seen) -> Seen {
        Seen(self.0 + other.0)
    }
}

fn walk_dir<G: Gather>(root: &Path, rel_dir: &Path, filter: &Filter) -> G {
    use rayon::prelude::*;
    let dir = root.join(rel_dir);
    let mut here = G::default();
    let read = match std::fs::read_dir(&dir) {
        Ok(r) => r,
        Err(e) => {
            here.error(Error::io(&dir, e));
            return here;
        }
    };
    let mut subdirs = Vec::new();
    for dent in read {
        let dent = match dent {
            Ok(d) => d,
            Err(e) => {
                here.error(Error::io(&dir, e));
                continue;
            }
        };
        let name = dent.file_name();
        let rel = rel_dir.join(&name);
        if filter.leaves_out(&rel, &name) {
            continue;
        }
        let m = match std::fs::symlink_metadata(dent.path()) {
            Ok(m) => m,
            Err(e) => {
                here.error(Error::io(dent.path(), e));
                continue;
            }
        };
        let kind = Kind::of(m.file_type());
        if !filter.keeps(kind, &rel) {
            continue;
        }
        if kind == Kind::Dir {
            subdirs.push(rel.clone());
        }
        here.entry(Entry {
            rel,
            kind,
            meta: Meta::from_std(&m),
        });
    }
    subdirs
        .into_par_iter()
        .map(|sub| walk_dir::<G>(root, &sub, filter))
        .reduce(G::default, G::merge)
        .merge(here)
}

/// Calls `f` with every regular file under `root` (links not followed; bookkeeping,
/// temporaries and what `filter` excludes skipped) in manifest order, the bytes of the
/// relative path, reading one folder at a time: memory is bounded by the depth and the
/// largest folder, not by the tree. Folders that cannot be read go to `errors`.
///
/// Sorting each folder's names with `/` appended to the subfolders' gives exactly the
/// order of the full paths, as every path below a folder starts with its name and `/`.
pub fn files_in_order(
    root: &Path,
    filter: &Filter,
    errors: &mut Vec<Error>,
    f: &mut dyn FnMut(PathBuf),
) -> Result<()> {
    from_the_top(
        root,
        filter,
        errors,
        f,
        |root, rel_dir, filter, errors, f| {
            files_in_order_below(root, rel_dir, filter, errors, f);
        },
    )
}

/// Calls `f` with every regular file under `root` (links not followed) in manifest order,
/// temporaries and hpcstage's files included, except what `leaves_out` (given the relative
/// path and the name) leaves out: for what must see every file of a folder it is about to
/// publish ([`crate::place::prune_unlisted`]). Memory as for [`files_in_order`].
pub fn every_file_in_order(
    root: &Path,
    leaves_out: &dyn Fn(&Path, &OsStr) -> bool,
    errors: &mut Vec<Error>,
    f: &mut dyn FnMut(PathBuf),
) {
    files_in_order_below(root, Path::new(""), &leaves_out, errors, f);
}

/// What an ordered walk of files leaves out and takes.
trait Picks {
    /// Left out before it is looked at (a folder is not walked into).
    fn leaves_out(&self, rel: &Path, name: &OsStr) -> bool;
    /// A regular file that is taken.
    fn takes_file(&self, rel: &Path) -> bool;
}

impl Picks for Filter {
    fn leaves_out(&self, rel: &Path, name: &OsStr) -> bool {
        Filter::leaves_out(self, rel, name)
    }

    fn takes_file(&self, rel: &Path) -> bool {
        self.keeps(Kind::File, rel)
    }
}

impl Picks for &dyn Fn(&Path, &OsStr) -> bool {
    fn leaves_out(&self, rel: &Path, name: &OsStr) -> bool {
        self(rel, name)
    }

    fn takes_file(&self, _: &Path) -> bool {
        true
    }
}

fn files_in_order_below(
    root: &Path,
    rel_dir: &Path,
    filter: &dyn Picks,
    errors: &mut Vec<Error>,
    f: &mut dyn FnMut(PathBuf),
) {
    let dir = root.join(rel_dir);
    let Some(read) = read_folder(&dir, errors) else {
        return;
    };
    // (sort key, relative path, is a folder)
    let mut children: Vec<(Vec<u8>, PathBuf, bool)> = Vec::new();
    for dent in read {
        let dent = match dent {
            Ok(d) => d,
            Err(e) => {
                errors.push(Error::io(&dir, e));
                continue;
            }
        };
        let name = dent.file_name();
        let rel = rel_dir.join(&name);
        if filter.leaves_out(&rel, &name) {
            continue;
        }
        // The folder entry's type, without a stat where the filesystem records it.
        let ft = match dent.file_type() {
            Ok(t) => t,
            Err(e) => {
                errors.push(Error::io(dent.path(), e));
                continue;
            }
        };
        let is_dir = ft.is_dir();
        if !(is_dir || ft.is_file() && filter.takes_file(&rel)) {
            continue;
        }
        let mut key = name.as_bytes().to_vec();
        if is_dir {
            key.push(b'/');
        }
        children.push((key, rel, is_dir));
    }
    children.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (_, rel, is_dir) in children {
        if is_dir {
            files_in_order_below(root, &rel, filter, errors, f);
        } else {
            f(rel);
        }
    }
}

/// Calls `f` with every entry under `root` that [`walk`] would list (files, folders,
/// links, special files; links not followed), reading one folder at a time: memory is
/// bounded by the depth and the largest folder, not by the tree. Files come in manifest
/// order (the bytes of their relative paths, as [`files_in_order`]); a folder comes just
/// before what it holds. The entries of a folder are stat'ed in parallel (a round trip
/// each on a network filesystem). Entries that cannot be read go to `errors`.
pub fn entries_in_order(
    root: &Path,
    filter: &Filter,
    errors: &mut Vec<Error>,
    f: &mut dyn FnMut(Entry),
) -> Result<()> {
    from_the_top(root, filter, errors, f, entries_in_order_below)
}

fn entries_in_order_below(
    root: &Path,
    rel_dir: &Path,
    filter: &Filter,
    errors: &mut Vec<Error>,
    f: &mut dyn FnMut(Entry),
) {
    use rayon::prelude::*;
    let dir = root.join(rel_dir);
    let Some(read) = read_folder(&dir, errors) else {
        return;
    };
    let mut names = Vec::new();
    for dent in read {
        match dent {
            Ok(d) => {
                let name = d.file_name();
                let rel = rel_dir.join(&name);
                if !filter.leaves_out(&rel, &name) {
                    names.push(rel);
                }
            }
            Err(e) => errors.push(Error::io(&dir, e)),
        }
    }
    // By name, so that the filter is asked about a folder's files in path order (a list
    // on disk, `Filter::only_listed`, then reads each of its blocks once).
    names.sort_unstable_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
    let stat = |rel: PathBuf| match std::fs::symlink_metadata(root.join(&rel)) {
        Ok(m) => Ok(Entry {
            rel,
            kind: Kind::of(m.file_type()),
            meta: Meta::from_std(&m),
        }),
        Err(e) => Err(Error::io(root.join(&rel), e)),
    };
    let stated: Vec<std::result::Result<Entry, Error>> = if names.len() >= 64 {
        names.into_par_iter().map(stat).collect()
    } else {
        names.into_iter().map(stat).collect()
    };
    // (sort key: the name, with `/` after a folder's)
    let mut children: Vec<(Vec<u8>, Entry)> = Vec::with_capacity(stated.len());
    for s in stated {
        match s {
            Ok(e) if filter.keeps(e.kind, &e.rel) => {
                let name = e.rel.file_name().expect("an entry has a name");
                let mut key = name.as_bytes().to_vec();
                if e.kind == Kind::Dir {
                    key.push(b'/');
                }
                children.push((key, e));
            }
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }
    children.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (_, e) in children {
        if e.kind == Kind::Dir {
            let rel = e.rel.clone();
            f(e);
            entries_in_order_below(root, &rel, filter, errors, f);
        } else {
            f(e);
        }
    }
}

/// One folder's walk in order, the root's first: a missing root is `SourceMissing`.
type Below<T> = fn(&Path, &Path, &Filter, &mut Vec<Error>, &mut dyn FnMut(T));

fn from_the_top<T>(
    root: &Path,
    filter: &Filter,
    errors: &mut Vec<Error>,
    f: &mut dyn FnMut(T),
    below: Below<T>,
) -> Result<()> {
    if !std::fs::metadata(root).is_ok_and(|m| m.is_dir()) {
        return Err(Error::SourceMissing {
            path: root.to_path_buf(),
        });
    }
    below(root, Path::new(""), filter, errors, f);
    Ok(())
}

/// The entries of `dir`, or `None` with the error in `errors`.
fn read_folder(dir: &Path, errors: &mut Vec<Error>) -> Option<std::fs::ReadDir> {
    std::fs::read_dir(dir)
        .map_err(|e| errors.push(Error::io(dir, e)))
        .ok()
}

/// Sorts paths by their bytes, the order manifests use.
pub fn sort_by_bytes<T>(items: &mut [T], key: impl Fn(&T) -> &Path) {
    items.sort_unstable_by(|a, b| {
        key(a)
            .as_os_str()
            .as_bytes()
            .cmp(key(b).as_os_str().as_bytes())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names that sort before '/' (space, '-', '.') next to a folder of the same stem.
    const NAMES: [&str; 11] = [
        "a/x", "a b", "a-c/y", "a.d", "ab", "a/b/c", "a/b c", "a/b/d/e", "a!", "b", "a0/z",
    ];

    /// A temp dir holding each of `NAMES` as a file whose content is its name.
    fn tree_of_names() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for n in NAMES {
            let p = dir.path().join(n);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, n).unwrap();
        }
        dir
    }

    /// What `files_in_order` lists below `root`, with no error.
    fn files_listed(root: &Path) -> Vec<PathBuf> {
        let mut seen = Vec::new();
        let mut errors = Vec::new();
        files_in_order(root, &Filter::default(), &mut errors, &mut |p| seen.push(p)).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        seen
    }

    #[test]
    fn files_in_order_come_in_the_bytes_order_of_their_full_paths() {
        let dir = tree_of_names();
        std::fs::create_dir_all(dir.path().join("empty/inner")).unwrap();
        let seen = files_listed(dir.path());
        let mut expected: Vec<PathBuf> = NAMES.iter().map(PathBuf::from).collect();
        sort_by_bytes(&mut expected, |p| p);
        assert_eq!(seen, expected);
    }

    #[test]
    fn entries_in_order_list_what_walk_lists_files_in_path_order_folders_first() {
        let dir = tree_of_names();
        // A folder big enough to be stat'ed in parallel keeps its order too.
        std::fs::create_dir_all(dir.path().join("many")).unwrap();
        for i in 0..100 {
            std::fs::write(dir.path().join(format!("many/f{:03}", 99 - i)), "x").unwrap();
        }
        std::fs::create_dir_all(dir.path().join("empty/inner")).unwrap();
        std::os::unix::fs::symlink("b", dir.path().join("link")).unwrap();
        std::fs::create_dir_all(dir.path().join(STATE_DIR)).unwrap();
        let mut seen = Vec::new();
        let mut errors = Vec::new();
        entries_in_order(dir.path(), &Filter::default(), &mut errors, &mut |e| {
            seen.push(e)
        })
        .unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let files: Vec<PathBuf> = seen
            .iter()
            .filter(|e| e.kind == Kind::File)
            .map(|e| e.rel.clone())
            .collect();
        assert_eq!(files, files_listed(dir.path()));
        // Each folder just before what it holds.
        for (i, e) in seen.iter().enumerate() {
            if let Some(parent) = e.rel.parent().filter(|p| !p.as_os_str().is_empty()) {
                let at = seen.iter().position(|d| d.rel == parent).unwrap();
                assert!(at < i && seen[at].kind == Kind::Dir, "{}", e.rel.display());
            }
        }
        // The same entries as the parallel walk, bookkeeping left out.
        let mut walked: Vec<(PathBuf, Kind)> = walk(dir.path(), &Filter::default())
            .unwrap()
            .entries
            .into_iter()
            .map(|e| (e.rel, e.kind))
            .collect();
        let mut ordered: Vec<(PathBuf, Kind)> = seen.into_iter().map(|e| (e.rel, e.kind)).collect();
        walked.sort();
        ordered.sort();
        assert_eq!(ordered, walked);
        assert!(entries_in_order(
            &dir.path().join("none"),
            &Filter::default(),
            &mut errors,
            &mut |_| {}
        )
        .is_err());
    }

    #[test]
    fn bookkeeping_is_only_top_level_manifest_and_logs() {
        assert!(is_bookkeeping(Path::new("MANIFEST.sha256")));
        assert!(is_bookkeeping(Path::new("verify_2026-01-02.log")));
        assert!(is_bookkeeping(Path::new(".hpcstage/journal")));
        assert!(!is_bookkeeping(Path::new("sub/MANIFEST.sha256")));
        assert!(!is_bookkeeping(Path::new("data.tif")));
    }

    #[test]
    fn globs_without_slash_match_names_at_any_depth() {
        let f = Filter::new(&["*.tif".into()], &["scratch/**".into()]).unwrap();
        assert!(f.takes_file(Path::new("a/b/c.tif")));
        assert!(!f.takes_file(Path::new("a/b/c.csv")));
        assert!(!f.takes_file(Path::new("scratch/x.tif")));
        assert!(Filter::new(&["[".into()], &[]).is_err());
    }

    #[test]
    fn a_listed_filter_takes_exactly_the_files_of_its_list() {
        // Three folders of 1,500 files, every third one listed: the ordered walk (which
        // asks a folder's files in the order the folder is read) and the parallel walk
        // both take exactly those, across many blocks of the list.
        let dir = tempfile::tempdir().unwrap();
        let (src, lists) = (dir.path().join("src"), dir.path().join("lists"));
        let mut listed = Vec::new();
        for d in 0..3 {
            std::fs::create_dir_all(src.join(format!("d{d}"))).unwrap();
            for i in 0..1500 {
                let rel = format!("d{d}/f{i:04}");
                std::fs::write(src.join(&rel), "x").unwrap();
                if i % 3 == 0 {
                    listed.push(rel);
                }
            }
        }
        listed.push("d9/gone".into()); // listed, not in the tree
        listed.sort();
        std::fs::create_dir_all(&lists).unwrap();
        std::fs::write(lists.join("0.list"), listed.join("\n") + "\n").unwrap();
        let filter = Filter::only_listed(&lists.join("0.list")).unwrap();
        let mut errors = Vec::new();
        let mut ordered = Vec::new();
        entries_in_order(&src, &filter, &mut errors, &mut |e| {
            if e.kind == Kind::File {
                ordered.push(e.rel.to_string_lossy().into_owned());
            }
        })
        .unwrap();
        assert!(errors.is_empty());
        listed.pop();
        assert_eq!(ordered, listed);
        let mut walked: Vec<String> = walk(&src, &filter)
            .unwrap()
            .files()
            .map(|e| e.rel.to_string_lossy().into_owned())
            .collect();
        walked.sort();
        assert_eq!(walked, listed);
        filter.check().unwrap();
        // A list out of order is refused before any walk, naming it.
        std::fs::write(lists.join("1.list"), "b\na\n").unwrap();
        let err = Filter::only_listed(&lists.join("1.list")).unwrap_err();
        assert!(err.to_string().contains("1.list"), "{err}");
    }

    #[test]
    fn walk_skips_bookkeeping_and_does_not_follow_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/.hpcstage")).unwrap();
        std::fs::create_dir_all(root.join(".hpcstage")).unwrap();
        std::fs::write(root.join(".hpcstage/journal"), "x").unwrap();
        std::fs::write(root.join("MANIFEST.sha256"), "x").unwrap();
        std::fs::write(root.join("a/f"), "x").unwrap();
        std::fs::write(root.join("a/.hpcstage-tmp.123"), "x").unwrap();
        std::os::unix::fs::symlink("/", root.join("a/up")).unwrap();
        let tree = walk(root, &Filter::default()).unwrap();
        let mut rels: Vec<_> = tree
            .entries
            .iter()
            .map(|e| (e.rel.to_string_lossy().into_owned(), e.kind))
            .collect();
        rels.sort();
        assert_eq!(
            rels,
            vec![
                ("a".to_string(), Kind::Dir),
                ("a/.hpcstage".to_string(), Kind::Dir),
                ("a/f".to_string(), Kind::File),
                ("a/up".to_string(), Kind::Symlink),
            ]
        );
    }
}
