//! Exclusive advisory locks between hpcstage processes (`flock` on a file), taken without
//! waiting. The file says who holds it, for the message of whoever finds it taken.
//!
//! See docs/ARCHITECTURE.md#locks.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, IoContext, Result};

/// What [`try_lock`] found.
pub enum TryLock {
    /// Held until dropped.
    Held(Flock<File>),
    /// Another process holds it; what the file says of it (`pid N on HOST`), or that it
    /// does not say.
    Busy(String),
    /// The filesystem has no locks (NFS mounted `nolock`, Lustre without `flock`).
    Unsupported(Errno),
}

/// How a lock file names its holder: `pid N on HOST` (a lock on a network filesystem can be
/// held from another machine).
pub fn holder() -> String {
    format!("pid {} on {}", std::process::id(), crate::host::hostname())
}

/// True when a lock (a lock object, a lock file created exclusively) says `pid N on HOST`
/// of this host and process N is gone.
pub(crate) fn held_by_a_gone_process(said: &str) -> bool {
    let Some((pid, host)) = said
        .strip_prefix("pid ")
        .and_then(|rest| rest.split_once(" on "))
    else {
        return false;
    };
    host == crate::host::hostname()
        && pid
            .parse::<u32>()
            .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// Tries to lock `path` (created when missing); once held, the file says `holder`. A lock
/// file another user left (not writable here) is locked all the same, read-only; it then
/// keeps that user's words.
pub fn try_lock(path: &Path, holder: &str) -> Result<TryLock> {
    let opened = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path);
    let file = match opened {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && path.is_file() => {
            File::open(path).at(path)?
        }
        other => other.at(path)?,
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            // Only words for others' messages: the lock holds whether they are written.
            let _ = lock
                .set_len(0)
                .and_then(|()| lock.write_all(holder.as_bytes()));
            Ok(TryLock::Held(lock))
        }
        // SMB/CIFS mounts answer a held lock with EACCES instead of EWOULDBLOCK.
        Err((_, Errno::EWOULDBLOCK | Errno::EACCES)) => {
            let said = std::fs::read_to_string(path).unwrap_or_default();
            let said = said.trim();
            Ok(TryLock::Busy(if said.is_empty() {
                "which one, its lock file does not say".to_string()
            } else {
                said.to_string()
            }))
        }
        Err((_, e @ (Errno::ENOSYS | Errno::ENOLCK | Errno::EOPNOTSUPP | Errno::EINVAL))) => {
            Ok(TryLock::Unsupported(e))
        }
        Err((_, e)) => Err(Error::io(path, e.into())),
    }
}

/// Locks `path` for this process, or refuses: `Error::Locked` says that `what` is locked
/// and by whom. On a filesystem without locks (NFS mounted `nolock`, some Lustre set-ups)
/// the caller goes on without one (`None`) rather than refuse every run there.
pub fn lock_or_refuse(path: &Path, what: &Path) -> Result<Option<Flock<File>>> {
    match try_lock(path, &holder())? {
        TryLock::Held(lock) => Ok(Some(lock)),
        TryLock::Busy(holder) => Err(Error::Locked {
            path: what.to_path_buf(),
            holder,
        }),
        TryLock::Unsupported(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_busy_for_the_next_taker_and_says_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let TryLock::Held(first) = try_lock(&path, "pid 1 on a").unwrap() else {
            panic!("a free lock was not taken");
        };
        match try_lock(&path, "pid 2 on b").unwrap() {
            TryLock::Busy(holder) => assert_eq!(holder, "pid 1 on a"),
            _ => panic!("a held lock was taken again"),
        }
        drop(first);
        assert!(matches!(
            try_lock(&path, "pid 2 on b").unwrap(),
            TryLock::Held(_)
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "pid 2 on b");
    }
}
