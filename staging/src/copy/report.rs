//! What a copy tells: the change made to each path, why a file was not copied, and the
//! report of the whole run. Kept apart from the engine so that callers (stage, ingest,
//! pull, the CLI's printer) read the outcome without the machinery that made it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, StorageErrorKind};
use crate::hash::Digest;
use crate::manifest::Manifest;
use crate::policy::OldestTimes;

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
    /// The files that failed, and the first [`NOT_ATTEMPTED_KEPT`] of those the run did
    /// not try because it stopped (the rest are counted in `not_attempted_more`): a run
    /// stopped early in millions of files keeps a few lines, not a line per file.
    pub failed: Vec<Failure>,
    /// Files not tried, beyond those named in `failed`.
    pub not_attempted_more: u64,
    /// What changed (or would change), in path order: the first [`CHANGES_KEPT`] of the
    /// run's changes.
    pub changes: Vec<(PathBuf, Change)>,
    /// How many changes there were in all, and how many of them were folders made.
    pub changes_total: u64,
    pub dirs_changed: u64,
    /// Things worth telling that are not failures (links pointing out, special files).
    pub warnings: Vec<String>,
    /// The destination's manifest (all files of this source now verified there); empty
    /// unless [`CopyOptions::keep_manifest`].
    pub manifest: Manifest,
    /// The digest of the destination's manifest, when the copy engine wrote it (see
    /// [`CopyReport::manifest_digest`]).
    pub manifest_digest: Option<Digest>,
    /// Digest of the source's `MANIFEST.sha256` when it was used to check the source.
    pub source_manifest_digest: Option<Digest>,
    /// Source files not listed in the source manifest (copied, but unchecked at the
    /// source): the first [`CHANGES_KEPT`], and how many in all.
    pub unlisted_in_source: Vec<PathBuf>,
    pub unlisted_total: u64,
    pub oldest: OldestTimes,
    pub elapsed: Duration,
}

/// How many changes (and unlisted files) a report names one by one; the rest are counted.
pub const CHANGES_KEPT: usize = 10_000;

/// How many files not attempted a report names one by one; the rest are counted.
pub const NOT_ATTEMPTED_KEPT: usize = 100;

/// Failures as they come in: each named, except files not attempted past the first
/// [`NOT_ATTEMPTED_KEPT`], which are counted.
#[derive(Debug, Default)]
pub(super) struct Failures {
    named: Vec<Failure>,
    not_attempted_named: usize,
    not_attempted_more: u64,
}

impl Failures {
    pub(super) fn push(&mut self, failure: Failure) {
        if failure.kind == FailureKind::NotAttempted {
            if self.not_attempted_named == NOT_ATTEMPTED_KEPT {
                self.not_attempted_more += 1;
                return;
            }
            self.not_attempted_named += 1;
        }
        self.named.push(failure);
    }

    /// Adds them to `report`.
    pub(super) fn into_report(self, report: &mut CopyReport) {
        report.failed.extend(self.named);
        report.not_attempted_more += self.not_attempted_more;
    }
}

impl CopyReport {
    /// True when nothing failed.
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.not_attempted_more == 0
    }

    /// How many files failed or were not attempted, named or counted.
    pub fn failed_total(&self) -> u64 {
        self.failed.len() as u64 + self.not_attempted_more
    }

    /// [`Manifest::digest`] of the destination's manifest.
    pub fn manifest_digest(&self) -> Digest {
        self.manifest_digest
            .unwrap_or_else(|| self.manifest.digest())
    }

    /// Counts a change, and names it while fewer than [`CHANGES_KEPT`] are.
    pub fn note_change(&mut self, rel: &Path, change: Change) {
        self.changes_total += 1;
        self.dirs_changed += u64::from(change == Change::Dir);
        if self.changes.len() < CHANGES_KEPT {
            self.changes.push((rel.to_path_buf(), change));
        }
    }

    /// Counts a file the source manifest does not list, and names it while fewer than
    /// [`CHANGES_KEPT`] are.
    pub fn note_unlisted(&mut self, rel: &Path) {
        self.unlisted_total += 1;
        if self.unlisted_in_source.len() < CHANGES_KEPT {
            self.unlisted_in_source.push(rel.to_path_buf());
        }
    }
}

/// What kind of failure an error is for one file.
pub(super) fn classify(e: &Error) -> FailureKind {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(i: usize, kind: FailureKind) -> Failure {
        Failure {
            path: PathBuf::from(format!("f{i}")),
            kind,
            error: Error::io(format!("f{i}"), std::io::Error::other("x")),
        }
    }

    #[test]
    fn files_not_attempted_past_the_first_hundred_are_counted_and_other_failures_all_named() {
        let mut failures = Failures::default();
        failures.push(failure(0, FailureKind::DiskFull));
        for i in 1..=250 {
            failures.push(failure(i, FailureKind::NotAttempted));
        }
        failures.push(failure(251, FailureKind::Io));
        let mut report = CopyReport::default();
        failures.into_report(&mut report);
        assert_eq!(report.failed.len(), 1 + NOT_ATTEMPTED_KEPT + 1);
        assert_eq!(report.not_attempted_more, 250 - NOT_ATTEMPTED_KEPT as u64);
        assert_eq!(report.failed_total(), 252);
        assert_eq!(report.failed.last().map(|f| f.kind), Some(FailureKind::Io));
        assert!(!report.ok());
    }
}
