//! hpcstage-staging: the data half of hpcstage.
//!
//! Manifests in GNU `sha256sum` format, the verified parallel copy engine and its
//! journal, write protection for raw data, purge policies and deadlines, and the ledger
//! of stage records. It does no argument parsing and no printing: the binary does both.

pub mod copy;
pub mod digest;
pub mod direct;
pub mod error;
pub mod hash;
pub mod human;
pub mod journal;
pub mod manifest;
pub mod ordered;
pub mod progress;
pub mod walk;

pub use error::{Error, Result};
pub mod archive;
pub mod copies;
pub mod host;
pub mod ingest;
pub mod interrupt;
pub mod ledger;
pub mod listed;
pub mod lock;
pub mod place;
pub mod policy;
pub mod record;
pub mod remote;
pub mod scan;
pub mod shard;
pub mod sorted;
pub mod spilled;
pub mod stage;
pub mod storage;
pub mod verify;
pub mod worm;
pub mod zfs;
