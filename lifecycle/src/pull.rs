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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hpcstage_slurm::template::{OutputCheck, Rendered, SIGNAL_MARKER};
use hpcstage_staging::copy::{copy_tree, CopyOptions};
use hpcstage_staging::hash::hash_file;
use hpcstage_staging::manifest::{Manifest, ManifestEntry};
use hpcstage_staging::progress::Progress;
use hpcstage_staging::record::{current_user, hostname, read_json, write_json};
use hpcstage_staging::walk::{Filter, MANIFEST_NAME, STATE_DIR};
use jiff::Timestamp;
use nix::fcntl::{renameat2, RenameFlags};
use serde::Serialize;

use crate::backend::{Backend, Observed};
use crate::chain::RENDERED_FILE;
use crate::error::{Error, Result};
use crate::report::PulledMarker;
use crate::run::{Event, JobFacts, JobRole, Phase, RunRecord, RunStore, RunView};

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
        }
    }
}

/// What a pull did.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum PullOutcome {
    /// The run was pulled before; nothing was done.
    AlreadyPulled { results_dir: PathBuf },
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
    pub model: Option<ModelInfo>,
    pub gpus: Vec<String>,
    pub validation: &'a Validation,
    pub timed_out_warning: bool,
    pub pulled_at: Timestamp,
    pub pulled_by: String,
    pub pulled_on: String,
    pub hpcstage_version: &'static str,
}

/// The model a run used and its fingerprint.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub path: String,
    /// `sha256sum` lines of the model file(s), as the job recorded them.
    pub sha256: Vec<String>,
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
    if let Some(done) = already_pulled(&view) {
        return Ok(PullOutcome::AlreadyPulled { results_dir: done });
    }
    let job = view.job(JobRole::Compute).ok_or_else(|| Error::NoJob {
        id: id.to_string(),
        role: "compute".into(),
    })?;
    let observed = final_state(id, &job.job_id, backend, opts)?;
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
    result
}

fn already_pulled(view: &RunView) -> Option<PathBuf> {
    let results = &view.record.results_dir;
    let marker = view.record.run_dir.join(STATE_DIR).join("pulled.json");
    let pulled = view.phase == Phase::Pulled || marker.is_file();
    (pulled && results.join(MANIFEST_NAME).is_file()).then(|| results.clone())
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
    let validation = validate(&rendered, run_dir, opts.validate_timeout)?;
    write_json(&run_dir.join("validation.json"), &validation)?;
    let timed_out_warning = run_dir.join(SIGNAL_MARKER).exists();

    let job_ok = observed.success;
    if !(opts.allow_partial || job_ok && validation.ok) {
        let reason = if !job_ok {
            format!(
                "compute job {job_id} ended {} (exit code {})",
                observed.facts.state,
                observed.facts.exit_code.as_deref().unwrap_or("unknown")
            )
        } else {
            format!("outputs did not validate: {}", summarize(&validation))
        };
        return fail(
            store,
            record,
            &reason,
            &observed.facts,
            job_id,
            opts,
            progress,
        );
    }

    let results_dir = &record.results_dir;
    let parent = results_dir.parent().unwrap_or(results_dir);
    std::fs::create_dir_all(parent).map_err(|e| hpcstage_staging::Error::io(parent, e))?;
    let name = results_dir
        .file_name()
        .map_or_else(|| record.id.clone(), |n| n.to_string_lossy().into_owned());
    let partial = parent.join(format!(".{name}.partial"));
    let mut exclude: Vec<String> = rendered
        .outputs
        .intermediates
        .iter()
        .map(|g| g.trim_end_matches('/').to_string())
        .collect();
    exclude.push(crate::chain::PULL_SCRIPT.to_string());
    // The pull-back job's own log (and the local runner's) are being written while this
    // copy runs; they would fail the source-changed check and say nothing about results.
    exclude.push("logs/pull-*".to_string());
    exclude.push("logs/local-runner.log".to_string());
    let copy = CopyOptions {
        jobs: opts.jobs,
        preserve_mtime: true,
        use_source_manifest: false,
        filter: Filter::new(&[], &exclude)?,
        ..CopyOptions::default()
    };
    let report = match copy_tree(run_dir, &partial, &copy, progress) {
        Err(hpcstage_staging::Error::Locked { pid, .. }) => {
            return Err(Error::PullBusy {
                id: record.id.clone(),
                holder: format!("pid {pid}"),
            })
        }
        other => other?,
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
        model: model_info(record, run_dir),
        gpus: gpu_lines(run_dir),
        validation: &validation,
        timed_out_warning,
        pulled_at: Timestamp::now(),
        pulled_by: current_user(),
        pulled_on: hostname(),
        hpcstage_version: env!("CARGO_PKG_VERSION"),
    };
    write_json(&partial.join("run.json"), &provenance)?;
    let readme = partial.join("README.md");
    std::fs::write(&readme, readme_text(&provenance, &rendered))
        .map_err(|e| hpcstage_staging::Error::io(&readme, e))?;
    let mut entries = report.manifest.entries.clone();
    entries.retain(|e| e.path != Path::new("run.json") && e.path != Path::new("README.md"));
    for extra in ["run.json", "README.md"] {
        let (digest, _) = hash_file(&partial.join(extra))?;
        entries.push(ManifestEntry {
            path: extra.into(),
            digest,
        });
    }
    let manifest = Manifest::from_entries(entries);
    manifest.write_atomic(&partial.join(MANIFEST_NAME))?;
    let state = partial.join(STATE_DIR);
    std::fs::remove_dir_all(&state).map_err(|e| hpcstage_staging::Error::io(&state, e))?;

    match renameat2(
        None,
        &partial,
        None,
        results_dir,
        RenameFlags::RENAME_NOREPLACE,
    ) {
        Ok(()) => {}
        Err(nix::errno::Errno::EEXIST) | Err(nix::errno::Errno::ENOTEMPTY) => {
            // Another pull finished first; its folder stands, ours goes.
            let _ = hpcstage_staging::worm::make_writable(&partial);
            let _ = std::fs::remove_dir_all(&partial);
            return Ok(PullOutcome::AlreadyPulled {
                results_dir: results_dir.clone(),
            });
        }
        Err(e) => {
            return Err(Error::Staging(hpcstage_staging::Error::io(
                results_dir,
                std::io::Error::from(e),
            )))
        }
    }
    if opts.worm {
        hpcstage_staging::worm::protect(results_dir, false)?;
    }
    let digest = manifest.digest().to_hex();
    write_json(
        &run_dir.join(STATE_DIR).join("pulled.json"),
        &PulledMarker {
            run_id: record.id.clone(),
            results_dir: results_dir.clone(),
            manifest_digest: digest.clone(),
            pulled_at: Timestamp::now(),
        },
    )?;
    store.append(
        &record.id,
        Event::Pulled {
            results_dir: results_dir.clone(),
            manifest_digest: digest.clone(),
        },
    )?;
    let purged = purge_intermediates(&rendered, record)?;
    Ok(PullOutcome::Pulled {
        results_dir: results_dir.clone(),
        files: manifest.len() as u64,
        bytes: report.bytes_total,
        manifest_digest: digest,
        purged,
        partial: !(job_ok && validation.ok),
    })
}

/// Checks the spec's expected outputs and runs its validation command.
pub fn validate(rendered: &Rendered, run_dir: &Path, timeout: Duration) -> Result<Validation> {
    let checks = rendered.outputs.check(run_dir)?;
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
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(cmd)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok((status.code(), false));
            }
            if started.elapsed() > timeout {
                let _ = child.kill();
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

fn summarize(v: &Validation) -> String {
    let mut parts: Vec<String> = v
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| {
            format!(
                "{} matched {} (expected {:?})",
                c.glob,
                c.matched.len(),
                c.expected
            )
        })
        .collect();
    if let Some(c) = &v.command {
        if c.exit_code != Some(0) {
            parts.push(if c.timed_out {
                "validation command timed out".into()
            } else {
                format!("validation command exited {:?}", c.exit_code)
            });
        }
    }
    parts.join("; ")
}

fn fail(
    store: &RunStore,
    record: &RunRecord,
    reason: &str,
    facts: &JobFacts,
    job_id: &str,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<PullOutcome> {
    let results_parent = record.results_dir.parent().unwrap_or(&record.results_dir);
    let failed_dir = results_parent.join("_failed").join(&record.id);
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
            &[],
        )?,
        ..CopyOptions::default()
    };
    let report = copy_tree(&record.run_dir, &failed_dir, &copy, progress)?;
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
    let _ = writeln!(
        text,
        "\nAfter fixing the cause, resubmit, or pull what there is with `hpcstage pull {} --allow-partial`.",
        record.id
    );
    let readme = failed_dir.join("README.md");
    std::fs::write(&readme, text).map_err(|e| hpcstage_staging::Error::io(&readme, e))?;
    if !report.ok() {
        return Err(Error::Staging(hpcstage_staging::Error::io(
            &failed_dir,
            std::io::Error::other("some logs could not be copied"),
        )));
    }
    store.append(
        &record.id,
        Event::PullFailed {
            reason: reason.to_string(),
        },
    )?;
    Ok(PullOutcome::Failed {
        failed_dir,
        reason: reason.to_string(),
    })
}

fn model_info(record: &RunRecord, run_dir: &Path) -> Option<ModelInfo> {
    let path = record.params.get("model")?.clone();
    let sha256 = std::fs::read_to_string(run_dir.join("qc/model.sha256"))
        .map(|t| t.lines().map(str::to_string).collect())
        .unwrap_or_else(|_| match hash_file(Path::new(&path)) {
            Ok((d, _)) => vec![format!("{d}  {path}")],
            Err(_) => Vec::new(),
        });
    Some(ModelInfo { path, sha256 })
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
    let _ = writeln!(t, "# {} results: run {}\n", r.workflow, r.id);
    let _ = writeln!(
        t,
        "Validated outputs of a `{}` job, copied from scratch with every file verified. \
         Check them with `sha256sum -c MANIFEST.sha256`; `run.json` holds the same facts for programs.\n",
        r.template
    );
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
        for line in &m.sha256 {
            let _ = writeln!(t, "- sha256: {line}");
        }
    }
    let _ = writeln!(t, "\n## Job\n");
    let _ = writeln!(t, "- executor: {:?}", r.executor);
    let _ = writeln!(t, "- job id: {}", p.compute_job_id);
    if let Some(n) = p.array_size {
        let _ = writeln!(t, "- array tasks: {n}");
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
        let Ok(real) = std::fs::canonicalize(&path) else {
            continue;
        };
        if !real.starts_with(&run_dir) || real == run_dir || real.starts_with(&input) {
            continue;
        }
        let result = if real.is_dir() {
            std::fs::remove_dir_all(&real)
        } else {
            std::fs::remove_file(&real)
        };
        result.map_err(|e| hpcstage_staging::Error::io(&real, e))?;
        purged.push(path);
    }
    Ok(purged)
}
