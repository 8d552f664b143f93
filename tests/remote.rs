//! Remote NAS access over SSH and SFTP, against a real OpenSSH server on loopback
//! ([`common::sshd`]): each test starts its own `sshd` and reaches it as `nas` through the
//! world's `~/.ssh`.
//!
//! When the tests run as root, the remote side is the unprivileged user `hpcstage-nas`, so
//! "permission denied" on the NAS is real.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::run::{self, wait_child, Run};
use common::sshd::{alive, Sshd};
use common::{chmod, is_root, read_text, write, Env};

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

// None yet: they come with the SSH client in staging/src/remote/.
