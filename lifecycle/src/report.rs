//! The "expiring soon" report: every tracked scratch copy and run folder with its purge
//! deadline and whether losing it would lose data.
//!
//! SAFE means a verified copy is on the NAS (raw data that was staged, or results that
//! were pulled); AT RISK means scratch holds the only copy (results not pulled back, a
//! failed pull, a NAS source that vanished or changed); EXPIRED and PARTLY PURGED say what
//! the purge already did. AT RISK outranks the other two: what is left of a folder that
//! holds the only copy still matters. Deadlines come from the files' real timestamps as
//! they are now (see `hpcstage_staging::policy`), so reading data on an atime-purged
//! scratch moves them out; nothing here opens a data file.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use hpcstage_staging::manifest::Manifest;
use hpcstage_staging::policy::{days_left, format_age, PurgeBasis, PurgePolicy};
use hpcstage_staging::record::{read_json, StageRecord};
use hpcstage_staging::remote::NasAccess;
use hpcstage_staging::scan::{scan, Scan};
use hpcstage_staging::walk::{MANIFEST_NAME, STATE_DIR};

use crate::error::Result;
use crate::run::{Event, Phase, RunRecord, RunView};

/// The marker a pull leaves in a run folder (`.hpcstage/pulled.json`).
pub const PULLED_MARKER: &str = "pulled.json";

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
    /// Its owner gave up the results (`hpcstage dismiss`): nothing to protect.
    Dismissed,
    Safe,
}

impl Safety {
    /// The label users see.
    pub fn label(self) -> &'static str {
        match self {
            Safety::AtRisk => "AT RISK",
            Safety::PartlyPurged => "PARTLY PURGED",
            Safety::Expired => "EXPIRED",
            Safety::Dismissed => "DISMISSED",
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
    /// The site deletes the whole top-level folder once one file qualifies: at the
    /// deadline everything goes, not just the oldest files.
    pub whole_folder: bool,
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
    pub policy_whole_folder: bool,
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

impl Item {
    /// Sizes, counts and the deadline from a scan of the item's folder; `created` stands
    /// in where the policy's basis has no timestamp (creation time).
    fn take_scan(
        &mut self,
        found: &Scan,
        policy: &PurgePolicy,
        created: Timestamp,
        now: Timestamp,
    ) {
        self.files = found.files;
        self.bytes = found.bytes;
        self.oldest = policy.reference_at(&found.oldest, created, now);
        self.deadline = policy.deadline_at(&found.oldest, created, now);
        self.days_left = days_left(self.deadline, now);
    }
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
        deadline: policy.deadline_at(&Default::default(), record.staged_at, now),
        days_left: 0,
        whole_folder: policy.whole_folder,
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
    item.take_scan(&found, policy, record.staged_at, now);
    // Files in unreadable folders are not missing, only unseen.
    let missing = if found.errors.is_empty() {
        missing_files(dest, found.paths.as_ref(), record.files)
    } else {
        None
    };
    let purged = if let Some(missing) = missing {
        Some((
            Safety::PartlyPurged,
            format!("{missing} of {} staged files are gone", record.files),
        ))
    } else if item.deadline <= now {
        Some((Safety::Expired, "past its purge deadline".to_string()))
    } else {
        None
    };
    // Scratch holding the only copy outranks what the purge did: what is left still matters.
    (item.safety, item.reason) = match (nas_source_state(Path::new(&record.source), record), purged)
    {
        (Err(why), None) => (Safety::AtRisk, why),
        (Err(why), Some((_, what))) => (Safety::AtRisk, format!("{why}; {what}")),
        (Ok(()), Some(purged)) => purged,
        (Ok(()), None) => (Safety::Safe, "raw data verified on the NAS".into()),
    };
    note_unreadable(&mut item, &found.errors);
    item
}

/// Says so when part of a folder could not be scanned: its counts and deadline may be off.
fn note_unreadable(item: &mut Item, errors: &[hpcstage_staging::Error]) {
    if let Some(first) = errors.first() {
        item.reason.push_str(&format!(
            "; {} entries could not be read (first: {first}), so the deadline may be earlier",
            errors.len()
        ));
    }
}

/// `Ok` when the NAS source is still there and matches what was staged (asked over SSH
/// for a remote NAS).
fn nas_source_state(source: &Path, record: &StageRecord) -> Result<(), String> {
    let unreachable = |why: String| {
        format!(
            "NAS source {} is not reachable{why}; scratch may hold the only copy",
            source.display()
        )
    };
    let folder = NasAccess::shared()
        .folder(source)
        .map_err(|e| unreachable(format!(" ({e})")))?;
    match folder.is_dir() {
        Ok(true) => {}
        Ok(false) => return Err(unreachable(String::new())),
        Err(e) => return Err(unreachable(format!(" ({e})"))),
    }
    match &record.source_manifest_digest {
        Some(expected) => match folder.manifest() {
            Ok(Some(m)) if m.digest() == *expected => Ok(()),
            Ok(Some(_)) => Err("NAS source manifest changed since staging".into()),
            Ok(None) | Err(_) => Err("NAS source manifest is gone or unreadable".into()),
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
        deadline: policy.deadline_at(&Default::default(), record.created_at, now),
        days_left: 0,
        whole_folder: policy.whole_folder,
        safety: Safety::AtRisk,
        reason: String::new(),
    };
    let proof = pulled_proof(record, view);
    let pulled = proof.is_some();
    let dismissed = crate::run::dismissal(record, view);
    if !dir.is_dir() && !pulled && dismissed.is_some() {
        item.safety = Safety::Dismissed;
        item.reason = "dismissed; its folder is gone".into();
        item.days_left = days_left(item.deadline, now);
        return item;
    }
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
    item.take_scan(&found, policy, record.created_at, now);
    (item.safety, item.reason) = if let Some((results, digest)) = &proof {
        match nas_results_state(results, digest) {
            Err(why) => (Safety::AtRisk, why),
            Ok(()) if item.deadline <= now => (
                Safety::Expired,
                "past its purge deadline; results are on the NAS".into(),
            ),
            Ok(()) => (Safety::Safe, "results verified on the NAS".into()),
        }
    } else if let Some(d) = dismissed {
        (
            Safety::Dismissed,
            format!(
                "dismissed by {}{}; results were not pulled",
                d.by,
                d.reason.map(|r| format!(" ({r})")).unwrap_or_default()
            ),
        )
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
    note_unreadable(&mut item, &found.errors);
    item
}

/// Where a run's pulled results are on the NAS and the digest of their manifest at the
/// pull: from the folder's `pulled.json` marker (readable by anyone who can scan the
/// folder), else from the ledger's `pulled` event.
pub fn pulled_proof(record: &RunRecord, view: Option<&RunView>) -> Option<(PathBuf, String)> {
    let marker = record.run_dir.join(STATE_DIR).join(PULLED_MARKER);
    if let Ok(m) = read_json::<PulledMarker>(&marker) {
        if m.run_id == record.id {
            return Some((m.results_dir, m.manifest_digest));
        }
    }
    let view = view.filter(|v| v.phase == Phase::Pulled)?;
    view.events.iter().rev().find_map(|s| match &s.event {
        Event::Pulled {
            results_dir,
            manifest_digest,
        } => Some((results_dir.clone(), manifest_digest.clone())),
        _ => None,
    })
}

/// `Ok` when the NAS results manifest is still the one recorded at the pull (asked over
/// SSH for a remote NAS).
pub fn nas_results_state(results_dir: &Path, digest: &str) -> Result<(), String> {
    let manifest = results_dir.join(MANIFEST_NAME);
    let read = NasAccess::shared()
        .folder(results_dir)
        .and_then(|f| f.manifest());
    match read {
        Ok(Some(m)) if m.digest().to_hex() == digest => Ok(()),
        Ok(Some(_)) => Err(format!(
            "the NAS results manifest {} changed since the pull",
            manifest.display()
        )),
        Ok(None) => Err(format!(
            "the NAS results manifest {} is gone or unreadable; scratch may hold the only copy",
            manifest.display()
        )),
        Err(e) => Err(format!(
            "the NAS results manifest {} cannot be read ({e}); scratch may hold the only copy",
            manifest.display()
        )),
    }
}

/// Finds staged folders and run folders under `root` by their `.hpcstage/` markers, even
/// without a ledger entry (another user's data). Unreadable folders are skipped. A marker
/// counts only when it names its own folder (a copied or moved folder's does not).
pub fn scan_markers(root: &Path, max_depth: usize) -> (Vec<StageRecord>, Vec<RunRecord>) {
    let mut stages = Vec::new();
    let mut runs = Vec::new();
    let mut it = walkdir::WalkDir::new(root)
        .follow_links(false)
        .max_depth(max_depth)
        .into_iter();
    while let Some(next) = it.next() {
        // Other users' private folders are the rule on a lab scratch, not an error.
        let Ok(entry) = next else { continue };
        if !entry.file_type().is_dir() {
            continue;
        }
        let state = entry.path().join(STATE_DIR);
        if !state.is_dir() {
            continue;
        }
        if let Ok(r) = read_json::<StageRecord>(&state.join("stage.json")) {
            if same_folder(&r.destination, entry.path()) {
                stages.push(r);
            }
        } else if let Ok(r) = read_json::<RunRecord>(&state.join("run.json")) {
            if same_folder(&r.run_dir, entry.path()) {
                runs.push(r);
            }
        }
        it.skip_current_dir();
    }
    (stages, runs)
}

/// Whether two paths name the same folder, also when one of them goes through a symlink
/// (a scratch root like `/scratch` is often a link to `/gpfs/scratch`).
fn same_folder(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(a), Ok(b)) if a == b
        )
}

/// On a site that deletes a whole top-level folder of scratch once any file in it
/// qualifies, every item under the same top-level folder goes with the earliest of them:
/// each takes the earliest deadline of its folder, and its reason names the item that set it.
pub fn apply_whole_folder(items: &mut [Item], scratch_root: &Path, now: Timestamp) {
    use std::collections::HashMap;
    let top = |p: &Path| -> Option<PathBuf> {
        let rel = p.strip_prefix(scratch_root).ok()?;
        rel.components()
            .next()
            .map(|c| scratch_root.join(c.as_os_str()))
    };
    let mut earliest: HashMap<PathBuf, (Timestamp, String)> = HashMap::new();
    for i in items.iter() {
        if let Some(t) = top(&i.path) {
            let e = earliest.entry(t).or_insert((i.deadline, i.name.clone()));
            if i.deadline < e.0 {
                *e = (i.deadline, i.name.clone());
            }
        }
    }
    for i in items.iter_mut() {
        let Some(t) = top(&i.path) else { continue };
        let (deadline, by) = &earliest[&t];
        if *deadline < i.deadline {
            i.deadline = *deadline;
            i.days_left = days_left(*deadline, now);
            i.reason = format!(
                "{}; the site purges all of {} with {by}",
                i.reason,
                t.display()
            );
            if i.deadline <= now && i.safety == Safety::Safe {
                i.safety = Safety::Expired;
            }
        }
    }
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
                i.deadline <= limit || !matches!(i.safety, Safety::Safe | Safety::Dismissed)
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
            Safety::Dismissed | Safety::Safe => {}
        }
    }
    Report {
        generated_at: now,
        policy_basis: policy.basis,
        policy_age: format_age(policy.age),
        policy_whole_folder: policy.whole_folder,
        within_days: filter.within.map(|w| w.as_secs() / 86_400),
        items,
        totals,
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

#[cfg(test)]
mod whole_folder_tests {
    use super::*;

    fn item(path: &str, name: &str, deadline: &str) -> Item {
        let d: Timestamp = deadline.parse().unwrap();
        Item {
            kind: ItemKind::Stage,
            project: "P".into(),
            name: name.into(),
            owner: "o".into(),
            path: path.into(),
            bytes: 0,
            files: 0,
            basis: PurgeBasis::Mtime,
            oldest: d,
            deadline: d,
            days_left: 0,
            safety: Safety::Safe,
            reason: "raw data verified on the NAS".into(),
            whole_folder: true,
        }
    }

    #[test]
    fn items_under_one_top_folder_share_its_earliest_deadline() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut items = vec![
            item("/s/P/a", "a", "2026-01-10T00:00:00Z"),
            item("/s/P/runs/r", "r", "2026-01-05T00:00:00Z"),
            item("/s/Q/b", "b", "2026-01-20T00:00:00Z"),
        ];
        apply_whole_folder(&mut items, Path::new("/s"), now);
        assert_eq!(
            items[0].deadline,
            "2026-01-05T00:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert!(
            items[0].reason.contains("all of /s/P with r"),
            "{}",
            items[0].reason
        );
        assert_eq!(
            items[1].deadline,
            "2026-01-05T00:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(
            items[2].deadline,
            "2026-01-20T00:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(items[0].days_left, 4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{days_before, policy, set_times, write, write_manifest, World};
    use hpcstage_staging::record::write_json;
    use jiff::SignedDuration;

    #[test]
    fn deadlines_follow_each_basis_from_the_files_real_timestamps() {
        let w = World::new();
        let (_, mut record) = w.plate7();
        let now = Timestamp::now();
        record.staged_at = days_before(now, 5);
        let before_ctime = days_before(now, 0);
        set_times(
            &record.destination,
            days_before(now, 10),
            days_before(now, 20),
        );
        let after_ctime = Timestamp::now();

        // mtime: the oldest mtime plus 30 days.
        let item = stage_item(&record, &policy(PurgeBasis::Mtime), now);
        assert_eq!(item.oldest, days_before(now, 20));
        assert_eq!(item.deadline, days_before(now, -10));
        assert_eq!((item.days_left, item.safety), (10, Safety::Safe));
        // 3 data files and the manifest (3 lines of 64 hex, 2 spaces, name, newline);
        // `.hpcstage/` is bookkeeping.
        assert_eq!((item.files, item.bytes), (4, 7 + 3 * 67 + 19));

        // atime: pulled in by a day, because relatime can lag that much.
        let item = stage_item(&record, &policy(PurgeBasis::Atime), now);
        assert_eq!(item.oldest, days_before(now, 10));
        assert_eq!(item.deadline, days_before(now, -19));

        // ctime: setting the times above changed it, so the clock restarted then.
        let item = stage_item(&record, &policy(PurgeBasis::Ctime), now);
        let start = Timestamp::from_second(before_ctime.as_second()).unwrap();
        assert!(
            item.oldest >= start && item.oldest <= after_ctime,
            "ctime {} not between {start} and {after_ctime}",
            item.oldest
        );
        assert_eq!(
            item.deadline,
            item.oldest + SignedDuration::from_hours(24 * 30)
        );

        // created: the time of staging, whatever the files say.
        let item = stage_item(&record, &policy(PurgeBasis::Created), now);
        assert_eq!(item.oldest, record.staged_at);
        assert_eq!(item.deadline, days_before(now, -25));
        assert_eq!(item.days_left, 25);
    }

    /// Why staging never preserves source mtimes on an mtime-purged scratch: raw data
    /// acquired in 2020 keeps 2020 mtimes, and a copy carrying them is older than any
    /// purge age the moment it lands. The purge takes it the same night.
    #[test]
    fn preserved_old_mtimes_on_an_mtime_purged_scratch_expire_at_once() {
        let w = World::new();
        let (_, record) = w.plate7();
        let acquired: Timestamp = "2020-03-01T00:00:00Z".parse().unwrap();
        set_times(&record.destination, acquired, acquired);
        let now = Timestamp::now();
        let p = policy(PurgeBasis::Mtime);
        assert!(!p.preserve_mtime(), "staging must not keep source mtimes");

        let item = stage_item(&record, &p, now);
        assert_eq!(item.oldest, acquired);
        assert_eq!(item.deadline, "2020-03-31T00:00:00Z".parse().unwrap());
        assert!(item.days_left < -365, "{}", item.days_left);
        assert_eq!(item.safety, Safety::Expired);
        assert_eq!(item.reason, "past its purge deadline");
    }

    #[test]
    fn a_partly_purged_folder_says_how_many_files_are_gone() {
        let w = World::new();
        let (_, record) = w.plate7();
        let now = Timestamp::now();
        let p = PurgePolicy::default();
        std::fs::remove_file(record.destination.join("a.tif")).unwrap();
        std::fs::remove_file(record.destination.join("sub/c.csv")).unwrap();
        let item = stage_item(&record, &p, now);
        assert_eq!(item.safety, Safety::PartlyPurged);
        assert_eq!(item.reason, "2 of 3 staged files are gone");
        assert_eq!(item.files, 2, "b.tif and the manifest");

        // The purge took the manifest too: the count comes from the stage record.
        std::fs::remove_file(record.destination.join(MANIFEST_NAME)).unwrap();
        let item = stage_item(&record, &p, now);
        assert_eq!(item.safety, Safety::PartlyPurged);
        assert_eq!(item.reason, "2 of 3 staged files are gone");

        // And then the whole folder.
        std::fs::remove_dir_all(&record.destination).unwrap();
        let item = stage_item(&record, &p, now);
        assert_eq!(item.safety, Safety::Expired);
        assert_eq!(item.reason, "folder is gone (purged or removed)");
    }

    #[test]
    fn the_whole_folder_policy_is_carried_into_items_and_the_report() {
        let w = World::new();
        let (_, record) = w.plate7();
        let run = w.run("P", "r1");
        let now = Timestamp::now();
        let all = Filter {
            within: None,
            owner: None,
            project: None,
        };
        for whole_folder in [false, true] {
            let p = PurgePolicy {
                whole_folder,
                ..PurgePolicy::default()
            };
            let items = vec![stage_item(&record, &p, now), run_item(&run, None, &p, now)];
            assert!(items.iter().all(|i| i.whole_folder == whole_folder));
            let report = build(items, &all, &p, now);
            assert_eq!(report.policy_whole_folder, whole_folder);
            assert_eq!(report.policy_age, "30days");
            let json = serde_json::to_value(&report).unwrap();
            assert_eq!(json["items"][0]["whole_folder"], whole_folder);
        }
    }

    fn item(project: &str, owner: &str, name: &str, safety: Safety, days: i64, bytes: u64) -> Item {
        let now = Timestamp::now();
        Item {
            kind: ItemKind::Stage,
            project: project.into(),
            name: name.into(),
            owner: owner.into(),
            path: PathBuf::from(format!("/scratch/{project}/{owner}/{name}")),
            bytes,
            files: 1,
            basis: PurgeBasis::Mtime,
            oldest: now,
            deadline: days_before(now, -days),
            days_left: days,
            whole_folder: false,
            safety,
            reason: String::new(),
        }
    }

    #[test]
    fn at_risk_comes_first_within_each_project_and_owner_with_totals() {
        let now = Timestamp::now();
        let items = vec![
            item("P1", "bob", "b-safe", Safety::Safe, 2, 1),
            item("P1", "alice", "a-safe-soon", Safety::Safe, 1, 10),
            item("P1", "alice", "a-expired", Safety::Expired, -3, 100),
            item("P1", "alice", "a-risk-late", Safety::AtRisk, 20, 1000),
            item("P1", "alice", "a-risk-soon", Safety::AtRisk, 3, 10_000),
            item("P0", "zoe", "z-partly", Safety::PartlyPurged, -1, 100_000),
            item("P0", "zoe", "z-safe", Safety::Safe, 5, 1_000_000),
            // The same folder found twice (ledger and --scan) counts once.
            item("P1", "bob", "b-safe", Safety::Safe, 2, 1),
        ];
        let all = Filter {
            within: None,
            owner: None,
            project: None,
        };
        let report = build(items.clone(), &all, &PurgePolicy::default(), now);
        let order: Vec<&str> = report.items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            order,
            [
                "z-partly",
                "z-safe",
                "a-risk-soon",
                "a-risk-late",
                "a-expired",
                "a-safe-soon",
                "b-safe"
            ]
        );
        let t = &report.totals;
        assert_eq!((t.items, t.bytes, t.files), (7, 1_111_111, 7));
        assert_eq!((t.at_risk, t.at_risk_bytes), (2, 11_000));
        assert_eq!((t.expired, t.partly_purged), (1, 1));

        // A window hides SAFE items beyond it, never anything at risk or already hit.
        let week = Filter {
            within: Some(Duration::from_secs(4 * 86_400)),
            owner: Some("alice".into()),
            project: None,
        };
        let report = build(items.clone(), &week, &PurgePolicy::default(), now);
        let order: Vec<&str> = report.items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            order,
            ["a-risk-soon", "a-risk-late", "a-expired", "a-safe-soon"]
        );
        assert_eq!(report.within_days, Some(4));
        let p0 = Filter {
            within: Some(Duration::from_secs(86_400)),
            owner: None,
            project: Some("P0".into()),
        };
        let report = build(items, &p0, &PurgePolicy::default(), now);
        let order: Vec<&str> = report.items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(order, ["z-partly"]);
    }

    #[test]
    fn a_stage_whose_nas_source_vanished_or_changed_is_at_risk() {
        let w = World::new();
        let (source, record) = w.plate7();
        let now = Timestamp::now();
        let p = PurgePolicy::default();
        assert_eq!(stage_item(&record, &p, now).safety, Safety::Safe);

        // The NAS manifest changed (a file was replaced or added after staging).
        write(&source.join("d.tif"), "late addition");
        write_manifest(&source);
        let item = stage_item(&record, &p, now);
        assert_eq!(item.safety, Safety::AtRisk);
        assert_eq!(item.reason, "NAS source manifest changed since staging");

        // The manifest is gone.
        std::fs::remove_file(source.join(MANIFEST_NAME)).unwrap();
        let item = stage_item(&record, &p, now);
        assert_eq!(item.safety, Safety::AtRisk);
        assert_eq!(item.reason, "NAS source manifest is gone or unreadable");

        // The whole source is gone (or the NAS is not mounted here).
        let moved = w.nas().join("elsewhere");
        std::fs::rename(&source, &moved).unwrap();
        let item = stage_item(&record, &p, now);
        assert_eq!(item.safety, Safety::AtRisk);
        assert_eq!(
            item.reason,
            format!(
                "NAS source {} is not reachable; scratch may hold the only copy",
                source.display()
            )
        );

        // Past its deadline it is still AT RISK: what is left is the only copy.
        let old: Timestamp = "2020-03-01T00:00:00Z".parse().unwrap();
        set_times(&record.destination, old, old);
        let item = stage_item(&record, &p, now);
        assert_eq!(item.safety, Safety::AtRisk);
        assert!(
            item.reason.ends_with("; past its purge deadline"),
            "{}",
            item.reason
        );

        // Staged from a folder without a manifest: nothing proves a verified copy.
        let bare = w.root.join("bare");
        write(&bare.join("x.txt"), "x");
        let record = w.stage_to(&bare, &w.scratch().join("P/bare"), "P", "bare");
        assert_eq!(record.source_manifest_digest, None);
        let item = stage_item(&record, &p, now);
        assert_eq!(item.safety, Safety::AtRisk);
        assert_eq!(
            item.reason,
            "NAS source has no MANIFEST.sha256; nothing proves a verified copy"
        );
    }

    #[test]
    fn run_folders_are_at_risk_until_their_results_are_verified_on_the_nas() {
        let w = World::new();
        let run = w.run("P", "r1");
        let now = Timestamp::now();
        let p = PurgePolicy::default();

        let item = run_item(&run, None, &p, now);
        assert_eq!((item.kind, item.safety), (ItemKind::Run, Safety::AtRisk));
        assert_eq!(item.reason, "results not yet pulled back to the NAS");
        assert_eq!(item.files, 3);

        let view = |phase, events| RunView {
            record: run.clone(),
            jobs: Vec::new(),
            phase,
            events,
            damaged: Vec::new(),
        };
        let failed = view(Phase::PullFailed, Vec::new());
        let item = run_item(&run, Some(&failed), &p, now);
        assert_eq!(item.safety, Safety::AtRisk);
        assert_eq!(item.reason, "pull failed; results only on scratch");

        // The pull's marker in the folder makes it SAFE, for anyone who scans it.
        let marker = w.pull(&run);
        let item = run_item(&run, None, &p, now);
        assert_eq!(item.safety, Safety::Safe);
        assert_eq!(item.reason, "results verified on the NAS");

        // ... as long as the NAS results are still what was pulled.
        write(&run.results_dir.join("masks/m2.tif"), "later");
        write_manifest(&run.results_dir);
        let item = run_item(&run, None, &p, now);
        assert_eq!(item.safety, Safety::AtRisk);
        assert!(
            item.reason.contains("changed since the pull"),
            "{}",
            item.reason
        );

        // Without the marker, the ledger's `pulled` event is the proof.
        std::fs::remove_file(run.run_dir.join(STATE_DIR).join(PULLED_MARKER)).unwrap();
        let digest = write_manifest(&run.results_dir).digest().to_hex();
        let pulled = view(
            Phase::Pulled,
            vec![crate::run::Stamped {
                at: now,
                host: "n1".into(),
                user: "alice".into(),
                event: Event::Pulled {
                    results_dir: marker.results_dir.clone(),
                    manifest_digest: digest,
                },
            }],
        );
        let item = run_item(&run, Some(&pulled), &p, now);
        assert_eq!(item.safety, Safety::Safe);

        // A marker naming another run proves nothing.
        let mut other = marker;
        other.run_id = "r2".into();
        write_json(&run.run_dir.join(STATE_DIR).join(PULLED_MARKER), &other).unwrap();
        assert_eq!(run_item(&run, None, &p, now).safety, Safety::AtRisk);

        // Gone without a pull: AT RISK (the results may be lost); gone after: EXPIRED.
        std::fs::remove_dir_all(&run.run_dir).unwrap();
        let item = run_item(&run, None, &p, now);
        assert_eq!(item.safety, Safety::AtRisk);
        assert_eq!(
            item.reason,
            "folder is gone and results were never pulled back"
        );
        let item = run_item(&run, Some(&pulled), &p, now);
        assert_eq!(item.safety, Safety::Expired);
    }

    #[test]
    fn a_pulled_run_past_its_deadline_is_expired_not_safe() {
        let w = World::new();
        let run = w.run("P", "r1");
        w.pull(&run);
        let old: Timestamp = "2020-03-01T00:00:00Z".parse().unwrap();
        set_times(&run.run_dir, old, old);
        let item = run_item(&run, None, &PurgePolicy::default(), Timestamp::now());
        assert_eq!(item.safety, Safety::Expired);
        assert_eq!(
            item.reason,
            "past its purge deadline; results are on the NAS"
        );
    }

    #[test]
    fn scan_finds_marked_folders_of_every_owner_and_only_those() {
        let w = World::new();
        let source = w.nas_dataset("P", "d", &[("x.txt", "x")]);
        let lab = w.scratch();
        let mut alice = w.stage_to(&source, &lab.join("alice/P/d"), "P", "d");
        alice.owner = "alice".into();
        let mut bob = w.stage_to(&source, &lab.join("bob/P/d"), "P", "d");
        bob.owner = "bob".into();
        write_json(&bob.destination.join(STATE_DIR).join("stage.json"), &bob).unwrap();
        let run = w.run("P", "r1");
        // A copy of a staged folder keeps a marker that names the original: not a stage.
        let copy = lab.join("alice/P/copy-of-d");
        w.stage_to(&source, &copy, "P", "d");
        let mut stale = alice.clone();
        stale.destination = lab.join("alice/P/d");
        write_json(&copy.join(STATE_DIR).join("stage.json"), &stale).unwrap();
        // Unmarked folders are not hpcstage's.
        write(&lab.join("carol/notes.txt"), "n");

        let (stages, runs) = scan_markers(&lab, 6);
        let mut found: Vec<(String, PathBuf)> = stages
            .iter()
            .map(|r| (r.owner.clone(), r.destination.clone()))
            .collect();
        found.sort();
        assert_eq!(
            found,
            [
                ("alice".to_string(), alice.destination.clone()),
                ("bob".to_string(), bob.destination.clone())
            ]
        );
        assert_eq!(runs, [run]);

        // Through a symlinked scratch root (`/scratch` -> `/gpfs/scratch`) too.
        let link = w.root.join("scratch-link");
        std::os::unix::fs::symlink(&lab, &link).unwrap();
        let (stages, runs) = scan_markers(&link, 6);
        assert_eq!((stages.len(), runs.len()), (2, 1));
    }

    /// Drops the capabilities that let root read any folder, for the calling thread only
    /// (Linux keeps capabilities per thread), so that root meets "permission denied" too.
    fn drop_read_override_in_this_thread() {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Default, Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const VERSION_3: u32 = 0x2008_0522;
        const DAC_OVERRIDE: u32 = 1 << 1;
        const DAC_READ_SEARCH: u32 = 1 << 2;
        let mut header = Header {
            version: VERSION_3,
            pid: 0,
        };
        let mut data = [Data::default(); 2];
        // SAFETY: capget/capset with a version-3 header and two data structs, as
        // capget(2) documents; both pointers are valid for the call.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()),
                0
            );
            data[0].effective &= !(DAC_OVERRIDE | DAC_READ_SEARCH);
            assert_eq!(
                libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()),
                0
            );
        }
    }

    #[test]
    fn scan_skips_folders_it_cannot_read_and_goes_on() {
        use std::os::unix::fs::PermissionsExt;
        let w = World::new();
        let source = w.nas_dataset("P", "d", &[("x.txt", "x")]);
        let lab = w.scratch();
        let mut expected = Vec::new();
        for user in ["a", "m", "z"] {
            expected.push(
                w.stage_to(&source, &lab.join(user).join("P/d"), "P", "d")
                    .destination,
            );
            // Private folders of other users, between and around the readable ones.
            let private = lab.join(format!("{user}-private"));
            write(&private.join("P/d/.hpcstage/stage.json"), "{}");
            std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o000)).unwrap();
        }
        let (stages, _) = std::thread::spawn(move || {
            drop_read_override_in_this_thread();
            scan_markers(&lab, 6)
        })
        .join()
        .unwrap();
        let mut found: Vec<PathBuf> = stages.into_iter().map(|r| r.destination).collect();
        found.sort();
        assert_eq!(found, expected);
    }

    #[test]
    fn gather_reads_the_ledger_and_the_scanned_roots_once_each() {
        let w = World::new();
        let (_, record) = w.plate7();
        let state = w.root.join("state");
        let ledger = hpcstage_staging::ledger::Ledger::open(&state).unwrap();
        ledger.put_stage(&record).unwrap();
        write(&state.join("stages/broken.json"), "{");
        let run = w.run("P", "r1");
        let store = crate::run::RunStore::open(&state).unwrap();
        store.create(&run).unwrap();
        let now = Timestamp::now();
        let p = PurgePolicy::default();
        let (items, warnings) = gather(&state, &[w.scratch()], &p, now).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("skipping damaged ledger entry"));
        let report = build(
            items,
            &Filter {
                within: None,
                owner: None,
                project: None,
            },
            &p,
            now,
        );
        let got: Vec<(&str, Safety)> = report
            .items
            .iter()
            .map(|i| (i.name.as_str(), i.safety))
            .collect();
        assert_eq!(got, [("r1", Safety::AtRisk), ("plate7", Safety::Safe)]);
        assert_eq!(report.totals.at_risk, 1);
    }
}
