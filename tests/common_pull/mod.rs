//! The world of the pull tests: a temporary lab under `/tmp` (jobs run as root on the
//! test cluster's node and must reach it) with its own HOME, XDG folders, ledger, site
//! config, NAS and scratch, a raw dataset of two images, a model file and predict
//! stand-ins; and the bits of the real cluster the tests drive or look at (`sacct`,
//! `squeue`, `scancel`).
//!
//! Tests that submit jobs hold [`slurm`]'s guard: the node has 2 CPUs and the pull-back
//! job asks for both, so runs of different tests would only queue behind each other and
//! blur the timings the tests bound.
#![allow(dead_code, clippy::print_stderr)]

use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Serializes the tests that submit jobs.
static SLURM: Mutex<()> = Mutex::new(());

/// The cluster, held for one test; `None` (test skipped) when SLURM is not installed.
/// Installed but not answering is a failure: the runner starts it with
/// `tests/cluster/up.sh`.
pub(crate) fn slurm() -> Option<MutexGuard<'static, ()>> {
    if on_path("sinfo").is_none() {
        eprintln!("skipped: no SLURM");
        return None;
    }
    // A test that failed while holding the guard leaves it poisoned; the cluster is fine.
    let guard = SLURM.lock().unwrap_or_else(|e| e.into_inner());
    let ping = tool("scontrol", &["ping"]);
    assert!(
        ping.code == Some(0) && ping.stdout.contains("UP"),
        "SLURM is installed but slurmctld does not answer `scontrol ping`: start the test \
         cluster with tests/cluster/up.sh\n{ping}"
    );
    Some(guard)
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
}

fn path_var() -> std::ffi::OsString {
    std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into())
}

/// Runs an external tool with a clean environment (LC_ALL=C, no SLURM format variables).
pub(crate) fn tool(program: &str, args: &[&str]) -> Run {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", path_var())
        .env("LC_ALL", "C")
        .stdin(Stdio::null());
    if let Some(conf) = std::env::var_os("SLURM_CONF") {
        cmd.env("SLURM_CONF", conf);
    }
    finish(cmd)
}

fn finish(mut cmd: Command) -> Run {
    let shown = describe(&cmd);
    let started = Instant::now();
    let out = cmd.output().unwrap_or_else(|e| panic!("run {shown}: {e}"));
    Run::new(shown, out, started.elapsed())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&format!("{:?}", a.to_string_lossy()));
    }
    s
}

/// One test's lab.
pub(crate) struct Lab {
    dir: Option<tempfile::TempDir>,
    /// Canonical path of the temporary folder.
    pub(crate) root: PathBuf,
}

impl Lab {
    /// An empty lab: `/tmp/hpcstage-pull.XXXX/{home,xdg-config,xdg-state,state,nas,scratch,bin}`,
    /// a user config with the NAS and scratch roots and a purge policy, and a model file.
    pub(crate) fn new() -> Lab {
        let dir = tempfile::Builder::new()
            .prefix("hpcstage-pull.")
            .tempdir_in("/tmp")
            .expect("create a temporary folder in /tmp");
        let root = dir.path().canonicalize().expect("canonical temp path");
        // Other users (the epilogue's job user) must be able to pass through.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod lab");
        for sub in [
            "home",
            "xdg-config",
            "xdg-state",
            "state",
            "nas",
            "scratch",
            "bin",
        ] {
            fs::create_dir_all(root.join(sub)).expect("create lab folder");
        }
        let lab = Lab {
            dir: Some(dir),
            root,
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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hpcstage"));
        cmd.env_clear()
            .env("PATH", path_var())
            .env("HOME", self.path("home"))
            .env("XDG_CONFIG_HOME", self.path("xdg-config"))
            .env("XDG_STATE_HOME", self.path("xdg-state"))
            .env("HPCSTAGE_STATE", self.state())
            .env("HPCSTAGE_SITE_CONFIG", self.path("site.toml"))
            .env("COLUMNS", "100")
            .env("LC_ALL", "C")
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
        finish(cmd)
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
        write(acq.join("img1.tif"), b"II*\0image one\n");
        write(acq.join("img2.tif"), b"II*\0image two, a little longer\n");
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
    /// `$input`, `$mask` and `$table` (from `--model/--input/--mask/--table`).
    pub(crate) fn stand_in(&self, name: &str, body: &str) -> PathBuf {
        let path = self.path("bin").join(name);
        write(
            &path,
            format!(
                "#!/bin/bash\nset -euo pipefail\n\
                 while (($#)); do\n  case $1 in\n    --model) model=$2 ;;\n    --input) input=$2 ;;\n\
                 \x20   --mask) mask=$2 ;;\n    --table) table=$2 ;;\n  esac\n  shift 2\ndone\n{body}\n"
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
    ) -> Submitted {
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
        let run = self.run(&args);
        run.code(0);
        let v = run.json();
        let text = |k: &str| {
            v[k].as_str()
                .unwrap_or_else(|| panic!("stage-and-run --json lacks {k}\n{run}"))
                .to_string()
        };
        Submitted {
            run_id: text("run_id"),
            run_dir: PathBuf::from(text("run_dir")),
            results_dir: PathBuf::from(text("results_dir")),
            compute_job: text("compute_job"),
            pull_job: v["pull_job"].as_str().map(str::to_string),
        }
    }

    /// The run as `hpcstage status RUN --json` shows it.
    pub(crate) fn status(&self, run_id: &str) -> Value {
        let run = self.run(["status", run_id, "--json"]);
        run.code(0);
        run.json()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        make_writable(&self.root);
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// What `stage-and-run --json` said.
#[derive(Debug, Clone)]
pub(crate) struct Submitted {
    pub(crate) run_id: String,
    pub(crate) run_dir: PathBuf,
    pub(crate) results_dir: PathBuf,
    pub(crate) compute_job: String,
    pub(crate) pull_job: Option<String>,
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

/// Waits for `child` at most `bound`; kills it and fails when it takes longer.
pub(crate) fn wait_child(shown: &str, mut child: Child, bound: Duration) -> Run {
    let started = Instant::now();
    loop {
        if child.try_wait().expect("poll child").is_some() {
            let out = child.wait_with_output().expect("collect child output");
            return Run::new(shown.to_string(), out, started.elapsed());
        }
        if started.elapsed() > bound {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect child output");
            panic!(
                "still running after {bound:?}\n{}",
                Run::new(shown.to_string(), out, started.elapsed())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The outcome of one command, with everything needed to explain a failed assertion.
pub(crate) struct Run {
    pub(crate) command: String,
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) elapsed: Duration,
}

impl Run {
    fn new(command: String, out: Output, elapsed: Duration) -> Run {
        Run {
            command,
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed,
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

    #[track_caller]
    pub(crate) fn out_has(&self, needle: &str) -> &Run {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}\n{self}"
        );
        self
    }

    #[track_caller]
    pub(crate) fn err_has(&self, needle: &str) -> &Run {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}\n{self}"
        );
        self
    }

    #[track_caller]
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{self}"))
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "--- command ({:.1?}) ---\n{}\n--- exit code {:?} ---\n--- stdout ---\n{}--- stderr ---\n{}--- end ---",
            self.elapsed, self.command, self.code, self.stdout, self.stderr
        )
    }
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

pub(crate) fn read_json(path: impl AsRef<Path>) -> Value {
    let path = path.as_ref();
    serde_json::from_str(&read_text(path))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Relative paths of everything under `root` (files, folders, links), sorted; hidden
/// names included.
pub(crate) fn listing(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = walkdir(root)
        .into_iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// Relative paths of the regular files under `root`, sorted.
pub(crate) fn files(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = walkdir(root)
        .into_iter()
        .filter(|rel| root.join(rel).symlink_metadata().is_ok_and(|m| m.is_file()))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

fn walkdir(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let child = rel.join(e.file_name());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(child.clone());
            }
            out.push(child);
        }
    }
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

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `sha256sum -c MANIFEST.sha256` in `dir` (GNU coreutils, the reference).
#[track_caller]
pub(crate) fn assert_manifest_verifies(dir: &Path) {
    let mut cmd = Command::new("sha256sum");
    cmd.args(["--strict", "-c", "MANIFEST.sha256"])
        .current_dir(dir)
        .env_clear()
        .env("PATH", path_var())
        .env("LC_ALL", "C");
    let run = finish(cmd);
    assert!(
        run.code == Some(0) && !run.stdout.contains("FAILED"),
        "sha256sum -c MANIFEST.sha256 fails in {}\n{run}",
        dir.display()
    );
}

/// Compares two lists whole; on failure prints both.
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

/// Gives the owner write permission on everything under `root` (not following links).
pub(crate) fn make_writable(root: &Path) {
    let Ok(m) = fs::symlink_metadata(root) else {
        return;
    };
    if m.file_type().is_symlink() {
        return;
    }
    let _ = fs::set_permissions(
        root,
        fs::Permissions::from_mode((m.mode() & 0o7777) | 0o700),
    );
    if m.is_dir() {
        if let Ok(rd) = fs::read_dir(root) {
            for e in rd.flatten() {
                make_writable(&e.path());
            }
        }
    }
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
