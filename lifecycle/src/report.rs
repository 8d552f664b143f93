//! The "expiring soon" report: every tracked scratch copy and run folder with its purge
//! deadline and whether losing it would lose data.
//!
//! SAFE means a verified copy is on the NAS (raw data that was staged, or results that
//! were pulled); AT RISK means scratch holds the only copy (results not pulled back, a
//! failed pull, a NAS source that vanished or changed); EXPIRED and PARTLY PURGED say what
//! the purge already did. Deadlines come from the files' real timestamps (see
//! `hpcstage_staging::policy`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use hpcstage_staging::manifest::Manifest;
use hpcstage_staging::policy::{days_left, PurgeBasis, PurgePolicy};
use hpcstage_staging::record::{read_json, StageRecord};
use hpcstage_staging::scan::scan;
use hpcstage_staging::walk::{MANIFEST_NAME, STATE_DIR};

use crate::error::Result;
use crate::run::{Phase, RunRecord, RunView};

/// What kind of scratch folder an item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ItemKind {
    Stage,
    Run,
}

/// Whether losing the folder would lose data. Ordered: most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Safety {
    AtRisk,
    PartlyPurged,
    Expired,
    Safe,
}

impl Safety {
    /// The label users see.
    pub fn label(self) -> &'static str {
        match self {
            Safety::AtRisk => "AT RISK",
            Safety::PartlyPurged => "PARTLY PURGED",
            Safety::Expired => "EXPIRED",
            Safety::Safe => "SAFE",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub kind: ItemKind,
    pub project: String,
    /// Dataset or run id.
    pub name: String,
    pub owner: String,
    pub path: PathBuf,
    pub bytes: u64,
    pub files: u64,
    pub basis: PurgeBasis,
    pub oldest: Timestamp,
    pub deadline: Timestamp,
    pub days_left: i64,
    pub safety: Safety,
    /// Why it has that safety, in a few words.
    pub reason: String,
}

/// What to include.
#[derive(Debug, Clone)]
pub struct Filter {
    /// Only items whose deadline is within this window (None: everything).
    pub within: Option<Duration>,
    pub owner: Option<String>,
    pub project: Option<String>,
}

/// The report: items grouped by project and owner, most urgent first, and totals.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub generated_at: Timestamp,
    pub policy_basis: PurgeBasis,
    pub policy_age: String,
    pub within_days: Option<u64>,
    pub items: Vec<Item>,
    pub totals: Totals,
}

/// Sums over the reported items.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub items: usize,
    pub bytes: u64,
    pub files: u64,
    pub at_risk: usize,
    pub at_risk_bytes: u64,
    pub expired: usize,
    pub partly_purged: usize,
}

/// Assesses a staged copy on scratch.
pub fn stage_item(record: &StageRecord, policy: &PurgePolicy, now: Timestamp) -> Item {
    let dest = &record.destination;
    let mut item = Item {
        kind: ItemKind::Stage,
        project: record.project.clone(),
        name: record.dataset.clone(),
        owner: record.owner.clone(),
        path: dest.clone(),
        bytes: 0,
        files: 0,
        basis: policy.basis,
        oldest: record.staged_at,
        deadline: policy.deadline(&Default::default(), record.staged_at),
        days_left: 0,
        safety: Safety::Safe,
        reason: String::new(),
    };
    if !dest.is_dir() {
        item.safety = Safety::Expired;
        item.reason = "folder is gone (purged or removed)".into();
        item.days_left = days_left(item.deadline, now);
        return item;
    }
    let found = scan(dest, true);
    item.files = found.files;
    item.bytes = found.bytes;
    item.oldest = policy.reference(&found.oldest, record.staged_at);
    item.deadline = policy.deadline(&found.oldest, record.staged_at);
    item.days_left = days_left(item.deadline, now);
    let missing = missing_files(dest, found.paths.as_ref(), record.files);
    let source = Path::new(&record.source);
    let source_state = nas_source_state(source, record);
    (item.safety, item.reason) = if let Some(missing) = missing {
        (
            Safety::PartlyPurged,
            format!("{missing} of {} staged files are gone", record.files),
        )
    } else if item.deadline <= now {
        (Safety::Expired, "past its purge deadline".into())
    } else {
        match source_state {
            Ok(()) => (Safety::Safe, "raw data verified on the NAS".into()),
            Err(why) => (Safety::AtRisk, why),
        }
    };
    item
}

/// `Ok` when the NAS source is still there and matches what was staged.
fn nas_source_state(source: &Path, record: &StageRecord) -> Result<(), String> {
    if !source.is_dir() {
        return Err(format!(
            "NAS source {} is not reachable; scratch may hold the only copy",
            source.display()
        ));
    }
    match &record.source_manifest_digest {
        Some(expected) => match Manifest::read(&source.join(MANIFEST_NAME)) {
            Ok(m) if m.digest() == *expected => Ok(()),
            Ok(_) => Err("NAS source manifest changed since staging".into()),
            Err(_) => Err("NAS source manifest is gone or unreadable".into()),
        },
        None => Err("NAS source has no MANIFEST.sha256; nothing proves a verified copy".into()),
    }
}

/// Number of manifest files no longer present, if any.
fn missing_files(dir: &Path, present: Option<&HashSet<PathBuf>>, expected: u64) -> Option<u64> {
    let present = present?;
    let missing = match Manifest::read(&dir.join(MANIFEST_NAME)) {
        Ok(m) => m
            .entries
            .iter()
            .filter(|e| !present.contains(&e.path))
            .count() as u64,
        Err(_) => expected.saturating_sub(present.len() as u64),
    };
    (missing > 0).then_some(missing)
}

/// Marker written into a run folder once its results are verified on the NAS, so that a
/// `--scan` by another user (who cannot read the owner's ledger) sees it is safe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PulledMarker {
    pub run_id: String,
    pub results_dir: PathBuf,
    pub manifest_digest: String,
    pub pulled_at: Timestamp,
}

/// Assesses a run folder from its ledger view (or, for `--scan`, its markers alone).
pub fn run_item(
    record: &RunRecord,
    view: Option<&RunView>,
    policy: &PurgePolicy,
    now: Timestamp,
) -> Item {
    let dir = &record.run_dir;
    let mut item = Item {
        kind: ItemKind::Run,
        project: record.project.clone(),
        name: record.id.clone(),
        owner: record.owner.clone(),
        path: dir.clone(),
        bytes: 0,
        files: 0,
        basis: policy.basis,
        oldest: record.created_at,
        deadline: policy.deadline(&Default::default(), record.created_at),
        days_left: 0,
        safety: Safety::AtRisk,
        reason: String::new(),
    };
    let pulled = read_json::<PulledMarker>(&dir.join(STATE_DIR).join("pulled.json")).is_ok()
        || view.is_some_and(|v| v.phase == Phase::Pulled);
    if !dir.is_dir() {
        item.safety = if pulled {
            Safety::Expired
        } else {
            Safety::AtRisk
        };
        item.reason = if pulled {
            "folder is gone; results are on the NAS".into()
        } else {
            "folder is gone and results were never pulled back".into()
        };
        item.days_left = days_left(item.deadline, now);
        return item;
    }
    let found = scan(dir, false);
    item.files = found.files;
    item.bytes = found.bytes;
    item.oldest = policy.reference(&found.oldest, record.created_at);
    item.deadline = policy.deadline(&found.oldest, record.created_at);
    item.days_left = days_left(item.deadline, now);
    (item.safety, item.reason) = if pulled {
        (Safety::Safe, "results verified on the NAS".into())
    } else if view.is_some_and(|v| v.phase == Phase::PullFailed) {
        (
            Safety::AtRisk,
            "pull failed; results only on scratch".into(),
        )
    } else {
        (
            Safety::AtRisk,
            "results not yet pulled back to the NAS".into(),
        )
    };
    item
}

/// Finds staged folders and run folders under `root` by their `.hpcstage/` markers, even
/// without a ledger entry (another user's data). Unreadable folders are skipped.
pub fn scan_markers(root: &Path, max_depth: usize) -> (Vec<StageRecord>, Vec<RunRecord>) {
    let mut stages = Vec::new();
    let mut runs = Vec::new();
    let mut it = walkdir::WalkDir::new(root)
        .follow_links(false)
        .max_depth(max_depth)
        .into_iter();
    while let Some(Ok(entry)) = it.next() {
        if !entry.file_type().is_dir() {
            continue;
        }
        let state = entry.path().join(STATE_DIR);
        if !state.is_dir() {
            continue;
        }
        if let Ok(r) = read_json::<StageRecord>(&state.join("stage.json")) {
            if r.destination == entry.path() {
                stages.push(r);
            }
        } else if let Ok(r) = read_json::<RunRecord>(&state.join("run.json")) {
            if r.run_dir == entry.path() {
                runs.push(r);
            }
        }
        it.skip_current_dir();
    }
    (stages, runs)
}

/// Orders, filters and totals items into a report.
pub fn build(
    mut items: Vec<Item>,
    filter: &Filter,
    policy: &PurgePolicy,
    now: Timestamp,
) -> Report {
    let mut seen = HashSet::new();
    items.retain(|i| seen.insert(i.path.clone()));
    items.retain(|i| {
        filter.owner.as_ref().is_none_or(|o| &i.owner == o)
            && filter.project.as_ref().is_none_or(|p| &i.project == p)
            && filter.within.is_none_or(|w| {
                let limit = now
                    .checked_add(
                        jiff::SignedDuration::try_from(w).unwrap_or(jiff::SignedDuration::MAX),
                    )
                    .unwrap_or(Timestamp::MAX);
                i.deadline <= limit || i.safety != Safety::Safe
            })
    });
    items.sort_by(|a, b| {
        (&a.project, &a.owner, a.safety, a.deadline, &a.name)
            .cmp(&(&b.project, &b.owner, b.safety, b.deadline, &b.name))
    });
    let mut totals = Totals {
        items: items.len(),
        ..Totals::default()
    };
    for i in &items {
        totals.bytes += i.bytes;
        totals.files += i.files;
        match i.safety {
            Safety::AtRisk => {
                totals.at_risk += 1;
                totals.at_risk_bytes += i.bytes;
            }
            Safety::Expired => totals.expired += 1,
            Safety::PartlyPurged => totals.partly_purged += 1,
            Safety::Safe => {}
        }
    }
    Report {
        generated_at: now,
        policy_basis: policy.basis,
        policy_age: humantime_days(policy.age),
        within_days: filter.within.map(|w| w.as_secs() / 86_400),
        items,
        totals,
    }
}

fn humantime_days(d: Duration) -> String {
    let days = d.as_secs() / 86_400;
    if d.as_secs() % 86_400 == 0 {
        format!("{days}d")
    } else {
        format!("{}s", d.as_secs())
    }
}

/// Everything tracked: the ledger's stages and runs plus whatever `scan_roots` hold.
/// Damaged ledger entries come back as warnings.
pub fn gather(
    state_dir: &Path,
    scan_roots: &[PathBuf],
    policy: &PurgePolicy,
    now: Timestamp,
) -> Result<(Vec<Item>, Vec<String>)> {
    let ledger = hpcstage_staging::ledger::Ledger::open(state_dir)?;
    let runs = crate::run::RunStore::open(state_dir)?;
    let mut items = Vec::new();
    let mut warnings = Vec::new();
    for stage in ledger.stages()? {
        match stage {
            Ok(r) => items.push(stage_item(&r, policy, now)),
            Err(e) => warnings.push(format!("skipping damaged ledger entry: {e}")),
        }
    }
    for id in runs.ids()? {
        match runs.load(&id) {
            Ok(view) => items.push(run_item(&view.record, Some(&view), policy, now)),
            Err(e) => warnings.push(format!("skipping damaged run {id}: {e}")),
        }
    }
    for root in scan_roots {
        if !root.is_dir() {
            warnings.push(format!("--scan {}: not a folder", root.display()));
            continue;
        }
        let (stages, found_runs) = scan_markers(root, 6);
        items.extend(stages.iter().map(|r| stage_item(r, policy, now)));
        items.extend(found_runs.iter().map(|r| run_item(r, None, policy, now)));
    }
    Ok((items, warnings))
}
