//! `hpcstage copies [PRJ/DATASET]`: the 3-2-1 check of raw datasets.

use anyhow::{bail, Context, Result};
use hpcstage_staging::copies::{self, DatasetCopies};
use hpcstage_staging::ledger::Ledger;
use hpcstage_staging::remote::Location;

use super::Status;
use crate::args::CopiesArgs;
use crate::config::{parse_location, Settings};
use crate::output;

pub(crate) fn run(settings: &Settings, args: &CopiesArgs) -> Result<Status> {
    let ledger = Ledger::open(&settings.state_dir)?;
    let all = gather(settings, &ledger, args.dataset.as_deref(), args.verify)?;
    if args.json {
        output::json(&all);
    } else {
        for (i, d) in all.iter().enumerate() {
            if i > 0 {
                output::data("");
            }
            print(d);
        }
        if all.is_empty() {
            output::note("no datasets under nas_root/*/raw/");
        }
    }
    let failed_check = all
        .iter()
        .any(|d| args.verify && d.copies.iter().any(|c| c.status == "failed"));
    Ok(if failed_check {
        Status::Integrity
    } else if args.fail_on_risk && all.iter().any(|d| !d.holds) {
        Status::AtRisk
    } else {
        Status::Success
    })
}

/// The copies of one dataset (`PRJ/NAME` or `PRJ/raw/NAME`) or of every dataset.
pub(crate) fn gather(
    settings: &Settings,
    ledger: &Ledger,
    dataset: Option<&str>,
    verify: bool,
) -> Result<Vec<DatasetCopies>> {
    let root = match settings.nas_root.as_deref().map(parse_location).transpose()? {
        Some(Location::Local(root)) => root,
        Some(Location::Remote(_)) => bail!(
            "the 3-2-1 check reads the NAS where it is mounted; nas_root is on an SSH host: run it on the NAS host or a node that mounts it"
        ),
        None => bail!("no nas_root configured: set nas_root in the config or pass --nas-root DIR"),
    };
    let wanted: Vec<(String, String)> = match dataset {
        Some(d) => {
            let parts: Vec<&str> = d.trim_matches('/').split('/').collect();
            let (p, n) = match parts.as_slice() {
                [p, n] | [p, "raw", n] => (p.to_string(), n.to_string()),
                _ => bail!("{d:?}: expected PRJ/DATASET (or PRJ/raw/DATASET)"),
            };
            let path = hpcstage_staging::ingest::raw_path(&root, &p, &n);
            if !path.is_dir() {
                bail!(
                    "dataset {} does not exist; `hpcstage copies` without an argument lists every dataset",
                    path.display()
                );
            }
            vec![(p, n)]
        }
        None => copies::datasets(&root),
    };
    wanted
        .iter()
        .map(|(p, n)| {
            copies::of_dataset(&root, p, n, &settings.copies, ledger, verify)
                .with_context(|| format!("copies of {p}/{n}"))
        })
        .collect()
}

fn print(d: &DatasetCopies) {
    output::data(format!(
        "{}/{} ({})",
        d.project,
        d.dataset,
        d.path.display()
    ));
    let mut table = output::table(&[
        "COPY",
        "KIND",
        "MEDIA",
        "OFFSITE",
        "LAST VERIFIED",
        "STATUS",
        "LOCATION",
    ]);
    for c in &d.copies {
        let status = if c.detail.is_empty() {
            c.status.clone()
        } else {
            format!("{}: {}", c.status, c.detail)
        };
        table.add_row(vec![
            c.name.clone(),
            c.kind.clone(),
            c.media.clone(),
            if c.offsite { "yes" } else { "no" }.to_string(),
            c.last_verified.map_or("never".to_string(), |t| {
                t.strftime("%Y-%m-%d %H:%M").to_string()
            }),
            status,
            c.location.clone(),
        ]);
    }
    output::data(table.to_string());
    if d.holds {
        output::data("3-2-1: holds");
    } else {
        output::data(format!("3-2-1: FAILS ({})", d.reasons.join("; ")));
    }
}
