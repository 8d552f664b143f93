//! Builders for the unit tests of the report and of `clean`: a temporary world with a NAS
//! and a scratch folder, raw datasets with their manifests, staged copies with their stage
//! records and markers, and run folders with their records, all written directly (no copy
//! engine), so that each test states exactly the facts it is about.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use filetime::FileTime;
use jiff::{SignedDuration, Timestamp};

use hpcstage_staging::manifest::{create, Manifest, NoProgress};
use hpcstage_staging::policy::{format_age, PurgeBasis, PurgePolicy};
use hpcstage_staging::record::{write_json, PurgeInfo, StageRecord};
use hpcstage_staging::walk::{is_bookkeeping, Filter, MANIFEST_NAME, STATE_DIR};

use crate::run::{Executor, InputRef, RunRecord};
use crate::run::{PulledMarker, PULLED_MARKER};

/// One test's folders: `nas/` and `scratch/` under a fresh temporary folder.
pub(crate) struct World {
    _dir: tempfile::TempDir,
    pub(crate) root: PathBuf,
}

impl World {
    pub(crate) fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("nas")).unwrap();
        std::fs::create_dir_all(root.join("scratch")).unwrap();
        World { _dir: dir, root }
    }

    pub(crate) fn nas(&self) -> PathBuf {
        self.root.join("nas")
    }

    pub(crate) fn scratch(&self) -> PathBuf {
        self.root.join("scratch")
    }

    /// The dataset most tests use, `P/plate7` (three files), on the NAS and staged.
    pub(crate) fn plate7(&self) -> (PathBuf, StageRecord) {
        let source = self.nas_dataset(
            "P",
            "plate7",
            &[("a.tif", "aaaa"), ("b.tif", "bb"), ("sub/c.csv", "c")],
        );
        let record = self.stage(&source, "P", "plate7");
        (source, record)
    }

    /// `nas/<project>/raw/<name>` holding `files` and their `MANIFEST.sha256`.
    pub(crate) fn nas_dataset(&self, project: &str, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.nas().join(project).join("raw").join(name);
        for (rel, text) in files {
            write(&dir.join(rel), text);
        }
        write_manifest(&dir);
        dir
    }

    /// Stages `source` to `scratch/<project>/<dataset>` the way `hpcstage stage` leaves
    /// it: the files, `MANIFEST.sha256`, and the stage record in `.hpcstage/stage.json`.
    pub(crate) fn stage(&self, source: &Path, project: &str, dataset: &str) -> StageRecord {
        self.stage_to(
            source,
            &self.scratch().join(project).join(dataset),
            project,
            dataset,
        )
    }

    /// Like [`World::stage`], to any destination.
    pub(crate) fn stage_to(
        &self,
        source: &Path,
        dest: &Path,
        project: &str,
        dataset: &str,
    ) -> StageRecord {
        let source_manifest = Manifest::read(&source.join(MANIFEST_NAME)).ok();
        for entry in walkdir::WalkDir::new(source) {
            let entry = entry.unwrap();
            let rel = entry.path().strip_prefix(source).unwrap();
            if entry.file_type().is_file() && !is_bookkeeping(rel) {
                let to = dest.join(rel);
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                std::fs::copy(entry.path(), &to).unwrap();
            }
        }
        std::fs::create_dir_all(dest).unwrap();
        let manifest = write_manifest(dest);
        let policy = PurgePolicy::default();
        let staged_at = Timestamp::now();
        let record = StageRecord {
            id: format!("{project}/{dataset}"),
            project: project.into(),
            dataset: dataset.into(),
            source: source.display().to_string(),
            destination: dest.to_path_buf(),
            files: manifest.len() as u64,
            bytes: 0,
            manifest_digest: manifest.digest(),
            source_manifest_digest: source_manifest.map(|m| m.digest()),
            staged_at,
            owner: "alice".into(),
            host: "login1".into(),
            purge: PurgeInfo {
                basis: policy.basis,
                age: format_age(policy.age),
                whole_folder: policy.whole_folder,
                oldest: staged_at,
                deadline: policy.deadline(&Default::default(), staged_at),
            },
            tool_version: "test".into(),
            incomplete: None,
        };
        write_json(&dest.join(STATE_DIR).join("stage.json"), &record).unwrap();
        record
    }

    /// A run folder `scratch/<project>/runs/<id>` with a log, an output and its record
    /// (in `.hpcstage/run.json`), not pulled.
    pub(crate) fn run(&self, project: &str, id: &str) -> RunRecord {
        let run_dir = self.scratch().join(project).join("runs").join(id);
        write(&run_dir.join("job.sbatch"), "#!/bin/sh\n");
        write(&run_dir.join("masks/m1.tif"), "mask one");
        write(&run_dir.join("logs/job.out"), "done\n");
        let record = RunRecord {
            id: id.into(),
            project: project.into(),
            template: "unet-seg".into(),
            template_version: "1".into(),
            template_hash: "h".into(),
            workflow: "segmentation".into(),
            params: BTreeMap::new(),
            input: InputRef {
                stage_id: format!("{project}/d"),
                path: self.scratch().join(project).join("d"),
                manifest_digest: "x".into(),
                source: self.nas().join(project).join("raw/d").display().to_string(),
            },
            results_dir: self
                .nas()
                .join(project)
                .join("results/segmentation")
                .join(id),
            run_dir,
            executor: Executor::Local,
            created_at: Timestamp::now(),
            owner: "alice".into(),
            host: "login1".into(),
            tool_version: "test".into(),
        };
        write_json(&record.run_dir.join(STATE_DIR).join("run.json"), &record).unwrap();
        record
    }

    /// Copies a run's outputs to its NAS results folder with a manifest and leaves the
    /// `pulled.json` marker in the run folder, as a verified pull does.
    pub(crate) fn pull(&self, run: &RunRecord) -> PulledMarker {
        write(&run.results_dir.join("masks/m1.tif"), "mask one");
        let manifest = write_manifest(&run.results_dir);
        let marker = PulledMarker {
            run_id: run.id.clone(),
            results_dir: run.results_dir.clone(),
            manifest_digest: manifest.digest().to_hex(),
            pulled_at: Timestamp::now(),
            partial: None,
        };
        write_json(&run.run_dir.join(STATE_DIR).join(PULLED_MARKER), &marker).unwrap();
        marker
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Read-only test trees would stop the clean-up of a non-root user.
        let _ = hpcstage_staging::worm::make_writable(&self.root);
    }
}

/// Writes a file, creating its parent folders.
pub(crate) fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Hashes `dir` into `dir/MANIFEST.sha256`.
pub(crate) fn write_manifest(dir: &Path) -> Manifest {
    let created = create(dir, &Filter::default(), &NoProgress).unwrap();
    assert!(created.errors.is_empty(), "{:?}", created.errors);
    created
        .manifest
        .write_atomic(&dir.join(MANIFEST_NAME))
        .unwrap();
    created.manifest
}

/// A whole second, `days` before `now` (negative: after).
pub(crate) fn days_before(now: Timestamp, days: i64) -> Timestamp {
    let whole = Timestamp::from_second(now.as_second()).unwrap();
    whole - SignedDuration::from_hours(24 * days)
}

/// Sets atime and mtime of every regular file under `dir` outside `.hpcstage/`
/// (which leaves their ctime at the present).
pub(crate) fn set_times(dir: &Path, atime: Timestamp, mtime: Timestamp) {
    let ft = |t: Timestamp| FileTime::from_unix_time(t.as_second(), 0);
    for entry in walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_entry(|e| e.file_name() != STATE_DIR)
    {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            filetime::set_file_times(entry.path(), ft(atime), ft(mtime)).unwrap();
        }
    }
}

/// The default policy (30 days) on another basis.
pub(crate) fn policy(basis: PurgeBasis) -> PurgePolicy {
    PurgePolicy {
        basis,
        ..PurgePolicy::default()
    }
}

/// Makes every file and folder under `dir` read-only, as raw data is.
pub(crate) fn make_read_only(dir: &Path) {
    for entry in walkdir::WalkDir::new(dir).contents_first(true) {
        let entry = entry.unwrap();
        let mode = if entry.file_type().is_dir() {
            0o555
        } else {
            0o444
        };
        std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// Calls `f` with the context of a verdict: nothing reads any stage, removal only inside
/// `scratch_root` (none: nothing is removable, as in a report without a scratch root).
pub(crate) fn judged<T>(
    policy: &PurgePolicy,
    now: Timestamp,
    scratch_root: Option<&Path>,
    f: impl FnOnce(&crate::report::Assess<'_>) -> T,
) -> T {
    let readers = crate::report::Readers::default();
    f(&crate::report::Assess {
        policy,
        now,
        scratch_root,
        readers: &readers,
    })
}

/// The verdict of a staged copy, outside any scratch root.
pub(crate) fn stage_at(
    record: &StageRecord,
    policy: &PurgePolicy,
    now: Timestamp,
) -> crate::report::Item {
    judged(policy, now, None, |c| crate::report::stage_item(record, c))
}

/// The verdict of a run folder, outside any scratch root.
pub(crate) fn run_at(
    record: &RunRecord,
    view: Option<&crate::run::RunView>,
    policy: &PurgePolicy,
    now: Timestamp,
) -> crate::report::Item {
    judged(policy, now, None, |c| {
        crate::report::run_item(record, view, c)
    })
}
