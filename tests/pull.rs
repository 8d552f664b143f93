//! `hpcstage pull` and `hpcstage epilogue` against the real single-node cluster of
//! `tests/cluster/`: the whole chain stage-and-run → compute → pull-back, jobs
//! that fail, are cancelled, time out or miss an output, a pull refused while the job
//! runs, two pulls at once, a pull killed in the middle, a NAS folder that cannot be
//! written, and the Epilog hook run as root for a job user.
//!
//! The predict command is a bash stand-in that writes a real (tiny) label mask and a CSV
//! table per image, so the template's own validation reads real files.
//! Timings and skips are printed on stderr (`--nocapture` shows them).
#![allow(clippy::print_stderr)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::cluster;
use common::fs::{files, read_json};
use common::pull::{
    chown_r, fingerprint, job_user, listing, sacct, wait_ended, wait_running, Lab, ReadOnly, User,
};
use common::run::{tool, wait_child};
use common::sshd::Sshd;
use common::{assert_lines, assert_manifest_verifies, needs_root, read_text, write, Run};
use hpcstage_lifecycle::run::{new_record, Event, Executor, InputRef, JobRole, RunStore};

/// How long a short job may take from submission to accounting saying it ended.
const JOB_BOUND: Duration = Duration::from_secs(120);

/// A predict step that works: a label mask of one object, and a one-row table.
const PREDICT_OK: &str = r#"{ tiny_mask; printf 'mask of %s\n' "$(basename "$input")"; } >"$mask"
printf 'label,area\n1,%s\n' "$(stat -c %s "$input")" >"$table""#;

fn ok_outputs(job: &str) -> Vec<String> {
    let mut expected: Vec<String> = [
        "MANIFEST.sha256",
        "README.md",
        "job.sbatch",
        "masks/img1.ome.tif",
        "masks/img2.ome.tif",
        "qc/gpu-0.txt",
        "qc/model.sha256",
        "qc/summary-0.tsv",
        "run.json",
        "tables/img1.csv",
        "tables/img2.csv",
        "tools/unet-predict",
        "tools/unet-tiny-model",
        "validation.json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    expected.push(format!("logs/unet-seg-{job}_0.err"));
    expected.push(format!("logs/unet-seg-{job}_0.out"));
    expected.sort();
    expected
}

/// Everything in `results/segmentation/`: results folders, `_failed` and any hidden
/// `.partial` folder.
fn results_entries(lab: &Lab) -> Vec<String> {
    std::fs::read_dir(lab.results_parent())
        .map(|rd| {
            let mut names: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        })
        .unwrap_or_default()
}

#[test]
fn the_whole_chain_ends_with_verified_results_on_the_nas() {
    let Some(_cluster) = cluster() else { return };
    let lab = Lab::new();
    let raw = lab.ingest("d1");
    let predict = lab.stand_in("predict", PREDICT_OK);
    let started = Instant::now();
    let run = lab.submit(&raw, &predict, &[], true);
    let pull_job = run.pull_job.clone().expect("a pull-back job was submitted");
    let compute = wait_ended(&run.compute_job, JOB_BOUND);
    let pulled = wait_ended(&pull_job, JOB_BOUND);
    eprintln!(
        "chain: compute and pull-back ended after {:.1?}",
        started.elapsed()
    );
    assert_eq!(
        (compute.state.as_str(), compute.exit_code.as_str()),
        ("COMPLETED", "0:0"),
        "{compute:?}"
    );
    assert_eq!(
        (pulled.state.as_str(), pulled.exit_code.as_str()),
        ("COMPLETED", "0:0"),
        "pull-back job: {pulled:?}\n{}",
        read_text(run.run_dir.join(format!("logs/pull-{pull_job}.out")))
    );

    // The results folder: every output, the logs, provenance, and a manifest that GNU
    // sha256sum accepts; nothing of the job's intermediates or bookkeeping.
    let results = &run.results_dir;
    assert_eq!(
        results,
        &lab.results_parent().join(&run.run_id),
        "results go to <nas>/<project>/results/<workflow>/<run>"
    );
    assert_lines(&files(results), &ok_outputs(&run.compute_job));
    assert_manifest_verifies(results);
    assert_eq!(results_entries(&lab), vec![run.run_id.clone()]);

    // run.json and README.md tell the job's real facts, as accounting has them.
    let acct = &sacct(&run.compute_job)[0];
    assert!(acct.alloc_tres.contains("gres/gpu=1"), "{acct:?}");
    let prov = read_json(results.join("run.json"));
    let job = &prov["compute_job"];
    assert_eq!(prov["compute_job_id"], run.compute_job.as_str());
    assert_eq!(job["state"], "COMPLETED");
    assert_eq!(job["exit_code"], "0:0");
    assert_eq!(job["nodes"], "localhost");
    assert_eq!(job["nodes"], acct.nodes.as_str());
    assert_eq!(job["partition"], "gpu");
    assert_eq!(job["gpus"], 1);
    let tres = job["alloc_tres"].as_str().unwrap_or_default();
    assert!(tres.contains("gres/gpu=1"), "alloc_tres {tres:?}");
    assert_eq!(prov["run"]["id"], run.run_id.as_str());
    assert_eq!(prov["validation"]["ok"], true);
    assert_eq!(prov["partial"], false);
    // The model's fingerprint as data, and the same digest sha256sum gives.
    let model = lab.model().display().to_string();
    let expected = tool("sha256sum", &[&model]);
    expected.code(0);
    let hex = expected
        .stdout
        .split_whitespace()
        .next()
        .unwrap_or_default();
    assert_eq!(
        prov["model"]["sha256"],
        serde_json::json!([{ "path": model, "sha256": hex }]),
        "{prov:#}"
    );
    // And as a path parameter the pull hashed.
    let inputs = prov["param_inputs"].as_array().expect("param_inputs");
    let model_input = inputs
        .iter()
        .find(|i| i["param"] == "model")
        .unwrap_or_else(|| panic!("model in {inputs:#?}"));
    assert_eq!(
        model_input["files"],
        serde_json::json!([{ "path": model, "sha256": hex }])
    );
    let readme = read_text(results.join("README.md"));
    for needle in [
        format!("- job id: {}", run.compute_job),
        "- state: COMPLETED".to_string(),
        "- exit code: 0:0".to_string(),
        "- nodes: localhost".to_string(),
        "- partition: gpu".to_string(),
        "gres/gpu=1".to_string(),
        "- template: unet-seg version 1.0.0".to_string(),
        "- validation: all expected outputs present".to_string(),
    ] {
        assert!(
            readme.contains(&needle),
            "README.md lacks {needle:?}:\n{readme}"
        );
    }

    // Scratch: intermediates purged, the staged input and the outputs kept.
    assert!(!run.run_dir.join("work").exists(), "work/ was not purged");
    assert!(run.run_dir.join("masks/img1.ome.tif").is_file());
    let staged = lab.scratch().join("P/d1");
    for img in ["img1.tif", "img2.tif"] {
        assert_eq!(
            std::fs::read(staged.join(img)).expect("staged input kept"),
            std::fs::read(raw.join(img)).expect("raw input")
        );
    }
    assert_eq!(lab.status(&run.run_id)["phase"], "pulled");

    // Pulling again changes nothing and says so.
    let before = fingerprint(results);
    lab.run(["pull", &run.run_id])
        .code(0)
        .out_has("already pulled");
    assert_lines(&fingerprint(results), &before);
}

#[test]
fn a_pull_back_job_uploads_the_results_to_a_nas_over_ssh() {
    let Some(_cluster) = cluster() else { return };
    let lab = Lab::new();
    // The NAS is a folder of this machine reached only through a real sshd, as the
    // unprivileged login user: whatever lands there came over SFTP.
    let sshd = Sshd::start(&lab);
    let nas = sshd.remote_dir(&lab, "nas");
    lab.set_nas_root(&sshd.spec(&nas));
    let raw = lab.ingest("d1");
    let predict = lab.stand_in("predict", PREDICT_OK);
    let run = lab.submit(Path::new(&sshd.spec(&raw)), &predict, &[], true);
    let pull_job = run.pull_job.clone().expect("a pull-back job was submitted");
    let compute = wait_ended(&run.compute_job, JOB_BOUND);
    let pulled = wait_ended(&pull_job, JOB_BOUND);
    assert_eq!(compute.state, "COMPLETED", "{compute:?}");
    assert_eq!(
        (pulled.state.as_str(), pulled.exit_code.as_str()),
        ("COMPLETED", "0:0"),
        "pull-back job: {pulled:?}\n{}",
        read_text(run.run_dir.join(format!("logs/pull-{pull_job}.out")))
    );

    let results = lab.results_parent().join(&run.run_id);
    assert_eq!(run.results_dir, Path::new(&sshd.spec(&results)));
    assert_lines(&files(&results), &ok_outputs(&run.compute_job));
    assert_manifest_verifies(&results);
    assert_eq!(results_entries(&lab), vec![run.run_id.clone()]);
    let owner = tool(
        "stat",
        &["-c", "%U", &results.join("run.json").display().to_string()],
    );
    assert_eq!(
        owner.stdout.trim(),
        sshd.user(),
        "run.json was not uploaded over SFTP"
    );
    assert_eq!(
        read_json(results.join("run.json"))["run"]["id"],
        run.run_id.as_str()
    );
    assert!(
        !run.run_dir
            .join(".hpcstage/outbox")
            .join(&run.run_id)
            .exists(),
        "the assembled copy stayed on scratch"
    );
    assert!(!run.run_dir.join("work").exists(), "work/ was not purged");
    assert_eq!(lab.status(&run.run_id)["phase"], "pulled");
}

#[test]
fn a_failing_job_gets_its_logs_in_failed_and_scratch_is_left_alone() {
    let Some(_cluster) = cluster() else { return };
    let lab = Lab::new();
    let raw = lab.ingest("d1");
    let predict = lab.stand_in("predict", "echo 'predict: out of cheese' >&2\nexit 3");
    let run = lab.submit(&raw, &predict, &[], false);
    let acct = wait_ended(&run.compute_job, JOB_BOUND);
    assert_eq!(acct.state, "FAILED", "{acct:?}");
    let scratch_before = fingerprint(&run.run_dir);

    let pull = lab.run(["pull", &run.run_id]);
    pull.code(4)
        .err_has("not accepted")
        .err_has(&format!("compute job {} ended FAILED", run.compute_job))
        .err_has("_failed");
    let failed = lab.results_parent().join("_failed").join(&run.run_id);
    let readme = read_text(failed.join("README.md"));
    assert!(readme.starts_with("# FAILED"), "{readme}");
    assert!(readme.contains("NOT accepted"), "{readme}");
    let err_log_name = format!("logs/unet-seg-{}_0.err", run.compute_job);
    let err_log = read_text(failed.join(&err_log_name));
    assert!(err_log.contains("out of cheese"), "{err_log}");
    assert_manifest_verifies(&failed);
    let manifest = read_text(failed.join("MANIFEST.sha256"));
    for name in ["README.md", err_log_name.as_str(), "validation.json"] {
        assert!(
            manifest.contains(&format!("  {name}\n")),
            "{name} not in\n{manifest}"
        );
    }
    assert!(
        !failed.join(".hpcstage").exists(),
        "copy bookkeeping left on the NAS"
    );
    assert!(
        !run.results_dir.exists(),
        "a failed run reached the results path"
    );
    assert_eq!(results_entries(&lab), vec!["_failed".to_string()]);
    assert_lines(&fingerprint(&run.run_dir), &scratch_before);
    assert!(run.run_dir.join("work").is_dir(), "intermediates purged");

    // The ledger says why; pulling again fails the same way (and still exits non-zero).
    let status = lab.status(&run.run_id);
    assert_eq!(status["phase"], "pull-failed");
    assert_eq!(status["jobs"][0]["facts"]["state"], "FAILED");
    lab.run(["pull", &run.run_id]).code(4);
    assert!(!run.results_dir.exists());
    assert_manifest_verifies(&failed);
    assert_eq!(read_text(failed.join("MANIFEST.sha256")), manifest);
    assert_lines(&fingerprint(&run.run_dir), &scratch_before);
}

#[test]
fn a_cancelled_job_is_recorded_as_cancelled() {
    let Some(_cluster) = cluster() else { return };
    let lab = Lab::new();
    let raw = lab.ingest("d1");
    let predict = lab.stand_in("predict", "sleep 60");
    let run = lab.submit(&raw, &predict, &[], false);
    wait_running(&run.compute_job, JOB_BOUND);
    tool("scancel", &[&run.compute_job]).code(0);
    let acct = wait_ended(&run.compute_job, JOB_BOUND);
    assert!(acct.state.starts_with("CANCELLED"), "{acct:?}");

    lab.run(["pull", &run.run_id])
        .code(4)
        .err_has("ended CANCELLED");
    let failed = lab.results_parent().join("_failed").join(&run.run_id);
    assert!(read_text(failed.join("README.md")).contains("state CANCELLED"));
    assert!(!run.results_dir.exists());
    let status = lab.status(&run.run_id);
    assert_eq!(status["phase"], "pull-failed");
    let state = status["jobs"][0]["facts"]["state"]
        .as_str()
        .unwrap_or_default();
    assert!(state.starts_with("CANCELLED"), "recorded state {state:?}");
}

#[test]
fn a_job_hitting_its_time_limit_is_marked_by_its_trap_and_recorded_as_timeout() {
    let Some(_cluster) = cluster() else { return };
    let lab = Lab::new();
    let raw = lab.ingest("d1");
    let predict = lab.stand_in("predict", "sleep 120");
    // A 1 min limit: the template asks for USR1 30 s before it. slurmctld checks limits
    // about every 30 s and then waits KillWait, so the job ends 60-100 s after it starts.
    let started = Instant::now();
    let run = lab.submit(&raw, &predict, &["time=1m"], false);
    let script = read_text(run.run_dir.join("job.sbatch"));
    assert!(script.contains("#SBATCH --signal=B:USR1@30"), "{script}");
    let acct = wait_ended(&run.compute_job, Duration::from_secs(150));
    eprintln!("time limit: job ended after {:.1?}", started.elapsed());
    assert_eq!(acct.state, "TIMEOUT", "{acct:?}");
    let marker = read_text(run.run_dir.join(".hpcstage/signal-USR1"));
    assert!(
        marker.contains(&format!("job={}", run.compute_job)) && marker.contains("time limit"),
        "USR1 marker: {marker}"
    );

    lab.run(["pull", &run.run_id])
        .code(4)
        .err_has("ended TIMEOUT");
    let failed = lab.results_parent().join("_failed").join(&run.run_id);
    let readme = read_text(failed.join("README.md"));
    assert!(readme.contains("state TIMEOUT"), "{readme}");
    assert!(readme.contains("time-limit signal (USR1)"), "{readme}");
    let err_log = read_text(failed.join(format!("logs/unet-seg-{}_0.err", run.compute_job)));
    assert!(err_log.contains("USR1 received"), "{err_log}");
    assert!(!run.results_dir.exists());
    assert_eq!(
        lab.status(&run.run_id)["jobs"][0]["facts"]["state"],
        "TIMEOUT"
    );
}

#[test]
fn a_missing_output_fails_validation_and_allow_partial_pulls_what_is_there() {
    let Some(_cluster) = cluster() else { return };
    let lab = Lab::new();
    let raw = lab.ingest("d1");
    let predict = lab.stand_in(
        "predict",
        r#"{ tiny_mask; echo mask; } >"$mask"
if [[ $(basename "$input") != img2.tif ]]; then printf 'label,area\n1,9\n' >"$table"; fi"#,
    );
    let run = lab.submit(&raw, &predict, &[], false);
    wait_ended(&run.compute_job, JOB_BOUND);

    lab.run(["pull", &run.run_id])
        .code(4)
        .err_has("tables/**/*.csv matched 1 (expected 2)");
    assert!(
        !run.results_dir.exists(),
        "nothing may reach the validated area"
    );
    assert_eq!(results_entries(&lab), vec!["_failed".to_string()]);
    let failed = lab.results_parent().join("_failed").join(&run.run_id);
    let validation = read_json(failed.join("validation.json"));
    assert_eq!(validation["ok"], false);

    let partial = lab.run(["pull", &run.run_id, "--allow-partial"]);
    partial
        .code(0)
        .out_has("pulled run")
        .err_has("partial pull");
    let results = &run.results_dir;
    assert_manifest_verifies(results);
    // The template moves a mask and its table into place together: img2 has neither.
    let outputs: Vec<String> = files(results)
        .into_iter()
        .filter(|f| f.starts_with("masks/") || f.starts_with("tables/"))
        .collect();
    assert_lines(&outputs, &["masks/img1.ome.tif", "tables/img1.csv"]);
    let provenance = read_json(results.join("run.json"));
    assert_eq!(provenance["partial"], true);
    let missing = [
        "masks/**/*.ome.tif: 1 of 2; no output for input img2",
        "tables/**/*.csv: 1 of 2; no output for input img2",
    ];
    assert_eq!(provenance["missing"], serde_json::json!(missing));
    // The README says PARTIAL in its title and lists what is missing.
    let readme = read_text(results.join("README.md"));
    assert!(
        readme.starts_with(&format!(
            "# PARTIAL segmentation results: run {}\n\nPARTIAL outputs of a `unet-seg` job",
            run.run_id
        )),
        "{readme}"
    );
    assert!(
        readme.contains(
            "## Missing\n\n- masks/**/*.ome.tif: 1 of 2; no output for input img2\n\
             - tables/**/*.csv: 1 of 2; no output for input img2\n"
        ),
        "{readme}"
    );
    assert!(!readme.contains("Validated outputs"), "{readme}");
    assert!(readme.contains("- validation: PARTIAL"));
    // status and report say PARTIAL, with the missing outputs.
    let status = lab.status(&run.run_id);
    assert_eq!(status["phase"], "pulled");
    assert_eq!(status["partial"], serde_json::json!(missing));
    lab.run(["status", &run.run_id])
        .code(0)
        .out_has(&format!("run {} (pulled PARTIAL)", run.run_id))
        .out_has("  missing:   tables/**/*.csv: 1 of 2; no output for input img2");
    let report = lab.run(["report", "--all", "--format", "json"]);
    let json = report.json();
    let item = json["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["name"] == run.run_id.as_str())
        .unwrap_or_else(|| panic!("no run in the report\n{report}"))
        .clone();
    assert_eq!(item["safety"], "PARTIAL", "{item}");
    assert!(
        item["reason"]
            .as_str()
            .is_some_and(|r| r.contains("; tables/**/*.csv: 1 of 2; no output for input img2")),
        "{item}"
    );
    // Scratch of a failed job stays as it was, intermediates included.
    assert!(run.run_dir.join("work/partial/img2.ome.tif").is_file());
    lab.run(["pull", &run.run_id])
        .code(0)
        .out_has("already pulled");
}

#[test]
fn a_running_job_is_refused_unless_the_pull_waits() {
    let Some(_cluster) = cluster() else { return };
    let lab = Lab::new();
    let raw = lab.ingest("d1");
    let predict = lab.stand_in("predict", &format!("sleep 4\n{PREDICT_OK}"));
    let run = lab.submit(&raw, &predict, &[], false);
    wait_running(&run.compute_job, JOB_BOUND);

    let refused = lab.run(["pull", &run.run_id]);
    refused.code(1);
    // squeue already says RUNNING; accounting (which pull asks first) can lag a second
    // behind and still say PENDING. Either way the job has not ended.
    let stderr = refused.err();
    let says = |state: &str| {
        stderr.contains(&format!(
            "compute job {} is {state}; pull once it has ended (or pass --wait)",
            run.compute_job
        ))
    };
    assert!(says("RUNNING") || says("PENDING"), "{stderr}");
    assert!(!run.results_dir.exists());
    assert!(
        !lab.results_parent().exists(),
        "a refused pull touched the NAS"
    );

    let (shown, child) = lab.spawn(&["pull", &run.run_id, "--wait"]);
    let waited = wait_child(&shown, child, JOB_BOUND);
    waited.code(0).out_has("pulled run");
    assert_manifest_verifies(&run.results_dir);
    eprintln!("pull --wait returned after {:.1?}", waited.elapsed);
}

#[test]
fn two_pulls_at_once_give_one_results_folder() {
    let Some(_cluster) = cluster() else { return };
    let lab = Lab::new();
    let raw = lab.ingest("d1");
    // 2 x 60 MB of masks: one pull takes long enough for the other to find it busy.
    let predict = lab.stand_in(
        "predict",
        r#"{ tiny_mask; head -c 60000000 /dev/urandom; } >"$mask"
printf 'label,area\n1,1\n' >"$table""#,
    );
    let run = lab.submit(&raw, &predict, &[], false);
    wait_ended(&run.compute_job, JOB_BOUND);

    let started = Instant::now();
    let a = lab.spawn(&["pull", &run.run_id]);
    let b = lab.spawn(&["pull", &run.run_id]);
    let a = wait_child(&a.0, a.1, JOB_BOUND);
    let b = wait_child(&b.0, b.1, JOB_BOUND);
    eprintln!(
        "two pulls at once: both done after {:.1?}",
        started.elapsed()
    );
    a.code(0);
    b.code(0);
    // One pulls; the other waits for it on the run's lock and then says so.
    let (winner, waiter) = if a.stdout.contains("pulled run") {
        (&a, &b)
    } else {
        (&b, &a)
    };
    winner.out_has("pulled run");
    waiter
        .out_has("by another process")
        .out_has("nothing to do")
        .err_has("waiting for it to finish");
    assert_eq!(results_entries(&lab), vec![run.run_id.clone()]);
    assert_manifest_verifies(&run.results_dir);
    assert_eq!(lab.status(&run.run_id)["phase"], "pulled");
}

/// Bytes of the regular files under `dir`; `None` while it does not exist.
fn bytes_under(dir: &Path) -> Option<u64> {
    dir.exists().then(|| {
        files(dir)
            .iter()
            .filter_map(|f| std::fs::symlink_metadata(dir.join(f)).ok())
            .map(|m| m.len())
            .sum()
    })
}

#[test]
fn a_pull_killed_in_the_middle_is_completed_by_the_next_one() {
    let Some(_cluster) = cluster() else { return };
    let lab = Lab::new();
    let raw = lab.ingest("d1");
    // 2 x 150 MB of masks: the copy takes long enough to be killed in the middle.
    let predict = lab.stand_in(
        "predict",
        r#"{ tiny_mask; head -c 150000000 /dev/urandom; } >"$mask"
printf 'label,area\n1,1\n' >"$table""#,
    );
    let run = lab.submit(&raw, &predict, &[], false);
    wait_ended(&run.compute_job, JOB_BOUND);
    let partial = lab
        .results_parent()
        .join(format!(".{}.partial", run.run_id));

    // Whatever appears under the final name must be complete from the first look.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, results) = (stop.clone(), run.results_dir.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if results.exists() {
                    return Some(listing(&results));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            None
        })
    };

    // Killed once the hidden folder holds a megabyte of a mask being written.
    let (shown, mut child) = lab.spawn(&["pull", &run.run_id]);
    let started = Instant::now();
    while bytes_under(&partial).is_none_or(|n| n < 1 << 20) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{} never filled",
            partial.display()
        );
        assert!(
            child.try_wait().expect("poll").is_none(),
            "{shown} ended early"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().expect("kill -9 the pull");
    let killed = wait_child(&shown, child, Duration::from_secs(10));
    assert_eq!(
        killed.code, None,
        "the pull ended before it was killed\n{killed}"
    );
    assert!(partial.is_dir(), "the killed pull left no hidden folder");
    assert!(
        !run.results_dir.exists(),
        "the killed pull's folder is visible"
    );

    let again = lab.run(["pull", &run.run_id]);
    again.code(0).out_has("pulled run");
    eprintln!("pull after kill -9: {:.1?}", again.elapsed);
    stop.store(true, Ordering::Relaxed);
    let first_look = watcher.join().expect("watcher").expect("results appeared");
    for name in [
        "MANIFEST.sha256",
        "README.md",
        "run.json",
        "masks/img1.ome.tif",
    ] {
        assert!(
            first_look.iter().any(|e| e == name),
            "the results folder appeared without {name}: {first_look:?}"
        );
    }
    assert_manifest_verifies(&run.results_dir);
    assert_eq!(results_entries(&lab), vec![run.run_id.clone()]);
    assert!(
        !listing(&run.results_dir)
            .iter()
            .any(|e| e.contains(".hpcstage")),
        "bookkeeping or temporaries in the results folder"
    );
    assert!(!run.run_dir.join("work").exists(), "work/ was not purged");
}

#[test]
fn a_results_folder_in_place_is_adopted_only_when_it_is_this_runs() {
    let Some(_cluster) = cluster() else { return };
    let lab = Lab::new();
    let raw = lab.ingest("d1");
    let predict = lab.stand_in("predict", PREDICT_OK);
    let run = lab.submit(&raw, &predict, &[], false);
    wait_ended(&run.compute_job, JOB_BOUND);

    // Something else under the run's results name is never overwritten or adopted.
    write(run.results_dir.join("notes.txt"), "a colleague's notes\n");
    lab.run(["pull", &run.run_id])
        .code(1)
        .err_has("the results folder exists but")
        .err_has("move it away and pull again");
    assert_lines(&files(&run.results_dir), &["notes.txt"]);
    assert!(run.run_dir.join("work").is_dir(), "intermediates purged");
    std::fs::remove_dir_all(&run.results_dir).expect("move the notes away");
    lab.run(["pull", &run.run_id]).code(0).out_has("pulled run");
    let pulled = fingerprint(&run.results_dir);

    // A pull stopped right after its rename: no marker, no ledger event, intermediates
    // still on scratch. The next pull finishes the job without copying anything again.
    std::fs::remove_file(run.run_dir.join(".hpcstage/pulled.json")).expect("remove the marker");
    let events = lab.state().join("runs").join(&run.run_id).join("events");
    for name in files(&events) {
        if read_text(events.join(&name)).contains("\"event\": \"pulled\"") {
            std::fs::remove_file(events.join(&name)).expect("remove the pulled event");
        }
    }
    std::fs::create_dir_all(run.run_dir.join("work/partial")).expect("recreate work/");
    assert_ne!(lab.status(&run.run_id)["phase"], "pulled");
    lab.run(["pull", &run.run_id])
        .code(0)
        .out_has("pulled run")
        .err_has("purged intermediate");
    assert_lines(&fingerprint(&run.results_dir), &pulled);
    assert!(!run.run_dir.join("work").exists(), "work/ was not purged");
    assert!(run.run_dir.join(".hpcstage/pulled.json").is_file());
    assert_eq!(lab.status(&run.run_id)["phase"], "pulled");
    lab.run(["pull", &run.run_id])
        .code(0)
        .out_has("already pulled");
}

#[test]
fn an_unwritable_nas_fails_clearly_and_the_run_stays_pullable() {
    let Some(_cluster) = cluster() else { return };
    needs_root!();
    let lab = Lab::new();
    let raw = lab.ingest("d1");
    let predict = lab.stand_in("predict", PREDICT_OK);
    let run = lab.submit(&raw, &predict, &[], false);
    wait_ended(&run.compute_job, JOB_BOUND);
    let parent = lab.results_parent();
    std::fs::create_dir_all(&parent).expect("create the results parent");
    let read_only = ReadOnly::new(&parent)
        .expect("as root, a folder can be made read-only (chattr +i or a read-only bind mount)");
    let scratch_before = fingerprint(&run.run_dir);

    let pull = lab.run(["pull", &run.run_id]);
    pull.code(1)
        .err_has(&run.results_dir.display().to_string())
        .err_has("cannot write the results to the NAS")
        .err_has("scratch is untouched and the run can be pulled again");
    assert!(
        pull.stderr.contains("Operation not permitted")
            || pull.stderr.contains("Read-only file system"),
        "the error does not say why\n{pull}"
    );
    assert_lines(&fingerprint(&run.run_dir), &scratch_before);
    assert!(run.run_dir.join("work").is_dir(), "intermediates purged");
    assert_eq!(lab.status(&run.run_id)["phase"], "pull-failed");

    drop(read_only);
    lab.run(["pull", &run.run_id]).code(0).out_has("pulled run");
    assert_manifest_verifies(&run.results_dir);
    assert!(!run.run_dir.join("work").exists());
}

// ---- epilogue ----

/// A run in `state` whose compute job is `job_id`, owned by `user`, written through the
/// lifecycle crate. Returns the run id.
fn run_owned_by(lab: &Lab, state: &Path, job_id: &str, user: &User) -> String {
    let store = RunStore::open(state).expect("open the ledger");
    let id = format!("unet-seg-d1-epilogue-{job_id}");
    let record = new_record(
        id.clone(),
        "P".into(),
        "unet-seg".into(),
        "1.0.0".into(),
        "hash".into(),
        "segmentation".into(),
        Default::default(),
        InputRef {
            stage_id: "P/d1".into(),
            path: lab.scratch().join("P/d1"),
            manifest_digest: "0".repeat(64),
            source: lab.nas().join("P/raw/d1").display().to_string(),
        },
        lab.scratch().join("P/runs").join(&id),
        lab.results_parent().join(&id),
        Executor::Slurm,
    );
    store.create(&record).expect("create the run");
    store
        .append(
            &id,
            Event::Submitted {
                role: JobRole::Compute,
                job_id: job_id.into(),
                token: "t".into(),
                array_size: None,
            },
        )
        .expect("record the submission");
    chown_r(state, user);
    id
}

/// `hpcstage epilogue --timeout <timeout>` as root with a job's Epilog environment.
fn epilogue(lab: &Lab, state: &Path, vars: &[(&str, String)], timeout: &str) -> Run {
    epilogue_with(lab, Some(state), vars, &["--timeout", timeout])
}

/// `hpcstage epilogue ARGS` as root with a job's Epilog environment; `state: None` as
/// under a real Epilog, which slurmd starts without the user's `$HPCSTAGE_STATE`.
fn epilogue_with(lab: &Lab, state: Option<&Path>, vars: &[(&str, String)], args: &[&str]) -> Run {
    let mut cmd = lab.command();
    match state {
        Some(state) => cmd.env("HPCSTAGE_STATE", state),
        None => cmd.env_remove("HPCSTAGE_STATE"),
    };
    cmd.arg("epilogue").args(args);
    let timeout = args.join(" ");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let shown = format!("hpcstage epilogue {timeout} with {vars:?}");
    let child = cmd.spawn().expect("start hpcstage epilogue");
    wait_child(&shown, child, Duration::from_secs(30))
}

fn job_env(job_id: &str, user: &User) -> Vec<(&'static str, String)> {
    vec![
        ("SLURM_JOB_ID", job_id.to_string()),
        ("SLURM_JOB_USER", user.name.clone()),
        ("SLURM_JOB_UID", user.uid.to_string()),
        ("SLURM_JOB_GID", user.gid.to_string()),
        ("SLURM_JOB_EXIT_CODE2", "0:0".into()),
        ("SLURM_JOB_PARTITION", "gpu".into()),
        ("SLURM_JOB_GPUS", "0".into()),
        ("SLURMD_NODENAME", "localhost".into()),
    ]
}

#[test]
fn epilogue_as_root_records_the_job_end_as_the_job_user() {
    needs_root!();
    let user = job_user();
    let lab = Lab::new();
    let state = lab.path("state-epi");
    let id = run_owned_by(&lab, &state, "424242", &user);
    let events = state.join("runs").join(&id).join("events");
    let before = files(&events);

    let run = epilogue(&lab, &state, &job_env("424242", &user), "5s");
    run.code(0)
        .err_has(&format!("job 424242 of run {id} recorded"));
    assert!(
        run.elapsed < Duration::from_secs(5),
        "took {:?}\n{run}",
        run.elapsed
    );
    let new: Vec<String> = files(&events)
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    assert_eq!(new.len(), 1, "one new event expected: {new:?}");
    let event = events.join(&new[0]);
    let meta = std::fs::metadata(&event).expect("stat the event");
    assert_eq!(
        (meta.uid(), meta.gid()),
        (user.uid, user.gid),
        "the event must belong to the job user, not root"
    );
    let v = read_json(&event);
    assert_eq!(v["observer"], "epilogue");
    assert_eq!(v["user"], user.name.as_str());
    assert_eq!(v["facts"]["exit_code"], "0:0");
    assert_eq!(v["facts"]["nodes"], "localhost");

    // An array task: its own job id differs, the array's id is the run's.
    let mut vars = job_env("424250", &user);
    vars.push(("SLURM_ARRAY_JOB_ID", "424242".into()));
    vars.push(("SLURM_ARRAY_TASK_ID", "3".into()));
    epilogue(&lab, &state, &vars, "5s")
        .code(0)
        .err_has(&format!("job 424250 of run {id} recorded"));
    let store = RunStore::open(&state).expect("open the ledger");
    let recorded: Vec<String> = store
        .load(&id)
        .expect("load the run")
        .events
        .iter()
        .filter_map(|e| match &e.event {
            Event::JobState { job_id, .. } => Some(job_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(recorded, vec!["424242".to_string(), "424242_3".to_string()]);
}

#[test]
fn epilogue_exits_0_in_time_whatever_the_ledger_or_environment() {
    needs_root!();
    let user = job_user();
    let lab = Lab::new();
    let vars = job_env("515151", &user);

    // Garbage: a run whose record is not JSON, and one whose event is not either.
    let garbage = lab.path("state-garbage");
    run_owned_by(&lab, &garbage, "1", &user);
    write(garbage.join("runs/broken/run.json"), "{ not json");
    write(garbage.join("runs/broken/events/0.json"), "\0\0\0");
    chown_r(&garbage, &user);
    let run = epilogue(&lab, &garbage, &vars, "5s");
    run.code(0);
    assert!(
        run.elapsed < Duration::from_secs(5),
        "took {:?}\n{run}",
        run.elapsed
    );

    // Unreadable by the job user (root could read it; the epilogue must not be root).
    let locked = lab.path("state-locked");
    run_owned_by(&lab, &locked, "515151", &user);
    tool(
        "chmod",
        &["000", locked.join("runs").to_str().expect("UTF-8")],
    )
    .code(0);
    let run = epilogue(&lab, &locked, &vars, "5s");
    run.code(0).err_has("Permission denied");
    assert!(
        run.elapsed < Duration::from_secs(5),
        "took {:?}\n{run}",
        run.elapsed
    );
    tool(
        "chmod",
        &["755", locked.join("runs").to_str().expect("UTF-8")],
    )
    .code(0);

    // A ledger that hangs (an event that is a FIFO nobody writes): the bound ends it.
    let hanging = lab.path("state-hanging");
    let id = run_owned_by(&lab, &hanging, "515151", &user);
    let fifo = hanging.join("runs").join(&id).join("events/00-hang.json");
    tool("mkfifo", &[fifo.to_str().expect("UTF-8")]).code(0);
    chown_r(&hanging, &user);
    let run = epilogue(&lab, &hanging, &vars, "2s");
    run.code(0).err_has("gave up after 2s");
    assert!(
        run.elapsed >= Duration::from_secs(2) && run.elapsed < Duration::from_secs(4),
        "took {:?}\n{run}",
        run.elapsed
    );

    // Not run by slurmd, or for a user that does not exist.
    let run = epilogue(&lab, &garbage, &[], "5s");
    run.code(0).err_has("no SLURM_JOB_ID");
    let ghost = [
        ("SLURM_JOB_ID", "616161".to_string()),
        ("SLURM_JOB_USER", "no-such-user-hpcstage".to_string()),
    ];
    epilogue(&lab, &garbage, &ghost, "5s")
        .code(0)
        .err_has("job 616161: /etc/passwd: unknown job user no-such-user-hpcstage (SLURM_JOB_USER)")
        .err_lacks("Some(");
}

/// A job user whose home is `home` (made and owned by them).
fn user_with_home(home: &Path) -> User {
    let name = "hpcstage-epihome";
    if tool("id", &["-u", name]).code != Some(0) {
        tool(
            "useradd",
            &["--no-create-home", "--shell", "/usr/sbin/nologin", name],
        )
        .code(0);
    }
    tool("usermod", &["--home", home.to_str().expect("UTF-8"), name]).code(0);
    std::fs::create_dir_all(home).expect("make the home");
    let id = |flag: &str| -> u32 {
        let run = tool("id", &[flag, name]);
        run.code(0);
        run.stdout.trim().parse().expect("numeric id")
    };
    let user = User {
        name: name.to_string(),
        uid: id("-u"),
        gid: id("-g"),
    };
    chown_r(home, &user);
    user
}

#[test]
fn epilogue_without_hpcstage_state_finds_the_job_users_own_state_folder() {
    needs_root!();
    let lab = Lab::new();
    let home = lab.path("home-epi");
    let user = user_with_home(&home);

    // Nothing configured: the XDG default under the job user's home, whatever root's
    // HOME and XDG_STATE_HOME say.
    let state = home.join(".local/state/hpcstage");
    let id = run_owned_by(&lab, &state, "717171", &user);
    let run = epilogue_with(&lab, None, &job_env("717171", &user), &["--verbose"]);
    run.code(0)
        .err_has(&format!(
            "hpcstage epilogue: job 717171: user {} (uid {}), home {}; running as uid {}\n",
            user.name,
            user.uid,
            home.display(),
            user.uid
        ))
        .err_has(&format!(
            "hpcstage epilogue: state folder {} (the default under the job user's home)\n",
            state.display()
        ))
        .err_has(&format!("job 717171 of run {id} recorded"))
        .err_lacks("error:");

    // A state_dir in the user's own config wins over the default.
    let elsewhere = lab.path("state-configured");
    write(
        home.join(".config/hpcstage/config.toml"),
        format!("state_dir = {:?}\n", elsewhere.display().to_string()),
    );
    chown_r(&home, &user);
    let id = run_owned_by(&lab, &elsewhere, "727272", &user);
    epilogue_with(&lab, None, &job_env("727272", &user), &["--verbose"])
        .code(0)
        .err_has(&format!(
            "state folder {} (state_dir in {}/.config/hpcstage/config.toml)",
            elsewhere.display(),
            home.display()
        ))
        .err_has(&format!("job 727272 of run {id} recorded"));

    // A job of no run says so with --verbose, and nothing without.
    epilogue_with(&lab, None, &job_env("737373", &user), &["--verbose"])
        .code(0)
        .err_has("no run in ")
        .err_has(" holds job 737373");
    let quiet = epilogue_with(&lab, None, &job_env("737373", &user), &[]);
    quiet.code(0);
    assert_eq!(quiet.err(), "", "{quiet}");
}

/// `hpcstage ARGS...` in the lab with no SLURM command on its PATH: the scheduler cannot
/// be asked.
fn without_slurm(lab: &Lab, args: &[&str]) -> Run {
    let mut cmd = lab.command();
    cmd.env("PATH", lab.path("bin")).args(args);
    Run::of(cmd)
}

#[test]
fn clean_keeps_a_stage_that_a_held_job_reads_even_when_slurm_cannot_be_asked() {
    let Some(_cluster) = cluster() else { return };
    let lab = Lab::new();
    let raw = lab.ingest("d1");
    let predict = lab.stand_in("predict", PREDICT_OK);
    // Two array tasks (one image each), submitted held: the job waits in the queue.
    let run = lab.submit_with_env(
        &raw,
        &predict,
        &["chunk_size=1"],
        false,
        &[("SBATCH_HOLD", "1")],
    );
    let stage = lab.scratch().join("P/d1");
    assert!(stage.join("img1.tif").is_file());
    let still_there = |what: &str| {
        assert!(
            stage.join("img1.tif").is_file() && stage.join("img2.tif").is_file(),
            "{what}: the stage the held job reads was removed"
        );
    };

    // No scheduler to ask, and no job state recorded yet: the stage is kept.
    let blind = without_slurm(&lab, &["clean"]);
    blind.code(0);
    still_there("clean without SLURM");
    blind.out_has(&format!("keep    {} (IN USE; ", stage.display()));
    blind.out_has(&format!(
        "in use by run {} (compute job {} state not known yet)",
        run.run_id, run.compute_job
    ));
    blind.err_has("job states may be out of date");

    // With SLURM: the held job is PENDING (one batched sacct, as `status` makes).
    let acct = sacct(&run.compute_job);
    assert!(acct.iter().all(|a| a.state == "PENDING"), "{acct:?}");
    let clean = lab.run(["clean"]);
    clean.code(0);
    still_there("clean");
    clean.out_has(&format!(
        "in use by run {} (compute job {} PENDING)",
        run.run_id, run.compute_job
    ));
    let report = lab.run(["report", "--all", "--format", "json"]);
    report.code(0);
    let json = report.json();
    let item = json["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["kind"] == "stage")
        .unwrap_or_else(|| panic!("no stage in the report\n{report}"))
        .clone();
    assert_eq!(item["safety"], "IN_USE", "{item}");
    assert_eq!(item["removable"], false);
    assert!(
        item["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&run.run_id)),
        "{item}"
    );
    lab.run(["status"])
        .code(0)
        .out_has(&format!("P/d1: IN USE: in use by run {}", run.run_id));

    // Cancelled and never pulled, the run may still be retried: the stage stays.
    tool("scancel", &[&run.compute_job]).code(0);
    wait_ended(&run.compute_job, JOB_BOUND);
    lab.run(["clean"]).code(0).out_has("(not pulled yet)");
    still_there("clean after the cancel");
}

#[test]
fn a_pull_in_which_nothing_validates_is_refused_even_with_allow_partial() {
    let Some(_cluster) = cluster() else { return };
    let lab = Lab::new();
    let raw = lab.ingest("d1");
    let predict = lab.stand_in("predict", "sleep 60");
    let run = lab.submit(&raw, &predict, &[], false);
    wait_running(&run.compute_job, JOB_BOUND);
    tool("scancel", &[&run.compute_job]).code(0);
    wait_ended(&run.compute_job, JOB_BOUND);

    lab.run(["pull", &run.run_id, "--allow-partial"])
        .code(4)
        .err_has("ended CANCELLED")
        .err_has(
            "no expected output validated, so there is nothing to pull even with --allow-partial",
        );
    assert!(!run.results_dir.exists(), "nothing is published as results");
    assert_eq!(results_entries(&lab), vec!["_failed".to_string()]);
    let readme = read_text(
        lab.results_parent()
            .join("_failed")
            .join(&run.run_id)
            .join("README.md"),
    );
    assert!(
        readme.contains("No expected output validated, so there is nothing to pull")
            && !readme.contains("--allow-partial`."),
        "{readme}"
    );
    let status = lab.status(&run.run_id);
    assert_eq!(status["phase"], "pull-failed");
}
