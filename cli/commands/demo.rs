//! `hpcstage demo`: the lifecycle on a generated dataset, with its own temporary NAS,
//! scratch and state folders, so a new user (or a laptop without a cluster) sees every
//! step work and can look at what each step left behind.
//!
//! The demo never touches the configured NAS or scratch: all roots are its own.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hpcstage_staging::copy::CopyOptions;
use hpcstage_staging::fmt::bytes;
use hpcstage_staging::ingest::{ingest, IngestSettings};
use hpcstage_staging::ledger::Ledger;
use hpcstage_staging::manifest::{self, Manifest};
use hpcstage_staging::policy::days_left;
use hpcstage_staging::stage::{derive_target, stage, StageSettings};

use super::Status;
use crate::args::DemoArgs;
use crate::config::{absolute, Settings};
use crate::output;

const PROJECT: &str = "demo-lab";
const DATASET: &str = "plate7";

pub(crate) fn run(settings: &Settings, args: &DemoArgs) -> Result<Status> {
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
    let nas = base.join("nas");
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
            nas_root: hpcstage_staging::remote::Location::Local(nas.clone()),
            ssh: settings.ssh.clone(),
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
        "2/6 ingested → {} (MANIFEST.sha256, dataset.json, read-only) in {:.1}s",
        ingested.path.display(),
        ingested.report.elapsed.as_secs_f64()
    ));

    let target = derive_target(&ingested.path, Some(&nas), &scratch, None, None)?;
    let ledger = Ledger::open(&state)?;
    let bar = output::Bar::new("staging", false);
    let staged = stage(
        &StageSettings {
            source: hpcstage_staging::remote::Location::Local(ingested.path.clone()),
            ssh: settings.ssh.clone(),
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

    let nas_manifest = Manifest::read(&ingested.path.join("MANIFEST.sha256"))?;
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
        return Ok(Status::Integrity);
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
        Status::Success
    } else {
        Status::Partial
    })
}

/// Steps 5 and 6: the U-Net segmentation template over the staged plate (with a stand-in
/// predictor, since there is no GPU or trained model here), then the pull-back job's
/// verified copy of the results to the NAS. Returns whether the results were pulled.
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

    let tools = base.join("tools");
    fs_err::create_dir_all(&tools)?;
    let predictor = tools.join("unet-predict-standin");
    fs_err::write(&predictor, STANDIN_PREDICTOR)?;
    fs_err::set_permissions(
        &predictor,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let model = tools.join("unet-demo.model");
    fs_err::write(&model, b"demo U-Net weights (stand-in)\n")?;

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
    let template = super::template::store(settings).get("unet-seg")?;
    let mut params = std::collections::BTreeMap::new();
    params.insert("model".to_string(), model.display().to_string());
    params.insert(
        "predict_cmd".to_string(),
        format!(
            "{} --model {{model}} --input {{input}} --mask {{mask}} --table {{table}}",
            predictor.display()
        ),
    );
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
        "5/6 submitted run {} with the {:?} executor: compute job {} (unet-seg, {} images) → pull-back job {} (afterany)",
        chain.run_id,
        executor,
        chain.compute_job,
        prepared.rendered.inputs.as_ref().map_or(0, Vec::len),
        chain.pull_job.as_deref().unwrap_or("-")
    ));
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
    } else {
        output::error(format!(
            "6/6 the run was not pulled ({:?}); see {}",
            view.phase,
            view.record.run_dir.join("logs").display()
        ));
    }
    Ok(pulled)
}

/// Stands in for a U-Net predictor: a label mask (a minimal TIFF) and a measurement table
/// per image, as the real command would write them.
const STANDIN_PREDICTOR: &str = r#"#!/bin/bash
# Stand-in for a U-Net predictor (no GPU or trained model in the demo).
set -euo pipefail
while (($#)); do
    case $1 in
    --mask) mask=$2; shift ;;
    --table) table=$2; shift ;;
    --input) input=$2; shift ;;
    esac
    shift
done
size=$(stat -c %s "$input")
{ printf 'II*\0'; head -c 256 "$input"; } >"$mask"
printf 'label,area_px,mean_intensity
1,%d,0.5
2,%d,0.7
' $((size % 997)) $((size % 491)) >"$table"
"#;

/// Writes a small synthetic acquisition: plates of wells with image-like files (a few
/// large, many small), awkward names, an empty folder, a link, and instrument metadata.
fn generate(root: &Path, small_files: usize, large_mib: usize) -> Result<(usize, u64)> {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut files = 0;
    let mut total = 0u64;
    let mut write = |path: PathBuf, len: usize, rng: &mut fastrand::Rng| -> Result<()> {
        if let Some(parent) = path.parent() {
            fs_err::create_dir_all(parent)?;
        }
        let mut f = std::io::BufWriter::new(fs_err::File::create(&path)?);
        let mut left = len;
        let mut block = vec![0u8; 1 << 16];
        while left > 0 {
            let n = left.min(block.len());
            rng.fill(&mut block[..n]);
            f.write_all(&block[..n])
                .with_context(|| format!("cannot write {}", path.display()))?;
            left -= n;
        }
        f.flush()
            .with_context(|| format!("cannot write {}", path.display()))?;
        files += 1;
        total += len as u64;
        Ok(())
    };
    for i in 0..3 {
        write(
            root.join(format!("overview/stitched_{i}.ome.tif")),
            large_mib << 20,
            &mut rng,
        )?;
    }
    let rows = ["A", "B", "C", "D"];
    for i in 0..small_files {
        let well = format!("{}{:02}", rows[i % rows.len()], (i / rows.len()) % 12 + 1);
        let len = 4096 + rng.usize(..60_000);
        write(
            root.join(format!("plate7/well_{well}/field_{i:04}_ch{}.tif", i % 3)),
            len,
            &mut rng,
        )?;
    }
    for name in [
        "notes/sample 01 (copy).txt",
        "notes/ünïcødé_µm-scale.txt",
        "notes/back\\slash.txt",
        "notes/new\nline.txt",
    ] {
        write(root.join(name), 100 + rng.usize(..500), &mut rng)?;
    }
    write(root.join("acquisition.czi"), 200_000, &mut rng)?;
    fs_err::create_dir_all(root.join("plate7/well_H12"))?;
    std::os::unix::fs::symlink("overview/stitched_0.ome.tif", root.join("preview.ome.tif"))
        .with_context(|| format!("cannot create a link in {}", root.display()))?;
    Ok((files, total))
}
