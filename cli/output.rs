//! The one printer: data to stdout (plain lines, tables or JSON), everything else to
//! stderr; a progress bar only when stderr is a terminal.
//!
//! All printing of the binary goes through here. A closed stdout (`hpcstage ... | head`)
//! ends the process quietly with success, as ripgrep does.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

static QUIET: AtomicBool = AtomicBool::new(false);

/// Silences notes and progress (errors and data still print).
pub(crate) fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// One line of data to stdout.
pub(crate) fn data(line: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{}", line.as_ref()) {
        exit_on_broken_pipe(&e);
    }
}

/// Raw bytes to stdout.
pub(crate) fn data_bytes(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        exit_on_broken_pipe(&e);
    }
}

/// Everything `reader` holds, to stdout.
pub(crate) fn data_from(mut reader: impl std::io::Read) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if let Err(e) = std::io::copy(&mut reader, &mut out).and_then(|_| out.flush()) {
        exit_on_broken_pipe(&e);
        return Err(e);
    }
    Ok(())
}

/// Pretty JSON to stdout.
pub(crate) fn json<T: Serialize>(value: &T) {
    let text = serde_json::to_string_pretty(value).expect("records serialize");
    data(text);
}

/// A note for humans on stderr (suppressed by --quiet).
pub(crate) fn note(msg: impl AsRef<str>) {
    if !quiet() {
        eprintln!("{}", msg.as_ref());
    }
}

/// A warning on stderr (always shown).
pub(crate) fn warn(msg: impl AsRef<str>) {
    eprintln!("warning: {}", msg.as_ref());
}

/// An error line on stderr (always shown).
pub(crate) fn error(msg: impl AsRef<str>) {
    eprintln!("error: {}", msg.as_ref());
}

fn exit_on_broken_pipe(e: &std::io::Error) {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
}

/// A table with the house style.
pub(crate) fn table(header: &[&str]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    if !std::io::stdout().is_terminal() || std::env::var_os("NO_COLOR").is_some() {
        t.force_no_tty();
    }
    t.set_header(header.to_vec());
    t
}

/// A progress bar for hashing and copying; draws only on a terminal.
pub(crate) struct Bar {
    bar: Option<ProgressBar>,
    files: AtomicU64,
    total_files: AtomicU64,
}

impl Bar {
    /// A bar labelled `label`, hidden when stderr is not a terminal, with --quiet or --json.
    pub(crate) fn new(label: &str, hidden: bool) -> Self {
        let show = !hidden && !quiet() && std::io::stderr().is_terminal();
        let bar = show.then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(8));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Bar {
            bar,
            files: AtomicU64::new(0),
            total_files: AtomicU64::new(0),
        }
    }

    /// Runs `f` with the bar off the screen (to print a line under it).
    pub(crate) fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(b) => b.suspend(f),
            None => f(),
        }
    }

    /// Removes the bar from the screen.
    pub(crate) fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl hpcstage_staging::progress::Progress for Bar {
    fn start(&self, files: u64, bytes: u64) {
        self.total_files.store(files, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.set_length(bytes);
        }
    }

    fn add_bytes(&self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.inc(bytes);
        }
    }

    fn add_file(&self) {
        let done = self.files.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(b) = &self.bar {
            if done.is_multiple_of(32) || done == self.total_files.load(Ordering::Relaxed) {
                b.set_message(format!(
                    "{done}/{} files",
                    self.total_files.load(Ordering::Relaxed)
                ));
            }
        }
    }

    fn phase(&self, name: &str) {
        if let Some(b) = &self.bar {
            b.set_prefix(name.to_string());
        }
    }
}

/// Bytes per second as text.
pub(crate) fn rate(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    format!(
        "{}/s",
        hpcstage_staging::human::bytes((bytes as f64 / secs) as u64)
    )
}
