//! The state folder of the local executor: the job-id counter (locked with flock(2))
//! and one JSON record per job, written atomically; and whether a runner still lives.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::kill;
use nix::unistd::Pid;

use super::{LocalError, LocalExecutor, LocalJob};

impl LocalExecutor {
    pub(super) fn jobs_dir(&self) -> PathBuf {
        self.state_dir.join("jobs")
    }

    pub(super) fn record_path(&self, job_id: u64) -> PathBuf {
        self.jobs_dir().join(format!("{job_id}.json"))
    }

    pub(super) fn cancel_path(&self, job_id: u64) -> PathBuf {
        self.jobs_dir().join(format!("{job_id}.cancel"))
    }

    pub(super) fn cancel_requested(&self, job_id: u64) -> bool {
        self.cancel_all
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst))
            || self.cancel_path(job_id).exists()
    }

    /// Reserve `n` consecutive job ids from the counter file (locked with flock(2)).
    pub(super) fn reserve_ids(&self, n: u64) -> Result<u64, LocalError> {
        let dir = &self.state_dir;
        std::fs::create_dir_all(dir).map_err(|source| LocalError::Io {
            path: dir.clone(),
            error: source,
        })?;
        let path = dir.join("next-job-id");
        let io = |source| LocalError::Io {
            path: path.clone(),
            error: source,
        };
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        // Released when `f` is dropped.
        let mut f = Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| io(e.into()))?;
        let mut text = String::new();
        f.read_to_string(&mut text).map_err(io)?;
        let first: u64 = match text.trim() {
            "" => 1,
            t => t.parse().map_err(|_| LocalError::Record {
                path: path.clone(),
                reason: format!("counter {t:?} is not a number"),
            })?,
        };
        f.seek(SeekFrom::Start(0)).map_err(io)?;
        f.set_len(0).map_err(io)?;
        writeln!(f, "{}", first + n).map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(first)
    }

    pub(super) fn load(&self, job_id: u64) -> Result<Option<LocalJob>, LocalError> {
        let path = self.record_path(job_id);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(LocalError::Io {
                    path,
                    error: source,
                })
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| LocalError::Record {
                path,
                reason: e.to_string(),
            })
    }

    pub(super) fn save(&self, job: &LocalJob) -> Result<(), LocalError> {
        let dir = self.jobs_dir();
        std::fs::create_dir_all(&dir).map_err(|source| LocalError::Io {
            path: dir.clone(),
            error: source,
        })?;
        let path = self.record_path(job.job_id);
        let tmp = dir.join(format!(".{}.json.{}", job.job_id, std::process::id()));
        let text = serde_json::to_string_pretty(job).map_err(|e| LocalError::Record {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(&tmp, text).map_err(|source| LocalError::Io {
            path: tmp.clone(),
            error: source,
        })?;
        std::fs::rename(&tmp, &path).map_err(|source| LocalError::Io {
            path,
            error: source,
        })
    }
}

pub(super) fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // Signal 0 only checks that the process exists (EPERM: it does, as someone else's).
    matches!(kill(Pid::from_raw(pid), None), Ok(()) | Err(Errno::EPERM))
}
