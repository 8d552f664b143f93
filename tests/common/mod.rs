//! Shared pieces of the integration tests.
//!
//! - [`run`]: the built binary with an isolated environment, other tools with a clean one,
//!   and [`Run`], the outcome of one command with everything needed to explain a failed
//!   assertion.
//! - [`fs`]: writing and reading files, permissions, listings, and the temporary folder
//!   a test's world lives in.
//! - [`cluster`]: the real test cluster, taken by one test at a time.
//! - [`sshd`]: a real OpenSSH server on loopback for one test, with the world's HOME set
//!   up as its client (`ssh nas`), for the tests of remote NAS access.
//! - The worlds: [`Env`] here (a fresh temporary world per test, with tree builders and
//!   comparisons that print both sides), [`report`] for report, status and clean,
//!   [`pull`] and [`slurm`] for the tests against the test cluster.
//!
//! Nothing of the machine's own configuration may leak in: every command runs with an
//! emptied environment plus the variables set here.
#![allow(dead_code, clippy::print_stderr)]

pub(crate) mod cluster;
pub(crate) mod fs;
pub(crate) mod gate;
pub(crate) mod pull;
pub(crate) mod report;
pub(crate) mod run;
pub(crate) mod s3;
pub(crate) mod slurm;
pub(crate) mod sshd;

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

// Not every test crate uses every helper.
#[allow(unused_imports)]
pub(crate) use self::fs::{append, chmod, mode, read, read_text, symlink, write};
use self::fs::{fnv, TempRoot, WORLD_DIRS};
pub(crate) use self::run::Run;

/// Leaves a test early, loudly, when it needs root (mounting tmpfs or ramfs).
#[allow(unused_macros)]
macro_rules! needs_root {
    () => {
        if !$crate::common::gate::service(
            "root",
            $crate::common::is_root(),
            "run the tests as root, as scripts/test and CI do",
        ) {
            return;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use needs_root;

/// A temporary folder that is a test's whole world (its HOME is `home/` in it).
pub(crate) trait World {
    /// Canonical path of the folder.
    fn root(&self) -> &Path;

    /// A path inside the world.
    fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root().join(rel)
    }
}

impl World for Env {
    fn root(&self) -> &Path {
        &self.root
    }
}

/// One test's world: a temporary folder holding everything the binary may touch.
pub(crate) struct Env {
    _dir: TempRoot,
    /// Canonical path of the temporary folder.
    pub(crate) root: PathBuf,
    extra_env: Vec<(String, String)>,
}

impl Env {
    pub(crate) fn new() -> Env {
        let dir = TempRoot::new("hpcstage-test.", WORLD_DIRS);
        Env {
            root: dir.path().to_path_buf(),
            _dir: dir,
            extra_env: Vec::new(),
        }
    }

    /// A path inside the world.
    pub(crate) fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        World::path(self, rel)
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
        let mut cmd = run::hpcstage(&self.root, &self.state());
        cmd.env("COLUMNS", "100");
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
    pub(crate) fn finish(&self, cmd: Command) -> Run {
        Run::of(cmd).in_world(&self.root)
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
        let mut cmd = run::clean("sh");
        cmd.arg("-c").arg(script).current_dir(dir);
        let mut run = Run::of(cmd).in_world(&self.root);
        run.command = format!("sh -c {script:?} (in {})", dir.display());
        run
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

pub(crate) use self::gate::is_root;

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
    std::fs::create_dir_all(root).expect("create tree root");
    write(root.join("a b.txt"), "spaces in the name\n");
    write(root.join("ünïcödé ✓.txt"), "unicode\n");
    write(root.join(name(BACKSLASH)), "backslash\n");
    write(root.join(name(NEWLINE)), "newline\n");
    write(root.join(name(CARRIAGE)), "carriage return\n");
    write(root.join("empty.dat"), "");
    write(root.join("sub/deep/data.bin"), noise(7, 64 << 10));
    std::fs::create_dir_all(root.join("empty-dir")).expect("mkdir");
    std::fs::create_dir_all(root.join("sub/empty-too")).expect("mkdir");
    std::fs::hard_link(root.join("a b.txt"), root.join("hard")).expect("hard link");
    std::fs::hard_link(root.join("a b.txt"), root.join("sub/hard2")).expect("hard link");
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

fn collect(
    root: &Path,
    rel: &Path,
    out: &mut Vec<PathBuf>,
    keep: &dyn Fn(&std::fs::Metadata) -> bool,
) {
    let dir = root.join(rel);
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
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
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
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
            let m = std::fs::symlink_metadata(&path).expect("stat");
            let kind = if m.is_dir() {
                "d".to_string()
            } else if m.file_type().is_symlink() {
                format!(
                    "l -> {}",
                    std::fs::read_link(&path).expect("readlink").display()
                )
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

/// Waits until `ready` holds, failing the test if `child` ends first or time runs out.
pub(crate) fn wait_for(child: &mut std::process::Child, what: &str, ready: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !ready() {
        if let Some(status) = child.try_wait().expect("poll child") {
            panic!("hpcstage ended ({status}) before {what}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

/// `sha256sum -c MANIFEST.sha256` in `dir` (GNU coreutils, the reference).
#[track_caller]
pub(crate) fn assert_manifest_verifies(dir: &Path) {
    let mut cmd = run::clean("sha256sum");
    cmd.args(["--strict", "-c", "MANIFEST.sha256"])
        .current_dir(dir);
    let run = Run::of(cmd);
    assert!(
        run.code == Some(0) && !run.stdout.contains("FAILED"),
        "sha256sum -c MANIFEST.sha256 fails in {}\n{run}",
        dir.display()
    );
}

/// Runs `cmd` to the end and fails the test, with its stderr, unless it succeeded.
fn must_succeed(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A filesystem mounted for one test and unmounted when the guard drops.
pub(crate) struct Mount {
    pub(crate) path: PathBuf,
}

impl Mount {
    /// `mount -t FSTYPE -o OPTIONS FSTYPE PATH` (root only).
    pub(crate) fn new(fstype: &str, options: &str, path: &Path) -> Mount {
        std::fs::create_dir_all(path).expect("create mount point");
        must_succeed(
            Command::new("mount")
                .args(["-t", fstype, "-o", options, fstype])
                .arg(path),
            &format!("mount -t {fstype}"),
        );
        Mount {
            path: path.to_path_buf(),
        }
    }
}

impl Mount {
    /// A fresh ext4 filesystem of `mib` MiB in the image file `image` (no blocks reserved
    /// for root), loop-mounted at `path` (root only): a real disk filesystem, with direct
    /// I/O, that can be filled up.
    pub(crate) fn ext4_image(image: &Path, mib: u64, path: &Path) -> Mount {
        std::fs::File::create(image)
            .and_then(|f| f.set_len(mib << 20))
            .expect("create the image file");
        must_succeed(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0"])
                .arg(image),
            "mkfs.ext4",
        );
        std::fs::create_dir_all(path).expect("create mount point");
        must_succeed(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(image)
                .arg(path),
            &format!("mount -o loop {}", image.display()),
        );
        Mount {
            path: path.to_path_buf(),
        }
    }

    /// `mount -o remount,OPTIONS PATH`, e.g. to give a tmpfs more room.
    pub(crate) fn remount(&self, options: &str) {
        must_succeed(
            Command::new("mount")
                .args(["-o", &format!("remount,{options}")])
                .arg(&self.path),
            "remount",
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
