//! Remote NAS access over SSH and SFTP, against a real OpenSSH server on loopback
//! ([`common::sshd`]): each test starts its own `sshd` and reaches it as `nas` through the
//! world's `~/.ssh`.
//!
//! When the tests run as root, the remote side is the unprivileged user `hpcstage-nas`, so
//! "permission denied" on the NAS is real.

mod common;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::fs::read_json;
use common::run::{self, wait_child, Run};
use common::sshd::{alive, Sshd};
use common::{
    assert_final_names_match_source, assert_manifest_verifies, chmod, fingerprint, is_root, mode,
    needs_root, noise, read, read_text, temporaries, tricky_tree, write, Env, Mount,
};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// The fixture itself: a real sshd, reachable as `nas` with the world's keys
// ---------------------------------------------------------------------------------------

/// `ssh [world options] nas COMMAND` run to the end.
fn ssh(sshd: &Sshd, command: &str) -> Run {
    let mut cmd = sshd.ssh();
    cmd.arg(sshd.host_alias()).arg(command);
    Run::of(cmd)
}

/// A client process, killed when the test fails before it waits for it.
struct Client(Option<Child>);

impl Client {
    /// The process, to wait for; the guard no longer kills it.
    fn take(&mut self) -> Child {
        self.0.take().expect("the client was already taken")
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `ssh nas 'echo $$; exec sleep 30'` and waits (at most 10 s) until the remote
/// command runs; returns the client and the remote command's pid.
fn start_long_session(sshd: &Sshd) -> (Client, i32) {
    let mut cmd = sshd.ssh();
    cmd.arg(sshd.host_alias())
        .arg("echo $$; exec sleep 30")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start ssh");
    let stdout = child.stdout.take().expect("ssh stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(line) => line,
        Err(e) => {
            let _ = child.kill();
            panic!(
                "the remote command did not start within 10 s ({e})\n--- sshd log ---\n{}",
                sshd.log()
            );
        }
    };
    let pid = match line.trim().parse() {
        Ok(pid) => pid,
        Err(e) => {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect ssh output");
            panic!(
                "the remote command printed {line:?}, not its pid ({e}); ssh stderr:\n{}\n\
                 --- sshd log ---\n{}",
                String::from_utf8_lossy(&out.stderr),
                sshd.log()
            )
        }
    };
    (Client(Some(child)), pid)
}

#[test]
fn fixture_ssh_logs_in_with_the_world_key_as_the_unprivileged_login_user() {
    let env = Env::new();
    let sshd = Sshd::start(&env);

    ssh(&sshd, "true").code(0);
    let run = ssh(&sshd, "id -un");
    run.code(0);
    assert_eq!(run.stdout.trim(), sshd.user(), "{run}");
    if is_root() {
        assert_eq!(sshd.user(), "hpcstage-nas");
        let run = ssh(&sshd, "id -u");
        run.code(0);
        assert_ne!(
            run.stdout.trim(),
            "0",
            "the login user must not be root\n{run}"
        );
    }

    // It was the real server, with public key authentication.
    let log = sshd.log();
    assert!(
        log.contains(&format!(
            "Accepted publickey for {} from 127.0.0.1",
            sshd.user()
        )),
        "the sshd log lacks the login\n{log}"
    );
}

#[test]
fn fixture_world_files_describe_the_server() {
    let env = Env::new();
    let sshd = Sshd::start(&env);

    let config = read_text(env.path("home/.ssh/config"));
    assert_eq!(
        config,
        format!(
            "Host nas\n    HostName 127.0.0.1\n    Port {}\n    User {}\n    IdentityFile {}\n",
            sshd.port(),
            sshd.user(),
            env.path("home/.ssh/id_ed25519").display()
        )
    );
    assert_eq!(common::mode(env.path("home/.ssh")), 0o700);
    assert_eq!(common::mode(sshd.user_key_path()), 0o600);

    // The known_hosts line is what the server really presents on that port.
    assert_eq!(
        read_text(env.path("home/.ssh/known_hosts")),
        format!("{}\n", sshd.known_hosts_line())
    );
    assert!(sshd.host_public_key_line().starts_with("ssh-ed25519 AAAA"));
    let port = sshd.port().to_string();
    let scan = run::tool(
        "ssh-keyscan",
        &["-p", &port, "-t", "ed25519", "-T", "10", "127.0.0.1"],
    );
    scan.code(0);
    let scanned: Vec<&str> = scan
        .stdout
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert_eq!(scanned, [sshd.known_hosts_line()], "{scan}");
}

#[test]
fn fixture_specs_address_the_remote_dir_with_and_without_the_alias() {
    let env = Env::new();
    let sshd = Sshd::start(&env);
    let dir = sshd.remote_dir(&env, "remote/nas");

    // nas:/abs/path
    let spec = sshd.spec(&dir);
    assert_eq!(spec, format!("nas:{}", dir.display()));
    let (host, path) = spec.split_once(':').expect("host:path");
    let mut cmd = sshd.ssh();
    cmd.arg(host)
        .arg(format!("test -d '{path}' && test -w '{path}'"));
    Run::of(cmd).code(0);

    // USER@127.0.0.1:PORT:/abs/path, with no config at all.
    let direct = sshd.direct_spec(&dir);
    let mut parts = direct.splitn(3, ':');
    let (dest, port, path) = (
        parts.next().expect("destination"),
        parts.next().expect("port"),
        parts.next().expect("path"),
    );
    assert_eq!(dest, format!("{}@127.0.0.1", sshd.user()));
    assert_eq!(port, sshd.port().to_string());
    assert_eq!(Path::new(path), dir);
    let mut cmd = run::clean("ssh");
    cmd.arg("-F")
        .arg("/dev/null")
        .arg("-i")
        .arg(sshd.user_key_path())
        .arg(format!(
            "-oUserKnownHostsFile={}",
            env.path("home/.ssh/known_hosts").display()
        ))
        .args([
            "-oGlobalKnownHostsFile=/dev/null",
            "-oStrictHostKeyChecking=yes",
            "-oBatchMode=yes",
            "-oIdentitiesOnly=yes",
            "-p",
            port,
            dest,
        ])
        .arg(format!("test -d '{path}' && test -w '{path}'"));
    Run::of(cmd).code(0);
}

#[test]
fn fixture_sftp_reads_and_writes_the_remote_dir_and_meets_permission_denied() {
    let env = Env::new();
    let sshd = Sshd::start(&env);
    let remote = sshd.remote_dir(&env, "nas");
    write(remote.join("hello.txt"), "from the NAS\n");
    std::fs::create_dir(remote.join("locked")).expect("mkdir locked");
    sshd.give_to_login_user(&remote);
    chmod(remote.join("locked"), 0o555);
    let local = env.path("local");
    std::fs::create_dir(&local).expect("mkdir local");
    write(local.join("up.txt"), "to the NAS\n");

    let run = sshd.sftp_batch(&format!(
        "get {r}/hello.txt {l}/hello.txt\nput {l}/up.txt {r}/up.txt\n",
        r = remote.display(),
        l = local.display()
    ));
    run.code(0);
    assert_eq!(read_text(local.join("hello.txt")), "from the NAS\n");
    assert_eq!(read_text(remote.join("up.txt")), "to the NAS\n");
    let owner = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(remote.join("up.txt")).expect("stat up.txt"),
    );
    let run = run::tool("id", &["-u", sshd.user()]);
    run.code(0);
    assert_eq!(
        owner.to_string(),
        run.stdout.trim(),
        "written by the login user"
    );

    // A read-only folder stays read-only for the login user (root would write anyway).
    let run = sshd.sftp_batch(&format!(
        "put {l}/up.txt {r}/locked/up.txt\n",
        r = remote.display(),
        l = local.display()
    ));
    assert_eq!(run.code, Some(1), "{run}");
    assert!(run.stderr.contains("Permission denied"), "{run}");
    assert!(!remote.join("locked/up.txt").exists());
}

#[test]
fn fixture_kill_connections_ends_open_sessions_and_keeps_listening() {
    let env = Env::new();
    let sshd = Sshd::start(&env);
    let (mut client, remote_pid) = start_long_session(&sshd);
    assert!(alive(remote_pid), "the remote sleep is not running");

    let killed = sshd.kill_connections();
    assert!(killed >= 1, "no connection was killed");
    assert!(!alive(remote_pid), "the remote sleep survived");
    // The client notices at once (its command would run 30 s).
    let run = wait_child(
        "ssh nas 'echo $$; exec sleep 30'",
        client.take(),
        Duration::from_secs(10),
    );
    assert_eq!(run.code, Some(255), "{run}");
    // Which of its messages the client prints depends on what it was doing when the
    // connection went away.
    assert!(
        [
            "Connection to 127.0.0.1 closed by remote host.",
            "client_loop: send disconnect: Broken pipe",
            "Connection reset by peer",
        ]
        .iter()
        .any(|m| run.stderr.contains(m)),
        "{run}"
    );

    // The listener still serves new connections.
    ssh(&sshd, "true").code(0);
    let again = ssh(&sshd, "id -un");
    again.code(0);
    assert_eq!(again.stdout.trim(), sshd.user());
}

#[test]
fn fixture_refuses_a_user_key_that_is_not_authorized() {
    let env = Env::new();
    let sshd = Sshd::start(&env);
    sshd.wrong_user_key(&env);

    let run = ssh(&sshd, "true");
    assert_eq!(run.code, Some(255), "{run}");
    assert!(
        run.stderr.contains("Permission denied (publickey)"),
        "{run}"
    );
    assert!(
        !sshd.log().contains("Accepted publickey"),
        "the server let the wrong key in\n{}",
        sshd.log()
    );
}

#[test]
fn fixture_unknown_host_key_fails_strict_host_key_checking() {
    let env = Env::new();
    let sshd = Sshd::start(&env);
    sshd.write_known_hosts(&env, "");

    let run = ssh(&sshd, "true");
    assert_eq!(run.code, Some(255), "{run}");
    assert!(
        run.stderr.contains("Host key verification failed."),
        "{run}"
    );
    assert!(
        run.stderr.contains(&format!(
            "No ED25519 host key is known for [127.0.0.1]:{}",
            sshd.port()
        )),
        "{run}"
    );
}

#[test]
fn fixture_changed_host_key_fails_strict_host_key_checking() {
    let env = Env::new();
    let sshd = Sshd::start(&env);
    sshd.write_wrong_host_key(&env);
    let known = read_text(env.path("home/.ssh/known_hosts"));
    assert!(known.starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 ", sshd.port())));
    assert_ne!(known.trim(), sshd.known_hosts_line());

    let run = ssh(&sshd, "true");
    assert_eq!(run.code, Some(255), "{run}");
    assert!(
        run.stderr
            .contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{run}"
    );
    assert!(
        run.stderr.contains("Host key verification failed."),
        "{run}"
    );
}

#[test]
fn fixture_drop_stops_the_server_and_its_sessions() {
    let env = Env::new();
    let sshd = Sshd::start(&env);
    let port = sshd.port();
    let listener = i32::try_from(sshd.pid()).expect("pid fits");
    let (mut client, remote_pid) = start_long_session(&sshd);

    let started = Instant::now();
    drop(sshd);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drop took {:?}",
        started.elapsed()
    );
    assert!(!alive(listener), "the listener survived the fixture");
    assert!(
        !alive(remote_pid),
        "the remote command survived the fixture"
    );
    assert!(
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(),
        "port {port} still accepts connections"
    );
    let run = wait_child(
        "ssh nas 'echo $$; exec sleep 30'",
        client.take(),
        Duration::from_secs(10),
    );
    assert_eq!(run.code, Some(255), "{run}");
}

// ---------------------------------------------------------------------------------------
// hpcstage against the remote NAS
// ---------------------------------------------------------------------------------------

/// A world with a purge policy (no warning noise) and its own sshd.
fn remote_world() -> (Env, Sshd) {
    let env = Env::new();
    write(
        env.user_config(),
        "[purge]\nbasis = \"mtime\"\nage = \"30d\"\nwarn = \"7d\"\n",
    );
    let sshd = Sshd::start(&env);
    (env, sshd)
}

/// Writes `src`'s `MANIFEST.sha256` and hands `owned` (the NAS folder it is in) to the
/// login user, as a dataset on the NAS host is.
fn publish_on_nas(env: &Env, sshd: &Sshd, src: &Path, owned: &Path) {
    env.run([
        OsStr::new("manifest"),
        OsStr::new("create"),
        src.as_os_str(),
    ])
    .code(0);
    sshd.give_to_login_user(owned);
}

/// The tricky tree as a dataset on the NAS host, `remote/P/raw/plate`, with a
/// `MANIFEST.sha256`, owned by the login user. Returns the folder and its regular files.
fn remote_dataset(env: &Env, sshd: &Sshd) -> (PathBuf, Vec<PathBuf>) {
    let nas = sshd.remote_dir(env, "remote");
    let src = nas.join("P/raw/plate");
    let files = tricky_tree(&src);
    publish_on_nas(env, sshd, &src, &nas);
    (src, files)
}

/// `SHA256:...` of the server's host key, as `ssh-keygen -l` prints it.
fn host_fingerprint(env: &Env) -> String {
    let run = run::tool(
        "ssh-keygen",
        &[
            "-l",
            "-f",
            &env.path("sshd/ssh_host_ed25519_key.pub")
                .display()
                .to_string(),
        ],
    );
    run.code(0);
    run.stdout
        .split_whitespace()
        .nth(1)
        .expect("a fingerprint in ssh-keygen -l output")
        .to_string()
}

/// `hpcstage stage nas:SRC dest --project P EXTRA...`
fn stage_remote(env: &Env, sshd: &Sshd, src: &Path, extra: &[&str]) -> Run {
    let spec = sshd.spec(src);
    let mut args = vec!["stage", spec.as_str(), "dest", "--project", "P"];
    args.extend_from_slice(extra);
    env.run(args)
}

/// The arguments of `hpcstage --nas-root nas:NAS ingest acq --project P --dataset NAME EXTRA...`
fn ingest_args(sshd: &Sshd, nas: &Path, dataset: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--nas-root",
        &sshd.spec(nas),
        "ingest",
        "acq",
        "--project",
        "P",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(["--dataset".to_string(), dataset.to_string()]);
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

fn json_list(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("a JSON list")
        .iter()
        .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
        .collect()
}

#[test]
fn stage_from_a_remote_nas_is_faithful_verified_and_incremental() {
    let (env, sshd) = remote_world();
    let (src, files) = remote_dataset(&env, &sshd);
    let spec = sshd.spec(&src);

    let run = stage_remote(&env, &sshd, &src, &["--json"]);
    run.code(0);
    let j = run.json();
    // SFTP knows no inodes: the two hard links arrive as files of their own.
    assert_eq!(j["files_total"], 12, "{run}");
    assert_eq!(j["copied"], 12, "{run}");
    assert_eq!(j["symlinks"], 4, "{run}");
    assert_eq!(j["source_manifest_used"], true, "{run}");
    assert_eq!(j["source"], spec.as_str(), "{run}");
    let warnings = json_list(&j["warnings"]);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("outside: symlink points outside the tree")),
        "{warnings:?}"
    );

    let dest = env.path("dest");
    assert_eq!(assert_final_names_match_source(&src, &dest), files.len());
    for link in ["link", "sub/up", "outside", "sub/escape"] {
        assert_eq!(
            std::fs::read_link(dest.join(link)).expect("readlink dest"),
            std::fs::read_link(src.join(link)).expect("readlink src"),
            "{link}"
        );
    }
    assert_eq!(mode(dest.join("ro-file.txt")), 0o400);
    assert_eq!(mode(dest.join("ro/inner.txt")), 0o444);
    assert_eq!(mode(dest.join("ro")), 0o555);
    assert!(dest.join("empty-dir").is_dir() && dest.join("sub/empty-too").is_dir());
    env.sh(&dest, "sha256sum --quiet -c MANIFEST.sha256")
        .code(0);
    let record = read_json(dest.join(".hpcstage/stage.json"));
    assert_eq!(record["source"], spec.as_str());

    // Nothing changed: nothing is copied. One changed file: only that one.
    let again = stage_remote(&env, &sshd, &src, &["--json"]);
    again.code(0);
    assert_eq!(again.json()["copied"], 0, "{again}");
    assert_eq!(again.json()["skipped"], 12, "{again}");
    std::fs::write(src.join("sub/deep/data.bin"), noise(99, 70_000)).expect("change a file");
    env.run([
        OsStr::new("manifest"),
        OsStr::new("create"),
        src.as_os_str(),
        OsStr::new("--force"),
    ])
    .code(0);
    sshd.give_to_login_user(&src);
    let changed = stage_remote(&env, &sshd, &src, &["--json"]);
    changed.code(0);
    assert_eq!(changed.json()["copied"], 1, "{changed}");
    assert_eq!(
        json_list(&changed.json()["changes"]),
        vec![r#"[">","sub/deep/data.bin"]"#.to_string()]
    );
    assert_eq!(read(dest.join("sub/deep/data.bin")), noise(99, 70_000));

    // The same host without the alias: user, address and port spelled out.
    let direct = env.run([
        "stage",
        &sshd.direct_spec(&src),
        "direct",
        "--project",
        "P",
        "--dry-run",
        "--json",
    ]);
    direct.code(0);
    assert_eq!(direct.json()["files_total"], 12, "{direct}");
    assert!(
        !env.path("direct").exists(),
        "a dry run made the destination"
    );
}

#[test]
fn a_remote_file_that_disagrees_with_its_manifest_is_source_corrupt() {
    let (env, sshd) = remote_world();
    let (src, _) = remote_dataset(&env, &sshd);
    // Same size, other bytes: only the hash can tell.
    std::fs::write(src.join("ünïcödé ✓.txt"), "UNICODE\n").expect("corrupt a file");

    let run = stage_remote(&env, &sshd, &src, &["--json"]);
    run.code(3);
    let failed = &run.json()["failed"];
    assert_eq!(failed.as_array().map(Vec::len), Some(1), "{run}");
    assert_eq!(failed[0]["path"], "ünïcödé ✓.txt");
    assert_eq!(failed[0]["kind"], "source-corrupt");
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("SOURCE CORRUPT"),
        "{run}"
    );
    assert!(
        !env.path("dest/ünïcödé ✓.txt").exists(),
        "a corrupt file got its final name"
    );
    assert!(
        env.path("dest/a b.txt").is_file(),
        "the sound files were not copied"
    );
    assert_recorded_incomplete(&env.path("dest"));
}

// ---------------------------------------------------------------------------------------
// Small files through one tar stream (issue 18)
// ---------------------------------------------------------------------------------------

/// Adds `[ssh] tar = TAR` to the world's config.
fn set_remote_tar(env: &Env, tar: &str) {
    let config = read_text(env.user_config());
    write(
        env.user_config(),
        format!("{config}[ssh]\ntar = \"{tar}\"\n"),
    );
}

/// The tricky tree plus names tar would take for options, and `count` small files of
/// noise, as a dataset on the NAS host with its manifest.
fn remote_small_files(env: &Env, sshd: &Sshd, count: usize) -> PathBuf {
    let nas = sshd.remote_dir(env, "remote");
    let src = nas.join("P/raw/plate");
    tricky_tree(&src);
    for odd in [
        "-rf",
        "--files-from=x",
        "--",
        "sub/-C",
        "sub/ lead and trail ",
    ] {
        write(src.join(odd), format!("{odd}\n"));
    }
    // Longer than the 100 bytes of a tar header's name field.
    write(src.join(format!("sub/{}.txt", "long".repeat(40))), "long\n");
    for i in 0..count {
        write(
            src.join(format!("tiles/{:02}/t{i:05}.bin", i % 10)),
            noise(i as u64, 1000 + 37 * i),
        );
    }
    publish_on_nas(env, sshd, &src, &nas);
    src
}

/// Commands (exec sessions, not the SFTP subsystem) the server started so far.
fn exec_sessions(sshd: &Sshd) -> usize {
    sshd.log().matches("Starting session: command").count()
}

#[test]
fn small_files_come_through_a_tar_stream_exact_whatever_their_names() {
    let (env, sshd) = remote_world();
    let src = remote_small_files(&env, &sshd, 300);

    let run = stage_remote(&env, &sshd, &src, &["--json"]);
    run.code(0);
    let j = run.json();
    // 12 of the tricky tree, 6 odd names, 300 tiles.
    assert_eq!(j["files_total"], 318, "{run}");
    assert_eq!(j["copied"], 318, "{run}");
    let warnings = json_list(&j["warnings"]);
    assert!(
        !warnings.iter().any(|w| w.contains("tar")),
        "every stream should have been trusted: {warnings:?}"
    );
    assert!(
        exec_sessions(&sshd) >= 1,
        "no tar stream was started:\n{}",
        sshd.log()
    );
    let dest = env.path("dest");
    assert_eq!(assert_final_names_match_source(&src, &dest), 318);
    assert!(temporaries(&dest).is_empty(), "{:?}", temporaries(&dest));
    env.sh(&dest, "sha256sum --quiet -c MANIFEST.sha256")
        .code(0);

    // Incremental as before: nothing to copy, then one changed tile only.
    let again = stage_remote(&env, &sshd, &src, &["--json"]);
    again.code(0);
    assert_eq!(again.json()["copied"], 0, "{again}");
    std::fs::write(src.join("tiles/03/t00003.bin"), noise(1, 900)).expect("change a tile");
    env.run([
        OsStr::new("manifest"),
        OsStr::new("create"),
        src.as_os_str(),
        OsStr::new("--force"),
    ])
    .code(0);
    sshd.give_to_login_user(&src);
    let changed = stage_remote(&env, &sshd, &src, &["--json"]);
    changed.code(0);
    assert_eq!(
        json_list(&changed.json()["changes"]),
        vec![r#"[">","tiles/03/t00003.bin"]"#.to_string()]
    );
    assert_eq!(read(dest.join("tiles/03/t00003.bin")), noise(1, 900));
}

#[test]
fn each_connection_starts_one_command_for_all_its_batches() {
    // A tar that notes the process that started it: the shell loop a connection keeps.
    let (env, sshd) = remote_world();
    let tools = sshd.remote_dir(&env, "tools");
    let runs = env.path("tools/runs");
    write(
        tools.join("noting-tar"),
        format!(
            "#!/bin/sh\necho \"$PPID\" >> {}\nexec tar \"$@\"\n",
            runs.display()
        ),
    );
    chmod(tools.join("noting-tar"), 0o755);
    sshd.give_to_login_user(&tools);
    set_remote_tar(&env, &tools.join("noting-tar").display().to_string());
    let src = remote_small_files(&env, &sshd, 600);

    let run = stage_remote(&env, &sshd, &src, &["--ssh-sessions", "2", "--json"]);
    run.code(0);
    assert_eq!(run.json()["copied"], 618, "{run}");
    let warnings = json_list(&run.json()["warnings"]);
    assert!(!warnings.iter().any(|w| w.contains("tar")), "{warnings:?}");
    let dest = env.path("dest");
    assert_eq!(assert_final_names_match_source(&src, &dest), 618);
    env.sh(&dest, "sha256sum --quiet -c MANIFEST.sha256")
        .code(0);
    // Several batches per connection (618 files, two streams, at least two batches
    // each), all started by one shell per connection; the host ran one command per
    // connection and the listing's `find`.
    let noted = read_text(&runs);
    let batches = noted.lines().count();
    let shells: std::collections::BTreeSet<&str> = noted.lines().collect();
    assert!(batches >= 4, "only {batches} tar run(s):\n{noted}");
    assert!(
        shells.len() <= 2,
        "tar started by {} shells:\n{noted}",
        shells.len()
    );
    assert!(
        exec_sessions(&sshd) <= 3,
        "{} commands for {batches} batches:\n{}",
        exec_sessions(&sshd),
        sshd.log()
    );
}

#[test]
fn archives_that_arrive_while_the_name_list_is_still_sent_are_read_whole() {
    // Long names make each batch's list several SSH packets long, and tiny files make tar
    // answer at once: tar's first records reach the client while it is still sending the
    // list. None of them may be lost (a stream that loses bytes breaks off, and its files
    // go over SFTP with a warning).
    let (env, sshd) = remote_world();
    let nas = sshd.remote_dir(&env, "remote");
    let src = nas.join("P/raw/long");
    let deep = format!("{}/{}", "d".repeat(120), "e".repeat(80));
    let files = 4000;
    for i in 0..files {
        write(
            src.join(format!("{:02}/{deep}/f{i:05}", i % 4)),
            format!("{i}"),
        );
    }
    publish_on_nas(&env, &sshd, &src, &nas);

    for round in 0..3 {
        let dest = env.path(format!("dest{round}"));
        let spec = sshd.spec(&src);
        let run = env.run([
            "stage",
            spec.as_str(),
            dest.to_str().expect("utf-8"),
            "--project",
            "P",
            "--ssh-sessions",
            "2",
            "--json",
        ]);
        run.code(0);
        assert_eq!(run.json()["copied"], files, "{run}");
        let warnings = json_list(&run.json()["warnings"]);
        assert!(
            !warnings.iter().any(|w| w.contains("tar")),
            "round {round}: every stream should have been read whole: {warnings:?}"
        );
        assert_eq!(assert_final_names_match_source(&src, &dest), files);
    }
}

#[test]
fn streamed_files_are_flushed_one_by_one_and_the_run_once_not_in_syncfs_batches() {
    // A `syncfs` also waits for everything else dirty on the filesystem: a stream's files
    // each flush their own pages before their read-back, and the run ends with one.
    let (env, sshd) = remote_world();
    // Small files only (the tricky tree's sparse file of 16 MiB goes over SFTP and
    // through a batch syncfs, as a file read alone does).
    let nas = sshd.remote_dir(&env, "remote");
    let src = nas.join("P/raw/tiles");
    for i in 0..600 {
        write(
            src.join(format!("{:02}/t{i:05}.bin", i % 10)),
            noise(i as u64, 1000 + 37 * i),
        );
    }
    publish_on_nas(&env, &sshd, &src, &nas);
    let trace = env.path("syncfs.trace");
    let staged = env.command();
    let mut cmd = std::process::Command::new("strace");
    cmd.env_clear()
        .args(["-f", "-qq", "-e", "trace=syncfs", "-o"])
        .arg(&trace)
        .arg(staged.get_program())
        .args(["stage", sshd.spec(&src).as_str(), "dest", "--project", "P"])
        .args(["--ssh-sessions", "2", "--json"])
        .current_dir(env.root.as_path())
        .stdin(Stdio::null());
    for (key, value) in staged.get_envs() {
        if let Some(value) = value {
            cmd.env(key, value);
        }
    }
    let run = env.finish(cmd);
    run.code(0);
    assert_eq!(run.json()["copied"], 600, "{run}");
    let dest = env.path("dest");
    assert_eq!(assert_final_names_match_source(&src, &dest), 600);
    env.sh(&dest, "sha256sum --quiet -c MANIFEST.sha256")
        .code(0);
    let traced = read_text(&trace);
    let calls = traced.lines().filter(|l| l.contains("syncfs(")).count();
    assert_eq!(calls, 1, "syncfs calls of the run:\n{traced}");
}

#[test]
fn the_tree_is_listed_in_one_round_trip_as_sftp_lists_it_whatever_its_names() {
    let (env, sshd) = remote_world();
    let src = remote_small_files(&env, &sshd, 40);
    let config = read_text(env.user_config());

    // Listed and read over SFTP only (`tar = ""`: no command runs on the host).
    set_remote_tar(&env, "");
    let first = stage_remote(&env, &sshd, &src, &["--json"]);
    first.code(0);
    assert_eq!(first.json()["copied"], 58, "{first}");
    assert_eq!(exec_sessions(&sshd), 0, "{}", sshd.log());

    // With commands: the re-stage lists through one `find` and finds every file (tricky
    // names included) exactly as the SFTP listing recorded it.
    write(env.user_config(), &config);
    let again = stage_remote(&env, &sshd, &src, &["--json"]);
    again.code(0);
    let j = again.json();
    assert_eq!(j["files_total"], 58, "{again}");
    assert_eq!(j["copied"], 0, "{again}");
    assert!(
        json_list(&j["warnings"])
            .iter()
            .all(|w| !w.contains("listed over SFTP")),
        "{again}"
    );
    assert_eq!(
        exec_sessions(&sshd),
        1,
        "one command (the listing) expected:\n{}",
        sshd.log()
    );
}

#[test]
fn a_streamed_file_that_disagrees_with_its_manifest_is_source_corrupt() {
    let (env, sshd) = remote_world();
    let src = remote_small_files(&env, &sshd, 50);
    // Same size, same mtime, other bytes: only the hash can tell.
    let victim = src.join("tiles/07/t00007.bin");
    let mtime = std::fs::metadata(&victim)
        .expect("stat")
        .modified()
        .expect("mtime");
    let mut bytes = read(&victim);
    bytes[10] ^= 0xff;
    std::fs::write(&victim, &bytes).expect("corrupt a tile");
    std::fs::File::options()
        .write(true)
        .open(&victim)
        .and_then(|f| f.set_modified(mtime))
        .expect("keep the mtime");

    let run = stage_remote(&env, &sshd, &src, &["--json"]);
    run.code(3);
    let j = run.json();
    let failed = &j["failed"];
    assert_eq!(failed.as_array().map(Vec::len), Some(1), "{run}");
    assert_eq!(failed[0]["path"], "tiles/07/t00007.bin");
    assert_eq!(failed[0]["kind"], "source-corrupt");
    // Judged on the stream: no stream broke off, none fell back.
    let warnings = json_list(&j["warnings"]);
    assert!(!warnings.iter().any(|w| w.contains("tar")), "{warnings:?}");
    assert!(exec_sessions(&sshd) >= 1, "{}", sshd.log());
    assert!(!env.path("dest/tiles/07/t00007.bin").exists());
    assert!(temporaries(&env.path("dest")).is_empty());
    assert_recorded_incomplete(&env.path("dest"));
}

#[test]
fn a_host_without_a_usable_tar_is_read_over_sftp_and_says_so_once() {
    let (env, sshd) = remote_world();
    set_remote_tar(&env, "/nonexistent/bin/tar");
    let src = remote_small_files(&env, &sshd, 200);

    let run = stage_remote(&env, &sshd, &src, &["--json"]);
    run.code(0);
    let j = run.json();
    assert_eq!(j["copied"], 218, "{run}");
    let warnings = json_list(&j["warnings"]);
    let said: Vec<&String> = warnings.iter().filter(|w| w.contains("tar")).collect();
    assert_eq!(said.len(), 1, "{warnings:?}");
    assert!(
        said[0].contains("small files were read over SFTP")
            && said[0].contains("/nonexistent/bin/tar")
            && said[0].contains("[ssh] tar"),
        "{said:?}"
    );
    let dest = env.path("dest");
    assert_eq!(assert_final_names_match_source(&src, &dest), 218);
    env.sh(&dest, "sha256sum --quiet -c MANIFEST.sha256")
        .code(0);

    // `tar = ""`: no stream is even tried.
    let (env, sshd) = remote_world();
    set_remote_tar(&env, "");
    let src = remote_small_files(&env, &sshd, 20);
    let run = stage_remote(&env, &sshd, &src, &["--json"]);
    run.code(0);
    assert_eq!(run.json()["copied"], 38, "{run}");
    assert_eq!(exec_sessions(&sshd), 0, "{}", sshd.log());
}

#[test]
fn a_connection_killed_mid_stream_falls_back_and_leaves_nothing_unverified() {
    // A tar that, the first time, sends part of its archive and then stalls until
    // killed; then the test kills every connection of the server.
    let (env, sshd) = remote_world();
    let stalled = install_stalling_tar(&env, &sshd, 30_000);
    let src = remote_small_files(&env, &sshd, 400);

    let child = stage_until_stalled(&env, &sshd, &src, &stalled, &[]);
    assert!(sshd.kill_connections() >= 1, "no connection was killed");
    let run = wait_child(
        "hpcstage stage (killed mid-stream)",
        child,
        Duration::from_secs(120),
    )
    .in_world(&env.root);
    let dest = env.path("dest");
    // The stream's files were read again (over SFTP, or another stream) and verified;
    // a run that gave up must have left nothing unverified under a final name. A
    // connection cut while it was being opened is connected again, not taken for a
    // refused key.
    if run.code != Some(0) {
        run.code(1);
        assert!(temporaries(&dest).is_empty(), "{:?}", temporaries(&dest));
        let rerun = stage_remote(&env, &sshd, &src, &["--json"]);
        rerun.code(0);
    } else {
        let warnings = json_list(&run.json()["warnings"]);
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("tar stream(s) of small files broke off")),
            "the broken stream was not reported: {warnings:?}"
        );
    }
    assert_eq!(assert_final_names_match_source(&src, &dest), 418);
    assert!(temporaries(&dest).is_empty(), "{:?}", temporaries(&dest));
    env.sh(&dest, "sha256sum --quiet -c MANIFEST.sha256")
        .code(0);
    let again = stage_remote(&env, &sshd, &src, &["--json"]);
    again.code(0);
    assert_eq!(again.json()["copied"], 0, "{again}");
}

/// A tar on the NAS host that, the first time, sends the first `bytes` of its archive,
/// touches `<marker>/now` and stalls until killed; later runs are plain tar.
fn install_stalling_tar(env: &Env, sshd: &Sshd, bytes: usize) -> PathBuf {
    let tools = sshd.remote_dir(env, "tools");
    set_remote_tar(env, &tools.join("stalling-tar").display().to_string());
    let stalled = env.path("tools/stalled");
    write(
        tools.join("stalling-tar"),
        format!(
            "#!/bin/sh\n\
             if mkdir {marker} 2>/dev/null; then\n\
               tar \"$@\" | {{ head -c {bytes}; touch {marker}/now; sleep 60; cat; }}\n\
             else\n\
               exec tar \"$@\"\n\
             fi\n",
            marker = stalled.display()
        ),
    );
    chmod(tools.join("stalling-tar"), 0o755);
    sshd.give_to_login_user(&tools);
    stalled
}

/// Starts `hpcstage stage SRC dest --json EXTRA...` and returns once the stalling tar
/// of [`install_stalling_tar`] stalled.
fn stage_until_stalled(
    env: &Env,
    sshd: &Sshd,
    src: &Path,
    stalled: &Path,
    extra: &[&str],
) -> Child {
    let mut cmd = env.command();
    cmd.args(["stage", &sshd.spec(src), "dest", "--project", "P", "--json"]);
    cmd.args(extra);
    let child = cmd.spawn().expect("start hpcstage stage");
    let started = Instant::now();
    while !stalled.join("now").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the stream never stalled:\n{}",
            sshd.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Files under their final names in `dest` while a copy still runs (temporaries come and
/// go meanwhile), each asserted to hold exactly the source's bytes; how many.
fn placed_while_running(src: &Path, dest: &Path) -> usize {
    let mut placed = 0;
    let mut folders = vec![PathBuf::new()];
    while let Some(rel) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(dest.join(&rel)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let child = rel.join(&name);
            let bytes = name.as_encoded_bytes();
            if bytes.starts_with(b".hpcstage") || child == Path::new("MANIFEST.sha256") {
                continue;
            }
            match entry.file_type() {
                Ok(t) if t.is_dir() => folders.push(child),
                Ok(t) if t.is_file() => {
                    assert_eq!(read(dest.join(&child)), read(src.join(&child)), "{child:?}");
                    placed += 1;
                }
                _ => {}
            }
        }
    }
    placed
}

#[test]
fn files_the_manifest_vouches_for_are_placed_while_their_stream_still_runs() {
    let (env, sshd) = remote_world();
    let stalled = install_stalling_tar(&env, &sshd, 60_000);
    let src = remote_small_files(&env, &sshd, 400);

    // One connection: while the first stream stalls, no other stream can run, so what
    // is placed meanwhile came through the stalled one.
    let child = stage_until_stalled(&env, &sshd, &src, &stalled, &["--ssh-sessions", "1"]);
    let started = Instant::now();
    // The stream is stalled part way: what it delivered and the manifest vouches for is
    // verified and under its final name already, byte for byte the source's.
    let dest = env.path("dest");
    let mut placed = 0;
    while placed == 0 && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
        placed = placed_while_running(&src, &dest);
    }
    assert!(placed > 0, "nothing was placed while the stream stalled");
    assert!(
        placed < 418,
        "the stalled stream cannot have delivered everything"
    );

    // The stream then breaks: the files it held back are read again, nothing is lost.
    assert!(sshd.kill_connections() >= 1, "no connection was killed");
    let run = wait_child(
        "hpcstage stage (stalled stream)",
        child,
        Duration::from_secs(120),
    )
    .in_world(&env.root);
    if run.code != Some(0) {
        assert_eq!(run.code, Some(1), "{run}");
        stage_remote(&env, &sshd, &src, &["--json"]).code(0);
    }
    assert_eq!(assert_final_names_match_source(&src, &dest), 418);
    assert!(temporaries(&dest).is_empty(), "{:?}", temporaries(&dest));
    env.sh(&dest, "sha256sum --quiet -c MANIFEST.sha256")
        .code(0);
}

/// An incomplete stage is recorded as such, never as a complete one.
fn assert_recorded_incomplete(dest: &Path) {
    let record = read_json(dest.join(".hpcstage/stage.json"));
    assert!(record["incomplete"].is_object(), "{record:#}");
    assert!(!dest.join("MANIFEST.sha256").exists());
}

#[test]
fn an_unknown_host_key_is_refused_with_its_fingerprint() {
    let (env, sshd) = remote_world();
    let (src, _) = remote_dataset(&env, &sshd);
    sshd.write_known_hosts(&env, "");
    let fingerprint = host_fingerprint(&env);

    let run = stage_remote(&env, &sshd, &src, &[]);
    run.code(1);
    let err = run.err();
    assert!(
        err.contains(&format!("unknown host key for [127.0.0.1]:{}", sshd.port())),
        "{run}"
    );
    assert!(
        err.contains(&fingerprint),
        "the fingerprint {fingerprint} is not named: {run}"
    );
    assert!(err.contains("refusing to connect"), "{run}");
    assert!(!env.path("dest").exists(), "something was copied: {run}");
    // Never accepted behind the user's back.
    assert_eq!(read_text(sshd.known_hosts_path()), "");
}

#[test]
fn the_host_key_known_hosts_holds_is_found_whatever_its_type() {
    let (env, sshd) = remote_world();
    let (src, _) = remote_dataset(&env, &sshd);
    // Only the server's second key is known: OpenSSH would connect, so must we.
    sshd.write_known_hosts(&env, &format!("{}\n", sshd.ecdsa_known_hosts_line()));
    let run = stage_remote(&env, &sshd, &src, &["--json"]);
    run.code(0);
    assert_eq!(run.json()["copied"], 12, "{run}");
    // And only the first one.
    sshd.write_known_hosts(&env, &format!("{}\n", sshd.known_hosts_line()));
    let again = stage_remote(&env, &sshd, &src, &["--json"]);
    again.code(0);
}

#[test]
fn a_changed_host_key_is_refused_with_its_fingerprint() {
    let (env, sshd) = remote_world();
    let (src, _) = remote_dataset(&env, &sshd);
    sshd.write_wrong_host_key(&env);
    let before = read_text(sshd.known_hosts_path());
    let fingerprint = host_fingerprint(&env);

    let run = stage_remote(&env, &sshd, &src, &[]);
    run.code(1);
    let err = run.err();
    assert!(
        err.contains(&format!("HOST KEY CHANGED for [127.0.0.1]:{}", sshd.port())),
        "{run}"
    );
    assert!(err.contains(&fingerprint), "{run}");
    assert!(!env.path("dest").exists(), "something was copied: {run}");
    assert_eq!(read_text(sshd.known_hosts_path()), before);
}

#[test]
fn a_key_the_server_does_not_accept_is_refused() {
    let (env, sshd) = remote_world();
    let (src, _) = remote_dataset(&env, &sshd);
    sshd.wrong_user_key(&env);

    let run = stage_remote(&env, &sshd, &src, &[]);
    run.code(1);
    let err = run.err();
    assert!(
        err.contains(&format!("{}@nas: authentication refused", sshd.user())),
        "{run}"
    );
    assert!(
        err.contains("id_ed25519"),
        "the key tried is not named: {run}"
    );
    assert!(!env.path("dest").exists(), "something was copied: {run}");
}

#[test]
fn a_remote_path_that_does_not_exist_is_named() {
    let (env, sshd) = remote_world();
    let nas = sshd.remote_dir(&env, "remote");
    let missing = nas.join("P/raw/nope");

    let run = stage_remote(&env, &sshd, &missing, &[]);
    run.code(1);
    assert!(
        run.err().contains(
            "error: source nas:[ROOT]/remote/P/raw/nope does not exist or is not a folder\n\
             hint: check the path on the NAS host"
        ),
        "{run}"
    );
    // Not the right shape for a remote path at all: said so before connecting.
    let bad = env.run(["stage", "nas:relative/path", "dest", "--project", "P"]);
    bad.code(1);
    assert!(bad.err().contains("is not absolute"), "{bad}");
}

#[test]
fn permission_denied_on_the_nas_fails_those_files_and_copies_the_rest() {
    let (env, sshd) = remote_world();
    let nas = sshd.remote_dir(&env, "remote");
    let src = nas.join("P/raw/plate");
    write(src.join("ok.txt"), "readable\n");
    write(src.join("secret.txt"), "not for you\n");
    write(src.join("locked/inside.txt"), "behind a locked folder\n");
    sshd.give_to_login_user(&nas);
    chmod(src.join("secret.txt"), 0o000);
    chmod(src.join("locked"), 0o000);

    let run = stage_remote(&env, &sshd, &src, &["--json"]);
    chmod(src.join("locked"), 0o755);
    run.code(4);
    let j = run.json();
    assert_eq!(j["copied"], 1, "{run}");
    assert_eq!(read_text(env.path("dest/ok.txt")), "readable\n");
    let failed: Vec<(String, String)> = j["failed"]
        .as_array()
        .expect("failed list")
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap_or_default().to_string(),
                f["error"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(failed.len(), 2, "{run}");
    for (path, error) in &failed {
        assert!(
            error.contains("permission denied on the remote host"),
            "{path}: {error}"
        );
    }
    assert!(failed.iter().any(|(p, _)| p == "secret.txt"), "{failed:?}");
    assert!(
        failed.iter().any(|(_, e)| e.contains("locked")),
        "{failed:?}"
    );
    assert!(!env.path("dest/secret.txt").exists());
    // find could not read the locked folder: the tree was listed over SFTP, which named
    // it, without a note that find is unusable on the host.
    assert!(
        json_list(&j["warnings"])
            .iter()
            .all(|w| !w.contains("listed over SFTP")),
        "{run}"
    );
    assert_recorded_incomplete(&env.path("dest"));
}

/// Waits (at most 60 s) until a temporary file under `dest` holds at least `bytes`.
fn wait_for_partial_copy(dest: &Path, bytes: u64) {
    let started = Instant::now();
    loop {
        let big = temporaries(dest)
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .any(|m| m.len() >= bytes);
        if big {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no temporary file of {bytes} bytes appeared under {}",
            dest.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_connection_killed_mid_transfer_is_resumed_where_it_stopped() {
    let (env, sshd) = remote_world();
    let nas = sshd.remote_dir(&env, "remote");
    let src = nas.join("P/raw/big");
    let big = noise(5, 192 << 20);
    write(src.join("big.bin"), &big);
    write(src.join("small.txt"), "small\n");
    sshd.give_to_login_user(&nas);

    let mut cmd = env.command();
    cmd.args([
        "stage",
        &sshd.spec(&src),
        "dest",
        "--project",
        "P",
        "--json",
    ]);
    let child = cmd.spawn().expect("start hpcstage stage");
    let dest = env.path("dest");
    wait_for_partial_copy(&dest, 16 << 20);
    let killed = sshd.kill_connections();
    assert!(killed >= 1, "no connection was killed");
    let run = wait_child(
        "hpcstage stage (killed connection)",
        child,
        Duration::from_secs(120),
    )
    .in_world(&env.root);
    run.code(0);
    let j = run.json();
    assert_eq!(j["copied"], 2, "{run}");
    let warnings = json_list(&j["warnings"]);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("the connection dropped") && w.contains("1 file(s) resumed")),
        "no resume reported: {warnings:?}"
    );
    assert!(
        read(dest.join("big.bin")) == big,
        "big.bin differs after the resume"
    );
    assert!(temporaries(&dest).is_empty(), "{:?}", temporaries(&dest));
    env.sh(&dest, "sha256sum --quiet -c MANIFEST.sha256")
        .code(0);
}

#[test]
fn ingest_into_a_remote_nas_places_a_verified_read_only_dataset_once() {
    let (env, sshd) = remote_world();
    let nas = sshd.remote_dir(&env, "remote");
    let acq = env.path("acq");
    write(acq.join("plate/A01.tif"), noise(1, 300_000));
    write(acq.join("plate/A02.tif"), noise(2, 10));
    write(acq.join("notes with space.txt"), "notes\n");
    // What an interrupted ingest of other data left in the hidden folder stays out.
    write(
        nas.join("P/raw/.plate7.upload/stale.tif"),
        "from another acquisition\n",
    );
    write(
        nas.join("P/raw/.plate7.upload/plate/A02.tif"),
        "other bytes\n",
    );
    // A link left where a file goes is replaced, never written through.
    let victim = env.path("victim.txt");
    write(&victim, "outside the dataset\n");
    std::os::unix::fs::symlink(
        &victim,
        nas.join("P/raw/.plate7.upload/notes with space.txt"),
    )
    .expect("plant a link");
    sshd.give_to_login_user(&nas);
    sshd.give_to_login_user(&victim);

    let run = env.run(ingest_args(
        &sshd,
        &nas,
        "plate7",
        &["--remote-verify", "--immutable", "--json"],
    ));
    run.code(0);
    let j = run.json();
    let dataset = nas.join("P/raw/plate7");
    assert_eq!(j["dataset_path"], sshd.spec(&dataset).as_str(), "{run}");
    assert_eq!(j["read_only"], true);
    assert!(
        j["immutable"]
            .as_str()
            .unwrap_or_default()
            .starts_with("not applied"),
        "{run}"
    );
    assert_eq!(read(dataset.join("plate/A01.tif")), noise(1, 300_000));
    assert_eq!(read(dataset.join("plate/A02.tif")), noise(2, 10));
    assert!(
        !dataset.join("stale.tif").exists(),
        "a stale file reached the dataset"
    );
    assert_eq!(
        read_text(&victim),
        "outside the dataset\n",
        "written through a link"
    );
    let notes = dataset.join("notes with space.txt");
    assert!(
        std::fs::symlink_metadata(&notes).is_ok_and(|m| m.is_file()),
        "{} is not a regular file",
        notes.display()
    );
    assert_eq!(read_text(&notes), "notes\n");
    let manifest = read_text(dataset.join("MANIFEST.sha256"));
    assert!(manifest.contains("  dataset.json\n"), "{manifest}");
    assert!(manifest.contains("  plate/A01.tif\n"), "{manifest}");
    env.sh(&dataset, "sha256sum --quiet --strict -c MANIFEST.sha256")
        .code(0);
    let info = read_json(dataset.join("dataset.json"));
    assert_eq!(info["files"], 3);
    for path in [
        dataset.join("plate/A01.tif"),
        dataset.join("plate"),
        dataset.clone(),
    ] {
        assert_eq!(mode(&path) & 0o222, 0, "{} is writable", path.display());
    }
    let leftovers: Vec<String> = std::fs::read_dir(nas.join("P/raw"))
        .expect("list raw")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, vec!["plate7".to_string()]);

    // Raw data is never replaced or appended to.
    let before = fingerprint(&dataset);
    let again = env.run(ingest_args(&sshd, &nas, "plate7", &[]));
    again.code(1);
    assert!(again.err().contains("already exists"), "{again}");
    assert_eq!(fingerprint(&dataset), before);
}

/// A remote world whose NAS (the returned folder) has `P/raw/`, the login user's.
fn world_with_raw() -> (Env, Sshd, PathBuf) {
    let (env, sshd) = remote_world();
    let nas = sshd.remote_dir(&env, "remote");
    std::fs::create_dir_all(nas.join("P/raw")).expect("mkdir raw");
    sshd.give_to_login_user(&nas);
    (env, sshd, nas)
}

/// The files an interrupted upload completed are kept: one still writable (that upload
/// may have ended between its write and its flush) is flushed and kept, one already given
/// its read-only mode (flushed before that) is kept as it is.
#[test]
fn an_interrupted_upload_keeps_its_complete_files_whatever_their_mode() {
    let (env, sshd, nas) = world_with_raw();
    write(env.path("acq/a.tif"), noise(21, 70_000));
    write(env.path("acq/b.tif"), noise(22, 5_000));
    chmod(env.path("acq/b.tif"), 0o444);
    let hidden = nas.join("P/raw/.plate7.upload");
    write(hidden.join("a.tif"), noise(21, 70_000));
    write(hidden.join("b.tif"), noise(22, 5_000));
    sshd.give_to_login_user(&nas);
    chmod(hidden.join("a.tif"), 0o600);
    chmod(hidden.join("b.tif"), 0o444);

    let run = env.run(ingest_args(&sshd, &nas, "plate7", &["--json"]));
    run.code(0);
    let j = run.json();
    assert_eq!(
        (&j["copied"], &j["skipped"]),
        (&json!(0), &json!(2)),
        "{run}"
    );
    let dataset = nas.join("P/raw/plate7");
    assert_eq!(read(dataset.join("a.tif")), noise(21, 70_000));
    assert_eq!(read(dataset.join("b.tif")), noise(22, 5_000));
    assert_manifest_verifies(&dataset);
}

/// A file of the acquisition folder that no longer matches the folder's own manifest is
/// corruption at the source: an ingest into a remote NAS fails on it, naming it, and
/// places nothing, as an ingest into a local one does.
#[test]
fn a_remote_ingest_refuses_a_source_file_that_no_longer_matches_its_manifest() {
    let (env, sshd, nas) = world_with_raw();
    let acq = env.path("acq");
    write(acq.join("plate/A01.tif"), noise(1, 300_000));
    write(acq.join("plate/A02.tif"), "good\n");
    env.run(["manifest", "create", "acq"]).code(0);
    write(acq.join("plate/A02.tif"), "rot!\n");

    let run = env.run(ingest_args(&sshd, &nas, "plate7", &[]));
    // An integrity failure, as for a local ingest.
    run.code(3);
    assert!(run.err().contains("SOURCE CORRUPT"), "{run}");
    assert!(
        run.err().contains("plate/A02.tif"),
        "the file is not named: {run}"
    );
    assert!(
        !nas.join("P/raw/plate7").exists(),
        "a dataset was placed: {run}"
    );
}

#[test]
fn permission_denied_on_the_nas_stops_an_ingest_before_anything_is_placed() {
    let (env, sshd, nas) = world_with_raw();
    chmod(nas.join("P/raw"), 0o555);
    write(env.path("acq/a.tif"), "a\n");

    let run = env.run(ingest_args(&sshd, &nas, "plate7", &[]));
    chmod(nas.join("P/raw"), 0o755);
    run.code(1);
    assert!(
        run.err().contains("permission denied on the remote host"),
        "{run}"
    );
    assert!(run.err().contains("P/raw"), "the path is not named: {run}");
    assert_eq!(
        std::fs::read_dir(nas.join("P/raw"))
            .expect("list raw")
            .count(),
        0,
        "something was placed"
    );
}

#[test]
fn a_full_nas_is_a_clear_error_not_a_lost_connection() {
    needs_root!();
    let (env, sshd) = remote_world();
    let nas = sshd.remote_dir(&env, "remote");
    let _small = Mount::new("tmpfs", "size=256k", &nas.join("P"));
    sshd.give_to_login_user(&nas);
    write(env.path("acq/big.bin"), noise(3, 1 << 20));
    let started = Instant::now();
    let run = env.run(ingest_args(&sshd, &nas, "big", &[]));
    run.code(1);
    assert!(!run.err().contains("connection"), "{run}");
    assert!(run.err().contains("the remote host refused"), "{run}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "retried as if the connection had dropped: {run}"
    );
    assert!(
        !nas.join("P/raw/big").exists(),
        "a partial dataset was placed"
    );
}

#[test]
fn a_connection_killed_mid_upload_starts_that_file_again_and_completes() {
    let (env, sshd) = remote_world();
    let nas = sshd.remote_dir(&env, "remote");
    let big = noise(8, 160 << 20);
    write(env.path("acq/big.bin"), &big);
    write(env.path("acq/small.txt"), "small\n");

    let mut cmd = env.command();
    cmd.args(ingest_args(&sshd, &nas, "big", &["--json"]));
    let child = cmd.spawn().expect("start hpcstage ingest");
    let upload = nas.join("P/raw/.big.upload/big.bin");
    let started = Instant::now();
    while std::fs::metadata(&upload).map_or(0, |m| m.len()) < 16 << 20 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the upload never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(sshd.kill_connections() >= 1, "no connection was killed");
    let run = wait_child(
        "hpcstage ingest (killed connection)",
        child,
        Duration::from_secs(120),
    )
    .in_world(&env.root);
    run.code(0);
    let warnings = json_list(&run.json()["warnings"]);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("the connection dropped")),
        "{warnings:?}"
    );
    assert!(
        read(nas.join("P/raw/big/big.bin")) == big,
        "big.bin differs on the NAS"
    );
    assert!(
        !nas.join("P/raw/.big.upload").exists(),
        "the hidden folder was left"
    );
}

/// A unet-seg predict stand-in: writes a (tiny, real) label mask and a table per image.
fn predict_stand_in() -> String {
    format!(
        "#!/bin/bash\nset -euo pipefail\n{}\
         while (($#)); do\n  case $1 in\n    --input) input=$2 ;;\n    --mask) mask=$2 ;;\n\
         \x20   --table) table=$2 ;;\n  esac\n  shift 2\ndone\n\
         {{ tiny_mask; printf 'mask of %s\\n' \"$(basename \"$input\")\"; }} > \"$mask\"\n\
         printf 'cell,area\\n1,10\\n' > \"$table\"\n",
        common::fs::tiny_mask_function()
    )
}

#[test]
fn a_run_is_pulled_to_a_remote_nas_only_into_a_folder_of_its_own() {
    let (env, sshd) = remote_world();
    let nas = sshd.remote_dir(&env, "remote");
    write(
        env.user_config(),
        format!(
            "nas_root = \"{}\"\nscratch_root = \"{}\"\n\n[slurm]\nexecutor = \"local\"\n\n\
             [purge]\nbasis = \"mtime\"\nage = \"30d\"\nwarn = \"7d\"\n",
            sshd.spec(&nas),
            env.scratch().display()
        ),
    );
    write(
        env.path("acq/img1.tif"),
        common::fs::tiny_tiff([1, 2, 3, 4], b"image one\n"),
    );
    write(
        env.path("acq/img2.tif"),
        common::fs::tiny_tiff([5, 6, 7, 8], b"image two, a little longer\n"),
    );
    env.run(["ingest", "acq", "--project", "P", "--dataset", "plate"])
        .code(0);
    write(env.path("bin/predict"), predict_stand_in());
    chmod(env.path("bin/predict"), 0o755);
    write(env.path("model.pt"), "stand-in weights\n");

    let raw = sshd.spec(&nas.join("P/raw/plate"));
    let model = format!("model={}", env.path("model.pt").display());
    let predict = format!(
        "predict_cmd={} --model {{model}} --input {{input}} --mask {{mask}} --table {{table}}",
        env.path("bin/predict").display()
    );
    let submitted = env.run([
        "stage-and-run",
        &raw,
        "unet-seg",
        "--no-pull",
        "--json",
        "-p",
        &model,
        "-p",
        &predict,
        "-p",
        "cpus=1",
        "-p",
        "mem=500M",
        "-p",
        "time=10m",
    ]);
    submitted.code(0);
    let id = submitted.json()["run_id"]
        .as_str()
        .expect("a run id")
        .to_string();
    let results = nas.join("P/results/segmentation").join(&id);
    assert_eq!(
        submitted.json()["results_dir"],
        sshd.spec(&results).as_str()
    );

    // Something else already at the results path is never replaced.
    write(results.join("foreign.txt"), "not this run's\n");
    sshd.give_to_login_user(&nas.join("P/results"));
    let refused = env.run(["pull", &id, "--wait"]);
    refused.code(1);
    assert!(
        refused.err().contains("the results folder exists but"),
        "{refused}"
    );
    assert_eq!(read_text(results.join("foreign.txt")), "not this run's\n");
    std::fs::remove_dir_all(&results).expect("remove the squatter");

    let pulled = env.run(["pull", &id, "--wait", "--remote-verify", "--worm", "--json"]);
    pulled.code(0);
    let j = pulled.json();
    assert_eq!(j["outcome"], "pulled", "{pulled}");
    assert_eq!(j["results_dir"], sshd.spec(&results).as_str());
    env.sh(&results, "sha256sum --quiet --strict -c MANIFEST.sha256")
        .code(0);
    let manifest = read_text(results.join("MANIFEST.sha256"));
    for listed in [
        "README.md",
        "run.json",
        "masks/img1.ome.tif",
        "tables/img2.csv",
    ] {
        assert!(
            manifest.contains(&format!("  {listed}\n")),
            "{listed}: {manifest}"
        );
    }
    assert!(read_text(results.join("README.md")).contains(&id));
    assert_eq!(
        read_json(results.join("run.json"))["run"]["id"],
        id.as_str()
    );
    assert_eq!(
        mode(results.join("README.md")) & 0o222,
        0,
        "--worm left it writable"
    );
    let siblings: Vec<String> = std::fs::read_dir(nas.join("P/results/segmentation"))
        .expect("list results")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        siblings,
        vec![id.clone()],
        "a hidden upload folder was left"
    );
    let run_dir = env.scratch().join("P/runs").join(&id);
    assert!(
        !run_dir.join(".hpcstage/outbox").join(&id).exists(),
        "the assembled copy stayed on scratch"
    );

    // The run is safe now, asked of the NAS host; clean removes what the NAS holds.
    let status = env.run(["status", &id, "--json"]);
    status.code(0);
    assert_eq!(status.json()["phase"], "pulled", "{status}");
    let clean = env.run(["clean", "--json"]);
    clean.code(0);
    let removed = clean.json()["removed"].to_string();
    assert!(removed.contains(&id), "{clean}");
    assert!(removed.contains("P/plate"), "{clean}");
    assert!(!run_dir.exists() && !env.scratch().join("P/plate").exists());
    let again = env.run(["pull", &id, "--json"]);
    again.code(0);
    assert_eq!(again.json()["outcome"], "already-pulled", "{again}");
}

#[test]
fn the_config_names_the_key_and_the_sessions_are_as_many_as_asked() {
    let (env, sshd) = remote_world();
    let nas = sshd.remote_dir(&env, "remote");
    let src = nas.join("P/raw/many");
    for i in 0..120 {
        write(src.join(format!("d{}/f{i}.tif", i % 6)), noise(i, 4096));
    }
    sshd.give_to_login_user(&nas);
    // The key only under a name of the config's choosing: no default name to fall back on.
    let key = sshd.user_key_path();
    let renamed = env.path("home/.ssh/lab_nas_key");
    std::fs::rename(&key, &renamed).expect("rename the key");
    let config = read_text(sshd.config_path());
    let with_renamed = config.replace(
        &format!("IdentityFile {}", key.display()),
        &format!("IdentityFile {}", renamed.display()),
    );
    assert_ne!(
        config, with_renamed,
        "the fixture's config names no IdentityFile"
    );
    write(sshd.config_path(), with_renamed);

    let accepted = || sshd.log().matches("Accepted publickey").count();
    for sessions in [1usize, 3] {
        let before = accepted();
        let dest = format!("dest{sessions}");
        let run = env.run([
            "stage",
            &sshd.spec(&src),
            &dest,
            "--project",
            "P",
            "--ssh-sessions",
            &sessions.to_string(),
            "--jobs",
            "8",
            "--json",
        ]);
        run.code(0);
        assert_eq!(run.json()["copied"], 120, "{run}");
        assert_eq!(
            accepted() - before,
            sessions,
            "--ssh-sessions {sessions}: logins seen by the server\n{}",
            sshd.log()
        );
    }
}

/// An ssh-agent of the test's own, killed when the test ends.
struct Agent {
    socket: PathBuf,
    pid: i32,
}

impl Agent {
    fn start(env: &Env) -> Agent {
        let socket = env.path("agent.sock");
        let run = run::tool("ssh-agent", &["-s", "-a", &socket.display().to_string()]);
        run.code(0);
        let pid = run
            .stdout
            .split(';')
            .find_map(|part| part.trim().strip_prefix("SSH_AGENT_PID="))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no agent pid in {run}"));
        Agent { socket, pid }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the agent this test started.
        unsafe {
            libc::kill(self.pid, libc::SIGTERM);
        }
    }
}

#[test]
fn a_key_held_only_by_ssh_agent_is_used() {
    let (mut env, sshd) = remote_world();
    let (src, _) = remote_dataset(&env, &sshd);
    let agent = Agent::start(&env);
    let mut add = run::clean("ssh-add");
    add.env("SSH_AUTH_SOCK", &agent.socket)
        .arg(sshd.user_key_path());
    Run::of(add).code(0);
    // No key file left for hpcstage to read: only the agent can answer.
    std::fs::remove_file(sshd.user_key_path()).expect("remove the key file");

    let without = stage_remote(&env, &sshd, &src, &[]);
    without.code(1);
    assert!(
        without.err().contains("authentication refused"),
        "{without}"
    );
    env.set_env("SSH_AUTH_SOCK", &agent.socket);
    let with = stage_remote(&env, &sshd, &src, &["--json"]);
    with.code(0);
    assert_eq!(with.json()["copied"], 12, "{with}");
}

#[test]
fn what_sftp_cannot_keep_is_said_once_per_run() {
    let (env, sshd) = remote_world();
    let (src, _) = remote_dataset(&env, &sshd);
    let run = stage_remote(&env, &sshd, &src, &["--json"]);
    run.code(0);
    let warnings = json_list(&run.json()["warnings"]);
    let limits: Vec<&String> = warnings
        .iter()
        .filter(|w| w.contains("hard links become separate files"))
        .collect();
    assert_eq!(limits.len(), 1, "{warnings:?}");
    assert_eq!(
        limits[0],
        &format!(
            "{}: hard links become separate files; sparse files are copied in full",
            sshd.spec(&src)
        ),
        "{warnings:?}"
    );
}
