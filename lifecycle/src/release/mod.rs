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

pub mod bag;
pub mod deposit;
pub mod meta;
pub mod ro_crate;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hpcstage_staging::copy::{copy_tree, CopyOptions, FailureKind};
use hpcstage_staging::manifest::{write_verified, Manifest};
use hpcstage_staging::progress::Progress;
use hpcstage_staging::remote::NasFolder;
use hpcstage_staging::walk::{Filter, MANIFEST_NAME, STATE_DIR};
use serde::Serialize;

use crate::run::{Event, JobRole, Phase, RunView};
use deposit::Pair;
use meta::{Kind, Metadata};
use ro_crate::{Part, Role};

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

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
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
        ReleaseError::Io { path, source }
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
    if NasFolder::is_remote_path(&r.results_dir) {
        return Err(refuse(format!(
            "its results are on a NAS reached over SSH ({}); release reads them from a mounted NAS",
            r.results_dir.display()
        )));
    }
    if Kind::of(r) == Kind::Imaging && NasFolder::is_remote_path(Path::new(&r.input.source)) {
        return Err(refuse(format!(
            "its dataset is on a NAS reached over SSH ({}); release reads the images from a mounted NAS",
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
    let hidden = parent.join(format!(".{name}.partial"));
    if hidden.exists() {
        // What an interrupted release left: made again from the NAS.
        let _ = hpcstage_staging::worm::make_writable(&hidden);
        std::fs::remove_dir_all(&hidden).map_err(|e| ReleaseError::io(hidden.clone(), e))?;
    }
    let assembled = assemble(view, &meta, kind, &results_digest, opts, &hidden, progress);
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

/// Builds the whole bag in `hidden` and checks it.
fn assemble(
    view: &RunView,
    meta: &Metadata,
    kind: Kind,
    results_digest: &str,
    opts: &ReleaseOptions,
    hidden: &Path,
    progress: &dyn Progress,
) -> Result<Released, crate::Error> {
    let record = &view.record;
    let results = &record.results_dir;
    let data = hidden.join("data");
    let copy = |src: &Path, dest: &Path, filter: Filter| -> Result<(), crate::Error> {
        let opts = CopyOptions {
            jobs: opts.jobs.max(1),
            preserve_mtime: true,
            use_source_manifest: true,
            filter,
            ..CopyOptions::default()
        };
        let report = copy_tree(src, dest, &opts, progress)?;
        if let Some(bad) = report.failed.iter().find(|f| {
            matches!(
                f.kind,
                FailureKind::SourceCorrupt | FailureKind::VerifyFailed
            )
        }) {
            return Err(ReleaseError::Corrupt {
                path: src.join(&bad.path),
                reason: bad.error.to_string(),
            }
            .into());
        }
        if let Some(first) = report.failed.first() {
            return Err(ReleaseError::io(
                src.join(&first.path),
                std::io::Error::other(format!(
                    "{} of {} files could not be copied into the bag (first: {})",
                    report.failed.len(),
                    report.files_total,
                    first.error
                )),
            )
            .into());
        }
        if let Some(unlisted) = report.unlisted_in_source.first() {
            return Err(ReleaseError::io(
                src.join(unlisted),
                std::io::Error::other(
                    "not listed in the NAS manifest of its folder, so it is not verified data",
                ),
            )
            .into());
        }
        for leftover in [dest.join(MANIFEST_NAME), dest.join(STATE_DIR)] {
            let gone = if leftover.is_dir() {
                std::fs::remove_dir_all(&leftover)
            } else {
                std::fs::remove_file(&leftover)
            };
            gone.map_err(|e| ReleaseError::io(leftover.clone(), e))?;
        }
        Ok(())
    };
    let write = |rel: &str, bytes: &[u8]| -> Result<(), crate::Error> {
        let path = data.join(rel);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).map_err(|e| ReleaseError::io(p.to_path_buf(), e))?;
        }
        write_verified(&path, bytes)?;
        Ok(())
    };

    progress.phase("copying results");
    let zenodo_globs = [
        "tables/**",
        "qc/**",
        "/job.sbatch",
        "/README.md",
        "/run.json",
    ];
    let zenodo_files = Manifest::read(&results.join(MANIFEST_NAME))?;
    let zenodo_paths: Vec<PathBuf> = zenodo_files
        .entries
        .iter()
        .map(|e| e.path.clone())
        .filter(|p| {
            let s = p.to_string_lossy();
            zenodo_globs.iter().any(|g| match g.strip_prefix('/') {
                Some(exact) => s == exact,
                None => s.starts_with(g.trim_end_matches("**")),
            })
        })
        .collect();
    copy(
        results,
        &data.join("zenodo"),
        Filter::only_paths(zenodo_paths),
    )?;
    let mut template_parts = Vec::new();
    for (file, bytes) in &opts.template_files {
        let rel = format!("zenodo/template/{file}");
        write(&rel, bytes)?;
        template_parts.push(rel);
    }

    let provenance: serde_json::Value = std::fs::read(results.join("run.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();

    let mut images = Vec::new();
    let mut masks: HashMap<String, String> = HashMap::new();
    if kind == Kind::Imaging {
        progress.phase("copying images");
        let pairs = pairs(record, &zenodo_files)?;
        let chosen = deposit::representative(pairs, opts.sample);
        copy(
            Path::new(&record.input.source),
            &data.join("bia/images"),
            Filter::only_paths(chosen.iter().map(|p| PathBuf::from(&p.image))),
        )?;
        copy(
            results,
            &data.join("bia"),
            Filter::only_paths(chosen.iter().map(|p| PathBuf::from(&p.mask))),
        )?;
        write(
            "bia/files.tsv",
            deposit::bia_file_list(&chosen, "images", "masks").as_bytes(),
        )?;
        write(
            "bia/study-rembi.tsv",
            deposit::rembi_study(meta, record, chosen.len()).as_bytes(),
        )?;
        for p in &chosen {
            masks.insert(format!("bia/{}", p.mask), p.image.clone());
        }
        images = chosen.into_iter().map(|p| p.image).collect();
    }
    let mut ena_samples = Vec::new();
    if kind == Kind::Sequencing {
        progress.phase("copying reads");
        let bams: Vec<PathBuf> = zenodo_files
            .entries
            .iter()
            .map(|e| e.path.clone())
            .filter(|p| {
                p.starts_with("bam") && p.extension().is_some_and(|x| x == "bam" || x == "cram")
            })
            .collect();
        copy(results, &data.join("ena"), Filter::only_paths(bams.clone()))?;
        let mut md5s = String::new();
        for bam in &bams {
            let file_name = bam
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let sample = file_name
                .split('.')
                .next()
                .unwrap_or(&file_name)
                .to_string();
            let field = if file_name.ends_with(".cram") {
                "CRAM"
            } else {
                "BAM"
            };
            let rel = bam.to_string_lossy().into_owned();
            write(
                &format!("ena/{sample}.manifest.txt"),
                deposit::ena_manifest(meta, record, &sample, field, &rel).as_bytes(),
            )?;
            let path = data.join("ena").join(bam);
            let md5 = md5_file(&path).map_err(|e| ReleaseError::io(path.clone(), e))?;
            md5s.push_str(&format!("{md5}  {rel}\n"));
            ena_samples.push(sample);
        }
        write("ena/MD5SUMS", md5s.as_bytes())?;
    }

    write("zenodo/.zenodo.json", &deposit::zenodo_json(meta))?;
    write(
        "zenodo/CITATION.cff",
        deposit::citation_cff(meta, record).as_bytes(),
    )?;

    progress.phase("describing");
    // The copies keep the folders their filters left empty; a bag holds files.
    remove_empty_dirs(&data)?;
    let payload = bag::hash_payload(hidden)?;
    let parts: Vec<Part> = payload
        .iter()
        .map(|f| {
            let rel = f.rel.trim_start_matches("data/");
            let (role, description) = describe(rel, &masks, &template_parts);
            Part::new(f, role, description)
        })
        .collect();
    let crate_json = ro_crate::build(&ro_crate::CrateInput {
        record,
        provenance: &provenance,
        meta,
        parts: &parts,
        results_digest,
        template_files: &template_parts,
    });
    write(ro_crate::METADATA_FILE, &crate_json)?;

    let payload = bag::hash_payload(hidden)?;
    let contact = meta.meta.authors.first().map(meta::Author::full_name);
    let info = bag::BagInfo {
        source_organization: meta.organization(),
        external_identifier: record.id.clone(),
        external_description: meta.title().to_string(),
        contact_name: contact,
        bagging_date: jiff::Zoned::now().strftime("%Y-%m-%d").to_string(),
    };
    for (name, bytes) in bag::tag_files(&payload, &info) {
        write_verified(&hidden.join(name), &bytes)?;
    }
    progress.phase("checking the bag");
    let check = bag::verify(hidden)?;
    if !check.ok() {
        return Err(ReleaseError::Invalid {
            dir: hidden.to_path_buf(),
            problems: check.problems,
        }
        .into());
    }
    Ok(Released {
        run_id: record.id.clone(),
        dir: hidden.to_path_buf(),
        existed: false,
        files: check.files,
        bytes: check.bytes,
        images,
        ena_samples,
    })
}

/// Each mask of the results (`masks/...` with a TIFF name) with the dataset image of the
/// same stem (as the pull paired them to check their shapes).
fn pairs(record: &crate::run::RunRecord, results: &Manifest) -> Result<Vec<Pair>, crate::Error> {
    let raw = Manifest::read(&Path::new(&record.input.source).join(MANIFEST_NAME))?;
    let is_tiff = |p: &str| {
        let l = p.to_ascii_lowercase();
        l.ends_with(".tif") || l.ends_with(".tiff")
    };
    let by_stem: HashMap<String, String> = raw
        .entries
        .iter()
        .map(|e| e.path.to_string_lossy().into_owned())
        .filter(|p| is_tiff(p))
        .map(|p| (hpcstage_slurm::template::input_stem(&p), p))
        .collect();
    Ok(results
        .entries
        .iter()
        .map(|e| e.path.to_string_lossy().into_owned())
        .filter(|p| p.starts_with("masks/") && is_tiff(p))
        .filter_map(|mask| {
            let stem = hpcstage_slurm::template::input_stem(&mask["masks/".len()..]);
            by_stem.get(&stem).map(|image| Pair {
                image: image.clone(),
                mask,
            })
        })
        .collect())
}

/// The role and description of a payload file in the crate.
fn describe(rel: &str, masks: &HashMap<String, String>, template: &[String]) -> (Role, String) {
    if let Some(image) = masks.get(rel) {
        return (Role::Output, format!("Label mask of {image}"));
    }
    if let Some(image) = rel.strip_prefix("bia/images/") {
        return (Role::Input, format!("Image {image} of the input dataset"));
    }
    if template.iter().any(|t| t == rel) {
        return (
            Role::Script,
            "The job template (spec and script) as installed".into(),
        );
    }
    match rel {
        "zenodo/job.sbatch" => (Role::Script, "The rendered SLURM job script".into()),
        "zenodo/run.json" => (
            Role::Description,
            "Provenance of the results, as pulled (machine-readable)".into(),
        ),
        "zenodo/README.md" => (
            Role::Description,
            "Provenance of the results, as pulled".into(),
        ),
        "zenodo/.zenodo.json" => (Role::Description, "Zenodo deposit metadata".into()),
        "zenodo/CITATION.cff" => (
            Role::Description,
            "How to cite these data (Citation File Format 1.2.0)".into(),
        ),
        "bia/files.tsv" => (Role::Description, "BioImage Archive file list".into()),
        "bia/study-rembi.tsv" => (
            Role::Description,
            "BioImage Archive study, in REMBI sections".into(),
        ),
        "ena/MD5SUMS" => (
            Role::Description,
            "MD5 of the read files, as ENA checks them".into(),
        ),
        _ if rel.starts_with("ena/") && rel.ends_with(".manifest.txt") => (
            Role::Description,
            "ENA Webin-CLI read submission manifest".into(),
        ),
        _ if rel.starts_with("ena/") => (Role::Output, "Aligned reads".into()),
        _ if rel.starts_with("zenodo/tables/") => (Role::Output, "Measurement table".into()),
        _ if rel.starts_with("zenodo/qc/") => (Role::Output, "Quality control".into()),
        _ => (Role::Output, "Result of the run".into()),
    }
}

/// Removes every empty folder under `dir` (not `dir`).
fn remove_empty_dirs(dir: &Path) -> Result<(), ReleaseError> {
    for entry in walkdir::WalkDir::new(dir).min_depth(1).contents_first(true) {
        let entry = entry.map_err(|e| ReleaseError::io(dir.to_path_buf(), e.into()))?;
        if entry.file_type().is_dir() {
            let path = entry.path();
            let empty = std::fs::read_dir(path)
                .map_err(|e| ReleaseError::io(path.to_path_buf(), e))?
                .next()
                .is_none();
            if empty {
                std::fs::remove_dir(path).map_err(|e| ReleaseError::io(path.to_path_buf(), e))?;
            }
        }
    }
    Ok(())
}

fn md5_file(path: &Path) -> std::io::Result<String> {
    use md5::Digest as _;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = md5::Md5::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}
