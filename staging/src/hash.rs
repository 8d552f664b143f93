//! SHA-256 digests and streaming file hashing.
//!
//! `sha2` picks the SHA-NI (or ARMv8 crypto) code path at run time when the CPU has it;
//! nothing here may enable its `force-soft` feature. Hashing reads in large blocks and
//! tells the kernel the access is sequential so readahead stays ahead of the hasher.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::direct;
use crate::error::{IoContext, Result};

/// What every function here returns, defined on its own so that `direct.rs` can make one
/// without importing this module (which imports it).
pub use crate::digest::{BadHex, Digest};

/// Hints the kernel that `file` will be read sequentially from start to end.
pub fn advise_sequential(file: &File) {
    use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
    use std::os::fd::AsRawFd;
    // Advisory only: a filesystem that ignores it is fine.
    let _ = posix_fadvise(
        file.as_fd().as_raw_fd(),
        0,
        0,
        PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
    );
}

/// Asks the kernel to drop the cached pages of `file`, so the next read comes from storage.
/// Pages must be clean (written back) for this to take effect.
pub fn drop_cache(file: &File) {
    use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
    use std::os::fd::AsRawFd;
    let _ = posix_fadvise(
        file.as_fd().as_raw_fd(),
        0,
        0,
        PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}

/// Hashes everything `reader` yields; returns the digest and the byte count.
pub fn hash_reader(mut reader: impl Read, buf: &mut [u8]) -> std::io::Result<(Digest, u64)> {
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    loop {
        let n = match reader.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((Digest::from_hasher(hasher), total))
}

/// Files at least this big are read by a separate thread, so reading and hashing overlap.
pub const STREAM_THRESHOLD: u64 = 8 << 20;

/// Hashes a file by path; returns the digest and the byte count. Big files are read past
/// the page cache where the filesystem allows it (see `direct`): on two cores the kernel's
/// copies through the cache cost as much CPU as the hash itself.
pub fn hash_file(path: &Path) -> Result<(Digest, u64)> {
    let file = File::open(path).at(path)?;
    let big = is_big(&file);
    if !(big && direct::set_direct(&file, true)) {
        advise_sequential(&file);
    }
    hash_open(&file, big).at(path)
}

fn is_big(file: &File) -> bool {
    file.metadata().is_ok_and(|m| m.len() >= STREAM_THRESHOLD)
}

/// Hashes an open file from its current position: a big one in blocks, a reader thread
/// ahead of the hasher (see `direct::hash`, which reads with or without `O_DIRECT`), a
/// small one with this thread's buffer.
fn hash_open(file: &File, big: bool) -> std::io::Result<(Digest, u64)> {
    if big {
        direct::hash(file)
    } else {
        with_buffer(|buf| hash_reader(file, buf))
    }
}

/// Hashes a file as it is on storage, not as the page cache holds it: with O_DIRECT in
/// large aligned reads where the filesystem supports it (no cache pollution, big requests,
/// a reader thread ahead of the hasher), otherwise buffered after dropping the file's
/// clean cached pages. The caller must have flushed the file (fdatasync or syncfs) first.
pub fn hash_from_storage(path: &Path) -> Result<(Digest, u64)> {
    if let Ok(file) = direct::open_read(path) {
        // Should a read refuse O_DIRECT half-way, the rest is read through the cache:
        // it must hold none of the file's pages then.
        drop_cache(&file);
        if let Ok(result) = direct::hash(&file) {
            return Ok(result);
        }
        // EINVAL from a filesystem that takes O_DIRECT at open but not the read: retry
        // buffered below.
    }
    let file = File::open(path).at(path)?;
    drop_cache(&file);
    advise_sequential(&file);
    hash_open(&file, is_big(&file)).at(path)
}

thread_local! {
    static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Size of the per-thread buffer for files below [`STREAM_THRESHOLD`]: big enough for
/// few syscalls, small enough that dozens of I/O threads stay light.
const SMALL_BLOCK: usize = 256 << 10;

/// Reads `reader` (the file at `path`) to its end in blocks of this thread's buffer,
/// handing each block to `sink`.
pub fn for_each_block(
    mut reader: impl Read,
    path: &Path,
    sink: &mut dyn FnMut(&[u8]) -> crate::Result<()>,
) -> crate::Result<()> {
    with_buffer(|buf| loop {
        let n = match reader.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(crate::Error::io(path, e)),
        };
        sink(&buf[..n])?;
    })
}

/// Runs `f` with this thread's reusable buffer, so hashing a million small files does not
/// allocate a million buffers.
pub fn with_buffer<T>(f: impl FnOnce(&mut [u8]) -> T) -> T {
    BUFFER.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < SMALL_BLOCK {
            // Zeroed by the allocator (fresh pages from the kernel), not by writing zeros:
            // only the part that reads touch becomes resident, so dozens of I/O threads
            // reading small files stay light.
            *buf = vec![0u8; SMALL_BLOCK];
        }
        f(&mut buf)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_empty_input_matches_sha256sum() {
        assert_eq!(
            Digest::of(b"").to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn digest_round_trips_through_hex() {
        let d = Digest::of(b"abc");
        assert_eq!(d.to_hex().parse::<Digest>().unwrap(), d);
        assert_eq!("abc".parse::<Digest>(), Err(BadHex));
        assert_eq!("z".repeat(64).parse::<Digest>(), Err(BadHex));
    }

    #[test]
    fn hash_reader_counts_bytes() {
        let data = vec![7u8; SMALL_BLOCK * 2 + 5];
        let (d, n) = with_buffer(|buf| hash_reader(&data[..], buf)).unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(d, Digest::of(&data));
    }
}
