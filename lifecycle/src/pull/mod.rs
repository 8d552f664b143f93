//! Pulling a run's results back to the NAS (what the pull-back job runs, and what a user
//! runs by hand).
//!
//! The compute job's final state is read first (a run still pending or running is refused
//! unless the caller waits). A job that completed with exit 0 has its outputs validated
//! against the template's spec; valid outputs are placed on the NAS the way `ingest`
//! places a dataset, whatever the NAS is (`Storage::place`, docs/ARCHITECTURE.md#storage):
//! each file verified as it is written into a place that is not final (a hidden
//! `.<run>.partial` folder next to `results/<workflow>/<run>/` on a folder, `.<run>.upload`
//! on an SSH host; objects that count for nothing until their manifest is written on S3),
//! described (`run.json`, `README.md`), `MANIFEST.sha256` last, then the final name (a
//! rename that never replaces), so a half-written results folder never appears and two
//! concurrent pulls cannot both win. Only then are the intermediates purged. A failed,
//! timed-out, cancelled or invalid job gets its logs and a FAILED README in
//! `results/<workflow>/_failed/<run>/`, placed the same way, never in the validated area,
//! and scratch is left as it is.
//!
//! Pulls of one run take turns: an exclusive `flock` on `.hpcstage/pull.lock` in the run
//! folder (Linux NFS clients map it to a POSIX lock the server arbitrates), held from the
//! moment the job's final state is known until the ledger says pulled. The second pull
//! waits, then finds the run pulled and says so. A pull killed at any point leaves either
//! the hidden folder or uploaded objects (the next pull resumes them) or the complete
//! results folder under its final name (the next pull adopts it and finishes purge and
//! bookkeeping).
//!
//! The parts: `results.rs` (the results written, adopted, finished), `target.rs` (where
//! they go, and the one placement path), `failed.rs` (`_failed/<run>`), `validate.rs`,
//! `provenance.rs` (`run.json`, `README.md` from `README.md.j2`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hpcstage_staging::lock::{holder, try_lock, TryLock};
use hpcstage_staging::progress::Progress;
use hpcstage_staging::record::read_json;
use hpcstage_staging::remote::SshOptions;
use hpcstage_staging::storage::S3Options;
use hpcstage_staging::walk::{MANIFEST_NAME, STATE_DIR};
use nix::fcntl::Flock;
use serde::Serialize;

use crate::backend::{Backend, Observed};
use crate::error::{Error, Result};
use crate::run::{Event, JobRole, Phase, RunStore, RunView};
use crate::run::{PulledMarker, PULLED_MARKER};

mod failed;
mod provenance;
mod results;
mod target;
mod validate;

pub use provenance::{EarlierJob, ModelInfo, Provenance};
pub use validate::{validate, CommandResult, Validation};

use results::pull_finished;
use target::Target;

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Wait for a running compute job to end instead of refusing.
    pub wait: bool,
    /// Give up waiting after this long.
    pub wait_timeout: Duration,
    /// Pull what validates even when the job failed or some outputs are missing.
    pub allow_partial: bool,
    /// Write-protect the results folder (on S3: Object Lock retention of every object,
    /// from `s3.retention`).
    pub worm: bool,
    /// Parallel files.
    pub jobs: usize,
    /// Time limit of the spec's validation command.
    pub validate_timeout: Duration,
    /// How long to wait for another process that is pulling the same run.
    pub busy_timeout: Duration,
    /// Told once when this pull starts waiting for another one.
    pub notify: fn(&str),
    /// How to reach a NAS over SSH (results folder `host:/path`).
    pub ssh: SshOptions,
    /// On a remote NAS, also run `sha256sum -c` there before the rename.
    pub remote_verify: bool,
    /// How to reach an S3 NAS (results folder `s3://bucket/prefix`), and the retention of
    /// `--worm` there.
    pub s3: S3Options,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            wait: false,
            wait_timeout: Duration::from_secs(7 * 86_400),
            allow_partial: false,
            worm: false,
            jobs: 2,
            validate_timeout: Duration::from_secs(600),
            busy_timeout: Duration::from_secs(3600),
            notify: |_| {},
            ssh: SshOptions::default(),
            remote_verify: false,
            s3: S3Options::default(),
        }
    }
}

/// What a pull did.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum PullOutcome {
    /// The run was pulled before; nothing was done.
    AlreadyPulled {
        results_dir: PathBuf,
        /// The other pull this one waited for, when they ran at the same time.
        #[serde(skip_serializing_if = "Option::is_none")]
        concurrent: Option<String>,
        /// `--worm` write-protected the results folder now.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        protected: bool,
    },
    /// Results are verified on the NAS.
    Pulled {
        results_dir: PathBuf,
        files: u64,
        bytes: u64,
        manifest_digest: String,
        /// Intermediates removed from scratch afterwards.
        purged: Vec<PathBuf>,
        /// Some outputs were missing or invalid (`--allow-partial`).
        partial: bool,
        /// The expected outputs that are missing (of a partial pull).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        missing: Vec<String>,
    },
    /// The job failed or its outputs did not validate: logs are in `failed_dir`.
    Failed { failed_dir: PathBuf, reason: String },
}

/// Pulls run `id`.
pub fn pull(
    store: &RunStore,
    id: &str,
    backend: &Backend,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<PullOutcome> {
    let view = store.load(id)?;
    if let Some(done) = already_pulled(store, &view, opts)? {
        return Ok(PullOutcome::AlreadyPulled {
            protected: protect_if_asked(&done, opts)?,
            results_dir: done,
            concurrent: None,
        });
    }
    let job = view.job(JobRole::Compute).ok_or_else(|| Error::NoJob {
        id: id.to_string(),
        role: "compute".into(),
    })?;
    let observed = final_state(id, &job.job_id, backend, opts)?;
    let lock = PullLock::acquire(&view.record.run_dir, id, opts)?;
    // Whoever held the lock may have pulled the run meanwhile.
    let view = store.load(id)?;
    if let Some(done) = already_pulled(store, &view, opts)? {
        return Ok(PullOutcome::AlreadyPulled {
            protected: protect_if_asked(&done, opts)?,
            results_dir: done,
            concurrent: lock.waited_for,
        });
    }
    store.append(
        id,
        Event::JobState {
            role: JobRole::Compute,
            job_id: job.job_id.clone(),
            facts: Box::new(observed.facts.clone()),
            observer: "pull".into(),
        },
    )?;
    store.append(id, Event::PullStarted)?;
    let result = pull_finished(
        store,
        &view,
        &job.job_id,
        job.array_size,
        &observed,
        opts,
        progress,
    );
    if let Err(e) = &result {
        let _ = store.append(
            id,
            Event::PullFailed {
                reason: e.to_string(),
            },
        );
    }
    drop(lock);
    result
}

/// `pull --worm` on a run pulled before still write-protects its results folder.
fn protect_if_asked(results_dir: &Path, opts: &PullOptions) -> Result<bool> {
    if opts.worm {
        Target::open(results_dir, opts)?.protect(opts)?;
    }
    Ok(opts.worm)
}

/// The results folder when the run is pulled: recorded in the ledger, or marked in the
/// run folder by a pull stopped before its ledger event (which is then written).
fn already_pulled(store: &RunStore, view: &RunView, opts: &PullOptions) -> Result<Option<PathBuf>> {
    let results = &view.record.results_dir;
    let marker = view.record.run_dir.join(STATE_DIR).join(PULLED_MARKER);
    // Neither the ledger nor the run folder says pulled: the NAS is not asked (on an SSH
    // host or an object store, that costs a connection).
    if view.phase != Phase::Pulled && !marker.is_file() {
        return Ok(None);
    }
    let has_manifest = Target::open(results, opts)?
        .store
        .stat(Path::new(MANIFEST_NAME))?
        .is_some();
    if !has_manifest {
        return Ok(None);
    }
    if view.phase == Phase::Pulled {
        return Ok(Some(results.clone()));
    }
    let Ok(marker) = read_json::<PulledMarker>(&marker) else {
        return Ok(None);
    };
    store.append(
        &view.record.id,
        Event::Pulled {
            results_dir: results.clone(),
            manifest_digest: marker.manifest_digest,
            partial: marker.partial,
        },
    )?;
    Ok(Some(results.clone()))
}

/// The exclusive right to pull one run.
struct PullLock {
    /// `None` where the filesystem has no locks (Lustre mounted without `flock`): the
    /// hidden folder's copy lock and the no-replace rename still keep pulls apart.
    _lock: Option<Flock<std::fs::File>>,
    /// Who held it while this process waited.
    waited_for: Option<String>,
}

impl PullLock {
    fn acquire(run_dir: &Path, id: &str, opts: &PullOptions) -> Result<PullLock> {
        let path = run_dir.join(STATE_DIR).join("pull.lock");
        // Who holds it, for the message of a pull that has to wait.
        let me = holder();
        let started = Instant::now();
        let mut waited_for: Option<String> = None;
        loop {
            match try_lock(&path, &me).map_err(Error::Staging)? {
                TryLock::Held(lock) => {
                    return Ok(PullLock {
                        _lock: Some(lock),
                        waited_for,
                    });
                }
                TryLock::Busy(holder) => {
                    if started.elapsed() >= opts.busy_timeout {
                        return Err(Error::PullBusy {
                            id: id.to_string(),
                            holder,
                        });
                    }
                    if waited_for.is_none() {
                        (opts.notify)(&format!(
                            "run {id} is being pulled by {holder}; waiting for it to finish"
                        ));
                    }
                    waited_for = Some(holder);
                    std::thread::sleep(Duration::from_millis(500));
                }
                TryLock::Unsupported(e) => {
                    (opts.notify)(&format!(
                        "{} cannot be locked ({e}); pulling without the run lock",
                        path.display()
                    ));
                    return Ok(PullLock {
                        _lock: None,
                        waited_for,
                    });
                }
            }
        }
    }
}

/// Reads (or waits for) the compute job's final state.
fn final_state(id: &str, job_id: &str, backend: &Backend, opts: &PullOptions) -> Result<Observed> {
    let started = Instant::now();
    let mut delay = Duration::from_secs(5);
    loop {
        let observed = backend
            .observe(&[job_id.to_string()])?
            .pop()
            .and_then(|(_, o)| o);
        let state = match &observed {
            Some(o) if o.terminal => return Ok(observed.expect("matched Some")),
            Some(o) => o.facts.state.clone(),
            None => "unknown to the scheduler".to_string(),
        };
        if !opts.wait || started.elapsed() > opts.wait_timeout {
            return Err(Error::NotFinished {
                id: id.to_string(),
                job_id: job_id.to_string(),
                state,
            });
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}
