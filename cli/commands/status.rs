//! `hpcstage status`: staged datasets and runs with their purge deadlines.

use anyhow::Result;
use hpcstage_lifecycle::report::{build, gather, Filter};
use hpcstage_staging::fmt::bytes;

use super::Status;
use crate::args::StatusArgs;
use crate::config::Settings;
use crate::output;

pub(crate) fn run(settings: &Settings, args: &StatusArgs) -> Result<Status> {
    if !settings.policy_configured {
        output::warn(
            "no purge policy configured; assuming mtime, 30 days \
             (set [purge] basis/age in /etc/hpcstage/config.toml)",
        );
    }
    let now = jiff::Timestamp::now();
    let (items, warnings) = gather(&settings.state_dir, &[], &settings.policy, now)?;
    for w in warnings {
        output::warn(w);
    }
    let all = Filter {
        within: None,
        owner: None,
        project: None,
    };
    let report = build(items, &all, &settings.policy, now);
    if args.json {
        output::json(&report.items);
        return Ok(Status::Success);
    }
    if report.items.is_empty() {
        output::note(format!(
            "nothing tracked yet in {} (stage a dataset with `hpcstage stage`)",
            settings.state_dir.display()
        ));
        return Ok(Status::Success);
    }
    let mut t = output::table(&[
        "kind",
        "id",
        "path",
        "files",
        "size",
        "deadline",
        "days left",
        "status",
    ]);
    for i in &report.items {
        t.add_row(vec![
            format!("{:?}", i.kind).to_lowercase(),
            format!("{}/{}", i.project, i.name),
            i.path.display().to_string(),
            i.files.to_string(),
            bytes(i.bytes),
            i.deadline.strftime("%Y-%m-%d").to_string(),
            i.days_left.to_string(),
            i.safety.label().to_string(),
        ]);
    }
    output::data(t.to_string());
    Ok(Status::Success)
}
