//! "The storage for this location": the one place where the kind of a location (a local
//! folder, `[user@]host:/path`, `s3://bucket/prefix`) decides which backend serves it.
//! Everything after this works on `dyn Storage`.
//!
//! [`NasAccess`] opens many locations for one process (a report, a clean, a pull asking
//! about earlier runs): one connection per SSH host and per bucket, and a host that could
//! not be reached is not tried again for every record.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::{LocalDir, S3Options, S3Store, SftpStore, Storage};
use crate::error::{Error, Result, StorageErrorKind};
use crate::remote::{Location, LocationKind, Remote, SshOptions};

/// Opens the storage at `location`: an SSH host is connected to and an S3 bucket checked
/// at once, so a refused key, an unknown host key or a missing bucket is reported before
/// any work starts.
pub fn open(location: &Location, ssh: &SshOptions, s3: &S3Options) -> Result<Box<dyn Storage>> {
    Ok(match location {
        Location::Local(path) => Box::new(LocalDir::new(path)),
        Location::Remote(spec) => Box::new(SftpStore::new(Arc::new(Remote::connect(spec, ssh)?))),
        Location::S3(url) => Box::new(S3Store::connect(url, s3)?),
    })
}

/// The folder of this machine at `location`, or else what kind of place it is (for the
/// message of a command that reads files where the NAS is mounted): what
/// [`Storage::local_root`] of [`open`]'s storage says, without connecting to anything.
pub fn local_folder(location: &Location) -> std::result::Result<&Path, LocationKind> {
    match location {
        Location::Local(path) => Ok(path),
        Location::Remote(_) | Location::S3(_) => Err(location.kind()),
    }
}

/// Opens the storage at many locations, sharing connections: one per SSH host, one per
/// S3 bucket (made with the process's `[s3]` settings, [`S3Options::process`]).
#[derive(Debug)]
pub struct NasAccess {
    ssh: SshOptions,
    s3: S3Options,
    /// By `user@host:port` or `s3://bucket`: the connection, or why it could not be made.
    connections: Mutex<HashMap<String, Connection>>,
}

/// A connection to one SSH host or bucket, or why it could not be made.
type Connection = std::result::Result<Arc<dyn Storage>, String>;

impl Default for NasAccess {
    fn default() -> Self {
        NasAccess::new(SshOptions::default(), S3Options::process())
    }
}

impl NasAccess {
    pub fn new(ssh: SshOptions, s3: S3Options) -> Self {
        NasAccess {
            ssh,
            s3,
            connections: Mutex::new(HashMap::new()),
        }
    }

    /// The process's shared access: reports and clean ask many records about a few NAS
    /// hosts, and one connection per host serves them all.
    pub fn shared() -> &'static NasAccess {
        static SHARED: std::sync::OnceLock<NasAccess> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| {
            NasAccess::new(
                SshOptions {
                    sessions: 1,
                    timeout: std::time::Duration::from_secs(20),
                    retries: 1,
                    ..SshOptions::default()
                },
                S3Options::process(),
            )
        })
    }

    /// The storage rooted at `path` (a folder, `[user@]host[:port]:/path` or
    /// `s3://bucket/prefix`).
    pub fn folder(&self, path: &Path) -> Result<Arc<dyn Storage>> {
        let location = Location::parse(path.as_os_str())?;
        let (key, root) = match &location {
            Location::Local(p) => return Ok(Arc::new(LocalDir::new(p))),
            Location::Remote(spec) => (spec.authority(), location.with_path("/")),
            Location::S3(url) => (format!("s3://{}", url.bucket), location.with_path("")),
        };
        let mut connections = self.connections.lock().expect("connections lock");
        let entry = connections.entry(key.clone()).or_insert_with(|| {
            open(&root, &self.ssh, &self.s3)
                .map(Arc::from)
                .map_err(|e| e.to_string())
        });
        let reason = match entry {
            Ok(store) => return Ok(Arc::from(store.rooted_at(location.path()))),
            Err(reason) => reason.clone(),
        };
        Err(match location {
            Location::Remote(spec) => Error::SshConnect {
                host: key,
                address: spec.host.clone(),
                error: std::io::Error::other(reason),
            },
            _ => Error::Storage {
                location: key,
                kind: StorageErrorKind::Unreachable,
                reason,
                hint: "see the error above".to_string(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_folder_is_what_the_opened_storage_calls_its_local_root() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let here = Location::Local(tmp.path().to_path_buf());
        let opened = open(&here, &SshOptions::default(), &S3Options::default()).expect("open");
        assert_eq!(local_folder(&here).ok(), opened.local_root());
        assert_eq!(local_folder(&here), Ok(tmp.path()));

        for (text, kind) in [
            ("nas.lab.org:/export/lab", LocationKind::SshHost),
            ("s3://lab-raw/P1", LocationKind::ObjectStore),
        ] {
            let location = Location::parse(std::ffi::OsStr::new(text)).expect("parses");
            assert_eq!(local_folder(&location), Err(kind), "{text}");
        }
    }
}
