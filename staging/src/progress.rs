//! The progress callback the long-running operations report through.
//!
//! The library never draws anything: the binary turns these calls into a progress bar
//! on a terminal, or ignores them.

/// Receives progress from hashing and copying. Called from many threads at once.
pub trait Progress: Sync {
    /// The total work is now known.
    fn start(&self, _files: u64, _bytes: u64) {}
    /// `bytes` more were processed.
    fn add_bytes(&self, _bytes: u64) {}
    /// One more file is done (or skipped).
    fn add_file(&self) {}
    /// A phase started (e.g. "verifying"), for display.
    fn phase(&self, _name: &str) {}
}

/// Ignores all progress.
pub struct NoProgress;

impl Progress for NoProgress {}
