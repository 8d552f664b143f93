//! Versions, retention and multipart uploads of a prefix: Object Lock asked and read
//! back, orphan uploads found and aborted, versions removed.

use std::path::Path;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::operation::list_object_versions::ListObjectVersionsOutput;
use aws_sdk_s3::primitives::DateTime;
use aws_sdk_s3::types::{ObjectLockEnabled, ObjectLockRetention, ObjectLockRetentionMode};

use super::S3Store;
use crate::error::{Error, Result, StorageErrorKind};
use crate::hash::Digest;
use crate::storage::{LockMode, Retention, Storage, Written};

impl S3Store {
    /// Refuses, before anything is written, a bucket without Object Lock when WORM is
    /// asked: its objects could not be protected.
    pub fn require_object_lock(&self) -> Result<()> {
        let done = self.runtime.block_on(
            self.client
                .get_object_lock_configuration()
                .bucket(&self.url.bucket)
                .send(),
        );
        let enabled = match done {
            Ok(out) => {
                out.object_lock_configuration()
                    .and_then(|c| c.object_lock_enabled())
                    == Some(&ObjectLockEnabled::Enabled)
            }
            Err(e) if e.code() == Some("ObjectLockConfigurationNotFoundError") => false,
            Err(e) => return Err(self.error("GetObjectLockConfiguration", None, e)),
        };
        if enabled {
            return Ok(());
        }
        Err(Error::Storage {
            location: format!("s3://{}", self.url.bucket),
            kind: StorageErrorKind::NoObjectLock,
            reason: "write protection (WORM) was asked, but the bucket has no Object Lock, so no retention can be set".to_string(),
            hint: "use a bucket created with Object Lock enabled (`aws s3api create-bucket --object-lock-enabled-for-bucket`); nothing was written".to_string(),
        })
    }

    /// Aborts the multipart uploads left under this prefix (by a killed run); returns how
    /// many there were.
    pub fn abort_orphans(&self) -> Result<usize> {
        let uploads = self.multipart_uploads()?;
        for (key, id) in &uploads {
            self.runtime
                .block_on(
                    self.client
                        .abort_multipart_upload()
                        .bucket(&self.url.bucket)
                        .key(key)
                        .upload_id(id)
                        .send(),
                )
                .map_err(|e| self.error("AbortMultipartUpload", Some(Path::new(key)), e))?;
        }
        Ok(uploads.len())
    }

    /// (key, upload id) of the multipart uploads under this prefix.
    pub fn multipart_uploads(&self) -> Result<Vec<(String, String)>> {
        let prefix = self.dir_prefix();
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let page = self
                .runtime
                .block_on(
                    self.client
                        .list_multipart_uploads()
                        .bucket(&self.url.bucket)
                        .prefix(&prefix)
                        .set_key_marker(key_marker.clone())
                        .set_upload_id_marker(id_marker.clone())
                        .send(),
                )
                .map_err(|e| self.error("ListMultipartUploads", None, e))?;
            for u in page.uploads() {
                if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
                    out.push((k.to_string(), id.to_string()));
                }
            }
            if page.is_truncated() != Some(true) {
                return Ok(out);
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
        }
    }

    /// The retention of one version, as the server reports it.
    pub(super) fn retention_of(
        &self,
        rel: &Path,
        version: Option<&str>,
    ) -> Result<Option<(String, i64)>> {
        let done = self.runtime.block_on(
            self.client
                .get_object_retention()
                .bucket(&self.url.bucket)
                .key(self.key(rel))
                .set_version_id(version.map(str::to_string))
                .send(),
        );
        match done {
            Ok(out) => Ok(out.retention().and_then(|r| {
                Some((
                    r.mode()?.as_str().to_string(),
                    r.retain_until_date()?.secs(),
                ))
            })),
            // No retention on this version: AWS says NoSuchObjectLockConfiguration, Ceph
            // RGW 404 ObjectLockConfigurationNotFoundError.
            Err(e)
                if matches!(
                    e.code(),
                    Some("NoSuchObjectLockConfiguration" | "ObjectLockConfigurationNotFoundError")
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(self.error("GetObjectRetention", Some(rel), e)),
        }
    }

    /// True when the current version of `rel` holds `digest` in its metadata, has `size`
    /// bytes and carries a retention at least as strong as `retention` (the mark that it
    /// was verified and protected by an earlier run).
    pub fn holds_protected(
        &self,
        rel: &Path,
        size: u64,
        digest: Digest,
        retention: Retention,
    ) -> Result<bool> {
        let Some(head) = self.head(rel)? else {
            return Ok(false);
        };
        if head.meta.size != size || head.stored != Some(digest) {
            return Ok(false);
        }
        self.holds_retention(rel, head.version.as_deref(), retention)
    }

    /// True when `version` of `rel` carries a retention of the mode of `retention`.
    pub fn holds_retention(
        &self,
        rel: &Path,
        version: Option<&str>,
        retention: Retention,
    ) -> Result<bool> {
        Ok(self
            .retention_of(rel, version)?
            .is_some_and(|(mode, _)| mode == retention.mode.as_str()))
    }

    /// The current version of `rel` as an earlier upload left it, when it holds the bytes
    /// whose SHA-256 is `digest` and whose ETag (as [`super::Etag`] computes it) is
    /// `etag`: `size` bytes, the server's ETag (computed from the bytes it received, not
    /// declared by a client) equal to `etag`, and `digest` in its metadata. `None` when
    /// any differs (the object is then uploaded again).
    pub fn already_there(
        &self,
        rel: &Path,
        size: u64,
        digest: Digest,
        etag: &str,
    ) -> Result<Option<Written>> {
        let Some(head) = self.head(rel)? else {
            return Ok(None);
        };
        let same = head.meta.size == size
            && head.stored == Some(digest)
            && head.etag.as_deref() == Some(etag);
        Ok(same.then(|| Written {
            rel: rel.to_path_buf(),
            digest,
            bytes: size,
            version: head.version,
            pending: None,
        }))
    }

    /// Removes every version of every object under this prefix that can be removed
    /// (locked versions stay); for tests and for cleaning up a failed, unprotected upload.
    pub fn remove_all_versions(&self) -> Result<usize> {
        let mut removed = 0;
        self.version_pages(&self.dir_prefix(), &mut |page| {
            let versions = page
                .versions()
                .iter()
                .filter_map(|v| Some((v.key()?.to_string(), v.version_id().map(str::to_string))))
                .chain(page.delete_markers().iter().filter_map(|v| {
                    Some((v.key()?.to_string(), v.version_id().map(str::to_string)))
                }));
            for (key, version) in versions {
                let done = self.runtime.block_on(
                    self.client
                        .delete_object()
                        .bucket(&self.url.bucket)
                        .key(&key)
                        .set_version_id(version)
                        .send(),
                );
                if done.is_ok() {
                    removed += 1;
                }
            }
            Ok(true)
        })?;
        Ok(removed)
    }

    /// Gives `each` the pages of ListObjectVersions of the keys starting with `prefix`, in
    /// order (a page holds at most 1,000 versions), until one returns `false`.
    pub(super) fn version_pages(
        &self,
        prefix: &str,
        each: &mut dyn FnMut(&ListObjectVersionsOutput) -> Result<bool>,
    ) -> Result<()> {
        let (mut key_marker, mut version_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let page = self
                .runtime
                .block_on(
                    self.client
                        .list_object_versions()
                        .bucket(&self.url.bucket)
                        .prefix(prefix)
                        .set_key_marker(key_marker.take())
                        .set_version_id_marker(version_marker.take())
                        .send(),
                )
                .map_err(|e| self.error("ListObjectVersions", None, e))?;
            if !each(&page)? || page.is_truncated() != Some(true) {
                return Ok(());
            }
            key_marker = page.next_key_marker().map(str::to_string);
            version_marker = page.next_version_id_marker().map(str::to_string);
        }
    }

    /// [`Storage::protect`]: PutObjectRetention on the written version, then
    /// GetObjectRetention to check the server applied it (never claimed otherwise).
    pub(super) fn set_retention(&self, written: &Written, retention: Retention) -> Result<()> {
        let until = std::time::SystemTime::now() + retention.keep;
        let until = DateTime::from(until);
        let mode = match retention.mode {
            LockMode::Compliance => ObjectLockRetentionMode::Compliance,
            LockMode::Governance => ObjectLockRetentionMode::Governance,
        };
        self.runtime
            .block_on(
                self.client
                    .put_object_retention()
                    .bucket(&self.url.bucket)
                    .key(self.key(&written.rel))
                    .set_version_id(written.version.clone())
                    .retention(
                        ObjectLockRetention::builder()
                            .mode(mode)
                            .retain_until_date(until)
                            .build(),
                    )
                    .send(),
            )
            .map_err(|e| self.error("PutObjectRetention", Some(&written.rel), e))?;
        // Never claimed unless the server says so.
        match self.retention_of(&written.rel, written.version.as_deref())? {
            Some((m, date)) if m == retention.mode.as_str() && date + 86_400 >= until.secs() => {
                Ok(())
            }
            got => Err(Error::Storage {
                location: self.display(&written.rel).display().to_string(),
                kind: StorageErrorKind::NoObjectLock,
                reason: format!(
                    "the retention ({} until {}) was not applied: the server reports {got:?}",
                    retention.mode.as_str(),
                    until
                ),
                hint: "check the bucket's Object Lock settings with the storage administrator"
                    .into(),
            }),
        }
    }
}
