//! Typed errors of the run ledger and chains.

use std::path::PathBuf;

/// Errors from run records, chains and pulls.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Staging(#[from] hpcstage_staging::Error),

    /// A SLURM command or the local executor failed (the local executor's errors reach
    /// here as `hpcstage_slurm::Error::Local`).
    #[error(transparent)]
    Slurm(#[from] hpcstage_slurm::Error),

    /// A template could not be loaded, validated or rendered.
    #[error(transparent)]
    Template(#[from] hpcstage_template::TemplateError),

    /// A release was refused or failed.
    #[error(transparent)]
    Release(#[from] crate::release::ReleaseError),

    /// The compute job has not finished; a pull needs its final state.
    #[error("run {id}: compute job {job_id} is {state}; pull once it has ended (or pass --wait)")]
    NotFinished {
        id: String,
        job_id: String,
        state: String,
    },

    /// Another process is pulling this run.
    #[error("run {id} is being pulled by another process ({holder}); try again when it is done")]
    PullBusy { id: String, holder: String },

    /// The run has no job in the role the operation needs.
    #[error("run {id} has no {role} job recorded")]
    NoJob { id: String, role: String },

    /// No run by that name in the ledger.
    #[error("no run {id:?} in {ledger}")]
    UnknownRun { id: String, ledger: PathBuf },

    /// A run id given on the command line matches several runs.
    #[error("{id:?} matches several runs: {matches}")]
    Ambiguous { id: String, matches: String },

    /// The run cannot be retried or dismissed in the state it is in.
    #[error("run {id}: {reason}")]
    NotNow { id: String, reason: String },

    /// A run record or event could not be read.
    #[error("{path}: {reason}")]
    Record { path: PathBuf, reason: String },
}

impl From<hpcstage_slurm::local::LocalError> for Error {
    fn from(e: hpcstage_slurm::local::LocalError) -> Self {
        Error::Slurm(e.into())
    }
}

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
