//! Shared pieces of the integration tests: a fresh temporary world per test (HOME, XDG
//! folders, state, site config, NAS and scratch all inside it), a runner for the built
//! binary with a clean environment, tree builders and comparisons that print both sides.
//!
//! Nothing of the machine's own configuration may leak in: every command runs with an
//! emptied environment plus the variables set here.
#![allow(dead_code, clippy::print_stderr)]

use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Leaves a test early, loudly, when it needs root (mounting tmpfs or ramfs).
#[allow(unused_macros)]
macro_rules! needs_root {
    () => {
        if !$crate::common::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use needs_root;

/// One test's world: a temporary folder holding everything the binary may touch.
pub(crate) struct Env {
    dir: Option<tempfile::TempDir>,
    /// Canonical path of the temporary folder.
    pub(crate) root: PathBuf,
    extra_env: Vec<(String, String)>,
}

impl Env {
    pub(crate) fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("hpcstage-test.")
            .tempdir()
            .expect("create a temporary folder");
        let root = dir.path().canonicalize().expect("canonical temp path");
        for sub in ["home", "xdg-config", "xdg-state", "state", "nas", "scratch"] {
            fs::create_dir_all(root.join(sub)).expect("create env folder");
        }
        Env {
            dir: Some(dir),
            root,
            extra_env: Vec::new(),
        }
    }

    /// A path inside the world.
    pub(crate) fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    pub(crate) fn nas(&self) -> PathBuf {
        self.path("nas")
    }

    pub(crate) fn scratch(&self) -> PathBuf {
        self.path("scratch")
    }

    /// `$HPCSTAGE_STATE`: where the ledger goes.
    pub(crate) fn state(&self) -> PathBuf {
        self.path("state")
    }

    /// `$HPCSTAGE_SITE_CONFIG` (absent unless a test writes it).
    pub(crate) fn site_config(&self) -> PathBuf {
        self.path("site.toml")
    }

    /// The user config file under `$XDG_CONFIG_HOME`.
    pub(crate) fn user_config(&self) -> PathBuf {
        self.path("xdg-config/hpcstage/config.toml")
    }

    /// Sets an extra environment variable for every later command.
    pub(crate) fn set_env(&mut self, key: &str, value: impl AsRef<OsStr>) {
        self.extra_env.push((
            key.to_string(),
            value.as_ref().to_string_lossy().into_owned(),
        ));
    }

    /// The binary, with a clean environment pointing into this world, run from its root.
    pub(crate) fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hpcstage"));
        cmd.env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .env("HOME", self.path("home"))
            .env("XDG_CONFIG_HOME", self.path("xdg-config"))
            .env("XDG_STATE_HOME", self.path("xdg-state"))
            .env("HPCSTAGE_STATE", self.state())
            .env("HPCSTAGE_SITE_CONFIG", self.site_config())
            .env("COLUMNS", "100")
            .env("LC_ALL", "C")
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
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
        self.finish(cmd)
    }

    /// Runs a prepared command to the end.
    pub(crate) fn finish(&self, mut cmd: Command) -> Run {
        let shown = describe(&cmd);
        let out = cmd.output().expect("run hpcstage");
        Run::new(shown, out, self.root.clone())
    }

    /// `hpcstage --nas-root NAS --scratch-root SCRATCH ARGS...`
    pub(crate) fn run_roots<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command();
        cmd.arg("--nas-root")
            .arg(self.nas())
            .arg("--scratch-root")
            .arg(self.scratch())
            .args(args);
        self.finish(cmd)
    }

    /// Runs an external tool (sha256sum, find, ...) through `sh -c` in `dir`, with LC_ALL=C.
    pub(crate) fn sh(&self, dir: &Path, script: &str) -> Run {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .env("LC_ALL", "C")
            .current_dir(dir)
            .stdin(Stdio::null());
        let out = cmd.output().expect("run sh");
        Run::new(
            format!("sh -c {script:?} (in {})", dir.display()),
            out,
            self.root.clone(),
        )
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Read-only folders (raw data, read-only test trees) would stop the clean-up of a
        // non-root user; give write permission back first.
        make_writable(&self.root);
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
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

/// The outcome of one command, with everything needed to explain a failed assertion.
pub(crate) struct Run {
    pub(crate) command: String,
    pub(crate) code: Option<i32>,
    pub(crate) signal: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    root: PathBuf,
}

impl Run {
    fn new(command: String, out: Output, root: PathBuf) -> Run {
        use std::os::unix::process::ExitStatusExt;
        Run {
            command,
            code: out.status.code(),
            signal: out.status.signal(),
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
            "expected exit code {expected}, got {:?} (signal {:?})\n{self}",
            self.code,
            self.signal
        );
        self
    }

    /// Standard output with the world's path replaced by `[ROOT]`.
    pub(crate) fn out(&self) -> String {
        self.stdout.replace(&*self.root.to_string_lossy(), "[ROOT]")
    }

    /// Standard error with the world's path replaced by `[ROOT]`.
    pub(crate) fn err(&self) -> String {
        self.stderr.replace(&*self.root.to_string_lossy(), "[ROOT]")
    }

    /// Standard output parsed as JSON.
    #[track_caller]
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{self}"))
    }

    /// Asserts that standard error holds `needle` (after `[ROOT]` replacement).
    #[track_caller]
    pub(crate) fn err_has(&self, needle: &str) -> &Run {
        assert!(
            self.err().contains(needle),
            "stderr lacks {needle:?}\n{self}"
        );
        self
    }

    /// Asserts that standard error does not hold `needle`.
    #[track_caller]
    pub(crate) fn err_lacks(&self, needle: &str) -> &Run {
        assert!(
            !self.err().contains(needle),
            "stderr holds {needle:?}\n{self}"
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

/// Compares two texts whole; on failure prints both, one after the other.
#[track_caller]
pub(crate) fn assert_text(actual: &str, expected: &str) {
    assert!(
        actual == expected,
        "texts differ\n--- expected ---\n{expected}\n--- actual ---\n{actual}\n--- end ---"
    );
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

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Writes a file, creating its parent folders.
pub(crate) fn write(path: impl AsRef<Path>, bytes: impl AsRef<[u8]>) {
    let path = path.as_ref();
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create parent folders");
    }
    fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

pub(crate) fn read(path: impl AsRef<Path>) -> Vec<u8> {
    let path = path.as_ref();
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

pub(crate) fn read_text(path: impl AsRef<Path>) -> String {
    String::from_utf8(read(path)).expect("UTF-8 text")
}

pub(crate) fn chmod(path: impl AsRef<Path>, mode: u32) {
    let path = path.as_ref();
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

pub(crate) fn mode(path: impl AsRef<Path>) -> u32 {
    fs::symlink_metadata(path.as_ref()).expect("stat").mode() & 0o7777
}

pub(crate) fn symlink(target: &str, link: impl AsRef<Path>) {
    std::os::unix::fs::symlink(target, link.as_ref()).expect("create symlink");
}

/// Deterministic pseudo-random bytes.
pub(crate) fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = vec![0u8; len];
    rng.fill(&mut out);
    out
}

/// A name from raw bytes (for names that are not UTF-8 or hold control characters).
pub(crate) fn name(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(bytes))
}

/// Names that need GNU escaping in a manifest.
pub(crate) const BACKSLASH: &[u8] = b"back\\slash.txt";
pub(crate) const NEWLINE: &[u8] = b"new\nline.txt";
pub(crate) const CARRIAGE: &[u8] = b"carriage\rreturn.txt";

/// Builds a tree with the names and shapes that break naive tools; returns the relative
/// paths of its regular files.
///
/// ```text
/// a b.txt              spaces        hard        hard link to "a b.txt"
/// ünïcödé ✓.txt        unicode       sub/hard2   another hard link to "a b.txt"
/// back\slash.txt       backslash     link        -> "a b.txt" (inside)
/// new<LF>line.txt      newline       sub/up      -> "../a b.txt" (inside)
/// carriage<CR>return.txt             outside     -> /etc/passwd (pointing out)
/// empty.dat            0 bytes       sub/escape  -> "../../elsewhere" (pointing out)
/// sparse.img           16 MiB, 3 bytes of data in the middle
/// ro/inner.txt         0444 in a 0555 folder     ro-file.txt 0400
/// sub/deep/data.bin    64 KiB of noise
/// empty-dir/, sub/empty-too/   empty folders
/// ```
pub(crate) fn tricky_tree(root: &Path) -> Vec<PathBuf> {
    fs::create_dir_all(root).expect("create tree root");
    write(root.join("a b.txt"), "spaces in the name\n");
    write(root.join("ünïcödé ✓.txt"), "unicode\n");
    write(root.join(name(BACKSLASH)), "backslash\n");
    write(root.join(name(NEWLINE)), "newline\n");
    write(root.join(name(CARRIAGE)), "carriage return\n");
    write(root.join("empty.dat"), "");
    write(root.join("sub/deep/data.bin"), noise(7, 64 << 10));
    fs::create_dir_all(root.join("empty-dir")).expect("mkdir");
    fs::create_dir_all(root.join("sub/empty-too")).expect("mkdir");
    fs::hard_link(root.join("a b.txt"), root.join("hard")).expect("hard link");
    fs::hard_link(root.join("a b.txt"), root.join("sub/hard2")).expect("hard link");
    symlink("a b.txt", root.join("link"));
    symlink("../a b.txt", root.join("sub/up"));
    symlink("/etc/passwd", root.join("outside"));
    symlink("../../elsewhere", root.join("sub/escape"));
    let sparse = File::create(root.join("sparse.img")).expect("create sparse file");
    sparse.set_len(16 << 20).expect("extend sparse file");
    {
        use std::os::unix::fs::FileExt;
        sparse
            .write_all_at(b"abc", 8 << 20)
            .expect("write into sparse file");
    }
    drop(sparse);
    write(
        root.join("ro/inner.txt"),
        "read-only file in a read-only folder\n",
    );
    chmod(root.join("ro/inner.txt"), 0o444);
    chmod(root.join("ro"), 0o555);
    write(root.join("ro-file.txt"), "owner-read-only\n");
    chmod(root.join("ro-file.txt"), 0o400);
    regular_files(root)
}

/// Relative paths of the regular files under `root`, sorted by bytes, not following
/// links and skipping hpcstage's `.hpcstage/` folder.
pub(crate) fn regular_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    collect(root, Path::new(""), &mut out, &|m| m.is_file());
    out.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
    out
}

/// Relative paths of everything under `root` (files, folders, links), sorted by bytes.
pub(crate) fn all_entries(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    collect(root, Path::new(""), &mut out, &|_| true);
    out.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
    out
}

fn collect(root: &Path, rel: &Path, out: &mut Vec<PathBuf>, keep: &dyn Fn(&fs::Metadata) -> bool) {
    let dir = root.join(rel);
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let entry = entry.expect("read folder entry");
        let child = rel.join(entry.file_name());
        if rel.as_os_str().is_empty() && entry.file_name() == ".hpcstage" {
            continue;
        }
        let meta = entry.metadata().expect("stat entry");
        if keep(&meta) {
            out.push(child.clone());
        }
        if meta.is_dir() {
            collect(root, &child, out, keep);
        }
    }
}

/// Names of hpcstage's temporary files anywhere under `root` (including `.hpcstage/`).
pub(crate) fn temporaries(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for entry in rd.flatten() {
            let path = entry.path();
            if entry.file_name().as_bytes().starts_with(b".hpcstage-tmp.") {
                out.push(path.clone());
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            }
        }
    }
    out
}

/// One line per entry: kind, mode, size, mtime, inode, link target and a content digest,
/// so that two listings are equal only when nothing changed.
pub(crate) fn fingerprint(root: &Path) -> Vec<String> {
    all_entries(root)
        .into_iter()
        .map(|rel| {
            let path = root.join(&rel);
            let m = fs::symlink_metadata(&path).expect("stat");
            let kind = if m.is_dir() {
                "d".to_string()
            } else if m.file_type().is_symlink() {
                format!("l -> {}", fs::read_link(&path).expect("readlink").display())
            } else {
                let bytes = read(&path);
                format!("f {:016x}", fnv(&bytes))
            };
            format!(
                "{:?} {kind} mode={:o} size={} mtime={}.{} ino={}",
                rel,
                m.mode() & 0o7777,
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

/// Asserts that every regular file under its final name in `dest` has exactly the
/// content of the same path in `src` (bookkeeping and temporaries aside); returns how many
/// files were compared.
#[track_caller]
pub(crate) fn assert_final_names_match_source(src: &Path, dest: &Path) -> usize {
    let mut compared = 0;
    for rel in regular_files(dest) {
        let file_name = rel.file_name().map(OsStrExt::as_bytes).unwrap_or_default();
        if file_name.starts_with(b".hpcstage-tmp.") || rel == Path::new("MANIFEST.sha256") {
            continue;
        }
        let (a, b) = (read(src.join(&rel)), read(dest.join(&rel)));
        assert!(
            a == b,
            "{} is under its final name at the destination but differs from the source \
             ({} vs {} bytes)",
            rel.display(),
            b.len(),
            a.len()
        );
        compared += 1;
    }
    compared
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

/// Today's local date as `date +%F` prints it (with the same clean environment the binary
/// gets).
pub(crate) fn today() -> String {
    let out = Command::new("date")
        .arg("+%F")
        .env_clear()
        .output()
        .expect("run date");
    String::from_utf8(out.stdout)
        .expect("date prints ASCII")
        .trim()
        .to_string()
}

/// A filesystem mounted for one test and unmounted when the guard drops.
pub(crate) struct Mount {
    pub(crate) path: PathBuf,
}

impl Mount {
    /// `mount -t FSTYPE -o OPTIONS FSTYPE PATH` (root only).
    pub(crate) fn new(fstype: &str, options: &str, path: &Path) -> Mount {
        fs::create_dir_all(path).expect("create mount point");
        let out = Command::new("mount")
            .args(["-t", fstype, "-o", options, fstype])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t {fstype} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mount {
            path: path.to_path_buf(),
        }
    }
}

impl Mount {
    /// `mount -o remount,OPTIONS PATH`, e.g. to give a tmpfs more room.
    pub(crate) fn remount(&self, options: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "remount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Appends `bytes` to a file.
pub(crate) fn append(path: &Path, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append");
    f.write_all(bytes).expect("append");
}
