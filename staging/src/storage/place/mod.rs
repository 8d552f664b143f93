//! Placing a new tree (an ingested dataset, a run's results or a failed run's logs) into a
//! storage so that it appears complete or not at all: its files verified one by one, the
//! small files that describe it (`dataset.json`, `run.json`, `README.md`), then
//! `MANIFEST.sha256` last, protection when asked, and (where the storage can rename) one
//! rename into its final name.
//!
//! `ingest` and `pull` run the same steps whatever the NAS is; how each step is done is
//! the backend's ([`super::Storage::place`]):
//! - a local folder: the copy engine into a hidden `.NAME.ingest` (`.NAME.partial` for
//!   results) folder held by a lock (resumed by a rerun from the same source), read-only
//!   when protected, then renamed with RENAME_NOREPLACE, the immutable flag and a ZFS
//!   snapshot;
//! - an SSH host: a verified upload into a hidden `.NAME.upload` folder, renamed into place
//!   (never over an existing folder), then `chmod -R a-w` when protected;
//! - an S3 prefix: every object uploaded, read back and (when protected) given its Object
//!   Lock retention; the manifest object, written last, is what makes the prefix a tree.

mod local;
mod s3;
mod sftp;

use std::path::{Path, PathBuf};

use crate::copy::{CopyOptions, CopyReport};
use crate::error::Result;
use crate::hash::Digest;
use crate::manifest::{Manifest, ManifestEntry};
use crate::progress::Progress;
use crate::sorted::{overlay, InOrder};
use crate::worm::Protection;

pub(crate) use local::place_local;
pub(crate) use s3::place_s3;
pub(crate) use sftp::place_sftp;

use super::Retention;

/// How to place a tree.
#[derive(Debug, Clone)]
pub struct PlaceOptions {
    /// Filter, parallelism, dry run, the source manifest check.
    pub copy: CopyOptions,
    /// What is being placed (the source's canonical path): a half-done placement resumes
    /// only from the same one.
    pub origin: String,
    /// Write-protect the placed tree (read-only, the immutable flag and a ZFS snapshot
    /// where asked and available, the Object Lock `retention`): always for raw data, on
    /// `pull --worm` for results. Protection that cannot be applied is refused before
    /// anything is written where the storage can tell (a bucket without Object Lock).
    pub protect: bool,
    /// Names what the tree is filled in before it appears, next to its final place:
    /// `.NAME.<hidden>` on a folder (`ingest`, `partial`), and its lock
    /// `.NAME.<hidden>.lock`.
    pub hidden: &'static str,
    /// Hold the name's lock while placing, so that two placements of one name never mix
    /// (`ingest`). A caller that already holds a lock of its own (`pull`, its run's lock)
    /// goes without: a lock left on an SSH host or in a bucket by a process killed on
    /// another node would refuse every rerun elsewhere.
    pub exclusive: bool,
    /// Ask for the immutable flag on top of read-only (where a filesystem has one).
    pub immutable: bool,
    /// Object Lock retention of every object when protected (where the storage has
    /// Object Lock).
    pub retention: Retention,
    /// Also run `sha256sum -c` on the NAS host itself before the rename (SSH hosts).
    pub remote_verify: bool,
    /// Names the ZFS snapshot taken of the placed tree (`PRJ-NAME`) when it is protected;
    /// empty: none is taken.
    pub label: String,
}

/// What a placed tree's `MANIFEST.sha256` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed {
    pub files: u64,
    /// Of the manifest's text ([`crate::manifest::Manifest::digest`]).
    pub digest: Digest,
}

/// How a placed tree is protected, and what its manifest lists.
#[derive(Debug)]
pub struct Placed {
    pub listed: Listed,
    pub protection: Option<Protection>,
    /// Object Lock retention set on every object (and read back), in words.
    pub retention: Option<String>,
    /// The ZFS snapshot and hold taken of the placed tree (see [`crate::zfs`]).
    pub snapshot: Option<std::result::Result<Option<crate::zfs::Snapshot>, String>>,
}

impl Placed {
    /// Placed without protection.
    fn unprotected(listed: Listed) -> Placed {
        Placed {
            listed,
            protection: None,
            retention: None,
            snapshot: None,
        }
    }
}

/// A tree being placed. Dropped before [`Placement::finish`], it leaves what it wrote where a
/// rerun resumes it, never under the final name.
///
/// The list of what was placed may be millions of files: it is read in path order
/// ([`Placement::listed`]) and never handed over whole, so that `ingest` and `pull` into
/// a folder keep flat memory (docs/ARCHITECTURE.md#flat-memory).
pub trait Placement {
    /// Where the tree will be once placed, as the user reads it.
    fn path(&self) -> PathBuf;
    /// `rel` inside the tree being written, for messages.
    fn display(&self, rel: &Path) -> PathBuf;
    /// Copies the local tree `src` in, every file verified (a rerun skips what an
    /// interrupted one already verified). Failures of single files are in the report;
    /// its manifest is left empty (see [`Placement::listed`]), its digest set.
    fn put_tree(&mut self, src: &Path, progress: &dyn Progress) -> Result<CopyReport>;
    /// The files [`Placement::put_tree`] verified, with their digests, in path order.
    fn listed(&self) -> Result<InOrder>;
    /// A small file of the tree (`dataset.json`), verified.
    fn put_bytes(&mut self, rel: &Path, bytes: &[u8]) -> Result<Digest>;
    /// Writes `MANIFEST.sha256`, last: the files of [`Placement::listed`] with
    /// `described` (what [`Placement::put_bytes`] wrote) in their places. Then protects
    /// the tree and gives it its final name.
    fn finish(self: Box<Self>, described: &[ManifestEntry]) -> Result<Placed>;
}

/// The manifest of a tree held in memory (an SSH host's or a bucket's, whose listing is
/// held anyway): `listed` with `described` in their places.
fn manifest_with(listed: InOrder, described: &[ManifestEntry]) -> Result<Manifest> {
    let entries = overlay(listed, described).collect::<Result<Vec<ManifestEntry>>>()?;
    Ok(Manifest { entries })
}
