//! `hpcstage stage SRC [DEST]`: verified copy of a NAS dataset to scratch.

use anyhow::{Context, Result};
use hpcstage_staging::human::{bytes, count};
use hpcstage_staging::ledger::Ledger;
use hpcstage_staging::policy::{days_left, PurgeBasis};
use hpcstage_staging::stage::{derive_target, stage_from, StageSettings, Target};
use hpcstage_staging::storage;
use serde::Serialize;

use super::{copy_options, copy_status, print_copy_report, ssh_options, CopyJson, ExitStatus};
use crate::args::StageArgs;
use crate::config::{absolute, parse_location, Settings};
use crate::output;

#[derive(Serialize)]
struct StageJson<'a> {
    source: String,
    destination: String,
    project: &'a str,
    dataset: &'a str,
    dry_run: bool,
    #[serde(flatten)]
    copy: CopyJson,
    record: Option<&'a hpcstage_staging::record::StageRecord>,
}

pub(crate) fn run(settings: &Settings, args: &StageArgs) -> Result<ExitStatus> {
    stage_quietly(settings, args, None, true).map(|(status, _)| status)
}

/// Stages and prints the summary; also returns the record when the stage verified.
/// `opened` is the source's storage when the caller opened it already.
pub(crate) fn stage_quietly(
    settings: &Settings,
    args: &StageArgs,
    opened: Option<Box<dyn storage::Storage>>,
    print: bool,
) -> Result<(ExitStatus, Option<hpcstage_staging::record::StageRecord>)> {
    let source = parse_location(&args.source)?;
    // What the user typed first: a source that cannot be reached or is not there says so
    // before anything about the configuration (scratch root, NAS root) does. (An object
    // store has no folders: a prefix is there when its manifest is.)
    let ssh = ssh_options(settings, &args.copy.parallel);
    let store = match opened {
        Some(store) => store,
        None => storage::open(&source, &ssh, &settings.s3)?,
    };
    store.require_tree()?;
    // Project and dataset come from the path's layout under the NAS root, wherever the
    // NAS is reached from.
    let nas_root = settings.nas_layout_root()?;
    let nas_root = nas_root.as_deref();
    let target = match &args.dest {
        Some(dest) => {
            let dest = absolute(dest)?;
            let project = args
                .project
                .clone()
                .or_else(|| {
                    derive_target(source.path(), nas_root, &dest, None, None)
                        .ok()
                        .map(|t| t.project)
                })
                .or_else(|| {
                    dest.parent()
                        .and_then(|p| p.file_name())
                        .map(|n| n.to_string_lossy().into_owned())
                })
                .unwrap_or_else(|| "default".into());
            let dataset = args.dataset.clone().unwrap_or_else(|| {
                dest.file_name()
                    .map_or("dataset".into(), |n| n.to_string_lossy().into_owned())
            });
            Target {
                project,
                dataset,
                destination: dest,
            }
        }
        None => derive_target(
            source.path(),
            nas_root,
            settings.scratch_root()?,
            args.project.as_deref(),
            args.dataset.as_deref(),
        )?,
    };
    if let Some(warning) = settings.policy_warning().filter(|_| !args.copy.json) {
        output::warn(warning);
    }
    let stage_settings = StageSettings {
        source: source.clone(),
        ssh,
        s3: settings.s3.clone(),
        destination: target.destination.clone(),
        project: target.project.clone(),
        dataset: target.dataset.clone(),
        policy: settings.policy,
        allow_raw_area: args.allow_raw_area,
        copy: copy_options(settings, &args.copy)?,
    };
    if let Some(status) = super::shards::dispatch(settings, args, &stage_settings, store.as_ref())?
    {
        return Ok((status, None));
    }
    let ledger = Ledger::open(&settings.state_dir)
        .with_context(|| format!("cannot open the ledger in {}", settings.state_dir.display()))?;
    if !args.copy.dry_run {
        output::note(format!(
            "staging {} → {}",
            source,
            target.destination.display()
        ));
    }
    let bar = output::Bar::new("staging", args.copy.json);
    let outcome = stage_from(&stage_settings, store.as_ref(), Some(&ledger), &bar);
    bar.finish();
    let outcome = outcome?;
    let status = copy_status(&outcome.report);
    if !print {
        if !outcome.report.ok() {
            print_copy_report(&outcome.report, false);
        }
        return Ok((status, outcome.record));
    }
    if args.copy.json {
        output::json(&StageJson {
            source: source.to_string(),
            destination: target.destination.display().to_string(),
            project: &target.project,
            dataset: &target.dataset,
            dry_run: args.copy.dry_run,
            copy: CopyJson::new(&outcome.report),
            record: outcome.record.as_ref(),
        });
        return Ok((status, outcome.record));
    }
    print_copy_report(&outcome.report, args.copy.dry_run);
    if let Some(record) = &outcome.record {
        output::data(format!(
            "staged {} → {} ({}, {})",
            record.id,
            record.destination.display(),
            hpcstage_staging::human::count(record.files, "file"),
            bytes(record.bytes)
        ));
        output::data(format!(
            "manifest: {} (sha256 {})",
            record.destination.join("MANIFEST.sha256").display(),
            record.manifest_digest
        ));
        output::data(format!(
            "purge: {} older than {} → deadline {} ({} left)",
            record.purge.basis,
            record.purge.age,
            record.purge.deadline.strftime("%Y-%m-%d %H:%M UTC"),
            count(
                days_left(record.purge.deadline, jiff::Timestamp::now()).max(0) as u64,
                "day"
            )
        ));
        if record.purge.basis == PurgeBasis::Atime {
            output::note(
                "the atime deadline is a day early on purpose: under relatime a read updates \
                 atime at most once a day, so the purge may see a day-old atime",
            );
        }
    } else if !args.copy.dry_run {
        output::error("stage incomplete: no stage record written; fix the failures above and run the same command again");
    }
    Ok((status, outcome.record))
}
