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
//!   whole length ([`cluster`]) and run one after another.
//! - Nothing waits without a bound: a chain that does not end within its timeout fails the
//!   test with the run's status and the job logs.
//! - A world whose test failed is kept (its path is printed) for a look at the logs; its
//!   jobs still queued are cancelled either way, so they cannot hold the node for the next
//!   test.
#![allow(dead_code, clippy::print_stderr)]

use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a whole chain (compute job, then pull-back job) may take on the test cluster.
pub(crate) const CHAIN_TIMEOUT: Duration = Duration::from_secs(180);

static CLUSTER: Mutex<()> = Mutex::new(());

/// The test cluster, held by one test at a time.
pub(crate) struct Cluster {
    _guard: MutexGuard<'static, ()>,
}

/// Takes the test cluster for one test. `None` (after printing "skipped: no SLURM") when
/// SLURM is not installed here; a test failure when it is installed but the controller
/// does not answer, since then the cluster was meant to be there.
pub(crate) fn cluster() -> Option<Cluster> {
    if which("sinfo").is_none() {
        eprintln!("skipped: no SLURM");
        return None;
    }
    let guard = CLUSTER.lock().unwrap_or_else(PoisonError::into_inner);
    let ping = bounded("scontrol", &["ping"], 20);
    assert!(
        ping.stdout.contains(" is UP"),
        "SLURM is installed but its controller does not answer; start the test cluster \
         with `bash tests/cluster/up.sh` (as root)\n{ping}"
    );
    wait_node_usable();
    Some(Cluster { _guard: guard })
}

/// Waits (bounded) until the node takes jobs: after a controller restart it may be
/// `unknown` or `down` for a moment.
fn wait_node_usable() {
    let started = Instant::now();
    loop {
        let states = bounded("sinfo", &["--noheader", "--format=%T"], 20);
        let usable = states.stdout.lines().any(|l| {
            matches!(
                l.trim()
                    .trim_end_matches(['*', '~', '#', '$', '@', '+', '-']),
                "idle" | "mixed" | "allocated" | "completing"
            )
        });
        if usable {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the test cluster's node does not take jobs; run `bash tests/cluster/up.sh`\n{states}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Leaves the test early when SLURM is not installed; holds the cluster otherwise.
macro_rules! slurm_test {
    () => {
        match $crate::common_slurm::cluster() {
            Some(cluster) => cluster,
            None => return,
        }
    };
}
pub(crate) use slurm_test;

/// `program` on PATH.
pub(crate) fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Runs a command under `timeout(1)`, with LC_ALL=C and without the user's output
/// format variables.
pub(crate) fn bounded(program: &str, args: &[&str], secs: u32) -> Run {
    let mut cmd = Command::new("timeout");
    cmd.arg("-k")
        .arg("5")
        .arg(secs.to_string())
        .arg(program)
        .args(args)
        .env("LC_ALL", "C")
        .env_remove("SQUEUE_FORMAT")
        .env_remove("SACCT_FORMAT")
        .env_remove("SLURM_TIME_FORMAT")
        .stdin(Stdio::null());
    let shown = describe(&cmd);
    let out = cmd.output().unwrap_or_else(|e| panic!("run {shown}: {e}"));
    Run::new(shown, out, PathBuf::new())
}

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

/// Job ids of a chain, as `stage-and-run --json` and `submit --json` print them.
#[derive(Debug, Clone)]
pub(crate) struct Chain {
    pub(crate) run_id: String,
    pub(crate) run_dir: PathBuf,
    pub(crate) results_dir: PathBuf,
    pub(crate) compute_job: String,
    pub(crate) pull_job: Option<String>,
}

impl Chain {
    fn from_json(v: &Value) -> Chain {
        let s = |k: &str| {
            v[k].as_str()
                .unwrap_or_else(|| panic!("no {k} in {v:#}"))
                .to_string()
        };
        Chain {
            run_id: s("run_id"),
            run_dir: s("run_dir").into(),
            results_dir: s("results_dir").into(),
            compute_job: s("compute_job"),
            pull_job: v["pull_job"].as_str().map(str::to_string),
        }
    }

    /// `<results>/../_failed/<run>`: where a failed run's logs go.
    pub(crate) fn failed_dir(&self) -> PathBuf {
        self.results_dir
            .parent()
            .expect("results folder has a parent")
            .join("_failed")
            .join(&self.run_id)
    }
}

/// One test's world.
pub(crate) struct World {
    dir: Option<tempfile::TempDir>,
    /// Canonical path of the temporary folder.
    pub(crate) root: PathBuf,
    /// Folders put before the inherited PATH.
    path_prefix: Vec<PathBuf>,
}

impl World {
    /// A world with the NAS and scratch roots and a purge policy in the user config.
    pub(crate) fn new() -> World {
        let dir = tempfile::Builder::new()
            .prefix("hpcstage-slurm.")
            .tempdir_in("/tmp")
            .expect("create a temporary folder under /tmp");
        let root = dir.path().canonicalize().expect("canonical temp path");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod world");
        for sub in [
            "home",
            "xdg-config/hpcstage",
            "xdg-state",
            "state",
            "nas",
            "scratch",
            "bin",
        ] {
            fs::create_dir_all(root.join(sub)).expect("create world folder");
        }
        let world = World {
            dir: Some(dir),
            root,
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
        let inherited = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
        let mut dirs: Vec<PathBuf> = self.path_prefix.clone();
        dirs.extend(std::env::split_paths(&inherited));
        std::env::join_paths(dirs).expect("PATH joins")
    }

    /// The binary with a clean environment pointing into this world, run from its root.
    pub(crate) fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hpcstage"));
        cmd.env_clear()
            .env("PATH", self.path_var())
            .env("HOME", self.path("home"))
            .env("XDG_CONFIG_HOME", self.path("xdg-config"))
            .env("XDG_STATE_HOME", self.path("xdg-state"))
            .env("HPCSTAGE_STATE", self.state())
            .env("HPCSTAGE_SITE_CONFIG", self.path("site.toml"))
            .env("LC_ALL", "C")
            .env("NO_COLOR", "1")
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(conf) = std::env::var_os("SLURM_CONF") {
            cmd.env("SLURM_CONF", conf);
        }
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
        let shown = describe(&cmd);
        let out = cmd.output().expect("run hpcstage");
        Run::new(shown, out, self.root.clone())
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
        let shown = format!("bash -c {script:?} (in {})", dir.display());
        let out = cmd.output().expect("run bash");
        Run::new(shown, out, self.root.clone())
    }

    /// Writes `files` (relative path, content) under `acq/<name>` and ingests the folder
    /// as dataset `name` of project `P`; returns the raw dataset on the NAS.
    pub(crate) fn dataset(&self, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
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
        Chain::from_json(&run.json())
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
        make_writable(&self.root);
        if let Some(dir) = self.dir.take() {
            if std::thread::panicking() {
                eprintln!("kept the failed test's world: {}", dir.keep().display());
            } else {
                let _ = dir.close();
            }
        }
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

/// Relative paths of the regular files below `dir`, sorted.
pub(crate) fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("list {}: {e}", d.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(
                    path.strip_prefix(dir)
                        .expect("below dir")
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    out.sort();
    out
}

/// The outcome of one command, with everything needed to explain a failed assertion.
pub(crate) struct Run {
    pub(crate) command: String,
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    root: PathBuf,
}

impl Run {
    fn new(command: String, out: Output, root: PathBuf) -> Run {
        Run {
            command,
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            root,
        }
    }

    /// Asserts the exit code, printing the command and both streams when it differs.
    #[track_caller]
    pub(crate) fn code(&self, expected: i32) -> &Run {
        assert!(
            self.code == Some(expected),
            "expected exit code {expected}, got {:?}\n{self}",
            self.code
        );
        self
    }

    fn replace_root(&self, text: &str) -> String {
        if self.root.as_os_str().is_empty() {
            return text.to_string();
        }
        text.replace(&*self.root.to_string_lossy(), "[ROOT]")
    }

    /// Standard output with the world's path replaced by `[ROOT]`.
    pub(crate) fn out(&self) -> String {
        self.replace_root(&self.stdout)
    }

    /// Standard error with the world's path replaced by `[ROOT]`.
    pub(crate) fn err(&self) -> String {
        self.replace_root(&self.stderr)
    }

    /// Standard output parsed as JSON.
    #[track_caller]
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{self}"))
    }

    /// Asserts that standard error holds `needle`.
    #[track_caller]
    pub(crate) fn err_has(&self, needle: &str) -> &Run {
        assert!(
            self.err().contains(needle),
            "stderr lacks {needle:?}\n{self}"
        );
        self
    }

    /// Asserts that standard output holds `needle`.
    #[track_caller]
    pub(crate) fn out_has(&self, needle: &str) -> &Run {
        assert!(
            self.out().contains(needle),
            "stdout lacks {needle:?}\n{self}"
        );
        self
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "--- command ---\n{}\n--- exit code {:?} ---\n--- stdout ---\n{}--- stderr ---\n{}--- end ---",
            self.command, self.code, self.stdout, self.stderr
        )
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&format!("{:?}", a.to_string_lossy()));
    }
    s
}

/// Compares two lists of lines whole; on failure prints both.
#[track_caller]
pub(crate) fn assert_lines<A: AsRef<str> + fmt::Debug, B: AsRef<str> + fmt::Debug>(
    actual: &[A],
    expected: &[B],
) {
    let a: Vec<&str> = actual.iter().map(AsRef::as_ref).collect();
    let e: Vec<&str> = expected.iter().map(AsRef::as_ref).collect();
    assert!(
        a == e,
        "lines differ\n--- expected ---\n{}\n--- actual ---\n{}\n--- end ---",
        e.join("\n"),
        a.join("\n")
    );
}

/// Writes a file, creating its parent folders.
pub(crate) fn write(path: impl AsRef<Path>, bytes: impl AsRef<[u8]>) {
    let path = path.as_ref();
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create parent folders");
    }
    fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

pub(crate) fn read_text(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Gives write permission back below `root` (raw data is write-protected), so that the
/// clean-up works for a non-root user too.
fn make_writable(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode();
        if mode & 0o200 == 0 {
            let _ = fs::set_permissions(&p, fs::Permissions::from_mode(mode | 0o700));
        }
        if meta.is_dir() {
            if let Ok(rd) = fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
}
