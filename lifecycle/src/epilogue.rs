//! Recording a job's end from SLURM's `Epilog` (or `TaskEpilog`), on the compute node.
//!
//! `Epilog` runs as root while the node stays COMPLETING; a failure or a hang drains the
//! node. So this code: drops to the job's user before it touches any file; calls no SLURM
//! command and moves no data; only reads the environment slurmd gives it and adds one
//! create-only event to the user's ledger. The caller bounds it in time and always exits 0.

use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid, User};

use crate::error::{Error, Result};
use crate::run::{Event, JobFacts, RunStore};

/// What slurmd tells an Epilog about the job (see the "Prolog and Epilog Guide").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpilogEnv {
    /// `SLURM_JOB_ID`: for an array task, the task's own job id, not the array's.
    pub job_id: String,
    /// `SLURM_ARRAY_JOB_ID` and `SLURM_ARRAY_TASK_ID`, set for array tasks: the id the
    /// run recorded at submission is the array's.
    pub array_job_id: Option<String>,
    pub array_task_id: Option<String>,
    pub user: Option<String>,
    pub uid: Option<u32>,
    /// `SLURM_JOB_EXIT_CODE2`: `exit:signal`.
    pub exit_code: Option<String>,
    /// `SLURM_JOB_DERIVED_EC`.
    pub derived_exit_code: Option<String>,
    pub gpus: Option<String>,
    pub partition: Option<String>,
    pub node: Option<String>,
}

impl EpilogEnv {
    /// Reads the environment; `None` when there is no job id (not run by slurmd).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let job_id = get("SLURM_JOB_ID").or_else(|| get("SLURM_JOBID"))?;
        Some(EpilogEnv {
            job_id,
            array_job_id: get("SLURM_ARRAY_JOB_ID"),
            array_task_id: get("SLURM_ARRAY_TASK_ID"),
            user: get("SLURM_JOB_USER"),
            uid: get("SLURM_JOB_UID").and_then(|u| u.parse().ok()),
            exit_code: get("SLURM_JOB_EXIT_CODE2").or_else(|| {
                get("SLURM_JOB_EXIT_CODE")
                    .and_then(|c| c.parse::<i32>().ok())
                    .map(|raw| format!("{}:{}", (raw >> 8) & 0xff, raw & 0x7f))
            }),
            derived_exit_code: get("SLURM_JOB_DERIVED_EC"),
            gpus: get("SLURM_JOB_GPUS"),
            partition: get("SLURM_JOB_PARTITION"),
            node: get("SLURMD_NODENAME").or_else(|| get("HOSTNAME")),
        })
    }
}

/// The user a job ran as, from the passwd database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobUser {
    pub name: String,
    pub uid: u32,
    pub home: PathBuf,
}

/// Becomes the job's user when running as root (group list first, then gid, then uid;
/// the reverse order would lose the right to change groups). Returns who that is.
pub fn drop_to_job_user(env: &EpilogEnv) -> Result<JobUser> {
    let unknown = |reason: String| Error::Record {
        path: PathBuf::from("/etc/passwd"),
        reason,
    };
    let user = match (&env.user, env.uid) {
        (Some(name), _) => User::from_name(name)
            .ok()
            .flatten()
            .ok_or_else(|| unknown(format!("unknown job user {name} (SLURM_JOB_USER)")))?,
        (None, Some(uid)) => User::from_uid(Uid::from_raw(uid))
            .ok()
            .flatten()
            .ok_or_else(|| unknown(format!("unknown job uid {uid} (SLURM_JOB_UID)")))?,
        (None, None) => {
            return Err(unknown(
                "neither SLURM_JOB_USER nor SLURM_JOB_UID is set: no job user to record for".into(),
            ))
        }
    };
    if Uid::effective().is_root() && !user.uid.is_root() {
        let name = std::ffi::CString::new(user.name.clone())
            .map_err(|_| unknown("user name holds a NUL byte".into()))?;
        let errno = |e: nix::errno::Errno| {
            Error::Staging(hpcstage_staging::Error::io("/proc/self", e.into()))
        };
        nix::unistd::initgroups(&name, user.gid).map_err(errno)?;
        nix::unistd::setgid(Gid::from_raw(user.gid.as_raw())).map_err(errno)?;
        nix::unistd::setuid(user.uid).map_err(errno)?;
    }
    Ok(JobUser {
        name: user.name,
        uid: user.uid.as_raw(),
        home: user.dir,
    })
}

/// The user's state folder when nothing says otherwise: `$XDG_STATE_HOME/hpcstage` with
/// XDG's default for `$XDG_STATE_HOME`, under the user's home.
pub fn default_state_dir(home: &Path) -> PathBuf {
    home.join(".local/state/hpcstage")
}

/// The user's own config file with XDG's default for `$XDG_CONFIG_HOME`.
pub fn default_user_config(home: &Path) -> PathBuf {
    home.join(".config/hpcstage/config.toml")
}

/// Finds the run a job belongs to and records its end. Returns the run id, or `None`
/// when the job is not one of hpcstage's.
pub fn record_job_end(state_dir: &Path, env: &EpilogEnv) -> Result<Option<String>> {
    let runs = state_dir.join("runs");
    if !runs.is_dir() {
        return Ok(None);
    }
    let store = RunStore::open(state_dir)?;
    // Newest runs first: the job that just ended belongs to a recent one.
    let mut ids = store.ids()?;
    ids.sort_by_key(|id| {
        std::fs::metadata(store.dir(id))
            .and_then(|m| m.modified())
            .ok()
            .map(std::cmp::Reverse)
    });
    // An array task is recorded as `<array job>_<task>`, the way sacct names it.
    let (base, job_id) = match (&env.array_job_id, &env.array_task_id) {
        (Some(array), Some(task)) => (array.as_str(), format!("{array}_{task}")),
        _ => (env.job_id.as_str(), env.job_id.clone()),
    };
    for id in ids {
        let Ok(view) = store.load(&id) else { continue };
        let Some(job) = view
            .jobs
            .iter()
            .find(|j| j.job_id == env.job_id || j.job_id == base)
        else {
            continue;
        };
        let facts = JobFacts {
            state: "ENDED".into(),
            exit_code: env.exit_code.clone(),
            derived_exit_code: env.derived_exit_code.clone(),
            nodes: env.node.clone(),
            partition: env.partition.clone(),
            alloc_tres: env.gpus.as_ref().map(|g| format!("gpus={g}")),
            ..JobFacts::default()
        };
        store.append(
            &id,
            Event::JobState {
                role: job.role,
                job_id,
                facts: Box::new(facts),
                observer: "epilogue".into(),
            },
        )?;
        return Ok(Some(id));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_epilog_environment() {
        let vars = [
            ("SLURM_JOB_ID", "42"),
            ("SLURM_JOB_USER", "alice"),
            ("SLURM_JOB_EXIT_CODE", "256"),
            ("SLURM_JOB_GPUS", "0,1"),
        ];
        let env = EpilogEnv::from_env(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap();
        assert_eq!(env.job_id, "42");
        assert_eq!(env.exit_code.as_deref(), Some("1:0"));
        assert_eq!(env.gpus.as_deref(), Some("0,1"));
        assert!(EpilogEnv::from_env(|_| None).is_none());
    }

    #[test]
    fn an_array_task_is_found_by_its_array_job_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(dir.path()).unwrap();
        let run = crate::run::new_record(
            "r1".into(),
            "P".into(),
            "unet-seg".into(),
            "1".into(),
            "h".into(),
            "segmentation".into(),
            Default::default(),
            crate::run::InputRef {
                stage_id: "P/d".into(),
                path: "/s/P/d".into(),
                manifest_digest: "x".into(),
                source: "/nas/P/raw/d".into(),
            },
            "/s/P/runs/r1".into(),
            "/nas/P/results/segmentation/r1".into(),
            crate::run::Executor::Slurm,
        );
        store.create(&run).unwrap();
        store
            .append(
                "r1",
                Event::Submitted {
                    role: crate::run::JobRole::Compute,
                    job_id: "120".into(),
                    token: String::new(),
                    array_size: Some(3),
                },
            )
            .unwrap();
        // Task 2 of array job 120 runs as job 123; its Epilog sees both ids.
        let vars = [
            ("SLURM_JOB_ID", "123"),
            ("SLURM_ARRAY_JOB_ID", "120"),
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_JOB_EXIT_CODE2", "0:0"),
        ];
        let env = EpilogEnv::from_env(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap();
        assert_eq!(
            record_job_end(dir.path(), &env).unwrap().as_deref(),
            Some("r1")
        );
        let view = store.load("r1").unwrap();
        let recorded = view.events.iter().find_map(|e| match &e.event {
            Event::JobState { job_id, .. } => Some(job_id.clone()),
            _ => None,
        });
        assert_eq!(recorded.as_deref(), Some("120_2"));
    }
}
