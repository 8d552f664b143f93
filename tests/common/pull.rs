//! The world of the pull tests: a temporary lab under `/tmp` (jobs run as root on the
//! test cluster's node and must reach it) with its own HOME, XDG folders, ledger, site
//! config, NAS and scratch, a raw dataset of two images, a model file and predict
//! stand-ins; and the bits of the real cluster the tests drive or look at (`sacct`,
//! `squeue`, `scancel`).
//!
//! Tests that submit jobs hold the [cluster](super::cluster::cluster): the node has 2 CPUs
//! and the pull-back job asks for both.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::cluster::Chain;
use super::fs::{fnv, walk, write, TempRoot, WORLD_DIRS};
use super::run::{self, describe, pass_slurm_conf, tool, Run};

impl super::World for Lab {
    fn root(&self) -> &Path {
        &self.root
    }
}

/// One test's lab.
pub(crate) struct Lab {
    _dir: TempRoot,
    /// Canonical path of the temporary folder.
    pub(crate) root: PathBuf,
}

impl Lab {
    /// An empty lab: `/tmp/hpcstage-pull.XXXX/{home,xdg-config,xdg-state,state,nas,scratch,bin}`,
    /// a user config with the NAS and scratch roots and a purge policy, and a model file.
    pub(crate) fn new() -> Lab {
        // Other users (the epilogue's job user) must be able to pass through.
        let dir = TempRoot::shared("hpcstage-pull.", &[WORLD_DIRS, &["bin"]].concat());
        let lab = Lab {
            root: dir.path().to_path_buf(),
            _dir: dir,
        };
        write(
            lab.path("xdg-config/hpcstage/config.toml"),
            format!(
                "nas_root = \"{}\"\nscratch_root = \"{}\"\n\n[purge]\nbasis = \"mtime\"\n\
                 age = \"30d\"\nwarn = \"7d\"\n",
                lab.nas().display(),
                lab.scratch().display()
            ),
        );
        write(lab.model(), "stand-in U-Net weights\n");
        lab
    }

    pub(crate) fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    /// Points `nas_root` elsewhere (a folder on an SSH host, say).
    pub(crate) fn set_nas_root(&self, nas_root: &str) {
        let config = self.path("xdg-config/hpcstage/config.toml");
        let text = super::fs::read_text(&config);
        let old = format!("nas_root = \"{}\"", self.nas().display());
        assert!(text.contains(&old), "{text}");
        write(
            &config,
            text.replace(&old, &format!("nas_root = \"{nas_root}\"")),
        );
    }

    pub(crate) fn nas(&self) -> PathBuf {
        self.path("nas")
    }

    pub(crate) fn scratch(&self) -> PathBuf {
        self.path("scratch")
    }

    pub(crate) fn state(&self) -> PathBuf {
        self.path("state")
    }

    pub(crate) fn model(&self) -> PathBuf {
        self.path("model.pt")
    }

    /// `<nas>/P/results/segmentation`: where unet-seg runs of project P land.
    pub(crate) fn results_parent(&self) -> PathBuf {
        self.nas().join("P/results/segmentation")
    }

    /// The binary with a clean environment pointing into this lab.
    pub(crate) fn command(&self) -> Command {
        let mut cmd = run::hpcstage(&self.root, &self.state());
        cmd.env("COLUMNS", "100");
        pass_slurm_conf(&mut cmd);
        cmd
    }

    /// Runs `hpcstage ARGS...` to the end (the outputs keep the lab's path).
    pub(crate) fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command();
        cmd.args(args);
        Run::of(cmd)
    }

    /// Starts `hpcstage ARGS...` without waiting.
    pub(crate) fn spawn(&self, args: &[&str]) -> (String, Child) {
        let mut cmd = self.command();
        cmd.args(args);
        let shown = describe(&cmd);
        let child = cmd.spawn().expect("start hpcstage");
        (shown, child)
    }

    /// Ingests two images as raw dataset `P/<dataset>` and returns its NAS folder.
    pub(crate) fn ingest(&self, dataset: &str) -> PathBuf {
        let acq = self.path(format!("acq-{dataset}"));
        write(
            acq.join("img1.tif"),
            super::fs::tiny_tiff([1, 2, 3, 4], b"image one\n"),
        );
        write(
            acq.join("img2.tif"),
            super::fs::tiny_tiff([5, 6, 7, 8], b"image two, a little longer\n"),
        );
        self.run([
            OsStr::new("ingest"),
            acq.as_os_str(),
            OsStr::new("--project"),
            OsStr::new("P"),
            OsStr::new("--dataset"),
            OsStr::new(dataset),
        ])
        .code(0);
        self.nas().join("P/raw").join(dataset)
    }

    /// Writes an executable predict stand-in `bin/<name>` whose body sees `$model`,
    /// `$input`, `$mask` and `$table` (from `--model/--input/--mask/--table`) and can call
    /// `tiny_mask` to print a real label mask of one object.
    pub(crate) fn stand_in(&self, name: &str, body: &str) -> PathBuf {
        let path = self.path("bin").join(name);
        write(
            &path,
            format!(
                "#!/bin/bash\nset -euo pipefail\n{}\
                 while (($#)); do\n  case $1 in\n    --model) model=$2 ;;\n    --input) input=$2 ;;\n\
                 \x20   --mask) mask=$2 ;;\n    --table) table=$2 ;;\n  esac\n  shift 2\ndone\n{body}\n",
                super::fs::tiny_mask_function()
            ),
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod stand-in");
        path
    }

    /// `stage-and-run <raw> unet-seg` with the stand-in as predict command, one CPU,
    /// 500 MB and one GPU on partition gpu; `extra` adds `-p` parameters (later ones
    /// win), `pull_back` false passes `--no-pull`.
    pub(crate) fn submit(
        &self,
        raw: &Path,
        stand_in: &Path,
        extra: &[&str],
        pull_back: bool,
    ) -> Chain {
        self.submit_with_env(raw, stand_in, extra, pull_back, &[])
    }

    /// [`Lab::submit`] with more environment variables for hpcstage and the `sbatch` it
    /// runs (`SBATCH_HOLD=1` submits the jobs held, say).
    pub(crate) fn submit_with_env(
        &self,
        raw: &Path,
        stand_in: &Path,
        extra: &[&str],
        pull_back: bool,
        vars: &[(&str, &str)],
    ) -> Chain {
        let predict = format!(
            "predict_cmd={} --model {{model}} --input {{input}} --mask {{mask}} --table {{table}}",
            stand_in.display()
        );
        let model = format!("model={}", self.model().display());
        let mut args: Vec<String> = vec![
            "stage-and-run".into(),
            raw.display().to_string(),
            "unet-seg".into(),
            "--json".into(),
        ];
        if !pull_back {
            args.push("--no-pull".into());
        }
        for p in [
            model.as_str(),
            predict.as_str(),
            "cpus=1",
            "mem=500M",
            "time=10m",
        ]
        .into_iter()
        .chain(extra.iter().copied())
        {
            args.push("-p".into());
            args.push(p.into());
        }
        let mut cmd = self.command();
        cmd.envs(vars.iter().copied()).args(&args);
        let run = Run::of(cmd);
        run.code(0);
        Chain::of(&run)
    }

    /// The run as `hpcstage status RUN --json` shows it.
    pub(crate) fn status(&self, run_id: &str) -> Value {
        let run = self.run(["status", run_id, "--json"]);
        run.code(0);
        run.json()
    }
}

/// A job's row in accounting (`sacct -X`), the array's first task for an array job.
#[derive(Debug, Clone)]
pub(crate) struct Acct {
    pub(crate) job_id: String,
    pub(crate) state: String,
    pub(crate) exit_code: String,
    pub(crate) partition: String,
    pub(crate) nodes: String,
    pub(crate) alloc_tres: String,
}

const ACTIVE: &[&str] = &[
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "RESIZING",
    "SUSPENDED",
    "COMPLETING",
    "CONFIGURING",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
];

/// The job's accounting rows now.
pub(crate) fn sacct(job: &str) -> Vec<Acct> {
    let run = tool(
        "sacct",
        &[
            "-X",
            "--parsable2",
            "--noheader",
            "-j",
            job,
            "--format=JobID,State,ExitCode,Partition,NodeList,AllocTRES",
        ],
    );
    run.code(0);
    run.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            let at = |i: usize| f.get(i).copied().unwrap_or_default().to_string();
            Acct {
                job_id: at(0),
                state: at(1),
                exit_code: at(2),
                partition: at(3),
                nodes: at(4),
                alloc_tres: at(5),
            }
        })
        .collect()
}

/// Polls accounting until every row of `job` has ended; fails after `bound`, saying
/// what it saw last.
pub(crate) fn wait_ended(job: &str, bound: Duration) -> Acct {
    let started = Instant::now();
    loop {
        let rows = sacct(job);
        let ended = !rows.is_empty()
            && rows.iter().all(|r| {
                let word = r.state.split_whitespace().next().unwrap_or_default();
                !ACTIVE.contains(&word)
            });
        if ended {
            return rows[0].clone();
        }
        assert!(
            started.elapsed() < bound,
            "job {job} did not end within {bound:?}; accounting says {rows:?}\n{}",
            tool("squeue", &["-j", job])
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Polls `squeue` until the job (or its first task) runs; fails after `bound`.
pub(crate) fn wait_running(job: &str, bound: Duration) {
    let started = Instant::now();
    loop {
        let run = tool("squeue", &["-h", "-j", job, "-o", "%T"]);
        if run.stdout.lines().any(|l| l.trim() == "RUNNING") {
            return;
        }
        assert!(
            started.elapsed() < bound,
            "job {job} did not start within {bound:?}\n{run}\n{}",
            tool("squeue", &[])
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Relative paths of everything under `root` (files, folders, links), sorted; hidden
/// names included.
pub(crate) fn listing(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = walk(root)
        .into_iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// One line per entry under `root` (kind, size, mtime, inode, content), skipping what a
/// pull may rewrite in the run folder (`.hpcstage/` and `validation.json`): equal
/// fingerprints mean the job's outputs, logs and intermediates were left as they were.
pub(crate) fn fingerprint(root: &Path) -> Vec<String> {
    listing(root)
        .into_iter()
        .filter(|rel| !rel.starts_with(".hpcstage") && rel != "validation.json")
        .map(|rel| {
            let path = root.join(&rel);
            let m = fs::symlink_metadata(&path).expect("stat");
            let content = if m.is_file() {
                format!("{:016x}", fnv(&fs::read(&path).expect("read")))
            } else {
                "-".into()
            };
            format!(
                "{rel} mode={:o} size={} mtime={}.{} ino={} {content}",
                m.mode(),
                m.size(),
                m.mtime(),
                m.mtime_nsec(),
                m.ino()
            )
        })
        .collect()
}

/// A folder made unwritable even for root, undone on drop: `chattr +i` where the
/// filesystem supports it, else a read-only bind mount of the folder onto itself.
pub(crate) struct ReadOnly {
    path: PathBuf,
    how: &'static str,
}

impl ReadOnly {
    /// `None` when neither works here (the caller skips).
    pub(crate) fn new(path: &Path) -> Option<ReadOnly> {
        let p = path.to_str().expect("UTF-8 path");
        if tool("chattr", &["+i", p]).code == Some(0) {
            return Some(ReadOnly {
                path: path.to_path_buf(),
                how: "chattr",
            });
        }
        if tool("mount", &["--bind", p, p]).code == Some(0) {
            if tool("mount", &["-o", "remount,bind,ro", p]).code == Some(0) {
                return Some(ReadOnly {
                    path: path.to_path_buf(),
                    how: "mount",
                });
            }
            let _ = tool("umount", &[p]);
        }
        None
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let p = self.path.to_str().expect("UTF-8 path");
        let undone = match self.how {
            "chattr" => tool("chattr", &["-i", p]),
            _ => tool("umount", &[p]),
        };
        assert!(
            undone.code == Some(0) || std::thread::panicking(),
            "could not make {p} writable again\n{undone}"
        );
    }
}

/// A Unix user created for the test (once per test binary), without a home folder.
pub(crate) struct User {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// The job user of the epilogue tests, created with `useradd` if missing.
pub(crate) fn job_user() -> User {
    static CREATE: Mutex<()> = Mutex::new(());
    let _once = CREATE.lock().unwrap_or_else(|e| e.into_inner());
    let name = "hpcstage-epi";
    if tool("id", &["-u", name]).code != Some(0) {
        tool(
            "useradd",
            &["--no-create-home", "--shell", "/usr/sbin/nologin", name],
        )
        .code(0);
    }
    let id = |flag: &str| -> u32 {
        let run = tool("id", &[flag, name]);
        run.code(0);
        run.stdout.trim().parse().expect("numeric id")
    };
    User {
        name: name.to_string(),
        uid: id("-u"),
        gid: id("-g"),
    }
}

/// `chown -R uid:gid path`.
pub(crate) fn chown_r(path: &Path, user: &User) {
    tool(
        "chown",
        &[
            "-R",
            &format!("{}:{}", user.uid, user.gid),
            path.to_str().expect("UTF-8 path"),
        ],
    )
    .code(0);
}
