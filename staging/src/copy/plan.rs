//! Planning a copy: what each source file needs (copied, skipped as verified, repaired),
//! decided from the journal, the destination's metadata and the source manifest; and the
//! dry run's check of the source against its manifest.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{classify, Change, Failure};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::hash::{self, Digest};
use crate::journal::JournalEntry;
use crate::manifest::{check_listed, Manifest, ManifestEntry};
use crate::ordered::ordered;
use crate::sorted::{Cursor, InOrder, JournalInOrder};
use crate::spilled::Listing;
use crate::storage::Storage;
use crate::walk::{self, Entry, Filter, Kind, Meta, MANIFEST_NAME};

/// The source tree, to be walked in path order.
pub(super) enum SourceWalk {
    /// A local folder: walked one folder at a time.
    Local(PathBuf),
    /// Any other storage: listed in path order, spilled to disk as it was listed.
    Listed(Listing),
}

impl SourceWalk {
    /// Checks the source is there (a listing storage is listed now).
    pub(super) fn open(src: &dyn Storage, filter: &Filter) -> Result<SourceWalk> {
        if let Some(root) = src.local_root() {
            if !std::fs::metadata(root).is_ok_and(|m| m.is_dir()) {
                return Err(Error::SourceMissing {
                    path: root.to_path_buf(),
                });
            }
            return Ok(SourceWalk::Local(root.to_path_buf()));
        }
        Ok(SourceWalk::Listed(src.list_in_order(filter)?))
    }
}

/// One walked entry with its plan (files only) and its digest in the source manifest.
pub(super) struct Walked {
    pub(super) entry: Entry,
    pub(super) plan: Option<Plan>,
    pub(super) listed: Option<Digest>,
}

/// How to plan: the walk's filter, the destination, the threads that look at it.
#[derive(Clone, Copy)]
pub(super) struct Planning<'a> {
    pub(super) filter: &'a Filter,
    pub(super) dest: &'a Path,
    pub(super) threads: usize,
    /// The destination did not exist: every file is new, nothing to look at.
    pub(super) fresh: bool,
    /// Re-read what the journal calls verified (`--verify`).
    pub(super) verify: bool,
}

/// Entries handed to a planning thread at once, and at most in flight.
const CHUNK: usize = 64;
const WINDOW: usize = 8192;

/// A walked entry with its digest in the source manifest and its journal entry.
type Looked = (Entry, Option<Digest>, Option<JournalEntry>);

/// What the walk saw besides its entries.
pub(super) struct WalkEnd {
    /// Entries that could not be read (the walk went on past them).
    pub(super) errors: Vec<Error>,
    /// Paths the journal held.
    pub(super) journal_entries: u64,
}

/// Walks the source in path order and hands each entry to `consume` in that order, with
/// its plan: the journal and the source manifest are read alongside (both in path
/// order), and the destination's files are looked at on `threads` threads, a bounded
/// window of entries in flight.
pub(super) fn walk_and_plan(
    how: &Planning<'_>,
    source: SourceWalk,
    manifest: Option<InOrder>,
    journal: JournalInOrder,
    consume: &mut dyn FnMut(Walked),
) -> Result<WalkEnd> {
    let Planning {
        filter,
        dest,
        threads,
        fresh,
        verify,
    } = *how;
    let mut errors = Vec::new();
    let mut failure: Option<Error> = None;
    let mut journal_entries = 0;
    let mut manifest = manifest.map(Cursor::new);
    let mut journal = Cursor::new(journal);
    // Entries travel in chunks: a look at the destination is a stat, far cheaper than
    // handing one entry to another thread.
    let produce = |emit: &mut dyn FnMut(Vec<Looked>, u64)| {
        let mut chunk = Vec::with_capacity(CHUNK);
        let mut one = |e: Entry| {
            if failure.is_some() {
                return;
            }
            let looked = if e.kind == Kind::File {
                look_up(&mut manifest, &mut journal, &e.rel)
            } else {
                Ok((None, None))
            };
            match looked {
                Ok((listed, known)) => {
                    chunk.push((e, listed, known));
                    if chunk.len() == CHUNK {
                        emit(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)), 1);
                    }
                }
                Err(err) => failure = Some(err),
            }
        };
        match source {
            SourceWalk::Local(root) => {
                if let Err(e) = walk::entries_in_order(&root, filter, &mut errors, &mut one) {
                    failure = Some(e);
                }
            }
            SourceWalk::Listed(mut listing) => {
                errors.append(&mut listing.errors);
                for e in listing {
                    match e {
                        Ok(e) => one(e),
                        Err(e) => {
                            failure.get_or_insert(e);
                            break;
                        }
                    }
                }
            }
        }
        if !chunk.is_empty() {
            emit(chunk, 1);
        }
        match journal.count_all() {
            Ok(n) => journal_entries = n,
            Err(e) => failure = failure.take().or(Some(e)),
        }
    };
    ordered(
        threads,
        WINDOW / CHUNK,
        produce,
        |chunk: Vec<Looked>| {
            chunk
                .into_iter()
                .map(|(entry, listed, known)| {
                    let plan = (entry.kind == Kind::File).then(|| {
                        if fresh {
                            Plan::Copy(Change::New)
                        } else {
                            plan_file(dest, &entry, known.as_ref(), listed, verify)
                        }
                    });
                    Walked {
                        entry,
                        plan,
                        listed,
                    }
                })
                .collect::<Vec<_>>()
        },
        |walked| walked.into_iter().for_each(&mut *consume),
    );
    match failure {
        Some(e) => Err(e),
        None => Ok(WalkEnd {
            errors,
            journal_entries,
        }),
    }
}

type ListedCursor = Cursor<InOrder, ManifestEntry>;
type JournalCursor = Cursor<JournalInOrder, (PathBuf, JournalEntry)>;

/// What the source manifest and the journal say of `rel` (asked in path order).
fn look_up(
    manifest: &mut Option<ListedCursor>,
    journal: &mut JournalCursor,
    rel: &Path,
) -> Result<(Option<Digest>, Option<JournalEntry>)> {
    let listed = match manifest {
        Some(c) => c.find(rel)?.map(|m| m.digest),
        None => None,
    };
    let known = journal.find(rel)?.map(|(_, j)| *j);
    Ok((listed, known))
}

/// A planned regular-file copy.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Job {
    pub(super) rel: PathBuf,
    pub(super) meta: Meta,
    pub(super) change: Change,
    pub(super) expected: Option<Digest>,
}

/// The files of `jobs` listed in the source manifest whose content no longer matches it,
/// as the failures the copy would report (read in parallel on the current pool).
pub(super) fn source_check(src: &dyn Storage, jobs: &[Job]) -> Vec<Failure> {
    let mut refused: Vec<Failure> = jobs
        .par_iter()
        .filter_map(|job| {
            let listed = job.expected?;
            let outcome = source_digest(src, &job.rel, &job.meta)
                .and_then(|digest| check_listed(&src.display(&job.rel), Some(listed), digest));
            let error = outcome.err()?;
            Some(Failure {
                path: job.rel.clone(),
                kind: classify(&error),
                error,
            })
        })
        .collect();
    walk::sort_by_bytes(&mut refused, |f| &f.path);
    refused
}

pub(super) enum Plan {
    /// Verified before and unchanged: its journal entry, and the destination's metadata.
    Skip(JournalEntry, Meta),
    Copy(Change),
}

/// What to do with one source file. `listed` is its digest in the source's manifest: a
/// source rewritten with its size and mtime kept (`cp -p`, `touch -r`) looks unchanged to
/// the journal, but not to a manifest made again since.
pub(super) fn plan_file(
    dest: &Path,
    e: &Entry,
    known: Option<&JournalEntry>,
    listed: Option<Digest>,
    verify: bool,
) -> Plan {
    let dest_path = dest.join(&e.rel);
    let Ok(dm) = std::fs::symlink_metadata(&dest_path) else {
        return Plan::Copy(Change::New);
    };
    let dm = Meta::from_std(&dm);
    let Some(j) = known else {
        return Plan::Copy(Change::Unverified);
    };
    if j.size != e.meta.size
        || j.src_mtime_ns != e.meta.mtime_ns
        || listed.is_some_and(|d| d != j.digest)
    {
        return Plan::Copy(Change::Changed);
    }
    if dm.size != j.size || dm.mtime_ns != j.dest_mtime_ns || dm.ino != j.dest_ino {
        return Plan::Copy(Change::Repair);
    }
    if verify {
        match hash::hash_from_storage(&dest_path) {
            Ok((d, _)) if d == j.digest => {}
            _ => return Plan::Copy(Change::Repair),
        }
    }
    Plan::Skip(*j, dm)
}

/// The source's `MANIFEST.sha256` in path order with its digest, when it has one; on a
/// storage where the manifest is what makes a tree complete (S3), a tree without one is
/// refused as incomplete. A local one is read from its file as the walk goes.
pub(super) fn read_manifest(src: &dyn Storage) -> Result<Option<(Digest, InOrder)>> {
    let rel = Path::new(MANIFEST_NAME);
    if let Some(root) = src.local_root() {
        let path = root.join(rel);
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            let file = crate::sorted::ManifestFile::open(&path)?;
            return Ok(Some((file.digest()?, file.in_order()?)));
        }
    }
    match src.read_small(rel)? {
        Some(bytes) => {
            let m = Manifest::parse(&bytes, &src.display(rel))?;
            Ok(Some((m.digest(), InOrder::from_manifest(m))))
        }
        None if src.capabilities().manifest_marks_complete => Err(Error::Incomplete {
            location: src.display(Path::new("")).display().to_string(),
        }),
        None => Ok(None),
    }
}

/// The digest of the source file `rel` (a dry run's check against the manifest).
fn source_digest(src: &dyn Storage, rel: &Path, listed: &Meta) -> Result<Digest> {
    if let Some(root) = src.local_root() {
        return hash::hash_file(&root.join(rel)).map(|(digest, _)| digest);
    }
    let mut hasher = Sha256::new();
    src.read_listed(rel, listed, &mut |block| {
        hasher.update(block);
        Ok(())
    })?;
    Ok(Digest::from_hasher(hasher))
}
