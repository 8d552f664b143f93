//! `hpcstage epilogue`: SLURM's Epilog hook. Bounded in time, never fails the node.
//!
//! Whatever happens (no job id, unknown user, unreadable ledger, a hang), it reports on
//! stderr (slurmd's log) and returns success: a non-zero or hanging Epilog drains the node.

use std::time::Duration;

use hpcstage_lifecycle::epilogue::{
    default_state_dir, drop_to_job_user, record_job_end, EpilogEnv,
};

use super::Status;
use crate::args::{EpilogueArgs, GlobalArgs};
use crate::output;

pub(crate) fn run(global: &GlobalArgs, args: &EpilogueArgs) -> Status {
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
    let Some(env) = EpilogEnv::from_env(|k| std::env::var(k).ok()) else {
        output::error("hpcstage epilogue: no SLURM_JOB_ID in the environment; nothing to record");
        return Status::Success;
    };
    let home = match drop_to_job_user(&env) {
        Ok(home) => home,
        Err(e) => {
            output::error(format!("hpcstage epilogue: job {}: {e}", env.job_id));
            return Status::Success;
        }
    };
    let state_dir = global
        .state_dir
        .clone()
        .or_else(|| std::env::var_os("HPCSTAGE_STATE").map(Into::into))
        .or_else(|| home.as_deref().map(default_state_dir));
    let Some(state_dir) = state_dir else {
        return Status::Success;
    };
    match record_job_end(&state_dir, &env) {
        Ok(Some(run)) => output::note(format!(
            "hpcstage epilogue: job {} of run {run} recorded",
            env.job_id
        )),
        Ok(None) => {}
        Err(e) => output::error(format!("hpcstage epilogue: job {}: {e}", env.job_id)),
    }
    Status::Success
}
