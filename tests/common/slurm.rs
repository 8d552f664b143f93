//! The world of the tests against the real test cluster (`tests/cluster/up.sh`): a
//! temporary folder under /tmp holding HOME, the XDG folders, the ledger, the NAS and
//! scratch, and the stand-in tools the jobs run.
//!
//! Why it looks like this:
//! - slurmd runs a job as the user who submitted it, on the node, and the job reads and
//!   writes the world's folders: so the world lives under /tmp (not in a private folder
//!   of another user) and is readable by everyone.
//! - Every command runs with an emptied environment plus the variables set here, so
//!   nothing of the machine's own configuration leaks in. `sbatch` copies that environment
//!   into the job, so the pull-back job sees the same configuration.
//! - One test stops slurmctld; the tests that use SLURM therefore take one lock for their
//!   whole length ([`cluster`](super::cluster::cluster)) and run one after another.
//! - Nothing waits without a bound: a chain that does not end within its timeout fails the
//!   test with the run's status and the job logs.
//! - A world whose test failed is kept (its path is printed) for a look at the logs; its
//!   jobs still queued are cancelled either way, so they cannot hold the node for the next
//!   test.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::cluster::{bounded, which, Chain};
use super::fs::{write, TempRoot, WORLD_DIRS};
use super::run::{self, pass_slurm_conf, Run};

/// How long a whole chain (compute job, then pull-back job) may take on the test cluster.
pub(crate) const CHAIN_TIMEOUT: Duration = Duration::from_secs(180);

/// A job as the scheduler lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Job {
    /// The job id (an array's own id, not a task's).
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) workdir: String,
    pub(crate) comment: String,
}

/// Every job of this user the controller or accounting knows from the last two hours,
/// one entry per job (array tasks folded into their array).
pub(crate) fn jobs() -> Vec<Job> {
    let mut jobs: Vec<Job> = Vec::new();
    let squeue = bounded(
        "squeue",
        &[
            "--noheader",
            "--all",
            "--states=all",
            "--me",
            "--format=%F|%j|%Z|%k",
        ],
        30,
    );
    squeue.code(0);
    for line in squeue.stdout.lines() {
        let f: Vec<&str> = line.trim().splitn(4, '|').collect();
        if let [id, name, workdir, comment] = f[..] {
            jobs.push(Job {
                id: id.into(),
                name: name.into(),
                workdir: workdir.into(),
                comment: comment.into(),
            });
        }
    }
    let sacct = bounded(
        "sacct",
        &[
            "-X",
            "--parsable2",
            "--noheader",
            "--starttime=now-2hours",
            "--format=JobID,JobName,WorkDir,Comment",
        ],
        30,
    );
    sacct.code(0);
    for line in sacct.stdout.lines() {
        let f: Vec<&str> = line.trim().splitn(4, '|').collect();
        if let [id, name, workdir, comment] = f[..] {
            let id = id.split(['_', '.']).next().unwrap_or(id);
            if let Some(known) = jobs.iter_mut().find(|j| j.id == id) {
                if known.comment.is_empty() || known.comment == "(null)" {
                    known.comment = comment.into();
                }
                continue;
            }
            jobs.push(Job {
                id: id.into(),
                name: name.into(),
                workdir: workdir.into(),
                comment: comment.into(),
            });
        }
    }
    jobs.sort();
    jobs.dedup_by(|a, b| a.id == b.id);
    jobs
}

/// The jobs whose working folder is `dir` or below it.
pub(crate) fn jobs_under(dir: &Path) -> Vec<Job> {
    let dir = dir.to_string_lossy();
    jobs()
        .into_iter()
        .filter(|j| j.workdir == dir || j.workdir.starts_with(&format!("{dir}/")))
        .collect()
}

/// One test's world.
pub(crate) struct World {
    _dir: TempRoot,
    /// Canonical path of the temporary folder.
    pub(crate) root: PathBuf,
    /// Folders put before the inherited PATH.
    path_prefix: Vec<PathBuf>,
}

impl super::World for World {
    fn root(&self) -> &Path {
        &self.root
    }
}

impl World {
    /// A world with the NAS and scratch roots and a purge policy in the user config.
    pub(crate) fn new() -> World {
        let dir = TempRoot::shared(
            "hpcstage-slurm.",
            &[WORLD_DIRS, &["xdg-config/hpcstage", "bin"]].concat(),
        )
        .keep_failed();
        let world = World {
            root: dir.path().to_path_buf(),
            _dir: dir,
            path_prefix: Vec::new(),
        };
        write(
            world.user_config(),
            format!(
                "nas_root = {:?}\nscratch_root = {:?}\n\n[purge]\nbasis = \"mtime\"\nage = \"30d\"\nwarn = \"7d\"\n",
                world.nas(),
                world.scratch()
            ),
        );
        world
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

    pub(crate) fn state(&self) -> PathBuf {
        self.path("state")
    }

    pub(crate) fn user_config(&self) -> PathBuf {
        self.path("xdg-config/hpcstage/config.toml")
    }

    /// Appends TOML (a `[slurm]` section, say) to the user config.
    pub(crate) fn configure(&self, toml: &str) {
        let mut text = fs::read_to_string(self.user_config()).expect("read user config");
        text.push('\n');
        text.push_str(toml);
        write(self.user_config(), text);
    }

    /// Puts `dir` first on PATH for every later command (and so in the jobs they submit).
    pub(crate) fn prepend_path(&mut self, dir: impl Into<PathBuf>) {
        self.path_prefix.push(dir.into());
    }

    /// Writes an executable bash script into the world's `bin/` and returns its path.
    pub(crate) fn script(&self, name: &str, body: &str) -> PathBuf {
        self.script_at(&self.path("bin").join(name), body)
    }

    /// Writes an executable bash script at `path` (in the world) and returns it.
    pub(crate) fn script_at(&self, path: &Path, body: &str) -> PathBuf {
        let path = path.to_path_buf();
        write(&path, format!("#!/bin/bash\n{body}"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod script");
        path
    }

    /// The PATH every command (and job) gets.
    pub(crate) fn path_var(&self) -> std::ffi::OsString {
        let inherited = run::inherited_path();
        let mut dirs: Vec<PathBuf> = self.path_prefix.clone();
        dirs.extend(std::env::split_paths(&inherited));
        std::env::join_paths(dirs).expect("PATH joins")
    }

    /// The binary with a clean environment pointing into this world, run from its root.
    pub(crate) fn command(&self) -> Command {
        let mut cmd = run::hpcstage(&self.root, &self.state());
        cmd.env("PATH", self.path_var()).env("NO_COLOR", "1");
        pass_slurm_conf(&mut cmd);
        cmd
    }

    /// Runs `hpcstage ARGS...` to the end.
    pub(crate) fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command();
        cmd.args(args);
        Run::of(cmd).in_world(&self.root)
    }

    /// Runs a shell script in `dir` with the world's PATH.
    pub(crate) fn sh(&self, dir: &Path, script: &str) -> Run {
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(script)
            .env("PATH", self.path_var())
            .env("LC_ALL", "C")
            .current_dir(dir)
            .stdin(Stdio::null());
        let mut run = Run::of(cmd).in_world(&self.root);
        run.command = format!("bash -c {script:?} (in {})", dir.display());
        run
    }

    /// Writes `files` (relative path, content) under `acq/<name>` and ingests the folder
    /// as dataset `name` of project `P`; returns the raw dataset on the NAS.
    pub(crate) fn dataset<B: AsRef<[u8]>>(&self, name: &str, files: &[(&str, B)]) -> PathBuf {
        let acq = self.path("acq").join(name);
        for (rel, content) in files {
            write(acq.join(rel), content);
        }
        self.run([
            OsStr::new("ingest"),
            acq.as_os_str(),
            OsStr::new("--project"),
            OsStr::new("P"),
            OsStr::new("--dataset"),
            OsStr::new(name),
        ])
        .code(0);
        self.nas().join("P/raw").join(name)
    }

    /// `hpcstage stage-and-run RAW TEMPLATE ARGS... --json`, expected to succeed.
    pub(crate) fn stage_and_run(&self, raw: &Path, template: &str, args: &[&str]) -> Chain {
        let mut all: Vec<&OsStr> = vec![
            OsStr::new("stage-and-run"),
            raw.as_os_str(),
            OsStr::new(template),
        ];
        all.extend(args.iter().map(OsStr::new));
        all.push(OsStr::new("--json"));
        let run = self.run(all);
        run.code(0);
        Chain::of(&run)
    }

    /// `hpcstage status RUN --json`.
    pub(crate) fn status(&self, run_id: &str) -> Value {
        let run = self.run(["status", run_id, "--json"]);
        run.code(0);
        run.json()
    }

    /// Polls `status RUN --json` until the run's pull-back job has ended and the run is
    /// pulled or pull-failed; returns the last status. Fails the test after `timeout`,
    /// showing the status and the run's logs.
    pub(crate) fn wait_chain(&self, chain: &Chain, timeout: Duration) -> Value {
        let started = Instant::now();
        loop {
            let status = self.status(&chain.run_id);
            let phase = status["phase"].as_str().unwrap_or("");
            let pull_state = job(&status, "pull-back")
                .and_then(|j| j["facts"]["state"].as_str())
                .unwrap_or("");
            if ended(pull_state) && matches!(phase, "pulled" | "pull-failed") {
                return status;
            }
            if started.elapsed() > timeout {
                panic!(
                    "run {} did not end within {timeout:?} (phase {phase:?}, pull-back job {pull_state:?})\n\
                     --- status ---\n{status:#}\n--- logs ---\n{}\n--- queue ---\n{}",
                    chain.run_id,
                    logs(&chain.run_dir),
                    bounded("squeue", &["--all"], 20).stdout
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Jobs of a failed test must not hold the node for the next one.
        if which("squeue").is_some() {
            let root = self.root.to_string_lossy().into_owned();
            let active = bounded("squeue", &["--noheader", "--me", "--format=%F|%Z"], 20);
            let mut ids: Vec<&str> = active
                .stdout
                .lines()
                .filter_map(|l| l.trim().split_once('|'))
                .filter(|(_, dir)| dir.starts_with(&root))
                .map(|(id, _)| id)
                .collect();
            ids.sort_unstable();
            ids.dedup();
            for id in ids {
                let _ = bounded("scancel", &[id], 20);
            }
        }
        // The folder itself goes (or is kept) when `dir` drops, after this.
    }
}

/// The job in `role` ("compute", "pull-back") of a `status RUN --json` answer.
pub(crate) fn job<'a>(status: &'a Value, role: &str) -> Option<&'a Value> {
    status["jobs"]
        .as_array()?
        .iter()
        .rev()
        .find(|j| j["role"] == role)
}

/// True for a state a job does not leave.
pub(crate) fn ended(state: &str) -> bool {
    matches!(
        state.split_whitespace().next().unwrap_or(""),
        "COMPLETED"
            | "FAILED"
            | "CANCELLED"
            | "TIMEOUT"
            | "OUT_OF_MEMORY"
            | "NODE_FAIL"
            | "PREEMPTED"
            | "BOOT_FAIL"
            | "DEADLINE"
    )
}

/// The run folder's logs, for failure messages.
pub(crate) fn logs(run_dir: &Path) -> String {
    let mut text = String::new();
    let mut files: Vec<PathBuf> = fs::read_dir(run_dir.join("logs"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    for f in files {
        text.push_str(&format!(
            "== {} ==\n{}\n",
            f.display(),
            fs::read_to_string(&f).unwrap_or_default()
        ));
    }
    text
}
