//! "The storage for this location": the one place where the kind of a location (a local
//! folder, `[user@]host:/path`, `s3://bucket/prefix`) decides which backend serves it.
//! Everything after this works on `dyn Storage`.

use std::sync::Arc;

use super::{LocalDir, S3Options, S3Store, SftpStore, Storage};
use crate::error::Result;
use crate::remote::{Location, Remote, SshOptions};

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
