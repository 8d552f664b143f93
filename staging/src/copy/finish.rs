//! Finishing one copied file: read back from storage and compared, given its mode (and
//! mtime when the purge policy allows), renamed into place and journalled.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Mutex;

use super::pipeline::{Ctx, Staged};
use super::plan::Job;
use super::{classify, FailureKind};
use crate::error::{Error, IoContext, Result};
use crate::hash::{self, Digest, STREAM_THRESHOLD};
use crate::journal::{Journal, JournalEntry};
use crate::walk::Meta;

/// Reads the temporary file back from storage, compares, sets metadata, renames into
/// place and journals it.
pub(super) fn finish_file(
    ctx: &Ctx<'_>,
    job: &Job,
    staged: Staged,
    journal: &Mutex<Journal>,
) -> std::result::Result<(Digest, Meta), (FailureKind, Error)> {
    let io = |e: Error| (classify(&e), e);
    let tmp_path: &Path = &staged.tmp;
    let (readback, n) = if let Some(done) = staged.readback {
        done
    } else if staged.meta.size >= STREAM_THRESHOLD {
        if staged.own_flush {
            write_back(&File::open(tmp_path).at(tmp_path).map_err(io)?)
                .at(tmp_path)
                .map_err(io)?;
        }
        hash::hash_from_storage(tmp_path).map_err(io)?
    } else {
        // Small files: the batch's syncfs (or their own flush) made their pages clean, so
        // dropping them sends the read to storage without O_DIRECT's alignment games.
        let file = File::open(tmp_path).at(tmp_path).map_err(io)?;
        if staged.own_flush {
            write_back(&file).at(tmp_path).map_err(io)?;
        }
        hash::drop_cache(&file);
        hash::with_buffer(|buf| hash::hash_reader(&file, buf))
            .at(tmp_path)
            .map_err(io)?
    };
    if readback != staged.digest || n != staged.meta.size {
        return Err((
            FailureKind::VerifyFailed,
            Error::ReadBackMismatch {
                path: ctx.dest.join(&job.rel),
                wrote: staged.digest.to_hex(),
                wrote_len: staged.meta.size,
                read: readback.to_hex(),
                read_len: n,
            },
        ));
    }
    std::fs::set_permissions(tmp_path, perm(staged.meta.mode))
        .at(tmp_path)
        .map_err(io)?;
    if ctx.opts.preserve_mtime {
        set_mtime(tmp_path, staged.meta.mtime_ns).map_err(io)?;
    }
    let final_path = ctx.dest.join(&job.rel);
    staged
        .tmp
        .persist(&final_path)
        .map_err(|e| io(Error::io(&final_path, e.error)))?;
    let dest_meta = Meta::from_std(
        &std::fs::symlink_metadata(&final_path)
            .at(&final_path)
            .map_err(io)?,
    );
    let entry = JournalEntry {
        digest: staged.digest,
        size: staged.meta.size,
        src_mtime_ns: staged.meta.mtime_ns,
        dest_mtime_ns: dest_meta.mtime_ns,
        dest_ino: dest_meta.ino,
    };
    journal
        .lock()
        .expect("journal lock")
        .record(&job.rel, entry)
        .map_err(io)?;
    Ok((staged.digest, dest_meta))
}

/// Writes the dirty pages of `file` to storage and waits for them (`sync_file_range`),
/// so that its cached pages are clean and can be dropped before the read-back: a flush
/// of this file alone, not of the whole filesystem. Not a durability barrier (no
/// metadata, no device cache flush; the run's final `syncfs` is). Where the filesystem
/// has no `sync_file_range`, `fdatasync`.
fn write_back(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: plain syscall on a file descriptor we own; no memory is passed.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, flags) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => file.sync_data(),
        _ => Err(e),
    }
}

pub(super) fn perm(mode: u32) -> std::fs::Permissions {
    std::fs::Permissions::from_mode(mode & 0o7777)
}

pub(super) fn set_mtime(path: &Path, mtime_ns: i64) -> Result<()> {
    let t = filetime::FileTime::from_unix_time(
        mtime_ns.div_euclid(1_000_000_000),
        mtime_ns.rem_euclid(1_000_000_000) as u32,
    );
    filetime::set_symlink_file_times(path, filetime::FileTime::now(), t).at(path)
}
