//! Typed errors of the SLURM client, templates and the local executor.

/// Errors from SLURM commands, templates and the local executor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Placeholder until the client lands.
    #[error("{0}")]
    Other(String),
}

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
