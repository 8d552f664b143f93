//! The real test cluster (`tests/cluster/up.sh`): taking it for one test, running its
//! tools with a bound, and the job ids of a chain.
//!
//! Tests that submit jobs hold the cluster one at a time ([`cluster`]): the node has
//! 2 CPUs, so runs of different tests would only queue behind each other and blur the
//! timings the tests bound, and one test stops slurmctld.
#![allow(clippy::print_stderr)]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::run::Run;

static CLUSTER: Mutex<()> = Mutex::new(());

/// The test cluster, held by one test at a time.
pub(crate) struct Cluster {
    _guard: MutexGuard<'static, ()>,
}

/// Takes the test cluster for one test. A test failure when SLURM is not installed or
/// its controller does not answer; `None` (the test is skipped and counted) only under
/// `HPCSTAGE_TEST_SKIP=cluster` (see [`super::gate`]).
pub(crate) fn cluster() -> Option<Cluster> {
    if !super::gate::service(
        "cluster",
        which("sinfo").is_some(),
        "SLURM is not installed; start the test cluster with `bash tests/cluster/up.sh` (as root)",
    ) {
        return None;
    }
    // A test that failed while holding the cluster leaves the lock poisoned; the cluster
    // is fine.
    let guard = CLUSTER.lock().unwrap_or_else(PoisonError::into_inner);
    let ping = bounded("scontrol", &["ping"], 20);
    assert!(
        ping.code == Some(0) && ping.stdout.contains(" is UP"),
        "SLURM is installed but its controller does not answer `scontrol ping`; start the \
         test cluster with `bash tests/cluster/up.sh` (as root)\n{ping}"
    );
    wait_node_usable();
    Some(Cluster { _guard: guard })
}

/// Holds the cluster for the test (see [`cluster`]); leaves the test early only under
/// `HPCSTAGE_TEST_SKIP=cluster`.
#[allow(unused_macros)]
macro_rules! slurm_test {
    () => {
        match $crate::common::cluster::cluster() {
            Some(cluster) => cluster,
            None => return,
        }
    };
}
#[allow(unused_imports)]
pub(crate) use slurm_test;

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

/// `program` on PATH, executable.
pub(crate) fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
}

/// Runs a command under `timeout(1)` with the runner's environment, LC_ALL=C and without
/// the user's output format variables.
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
    Run::of(cmd)
}

/// What `stage-and-run --json` and `submit --json` print: the run and its job ids.
#[derive(Debug, Clone)]
pub(crate) struct Chain {
    pub(crate) run_id: String,
    pub(crate) run_dir: PathBuf,
    pub(crate) results_dir: PathBuf,
    pub(crate) compute_job: String,
    pub(crate) pull_job: Option<String>,
}

impl Chain {
    /// Reads the chain from the command's JSON output; fails when a field is missing.
    #[track_caller]
    pub(crate) fn of(run: &Run) -> Chain {
        let v = run.json();
        Chain::from_json(&v).unwrap_or_else(|k| panic!("no {k} in the JSON output\n{run}"))
    }

    /// The chain in `v`, or the name of the first field it lacks.
    pub(crate) fn from_json(v: &Value) -> Result<Chain, &'static str> {
        let s = |k: &'static str| v[k].as_str().map(str::to_string).ok_or(k);
        Ok(Chain {
            run_id: s("run_id")?,
            run_dir: s("run_dir")?.into(),
            results_dir: s("results_dir")?.into(),
            compute_job: s("compute_job")?,
            pull_job: v["pull_job"].as_str().map(str::to_string),
        })
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
