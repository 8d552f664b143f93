//! Deciding which scratch folders can go, and removing them.
//!
//! A folder is removed only when it is provably safe: a staged copy whose NAS source
//! manifest still lists every staged file with the same checksum, or a run folder whose
//! results were pulled and whose NAS results manifest is the one recorded at the pull.
//! Every folder must also be named by a plain absolute path (no `..`, not a symlink), sit
//! inside the scratch root and carry its own `.hpcstage/` marker naming the same path, so
//! a damaged or hostile ledger entry can never point `clean` at anything else. A staged
//! folder holding files its stage manifest does not list (results written into it) is
//! kept: those files exist nowhere else. Nothing is ever `touch`ed to postpone a purge.

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use hpcstage_staging::hash::hash_file;
use hpcstage_staging::journal::Journal;
use hpcstage_staging::manifest::Manifest;
use hpcstage_staging::record::{read_json, StageRecord};
use hpcstage_staging::remote::NasAccess;
use hpcstage_staging::scan::{scan, Scan};
use hpcstage_staging::walk::{is_bookkeeping, is_temporary, Meta, MANIFEST_NAME, STATE_DIR};
use hpcstage_staging::worm::make_writable;

use crate::error::Result;
use crate::report::{nas_results_state, ItemKind, PulledMarker, PULLED_MARKER};
use crate::run::RunRecord;

/// What `clean` decided for one folder.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub kind: ItemKind,
    pub name: String,
    pub path: PathBuf,
    pub bytes: u64,
    pub files: u64,
    /// `None`: safe to remove; `Some(reason)`: refused.
    pub refused: Option<String>,
}

/// Checks that a recorded path is named plainly: absolute and without `..`.
fn plain_path(path: &Path) -> std::result::Result<(), String> {
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "{} is not a plain absolute path; refusing to remove it",
            path.display()
        ));
    }
    Ok(())
}

/// Checks that `path` is a folder strictly inside `scratch_root` (after resolving links),
/// and not itself a symlink.
fn inside_scratch(path: &Path, scratch_root: &Path) -> std::result::Result<(), String> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(format!(
            "{} is a symbolic link; refusing to remove it",
            path.display()
        ));
    }
    let root = std::fs::canonicalize(scratch_root)
        .map_err(|e| format!("scratch root {}: {e}", scratch_root.display()))?;
    let real = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if real == root || !real.starts_with(&root) {
        return Err(format!(
            "{} is not inside the scratch root {}; refusing to remove it",
            real.display(),
            root.display()
        ));
    }
    Ok(())
}

/// Decides whether a staged copy can be removed.
pub fn assess_stage(record: &StageRecord, scratch_root: &Path) -> Candidate {
    let path = record.destination.clone();
    let mut c = Candidate {
        kind: ItemKind::Stage,
        name: record.id.clone(),
        path: path.clone(),
        bytes: 0,
        files: 0,
        refused: None,
    };
    match stage_refusal(record, scratch_root) {
        Ok(s) => (c.bytes, c.files) = (s.bytes, s.files),
        Err(why) => c.refused = Some(why),
    }
    c
}

/// The folder's scan when it is safe to remove, else why not.
fn stage_refusal(record: &StageRecord, scratch_root: &Path) -> std::result::Result<Scan, String> {
    let dest = &record.destination;
    plain_path(dest)?;
    if !dest.is_dir() {
        return Err("already gone".into());
    }
    inside_scratch(dest, scratch_root)?;
    let marker: StageRecord =
        read_json(&dest.join(STATE_DIR).join("stage.json")).map_err(|_| {
            "no stage record in the folder (.hpcstage/stage.json); not a complete stage".to_string()
        })?;
    if marker.destination != *dest {
        return Err("the folder's stage record names another path".into());
    }
    let scratch = Manifest::read(&dest.join(MANIFEST_NAME))
        .map_err(|_| "the scratch copy has no readable MANIFEST.sha256".to_string())?;
    // What each file looked like when it was verified (hard links have no entry of their
    // own; their inode is checked through the file they link to).
    let journal = Journal::load(&dest.join(STATE_DIR).join("journal"))
        .map_err(|e| format!("the stage journal cannot be read ({e})"))?;
    let source = Path::new(&record.source);
    if let (Ok(src), Ok(dst)) = (std::fs::canonicalize(source), std::fs::canonicalize(dest)) {
        if src.starts_with(&dst) || dst.starts_with(&src) {
            return Err(format!(
                "the recorded source {} is the scratch copy itself (or overlaps it)",
                source.display()
            ));
        }
    }
    let no_manifest = |why: String| {
        format!(
            "no readable MANIFEST.sha256 at the NAS source {}{why}; nothing proves a verified copy there",
            source.display()
        )
    };
    let folder = NasAccess::shared()
        .folder(source)
        .map_err(|e| no_manifest(format!(" ({e})")))?;
    let nas = folder
        .manifest()
        .map_err(|e| no_manifest(format!(" ({e})")))?
        .ok_or_else(|| no_manifest(String::new()))?;
    let nas = nas.to_map();
    // A remote NAS is listed once (one round trip per folder) instead of a stat per file.
    let remote_sizes =
        match folder.remote() {
            Some(_) => Some(folder.file_sizes().map_err(|e| {
                format!("the NAS source {} cannot be listed ({e})", source.display())
            })?),
            None => None,
        };
    for e in &scratch.entries {
        match nas.get(e.path.as_path()) {
            Some(d) if *d == e.digest => {
                // The manifest vouches for the bytes; the file itself must still be there.
                let on_nas = match &remote_sizes {
                    Some(sizes) => sizes.get(&e.path).copied().ok_or(()),
                    None => std::fs::metadata(source.join(&e.path))
                        .map(|m| m.size())
                        .map_err(|_| ()),
                };
                let on_scratch = std::fs::symlink_metadata(dest.join(&e.path));
                match (on_nas, on_scratch) {
                    (Err(()), _) => {
                        return Err(format!(
                            "{} is in the NAS manifest but missing at the NAS source",
                            e.path.display()
                        ))
                    }
                    (Ok(n), Ok(s)) if n != s.size() => {
                        return Err(format!(
                            "{} differs in size between scratch and the NAS source",
                            e.path.display()
                        ))
                    }
                    (_, Ok(s)) => {
                        // Edited in place after staging (same size, say): the scratch
                        // copy may hold work that exists nowhere else. A file whose inode
                        // or mtime moved since it was verified is read again; only its
                        // content decides (a `touch` is not an edit).
                        let moved = journal.get(&e.path).is_some_and(|j| {
                            let now = Meta::from_std(&s);
                            j.dest_ino != now.ino || j.dest_mtime_ns != now.mtime_ns
                        });
                        if moved
                            && hash_file(&dest.join(&e.path)).map(|h| h.0).ok() != Some(e.digest)
                        {
                            return Err(format!(
                                "{} changed on scratch after it was staged and verified; it may hold work that is not on the NAS",
                                e.path.display()
                            ));
                        }
                    }
                    _ => {}
                }
            }
            Some(_) => {
                return Err(format!(
                    "{} differs between scratch and the NAS manifest (the NAS source changed)",
                    e.path.display()
                ))
            }
            None => {
                return Err(format!(
                    "{} is on scratch but not in the NAS manifest",
                    e.path.display()
                ))
            }
        }
    }
    // Files written into the staged folder after staging exist only here.
    let listed = scratch.to_map();
    let found = scan(dest, true);
    if let Some(first) = found.errors.first() {
        return Err(format!("part of the folder could not be read: {first}"));
    }
    let mut extra: Vec<&PathBuf> = found
        .paths
        .iter()
        .flatten()
        .filter(|p| {
            !listed.contains_key(p.as_path())
                && !is_bookkeeping(p)
                && !p.file_name().is_some_and(is_temporary)
        })
        .collect();
    extra.sort();
    if let Some(first) = extra.first() {
        return Err(format!(
            "{} file(s) on scratch are not in its stage manifest (written after staging?), \
             e.g. {}",
            extra.len(),
            first.display()
        ));
    }
    Ok(found)
}

/// Decides whether a run folder can be removed.
pub fn assess_run(record: &RunRecord, scratch_root: &Path) -> Candidate {
    let path = record.run_dir.clone();
    let mut c = Candidate {
        kind: ItemKind::Run,
        name: record.id.clone(),
        path: path.clone(),
        bytes: 0,
        files: 0,
        refused: None,
    };
    c.refused = run_refusal(record, scratch_root).err();
    if c.refused.is_none() {
        let s = scan(&path, false);
        (c.bytes, c.files) = (s.bytes, s.files);
    }
    c
}

fn run_refusal(record: &RunRecord, scratch_root: &Path) -> std::result::Result<(), String> {
    let dir = &record.run_dir;
    plain_path(dir)?;
    if !dir.is_dir() {
        return Err("already gone".into());
    }
    inside_scratch(dir, scratch_root)?;
    let marker: RunRecord = read_json(&dir.join(STATE_DIR).join("run.json"))
        .map_err(|_| "no run record in the folder (.hpcstage/run.json)".to_string())?;
    if marker.run_dir != *dir || marker.id != record.id {
        return Err("the folder's run record names another run".into());
    }
    // Its owner gave the results up (`hpcstage dismiss`, which refuses while a job of
    // the run is queued or running): the usual checks above are all that is left.
    if crate::run::dismissal(record, None).is_some() {
        return Ok(());
    }
    let pulled: PulledMarker =
        read_json(&dir.join(STATE_DIR).join(PULLED_MARKER)).map_err(|_| {
            "results were not pulled back to the NAS yet (run `hpcstage pull`)".to_string()
        })?;
    if pulled.run_id != record.id {
        return Err("the folder's pull marker names another run".into());
    }
    nas_results_state(&pulled.results_dir, &pulled.manifest_digest)
}

/// Removes a folder that [`assess_stage`] or [`assess_run`] found safe.
pub fn remove(candidate: &Candidate) -> Result<()> {
    debug_assert!(candidate.refused.is_none());
    make_writable(&candidate.path)?;
    std::fs::remove_dir_all(&candidate.path)
        .map_err(|e| hpcstage_staging::Error::io(&candidate.path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{make_read_only, write, write_manifest, World};
    use hpcstage_staging::hash::Digest;
    use hpcstage_staging::manifest::ManifestEntry;
    use hpcstage_staging::record::write_json;

    #[track_caller]
    fn refused(c: &Candidate) -> &str {
        assert!(c.path.exists(), "{} was touched", c.path.display());
        c.refused
            .as_deref()
            .unwrap_or_else(|| panic!("{} was not refused", c.path.display()))
    }

    /// A stage through the real copy engine, so that its journal says what was verified.
    fn staged_with_journal(w: &World, dataset: &str, files: &[(&str, &str)]) -> StageRecord {
        let source = w.nas_dataset("P", dataset, files);
        let record = w.stage(&source, "P", dataset);
        let report = hpcstage_staging::copy::copy_tree(
            &source,
            &record.destination,
            &hpcstage_staging::copy::CopyOptions::default(),
            &hpcstage_staging::progress::NoProgress,
        )
        .unwrap();
        assert!(report.ok(), "{:?}", report.failed);
        record
    }

    #[test]
    fn a_staged_file_edited_in_place_keeps_the_folder() {
        let w = World::new();
        let record = staged_with_journal(&w, "plate7", &[("a.tif", "aaaa"), ("b.tif", "bb")]);
        assert_eq!(assess_stage(&record, &w.scratch()).refused, None);
        let path = record.destination.join("a.tif");
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        // Same size, same mtime put back: only the inode gives the edit away.
        let edited = record.destination.join("a.tif.new");
        write(&edited, "AAAA");
        std::fs::rename(&edited, &path).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let c = assess_stage(&record, &w.scratch());
        assert!(
            refused(&c).contains("a.tif changed on scratch after it was staged"),
            "{c:?}"
        );
        // Only touched (same bytes, new mtime): not an edit.
        let record = staged_with_journal(&w, "plate9", &[("t.tif", "tt")]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::File::options()
            .write(true)
            .open(record.destination.join("t.tif"))
            .unwrap()
            .set_modified(std::time::SystemTime::now())
            .unwrap();
        assert_eq!(assess_stage(&record, &w.scratch()).refused, None);
        // Written over in place (same inode), the mtime moves.
        let record = staged_with_journal(&w, "plate8", &[("x.tif", "xx")]);
        assert_eq!(assess_stage(&record, &w.scratch()).refused, None);
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(record.destination.join("x.tif"), "XX").unwrap();
        let c = assess_stage(&record, &w.scratch());
        assert!(refused(&c).contains("x.tif changed on scratch"), "{c:?}");
    }

    #[test]
    fn a_safe_staged_copy_is_removed_read_only_parts_and_all() {
        let w = World::new();
        let (_, record) = w.plate7();
        // Bookkeeping of hpcstage itself is not user data.
        write(&record.destination.join("verify_2026-01-01.log"), "ok\n");
        make_read_only(&record.destination);
        let c = assess_stage(&record, &w.scratch());
        assert_eq!(c.refused, None);
        assert_eq!((c.kind, c.name.as_str()), (ItemKind::Stage, "P/plate7"));
        assert_eq!(c.files, 5, "3 data files, the manifest and the verify log");
        remove(&c).unwrap();
        assert!(!record.destination.exists());
        assert!(
            w.scratch().join("P").is_dir(),
            "only the staged folder goes"
        );
    }

    #[test]
    fn a_staged_copy_whose_nas_source_changed_is_refused() {
        let w = World::new();
        let (source, record) = w.plate7();
        let mut nas = Manifest::read(&source.join(MANIFEST_NAME)).unwrap();
        nas.entries[1] = ManifestEntry {
            path: "b.tif".into(),
            digest: Digest::of(b"something else"),
        };
        nas.write_atomic(&source.join(MANIFEST_NAME)).unwrap();
        let c = assess_stage(&record, &w.scratch());
        assert_eq!(
            refused(&c),
            "b.tif differs between scratch and the NAS manifest (the NAS source changed)"
        );

        std::fs::remove_file(source.join(MANIFEST_NAME)).unwrap();
        let c = assess_stage(&record, &w.scratch());
        assert!(
            refused(&c).starts_with("no readable MANIFEST.sha256 at the NAS source"),
            "{c:?}"
        );
    }

    #[test]
    fn a_staged_copy_is_refused_when_the_nas_lacks_one_of_its_files() {
        let w = World::new();
        let (source, record) = w.plate7();
        // Listed in the NAS manifest but gone from the NAS.
        std::fs::remove_file(source.join("sub/c.csv")).unwrap();
        let c = assess_stage(&record, &w.scratch());
        assert_eq!(
            refused(&c),
            "sub/c.csv is in the NAS manifest but missing at the NAS source"
        );
        // On scratch only: staged with a manifest the NAS never had.
        let (source2, mut record2) = {
            let source = w.nas_dataset("P", "other", &[("a.tif", "aaaa")]);
            let record = w.stage(&source, "P", "other");
            (source, record)
        };
        write(&record2.destination.join("z.tif"), "z");
        write_manifest(&record2.destination);
        record2.source = source2.display().to_string();
        let c = assess_stage(&record2, &w.scratch());
        assert_eq!(
            refused(&c),
            "z.tif is on scratch but not in the NAS manifest"
        );
    }

    #[test]
    fn files_written_into_a_staged_folder_after_staging_keep_it() {
        let w = World::new();
        let (_, record) = w.plate7();
        write(&record.destination.join("sub/results.csv"), "only here");
        let c = assess_stage(&record, &w.scratch());
        assert_eq!(
            refused(&c),
            "1 file(s) on scratch are not in its stage manifest (written after staging?), \
             e.g. sub/results.csv"
        );
    }

    #[test]
    fn an_unpulled_run_is_refused_and_a_pulled_one_removed() {
        let w = World::new();
        let run = w.run("P", "r1");
        let c = assess_run(&run, &w.scratch());
        assert_eq!(
            refused(&c),
            "results were not pulled back to the NAS yet (run `hpcstage pull`)"
        );

        let mut marker = w.pull(&run);
        // The NAS results changed since the pull.
        write(&run.results_dir.join("extra.csv"), "x");
        write_manifest(&run.results_dir);
        let c = assess_run(&run, &w.scratch());
        assert!(refused(&c).contains("changed since the pull"), "{c:?}");

        // A pull marker of another run proves nothing about this one.
        marker.manifest_digest = write_manifest(&run.results_dir).digest().to_hex();
        marker.run_id = "r0".into();
        write_json(&run.run_dir.join(STATE_DIR).join(PULLED_MARKER), &marker).unwrap();
        let c = assess_run(&run, &w.scratch());
        assert_eq!(refused(&c), "the folder's pull marker names another run");

        marker.run_id = run.id.clone();
        write_json(&run.run_dir.join(STATE_DIR).join(PULLED_MARKER), &marker).unwrap();
        let c = assess_run(&run, &w.scratch());
        assert_eq!(c.refused, None);
        assert_eq!((c.kind, c.files), (ItemKind::Run, 3));
        remove(&c).unwrap();
        assert!(!run.run_dir.exists());
        assert!(run.results_dir.join("masks/m1.tif").is_file());
    }

    #[test]
    fn hostile_ledger_entries_pointing_outside_scratch_are_refused() {
        let w = World::new();
        let (_, record) = w.plate7();
        let outside = w.root.join("sibling");
        let copy = |dest: &Path| {
            let mut r = record.clone();
            r.destination = dest.to_path_buf();
            r
        };
        // A real folder next to scratch, with a marker that names it.
        let sibling = w.stage_to(Path::new(&record.source), &outside, "P", "plate7");
        let cases = [
            (
                copy(Path::new("/etc")),
                "/etc is not inside the scratch root",
            ),
            (sibling.clone(), "is not inside the scratch root"),
            (
                copy(&w.scratch().join("P/../../sibling")),
                "is not a plain absolute path",
            ),
            (copy(&w.scratch()), "is not inside the scratch root"),
            (
                copy(Path::new("scratch/P/plate7")),
                "is not a plain absolute path",
            ),
        ];
        for (hostile, why) in &cases {
            let c = assess_stage(hostile, &w.scratch());
            assert!(
                c.refused.as_deref().is_some_and(|r| r.contains(why)),
                "{c:?}"
            );
        }

        // A symlink inside scratch that points out, with or without a marker naming it.
        let link = w.scratch().join("P/link");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let mut via_link = sibling.clone();
        via_link.destination = link.clone();
        write_json(&outside.join(STATE_DIR).join("stage.json"), &via_link).unwrap();
        let c = assess_stage(&via_link, &w.scratch());
        assert!(refused(&c).contains("is a symbolic link"), "{c:?}");
        // Even a symlink to a folder inside scratch is not followed.
        let inner = w.scratch().join("P/inner-link");
        std::os::unix::fs::symlink(&record.destination, &inner).unwrap();
        let c = assess_stage(&copy(&inner), &w.scratch());
        assert!(refused(&c).contains("is a symbolic link"), "{c:?}");
        // A symlinked parent inside scratch that leads out.
        let up = w.scratch().join("up");
        std::os::unix::fs::symlink(&w.root, &up).unwrap();
        let c = assess_stage(&copy(&up.join("sibling")), &w.scratch());
        assert!(
            refused(&c).contains("is not inside the scratch root"),
            "{c:?}"
        );

        assert!(outside.join("a.tif").is_file() && record.destination.is_dir());
    }

    #[test]
    fn a_folder_without_its_own_marker_is_refused() {
        let w = World::new();
        let (_, record) = w.plate7();
        let marker = record.destination.join(STATE_DIR).join("stage.json");

        // The marker names another path (a copied or moved folder).
        let mut moved = record.clone();
        moved.destination = w.scratch().join("P/elsewhere");
        write_json(&marker, &moved).unwrap();
        let c = assess_stage(&record, &w.scratch());
        assert_eq!(refused(&c), "the folder's stage record names another path");

        // No marker at all (an interrupted stage, or not a stage).
        std::fs::remove_file(&marker).unwrap();
        let c = assess_stage(&record, &w.scratch());
        assert_eq!(
            refused(&c),
            "no stage record in the folder (.hpcstage/stage.json); not a complete stage"
        );

        // A run folder whose marker names another run.
        let run = w.run("P", "r1");
        w.pull(&run);
        let mut other = run.clone();
        other.id = "r2".into();
        let c = assess_run(&other, &w.scratch());
        assert_eq!(refused(&c), "the folder's run record names another run");
    }

    #[test]
    fn a_source_that_is_the_copy_itself_is_refused() {
        let w = World::new();
        let (_, mut record) = w.plate7();
        record.source = record.destination.join("sub").display().to_string();
        std::fs::copy(
            record.destination.join(MANIFEST_NAME),
            record.destination.join("sub").join(MANIFEST_NAME),
        )
        .unwrap();
        let c = assess_stage(&record, &w.scratch());
        assert!(refused(&c).contains("is the scratch copy itself"), "{c:?}");
        record.source = record.destination.display().to_string();
        let c = assess_stage(&record, &w.scratch());
        assert!(refused(&c).contains("is the scratch copy itself"), "{c:?}");
    }

    #[test]
    fn a_folder_already_gone_is_refused_quietly() {
        let w = World::new();
        let (_, record) = w.plate7();
        std::fs::remove_dir_all(&record.destination).unwrap();
        let c = assess_stage(&record, &w.scratch());
        assert_eq!(c.refused.as_deref(), Some("already gone"));
    }
}
