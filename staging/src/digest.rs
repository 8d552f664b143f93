//! A SHA-256 digest as a value: made from a hasher or bytes, written and read as the 64
//! lowercase hex digits of `sha256sum`. Reading files to hash them is `hash.rs`'s and
//! `direct.rs`'s; both use this type, which depends on neither.

use std::fmt;
use std::str::FromStr;

use serde_with::{DeserializeFromStr, SerializeDisplay};
use sha2::{Digest as _, Sha256};

/// A SHA-256 digest.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, SerializeDisplay, DeserializeFromStr,
)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Digest of everything `hasher` has seen.
    pub fn from_hasher(hasher: Sha256) -> Self {
        Digest(hasher.finalize().into())
    }

    /// Digest of a byte slice.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(Sha256::digest(bytes).into())
    }

    /// Lowercase hex, as `sha256sum` writes it.
    pub fn to_hex(&self) -> String {
        faster_hex::hex_string(&self.0)
    }

    /// Appends [`Digest::to_hex`] to `out` (a manifest line a million times over).
    pub fn push_hex(&self, out: &mut Vec<u8>) {
        let mut hex = [0u8; 64];
        faster_hex::hex_encode(&self.0, &mut hex).expect("64 bytes hold 32 in hex");
        out.extend_from_slice(&hex);
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

/// Error for text that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected 64 hex digits")]
pub struct BadHex;

impl FromStr for Digest {
    type Err = BadHex;

    fn from_str(s: &str) -> std::result::Result<Self, BadHex> {
        if s.len() != 64 {
            return Err(BadHex);
        }
        faster_hex::hex_decode_array::<32>(s.as_bytes())
            .map(Digest)
            .map_err(|_| BadHex)
    }
}
