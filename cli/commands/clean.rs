//! `hpcstage clean`: remove scratch copies that are provably safe on the NAS; refuse the
//! rest with the reason. The verdict is the report's (one function decides both).

use anyhow::{bail, Result};
use hpcstage_lifecycle::clean::{remove, Candidate};
use hpcstage_lifecycle::report::{Item, ItemKind, GONE};
use hpcstage_lifecycle::run::{Event, RunStore};
use hpcstage_staging::human::{bytes, count};
use hpcstage_staging::ledger::Ledger;

use super::ExitStatus;
use crate::args::CleanArgs;
use crate::config::Settings;
use crate::output;

/// Whether `item` is the one the user named: `PROJECT/DATASET`, a run id or a unique
/// prefix of one, or the folder.
fn named(item: &Item, name: &str) -> bool {
    let path = std::path::Path::new(name);
    let by_name = match item.kind {
        ItemKind::Stage => format!("{}/{}", item.project, item.name) == name,
        ItemKind::Run => item.name.starts_with(name),
    };
    by_name || (path.is_absolute() && item.path == path)
}

pub(crate) fn run(settings: &Settings, args: &CleanArgs) -> Result<ExitStatus> {
    // Nothing is removed without a scratch root to stay inside.
    settings.scratch_root()?;
    let ledger = Ledger::open(&settings.state_dir)?;
    let store = RunStore::open(&settings.state_dir)?;
    // The report's verdict: a stage a job still reads stays (IN USE).
    let (mut items, _) = super::report::tracked(settings, &args.scan, jiff::Timestamp::now())?;
    let mut seen = std::collections::HashSet::new();
    items.retain(|i| seen.insert(i.path.clone()));
    items.retain(|i| args.project.as_ref().is_none_or(|p| &i.project == p));
    if let Some(name) = &args.item {
        items.retain(|i| named(i, name));
        let runs: Vec<&Item> = items.iter().filter(|i| i.kind == ItemKind::Run).collect();
        if items.is_empty() {
            bail!(
                "no staged dataset or run {name:?} is tracked; `hpcstage status` lists them \
                 (name a stage as PROJECT/DATASET, a run by its id)"
            );
        }
        if runs.len() > 1 && items.len() == runs.len() && !runs.iter().any(|r| r.name == *name) {
            let ids: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
            bail!(
                "{name:?} names {} runs: {}; give more of the id",
                runs.len(),
                ids.join(", ")
            );
        }
    }
    let candidates: Vec<Candidate> = items.iter().map(Candidate::from).collect();

    let mut freed = 0u64;
    let mut failed = 0usize;
    let mut removed = Vec::new();
    for c in &candidates {
        if c.refused.is_some() || args.dry_run {
            continue;
        }
        match remove(c) {
            Ok(()) => {
                freed += c.bytes;
                removed.push(c.path.clone());
                if let Err(e) = forget(&ledger, &store, c) {
                    failed += 1;
                    output::error(format!(
                        "removed {}, but could not record it in the ledger: {e}",
                        c.path.display()
                    ));
                }
            }
            Err(e) => {
                failed += 1;
                output::error(format!("{}: {e}", c.path.display()));
            }
        }
    }
    let kept: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.refused.as_deref().is_some_and(|r| r != GONE))
        .collect();
    if args.json {
        output::json(&serde_json::json!({
            "dry_run": args.dry_run,
            "candidates": candidates,
            "removed": removed,
            "kept": kept.len(),
            "freed_bytes": freed,
        }));
    } else {
        for c in &candidates {
            match &c.refused {
                Some(why) if why != GONE => output::data(format!(
                    "keep    {} ({}; {}, {}; deadline {}, {} left): {why}",
                    c.path.display(),
                    c.status,
                    bytes(c.bytes),
                    count(c.files, "file"),
                    c.deadline.strftime("%Y-%m-%d"),
                    count(c.days_left.max(0).unsigned_abs(), "day"),
                )),
                Some(_) => {}
                None if args.dry_run => output::data(format!(
                    "remove  {} ({}, {})",
                    c.path.display(),
                    bytes(c.bytes),
                    count(c.files, "file")
                )),
                None => output::data(format!("removed {} ({})", c.path.display(), bytes(c.bytes))),
            }
        }
        let removable: Vec<&Candidate> =
            candidates.iter().filter(|c| c.refused.is_none()).collect();
        if removable.is_empty() {
            output::note(if kept.is_empty() {
                "nothing to remove: no tracked folder is left on scratch".to_string()
            } else {
                format!(
                    "nothing can be removed: {} {} kept, each for the reason shown",
                    count(kept.len() as u64, "folder"),
                    if kept.len() == 1 { "is" } else { "are" }
                )
            });
        }
        let would: u64 = removable.iter().map(|c| c.bytes).sum();
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
        ExitStatus::Partial
    } else {
        ExitStatus::Success
    })
}

/// Records a removal: a staged dataset leaves the ledger; a run keeps its history and
/// gains a `cleaned` event, so that `status` and `report` say it was cleaned.
fn forget(ledger: &Ledger, store: &RunStore, c: &Candidate) -> Result<()> {
    match c.kind {
        ItemKind::Stage => {
            for r in ledger.stages()?.into_iter().flatten() {
                if r.destination == c.path {
                    ledger.remove_stage(&r)?;
                }
            }
        }
        ItemKind::Run => {
            if store.ids()?.contains(&c.name) {
                store.append(
                    &c.name,
                    Event::Cleaned {
                        path: c.path.clone(),
                        bytes: c.bytes,
                    },
                )?;
            }
        }
    }
    Ok(())
}
