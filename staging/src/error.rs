//! Typed errors for the staging library.
//!
//! Every variant carries what a user needs to act on it: the path, the value that was
//! wrong and, where one exists, the expected value. The binary adds context and hints;
//! this module never prints.

use std::path::PathBuf;

/// Errors from manifests, copies, journals and records.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O call failed on a named path.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        /// The operating system's error, printed in the message (and so not returned
        /// again as `source()`: each cause is printed once).
        error: std::io::Error,
    },

    /// A manifest line could not be read.
    #[error("{path}:{line}: {reason}")]
    Manifest {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    /// A manifest names a path that is absolute or climbs out of its folder.
    #[error("{path}:{line}: refusing unsafe path {entry:?} (absolute or climbing out with '..')")]
    UnsafePath {
        path: PathBuf,
        line: usize,
        entry: String,
    },

    /// A source file does not match its own manifest: corruption at the source.
    #[error("{path}: SOURCE CORRUPT: content hashes to {computed} but the source MANIFEST.sha256 says {expected}; not copied")]
    SourceCorrupt {
        path: PathBuf,
        /// Hex digests (kept as text so the error stays small on the hot path).
        computed: String,
        expected: String,
    },

    /// A source file changed while it was read (size, mtime, ctime or inode moved).
    #[error("{path}: the file changed while it was being copied; run again")]
    SourceChanged { path: PathBuf },

    /// The bytes read back from storage differ from what was written.
    #[error("{path}: read-back mismatch: wrote {wrote} ({wrote_len} bytes) but storage returned {read} ({read_len} bytes)")]
    ReadBackMismatch {
        path: PathBuf,
        wrote: String,
        wrote_len: u64,
        read: String,
        read_len: u64,
    },

    /// The source tree of a copy does not exist or is not a folder.
    #[error("source {path} does not exist or is not a folder")]
    SourceMissing { path: PathBuf },

    /// The destination cannot hold what is about to be copied.
    #[error(
        "not enough space at {path}: {need} needed, {available} available",
        need = crate::human::bytes(*need),
        available = crate::human::bytes(*available)
    )]
    InsufficientSpace {
        path: PathBuf,
        need: u64,
        available: u64,
    },

    /// An ingest target already exists: raw data is never overwritten or appended to.
    #[error("dataset {path} already exists; raw data is never overwritten or appended to")]
    DatasetExists { path: PathBuf },

    /// SIGINT or SIGTERM stopped a copy cleanly (see [`crate::interrupt`]).
    #[error(
        "interrupted by {}: {verified} of {total} files verified in {}; the files in flight were \
         removed; run the same command again to finish",
        crate::interrupt::name(*signal),
        dest.display()
    )]
    Interrupted {
        signal: i32,
        verified: u64,
        total: u64,
        dest: PathBuf,
    },

    /// Another process holds the lock on a destination.
    #[error("{path} is locked by another hpcstage process ({holder})")]
    Locked { path: PathBuf, holder: String },

    /// A glob in --include/--exclude did not compile.
    #[error("invalid glob {glob:?}: {error}")]
    Glob {
        glob: String,
        /// Printed in the message, so not returned again as `source()`.
        error: globset::Error,
    },

    /// A record or config value could not be parsed.
    #[error("{path}: {reason}")]
    Parse { path: PathBuf, reason: String },

    /// An SSH host's key is not the one `known_hosts` holds (or is not there at all).
    #[error("{0}")]
    HostKey(Box<HostKeyProblem>),

    /// No key was accepted by the SSH server.
    #[error("{user}@{host}: authentication refused (tried: {tried}); add your public key to the account's ~/.ssh/authorized_keys on the NAS host, or name the right key with IdentityFile in ~/.ssh/config")]
    SshAuth {
        user: String,
        host: String,
        tried: String,
    },

    /// The SSH host could not be reached or the SSH session could not start.
    #[error("cannot connect to {host} ({address}): {error}")]
    SshConnect {
        host: String,
        address: String,
        /// Why, printed in the message (not returned again as `source()`).
        error: std::io::Error,
    },

    /// The connection dropped and reconnecting did not help.
    #[error("{path}: connection to {host} lost ({reason}); gave up after {attempts} attempts; run again to resume")]
    ConnectionLost {
        host: String,
        path: PathBuf,
        attempts: u32,
        reason: String,
    },

    /// The SFTP server refused an operation on a remote path.
    #[error("{path}: {}", remote_message(*.kind, .message))]
    Remote {
        path: PathBuf,
        kind: crate::remote::RemoteErrorKind,
        message: String,
    },

    /// An object store refused or failed a request (the location names bucket and key).
    #[error("{location}: {reason}; {hint}")]
    Storage {
        location: String,
        kind: StorageErrorKind,
        reason: String,
        hint: String,
    },

    /// A prefix on an object store without its `MANIFEST.sha256`: an upload that never
    /// finished, not a dataset.
    #[error("{location} has no MANIFEST.sha256: it is an incomplete upload, not a dataset; finish it with the `hpcstage ingest` (or `pull`) that wrote it, or name the right prefix")]
    Incomplete { location: String },

    /// An archive, or the dataset being archived, does not hold what its index or
    /// manifest says.
    #[error("{path}: {reason}")]
    ArchiveMismatch { path: PathBuf, reason: String },

    /// A value given by the user is not valid.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: String,
    },
}

/// What kind of object-store failure an [`Error::Storage`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageErrorKind {
    NotFound,
    /// Credentials missing, wrong, or not allowed on the bucket.
    Auth,
    /// The endpoint did not answer, or kept answering 503 SlowDown.
    Unreachable,
    /// The bucket's quota is exceeded.
    Quota,
    /// WORM asked of a bucket without Object Lock, or a retention not applied.
    NoObjectLock,
    Other,
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error: source,
        }
    }

    /// A failed step of a folder walk, on the path it failed at (`dir` when it names none).
    pub fn walk(dir: &std::path::Path, e: walkdir::Error) -> Self {
        let path = e.path().unwrap_or(dir).to_path_buf();
        let source = e
            .into_io_error()
            .unwrap_or_else(|| std::io::Error::other("walk failed"));
        Error::io(path, source)
    }

    /// True when the error is "no space left on device" (or over quota).
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::Io { error: source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::ENOSPC) | Some(libc::EDQUOT)
            ),
            Error::InsufficientSpace { .. } => true,
            Error::Remote { kind, .. } => *kind == crate::remote::RemoteErrorKind::NoSpace,
            _ => false,
        }
    }
}

/// What an SSH host offered that `known_hosts` does not vouch for.
#[derive(Debug)]
pub struct HostKeyProblem {
    /// As `known_hosts` names it: `host` or `[host]:port`.
    pub host: String,
    pub key_type: String,
    /// `SHA256:...`, as OpenSSH prints it.
    pub fingerprint: String,
    pub known_hosts: PathBuf,
    /// The file holds another key for this host (rather than none).
    pub changed: bool,
}

impl std::fmt::Display for HostKeyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let HostKeyProblem {
            host,
            key_type,
            fingerprint,
            known_hosts,
            changed,
        } = self;
        let known = known_hosts.display();
        if *changed {
            write!(
                f,
                "HOST KEY CHANGED for {host}: the server offers {key_type} key {fingerprint}, which is not the key {known} holds for it. \
                 Someone may be intercepting the connection, or the host was reinstalled; refusing to connect. \
                 Ask the NAS administrator for the right fingerprint before removing the old line (ssh-keygen -R '{host}' -f {known})"
            )
        } else {
            let scan = match host.strip_prefix('[').and_then(|h| h.split_once("]:")) {
                Some((h, port)) => format!("-p {port} {h}"),
                None => host.to_string(),
            };
            write!(
                f,
                "unknown host key for {host}: the server offers {key_type} key {fingerprint}, which is not in {known}; refusing to connect. \
                 Check the fingerprint with the NAS administrator, then add it (for example: ssh-keyscan -t {kt} {scan} >> {known}, or connect once with ssh)",
                kt = key_type.to_ascii_lowercase(),
            )
        }
    }
}

fn remote_message(kind: crate::remote::RemoteErrorKind, message: &str) -> String {
    use crate::remote::RemoteErrorKind as K;
    match kind {
        K::NotFound => "no such file or folder on the remote host".to_string(),
        K::PermissionDenied => {
            "permission denied on the remote host (check the owner and mode there, or the user in ~/.ssh/config)".to_string()
        }
        K::AlreadyExists => "already exists on the remote host".to_string(),
        K::NoSpace => "no space left on the remote host".to_string(),
        K::Other => format!("the remote host refused: {message}"),
    }
}

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds the path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}

impl<T> IoContext<T> for nix::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, std::io::Error::from(e)))
    }
}
