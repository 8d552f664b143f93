//! Pulling a run's results back to the NAS (what the pull-back job runs, and what a user
//! runs by hand).
//!
//! The compute job's final state is read first (a run still pending or running is refused
//! unless the caller waits). A job that completed with exit 0 has its outputs validated
//! against the template's spec; valid outputs are copied with the verified copy engine into
//! a hidden folder next to `results/<workflow>/<run>/`, described (`MANIFEST.sha256`,
//! `run.json`, `README.md`) and renamed into place with RENAME_NOREPLACE, so a half-written
//! results folder never appears and two concurrent pulls cannot both win. Only then are
//! the intermediates purged. A failed, timed-out, cancelled or invalid job gets its logs
//! and a FAILED README in `results/<workflow>/_failed/<run>/`, never in the validated area,
//! and scratch is left as it is.
//!
//! Pulls of one run take turns: an exclusive `flock` on `.hpcstage/pull.lock` in the run
//! folder (Linux NFS clients map it to a POSIX lock the server arbitrates), held from the
//! moment the job's final state is known until the ledger says pulled. The second pull
//! waits, then finds the run pulled and says so. A pull killed at any point leaves either
//! the hidden folder (the next pull resumes the copy) or the complete results folder under
//! its final name (the next pull adopts it and finishes purge and bookkeeping).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hpcstage_slurm::process::{kill_group, own_group};
use hpcstage_staging::copy::{copy_tree, CopyOptions};
use hpcstage_staging::host::{current_user, hostname};
use hpcstage_staging::lock::{holder, try_lock, TryLock};
use hpcstage_staging::manifest::{write_verified, Manifest, ManifestEntry};
use hpcstage_staging::progress::Progress;
use hpcstage_staging::record::{json_bytes, read_json, write_json};
use hpcstage_staging::remote::{NasFolder, Remote, RemoteErrorKind, SshOptions, UploadOptions};
use hpcstage_staging::walk::{Filter, MANIFEST_NAME, STATE_DIR};
use hpcstage_template::{Expected, OutputCheck, Rendered, INPUTS_FILE, SIGNAL_MARKER};
use jiff::Timestamp;
use nix::fcntl::Flock;
use serde::Serialize;

use crate::backend::{Backend, Observed};
use crate::chain::RENDERED_FILE;
use crate::error::{Error, Result};
use crate::run::{Event, JobFacts, JobRole, Phase, RunRecord, RunStore, RunView};
use crate::run::{PulledMarker, PULLED_MARKER};

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Wait for a running compute job to end instead of refusing.
    pub wait: bool,
    /// Give up waiting after this long.
    pub wait_timeout: Duration,
    /// Pull what validates even when the job failed or some outputs are missing.
    pub allow_partial: bool,
    /// Write-protect the results folder.
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

/// The result of validating a run folder.
#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    pub checks: Vec<OutputCheck>,
    pub command: Option<CommandResult>,
    pub ok: bool,
}

/// The spec's validation command and how it went.
#[derive(Debug, Clone, Serialize)]
pub struct CommandResult {
    pub command: String,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub output: String,
}

/// Machine-readable provenance, `run.json` in the results folder.
#[derive(Debug, Clone, Serialize)]
pub struct Provenance<'a> {
    pub run: &'a RunRecord,
    pub compute_job_id: String,
    pub compute_job: &'a JobFacts,
    pub array_size: Option<u32>,
    /// Compute jobs before the last one (`hpcstage retry`): the outputs of their tasks
    /// that completed are part of these results.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub earlier_compute_jobs: Vec<EarlierJob>,
    pub model: Option<ModelInfo>,
    /// What each `path` parameter named, hashed (a reference genome, a sample sheet).
    pub param_inputs: Vec<crate::digests::ParamInput>,
    pub gpus: Vec<String>,
    pub validation: &'a Validation,
    /// Pulled with `--allow-partial` although the job failed or outputs did not validate.
    pub partial: bool,
    /// What a partial pull lacks: each failed output rule, and the inputs without an
    /// output where that can be told.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    pub timed_out_warning: bool,
    pub pulled_at: Timestamp,
    pub pulled_by: String,
    pub pulled_on: String,
    pub hpcstage_version: &'static str,
}

pub use crate::digests::ModelInfo;

/// A compute job of the run before a retry, as last observed.
#[derive(Debug, Clone, Serialize)]
pub struct EarlierJob {
    pub job_id: String,
    pub state: Option<String>,
    pub exit_code: Option<String>,
    /// Its array tasks and their states.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tasks: BTreeMap<String, String>,
}

/// Every compute job of the run but the last.
fn earlier_compute_jobs(view: &RunView) -> Vec<EarlierJob> {
    let compute: Vec<_> = view
        .jobs
        .iter()
        .filter(|j| j.role == JobRole::Compute)
        .collect();
    compute[..compute.len().saturating_sub(1)]
        .iter()
        .map(|j| EarlierJob {
            job_id: j.job_id.clone(),
            state: j.facts.as_ref().map(|f| f.state.clone()),
            exit_code: j.facts.as_ref().and_then(|f| f.exit_code.clone()),
            tasks: j
                .facts
                .as_ref()
                .map(|f| f.tasks.clone())
                .unwrap_or_default(),
        })
        .collect()
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
        NasFolder::open(results_dir, &opts.ssh)?.protect()?;
    }
    Ok(opts.worm)
}

/// The results folder when the run is pulled: recorded in the ledger, or marked in the
/// run folder by a pull stopped before its ledger event (which is then written).
fn already_pulled(store: &RunStore, view: &RunView, opts: &PullOptions) -> Result<Option<PathBuf>> {
    let results = &view.record.results_dir;
    let has_manifest = if NasFolder::is_remote_path(results) {
        // Asking the NAS host costs a connection: the ledger's word is enough for a run
        // it records as pulled, and the marker is checked before connecting otherwise.
        if view.phase == Phase::Pulled {
            return Ok(Some(results.clone()));
        }
        let marker = view.record.run_dir.join(STATE_DIR).join(PULLED_MARKER);
        marker.is_file()
            && NasFolder::open(results, &opts.ssh)?
                .read(Path::new(MANIFEST_NAME))?
                .is_some()
    } else {
        results.join(MANIFEST_NAME).is_file()
    };
    if !has_manifest {
        return Ok(None);
    }
    if view.phase == Phase::Pulled {
        return Ok(Some(results.clone()));
    }
    let marker = view.record.run_dir.join(STATE_DIR).join(PULLED_MARKER);
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

fn pull_finished(
    store: &RunStore,
    view: &RunView,
    job_id: &str,
    array_size: Option<u32>,
    observed: &Observed,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<PullOutcome> {
    let record = &view.record;
    let run_dir = &record.run_dir;
    let rendered: Rendered = read_json(&run_dir.join(RENDERED_FILE))?;
    let results_dir = &record.results_dir;
    let nas_folder = NasFolder::open(results_dir, &opts.ssh)?;
    if nas_folder.exists()? {
        // Renamed into place by a pull stopped before its bookkeeping.
        return adopt(store, record, &rendered, &nas_folder, opts);
    }
    let validation = validate(&rendered, run_dir, opts.validate_timeout)?;
    write_json(&run_dir.join("validation.json"), &validation)?;
    let timed_out_warning = run_dir.join(SIGNAL_MARKER).exists();

    let job_ok = observed.success;
    let incomplete = !(job_ok && validation.ok);
    // A pull in which nothing validates would publish nothing but logs as results: it is
    // refused even with --allow-partial.
    let nothing = incomplete && nothing_validates(&validation);
    if incomplete && (!opts.allow_partial || nothing) {
        let mut reasons = Vec::new();
        if !job_ok {
            reasons.push(format!(
                "compute job {job_id} ended {} (exit code {})",
                observed.facts.state,
                observed.facts.exit_code.as_deref().unwrap_or("unknown")
            ));
        }
        if !validation.ok {
            reasons.push(format!(
                "outputs did not validate: {}",
                summarize(&validation)
            ));
        }
        if nothing && opts.allow_partial {
            reasons.push(
                "no expected output validated, so there is nothing to pull even with \
                 --allow-partial"
                    .to_string(),
            );
        }
        let rejected = Rejected {
            reason: &reasons.join("; "),
            facts: &observed.facts,
            job_id,
            nothing,
        };
        return fail(store, record, &rejected, &nas_folder, opts, progress);
    }

    let parent = results_dir.parent().unwrap_or(results_dir);
    // Until the rename, only the NAS is written: a failure says so, and that scratch is
    // as it was.
    let nas = |e: hpcstage_staging::Error| nas_failure(results_dir, e);
    let name = results_dir
        .file_name()
        .map_or_else(|| record.id.clone(), |n| n.to_string_lossy().into_owned());
    // A local NAS gets the folder assembled next to its final place; a remote one gets it
    // assembled on scratch first, then uploaded (see `place_remote`).
    let partial = if nas_folder.remote().is_some() {
        outbox(run_dir, &name)
    } else {
        std::fs::create_dir_all(parent).map_err(|e| nas(hpcstage_staging::Error::io(parent, e)))?;
        parent.join(format!(".{name}.partial"))
    };
    // Exactly what the purge will remove stays behind: the same resolved paths, so that
    // nothing is left off the NAS and then purged from scratch.
    let intermediates: Vec<PathBuf> = rendered
        .outputs
        .intermediate_paths(run_dir)?
        .into_iter()
        .filter_map(|p| p.strip_prefix(run_dir).ok().map(Path::to_path_buf))
        .collect();
    let mut exclude: Vec<String> = vec![crate::chain::PULL_SCRIPT.to_string()];
    // The pull-back job's own log (and the local runner's) are being written while this
    // copy runs; they would fail the source-changed check and say nothing about results.
    exclude.push("logs/pull-*".to_string());
    exclude.push("logs/local-runner.log".to_string());
    let copy = CopyOptions {
        jobs: opts.jobs,
        preserve_mtime: true,
        use_source_manifest: false,
        filter: Filter::new(&[], &exclude)?.excluding_paths(intermediates),
        ..CopyOptions::default()
    };
    let report = match copy_tree(run_dir, &partial, &copy, progress) {
        Err(hpcstage_staging::Error::Locked { holder, .. }) => {
            return Err(Error::PullBusy {
                id: record.id.clone(),
                holder,
            })
        }
        other => other.map_err(nas)?,
    };
    if !report.ok() {
        let first = &report.failed[0];
        return Err(Error::Staging(hpcstage_staging::Error::io(
            &partial,
            std::io::Error::other(format!(
                "{} of {} files could not be copied to the NAS (first: {}: {}); scratch is untouched and the run can be pulled again",
                report.failed.len(),
                report.files_total,
                first.path.display(),
                first.error
            )),
        )));
    }

    let provenance = Provenance {
        run: record,
        compute_job_id: job_id.to_string(),
        compute_job: &observed.facts,
        array_size,
        earlier_compute_jobs: earlier_compute_jobs(view),
        model: crate::digests::model_info(record, run_dir),
        param_inputs: crate::digests::param_inputs(&rendered),
        gpus: gpu_lines(run_dir),
        validation: &validation,
        partial: incomplete,
        missing: if incomplete {
            missing_outputs(&validation, run_dir)
        } else {
            Vec::new()
        },
        timed_out_warning,
        pulled_at: Timestamp::now(),
        pulled_by: current_user(),
        pulled_on: hostname(),
        hpcstage_version: env!("CARGO_PKG_VERSION"),
    };
    let run_json = partial.join("run.json");
    let described = [
        (
            "run.json",
            json_bytes(&run_json, &provenance)
                .and_then(|bytes| write_verified(&run_json, &bytes))
                .map_err(nas)?,
        ),
        (
            "README.md",
            write_verified(
                &partial.join("README.md"),
                readme_text(&provenance, &rendered).as_bytes(),
            )
            .map_err(nas)?,
        ),
    ];
    let mut entries = report.manifest.entries.clone();
    entries.retain(|e| e.path != Path::new("run.json") && e.path != Path::new("README.md"));
    for (name, digest) in described {
        entries.push(ManifestEntry {
            path: name.into(),
            digest,
        });
    }
    let manifest = Manifest::from_entries(entries);
    manifest
        .write_atomic(&partial.join(MANIFEST_NAME))
        .map_err(nas)?;
    hpcstage_staging::place::prune_unlisted(&partial, &manifest).map_err(nas)?;
    let state = partial.join(STATE_DIR);
    std::fs::remove_dir_all(&state).map_err(|e| nas(hpcstage_staging::Error::io(&state, e)))?;

    let placed = match nas_folder.remote() {
        Some((remote, root)) => place_remote(remote, root, &partial, &manifest, opts, progress),
        None => hpcstage_staging::place::rename_noreplace(&partial, results_dir)
            .map_err(|e| hpcstage_staging::Error::io(results_dir, e)),
    };
    match placed {
        Ok(()) => {}
        Err(e) if already_exists(&e) => {
            // A results folder appeared meanwhile: ours stays hidden and goes; the one in
            // place is adopted only if it is this run's.
            let _ = hpcstage_staging::worm::make_writable(&partial);
            let _ = std::fs::remove_dir_all(&partial);
            return adopt(store, record, &rendered, &nas_folder, opts);
        }
        Err(e) => return Err(nas(e)),
    }
    let digest = manifest.digest().to_hex();
    let missing = incomplete.then(|| provenance.missing.clone());
    let purged = finish(
        store,
        record,
        &rendered,
        &nas_folder,
        opts,
        &digest,
        missing.clone(),
    )?;
    Ok(PullOutcome::Pulled {
        results_dir: results_dir.clone(),
        files: manifest.len() as u64,
        bytes: report.bytes_total,
        manifest_digest: digest,
        purged,
        partial: incomplete,
        missing: missing.unwrap_or_default(),
    })
}

/// Where a results folder for a remote NAS is assembled before its upload.
fn outbox(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(STATE_DIR).join("outbox").join(name)
}

fn already_exists(e: &hpcstage_staging::Error) -> bool {
    match e {
        hpcstage_staging::Error::Io { error: source, .. } => {
            source.kind() == std::io::ErrorKind::AlreadyExists
        }
        hpcstage_staging::Error::Remote { kind, .. } => *kind == RemoteErrorKind::AlreadyExists,
        _ => false,
    }
}

/// Uploads the folder assembled at `local` into the remote results folder: verified
/// files in a hidden folder next to it, checked against the local manifest (and with
/// `sha256sum -c` on the NAS host when asked), then one rename into place. The local copy
/// goes once the folder is in place.
fn place_remote(
    remote: &Remote,
    dest: &Path,
    local: &Path,
    manifest: &Manifest,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> std::result::Result<(), hpcstage_staging::Error> {
    let upload = remote.begin_upload(dest)?;
    let upload_opts = UploadOptions {
        preserve_mtime: true,
        remote_verify: opts.remote_verify,
        ..UploadOptions::default()
    };
    progress.phase("uploading");
    upload.put_tree(local, &upload_opts, progress)?;
    let sent = upload.manifest();
    if sent.digest() != manifest.digest() {
        return Err(hpcstage_staging::Error::Remote {
            path: remote.display(upload.tmp()),
            kind: RemoteErrorKind::Other,
            message: format!(
                "the uploaded files ({}) do not match the results manifest ({}); the hidden folder is kept and the next pull checks it again",
                sent.len(),
                manifest.len()
            ),
        });
    }
    upload.finish(opts.remote_verify)?;
    let _ = hpcstage_staging::worm::make_writable(local);
    std::fs::remove_dir_all(local).map_err(|e| hpcstage_staging::Error::io(local, e))?;
    Ok(())
}

/// An I/O failure while writing the results to the NAS, saying what it means for the run.
/// Other errors (no space, a lock) already say what to do and pass through.
fn nas_failure(results_dir: &Path, e: hpcstage_staging::Error) -> Error {
    match e {
        hpcstage_staging::Error::Io { .. } => Error::Staging(hpcstage_staging::Error::io(
            results_dir,
            std::io::Error::other(format!(
                "cannot write the results to the NAS ({e}); scratch is untouched and the run can be pulled again"
            )),
        )),
        other => Error::Staging(other),
    }
}

/// What follows a results folder in place, in an order a killed pull can resume:
/// write protection, purge of the intermediates, the run folder's marker, the ledger.
/// A partial pull (`--allow-partial` of a failed or invalid job, `partial` lists what is
/// missing) purges nothing: scratch of a failed job is left as it is, for whoever finds
/// out why.
fn finish(
    store: &RunStore,
    record: &RunRecord,
    rendered: &Rendered,
    nas_folder: &NasFolder,
    opts: &PullOptions,
    digest: &str,
    partial: Option<Vec<String>>,
) -> Result<Vec<PathBuf>> {
    let results_dir = &record.results_dir;
    if opts.worm {
        nas_folder.protect()?;
    }
    let purged = if partial.is_none() {
        purge_intermediates(rendered, record)?
    } else {
        Vec::new()
    };
    write_json(
        &record.run_dir.join(STATE_DIR).join(PULLED_MARKER),
        &PulledMarker {
            run_id: record.id.clone(),
            results_dir: results_dir.clone(),
            manifest_digest: digest.to_string(),
            pulled_at: Timestamp::now(),
            partial: partial.clone(),
        },
    )?;
    store.append(
        &record.id,
        Event::Pulled {
            results_dir: results_dir.clone(),
            manifest_digest: digest.to_string(),
            partial,
        },
    )?;
    Ok(purged)
}

/// Takes over a results folder already under its final name: it is complete (folders are
/// renamed into place only once verified) when its `run.json` names this run and every
/// file of its manifest is there. Anything else at that name is left alone.
fn adopt(
    store: &RunStore,
    record: &RunRecord,
    rendered: &Rendered,
    nas_folder: &NasFolder,
    opts: &PullOptions,
) -> Result<PullOutcome> {
    let results_dir = &record.results_dir;
    let not_ours = |why: String| Error::Record {
        path: results_dir.clone(),
        reason: format!(
            "the results folder exists but {why}; it was left as it is: move it away and pull again"
        ),
    };
    let provenance: serde_json::Value = nas_folder
        .read(Path::new("run.json"))
        .map_err(|e| e.to_string())
        .and_then(|b| b.ok_or_else(|| "it is missing".to_string()))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| not_ours(format!("its run.json cannot be read ({e})")))?;
    let owner = provenance["run"]["id"].as_str().unwrap_or_default();
    if owner != record.id {
        return Err(not_ours(format!("holds run {owner:?}, not {}", record.id)));
    }
    let manifest = nas_folder
        .manifest()
        .map_err(|e| e.to_string())
        .and_then(|m| m.ok_or_else(|| "it is missing".to_string()))
        .map_err(|e| not_ours(format!("its manifest cannot be read ({e})")))?;
    let sizes = nas_folder
        .file_sizes()
        .map_err(|e| not_ours(format!("it cannot be listed ({e})")))?;
    let mut bytes = 0;
    for entry in &manifest.entries {
        bytes += sizes.get(&entry.path).ok_or_else(|| {
            not_ours(format!(
                "{} of its manifest is missing",
                entry.path.display()
            ))
        })?;
    }
    let digest = manifest.digest().to_hex();
    let partial = provenance["partial"].as_bool().unwrap_or(false);
    let missing: Vec<String> = provenance["missing"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let purged = finish(
        store,
        record,
        rendered,
        nas_folder,
        opts,
        &digest,
        partial.then(|| missing.clone()),
    )?;
    Ok(PullOutcome::Pulled {
        results_dir: results_dir.clone(),
        files: manifest.len() as u64,
        bytes,
        manifest_digest: digest,
        purged,
        partial,
        missing,
    })
}

/// Checks the spec's expected outputs and runs its validation command.
pub fn validate(rendered: &Rendered, run_dir: &Path, timeout: Duration) -> Result<Validation> {
    let checks = rendered.check_outputs(run_dir)?;
    let command = rendered
        .outputs
        .validate
        .as_ref()
        .map(|cmd| run_validation(cmd, run_dir, timeout));
    let ok = checks.iter().all(|c| c.ok) && command.as_ref().is_none_or(|c| c.exit_code == Some(0));
    Ok(Validation {
        checks,
        command,
        ok,
    })
}

fn run_validation(cmd: &str, dir: &Path, timeout: Duration) -> CommandResult {
    let out_path = dir.join(STATE_DIR).join("validate.out");
    let result = (|| -> std::io::Result<(Option<i32>, bool)> {
        let out = std::fs::File::create(&out_path)?;
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg(cmd)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // Its own process group, so that a timeout stops what it started too.
        let mut child = own_group(&mut command).spawn()?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok((status.code(), false));
            }
            if started.elapsed() > timeout {
                kill_group(child.id());
                let _ = child.wait();
                return Ok((None, true));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })();
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let output: String = output.chars().take(4000).collect();
    match result {
        Ok((exit_code, timed_out)) => CommandResult {
            command: cmd.to_string(),
            exit_code,
            timed_out,
            output,
        },
        Err(e) => CommandResult {
            command: cmd.to_string(),
            exit_code: None,
            timed_out: false,
            output: format!("could not run the validation command: {e}"),
        },
    }
}

/// True when no expected output validated: no rule of one output per input matched a
/// file with content (the results themselves; a rule like the model's checksum, written
/// when the job starts, says nothing of them), or, without such rules, no rule did; and,
/// without any rules, the validation command failed.
fn nothing_validates(v: &Validation) -> bool {
    if v.checks.is_empty() {
        return !v.ok;
    }
    let per_input: Vec<&OutputCheck> = v
        .checks
        .iter()
        .filter(|c| matches!(c.expected, Expected::Exactly(_)))
        .collect();
    let rules = if per_input.is_empty() {
        v.checks.iter().collect()
    } else {
        per_input
    };
    rules
        .iter()
        .all(|c| c.matched.iter().all(|m| c.empty.contains(m)))
}

/// What a partial pull lacks: each output rule that failed, with how many matched, and
/// the inputs (of `.hpcstage/inputs.list`) none of whose outputs of that rule is there,
/// told by the input's name before its first dot (`img2.tif` → `masks/img2.ome.tif`).
fn missing_outputs(v: &Validation, run_dir: &Path) -> Vec<String> {
    // NUL-separated, as the render writes it.
    let listed = std::fs::read(run_dir.join(INPUTS_FILE)).unwrap_or_default();
    let inputs: Vec<String> = String::from_utf8_lossy(&listed)
        .split('\0')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let name = Path::new(l)
                .file_name()
                .map_or_else(|| l.to_string(), |n| n.to_string_lossy().into_owned());
            name.split('.').next().unwrap_or(&name).to_string()
        })
        .collect();
    let mut out = Vec::new();
    for c in v.checks.iter().filter(|c| !c.ok) {
        let good: Vec<&String> = c.matched.iter().filter(|m| !c.empty.contains(m)).collect();
        let stem = |m: &str| {
            let name = m.rsplit('/').next().unwrap_or(m);
            name.split('.').next().unwrap_or(name).to_string()
        };
        let have: std::collections::HashSet<String> = good.iter().map(|m| stem(m)).collect();
        let lacking: Vec<&String> = inputs.iter().filter(|i| !have.contains(*i)).collect();
        let mut line = format!("{}: {} of {}", c.glob, good.len(), expected(c.expected));
        if !c.empty.is_empty() {
            let _ = write!(line, "; empty: {}", c.empty.join(", "));
        }
        // Only when the rule is one output per input is an input without one a gap.
        if matches!(c.expected, Expected::Exactly(n) if n as usize == inputs.len())
            && !lacking.is_empty()
        {
            let names: Vec<&str> = lacking.iter().map(|s| s.as_str()).collect();
            let _ = write!(line, "; no output for input {}", names.join(", "));
        }
        out.push(line);
    }
    out.extend(command_failure(v));
    out
}

/// An output rule's expected count, in words.
fn expected(e: Expected) -> String {
    match e {
        Expected::AtLeast(n) => format!("at least {n}"),
        Expected::Exactly(n) => format!("{n}"),
    }
}

/// How the validation command failed, if it did.
fn command_failure(v: &Validation) -> Option<String> {
    let c = v.command.as_ref().filter(|c| c.exit_code != Some(0))?;
    Some(if c.timed_out {
        "validation command timed out".into()
    } else {
        match c.exit_code {
            Some(code) => format!("validation command exited {code}"),
            None => "validation command was killed by a signal".into(),
        }
    })
}

fn summarize(v: &Validation) -> String {
    let mut parts: Vec<String> = v
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| {
            let mut text = format!(
                "{} matched {} (expected {})",
                c.glob,
                c.matched.len(),
                expected(c.expected)
            );
            if !c.empty.is_empty() {
                let _ = write!(text, ", {} of them empty", c.empty.len());
            }
            if !c.invalid.is_empty() {
                let _ = write!(text, ", {} of them invalid", c.invalid.len());
            }
            // Each invalid output named with its reason (validation.json lists them all).
            for bad in c.invalid.iter().take(10) {
                let _ = write!(text, "; {}: {}", bad.path, bad.reason);
            }
            text
        })
        .collect();
    parts.extend(command_failure(v));
    parts.join("; ")
}

/// Why a run's results are not accepted, and the compute job's facts.
struct Rejected<'a> {
    reason: &'a str,
    facts: &'a JobFacts,
    job_id: &'a str,
    /// No expected output validated: `--allow-partial` has nothing to pull either.
    nothing: bool,
}

fn fail(
    store: &RunStore,
    record: &RunRecord,
    rejected: &Rejected<'_>,
    nas_folder: &NasFolder,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<PullOutcome> {
    let Rejected {
        reason,
        facts,
        job_id,
        nothing,
    } = *rejected;
    let results_parent = record.results_dir.parent().unwrap_or(&record.results_dir);
    let failed_dir = results_parent.join("_failed").join(&record.id);
    // On a remote NAS the folder is assembled on scratch, then uploaded.
    let remote_failed = nas_folder.remote().map(|(remote, root)| {
        let parent = root.parent().unwrap_or(root);
        (remote, parent.join("_failed").join(&record.id))
    });
    let (failed_dir, shown_dir) = match &remote_failed {
        Some((remote, dest)) => (
            outbox(&record.run_dir, &format!("_failed-{}", record.id)),
            remote.display(dest),
        ),
        None => (failed_dir.clone(), failed_dir),
    };
    let copy = CopyOptions {
        jobs: opts.jobs,
        preserve_mtime: true,
        use_source_manifest: false,
        filter: Filter::new(
            &[
                "logs/**".into(),
                "job.sbatch".into(),
                "validation.json".into(),
                "qc/**".into(),
            ],
            // The pull-back job's own log is still being written (see pull_finished).
            &["logs/pull-*".into(), "logs/local-runner.log".into()],
        )?,
        ..CopyOptions::default()
    };
    let report = copy_tree(&record.run_dir, &failed_dir, &copy, progress)
        .map_err(|e| nas_failure(&failed_dir, e))?;
    let mut text = format!(
        "# FAILED: run {id}\n\nThese are the logs of a run whose results were NOT accepted. \
         Nothing here is a validated result.\n\n- reason: {reason}\n- compute job: {job_id}, state {state}, exit code {exit}\n\
         - template: {template} {version}\n- scratch run folder (left as it was): {run_dir}\n",
        id = record.id,
        state = facts.state,
        exit = facts.exit_code.as_deref().unwrap_or("unknown"),
        template = record.template,
        version = record.template_version,
        run_dir = record.run_dir.display(),
    );
    let failed = crate::failures::failed_tasks(Some(facts), &record.run_dir);
    if !failed.is_empty() {
        let _ = writeln!(text, "- failed:");
        for t in &failed {
            let _ = writeln!(text, "  - {}", t.describe());
        }
    }
    if let Ok(signal) = std::fs::read_to_string(record.run_dir.join(SIGNAL_MARKER)) {
        let _ = writeln!(
            text,
            "- the job received its time-limit signal (USR1) before it ended; outputs may be partial:"
        );
        for line in signal.lines().filter(|l| !l.trim().is_empty()) {
            let _ = writeln!(text, "  - {}", line.trim());
        }
    }
    if nothing {
        let _ = writeln!(
            text,
            "\nNo expected output validated, so there is nothing to pull (`--allow-partial` is \
             refused too). After fixing the cause, re-run the failed tasks with `hpcstage retry \
             {id}`, or give the run up with `hpcstage dismiss {id}`.",
            id = record.id
        );
    } else {
        let _ = writeln!(
            text,
            "\nAfter fixing the cause, re-run the failed tasks with `hpcstage retry {id}`, pull what \
             there is with `hpcstage pull {id} --allow-partial`, or give the run up with \
             `hpcstage dismiss {id}`.",
            id = record.id
        );
    }
    let readme = write_verified(&failed_dir.join("README.md"), text.as_bytes())?;
    if !report.ok() {
        return Err(Error::Staging(hpcstage_staging::Error::io(
            &failed_dir,
            std::io::Error::other("some logs could not be copied"),
        )));
    }
    // Like a results folder: a manifest of everything, README included, and no
    // bookkeeping of the copy left on the NAS.
    let mut entries = report.manifest.entries.clone();
    entries.retain(|e| e.path != Path::new("README.md"));
    entries.push(ManifestEntry {
        path: "README.md".into(),
        digest: readme,
    });
    let manifest = Manifest::from_entries(entries);
    manifest.write_atomic(&failed_dir.join(MANIFEST_NAME))?;
    let state = failed_dir.join(STATE_DIR);
    match std::fs::remove_dir_all(&state) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(hpcstage_staging::Error::io(&state, e).into())
        }
        _ => {}
    }
    if let Some((remote, dest)) = &remote_failed {
        match place_remote(remote, dest, &failed_dir, &manifest, opts, progress) {
            // An earlier pull of this run left its logs there already.
            Err(e) if already_exists(&e) => {
                let _ = std::fs::remove_dir_all(&failed_dir);
            }
            other => other.map_err(|e| nas_failure(&shown_dir, e))?,
        }
    }
    store.append(
        &record.id,
        Event::PullFailed {
            reason: reason.to_string(),
        },
    )?;
    Ok(PullOutcome::Failed {
        failed_dir: shown_dir,
        reason: reason.to_string(),
    })
}

/// One line on the model's own metadata (`qc/model.json`, written by the ONNX predictor).
fn model_summary(m: &serde_json::Value) -> String {
    let text = |k: &str| m[k].as_str().unwrap_or("").to_string();
    let io = |k: &str| {
        m[k].as_array()
            .into_iter()
            .flatten()
            .map(|v| format!("{} {}", v["name"].as_str().unwrap_or("?"), v["shape"]))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let opset = m["opset"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| format!("{} {}", o["domain"].as_str().unwrap_or("?"), o["version"]))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "ONNX, producer {} {}, opset {opset}; inputs: {}; outputs: {}",
        text("producer_name"),
        text("producer_version"),
        io("inputs"),
        io("outputs")
    )
}

fn gpu_lines(run_dir: &Path) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(run_dir.join("qc"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("gpu"))
        })
        .collect();
    files.sort();
    let mut lines: Vec<String> = files
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| t.lines().map(|l| l.trim().to_string()).collect::<Vec<_>>())
        .filter(|l| !l.is_empty())
        .collect();
    lines.sort();
    lines.dedup();
    lines
}

fn readme_text(p: &Provenance<'_>, rendered: &Rendered) -> String {
    let r = p.run;
    let j = p.compute_job;
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".into());
    let mut t = String::new();
    if p.partial {
        let _ = writeln!(t, "# PARTIAL {} results: run {}\n", r.workflow, r.id);
        let _ = writeln!(
            t,
            "PARTIAL outputs of a `{}` job (pulled with `--allow-partial`): the job failed or \
             not every expected output validated. What is here was copied from scratch with \
             every file verified; check it with `sha256sum -c MANIFEST.sha256`.\n",
            r.template
        );
        let _ = writeln!(t, "## Missing\n");
        for m in &p.missing {
            let _ = writeln!(t, "- {m}");
        }
        let _ = writeln!(t);
    } else {
        let _ = writeln!(t, "# {} results: run {}\n", r.workflow, r.id);
        let _ = writeln!(
            t,
            "Validated outputs of a `{}` job, copied from scratch with every file verified. \
             Check them with `sha256sum -c MANIFEST.sha256`; `run.json` holds the same facts for programs.\n",
            r.template
        );
    }
    let _ = writeln!(t, "## Workflow\n");
    let _ = writeln!(
        t,
        "- template: {} version {}",
        r.template, r.template_version
    );
    let _ = writeln!(
        t,
        "- template hash (sha256 of spec and script): {}",
        r.template_hash
    );
    let _ = writeln!(t, "- hpcstage: {}", p.hpcstage_version);
    let _ = writeln!(t, "\n## Parameters\n");
    let params: BTreeMap<&String, String> = rendered
        .params
        .iter()
        .map(|(k, v)| {
            (
                k,
                serde_json::to_value(v)
                    .ok()
                    .and_then(|v| v.get("value").map(|x| x.to_string()))
                    .unwrap_or_default(),
            )
        })
        .collect();
    for (k, v) in params {
        let _ = writeln!(t, "- {k} = {v}");
    }
    let _ = writeln!(t, "\n## Input\n");
    let _ = writeln!(
        t,
        "- dataset: {} (NAS: {})",
        r.input.stage_id, r.input.source
    );
    let _ = writeln!(t, "- staged copy: {}", r.input.path.display());
    let _ = writeln!(t, "- manifest digest: {}", r.input.manifest_digest);
    if let Some(m) = &p.model {
        let _ = writeln!(t, "\n## Model\n");
        let _ = writeln!(t, "- path: {}", m.path);
        for d in &m.sha256 {
            let _ = writeln!(t, "- sha256: {}  {}", d.sha256, d.path);
        }
        if let Some(meta) = &m.metadata {
            let _ = writeln!(t, "- model: {} (qc/model.json)", model_summary(meta));
        }
    }
    if !p.param_inputs.is_empty() {
        let _ = writeln!(t, "\n## Files named by parameters\n");
        for i in &p.param_inputs {
            match &i.resolved {
                None => {
                    let _ = writeln!(t, "- {} = {}: not found when pulled", i.param, i.value);
                }
                Some(at) => {
                    let _ = writeln!(t, "- {} = {} ({}):", i.param, i.value, at.display());
                    for d in &i.files {
                        let _ = writeln!(t, "  - sha256: {}  {}", d.sha256, d.path);
                    }
                    for e in &i.unreadable {
                        let _ = writeln!(t, "  - unreadable: {e}");
                    }
                }
            }
        }
    }
    let _ = writeln!(t, "\n## Job\n");
    let _ = writeln!(t, "- executor: {:?}", r.executor);
    let _ = writeln!(t, "- job id: {}", p.compute_job_id);
    if let Some(n) = p.array_size {
        let _ = writeln!(t, "- array tasks: {n}");
    }
    for e in &p.earlier_compute_jobs {
        let done: Vec<&str> = e
            .tasks
            .iter()
            .filter(|(_, s)| s.as_str() == "COMPLETED")
            .map(|(k, _)| k.as_str())
            .collect();
        let _ = writeln!(
            t,
            "- retried after job {} ({}{}){}",
            e.job_id,
            e.state.as_deref().unwrap_or("state unknown"),
            e.exit_code
                .as_deref()
                .map(|c| format!(" exit {c}"))
                .unwrap_or_default(),
            if done.is_empty() {
                String::new()
            } else {
                format!(
                    ": outputs of its completed tasks {} are included",
                    done.join(", ")
                )
            }
        );
    }
    let _ = writeln!(t, "- state: {}", j.state);
    let _ = writeln!(
        t,
        "- exit code: {} (derived {})",
        opt(&j.exit_code),
        opt(&j.derived_exit_code)
    );
    let _ = writeln!(t, "- nodes: {}", opt(&j.nodes));
    let _ = writeln!(
        t,
        "- partition: {}, account: {}",
        opt(&j.partition),
        opt(&j.account)
    );
    let _ = writeln!(t, "- allocated TRES: {}", opt(&j.alloc_tres));
    let _ = writeln!(
        t,
        "- GPUs allocated: {}; model and driver (nvidia-smi in the job): {}",
        j.gpus.map_or("unknown".to_string(), |n| n.to_string()),
        if p.gpus.is_empty() {
            "not recorded".to_string()
        } else {
            p.gpus.join("; ")
        }
    );
    let _ = writeln!(
        t,
        "- start: {}, end: {}, elapsed: {} s",
        opt(&j.start),
        opt(&j.end),
        j.elapsed_secs.map_or("unknown".into(), |s| s.to_string())
    );
    let _ = writeln!(
        t,
        "- restarts: {}",
        j.restarts.map_or("unknown".into(), |n| n.to_string())
    );
    if p.timed_out_warning {
        let _ = writeln!(
            t,
            "- warning: the job received its time-limit signal (USR1) before it ended"
        );
    }
    let _ = writeln!(t, "\n## Provenance\n");
    let _ = writeln!(
        t,
        "- submitted by {} on {} at {}",
        r.owner, r.host, r.created_at
    );
    let _ = writeln!(
        t,
        "- pulled by {} on {} at {}",
        p.pulled_by, p.pulled_on, p.pulled_at
    );
    let _ = writeln!(
        t,
        "- validation: {}",
        if p.validation.ok {
            "all expected outputs present".to_string()
        } else {
            format!("PARTIAL: {}", summarize(p.validation))
        }
    );
    t
}

/// Removes the spec's intermediates from the run folder: never the input, never anything
/// outside the run folder.
fn purge_intermediates(rendered: &Rendered, record: &RunRecord) -> Result<Vec<PathBuf>> {
    let run_dir = std::fs::canonicalize(&record.run_dir)
        .map_err(|e| hpcstage_staging::Error::io(&record.run_dir, e))?;
    let input = std::fs::canonicalize(&record.input.path).unwrap_or(record.input.path.clone());
    let mut purged = Vec::new();
    for path in rendered.outputs.intermediate_paths(&record.run_dir)? {
        // The path itself, not what a link there points to: a link to masks/ must not
        // take masks/ with it.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let Some(parent) = path.parent().and_then(|p| std::fs::canonicalize(p).ok()) else {
            continue;
        };
        let real = parent.join(path.file_name().unwrap_or_default());
        if !real.starts_with(&run_dir) || real == run_dir || real.starts_with(&input) {
            continue;
        }
        let result = if meta.is_dir() {
            std::fs::remove_dir_all(&real)
        } else {
            std::fs::remove_file(&real)
        };
        result.map_err(|e| hpcstage_staging::Error::io(&real, e))?;
        purged.push(path);
    }
    Ok(purged)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// True while `pid` exists and is not a zombie.
    fn running(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
    }

    #[test]
    fn a_validation_command_past_its_timeout_is_stopped_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(STATE_DIR)).unwrap();
        let result = run_validation(
            "sleep 300 & echo $! > child.pid; wait",
            dir.path(),
            Duration::from_millis(500),
        );
        assert!(result.timed_out, "{result:?}");
        let child = std::fs::read_to_string(dir.path().join("child.pid")).unwrap();
        let child = child.trim();
        let started = Instant::now();
        while running(child) {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the validation command's child {child} outlived its timeout"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
