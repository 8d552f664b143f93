//! The MD5 of S3 uploads (each part's Content-MD5, the ETag a server computes) through
//! OpenSSL, whose MD5 runs about 1.3 times as fast as the `md-5` crate's here, and MD5
//! is what an upload spends most of its CPU on. Where OpenSSL refuses MD5 (a FIPS
//! provider), the `md-5` crate computes the same digest.

use md5::Digest as _;
use openssl::hash::{Hasher, MessageDigest};

/// An MD5 being computed.
pub(super) enum Md5 {
    OpenSsl(Hasher),
    Rust(md5::Md5),
}

impl Md5 {
    pub(super) fn new() -> Md5 {
        match Hasher::new(MessageDigest::md5()) {
            Ok(h) => Md5::OpenSsl(h),
            Err(_) => Md5::Rust(md5::Md5::new()),
        }
    }

    pub(super) fn update(&mut self, bytes: &[u8]) {
        match self {
            Md5::OpenSsl(h) => {
                if h.update(bytes).is_err() {
                    // Never seen once the hasher was made; the digest would be wrong, so
                    // no request could pass the server's check: a panic says why.
                    panic!("OpenSSL MD5 update failed");
                }
            }
            Md5::Rust(h) => h.update(bytes),
        }
    }

    pub(super) fn finish(self) -> [u8; 16] {
        match self {
            Md5::OpenSsl(mut h) => {
                let d = h.finish().unwrap_or_else(|e| panic!("OpenSSL MD5: {e}"));
                d.as_ref().try_into().expect("16 bytes")
            }
            Md5::Rust(h) => h.finalize().into(),
        }
    }
}

/// The MD5 of `bytes`.
pub(super) fn md5(bytes: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(bytes);
    h.finish()
}

#[cfg(test)]
mod tests {
    use md5::Digest as _;

    #[test]
    fn openssl_and_the_crate_agree() {
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let want: [u8; 16] = md5::Md5::digest(&bytes).into();
        assert_eq!(super::md5(&bytes), want);
        assert!(matches!(super::Md5::new(), super::Md5::OpenSsl(_)));
        // `printf abc | md5sum`
        assert_eq!(
            faster_hex::hex_string(&super::md5(b"abc")),
            "900150983cd24fb0d6963f7d28e17f72"
        );
    }
}
