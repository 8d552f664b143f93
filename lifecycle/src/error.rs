//! Typed errors of the run ledger and chains.

use std::path::PathBuf;

/// Errors from run records, chains and pulls.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Staging(#[from] hpcstage_staging::Error),

    /// No run by that name in the ledger.
    #[error("no run {id:?} in {ledger}")]
    UnknownRun { id: String, ledger: PathBuf },

    /// A run id given on the command line matches several runs.
    #[error("{id:?} matches several runs: {matches}")]
    Ambiguous { id: String, matches: String },

    /// A run record or event could not be read.
    #[error("{path}: {reason}")]
    Record { path: PathBuf, reason: String },
}

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
