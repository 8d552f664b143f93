//! A big object read back as range GETs on the way at once, against a real Ceph RadosGW
//! (`tests/s3/up.sh`): the read-back opens several connections to the server (one stream
//! would need one), takes the bytes in order, and still catches an object
//! whose bytes or size are not those written: a byte changed in a later range, or an
//! object of another size (read as one stream, so the size is what the server has).
//!
//! One test in this binary: it sets the process's AWS variables (the SDK reads them),
//! which no other test in the same process may share.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;

use common::s3::{plain_bucket, relay_counting, seeded_bytes, S3World};
use hpcstage_staging::hash::Digest;
use hpcstage_staging::storage::{S3Options, S3Store, S3Url, Storage, Written};
use hpcstage_staging::Error;

/// Writes `bytes` at `rel` through the backend (Content-MD5 on each part, SHA-256 in the
/// metadata); the object is not read back.
fn write(store: &S3Store, rel: &str, bytes: &[u8]) -> Written {
    let mut up = store
        .create(Path::new(rel), bytes.len() as u64, Digest::of(bytes))
        .unwrap();
    for block in bytes.chunks(1 << 20) {
        up.write(block).unwrap();
    }
    up.finish().unwrap()
}

#[test]
fn a_big_object_is_read_in_ranges_at_once_and_a_changed_one_is_still_caught() {
    let Some(w) = S3World::new("ranges") else {
        return;
    };
    let bucket = plain_bucket();
    let store = w.store_of_the_only_test(&bucket);
    // 40 MiB: three ranges of 16 MiB, the last short.
    let big = seeded_bytes(40 << 20, 7);
    let written = write(&store, "big.bin", &big);

    // Through a relay that counts connections: the read-back opens more than the one
    // connection a single stream needs; a stage's read (one stream) gives the same bytes.
    let (relay, counted) = relay_counting(std::time::Duration::ZERO);
    let url = S3Url::parse(&w.url(&bucket, "")).unwrap();
    let opts = S3Options {
        endpoint: Some(relay),
        region: Some("us-east-1".into()),
        ..S3Options::default()
    };
    let relayed = S3Store::connect(&url, &opts).expect("connect through the relay");
    let before = counted.connections.load(Ordering::SeqCst);
    relayed.verify(&written).expect("the read-back matches");
    let opened = counted.connections.load(Ordering::SeqCst) - before;
    assert!(
        opened >= 2,
        "the read-back of 40 MiB opened {opened} connection(s): one stream, not ranges at once"
    );
    assert!(counted.down.load(Ordering::SeqCst) >= big.len() as u64);
    let listed = relayed.stat(Path::new("big.bin")).unwrap().expect("listed");
    let mut read = Vec::new();
    let meta = relayed
        .read_listed(Path::new("big.bin"), &listed, &mut |b| {
            read.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
    assert!(read == big, "the stage read gives the object byte for byte");
    assert_eq!((meta.size, meta.ino), (listed.size, listed.ino));

    // The object replaced (as by another writer) with one byte of its third range
    // changed: the read-back sees it.
    let mut changed = big.clone();
    changed[(36 << 20) + 5] ^= 0x40;
    let dir = w.env.path("replaced");
    std::fs::create_dir_all(&dir).unwrap();
    let put = |bytes: &[u8]| {
        let file = dir.join("big.bin");
        std::fs::write(&file, bytes).unwrap();
        w.aws(&[
            "s3",
            "cp",
            "--quiet",
            file.to_str().unwrap(),
            &format!("s3://{bucket}/{}", w.key("big.bin")),
        ])
        .code(0);
    };
    put(&changed);
    match store.verify(&written) {
        Err(Error::ReadBackMismatch { read, read_len, .. }) => {
            assert_eq!(read, Digest::of(&changed).to_hex());
            assert_eq!(read_len, big.len() as u64);
        }
        other => panic!("a changed byte at 36 MiB: {other:?}"),
    }

    // Replaced with an object of another size: read whole, its size is what is compared.
    for len in [33 << 20, 41 << 20] {
        let other = seeded_bytes(len, 9);
        put(&other);
        match store.verify(&written) {
            Err(Error::ReadBackMismatch { read, read_len, .. }) => {
                assert_eq!(read_len, len as u64);
                assert_eq!(read, Digest::of(&other).to_hex());
            }
            other => panic!("an object of {len} bytes: {other:?}"),
        }
    }
    w.assert_no_multipart_uploads(&bucket);
    w.cleanup(&bucket);
}
