//! A pool of SSH connections to one host, shared by the copy threads, with reconnects.
//!
//! Each connection carries one SFTP channel; a thread borrows one for a whole file, so
//! `sessions` connections move that many files at once (many small files and a few big
//! ones both keep every connection busy). A connection that fails mid-operation is
//! dropped and the operation runs again on a fresh one after a back-off: the caller keeps
//! its own position (a read resumes at the byte it reached).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use ssh2::{Channel, Session, Sftp};

use super::connect::{Endpoint, SshOptions};
use super::spec::RemoteSpec;
use crate::error::{Error, Result};

struct Conn {
    /// A command that stays running on the host between calls (the tar loop of
    /// `remote/stream.rs`), with the command line it runs.
    kept: Option<(Channel, String)>,
    sftp: Sftp,
    // Kept after the channels so that they close first.
    session: Session,
}

struct Slots {
    idle: Vec<Conn>,
    open: usize,
}

/// Connections to one SSH host, rooted at a remote folder.
pub struct Remote {
    spec: RemoteSpec,
    endpoint: Endpoint,
    opts: SshOptions,
    slots: Mutex<Slots>,
    freed: Condvar,
    /// Connections lost in the middle of an operation (each one retried).
    lost: AtomicU64,
    /// Reads that went on from the byte they had reached, after a reconnect.
    pub(crate) resumed: AtomicU64,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({})", self.spec)
    }
}

/// What went wrong in one attempt of a remote operation.
#[derive(Debug)]
pub(crate) enum Fault {
    /// The server answered with an error: final (no such file, permission denied, ...).
    Server(RemoteErrorKind, String),
    /// The connection failed (or an I/O error came out of a remote read): reconnect and
    /// try again.
    Connection(String),
    /// Our own side failed (a local write): final, passed through as it is.
    Local(Error),
}

impl Fault {
    /// Sorts an SFTP call's error: server answers are final, the rest is the connection.
    pub(crate) fn of(e: ssh2::Error) -> Fault {
        match e.code() {
            ssh2::ErrorCode::SFTP(code) => Fault::Server(kind_of(code), e.message().to_string()),
            ssh2::ErrorCode::Session(_) => Fault::Connection(e.message().to_string()),
        }
    }

    /// An error of reading or writing a remote file's bytes.
    pub(crate) fn io(e: std::io::Error) -> Fault {
        match e.kind() {
            std::io::ErrorKind::NotFound => Fault::Server(RemoteErrorKind::NotFound, e.to_string()),
            std::io::ErrorKind::AlreadyExists => {
                Fault::Server(RemoteErrorKind::AlreadyExists, e.to_string())
            }
            _ => Fault::Connection(e.to_string()),
        }
    }
}

impl From<ssh2::Error> for Fault {
    fn from(e: ssh2::Error) -> Self {
        Fault::of(e)
    }
}

impl Remote {
    /// Connects once (so that a wrong host key, a refused key or an unreachable host is
    /// reported before any work starts) and keeps that connection for the pool.
    pub fn connect(spec: &RemoteSpec, opts: &SshOptions) -> Result<Remote> {
        let endpoint = Endpoint::resolve(spec)?;
        let (session, sftp) = endpoint.connect(opts)?;
        Ok(Remote {
            spec: spec.clone(),
            endpoint,
            opts: SshOptions {
                sessions: opts.sessions.max(1),
                ..opts.clone()
            },
            slots: Mutex::new(Slots {
                idle: vec![Conn {
                    kept: None,
                    sftp,
                    session,
                }],
                open: 1,
            }),
            freed: Condvar::new(),
            lost: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
        })
    }

    /// The folder this remote is rooted at.
    pub fn root(&self) -> &Path {
        &self.spec.path
    }

    pub fn spec(&self) -> &RemoteSpec {
        &self.spec
    }

    /// The host as resolved through `~/.ssh/config`.
    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn options(&self) -> &SshOptions {
        &self.opts
    }

    /// What reconnecting took, for the summary: `None` when no connection was lost.
    pub fn reconnect_note(&self) -> Option<String> {
        let lost = self.lost.load(Ordering::Relaxed);
        let resumed = self.resumed.load(Ordering::Relaxed);
        (lost > 0).then(|| {
            format!(
                "{}: the connection dropped {lost} time(s); reconnected, {resumed} file(s) resumed at the byte they had reached",
                self.spec.authority()
            )
        })
    }

    /// A remote path for messages: `host:/path`.
    pub fn display(&self, path: &Path) -> PathBuf {
        PathBuf::from(self.spec.with_path(path).to_string())
    }

    /// `root/rel` on the remote host.
    pub fn path(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.spec.path.clone()
        } else {
            self.spec.path.join(rel)
        }
    }

    /// Runs `op` with a pooled SFTP channel; after a lost connection, reconnects (with
    /// back-off) and runs it again, at most `retries` times. `path` names the operation's
    /// target in errors.
    pub(crate) fn run<T>(
        &self,
        path: &Path,
        mut op: impl FnMut(&Sftp) -> std::result::Result<T, Fault>,
    ) -> Result<T> {
        let mut attempt = 0u32;
        loop {
            let conn = match self.take() {
                Ok(c) => c,
                Err(e) if attempt < self.opts.retries && is_transient(&e) => {
                    attempt += 1;
                    self.pause(attempt);
                    continue;
                }
                Err(e) => return Err(e),
            };
            match op(&conn.sftp) {
                Ok(v) => {
                    self.give_back(Some(conn));
                    return Ok(v);
                }
                Err(Fault::Server(kind, message)) => {
                    self.give_back(Some(conn));
                    return Err(Error::Remote {
                        path: self.display(path),
                        kind,
                        message,
                    });
                }
                Err(Fault::Local(e)) => {
                    self.give_back(Some(conn));
                    return Err(e);
                }
                Err(Fault::Connection(reason)) => {
                    // ssh2 reports a server's answer to a read or write (a full disk, a
                    // quota, an I/O error there) like a broken connection. A connection
                    // that still answers says which it was: then the error is final.
                    if conn.sftp.lstat(Path::new("/")).is_ok() {
                        self.give_back(Some(conn));
                        return Err(Error::Remote {
                            path: self.display(path),
                            kind: RemoteErrorKind::Other,
                            message: reason,
                        });
                    }
                    self.give_back(None);
                    self.lost.fetch_add(1, Ordering::Relaxed);
                    if attempt >= self.opts.retries {
                        return Err(Error::ConnectionLost {
                            host: self.endpoint.alias.clone(),
                            path: self.display(path),
                            attempts: attempt + 1,
                            reason,
                        });
                    }
                    attempt += 1;
                    self.pause(attempt);
                }
            }
        }
    }

    /// Runs `op` once on the SSH session of a pooled connection (for a channel of its
    /// own beside the SFTP one), without retrying. After a failure the connection is
    /// closed rather than pooled again (a channel left half read may still be sending),
    /// and counted as lost when it no longer answers; the error comes back as it is.
    pub(crate) fn with_session<T>(
        &self,
        op: impl FnOnce(&Session) -> std::result::Result<T, Fault>,
    ) -> std::result::Result<T, Fault> {
        let conn = self.take().map_err(Fault::Local)?;
        let outcome = op(&conn.session);
        self.settle(conn, outcome.is_ok());
        outcome
    }

    /// Runs `op` once, as [`Remote::with_session`] does, on the channel of a pooled
    /// connection that runs `command` on the host: opened by `open` the first time that
    /// connection is asked for it, then kept with the connection for the next call, so
    /// that the host starts the command (a login shell) once per connection rather than
    /// once per call. A connection kept for another command closes that one first.
    pub(crate) fn with_kept_channel<T>(
        &self,
        command: &str,
        open: impl FnOnce(&Session) -> std::result::Result<Channel, Fault>,
        op: impl FnOnce(&mut Channel) -> std::result::Result<T, Fault>,
    ) -> std::result::Result<T, Fault> {
        let mut conn = self.take().map_err(Fault::Local)?;
        if conn.kept.as_ref().is_some_and(|(_, c)| c != command) {
            conn.kept = None;
        }
        let outcome = match conn.kept {
            Some((ref mut channel, _)) => op(channel),
            None => open(&conn.session).and_then(|channel| {
                let (channel, _) = conn.kept.insert((channel, command.to_string()));
                op(channel)
            }),
        };
        self.settle(conn, outcome.is_ok());
        outcome
    }

    /// Opens, each on a thread of its own, the connections the pool may still open, and
    /// on each the kept channel `open` starts for `command` (see
    /// [`Remote::with_kept_channel`]), so that they are ready when the work that needs
    /// them starts. A connection or a channel that cannot be made is left to be made
    /// when it is needed, where its error is reported.
    pub(crate) fn warm_up(
        self: &Arc<Self>,
        command: &str,
        open: fn(&Session, &str) -> Option<Channel>,
    ) {
        loop {
            {
                let mut slots = self.slots.lock().expect("ssh pool lock");
                if slots.open >= self.opts.sessions {
                    return;
                }
                slots.open += 1;
            }
            let this = Arc::clone(self);
            let command = command.to_string();
            std::thread::spawn(move || match this.endpoint.connect(&this.opts) {
                Ok((session, sftp)) => {
                    let kept = open(&session, &command).map(|c| (c, command));
                    this.give_back(Some(Conn {
                        kept,
                        sftp,
                        session,
                    }));
                }
                Err(_) => this.give_back(None),
            });
        }
    }

    /// Pools `conn` again after an operation that went well; closes it otherwise (and
    /// counts it as lost when it no longer answers).
    fn settle(&self, conn: Conn, ok: bool) {
        if ok {
            self.give_back(Some(conn));
        } else {
            if conn.sftp.lstat(Path::new("/")).is_err() {
                self.lost.fetch_add(1, Ordering::Relaxed);
            }
            drop(conn);
            self.give_back(None);
        }
    }

    fn pause(&self, attempt: u32) {
        let base = self.opts.backoff.saturating_mul(1 << (attempt - 1).min(6));
        let jitter = base.mul_f64(fastrand::f64() * 0.5);
        std::thread::sleep((base + jitter).min(Duration::from_secs(30)));
    }

    fn take(&self) -> Result<Conn> {
        let mut slots = self.slots.lock().expect("ssh pool lock");
        loop {
            if let Some(c) = slots.idle.pop() {
                return Ok(c);
            }
            if slots.open < self.opts.sessions {
                slots.open += 1;
                drop(slots);
                return match self.endpoint.connect(&self.opts) {
                    Ok((session, sftp)) => Ok(Conn {
                        kept: None,
                        sftp,
                        session,
                    }),
                    Err(e) => {
                        self.give_back(None);
                        Err(e)
                    }
                };
            }
            slots = self.freed.wait(slots).expect("ssh pool lock");
        }
    }

    /// Returns a connection to the pool, or (None) frees its slot.
    fn give_back(&self, conn: Option<Conn>) {
        let mut slots = self.slots.lock().expect("ssh pool lock");
        match conn {
            Some(c) => slots.idle.push(c),
            None => slots.open -= 1,
        }
        self.freed.notify_one();
    }
}

/// Connecting again may help (the host restarts, the network returns); a refused key or
/// host key never does.
fn is_transient(e: &Error) -> bool {
    matches!(e, Error::SshConnect { .. })
}

/// SFTP status codes (draft-ietf-secsh-filexfer-02 and later) by kind.
fn kind_of(code: i32) -> RemoteErrorKind {
    match code {
        2 | 10 => RemoteErrorKind::NotFound,
        3 => RemoteErrorKind::PermissionDenied,
        11 => RemoteErrorKind::AlreadyExists,
        14 | 15 => RemoteErrorKind::NoSpace,
        _ => RemoteErrorKind::Other,
    }
}

/// The kind of a server-side failure, for exit codes and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemoteErrorKind {
    NotFound,
    PermissionDenied,
    AlreadyExists,
    NoSpace,
    Other,
}
