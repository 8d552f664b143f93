//! `s3://bucket/prefix`: how an S3 location is written wherever a NAS path goes.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// A bucket and a key prefix (no leading or trailing `/`; empty for the bucket's root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    /// The prefix as a relative path (`lab/P1/raw/plate7`), so that the NAS layout reads
    /// it as it reads a folder.
    pub prefix: PathBuf,
}

impl S3Url {
    /// True when `text` is written as an S3 location (then [`S3Url::parse`] decides whether
    /// it is a valid one).
    pub fn is_s3(text: &[u8]) -> bool {
        text.starts_with(b"s3://") || text.starts_with(b"S3://")
    }

    /// Reads `s3://bucket[/prefix]`.
    pub fn parse(text: &str) -> Result<S3Url> {
        let invalid = |reason: &str| Error::Invalid {
            what: "S3 location",
            value: text.to_string(),
            reason: format!(
                "{reason}; write it as s3://bucket/prefix (e.g. s3://lab-raw/P1/raw/plate7)"
            ),
        };
        let rest = text
            .strip_prefix("s3://")
            .or_else(|| text.strip_prefix("S3://"))
            .ok_or_else(|| invalid("it does not start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        // S3's bucket naming rules: 3 to 63 of a-z 0-9 . -, starting and ending alphanumeric.
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
            && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
        if bucket.is_empty() {
            return Err(invalid("no bucket name"));
        }
        if !valid_bucket {
            return Err(invalid(&format!(
                "{bucket:?} is not a valid bucket name (3 to 63 lowercase letters, digits, '.' or '-')"
            )));
        }
        let prefix = prefix.trim_end_matches('/');
        let path = PathBuf::from(prefix);
        if path
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
            || prefix.contains("//")
        {
            return Err(invalid(&format!(
                "the prefix {prefix:?} has an empty, '.' or '..' part"
            )));
        }
        Ok(S3Url {
            bucket: bucket.to_string(),
            prefix: path,
        })
    }

    /// The same bucket with another prefix.
    pub fn with_prefix(&self, prefix: impl Into<PathBuf>) -> S3Url {
        S3Url {
            bucket: self.bucket.clone(),
            prefix: prefix.into(),
        }
    }

    /// The key of `rel` under the prefix.
    pub fn key(&self, rel: &Path) -> String {
        let joined = self.prefix.join(rel);
        joined.to_string_lossy().trim_matches('/').to_string()
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.as_os_str().is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix.display())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bucket_and_prefix() {
        let u = S3Url::parse("s3://lab-raw/P1/raw/plate7/").unwrap();
        assert_eq!(u.bucket, "lab-raw");
        assert_eq!(u.prefix, PathBuf::from("P1/raw/plate7"));
        assert_eq!(u.key(Path::new("a/b.tif")), "P1/raw/plate7/a/b.tif");
        assert_eq!(u.to_string(), "s3://lab-raw/P1/raw/plate7");
        assert_eq!(S3Url::parse("s3://lab").unwrap().key(Path::new("x")), "x");
    }

    #[test]
    fn refuses_malformed_locations() {
        for (text, why) in [
            ("s3://", "no bucket"),
            ("s3:///x", "no bucket"),
            ("s3://Lab_Raw/x", "not a valid bucket"),
            ("s3://ab/x", "not a valid bucket"),
            ("s3://lab/a/../b", "'..'"),
            ("s3://lab/a//b", "empty"),
        ] {
            let e = S3Url::parse(text).unwrap_err().to_string();
            assert!(
                e.contains(why) && e.contains("s3://bucket/prefix"),
                "{text}: {e}"
            );
        }
    }
}
