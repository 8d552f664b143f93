//! NAS folders, local, over SSH or an S3 prefix, for the whole-folder questions of the run
//! lifecycle and the reports: is it there, what does a small file in it hold, which files
//! does it have and how big are they, write-protect it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::pool::{Remote, RemoteErrorKind};
use super::spec::Location;
use super::SshOptions;
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::storage::{S3Options, S3Store, S3Url, Storage};
use crate::walk::{Filter, Kind, MANIFEST_NAME};

/// A folder on the NAS (its path may be `[user@]host[:port]:/path`).
#[derive(Debug, Clone)]
pub enum NasFolder {
    Local(PathBuf),
    Remote {
        remote: Arc<Remote>,
        root: PathBuf,
    },
    /// A prefix of an object store: it is there only once its `MANIFEST.sha256` is.
    Store(Arc<dyn Storage>),
}

impl NasFolder {
    /// Reads `path` as a location; a remote one is connected to at once (so an unknown
    /// host key or a refused key is the first thing reported).
    pub fn open(path: &Path, ssh: &SshOptions) -> Result<NasFolder> {
        NasAccess::new(ssh.clone()).folder(path)
    }

    /// True when `path` names a folder on an SSH host (no connection is made).
    pub fn is_remote_path(path: &Path) -> bool {
        matches!(Location::parse(path.as_os_str()), Ok(Location::Remote(_)))
    }

    /// The folder as the user wrote it.
    pub fn display(&self) -> PathBuf {
        match self {
            NasFolder::Local(p) => p.clone(),
            NasFolder::Remote { remote, root } => remote.display(root),
            NasFolder::Store(store) => store.display(Path::new("")),
        }
    }

    /// True when the folder is not on this machine (listed rather than stat'ed per file).
    pub fn is_remote(&self) -> bool {
        !matches!(self, NasFolder::Local(_))
    }

    /// The connection and the folder's path on the host, for a remote folder.
    pub fn remote(&self) -> Option<(&Remote, &Path)> {
        match self {
            NasFolder::Local(_) | NasFolder::Store(_) => None,
            NasFolder::Remote { remote, root } => Some((remote, root)),
        }
    }

    /// True when something is at the folder's path.
    pub fn exists(&self) -> Result<bool> {
        match self {
            NasFolder::Local(p) => Ok(std::fs::symlink_metadata(p).is_ok()),
            NasFolder::Remote { remote, root } => remote.exists(root),
            NasFolder::Store(store) => self.is_complete(store.as_ref()),
        }
    }

    /// True when the folder is there and is a folder (following links).
    pub fn is_dir(&self) -> Result<bool> {
        match self {
            NasFolder::Local(p) => Ok(p.is_dir()),
            NasFolder::Remote { remote, root } => remote.is_dir(root),
            NasFolder::Store(store) => self.is_complete(store.as_ref()),
        }
    }

    /// An object-store prefix counts as there only when its manifest is.
    fn is_complete(&self, store: &dyn Storage) -> Result<bool> {
        Ok(store.stat(Path::new(MANIFEST_NAME))?.is_some())
    }

    /// A small file of the folder; `None` when it is not there.
    pub fn read(&self, rel: &Path) -> Result<Option<Vec<u8>>> {
        let missing = |e: &Error| match e {
            Error::Io { error: source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            Error::Remote { kind, .. } => *kind == RemoteErrorKind::NotFound,
            _ => false,
        };
        let read = match self {
            NasFolder::Local(p) => {
                std::fs::read(p.join(rel)).map_err(|e| Error::io(p.join(rel), e))
            }
            NasFolder::Remote { remote, root } => remote.read_small_at(&root.join(rel)),
            NasFolder::Store(store) => return store.read_small(rel),
        };
        match read {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if missing(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The folder's `MANIFEST.sha256`; `None` when it has none.
    pub fn manifest(&self) -> Result<Option<Manifest>> {
        let origin = self.display().join(MANIFEST_NAME);
        self.read(Path::new(MANIFEST_NAME))?
            .map(|bytes| Manifest::parse(&bytes, &origin))
            .transpose()
    }

    /// Every regular file below the folder with its size (bookkeeping excluded, links
    /// not followed), in one listing per folder.
    pub fn file_sizes(&self) -> Result<HashMap<PathBuf, u64>> {
        let tree = match self {
            NasFolder::Local(p) => crate::walk::walk(p, &Filter::default())?,
            NasFolder::Remote { remote, root } => remote.walk_at(root, &Filter::default())?,
            NasFolder::Store(store) => store.list(&Filter::default())?,
        };
        if let Some(e) = tree.errors.into_iter().next() {
            return Err(e);
        }
        Ok(tree
            .entries
            .into_iter()
            .filter(|e| e.kind == Kind::File)
            .map(|e| (e.rel, e.meta.size))
            .collect())
    }

    /// `chmod -R a-w` on the folder.
    pub fn protect(&self) -> Result<()> {
        match self {
            NasFolder::Local(p) => crate::worm::protect(p, false).map(|_| ()),
            NasFolder::Remote { remote, root } => remote.protect(root).map(|_| ()),
            NasFolder::Store(store) => Err(Error::Invalid {
                what: "NAS folder",
                value: store.display(Path::new("")).display().to_string(),
                reason:
                    "an S3 prefix is protected per object (Object Lock retention) as it is written"
                        .to_string(),
            }),
        }
    }
}

/// Opens NAS folders for many records at once (a report, a clean): one connection per
/// SSH host, and a host that could not be reached is not tried again for every record.
#[derive(Debug)]
pub struct NasAccess {
    ssh: SshOptions,
    hosts: Mutex<HashMap<String, std::result::Result<Arc<Remote>, String>>>,
    /// One S3 connection per bucket.
    buckets: Mutex<HashMap<String, std::result::Result<Arc<S3Store>, String>>>,
}

impl Default for NasAccess {
    fn default() -> Self {
        NasAccess::new(SshOptions::default())
    }
}

impl NasAccess {
    /// An S3 prefix, over the bucket's one connection (made with the process's `[s3]`
    /// settings, [`crate::storage::S3Options::process`]).
    fn prefix(&self, url: &S3Url) -> Result<NasFolder> {
        let mut buckets = self.buckets.lock().expect("buckets lock");
        let entry = buckets.entry(url.bucket.clone()).or_insert_with(|| {
            S3Store::connect(&url.with_prefix(""), &S3Options::process())
                .map(Arc::new)
                .map_err(|e| e.to_string())
        });
        match entry {
            Ok(store) => Ok(NasFolder::Store(Arc::new(store.at(url.prefix.clone())))),
            Err(reason) => Err(Error::Storage {
                location: format!("s3://{}", url.bucket),
                kind: crate::error::StorageErrorKind::Unreachable,
                reason: reason.clone(),
                hint: "see the error above".to_string(),
            }),
        }
    }

    /// The process's shared access: reports and clean ask many records about a few NAS
    /// hosts, and one connection per host serves them all.
    pub fn shared() -> &'static NasAccess {
        static SHARED: std::sync::OnceLock<NasAccess> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| {
            NasAccess::new(SshOptions {
                sessions: 1,
                timeout: std::time::Duration::from_secs(20),
                retries: 1,
                ..SshOptions::default()
            })
        })
    }

    pub fn new(ssh: SshOptions) -> Self {
        NasAccess {
            ssh,
            hosts: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The folder at `path` (local, or `[user@]host[:port]:/path`).
    pub fn folder(&self, path: &Path) -> Result<NasFolder> {
        let spec = match Location::parse(path.as_os_str())? {
            Location::Local(p) => return Ok(NasFolder::Local(p)),
            Location::Remote(spec) => spec,
            Location::S3(url) => return self.prefix(&url),
        };
        let key = spec.authority();
        let mut hosts = self.hosts.lock().expect("hosts lock");
        let entry = hosts.entry(key.clone()).or_insert_with(|| {
            Remote::connect(&spec, &self.ssh)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        });
        match entry {
            Ok(remote) => Ok(NasFolder::Remote {
                remote: remote.clone(),
                root: spec.path,
            }),
            Err(reason) => Err(Error::SshConnect {
                host: key,
                address: spec.host.clone(),
                error: std::io::Error::other(reason.clone()),
            }),
        }
    }
}
