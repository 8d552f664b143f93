//! `hpcstage demo --nas s3://bucket/prefix`: the whole lifecycle (ingest, stage, a run on
//! the local executor, its pull-back) with an S3 prefix of the real Ceph RadosGW of
//! `tests/s3/` as the NAS. What the demo left on the server is read with the AWS CLI, the
//! peer tool.

mod common;

use std::path::Path;

use common::assert_manifest_verifies;
use common::s3::{locked_bucket, S3World};

/// Every key under the test's prefix in `bucket`.
fn keys(w: &S3World, bucket: &str) -> Vec<String> {
    let run = w.aws(&[
        "s3api",
        "list-objects-v2",
        "--bucket",
        bucket,
        "--prefix",
        &w.prefix,
        "--output",
        "json",
    ]);
    run.code(0);
    if run.stdout.trim().is_empty() {
        return Vec::new();
    }
    let listing: serde_json::Value =
        serde_json::from_str(&run.stdout).expect("list-objects-v2 JSON");
    let mut keys: Vec<String> = listing["Contents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["Key"].as_str().map(str::to_string))
        .collect();
    keys.sort();
    keys
}

/// Downloads the objects under `<prefix>/` into `dest`, one by one (empty objects too).
fn fetch(w: &S3World, bucket: &str, prefix: &str, dest: &Path) {
    for key in keys(w, bucket) {
        let Some(rel) = key.strip_prefix(prefix) else {
            continue;
        };
        let to = dest.join(rel);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        w.aws(&[
            "s3api",
            "get-object",
            "--bucket",
            bucket,
            "--key",
            &key,
            &to.display().to_string(),
        ])
        .code(0);
    }
}

#[test]
fn the_demo_with_an_s3_nas_ingests_and_pulls_there_and_leaves_no_local_nas() {
    let Some(w) = S3World::new("demo") else {
        return;
    };
    let bucket = locked_bucket();
    let nas = w.url(&bucket, "");
    let dir = w.env.path("demo");
    // No SLURM: the local executor, whatever the machine has.
    let run = w.env.run([
        "demo",
        "--executor",
        "local",
        "--small-files",
        "20",
        "--large-mib",
        "1",
        "--dir",
        &dir.display().to_string(),
        "--nas",
        &nas,
    ]);
    run.code(0)
        .out_has(&format!("2/6 ingested → {nas}/demo-lab/raw/plate7"))
        .out_has("Object Lock GOVERNANCE")
        .out_has(&format!(
            "6/6 pulled validated results → {nas}/demo-lab/results/segmentation/"
        ))
        .err_has("no bag is made");
    assert!(
        !dir.join("nas").exists(),
        "the demo made a local NAS folder although --nas was given"
    );

    let keys = keys(&w, &bucket);
    let raw_manifest = format!("{}/demo-lab/raw/plate7/MANIFEST.sha256", w.prefix);
    assert!(keys.contains(&raw_manifest), "{keys:#?}");
    let results_prefix = format!("{}/demo-lab/results/segmentation/", w.prefix);
    let run_id = keys
        .iter()
        .filter_map(|k| k.strip_prefix(&results_prefix))
        .filter_map(|rel| rel.strip_suffix("/MANIFEST.sha256"))
        .find(|id| !id.starts_with("_failed"))
        .unwrap_or_else(|| panic!("no results manifest in {keys:#?}"))
        .to_string();
    let fetched = w.env.path("fetched");
    fetch(&w, &bucket, &format!("{results_prefix}{run_id}/"), &fetched);
    assert_manifest_verifies(&fetched);
    for name in ["README.md", "run.json"] {
        assert!(fetched.join(name).is_file(), "{name} was not pulled");
    }
    assert!(
        !keys.iter().any(|k| k.contains(".lock")),
        "a lock object was left: {keys:#?}"
    );
    w.assert_no_multipart_uploads(&bucket);
    w.env.sh(&dir, "chmod -R u+w .").code(0);
    w.cleanup(&bucket);
}
