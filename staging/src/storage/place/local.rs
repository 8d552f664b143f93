//! Placing a tree into a local folder: the copy engine fills a hidden `.NAME.ingest`
//! (`.NAME.partial`) folder next to the final place (so a killed placement resumes there),
//! held by the name's lock; `MANIFEST.sha256` is written last, the folder made read-only
//! when protected, then renamed with RENAME_NOREPLACE: an existing tree is never
//! overwritten or appended to, even by a concurrent placement of the same name.

use std::path::{Path, PathBuf};

use super::{Listed, PlaceOptions, Placed, Placement};
use crate::copy::{copy_tree, CopyReport};
use crate::error::{Error, IoContext, Result};
use crate::hash::Digest;
use crate::lock::lock_or_refuse;
use crate::manifest::{write_verified, ManifestEntry, ManifestWriter};
use crate::progress::Progress;
use crate::sorted::{overlay, InOrder};
use crate::walk::{MANIFEST_NAME, STATE_DIR};
use crate::worm::{make_read_only, seal};

/// A tree being placed at `final_path`, written into `partial`.
struct LocalPlacement {
    final_path: PathBuf,
    partial: PathBuf,
    opts: PlaceOptions,
    /// Held until the placement is over: another one of the same name must not take over
    /// (or remove) the folder this one is filling. `None` for a dry run.
    _lock: Option<PlaceLock>,
}

/// Starts placing a tree at `final_path`: refused when something is there.
pub(crate) fn place_local(final_path: &Path, opts: &PlaceOptions) -> Result<Box<dyn Placement>> {
    let exists = |final_path: &Path| {
        std::fs::symlink_metadata(final_path)
            .is_ok()
            .then(|| Error::DatasetExists {
                path: final_path.to_path_buf(),
            })
    };
    // Before the lock too: who may not write next to it still hears that the tree exists.
    if let Some(e) = exists(final_path) {
        return Err(e);
    }
    let parent = final_path.parent().expect("a placed tree has a parent");
    let name = final_path
        .file_name()
        .expect("a placed tree has a name")
        .to_string_lossy()
        .into_owned();
    let dry_run = opts.copy.dry_run;
    let lock = (!dry_run && opts.exclusive)
        .then(|| PlaceLock::acquire(parent, &format!(".{name}.{}", opts.hidden), final_path))
        .transpose()?;
    if let Some(e) = exists(final_path) {
        return Err(e);
    }
    let partial = parent.join(format!(".{name}.{}", opts.hidden));
    // A half-done placement resumes only from the same source; another one starts afresh.
    let origin_path = partial.join(STATE_DIR).join("origin");
    if partial.exists()
        && std::fs::read_to_string(&origin_path).ok().as_deref() != Some(opts.origin.as_str())
        && !dry_run
    {
        crate::worm::make_writable(&partial)?;
        std::fs::remove_dir_all(&partial).at(&partial)?;
    }
    if !dry_run {
        std::fs::create_dir_all(partial.join(STATE_DIR)).at(&partial)?;
        std::fs::write(&origin_path, &opts.origin).at(&origin_path)?;
    }
    Ok(Box::new(LocalPlacement {
        final_path: final_path.to_path_buf(),
        partial,
        opts: opts.clone(),
        _lock: lock,
    }))
}

impl Placement for LocalPlacement {
    fn path(&self) -> PathBuf {
        self.final_path.clone()
    }

    fn display(&self, rel: &Path) -> PathBuf {
        self.partial.join(rel)
    }

    fn put_tree(&mut self, src: &Path, progress: &dyn Progress) -> Result<CopyReport> {
        let mut copy = self.opts.copy.clone();
        copy.preserve_mtime = true;
        // The engine writes the manifest into the folder; it is read from there.
        copy.keep_manifest = false;
        copy_tree(src, &self.partial, &copy, progress)
    }

    fn listed(&self) -> Result<InOrder> {
        InOrder::streamed(&self.partial.join(MANIFEST_NAME))
    }

    fn put_bytes(&mut self, rel: &Path, bytes: &[u8]) -> Result<Digest> {
        write_verified(&self.partial.join(rel), bytes)
    }

    fn finish(self: Box<Self>, described: &[ManifestEntry]) -> Result<Placed> {
        let (partial, final_path) = (&self.partial, &self.final_path);
        let state = partial.join(STATE_DIR);
        // One pass over the engine's manifest: each entry goes into the new one (its
        // temporary in the state folder, which the prune leaves alone) as the walk of the
        // folder beside it removes what it does not list. The new manifest gets its name
        // only once the folder holds nothing else.
        let mut manifest = ManifestWriter::create(&partial.join(MANIFEST_NAME), Some(&state))?;
        let mut entries = overlay(self.listed()?, described).map(|e| {
            let e = e?;
            manifest.push(&e)?;
            Ok(e)
        });
        crate::place::prune_unlisted(partial, entries.by_ref())?;
        // What the walk did not need to read (listed files after the last one on disk).
        entries.try_for_each(|e| e.map(drop))?;
        drop(entries);
        let (files, digest) = manifest.commit()?;
        let listed = Listed { files, digest };
        std::fs::remove_dir_all(&state).at(&state)?;
        // Read-only before it gets its final name, so that no crash can leave a writable
        // tree there (a rename in the same folder needs no write permission on what it
        // moves); the immutable flag, which forbids the rename, comes after it.
        if self.opts.protect {
            make_read_only(partial)?;
        }
        crate::place::rename_noreplace(partial, final_path).map_err(|e| {
            // Left where it is: writable again, so that its owner can remove it.
            let _ = crate::worm::make_writable(partial);
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::DatasetExists {
                    path: final_path.clone(),
                }
            } else {
                Error::io(final_path, e)
            }
        })?;
        if !self.opts.protect {
            return Ok(Placed::unprotected(listed));
        }
        let protection = seal(final_path, self.opts.immutable);
        let snapshot = (!self.opts.label.is_empty())
            .then(|| crate::zfs::snapshot_and_hold(final_path, &self.opts.label, "ingest"));
        Ok(Placed {
            listed,
            protection: Some(protection),
            retention: None,
            snapshot,
        })
    }
}

/// The lock of one tree name in a folder: `.NAME.ingest.lock`, next to the folder being
/// filled (not in it: a new placement may remove that folder). Held by `flock` while the
/// placement runs; it holds the owner's pid. The file is removed once the tree is in
/// place: whoever locks a file removed or about to be finds the tree there and stops, and
/// a failed placement keeps it for its rerun.
struct PlaceLock {
    path: PathBuf,
    final_path: PathBuf,
    _lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

impl PlaceLock {
    /// Locks `hidden` (the folder being filled) of `parent`.
    fn acquire(parent: &Path, hidden: &str, final_path: &Path) -> Result<Self> {
        std::fs::create_dir_all(parent).at(parent)?;
        let path = parent.join(format!("{hidden}.lock"));
        let lock = lock_or_refuse(&path, final_path)?;
        Ok(PlaceLock {
            path,
            final_path: final_path.to_path_buf(),
            _lock: lock,
        })
    }
}

impl Drop for PlaceLock {
    fn drop(&mut self) {
        if self.final_path.exists() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::CopyOptions;
    use crate::progress::NoProgress;

    fn options() -> PlaceOptions {
        PlaceOptions {
            copy: CopyOptions::default(),
            origin: "the run".into(),
            protect: false,
            hidden: "partial",
            exclusive: false,
            immutable: false,
            retention: crate::storage::S3Options::default().retention,
            remote_verify: false,
            label: String::new(),
        }
    }

    #[test]
    fn finish_lists_the_copied_and_described_files_and_removes_what_it_does_not_list() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("run");
        std::fs::create_dir_all(src.join("masks")).unwrap();
        std::fs::write(src.join("masks/m1.tif"), "one").unwrap();
        std::fs::write(src.join("z.csv"), "z").unwrap();
        let final_path = dir.path().join("results/r1");
        let mut placing = place_local(&final_path, &options()).unwrap();
        // Left in the hidden folder by an earlier attempt: never published.
        let partial = dir.path().join("results/.r1.partial");
        std::fs::create_dir_all(partial.join("masks")).unwrap();
        std::fs::write(partial.join("masks/old.tif"), "old").unwrap();
        std::fs::write(partial.join("zz-stray"), "stray").unwrap();
        let report = placing.put_tree(&src, &NoProgress).unwrap();
        assert!(report.failed.is_empty());
        let run_json = placing.put_bytes(Path::new("run.json"), b"{}").unwrap();
        let described = [ManifestEntry {
            path: "run.json".into(),
            digest: run_json,
        }];
        let placed = placing.finish(&described).unwrap();

        let text = std::fs::read_to_string(final_path.join(MANIFEST_NAME)).unwrap();
        let expected: String = [("masks/m1.tif", "one"), ("run.json", "{}"), ("z.csv", "z")]
            .iter()
            .map(|(p, c)| format!("{}  {p}\n", Digest::of(c.as_bytes()).to_hex()))
            .collect();
        assert_eq!(text, expected);
        assert_eq!(placed.listed.files, 3);
        assert_eq!(placed.listed.digest, Digest::of(text.as_bytes()));
        let mut names: Vec<String> = walkdir(&final_path);
        names.sort();
        assert_eq!(
            names,
            ["MANIFEST.sha256", "masks/m1.tif", "run.json", "z.csv"]
        );
        assert!(!partial.exists());
    }

    /// Every file under `root`, relative.
    fn walkdir(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut errors = Vec::new();
        crate::walk::every_file_in_order(root, &|_, _| false, &mut errors, &mut |rel| {
            out.push(rel.to_string_lossy().into_owned());
        });
        assert!(errors.is_empty());
        out
    }
}
