//! Assembling a bag in its hidden folder: each part of the payload copied or written,
//! then described (the RO-Crate), then bagged and checked. `release` in `mod.rs` decides
//! whether and where; this file only builds. Data files come only through the verified copy
//! engine, from a NAS folder whose manifest lists them; files written here go through
//! `write_verified`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hpcstage_staging::copy::{copy_tree, CopyOptions, FailureKind};
use hpcstage_staging::manifest::{write_verified, Manifest};
use hpcstage_staging::progress::Progress;
use hpcstage_staging::walk::{Filter, MANIFEST_NAME, STATE_DIR};

use super::deposit::{self, Pair};
use super::meta::{self, Kind, Metadata};
use super::ro_crate::{self, Part, Role};
use super::{bag, ReleaseError, ReleaseOptions, Released};
use crate::run::{RunRecord, RunView};

/// Where the payload is being built, and how to copy into it.
struct Payload<'a> {
    data: PathBuf,
    jobs: usize,
    progress: &'a dyn Progress,
}

impl Payload<'_> {
    /// Copies `paths` (relative to `src`, listed in its NAS manifest) to `data/<dest>/`,
    /// each checked against that manifest and read back. A file that does not match its
    /// manifest is [`ReleaseError::Corrupt`]; one it does not list stops the release too.
    fn copy(
        &self,
        src: &Path,
        dest: &str,
        paths: impl IntoIterator<Item = PathBuf>,
    ) -> Result<(), crate::Error> {
        let dest = self.data.join(dest);
        let opts = CopyOptions {
            jobs: self.jobs.max(1),
            preserve_mtime: true,
            use_source_manifest: true,
            filter: Filter::only_paths(paths),
            ..CopyOptions::default()
        };
        let report = copy_tree(src, &dest, &opts, self.progress)?;
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
                    report.failed_total(),
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
        // The copy's own bookkeeping is no part of the payload.
        for leftover in [dest.join(MANIFEST_NAME), dest.join(STATE_DIR)] {
            let gone = if leftover.is_dir() {
                std::fs::remove_dir_all(&leftover)
            } else {
                std::fs::remove_file(&leftover)
            };
            gone.map_err(|e| ReleaseError::io(leftover.clone(), e))?;
        }
        Ok(())
    }

    /// Writes `data/<rel>`, read back from storage.
    fn write(&self, rel: &str, bytes: &[u8]) -> Result<(), crate::Error> {
        let path = self.data.join(rel);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).map_err(|e| ReleaseError::io(p.to_path_buf(), e))?;
        }
        write_verified(&path, bytes)?;
        Ok(())
    }
}

/// What the parts added that the crate needs to know.
#[derive(Default)]
struct Contents {
    /// `data/`-relative path of each mask → its image (dataset path).
    masks: HashMap<String, String>,
    /// `data/`-relative paths of the template files.
    template: Vec<String>,
    images: Vec<String>,
    ena_samples: Vec<String>,
}

/// Builds the whole bag in `hidden` and checks it.
pub(super) fn assemble(
    view: &RunView,
    meta: &Metadata,
    kind: Kind,
    results_digest: &str,
    opts: &ReleaseOptions,
    hidden: &Path,
    progress: &dyn Progress,
) -> Result<Released, crate::Error> {
    let record = &view.record;
    let payload = Payload {
        data: hidden.join("data"),
        jobs: opts.jobs,
        progress,
    };
    let results = Manifest::read(&record.results_dir.join(MANIFEST_NAME))?;
    let mut contents = Contents::default();
    zenodo_part(&payload, record, meta, &results, opts, &mut contents)?;
    match kind {
        Kind::Imaging => bia_part(&payload, record, meta, &results, opts.sample, &mut contents)?,
        Kind::Sequencing => ena_part(&payload, record, meta, &results, &mut contents)?,
        Kind::Other => {}
    }
    progress.phase("describing");
    describe_and_bag(&payload, hidden, record, meta, results_digest, &contents)?;
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
        images: contents.images,
        ena_samples: contents.ena_samples,
    })
}

/// `data/zenodo/`: tables, QC, the rendered job script, the pull's provenance, the
/// template, `.zenodo.json` and `CITATION.cff`.
fn zenodo_part(
    payload: &Payload<'_>,
    record: &RunRecord,
    meta: &Metadata,
    results: &Manifest,
    opts: &ReleaseOptions,
    contents: &mut Contents,
) -> Result<(), crate::Error> {
    payload.progress.phase("copying results");
    let folders = ["tables/", "qc/"];
    let files = ["job.sbatch", "README.md", "run.json"];
    let paths = results.entries.iter().map(|e| e.path.clone()).filter(|p| {
        let s = p.to_string_lossy();
        folders.iter().any(|f| s.starts_with(f)) || files.contains(&s.as_ref())
    });
    payload.copy(&record.results_dir, "zenodo", paths.collect::<Vec<_>>())?;
    for (file, bytes) in &opts.template_files {
        let rel = format!("zenodo/template/{file}");
        payload.write(&rel, bytes)?;
        contents.template.push(rel);
    }
    payload.write("zenodo/.zenodo.json", &deposit::zenodo_json(meta))?;
    payload.write(
        "zenodo/CITATION.cff",
        deposit::citation_cff(meta, record).as_bytes(),
    )
}

/// `data/bia/`: the representative images (from the raw dataset) with their masks, the
/// file list and the REMBI study.
fn bia_part(
    payload: &Payload<'_>,
    record: &RunRecord,
    meta: &Metadata,
    results: &Manifest,
    sample: usize,
    contents: &mut Contents,
) -> Result<(), crate::Error> {
    payload.progress.phase("copying images");
    let chosen = deposit::representative(pairs(record, results)?, sample);
    payload.copy(
        Path::new(&record.input.source),
        "bia/images",
        chosen.iter().map(|p| PathBuf::from(&p.image)),
    )?;
    payload.copy(
        &record.results_dir,
        "bia",
        chosen.iter().map(|p| PathBuf::from(&p.mask)),
    )?;
    payload.write(
        "bia/files.tsv",
        deposit::bia_file_list(&chosen, "images", "masks").as_bytes(),
    )?;
    payload.write(
        "bia/study-rembi.tsv",
        deposit::rembi_study(meta, record, chosen.len()).as_bytes(),
    )?;
    for p in &chosen {
        contents
            .masks
            .insert(format!("bia/{}", p.mask), p.image.clone());
    }
    contents.images = chosen.into_iter().map(|p| p.image).collect();
    Ok(())
}

/// `data/ena/`: the aligned reads, a Webin-CLI manifest per sample, their MD5s.
fn ena_part(
    payload: &Payload<'_>,
    record: &RunRecord,
    meta: &Metadata,
    results: &Manifest,
    contents: &mut Contents,
) -> Result<(), crate::Error> {
    payload.progress.phase("copying reads");
    let reads: Vec<PathBuf> = results
        .entries
        .iter()
        .map(|e| e.path.clone())
        .filter(|p| {
            p.starts_with("bam") && p.extension().is_some_and(|x| x == "bam" || x == "cram")
        })
        .collect();
    payload.copy(&record.results_dir, "ena", reads.clone())?;
    let mut md5s = String::new();
    for file in &reads {
        let name = file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let sample = name.split('.').next().unwrap_or(&name).to_string();
        let field = if name.ends_with(".cram") {
            "CRAM"
        } else {
            "BAM"
        };
        let rel = file.to_string_lossy().into_owned();
        payload.write(
            &format!("ena/{sample}.manifest.txt"),
            deposit::ena_manifest(meta, record, &sample, field, &rel).as_bytes(),
        )?;
        let path = payload.data.join("ena").join(file);
        let md5 = md5_file(&path).map_err(|e| ReleaseError::io(path.clone(), e))?;
        md5s.push_str(&format!("{md5}  {rel}\n"));
        contents.ena_samples.push(sample);
    }
    payload.write("ena/MD5SUMS", md5s.as_bytes())
}

/// The RO-Crate over the payload, then the bag's tag files.
fn describe_and_bag(
    payload: &Payload<'_>,
    hidden: &Path,
    record: &RunRecord,
    meta: &Metadata,
    results_digest: &str,
    contents: &Contents,
) -> Result<(), crate::Error> {
    // The copies keep the folders their filters left empty; a bag holds files.
    remove_empty_dirs(&payload.data)?;
    let provenance: serde_json::Value = std::fs::read(record.results_dir.join("run.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let files = bag::hash_payload(hidden)?;
    let parts: Vec<Part> = files
        .iter()
        .map(|f| {
            let rel = f.rel.trim_start_matches("data/");
            let (role, description) = describe(rel, &contents.masks, &contents.template);
            Part::new(f, role, description)
        })
        .collect();
    let crate_json = ro_crate::build(&ro_crate::CrateInput {
        record,
        provenance: &provenance,
        meta,
        parts: &parts,
        results_digest,
        template_files: &contents.template,
    });
    payload.write(ro_crate::METADATA_FILE, &crate_json)?;

    let files = bag::hash_payload(hidden)?;
    let info = bag::BagInfo {
        source_organization: meta.organization(),
        external_identifier: record.id.clone(),
        external_description: meta.title().to_string(),
        contact_name: meta.meta.authors.first().map(meta::Author::full_name),
        bagging_date: jiff::Zoned::now().strftime("%Y-%m-%d").to_string(),
    };
    for (name, bytes) in bag::tag_files(&files, &info) {
        write_verified(&hidden.join(name), &bytes)?;
    }
    Ok(())
}

/// Each mask of the results (`masks/...` with a TIFF name) with the dataset image of the
/// same stem (as the pull paired them to check their shapes).
fn pairs(record: &RunRecord, results: &Manifest) -> Result<Vec<Pair>, crate::Error> {
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
        .map(|p| (hpcstage_template::input_stem(&p), p))
        .collect();
    Ok(results
        .entries
        .iter()
        .map(|e| e.path.to_string_lossy().into_owned())
        .filter(|p| p.starts_with("masks/") && is_tiff(p))
        .filter_map(|mask| {
            let stem = hpcstage_template::input_stem(&mask["masks/".len()..]);
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
