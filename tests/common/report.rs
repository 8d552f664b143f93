//! The world of the report, status and clean tests: a temporary folder holding HOME, the
//! XDG folders, the ledger, a site config, the NAS and scratch, and a lab in it (datasets
//! ingested and staged with the built binary, runs recorded through the lifecycle crate).
//!
//! Every command runs with an emptied environment plus the variables set here, so nothing
//! of the machine's own configuration leaks in. Outputs are normalized before they are
//! compared: the world's path, dates and times, and the user running the tests.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use hpcstage_lifecycle::run::{Executor, InputRef, RunRecord, RunStore};
use hpcstage_lifecycle::run::{PulledMarker, PULLED_MARKER};
use serde_json::Value;

use super::fs::{read, write, TempRoot, WORLD_DIRS};
use super::run::{self, Run};

/// One test's world.
pub(crate) struct Env {
    _dir: TempRoot,
    /// Canonical path of the temporary folder.
    pub(crate) root: PathBuf,
    /// `$HPCSTAGE_STATE` for the next commands.
    pub(crate) state: PathBuf,
}

impl Env {
    /// A world with a `[purge]` policy of mtime, 30 days, warning 7 days, and the NAS and
    /// scratch roots configured in `$HPCSTAGE_CONFIG`.
    pub(crate) fn new() -> Env {
        let dir = TempRoot::new("hpcstage-report.", WORLD_DIRS);
        let root = dir.path().to_path_buf();
        let env = Env {
            _dir: dir,
            state: root.join("state"),
            root,
        };
        env.write_config("");
        env
    }

    /// Writes `$HPCSTAGE_CONFIG` with the roots and the 30-day mtime policy; `purge_extra`
    /// goes into its `[purge]` table.
    pub(crate) fn write_config(&self, purge_extra: &str) {
        write(
            self.config(),
            format!(
                "nas_root = \"{}\"\nscratch_root = \"{}\"\n\n[purge]\nbasis = \"mtime\"\n\
                 age = \"30d\"\nwarn = \"7d\"\n{purge_extra}",
                self.nas().display(),
                self.scratch().display()
            ),
        );
    }

    pub(crate) fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    pub(crate) fn nas(&self) -> PathBuf {
        self.path("nas")
    }

    pub(crate) fn scratch(&self) -> PathBuf {
        self.path("scratch")
    }

    pub(crate) fn config(&self) -> PathBuf {
        self.path("config.toml")
    }

    /// The binary with a clean environment pointing into this world.
    pub(crate) fn command(&self) -> Command {
        let mut cmd = run::hpcstage(&self.root, &self.state);
        cmd.env("HPCSTAGE_CONFIG", self.config());
        cmd
    }

    /// Runs `hpcstage ARGS...` to the end; its outputs are [normalized](normalize).
    pub(crate) fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command();
        cmd.args(args);
        Run::of(cmd).in_world(&self.root).masked_by(normalize)
    }

    /// Instrument data → `nas/<project>/raw/<dataset>` with `hpcstage ingest`.
    pub(crate) fn ingest(&self, project: &str, dataset: &str, files: &[(&str, &str)]) -> PathBuf {
        let src = self.path("instrument").join(dataset);
        for (rel, text) in files {
            write(src.join(rel), text);
        }
        self.run([
            OsStr::new("ingest"),
            src.as_os_str(),
            OsStr::new("--project"),
            OsStr::new(project),
            OsStr::new("--dataset"),
            OsStr::new(dataset),
        ])
        .code(0);
        self.nas().join(project).join("raw").join(dataset)
    }

    /// `hpcstage stage SRC [DEST]`; returns the stage record written next to the data.
    pub(crate) fn stage(&self, source: &Path, dest: Option<&Path>, project: &str) -> Value {
        let mut args = vec![OsStr::new("stage"), source.as_os_str()];
        if let Some(dest) = dest {
            args.push(dest.as_os_str());
        }
        args.extend([
            OsStr::new("--project"),
            OsStr::new(project),
            OsStr::new("--json"),
        ]);
        let run = self.run(args);
        run.code(0);
        run.json()["record"].clone()
    }

    /// Sets the `owner` of a staged folder's record, next to the data and in the current
    /// ledger (as if another user had staged it).
    pub(crate) fn set_owner(&self, dest: &Path, owner: &str) {
        let marker = dest.join(".hpcstage/stage.json");
        let mut files = vec![marker.clone()];
        if let Ok(rd) = fs::read_dir(self.state.join("stages")) {
            files.extend(rd.flatten().map(|e| e.path()));
        }
        for file in files {
            let mut record: Value = serde_json::from_slice(&read(&file)).expect("a stage record");
            if record["destination"] == dest.display().to_string() {
                record["owner"] = owner.into();
                write(&file, serde_json::to_vec_pretty(&record).expect("JSON"));
            }
        }
    }

    /// A run in the ledger with its folder on scratch (`scratch/<project>/runs/<id>`),
    /// its record next to the outputs, and, when `pulled`, its results on the NAS and the
    /// pull's marker.
    pub(crate) fn add_run(&self, project: &str, id: &str, owner: &str, pulled: bool) -> RunRecord {
        let run_dir = self.scratch().join(project).join("runs").join(id);
        write(run_dir.join("job.sbatch"), "#!/bin/sh\nsegment\n");
        write(run_dir.join("masks/well_A01.tif"), "mask A01");
        write(run_dir.join("logs/slurm-1.out"), "done\n");
        let results_dir = self
            .nas()
            .join(project)
            .join("results/segmentation")
            .join(id);
        let record = RunRecord {
            id: id.into(),
            project: project.into(),
            template: "unet-seg".into(),
            template_version: "1".into(),
            template_hash: "h".into(),
            workflow: "segmentation".into(),
            params: Default::default(),
            input: InputRef {
                stage_id: format!("{project}/plate7"),
                path: self.scratch().join(project).join("plate7"),
                manifest_digest: "x".into(),
                source: self
                    .nas()
                    .join(project)
                    .join("raw/plate7")
                    .display()
                    .to_string(),
            },
            run_dir: run_dir.clone(),
            results_dir: results_dir.clone(),
            executor: Executor::Local,
            created_at: jiff::Timestamp::now(),
            owner: owner.into(),
            host: "login1".into(),
            tool_version: "test".into(),
        };
        RunStore::open(&self.state)
            .expect("open the run store")
            .create(&record)
            .expect("create the run");
        write(
            run_dir.join(".hpcstage/run.json"),
            serde_json::to_vec_pretty(&record).expect("JSON"),
        );
        if pulled {
            write(results_dir.join("masks/well_A01.tif"), "mask A01");
            self.run([
                OsStr::new("manifest"),
                OsStr::new("create"),
                results_dir.as_os_str(),
            ])
            .code(0);
            let manifest = read(results_dir.join("MANIFEST.sha256"));
            let marker = PulledMarker {
                run_id: id.into(),
                results_dir,
                manifest_digest: sha256_hex(&manifest),
                pulled_at: jiff::Timestamp::now(),
                partial: None,
            };
            write(
                run_dir.join(".hpcstage").join(PULLED_MARKER),
                serde_json::to_vec_pretty(&marker).expect("JSON"),
            );
        }
        record
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hpcstage_staging::hash::Digest::of(bytes).to_hex()
}

/// Replaces what changes from run to run: the world's path by `[ROOT]`, RFC 3339
/// timestamps by `[TIMESTAMP]`, dates by `YYYY-MM-DD` and a following time of day by
/// `HH:MM` (the same widths, so tables stay aligned).
pub(crate) fn normalize(text: &str, root: &Path) -> String {
    let text = text.replace(&*root.to_string_lossy(), "[ROOT]");
    let b = text.as_bytes();
    let digits =
        |at: usize, n: usize| b.len() >= at + n && b[at..at + n].iter().all(u8::is_ascii_digit);
    let is_date = |at: usize| {
        digits(at, 4)
            && b.get(at + 4) == Some(&b'-')
            && digits(at + 5, 2)
            && b.get(at + 7) == Some(&b'-')
            && digits(at + 8, 2)
    };
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if is_date(i) && (i == 0 || !b[i - 1].is_ascii_alphanumeric()) {
            i += 10;
            if b.get(i) == Some(&b'T') {
                while i < b.len() && b[i] != b'Z' && b[i] != b'"' && b[i] != b',' {
                    i += 1;
                }
                i += usize::from(b.get(i) == Some(&b'Z'));
                out.push_str("[TIMESTAMP]");
            } else {
                out.push_str("YYYY-MM-DD");
                if b.get(i) == Some(&b' ')
                    && digits(i + 1, 2)
                    && b.get(i + 3) == Some(&b':')
                    && digits(i + 4, 2)
                {
                    out.push_str(" HH:MM");
                    i += 6;
                }
            }
            continue;
        }
        let ch = text[i..].chars().next().expect("a char");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// Relative path, kind, size and mtime of everything under `root`, sorted: equal only
/// when nothing was added, removed or changed.
pub(crate) fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("read folder").flatten() {
            let path = entry.path();
            let m = fs::symlink_metadata(&path).expect("stat");
            out.push(format!(
                "{} {} {} {}.{}",
                path.strip_prefix(root).expect("inside").display(),
                if m.is_dir() { "d" } else { "f" },
                m.size(),
                m.mtime(),
                m.mtime_nsec()
            ));
            if m.is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Sets atime and mtime of every regular file under `root` to 36 hours ago (a whole
/// second), so that deadlines sit 28.5 days out: the same number of days left however
/// long the test takes. Returns that time.
pub(crate) fn age_files(root: &Path) -> jiff::Timestamp {
    let now = jiff::Timestamp::now().as_second();
    let then = jiff::Timestamp::from_second(now - 36 * 3600).expect("a valid time");
    let ft = filetime::FileTime::from_unix_time(then.as_second(), 0);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("read folder").flatten() {
            let m = fs::symlink_metadata(entry.path()).expect("stat");
            if m.is_dir() {
                stack.push(entry.path());
            } else if m.is_file() {
                filetime::set_file_times(entry.path(), ft, ft).expect("set file times");
            }
        }
    }
    then
}
