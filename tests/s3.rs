//! S3 locations against a real Ceph RadosGW (`tests/s3/up.sh`): `stage s3://...` with the
//! guarantees of a folder source, `ingest` into an S3 NAS with Object Lock retention, and
//! the bad inputs (credentials, buckets, quotas, a killed upload). What hpcstage left on
//! the server is checked with the AWS CLI; after each test no multipart upload remains.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::s3::{locked_bucket, plain_bucket, radosgw_admin, S3World};
use common::{assert_manifest_verifies, read, regular_files, write, Env};

/// A small dataset folder with its GNU manifest (made by `sha256sum`, the peer tool).
fn dataset(env: &Env, rel: &str) -> std::path::PathBuf {
    let dir = env.path(rel);
    write(dir.join("A01.tif"), "tiff A01\n");
    write(dir.join("plate/B02.tif"), vec![7u8; 300_000]);
    write(dir.join("plate/deep/layout.csv"), "well,sample\nA01,s1\n");
    env.sh(
        &dir,
        "find . -type f ! -name MANIFEST.sha256 | sed 's|^./||' | LC_ALL=C sort | xargs sha256sum > MANIFEST.sha256",
    )
    .code(0);
    dir
}

fn stage(w: &S3World, url: &str, extra: &[&str]) -> common::Run {
    let dest = w.env.path("scratch/P/ds");
    let mut args = vec![
        "--scratch-root".to_string(),
        w.env.scratch().display().to_string(),
        "stage".into(),
        url.into(),
        dest.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    w.env.run(args)
}

#[test]
fn stage_from_s3_copies_the_exact_tree_skips_on_a_rerun_and_recopies_a_changed_object() {
    let Some(w) = S3World::new("stage") else {
        return;
    };
    let bucket = plain_bucket();
    let src = dataset(&w.env, "src");
    w.upload(&src, &bucket, "P/raw/ds");
    let url = w.url(&bucket, "P/raw/ds");

    let run = stage(&w, &url, &[]);
    run.code(0).out_has("staged");
    let dest = w.env.path("scratch/P/ds");
    let mut expected = regular_files(&src);
    expected.retain(|p| p != Path::new("MANIFEST.sha256"));
    let mut got = regular_files(&dest);
    got.retain(|p| p != Path::new("MANIFEST.sha256") && !p.starts_with(".hpcstage"));
    assert_eq!(got, expected);
    for rel in &expected {
        assert!(
            read(src.join(rel)) == read(dest.join(rel)),
            "{}",
            rel.display()
        );
    }
    assert_manifest_verifies(&dest);
    assert_eq!(
        read(dest.join("MANIFEST.sha256")),
        read(src.join("MANIFEST.sha256"))
    );

    // A rerun is a no-op.
    let run = stage(&w, &url, &[]);
    run.code(0)
        .out_has("0 copied, 3 unchanged, 0 failed")
        .out_has("bytes: 0 B copied");

    // One object replaced (and its manifest with it): only it is copied again.
    write(src.join("plate/deep/layout.csv"), "well,sample\nA01,s2\n");
    w.env
        .sh(
            &src,
            "find . -type f ! -name MANIFEST.sha256 | sed 's|^./||' | LC_ALL=C sort | xargs sha256sum > MANIFEST.sha256",
        )
        .code(0);
    for rel in ["plate/deep/layout.csv", "MANIFEST.sha256"] {
        w.aws(&[
            "s3",
            "cp",
            "--quiet",
            &src.join(rel).display().to_string(),
            &w.url(&bucket, &format!("P/raw/ds/{rel}")),
        ])
        .code(0);
    }
    let run = stage(&w, &url, &["--dry-run"]);
    run.code(0).out_has("> plate/deep/layout.csv");
    let run = stage(&w, &url, &[]);
    run.code(0).out_has("1 copied, 2 unchanged, 0 failed");
    assert_eq!(
        read(dest.join("plate/deep/layout.csv")),
        b"well,sample\nA01,s2\n"
    );
    assert_manifest_verifies(&dest);
    w.assert_no_multipart_uploads(&bucket);
    w.cleanup(&bucket);
}

#[test]
fn an_object_that_no_longer_matches_the_manifest_is_source_corrupt() {
    let Some(w) = S3World::new("corrupt") else {
        return;
    };
    let bucket = locked_bucket();
    let src = dataset(&w.env, "src");
    w.upload(&src, &bucket, "P/raw/ds");
    // A new version of one object with other bytes of the same size; the manifest stays.
    write(w.env.path("bad.tif"), "tiff A0X\n");
    w.aws(&[
        "s3",
        "cp",
        "--quiet",
        &w.env.path("bad.tif").display().to_string(),
        &w.url(&bucket, "P/raw/ds/A01.tif"),
    ])
    .code(0);
    let url = w.url(&bucket, "P/raw/ds");
    stage(&w, &url, &["--dry-run"])
        .code(3)
        .err_has("A01.tif: SOURCE CORRUPT");
    let run = stage(&w, &url, &[]);
    run.code(3)
        .err_has(&format!("{url}/A01.tif: SOURCE CORRUPT"))
        .err_has("stage incomplete");
    assert!(!w.env.path("scratch/P/ds/A01.tif").exists());
    assert!(!w.env.path("scratch/P/ds/MANIFEST.sha256").exists());
    w.assert_no_multipart_uploads(&bucket);
    w.cleanup(&bucket);
}

#[test]
fn a_prefix_without_its_manifest_is_refused_as_incomplete() {
    let Some(w) = S3World::new("incomplete") else {
        return;
    };
    let bucket = plain_bucket();
    let src = dataset(&w.env, "src");
    std::fs::remove_file(src.join("MANIFEST.sha256")).unwrap();
    w.upload(&src, &bucket, "P/raw/ds");
    let url = w.url(&bucket, "P/raw/ds");
    stage(&w, &url, &[]).code(1).err_has(&format!(
        "{url} has no MANIFEST.sha256: it is an incomplete upload, not a dataset"
    ));
    assert!(!w.env.path("scratch/P/ds/A01.tif").exists());
    w.cleanup(&bucket);
}

#[test]
fn ingest_to_s3_sets_compliance_retention_that_refuses_a_delete() {
    let Some(w) = S3World::new("ingest") else {
        return;
    };
    let bucket = locked_bucket();
    let src = w.env.path("acq");
    write(src.join("A01.tif"), "tiff A01\n");
    write(src.join("plate/layout.csv"), "well\nA01\n");
    let nas = w.url(&bucket, "");
    let run = w.env.run([
        "--nas-root",
        &nas,
        "--config",
        &write_config(&w, "COMPLIANCE", "2d"),
        "ingest",
        "acq",
        "--project",
        "P",
        "--dataset",
        "plate7",
    ]);
    run.code(0)
        .out_has(&format!(
            "ingested P/raw/plate7 → {nas}/P/raw/plate7 (2 files"
        ))
        .out_has("write protection: Object Lock COMPLIANCE for 2days on every object");

    // The manifest, written last, lists every object and dataset.json, as sha256sum reads.
    let fetched = w.env.path("fetched");
    w.aws(&[
        "s3",
        "cp",
        "--recursive",
        "--quiet",
        &format!("{nas}/P/raw/plate7"),
        &fetched.display().to_string(),
    ])
    .code(0);
    assert_manifest_verifies(&fetched);
    let manifest = String::from_utf8(read(fetched.join("MANIFEST.sha256"))).unwrap();
    assert_eq!(
        manifest.lines().map(|l| &l[66..]).collect::<Vec<_>>(),
        ["A01.tif", "dataset.json", "plate/layout.csv"]
    );

    // Every object carries its SHA-256 and a COMPLIANCE retention; a delete of the locked
    // version fails, even with the governance bypass.
    let key = w.key("P/raw/plate7/A01.tif");
    let head = w.aws(&["s3api", "head-object", "--bucket", &bucket, "--key", &key]);
    head.code(0)
        .out_has("\"sha256\": \"e266d4bf")
        .out_has("\"ObjectLockMode\": \"COMPLIANCE\"");
    let version: serde_json::Value = serde_json::from_str(&head.stdout).unwrap();
    // One argument (`--version-id=ID`): a version id may start with `-`, which the AWS
    // CLI would take for an option.
    let version = format!("--version-id={}", version["VersionId"].as_str().unwrap());
    let retention = w.aws(&[
        "s3api",
        "get-object-retention",
        "--bucket",
        &bucket,
        "--key",
        &key,
        &version,
    ]);
    retention.code(0).out_has("\"Mode\": \"COMPLIANCE\"");
    let delete = w.aws(&[
        "s3api",
        "delete-object",
        "--bucket",
        &bucket,
        "--key",
        &key,
        &version,
        "--bypass-governance-retention",
    ]);
    assert_ne!(
        delete.code,
        Some(0),
        "a locked version was deleted: {delete}"
    );
    delete.err_has("AccessDenied");

    // Raw data is never overwritten.
    w.env
        .run([
            "--nas-root",
            &nas,
            "ingest",
            "acq",
            "--project",
            "P",
            "--dataset",
            "plate7",
        ])
        .code(1)
        .err_has("already exists");

    // And the dataset stages back as it was.
    let run = stage(&w, &format!("{nas}/P/raw/plate7"), &[]);
    run.code(0);
    assert_eq!(
        read(w.env.path("scratch/P/ds/plate/layout.csv")),
        b"well\nA01\n"
    );
    w.assert_no_multipart_uploads(&bucket);
}

/// A config file with another lock mode and retention; returns its path.
fn write_config(w: &S3World, mode: &str, retain: &str) -> String {
    let path = w.env.path("s3.toml");
    write(
        &path,
        format!(
            "[s3]\nendpoint = \"{}\"\nlock_mode = \"{mode}\"\nretain = \"{retain}\"\n",
            common::s3::endpoint()
        ),
    );
    path.display().to_string()
}

#[test]
fn a_bucket_without_object_lock_is_refused_for_ingest_and_nothing_is_written() {
    let Some(w) = S3World::new("nolock") else {
        return;
    };
    let bucket = plain_bucket();
    write(w.env.path("acq/A01.tif"), "tiff A01\n");
    let nas = w.url(&bucket, "");
    w.env
        .run([
            "--nas-root",
            &nas,
            "ingest",
            "acq",
            "--project",
            "P",
            "--dataset",
            "d",
        ])
        .code(1)
        .err_has(&format!(
            "s3://{bucket}: write protection (WORM) was asked, but the bucket has no Object Lock"
        ))
        .err_has("nothing was written");
    let listing = w.aws(&["s3", "ls", "--recursive", &format!("{nas}/")]);
    assert_eq!(listing.stdout, "", "objects were written: {listing}");
}

#[test]
fn an_acquisition_that_disagrees_with_its_manifest_is_source_corrupt_and_not_uploaded() {
    let Some(w) = S3World::new("ingestbad") else {
        return;
    };
    let bucket = locked_bucket();
    let src = dataset(&w.env, "acq");
    // Two files damaged after the manifest was made.
    write(src.join("A01.tif"), "tiff A0X\n");
    write(src.join("plate/B02.tif"), vec![8u8; 300_000]);
    let nas = w.url(&bucket, "");
    let run = w.env.run([
        "--nas-root",
        &nas,
        "--config",
        &write_config(&w, "GOVERNANCE", "1d"),
        "ingest",
        "acq",
        "--project",
        "P",
        "--dataset",
        "d",
    ]);
    run.code(3)
        .err_has("A01.tif: SOURCE CORRUPT")
        .err_has("B02.tif: SOURCE CORRUPT");
    let listing = w.aws(&["s3", "ls", "--recursive", &format!("{nas}/")]);
    assert!(
        !listing.stdout.contains("A01.tif")
            && !listing.stdout.contains("B02.tif")
            && !listing.stdout.contains("MANIFEST.sha256"),
        "a damaged file or the manifest was uploaded: {listing}"
    );
    w.assert_no_multipart_uploads(&bucket);
    w.cleanup(&bucket);
}

#[test]
fn bad_locations_and_credentials_are_refused_with_the_bucket_named() {
    let Some(mut w) = S3World::new("bad") else {
        return;
    };
    let bucket = plain_bucket();
    let src = dataset(&w.env, "src");
    w.upload(&src, &bucket, "P/raw/ds");
    let url = w.url(&bucket, "P/raw/ds");

    stage(&w, "s3://Bad_Bucket/x", &[])
        .code(1)
        .err_has("invalid S3 location \"s3://Bad_Bucket/x\"")
        .err_has("write it as s3://bucket/prefix");
    stage(&w, "s3://hpcstage-no-such-bucket/x", &[])
        .code(1)
        .err_has("s3://hpcstage-no-such-bucket: the bucket hpcstage-no-such-bucket does not exist");

    // The endpoint down: a port nothing listens on.
    let down = w.env.path("down.toml");
    write(&down, "[s3]\nendpoint = \"http://127.0.0.1:9\"\n");
    let started = Instant::now();
    w.env
        .run([
            "--config",
            &down.display().to_string(),
            "--scratch-root",
            &w.env.scratch().display().to_string(),
            "stage",
            &url,
            &w.env.path("scratch/P/ds").display().to_string(),
        ])
        .code(1)
        .err_has(&format!(
            "s3://{bucket}: HeadBucket: no answer from the S3 endpoint http://127.0.0.1:9"
        ))
        .err_has("check that the endpoint in [s3] is right");
    assert!(started.elapsed() < Duration::from_secs(60));

    // Wrong credentials: refused, named, and the secret never shown.
    w.env
        .set_env("AWS_SECRET_ACCESS_KEY", "not-the-secret-at-all-0000");
    let run = stage(&w, &url, &[]);
    run.code(1)
        .err_has(&format!(
            "s3://{bucket}: HeadBucket: the S3 service refused the credentials"
        ))
        .err_has("check the access key and secret")
        .err_lacks("not-the-secret-at-all");
    assert!(!w.env.path("scratch/P/ds/A01.tif").exists());
    w.cleanup(&bucket);
}

#[test]
fn a_bucket_quota_hit_mid_upload_is_an_error_naming_the_bucket_and_nothing_is_claimed() {
    let Some(w) = S3World::new("quota") else {
        return;
    };
    // A bucket of its own: the quota must not reach the other tests.
    let bucket = format!("hpcstage-quota-{}", std::process::id());
    w.aws(&[
        "s3api",
        "create-bucket",
        "--bucket",
        &bucket,
        "--object-lock-enabled-for-bucket",
    ])
    .code(0);
    radosgw_admin(&[
        "quota",
        "set",
        "--quota-scope=bucket",
        &format!("--bucket={bucket}"),
        "--max-size=1048576",
    ])
    .code(0);
    radosgw_admin(&[
        "quota",
        "enable",
        "--quota-scope=bucket",
        &format!("--bucket={bucket}"),
    ])
    .code(0);
    for i in 0..6 {
        write(w.env.path(format!("acq/f{i}.bin")), vec![i as u8; 400_000]);
    }
    let nas = w.url(&bucket, "");
    let run = w.env.run([
        "--nas-root",
        &nas,
        "ingest",
        "acq",
        "--project",
        "P",
        "--dataset",
        "d",
        "--jobs",
        "1",
    ]);
    run.code(1)
        .err_has(&format!("s3://{bucket}/"))
        .err_has("the bucket's quota is exceeded")
        .err_has("raise the quota");
    assert!(!run.out().contains("ingested"), "{run}");
    let manifest = w.aws(&[
        "s3api",
        "head-object",
        "--bucket",
        &bucket,
        "--key",
        &w.key("P/raw/d/MANIFEST.sha256"),
    ]);
    assert_ne!(manifest.code, Some(0), "a manifest was written: {manifest}");
    w.assert_no_multipart_uploads(&bucket);
    w.cleanup(&bucket);
    let _ = w.aws(&["s3api", "delete-bucket", "--bucket", &bucket]);
}

#[test]
fn an_ingest_killed_mid_upload_is_finished_by_a_rerun_without_orphan_parts() {
    let Some(w) = S3World::new("kill") else {
        return;
    };
    let bucket = locked_bucket();
    // Big enough for multipart uploads (parts of 16 MiB) that are still in flight when
    // the process is killed.
    for i in 0..6u8 {
        let block: Vec<u8> = (0..20_000_000u32).map(|n| (n % 251) as u8 ^ i).collect();
        write(w.env.path(format!("acq/f{i}.bin")), block);
    }
    let nas = w.url(&bucket, "");
    let args = [
        "--nas-root",
        &nas,
        "ingest",
        "acq",
        "--project",
        "P",
        "--dataset",
        "big",
        "--jobs",
        "1",
    ];
    // Through a relay at about 10 MB/s, so the uploads are still in flight when the
    // process is killed, however fast the machine.
    let (relay, _) = common::s3::relay(Duration::from_millis(6));
    let config = w.env.path("relay.toml");
    write(&config, format!("[s3]\nendpoint = \"{relay}\"\n"));
    let mut cmd = w.env.command();
    cmd.arg("--config").arg(&config).args(args);
    let mut child = cmd.spawn().expect("start ingest");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let uploads = w.aws(&[
            "s3api",
            "list-multipart-uploads",
            "--bucket",
            &bucket,
            "--prefix",
            &w.prefix,
        ]);
        if uploads.stdout.contains("UploadId") {
            break;
        }
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "no multipart upload seen before the ingest ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().expect("kill -9");
    child.wait().unwrap();
    // Killed: no manifest, so no dataset; an orphan upload is there.
    let head = w.aws(&[
        "s3api",
        "head-object",
        "--bucket",
        &bucket,
        "--key",
        &w.key("P/raw/big/MANIFEST.sha256"),
    ]);
    assert_ne!(head.code, Some(0));

    let run = w.env.run(args);
    run.code(0).out_has("ingested P/raw/big");
    w.assert_no_multipart_uploads(&bucket);
    let fetched = w.env.path("fetched");
    w.aws(&[
        "s3",
        "cp",
        "--recursive",
        "--quiet",
        &format!("{nas}/P/raw/big"),
        &fetched.display().to_string(),
    ])
    .code(0);
    assert_manifest_verifies(&fetched);
    w.cleanup(&bucket);
}

#[test]
fn report_and_clean_trust_a_stage_from_s3_only_while_the_scratch_copy_matches_the_bucket() {
    let Some(w) = S3World::new("clean") else {
        return;
    };
    let bucket = plain_bucket();
    let src = dataset(&w.env, "src");
    w.upload(&src, &bucket, "P/raw/ds");
    let nas = w.url(&bucket, "");
    let roots = |args: &[&str]| {
        let mut all = vec![
            "--nas-root".to_string(),
            nas.clone(),
            "--scratch-root".to_string(),
            w.env.scratch().display().to_string(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        w.env.run(all)
    };
    roots(&["stage", &format!("{nas}/P/raw/ds")]).code(0);
    let staged = w.env.scratch().join("P/ds");
    roots(&["report", "--within", "60d"])
        .code(0)
        .out_has("SAFE     raw data verified on the NAS");

    // Edited on scratch: the only copy of that work, kept.
    write(staged.join("A01.tif"), "tiff A01 edited\n");
    roots(&["clean"])
        .code(0)
        .out_has("keep")
        .out_has("A01.tif (changed on the NAS or on scratch");
    assert!(staged.join("A01.tif").exists());

    // Back as verified: the bucket holds it, so the scratch copy goes.
    write(staged.join("A01.tif"), "tiff A01\n");
    roots(&["clean"]).code(0).out_has("remove");
    assert!(!staged.exists());
    w.cleanup(&bucket);
}

/// A server that answers every request with 503 SlowDown, counting them.
fn slow_down_server() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            seen.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 8192];
            let _ = stream.read(&mut buf);
            let body = "<?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
            let _ = write!(
                stream,
                "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, count)
}

#[test]
fn a_503_slow_down_is_retried_with_back_off_then_told_with_the_bucket_named() {
    // No RadosGW needed: the fault comes from a stand-in that always says SlowDown.
    let env = Env::new();
    let (port, count) = slow_down_server();
    write(
        env.user_config(),
        format!("[s3]\nendpoint = \"http://127.0.0.1:{port}\"\nregion = \"us-east-1\"\n"),
    );
    let mut cmd = env.command();
    for (k, v) in common::s3::credentials("AKIDEXAMPLE", "secret") {
        cmd.env(k, v);
    }
    cmd.args([
        "--scratch-root",
        &env.scratch().display().to_string(),
        "stage",
        "s3://lab-raw/P/raw/ds",
        &env.path("scratch/P/ds").display().to_string(),
    ]);
    let started = Instant::now();
    let run = env.finish(cmd);
    run.code(1)
        .err_has("s3://lab-raw: HeadBucket: the S3 service asked to slow down (503) and kept asking after the retries")
        .err_has("lower --jobs");
    let tries = count.load(std::sync::atomic::Ordering::SeqCst);
    assert!(tries >= 4, "only {tries} requests: not retried");
    // Backed off, not hammered: the retries took time.
    assert!(
        started.elapsed() > Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(!env.path("scratch/P/ds").exists());
}

#[test]
fn an_ingest_of_a_name_another_process_holds_is_refused_and_a_dead_holder_taken_over() {
    let Some(w) = S3World::new("held") else {
        return;
    };
    let bucket = locked_bucket();
    write(w.env.path("acq/A01.tif"), "tiff A01\n");
    let nas = w.url(&bucket, "");
    let config = write_config(&w, "GOVERNANCE", "1d");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("host name");
    let put_lock = |name: &str, holder: &str| {
        write(w.env.path("lock.txt"), holder);
        let file = w.env.path("lock.txt").display().to_string();
        let lock = format!("{nas}/P/raw/.{name}.ingest.lock");
        w.aws(&["s3", "cp", "--quiet", &file, &lock]).code(0);
    };
    let ingest = |name: &str| {
        w.env.run([
            "--nas-root",
            &nas,
            "--config",
            &config,
            "ingest",
            "acq",
            "--project",
            "P",
            "--dataset",
            name,
        ])
    };

    // Held by a process that is running (pid 1 always is): refused, nothing written.
    let holder = format!("pid 1 on {}", host.trim());
    put_lock("plate7", &holder);
    ingest("plate7").code(1).err_has(&format!(
        "error: {nas}/P/raw/plate7 is locked by another hpcstage process ({holder})"
    ));
    let listing = w.aws(&["s3", "ls", "--recursive", &format!("{nas}/P/raw/plate7/")]);
    assert_eq!(listing.stdout, "", "objects were written: {listing}");

    // Left by a process of this host that is gone (a killed ingest): taken over, and
    // released once the dataset is in place.
    let mut gone = std::process::Command::new("true")
        .spawn()
        .expect("run true");
    let pid = gone.id();
    gone.wait().expect("wait for true");
    put_lock("plate8", &format!("pid {pid} on {}", host.trim()));
    ingest("plate8").code(0);
    let listing = w.aws(&["s3", "ls", &format!("{nas}/P/raw/")]);
    assert!(
        !listing.stdout.contains(".plate8.ingest.lock"),
        "the lock object is left: {listing}"
    );
}
