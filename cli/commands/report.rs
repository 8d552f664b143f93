//! `hpcstage report`: what scratch will purge soon, grouped by project and owner, with
//! AT RISK first; as a table, JSON, CSV or Markdown (for the body of an email).

use anyhow::{Context, Result};
use comfy_table::{Cell, Color};
use hpcstage_lifecycle::report::{
    apply_whole_folder, build, gather, load_runs, Filter, Item, Report, Safety, Sources,
};
use hpcstage_lifecycle::run::RunView;
use hpcstage_staging::human::{bytes, count};

use super::ExitStatus;
use crate::args::{ReportArgs, ReportFormat};
use crate::config::{absolute, Settings};
use crate::output;

/// Every tracked item with its verdict (the one `report`, `status` and `clean` share),
/// under the `scan` roots when any are given, and the ledger's runs. Job states come from
/// one batched scheduler query (the one `status` makes): a stage a job still reads is IN
/// USE. Warnings are printed.
pub(crate) fn tracked(
    settings: &Settings,
    scan: &[std::path::PathBuf],
    now: jiff::Timestamp,
) -> Result<(Vec<Item>, Vec<RunView>)> {
    let roots = scan
        .iter()
        .map(|r| absolute(r))
        .collect::<Result<Vec<_>>>()?;
    let (views, warnings) = load_runs(&settings.state_dir, Some(&settings.client))?;
    let (mut items, more) = gather(&Sources {
        state_dir: &settings.state_dir,
        views: &views,
        scan_roots: &roots,
        policy: &settings.policy,
        scratch_root: settings.scratch_root.as_deref(),
        now,
    })?;
    for w in warnings.into_iter().chain(more) {
        output::warn(w);
    }
    if settings.policy.whole_folder {
        if let Some(root) = &settings.scratch_root {
            apply_whole_folder(&mut items, root, now);
        }
    }
    Ok((items, views))
}

pub(crate) fn run(settings: &Settings, args: &ReportArgs) -> Result<ExitStatus> {
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
    if let Some(warning) = settings.policy_warning() {
        output::warn(warning);
    }
    let now = jiff::Timestamp::now();
    let (items, _) = tracked(settings, &args.scan, now)?;
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
    let breaking = if args.copies {
        Some(super::copies::breaking(settings)?)
    } else {
        None
    };
    match (args.format, &breaking) {
        (ReportFormat::Json, Some(b)) => {
            output::json(&serde_json::json!({ "report": report, "breaking_321": b }))
        }
        (ReportFormat::Json, None) => output::json(&report),
        (ReportFormat::Csv, _) => output::data_bytes(&csv(&report)?),
        (ReportFormat::Markdown, _) => output::data(markdown(&report)),
        (ReportFormat::Table, _) => output::data(table(&report)),
    }
    if let Some(b) = &breaking {
        super::copies::print_section(b, args.format)?;
    }
    let breaks_321 = breaking.as_ref().is_some_and(|b| !b.is_empty());
    Ok(
        if args.fail_on_risk && (report.totals.at_risk > 0 || breaks_321) {
            ExitStatus::AtRisk
        } else {
            ExitStatus::Success
        },
    )
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
    let t = &r.totals;
    let mut line = format!(
        "{}, {} in {}; {} AT RISK ({})",
        count(t.items as u64, "item"),
        bytes(t.bytes),
        count(t.files, "file"),
        t.at_risk,
        bytes(t.at_risk_bytes),
    );
    for (n, what) in [(t.incomplete, "INCOMPLETE"), (t.in_use, "IN USE")] {
        if n > 0 {
            line.push_str(&format!(", {n} {what}"));
        }
    }
    line.push_str(&format!(
        ", {} expired, {} partly purged",
        t.expired, t.partly_purged
    ));
    line
}

/// What an empty report says instead of an empty table.
fn nothing(r: &Report) -> String {
    match r.within_days {
        Some(d) => format!(
            "Nothing expires within {} and nothing is at risk.",
            count(d, "day")
        ),
        None => "Nothing is tracked on scratch.".to_string(),
    }
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

fn row(i: &Item) -> [String; 10] {
    let [deadline, days_left] = i.deadline_cells();
    [
        i.project.clone(),
        i.owner.clone(),
        i.kind.as_str().to_owned(),
        i.name.clone(),
        bytes(i.bytes),
        i.files.to_string(),
        deadline,
        days_left,
        i.safety.label().to_string(),
        i.reason.clone(),
    ]
}

fn table(r: &Report) -> String {
    if r.items.is_empty() {
        return format!("{}\n{}", heading(r), nothing(r));
    }
    let mut t = output::table(&HEADER);
    for i in &r.items {
        // Colour shows only on a terminal (output::table turns styling off elsewhere).
        let colour = match i.safety {
            Safety::AtRisk => Some(Color::Red),
            Safety::Incomplete
            | Safety::InUse
            | Safety::Partial
            | Safety::PartlyPurged
            | Safety::Expired => Some(Color::Yellow),
            Safety::Dismissed | Safety::Safe | Safety::Cleaned => None,
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
            "**{} AT RISK**: data that may exist only on scratch. Get it onto the \
             NAS before the deadline (`hpcstage pull RUN` for run results).\n\n",
            count(r.totals.at_risk as u64, "item")
        ));
    }
    if r.items.is_empty() {
        out.push_str(&nothing(r));
        out.push('\n');
        return out;
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::ASCII_MARKDOWN);
    t.force_no_tty();
    t.set_header(HEADER.to_vec());
    for i in &r.items {
        let mut cells = row(i).map(|c| c.replace('|', "\\|").replace('\n', " "));
        if i.safety == Safety::AtRisk {
            cells[8] = format!("**{}**", cells[8]);
        }
        t.add_row(cells);
    }
    out.push_str(&t.to_string());
    out.push('\n');
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
        "removable",
    ])?;
    for i in &r.items {
        w.write_record([
            i.project.clone(),
            i.owner.clone(),
            i.kind.as_str().to_owned(),
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
            i.removable.to_string(),
        ])?;
    }
    Ok(w.into_inner()?)
}
