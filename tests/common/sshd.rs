//! A real OpenSSH server (`/usr/sbin/sshd`) on loopback, for the tests of remote NAS
//! access over SSH and SFTP, and the client side of it in the world's HOME.
//!
//! Why it looks like this:
//! - Each test gets its own server: fresh host and user keys in `<world>/sshd/`, a free
//!   port on 127.0.0.1, its own `sshd_config`, and its log in `<world>/sshd/sshd.log`
//!   (printed whenever the server does not come up).
//! - The world's HOME gets what an ordinary user would have: `~/.ssh/id_ed25519`,
//!   `~/.ssh/config` with the host alias `nas`, and `~/.ssh/known_hosts` with the
//!   server's key under `[127.0.0.1]:PORT`.
//! - Tests need "permission denied" on the remote side, which root never gets. So when the
//!   tests run as root, the login user is the dedicated system user `hpcstage-nas`
//!   (created once, with the password field `*`: sshd without PAM refuses accounts whose
//!   password is locked with `!`, which is what `useradd` writes by default). Otherwise
//!   the login user is the user running the tests, and sshd runs without privilege
//!   separation as that user.
//! - Only the login user may log in (`AllowUsers`), so a client that ignores the `User`
//!   of the config cannot pass by logging in as root with the same key.
//! - The OpenSSH client reads `~/.ssh` from the passwd entry, not from `$HOME`:
//!   [`Sshd::ssh`] and [`Sshd::sftp`] name the world's files explicitly.
//! - Nothing outlives a test: dropping the fixture kills the listener and every process
//!   below it (connections and the commands they run).
#![allow(clippy::print_stderr)]

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::fs::{chmod, read_text, write};
use super::run::{self, Run};
use super::{is_root, World};

/// The server binary.
pub(crate) const SSHD: &str = "/usr/sbin/sshd";

/// The login user when the tests run as root.
pub(crate) const NAS_USER: &str = "hpcstage-nas";

/// The host alias in the world's `~/.ssh/config`.
pub(crate) const HOST_ALIAS: &str = "nas";

/// The external SFTP server; `internal-sftp` when it is not installed.
const SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";

/// How long the server may take to accept connections.
const STARTUP_BOUND: Duration = Duration::from_secs(10);

/// One OpenSSH server on 127.0.0.1, serving the world's login user.
pub(crate) struct Sshd {
    /// `<world>/sshd`: keys, config, pid file and log.
    dir: PathBuf,
    /// The world's HOME.
    home: PathBuf,
    port: u16,
    user: String,
    uid: u32,
    gid: u32,
    /// `ssh-ed25519 AAAA...` (no comment).
    host_key: String,
    /// The server's second host key (`ecdsa-sha2-nistp256 AAAA...`).
    ecdsa_host_key: String,
    listener: Child,
}

impl Sshd {
    /// Starts a server for `world`: fresh keys, a free port, the world's HOME set up as a
    /// client of it (`ssh nas` works), and the port accepting connections. Fails the test
    /// with the server's log when it does not come up within 10 s.
    pub(crate) fn start(world: &impl World) -> Sshd {
        let dir = world.path("sshd");
        fs::create_dir_all(&dir).expect("create the sshd fixture folder");
        let user = login_user();
        let (uid, gid) = (id_number(&user, "-u"), id_number(&user, "-g"));
        if is_root() {
            // The server reads the authorized keys as the login user.
            open_path_to(world, &dir);
        }
        chmod(&dir, 0o755);

        let host_key_file = dir.join("ssh_host_ed25519_key");
        // A second host key of another type, as most servers have: clients must find
        // the one their known_hosts holds.
        let ecdsa_key_file = dir.join("ssh_host_ecdsa_key");
        let user_key_file = dir.join("user_ed25519");
        keygen(&host_key_file);
        keygen_typed(&ecdsa_key_file, "ecdsa");
        keygen(&user_key_file);
        let host_key = public_key(&host_key_file);
        let ecdsa_host_key = public_key(&ecdsa_key_file);
        let authorized = dir.join("authorized_keys");
        write(&authorized, read_text(pub_path(&user_key_file)));
        chmod(&authorized, 0o644);

        if is_root() {
            // sshd refuses to start as root without its privilege separation folder.
            let privsep = Path::new("/run/sshd");
            if !privsep.is_dir() {
                fs::create_dir_all(privsep).expect("create /run/sshd");
                chmod(privsep, 0o755);
            }
        }

        let mut attempts = Vec::new();
        let (port, listener) = loop {
            let port = free_port();
            write(
                dir.join("sshd_config"),
                config(
                    &dir,
                    port,
                    &user,
                    &[&host_key_file, &ecdsa_key_file],
                    &authorized,
                ),
            );
            match launch(&dir, port) {
                Ok(child) => break (port, child),
                // Another process took the port between our probe and sshd's bind.
                Err(Startup::PortTaken(log)) if attempts.len() < 4 => attempts.push(log),
                Err(Startup::PortTaken(log) | Startup::Failed(log)) => {
                    attempts.push(log);
                    panic!(
                        "sshd did not come up (attempts: {})\n{}",
                        attempts.len(),
                        attempts.join("\n--- next attempt ---\n")
                    );
                }
            }
        };

        let sshd = Sshd {
            dir,
            home: world.path("home"),
            port,
            user,
            uid,
            gid,
            host_key,
            ecdsa_host_key,
            listener,
        };
        sshd.write_client_side(world, &user_key_file);
        sshd
    }

    /// `~/.ssh/{id_ed25519,id_ed25519.pub,config,known_hosts}` in the world's HOME.
    fn write_client_side(&self, world: &impl World, user_key_file: &Path) {
        let ssh_dir = world.path("home/.ssh");
        fs::create_dir_all(&ssh_dir).expect("create ~/.ssh");
        chmod(&ssh_dir, 0o700);
        let key = self.user_key_path();
        write(&key, fs::read(user_key_file).expect("read the user key"));
        chmod(&key, 0o600);
        write(pub_path(&key), read_text(pub_path(user_key_file)));
        write(
            ssh_dir.join("config"),
            format!(
                "Host {HOST_ALIAS}\n    HostName 127.0.0.1\n    Port {}\n    User {}\n    \
                 IdentityFile {}\n",
                self.port,
                self.user,
                key.display()
            ),
        );
        self.write_known_hosts(world, &format!("{}\n", self.known_hosts_line()));
    }

    /// The port the server listens on (127.0.0.1 only).
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// The user logged in as: `hpcstage-nas` when the tests run as root, otherwise the
    /// user running them.
    pub(crate) fn user(&self) -> &str {
        &self.user
    }

    /// `nas`: the host alias in the world's `~/.ssh/config`.
    pub(crate) fn host_alias(&self) -> &str {
        HOST_ALIAS
    }

    /// The process id of the listener.
    pub(crate) fn pid(&self) -> u32 {
        self.listener.id()
    }

    /// `nas:/abs/path`: a remote location through the host alias.
    pub(crate) fn spec(&self, path: &Path) -> String {
        format!("{HOST_ALIAS}:{}", absolute(path).display())
    }

    /// `USER@127.0.0.1:PORT:/abs/path`: a remote location without the alias.
    pub(crate) fn direct_spec(&self, path: &Path) -> String {
        format!(
            "{}@127.0.0.1:{}:{}",
            self.user,
            self.port,
            absolute(path).display()
        )
    }

    /// The server's public host key as `ssh-ed25519 AAAA...` (type and base64, no
    /// comment).
    pub(crate) fn host_public_key_line(&self) -> &str {
        &self.host_key
    }

    /// The world's `known_hosts` line for this server: `[127.0.0.1]:PORT ssh-ed25519 AAAA...`.
    pub(crate) fn known_hosts_line(&self) -> String {
        format!("[127.0.0.1]:{} {}", self.port, self.host_key)
    }

    /// The `known_hosts` line of the server's second (ECDSA) host key.
    pub(crate) fn ecdsa_known_hosts_line(&self) -> String {
        format!("[127.0.0.1]:{} {}", self.port, self.ecdsa_host_key)
    }

    /// The server's log so far (`sshd -e` at LogLevel VERBOSE).
    pub(crate) fn log(&self) -> String {
        fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// The client's private key in the world's HOME (`~/.ssh/id_ed25519`).
    pub(crate) fn user_key_path(&self) -> PathBuf {
        self.home.join(".ssh/id_ed25519")
    }

    /// The client's config in the world's HOME (`~/.ssh/config`).
    pub(crate) fn config_path(&self) -> PathBuf {
        self.home.join(".ssh/config")
    }

    /// The client's known hosts in the world's HOME (`~/.ssh/known_hosts`).
    pub(crate) fn known_hosts_path(&self) -> PathBuf {
        self.home.join(".ssh/known_hosts")
    }

    /// A folder `<world>/NAME` (NAME may hold slashes) that the login user owns, with
    /// everything already in it, and that it can reach: the folders above it inside the
    /// world get `o+x` when the tests run as root.
    pub(crate) fn remote_dir(&self, world: &impl World, name: &str) -> PathBuf {
        let path = world.path(name);
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("create remote folder {}: {e}", path.display()));
        if is_root() {
            open_path_to(world, &path);
        }
        self.give_to_login_user(&path);
        path
    }

    /// Gives `path` and everything below it (links not followed) to the login user when
    /// the tests run as root; nothing otherwise (the login user then already owns what
    /// the test writes).
    pub(crate) fn give_to_login_user(&self, path: &Path) {
        if !is_root() {
            return;
        }
        let meta =
            fs::symlink_metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))
            .unwrap_or_else(|e| panic!("chown {} to {}: {e}", path.display(), self.user));
        if meta.is_dir() {
            let entries =
                fs::read_dir(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            for entry in entries {
                self.give_to_login_user(&entry.expect("read folder entry").path());
            }
        }
    }

    /// Kills (SIGKILL) every open connection, with the commands it runs, and leaves the
    /// listener running, so that new connections work. Returns how many connections were
    /// open (including ones still being set up); they are gone when this returns.
    pub(crate) fn kill_connections(&self) -> usize {
        let listener = pid_of(&self.listener);
        let killed = kill_below(listener);
        let gone = wait_gone(&killed, Duration::from_secs(10));
        assert!(
            gone,
            "killed sshd processes still alive after 10 s: {killed:?}"
        );
        killed.iter().filter(|p| p.1 == listener).count()
    }

    /// Writes the world's `~/.ssh/known_hosts` (empty: the server's key is unknown).
    pub(crate) fn write_known_hosts(&self, world: &impl World, content: &str) {
        let path = world.path("home/.ssh/known_hosts");
        write(&path, content);
        chmod(&path, 0o644);
    }

    /// A `known_hosts` line for this server's address with a freshly generated key that is
    /// NOT the server's: what a client sees after the host key changed.
    pub(crate) fn other_host_key_line(&self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let file = self.dir.join(format!(
            "other_host_key.{}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        keygen(&file);
        format!("[127.0.0.1]:{} {}", self.port, public_key(&file))
    }

    /// Makes the world's `known_hosts` hold another key for `[127.0.0.1]:PORT`: to the
    /// client the server's host key has changed.
    pub(crate) fn write_wrong_host_key(&self, world: &impl World) {
        let line = self.other_host_key_line();
        self.write_known_hosts(world, &format!("{line}\n"));
    }

    /// Replaces the world's `~/.ssh/id_ed25519` (and `.pub`) by a freshly generated key
    /// that the server does not accept.
    pub(crate) fn wrong_user_key(&self, world: &impl World) {
        let key = world.path("home/.ssh/id_ed25519");
        keygen(&key);
        chmod(&key, 0o600);
    }

    /// The options that make the OpenSSH client use the world's files only (it reads
    /// `~/.ssh` from the passwd entry, not from `$HOME`) and never ask anything.
    pub(crate) fn client_options(&self) -> Vec<OsString> {
        let mut config = OsString::from("-F");
        config.push(self.config_path());
        let mut known = OsString::from("-oUserKnownHostsFile=");
        known.push(self.known_hosts_path());
        vec![
            config,
            known,
            "-oGlobalKnownHostsFile=/dev/null".into(),
            "-oStrictHostKeyChecking=yes".into(),
            "-oBatchMode=yes".into(),
            "-oIdentitiesOnly=yes".into(),
            "-oConnectTimeout=10".into(),
        ]
    }

    /// `ssh` with the world's HOME and files ([`Sshd::client_options`]); add `nas` and a
    /// command.
    pub(crate) fn ssh(&self) -> Command {
        let mut cmd = run::clean("ssh");
        cmd.env("HOME", &self.home).args(self.client_options());
        cmd
    }

    /// `sftp -b -` with the world's HOME and files; add `nas`, and feed the batch on stdin
    /// ([`Sshd::sftp_batch`] does both).
    pub(crate) fn sftp(&self) -> Command {
        let mut cmd = run::clean("sftp");
        cmd.env("HOME", &self.home)
            .args(self.client_options())
            .args(["-b", "-"]);
        cmd
    }

    /// Runs `batch` (sftp commands, one a line) against `nas` to the end; sftp stops at
    /// the first failing command.
    pub(crate) fn sftp_batch(&self, batch: &str) -> Run {
        use std::io::Write;
        let mut cmd = self.sftp();
        cmd.arg(HOST_ALIAS)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let shown = format!("{} <<< {batch:?}", run::describe(&cmd));
        let mut child = cmd.spawn().expect("start sftp");
        child
            .stdin
            .take()
            .expect("sftp stdin")
            .write_all(batch.as_bytes())
            .expect("write the sftp batch");
        run::wait_child(&shown, child, Duration::from_secs(60))
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let killed = kill_below(pid_of(&self.listener));
        let _ = self.listener.kill();
        let _ = self.listener.wait();
        if !wait_gone(&killed, Duration::from_secs(10)) {
            eprintln!("warning: sshd processes still alive after 10 s: {killed:?}");
        }
    }
}

/// What came of one start of the server.
enum Startup {
    /// The port was taken before sshd bound it; the log so far.
    PortTaken(String),
    /// Anything else; the log so far.
    Failed(String),
}

/// Starts `sshd -D -e -f <dir>/sshd_config` and waits until it answers on `port` with an
/// SSH banner.
fn launch(dir: &Path, port: u16) -> Result<Child, Startup> {
    let log_path = dir.join("sshd.log");
    let log = fs::File::create(&log_path).expect("create sshd.log");
    let mut cmd = run::clean(SSHD);
    cmd.args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .stdout(log.try_clone().expect("clone the sshd.log handle"))
        .stderr(log);
    let shown = run::describe(&cmd);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {shown}: {e}"));
    let log_text = || {
        format!(
            "{shown}\n--- {} ---\n{}--- end ---",
            log_path.display(),
            fs::read_to_string(&log_path).unwrap_or_default()
        )
    };
    let started = Instant::now();
    let mut last_error = String::new();
    loop {
        if let Some(status) = child.try_wait().expect("poll sshd") {
            let text = format!("sshd exited ({status})\n{}", log_text());
            return Err(if text.contains("Address already in use") {
                Startup::PortTaken(text)
            } else {
                Startup::Failed(text)
            });
        }
        match banner(port) {
            Ok(banner) if banner.starts_with("SSH-2.0-OpenSSH") => {
                // The port answered: make sure it is our server and not another one.
                std::thread::sleep(Duration::from_millis(50));
                if child.try_wait().expect("poll sshd").is_none() {
                    return Ok(child);
                }
            }
            Ok(other) => last_error = format!("unexpected banner {other:?}"),
            Err(e) => last_error = e,
        }
        if started.elapsed() > STARTUP_BOUND {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Startup::Failed(format!(
                "port {port} not answering after {STARTUP_BOUND:?} (last: {last_error})\n{}",
                log_text()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The first line the server on `port` sends.
fn banner(port: u16) -> Result<String, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("set a read timeout");
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while got.len() < 255 && !got.ends_with(b"\n") {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => got.push(byte[0]),
            Err(e) => return Err(format!("read the banner from {addr}: {e}")),
        }
    }
    Ok(String::from_utf8_lossy(&got).trim_end().to_string())
}

/// The server's configuration.
fn config(dir: &Path, port: u16, user: &str, host_keys: &[&Path], authorized: &Path) -> String {
    let sftp = if Path::new(SFTP_SERVER).exists() {
        SFTP_SERVER
    } else {
        "internal-sftp"
    };
    let mut text = format!(
        "# Written by tests/common/sshd.rs for one test.\n\
         Port {port}\n\
         ListenAddress 127.0.0.1\n\
         AddressFamily inet\n\
         {host_keys}\
         PidFile {pid}\n\
         AuthorizedKeysFile {authorized}\n\
         AllowUsers {user}\n\
         StrictModes no\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         HostbasedAuthentication no\n\
         UsePAM no\n\
         PermitRootLogin prohibit-password\n\
         MaxStartups 100:30:200\n\
         MaxSessions 64\n\
         LoginGraceTime 30\n\
         UseDNS no\n\
         PrintMotd no\n\
         PrintLastLog no\n\
         X11Forwarding no\n\
         Subsystem sftp {sftp}\n\
         LogLevel VERBOSE\n",
        host_keys = host_keys
            .iter()
            .map(|k| format!("HostKey {}\n", k.display()))
            .collect::<String>(),
        pid = dir.join("sshd.pid").display(),
        authorized = authorized.display(),
    );
    if sshd_version() >= (9, 8) {
        // Killed connections and refused keys must not get 127.0.0.1 blocked.
        text.push_str("PerSourcePenalties no\n");
    }
    text
}

/// OpenSSH's version as (major, minor), from `sshd -V`; (0, 0) when unknown.
fn sshd_version() -> (u32, u32) {
    static VERSION: OnceLock<(u32, u32)> = OnceLock::new();
    *VERSION.get_or_init(|| {
        let out = run::clean(SSHD).arg("-V").output().expect("run sshd -V");
        let text = String::from_utf8_lossy(&out.stderr);
        let Some(rest) = text.split("OpenSSH_").nth(1) else {
            return (0, 0);
        };
        let digits = |s: &str| {
            s.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .unwrap_or(0)
        };
        let (major, minor) = rest.split_once('.').unwrap_or((rest, "0"));
        (digits(major), digits(minor))
    })
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    let probe = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    probe.local_addr().expect("probe address").port()
}

/// `ssh-keygen -q -t ed25519 -N '' -f FILE` (replacing FILE and FILE.pub).
fn keygen(file: &Path) {
    keygen_typed(file, "ed25519");
}

/// `ssh-keygen -q -t TYPE -N '' -f FILE` (replacing FILE and FILE.pub).
fn keygen_typed(file: &Path, key_type: &str) {
    for old in [file.to_path_buf(), pub_path(file)] {
        match fs::remove_file(&old) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("remove {}: {e}", old.display()),
        }
    }
    let mut cmd = run::clean("ssh-keygen");
    cmd.args(["-q", "-t", key_type, "-N", "", "-C", "hpcstage-test", "-f"])
        .arg(file);
    Run::of(cmd).code(0);
}

/// `FILE.pub`.
fn pub_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// `TYPE BASE64` of the public key next to the private key `file`.
fn public_key(file: &Path) -> String {
    let text = read_text(pub_path(file));
    let fields: Vec<&str> = text.split_whitespace().take(2).collect();
    assert!(
        fields.len() == 2,
        "{} is not a public key: {text:?}",
        pub_path(file).display()
    );
    fields.join(" ")
}

fn absolute(path: &Path) -> PathBuf {
    assert!(
        path.is_absolute(),
        "a remote path must be absolute: {}",
        path.display()
    );
    path.to_path_buf()
}

/// The login user: [`NAS_USER`] (created when missing) as root, else the current user.
fn login_user() -> String {
    if !is_root() {
        let run = run::tool("id", &["-un"]);
        run.code(0);
        return run.stdout.trim().to_string();
    }
    static CREATED: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(e) = CREATED.get_or_init(create_nas_user) {
        panic!("{e}");
    }
    NAS_USER.to_string()
}

/// Creates [`NAS_USER`] when it does not exist, and unlocks its password field: sshd
/// without PAM refuses a locked account even for a key. Other test processes may do the
/// same at the same time: "already exists" and a locked passwd file are taken in stride.
fn create_nas_user() -> Result<(), String> {
    let exists = || run::tool("getent", &["passwd", NAS_USER]).code == Some(0);
    let started = Instant::now();
    let mut last = None;
    while !exists() {
        if started.elapsed() > Duration::from_secs(20) {
            return Err(format!(
                "could not create the user {NAS_USER}\n{}",
                last.map(|r: Run| r.to_string()).unwrap_or_default()
            ));
        }
        let run = run::tool(
            "useradd",
            &[
                "--system",
                "--shell",
                "/bin/sh",
                "--home-dir",
                "/nonexistent",
                "--no-create-home",
                "--password",
                "*",
                NAS_USER,
            ],
        );
        if run.code != Some(0) {
            // 9: the name is taken (another process was first); others: /etc/passwd busy.
            std::thread::sleep(Duration::from_millis(100));
        }
        last = Some(run);
    }
    let shadow = run::tool("getent", &["shadow", NAS_USER]);
    let locked = shadow
        .stdout
        .split(':')
        .nth(1)
        .is_some_and(|p| p.starts_with('!'));
    if locked {
        let run = run::tool("usermod", &["--password", "*", NAS_USER]);
        if run.code != Some(0) {
            return Err(format!("could not unlock the user {NAS_USER}\n{run}"));
        }
    }
    Ok(())
}

/// `id -u USER` or `id -g USER`.
fn id_number(user: &str, flag: &str) -> u32 {
    let run = run::tool("id", &[flag, user]);
    run.code(0);
    run.stdout
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("id {flag} {user} printed a non-number: {e}\n{run}"))
}

/// Lets every user pass through the folders from the world's root down to `path` (`o+x`),
/// and checks that the folders above the world already let them.
fn open_path_to(world: &impl World, path: &Path) {
    let inside = path
        .strip_prefix(world.root())
        .unwrap_or_else(|_| panic!("{} is not inside the world", path.display()));
    for above in world.root().ancestors().skip(1) {
        let mode = fs::metadata(above)
            .expect("stat a folder above the world")
            .mode();
        assert!(
            mode & 0o001 != 0,
            "{} (above the test's world) does not let other users through (mode {:o}); \
             the sshd fixture's login user {NAS_USER} cannot reach the world. Set TMPDIR \
             to a folder every user can pass through.",
            above.display(),
            mode & 0o7777
        );
    }
    let mut dir = world.root().to_path_buf();
    let open = |dir: &Path| {
        let mode = fs::metadata(dir).expect("stat a world folder").mode() & 0o7777;
        if mode & 0o001 == 0 {
            chmod(dir, mode | 0o001);
        }
    };
    open(&dir);
    for part in inside.parent().into_iter().flat_map(Path::components) {
        dir.push(part);
        open(&dir);
    }
}

fn pid_of(child: &Child) -> i32 {
    i32::try_from(child.id()).expect("a pid fits in i32")
}

/// `(pid, parent pid)` of every process, from /proc.
fn processes() -> Vec<(i32, i32)> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "PID (COMM) STATE PPID ...": COMM may hold anything, so cut after its last ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
            out.push((pid, ppid));
        }
    }
    out
}

/// Every process below `root`, as `(pid, parent pid)`.
fn descendants(root: i32) -> Vec<(i32, i32)> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (pid, ppid) in processes() {
        children.entry(ppid).or_default().push(pid);
    }
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(parent) = stack.pop() {
        for &child in children.get(&parent).map(Vec::as_slice).unwrap_or_default() {
            out.push((child, parent));
            stack.push(child);
        }
    }
    out
}

/// Kills every process below `root` (not `root` itself): stops them all first, so none can
/// fork or be reparented out of sight while the tree is collected, then kills them.
/// Returns what was killed, as `(pid, parent pid)`.
fn kill_below(root: i32) -> Vec<(i32, i32)> {
    let mut stopped: Vec<(i32, i32)> = Vec::new();
    let mut seen = BTreeSet::new();
    for _ in 0..100 {
        let new: Vec<(i32, i32)> = descendants(root)
            .into_iter()
            .filter(|p| !seen.contains(&p.0))
            .collect();
        if new.is_empty() {
            break;
        }
        for p in new {
            // SAFETY: kill has no memory preconditions; a vanished pid only gives ESRCH.
            unsafe { libc::kill(p.0, libc::SIGSTOP) };
            seen.insert(p.0);
            stopped.push(p);
        }
    }
    for p in &stopped {
        // SAFETY: as above.
        unsafe { libc::kill(p.0, libc::SIGKILL) };
    }
    stopped
}

/// Waits (at most `bound`) until none of `processes` runs any more; whether they are gone.
fn wait_gone(processes: &[(i32, i32)], bound: Duration) -> bool {
    let started = Instant::now();
    while processes.iter().any(|p| alive(p.0)) {
        if started.elapsed() > bound {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Whether `pid` still runs (a zombie does not).
pub(crate) fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
