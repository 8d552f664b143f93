//! The S3 backend's uploads (`storage::S3Store`) against a real Ceph RadosGW
//! (`tests/s3/up.sh`), object by object: a file hashed before its upload (its SHA-256 and
//! each part's MD5 in one pass) is sent without being hashed again, and bytes that differ
//! from that pass are refused, by the server's Content-MD5 check, as a source that
//! changed; nothing is left behind. Checked with the AWS CLI.
//!
//! One test in this binary: it sets the process's AWS variables (the SDK reads them),
//! which no other test in the same process may share.

mod common;

use std::path::Path;

use common::s3::{plain_bucket, seeded_bytes, S3World};
use hpcstage_staging::hash::Digest;
use hpcstage_staging::storage::{Etag, Prehashed, S3Store, Storage, Upload};
use hpcstage_staging::Error;

/// `bytes` hashed as `tree.rs` hashes a file before its upload.
fn prehash(bytes: &[u8]) -> Prehashed {
    let mut etag = Etag::for_size(bytes.len() as u64);
    etag.update(bytes);
    Prehashed::new(Digest::of(bytes), bytes.len() as u64, etag)
}

/// Sends `sent` in blocks of 1 MiB through an upload of `rel` hashed from `hashed`.
fn upload(store: &S3Store, rel: &str, hashed: &[u8], sent: &[u8]) -> hpcstage_staging::Result<()> {
    let mut up: Box<dyn Upload + '_> = store.create_prehashed(Path::new(rel), prehash(hashed));
    for block in sent.chunks(1 << 20) {
        up.write(block)?;
    }
    let written = up.finish()?;
    store.verify(&written)
}

#[test]
fn a_file_hashed_before_its_upload_is_sent_as_hashed_or_refused_as_changed() {
    let Some(w) = S3World::new("prehashed") else {
        return;
    };
    let bucket = plain_bucket();
    let store = w.store_of_the_only_test(&bucket);

    // Sent as hashed: a multipart upload and a single PUT, each read back and matched,
    // with the ETag the server computed from what it received equal to the pass's.
    let big = seeded_bytes(40 << 20, 1);
    let small = seeded_bytes(300_000, 2);
    for (rel, data) in [("big.bin", &big), ("small.bin", &small)] {
        upload(&store, rel, data, data).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let head = w.aws(&[
            "s3api",
            "head-object",
            "--bucket",
            &bucket,
            "--key",
            &w.key(rel),
            "--output",
            "json",
        ]);
        head.code(0);
        let head: serde_json::Value = serde_json::from_str(&head.stdout).unwrap();
        assert_eq!(
            head["ETag"].as_str().unwrap().trim_matches('"'),
            prehash(data).etag(),
            "{rel}"
        );
        assert_eq!(
            head["Metadata"]["sha256"].as_str(),
            Some(Digest::of(data).to_hex().as_str()),
            "{rel}"
        );
        assert_eq!(head["ContentLength"].as_u64(), Some(data.len() as u64));
    }

    // Bytes that changed after the pass: one byte of the second part, a single PUT's
    // byte, a file grown by a part, a file cut short. Each is refused as a source that
    // changed, and no object or multipart upload is left for it.
    let mut second_part = big.clone();
    second_part[20 << 20] ^= 1;
    let mut one_byte = small.clone();
    one_byte[7] ^= 1;
    let mut grown = big.clone();
    grown.extend(seeded_bytes(17 << 20, 3));
    let cut = &big[..(33 << 20)];
    for (rel, hashed, sent) in [
        ("changed-part.bin", &big[..], &second_part[..]),
        ("changed-put.bin", &small[..], &one_byte[..]),
        ("grown.bin", &big[..], &grown[..]),
        ("cut.bin", &big[..], cut),
    ] {
        match upload(&store, rel, hashed, sent) {
            Err(Error::SourceChanged { path }) => assert_eq!(path, Path::new(rel)),
            other => panic!("{rel}: {other:?}"),
        }
        w.aws(&[
            "s3api",
            "head-object",
            "--bucket",
            &bucket,
            "--key",
            &w.key(rel),
        ])
        .err_has("Not Found");
    }
    w.assert_no_multipart_uploads(&bucket);
    w.cleanup(&bucket);
}
