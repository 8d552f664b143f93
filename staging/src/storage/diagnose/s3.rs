//! The checks of an S3 NAS: the bucket answers with these credentials, and has Object
//! Lock (which `ingest` needs to write-protect).

use crate::storage::{S3Options, S3Store, S3Url};

use super::{Check, CheckLevel};

/// The hint for a missing source in a bucket.
pub(super) const MISSING_HINT: &str =
    "check the bucket and the prefix (for example with `aws s3 ls s3://BUCKET/PREFIX/`)";

pub(super) fn nas(url: &S3Url, s3: &S3Options) -> Vec<Check> {
    let mut checks = vec![Check::new(
        "ssh",
        CheckLevel::Skip,
        "the NAS is an S3 bucket: no SSH needed",
    )];
    let store = match S3Store::connect(url, s3) {
        Ok(store) => store,
        Err(e) => {
            checks.push(Check::with_fix(
                "nas_root",
                CheckLevel::Fail,
                e.to_string(),
                "check [s3] endpoint and the AWS credentials (environment, ~/.aws/credentials, [s3] profile)",
            ));
            return checks;
        }
    };
    checks.push(Check::new(
        "nas_root",
        CheckLevel::Ok,
        format!("{url}: bucket reachable"),
    ));
    checks.push(match store.require_object_lock() {
        Ok(()) => Check::new(
            "worm",
            CheckLevel::Ok,
            format!("{url}: Object Lock enabled"),
        ),
        Err(e) => Check::with_fix(
            "worm",
            CheckLevel::Warn,
            e.to_string(),
            "ingest into this bucket is refused; use a bucket with Object Lock",
        ),
    });
    checks
}
