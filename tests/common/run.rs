//! Running commands: the built binary with an isolated environment, other tools with a
//! clean one, and the outcome of each with everything needed to explain a failed
//! assertion.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The runner's PATH (a plain default when it has none).
pub(crate) fn inherited_path() -> OsString {
    std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into())
}

/// The built binary, run from `root` with an emptied environment plus HOME, the XDG
/// folders and the site config inside `root` and the ledger at `state`, so nothing of the
/// machine's own configuration leaks in. Worlds add their own variables.
pub(crate) fn hpcstage(root: &Path, state: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hpcstage"));
    cmd.env_clear()
        .env("PATH", inherited_path())
        .env("HOME", root.join("home"))
        .env("XDG_CONFIG_HOME", root.join("xdg-config"))
        .env("XDG_STATE_HOME", root.join("xdg-state"))
        .env("HPCSTAGE_STATE", state)
        .env("HPCSTAGE_SITE_CONFIG", root.join("site.toml"))
        .env("LC_ALL", "C")
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// `program` with an emptied environment but for PATH and LC_ALL=C.
pub(crate) fn clean(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", inherited_path())
        .env("LC_ALL", "C")
        .stdin(Stdio::null());
    cmd
}

/// Passes `$SLURM_CONF` on, when the runner has it (the test cluster's `env.sh`).
pub(crate) fn pass_slurm_conf(cmd: &mut Command) {
    if let Some(conf) = std::env::var_os("SLURM_CONF") {
        cmd.env("SLURM_CONF", conf);
    }
}

/// Runs an external tool to the end with a clean environment (LC_ALL=C, no SLURM format
/// variables, `$SLURM_CONF` passed on).
pub(crate) fn tool(program: &str, args: &[&str]) -> Run {
    let mut cmd = clean(program);
    cmd.args(args);
    pass_slurm_conf(&mut cmd);
    Run::of(cmd)
}

/// The command line, quoted, for failure messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&format!("{:?}", a.to_string_lossy()));
    }
    s
}

/// Waits for `child` at most `bound`; kills it and fails when it takes longer.
pub(crate) fn wait_child(shown: &str, mut child: Child, bound: Duration) -> Run {
    let started = Instant::now();
    loop {
        if child.try_wait().expect("poll child").is_some() {
            let out = child.wait_with_output().expect("collect child output");
            return Run::from_output(shown.to_string(), out, started.elapsed());
        }
        if started.elapsed() > bound {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect child output");
            panic!(
                "still running after {bound:?}\n{}",
                Run::from_output(shown.to_string(), out, started.elapsed())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Replaces the world's path by `[ROOT]`.
pub(crate) fn mask_root(text: &str, root: &Path) -> String {
    text.replace(&*root.to_string_lossy(), "[ROOT]")
}

/// The outcome of one command, with everything needed to explain a failed assertion.
pub(crate) struct Run {
    pub(crate) command: String,
    pub(crate) code: Option<i32>,
    pub(crate) signal: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) elapsed: Duration,
    /// The world the command ran in; empty when its path is left as it is in the output.
    root: PathBuf,
    mask: fn(&str, &Path) -> String,
}

impl Run {
    /// Runs a prepared command to the end.
    pub(crate) fn of(mut cmd: Command) -> Run {
        let shown = describe(&cmd);
        let started = Instant::now();
        let out = cmd.output().unwrap_or_else(|e| panic!("run {shown}: {e}"));
        Run::from_output(shown, out, started.elapsed())
    }

    pub(crate) fn from_output(command: String, out: Output, elapsed: Duration) -> Run {
        use std::os::unix::process::ExitStatusExt;
        Run {
            command,
            code: out.status.code(),
            signal: out.status.signal(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed,
            root: PathBuf::new(),
            mask: mask_root,
        }
    }

    /// The same outcome, with `root` replaced by `[ROOT]` in [`Run::out`] and [`Run::err`].
    pub(crate) fn in_world(mut self, root: &Path) -> Run {
        self.root = root.to_path_buf();
        self
    }

    /// The same outcome, with `mask` (given the text and the world) in place of
    /// [`mask_root`] for [`Run::out`] and [`Run::err`].
    pub(crate) fn masked_by(mut self, mask: fn(&str, &Path) -> String) -> Run {
        self.mask = mask;
        self
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

    /// The world the command ran in.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    fn masked(&self, text: &str) -> String {
        if self.root.as_os_str().is_empty() {
            return text.to_string();
        }
        (self.mask)(text, &self.root)
    }

    /// Standard output with the world's path replaced by `[ROOT]` (and whatever else the
    /// world masks).
    pub(crate) fn out(&self) -> String {
        self.masked(&self.stdout)
    }

    /// Standard error, masked like [`Run::out`].
    pub(crate) fn err(&self) -> String {
        self.masked(&self.stderr)
    }

    /// Standard output parsed as JSON.
    #[track_caller]
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{self}"))
    }

    /// Asserts that standard output holds `needle` (after masking).
    #[track_caller]
    pub(crate) fn out_has(&self, needle: &str) -> &Run {
        assert!(
            self.out().contains(needle),
            "stdout lacks {needle:?}\n{self}"
        );
        self
    }

    /// Asserts that standard error holds `needle` (after masking).
    #[track_caller]
    pub(crate) fn err_has(&self, needle: &str) -> &Run {
        assert!(
            self.err().contains(needle),
            "stderr lacks {needle:?}\n{self}"
        );
        self
    }

    /// Asserts that standard error does not hold `needle` (after masking).
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
            "--- command ({:.1?}) ---\n{}\n--- exit code {:?} ---\n--- stdout ---\n{}--- stderr ---\n{}--- end ---",
            self.elapsed, self.command, self.code, self.stdout, self.stderr
        )
    }
}

/// The doctor's line for `check` (`status` padded to 4, two spaces, the check's name).
#[track_caller]
pub(crate) fn doctor_line<'a>(run: &'a Run, check: &str) -> &'a str {
    run.stdout
        .lines()
        .find(|l| {
            l.get(6..)
                .is_some_and(|rest| rest.starts_with(&format!("{check} ")))
        })
        .unwrap_or_else(|| panic!("no line for {check:?}\n{run}"))
}

#[track_caller]
pub(crate) fn assert_doctor_line(run: &Run, check: &str, status: &str, needle: &str) {
    let l = doctor_line(run, check);
    assert!(
        l.starts_with(&format!("{status:<4}  ")) && l.contains(needle),
        "expected {status} with {needle:?} for {check}, got:\n{l}\n{run}"
    );
}
