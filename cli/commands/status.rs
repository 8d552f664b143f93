//! `hpcstage status [RUN]`: runs with their jobs (states refreshed with one batched
//! scheduler query) and staged datasets, with purge deadlines.

use anyhow::Result;
use hpcstage_lifecycle::failures::failed_tasks;
use hpcstage_lifecycle::refresh::{ended, refresh};
use hpcstage_lifecycle::report::{build, Filter, Safety};
use hpcstage_lifecycle::run::{state_label, JobRole, JobView, RunStore, RunView};
use hpcstage_staging::human::bytes;

use super::ExitStatus;
use crate::args::StatusArgs;
use crate::config::Settings;
use crate::output;

fn job_cell(job: Option<&JobView>) -> String {
    match job {
        None => "-".into(),
        Some(j) => match &j.facts {
            None => format!("{} (submitted)", j.job_id),
            // sacct reports 0:0 for jobs still pending or running: no exit code yet;
            // a pending job says why it waits, as squeue does.
            Some(f) => format!(
                "{} {}{}{}",
                j.job_id,
                state_label(&f.state),
                f.exit_code
                    .as_ref()
                    .filter(|_| ended(&f.state))
                    .map(|c| format!(" exit {c}"))
                    .unwrap_or_default(),
                f.reason
                    .as_ref()
                    .filter(|_| !ended(&f.state))
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
        },
    }
}

/// The compute job's cell in the runs table, with the array tasks that failed.
fn compute_cell(view: &RunView) -> String {
    let job = view.job(JobRole::Compute);
    let mut cell = job_cell(job);
    if let Some(j) = job {
        let failed = failed_tasks(j.facts.as_ref(), &view.record.run_dir);
        let tasks: Vec<String> = failed
            .iter()
            .filter_map(|t| t.task.map(|n| n.to_string()))
            .collect();
        if !tasks.is_empty() {
            cell.push_str(&format!("; failed tasks {}", tasks.join(", ")));
        }
    }
    cell
}

/// A phase, role or executor as `--json` spells it (`pull-failed`), so that the table and
/// the JSON agree.
pub(crate) fn label<T: serde::Serialize + std::fmt::Debug>(value: T) -> String {
    serde_json::to_value(&value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{value:?}"))
}

pub(crate) fn run(settings: &Settings, args: &StatusArgs) -> Result<ExitStatus> {
    if let Some(warning) = settings.policy_warning().filter(|_| !args.json) {
        output::warn(warning);
    }
    let store = RunStore::open(&settings.state_dir)?;
    if let Some(run) = &args.run {
        let id = store.resolve(run)?;
        let mut views: Vec<RunView> = vec![store.load(&id)?];
        for w in refresh(&store, &mut views, &settings.state_dir, &settings.client) {
            output::warn(w);
        }
        let view = &views[0];
        if args.json {
            let mut json = serde_json::to_value(view)?;
            json["stage_shards"] =
                serde_json::to_value(hpcstage_staging::shard::results(&view.record.input.path))?;
            json["failed_tasks"] = serde_json::to_value(
                view.job(JobRole::Compute)
                    .map(|j| failed_tasks(j.facts.as_ref(), &view.record.run_dir))
                    .unwrap_or_default(),
            )?;
            output::json(&json);
        } else {
            let r = &view.record;
            output::data(format!("run {} ({})", r.id, phase_cell(view)));
            if let Some(missing) = &view.partial {
                for m in missing {
                    output::data(format!("  missing:   {m}"));
                }
            }
            output::data(format!(
                "  template:  {} {} ({} executor)",
                r.template,
                r.template_version,
                label(r.executor)
            ));
            output::data(format!(
                "  input:     {} ({})",
                r.input.stage_id,
                r.input.path.display()
            ));
            output::data(format!("  run folder: {}", r.run_dir.display()));
            output::data(format!("  results:   {}", r.results_dir.display()));
            for j in &view.jobs {
                output::data(format!("  {} job: {}", label(j.role), job_cell(Some(j))));
                if let Some(f) = &j.facts {
                    output::data(format!(
                        "      nodes {}, partition {}, elapsed {} s, TRES {}",
                        f.nodes.as_deref().unwrap_or("-"),
                        f.partition.as_deref().unwrap_or("-"),
                        f.elapsed_secs.map_or("-".into(), |s| s.to_string()),
                        f.alloc_tres.as_deref().unwrap_or("-")
                    ));
                }
            }
            // A stage spread across transfer nodes: the copy is only as fast as its
            // slowest shard.
            for r in hpcstage_staging::shard::results(&r.input.path) {
                output::data(format!("  stage {}", hpcstage_staging::shard::describe(&r)));
            }
            if let Some(j) = view.job(JobRole::Compute) {
                let failed = failed_tasks(j.facts.as_ref(), &r.run_dir);
                if !failed.is_empty() {
                    output::data("  failed:");
                    for t in &failed {
                        output::data(format!("    {}", t.describe()));
                    }
                    output::data(format!(
                        "  retry them with `hpcstage retry {}`, or give the run up with `hpcstage dismiss {}`",
                        r.id, r.id
                    ));
                }
            }
        }
        return Ok(ExitStatus::Success);
    }

    // One batched scheduler query for every run; the same states decide what is IN USE.
    let now = jiff::Timestamp::now();
    let (items, views) = super::report::tracked(settings, &[], now)?;
    let all = Filter {
        within: None,
        owner: None,
        project: None,
    };
    let report = build(items, &all, &settings.policy, now);
    if args.json {
        output::json(&serde_json::json!({ "runs": views, "items": report.items }));
        return Ok(ExitStatus::Success);
    }
    if report.items.is_empty() && views.is_empty() {
        output::note(format!(
            "nothing tracked yet in {} (stage a dataset with `hpcstage stage`)",
            settings.state_dir.display()
        ));
        return Ok(ExitStatus::Success);
    }
    if !views.is_empty() {
        let mut t = output::table(&["run", "template", "phase", "compute job", "pull-back job"]);
        for v in &views {
            t.add_row(vec![
                v.record.id.clone(),
                v.record.template.clone(),
                phase_cell(v),
                compute_cell(v),
                job_cell(v.job(JobRole::PullBack)),
            ]);
        }
        output::data(t.to_string());
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
        let [deadline, days_left] = i.deadline_cells();
        t.add_row(vec![
            i.kind.as_str().to_owned(),
            format!("{}/{}", i.project, i.name),
            i.path.display().to_string(),
            i.files.to_string(),
            bytes(i.bytes),
            deadline,
            days_left,
            i.safety.label().to_string(),
        ]);
    }
    output::data(t.to_string());
    // What is not simply SAFE says why (what failed, which run reads it, what is missing).
    for i in report.items.iter().filter(|i| i.safety != Safety::Safe) {
        output::data(format!(
            "{}/{}: {}: {}",
            i.project,
            i.name,
            i.safety.label(),
            i.reason
        ));
    }
    Ok(ExitStatus::Success)
}

/// A run's phase, with PARTIAL for a partial pull and the clean-up.
fn phase_cell(v: &RunView) -> String {
    let mut text = label(v.phase);
    if v.partial.is_some() {
        text.push_str(" PARTIAL");
    }
    if v.cleaned_at.is_some() {
        text.push_str(", cleaned");
    }
    text
}
