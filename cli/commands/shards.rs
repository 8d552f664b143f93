//! `hpcstage stage --shards N` and the two hidden forms its jobs run: `--shard I/N` (one
//! array task: one shard) and `--merge-shards` (the final task). The plan and the copy
//! are `staging::shard`'s, the jobs `lifecycle::shards`'s; this file turns the arguments
//! into them and prints.

use anyhow::{bail, Context, Result};
use hpcstage_lifecycle::shards::{submit, under_way, ShardJobs};
use hpcstage_slurm::client::SlurmClient;
use hpcstage_staging::human::{bytes, count, shell_quote as quote};
use hpcstage_staging::ledger::Ledger;
use hpcstage_staging::shard;
use hpcstage_staging::stage::{self, StageSettings};
use hpcstage_staging::storage::Storage;

use super::{copy_status, print_copy_report, ExitStatus};
use crate::args::StageArgs;
use crate::config::Settings;
use crate::output;

/// Runs the sharded part of `stage` that `args` asks for. `Some` when that was all there
/// was to do; `None` when the normal stage follows (after `--merge-shards`, or without
/// any shard flag).
pub(crate) fn dispatch(
    settings: &Settings,
    args: &StageArgs,
    stage: &StageSettings,
    store: &dyn Storage,
) -> Result<Option<ExitStatus>> {
    let dest = &stage.destination;
    // As `stage::stage_from` copies: the mtime as the purge policy wants it.
    let mut copy = stage.copy.clone();
    copy.preserve_mtime = stage.policy.preserve_mtime();
    if let Some(n) = args.shards.shards.filter(|_| !args.copy.dry_run) {
        return submit_shards(settings, args, stage, store, n).map(Some);
    }
    if let Some(spec) = &args.shards.shard {
        let (index, n) = parse_spec(spec)?;
        let plan = shard::read_plan(dest).with_context(|| {
            format!(
                "no shard plan for {}; `hpcstage stage --shards N` writes it",
                dest.display()
            )
        })?;
        if plan.shards.len() != n as usize {
            bail!(
                "--shard {spec}: the plan in {} has {} shards, not {n}",
                shard::jobs_dir(dest).display(),
                plan.shards.len()
            );
        }
        let bar = output::Bar::new("shard", args.copy.json);
        let done = shard::copy_shard(store, dest, index, "task", &copy, &bar);
        bar.finish();
        let (report, result) = done?;
        if !report.ok() {
            print_copy_report(&report, false);
        }
        output::data(shard::describe(&result));
        return Ok(Some(copy_status(&report)));
    }
    if args.shards.merge_shards {
        let bar = output::Bar::new("merge", args.copy.json);
        let merged = shard::merge(store, dest, &copy, &bar);
        bar.finish();
        let merged = merged?;
        for index in &merged.rerun {
            output::note(format!(
                "shard {index} was not finished by its task: rerun here"
            ));
        }
        for r in shard::results(dest) {
            output::note(shard::describe(&r));
        }
        output::note(format!(
            "moved {} from the shards into {}",
            count(merged.moved, "verified file"),
            dest.display()
        ));
    }
    Ok(None)
}

/// `I/N` with `I < N`.
fn parse_spec(spec: &str) -> Result<(u32, u32)> {
    let parsed = spec
        .split_once('/')
        .and_then(|(i, n)| Some((i.parse::<u32>().ok()?, n.parse::<u32>().ok()?)));
    match parsed {
        Some((i, n)) if i < n => Ok((i, n)),
        _ => bail!("--shard {spec:?}: expected I/N with 0 <= I < N, e.g. --shard 0/4"),
    }
}

/// Plans the shards and submits the array job and its final task.
fn submit_shards(
    settings: &Settings,
    args: &StageArgs,
    stage: &StageSettings,
    store: &dyn Storage,
    n: u32,
) -> Result<ExitStatus> {
    let client = SlurmClient::new(settings.client.clone());
    if !client.available() {
        bail!("--shards needs SLURM (sbatch on PATH): the shards are copied by an array job on the transfer partition; without it, stage without --shards");
    }
    let dest = &stage.destination;
    // Held until both jobs are submitted: a second `stage --shards` into `dest` now
    // waits for nothing and refuses, as a second `stage` does.
    let _lock = shard::lock(dest)?;
    if let Some((jobs, state)) = under_way(&client, dest)? {
        bail!(
            "a sharded stage into {} is under way: array job {}, final job {} ({}); \
             wait for job {} to end (`hpcstage status` or squeue), or cancel both with \
             `scancel {} {}`, then stage again",
            dest.display(),
            jobs.array,
            jobs.last,
            state.name(),
            jobs.last,
            jobs.last,
            jobs.array
        );
    }
    let plan = shard::plan(store, dest, &stage.copy.filter, n)?;
    let mut command = format!(
        "{} stage {} {} --project {} --dataset {}",
        super::submit::global_command(settings)?,
        quote(&stage.source.to_string()),
        quote(&dest.display().to_string()),
        quote(&stage.project),
        quote(&stage.dataset),
    );
    for (flag, globs) in [
        ("--include", &args.copy.include),
        ("--exclude", &args.copy.exclude),
    ] {
        for g in globs {
            command.push_str(&format!(" {flag} {}", quote(g)));
        }
    }
    if args.allow_raw_area {
        command.push_str(" --allow-raw-area");
    }
    let jobs = ShardJobs {
        stage_command: &command,
        dest,
        shards: n,
        partition: &settings.slurm.transfer_partition,
        time: &settings.slurm.pull_time,
        name: &stage.dataset,
        then: args.shards.then.as_deref(),
    };
    let submitted = submit(&client, &jobs)
        .with_context(|| format!("cannot submit the shard jobs of {}", dest.display()))?;
    // A first stage is tracked from now on (`status`, `report`, `clean`), as incomplete
    // until the final task's stage replaces the record.
    let ledger = Ledger::open(&settings.state_dir)
        .with_context(|| format!("cannot open the ledger in {}", settings.state_dir.display()))?;
    stage::record_started(
        stage,
        Some(&ledger),
        &format!(
            "a sharded stage is under way: array job {}, final job {}; complete when job {} has ended COMPLETED",
            submitted.array, submitted.last, submitted.last
        ),
    );
    if args.copy.json {
        output::json(&serde_json::json!({
            "destination": dest,
            "array_job": submitted.array.to_string(),
            "final_job": submitted.last.to_string(),
            "shards": plan.shards,
            "jobs_dir": submitted.dir,
        }));
        return Ok(ExitStatus::Success);
    }
    output::data(format!(
        "array job {} ({} on partition {}), final job {} (afterany:{})",
        submitted.array,
        count(u64::from(n), "shard"),
        settings.slurm.transfer_partition,
        submitted.last,
        submitted.array
    ));
    for s in &plan.shards {
        output::data(format!(
            "  shard {}: {}, {}",
            s.index,
            count(s.files, "file"),
            bytes(s.bytes)
        ));
    }
    output::data(format!(
        "  scripts and logs: {}; the stage is complete when job {} has ended COMPLETED",
        submitted.dir.display(),
        submitted.last
    ));
    Ok(ExitStatus::Success)
}
