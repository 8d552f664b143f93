//! How a failed S3 request is told: the bucket or key named, a kind the engine acts on
//! (quota, credentials, endpoint down, missing), and a hint; never the credentials.

use std::path::Path;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use super::S3Store;
use crate::error::{Error, Result, StorageErrorKind};

impl S3Store {
    /// The error of a failed request on `rel`, with what the user can do about it.
    pub(super) fn error<E, R>(&self, op: &str, rel: Option<&Path>, e: SdkError<E, R>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + HasStatus,
    {
        let location = match rel {
            Some(rel) => format!("s3://{}/{}", self.url.bucket, self.key(rel)),
            None => format!("s3://{}", self.url.bucket),
        };
        let status = e.raw_response().map(HasStatus::status);
        let code = e.code().unwrap_or_default().to_string();
        let message = e.message().unwrap_or_default().to_string();
        let (kind, reason, hint) = match (&e, code.as_str(), status) {
            (SdkError::DispatchFailure(_) | SdkError::TimeoutError(_), _, _) => (
                StorageErrorKind::Unreachable,
                format!("{op}: no answer from the S3 endpoint {}", self.endpoint),
                "check that the endpoint in [s3] is right and the server is up, then run again (it resumes)".to_string(),
            ),
            (_, "QuotaExceeded", _) => (
                StorageErrorKind::Quota,
                format!("{op}: the bucket's quota is exceeded"),
                "free space in the bucket or ask its administrator to raise the quota, then run again (it resumes)".to_string(),
            ),
            (_, "NoSuchBucket", _) => (
                StorageErrorKind::NotFound,
                format!("{op}: the bucket {} does not exist", self.url.bucket),
                "check the bucket name (`aws s3 ls` lists yours)".to_string(),
            ),
            (_, "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied" | "InvalidToken" | "ExpiredToken", _)
            | (_, _, Some(401 | 403)) => (
                StorageErrorKind::Auth,
                format!("{op}: the S3 service refused the credentials ({})", if code.is_empty() { "403" } else { &code }),
                "check the access key and secret (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, or `profile` in [s3]) and that they may use this bucket".to_string(),
            ),
            (_, "SlowDown", _) | (_, _, Some(503)) => (
                StorageErrorKind::Unreachable,
                format!("{op}: the S3 service asked to slow down (503) and kept asking after the retries"),
                "run again later (it resumes); lower --jobs to send fewer requests at once".to_string(),
            ),
            (_, "NoSuchKey", _) | (_, _, Some(404)) => (
                StorageErrorKind::NotFound,
                format!("{op}: no such object"),
                "the object was removed meanwhile; run again".to_string(),
            ),
            _ => (
                StorageErrorKind::Other,
                format!(
                    "{op}: {}",
                    [code.as_str(), message.as_str()]
                        .iter()
                        .filter(|s| !s.is_empty())
                        .copied()
                        .collect::<Vec<_>>()
                        .join(": ")
                        .chars()
                        .take(300)
                        .collect::<String>()
                        .trim()
                        .to_string()
                        + if code.is_empty() && message.is_empty() { "request failed" } else { "" }
                ),
                "run again; if it persists, check the server's logs".to_string(),
            ),
        };
        Error::Storage {
            location,
            kind,
            reason,
            hint,
        }
    }

    pub(super) fn check_bucket(&self) -> Result<()> {
        let done = self
            .runtime
            .block_on(self.client.head_bucket().bucket(&self.url.bucket).send());
        match done {
            Ok(_) => Ok(()),
            Err(e) => Err(match self.error("HeadBucket", None, e) {
                Error::Storage {
                    location,
                    kind: StorageErrorKind::NotFound,
                    ..
                } => Error::Storage {
                    location,
                    kind: StorageErrorKind::NotFound,
                    reason: format!("the bucket {} does not exist", self.url.bucket),
                    hint: "check the bucket name (`aws s3 ls` lists yours) or ask the storage administrator to create it".to_string(),
                },
                other => other,
            }),
        }
    }
}

/// The error of an object that went away while it was read.
pub(super) fn gone(location: &str) -> Error {
    Error::Storage {
        location: location.to_string(),
        kind: StorageErrorKind::NotFound,
        reason: "the object went away while it was read".into(),
        hint: "run again".into(),
    }
}

/// The status code of a raw HTTP response, whatever the SDK's response type.
pub(super) trait HasStatus {
    fn status(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status(&self) -> u16 {
        self.status().as_u16()
    }
}
