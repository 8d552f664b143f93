//! Opening one SSH connection the way OpenSSH would: the host alias resolved through
//! `~/.ssh/config` (`HostName`, `User`, `Port`, `IdentityFile`, `UserKnownHostsFile`),
//! the host key checked against `known_hosts` (an unknown or changed key is refused with
//! its fingerprint, never accepted), then ssh-agent and key files tried in turn.

use std::io::BufReader;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use ssh2::{CheckResult, HashType, HostKeyType, KnownHostFileKind, Session, Sftp};
use ssh2_config::{ParseRule, SshConfig};

use super::spec::RemoteSpec;
use crate::error::{Error, HostKeyProblem, Result};

/// Tunables of SSH transfers.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// Connections (each with its own SFTP channel) used in parallel.
    pub sessions: usize,
    /// How long one network operation may block before the connection counts as lost.
    pub timeout: Duration,
    /// Reconnect attempts after a lost connection before the transfer fails.
    pub retries: u32,
    /// First pause before reconnecting (doubled each attempt, with jitter).
    pub backoff: Duration,
    /// The command that runs GNU tar on the host, to stream many small files in one
    /// pipe (`remote/stream.rs`); `None` reads every file over SFTP.
    pub tar: Option<String>,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            sessions: 4,
            timeout: Duration::from_secs(60),
            retries: 5,
            backoff: Duration::from_millis(500),
            tar: Some("tar".into()),
        }
    }
}

/// A host alias resolved into what a connection needs.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// As the user wrote it (for messages).
    pub alias: String,
    pub hostname: String,
    pub port: u16,
    pub user: String,
    pub identity_files: Vec<PathBuf>,
    pub known_hosts: PathBuf,
}

/// Ciphers in order of preference where the CPU has AES instructions. libssh2 puts
/// chacha20-poly1305 first, and its chacha20 is portable C: decrypting took 15% of
/// hpcstage's CPU time when staging 20,000 small files over SSH (`perf`, bench row 7),
/// where AES-GCM goes through OpenSSL's AES-NI code. The server's choice among what both
/// offer follows the client's order (RFC 4253, 7.1); every cipher libssh2 has stays on the
/// list, so a server without AES-GCM still agrees on one.
const CIPHERS_WITH_AES: &str = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,\
chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr,aes256-cbc,aes192-cbc,aes128-cbc";

/// Whether the CPU encrypts AES in hardware (AES-GCM is then the cheapest cipher).
fn cpu_has_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

impl Endpoint {
    /// Resolves `spec` through `~/.ssh/config` (when there is one).
    pub fn resolve(spec: &RemoteSpec) -> Result<Endpoint> {
        let home = home_dir();
        let ssh_dir = home.join(".ssh");
        let config_path = ssh_dir.join("config");
        let config = match std::fs::File::open(&config_path) {
            Ok(f) => SshConfig::default()
                .home_dir(&home)
                .parse(
                    &mut BufReader::new(f),
                    ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS,
                )
                .map_err(|e| Error::Parse {
                    path: config_path.clone(),
                    reason: e.to_string(),
                })?,
            Err(_) => SshConfig::default(),
        };
        let params = config.query(&spec.host);
        let expand = |p: &str| match p.strip_prefix("~/") {
            Some(rest) => home.join(rest),
            None => PathBuf::from(p),
        };
        let identity_files = params
            .identity_file
            .clone()
            .unwrap_or_else(|| {
                ["id_ed25519", "id_ecdsa", "id_rsa"]
                    .iter()
                    .map(|n| ssh_dir.join(n))
                    .collect()
            })
            .into_iter()
            .map(|p| expand(&p.to_string_lossy()))
            .collect();
        let known_hosts = params
            .ignored_fields
            .get("userknownhostsfile")
            .or_else(|| params.unsupported_fields.get("userknownhostsfile"))
            .and_then(|v| v.first())
            .map(|p| expand(p))
            .unwrap_or_else(|| ssh_dir.join("known_hosts"));
        Ok(Endpoint {
            alias: spec.authority(),
            hostname: params
                .host_name
                .clone()
                .unwrap_or_else(|| spec.host.clone()),
            port: spec.port.or(params.port).unwrap_or(22),
            user: spec
                .user
                .clone()
                .or_else(|| params.user.clone())
                .unwrap_or_else(crate::host::current_user),
            identity_files,
            known_hosts,
        })
    }

    /// Opens an authenticated connection with an SFTP channel.
    pub fn connect(&self, opts: &SshOptions) -> Result<(Session, Sftp)> {
        match self.connect_with(opts, None) {
            Err(Error::HostKey(problem)) => {
                // The server may also hold a key of another type, the one known_hosts
                // has (OpenSSH asks for those types first; libssh2 takes its own
                // preference). Only a key known_hosts vouches for is ever accepted.
                for algorithm in HOST_KEY_ALGORITHMS {
                    match self.connect_with(opts, Some(algorithm)) {
                        Ok(connected) => return Ok(connected),
                        Err(Error::HostKey(_) | Error::SshConnect { .. }) => continue,
                        Err(e) => return Err(e),
                    }
                }
                Err(Error::HostKey(problem))
            }
            other => other,
        }
    }

    /// One connection attempt, with the host key type fixed when given.
    fn connect_with(&self, opts: &SshOptions, host_key: Option<&str>) -> Result<(Session, Sftp)> {
        let tcp = self.tcp(opts)?;
        let mut session = Session::new().map_err(|e| self.failed("cannot start SSH", e))?;
        if let Some(algorithm) = host_key {
            session
                .method_pref(ssh2::MethodType::HostKey, algorithm)
                .map_err(|e| self.failed("cannot choose a host key type", e))?;
        }
        if cpu_has_aes() {
            for direction in [ssh2::MethodType::CryptCs, ssh2::MethodType::CryptSc] {
                session
                    .method_pref(direction, CIPHERS_WITH_AES)
                    .map_err(|e| self.failed("cannot choose the ciphers", e))?;
            }
        }
        session.set_tcp_stream(tcp);
        session.set_timeout(u32::try_from(opts.timeout.as_millis()).unwrap_or(u32::MAX));
        session
            .handshake()
            .map_err(|e| self.failed("SSH handshake failed", e))?;
        self.check_host_key(&session)?;
        self.authenticate(&session)?;
        let sftp = session
            .sftp()
            .map_err(|e| self.failed("the server refused an SFTP channel", e))?;
        Ok((session, sftp))
    }

    fn tcp(&self, opts: &SshOptions) -> Result<TcpStream> {
        let unreachable = |source: std::io::Error| Error::SshConnect {
            host: self.alias.clone(),
            address: format!("{}:{}", self.hostname, self.port),
            error: source,
        };
        let addrs = (self.hostname.as_str(), self.port)
            .to_socket_addrs()
            .map_err(unreachable)?;
        let mut last = std::io::Error::other("the host name resolved to no address");
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, opts.timeout.min(Duration::from_secs(30))) {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    return Ok(tcp);
                }
                Err(e) => last = e,
            }
        }
        Err(unreachable(last))
    }

    /// The `known_hosts` check, as `StrictHostKeyChecking yes`.
    fn check_host_key(&self, session: &Session) -> Result<()> {
        let (key, key_type) = session
            .host_key()
            .ok_or_else(|| self.refused("the server sent no host key"))?;
        let fingerprint = fingerprint(session);
        let key_type = key_type_name(key_type).to_string();
        let mut known = session
            .known_hosts()
            .map_err(|e| self.failed("cannot read known hosts", e))?;
        // The user's file, and the system-wide one clusters often fill for their hosts.
        for file in [self.known_hosts.as_path(), Path::new(GLOBAL_KNOWN_HOSTS)] {
            if file.exists() {
                known
                    .read_file(file, KnownHostFileKind::OpenSSH)
                    .map_err(|e| Error::Parse {
                        path: file.to_path_buf(),
                        reason: format!("not a known_hosts file libssh2 can read: {e}"),
                    })?;
            }
        }
        let host_key_error = |changed: bool| {
            Error::HostKey(Box::new(HostKeyProblem {
                host: self.known_hosts_name(),
                key_type: key_type.clone(),
                fingerprint: fingerprint.clone(),
                known_hosts: self.known_hosts.clone(),
                changed,
            }))
        };
        match known.check_port(&self.hostname, self.port, key) {
            CheckResult::Match => Ok(()),
            CheckResult::NotFound => Err(host_key_error(false)),
            CheckResult::Mismatch => Err(host_key_error(true)),
            CheckResult::Failure => Err(self.refused("the host key check failed")),
        }
    }

    /// How OpenSSH names this host in `known_hosts`.
    fn known_hosts_name(&self) -> String {
        if self.port == 22 {
            self.hostname.clone()
        } else {
            format!("[{}]:{}", self.hostname, self.port)
        }
    }

    fn authenticate(&self, session: &Session) -> Result<()> {
        let mut tried = Vec::new();
        if std::env::var_os("SSH_AUTH_SOCK").is_some() {
            tried.push("ssh-agent".to_string());
            if session.userauth_agent(&self.user).is_ok() && session.authenticated() {
                return Ok(());
            }
        }
        for key in &self.identity_files {
            if !key.exists() {
                continue;
            }
            tried.push(key.display().to_string());
            match session.userauth_pubkey_file(&self.user, None, key, None) {
                Ok(()) if session.authenticated() => return Ok(()),
                Ok(()) => {}
                // The connection itself went (the host restarts, the network drops):
                // not a verdict on the key, and connecting again may help.
                Err(e) if connection_gone(&e) => {
                    return Err(self.failed("the connection broke off during authentication", e));
                }
                // A key that cannot be read at all (encrypted, unknown format) says so.
                Err(e)
                    if !matches!(
                        e.code(),
                        ssh2::ErrorCode::Session(KEY_REFUSED | KEY_UNVERIFIED)
                    ) =>
                {
                    tried.pop();
                    tried.push(format!("{} ({})", key.display(), e.message()));
                }
                Err(_) => {}
            }
        }
        Err(Error::SshAuth {
            user: self.user.clone(),
            host: self.alias.clone(),
            tried: if tried.is_empty() {
                "no ssh-agent and no key file".to_string()
            } else {
                tried.join(", ")
            },
        })
    }

    fn failed(&self, what: &str, e: ssh2::Error) -> Error {
        self.refused(&format!("{what}: {}", e.message()))
    }

    fn refused(&self, reason: &str) -> Error {
        Error::SshConnect {
            host: self.alias.clone(),
            address: format!("{}:{}", self.hostname, self.port),
            error: std::io::Error::other(reason.to_string()),
        }
    }
}

/// The host key's fingerprint as OpenSSH prints it (`SHA256:` + unpadded base64).
fn fingerprint(session: &Session) -> String {
    session
        .host_key_hash(HashType::Sha256)
        .map(|h| {
            format!(
                "SHA256:{}",
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(h)
            )
        })
        .unwrap_or_else(|| "(no fingerprint)".to_string())
}

fn key_type_name(t: HostKeyType) -> &'static str {
    match t {
        HostKeyType::Rsa => "RSA",
        HostKeyType::Dss => "DSA",
        HostKeyType::Ecdsa256 | HostKeyType::Ecdsa384 | HostKeyType::Ecdsa521 => "ECDSA",
        HostKeyType::Ed25519 => "ED25519",
        _ => "unknown",
    }
}

/// `$HOME`, else the passwd entry's home.
pub(crate) fn home_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.dir)
        .unwrap_or_else(|| Path::new("/").to_path_buf())
}

/// The system-wide known hosts, read after the user's.
const GLOBAL_KNOWN_HOSTS: &str = "/etc/ssh/ssh_known_hosts";

/// Host key types tried one by one when the type negotiated first is not the one
/// `known_hosts` holds.
const HOST_KEY_ALGORITHMS: [&str; 7] = [
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
    "ssh-rsa",
];

/// libssh2's "the server refused this key" codes (LIBSSH2_ERROR_AUTHENTICATION_FAILED,
/// LIBSSH2_ERROR_PUBLICKEY_UNVERIFIED): the next key is tried.
const KEY_REFUSED: i32 = -18;
const KEY_UNVERIFIED: i32 = -19;

/// libssh2's codes for a connection that is gone: LIBSSH2_ERROR_SOCKET_SEND,
/// LIBSSH2_ERROR_TIMEOUT, LIBSSH2_ERROR_SOCKET_DISCONNECT, LIBSSH2_ERROR_SOCKET_TIMEOUT,
/// LIBSSH2_ERROR_SOCKET_RECV.
const SOCKET_GONE: [i32; 5] = [-7, -9, -13, -30, -43];

/// The connection went while a key was being tried: a socket error, or libssh2's
/// "Waiting for (publickey) USERAUTH response", which it reports under the codes of a
/// refused key when no answer can come (userauth.c) while a server's refusal says
/// "Username/PublicKey combination invalid".
fn connection_gone(e: &ssh2::Error) -> bool {
    match e.code() {
        ssh2::ErrorCode::Session(c) if SOCKET_GONE.contains(&c) => true,
        ssh2::ErrorCode::Session(KEY_REFUSED | KEY_UNVERIFIED) => {
            e.message().starts_with("Waiting for")
        }
        _ => false,
    }
}

#[cfg(test)]
mod auth_tests {
    use super::connection_gone;
    use ssh2::{Error, ErrorCode};

    #[test]
    fn a_refused_key_is_told_from_a_connection_that_went_while_it_was_tried() {
        let refused = Error::new(
            ErrorCode::Session(-18),
            "Username/PublicKey combination invalid",
        );
        assert!(!connection_gone(&refused));
        for gone in [
            Error::new(
                ErrorCode::Session(-19),
                "Waiting for publickey USERAUTH response",
            ),
            Error::new(ErrorCode::Session(-18), "Waiting for USERAUTH response"),
            Error::new(
                ErrorCode::Session(-43),
                "Failure while draining incoming flow",
            ),
            Error::new(ErrorCode::Session(-13), "socket disconnect"),
        ] {
            assert!(connection_gone(&gone), "{gone}");
        }
        assert!(!connection_gone(&Error::new(
            ErrorCode::Session(-16),
            "Unable to open public key file"
        )));
    }
}

#[cfg(test)]
mod cipher_tests {
    use super::CIPHERS_WITH_AES;

    #[test]
    fn libssh2_knows_every_cipher_of_the_preference() {
        let session = ssh2::Session::new().expect("a libssh2 session");
        for direction in [ssh2::MethodType::CryptCs, ssh2::MethodType::CryptSc] {
            session
                .method_pref(direction, CIPHERS_WITH_AES)
                .expect("libssh2 accepts the preference");
        }
        let offered = session
            .supported_algs(ssh2::MethodType::CryptCs)
            .expect("libssh2 lists its ciphers");
        for cipher in CIPHERS_WITH_AES.split(',') {
            assert!(offered.contains(&cipher), "{cipher} not in {offered:?}");
        }
    }
}
