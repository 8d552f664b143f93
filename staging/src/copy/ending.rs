//! The last pass over the plan, after the copy: hard links made, and the destination's
//! `MANIFEST.sha256` and journal written from the plan in path order (never held whole
//! in memory, docs/ARCHITECTURE.md#flat-memory).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::links::{place_hard_link, primary_missing};
use super::spill::{PlanFile, Planned};
use super::{classify, Change, CopyReport, Failure};
use crate::error::{Error, IoContext, Result};
use crate::hash::Digest;
use crate::journal::Rewrite;
use crate::manifest::{write_line, ManifestEntry};
use crate::sorted::{Cursor, JournalInOrder};
use crate::storage::Storage;
use crate::walk::{self, MANIFEST_NAME};

/// The destination's manifest as the plan's last pass makes it, compared as it goes with
/// the one there: nothing is written while they agree (a re-stage that changed nothing
/// reads the old one once), and from where they first differ a new one is written under
/// a temporary name next to it (the agreeing start copied from the old one).
pub(super) struct ManifestOut {
    path: PathBuf,
    old: Option<std::io::BufReader<File>>,
    /// Bytes of the old manifest the new one agreed with so far.
    matched: u64,
    out: Option<std::io::BufWriter<tempfile::NamedTempFile>>,
    hasher: Sha256,
    buf: Vec<u8>,
}

impl ManifestOut {
    pub(super) fn new(path: &Path) -> ManifestOut {
        let old = File::open(path)
            .ok()
            .filter(|f| f.metadata().is_ok_and(|m| m.is_file()))
            .map(|f| std::io::BufReader::with_capacity(1 << 20, f));
        ManifestOut {
            path: path.to_path_buf(),
            old,
            matched: 0,
            out: None,
            hasher: Sha256::new(),
            buf: Vec::with_capacity(256),
        }
    }

    pub(super) fn push(&mut self, line: &[u8]) -> Result<()> {
        self.hasher.update(line);
        if self.out.is_none() {
            if let Some(old) = self.old.as_mut() {
                self.buf.resize(line.len(), 0);
                if std::io::Read::read_exact(old, &mut self.buf).is_ok() && self.buf == line {
                    self.matched += line.len() as u64;
                    return Ok(());
                }
            }
            self.diverge()?;
        }
        let out = self.out.as_mut().expect("diverged above");
        out.write_all(line).at(&self.path)
    }

    /// Starts the new manifest with the part of the old one that agreed.
    fn diverge(&mut self) -> Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(walk::TMP_PREFIX)
            .tempfile_in(dir)
            .at(dir)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, tmp);
        if self.old.take().is_some() {
            let old = File::open(&self.path).at(&self.path)?;
            let copied = std::io::copy(&mut std::io::Read::take(old, self.matched), &mut out)
                .at(&self.path)?;
            if copied != self.matched {
                return Err(Error::io(
                    &self.path,
                    std::io::Error::other("the manifest changed while it was compared"),
                ));
            }
        }
        self.out = Some(out);
        Ok(())
    }

    /// The new manifest's digest, and its temporary file unless the old one is the same.
    pub(super) fn finish(mut self) -> Result<(Digest, Option<tempfile::NamedTempFile>)> {
        let digest = Digest::from_hasher(self.hasher.clone());
        if self.out.is_none() {
            let ended = self
                .old
                .as_mut()
                .is_some_and(|old| std::io::Read::read(old, &mut [0u8; 1]).is_ok_and(|n| n == 0));
            if ended {
                return Ok((digest, None));
            }
            self.diverge()?;
        }
        let out = self.out.take().expect("diverged above");
        let tmp = out
            .into_inner()
            .map_err(|e| Error::io(&self.path, e.into_error()))?;
        Ok((digest, Some(tmp)))
    }
}

/// Puts a new manifest in place (durable, readable by all).
pub(super) fn put_manifest(tmp: tempfile::NamedTempFile, path: &Path) -> Result<()> {
    let file = tmp.as_file();
    file.sync_data().at(path)?;
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .at(path)?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// What the last pass over the plan needs besides it.
#[derive(Clone, Copy)]
pub(super) struct Ending<'a> {
    /// The hard links (link, primary).
    pub(super) links: &'a [(PathBuf, PathBuf)],
    pub(super) journal_path: &'a Path,
    /// Write the journal anew.
    pub(super) rewrite: bool,
    /// The run appended to the journal.
    pub(super) copied: bool,
    pub(super) keep_manifest: bool,
}

/// Reads the plan once more, in path order, after the copy: the hard links are made, and
/// every file now verified goes into the destination's manifest (written under a
/// temporary name when it differs from the one there; its digest in `report`) and, when `rewrite`, into a new journal (not
/// yet in place). The entries of the files copied by this run come from the journal
/// (`copied`: it has some).
pub(super) fn finish_tree(
    src: &dyn Storage,
    dest: &Path,
    plan: &mut PlanFile,
    ending: &Ending<'_>,
    report: &mut CopyReport,
) -> Result<(Option<tempfile::NamedTempFile>, Option<Rewrite>)> {
    let Ending {
        links,
        journal_path,
        rewrite,
        copied,
        keep_manifest,
    } = *ending;
    let failed: HashSet<PathBuf> = report.failed.iter().map(|f| f.path.clone()).collect();
    let with_links: HashSet<&Path> = links.iter().map(|(_, p)| p.as_path()).collect();
    let mut primary_digest: HashMap<PathBuf, Digest> = HashMap::new();
    let mut journal = if copied {
        Some(Cursor::new(JournalInOrder::open(journal_path)?))
    } else {
        None
    };
    let mut new_journal = if rewrite {
        Some(Rewrite::new(journal_path)?)
    } else {
        None
    };
    let manifest_path = dest.join(MANIFEST_NAME);
    let mut out = ManifestOut::new(&manifest_path);
    let mut line = Vec::with_capacity(256);
    for planned in plan.read()? {
        let (rel, digest, entry) = match planned? {
            Planned::Skip { rel, entry } => (rel, entry.digest, Some(entry)),
            Planned::Copy(job) => {
                if failed.contains(&job.rel) {
                    continue;
                }
                let found = match journal.as_mut() {
                    Some(j) => j.find(&job.rel)?.map(|(_, e)| *e),
                    None => None,
                };
                // Not journalled: its line could not be written (reported already).
                let Some(entry) = found else { continue };
                (job.rel, entry.digest, Some(entry))
            }
            Planned::Link { rel, primary } => {
                if failed.contains(&rel) {
                    continue;
                }
                let Some(digest) = primary_digest.get(&primary).copied() else {
                    report.failed.push(primary_missing(src, &rel, &primary));
                    continue;
                };
                match place_hard_link(dest, &rel, &primary) {
                    Ok(changed) => {
                        if changed {
                            report.note_change(&rel, Change::HardLink);
                        }
                        report.hard_links += 1;
                    }
                    Err(e) => {
                        report.failed.push(Failure {
                            path: rel,
                            kind: classify(&e),
                            error: e,
                        });
                        continue;
                    }
                }
                (rel, digest, None)
            }
        };
        line.clear();
        write_line(&mut line, &digest, rel.as_os_str().as_bytes());
        out.push(&line)?;
        if let (Some(j), Some(entry)) = (new_journal.as_mut(), entry.as_ref()) {
            j.push(&rel, entry)?;
        }
        if with_links.contains(rel.as_path()) {
            primary_digest.insert(rel.clone(), digest);
        }
        if keep_manifest {
            report
                .manifest
                .entries
                .push(ManifestEntry { path: rel, digest });
        }
    }
    let (digest, tmp) = out.finish()?;
    report.manifest_digest = Some(digest);
    Ok((tmp, new_journal))
}
