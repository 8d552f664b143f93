//! The verified copy engine shared by `stage`, `ingest` and `pull`.
//!
//! Per file (docs/ARCHITECTURE.md#the-verified-copy): read the source once, hashing as it is read;
//! write to a temporary name in the destination folder; check the source did not change
//! during the read; check the hash against the source manifest when there is one; read
//! the written bytes back from storage and hash them; only then rename into place, set
//! the mode (and the mtime when the purge policy allows) and record the file in the
//! journal. A file never appears under its final name unverified.
//!
//! Files go in batches: a batch is copied in parallel, the destination filesystem is
//! flushed once with `syncfs` (no per-file fsync), the now-clean pages are dropped from
//! the cache, and the batch is read back in parallel. This module never prints.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use sha2::{Digest as _, Sha256};
use tempfile::TempPath;

use crate::direct;
use crate::error::{Error, IoContext, Result, StorageErrorKind};
use crate::hash::{self, Digest, STREAM_THRESHOLD};
use crate::interrupt;
use crate::journal::{Journal, JournalEntry};
use crate::lock::lock_or_refuse;
use crate::manifest::{check_listed, Manifest, ManifestEntry};
use crate::progress::Progress;
use crate::remote::Remote;
use crate::storage::Storage;
use crate::walk::{self, Entry, Filter, Kind, Meta, MANIFEST_NAME, STATE_DIR, TMP_PREFIX};

/// How to copy.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Files copied in parallel (at least 1).
    pub jobs: usize,
    /// Only plan: report what would change, touch nothing.
    pub dry_run: bool,
    /// Re-read destination files the journal calls verified and repair any that differ.
    pub verify_existing: bool,
    pub filter: Filter,
    /// Give destination files the source's mtime. Off on mtime-purged scratch.
    pub preserve_mtime: bool,
    /// Check free space before copying.
    pub check_space: bool,
    /// A batch ends after this many bytes or files, whichever comes first.
    pub batch_bytes: u64,
    pub batch_files: usize,
    /// Use the source's `MANIFEST.sha256` (when present) to catch corruption at the source.
    pub use_source_manifest: bool,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            jobs: 0,
            dry_run: false,
            verify_existing: false,
            filter: Filter::default(),
            preserve_mtime: false,
            check_space: true,
            batch_bytes: 64 << 20,
            batch_files: 1024,
            use_source_manifest: true,
        }
    }
}

/// What a run does (or, with `dry_run`, would do) to one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    /// Not at the destination yet.
    New,
    /// The source changed since it was copied.
    Changed,
    /// At the destination but not known verified (an earlier run was interrupted).
    Unverified,
    /// The destination no longer matches what was verified.
    Repair,
    /// A hard link to another copied file.
    HardLink,
    Symlink,
    Dir,
}

impl Change {
    /// One-letter code for itemized output.
    pub fn code(self) -> &'static str {
        match self {
            Change::New => "+",
            Change::Changed => ">",
            Change::Unverified => "?",
            Change::Repair => "!",
            Change::HardLink => "h",
            Change::Symlink => "L",
            Change::Dir => "d",
        }
    }
}

/// Why a file was not copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The source does not match its own manifest: corruption at the source.
    SourceCorrupt,
    /// The source changed while it was read.
    SourceChanged,
    /// The bytes read back from the destination differ from the source.
    VerifyFailed,
    /// The destination ran out of space.
    DiskFull,
    /// The remote NAS stopped answering (reconnecting did not help) or refused us.
    Unreachable,
    /// Any other I/O failure.
    Io,
    /// Not tried because the run stopped early (disk full).
    NotAttempted,
}

impl FailureKind {
    /// Failures after which the other files are not tried: they would fail the same way
    /// (a full disk), or each wait through its own reconnects (a NAS host gone).
    pub fn is_fatal(self) -> bool {
        matches!(self, FailureKind::DiskFull | FailureKind::Unreachable)
    }
}

/// One file that was not copied, and why.
#[derive(Debug)]
pub struct Failure {
    pub path: PathBuf,
    pub kind: FailureKind,
    pub error: Error,
}

/// Oldest timestamps of the destination's files, for the purge deadline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct OldestTimes {
    pub atime_ns: Option<i64>,
    pub mtime_ns: Option<i64>,
    pub ctime_ns: Option<i64>,
}

impl OldestTimes {
    /// Takes one file's timestamps into account.
    pub fn add(&mut self, m: &Meta) {
        let min = |slot: &mut Option<i64>, v: i64| *slot = Some(slot.map_or(v, |s| s.min(v)));
        min(&mut self.atime_ns, m.atime_ns);
        min(&mut self.mtime_ns, m.mtime_ns);
        min(&mut self.ctime_ns, m.ctime_ns);
    }

    /// Keeps the older of each timestamp.
    pub fn merge(&mut self, other: &OldestTimes) {
        for (a, b) in [
            (&mut self.atime_ns, other.atime_ns),
            (&mut self.mtime_ns, other.mtime_ns),
            (&mut self.ctime_ns, other.ctime_ns),
        ] {
            if let Some(b) = b {
                *a = Some(a.map_or(b, |a| a.min(b)));
            }
        }
    }
}

/// The outcome of a copy.
#[derive(Debug, Default)]
pub struct CopyReport {
    pub files_total: u64,
    pub bytes_total: u64,
    /// Bytes of the files that needed copying (what a dry run would copy).
    pub bytes_to_copy: u64,
    pub copied: u64,
    pub bytes_copied: u64,
    pub skipped: u64,
    pub hard_links: u64,
    pub symlinks: u64,
    pub dirs: u64,
    /// Destination files repaired because they no longer matched (with `verify_existing`).
    pub repaired: Vec<PathBuf>,
    pub failed: Vec<Failure>,
    /// What changed (or would change), in path order.
    pub changes: Vec<(PathBuf, Change)>,
    /// Things worth telling that are not failures (links pointing out, special files).
    pub warnings: Vec<String>,
    /// The destination's manifest (all files of this source now verified there).
    pub manifest: Manifest,
    /// Digest of the source's `MANIFEST.sha256` when it was used to check the source.
    pub source_manifest_digest: Option<Digest>,
    /// Source files not listed in the source manifest (copied, but unchecked at the source).
    pub unlisted_in_source: Vec<PathBuf>,
    pub oldest: OldestTimes,
    pub elapsed: Duration,
}

impl CopyReport {
    /// True when nothing failed.
    pub fn ok(&self) -> bool {
        self.failed.is_empty()
    }
}

/// A planned regular-file copy.
struct Job {
    rel: PathBuf,
    meta: Meta,
    change: Change,
    expected: Option<Digest>,
}

/// A file copied to its temporary name, awaiting read-back.
struct Staged {
    job_index: usize,
    tmp: TempPath,
    digest: Digest,
    meta: Meta,
    /// Already on storage (flushed by itself: a big file, or one on a filesystem mounted
    /// inside the destination), so no batch flush is needed.
    synced: bool,
    /// Digest and length read back from storage during the copy, if it was.
    readback: Option<(Digest, u64)>,
}

/// Where a copy reads from: a local folder, a folder on an SSH host, or any
/// [`Storage`] (an S3 prefix).
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    Local(&'a Path),
    Remote(&'a Remote),
    Store(&'a dyn Storage),
}

impl Source<'_> {
    /// The source path of `rel`, for messages (`host:/path` for a remote one).
    pub fn display(&self, rel: &Path) -> PathBuf {
        match self {
            Source::Local(root) => root.join(rel),
            Source::Remote(r) => r.display(&r.path(rel)),
            Source::Store(s) => s.display(rel),
        }
    }

    fn walk(&self, filter: &Filter) -> Result<walk::Tree> {
        match self {
            Source::Local(root) => walk::walk(root, filter),
            Source::Remote(r) => r.walk(filter),
            Source::Store(s) => s.list(filter),
        }
    }

    fn read_manifest(&self) -> Result<Option<Manifest>> {
        match self {
            Source::Local(root) => Manifest::read_if_present(root),
            Source::Remote(r) => r.read_manifest(),
            Source::Store(s) => {
                let rel = Path::new(MANIFEST_NAME);
                let bytes = s.read_small(rel)?;
                match bytes {
                    Some(bytes) => Manifest::parse(&bytes, &s.display(rel)).map(Some),
                    None if s.capabilities().manifest_marks_complete => Err(Error::Incomplete {
                        location: s.display(Path::new("")).display().to_string(),
                    }),
                    None => Ok(None),
                }
            }
        }
    }

    fn read_link(&self, rel: &Path) -> Result<PathBuf> {
        match self {
            Source::Local(root) => std::fs::read_link(root.join(rel)).at(root.join(rel)),
            Source::Remote(r) => r.read_link(rel),
            Source::Store(s) => Err(Error::io(
                s.display(rel),
                std::io::Error::other("this storage holds no symbolic links"),
            )),
        }
    }

    /// The digest of the source file `rel` (a dry run's check against the manifest).
    fn hash(&self, rel: &Path, listed: Meta) -> Result<Digest> {
        match self {
            Source::Local(root) => hash::hash_file(&root.join(rel)).map(|(digest, _)| digest),
            Source::Remote(r) => {
                let mut hasher = Sha256::new();
                hash::with_buffer(|buf| {
                    r.stream_file(rel, Some(listed), buf, &mut |block| {
                        hasher.update(block);
                        Ok(())
                    })
                })?;
                Ok(Digest::from_hasher(hasher))
            }
            Source::Store(s) => {
                let mut hasher = Sha256::new();
                s.read(rel, 0, &mut |block| {
                    hasher.update(block);
                    Ok(())
                })?;
                Ok(Digest::from_hasher(hasher))
            }
        }
    }
}

/// Copies the tree `src` into `dest` with verification. Failures of single files are in
/// the report; an `Err` means the run could not start or its bookkeeping failed.
pub fn copy_tree(
    src: &Path,
    dest: &Path,
    opts: &CopyOptions,
    progress: &dyn Progress,
) -> Result<CopyReport> {
    copy_from(Source::Local(src), dest, opts, progress)
}

/// [`copy_tree`] from a local or remote source.
pub fn copy_from(
    src: Source<'_>,
    dest: &Path,
    opts: &CopyOptions,
    progress: &dyn Progress,
) -> Result<CopyReport> {
    let started = Instant::now();
    if let Source::Store(s) = src {
        if s.capabilities().manifest_marks_complete && s.stat(Path::new(MANIFEST_NAME))?.is_none() {
            return Err(Error::Incomplete {
                location: s.display(Path::new("")).display().to_string(),
            });
        }
    }
    let tree = src.walk(&opts.filter)?;
    let mut report = CopyReport::default();
    for e in tree.errors {
        report.failed.push(Failure {
            path: error_path(&e, &src.display(Path::new(""))),
            kind: FailureKind::Io,
            error: e,
        });
    }

    // On a store where the manifest marks a complete tree, it is read whatever the
    // options say: a prefix without one is refused as incomplete.
    let must_have_manifest =
        matches!(src, Source::Store(s) if s.capabilities().manifest_marks_complete);
    let source_manifest = if opts.use_source_manifest || must_have_manifest {
        src.read_manifest()?
    } else {
        None
    };
    report.source_manifest_digest = source_manifest.as_ref().map(Manifest::digest);
    let expected: HashMap<&Path, Digest> = source_manifest
        .as_ref()
        .map(|m| m.to_map())
        .unwrap_or_default();

    let mut entries = tree.entries;
    walk::sort_by_bytes(&mut entries, |e| &e.rel);

    // A destination that does not exist yet holds nothing to compare with: planning needs
    // no look-up of each file there (20,000 of them on a first stage of 20,000 files).
    let fresh =
        std::fs::symlink_metadata(dest).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
    let state_dir = dest.join(STATE_DIR);
    let guard = if opts.dry_run {
        None
    } else {
        ensure_dir(&state_dir)?;
        Some(RunGuard::acquire(&state_dir, dest)?)
    };
    let journal = Journal::load(&state_dir.join("journal"))?;

    // Plan.
    let mut dirs: Vec<&Entry> = Vec::new();
    let mut symlinks: Vec<&Entry> = Vec::new();
    let mut jobs: Vec<Job> = Vec::new();
    let mut links: Vec<(PathBuf, PathBuf, Meta)> = Vec::new(); // (rel, primary rel, meta)
    let mut primaries: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut known: Vec<(PathBuf, Digest)> = Vec::new();
    let mut oldest = OldestTimes::default();
    // Planning stats every destination file: do it in parallel (a round trip each on a
    // network filesystem), then decide in path order.
    // The same pool then copies.
    let pool = thread_pool(opts.jobs, dest)?;
    let plans: Vec<Option<Plan>> = pool.install(|| {
        entries
            .par_iter()
            .map(|e| {
                (e.kind == Kind::File).then(|| {
                    if fresh {
                        Plan::Copy(Change::New)
                    } else {
                        let listed = expected.get(e.rel.as_path()).copied();
                        let known = journal.get(&e.rel);
                        plan_file(dest, e, known, listed, opts.verify_existing)
                    }
                })
            })
            .collect()
    });
    for (e, plan) in entries.iter().zip(plans) {
        match e.kind {
            Kind::Dir => dirs.push(e),
            Kind::Symlink => symlinks.push(e),
            Kind::Other => report.warnings.push(format!(
                "{}: not a regular file, folder or symlink (socket, FIFO or device); not copied",
                src.display(&e.rel).display()
            )),
            Kind::File => {
                report.files_total += 1;
                report.bytes_total += e.meta.size;
                if source_manifest.is_some() && !expected.contains_key(e.rel.as_path()) {
                    report.unlisted_in_source.push(e.rel.clone());
                }
                if e.meta.nlink > 1 {
                    let key = (e.meta.dev, e.meta.ino);
                    if let Some(primary) = primaries.get(&key) {
                        links.push((e.rel.clone(), primary.clone(), e.meta));
                        continue;
                    }
                    primaries.insert(key, e.rel.clone());
                }
                match plan.expect("planned every file") {
                    Plan::Skip(digest, dest_meta) => {
                        oldest.add(&dest_meta);
                        known.push((e.rel.clone(), digest));
                    }
                    Plan::Copy(change) => jobs.push(Job {
                        rel: e.rel.clone(),
                        meta: e.meta,
                        change,
                        expected: expected.get(e.rel.as_path()).copied(),
                    }),
                }
            }
        }
    }
    if opts.dry_run {
        // Say what the run will do: a listed file that no longer matches the source
        // manifest is refused as SOURCE CORRUPT by the run, so the dry run reads it too.
        let refused = pool.install(|| source_check(&src, &jobs));
        jobs.retain(|j| !refused.iter().any(|f| f.path == j.rel));
        report.failed.extend(refused);
    }
    report.skipped = known.len() as u64;
    report.bytes_to_copy = jobs.iter().map(|j| j.meta.size).sum();
    for j in &jobs {
        report.changes.push((j.rel.clone(), j.change));
    }

    if opts.dry_run {
        for d in &dirs {
            if !dest.join(&d.rel).is_dir() {
                report.changes.push((d.rel.clone(), Change::Dir));
            }
        }
        for s in &symlinks {
            if symlink_differs(&src, dest, &s.rel) {
                report.changes.push((s.rel.clone(), Change::Symlink));
            }
        }
        for (rel, primary, _) in &links {
            if !same_inode(&dest.join(rel), &dest.join(primary)) {
                report.changes.push((rel.clone(), Change::HardLink));
            }
        }
        walk::sort_by_bytes(&mut report.changes, |c| &c.0);
        report.elapsed = started.elapsed();
        return Ok(report);
    }

    let bytes_needed = report.bytes_to_copy;
    if opts.check_space {
        check_space(dest, bytes_needed, jobs.len() as u64)?;
    }
    progress.start(report.files_total, report.bytes_total);
    progress.add_bytes(report.bytes_total - bytes_needed);
    for _ in 0..report.skipped {
        progress.add_file();
    }

    // Folders first (writable while we fill them; their modes are set at the end).
    let (_, dest_dev) = ensure_writable_dir(dest)?;
    let mut dir_modes: HashMap<PathBuf, u32> = HashMap::new();
    // Folders that are another filesystem than the destination's (mounted inside it).
    let mut elsewhere: HashSet<PathBuf> = HashSet::new();
    for d in &dirs {
        let path = dest.join(&d.rel);
        let existed = path.is_dir();
        match ensure_writable_dir(&path) {
            Err(e) => report.failed.push(Failure {
                path: d.rel.clone(),
                kind: classify(&e),
                error: e,
            }),
            Ok((mode, dev)) => {
                dir_modes.insert(d.rel.clone(), mode);
                if dev != dest_dev {
                    elsewhere.insert(d.rel.clone());
                }
                if !existed {
                    report.changes.push((d.rel.clone(), Change::Dir));
                }
            }
        }
    }
    report.dirs = dirs.len() as u64;

    // Nothing goes below a folder that could not be made (for example a symlink left at
    // the destination where the source now has a folder): writing there would follow the
    // link out of the tree.
    let failed_dirs: Vec<PathBuf> = report
        .failed
        .iter()
        .filter(|f| dirs.iter().any(|d| d.rel == f.path))
        .map(|f| f.path.clone())
        .collect();
    if !failed_dirs.is_empty() {
        let under = |rel: &Path| failed_dirs.iter().any(|d| rel != d && rel.starts_with(d));
        let skipped = |rel: &Path| Failure {
            path: rel.to_path_buf(),
            kind: FailureKind::NotAttempted,
            error: Error::io(
                dest.join(rel),
                std::io::Error::other(
                    "not attempted: its folder could not be made at the destination",
                ),
            ),
        };
        let mut not_attempted = Vec::new();
        jobs.retain(|j| {
            !under(&j.rel) || {
                not_attempted.push(skipped(&j.rel));
                false
            }
        });
        links.retain(|(rel, _, _)| {
            !under(rel) || {
                not_attempted.push(skipped(rel));
                false
            }
        });
        symlinks.retain(|e| {
            !under(&e.rel) || {
                not_attempted.push(skipped(&e.rel));
                false
            }
        });
        report.failed.extend(not_attempted);
    }

    let journal = Mutex::new(journal);
    let abort = AtomicBool::new(false);
    let dest_handle = File::open(dest).at(dest)?;
    let ctx = Ctx {
        src: &src,
        dest,
        dest_handle: &dest_handle,
        elsewhere: &elsewhere,
        opts,
        progress,
        abort: &abort,
    };

    let mut copied_digests: Vec<(PathBuf, Digest)> = Vec::new();
    let verify_pool = thread_pool(opts.jobs, dest)?;
    let watch = interrupt::watch();
    let (results, journal_errors) = run_pipeline(&ctx, &jobs, &pool, &verify_pool, &journal);
    drop(watch);
    for r in results {
        match r {
            Ok((i, digest, dest_meta)) => {
                oldest.add(&dest_meta);
                let job = &jobs[i];
                report.copied += 1;
                report.bytes_copied += job.meta.size;
                if job.change == Change::Repair {
                    report.repaired.push(job.rel.clone());
                }
                copied_digests.push((job.rel.clone(), digest));
            }
            Err(f) => report.failed.push(f),
        }
    }
    // Verified files whose journal lines could not be written are in place, but the next
    // run checks them again. Report it like any other failure (a full disk is the usual
    // cause) rather than lose the whole report.
    report
        .failed
        .extend(journal_errors.into_iter().map(journal_failure));
    if let Some(signal) = interrupt::received() {
        // What was verified is in place and journalled; the `running` marker stays (the
        // guard is not finished), so the next run sweeps and finishes, and the stage
        // shows as incomplete meanwhile.
        return Err(Error::Interrupted {
            signal,
            verified: report.skipped + report.copied,
            total: report.files_total,
            dest: dest.to_path_buf(),
        });
    }
    known.extend(copied_digests);

    // Hard links, once their primary is verified.
    let digest_of: HashMap<PathBuf, Digest> = known.iter().cloned().collect();
    for (rel, primary, meta) in &links {
        let Some(digest) = digest_of.get(primary).copied() else {
            report.failed.push(Failure {
                path: rel.clone(),
                kind: FailureKind::NotAttempted,
                error: Error::io(
                    src.display(rel),
                    std::io::Error::other(format!(
                        "hard link to {} which was not copied",
                        primary.display()
                    )),
                ),
            });
            continue;
        };
        let (target, link) = (dest.join(primary), dest.join(rel));
        if !same_inode(&link, &target) {
            if let Err(e) = replace_with_hard_link(&target, &link) {
                report.failed.push(Failure {
                    path: rel.clone(),
                    kind: classify(&e),
                    error: e,
                });
                continue;
            }
            report.changes.push((rel.clone(), Change::HardLink));
        }
        report.hard_links += 1;
        let _ = meta;
        known.push((rel.clone(), digest));
    }

    for s in &symlinks {
        match copy_symlink(&src, dest, &s.rel) {
            Ok(changed) => {
                report.symlinks += 1;
                if changed {
                    report.changes.push((s.rel.clone(), Change::Symlink));
                }
                if let Some(w) = symlink_warning(&src, &s.rel) {
                    report.warnings.push(w);
                }
            }
            Err(e) => report.failed.push(Failure {
                path: s.rel.clone(),
                kind: classify(&e),
                error: e,
            }),
        }
    }

    // Folder modes (and mtimes when allowed), deepest first.
    for d in dirs.iter().rev() {
        let path = dest.join(&d.rel);
        let wanted = d.meta.mode & 0o7777;
        let mut result = if dir_modes.get(&d.rel) == Some(&wanted) {
            Ok(())
        } else {
            std::fs::set_permissions(&path, perm(d.meta.mode)).at(&path)
        };
        if result.is_ok() && opts.preserve_mtime {
            result = set_mtime(&path, d.meta.mtime_ns);
        }
        if let Err(e) = result {
            report.failed.push(Failure {
                path: d.rel.clone(),
                kind: classify(&e),
                error: e,
            });
        }
    }

    report.manifest = Manifest::from_entries(
        known
            .into_iter()
            .map(|(path, digest)| ManifestEntry { path, digest })
            .collect(),
    );
    let mut journal = journal.into_inner().expect("journal lock");
    let current: HashSet<&Path> = report
        .manifest
        .entries
        .iter()
        .map(|e| e.path.as_path())
        .collect();
    if let Err(e) = journal.compact(|p| current.contains(p)) {
        // Failing files are already reported and the run ends non-zero; a journal that
        // could not be written is one more of them, not a reason to drop the report.
        if report.failed.is_empty() {
            return Err(e);
        }
        let failure = journal_failure(e);
        if !report.failed.iter().any(|f| f.path == failure.path) {
            report.failed.push(failure);
        }
    }
    let manifest_path = dest.join(MANIFEST_NAME);
    if report.failed.is_empty() {
        write_if_changed(&manifest_path, &report.manifest.to_bytes())?;
    } else if manifest_path.exists() {
        // An incomplete copy must not carry a manifest that makes it look complete; the
        // journal keeps what was verified and the next run writes the manifest again.
        std::fs::remove_file(&manifest_path).at(&manifest_path)?;
    }
    if let Source::Remote(remote) = src {
        report.warnings.extend(remote.reconnect_note());
    }
    walk::sort_by_bytes(&mut report.changes, |c| &c.0);
    report.oldest = oldest;
    report.elapsed = started.elapsed();
    if let Some(g) = guard {
        g.finish(report.failed.is_empty());
    }
    Ok(report)
}

struct Ctx<'a> {
    src: &'a Source<'a>,
    dest: &'a Path,
    /// Opened once before the first write: `syncfs` reports writeback errors that
    /// happened since the handle was opened (Linux 5.8+), so a handle opened per batch
    /// could miss an error of an earlier batch.
    dest_handle: &'a File,
    /// Folders of the destination on another filesystem than its own (mounted inside
    /// it), which `syncfs` on `dest_handle` does not flush.
    elsewhere: &'a HashSet<PathBuf>,
    opts: &'a CopyOptions,
    progress: &'a dyn Progress,
    abort: &'a AtomicBool,
}

type BatchResult = std::result::Result<(usize, Digest, Meta), Failure>;

/// Copies, flushes and verifies with the three steps overlapping: copy workers write
/// temporary files; a flusher gathers them into batches (by bytes, count, or a short
/// pause) and makes each batch durable with one `syncfs`; verify workers read each flushed
/// batch back from storage and rename it into place while the next files are being copied.
fn run_pipeline(
    ctx: &Ctx<'_>,
    jobs: &[Job],
    copy_pool: &rayon::ThreadPool,
    verify_pool: &rayon::ThreadPool,
    journal: &Mutex<Journal>,
) -> (Vec<BatchResult>, Vec<Error>) {
    use std::sync::mpsc::{sync_channel, RecvTimeoutError};

    let results: Mutex<Vec<BatchResult>> = Mutex::new(Vec::with_capacity(jobs.len()));
    let journal_errors: Mutex<Vec<Error>> = Mutex::new(Vec::new());
    let push = |r: BatchResult| results.lock().expect("results lock").push(r);
    let batch_bytes = ctx.opts.batch_bytes.max(1);
    let batch_files = ctx.opts.batch_files.max(1);

    std::thread::scope(|scope| {
        let (staged_tx, staged_rx) = sync_channel::<std::result::Result<Staged, Failure>>(1024);
        let (flushed_tx, flushed_rx) = sync_channel::<Vec<Staged>>(2);

        // Flusher.
        let push_f = &push;
        scope.spawn(move || {
            let mut batch: Vec<Staged> = Vec::new();
            let mut bytes = 0u64;
            let flush = |batch: Vec<Staged>| {
                if batch.is_empty() {
                    return;
                }
                match nix::unistd::syncfs(ctx.dest_handle.as_raw_fd()).at(ctx.dest) {
                    Ok(()) => {
                        let _ = flushed_tx.send(batch);
                    }
                    Err(e) => {
                        ctx.abort.store(true, Ordering::Relaxed);
                        for s in batch {
                            push_f(Err(Failure {
                                path: jobs[s.job_index].rel.clone(),
                                kind: classify(&e),
                                error: Error::io(ctx.dest, std::io::Error::other(e.to_string())),
                            }));
                        }
                    }
                }
            };
            loop {
                match staged_rx.recv_timeout(Duration::from_millis(30)) {
                    Ok(Ok(s)) if s.synced => {
                        let _ = flushed_tx.send(vec![s]);
                    }
                    Ok(Ok(s)) => {
                        bytes += s.meta.size;
                        batch.push(s);
                        if bytes >= batch_bytes || batch.len() >= batch_files {
                            flush(std::mem::take(&mut batch));
                            bytes = 0;
                        }
                    }
                    Ok(Err(f)) => push_f(Err(f)),
                    Err(RecvTimeoutError::Timeout) => {
                        flush(std::mem::take(&mut batch));
                        bytes = 0;
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        flush(std::mem::take(&mut batch));
                        break;
                    }
                }
            }
        });

        // Verifiers.
        let push_v = &push;
        let journal_errors = &journal_errors;
        scope.spawn(move || {
            for batch in flushed_rx {
                let verified: Vec<BatchResult> = verify_pool.install(|| {
                    batch
                        .into_par_iter()
                        .map(|s| {
                            let job = &jobs[s.job_index];
                            let result = finish_file(ctx, job, s, journal);
                            ctx.progress.add_file();
                            result.map_err(|(kind, error)| {
                                if kind.is_fatal() {
                                    ctx.abort.store(true, Ordering::Relaxed);
                                }
                                Failure {
                                    path: job.rel.clone(),
                                    kind,
                                    error,
                                }
                            })
                        })
                        .collect()
                });
                verified.into_iter().for_each(push_v);
                if let Err(e) = journal.lock().expect("journal lock").flush() {
                    ctx.abort.store(true, Ordering::Relaxed);
                    journal_errors.lock().expect("errors lock").push(e);
                }
            }
        });

        // Copiers (this thread waits for them).
        copy_pool.install(|| {
            jobs.par_iter().enumerate().for_each_with(staged_tx, |tx, (i, job)| {
                let fail = |kind, error| Failure {
                    path: job.rel.clone(),
                    kind,
                    error,
                };
                let r = if ctx.abort.load(Ordering::Relaxed) {
                    Err(fail(
                        FailureKind::NotAttempted,
                        Error::io(
                            ctx.src.display(&job.rel),
                            std::io::Error::other("not attempted: the run stopped after a fatal error (disk full, or the NAS host gone)"),
                        ),
                    ))
                } else if interrupt::received().is_some() {
                    Err(fail(
                        FailureKind::NotAttempted,
                        Error::io(ctx.src.display(&job.rel), interrupt::stopped()),
                    ))
                } else {
                    copy_to_temporary(ctx, job, i).map_err(|(kind, e)| {
                        if kind.is_fatal() {
                            ctx.abort.store(true, Ordering::Relaxed);
                        }
                        fail(kind, e)
                    })
                };
                let _ = tx.send(r);
            });
        });
    });
    (
        results.into_inner().expect("results lock"),
        journal_errors.into_inner().expect("errors lock"),
    )
}

/// Reads the source once (hashing), writes a temporary file next to the destination.
fn copy_to_temporary(
    ctx: &Ctx<'_>,
    job: &Job,
    job_index: usize,
) -> std::result::Result<Staged, (FailureKind, Error)> {
    let dest_path = ctx.dest.join(&job.rel);
    let parent = dest_path.parent().unwrap_or(ctx.dest);
    let io = |e: Error| (classify(&e), e);
    let tmp = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(parent)
        .at(parent)
        .map_err(io)?;
    let (mut out, tmp) = tmp.into_parts();
    let tmp_path = tmp.to_path_buf();
    let big = job.meta.size >= ctx.opts.batch_bytes;
    let (copy, before, after) = match ctx.src {
        Source::Local(root) => read_local(ctx, &root.join(&job.rel), &mut out, &tmp_path, big)?,
        Source::Remote(remote) => {
            read_remote(ctx, remote, job, &mut out, &tmp_path, big).map_err(io)?
        }
        Source::Store(store) => read_store(ctx, *store, job, &mut out, &tmp_path).map_err(io)?,
    };
    // A folder of the destination that is another filesystem (something mounted inside
    // it) is not flushed by the batch's syncfs of the destination's own: its files are
    // flushed one by one, or their read-back could be answered by dirty cached pages.
    let elsewhere = job.rel.parent().is_some_and(|p| ctx.elsewhere.contains(p));
    let synced = big || elsewhere;
    if synced {
        // For a big file: most of it is on its way to storage already (see
        // copy_streamed); one fdatasync per file this big costs little and lets its
        // read-back start at once, instead of waiting for a batch flush of the whole
        // filesystem.
        out.sync_data().at(&tmp_path).map_err(io)?;
    }
    drop(out);

    let src_path = ctx.src.display(&job.rel);
    let digest = copy.digest;
    if !before.unchanged(&after) || copy.bytes != before.size {
        return Err((
            FailureKind::SourceChanged,
            Error::SourceChanged { path: src_path },
        ));
    }
    check_listed(&src_path, job.expected, digest).map_err(|e| (FailureKind::SourceCorrupt, e))?;
    Ok(Staged {
        job_index,
        tmp,
        digest,
        meta: before,
        synced,
        readback: copy.readback,
    })
}

/// What copying one file's bytes gave.
struct FileCopy {
    /// Digest of the bytes read from the source.
    digest: Digest,
    bytes: u64,
    /// Digest and length of the destination as read back from storage during the copy;
    /// `None` when it still has to be read back.
    readback: Option<(Digest, u64)>,
}

impl FileCopy {
    /// A copy of `bytes` bytes hashed by `hasher`, still to be read back.
    fn unread(hasher: Sha256, bytes: u64) -> FileCopy {
        FileCopy {
            digest: Digest::from_hasher(hasher),
            bytes,
            readback: None,
        }
    }
}

/// The files of `jobs` listed in the source manifest whose content no longer matches it,
/// as the failures the copy would report (read in parallel on the current pool).
fn source_check(src: &Source<'_>, jobs: &[Job]) -> Vec<Failure> {
    let mut refused: Vec<Failure> = jobs
        .par_iter()
        .filter_map(|job| {
            let listed = job.expected?;
            let outcome = src
                .hash(&job.rel, job.meta)
                .and_then(|digest| check_listed(&src.display(&job.rel), Some(listed), digest));
            let error = outcome.err()?;
            Some(Failure {
                path: job.rel.clone(),
                kind: classify(&error),
                error,
            })
        })
        .collect();
    walk::sort_by_bytes(&mut refused, |f| &f.path);
    refused
}

/// What reading one source file gives: the copy, metadata before and after.
type SourceRead = (FileCopy, Meta, Meta);

/// One local file into `out`: holes kept, big files streamed by a reader thread.
fn read_local(
    ctx: &Ctx<'_>,
    src_path: &Path,
    out: &mut File,
    tmp_path: &Path,
    big: bool,
) -> std::result::Result<SourceRead, (FailureKind, Error)> {
    let io = |e: Error| (classify(&e), e);
    let file = File::open(src_path).at(src_path).map_err(io)?;
    let before = Meta::from_std(&file.metadata().at(src_path).map_err(io)?);
    let sparse = before.is_sparse();
    let copy = if before.size >= STREAM_THRESHOLD {
        copy_streamed(&file, src_path, out, tmp_path, sparse, ctx.progress, big)?
    } else {
        let (digest, bytes) = hash::with_buffer(|buf| {
            copy_simple(&file, src_path, out, tmp_path, sparse, buf, ctx.progress)
        })?;
        FileCopy {
            digest,
            bytes,
            readback: None,
        }
    };
    if sparse {
        out.set_len(copy.bytes).at(tmp_path).map_err(io)?;
    }
    let after = Meta::from_std(&file.metadata().at(src_path).map_err(io)?);
    Ok((copy, before, after))
}

/// One remote file into `out`, over a pooled connection (resumed at the byte reached
/// when the connection drops).
fn read_remote(
    ctx: &Ctx<'_>,
    remote: &Remote,
    job: &Job,
    out: &mut File,
    tmp_path: &Path,
    big: bool,
) -> Result<SourceRead> {
    const KICK: u64 = 16 << 20;
    let mut hasher = Sha256::new();
    let (mut written, mut kicked) = (0u64, 0u64);
    let (before, after, total) = hash::with_buffer(|buf| {
        remote.stream_file(&job.rel, Some(job.meta), buf, &mut |block| {
            if interrupt::received().is_some() {
                return Err(Error::io(tmp_path, interrupt::stopped()));
            }
            hasher.update(block);
            out.write_all(block).at(tmp_path)?;
            written += block.len() as u64;
            if big && written - kicked >= KICK {
                start_writeback(out, kicked, written - kicked);
                kicked = written;
            }
            ctx.progress.add_bytes(block.len() as u64);
            Ok(())
        })
    })?;
    Ok((FileCopy::unread(hasher, total), before, after))
}

/// One file of a [`Storage`] into `out`, hashed as it streams; the metadata after is the
/// object as read (its identity moves when it was replaced meanwhile).
fn read_store(
    ctx: &Ctx<'_>,
    store: &dyn Storage,
    job: &Job,
    out: &mut File,
    tmp_path: &Path,
) -> Result<SourceRead> {
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let after = store.read(&job.rel, 0, &mut |block| {
        if interrupt::received().is_some() {
            return Err(Error::io(tmp_path, interrupt::stopped()));
        }
        hasher.update(block);
        out.write_all(block).at(tmp_path)?;
        total += block.len() as u64;
        ctx.progress.add_bytes(block.len() as u64);
        Ok(())
    })?;
    let copy = FileCopy::unread(hasher, total);
    // Compared: the size and the object's identity (its ETag); the listed mtime is
    // finer than the one a GET reports.
    let after = Meta {
        size: after.size,
        ino: after.ino,
        ..job.meta
    };
    Ok((copy, job.meta, after))
}

fn copy_simple(
    mut src: &File,
    src_path: &Path,
    out: &mut File,
    out_path: &Path,
    sparse: bool,
    buf: &mut [u8],
    progress: &dyn Progress,
) -> std::result::Result<(Digest, u64), (FailureKind, Error)> {
    let io = |e: Error| (classify(&e), e);
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    loop {
        let n = match src.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(Error::io(src_path, e))),
        };
        hasher.update(&buf[..n]);
        write_block(out, out_path, &buf[..n], sparse).map_err(io)?;
        total += n as u64;
        progress.add_bytes(n as u64);
    }
    Ok((Digest::from_hasher(hasher), total))
}

/// Big files go past the page cache where both filesystems allow it (see `direct`): a
/// reader thread keeps direct reads in flight while this thread hashes and a writer thread
/// writes. When the destination takes only buffered writes and `writeback` is set, written
/// ranges are handed to the kernel's writeback as they complete (`sync_file_range`), so
/// storage writes overlap the copy instead of piling up for one long flush at the end.
fn copy_streamed(
    src: &File,
    src_path: &Path,
    out: &mut File,
    out_path: &Path,
    sparse: bool,
    progress: &dyn Progress,
    writeback: bool,
) -> std::result::Result<FileCopy, (FailureKind, Error)> {
    const KICK: u64 = 16 << 20;
    if !direct::set_direct(src, true) {
        hash::advise_sequential(src);
    }
    let out_direct = direct::set_direct(out, true);
    let kick = writeback && !out_direct;
    // The destination written past the cache can be read back from storage while the
    // copy goes on (see `direct::read_back`); a sparse one only at the end, once its
    // length is set.
    let readback = (out_direct && !sparse)
        .then(|| direct::open_read(out_path).ok())
        .flatten();
    let mut hasher = Sha256::new();
    let mut kicked = 0u64;
    let out_ref: &File = out;
    let copied = direct::copy_blocks(
        src,
        out_ref,
        sparse,
        |block| {
            hasher.update(block);
            progress.add_bytes(block.len() as u64);
        },
        |written| {
            if kick && written - kicked >= KICK {
                start_writeback(out_ref, kicked, written - kicked);
                kicked = written;
            }
        },
        readback.as_ref(),
    );
    let copied = copied.map_err(|e| {
        let e = match e {
            direct::CopyError::Read(e) => Error::io(src_path, e),
            direct::CopyError::Write(e) => Error::io(out_path, e),
        };
        (classify(&e), e)
    })?;
    Ok(FileCopy {
        digest: Digest::from_hasher(hasher),
        bytes: copied.bytes,
        readback: copied.readback,
    })
}

/// Starts writeback of a byte range without waiting for it (advisory: errors surface at
/// the fdatasync that follows).
fn start_writeback(file: &File, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: plain syscall on a file descriptor we own; no memory is passed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

fn write_block(out: &mut File, path: &Path, data: &[u8], sparse: bool) -> Result<()> {
    if sparse && data.iter().all(|&b| b == 0) {
        out.seek(SeekFrom::Current(data.len() as i64)).at(path)?;
        return Ok(());
    }
    out.write_all(data).at(path)
}

/// Reads the temporary file back from storage, compares, sets metadata, renames into
/// place and journals it.
fn finish_file(
    ctx: &Ctx<'_>,
    job: &Job,
    staged: Staged,
    journal: &Mutex<Journal>,
) -> std::result::Result<(usize, Digest, Meta), (FailureKind, Error)> {
    let io = |e: Error| (classify(&e), e);
    let tmp_path: &Path = &staged.tmp;
    let (readback, n) = if let Some(done) = staged.readback {
        done
    } else if staged.meta.size >= STREAM_THRESHOLD {
        hash::hash_from_storage(tmp_path).map_err(io)?
    } else {
        // Small files: the batch's syncfs made their pages clean, so dropping them sends
        // the read to storage without O_DIRECT's alignment games.
        let file = File::open(tmp_path).at(tmp_path).map_err(io)?;
        hash::drop_cache(&file);
        hash::with_buffer(|buf| hash::hash_reader(&file, buf))
            .at(tmp_path)
            .map_err(io)?
    };
    if readback != staged.digest || n != staged.meta.size {
        return Err((
            FailureKind::VerifyFailed,
            Error::ReadBackMismatch {
                path: ctx.dest.join(&job.rel),
                wrote: staged.digest.to_hex(),
                wrote_len: staged.meta.size,
                read: readback.to_hex(),
                read_len: n,
            },
        ));
    }
    std::fs::set_permissions(tmp_path, perm(staged.meta.mode))
        .at(tmp_path)
        .map_err(io)?;
    if ctx.opts.preserve_mtime {
        set_mtime(tmp_path, staged.meta.mtime_ns).map_err(io)?;
    }
    let final_path = ctx.dest.join(&job.rel);
    staged
        .tmp
        .persist(&final_path)
        .map_err(|e| io(Error::io(&final_path, e.error)))?;
    let dest_meta = Meta::from_std(
        &std::fs::symlink_metadata(&final_path)
            .at(&final_path)
            .map_err(io)?,
    );
    let entry = JournalEntry {
        digest: staged.digest,
        size: staged.meta.size,
        src_mtime_ns: staged.meta.mtime_ns,
        dest_mtime_ns: dest_meta.mtime_ns,
        dest_ino: dest_meta.ino,
    };
    journal
        .lock()
        .expect("journal lock")
        .record(&job.rel, entry)
        .map_err(io)?;
    Ok((staged.job_index, staged.digest, dest_meta))
}

enum Plan {
    Skip(Digest, Meta),
    Copy(Change),
}

/// What to do with one source file. `listed` is its digest in the source's manifest: a
/// source rewritten with its size and mtime kept (`cp -p`, `touch -r`) looks unchanged to
/// the journal, but not to a manifest made again since.
fn plan_file(
    dest: &Path,
    e: &Entry,
    known: Option<&JournalEntry>,
    listed: Option<Digest>,
    verify: bool,
) -> Plan {
    let dest_path = dest.join(&e.rel);
    let Ok(dm) = std::fs::symlink_metadata(&dest_path) else {
        return Plan::Copy(Change::New);
    };
    let dm = Meta::from_std(&dm);
    let Some(j) = known else {
        return Plan::Copy(Change::Unverified);
    };
    if j.size != e.meta.size
        || j.src_mtime_ns != e.meta.mtime_ns
        || listed.is_some_and(|d| d != j.digest)
    {
        return Plan::Copy(Change::Changed);
    }
    if dm.size != j.size || dm.mtime_ns != j.dest_mtime_ns || dm.ino != j.dest_ino {
        return Plan::Copy(Change::Repair);
    }
    if verify {
        match hash::hash_from_storage(&dest_path) {
            Ok((d, _)) if d == j.digest => {}
            _ => return Plan::Copy(Change::Repair),
        }
    }
    Plan::Skip(j.digest, dm)
}

fn perm(mode: u32) -> std::fs::Permissions {
    std::fs::Permissions::from_mode(mode & 0o7777)
}

fn set_mtime(path: &Path, mtime_ns: i64) -> Result<()> {
    let t = filetime::FileTime::from_unix_time(
        mtime_ns.div_euclid(1_000_000_000),
        mtime_ns.rem_euclid(1_000_000_000) as u32,
    );
    filetime::set_symlink_file_times(path, filetime::FileTime::now(), t).at(path)
}

/// Makes sure `path` is a folder we can write into; returns its mode now (without the
/// file type bits) and its device.
fn ensure_writable_dir(path: &Path) -> Result<(u32, u64)> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let mode = m.permissions().mode() & 0o7777;
            if mode & 0o700 != 0o700 {
                std::fs::set_permissions(path, perm(mode | 0o700)).at(path)?;
                return Ok((mode | 0o700, m.dev()));
            }
            Ok((mode, m.dev()))
        }
        Ok(_) => Err(Error::io(
            path,
            std::io::Error::other("exists at the destination but is not a folder"),
        )),
        Err(_) => {
            std::fs::create_dir_all(path).at(path)?;
            let m = std::fs::symlink_metadata(path).at(path)?;
            Ok((m.permissions().mode() & 0o7777, m.dev()))
        }
    }
}

/// A pool of `jobs` threads (at least one).
fn thread_pool(jobs: usize, dest: &Path) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(jobs.max(1))
        .build()
        .map_err(|e| Error::io(dest, std::io::Error::other(e.to_string())))
}

fn ensure_dir(path: &Path) -> Result<()> {
    ensure_writable_dir(path).map(|_| ())
}

fn same_inode(a: &Path, b: &Path) -> bool {
    match (std::fs::symlink_metadata(a), std::fs::symlink_metadata(b)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

fn replace_with_hard_link(target: &Path, link: &Path) -> Result<()> {
    let parent = link.parent().expect("a link path has a parent");
    let tmp = parent.join(format!("{TMP_PREFIX}link.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::fs::hard_link(target, &tmp).at(link)?;
    std::fs::rename(&tmp, link).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(link, e)
    })
}

fn symlink_differs(src: &Source<'_>, dest: &Path, rel: &Path) -> bool {
    match (src.read_link(rel), std::fs::read_link(dest.join(rel))) {
        (Ok(a), Ok(b)) => a != b,
        _ => true,
    }
}

/// Copies a symlink as a link (never following it). Returns whether anything changed.
fn copy_symlink(src: &Source<'_>, dest: &Path, rel: &Path) -> Result<bool> {
    let target = src.read_link(rel)?;
    let link = dest.join(rel);
    if std::fs::read_link(&link).is_ok_and(|t| t == target) {
        return Ok(false);
    }
    let parent = link.parent().expect("a link path has a parent");
    let tmp = parent.join(format!("{TMP_PREFIX}symlink.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&target, &tmp).at(&link)?;
    std::fs::rename(&tmp, &link).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(&link, e)
    })?;
    Ok(true)
}

fn symlink_warning(src: &Source<'_>, rel: &Path) -> Option<String> {
    let target = src.read_link(rel).ok()?;
    let mut depth: i64 = rel.components().count() as i64 - 1;
    let outside = target.is_absolute()
        || target.components().any(|c| {
            match c {
                std::path::Component::ParentDir => depth -= 1,
                std::path::Component::Normal(_) => depth += 1,
                _ => {}
            }
            depth < 0
        });
    outside.then(|| {
        format!(
            "{}: symlink points outside the tree ({}); copied as a link, not followed",
            rel.display(),
            target.display()
        )
    })
}

fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    crate::manifest::write_atomic(path, bytes)
}

fn check_space(dest: &Path, bytes: u64, files: u64) -> Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    let mut probe = dest.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            return Ok(());
        }
    }
    let st = nix::sys::statvfs::statvfs(&probe).at(&probe)?;
    if st.blocks() == 0 {
        // No size reported (ramfs, some FUSE and network filesystems): nothing to check
        // against; a real shortage still shows up as "disk full" on the file it hits.
        return Ok(());
    }
    let available = st.blocks_available() as u64 * st.fragment_size() as u64;
    // Each file costs at least one block of metadata; keep a little headroom.
    let need = bytes + files * 4096;
    if need > available {
        return Err(Error::InsufficientSpace {
            path: dest.to_path_buf(),
            need,
            available,
        });
    }
    let inodes = st.files_available() as u64;
    if st.files() > 0 && files > inodes {
        return Err(Error::io(
            dest,
            std::io::Error::other(format!(
                "not enough inodes: {files} files to write, {inodes} inodes free"
            )),
        ));
    }
    Ok(())
}

/// A failure to write the journal, reported under its path relative to the destination.
fn journal_failure(error: Error) -> Failure {
    Failure {
        path: Path::new(STATE_DIR).join("journal"),
        kind: classify(&error),
        error,
    }
}

fn classify(e: &Error) -> FailureKind {
    if matches!(e, Error::SourceCorrupt { .. }) {
        FailureKind::SourceCorrupt
    } else if e.is_disk_full()
        || matches!(
            e,
            Error::Storage {
                kind: StorageErrorKind::Quota,
                ..
            }
        )
    {
        FailureKind::DiskFull
    } else if matches!(
        e,
        Error::ConnectionLost { .. }
            | Error::Storage {
                kind: StorageErrorKind::Unreachable | StorageErrorKind::Auth,
                ..
            }
            | Error::SshConnect { .. }
            | Error::HostKey(_)
            | Error::SshAuth { .. }
    ) {
        FailureKind::Unreachable
    } else {
        FailureKind::Io
    }
}

fn error_path(e: &Error, fallback: &Path) -> PathBuf {
    match e {
        Error::Io { path, .. } => path.clone(),
        _ => fallback.to_path_buf(),
    }
}

/// Marks a destination as being written: an exclusive lock (one writer at a time) and a
/// `running` marker. A marker found at start means an earlier run was killed: its
/// temporary files are swept before anything else happens.
struct RunGuard {
    marker: PathBuf,
    _lock: Option<nix::fcntl::Flock<File>>,
}

impl RunGuard {
    fn acquire(state_dir: &Path, dest: &Path) -> Result<Self> {
        let lock_path = state_dir.join("lock");
        let lock = lock_or_refuse(&lock_path, dest)?;
        // Only its presence counts: a run was under way (the lock file says who runs).
        let marker = state_dir.join("running");
        if marker.exists() {
            sweep_temporaries(dest);
        }
        File::create(&marker).at(&marker)?;
        Ok(RunGuard {
            marker,
            _lock: lock,
        })
    }

    fn finish(self, clean: bool) {
        if clean {
            let _ = std::fs::remove_file(&self.marker);
        }
    }
}

/// Removes temporary files an interrupted run left behind.
pub fn sweep_temporaries(dest: &Path) -> usize {
    let mut removed = 0;
    for e in walkdir::WalkDir::new(dest)
        .follow_links(false)
        .into_iter()
        .filter_map(|e| e.ok())
    {
        if walk::is_temporary(e.file_name())
            && !e.file_type().is_dir()
            && std::fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;

    fn tree(root: &Path) {
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::write(root.join("a/b/one.tif"), vec![1u8; 10_000]).unwrap();
        std::fs::write(root.join("two"), "2").unwrap();
        std::fs::hard_link(root.join("two"), root.join("two-again")).unwrap();
        std::os::unix::fs::symlink("two", root.join("link")).unwrap();
    }

    #[test]
    fn copies_verifies_and_then_skips() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dest) = (dir.path().join("src"), dir.path().join("dest"));
        tree(&src);
        let r = copy_tree(&src, &dest, &CopyOptions::default(), &NoProgress).unwrap();
        assert!(r.ok(), "{:?}", r.failed);
        assert_eq!((r.copied, r.hard_links, r.symlinks), (2, 1, 1));
        assert!(dest.join("empty").is_dir());
        assert!(same_inode(&dest.join("two"), &dest.join("two-again")));
        assert_eq!(
            std::fs::read_link(dest.join("link")).unwrap(),
            Path::new("two")
        );
        assert_eq!(r.manifest.len(), 3);
        let again = copy_tree(&src, &dest, &CopyOptions::default(), &NoProgress).unwrap();
        assert_eq!((again.copied, again.skipped), (0, 2));
        assert!(again.changes.is_empty(), "{:?}", again.changes);
        assert_eq!(again.manifest, r.manifest);
    }

    #[test]
    fn a_source_that_disagrees_with_its_manifest_is_not_copied() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dest) = (dir.path().join("src"), dir.path().join("dest"));
        tree(&src);
        let m = crate::manifest::create(&src, &Filter::default(), &NoProgress).unwrap();
        m.manifest.write_atomic(&src.join(MANIFEST_NAME)).unwrap();
        std::fs::write(src.join("a/b/one.tif"), vec![2u8; 10_000]).unwrap();
        let r = copy_tree(&src, &dest, &CopyOptions::default(), &NoProgress).unwrap();
        assert_eq!(r.failed.len(), 1);
        assert_eq!(r.failed[0].kind, FailureKind::SourceCorrupt);
        assert!(!dest.join("a/b/one.tif").exists());
    }

    #[test]
    fn dry_run_touches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dest) = (dir.path().join("src"), dir.path().join("dest"));
        tree(&src);
        let opts = CopyOptions {
            dry_run: true,
            ..CopyOptions::default()
        };
        let r = copy_tree(&src, &dest, &opts, &NoProgress).unwrap();
        assert!(!dest.exists());
        let codes: Vec<_> = r
            .changes
            .iter()
            .map(|(p, c)| format!("{} {}", c.code(), p.display()))
            .collect();
        assert_eq!(
            codes,
            vec![
                "d a",
                "d a/b",
                "+ a/b/one.tif",
                "d empty",
                "L link",
                "+ two",
                "h two-again"
            ]
        );
    }

    #[test]
    fn symlinks_pointing_out_are_flagged() {
        assert!(symlink_warning_for("x", "../../etc").is_some());
        assert!(symlink_warning_for("a/x", "../b").is_none());
        assert!(symlink_warning_for("x", "/etc/passwd").is_some());
    }

    fn symlink_warning_for(rel: &str, target: &str) -> Option<String> {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join(rel);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, &link).unwrap();
        symlink_warning(&Source::Local(dir.path()), Path::new(rel))
    }
}
