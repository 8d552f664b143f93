//! The verified copy engine shared by `stage`, `ingest` and `pull`: from any [`Storage`]
//! (a local folder, an SSH host, an S3 prefix) into a local folder.
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
//!
//! The parts, by role: `plan` (what each file needs), `pipeline` (copy, flush, verify,
//! overlapping), `read` (one source file into its temporary), `stream` (batches of small
//! files from a source that streams many at once), `finish` (read back, rename,
//! journal), `links` (hard and symbolic links), `dest` (the destination folder: space,
//! one writer, sweeping). The source never decides by its kind: a local folder's backend
//! says where it is ([`Storage::local_root`]) and gets the fast path (O_DIRECT, holes,
//! hard links by inode); any other storage is read through the trait.

mod dest;
mod finish;
mod links;
mod pipeline;
mod plan;
mod read;
mod stream;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use self::dest::{check_space, ensure_dir, ensure_writable_dir, write_if_changed, RunGuard};
use self::finish::{perm, set_mtime};
use self::links::{place_links, same_inode, symlink_differs};
use self::pipeline::{run_pipeline, Ctx};
use self::plan::{plan_file, source_check, Job, Plan};
use crate::error::{Error, IoContext, Result, StorageErrorKind};
use crate::hash::Digest;
use crate::interrupt;
use crate::journal::Journal;
use crate::manifest::{Manifest, ManifestEntry};
use crate::policy::OldestTimes;
use crate::progress::Progress;
use crate::storage::{Capabilities, LocalDir, Storage};
use crate::walk::{self, Entry, Filter, Kind, Meta, MANIFEST_NAME, STATE_DIR};

pub use self::dest::sweep_temporaries;
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

/// Copies the tree `src` into `dest` with verification. Failures of single files are in
/// the report; an `Err` means the run could not start or its bookkeeping failed.
pub fn copy_tree(
    src: &Path,
    dest: &Path,
    opts: &CopyOptions,
    progress: &dyn Progress,
) -> Result<CopyReport> {
    copy_from(&LocalDir::new(src), dest, opts, progress)
}

/// [`copy_tree`] from any storage: a local folder, an SSH host, an S3 prefix.
pub fn copy_from(
    src: &dyn Storage,
    dest: &Path,
    opts: &CopyOptions,
    progress: &dyn Progress,
) -> Result<CopyReport> {
    let started = Instant::now();
    // On a store where the manifest marks a complete tree, it is read whatever the
    // options say: a prefix without one is refused as incomplete, before it is listed.
    let must_have_manifest = src.capabilities().manifest_marks_complete;
    if must_have_manifest && src.stat(Path::new(MANIFEST_NAME))?.is_none() {
        return Err(Error::Incomplete {
            location: src.display(Path::new("")).display().to_string(),
        });
    }
    let tree = src.list(&opts.filter)?;
    let mut report = CopyReport::default();
    for e in tree.errors {
        report.failed.push(Failure {
            path: error_path(&e, &src.display(Path::new(""))),
            kind: FailureKind::Io,
            error: e,
        });
    }

    let source_manifest = if opts.use_source_manifest || must_have_manifest {
        plan::read_manifest(src)?
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
        let refused = pool.install(|| source_check(src, &jobs));
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
            if symlink_differs(src, dest, &s.rel) {
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
        src,
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

    place_links(src, dest, &links, &symlinks, &mut known, &mut report);

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
    report.warnings.extend(src.notes());
    report.warnings.extend(Capabilities::limits_note(src));
    walk::sort_by_bytes(&mut report.changes, |c| &c.0);
    report.oldest = oldest;
    report.elapsed = started.elapsed();
    if let Some(g) = guard {
        g.finish(report.failed.is_empty());
    }
    Ok(report)
}

/// A pool of `jobs` threads (at least one).
fn thread_pool(jobs: usize, dest: &Path) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(jobs.max(1))
        .build()
        .map_err(|e| Error::io(dest, std::io::Error::other(e.to_string())))
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
