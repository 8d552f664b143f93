//! What the commands that look at a place before using it (`doctor`, the pre-check of
//! `stage-and-run`) learn from an S3 source or NAS, against the real Ceph RadosGW
//! (`tests/s3/up.sh`): they ask the storage, as they ask a folder, and never branch on
//! the kind of place themselves.

mod common;

use common::run::assert_doctor_line;
use common::s3::{locked_bucket, plain_bucket, S3World};
use common::{write, Run};

#[test]
fn doctor_checks_an_s3_nas_bucket_and_its_object_lock() {
    let Some(w) = S3World::new("doctor") else {
        return;
    };
    let locked = w.url(&locked_bucket(), "");
    let run = w.env.run(["--nas-root", &locked, "doctor"]);
    assert_doctor_line(
        &run,
        "ssh",
        "skip",
        "the NAS is an S3 bucket: no SSH needed",
    );
    assert_doctor_line(
        &run,
        "nas_root",
        "ok",
        &format!("{locked}: bucket reachable"),
    );
    assert_doctor_line(
        &run,
        "worm",
        "ok",
        &format!("{locked}: Object Lock enabled"),
    );

    // A bucket without Object Lock: a warning with the fix, not a failure.
    let plain = w.url(&plain_bucket(), "");
    let run = w.env.run(["--nas-root", &plain, "doctor"]);
    assert_doctor_line(&run, "nas_root", "ok", "bucket reachable");
    assert_doctor_line(
        &run,
        "worm",
        "warn",
        "-> fix: ingest into this bucket is refused; use a bucket with Object Lock",
    );

    // Credentials the server refuses: the NAS fails, with where credentials come from.
    let mut refused = S3World::new("doctor-refused").expect("the server answered just now");
    refused
        .env
        .set_env("AWS_SECRET_ACCESS_KEY", "not-the-secret");
    let run = refused.env.run(["--nas-root", &plain, "doctor"]);
    run.code(1);
    assert_doctor_line(
        &run,
        "nas_root",
        "FAIL",
        "-> fix: check [s3] endpoint and the AWS credentials",
    );
    assert!(
        !run.stdout.contains("not-the-secret") && !run.stderr.contains("not-the-secret"),
        "a credential was shown:\n{run}"
    );
}

/// `stage-and-run` of an S3 prefix with the `convert` template, run here with `cp` as
/// the converter.
fn stage_and_run(w: &S3World, url: &str) -> Run {
    w.env.run([
        "--scratch-root",
        &w.env.scratch().display().to_string(),
        "stage-and-run",
        url,
        "convert",
        "--project",
        "P",
        "--executor",
        "local",
        "--no-pull",
        "--results",
        &w.env.path("results").display().to_string(),
        "--wait",
        "--json",
        "-p",
        "format=ome-tiff",
        "-p",
        "converter=cp {input} {output}",
        "-p",
        "threads=1",
        "-p",
        "mem=1G",
    ])
}

/// A dataset prefix holding `files` and its manifest, uploaded with the AWS CLI.
fn upload_dataset(w: &S3World, rel: &str, files: &[&str]) -> String {
    let dir = w.env.path(rel);
    for f in files {
        write(dir.join(f), format!("bytes of {f}\n"));
    }
    w.env
        .sh(
            &dir,
            "find . -type f | sed 's|^./||' | LC_ALL=C sort | xargs sha256sum > MANIFEST.sha256",
        )
        .code(0);
    w.upload(&dir, &plain_bucket(), rel);
    w.url(&plain_bucket(), rel)
}

#[test]
fn stage_and_run_lists_an_s3_source_through_its_storage_before_staging() {
    let Some(w) = S3World::new("precheck") else {
        return;
    };

    // No object the template takes as input: refused before anything is staged, naming
    // the source as written.
    let url = upload_dataset(&w, "P/raw/tables", &["a.csv", "sub/b.csv"]);
    let run = stage_and_run(&w, &url);
    run.code(1).err_has(&format!(
        "error: no input of template convert found in {url}: nothing matches **/*.czi, **/*.lif, **/*.nd2"
    ));
    assert!(
        !w.env.scratch().join("P").exists(),
        "something was staged:\n{run}"
    );

    // Inputs there: staged and run, one converted file per input.
    let url = upload_dataset(&w, "P/raw/plate", &["A01.czi", "deep/B02.nd2", "notes.txt"]);
    let run = stage_and_run(&w, &url);
    run.code(0);
    let run_dir = std::path::PathBuf::from(
        run.json()["run_dir"]
            .as_str()
            .unwrap_or_else(|| panic!("no run_dir\n{run}")),
    );
    let staged = w.env.scratch().join("P/plate");
    for f in ["A01.czi", "deep/B02.nd2", "notes.txt"] {
        assert_eq!(
            common::read(staged.join(f)),
            format!("bytes of {f}\n").into_bytes(),
            "{f}\n{run}"
        );
    }
    let inputs = std::fs::read(run_dir.join(".hpcstage/inputs.list")).expect("inputs.list");
    assert_eq!(inputs, b"A01.czi\0deep/B02.nd2\0", "{run}");
    w.cleanup(&plain_bucket());
    w.assert_no_multipart_uploads(&plain_bucket());
}
