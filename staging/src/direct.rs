//! Direct I/O for big files: reads and writes that go past the page cache.
//!
//! Copying a big file through the page cache costs the kernel a memory copy per byte on
//! each side (into the cache on read, into the cache again on write) and then a writeback
//! of the whole file; measured on two cores, that kernel time, not the disk, bounded a
//! verified copy (bench/README.md, measurement 3). With `O_DIRECT` the disk moves bytes
//! straight to and from the aligned buffers here, and a read-back after it cannot be
//! answered from the cache.
//!
//! Nothing here may make a copy fail that buffered I/O would have done: a filesystem that
//! refuses `O_DIRECT` (tmpfs, some FUSE and network mounts), at open or at a read or
//! write, gets the same bytes through the cache, and a tail that is not a whole number of
//! blocks is written buffered.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Condvar, Mutex};

use nix::fcntl::{fcntl, posix_fadvise, FcntlArg, OFlag, PosixFadviseAdvice};
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;

/// Alignment of direct reads and writes (offset, length and memory).
pub const ALIGN: usize = 4096;
/// Size of one direct read or write. Bigger requests keep more of the device busy per
/// thread: on the benchmark's virtual disk, staging 4 files of 512 MiB took 3.2-4.5 s with
/// 8 MiB blocks against 4.0-5.2 s with 4 MiB (same run, alternating).
pub const BLOCK: usize = 8 << 20;

/// A heap buffer of [`BLOCK`] bytes starting at an [`ALIGN`] boundary.
pub struct Aligned {
    raw: Vec<u8>,
    start: usize,
}

impl Aligned {
    pub fn new() -> Self {
        let raw = vec![0u8; BLOCK + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        Aligned { raw, start }
    }

    /// The whole usable buffer.
    pub fn buf(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + BLOCK]
    }

    /// The first `n` bytes.
    pub fn data(&self, n: usize) -> &[u8] {
        &self.raw[self.start..self.start + n]
    }
}

impl Default for Aligned {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether `file` is open with `O_DIRECT`.
pub fn is_direct(file: &File) -> bool {
    status_flags(file).is_some_and(|flags| flags.contains(OFlag::O_DIRECT))
}

/// Turns `O_DIRECT` on or off for an open file. Returns whether the file is now as asked
/// (a filesystem without direct I/O refuses to turn it on).
pub fn set_direct(file: &File, on: bool) -> bool {
    let Some(flags) = status_flags(file) else {
        return false;
    };
    let mut wanted = flags;
    wanted.set(OFlag::O_DIRECT, on);
    wanted == flags || fcntl(file.as_raw_fd(), FcntlArg::F_SETFL(wanted)).is_ok()
}

/// The file's status flags (`F_GETFL`).
fn status_flags(file: &File) -> Option<OFlag> {
    fcntl(file.as_raw_fd(), FcntlArg::F_GETFL)
        .ok()
        .map(OFlag::from_bits_retain)
}

/// Opens `path` read-only with `O_DIRECT` (an error where the filesystem refuses it).
pub fn open_read(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

/// Whether a read or write that failed with `e` is to be tried again: interrupted, or
/// refused because of `O_DIRECT` (EINVAL), which is then turned off for `file`.
fn try_again(file: &File, e: std::io::Error) -> std::io::Result<()> {
    let refused = e.raw_os_error() == Some(libc::EINVAL) && is_direct(file);
    if e.kind() == std::io::ErrorKind::Interrupted || (refused && set_direct(file, false)) {
        Ok(())
    } else {
        Err(e)
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read. A read that
/// `O_DIRECT` makes impossible (EINVAL: the filesystem does not take it, or the file's end
/// left the offset unaligned) turns it off and is tried again through the cache.
pub fn read_full(file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match (&*file).read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) => try_again(file, e)?,
        }
    }
    Ok(filled)
}

/// Writes all of `data` at the file's position. A part that is not a whole number of
/// [`ALIGN`] blocks (a file's tail), or a write the filesystem refuses with `O_DIRECT`, is
/// written through the cache instead.
pub fn write_all(file: &File, data: &[u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < data.len() {
        let rest = &data[done..];
        if !rest.len().is_multiple_of(ALIGN) && is_direct(file) {
            set_direct(file, false);
        }
        match (&*file).write(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) => try_again(file, e)?,
        }
    }
    Ok(())
}

/// Big files streamed at once in this process, whatever the number of files in flight:
/// each holds a few [`BLOCK`] buffers, and many small files in flight (what `--jobs` is
/// sized for) must not become as many big ones.
static STREAMS: Mutex<usize> = Mutex::new(0);
static STREAM_DONE: Condvar = Condvar::new();

fn max_streams() -> usize {
    std::thread::available_parallelism().map_or(4, |n| (n.get() * 2).clamp(4, 16))
}

/// A turn to stream one big file; held until dropped.
pub struct StreamSlot(());

impl StreamSlot {
    /// Waits until fewer than the maximum of big files are being streamed.
    pub fn acquire() -> Self {
        let mut busy = STREAMS.lock().expect("stream slots lock");
        while *busy >= max_streams() {
            busy = STREAM_DONE.wait(busy).expect("stream slots lock");
        }
        *busy += 1;
        StreamSlot(())
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        *STREAMS.lock().expect("stream slots lock") -= 1;
        STREAM_DONE.notify_one();
    }
}

/// Which side of a copy failed.
#[derive(Debug)]
pub enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// What [`copy_blocks`] did.
#[derive(Debug, Clone, Copy)]
pub struct Copied {
    /// Bytes read from the source (and written).
    pub bytes: u64,
    /// Digest and length of what was read back from storage as the copy went, when a
    /// read-back file was given and every read-back went to storage; `None` means the
    /// caller must read the file back itself.
    pub readback: Option<(Digest, u64)>,
}

/// The reader thread of a stream: fills each empty buffer from `file` and passes it on,
/// until the file ends, a read fails, or the other side stops.
fn read_ahead(
    file: &File,
    empty: Receiver<Aligned>,
    full: SyncSender<std::io::Result<(Aligned, usize)>>,
) {
    while let Ok(mut buf) = empty.recv() {
        // A run asked to stop does not read a big file to its end first.
        let r = match crate::interrupt::received() {
            Some(_) => Err(crate::interrupt::stopped()),
            None => read_full(file, buf.buf()),
        };
        let done = !matches!(r, Ok(BLOCK));
        if full.send(r.map(|n| (buf, n))).is_err() || done {
            return;
        }
    }
}

/// Hashes `file` from its position in [`BLOCK`]s, a reader thread keeping the next read in
/// flight while this thread hashes; returns the digest and the byte count.
pub fn hash(file: &File) -> std::io::Result<(Digest, u64)> {
    let _slot = StreamSlot::acquire();
    let (empty_tx, empty_rx) = sync_channel::<Aligned>(DEPTH + 1);
    let (full_tx, full_rx) = sync_channel::<std::io::Result<(Aligned, usize)>>(DEPTH);
    for _ in 0..=DEPTH {
        empty_tx.send(Aligned::new()).expect("channel has room");
    }
    std::thread::scope(|scope| {
        scope.spawn(move || read_ahead(file, empty_rx, full_tx));
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        for r in full_rx {
            let (buf, n) = r?;
            if n == 0 {
                break;
            }
            hasher.update(buf.data(n));
            total += n as u64;
            let _ = empty_tx.send(buf);
        }
        Ok((Digest::from_hasher(hasher), total))
    })
}

/// Blocks in flight between the reader and the writer of one copy (each [`BLOCK`] bytes;
/// with the read-back's own block, 32 MiB per big file).
const DEPTH: usize = 3;

/// Copies `src` from its current position to `out` from its start (a new file: the
/// read-back reads from offset 0) in [`BLOCK`]s: a reader thread keeps
/// reads going, this thread hands each block to `consume` (the hash), a writer thread
/// writes it, so that reading, hashing and writing overlap. All-zero blocks of a `sparse`
/// source become holes (the caller sets the length). `each_write` runs on the writer
/// thread after every block with the bytes written so far.
///
/// With `readback` (the destination opened again with `O_DIRECT`), a fourth thread reads
/// each written block back from storage (see [`read_back`]) and hashes it while the next
/// blocks are copied, so the read-back overlaps the copy instead of following it.
pub fn copy_blocks(
    src: &File,
    out: &File,
    sparse: bool,
    mut consume: impl FnMut(&[u8]),
    mut each_write: impl FnMut(u64) + Send,
    readback: Option<&File>,
) -> Result<Copied, CopyError> {
    let _slot = StreamSlot::acquire();
    let (empty_tx, empty_rx) = sync_channel::<Aligned>(DEPTH);
    let (full_tx, full_rx) = sync_channel::<std::io::Result<(Aligned, usize)>>(DEPTH);
    let (write_tx, write_rx) = sync_channel::<(Aligned, usize)>(DEPTH);
    let (verify_tx, verify_rx) = sync_channel::<(Aligned, u64, usize)>(DEPTH);
    for _ in 0..DEPTH {
        empty_tx.send(Aligned::new()).expect("channel has room");
    }
    std::thread::scope(|scope| {
        scope.spawn(move || read_ahead(src, empty_rx, full_tx));
        let verifier = readback.map(|file| {
            let empty_tx = empty_tx.clone();
            scope.spawn(move || {
                let mut own = Aligned::new();
                let mut hasher = Some(Sha256::new());
                let mut got = 0u64;
                for (buf, offset, n) in verify_rx {
                    if let Some(h) = hasher.as_mut() {
                        match read_back(file, offset, n, &mut own) {
                            Ok(m) => {
                                h.update(own.data(m));
                                got += m as u64;
                            }
                            // Not verified here: the caller reads the file back itself,
                            // and reports what goes wrong then.
                            Err(_) => hasher = None,
                        }
                    }
                    let _ = empty_tx.send(buf);
                }
                hasher.map(|h| (Digest::from_hasher(h), got))
            })
        });
        let writer = scope.spawn(move || -> std::io::Result<()> {
            let mut written = 0u64;
            for (buf, n) in write_rx {
                let data = buf.data(n);
                if sparse {
                    write_sparse(out, out, data)?;
                } else {
                    write_all(out, data)?;
                }
                let offset = written;
                written += n as u64;
                each_write(written);
                if readback.is_some() {
                    if verify_tx.send((buf, offset, n)).is_err() {
                        return Err(std::io::Error::other("the read-back stopped"));
                    }
                } else {
                    // The reader may have stopped; a closed channel is fine.
                    let _ = empty_tx.send(buf);
                }
            }
            Ok(())
        });
        let mut total = 0u64;
        let mut read_error = None;
        for r in full_rx {
            match r {
                Ok((_, 0)) => break,
                Ok((buf, n)) => {
                    consume(buf.data(n));
                    total += n as u64;
                    if write_tx.send((buf, n)).is_err() {
                        break; // the writer failed: its error is below
                    }
                }
                Err(e) => {
                    read_error = Some(e);
                    break;
                }
            }
        }
        drop(write_tx);
        let written = writer.join().expect("writer thread panicked");
        let readback = verifier.and_then(|v| v.join().expect("read-back thread panicked"));
        if let Some(e) = read_error {
            return Err(CopyError::Read(e));
        }
        written.map_err(CopyError::Write)?;
        Ok(Copied {
            bytes: total,
            readback,
        })
    })
}

/// Holes of a sparse source are found in pieces of this size (a multiple of [`ALIGN`]).
const HOLE: usize = 64 << 10;

/// Writes `data` at the file's position, seeking over the all-zero [`HOLE`]-sized pieces
/// instead, so that they stay holes.
fn write_sparse(out: &File, mut pos: &File, data: &[u8]) -> std::io::Result<()> {
    let zero = |piece: &[u8]| piece.iter().all(|&b| b == 0);
    let mut pieces = data.chunks(HOLE).peekable();
    while let Some(piece) = pieces.next() {
        if zero(piece) {
            pos.seek(SeekFrom::Current(piece.len() as i64))?;
            continue;
        }
        // One write for a run of pieces with data.
        let start = piece.as_ptr() as usize - data.as_ptr() as usize;
        let mut end = start + piece.len();
        while let Some(next) = pieces.next_if(|p| !zero(p)) {
            end += next.len();
        }
        write_all(out, &data[start..end])?;
    }
    Ok(())
}

/// Reads `n` bytes at `offset` of a file open with `O_DIRECT` from storage into `buf`;
/// returns how many there were (fewer at the file's end). The range is flushed and its
/// clean pages dropped first, so that a filesystem that quietly serves `O_DIRECT` reads
/// from the cache (ext4 does for some inodes) still reads what storage holds. Any error,
/// EINVAL from a file or filesystem without direct reads among them, means "not verified
/// here", never "verified".
pub fn read_back(file: &File, offset: u64, n: usize, buf: &mut Aligned) -> std::io::Result<usize> {
    let fd = file.as_raw_fd();
    let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(n)) else {
        return Err(std::io::ErrorKind::InvalidInput.into());
    };
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a plain syscall on a descriptor we own; no memory is passed (nix has no
    // sync_file_range).
    let synced = unsafe { libc::sync_file_range(fd, off, len, flags) };
    if synced != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let _ = posix_fadvise(fd, off, len, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
    // A short read before the end (some network filesystems make them) is read on from
    // where it stopped; a direct read that an unaligned stop makes impossible is an error,
    // that is "not verified here".
    let want = n.div_ceil(ALIGN) * ALIGN;
    let mut got = 0;
    while got < n {
        let at = offset + got as u64;
        match std::os::unix::fs::FileExt::read_at(file, &mut buf.buf()[got..want], at) {
            Ok(0) => break,
            Ok(m) => got += m,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got.min(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    fn copy(data: &[u8], sparse: bool, direct: bool) -> (Vec<u8>, u64, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, data).unwrap();
        let src = File::open(&a).unwrap();
        let out = File::create(&b).unwrap();
        if direct {
            set_direct(&src, true);
            set_direct(&out, true);
        }
        let mut seen = Vec::new();
        let copied = copy_blocks(
            &src,
            &out,
            sparse,
            |b| seen.extend_from_slice(b),
            |_| {},
            None,
        )
        .unwrap();
        let n = copied.bytes;
        out.set_len(n).unwrap();
        drop(out);
        (std::fs::read(&b).unwrap(), n, seen)
    }

    #[test]
    fn copies_every_length_around_block_and_alignment_edges() {
        for len in [
            0,
            1,
            ALIGN - 1,
            ALIGN,
            ALIGN + 1,
            BLOCK - 1,
            BLOCK,
            BLOCK + 1,
            3 * BLOCK + 5 * ALIGN + 17,
        ] {
            let data = pattern(len);
            for direct in [false, true] {
                let (copied, n, seen) = copy(&data, false, direct);
                assert_eq!(n, len as u64, "len {len} direct {direct}");
                assert!(copied == data, "len {len} direct {direct}: bytes differ");
                assert!(
                    seen == data,
                    "len {len} direct {direct}: hashed bytes differ"
                );
            }
        }
    }

    /// Opens `path` for reading past the cache where the filesystem allows it.
    fn open_for_read_back(path: &Path) -> File {
        open_read(path).or_else(|_| File::open(path)).unwrap()
    }

    #[test]
    fn the_read_back_hashes_what_the_file_holds_not_what_was_written() {
        let data = pattern(2 * BLOCK + 3 * ALIGN + 11);
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        std::fs::write(&a, &data).unwrap();
        // Copies a to b with b written past the cache, reading `back` back as it goes.
        let copy_reading_back = |back: &std::path::Path| {
            let out = File::create(&b).unwrap();
            set_direct(&out, true);
            let readback = open_for_read_back(back);
            let src = File::open(&a).unwrap();
            copy_blocks(&src, &out, false, |_| {}, |_| {}, Some(&readback)).unwrap()
        };
        let copied = copy_reading_back(&b);
        assert_eq!(copied.bytes, data.len() as u64);
        assert_eq!(
            copied.readback,
            Some((Digest::of(&data), data.len() as u64))
        );

        // Read back from another file (storage that does not hold what was written): the
        // digest says so.
        let mut other = data.clone();
        other[BLOCK + 5] ^= 1;
        std::fs::write(&c, &other).unwrap();
        let copied = copy_reading_back(&c);
        assert_eq!(
            copied.readback,
            Some((Digest::of(&other), data.len() as u64))
        );
        assert_ne!(copied.readback.unwrap().0, Digest::of(&data));
    }

    #[test]
    fn big_streams_take_turns() {
        let slots: Vec<StreamSlot> = (0..max_streams()).map(|_| StreamSlot::acquire()).collect();
        let waiting = std::thread::spawn(|| {
            let _slot = StreamSlot::acquire();
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiting.is_finished(), "a stream started past the maximum");
        drop(slots);
        waiting.join().unwrap();
    }

    #[test]
    fn zero_blocks_of_a_sparse_source_become_holes() {
        use std::os::unix::fs::MetadataExt;
        let mut data = vec![0u8; 4 * BLOCK];
        data[BLOCK..BLOCK + 100].copy_from_slice(&pattern(100));
        data[BLOCK + 3 * HOLE - 1] = 9; // a run of data across two pieces
        data[BLOCK + 3 * HOLE] = 9;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, &data).unwrap();
        for direct in [false, true] {
            let out = File::create(&b).unwrap();
            set_direct(&out, direct);
            let n = copy_blocks(&File::open(&a).unwrap(), &out, true, |_| {}, |_| {}, None)
                .unwrap()
                .bytes;
            out.set_len(n).unwrap();
            assert!(std::fs::read(&b).unwrap() == data, "direct {direct}");
            // Three pieces of data, not four blocks (filesystems may round up a little).
            let allocated = std::fs::metadata(&b).unwrap().blocks() * 512;
            assert!(
                allocated <= 8 * HOLE as u64,
                "direct {direct}: allocated {allocated} bytes"
            );
        }
    }

    #[test]
    fn a_write_error_is_reported_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, pattern(BLOCK + 1)).unwrap();
        // A file opened read-only cannot be written: EBADF on the first write.
        let out = File::open(&a).unwrap();
        let r = copy_blocks(&File::open(&a).unwrap(), &out, false, |_| {}, |_| {}, None);
        assert!(matches!(r, Err(CopyError::Write(_))), "{r:?}");
    }

    #[test]
    fn a_read_error_is_reported_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let out = File::create(dir.path().join("b")).unwrap();
        // A folder opened as a file: EISDIR on the first read.
        let r = copy_blocks(
            &File::open(dir.path()).unwrap(),
            &out,
            false,
            |_| {},
            |_| {},
            None,
        );
        assert!(matches!(r, Err(CopyError::Read(_))), "{r:?}");
    }
}
