//! Removing the scratch folders that are provably safe.
//!
//! Which ones are is decided by the report's verdict ([`crate::report::stage_item`] and
//! [`crate::report::run_item`]), so that `clean` never removes what `report` calls
//! anything but SAFE, EXPIRED or PARTLY PURGED: a staged copy whose NAS source manifest
//! still lists every staged file with the same checksum and that no run still reads, or a
//! run folder whose results were pulled and whose NAS results manifest is the one
//! recorded at the pull. What this file adds are the guards of a removal: every folder
//! must be named by a plain absolute path (no `..`, not a symlink), sit inside the scratch
//! root and carry its own `.hpcstage/` marker naming the same path, so that a damaged or
//! hostile ledger entry can never point `clean` at anything else. Nothing is ever
//! `touch`ed to postpone a purge.

use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use hpcstage_staging::record::{read_json, StageRecord};
use hpcstage_staging::walk::STATE_DIR;
use hpcstage_staging::worm::make_writable;

use crate::error::Result;
use crate::report::{Item, ItemKind};
use crate::run::RunRecord;

/// What `clean` decided for one folder.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub kind: ItemKind,
    pub name: String,
    pub path: PathBuf,
    pub bytes: u64,
    pub files: u64,
    /// The report's verdict (`SAFE`, `IN USE`, ...).
    pub status: &'static str,
    pub deadline: jiff::Timestamp,
    pub days_left: i64,
    /// `None`: safe to remove; `Some(reason)`: refused.
    pub refused: Option<String>,
}

impl From<&Item> for Candidate {
    fn from(item: &Item) -> Candidate {
        Candidate {
            kind: item.kind,
            name: match item.kind {
                ItemKind::Stage => format!("{}/{}", item.project, item.name),
                ItemKind::Run => item.name.clone(),
            },
            path: item.path.clone(),
            bytes: item.bytes,
            files: item.files,
            status: item.safety.label(),
            deadline: item.deadline,
            days_left: item.days_left,
            refused: item.kept.clone(),
        }
    }
}

/// Checks that a recorded path is named plainly: absolute and without `..`.
pub(crate) fn plain_path(path: &Path) -> std::result::Result<(), String> {
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

/// Which marker a folder must carry.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Guard<'a> {
    /// `.hpcstage/stage.json` naming the folder.
    Stage,
    /// `.hpcstage/run.json` naming the folder and this run.
    Run(&'a str),
}

/// The guards of a removal, for a folder that exists and is named plainly: inside the
/// scratch root, not a link, and marked as the stage or run it is said to be.
pub(crate) fn guard(
    path: &Path,
    scratch_root: Option<&Path>,
    kind: Guard<'_>,
) -> std::result::Result<(), String> {
    match scratch_root {
        Some(root) => inside_scratch(path, root)?,
        None => return Err("no scratch root is configured; nothing is removed".into()),
    }
    match kind {
        Guard::Stage => {
            let marker: StageRecord =
                read_json(&path.join(STATE_DIR).join("stage.json")).map_err(|_| {
                    "no stage record in the folder (.hpcstage/stage.json); not a complete stage"
                        .to_string()
                })?;
            if marker.destination != path {
                return Err("the folder's stage record names another path".into());
            }
        }
        Guard::Run(id) => {
            let marker: RunRecord = read_json(&path.join(STATE_DIR).join("run.json"))
                .map_err(|_| "no run record in the folder (.hpcstage/run.json)".to_string())?;
            if marker.run_dir != path || marker.id != id {
                return Err("the folder's run record names another run".into());
            }
        }
    }
    Ok(())
}

/// Removes a folder that the verdict found removable.
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
    use crate::report::{run_item, stage_item};
    use crate::run::PULLED_MARKER;
    use crate::testutil::{judged, make_read_only, write, write_manifest, World};
    use hpcstage_staging::digest::Digest;
    use hpcstage_staging::manifest::Manifest;
    use hpcstage_staging::manifest::ManifestEntry;
    use hpcstage_staging::policy::PurgePolicy;
    use hpcstage_staging::record::write_json;
    use hpcstage_staging::walk::MANIFEST_NAME;

    /// The verdict of `clean` on a staged copy nothing reads.
    fn assess_stage(record: &StageRecord, scratch_root: &Path) -> Candidate {
        let now = jiff::Timestamp::now();
        judged(&PurgePolicy::default(), now, Some(scratch_root), |c| {
            Candidate::from(&stage_item(record, c))
        })
    }

    /// The verdict of `clean` on a run folder known only by its markers.
    fn assess_run(record: &RunRecord, scratch_root: &Path) -> Candidate {
        let now = jiff::Timestamp::now();
        judged(&PurgePolicy::default(), now, Some(scratch_root), |c| {
            Candidate::from(&run_item(record, None, c))
        })
    }

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
        // The report's verdict and clean's are one: AT RISK, naming the file.
        assert_eq!(c.status, "AT RISK");
        assert_eq!(
            refused(&c),
            "1 file is not the verified NAS copy: a.tif (edited on scratch after it was verified)"
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
        assert!(
            refused(&c).contains("x.tif (edited on scratch after it was verified)"),
            "{c:?}"
        );
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
        assert_eq!(
            c.files, 3,
            "3 data files; the manifest and the verify log are bookkeeping"
        );
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
        assert_eq!(c.status, "AT RISK");
        assert_eq!(
            refused(&c),
            "1 file is not the verified NAS copy: \
             b.tif (the NAS manifest has another checksum: the NAS source changed)"
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
            "1 file is not the verified NAS copy: sub/c.csv (missing at the NAS source)"
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
            "1 file is not the verified NAS copy: z.tif (on scratch but not in the NAS manifest)"
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
            "1 file is not the verified NAS copy: \
             sub/results.csv (written after staging: not in the stage manifest)"
        );
    }

    #[test]
    fn an_unpulled_run_is_refused_and_a_pulled_one_removed() {
        let w = World::new();
        let run = w.run("P", "r1");
        let c = assess_run(&run, &w.scratch());
        assert_eq!(refused(&c), "results not yet pulled back to the NAS");

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
        assert_eq!(refused(&c), "results not yet pulled back to the NAS");

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
        assert!(
            refused(&c).ends_with("; the folder's run record names another run"),
            "{c:?}"
        );
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
