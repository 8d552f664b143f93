//! Staging spread across transfer nodes (`stage --shards N`, issue 18) on the real test
//! cluster (`bash tests/cluster/up.sh`: three transfer nodes xfer1..3, one slurmd each):
//! the shards run as array tasks on different nodes, the final task merges them into a
//! stage that GNU `sha256sum -c` verifies, and a node lost mid-stage (its slurmd and the
//! task's processes killed) ends, after SLURM's requeue, in a complete verified stage.
//!
//! The balance of the split is unit-tested in `staging/src/shard.rs`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cluster::{bounded, slurm_test, Chain};
use common::fs::{tiny_mask_function, tiny_tiff};
use common::s3::S3World;
use common::slurm::{World, CHAIN_TIMEOUT};
use common::sshd::Sshd;
use common::{assert_final_names_match_source, assert_manifest_verifies, noise, read_text};
use serde_json::Value;

/// How long a sharded stage may take; a node loss adds SlurmdTimeout (30 s) and SLURM's
/// hold of a requeued job (about 2 minutes).
const STAGE_TIMEOUT: Duration = Duration::from_secs(180);
const NODE_LOSS_TIMEOUT: Duration = Duration::from_secs(420);

fn transfer_nodes() -> BTreeSet<String> {
    std::env::var("HPCSTAGE_CLUSTER_TRANSFER_NODES")
        .unwrap_or_else(|_| "xfer1 xfer2 xfer3".into())
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// A dataset of `files` files of `size` bytes each (a little more for later ones), in
/// four folders, ingested as project P; returns the raw dataset.
fn dataset(world: &World, name: &str, files: u64, size: usize) -> PathBuf {
    let contents: Vec<(String, Vec<u8>)> = (0..files)
        .map(|i| {
            (
                format!("well{}/img{i:04}.tif", i % 4),
                noise(i, size + 97 * i as usize),
            )
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = contents
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice()))
        .collect();
    world.dataset(name, &refs)
}

/// `hpcstage stage RAW --shards N --json`: the array job and the final job.
fn stage_shards(world: &World, raw: &Path, n: u32) -> (String, String, Value) {
    let run = world.run([
        OsStr::new("stage"),
        raw.as_os_str(),
        OsStr::new("--shards"),
        OsStr::new(&n.to_string()),
        OsStr::new("--json"),
    ]);
    run.code(0);
    let v = run.json();
    let id = |k: &str| {
        v[k].as_str()
            .unwrap_or_else(|| panic!("no {k} in\n{run}"))
            .to_string()
    };
    (id("array_job"), id("final_job"), v)
}

/// `sacct -X` lines `JobID|State|NodeList` of `job` (with `-D`: every attempt).
fn sacct(job: &str, attempts: bool) -> Vec<(String, String, String)> {
    let mut args = vec![
        "-X",
        "--parsable2",
        "--noheader",
        "--format=JobID,State,NodeList",
        "-j",
        job,
    ];
    if attempts {
        args.push("-D");
    }
    bounded("sacct", &args, 30)
        .stdout
        .lines()
        .filter_map(|l| {
            let mut f = l.split('|');
            Some((f.next()?.into(), f.next()?.into(), f.next()?.into()))
        })
        .collect()
}

/// The rows of `sacct` for `job` once `settled` holds for them, or after a minute (the
/// caller's assertions then show what accounting had). The database learns of array tasks
/// and requeues a little after the controller does.
fn sacct_settled(
    job: &str,
    attempts: bool,
    settled: impl Fn(&[(String, String, String)]) -> bool,
) -> Vec<(String, String, String)> {
    let started = Instant::now();
    loop {
        let rows = sacct(job, attempts);
        if settled(&rows) || started.elapsed() > Duration::from_secs(60) {
            return rows;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Waits until accounting has `job` ended; returns its state. Fails after `timeout`,
/// with the queue and the shard logs.
fn wait_ended(job: &str, dest: &Path, timeout: Duration) -> String {
    let started = Instant::now();
    loop {
        let state = sacct(job, false)
            .first()
            .map(|l| l.1.clone())
            .unwrap_or_default();
        let running = state.is_empty()
            || [
                "PENDING",
                "RUNNING",
                "REQUEUED",
                "COMPLETING",
                "CONFIGURING",
            ]
            .iter()
            .any(|s| state.starts_with(s));
        if !running {
            return state;
        }
        if started.elapsed() > timeout {
            panic!(
                "job {job} did not end within {timeout:?} (state {state:?})\n--- queue ---\n{}\n--- logs ---\n{}",
                bounded("squeue", &["--all"], 20).stdout,
                logs(dest)
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The shard jobs' logs of a destination.
fn logs(dest: &Path) -> String {
    let dir = dest.join(".hpcstage/shard-jobs");
    let mut out = String::new();
    let mut names: Vec<PathBuf> = fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    names.sort();
    for p in names
        .into_iter()
        .filter(|p| p.extension() == Some(OsStr::new("out")))
    {
        out.push_str(&format!("== {}\n{}\n", p.display(), read_text(&p)));
    }
    out
}

/// The stage in `dest` is complete: its record has no `incomplete`, no shard folder or
/// temporary is left, GNU `sha256sum -c` accepts its manifest and every file equals the
/// source's.
#[track_caller]
fn assert_complete_stage(raw: &Path, dest: &Path, files: usize) {
    let record: Value =
        serde_json::from_str(&read_text(dest.join(".hpcstage/stage.json"))).expect("stage.json");
    assert!(record["incomplete"].is_null(), "{record:#}\n{}", logs(dest));
    // The images and the dataset.json of `ingest` (the destination writes its own
    // MANIFEST.sha256).
    assert_eq!(record["files"], files as u64 + 1, "{record:#}");
    assert!(
        !dest.join(".hpcstage/shards").exists(),
        "shard folders left"
    );
    assert_manifest_verifies(dest);
    assert_eq!(assert_final_names_match_source(raw, dest), files + 1);
}

#[test]
fn shards_run_on_different_transfer_nodes_and_the_merged_stage_is_the_source() {
    let _cluster = slurm_test!();
    let world = World::new();
    let raw = dataset(&world, "plate", 90, 20_000);
    let (array, last, plan) = stage_shards(&world, &raw, 3);
    let dest = world.scratch().join("P/plate");

    // While its final task has not ended, a second sharded stage into the same place is
    // refused and leaves the plan the tasks copy from as it is.
    let held = Held::new(&last);
    let lists = shard_lists(&dest);
    world
        .run([
            OsStr::new("stage"),
            raw.as_os_str(),
            OsStr::new("--shards"),
            OsStr::new("2"),
        ])
        .code(1)
        .err_has("is under way")
        .err_has(&format!("final job {last} (PENDING)"))
        .err_has(&format!("scancel {last} {array}"));
    assert_eq!(shard_lists(&dest), lists);
    // Meanwhile the stage is tracked, as incomplete, naming the job it waits for.
    let status = world.run(["status", "--json"]);
    status.code(0);
    let items = status.json()["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let tracked = items
        .iter()
        .find(|i| i["path"] == dest.display().to_string())
        .unwrap_or_else(|| {
            panic!(
                "{} not tracked while its shards run:\n{status}",
                dest.display()
            )
        });
    assert_eq!(tracked["safety"], "INCOMPLETE", "{tracked}");
    assert!(
        tracked["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&format!("final job {last}"))),
        "{tracked}"
    );
    drop(held);

    let files: Vec<u64> = plan["shards"]
        .as_array()
        .expect("shards in the JSON")
        .iter()
        .map(|s| s["files"].as_u64().unwrap())
        .collect();
    // 90 images and dataset.json, 30 or 31 a shard.
    assert_eq!(files.iter().sum::<u64>(), 91, "{plan:#}");
    assert!(files.iter().all(|&f| f == 30 || f == 31), "{plan:#}");

    assert_eq!(wait_ended(&last, &dest, STAGE_TIMEOUT), "COMPLETED");
    let tasks = sacct_settled(&array, false, |t| {
        t.len() == 3 && t.iter().all(|r| r.1 == "COMPLETED")
    });
    assert_eq!(tasks.len(), 3, "{tasks:?}");
    let nodes: BTreeSet<String> = tasks.iter().map(|t| t.2.clone()).collect();
    for (id, state, node) in &tasks {
        assert_eq!(state, "COMPLETED", "{id}: {tasks:?}");
        assert!(transfer_nodes().contains(node), "{id} ran on {node}");
    }
    // Three single-CPU transfer nodes: the tasks spread (other jobs on the partition may
    // make two of them share one node, one after the other).
    assert!(nodes.len() >= 2, "all shards ran on one node: {tasks:?}");
    let final_node = &sacct_settled(&last, false, |t| !t.is_empty())[0];
    assert!(transfer_nodes().contains(&final_node.2), "{final_node:?}");
    assert_complete_stage(&raw, &dest, 90);

    // Each task said which shard it copied, on which node, how much and how fast.
    let log = logs(&dest);
    for i in 0..3 {
        assert!(
            log.contains(&format!("shard {i}: verified on xfer")),
            "{log}"
        );
    }
    // A second sharded stage of the same source has nothing left to copy.
    let (_, last, again) = stage_shards(&world, &raw, 3);
    let planned: u64 = again["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["files"].as_u64().unwrap())
        .sum();
    assert_eq!(planned, 0, "{again:#}");
    assert_eq!(wait_ended(&last, &dest, STAGE_TIMEOUT), "COMPLETED");
    assert_complete_stage(&raw, &dest, 90);
}

/// A sharded stage whose source is an S3 NAS: the tasks on the transfer nodes read the
/// bucket with the submitter's credentials (passed in the job's environment, never in a
/// script), and the merged stage is the dataset; a prefix without its MANIFEST.sha256 is
/// refused before any job is submitted.
#[test]
fn a_sharded_stage_from_an_s3_nas_is_the_dataset_and_an_incomplete_prefix_submits_nothing() {
    let _cluster = slurm_test!();
    let Some(s3) = S3World::new("shards") else {
        return;
    };
    let world = World::new();
    world.configure(&format!(
        "[s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\n",
        common::s3::endpoint()
    ));
    let raw = dataset(&world, "plate", 40, 5_000);
    let bucket = common::s3::plain_bucket();
    s3.upload(&raw, &bucket, "P/raw/plate");
    let with_s3 = |args: &[&str]| {
        let mut cmd = world.command();
        cmd.envs(common::s3::credentials(
            &common::s3::access_key(),
            &common::s3::secret_key(),
        ))
        .args(args);
        common::Run::of(cmd).in_world(&world.root)
    };

    let partial = world.scratch().join("P/partial");
    s3.upload(&raw.join("well0"), &bucket, "P/raw/partial/well0");
    with_s3(&[
        "stage",
        &s3.url(&bucket, "P/raw/partial"),
        &partial.display().to_string(),
        "--shards",
        "2",
    ])
    .code(1)
    .err_has("has no MANIFEST.sha256: it is an incomplete upload, not a dataset");
    assert!(
        !partial.join(".hpcstage/shard-jobs/jobs.json").exists(),
        "jobs were submitted for an incomplete prefix"
    );

    let dest = world.scratch().join("P/plate");
    let run = with_s3(&[
        "stage",
        &s3.url(&bucket, "P/raw/plate"),
        &dest.display().to_string(),
        "--shards",
        "2",
        "--json",
    ]);
    run.code(0);
    let plan = run.json();
    let last = plan["final_job"].as_str().expect("final_job").to_string();
    for script in ["shards.sbatch", "merge.sbatch"] {
        let text = read_text(dest.join(".hpcstage/shard-jobs").join(script));
        assert!(
            !text.contains(&common::s3::secret_key()),
            "{script} holds the secret key"
        );
    }
    assert_eq!(wait_ended(&last, &dest, STAGE_TIMEOUT), "COMPLETED");
    assert_complete_stage(&raw, &dest, 40);
    s3.assert_no_multipart_uploads(&bucket);
}

/// A sharded stage whose source is a NAS reached over SSH: each task connects from its
/// transfer node with the submitter's key and known hosts, and the merged stage is the
/// dataset.
#[test]
fn a_sharded_stage_from_a_nas_over_ssh_is_the_dataset() {
    let _cluster = slurm_test!();
    let world = World::new();
    let sshd = Sshd::start(&world);
    let raw = dataset(&world, "plate", 40, 5_000);
    let nas = sshd.remote_dir(&world, "ssh-nas/P/raw");
    world
        .sh(
            &world.root,
            &format!("cp -a '{}' '{}'", raw.display(), nas.display()),
        )
        .code(0);
    sshd.give_to_login_user(&nas);
    let dest = world.scratch().join("P/plate");
    let run = world.run([
        "stage",
        &sshd.spec(&nas.join("plate")),
        &dest.display().to_string(),
        "--shards",
        "2",
        "--json",
    ]);
    run.code(0);
    let last = run.json()["final_job"]
        .as_str()
        .expect("final_job")
        .to_string();
    assert_eq!(wait_ended(&last, &dest, STAGE_TIMEOUT), "COMPLETED");
    assert_complete_stage(&raw, &dest, 40);
    let log = logs(&dest);
    for i in 0..2 {
        assert!(
            log.contains(&format!("shard {i}: verified on xfer")),
            "{log}"
        );
    }
}

/// `scontrol hold` of a job until dropped (released even when the test fails).
struct Held(String);

impl Held {
    fn new(job: &str) -> Self {
        let out = bounded("scontrol", &["hold", job], 20);
        assert_eq!(out.code, Some(0), "scontrol hold {job}: {out}");
        Held(job.to_string())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        bounded("scontrol", &["release", &self.0], 20);
    }
}

/// The plan and the shard lists of a sharded stage into `dest`, by name.
fn shard_lists(dest: &Path) -> BTreeMap<String, String> {
    fs::read_dir(dest.join(".hpcstage/shard-jobs"))
        .expect("the shard jobs folder")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        // The plan and the lists; not the tasks' results (`<i>.json`), which a task that
        // runs meanwhile writes.
        .filter(|p| {
            p.extension() == Some(OsStr::new("list"))
                || p.file_name() == Some(OsStr::new("plan.json"))
        })
        .map(|p| (p.display().to_string(), read_text(&p)))
        .collect()
}

/// The environment of every live process that has all of `pairs` in it, by pid.
fn processes_with(pairs: &[(&str, &str)]) -> BTreeMap<i32, BTreeMap<String, String>> {
    let mut found = BTreeMap::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.filter_map(|e| e.ok()) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(bytes) = fs::read(entry.path().join("environ")) else {
            continue;
        };
        let env: BTreeMap<String, String> = bytes
            .split(|&b| b == 0)
            .filter_map(|kv| {
                let kv = String::from_utf8_lossy(kv);
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect();
        if pairs
            .iter()
            .all(|(k, v)| env.get(*k).is_some_and(|x| x == v))
        {
            found.insert(pid, env);
        }
    }
    found
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a pid this test found; a process gone already is fine.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Puts a node killed by the test back: a new slurmd (`up.sh` restarts dead nodes) and
/// `scontrol update state=resume`, also when the test fails.
struct RestoreNode(String);

impl Drop for RestoreNode {
    #[allow(clippy::print_stderr)] // a failed restore is told, not a second panic
    fn drop(&mut self) {
        let up = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/up.sh");
        let out = std::process::Command::new("bash")
            .arg(&up)
            .stdin(std::process::Stdio::null())
            .output();
        let _ = bounded(
            "scontrol",
            &["update", &format!("nodename={}", self.0), "state=resume"],
            20,
        );
        if !out.as_ref().is_ok_and(|o| o.status.success()) {
            eprintln!("could not restore node {}: {out:?}", self.0);
        }
    }
}

/// Kills node `node` as a power cut would: its slurmd, and every process of the job
/// `job` on it (slurmstepd, the batch script, hpcstage), with SIGKILL.
fn kill_node(node: &str, job: &str) {
    let dir = std::env::var("HPCSTAGE_CLUSTER_DIR")
        .unwrap_or_else(|_| "/var/tmp/hpcstage-cluster".into());
    let pidfile = Path::new(&dir).join(format!("run/slurmd-{node}.pid"));
    let slurmd: i32 = read_text(&pidfile)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", pidfile.display()));
    signal(slurmd, libc::SIGKILL);
    for pid in processes_with(&[("SLURM_JOB_ID", job)]).keys() {
        signal(*pid, libc::SIGKILL);
    }
    for entry in fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).starts_with(&format!("slurmstepd: [{job}.")) {
            if let Ok(pid) = entry.file_name().to_string_lossy().parse() {
                signal(pid, libc::SIGKILL);
            }
        }
    }
}

/// Regular files (temporaries included) in a shard's folder, bookkeeping aside.
fn copied_into(shard: &Path) -> usize {
    fn walk(dir: &Path, n: &mut usize) {
        for e in fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
        {
            let t = e.file_type().unwrap();
            if t.is_dir() && e.file_name() != ".hpcstage" {
                walk(&e.path(), n);
            } else if t.is_file() {
                *n += 1;
            }
        }
    }
    let mut n = 0;
    walk(shard, &mut n);
    n
}

#[test]
fn a_transfer_node_lost_mid_stage_ends_in_a_complete_verified_stage_after_the_requeue() {
    let _cluster = slurm_test!();
    let world = World::new();
    let raw = dataset(&world, "plate", 120, 2 << 20);
    let (array, last, _) = stage_shards(&world, &raw, 3);
    let dest = world.scratch().join("P/plate");

    // Catch shard 1's hpcstage as it copies, and freeze it there.
    let (_, env) = caught_copying(&array, 1, &dest);
    let node = env["SLURMD_NODENAME"].clone();
    let job = env["SLURM_JOB_ID"].clone();
    let restore = RestoreNode(node.clone());
    kill_node(&node, &job);

    assert_eq!(wait_ended(&last, &dest, NODE_LOSS_TIMEOUT), "COMPLETED");
    // SLURM saw the node fail and ran shard 1 again, on another node.
    let attempts = sacct_settled(&format!("{array}_1"), true, |a| {
        a.iter().any(|r| r.1 == "NODE_FAIL") && a.last().is_some_and(|r| r.1 == "COMPLETED")
    });
    assert!(
        attempts.iter().any(|a| a.1 == "NODE_FAIL" && a.2 == node),
        "{attempts:?}"
    );
    let last_attempt = attempts.last().expect("an attempt");
    assert_eq!(last_attempt.1, "COMPLETED", "{attempts:?}");
    assert_ne!(last_attempt.2, node, "{attempts:?}");
    let result: Value =
        serde_json::from_str(&read_text(dest.join(".hpcstage/shard-jobs/1.json"))).unwrap();
    assert_eq!(result["ok"], true, "{result:#}");
    assert!(result["restarts"].as_u64() >= Some(1), "{result:#}");
    assert_complete_stage(&raw, &dest, 120);

    // The node takes jobs again.
    drop(restore);
    let state = bounded(
        "sinfo",
        &["--noheader", "-N", "-n", &node, "--format=%T"],
        20,
    );
    assert!(
        ["idle", "mixed", "allocated"].contains(&state.stdout.trim()),
        "node {node} not restored: {state}"
    );
}

/// Waits for shard `index`'s hpcstage of array job `array` to run and to have written a
/// first file (a temporary or a verified one) into the shard's folder under `dest`, and
/// leaves it stopped (SIGSTOP) there: its pid and environment.
fn caught_copying(array: &str, index: u32, dest: &Path) -> (i32, BTreeMap<String, String>) {
    let shard_dir = dest.join(format!(".hpcstage/shards/{index}"));
    let task = index.to_string();
    let started = Instant::now();
    let (pid, env) = loop {
        let found = processes_with(&[
            ("SLURM_ARRAY_JOB_ID", array),
            ("SLURM_ARRAY_TASK_ID", task.as_str()),
        ]);
        let hpcstage = found.into_iter().find(|(pid, _)| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "hpcstage")
        });
        if let Some(p) = hpcstage {
            break p;
        }
        assert!(
            started.elapsed() < STAGE_TIMEOUT,
            "shard {index} never started\n{}",
            logs(dest)
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    signal(pid, libc::SIGSTOP);
    let stepped = Instant::now();
    while copied_into(&shard_dir) == 0 {
        signal(pid, libc::SIGCONT);
        std::thread::sleep(Duration::from_millis(3));
        signal(pid, libc::SIGSTOP);
        assert!(
            stepped.elapsed() < Duration::from_secs(60),
            "shard {index} copies nothing"
        );
    }
    assert!(
        !dest
            .join(format!(".hpcstage/shard-jobs/{index}.json"))
            .exists(),
        "shard {index} finished before it could be stopped; give it more bytes"
    );
    (pid, env)
}

/// Files under their final names in `dest` (its bookkeeping aside).
fn final_names(dest: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
        {
            let t = e.file_type().unwrap();
            if e.file_name() == ".hpcstage" {
                continue;
            }
            if t.is_dir() {
                walk(root, &e.path(), out);
            } else {
                out.push(e.path().strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(dest, dest, &mut out);
    out
}

#[test]
fn a_shard_task_requeued_mid_copy_as_preemption_does_ends_in_a_complete_verified_stage() {
    let _cluster = slurm_test!();
    let world = World::new();
    let raw = dataset(&world, "plate", 120, 2 << 20);
    let (array, last, _) = stage_shards(&world, &raw, 3);
    let dest = world.scratch().join("P/plate");

    // Shard 1 is preempted with PreemptMode=REQUEUE as SLURM does it (the test cluster
    // has no PreemptType): `scontrol requeue` of the running task, which SLURM stops
    // with SIGCONT, SIGTERM and after KillWait SIGKILL, then starts again.
    let (pid, _) = caught_copying(&array, 1, &dest);
    let task = format!("{array}_1");
    let requeue = bounded("scontrol", &["requeue", &task], 30);
    signal(pid, libc::SIGCONT);
    requeue.code(0);

    // While it waits to run again, nothing of it is under a final name: its files stay
    // in its shard folder until the final task moves the verified ones.
    let attempts = sacct_settled(&task, true, |a| a.iter().any(|r| r.1 == "REQUEUED"));
    assert!(
        attempts.iter().any(|r| r.1 == "REQUEUED"),
        "{attempts:?}\n{}",
        logs(&dest)
    );
    assert_eq!(final_names(&dest), Vec::<PathBuf>::new(), "{}", logs(&dest));

    assert_eq!(wait_ended(&last, &dest, NODE_LOSS_TIMEOUT), "COMPLETED");
    let attempts = sacct_settled(&task, true, |a| {
        a.last().is_some_and(|r| r.1 == "COMPLETED")
    });
    assert_eq!(
        attempts.last().map(|r| r.1.as_str()),
        Some("COMPLETED"),
        "{attempts:?}"
    );
    // The task that ran again finished the shard itself, resuming what was verified.
    let result: Value =
        serde_json::from_str(&read_text(dest.join(".hpcstage/shard-jobs/1.json"))).unwrap();
    assert_eq!(result["ok"], true, "{result:#}");
    assert_eq!(result["by"], "task", "{result:#}");
    assert!(result["restarts"].as_u64() >= Some(1), "{result:#}");
    assert_complete_stage(&raw, &dest, 120);
}

/// A stand-in for a U-Net predict command (as in tests/slurm_chain.rs): writes a tiny
/// real label mask and a table per image.
fn predict(world: &World) -> PathBuf {
    let tiny_mask = tiny_mask_function();
    world.script(
        "fake-predict",
        &format!(
            r#"set -eu
{tiny_mask}
while (($#)); do
    case $1 in
        --input) input=$2; shift 2 ;;
        --mask) mask=$2; shift 2 ;;
        --table) table=$2; shift 2 ;;
        *) shift ;;
    esac
done
{{ tiny_mask; printf 'labels of %s\n' "$(basename "$input")"; }} >"$mask"
printf 'object,area\n1,%s\n' "$(wc -c <"$input")" >"$table"
"#
        ),
    )
}

#[test]
fn stage_and_run_stages_in_shards_and_only_the_final_task_submits_the_chain() {
    let _cluster = slurm_test!();
    let world = World::new();
    let images: Vec<(String, Vec<u8>)> = (0..6u8)
        .map(|i| {
            (
                format!("row{}/img{i}.tif", i % 2),
                tiny_tiff([i, 1, 2, 3], format!("pixels of {i}").as_bytes()),
            )
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = images
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice()))
        .collect();
    let raw = world.dataset("plate", &refs);
    let model = world.path("models/unet.pt");
    common::write(&model, "weights");
    let predict = predict(&world);
    let params = [
        format!("model={}", model.display()),
        format!(
            "predict_cmd={} --model {{model}} --input {{input}} --mask {{mask}} --table {{table}}",
            predict.display()
        ),
        "cpus=1".into(),
        "mem=200M".into(),
        "time=10m".into(),
    ];
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("stage-and-run"),
        raw.as_os_str(),
        OsStr::new("unet-seg"),
        OsStr::new("--stage-in"),
        OsStr::new("job"),
        OsStr::new("--shards"),
        OsStr::new("2"),
        OsStr::new("--json"),
    ];
    for p in &params {
        args.extend([OsStr::new("-p"), OsStr::new(p)]);
    }
    let run = world.run(args);
    run.code(0);
    let dest = world.scratch().join("P/plate");

    // The run appears only once the final task has merged the shards and submitted it.
    let started = Instant::now();
    let run_id = loop {
        let all = world.run(["status", "--json"]);
        all.code(0);
        if let Some(id) = all.json()["runs"][0]["record"]["id"].as_str() {
            break id.to_string();
        }
        assert!(
            started.elapsed() < STAGE_TIMEOUT,
            "no run appeared\n{run}\n{}",
            logs(&dest)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let results =
        serde_json::from_str::<Value>(&read_text(dest.join(".hpcstage/shard-jobs/plan.json")))
            .expect("plan.json");
    assert_eq!(results["shards"].as_array().map(Vec::len), Some(2));
    assert_complete_stage(&raw, &dest, 6);

    let status = world.status(&run_id);
    let chain = Chain {
        run_id: run_id.clone(),
        run_dir: status["record"]["run_dir"]
            .as_str()
            .expect("run_dir")
            .into(),
        results_dir: status["record"]["results_dir"]
            .as_str()
            .expect("results_dir")
            .into(),
        compute_job: String::new(),
        pull_job: None,
    };
    let status = world.wait_chain(&chain, CHAIN_TIMEOUT);
    assert_eq!(status["phase"], "pulled", "{status:#}");
    // `status RUN` tells each shard's node, bytes and time.
    let shards = status["stage_shards"].as_array().expect("stage_shards");
    assert_eq!(shards.len(), 2, "{status:#}");
    let text = world.run(["status", &run_id]);
    text.code(0);
    for s in shards {
        let line = format!(
            "  stage shard {}: verified on {}, ",
            s["index"],
            s["node"].as_str().unwrap()
        );
        assert!(text.out().contains(&line), "{line:?} in\n{text}");
        assert!(
            transfer_nodes().contains(s["node"].as_str().unwrap()),
            "{s}"
        );
    }
    // The final task ended before the compute job was submitted.
    let merge_log = read_text(dest.join(".hpcstage/shard-jobs/merge.out"));
    assert!(merge_log.contains("staged P/plate"), "{merge_log}");
}

#[test]
fn shard_flags_that_cannot_work_are_refused_with_the_form_that_does() {
    let world = World::new();
    let raw = world.path("acq/plate");
    common::write(raw.join("a.tif"), "a");
    let run = world.run([
        OsStr::new("stage-and-run"),
        raw.as_os_str(),
        OsStr::new("unet-seg"),
        OsStr::new("--shards"),
        OsStr::new("2"),
    ]);
    assert_ne!(run.code, Some(0), "{run}");
    assert!(
        run.stderr.contains("--shards needs --stage-in job")
            && run.stderr.contains("--stage-in job --shards 4"),
        "{run}"
    );
    let run = world.run([
        OsStr::new("stage"),
        raw.as_os_str(),
        OsStr::new("--project"),
        OsStr::new("P"),
        OsStr::new("--shard"),
        OsStr::new("3/2"),
    ]);
    assert_ne!(run.code, Some(0), "{run}");
    assert!(
        run.stderr
            .contains("--shard \"3/2\": expected I/N with 0 <= I < N, e.g. --shard 0/4"),
        "{run}"
    );
    let run = world.run([
        OsStr::new("stage"),
        raw.as_os_str(),
        OsStr::new("--project"),
        OsStr::new("P"),
        OsStr::new("--shards"),
        OsStr::new("0"),
    ]);
    assert_eq!(run.code, Some(2), "{run}");
}
