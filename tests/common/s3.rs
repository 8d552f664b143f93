//! The S3 test server (Ceph RadosGW started by `tests/s3/up.sh`) for one test: a fresh
//! world whose config points `[s3]` at it, a prefix of its own in each bucket, and the
//! AWS CLI (the peer tool) to look at what hpcstage left there.
//!
//! The server's facts come from `tests/s3/env.sh` when it was sourced, else from the same
//! fixed test values. A test whose server is not up fails, saying how to start it (see
//! `gate`); after each test no multipart upload may be left under its prefixes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::run::{self, Run};
use super::{gate, write, Env};

fn var(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

pub(crate) fn endpoint() -> String {
    format!("http://127.0.0.1:{}", var("HPCSTAGE_S3_PORT", "7480"))
}

pub(crate) fn plain_bucket() -> String {
    var("HPCSTAGE_S3_BUCKET", "hpcstage-plain")
}

pub(crate) fn locked_bucket() -> String {
    var("HPCSTAGE_S3_LOCKED_BUCKET", "hpcstage-locked")
}

pub(crate) fn access_key() -> String {
    var("HPCSTAGE_S3_ACCESS_KEY", "HPCSTAGETESTACCESSK0")
}

pub(crate) fn secret_key() -> String {
    var(
        "HPCSTAGE_S3_SECRET_KEY",
        "hpcstage-test-only-secret-key-0123456789",
    )
}

fn aws_cli() -> String {
    var(
        "HPCSTAGE_S3_AWS",
        &format!(
            "{}/bin/aws",
            var("HPCSTAGE_S3_TOOLS_DIR", "/opt/hpcstage-s3-tools")
        ),
    )
}

/// A test world with the S3 server configured, or `None` (after the gate said so) when
/// the server is missing under an explicit opt-out.
pub(crate) struct S3World {
    pub(crate) env: Env,
    /// A prefix no other test uses (`t-<pid>-<nanos>-<name>`).
    pub(crate) prefix: String,
}

impl S3World {
    #[track_caller]
    pub(crate) fn new(name: &str) -> Option<S3World> {
        let port = var("HPCSTAGE_S3_PORT", "7480");
        let up = TcpStream::connect(format!("127.0.0.1:{port}")).is_ok()
            && Path::new(&aws_cli()).exists();
        if !gate::service(
            "s3",
            up,
            "start the S3 test server with `bash tests/s3/up.sh` (as root)",
        ) {
            return None;
        }
        let mut env = Env::new();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let prefix = format!("t-{}-{nanos}-{name}", std::process::id());
        write(
            env.user_config(),
            format!(
                "[s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\nlock_mode = \"GOVERNANCE\"\nretain = \"1d\"\n\n[purge]\nbasis = \"mtime\"\nage = \"30d\"\n",
                endpoint()
            ),
        );
        for (k, v) in credentials(&access_key(), &secret_key()) {
            env.set_env(k, v);
        }
        Some(S3World { env, prefix })
    }

    /// `s3://bucket/<prefix>/rel`.
    pub(crate) fn url(&self, bucket: &str, rel: &str) -> String {
        if rel.is_empty() {
            format!("s3://{bucket}/{}", self.prefix)
        } else {
            format!("s3://{bucket}/{}/{rel}", self.prefix)
        }
    }

    /// The key of `rel` under this test's prefix.
    pub(crate) fn key(&self, rel: &str) -> String {
        format!("{}/{rel}", self.prefix)
    }

    /// Runs the AWS CLI against the test server with the test credentials.
    pub(crate) fn aws(&self, args: &[&str]) -> Run {
        let mut cmd = run::clean(&aws_cli());
        for (k, v) in credentials(&access_key(), &secret_key()) {
            cmd.env(k, v);
        }
        cmd.env("AWS_ENDPOINT_URL", endpoint())
            .env("HOME", self.env.path("home"))
            .args(args);
        Run::of(cmd)
    }

    /// Uploads the local tree `dir` under `<prefix>/<rel>` with the AWS CLI.
    pub(crate) fn upload(&self, dir: &Path, bucket: &str, rel: &str) {
        self.aws(&[
            "s3",
            "cp",
            "--recursive",
            "--quiet",
            &dir.display().to_string(),
            &self.url(bucket, rel),
        ])
        .code(0);
    }

    /// Asserts that no multipart upload is left under this test's prefix in `bucket`.
    #[track_caller]
    pub(crate) fn assert_no_multipart_uploads(&self, bucket: &str) {
        let run = self.aws(&[
            "s3api",
            "list-multipart-uploads",
            "--bucket",
            bucket,
            "--prefix",
            &self.prefix,
            "--output",
            "json",
        ]);
        run.code(0);
        let out = run.out();
        assert!(
            !out.contains("UploadId"),
            "multipart uploads left under s3://{bucket}/{}:\n{out}",
            self.prefix
        );
    }

    /// Removes what can be removed under this test's prefix (GOVERNANCE-locked versions
    /// with the bypass); COMPLIANCE-locked versions stay until the server is purged.
    pub(crate) fn cleanup(&self, bucket: &str) {
        let run = self.aws(&[
            "s3api",
            "list-object-versions",
            "--bucket",
            bucket,
            "--prefix",
            &self.prefix,
            "--output",
            "json",
        ]);
        let Ok(listing) = serde_json::from_str::<serde_json::Value>(&run.stdout) else {
            return;
        };
        for group in ["Versions", "DeleteMarkers"] {
            for v in listing[group].as_array().into_iter().flatten() {
                let (Some(key), Some(id)) = (v["Key"].as_str(), v["VersionId"].as_str()) else {
                    continue;
                };
                // One argument: a version id may start with `-`, which the AWS CLI would
                // take for an option.
                let version = format!("--version-id={id}");
                let _ = self.aws(&[
                    "s3api",
                    "delete-object",
                    "--bucket",
                    bucket,
                    "--key",
                    key,
                    &version,
                    "--bypass-governance-retention",
                ]);
            }
        }
    }
}

/// The variables that give the binary (or the AWS CLI) these credentials and nothing of
/// the machine's own AWS configuration.
pub(crate) fn credentials(access: &str, secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", access.to_string()),
        ("AWS_SECRET_ACCESS_KEY", secret.to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_CONFIG_FILE", "/dev/null".to_string()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".to_string()),
        (
            "AWS_REQUEST_CHECKSUM_CALCULATION",
            "when_required".to_string(),
        ),
        (
            "AWS_RESPONSE_CHECKSUM_VALIDATION",
            "when_required".to_string(),
        ),
    ]
}

/// `radosgw-admin ARGS...` with the test cluster's ceph.conf.
pub(crate) fn radosgw_admin(args: &[&str]) -> Run {
    let mut cmd = run::clean("radosgw-admin");
    cmd.env(
        "CEPH_CONF",
        var(
            "CEPH_CONF",
            &format!(
                "{}/etc/ceph.conf",
                var("HPCSTAGE_S3_DIR", "/var/tmp/hpcstage-s3")
            ),
        ),
    )
    .args(args);
    Run::of(cmd)
}

/// A TCP relay to the S3 server that counts the bytes the server sends back through it,
/// and waits `pace` after each block of 64 KiB either way (a slower network).
pub(crate) fn relay(
    pace: std::time::Duration,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let (address, counted) = relay_counting(pace);
    (address, counted.down)
}

/// What a [`relay_counting`] saw.
pub(crate) struct Counted {
    /// Bytes the server sent back.
    pub(crate) down: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Bytes sent to the server (requests and what they upload).
    pub(crate) up: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Connections opened through the relay.
    pub(crate) connections: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// [`relay`], also counting the bytes sent to the server: (address, counts).
pub(crate) fn relay_counting(pace: std::time::Duration) -> (String, Counted) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind relay");
    let port = listener.local_addr().expect("relay address").port();
    let upstream = endpoint().trim_start_matches("http://").to_string();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = sent.clone();
    let uploaded = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let up_count = uploaded.clone();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let opened = connections.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            opened.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                continue;
            };
            let (mut from_client, mut to_server) = (
                client.try_clone().expect("clone"),
                server.try_clone().expect("clone"),
            );
            let up = up_count.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n @ 1..) = from_client.read(&mut buf) {
                    std::thread::sleep(pace);
                    up.fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst);
                    if to_server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = to_server.shutdown(std::net::Shutdown::Write);
            });
            let (mut from_server, mut to_client) = (server, client);
            let count = count.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    match from_server.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            std::thread::sleep(pace);
                            count.fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst);
                            if to_client.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = to_client.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (
        format!("http://127.0.0.1:{port}"),
        Counted {
            down: sent,
            up: uploaded,
            connections,
        },
    )
}

/// `len` bytes that depend on `seed` (each MiB differs from the next).
pub(crate) fn seeded_bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(31)
                .wrapping_add(seed ^ (i >> 20) as u8)
        })
        .collect()
}

impl S3World {
    /// The backend itself on `bucket` under this test's prefix, with the test
    /// credentials in the process's environment (the SDK reads them there): only for a
    /// binary of one test, where no other thread reads the environment.
    pub(crate) fn store_of_the_only_test(
        &self,
        bucket: &str,
    ) -> hpcstage_staging::storage::S3Store {
        use hpcstage_staging::storage::{S3Options, S3Store, S3Url};
        for (k, v) in credentials(&access_key(), &secret_key()) {
            std::env::set_var(k, v);
        }
        let url = S3Url::parse(&self.url(bucket, "")).expect("the test prefix is an S3 URL");
        let opts = S3Options {
            endpoint: Some(endpoint()),
            region: Some("us-east-1".into()),
            ..S3Options::default()
        };
        S3Store::connect(&url, &opts).expect("connect to the S3 test server")
    }
}
