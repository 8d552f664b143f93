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
//! one writer, sweeping), `spill` (the plan on disk), `ending` (the last pass over the
//! plan: hard links, manifest, journal), `report` (what a run tells). The source never decides by its kind: a local folder's backend
//! says where it is ([`Storage::local_root`]) and gets the fast path (O_DIRECT, holes,
//! hard links by inode); any other storage is read through the trait.

mod dest;
mod ending;
mod finish;
mod links;
mod pipeline;
mod plan;
mod read;
mod report;
mod spill;
mod stream;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::Instant;

use self::dest::{check_space, ensure_dir, ensure_writable_dir, RunGuard};
use self::ending::{finish_tree, put_manifest, Ending};
use self::finish::{perm, set_mtime};
use self::links::{place_symlinks, same_inode, symlink_differs};
use self::pipeline::{run_pipeline, Ctx};
use self::plan::{source_check, Job, Plan, Planning, SourceWalk, Walked};
use self::report::{classify, Failures};
use self::spill::{PlanFile, Planned};
use crate::error::{Error, IoContext, Result};
use crate::interrupt;
use crate::journal::Journal;
use crate::policy::OldestTimes;
use crate::progress::Progress;
use crate::sorted::JournalInOrder;
use crate::storage::{Capabilities, LocalDir, Storage};
use crate::walk::{self, Entry, Filter, Kind, MANIFEST_NAME, STATE_DIR};

pub use self::dest::sweep_temporaries;
pub use self::report::{
    Change, CopyReport, Failure, FailureKind, CHANGES_KEPT, NOT_ATTEMPTED_KEPT,
};
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
    /// Also hand back the destination's manifest whole ([`CopyReport::manifest`]). Off,
    /// the report has its digest only, and memory does not grow with the tree.
    pub keep_manifest: bool,
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
            keep_manifest: true,
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
    copy_from(&LocalDir::new(src), dest, opts, progress)
}

/// [`copy_tree`] from any storage: a local folder, an SSH host, an S3 prefix.
///
/// Memory stays flat whatever the number of files (docs/ARCHITECTURE.md#flat-memory):
/// the source is walked in path order and merged with the journal and the source
/// manifest, both read in that order; the plan goes to a file in the destination's
/// `.hpcstage/`, feeds the copy from there, and is read once more to write
/// `MANIFEST.sha256` and the journal, in path order.
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
    if must_have_manifest {
        src.require_tree()?;
    }
    // A destination that does not exist yet holds nothing to compare with: planning needs
    // no look-up of each file there (20,000 of them on a first stage of 20,000 files).
    let fresh =
        std::fs::symlink_metadata(dest).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
    let state_dir = dest.join(STATE_DIR);
    let journal_path = state_dir.join("journal");
    if !opts.dry_run && (fresh || !journal_path.exists()) {
        // Nothing verified there yet, so everything is to be copied: streams get ready
        // (connections, the command on the host) while the source is listed and planned.
        if let Some(reader) = src.batch_read() {
            reader.prepare();
        }
    }
    // The source manifest is read while the source is listed (over SSH: on another
    // connection, beside the listing's round trip).
    let read_manifest = opts.use_source_manifest || must_have_manifest;
    let (source, source_manifest) = std::thread::scope(|scope| {
        let manifest = read_manifest.then(|| scope.spawn(|| plan::read_manifest(src)));
        let source = SourceWalk::open(src, &opts.filter);
        let manifest = manifest.map(|m| m.join().expect("the manifest reader panicked"));
        (source, manifest)
    });
    let source = source?;
    let source_manifest = source_manifest.transpose()?.flatten();
    let mut report = CopyReport {
        source_manifest_digest: source_manifest.as_ref().map(|(d, _)| *d),
        ..CopyReport::default()
    };
    let has_manifest = source_manifest.is_some();
    let guard = if opts.dry_run {
        None
    } else {
        ensure_dir(&state_dir)?;
        Some(RunGuard::acquire(&state_dir, dest)?)
    };
    let journal_in = JournalInOrder::open(&journal_path)?;
    let journal_sorted = journal_in.was_sorted();

    // Plan, in path order, into the plan file (a dry run keeps none).
    let mut dirs: Vec<Entry> = Vec::new();
    let mut symlinks: Vec<Entry> = Vec::new();
    // Hard links: only files with more than one link need their inode remembered.
    let mut links: Vec<(PathBuf, PathBuf)> = Vec::new(); // (rel, primary rel)
    let mut primaries: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut oldest = OldestTimes::default();
    let mut jobs_planned = 0u64;
    let mut plan_file = if opts.dry_run {
        None
    } else {
        Some(PlanFile::new(&state_dir)?)
    };
    let mut plan_error: Option<Error> = None;
    // A dry run reads the listed files it would copy, in chunks, to tell SOURCE CORRUPT.
    let mut dry_chunk: Vec<Job> = Vec::new();
    let pool = thread_pool(opts.jobs, dest)?;
    let dry_check = |chunk: &mut Vec<Job>, report: &mut CopyReport| {
        let refused = pool.install(|| source_check(src, chunk));
        for j in chunk.drain(..) {
            if !refused.iter().any(|f| f.path == j.rel) {
                report.bytes_to_copy += j.meta.size;
                report.note_change(&j.rel, j.change);
            }
        }
        report.failed.extend(refused);
    };
    let planning = Planning {
        filter: &opts.filter,
        dest,
        threads: opts.jobs.max(1),
        fresh,
        verify: opts.verify_existing,
    };
    let walked = plan::walk_and_plan(
        &planning,
        source,
        source_manifest.map(|(_, m)| m),
        journal_in,
        &mut |w: Walked| {
            let e = w.entry;
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
                    if has_manifest && w.listed.is_none() {
                        report.note_unlisted(&e.rel);
                    }
                    let mut planned = None;
                    if e.meta.nlink > 1 {
                        let key = (e.meta.dev, e.meta.ino);
                        if let Some(primary) = primaries.get(&key) {
                            links.push((e.rel.clone(), primary.clone()));
                            planned = Some(Planned::Link {
                                rel: e.rel.clone(),
                                primary: primary.clone(),
                            });
                        } else {
                            primaries.insert(key, e.rel.clone());
                        }
                    }
                    let planned = planned.unwrap_or_else(|| {
                        match w.plan.expect("planned every file") {
                            Plan::Skip(entry, dest_meta) => {
                                oldest.add(&dest_meta);
                                report.skipped += 1;
                                Planned::Skip { rel: e.rel, entry }
                            }
                            Plan::Copy(change) => Planned::Copy(Job {
                                rel: e.rel,
                                meta: e.meta,
                                change,
                                expected: w.listed,
                            }),
                        }
                    });
                    if let Planned::Copy(job) = planned {
                        jobs_planned += 1;
                        if jobs_planned == 1 && !opts.dry_run {
                            // Streams get ready (connections, the command on the
                            // host) while the rest is planned.
                            if let Some(reader) = src.batch_read() {
                                reader.prepare();
                            }
                        }
                        if opts.dry_run {
                            dry_chunk.push(job);
                            if dry_chunk.len() >= DRY_CHUNK {
                                dry_check(&mut dry_chunk, &mut report);
                            }
                            return;
                        }
                        report.bytes_to_copy += job.meta.size;
                        report.note_change(&job.rel, job.change);
                        let planned = Planned::Copy(job);
                        keep_plan(&mut plan_file, &planned, &mut plan_error);
                    } else {
                        keep_plan(&mut plan_file, &planned, &mut plan_error);
                    }
                }
            }
        },
    )?;
    if let Some(e) = plan_error {
        return Err(e);
    }
    for e in walked.errors {
        report.failed.push(Failure {
            path: error_path(&e, &src.display(Path::new(""))),
            kind: FailureKind::Io,
            error: e,
        });
    }

    if opts.dry_run {
        dry_check(&mut dry_chunk, &mut report);
        for d in &dirs {
            if !dest.join(&d.rel).is_dir() {
                report.note_change(&d.rel, Change::Dir);
            }
        }
        for s in &symlinks {
            if symlink_differs(src, dest, &s.rel) {
                report.note_change(&s.rel, Change::Symlink);
            }
        }
        for (rel, primary) in &links {
            if !same_inode(&dest.join(rel), &dest.join(primary)) {
                report.note_change(rel, Change::HardLink);
            }
        }
        walk::sort_by_bytes(&mut report.changes, |c| &c.0);
        report.elapsed = started.elapsed();
        return Ok(report);
    }
    let mut plan_file = plan_file.expect("a run keeps its plan");

    let bytes_needed = report.bytes_to_copy;
    if opts.check_space {
        check_space(dest, bytes_needed, jobs_planned)?;
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
    // Folders that could not be made (for example a symlink left at the destination where
    // the source now has a folder): nothing goes below them, as writing there would
    // follow the link out of the tree.
    let mut failed_dirs: Vec<PathBuf> = Vec::new();
    for d in &dirs {
        let path = dest.join(&d.rel);
        let existed = path.is_dir();
        match ensure_writable_dir(&path) {
            Err(e) => {
                failed_dirs.push(d.rel.clone());
                report.failed.push(Failure {
                    path: d.rel.clone(),
                    kind: classify(&e),
                    error: e,
                })
            }
            Ok((mode, dev)) => {
                dir_modes.insert(d.rel.clone(), mode);
                if dev != dest_dev {
                    elsewhere.insert(d.rel.clone());
                }
                if !existed {
                    report.note_change(&d.rel, Change::Dir);
                }
            }
        }
    }
    report.dirs = dirs.len() as u64;
    let under = |rel: &Path| failed_dirs.iter().any(|d| rel != d && rel.starts_with(d));
    let not_attempted = |rel: &Path| Failure {
        path: rel.to_path_buf(),
        kind: FailureKind::NotAttempted,
        error: Error::io(
            dest.join(rel),
            std::io::Error::other("not attempted: its folder could not be made at the destination"),
        ),
    };
    if !failed_dirs.is_empty() {
        for (rel, _) in &links {
            if under(rel) {
                report.failed.push(not_attempted(rel));
            }
        }
        for s in &symlinks {
            if under(&s.rel) {
                report.failed.push(not_attempted(&s.rel));
            }
        }
        symlinks.retain(|e| !under(&e.rel));
    }

    let journal = Mutex::new(Journal::open(&journal_path)?);
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

    // Copy what the plan says, straight from the plan file; outcomes are counted.
    let verify_pool = thread_pool(opts.jobs, dest)?;
    let tally: Mutex<Tally> = Mutex::new(Tally {
        oldest,
        ..Tally::default()
    });
    let read_error: Mutex<Option<Error>> = Mutex::new(None);
    let jobs = plan_file.read()?.filter_map(|r| match r {
        Ok(Planned::Copy(job)) if under(&job.rel) => {
            tally
                .lock()
                .expect("tally lock")
                .failed
                .push(not_attempted(&job.rel));
            None
        }
        Ok(Planned::Copy(job)) => Some(job),
        Ok(_) => None,
        Err(e) => {
            read_error.lock().expect("plan lock").get_or_insert(e);
            None
        }
    });
    let watch = interrupt::watch();
    let journal_errors = run_pipeline(
        &ctx,
        jobs,
        jobs_planned,
        &pool,
        &verify_pool,
        &journal,
        &|r| {
            let mut t = tally.lock().expect("tally lock");
            match r {
                Ok((job, _, dest_meta)) => {
                    t.oldest.add(&dest_meta);
                    t.copied += 1;
                    t.bytes_copied += job.meta.size;
                    if job.change == Change::Repair {
                        t.repaired.push(job.rel);
                    }
                }
                Err(f) => t.failed.push(f),
            }
        },
    );
    drop(watch);
    if let Some(e) = read_error.into_inner().expect("plan lock") {
        return Err(e);
    }
    let tally = tally.into_inner().expect("tally lock");
    report.copied = tally.copied;
    report.bytes_copied = tally.bytes_copied;
    report.repaired = tally.repaired;
    tally.failed.into_report(&mut report);
    oldest = tally.oldest;
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
    let journal = journal.into_inner().expect("journal lock");
    let appended = journal.appended();
    // The journal is written again (in path order, one line per current file) unless it
    // is that already.
    let rewrite = appended > 0
        || journal.torn()
        || !journal_sorted
        || walked.journal_entries != report.skipped;
    drop(journal);

    // The manifest and the journal, from the plan in path order.
    let ending = Ending {
        links: &links,
        journal_path: &journal_path,
        rewrite,
        copied: appended > 0,
        keep_manifest: opts.keep_manifest,
    };
    let merged = finish_tree(src, dest, &mut plan_file, &ending, &mut report);
    let (manifest_tmp, journal_rewrite) = match merged {
        Ok(m) => m,
        // Failing files are already reported and the run ends non-zero; a plan or
        // journal that could not be read is one more of them.
        Err(e) if !report.failed.is_empty() => {
            report.failed.push(journal_failure(e));
            (None, None)
        }
        Err(e) => return Err(e),
    };
    place_symlinks(src, dest, &symlinks, &mut report);

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

    if let Some(rewrite) = journal_rewrite {
        if let Err(e) = rewrite.commit() {
            // Failing files are already reported and the run ends non-zero; a journal
            // that could not be written is one more of them, not a reason to drop the
            // report.
            if report.failed.is_empty() {
                return Err(e);
            }
            let failure = journal_failure(e);
            if !report.failed.iter().any(|f| f.path == failure.path) {
                report.failed.push(failure);
            }
        }
    }
    let manifest_path = dest.join(MANIFEST_NAME);
    if report.failed.is_empty() {
        if let Some(tmp) = manifest_tmp {
            put_manifest(tmp, &manifest_path)?;
        }
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

/// Files a dry run reads at once to check them against the source manifest.
const DRY_CHUNK: usize = 4096;

/// Appends to the plan file; the first error is kept and ends the run after the walk.
fn keep_plan(plan: &mut Option<PlanFile>, planned: &Planned, error: &mut Option<Error>) {
    if let (Some(file), None) = (plan.as_mut(), error.as_ref()) {
        if let Err(e) = file.push(planned) {
            *error = Some(e);
        }
    }
}

/// The outcomes of the copy, counted as they come.
#[derive(Default)]
struct Tally {
    copied: u64,
    bytes_copied: u64,
    repaired: Vec<PathBuf>,
    failed: Failures,
    oldest: OldestTimes,
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

fn error_path(e: &Error, fallback: &Path) -> PathBuf {
    match e {
        Error::Io { path, .. } => path.clone(),
        _ => fallback.to_path_buf(),
    }
}
