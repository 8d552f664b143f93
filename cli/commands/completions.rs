//! `hpcstage completions SHELL` and `hpcstage manpages DIR`: shell completions and man
//! pages generated from the clap definitions in `args/`, so they cannot drift from what
//! the binary accepts. `scripts/dist` ships both in the release tarball; users without a
//! packaged copy generate their own, as with rustup and uv.
//!
//! Neither reads the configuration: they must work before hpcstage is configured.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use super::ExitStatus;
use crate::args::Cli;
use crate::output;

/// Prints the completion script for `shell` to stdout.
pub(crate) fn completions(shell: Shell) -> ExitStatus {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "hpcstage", &mut script);
    output::data_bytes(&script);
    ExitStatus::Success
}

/// Writes `hpcstage.1` and one page per visible subcommand (`hpcstage-stage.1`,
/// `hpcstage-manifest-create.1`, ...) into `dir`, and lists them on stdout.
pub(crate) fn manpages(dir: &Path) -> Result<ExitStatus> {
    fs_err::create_dir_all(dir)
        .with_context(|| format!("cannot create the man page folder {}", dir.display()))?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    write_pages(cmd, dir, &mut written)?;
    for path in &written {
        output::data(path.display().to_string());
    }
    Ok(ExitStatus::Success)
}

/// The page of `cmd`, then those of its visible subcommands, depth first.
fn write_pages(cmd: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page)?;
    fs_err::File::create(&path)
        .and_then(|mut f| f.write_all(&page))
        .with_context(|| format!("cannot write the man page {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub.clone(), dir, written)?;
    }
    Ok(())
}
