//! hpcstage-slurm: everything that talks to SLURM or stands in for it.
//!
//! The SLURM client (sbatch/sacct/squeue/scontrol with timeouts, retries and
//! de-duplication), job states and their parsers, typed `sbatch` options, and the local
//! executor used when no SLURM is installed. Job templates are `hpcstage-template`'s. It
//! does no argument parsing and no printing.

pub mod client;
pub mod duration;
pub mod error;
pub mod local;
pub mod parse;
pub mod partition;
pub mod process;
pub mod sbatch;
pub mod state;

pub use error::{Error, Result};
