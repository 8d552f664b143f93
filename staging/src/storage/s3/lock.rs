//! The ingest lock on S3: a lock object that two processes never both hold (see
//! [`S3Store::lock`]; docs/ARCHITECTURE.md#storage).

use std::path::Path;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;

use super::put::content_md5;
use super::S3Store;
use crate::error::{Error, Result};
use crate::lock::held_by_a_gone_process;

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

    /// The oldest version of `key`, however many versions it has (they come newest first,
    /// 1,000 to a page).
    fn oldest_version(&self, key: &str) -> Result<Option<String>> {
        let mut oldest = Oldest::of(key);
        self.version_pages(key, &mut |page| {
            Ok(oldest.page(
                page.versions()
                    .iter()
                    .filter_map(|v| Some((v.key()?, v.version_id()?))),
            ))
        })?;
        Ok(oldest.found)
    }
}

/// The oldest version of one key, found across the pages of ListObjectVersions of the
/// keys that start with it: keys come in order and each key's versions newest first, so
/// it is the last version of the key seen, and the first other key after it ends the
/// search.
struct Oldest<'a> {
    key: &'a str,
    found: Option<String>,
}

impl<'a> Oldest<'a> {
    fn of(key: &'a str) -> Self {
        Oldest { key, found: None }
    }

    /// Takes one page of (key, version); `false` when no later page can hold the key.
    fn page<'p>(&mut self, versions: impl Iterator<Item = (&'p str, &'p str)>) -> bool {
        for (key, version) in versions {
            if key == self.key {
                self.found = Some(version.to_string());
            } else if self.found.is_some() || key > self.key {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::Oldest;

    #[test]
    fn the_oldest_version_is_found_across_pages_and_other_keys_end_the_search() {
        let mut oldest = Oldest::of("raw/.d.ingest.lock");
        // Versions of one key spread over three pages, newest first.
        assert!(
            oldest.page([("raw/.d.ingest.lock", "v5"), ("raw/.d.ingest.lock", "v4")].into_iter())
        );
        assert!(
            oldest.page([("raw/.d.ingest.lock", "v3"), ("raw/.d.ingest.lock", "v2")].into_iter())
        );
        assert_eq!(oldest.found.as_deref(), Some("v2"));
        // The last page ends with the oldest, then a longer key that shares the prefix.
        assert!(
            !oldest.page([("raw/.d.ingest.lock", "v1"), ("raw/.d.ingest.lock2", "x")].into_iter())
        );
        assert_eq!(oldest.found.as_deref(), Some("v1"));

        let mut none = Oldest::of("k");
        assert!(!none.page([("k2", "a")].into_iter()));
        assert_eq!(none.found, None);
        let mut empty = Oldest::of("k");
        assert!(empty.page(std::iter::empty()));
        assert_eq!(empty.found, None);
    }
}
