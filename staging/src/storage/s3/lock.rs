//! The ingest lock on S3: a lock object that two processes never both hold (see
//! [`S3Store::lock`]; docs/ARCHITECTURE.md#storage).

use std::path::Path;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;

use super::put::content_md5;
use super::S3Store;
use crate::error::{Error, Result};

impl S3Store {
    /// Takes the lock object `rel` for this process (it holds `pid N on HOST`), so that two
    /// processes never both hold it, and returns the version written (to release it with
    /// [`S3Store::unlock`]). In a bucket without versions the write is conditional
    /// (`If-None-Match: *`, refused with 412 when an object is there). A versioned bucket
    /// (every Object Lock bucket) may ignore that condition (RGW does), so there the oldest
    /// version of the lock object holds it: a later writer sees an older one, removes its
    /// own and is refused. A lock left by a process of this host that is gone (killed) is
    /// taken over; one held elsewhere is `Error::Locked` naming `what` and its holder.
    pub fn lock(&self, rel: &Path, what: &Path) -> Result<Option<String>> {
        let key = self.key(rel);
        let holder = crate::lock::holder();
        for _ in 0..3 {
            let put = self.runtime.block_on(
                self.client
                    .put_object()
                    .bucket(&self.url.bucket)
                    .key(&key)
                    .if_none_match("*")
                    .content_md5(content_md5(holder.as_bytes()))
                    .body(ByteStream::from(holder.clone().into_bytes()))
                    .send(),
            );
            let (held_by, mine) = match put {
                Ok(out) => {
                    let Some(mine) = out.version_id().map(str::to_string) else {
                        return Ok(None);
                    };
                    match self.oldest_version(&key)? {
                        Some(first) if first != mine => (Some(first), Some(mine)),
                        _ => return Ok(Some(mine)),
                    }
                }
                Err(e) if e.code() == Some("PreconditionFailed") => (None, None),
                Err(e) => return Err(self.error("PutObject", Some(rel), e)),
            };
            if let Some(mine) = &mine {
                self.unlock(rel, Some(mine))?;
            }
            let mut said = Vec::new();
            self.get(rel, held_by.as_deref(), 0, None, &mut |b| {
                said.extend_from_slice(b);
                Ok(())
            })?;
            let said = String::from_utf8_lossy(&said).trim().to_string();
            if !held_by_a_gone_process(&said) {
                return Err(Error::Locked {
                    path: what.to_path_buf(),
                    holder: if said.is_empty() {
                        "which one, its lock object does not say".to_string()
                    } else {
                        said
                    },
                });
            }
            self.unlock(rel, held_by.as_deref())?;
        }
        Err(Error::Locked {
            path: what.to_path_buf(),
            holder: "another process, which keeps taking it".to_string(),
        })
    }

    /// Removes one version of `rel` for good (what releases a lock [`S3Store::lock`] took:
    /// no delete marker, which would hide an older holder); without a version, the object
    /// as [`crate::storage::Storage::remove`] does.
    pub fn unlock(&self, rel: &Path, version: Option<&str>) -> Result<()> {
        self.runtime
            .block_on(
                self.client
                    .delete_object()
                    .bucket(&self.url.bucket)
                    .key(self.key(rel))
                    .set_version_id(version.map(str::to_string))
                    .send(),
            )
            .map(|_| ())
            .map_err(|e| self.error("DeleteObject", Some(rel), e))
    }

    /// The oldest version of `key` (versions come newest first).
    fn oldest_version(&self, key: &str) -> Result<Option<String>> {
        let page = self
            .runtime
            .block_on(
                self.client
                    .list_object_versions()
                    .bucket(&self.url.bucket)
                    .prefix(key)
                    .send(),
            )
            .map_err(|e| self.error("ListObjectVersions", None, e))?;
        Ok(page
            .versions()
            .iter()
            .filter(|v| v.key() == Some(key))
            .filter_map(|v| v.version_id().map(str::to_string))
            .next_back())
    }
}

/// True when a lock says `pid N on HOST` of this host and process N is gone.
fn held_by_a_gone_process(said: &str) -> bool {
    let Some((pid, host)) = said
        .strip_prefix("pid ")
        .and_then(|rest| rest.split_once(" on "))
    else {
        return false;
    };
    host == crate::host::hostname()
        && pid
            .parse::<u32>()
            .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}
