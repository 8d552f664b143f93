//! `hpcstage release`: a deposit-ready BagIt bag of a run, made only from what is verified
//! on the NAS (the results folder of a pulled run and the raw dataset it read).
//!
//! A run that was not pulled, or whose job failed, is refused: a release must never
//! publish results nobody validated. The bag is assembled in a hidden folder next to its
//! place (`<nas>/<PRJ>/release/<run>/`), every data file through the verified copy engine
//! (checked against the NAS manifests it comes from, read back from storage), every
//! generated file with `write_verified`; the finished bag is checked as `release verify`
//! checks it, and only then renamed into place, so a half-made bag never carries the
//! run's name. The payload is a function of the run and `release.toml` alone (sorted
//! inputs, no clock): a rerun gives the same payload bytes. Layout:
//! docs/ARCHITECTURE.md#release-bags.

mod assemble;
pub mod bag;
pub mod deposit;
pub mod meta;
pub mod ro_crate;

use std::path::{Path, PathBuf};

use hpcstage_staging::manifest::Manifest;
use hpcstage_staging::progress::Progress;
use hpcstage_staging::remote::Location;
use hpcstage_staging::storage;
use hpcstage_staging::walk::MANIFEST_NAME;
use serde::Serialize;

use crate::run::{Event, JobRole, Phase, RunView};
use meta::Kind;

/// Errors of a release.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The run cannot be released in the state it is in.
    #[error("run {id} cannot be released: {reason}")]
    Refused { id: String, reason: String },

    /// `release.toml` cannot be read or parsed.
    #[error("{path}: {reason}")]
    Metadata { path: PathBuf, reason: String },

    /// A required field of `release.toml` is missing or wrong.
    #[error("{path}: required field `{field}` is missing or invalid: {hint}")]
    MissingField {
        path: PathBuf,
        field: String,
        hint: String,
    },

    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        /// Printed in the message, not returned again as `source()`.
        error: std::io::Error,
    },

    /// The assembled bag failed its own check: it was not put in place.
    #[error("the bag assembled in {dir} failed its check ({}); it was not put in place", problems.join("; "))]
    Invalid { dir: PathBuf, problems: Vec<String> },

    /// A file on the NAS no longer matches the manifest it is listed in: nothing is
    /// released from damaged data.
    #[error(
        "{path}: {reason}; nothing was released (restore it from a backup, then release again)"
    )]
    Corrupt { path: PathBuf, reason: String },

    /// Something else is where the bag goes.
    #[error("{path} exists and is not a valid bag of run {id}; move it away or give another --to")]
    Occupied { path: PathBuf, id: String },
}

impl ReleaseError {
    /// True for an integrity failure (exit code 3): a damaged source, a bag that fails
    /// its own check.
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            ReleaseError::Corrupt { .. } | ReleaseError::Invalid { .. }
        )
    }

    pub(crate) fn io(path: PathBuf, source: std::io::Error) -> Self {
        ReleaseError::Io {
            path,
            error: source,
        }
    }
}

/// How to release.
#[derive(Debug, Clone)]
pub struct ReleaseOptions {
    /// Where the bag goes (default `<nas>/<PRJ>/release/<run>/`).
    pub dest: Option<PathBuf>,
    /// How many representative images (with their masks) go to the BioImage Archive part.
    pub sample: usize,
    /// The `release.toml` to read.
    pub metadata: PathBuf,
    /// Files copied in parallel.
    pub jobs: usize,
    /// The run's template as (file name, bytes), when the one installed still has the
    /// run's hash: spec and script go into the Zenodo part.
    pub template_files: Vec<(String, Vec<u8>)>,
}

/// What a release made.
#[derive(Debug, Clone, Serialize)]
pub struct Released {
    pub run_id: String,
    pub dir: PathBuf,
    /// A valid bag of the run was already there; nothing was written.
    pub existed: bool,
    pub files: u64,
    pub bytes: u64,
    /// The representative images in `data/bia/` (each with its mask).
    pub images: Vec<String>,
    /// Samples with an ENA manifest in `data/ena/`.
    pub ena_samples: Vec<String>,
}

/// The folder a run's bag goes to by default: `<nas>/<PRJ>/release/<run>/`, next to the
/// `results/` area its results folder is in.
pub fn default_dest(view: &RunView) -> Result<PathBuf, ReleaseError> {
    let r = &view.record;
    let project_dir = r
        .results_dir
        .parent()
        .and_then(Path::parent)
        .filter(|p| p.file_name().is_some_and(|n| n == "results"))
        .and_then(Path::parent);
    project_dir
        .map(|p| p.join("release").join(&r.id))
        .ok_or_else(|| ReleaseError::Refused {
            id: r.id.clone(),
            reason: format!(
                "its results folder {} is not under <nas>/<PRJ>/results/, so the release area is unknown; give --to DIR",
                r.results_dir.display()
            ),
        })
}

/// Refuses a run whose results are not pulled and verified on the NAS, or that failed.
/// Returns the digest of the results manifest the ledger recorded.
pub fn check_releasable(view: &RunView) -> Result<String, ReleaseError> {
    let r = &view.record;
    let refuse = |reason: String| ReleaseError::Refused {
        id: r.id.clone(),
        reason,
    };
    let job = view.job(JobRole::Compute);
    let state = job.and_then(|j| j.facts.as_ref()).map(|f| f.state.clone());
    match view.phase {
        Phase::Pulled => {}
        Phase::PullFailed => {
            return Err(refuse(
                "its results were not accepted (the pull failed or the job failed; see `hpcstage status RUN`)".into(),
            ))
        }
        Phase::Dismissed => return Err(refuse("it was dismissed".into())),
        _ => {
            return Err(refuse(format!(
                "its results were never pulled and verified on the NAS ({}); run `hpcstage pull {}` first",
                match &state {
                    Some(s) => format!("compute job {s}"),
                    None => "no job state recorded".to_string(),
                },
                r.id
            )))
        }
    }
    if let Some(missing) = &view.partial {
        return Err(refuse(format!(
            "it failed: it was pulled with --allow-partial and lacks {}",
            missing.join("; ")
        )));
    }
    if let Some(s) = state.filter(|s| s != "COMPLETED") {
        return Err(refuse(format!("its compute job ended {s}")));
    }
    if let Some(kind) = not_mounted(&r.results_dir) {
        return Err(refuse(format!(
            "its results are on {kind} ({}); release reads them from a mounted NAS",
            r.results_dir.display()
        )));
    }
    if let Some(kind) =
        not_mounted(Path::new(&r.input.source)).filter(|_| Kind::of(r) == Kind::Imaging)
    {
        return Err(refuse(format!(
            "its dataset is on {kind} ({}); release reads the images from a mounted NAS",
            r.input.source
        )));
    }
    let recorded = view
        .events
        .iter()
        .rev()
        .find_map(|e| match &e.event {
            Event::Pulled {
                manifest_digest, ..
            } => Some(manifest_digest.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let manifest_path = r.results_dir.join(MANIFEST_NAME);
    let manifest = Manifest::read(&manifest_path).map_err(|e| {
        refuse(format!(
            "its results manifest cannot be read ({e}); the results on the NAS are not as pulled"
        ))
    })?;
    let digest = manifest.digest().to_hex();
    if digest != recorded {
        return Err(refuse(format!(
            "{} changed since the pull (digest {digest}, recorded {recorded})",
            manifest_path.display()
        )));
    }
    Ok(digest)
}

/// Releases the run of `view`.
pub fn release(
    view: &RunView,
    opts: &ReleaseOptions,
    progress: &dyn Progress,
) -> Result<Released, crate::Error> {
    let results_digest = check_releasable(view)?;
    let record = &view.record;
    let kind = Kind::of(record);
    let meta = meta::read(&opts.metadata, kind)?;
    let dest = match &opts.dest {
        Some(d) => d.clone(),
        None => default_dest(view)?,
    };
    let parent = dest.parent().unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .map_or_else(|| record.id.clone(), |n| n.to_string_lossy().into_owned());
    std::fs::create_dir_all(parent).map_err(|e| ReleaseError::io(parent.to_path_buf(), e))?;
    let lock_path = parent.join(format!(".{name}.release.lock"));
    let _lock =
        match hpcstage_staging::lock::try_lock(&lock_path, &hpcstage_staging::lock::holder())? {
            hpcstage_staging::lock::TryLock::Held(l) => Some(l),
            hpcstage_staging::lock::TryLock::Busy(holder) => {
                return Err(ReleaseError::Refused {
                    id: record.id.clone(),
                    reason: format!("another release of it is under way ({holder})"),
                }
                .into())
            }
            hpcstage_staging::lock::TryLock::Unsupported(_) => None,
        };
    let empty = std::fs::read_dir(&dest).is_ok_and(|mut d| d.next().is_none());
    if empty {
        // An empty folder given with --to takes the bag (renamed into its place).
        std::fs::remove_dir(&dest).map_err(|e| ReleaseError::io(dest.clone(), e))?;
    }
    if dest.exists() {
        let check = bag::verify(&dest)?;
        let ours = std::fs::read_to_string(dest.join(bag::BAG_INFO)).is_ok_and(|t| {
            t.lines()
                .any(|l| l == format!("External-Identifier: {}", record.id))
        });
        if check.ok() && ours {
            return Ok(Released {
                run_id: record.id.clone(),
                dir: dest,
                existed: true,
                files: check.files,
                bytes: check.bytes,
                images: Vec::new(),
                ena_samples: Vec::new(),
            });
        }
        return Err(ReleaseError::Occupied {
            path: dest,
            id: record.id.clone(),
        }
        .into());
    }
    let hidden = parent.join(format!(".{name}.partial"));
    if hidden.exists() {
        // What an interrupted release left: made again from the NAS.
        let _ = hpcstage_staging::worm::make_writable(&hidden);
        std::fs::remove_dir_all(&hidden).map_err(|e| ReleaseError::io(hidden.clone(), e))?;
    }
    let assembled = assemble::assemble(view, &meta, kind, &results_digest, opts, &hidden, progress);
    let released = match assembled {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&hidden);
            return Err(e);
        }
    };
    hpcstage_staging::place::rename_noreplace(&hidden, &dest)
        .map_err(|e| ReleaseError::io(dest.clone(), e))?;
    Ok(Released {
        dir: dest,
        ..released
    })
}

/// What kind of place `path` is when it is not a folder of this machine (release reads
/// files where the NAS is mounted).
fn not_mounted(path: &Path) -> Option<hpcstage_staging::remote::LocationKind> {
    let location = Location::parse(path.as_os_str()).ok()?;
    storage::local_folder(&location).err()
}
