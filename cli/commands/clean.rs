//! `hpcstage clean`: remove scratch copies that are provably safe on the NAS; refuse the
//! rest with the reason.

use anyhow::Result;
use hpcstage_lifecycle::clean::{assess_run, assess_stage, remove, Candidate};
use hpcstage_lifecycle::report::scan_markers;
use hpcstage_lifecycle::run::RunStore;
use hpcstage_staging::fmt::bytes;
use hpcstage_staging::ledger::Ledger;

use super::Status;
use crate::args::CleanArgs;
use crate::config::{absolute, Settings};
use crate::output;

pub(crate) fn run(settings: &Settings, args: &CleanArgs) -> Result<Status> {
    let scratch_root = settings.scratch_root()?;
    let ledger = Ledger::open(&settings.state_dir)?;
    let runs = RunStore::open(&settings.state_dir)?;
    let mut candidates: Vec<(Candidate, Option<hpcstage_staging::record::StageRecord>)> =
        Vec::new();
    for stage in ledger.stages()? {
        match stage {
            Ok(r) => candidates.push((assess_stage(&r, scratch_root), Some(r))),
            Err(e) => output::warn(format!("skipping damaged ledger entry: {e}")),
        }
    }
    for id in runs.ids()? {
        match runs.load(&id) {
            Ok(view) => candidates.push((assess_run(&view.record, scratch_root), None)),
            Err(e) => output::warn(format!("skipping damaged run {id}: {e}")),
        }
    }
    for root in &args.scan {
        let (stages, found) = scan_markers(&absolute(root)?, 6);
        candidates.extend(
            stages
                .into_iter()
                .map(|r| (assess_stage(&r, scratch_root), None)),
        );
        candidates.extend(found.iter().map(|r| (assess_run(r, scratch_root), None)));
    }
    let mut seen = std::collections::HashSet::new();
    candidates.retain(|(c, _)| seen.insert(c.path.clone()));

    let mut freed = 0u64;
    let mut failed = 0usize;
    let mut removed = Vec::new();
    for (c, record) in &candidates {
        if c.refused.is_some() || args.dry_run {
            continue;
        }
        match remove(c) {
            Ok(()) => {
                freed += c.bytes;
                removed.push(c.path.clone());
                if let Some(r) = record {
                    if let Err(e) = ledger.remove_stage(r) {
                        failed += 1;
                        output::error(format!(
                            "removed {}, but not its ledger entry: {e}",
                            c.path.display()
                        ));
                    }
                }
            }
            Err(e) => {
                failed += 1;
                output::error(format!("{}: {e}", c.path.display()));
            }
        }
    }
    if args.json {
        let list: Vec<_> = candidates.iter().map(|(c, _)| c).collect();
        output::json(&serde_json::json!({
            "dry_run": args.dry_run,
            "candidates": list,
            "removed": removed,
            "freed_bytes": freed,
        }));
    } else {
        for (c, _) in &candidates {
            match &c.refused {
                Some(why) if why != "already gone" => {
                    output::data(format!("keep    {}: {why}", c.path.display()))
                }
                Some(_) => {}
                None if args.dry_run => output::data(format!(
                    "remove  {} ({}, {} files)",
                    c.path.display(),
                    bytes(c.bytes),
                    c.files
                )),
                None => output::data(format!("removed {} ({})", c.path.display(), bytes(c.bytes))),
            }
        }
        let would: u64 = candidates
            .iter()
            .filter(|(c, _)| c.refused.is_none())
            .map(|(c, _)| c.bytes)
            .sum();
        if args.dry_run {
            output::note(format!(
                "dry run: {} would be freed; nothing was removed",
                bytes(would)
            ));
        } else {
            output::note(format!("{} freed", bytes(freed)));
        }
    }
    Ok(if failed > 0 {
        Status::Partial
    } else {
        Status::Success
    })
}
