//! Reading one source file into its temporary destination file, hashing as it is read:
//! from a local folder on the fast path (O_DIRECT past the page cache, holes kept, read
//! back while the copy goes on), or from any other `Storage` as a stream.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::pipeline::Ctx;
use super::plan::Job;
use super::{classify, FailureKind};
use crate::direct;
use crate::error::{Error, IoContext, Result};
use crate::hash::{self, Digest, STREAM_THRESHOLD};
use crate::interrupt;
use crate::progress::Progress;
use crate::walk::Meta;

/// What copying one file's bytes gave.
pub(super) struct FileCopy {
    /// Digest of the bytes read from the source.
    pub(super) digest: Digest,
    pub(super) bytes: u64,
    /// Digest and length of the destination as read back from storage during the copy;
    /// `None` when it still has to be read back.
    pub(super) readback: Option<(Digest, u64)>,
}

impl FileCopy {
    /// A copy of `bytes` bytes hashed by `hasher`, still to be read back.
    pub(super) fn unread(hasher: Sha256, bytes: u64) -> FileCopy {
        FileCopy {
            digest: Digest::from_hasher(hasher),
            bytes,
            readback: None,
        }
    }
}

/// What reading one source file gives: the copy, metadata before and after.
pub(super) type SourceRead = (FileCopy, Meta, Meta);

/// One local file into `out`: holes kept, big files streamed by a reader thread.
pub(super) fn read_local(
    ctx: &Ctx<'_>,
    src_path: &Path,
    out: &mut File,
    tmp_path: &Path,
    big: bool,
) -> std::result::Result<SourceRead, (FailureKind, Error)> {
    let io = |e: Error| (classify(&e), e);
    let file = File::open(src_path).at(src_path).map_err(io)?;
    let before = Meta::from_std(&file.metadata().at(src_path).map_err(io)?);
    let sparse = before.is_sparse();
    let copy = if before.size >= STREAM_THRESHOLD {
        copy_streamed(&file, src_path, out, tmp_path, sparse, ctx.progress, big)?
    } else {
        let (digest, bytes) = hash::with_buffer(|buf| {
            copy_simple(&file, src_path, out, tmp_path, sparse, buf, ctx.progress)
        })?;
        FileCopy {
            digest,
            bytes,
            readback: None,
        }
    };
    if sparse {
        out.set_len(copy.bytes).at(tmp_path).map_err(io)?;
    }
    let after = Meta::from_std(&file.metadata().at(src_path).map_err(io)?);
    Ok((copy, before, after))
}

/// One file of a [`Storage`] into `out`, hashed as it streams (an SFTP read resumes at the
/// byte reached when its connection drops); the metadata after is the file as the storage
/// saw it at the end of the read, comparable with the listing's.
pub(super) fn read_store(
    ctx: &Ctx<'_>,
    job: &Job,
    out: &mut File,
    tmp_path: &Path,
    big: bool,
) -> Result<SourceRead> {
    const KICK: u64 = 16 << 20;
    let mut hasher = Sha256::new();
    let (mut written, mut kicked) = (0u64, 0u64);
    let after = ctx.src.read_listed(&job.rel, &job.meta, &mut |block| {
        if interrupt::received().is_some() {
            return Err(Error::io(tmp_path, interrupt::stopped()));
        }
        hasher.update(block);
        out.write_all(block).at(tmp_path)?;
        written += block.len() as u64;
        if big && written - kicked >= KICK {
            start_writeback(out, kicked, written - kicked);
            kicked = written;
        }
        ctx.progress.add_bytes(block.len() as u64);
        Ok(())
    })?;
    Ok((FileCopy::unread(hasher, written), job.meta, after))
}

fn copy_simple(
    mut src: &File,
    src_path: &Path,
    out: &mut File,
    out_path: &Path,
    sparse: bool,
    buf: &mut [u8],
    progress: &dyn Progress,
) -> std::result::Result<(Digest, u64), (FailureKind, Error)> {
    let io = |e: Error| (classify(&e), e);
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    loop {
        let n = match src.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(Error::io(src_path, e))),
        };
        hasher.update(&buf[..n]);
        write_block(out, out_path, &buf[..n], sparse).map_err(io)?;
        total += n as u64;
        progress.add_bytes(n as u64);
    }
    Ok((Digest::from_hasher(hasher), total))
}

/// Big files go past the page cache where both filesystems allow it (see `direct`): a
/// reader thread keeps direct reads in flight while this thread hashes and a writer thread
/// writes. When the destination takes only buffered writes and `writeback` is set, written
/// ranges are handed to the kernel's writeback as they complete (`sync_file_range`), so
/// storage writes overlap the copy instead of piling up for one long flush at the end.
fn copy_streamed(
    src: &File,
    src_path: &Path,
    out: &mut File,
    out_path: &Path,
    sparse: bool,
    progress: &dyn Progress,
    writeback: bool,
) -> std::result::Result<FileCopy, (FailureKind, Error)> {
    const KICK: u64 = 16 << 20;
    if !direct::set_direct(src, true) {
        hash::advise_sequential(src);
    }
    let out_direct = direct::set_direct(out, true);
    let kick = writeback && !out_direct;
    // The destination written past the cache can be read back from storage while the
    // copy goes on (see `direct::read_back`); a sparse one only at the end, once its
    // length is set.
    let readback = (out_direct && !sparse)
        .then(|| direct::open_read(out_path).ok())
        .flatten();
    let mut hasher = Sha256::new();
    let mut kicked = 0u64;
    let out_ref: &File = out;
    let copied = direct::copy_blocks(
        src,
        out_ref,
        sparse,
        |block| {
            hasher.update(block);
            progress.add_bytes(block.len() as u64);
        },
        |written| {
            if kick && written - kicked >= KICK {
                start_writeback(out_ref, kicked, written - kicked);
                kicked = written;
            }
        },
        readback.as_ref(),
    );
    let copied = copied.map_err(|e| {
        let e = match e {
            direct::CopyError::Read(e) => Error::io(src_path, e),
            direct::CopyError::Write(e) => Error::io(out_path, e),
        };
        (classify(&e), e)
    })?;
    Ok(FileCopy {
        digest: Digest::from_hasher(hasher),
        bytes: copied.bytes,
        readback: copied.readback,
    })
}

/// Starts writeback of a byte range without waiting for it (advisory: errors surface at
/// the fdatasync that follows).
pub(super) fn start_writeback(file: &File, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: plain syscall on a file descriptor we own; no memory is passed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

fn write_block(out: &mut File, path: &Path, data: &[u8], sparse: bool) -> Result<()> {
    if sparse && data.iter().all(|&b| b == 0) {
        out.seek(SeekFrom::Current(data.len() as i64)).at(path)?;
        return Ok(());
    }
    out.write_all(data).at(path)
}
