//! `hpcstage epilogue`: SLURM's Epilog hook. Bounded in time, never fails the node.
//!
//! Whatever happens (no job id, unknown user, unreadable ledger, a hang), it reports on
//! stderr (slurmd's log) and returns success: a non-zero or hanging Epilog drains the node.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hpcstage_lifecycle::epilogue::{
    default_state_dir, default_user_config, drop_to_job_user, record_job_end, EpilogEnv,
};

use super::ExitStatus;
use crate::args::{EpilogueArgs, GlobalArgs};
use crate::output;

pub(crate) fn run(global: &GlobalArgs, args: &EpilogueArgs) -> ExitStatus {
    let limit: Duration = args.timeout.into();
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        // Straight to fd 2 and _exit: the main thread may hang holding stderr's lock or
        // inside libc (an NSS lookup, a dead NFS server), and exit() would wait on both.
        let msg = format!("hpcstage epilogue: gave up after {limit:?}\n");
        // SAFETY: write(2) on a valid buffer and _exit(2) have no preconditions; nothing
        // runs after _exit, so no Rust state is left half-updated.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(0);
        }
    });
    let verbose = args.verbose;
    let say = |msg: String| {
        if verbose {
            output::note(format!("hpcstage epilogue: {msg}"));
        }
    };
    let Some(env) = EpilogEnv::from_env(|k| std::env::var(k).ok()) else {
        output::error("hpcstage epilogue: no SLURM_JOB_ID in the environment; nothing to record");
        return ExitStatus::Success;
    };
    let user = match drop_to_job_user(&env) {
        Ok(user) => user,
        Err(e) => {
            output::error(format!("hpcstage epilogue: job {}: {e}", env.job_id));
            return ExitStatus::Success;
        }
    };
    say(format!(
        "job {}{}: user {} (uid {}), home {}; running as uid {}",
        env.job_id,
        match (&env.array_job_id, &env.array_task_id) {
            (Some(a), Some(t)) => format!(" (array task {a}_{t})"),
            _ => String::new(),
        },
        user.name,
        user.uid,
        user.home.display(),
        nix::unistd::geteuid()
    ));
    let (state_dir, why) = job_user_state_dir(global, &user.home);
    say(format!("state folder {} ({why})", state_dir.display()));
    match record_job_end(&state_dir, &env) {
        Ok(Some(run)) => output::note(format!(
            "hpcstage epilogue: job {} of run {run} recorded",
            env.job_id
        )),
        Ok(None) => say(format!(
            "no run in {} holds job {}: not an hpcstage job, or another state folder",
            state_dir.display(),
            env.job_id
        )),
        Err(e) => output::error(format!("hpcstage epilogue: job {}: {e}", env.job_id)),
    }
    ExitStatus::Success
}

/// The job user's state folder, found as that user's own `hpcstage` would find it, with
/// why: `--state-dir`, then `$HPCSTAGE_STATE` (which slurmd passes to a TaskEpilog but not
/// to an Epilog), then `state_dir` in the user's config (`~/.config/hpcstage/config.toml`)
/// or the site's, then the XDG default under the user's home. Read after dropping to the
/// user, so only what the user may read is read; a config that does not parse is passed
/// over (a broken file must not fail the Epilog).
fn job_user_state_dir(global: &GlobalArgs, home: &Path) -> (PathBuf, String) {
    if let Some(dir) = &global.state_dir {
        return (dir.clone(), "--state-dir".into());
    }
    if let Some(dir) = std::env::var_os("HPCSTAGE_STATE").filter(|v| !v.is_empty()) {
        return (dir.into(), "$HPCSTAGE_STATE".into());
    }
    let site = std::env::var_os("HPCSTAGE_SITE_CONFIG")
        .map_or_else(|| PathBuf::from("/etc/hpcstage/config.toml"), PathBuf::from);
    for file in [default_user_config(home), site] {
        if let Some(dir) = configured_state_dir(&file) {
            return (dir, format!("state_dir in {}", file.display()));
        }
    }
    (
        default_state_dir(home),
        "the default under the job user's home".into(),
    )
}

/// `state_dir` of a config file, when it has one and parses.
fn configured_state_dir(file: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(file).ok()?;
    let table: toml::Table = text.parse().ok()?;
    table
        .get("state_dir")?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
}
