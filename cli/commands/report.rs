//! `hpcstage report`: what scratch will purge soon, grouped by project and owner, with
//! AT RISK first; as a table, JSON, CSV or Markdown (for the body of an email).

use anyhow::{Context, Result};
use comfy_table::{Cell, Color};
use hpcstage_lifecycle::report::{build, gather, Filter, Report, Safety};
use hpcstage_staging::fmt::bytes;

use super::Status;
use crate::args::{ReportArgs, ReportFormat};
use crate::config::{absolute, Settings};
use crate::output;

pub(crate) fn run(settings: &Settings, args: &ReportArgs) -> Result<Status> {
    let within = if args.all {
        None
    } else {
        Some(match &args.within {
            Some(w) => humantime::parse_duration(w).with_context(|| {
                format!("--within {w:?} is not a duration; write e.g. 7d or \"2 weeks\"")
            })?,
            None => settings.policy.warn,
        })
    };
    if !settings.policy_configured {
        output::warn(
            "no purge policy configured; assuming mtime, 30 days \
             (set [purge] basis/age in /etc/hpcstage/config.toml)",
        );
    }
    let now = jiff::Timestamp::now();
    let roots = args
        .scan
        .iter()
        .map(|r| absolute(r))
        .collect::<Result<Vec<_>>>()?;
    let (items, warnings) = gather(&settings.state_dir, &roots, &settings.policy, now)?;
    for w in warnings {
        output::warn(w);
    }
    let mut items = items;
    if settings.policy.whole_folder {
        if let Some(root) = &settings.scratch_root {
            hpcstage_lifecycle::report::apply_whole_folder(&mut items, root, now);
        }
    }
    let report = build(
        items,
        &Filter {
            within,
            owner: args.owner.clone(),
            project: args.project.clone(),
        },
        &settings.policy,
        now,
    );
    match args.format {
        ReportFormat::Json => output::json(&report),
        ReportFormat::Csv => output::data_bytes(&csv(&report)?),
        ReportFormat::Markdown => output::data(markdown(&report)),
        ReportFormat::Table => output::data(table(&report)),
    }
    Ok(if args.fail_on_risk && report.totals.at_risk > 0 {
        Status::AtRisk
    } else {
        Status::Success
    })
}

fn date(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%d").to_string()
}

fn heading(r: &Report) -> String {
    let window = r.within_days.map_or("all tracked items".to_string(), |d| {
        format!("expiring within {d} days")
    });
    let whole = if r.policy_whole_folder {
        ", whole folder at once"
    } else {
        ""
    };
    format!(
        "Scratch purge report, {} ({window}; policy: {} older than {}{whole})",
        r.generated_at.strftime("%Y-%m-%d %H:%M UTC"),
        r.policy_basis,
        r.policy_age
    )
}

fn totals_line(r: &Report) -> String {
    format!(
        "{} items, {} in {} files; {} AT RISK ({}), {} expired, {} partly purged",
        r.totals.items,
        bytes(r.totals.bytes),
        r.totals.files,
        r.totals.at_risk,
        bytes(r.totals.at_risk_bytes),
        r.totals.expired,
        r.totals.partly_purged
    )
}

const HEADER: [&str; 10] = [
    "project",
    "owner",
    "kind",
    "name",
    "size",
    "files",
    "deadline",
    "days left",
    "status",
    "why",
];

fn row(i: &hpcstage_lifecycle::report::Item) -> [String; 10] {
    [
        i.project.clone(),
        i.owner.clone(),
        format!("{:?}", i.kind).to_lowercase(),
        i.name.clone(),
        bytes(i.bytes),
        i.files.to_string(),
        date(i.deadline),
        i.days_left.to_string(),
        i.safety.label().to_string(),
        i.reason.clone(),
    ]
}

fn table(r: &Report) -> String {
    let mut t = output::table(&HEADER);
    for i in &r.items {
        // Colour shows only on a terminal (output::table turns styling off elsewhere).
        let colour = match i.safety {
            Safety::AtRisk => Some(Color::Red),
            Safety::PartlyPurged | Safety::Expired => Some(Color::Yellow),
            Safety::Dismissed | Safety::Safe => None,
        };
        t.add_row(row(i).into_iter().enumerate().map(|(n, text)| {
            let cell = Cell::new(text);
            match colour {
                Some(c) if n == 8 => cell.fg(c),
                _ => cell,
            }
        }));
    }
    format!("{}\n{t}\n{}", heading(r), totals_line(r))
}

fn markdown(r: &Report) -> String {
    let mut out = format!("## {}\n\n", heading(r));
    if r.totals.at_risk > 0 {
        out.push_str(&format!(
            "**{} item(s) AT RISK**: data that may exist only on scratch. Get it onto the \
             NAS before the deadline (`hpcstage pull RUN` for run results).\n\n",
            r.totals.at_risk
        ));
    }
    if r.items.is_empty() {
        out.push_str("Nothing expires in this window.\n");
        return out;
    }
    out.push_str(&format!("| {} |\n", HEADER.join(" | ")));
    out.push_str(&format!("|{}\n", "---|".repeat(HEADER.len())));
    for i in &r.items {
        let cells: Vec<String> = row(i)
            .iter()
            .map(|c| c.replace('|', "\\|").replace('\n', " "))
            .collect();
        let status = if i.safety == Safety::AtRisk {
            format!("**{}**", cells[8])
        } else {
            cells[8].clone()
        };
        let mut cells = cells;
        cells[8] = status;
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out.push_str(&format!("\n{}\n", totals_line(r)));
    out
}

fn csv(r: &Report) -> Result<Vec<u8>> {
    let mut w = ::csv::Writer::from_writer(Vec::new());
    w.write_record([
        "project",
        "owner",
        "kind",
        "name",
        "path",
        "bytes",
        "files",
        "basis",
        "oldest",
        "deadline",
        "days_left",
        "whole_folder",
        "status",
        "reason",
    ])?;
    for i in &r.items {
        w.write_record([
            i.project.clone(),
            i.owner.clone(),
            format!("{:?}", i.kind).to_lowercase(),
            i.name.clone(),
            i.path.display().to_string(),
            i.bytes.to_string(),
            i.files.to_string(),
            i.basis.to_string(),
            i.oldest.to_string(),
            i.deadline.to_string(),
            i.days_left.to_string(),
            i.whole_folder.to_string(),
            i.safety.label().to_string(),
            i.reason.clone(),
        ])?;
    }
    Ok(w.into_inner()?)
}
