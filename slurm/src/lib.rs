//! hpcstage-slurm: everything that talks to SLURM or stands in for it.
//!
//! The SLURM client (sbatch/sacct/squeue/scontrol with timeouts, retries and
//! de-duplication), job states, dependency chains, job templates with typed parameters and
//! shell-safe rendering, and the local executor used when no SLURM is installed. It does
//! no argument parsing and no printing.

pub mod client;
pub mod error;
pub mod local;
pub mod parse;
pub mod partition;
pub mod process;
pub mod state;
pub mod template;

pub use error::{Error, Result};
