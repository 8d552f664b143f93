//! A run whose retry fails again, against the real single-node cluster of
//! `tests/cluster/`: the logs of the first failure stay as they were in
//! `_failed/<run>/`, and those of the retried job go next to them, in
//! `_failed/<run>.job-<job>/`, each placed whole with its manifest.

mod common;

use std::time::Duration;

use common::cluster::{cluster, Chain};
use common::pull::{wait_ended, Lab};
use common::{assert_manifest_verifies, read_text};

/// How long a short job may take from submission to accounting saying it ended.
const JOB_BOUND: Duration = Duration::from_secs(120);

#[test]
fn the_logs_of_a_retry_that_fails_again_go_next_to_the_first_ones() {
    let Some(_cluster) = cluster() else { return };
    let lab = Lab::new();
    let raw = lab.ingest("d1");
    let predict = lab.stand_in("predict", "echo 'predict: out of cheese' >&2\nexit 3");
    let run = lab.submit(&raw, &predict, &[], false);
    wait_ended(&run.compute_job, JOB_BOUND);
    lab.run(["pull", &run.run_id]).code(4);
    let failed_parent = lab.results_parent().join("_failed");
    let first = failed_parent.join(&run.run_id);
    let first_manifest = read_text(first.join("MANIFEST.sha256"));
    assert!(
        read_text(first.join("README.md"))
            .contains(&format!("- compute job: {},", run.compute_job)),
        "the first README does not name the first job"
    );

    let retried = lab.run(["retry", &run.run_id, "--json"]);
    retried.code(0);
    let again = Chain::of(&retried);
    assert_ne!(again.compute_job, run.compute_job);
    wait_ended(&again.compute_job, JOB_BOUND);
    if let Some(pull_job) = &again.pull_job {
        wait_ended(pull_job, JOB_BOUND);
    }
    let pulled = lab.run(["pull", &run.run_id]);
    let second = failed_parent.join(format!("{}.job-{}", run.run_id, again.compute_job));
    pulled
        .code(4)
        .err_has(&format!("compute job {} ended FAILED", again.compute_job))
        .err_has(&second.display().to_string());

    assert_eq!(
        read_text(first.join("MANIFEST.sha256")),
        first_manifest,
        "the first failure's logs were changed"
    );
    let readme = read_text(second.join("README.md"));
    assert!(
        readme.contains(&format!("- compute job: {},", again.compute_job)),
        "{readme}"
    );
    assert!(
        read_text(second.join(format!("logs/unet-seg-{}_0.err", again.compute_job)))
            .contains("out of cheese")
    );
    assert_manifest_verifies(&second);
    assert!(
        !run.results_dir.exists(),
        "a failed run reached the results"
    );

    // The same failure pulled again changes nothing.
    lab.run(["pull", &run.run_id]).code(4);
    let mut names: Vec<String> = std::fs::read_dir(&failed_parent)
        .expect("list _failed")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            run.run_id.clone(),
            format!("{}.job-{}", run.run_id, again.compute_job)
        ]
    );
}
