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
        "1/4 generated instrument data: {files} files, {} in {}",
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
            nas_root: nas.clone(),
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
        "2/4 ingested → {} (MANIFEST.sha256, dataset.json, read-only) in {:.1}s",
        ingested.path.display(),
        ingested.report.elapsed.as_secs_f64()
    ));

    let target = derive_target(&ingested.path, Some(&nas), &scratch, None, None)?;
    let ledger = Ledger::open(&state)?;
    let bar = output::Bar::new("staging", false);
    let staged = stage(
        &StageSettings {
            source: ingested.path.clone(),
            destination: target.destination.clone(),
            project: target.project.clone(),
            dataset: target.dataset.clone(),
            policy: settings.policy,
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
        "3/4 staged → {} ({} files, {} in {:.1}s, {}; every file read back and checked)",
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
        "4/4 verified the scratch copy: {ok} OK, {failed} FAILED, {missing} MISSING, {unreadable} unreadable \
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
    Ok(if verified.all_ok() {
        Status::Success
    } else {
        Status::Integrity
    })
}

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
