//! The SLURM client against the real single-node cluster of `tests/cluster/`.
//!
//! Skipped (with the reason on stderr) only where SLURM is not installed at all; where
//! it is installed, a controller that does not answer is a failure: the test runner
//! starts the cluster first (`tests/cluster/up.sh`).

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hpcstage_slurm::client::{ClientSettings, SlurmClient, SubmitRequest};
use hpcstage_slurm::state::{ExitCode, JobId, JobInfo, JobState, Source};
use jiff::Timestamp;

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

fn settings() -> ClientSettings {
    ClientSettings {
        timeout: Duration::from_secs(30),
        retries: 3,
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_secs(2),
        ..ClientSettings::default()
    }
}

#[path = "../../tests/common/gate.rs"]
mod gate;

/// The client; a test failure when SLURM is not installed or does not answer, `None`
/// (the test is skipped and counted) only under `HPCSTAGE_TEST_SKIP=cluster`.
fn cluster() -> Option<SlurmClient> {
    if !gate::service(
        "cluster",
        on_path("sinfo").is_some(),
        "SLURM is not installed (no `sinfo` on PATH); start the test cluster with \
         `bash tests/cluster/up.sh` (as root)",
    ) {
        return None;
    }
    let client = SlurmClient::new(settings());
    assert!(
        client.available(),
        "`sinfo` is installed but `sbatch` is not"
    );
    let up = client.ping().expect("`scontrol ping` could not run");
    assert!(
        up,
        "SLURM is installed but slurmctld does not answer `scontrol ping`: \
         start the test cluster with tests/cluster/up.sh"
    );
    Some(client)
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, format!("#!/bin/bash\n{body}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn request(dir: &Path, script: PathBuf, name: &str, args: &[&str]) -> SubmitRequest {
    let mut req = SubmitRequest::new(script);
    req.workdir = Some(dir.to_owned());
    req.name = Some(name.to_owned());
    req.args = args.iter().map(|a| (*a).to_owned()).collect();
    req.args
        .push(format!("--output={}/slurm-%j.out", dir.display()));
    req
}

/// Polls `query` until every job is terminal (and known to accounting, which has the
/// exit codes and TRES), or fails after two minutes saying what it saw last.
fn wait_terminal(client: &SlurmClient, ids: &[JobId], since: Timestamp) -> HashMap<JobId, JobInfo> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = client.query_since(ids, since).expect("query");
        let done = got
            .values()
            .all(|j| j.state.is_terminal() && j.source == Source::Sacct);
        if done {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "jobs not finished after 120 s: {:#?}",
            got.values()
                .map(|j| format!("{} {} {:?}", j.id, j.state, j.reason))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn controller_answers_ping() {
    let Some(client) = cluster() else { return };
    assert!(client.ping().unwrap());
}

#[test]
fn a_trivial_job_completes_on_debug() {
    let Some(client) = cluster() else { return };
    let dir = tempfile::tempdir().unwrap();
    let since = Timestamp::now();
    let req = request(
        dir.path(),
        script(dir.path(), "ok.sh", "echo hello from $SLURM_JOB_ID"),
        "hpcstage-it-debug",
        &["--partition=debug"],
    );
    let sub = client.submit(&req).unwrap();
    assert!(!sub.found_by_lookup);
    let got = wait_terminal(&client, &[sub.id], since);
    let job = &got[&sub.id];
    assert_eq!(job.state, JobState::Completed, "{job:#?}");
    assert_eq!(
        job.exit_code,
        Some(ExitCode {
            status: 0,
            signal: 0
        })
    );
    assert_eq!(job.nodes.as_deref(), Some("localhost"));
    assert_eq!(job.partition.as_deref(), Some("debug"));
    assert_eq!(job.name, "hpcstage-it-debug");
    assert!(job.start.is_some() && job.end.is_some(), "{job:#?}");
    let out = fs::read_to_string(dir.path().join(format!("slurm-{}.out", sub.id))).unwrap();
    assert_eq!(out, format!("hello from {}\n", sub.id));
}

#[test]
fn a_gpu_job_gets_its_gpu_in_alloc_tres() {
    let Some(client) = cluster() else { return };
    let dir = tempfile::tempdir().unwrap();
    let since = Timestamp::now();
    let req = request(
        dir.path(),
        script(dir.path(), "gpu.sh", "echo gpu $CUDA_VISIBLE_DEVICES"),
        "hpcstage-it-gpu",
        &["--partition=gpu", "--gres=gpu:1"],
    );
    let sub = client.submit(&req).unwrap();
    let got = wait_terminal(&client, &[sub.id], since);
    let job = &got[&sub.id];
    assert_eq!(job.state, JobState::Completed, "{job:#?}");
    assert_eq!(job.exit_code, Some(ExitCode::default()));
    assert_eq!(job.nodes.as_deref(), Some("localhost"));
    let tres = job.alloc_tres.as_deref().unwrap_or_default();
    assert!(tres.contains("gres/gpu=1"), "AllocTRES {tres:?}");
    assert_eq!(job.gpus, 1);
}

#[test]
fn a_failing_job_is_failed_with_its_exit_code() {
    let Some(client) = cluster() else { return };
    let dir = tempfile::tempdir().unwrap();
    let since = Timestamp::now();
    let req = request(
        dir.path(),
        script(dir.path(), "fail.sh", "exit 3"),
        "hpcstage-it-fail",
        &[],
    );
    let sub = client.submit(&req).unwrap();
    let got = wait_terminal(&client, &[sub.id], since);
    let job = &got[&sub.id];
    assert_eq!(job.state, JobState::Failed, "{job:#?}");
    assert_eq!(
        job.exit_code,
        Some(ExitCode {
            status: 3,
            signal: 0
        })
    );
    assert!(!job.state.is_success());
}

#[test]
fn a_cancelled_job_is_cancelled() {
    let Some(client) = cluster() else { return };
    let dir = tempfile::tempdir().unwrap();
    let since = Timestamp::now();
    let req = request(
        dir.path(),
        script(dir.path(), "sleep.sh", "sleep 300"),
        "hpcstage-it-cancel",
        &[],
    );
    let sub = client.submit(&req).unwrap();
    client.cancel(sub.id).unwrap();
    let got = wait_terminal(&client, &[sub.id], since);
    let job = &got[&sub.id];
    // sacct says who cancelled: us (the temp dir is ours).
    let uid = fs::metadata(dir.path()).unwrap().uid();
    assert_eq!(job.state, JobState::Cancelled { by: Some(uid) }, "{job:#?}");
    assert_eq!(job.state.to_string(), format!("CANCELLED by {uid}"));
    // Cancelling a finished job again is not an error.
    client.cancel(sub.id).unwrap();
}

#[test]
fn an_array_job_reports_every_task() {
    let Some(client) = cluster() else { return };
    let dir = tempfile::tempdir().unwrap();
    let since = Timestamp::now();
    let req = request(
        dir.path(),
        script(
            dir.path(),
            "arr.sh",
            "test \"$SLURM_ARRAY_TASK_ID\" != 2 || exit 5",
        ),
        "hpcstage-it-array",
        &["--array=1-3"],
    );
    let sub = client.submit(&req).unwrap();
    let got = wait_terminal(&client, &[sub.id], since);
    let job = &got[&sub.id];
    assert_eq!(job.tasks.len(), 3, "{job:#?}");
    let states: Vec<String> = job
        .tasks
        .iter()
        .map(|t| format!("{}={}", t.job_ref(), t.state))
        .collect();
    assert_eq!(
        states,
        vec![
            format!("{}_1=COMPLETED", sub.id),
            format!("{}_2=FAILED", sub.id),
            format!("{}_3=COMPLETED", sub.id),
        ]
    );
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(
        job.exit_code,
        Some(ExitCode {
            status: 5,
            signal: 0
        })
    );
}

#[test]
fn an_unknown_job_is_not_found_not_completed() {
    let Some(client) = cluster() else { return };
    let id = JobId(66_000_000);
    let got = client.query(&[id]).unwrap();
    assert_eq!(got[&id], JobInfo::not_found(id));
    assert!(!got[&id].state.is_terminal());
}

/// An `sbatch` that submits and then hangs (a wrapper first on the client's PATH):
/// the client times out, finds the job by its token and does not submit it again.
#[test]
fn a_hung_sbatch_that_submitted_is_not_submitted_twice() {
    let Some(_) = cluster() else { return };
    let real_sbatch = on_path("sbatch").unwrap();
    let bin = tempfile::tempdir().unwrap();
    for name in ["sacct", "squeue", "scontrol", "scancel"] {
        std::os::unix::fs::symlink(on_path(name).unwrap(), bin.path().join(name)).unwrap();
    }
    script(
        bin.path(),
        "sbatch",
        &format!(
            "echo \"$*\" >> \"$(dirname \"$0\")/sbatch.calls\"\n\"{}\" \"$@\"\nsleep 100000",
            real_sbatch.display()
        ),
    );
    let client = SlurmClient::new(ClientSettings {
        timeout: Duration::from_secs(5),
        bin_dir: Some(bin.path().to_owned()),
        ..settings()
    });
    let dir = tempfile::tempdir().unwrap();
    let since = Timestamp::now();
    let mut req = request(
        dir.path(),
        script(dir.path(), "ok.sh", "true"),
        "hpcstage-it-hung",
        &[],
    );
    req.name = Some(req.token.clone());
    let sub = client.submit(&req).unwrap();
    assert!(sub.found_by_lookup, "{sub:?}");
    assert_eq!(sub.attempts, 1);
    let calls = fs::read_to_string(bin.path().join("sbatch.calls")).unwrap();
    assert_eq!(
        calls.lines().count(),
        1,
        "sbatch ran more than once: {calls}"
    );

    // Exactly one job carries the token, as the controller sees it...
    let out = std::process::Command::new(on_path("squeue").unwrap())
        .args(["--noheader", "--all", "--states=all", "--format=%i|%k"])
        .env("LC_ALL", "C")
        .env_remove("SQUEUE_FORMAT")
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    let with_token: Vec<&str> = listed
        .lines()
        .filter(|l| l.trim().ends_with(&format!("|{}", req.token)))
        .collect();
    assert_eq!(with_token, vec![format!("{}|{}", sub.id, req.token)]);
    // ...and as accounting sees it once the job is over.
    wait_terminal(&client, &[sub.id], since);
    let out = std::process::Command::new(on_path("sacct").unwrap())
        .args([
            "-X",
            "--parsable2",
            "--noheader",
            "--starttime=now-1hour",
            "--format=JobID",
        ])
        .arg(format!("--name={}", req.token))
        .env("LC_ALL", "C")
        .env_remove("SACCT_FORMAT")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        sub.id.to_string()
    );
}
