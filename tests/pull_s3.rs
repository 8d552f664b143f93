//! `hpcstage pull` of a run whose NAS is an S3 prefix (`nas_root = "s3://bucket/prefix"`),
//! against the real single-node cluster of `tests/cluster/` (the compute job) and the
//! real Ceph RadosGW of `tests/s3/` (the results): the objects, the manifest written last,
//! every object equal to scratch, the provenance; `--worm` with and without Object Lock;
//! a pull killed mid-upload and finished by a rerun; wrong credentials. What hpcstage left
//! on the server is read with the AWS CLI, the peer tool.
#![allow(clippy::print_stderr)]

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{cluster, Chain};
use common::fs::read_json;
use common::pull::{wait_ended, Lab};
use common::run::wait_child;
use common::s3::{
    access_key, credentials, endpoint, locked_bucket, plain_bucket, secret_key, S3World,
};
use common::{assert_manifest_verifies, read, read_text, regular_files, write, Run};

/// How long a short job may take from submission to accounting saying it ended.
const JOB_BOUND: Duration = Duration::from_secs(120);

/// A predict step that works: a label mask of one object, and a one-row table.
const PREDICT_OK: &str = r#"{ tiny_mask; printf 'mask of %s\n' "$(basename "$input")"; } >"$mask"
printf 'label,area\n1,%s\n' "$(stat -c %s "$input")" >"$table""#;

/// A lab whose `nas_root` is `s3://<bucket>/<test prefix>`, with the test server's `[s3]`
/// settings and credentials; raw data is ingested into a local folder before the switch.
struct S3Lab {
    lab: Lab,
    w: S3World,
    bucket: String,
    raw: PathBuf,
}

impl S3Lab {
    fn new(w: S3World, bucket: String) -> S3Lab {
        let lab = Lab::new();
        let raw = lab.ingest("d1");
        lab.set_nas_root(&w.url(&bucket, ""));
        let config = lab.path("xdg-config/hpcstage/config.toml");
        let text = read_text(&config);
        write(
            &config,
            format!(
                "{text}\n[s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\nlock_mode = \"GOVERNANCE\"\nretain = \"1d\"\n",
                endpoint()
            ),
        );
        S3Lab {
            lab,
            w,
            bucket,
            raw,
        }
    }

    /// The binary in the lab with the test server's credentials.
    fn command(&self) -> Command {
        let mut cmd = self.lab.command();
        for (k, v) in credentials(&access_key(), &secret_key()) {
            cmd.env(k, v);
        }
        cmd
    }

    fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command();
        cmd.args(args);
        Run::of(cmd)
    }

    /// `stage-and-run` of the raw dataset with the stand-in, no pull-back job; waits for
    /// the compute job to end in `state`.
    fn run_job(&self, predict: &str, state: &str) -> Chain {
        let stand_in = self.lab.stand_in("predict", predict);
        let run = self.run([
            "stage-and-run".to_string(),
            self.raw.display().to_string(),
            "unet-seg".into(),
            "--project".into(),
            "P".into(),
            "--json".into(),
            "--no-pull".into(),
            "-p".into(),
            format!("model={}", self.lab.model().display()),
            "-p".into(),
            format!(
                "predict_cmd={} --model {{model}} --input {{input}} --mask {{mask}} --table {{table}}",
                stand_in.display()
            ),
            "-p".into(),
            "cpus=1".into(),
            "-p".into(),
            "mem=500M".into(),
            "-p".into(),
            "time=10m".into(),
        ]);
        run.code(0);
        let chain = Chain::of(&run);
        assert_eq!(
            chain.results_dir,
            PathBuf::from(self.w.url(
                &self.bucket,
                &format!("P/results/segmentation/{}", chain.run_id)
            )),
            "results go to <nas_root>/<project>/results/<workflow>/<run>"
        );
        let compute = wait_ended(&chain.compute_job, JOB_BOUND);
        assert_eq!(compute.state, state, "{compute:?}");
        chain
    }

    /// The key prefix of the run's results.
    fn results_rel(&self, chain: &Chain) -> String {
        format!("P/results/segmentation/{}", chain.run_id)
    }

    /// Every key under the test's prefix in the bucket, with its LastModified (ISO 8601
    /// in UTC, which compares as text).
    fn objects(&self) -> Vec<(String, String)> {
        let run = self.w.aws(&[
            "s3api",
            "list-objects-v2",
            "--bucket",
            &self.bucket,
            "--prefix",
            &self.w.prefix,
            "--output",
            "json",
        ]);
        run.code(0);
        let listing: serde_json::Value = if run.stdout.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&run.stdout).expect("list-objects-v2 JSON")
        };
        let mut objects: Vec<(String, String)> = listing["Contents"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| {
                Some((
                    o["Key"].as_str()?.to_string(),
                    o["LastModified"].as_str()?.to_string(),
                ))
            })
            .collect();
        objects.sort();
        objects
    }

    fn keys(&self) -> Vec<String> {
        self.objects().into_iter().map(|(k, _)| k).collect()
    }

    /// Downloads the results prefix object by object with the AWS CLI into a fresh local
    /// folder (`aws s3 cp --recursive` fails on empty objects of RGW, like empty logs).
    fn fetch(&self, chain: &Chain, name: &str) -> PathBuf {
        self.fetch_rel(&self.results_rel(chain), name)
    }

    /// Downloads `<test prefix>/<rel>/` into a fresh local folder `name`.
    fn fetch_rel(&self, rel: &str, name: &str) -> PathBuf {
        let dest = self.lab.path(name);
        let prefix = format!("{}/{rel}/", self.w.prefix);
        for key in self.keys() {
            let Some(rel) = key.strip_prefix(&prefix) else {
                continue;
            };
            let to = dest.join(rel);
            std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
            self.w
                .aws(&[
                    "s3api",
                    "get-object",
                    "--bucket",
                    &self.bucket,
                    "--key",
                    &key,
                    &to.display().to_string(),
                ])
                .code(0);
        }
        dest
    }

    /// `head-object` of a key under the run's results, as JSON.
    fn head(&self, chain: &Chain, rel: &str) -> serde_json::Value {
        let key = self.w.key(&format!("{}/{rel}", self.results_rel(chain)));
        let run = self.w.aws(&[
            "s3api",
            "head-object",
            "--bucket",
            &self.bucket,
            "--key",
            &key,
            "--output",
            "json",
        ]);
        run.code(0);
        serde_json::from_str(&run.stdout).expect("head-object JSON")
    }
}

/// Every file of the fetched results, but the three pull writes, equals its scratch copy.
fn assert_equal_to_scratch(fetched: &Path, run_dir: &Path) -> usize {
    let mut compared = 0;
    for rel in regular_files(fetched) {
        if ["MANIFEST.sha256", "README.md", "run.json"].contains(&rel.to_str().unwrap_or("")) {
            continue;
        }
        assert!(
            read(fetched.join(&rel)) == read(run_dir.join(&rel)),
            "{} differs from scratch",
            rel.display()
        );
        compared += 1;
    }
    compared
}

#[test]
fn a_run_pulled_to_s3_has_every_output_read_back_equal_to_scratch_and_its_manifest_last() {
    let Some(_cluster) = cluster() else { return };
    let Some(w) = S3World::new("pull") else {
        return;
    };
    let s3 = S3Lab::new(w, plain_bucket());
    let chain = s3.run_job(PREDICT_OK, "COMPLETED");
    let id = chain.run_id.as_str();
    let bucket = s3.bucket.clone();

    // Wrong credentials: exit 1, the bucket named, the secret never shown, nothing written.
    let mut cmd = s3.command();
    cmd.env("AWS_SECRET_ACCESS_KEY", "not-the-secret-at-all-0000")
        .args(["pull", id]);
    Run::of(cmd)
        .code(1)
        .err_has(&format!(
            "s3://{bucket}: HeadBucket: the S3 service refused the credentials"
        ))
        .err_has("check the access key and secret")
        .err_lacks("not-the-secret-at-all");
    assert_eq!(s3.keys(), Vec::<String>::new());

    // --worm on a bucket without Object Lock: refused before anything is written.
    s3.run(["pull", id, "--worm"])
        .code(1)
        .err_has(&format!(
            "s3://{bucket}: write protection (WORM) was asked, but the bucket has no Object Lock"
        ))
        .err_has("nothing was written");
    assert_eq!(s3.keys(), Vec::<String>::new());

    let started = Instant::now();
    let run = s3.run(["pull", id]);
    eprintln!("pull to S3: {:.1?}", started.elapsed());
    run.code(0).out_has(&format!(
        "pulled run {id} → {}",
        chain.results_dir.display()
    ));

    // What is on the server: every output, the logs and the provenance, and a manifest
    // that GNU sha256sum accepts; every object the bytes scratch holds.
    let fetched = s3.fetch(&chain, "fetched");
    assert_manifest_verifies(&fetched);
    let mut names: Vec<String> = regular_files(&fetched)
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    names.sort();
    for name in [
        "MANIFEST.sha256",
        "README.md",
        "run.json",
        "job.sbatch",
        "masks/img1.ome.tif",
        "masks/img2.ome.tif",
        "tables/img1.csv",
        "validation.json",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
    }
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("work/") || n.contains(".hpcstage")),
        "intermediates or bookkeeping uploaded: {names:?}"
    );
    let manifest = read_text(fetched.join("MANIFEST.sha256"));
    assert_eq!(manifest.lines().count(), names.len() - 1, "{manifest}");
    assert!(assert_equal_to_scratch(&fetched, &chain.run_dir) >= 5);

    // Each object carries its SHA-256, the one the manifest lists.
    let head = s3.head(&chain, "masks/img1.ome.tif");
    let listed = manifest
        .lines()
        .find(|l| l.ends_with("  masks/img1.ome.tif"))
        .expect("mask listed");
    assert_eq!(head["Metadata"]["sha256"].as_str(), Some(&listed[..64]));
    // The manifest was written last: no object is newer.
    let objects = s3.objects();
    let manifest_at = &objects
        .iter()
        .find(|(k, _)| k.ends_with("/MANIFEST.sha256"))
        .expect("manifest listed")
        .1;
    for (key, at) in &objects {
        assert!(
            at <= manifest_at,
            "{key} ({at}) is newer than the manifest ({manifest_at})"
        );
    }

    // Provenance.
    let prov = read_json(fetched.join("run.json"));
    assert_eq!(prov["run"]["id"], id);
    assert_eq!(prov["compute_job"]["state"], "COMPLETED");
    let readme = read_text(fetched.join("README.md"));
    assert!(readme.contains("- executor: SLURM\n"), "{readme}");
    assert!(
        readme.contains(&format!("- job id: {}\n", chain.compute_job)),
        "{readme}"
    );

    // The run knows it is pulled, to the S3 prefix, and a second pull changes nothing.
    let status = s3.lab.status(id);
    assert_eq!(status["phase"], "pulled", "{status:#}");
    let marker = read_json(chain.run_dir.join(".hpcstage/pulled.json"));
    assert_eq!(
        marker["results_dir"].as_str(),
        Some(chain.results_dir.to_str().unwrap())
    );
    s3.run(["status", id])
        .code(0)
        .out_has(&format!("results:   {}", chain.results_dir.display()));
    let keys = s3.keys();
    s3.run(["pull", id]).code(0).out_has("already pulled");
    assert_eq!(s3.keys(), keys);
    assert!(!chain.run_dir.join("work").exists(), "work/ was not purged");
    s3.w.assert_no_multipart_uploads(&bucket);
    s3.w.cleanup(&bucket);
}

#[test]
fn a_pull_to_s3_killed_mid_upload_is_finished_by_a_rerun_and_worm_locks_every_object() {
    let Some(_cluster) = cluster() else { return };
    let Some(w) = S3World::new("pullkill") else {
        return;
    };
    let s3 = S3Lab::new(w, locked_bucket());
    // 2 x 40 MB masks: multipart uploads (parts of 16 MiB) still in flight when killed.
    let chain = s3.run_job(
        r#"{ tiny_mask; head -c 40000000 /dev/urandom; } >"$mask"
printf 'label,area\n1,1\n' >"$table""#,
        "COMPLETED",
    );
    let id = chain.run_id.as_str();
    let bucket = s3.bucket.clone();

    // Through a relay at about 10 MB/s, so the uploads are still in flight when the
    // process is killed, however fast the machine.
    let (slow, _) = common::s3::relay(Duration::from_millis(6));
    let slow_config = s3.lab.path("slow.toml");
    write(&slow_config, format!("[s3]\nendpoint = \"{slow}\"\n"));
    let mut cmd = s3.command();
    cmd.arg("--config")
        .arg(&slow_config)
        .args(["pull", id, "--worm", "--jobs", "1"]);
    let shown = format!("{cmd:?}");
    let mut child = cmd.spawn().expect("start pull");
    let started = Instant::now();
    loop {
        let uploads = s3.w.aws(&[
            "s3api",
            "list-multipart-uploads",
            "--bucket",
            &bucket,
            "--prefix",
            &s3.w.prefix,
        ]);
        if uploads.stdout.contains("UploadId") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60)
                && child.try_wait().expect("poll").is_none(),
            "no multipart upload seen before the pull ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().expect("kill -9 the pull");
    let killed = wait_child(&shown, child, Duration::from_secs(10));
    assert_eq!(
        killed.code, None,
        "the pull ended before it was killed\n{killed}"
    );
    // Killed: no manifest, so no results; the orphan upload is there.
    let manifest_key = format!("{}/{}/MANIFEST.sha256", s3.w.prefix, s3.results_rel(&chain));
    assert!(
        !s3.keys().contains(&manifest_key),
        "a manifest was written by the killed pull"
    );
    assert_eq!(s3.lab.status(id)["phase"].as_str(), Some("pulling"));

    let again = s3.run(["pull", id, "--worm"]);
    again.code(0).out_has(&format!("pulled run {id}"));
    s3.w.assert_no_multipart_uploads(&bucket);
    let fetched = s3.fetch(&chain, "fetched");
    assert_manifest_verifies(&fetched);
    assert!(assert_equal_to_scratch(&fetched, &chain.run_dir) >= 5);

    // Every object, the manifest included, carries the retention of [s3], read back; a
    // delete of a locked version is refused.
    for rel in ["masks/img1.ome.tif", "README.md", "MANIFEST.sha256"] {
        let head = s3.head(&chain, rel);
        assert_eq!(head["ObjectLockMode"], "GOVERNANCE", "{rel}: {head:#}");
        let version = format!("--version-id={}", head["VersionId"].as_str().unwrap());
        let key = s3.w.key(&format!("{}/{rel}", s3.results_rel(&chain)));
        let delete = s3.w.aws(&[
            "s3api",
            "delete-object",
            "--bucket",
            &bucket,
            "--key",
            &key,
            &version,
        ]);
        assert_ne!(
            delete.code,
            Some(0),
            "a locked version was deleted: {delete}"
        );
        delete.err_has("AccessDenied");
    }
    assert_eq!(s3.lab.status(id)["phase"], "pulled");
    s3.w.cleanup(&bucket);
}

#[test]
fn a_failed_run_gets_its_logs_under_failed_on_s3_and_no_results_prefix() {
    let Some(_cluster) = cluster() else { return };
    let Some(w) = S3World::new("pullfail") else {
        return;
    };
    let s3 = S3Lab::new(w, plain_bucket());
    let chain = s3.run_job("echo 'predict: out of cheese' >&2\nexit 3", "FAILED");
    let id = chain.run_id.as_str();
    let bucket = s3.bucket.clone();
    let failed_rel = format!("P/results/segmentation/_failed/{id}");
    s3.run(["pull", id])
        .code(4)
        .err_has("not accepted")
        .err_has(&format!("compute job {} ended FAILED", chain.compute_job))
        .err_has(&s3.w.url(&bucket, &failed_rel));

    let failed = s3.fetch_rel(&failed_rel, "failed");
    assert_manifest_verifies(&failed);
    let readme = read_text(failed.join("README.md"));
    assert!(readme.starts_with("# FAILED"), "{readme}");
    let err_log = format!("logs/unet-seg-{}_0.err", chain.compute_job);
    assert!(read_text(failed.join(&err_log)).contains("out of cheese"));
    let manifest = read_text(failed.join("MANIFEST.sha256"));
    for name in ["README.md", err_log.as_str(), "validation.json"] {
        assert!(
            manifest.contains(&format!("  {name}\n")),
            "{name} not in\n{manifest}"
        );
    }
    let results = format!("{}/{}/", s3.w.prefix, s3.results_rel(&chain));
    assert!(
        !s3.keys().iter().any(|k| k.starts_with(&results)),
        "a failed run reached the results prefix"
    );
    assert_eq!(s3.lab.status(id)["phase"], "pull-failed");
    assert!(chain.run_dir.join("work").is_dir(), "intermediates purged");

    // Pulling again fails the same way and leaves the logs as they are.
    let keys = s3.objects();
    s3.run(["pull", id]).code(4);
    assert_eq!(s3.objects(), keys);
    s3.w.assert_no_multipart_uploads(&bucket);
    s3.w.cleanup(&bucket);
}

#[test]
fn pull_worm_of_a_run_pulled_to_s3_before_locks_every_object_it_lists() {
    let Some(_cluster) = cluster() else { return };
    let Some(w) = S3World::new("pullworm") else {
        return;
    };
    let s3 = S3Lab::new(w, locked_bucket());
    let chain = s3.run_job(PREDICT_OK, "COMPLETED");
    let id = chain.run_id.as_str();
    s3.run(["pull", id]).code(0).out_has("pulled run");
    let head = s3.head(&chain, "masks/img1.ome.tif");
    assert!(head.get("ObjectLockMode").is_none(), "{head:#}");

    s3.run(["pull", id, "--worm"])
        .code(0)
        .out_has("already pulled")
        .out_has("write-protected it (--worm)");
    let manifest = read_text(s3.fetch(&chain, "fetched").join("MANIFEST.sha256"));
    let mut rels: Vec<&str> = manifest.lines().map(|l| &l[66..]).collect();
    rels.push("MANIFEST.sha256");
    for rel in rels {
        let head = s3.head(&chain, rel);
        assert_eq!(head["ObjectLockMode"], "GOVERNANCE", "{rel}: {head:#}");
        let retention = s3.w.aws(&[
            "s3api",
            "get-object-retention",
            "--bucket",
            &s3.bucket,
            "--key",
            &s3.w.key(&format!("{}/{rel}", s3.results_rel(&chain))),
            &format!("--version-id={}", head["VersionId"].as_str().unwrap()),
        ]);
        retention.code(0).out_has("\"Mode\": \"GOVERNANCE\"");
    }
    s3.w.cleanup(&s3.bucket);
}

#[test]
fn a_rerun_of_a_killed_pull_does_not_send_again_an_object_the_server_holds_equal() {
    let Some(_cluster) = cluster() else { return };
    let Some(w) = S3World::new("pullresume") else {
        return;
    };
    let s3 = S3Lab::new(w, plain_bucket());
    // 2 x 20 MB masks: multipart uploads of 2 parts; sent one file at a time.
    let chain = s3.run_job(
        r#"{ tiny_mask; head -c 20000000 /dev/urandom; } >"$mask"
printf 'label,area\n1,%s\n' "$(stat -c %s "$input")" >"$table""#,
        "COMPLETED",
    );
    let id = chain.run_id.as_str();
    let bucket = s3.bucket.clone();
    let results = s3.results_rel(&chain);
    let first = s3.w.key(&format!("{results}/masks/img1.ome.tif"));

    // Through a relay at about 10 MB/s, killed once the first mask is complete on the
    // server (the second one not yet).
    let (slow, _) = common::s3::relay(Duration::from_millis(6));
    let slow_config = s3.lab.path("slow.toml");
    write(&slow_config, format!("[s3]\nendpoint = \"{slow}\"\n"));
    let mut cmd = s3.command();
    cmd.arg("--config")
        .arg(&slow_config)
        .args(["pull", id, "--jobs", "1"]);
    let shown = format!("{cmd:?}");
    let mut child = cmd.spawn().expect("start pull");
    let started = Instant::now();
    while !s3.keys().contains(&first) {
        assert!(
            started.elapsed() < Duration::from_secs(60)
                && child.try_wait().expect("poll").is_none(),
            "the first mask was not seen on the server before the pull ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().expect("kill -9 the pull");
    let killed = wait_child(&shown, child, Duration::from_secs(10));
    assert_eq!(
        killed.code, None,
        "the pull ended before it was killed\n{killed}"
    );
    let second = s3.w.key(&format!("{results}/masks/img2.ome.tif"));
    assert!(!s3.keys().contains(&second), "both masks were complete");

    // An object that only claims to be a table: the SHA-256 of scratch's table in its
    // metadata, the same size, other bytes. Declared metadata alone is not trusted.
    let table = chain.run_dir.join("tables/img2.csv");
    let real = read(&table);
    let forged = s3.lab.path("forged.csv");
    write(&forged, vec![b'x'; real.len()]);
    let sha = Command::new("sha256sum")
        .arg(&table)
        .output()
        .expect("sha256sum");
    let sha = String::from_utf8_lossy(&sha.stdout)[..64].to_string();
    s3.w.aws(&[
        "s3api",
        "put-object",
        "--bucket",
        &bucket,
        "--key",
        &s3.w.key(&format!("{results}/tables/img2.csv")),
        "--body",
        &forged.display().to_string(),
        "--metadata",
        &format!("sha256={sha}"),
    ])
    .code(0);

    // The rerun, through a relay that counts what is sent to the server.
    let (counted, counts) = common::s3::relay_counting(Duration::ZERO);
    let config = s3.lab.path("counted.toml");
    write(&config, format!("[s3]\nendpoint = \"{counted}\"\n"));
    let mut cmd = s3.command();
    cmd.arg("--config").arg(&config).args(["pull", id]);
    Run::of(cmd).code(0).out_has(&format!("pulled run {id}"));
    let sent = counts.up.load(std::sync::atomic::Ordering::SeqCst);
    let mask = std::fs::metadata(chain.run_dir.join("masks/img2.ome.tif"))
        .expect("mask")
        .len();
    assert!(
        sent >= mask && sent < 2 * mask,
        "the rerun sent {sent} bytes: the second mask ({mask} bytes) once, the first not again"
    );
    s3.w.assert_no_multipart_uploads(&bucket);
    let fetched = s3.fetch(&chain, "fetched");
    assert_manifest_verifies(&fetched);
    assert!(assert_equal_to_scratch(&fetched, &chain.run_dir) >= 5);
    s3.w.cleanup(&bucket);
}
