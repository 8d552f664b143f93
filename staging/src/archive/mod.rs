//! Cold-archive packages of a dataset: deterministic POSIX pax tar chunks, an index of
//! every member and chunk, a manifest over both and a README for whoever finds them.
//!
//! See docs/ARCHITECTURE.md#archives.

pub mod chunk;
pub mod index;
pub mod plan;
pub mod store;
pub mod write;
