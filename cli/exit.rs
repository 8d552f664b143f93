//! The one place that maps an outcome to the process exit code (the table in the README's
//! "Exit codes"), as fd's `exit_codes.rs` and uv's `ExitStatus` do. Commands return an
//! [`ExitStatus`] or an error; `main` turns either into a code here, and nowhere else.
//!
//! An error keeps its code however it was wrapped: the library errors that carry an
//! integrity failure are found through `anyhow` context and through the lifecycle's
//! `#[error(transparent)]` wrapper of staging errors, which hides the inner error from
//! `Error::chain()`.
//!
//! See docs/ARCHITECTURE.md#crates-and-what-each-may-import.

use std::process::ExitCode;

use hpcstage_lifecycle::Error as LifecycleError;
use hpcstage_staging::Error as StagingError;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExitStatus {
    Success,
    /// An error: bad input, a missing path, configuration, I/O, SLURM.
    Failure,
    /// The command line itself was wrong (clap's usage errors).
    Usage,
    /// A checksum did not match, a file is missing, or the source is corrupt.
    Integrity,
    /// Some files failed for other reasons (I/O, disk full, changed while read), or a
    /// run's results were not accepted.
    Partial,
    /// `report --fail-on-risk` found data that exists only on scratch.
    AtRisk,
    /// SIGINT or SIGTERM stopped the work cleanly: 128 + the signal, as a shell reports a
    /// process the signal ended.
    Interrupted(i32),
}

impl ExitStatus {
    /// The process exit code (documented in the README and `--help`).
    pub(crate) fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Failure => 1,
            ExitStatus::Usage => 2,
            ExitStatus::Integrity => 3,
            ExitStatus::Partial => 4,
            ExitStatus::AtRisk => 5,
            ExitStatus::Interrupted(signal) => u8::try_from(128 + signal).unwrap_or(130),
        }
    }

    /// The status of a command that stopped with `err`: integrity failures (a source that
    /// does not match its manifest, a read-back that differs) are [`ExitStatus::Integrity`]
    /// wherever they were raised; anything else is [`ExitStatus::Failure`].
    pub(crate) fn of_error(err: &anyhow::Error) -> ExitStatus {
        let bad_bag = err.chain().any(|cause| {
            matches!(
                cause.downcast_ref::<LifecycleError>(),
                Some(LifecycleError::Release(e)) if e.is_integrity()
            )
        });
        if bad_bag {
            return ExitStatus::Integrity;
        }
        match staging_error(err) {
            Some(
                StagingError::SourceCorrupt { .. }
                | StagingError::ReadBackMismatch { .. }
                | StagingError::ArchiveMismatch { .. },
            ) => ExitStatus::Integrity,
            Some(StagingError::Interrupted { signal, .. }) => ExitStatus::Interrupted(*signal),
            _ => ExitStatus::Failure,
        }
    }

    /// The status of a command line clap refused (or `--help`/`--version`, which succeed).
    pub(crate) fn of_clap(err: &clap::Error) -> ExitStatus {
        if err.use_stderr() {
            ExitStatus::Usage
        } else {
            ExitStatus::Success
        }
    }
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> ExitCode {
        ExitCode::from(status.code())
    }
}

/// The staging error behind `err`, however it was wrapped.
pub(crate) fn staging_error(err: &anyhow::Error) -> Option<&StagingError> {
    err.chain().find_map(staging_error_in)
}

/// The staging error one cause is, bare or as the lifecycle wraps it.
pub(crate) fn staging_error_in<'a>(
    cause: &'a (dyn std::error::Error + 'static),
) -> Option<&'a StagingError> {
    cause
        .downcast_ref::<StagingError>()
        .or_else(|| match cause.downcast_ref::<LifecycleError>() {
            Some(LifecycleError::Staging(inner)) => Some(inner),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;
    use std::path::PathBuf;

    fn read_back_mismatch() -> StagingError {
        StagingError::ReadBackMismatch {
            path: PathBuf::from("/nas/P/results/r/masks/a.tif"),
            wrote: "a".repeat(64),
            wrote_len: 10,
            read: "b".repeat(64),
            read_len: 10,
        }
    }

    #[test]
    fn a_bag_that_fails_its_own_check_is_an_integrity_failure() {
        use hpcstage_lifecycle::release::ReleaseError;
        let err: anyhow::Error = LifecycleError::Release(ReleaseError::Invalid {
            dir: PathBuf::from("/nas/P/release/.r.partial"),
            problems: vec!["data/a: FAILED sha256 check".into()],
        })
        .into();
        assert_eq!(
            ExitStatus::of_error(&err.context("release")),
            ExitStatus::Integrity
        );
    }

    #[test]
    fn an_integrity_failure_inside_a_pull_keeps_code_3_through_every_wrapper() {
        let err: anyhow::Error = LifecycleError::Staging(read_back_mismatch()).into();
        let err = err.context("pulling run r");
        assert_eq!(ExitStatus::of_error(&err), ExitStatus::Integrity);
        assert_eq!(ExitStatus::of_error(&err).code(), 3);
        assert!(matches!(
            staging_error(&err),
            Some(StagingError::ReadBackMismatch { .. })
        ));
    }

    #[test]
    fn other_errors_are_failures() {
        let err = anyhow::anyhow!("no such run");
        assert_eq!(ExitStatus::of_error(&err), ExitStatus::Failure);
        let err: anyhow::Error = LifecycleError::Staging(StagingError::SourceMissing {
            path: PathBuf::from("/nas/x"),
        })
        .into();
        assert_eq!(ExitStatus::of_error(&err).code(), 1);
        let wrapped: anyhow::Result<()> = Err(err).context("staging");
        assert_eq!(ExitStatus::of_error(&wrapped.unwrap_err()).code(), 1);
    }
}
