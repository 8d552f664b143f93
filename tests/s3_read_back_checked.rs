//! An upload whose SHA-256 a pass took just before (`S3Store::create_read_back_checked`,
//! what `pull` and `ingest` use for a big file no manifest lists) against a real Ceph
//! RadosGW (`tests/s3/up.sh`): its bytes are not hashed again on the way up, each part
//! goes with the MD5 of what it holds, and the read-back is what proves the object. Bytes
//! other than those hashed (a file changed between the pass and the upload) make an
//! object whose read-back fails, so it is never counted; a byte count other than the
//! one hashed is refused before the upload completes, leaving nothing behind. Checked
//! with the AWS CLI.
//!
//! One test in this binary: it sets the process's AWS variables (the SDK reads them),
//! which no other test in the same process may share.

mod common;

use std::path::Path;

use common::s3::{plain_bucket, seeded_bytes, S3World};
use hpcstage_staging::hash::Digest;
use hpcstage_staging::storage::{Etag, S3Store, Storage, Upload, Written};
use hpcstage_staging::Error;

/// Sends `sent` in blocks of 1 MiB through an upload of `rel` whose pass hashed `hashed`.
fn upload(
    store: &S3Store,
    rel: &str,
    hashed: &[u8],
    sent: &[u8],
) -> hpcstage_staging::Result<Written> {
    let mut up: Box<dyn Upload + '_> =
        store.create_read_back_checked(Path::new(rel), hashed.len() as u64, Digest::of(hashed));
    for block in sent.chunks(1 << 20) {
        up.write(block)?;
    }
    up.finish()
}

#[test]
fn an_upload_hashed_before_is_proven_by_its_read_back_alone() {
    let Some(w) = S3World::new("read-back-checked") else {
        return;
    };
    let bucket = plain_bucket();
    let store = w.store_of_the_only_test(&bucket);
    let head = |rel: &str| {
        w.aws(&[
            "s3api",
            "head-object",
            "--bucket",
            &bucket,
            "--key",
            &w.key(rel),
            "--output",
            "json",
        ])
    };

    // Sent as hashed: a multipart upload (three parts, the last short), read back and
    // matched; the ETag the server computed from the parts it received is the one of the
    // hashed bytes, and the SHA-256 of the pass is in its metadata.
    let big = seeded_bytes(40 << 20, 1);
    let written = upload(&store, "big.bin", &big, &big).unwrap();
    store.verify(&written).expect("the read-back matches");
    let out = head("big.bin");
    out.code(0);
    let out: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let mut etag = Etag::for_size(big.len() as u64);
    etag.update(&big);
    assert_eq!(
        out["ETag"].as_str().unwrap().trim_matches('"'),
        etag.finish()
    );
    assert_eq!(
        out["Metadata"]["sha256"].as_str(),
        Some(Digest::of(&big).to_hex().as_str())
    );

    // One byte of the second part changed after the pass: the upload cannot tell (it
    // does not hash the bytes again), the read-back does.
    let mut changed = big.clone();
    changed[20 << 20] ^= 1;
    let written = upload(&store, "changed.bin", &big, &changed).unwrap();
    match store.verify(&written) {
        Err(Error::ReadBackMismatch { wrote, read, .. }) => {
            assert_eq!(wrote, Digest::of(&big).to_hex());
            assert_eq!(read, Digest::of(&changed).to_hex());
        }
        other => panic!("changed.bin: {other:?}"),
    }

    // A file grown or cut short since the pass: refused as changed before the upload
    // completes; no object and no multipart upload is left for it.
    let mut grown = big.clone();
    grown.extend(seeded_bytes(1 << 20, 3));
    for (rel, sent) in [("grown.bin", &grown[..]), ("cut.bin", &big[..(33 << 20)])] {
        match upload(&store, rel, &big, sent) {
            Err(Error::SourceChanged { path }) => assert_eq!(path, Path::new(rel)),
            other => panic!("{rel}: {other:?}"),
        }
        head(rel).err_has("Not Found");
    }
    w.assert_no_multipart_uploads(&bucket);
    w.cleanup(&bucket);
}
