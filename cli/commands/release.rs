//! `hpcstage release RUN` / `release init RUN` / `release verify DIR`: a deposit-ready
//! BagIt bag of a pulled run, the metadata file it is made from, and the check of a bag.
//! The bag itself is made in `hpcstage_lifecycle::release`; this file turns arguments
//! into its options, finds the run's template (its files go into the bag when the
//! installed one still has the run's hash) and prints.

use anyhow::{bail, Result};
use hpcstage_lifecycle::release::{self, bag, meta, ReleaseOptions, Released};
use hpcstage_lifecycle::run::{RunStore, RunView};
use hpcstage_staging::human::bytes;

use super::ExitStatus;
use crate::args::{ReleaseArgs, ReleaseCommand, ReleaseInitArgs, ReleaseVerifyArgs};
use crate::config::{absolute, Settings};
use crate::output;

pub(crate) fn run(settings: &Settings, args: &ReleaseArgs) -> Result<ExitStatus> {
    match &args.command {
        Some(ReleaseCommand::Init(a)) => return init(settings, a),
        Some(ReleaseCommand::Verify(a)) => return verify(a),
        None => {}
    }
    let Some(run) = &args.run else {
        bail!("give a run id: hpcstage release RUN (see --help)");
    };
    let store = RunStore::open(&settings.state_dir)?;
    let view = super::retry::refreshed(settings, &store, run)?;
    let opts = ReleaseOptions {
        dest: args.to.as_deref().map(absolute).transpose()?,
        sample: args.sample,
        metadata: args.metadata.clone(),
        jobs: settings.jobs.max(1),
        template_files: template_files(settings, &view),
    };
    let released = make(&view, &opts, args.json)?;
    if args.json {
        output::json(&released);
    } else {
        print(&released);
    }
    Ok(ExitStatus::Success)
}

/// Makes the bag, with a progress bar.
pub(crate) fn make(view: &RunView, opts: &ReleaseOptions, quiet: bool) -> Result<Released> {
    let bar = output::Bar::new("releasing", quiet);
    let released = release::release(view, opts, &bar);
    bar.finish();
    Ok(released?)
}

pub(crate) fn print(r: &Released) {
    if r.existed {
        output::data(format!(
            "run {} was released before: {} is a valid bag ({} files, {}); nothing to do",
            r.run_id,
            r.dir.display(),
            r.files,
            bytes(r.bytes)
        ));
        return;
    }
    output::data(format!(
        "released run {} → {} (BagIt, {} payload files, {}; checked)",
        r.run_id,
        r.dir.display(),
        r.files,
        bytes(r.bytes)
    ));
    if !r.images.is_empty() {
        output::data(format!(
            "  data/bia/     BioImage Archive: {} representative images with their masks, files.tsv, study-rembi.tsv",
            r.images.len()
        ));
    }
    output::data(
        "  data/zenodo/  Zenodo: tables, QC, job script and template, .zenodo.json, CITATION.cff",
    );
    if !r.ena_samples.is_empty() {
        output::data(format!(
            "  data/ena/     ENA: {} read manifests for webin-cli, MD5SUMS",
            r.ena_samples.len()
        ));
    }
    output::data("  data/ro-crate-metadata.json  RO-Crate 1.3, Process Run Crate");
}

/// The run's template files when the installed template is the one the run used.
pub(crate) fn template_files(settings: &Settings, view: &RunView) -> Vec<(String, Vec<u8>)> {
    let r = &view.record;
    match super::template::store(settings).get(&r.template) {
        Ok(t) if t.hash() == r.template_hash => vec![
            (
                format!("{}.toml", r.template),
                t.spec.source.clone().into_bytes(),
            ),
            (
                format!("{}.sbatch.j2", r.template),
                t.body.clone().into_bytes(),
            ),
        ],
        Ok(_) => {
            output::warn(format!(
                "the installed template {} is not the one run {} used (hash {}); the bag holds the rendered job script only",
                r.template, r.id, r.template_hash
            ));
            Vec::new()
        }
        Err(e) => {
            output::warn(format!(
                "template {} not found ({e}); the bag holds the rendered job script only",
                r.template
            ));
            Vec::new()
        }
    }
}

fn init(settings: &Settings, args: &ReleaseInitArgs) -> Result<ExitStatus> {
    let store = RunStore::open(&settings.state_dir)?;
    let view = store.load(&store.resolve(&args.run)?)?;
    if args.output.exists() {
        bail!(
            "{} exists; edit it, or give another file with -o",
            args.output.display()
        );
    }
    let kind = meta::Kind::of(&view.record);
    let model = view.record.params.get("model").map(String::as_str);
    let text = meta::template(&view.record, kind, model);
    hpcstage_staging::manifest::write_atomic(&args.output, text.as_bytes())?;
    output::data(format!(
        "wrote {}: fill in the authors{}, then `hpcstage release {} --metadata {}`",
        args.output.display(),
        match kind {
            meta::Kind::Imaging => " and the [rembi] section",
            meta::Kind::Sequencing => " and the [ena] section",
            meta::Kind::Other => "",
        },
        view.record.id,
        args.output.display()
    ));
    Ok(ExitStatus::Success)
}

fn verify(args: &ReleaseVerifyArgs) -> Result<ExitStatus> {
    let check = bag::verify(&args.dir)?;
    if args.json {
        output::json(&check);
    } else {
        for p in &check.problems {
            output::data(p);
        }
        if check.ok() {
            output::data(format!(
                "{}: valid bag ({} payload files, {}; {} checked; RO-Crate well formed)",
                args.dir.display(),
                check.files,
                bytes(check.bytes),
                check.manifests.join(", ")
            ));
        } else {
            output::error(format!(
                "{}: {} problems; the bag is not valid",
                args.dir.display(),
                check.problems.len()
            ));
        }
    }
    Ok(if check.ok() {
        ExitStatus::Success
    } else {
        ExitStatus::Integrity
    })
}
