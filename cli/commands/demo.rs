//! `hpcstage demo`: the lifecycle on a generated dataset, with its own temporary NAS,
//! scratch and state folders, so a new user (or a laptop without a cluster) sees every
//! step work and can look at what each step left behind.
//!
//! The demo never touches the configured NAS or scratch: all roots are its own.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hpcstage_staging::copy::CopyOptions;
use hpcstage_staging::human::bytes;
use hpcstage_staging::ingest::{ingest, IngestSettings};
use hpcstage_staging::ledger::Ledger;
use hpcstage_staging::manifest::{self, Manifest};
use hpcstage_staging::policy::days_left;
use hpcstage_staging::stage::{derive_target, stage, StageSettings};
use hpcstage_staging::storage;
use hpcstage_template::Template;

use super::ExitStatus;
use crate::args::DemoArgs;
use crate::config::{absolute, parse_location, Settings};
use crate::output;

const PROJECT: &str = "demo-lab";
const DATASET: &str = "plate7";

pub(crate) fn run(settings: &Settings, args: &DemoArgs) -> Result<ExitStatus> {
    let base = match &args.dir {
        Some(dir) => {
            let dir = absolute(dir)?;
            if dir.exists() && fs_err::read_dir(&dir)?.next().is_some() {
                bail!(
                    "{} is not empty; give an empty or new folder to --dir",
                    dir.display()
                );
            }
            fs_err::create_dir_all(&dir)?;
            dir
        }
        None => tempfile::Builder::new()
            .prefix("hpcstage-demo.")
            .tempdir()
            .context("cannot create a temporary folder for the demo")?
            .keep(),
    };
    // The demo's own NAS folder, or the one asked for (whose layout is the same).
    let nas = match &args.nas {
        Some(location) => location.clone(),
        None => base.join("nas"),
    };
    let nas_location = parse_location(&nas)?;
    let scratch = base.join("scratch");
    let state = base.join("state");
    let instrument = base.join("instrument").join("2026-11-27_plate7");
    output::data(format!("hpcstage demo in {}", base.display()));

    let (files, total) = generate(&instrument, args.small_files, args.large_mib)?;
    output::data(format!(
        "1/6 generated instrument data: {files} files, {} in {}",
        bytes(total),
        instrument.display()
    ));

    let copy = CopyOptions {
        jobs: settings.jobs,
        ..CopyOptions::default()
    };
    let bar = output::Bar::new("ingesting", false);
    let ingested = ingest(
        &IngestSettings {
            source: instrument.clone(),
            nas_root: nas_location.clone(),
            ssh: settings.ssh.clone(),
            s3: settings.s3.clone(),
            remote_verify: false,
            project: PROJECT.into(),
            dataset: DATASET.into(),
            immutable: false,
            copy: copy.clone(),
        },
        &bar,
    );
    bar.finish();
    let ingested = ingested?;
    if !ingested.report.ok() {
        super::print_copy_report(&ingested.report, false);
        bail!("the demo ingest failed");
    }
    output::data(format!(
        "2/6 ingested → {} (MANIFEST.sha256, dataset.json, {}) in {:.1}s",
        ingested.path.display(),
        ingested.retention.as_deref().unwrap_or("read-only"),
        ingested.report.elapsed.as_secs_f64()
    ));

    let raw = parse_location(&ingested.path)?;
    let target = derive_target(raw.path(), Some(nas_location.path()), &scratch, None, None)?;
    let ledger = Ledger::open(&state)?;
    let bar = output::Bar::new("staging", false);
    let staged = stage(
        &StageSettings {
            source: raw.clone(),
            ssh: settings.ssh.clone(),
            s3: settings.s3.clone(),
            destination: target.destination.clone(),
            project: target.project.clone(),
            dataset: target.dataset.clone(),
            policy: settings.policy,
            allow_raw_area: false,
            copy,
        },
        Some(&ledger),
        &bar,
    );
    bar.finish();
    let staged = staged?;
    let Some(record) = staged.record else {
        super::print_copy_report(&staged.report, false);
        bail!("the demo stage failed");
    };
    output::data(format!(
        "3/6 staged → {} ({} files, {} in {:.1}s, {}; every file read back and checked)",
        record.destination.display(),
        record.files,
        bytes(record.bytes),
        staged.report.elapsed.as_secs_f64(),
        output::rate(staged.report.bytes_copied, staged.report.elapsed)
    ));

    let nas_manifest = storage::open(&raw, &settings.ssh, &settings.s3)?
        .manifest()?
        .with_context(|| format!("{} has no MANIFEST.sha256", ingested.path.display()))?;
    let verified = manifest::verify(
        &record.destination,
        &Manifest::read(&record.destination.join("MANIFEST.sha256"))?,
        &manifest::NoProgress,
    )?;
    let (ok, failed, missing, unreadable) = verified.counts();
    output::data(format!(
        "4/6 verified the scratch copy: {ok} OK, {failed} FAILED, {missing} MISSING, {unreadable} unreadable \
         (NAS manifest lists {} files)",
        nas_manifest.len()
    ));
    output::data(format!(
        "purge deadline: {} ({} days left; basis {}, age {})",
        record.purge.deadline.strftime("%Y-%m-%d %H:%M UTC"),
        days_left(record.purge.deadline, jiff::Timestamp::now()),
        record.purge.basis,
        record.purge.age
    ));
    if !verified.all_ok() {
        return Ok(ExitStatus::Integrity);
    }

    let pulled = run_segmentation(settings, args, &base, &nas, &scratch, &state, &record)?;
    output::data(format!(
        "look around: NAS {}  scratch {}  ledger {}",
        nas.display(),
        scratch.display(),
        state.display()
    ));
    output::note(format!(
        "remove it all with: chmod -R u+w {0} && rm -rf {0}",
        base.display()
    ));
    Ok(if pulled {
        ExitStatus::Success
    } else {
        ExitStatus::Partial
    })
}

/// Steps 5 and 6: the U-Net segmentation template over the staged plate, then the
/// pull-back job's verified copy of the results to the NAS. The predictor is the real one
/// (the template's unet-predict, on the CPU, with the tiny hand-set model it ships) when
/// `python3` has its packages, else a stand-in. Returns whether the results were pulled.
#[allow(clippy::too_many_arguments)]
fn run_segmentation(
    settings: &Settings,
    args: &DemoArgs,
    base: &Path,
    nas: &Path,
    scratch: &Path,
    state: &Path,
    record: &hpcstage_staging::record::StageRecord,
) -> Result<bool> {
    use hpcstage_lifecycle::backend::{local_state_dir, Backend};
    use hpcstage_lifecycle::chain::{prepare, run_local, submit, SubmitSettings};
    use hpcstage_lifecycle::refresh::refresh;
    use hpcstage_lifecycle::run::{Executor, Phase, RunStore};

    let template = super::template::store(settings).get("unet-seg")?;
    let tools = base.join("tools");
    fs_err::create_dir_all(&tools)?;
    let predictor = choose_predictor(&template, &tools)?;
    let mut params = std::collections::BTreeMap::new();
    match &predictor {
        Predictor::Real { python, model } => {
            params.insert("model".to_string(), model.display().to_string());
            params.insert("python".to_string(), python.display().to_string());
        }
        Predictor::StandIn { script, model, .. } => {
            params.insert("model".to_string(), model.display().to_string());
            params.insert(
                "predict_cmd".to_string(),
                format!(
                    "{} --model {{model}} --input {{input}} --mask {{mask}} --table {{table}}",
                    script.display()
                ),
            );
        }
    }

    let mut executor = super::submit::executor(settings, args.executor)?;
    if executor == Executor::Slurm && args.executor == crate::args::ExecutorArg::Auto {
        // The demo must work wherever it is run: SLURM's commands installed without a
        // controller running is common on laptops and fresh machines.
        let client = hpcstage_slurm::client::SlurmClient::new(settings.client.clone());
        if !client.ping().unwrap_or(false) {
            output::note("sbatch is installed but slurmctld does not answer: the demo uses the local executor");
            executor = Executor::Local;
        }
    }
    params.insert("chunk_size".into(), "100".into());
    params.insert("gpus".into(), "0".into());
    params.insert("cpus".into(), "1".into());
    params.insert("mem".into(), "500M".into());
    params.insert("time".into(), "15m".into());
    if executor == Executor::Slurm {
        // Whatever partition the cluster calls default.
        params.insert("partition".into(), String::new());
    }
    let exe = std::env::current_exe().context("cannot find the hpcstage executable")?;
    let store = RunStore::open(state)?;
    let prepared = prepare(
        &store,
        &SubmitSettings {
            template: &template,
            params,
            overrides: Default::default(),
            input: record,
            scratch_root: scratch,
            results_dir: None,
            nas_root: Some(nas),
            state_dir: state,
            hpcstage: &exe,
            executor,
            pull_back: true,
            pull_partition: settings.slurm.transfer_partition.clone(),
            pull_time: "00:30:00".into(),
            worm: false,
        },
    )?;
    let backend = Backend::for_executor(executor, state, &settings.client);
    let chain = submit(&store, &prepared, &backend, true)?;
    output::data(format!(
        "5/6 submitted run {} with the {} executor: compute job {} (unet-seg, {} images, {}) → pull-back job {} (afterany)",
        chain.run_id,
        executor,
        chain.compute_job,
        prepared.rendered.inputs.as_ref().map_or(0, Vec::len),
        predictor.describe(),
        chain.pull_job.as_deref().unwrap_or("-")
    ));
    if let Predictor::StandIn { why, .. } = &predictor {
        output::note(format!(
            "the stand-in predictor was used because {why}; with numpy, tifffile, onnxruntime, onnx and scikit-image \
             importable by python3 the demo runs the real one (see README: the real predictor on your own model)"
        ));
    }
    match executor {
        Executor::Local => {
            let exec = hpcstage_slurm::local::LocalExecutor::new(local_state_dir(state));
            run_local(&store, &chain.run_id, &exec)?;
        }
        Executor::Slurm => {
            let started = std::time::Instant::now();
            loop {
                let mut views = vec![store.load(&chain.run_id)?];
                for w in refresh(&store, &mut views, state, &settings.client) {
                    output::warn(w);
                }
                if matches!(views[0].phase, Phase::Pulled | Phase::PullFailed) {
                    break;
                }
                if started.elapsed() > std::time::Duration::from_secs(900) {
                    bail!("the demo jobs did not finish within 15 minutes; see `hpcstage --state-dir {} status`", state.display());
                }
                std::thread::sleep(std::time::Duration::from_secs(3));
            }
        }
    }
    let view = store.load(&chain.run_id)?;
    let pulled = view.phase == Phase::Pulled;
    if pulled {
        output::data(format!(
            "6/6 pulled validated results → {} (MANIFEST.sha256, README.md, run.json); intermediates purged from scratch",
            view.record.results_dir.display()
        ));
        let results = parse_location(&view.record.results_dir)?;
        match storage::local_folder(&results) {
            Ok(_) => release_run(settings, base, &view)?,
            Err(kind) => output::note(format!(
                "release reads a run's results where the NAS is mounted; they are on {kind} here, so no bag is made"
            )),
        }
    } else {
        output::error(format!(
            "6/6 the run was not pulled ({}); see {}",
            super::status::label(view.phase),
            view.record.run_dir.join("logs").display()
        ));
    }
    Ok(pulled)
}

/// The last step: a deposit-ready bag of the run, from a `release.toml` of the demo's own.
fn release_run(
    settings: &Settings,
    base: &Path,
    view: &hpcstage_lifecycle::run::RunView,
) -> Result<()> {
    let metadata = base.join("release.toml");
    fs_err::write(&metadata, DEMO_RELEASE)?;
    let opts = hpcstage_lifecycle::release::ReleaseOptions {
        dest: None,
        sample: 4,
        metadata,
        jobs: settings.jobs.max(1),
        template_files: super::release::template_files(settings, view),
    };
    let released = super::release::make(view, &opts, false)?;
    output::data(format!(
        "released the run as a BagIt bag to deposit → {} ({} files; data/bia/ for the BioImage Archive, data/zenodo/ for Zenodo; \
         check it with `hpcstage release verify {}`)",
        released.dir.display(),
        released.files,
        released.dir.display()
    ));
    Ok(())
}

/// The demo's `release.toml` (what `hpcstage release init` asks a lab to fill in).
const DEMO_RELEASE: &str = r#"title = "hpcstage demo: segmentation of a generated plate"
description = "Generated images of bright disks, segmented by the unet-seg template of the hpcstage demo."
license = "CC0-1.0"
keywords = ["segmentation", "demo"]
organization = "hpcstage demo"

[[authors]]
given = "Ada"
family = "Lovelace"
orcid = "0000-0002-1825-0097"
affiliation = "hpcstage demo"

[rembi]
organism = "none (generated images)"
imaging_method = "generated by hpcstage demo"
instrument = "hpcstage demo generator"
study_type = "segmentation"
"#;

/// Which predictor the demo's segmentation runs.
enum Predictor {
    /// The template's own unet-predict with this Python and the tiny model.
    Real { python: PathBuf, model: PathBuf },
    /// A bash stand-in; `why` the real one could not run.
    StandIn {
        script: PathBuf,
        model: PathBuf,
        why: String,
    },
}

impl Predictor {
    fn describe(&self) -> String {
        match self {
            Predictor::Real { python, .. } => format!(
                "the real predictor: unet-predict with onnxruntime and a tiny U-Net, Python {}",
                python.display()
            ),
            Predictor::StandIn { .. } => "a stand-in predictor".to_string(),
        }
    }
}

/// The Python modules unet-predict needs, as the template names them.
fn python_missing(template: &Template) -> Result<PathBuf, String> {
    let modules: Vec<&String> = template.spec.tools.python_modules.keys().collect();
    let code = format!(
        "import importlib, sys\nmissing = []\nfor m in {modules:?}:\n    try:\n        importlib.import_module(m)\n    except Exception:\n        missing.append(m)\nprint(sys.executable)\nprint(' '.join(missing))\n"
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &code])
        .output()
        .map_err(|e| format!("python3 cannot be run ({e})"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    match (out.status.success(), lines.next(), lines.next()) {
        (true, Some(exe), Some("")) => Ok(PathBuf::from(exe)),
        (true, Some(exe), Some(missing)) => Err(format!("{exe} cannot import {missing}")),
        _ => Err(format!(
            "python3 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// The real predictor when python3 has its packages (with the tiny model written by the
/// template's unet-tiny-model), else the stand-in.
fn choose_predictor(template: &Template, tools: &Path) -> Result<Predictor> {
    let why = match python_missing(template) {
        Ok(python) => {
            let model = tools.join("unet-tiny.onnx");
            let maker = tools.join("unet-tiny-model");
            let text = template
                .tools
                .iter()
                .find(|t| t.name == "unet-tiny-model")
                .map(|t| t.content.clone())
                .context("the unet-seg template in use does not ship unet-tiny-model")?;
            fs_err::write(&maker, text)?;
            let made = std::process::Command::new(&python)
                .arg(&maker)
                .arg(&model)
                .output()
                .with_context(|| format!("cannot run {}", python.display()))?;
            if made.status.success() {
                return Ok(Predictor::Real { python, model });
            }
            format!(
                "the tiny model could not be written: {}",
                String::from_utf8_lossy(&made.stderr).trim()
            )
        }
        Err(why) => why,
    };
    let script = tools.join("unet-predict-standin");
    fs_err::write(&script, STANDIN_PREDICTOR)?;
    fs_err::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    fs_err::write(
        tools.join("standin-mask.ome.tif"),
        tiff_bytes(&standin_mask(), false)?,
    )?;
    let model = tools.join("unet-demo.model");
    fs_err::write(&model, b"demo U-Net weights (stand-in)\n")?;
    Ok(Predictor::StandIn { script, model, why })
}

/// Stands in for a U-Net predictor: every image (all are FIELD x FIELD) gets the same
/// label mask, one disk labelled 1, and a table of one row, as the real command would
/// write them. The pull reads the masks back, so they are real TIFFs.
const STANDIN_PREDICTOR: &str = r#"#!/bin/bash
# Stand-in for a U-Net predictor (the demo found no Python with its packages).
set -euo pipefail
while (($#)); do
    case $1 in
    --mask) mask=$2; shift ;;
    --table) table=$2; shift ;;
    --input) input=$2; shift ;;
    esac
    shift
done
cp "$(dirname "$0")/standin-mask.ome.tif" "$mask"
printf 'label,area,source_bytes\n1,113,%d\n' "$(stat -L -c %s "$input")" >"$table"
"#;

/// Side of the demo's field images, in pixels.
const FIELD: u32 = 64;

/// The stand-in's mask: one disk of radius 6 labelled 1.
fn standin_mask() -> Vec<u16> {
    (0..FIELD * FIELD)
        .map(|i| {
            let (y, x) = (f64::from(i / FIELD), f64::from(i % FIELD));
            u16::from((y - 32.0).hypot(x - 32.0) <= 6.0)
        })
        .collect()
}

/// A field image: three bright disks on a noisy background, 16-bit.
fn field_image(rng: &mut fastrand::Rng) -> Vec<u16> {
    let disks: Vec<(f64, f64, f64)> = (0..3)
        .map(|k| {
            let r = 5.0 + rng.f64() * 3.0;
            let cx = 12.0 + 20.0 * f64::from(k) + rng.f64() * 2.0;
            let cy = 12.0 + rng.f64() * 40.0;
            (cy, cx, r)
        })
        .collect();
    (0..FIELD * FIELD)
        .map(|i| {
            let (y, x) = (f64::from(i / FIELD), f64::from(i % FIELD));
            let inside = disks.iter().any(|&(cy, cx, r)| (y - cy).hypot(x - cx) <= r);
            let base = if inside { 3600 } else { 400 };
            base + rng.u16(..200)
        })
        .collect()
}

/// A FIELD x FIELD grayscale TIFF of `pixels`: 16-bit, or 8-bit for a mask.
fn tiff_bytes(pixels: &[u16], sixteen_bit: bool) -> Result<Vec<u8>> {
    use tiff::encoder::{colortype, TiffEncoder};
    let mut out = std::io::Cursor::new(Vec::new());
    let mut enc = TiffEncoder::new(&mut out).context("cannot encode a TIFF")?;
    if sixteen_bit {
        enc.write_image::<colortype::Gray16>(FIELD, FIELD, pixels)
    } else {
        let bytes: Vec<u8> = pixels
            .iter()
            .map(|&v| u8::try_from(v).unwrap_or(u8::MAX))
            .collect();
        enc.write_image::<colortype::Gray8>(FIELD, FIELD, &bytes)
    }
    .context("cannot encode a TIFF")?;
    Ok(out.into_inner())
}

/// How many of the small files are images to segment (the rest are raw frames).
const IMAGES: usize = 12;

/// Writes a small synthetic acquisition: plates of wells with image-like files (a few
/// large raw frames, many small ones, and FIELD x FIELD TIFF images of bright disks to
/// segment), awkward names, an empty folder, a link, and instrument metadata.
fn generate(root: &Path, small_files: usize, large_mib: usize) -> Result<(usize, u64)> {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut files = 0;
    let mut total = 0u64;
    // A file of `len` random bytes, or of `image`'s bytes.
    let mut write = |path: PathBuf,
                     len: usize,
                     image: Option<Vec<u8>>,
                     rng: &mut fastrand::Rng|
     -> Result<()> {
        if let Some(parent) = path.parent() {
            fs_err::create_dir_all(parent)?;
        }
        let mut f = std::io::BufWriter::new(fs_err::File::create(&path)?);
        let len = match image {
            Some(bytes) => {
                f.write_all(&bytes)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                bytes.len()
            }
            None => {
                let mut left = len;
                let mut block = vec![0u8; 1 << 16];
                while left > 0 {
                    let n = left.min(block.len());
                    rng.fill(&mut block[..n]);
                    f.write_all(&block[..n])
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    left -= n;
                }
                len
            }
        };
        f.flush()
            .with_context(|| format!("cannot write {}", path.display()))?;
        files += 1;
        total += len as u64;
        Ok(())
    };
    for i in 0..3 {
        write(
            root.join(format!("overview/stitched_{i}.raw")),
            large_mib << 20,
            None,
            &mut rng,
        )?;
    }
    let rows = ["A", "B", "C", "D"];
    for i in 0..small_files {
        let well = format!("{}{:02}", rows[i % rows.len()], (i / rows.len()) % 12 + 1);
        if i < IMAGES {
            // A real image for the segmentation step.
            let image = tiff_bytes(&field_image(&mut rng), true)?;
            write(
                root.join(format!("plate7/well_{well}/field_{i:04}.tif")),
                0,
                Some(image),
                &mut rng,
            )?;
            continue;
        }
        let len = 4096 + rng.usize(..60_000);
        write(
            root.join(format!("plate7/well_{well}/field_{i:04}_ch{}.raw", i % 3)),
            len,
            None,
            &mut rng,
        )?;
    }
    for name in [
        "notes/sample 01 (copy).txt",
        "notes/ünïcødé_µm-scale.txt",
        "notes/back\\slash.txt",
        "notes/new\nline.txt",
    ] {
        write(root.join(name), 100 + rng.usize(..500), None, &mut rng)?;
    }
    write(root.join("acquisition.czi"), 200_000, None, &mut rng)?;
    fs_err::create_dir_all(root.join("plate7/well_H12"))?;
    std::os::unix::fs::symlink(
        "plate7/well_A01/field_0000.tif",
        root.join("preview.ome.tif"),
    )
    .with_context(|| format!("cannot create a link in {}", root.display()))?;
    Ok((files, total))
}
