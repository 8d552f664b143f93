//! `hpcstage copies [PRJ/DATASET]`: the 3-2-1 check of raw datasets.

use anyhow::{bail, Context, Result};
use hpcstage_staging::copies::{self, DatasetCopies};
use hpcstage_staging::ledger::Ledger;
use hpcstage_staging::storage;

use super::ExitStatus;
use crate::args::{CopiesArgs, ReportFormat};
use crate::config::{parse_location, Settings};
use crate::output;

pub(crate) fn run(settings: &Settings, args: &CopiesArgs) -> Result<ExitStatus> {
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
        ExitStatus::Integrity
    } else if args.fail_on_risk && all.iter().any(|d| !d.holds) {
        ExitStatus::AtRisk
    } else {
        ExitStatus::Success
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
        Some(root) => match storage::local_folder(&root) {
            Ok(dir) => dir.to_path_buf(),
            Err(kind) => bail!(
                "the 3-2-1 check reads the NAS where it is mounted; nas_root {root} is {kind}: run it on a node that mounts the NAS"
            ),
        },
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

/// The raw datasets that break 3-2-1 (for `report --copies`).
pub(crate) fn breaking(settings: &Settings) -> Result<Vec<DatasetCopies>> {
    let ledger = Ledger::open(&settings.state_dir)?;
    Ok(gather(settings, &ledger, None, false)?
        .into_iter()
        .filter(|d| !d.holds)
        .collect())
}

/// The `report --copies` section in the report's format (JSON goes with the report).
pub(crate) fn print_section(breaking: &[DatasetCopies], format: ReportFormat) -> Result<()> {
    let line = |d: &DatasetCopies| -> [String; 4] {
        [
            format!("{}/{}", d.project, d.dataset),
            d.copies.iter().filter(|c| c.counts()).count().to_string(),
            d.copies
                .iter()
                .map(|c| {
                    format!(
                        "{} ({}{})",
                        c.name,
                        c.media,
                        if c.offsite { ", off-site" } else { "" }
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
            d.reasons.join("; "),
        ]
    };
    const HEADER: [&str; 4] = ["DATASET", "COPIES", "WHERE", "WHY 3-2-1 FAILS"];
    match format {
        ReportFormat::Json => {}
        ReportFormat::Table => {
            output::data("");
            if breaking.is_empty() {
                output::data("3-2-1: every raw dataset holds (hpcstage copies shows them)");
                return Ok(());
            }
            output::data(format!(
                "3-2-1: {} raw datasets break it (hpcstage copies PRJ/DATASET for details)",
                breaking.len()
            ));
            let mut t = output::table(&HEADER);
            for d in breaking {
                t.add_row(line(d).to_vec());
            }
            output::data(t.to_string());
        }
        ReportFormat::Markdown => {
            let mut out = String::from("\n## Raw datasets that break 3-2-1\n\n");
            if breaking.is_empty() {
                out.push_str(
                    "None: every raw dataset has 3 copies, on 2 kinds of media, 1 off-site.\n",
                );
            } else {
                out.push_str(&format!(
                    "| {} |\n|{}\n",
                    HEADER.join(" | "),
                    "---|".repeat(HEADER.len())
                ));
                for d in breaking {
                    out.push_str(&format!("| {} |\n", line(d).join(" | ")));
                }
            }
            output::data(out);
        }
        ReportFormat::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record(["dataset", "copies", "where", "why"])?;
            for d in breaking {
                w.write_record(line(d))?;
            }
            let mut bytes = b"\n".to_vec();
            bytes.extend(w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?);
            output::data_bytes(&bytes);
        }
    }
    Ok(())
}
