//! One module per command; shared pieces (outcome status, copy options, the copy summary)
//! live here.

pub(crate) mod archive;
pub(crate) mod clean;
pub(crate) mod completions;
pub(crate) mod config;
pub(crate) mod copies;
pub(crate) mod demo;
pub(crate) mod dismiss;
pub(crate) mod doctor;
pub(crate) mod epilogue;
pub(crate) mod ingest;
pub(crate) mod manifest;
pub(crate) mod pull;
pub(crate) mod release;
pub(crate) mod report;
pub(crate) mod retry;
pub(crate) mod shards;
pub(crate) mod stage;
pub(crate) mod status;
pub(crate) mod submit;
pub(crate) mod template;

use anyhow::Result;
use hpcstage_staging::copy::{CopyOptions, CopyReport, FailureKind, NOT_ATTEMPTED_KEPT};
use hpcstage_staging::human::{bytes, count};
use hpcstage_staging::manifest::display_name;
use hpcstage_staging::remote::SshOptions;
use hpcstage_staging::storage::diagnose;
use hpcstage_staging::walk::Filter;
use serde::Serialize;

use crate::args::{CopyArgs, ParallelArgs};
use crate::config::Settings;
use crate::output;

/// How a command that ran to the end went (the exit codes live in [`crate::exit`]).
pub(crate) use crate::exit::ExitStatus;

/// A hint for errors users can fix themselves.
pub(crate) fn hint(err: &anyhow::Error) -> Option<String> {
    use hpcstage_staging::Error as E;
    // The operating system's error, bare or inside the staging error that names its path.
    let read_only = err
        .chain()
        .filter_map(|e| {
            e.downcast_ref::<std::io::Error>()
                .or_else(|| match crate::exit::staging_error_in(e)? {
                    E::Io { error, .. } => Some(error),
                    _ => None,
                })
        })
        .any(|e| e.kind() == std::io::ErrorKind::ReadOnlyFilesystem);
    if read_only {
        return Some(
            "that filesystem is mounted read-only (scratch often is during maintenance, and a \
             NAS export may be): check with `findmnt -T PATH`, or choose another --scratch-root"
                .into(),
        );
    }
    let e = crate::exit::staging_error(err)?;
    Some(match e {
        E::InsufficientSpace { .. } => {
            "free space at the destination, stage fewer files with --include/--exclude, \
             or choose another --scratch-root"
                .into()
        }
        E::DatasetExists { .. } => {
            "choose another --dataset name; raw data is never replaced (remove it by hand, \
             as its owner, only if you are sure)"
                .into()
        }
        E::Locked { .. } => "wait for the other hpcstage process to finish, or check that it is still alive".into(),
        E::SourceMissing { path } => diagnose::missing_hint(path).into(),
        E::ConnectionLost { .. } => {
            "run the same command again when the NAS host answers: it resumes where it stopped"
                .into()
        }
        E::Manifest { .. } | E::UnsafePath { .. } => {
            "fix or regenerate the manifest (`hpcstage manifest create DIR`); paths must be relative to its folder"
                .into()
        }
        E::Glob { .. } => "globs use * ? [..] {a,b} and ** for any depth".into(),
        _ => return None,
    })
}

/// A thread pool sized by --jobs or the config.
pub(crate) fn pool(settings: &Settings, args: &ParallelArgs) -> Result<rayon::ThreadPool> {
    let jobs = args.jobs.unwrap_or(settings.jobs).max(1);
    Ok(rayon::ThreadPoolBuilder::new().num_threads(jobs).build()?)
}

/// Copy options from the shared copy flags.
/// SSH settings with the command line's `--ssh-sessions`.
pub(crate) fn ssh_options(settings: &Settings, args: &ParallelArgs) -> SshOptions {
    SshOptions {
        sessions: args.ssh_sessions.unwrap_or(settings.ssh.sessions).max(1),
        ..settings.ssh.clone()
    }
}

pub(crate) fn copy_options(settings: &Settings, args: &CopyArgs) -> Result<CopyOptions> {
    Ok(CopyOptions {
        jobs: args.parallel.jobs.unwrap_or(settings.jobs).max(1),
        dry_run: args.dry_run,
        verify_existing: args.verify,
        filter: Filter::new(&args.include, &args.exclude)?,
        ..CopyOptions::default()
    })
}

/// The exit status a copy report deserves.
pub(crate) fn copy_status(report: &CopyReport) -> ExitStatus {
    let integrity = report.failed.iter().any(|f| {
        matches!(
            f.kind,
            FailureKind::SourceCorrupt | FailureKind::VerifyFailed
        )
    });
    if integrity {
        ExitStatus::Integrity
    } else if report.failed.is_empty() {
        ExitStatus::Success
    } else {
        ExitStatus::Partial
    }
}

#[derive(Serialize)]
pub(crate) struct FailureJson {
    path: String,
    kind: FailureKind,
    error: String,
}

/// The copy report as JSON-friendly data.
#[derive(Serialize)]
pub(crate) struct CopyJson {
    ok: bool,
    files_total: u64,
    bytes_total: u64,
    copied: u64,
    bytes_copied: u64,
    skipped: u64,
    hard_links: u64,
    symlinks: u64,
    dirs: u64,
    elapsed_secs: f64,
    bytes_per_sec: f64,
    source_manifest_used: bool,
    unlisted_in_source: Vec<String>,
    unlisted_total: u64,
    repaired: Vec<String>,
    failed: Vec<FailureJson>,
    /// Files not attempted beyond those `failed` names.
    not_attempted_more: u64,
    warnings: Vec<String>,
    /// The first `CHANGES_KEPT` changes, and how many there were in all.
    changes: Vec<(String, String)>,
    changes_total: u64,
    manifest_digest: String,
}

impl CopyJson {
    pub(crate) fn new(r: &CopyReport) -> Self {
        let secs = r.elapsed.as_secs_f64();
        CopyJson {
            ok: r.ok(),
            files_total: r.files_total,
            bytes_total: r.bytes_total,
            copied: r.copied,
            bytes_copied: r.bytes_copied,
            skipped: r.skipped,
            hard_links: r.hard_links,
            symlinks: r.symlinks,
            dirs: r.dirs,
            elapsed_secs: secs,
            bytes_per_sec: r.bytes_copied as f64 / secs.max(1e-3),
            source_manifest_used: r.source_manifest_digest.is_some(),
            unlisted_in_source: r
                .unlisted_in_source
                .iter()
                .map(|p| display_name(p))
                .collect(),
            unlisted_total: r.unlisted_total,
            repaired: r.repaired.iter().map(|p| display_name(p)).collect(),
            failed: r
                .failed
                .iter()
                .map(|f| FailureJson {
                    path: display_name(&f.path),
                    kind: f.kind,
                    error: f.error.to_string(),
                })
                .collect(),
            not_attempted_more: r.not_attempted_more,
            warnings: r.warnings.clone(),
            changes: r
                .changes
                .iter()
                .map(|(p, c)| (c.code().to_string(), display_name(p)))
                .collect(),
            changes_total: r.changes_total,
            manifest_digest: r.manifest_digest().to_hex(),
        }
    }
}

/// Prints the human summary of a copy: itemized changes for a dry run, otherwise counts,
/// rate, warnings and every failure.
pub(crate) fn print_copy_report(r: &CopyReport, dry_run: bool) {
    if dry_run {
        for (path, change) in &r.changes {
            output::data(format!("{} {}", change.code(), display_name(path)));
        }
        let unnamed = r.changes_total.saturating_sub(r.changes.len() as u64);
        if unnamed > 0 {
            output::note(format!(
                "... and {unnamed} more changes, not listed one by one"
            ));
        }
        for w in &r.warnings {
            output::warn(w);
        }
        print_failures(r, "would fail");
        let to_copy = r.changes_total - r.dirs_changed;
        output::note(format!(
            "dry run: {} to copy ({}), {} unchanged; nothing was written",
            to_copy,
            bytes(r.bytes_to_copy),
            r.skipped
        ));
        return;
    }
    for w in &r.warnings {
        output::warn(w);
    }
    if r.unlisted_total > 0 {
        output::warn(format!(
            "{} files are not in the source MANIFEST.sha256 and could not be checked against it",
            r.unlisted_total
        ));
    }
    for p in &r.repaired {
        output::warn(format!(
            "{}: destination no longer matched; copied again",
            display_name(p)
        ));
    }
    output::data(format!(
        "files: {} total, {} copied, {} unchanged, {} failed; {}, {}, {}",
        r.files_total,
        r.copied,
        r.skipped,
        r.failed_total(),
        count(r.hard_links, "hard link"),
        count(r.symlinks, "symlink"),
        count(r.dirs, "folder")
    ));
    output::data(format!(
        "bytes: {} copied of {} in {:.1}s ({})",
        bytes(r.bytes_copied),
        bytes(r.bytes_total),
        r.elapsed.as_secs_f64(),
        output::rate(r.bytes_copied, r.elapsed)
    ));
    print_failures(r, "failed");
}

/// Every failure of a copy, on stderr, under "N files failed:" (or "would fail"); files
/// the run did not try, because it stopped, are counted apart.
fn print_failures(r: &CopyReport, verb: &str) {
    let named_not_tried = r
        .failed
        .iter()
        .filter(|f| f.kind == FailureKind::NotAttempted)
        .count();
    let failed = r.failed.len() - named_not_tried;
    let not_tried = named_not_tried as u64 + r.not_attempted_more;
    let headline = match (failed, not_tried) {
        (0, 0) => return,
        (_, 0) => format!("{} {verb}:", count(failed as u64, "file")),
        (0, _) => format!("{} not attempted:", count(not_tried, "file")),
        _ => format!(
            "{} {verb}, {} not attempted:",
            count(failed as u64, "file"),
            not_tried
        ),
    };
    output::error(headline);
    for f in &r.failed {
        output::error(format!("  {}: {}", display_name(&f.path), f.error));
    }
    if r.not_attempted_more > 0 {
        output::error(format!(
            "  and {} more not attempted (the first {NOT_ATTEMPTED_KEPT} are named)",
            count(r.not_attempted_more, "file")
        ));
    }
}
