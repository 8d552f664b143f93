//! hpcstage-lifecycle: runs of a job template over a staged dataset.
//!
//! A run is created once (its record never changes) and then only gains events: jobs
//! submitted, jobs ended, pulls started, finished or failed. Several actors on different
//! nodes add events (the login node, the pull-back job, the site's Epilog), so every event
//! is its own create-only file: nothing is ever rewritten in place, which keeps the ledger
//! safe on NFS home folders without locks. The current state of a run is the fold of its
//! events.

pub mod backend;
pub mod chain;
pub mod clean;
pub mod digests;
pub mod epilogue;
pub mod error;
pub mod failures;
pub mod pull;
pub mod refresh;
pub mod release;
pub mod report;
pub mod run;
pub mod shards;

#[cfg(test)]
mod testutil;

pub use error::{Error, Result};
