//! `hpcstage ingest SRC --project P --dataset N`: instrument data into the NAS raw area.

use anyhow::Result;
use hpcstage_staging::human::bytes;
use hpcstage_staging::ingest::{ingest, IngestSettings};
use serde::Serialize;

use super::{copy_options, copy_status, print_copy_report, ssh_options, CopyJson, ExitStatus};
use crate::args::IngestArgs;
use crate::config::{absolute, parse_location, Settings};
use crate::output;

#[derive(Serialize)]
struct IngestJson<'a> {
    dataset_path: String,
    #[serde(flatten)]
    copy: CopyJson,
    dataset: Option<&'a hpcstage_staging::record::DatasetInfo>,
    read_only: bool,
    immutable: Option<String>,
    /// On S3: the Object Lock retention applied (and read back).
    #[serde(skip_serializing_if = "Option::is_none")]
    retention: Option<String>,
    /// The ZFS snapshot and hold, or why there is none.
    zfs: Option<String>,
}

pub(crate) fn run(settings: &Settings, args: &IngestArgs) -> Result<ExitStatus> {
    let ingest_settings = IngestSettings {
        source: absolute(&args.source)?,
        nas_root: parse_location(settings.nas_root()?)?,
        ssh: ssh_options(settings, &args.copy.parallel),
        s3: settings.s3.clone(),
        remote_verify: args.remote_verify || settings.remote_verify,
        project: args.project.clone(),
        dataset: args.dataset.clone(),
        immutable: args.immutable,
        copy: copy_options(settings, &args.copy)?,
    };
    let bar = output::Bar::new("ingesting", args.copy.json);
    let outcome = ingest(&ingest_settings, &bar);
    bar.finish();
    let outcome = outcome?;
    let status = copy_status(&outcome.report);
    let zfs = outcome
        .snapshot
        .as_ref()
        .map(hpcstage_staging::zfs::describe);
    let immutable = outcome
        .protection
        .as_ref()
        .and_then(|p| p.immutable.clone())
        .map(|r| match r {
            Ok(()) => "applied (chattr +i)".to_string(),
            Err(why) => format!("not applied: {why}"),
        });
    if args.copy.json {
        output::json(&IngestJson {
            dataset_path: outcome.path.display().to_string(),
            copy: CopyJson::new(&outcome.report),
            dataset: outcome.info.as_ref(),
            read_only: outcome.protection.as_ref().is_some_and(|p| p.read_only),
            immutable,
            retention: outcome.retention.clone(),
            zfs,
        });
        return Ok(status);
    }
    print_copy_report(&outcome.report, args.copy.dry_run);
    if let Some(info) = &outcome.info {
        output::data(format!(
            "ingested {}/raw/{} → {} ({} files, {})",
            info.project,
            info.dataset,
            outcome.path.display(),
            info.files,
            bytes(info.bytes)
        ));
        match &outcome.retention {
            Some(retention) => output::data(format!("write protection: {retention}")),
            None => output::data("write protection: read-only (chmod -R a-w)"),
        }
        if let Some(imm) = immutable {
            output::data(format!("immutable flag: {imm}"));
        }
        match (&outcome.snapshot, zfs) {
            (Some(Ok(None)), Some(note)) => output::note(note),
            (_, Some(zfs)) => output::data(zfs),
            _ => {}
        }
    } else if !args.copy.dry_run {
        output::error(
            "ingest incomplete: nothing was placed in the raw area; fix the failures above and \
             run the same command again (it resumes)",
        );
    }
    Ok(status)
}
