//! The "expiring soon" report: every tracked scratch copy and run folder with its purge
//! deadline, whether losing it would lose data, and whether `clean` may remove it.
//!
//! Both `report` and `clean` take their verdict from here (they once disagreed,
//! the report calling SAFE what clean kept): [`stage_item`] and [`run_item`] gather the
//! facts of one folder and [`decide`] turns them into one [`Safety`], one reason and one
//! answer to "may clean remove it". SAFE means a verified copy is on the NAS (raw data that
//! was staged, or results that were pulled); AT RISK means scratch may hold the only copy
//! (results not pulled back, a failed pull, a NAS source that vanished or changed, a
//! staged file edited on scratch); INCOMPLETE a stage or pull that did not finish; IN USE a
//! staged copy that a run still reads; PARTIAL a run pulled with outputs missing; EXPIRED
//! and PARTLY PURGED say what the purge already did; CLEANED a run folder `clean` removed.
//! Deadlines come from the files' real timestamps as they are now (see
//! `hpcstage_staging::policy`). Only a staged file whose inode or mtime moved since it was
//! verified is read again (its content decides whether it was edited).

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use hpcstage_staging::hash::hash_file;
use hpcstage_staging::journal::Journal;
use hpcstage_staging::manifest::Manifest;
use hpcstage_staging::policy::{days_left, format_age, PurgeBasis, PurgePolicy};
use hpcstage_staging::record::{read_json, StageRecord};
use hpcstage_staging::remote::NasAccess;
use hpcstage_staging::scan::{scan, Scan};
use hpcstage_staging::walk::{Meta, MANIFEST_NAME, STATE_DIR};

use crate::clean::{guard, plain_path, Guard};
use crate::error::Result;
use crate::refresh::ended;
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
    Incomplete,
    InUse,
    Partial,
    PartlyPurged,
    Expired,
    /// Its owner gave up the results (`hpcstage dismiss`): nothing to protect.
    Dismissed,
    Safe,
    Cleaned,
}

impl Safety {
    /// The label users see.
    pub fn label(self) -> &'static str {
        match self {
            Safety::AtRisk => "AT RISK",
            Safety::Incomplete => "INCOMPLETE",
            Safety::InUse => "IN USE",
            Safety::Partial => "PARTIAL",
            Safety::PartlyPurged => "PARTLY PURGED",
            Safety::Expired => "EXPIRED",
            Safety::Dismissed => "DISMISSED",
            Safety::Safe => "SAFE",
            Safety::Cleaned => "CLEANED",
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
    /// Data files: what `stage` counted (not `MANIFEST.sha256`, `verify_*.log` or
    /// temporaries).
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
    /// Whether `clean` may remove the folder.
    pub removable: bool,
    /// Why `clean` keeps it (`None` when removable).
    #[serde(skip)]
    pub kept: Option<String>,
}

impl Item {
    /// Whether the folder is still on scratch (a deadline means something).
    pub fn present(&self) -> bool {
        !matches!(self.safety, Safety::Cleaned) && self.kept.as_deref() != Some(GONE)
    }

    /// The deadline's day and the days left, for a table: `-` for a folder that is gone.
    pub fn deadline_cells(&self) -> [String; 2] {
        if self.present() {
            [
                self.deadline.strftime("%Y-%m-%d").to_string(),
                self.days_left.to_string(),
            ]
        } else {
            ["-".into(), "-".into()]
        }
    }
}

/// What `clean` says of a folder that is no longer there.
pub const GONE: &str = "already gone";

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
    pub incomplete: usize,
    pub in_use: usize,
    pub expired: usize,
    pub partly_purged: usize,
}

/// What every verdict needs besides the folder itself.
#[derive(Debug, Clone, Copy)]
pub struct Assess<'a> {
    pub policy: &'a PurgePolicy,
    pub now: Timestamp,
    /// `clean` removes only inside it; without one nothing is removable.
    pub scratch_root: Option<&'a Path>,
    pub readers: &'a Readers,
}

/// Runs that still read staged folders, by the folder they read: a run reads its input
/// until it is pulled and while any of its jobs has not ended (a held array task
/// failed when `clean` had removed its input).
#[derive(Debug, Clone, Default)]
pub struct Readers {
    by_folder: HashMap<PathBuf, Vec<String>>,
}

impl Readers {
    /// From the ledger's runs (job states as the last refresh left them: a job never seen
    /// to end counts as running, so a scheduler that cannot be asked keeps the stage) and
    /// from run folders found by `--scan` (not pulled: still reading).
    pub fn from_runs(views: &[RunView], scanned: &[RunRecord]) -> Readers {
        let mut readers = Readers::default();
        let mut seen = HashSet::new();
        for v in views {
            seen.insert(v.record.id.clone());
            let active: Vec<String> = v
                .jobs
                .iter()
                .filter(|j| !j.facts.as_ref().is_some_and(|f| ended(&f.state)))
                .map(|j| {
                    let role = serde_json::to_value(j.role)
                        .ok()
                        .and_then(|r| r.as_str().map(str::to_string))
                        .unwrap_or_default();
                    let state = j
                        .facts
                        .as_ref()
                        .map_or("state not known yet", |f| f.state.as_str());
                    format!("{role} job {} {state}", j.job_id)
                })
                .collect();
            let why = if !active.is_empty() {
                active.join(", ")
            } else if v.cleaned_at.is_some() || pulled_proof(&v.record, Some(v)).is_some() {
                continue;
            } else {
                match v.phase {
                    Phase::PullFailed => "its pull failed".to_string(),
                    Phase::SubmitFailed => "its submission failed".to_string(),
                    _ => "not pulled yet".to_string(),
                }
            };
            readers.add(&v.record, why);
        }
        for r in scanned {
            if seen.insert(r.id.clone()) && pulled_proof(r, None).is_none() {
                readers.add(r, "not pulled yet".into());
            }
        }
        readers
    }

    fn add(&mut self, run: &RunRecord, why: String) {
        let key = std::fs::canonicalize(&run.input.path).unwrap_or(run.input.path.clone());
        self.by_folder
            .entry(key)
            .or_default()
            .push(format!("run {} ({why})", run.id));
    }

    /// The runs reading `folder`, described.
    pub fn of(&self, folder: &Path) -> &[String] {
        let key = std::fs::canonicalize(folder).unwrap_or(folder.to_path_buf());
        self.by_folder.get(&key).map_or(&[], Vec::as_slice)
    }
}

/// What is known of one folder; [`decide`] makes the verdict of it.
#[derive(Debug, Default)]
struct Facts {
    /// Reasons scratch may hold the only copy of something.
    at_risk: Vec<String>,
    /// The stage or pull did not finish.
    incomplete: Option<String>,
    /// Runs reading it, or its own jobs still running.
    in_use: Vec<String>,
    /// A partial pull: what is missing.
    partial: Option<String>,
    /// What the purge already took.
    purged: Option<String>,
    /// Its owner gave the results up (`hpcstage dismiss`): nothing left to protect.
    dismissed: Option<String>,
    expired: bool,
    /// Why it is safe when nothing above applies.
    safe: &'static str,
    /// Why clean may not remove it although it is safe (a hostile path, a damaged record,
    /// a check that could not be made).
    refused: Option<String>,
    /// Notes added to any reason (parts of the folder that could not be read).
    notes: Vec<String>,
}

/// The one verdict of `report` and `clean`: the safety label, its reason, and whether
/// `clean` may remove the folder.
fn decide(item: &mut Item, facts: Facts) {
    let Facts {
        at_risk,
        incomplete,
        in_use,
        partial,
        purged,
        dismissed,
        expired,
        safe,
        refused,
        notes,
    } = facts;
    let in_use = (!in_use.is_empty()).then(|| format!("in use by {}", in_use.join(", ")));
    let expired = expired.then(|| "past its purge deadline".to_string());
    let (safety, mut parts) = if !at_risk.is_empty() {
        (Safety::AtRisk, at_risk)
    } else if let Some(why) = incomplete.clone() {
        (Safety::Incomplete, vec![why])
    } else if let Some(why) = in_use.clone() {
        (Safety::InUse, vec![why])
    } else if let Some(why) = partial.clone() {
        (Safety::Partial, vec![why])
    } else if let Some(why) = purged.clone() {
        (Safety::PartlyPurged, vec![why])
    } else if let Some(why) = dismissed {
        (Safety::Dismissed, vec![why])
    } else if let Some(why) = expired.clone() {
        (Safety::Expired, vec![format!("{why}; {safe}")])
    } else {
        (Safety::Safe, vec![safe.to_string()])
    };
    let primary = parts.join("; ");
    for extra in [incomplete, in_use, partial, purged, expired]
        .into_iter()
        .flatten()
    {
        if !primary.contains(&extra) {
            parts.push(extra);
        }
    }
    parts.extend(notes);
    item.safety = safety;
    item.reason = parts.join("; ");
    let kept = match safety {
        Safety::Safe | Safety::Expired | Safety::PartlyPurged | Safety::Dismissed => refused,
        _ => Some(refused.map_or_else(|| item.reason.clone(), |r| format!("{}; {r}", item.reason))),
    };
    item.removable = kept.is_none();
    item.kept = kept;
}

impl Item {
    fn new(
        kind: ItemKind,
        project: &str,
        name: &str,
        owner: &str,
        path: &Path,
        ctx: &Assess<'_>,
        created: Timestamp,
    ) -> Item {
        Item {
            kind,
            project: project.to_string(),
            name: name.to_string(),
            owner: owner.to_string(),
            path: path.to_path_buf(),
            bytes: 0,
            files: 0,
            basis: ctx.policy.basis,
            oldest: created,
            deadline: ctx
                .policy
                .deadline_at(&Default::default(), created, ctx.now),
            days_left: 0,
            whole_folder: ctx.policy.whole_folder,
            safety: Safety::AtRisk,
            reason: String::new(),
            removable: false,
            kept: None,
        }
    }

    /// Sizes, counts and the deadline from a scan of the item's folder; `created` stands
    /// in where the policy's basis has no timestamp (creation time).
    fn take_scan(&mut self, found: &Scan, ctx: &Assess<'_>, created: Timestamp) {
        self.files = found.files;
        self.bytes = found.bytes;
        self.oldest = ctx.policy.reference_at(&found.oldest, created, ctx.now);
        self.deadline = ctx.policy.deadline_at(&found.oldest, created, ctx.now);
        self.days_left = days_left(self.deadline, ctx.now);
    }

    /// The verdict of a folder that is gone.
    fn gone(&mut self, safety: Safety, reason: String, now: Timestamp) {
        self.safety = safety;
        self.reason = reason;
        self.days_left = days_left(self.deadline, now);
        self.removable = false;
        self.kept = Some(GONE.into());
    }
}

/// Assesses a staged copy on scratch.
pub fn stage_item(record: &StageRecord, ctx: &Assess<'_>) -> Item {
    let dest = &record.destination;
    let mut item = Item::new(
        ItemKind::Stage,
        &record.project,
        &record.dataset,
        &record.owner,
        dest,
        ctx,
        record.staged_at,
    );
    // A damaged or hostile record is never followed, not even to read.
    if let Err(why) = plain_path(dest) {
        item.gone(Safety::AtRisk, why.clone(), ctx.now);
        item.kept = Some(why);
        return item;
    }
    if !dest.is_dir() {
        item.gone(
            Safety::Expired,
            "folder is gone (purged or removed)".into(),
            ctx.now,
        );
        return item;
    }
    let guarded = guard(dest, ctx.scratch_root, Guard::Stage);
    let found = scan(dest, true);
    item.take_scan(&found, ctx, record.staged_at);
    let mut facts = Facts {
        safe: "raw data verified on the NAS",
        incomplete: unfinished(
            dest,
            record.incomplete.as_ref().map(|i| i.summary()),
            &found,
        ),
        in_use: ctx.readers.of(dest).to_vec(),
        expired: item.deadline <= ctx.now,
        refused: guarded.err(),
        ..Facts::default()
    };
    // Files in unreadable folders are not missing, only unseen.
    let scratch_manifest = Manifest::read(&dest.join(MANIFEST_NAME));
    if found.errors.is_empty() {
        let missing = match (&scratch_manifest, &found.paths) {
            (Ok(m), Some(present)) => m
                .entries
                .iter()
                .filter(|e| !present.contains(&e.path))
                .count() as u64,
            (_, Some(present)) => record.files.saturating_sub(present.len() as u64),
            _ => 0,
        };
        if missing > 0 && facts.incomplete.is_none() {
            facts.purged = Some(format!(
                "{missing} of {} staged files are gone",
                record.files
            ));
        }
    }
    if facts.incomplete.is_none() {
        // Only a complete copy has a manifest to check against the NAS.
        match nas_copy_state(record, scratch_manifest, &found) {
            Ok(()) => {}
            Err(Check::Differs(why)) => facts.at_risk.push(why),
            Err(Check::Unknown(why)) => facts.refused = facts.refused.or(Some(why)),
        }
    } else if record.source.is_empty() {
        // Found by --scan without a record: where it came from is not known.
    } else if let Err(why) = nas_source_reachable(Path::new(&record.source)) {
        facts.notes.push(why);
    }
    note_unreadable(&mut facts, &found.errors);
    decide(&mut item, facts);
    item
}

/// Why a folder is not a finished copy, if it is not: the record says so, a copy's
/// `running` marker is still there (killed, or still at work), or temporary files of
/// files in flight were left behind.
fn unfinished(dir: &Path, recorded: Option<String>, found: &Scan) -> Option<String> {
    let mut why = Vec::new();
    if let Some(r) = recorded {
        why.push(r);
    }
    if why.is_empty() && dir.join(STATE_DIR).join("running").exists() {
        why.push("a copy into it started and did not finish (stopped, or still running)".into());
    }
    if found.temporaries > 0 {
        why.push(format!(
            "{} left by an interrupted copy ({})",
            hpcstage_staging::fmt::count(found.temporaries, "temporary file"),
            hpcstage_staging::fmt::bytes(found.temporary_bytes)
        ));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// Says so when part of a folder could not be scanned: its counts and deadline may be off.
fn note_unreadable(facts: &mut Facts, errors: &[hpcstage_staging::Error]) {
    if let Some(first) = errors.first() {
        facts.notes.push(format!(
            "{} could not be read (first: {first}), so the deadline may be earlier",
            hpcstage_staging::fmt::count(errors.len() as u64, "entry")
        ));
        facts.refused = facts.refused.take().or(Some(format!(
            "part of the folder could not be read: {first}"
        )));
    }
}

/// Why a staged copy cannot be called a verified copy of its NAS source.
enum Check {
    /// Something on scratch is not on the NAS as it was staged: scratch may hold the only
    /// copy.
    Differs(String),
    /// It could not be checked (the scratch manifest or journal is unreadable).
    Unknown(String),
}

/// How many changed files a reason names before it gives the count of the rest.
const NAMED: usize = 3;

/// Checks a staged copy file by file against its NAS source: every file of the scratch
/// manifest must be in the NAS manifest with the same checksum, present on the NAS with
/// the same size (a file appended to on the NAS), and unchanged on scratch since it was
/// verified (edited in place); no file may have been written into the folder after
/// staging. The reason names the first files that differ and how many there are.
fn nas_copy_state(
    record: &StageRecord,
    scratch: hpcstage_staging::Result<Manifest>,
    found: &Scan,
) -> std::result::Result<(), Check> {
    let dest = &record.destination;
    let scratch = scratch.map_err(|_| {
        Check::Unknown("the scratch copy has no readable MANIFEST.sha256".to_string())
    })?;
    // What each file looked like when it was verified (hard links have no entry of their
    // own; their inode is checked through the file they link to).
    let journal = Journal::load(&dest.join(STATE_DIR).join("journal"))
        .map_err(|e| Check::Unknown(format!("the stage journal cannot be read ({e})")))?;
    let source = Path::new(&record.source);
    if let (Ok(src), Ok(dst)) = (std::fs::canonicalize(source), std::fs::canonicalize(dest)) {
        if src.starts_with(&dst) || dst.starts_with(&src) {
            return Err(Check::Differs(format!(
                "the recorded source {} is the scratch copy itself (or overlaps it)",
                source.display()
            )));
        }
    }
    let no_manifest = |why: String| {
        Check::Differs(format!(
            "no readable MANIFEST.sha256 at the NAS source {}{why}; nothing proves a verified copy there",
            source.display()
        ))
    };
    let folder = NasAccess::shared()
        .folder(source)
        .map_err(|e| no_manifest(format!(" ({e})")))?;
    let nas = folder
        .manifest()
        .map_err(|e| no_manifest(format!(" ({e})")))?
        .ok_or_else(|| no_manifest(String::new()))?;
    let nas = nas.to_map();
    // A remote NAS is listed once (one round trip per folder) instead of a stat per file.
    let remote_sizes = if folder.is_remote() {
        Some(folder.file_sizes().map_err(|e| {
            Check::Differs(format!(
                "the NAS source {} cannot be listed ({e}); scratch may hold the only copy",
                source.display()
            ))
        })?)
    } else {
        None
    };
    let mut changed: Vec<String> = Vec::new();
    for e in &scratch.entries {
        let name = e.path.display();
        match nas.get(e.path.as_path()) {
            Some(d) if *d == e.digest => {
                // The manifest vouches for the bytes; the file itself must still be there.
                let on_nas = match &remote_sizes {
                    Some(sizes) => sizes.get(&e.path).copied(),
                    None => std::fs::metadata(source.join(&e.path))
                        .map(|m| m.size())
                        .ok(),
                };
                let on_scratch = std::fs::symlink_metadata(dest.join(&e.path));
                match (on_nas, on_scratch) {
                    (None, _) => changed.push(format!("{name} (missing at the NAS source)")),
                    (Some(n), Ok(s)) if n != s.size() => changed.push(format!(
                        "{name} (changed on the NAS or on scratch: {n} bytes there, {} here)",
                        s.size()
                    )),
                    (_, Ok(s)) => {
                        // Edited in place after staging (same size, say): the scratch
                        // copy may hold work that exists nowhere else. A file whose inode
                        // or mtime moved since it was verified is read again; only its
                        // content decides (a `touch` is not an edit).
                        let moved = journal.get(&e.path).is_some_and(|j| {
                            let now = Meta::from_std(&s);
                            j.dest_ino != now.ino || j.dest_mtime_ns != now.mtime_ns
                        });
                        if moved
                            && hash_file(&dest.join(&e.path)).map(|h| h.0).ok() != Some(e.digest)
                        {
                            changed
                                .push(format!("{name} (edited on scratch after it was verified)"));
                        }
                    }
                    _ => {}
                }
            }
            Some(_) => changed.push(format!(
                "{name} (the NAS manifest has another checksum: the NAS source changed)"
            )),
            None => changed.push(format!("{name} (on scratch but not in the NAS manifest)")),
        }
    }
    // Files written into the staged folder after staging exist only here.
    let listed = scratch.to_map();
    let mut extra: Vec<&PathBuf> = found
        .paths
        .iter()
        .flatten()
        .filter(|p| !listed.contains_key(p.as_path()))
        .collect();
    extra.sort();
    changed.extend(extra.into_iter().map(|p| {
        format!(
            "{} (written after staging: not in the stage manifest)",
            p.display()
        )
    }));
    if changed.is_empty() {
        return Ok(());
    }
    let n = changed.len();
    let mut text = format!(
        "{} {} not the verified NAS copy: {}",
        hpcstage_staging::fmt::count(n as u64, "file"),
        if n == 1 { "is" } else { "are" },
        changed[..n.min(NAMED)].join(", ")
    );
    if n > NAMED {
        text.push_str(&format!(" and {} more", n - NAMED));
    }
    Err(Check::Differs(text))
}

/// `Ok` when the NAS source of an unfinished stage is still there (asked over SSH for a
/// remote NAS): if it is not, what the copy holds may be all there is.
fn nas_source_reachable(source: &Path) -> std::result::Result<(), String> {
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
        Ok(true) => Ok(()),
        Ok(false) => Err(unreachable(String::new())),
        Err(e) => Err(unreachable(format!(" ({e})"))),
    }
}

/// Marker written into a run folder once its results are verified on the NAS, so that a
/// `--scan` by another user (who cannot read the owner's ledger) sees it is safe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PulledMarker {
    pub run_id: String,
    pub results_dir: PathBuf,
    pub manifest_digest: String,
    pub pulled_at: Timestamp,
    /// A partial pull: the expected outputs that are missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<Vec<String>>,
}

/// Assesses a run folder from its ledger view (or, for `--scan`, its markers alone).
pub fn run_item(record: &RunRecord, view: Option<&RunView>, ctx: &Assess<'_>) -> Item {
    let dir = &record.run_dir;
    let mut item = Item::new(
        ItemKind::Run,
        &record.project,
        &record.id,
        &record.owner,
        dir,
        ctx,
        record.created_at,
    );
    let proof = pulled_proof(record, view);
    if let Err(why) = plain_path(dir) {
        item.gone(Safety::AtRisk, why.clone(), ctx.now);
        item.kept = Some(why);
        return item;
    }
    let dismissed = crate::run::dismissal(record, view).filter(|_| proof.is_none());
    let dismissed_why = dismissed.as_ref().map(|d| {
        format!(
            "dismissed by {}{}; results were not pulled",
            d.by,
            d.reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        )
    });
    if !dir.is_dir() {
        let cleaned = view.and_then(|v| v.cleaned_at);
        // `clean` removes a run folder only once its results are proven on the NAS, or
        // once its owner dismissed them.
        if let Some(why) = dismissed_why {
            item.gone(
                Safety::Dismissed,
                format!("{why}; its folder is gone"),
                ctx.now,
            );
            return item;
        }
        match (&proof, cleaned) {
            (_, Some(at)) => item.gone(
                Safety::Cleaned,
                format!(
                    "removed by `hpcstage clean` on {}; results are on the NAS",
                    at.strftime("%Y-%m-%d")
                ),
                ctx.now,
            ),
            (Some(_), None) => item.gone(
                Safety::Expired,
                "folder is gone; results are on the NAS".into(),
                ctx.now,
            ),
            (None, _) => item.gone(
                Safety::AtRisk,
                "folder is gone and results were never pulled back".into(),
                ctx.now,
            ),
        }
        return item;
    }
    let guarded = guard(dir, ctx.scratch_root, Guard::Run(&record.id));
    let found = scan(dir, false);
    item.take_scan(&found, ctx, record.created_at);
    let phase = view.map(|v| v.phase);
    let mut facts = Facts {
        safe: "results verified on the NAS",
        expired: item.deadline <= ctx.now,
        refused: guarded.err(),
        incomplete: unfinished(
            dir,
            (phase == Some(Phase::Pulling) && proof.is_none()).then(|| {
                format!(
                    "a pull started and did not finish (stopped, or still running); \
                     run `hpcstage pull {}` to finish it",
                    record.id
                )
            }),
            &found,
        ),
        ..Facts::default()
    };
    // Its own jobs still at work (a retry after a pull, say).
    if let Some(v) = view {
        facts.in_use = v
            .jobs
            .iter()
            .filter(|j| !j.facts.as_ref().is_some_and(|f| ended(&f.state)))
            .map(|j| {
                format!(
                    "job {} {}",
                    j.job_id,
                    j.facts
                        .as_ref()
                        .map_or("state not known yet", |f| f.state.as_str())
                )
            })
            .collect();
    }
    if let Some((results, digest)) = &proof {
        if let Err(why) = nas_results_state(results, digest) {
            facts.at_risk.push(why);
        }
        let partial = view.and_then(|v| v.partial.clone()).or_else(|| {
            read_json::<PulledMarker>(&dir.join(STATE_DIR).join(PULLED_MARKER))
                .ok()
                .and_then(|m| m.partial)
        });
        if let Some(missing) = partial {
            facts.partial = Some(format!(
                "partial pull (--allow-partial): missing {}; the run folder is kept for a rerun",
                if missing.is_empty() {
                    "outputs".to_string()
                } else {
                    missing.join("; ")
                }
            ));
        }
    } else if dismissed_why.is_some() {
        facts.dismissed = dismissed_why;
    } else if facts.incomplete.is_some() {
        // INCOMPLETE says why already; results are only on scratch.
    } else if phase == Some(Phase::PullFailed) {
        facts
            .at_risk
            .push("pull failed; results only on scratch".into());
    } else {
        facts
            .at_risk
            .push("results not yet pulled back to the NAS".into());
    }
    note_unreadable(&mut facts, &found.errors);
    decide(&mut item, facts);
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
            ..
        } => Some((results_dir.clone(), manifest_digest.clone())),
        _ => None,
    })
}

/// `Ok` when the NAS results manifest is still the one recorded at the pull (asked over
/// SSH for a remote NAS).
pub fn nas_results_state(results_dir: &Path, digest: &str) -> std::result::Result<(), String> {
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
        } else if let Some(r) = unrecorded_stage(entry.path(), &state) {
            stages.push(r);
        }
        it.skip_current_dir();
    }
    (stages, runs)
}

/// A copy that was stopped before it wrote any record (a stage of an older version, or
/// one whose record could not be written) still has its journal or `running` marker:
/// it is shown as an incomplete stage of `<parent>/<folder>`, owned by the folder's owner.
fn unrecorded_stage(dir: &Path, state: &Path) -> Option<StageRecord> {
    use hpcstage_staging::record::{Incomplete, PurgeInfo};
    if !(state.join("running").exists() || state.join("journal").exists()) {
        return None;
    }
    let meta = std::fs::metadata(state).ok()?;
    let at = meta
        .modified()
        .ok()
        .and_then(|t| Timestamp::try_from(t).ok())
        .unwrap_or_else(Timestamp::now);
    let name = |p: Option<&Path>| {
        p.and_then(Path::file_name)
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    };
    let owner = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(meta.uid()))
        .ok()
        .flatten()
        .map_or_else(|| meta.uid().to_string(), |u| u.name);
    let policy = PurgePolicy::default();
    Some(StageRecord {
        id: format!("{}/{}", name(dir.parent()), name(Some(dir))),
        project: name(dir.parent()),
        dataset: name(Some(dir)),
        source: String::new(),
        destination: dir.to_path_buf(),
        files: 0,
        bytes: 0,
        manifest_digest: hpcstage_staging::hash::Digest::of(b""),
        source_manifest_digest: None,
        staged_at: at,
        owner,
        host: String::new(),
        purge: PurgeInfo {
            basis: policy.basis,
            age: format_age(policy.age),
            whole_folder: policy.whole_folder,
            oldest: at,
            deadline: policy.deadline(&Default::default(), at),
        },
        tool_version: String::new(),
        incomplete: Some(Incomplete {
            at,
            reason: "a copy into it was stopped before it wrote a stage record".into(),
            failed: Vec::new(),
            failed_count: 0,
        }),
    })
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
    // A folder already gone sets no deadline for the others.
    for i in items.iter().filter(|i| i.present()) {
        if let Some(t) = top(&i.path) {
            let e = earliest.entry(t).or_insert((i.deadline, i.name.clone()));
            if i.deadline < e.0 {
                *e = (i.deadline, i.name.clone());
            }
        }
    }
    for i in items.iter_mut().filter(|i| i.present()) {
        let Some(t) = top(&i.path) else { continue };
        let Some((deadline, by)) = earliest.get(&t) else {
            continue;
        };
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
                // What may be the only copy shows whatever its deadline.
                i.deadline <= limit || i.safety == Safety::AtRisk
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
            Safety::Incomplete => totals.incomplete += 1,
            Safety::InUse => totals.in_use += 1,
            Safety::Expired => totals.expired += 1,
            Safety::PartlyPurged => totals.partly_purged += 1,
            Safety::Partial | Safety::Dismissed | Safety::Safe | Safety::Cleaned => {}
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

/// Every run of the ledger, its jobs brought up to date by one batched scheduler query
/// per backend (the one `status` makes); without `client`, as last recorded. A scheduler
/// that cannot be asked leaves the states as they were (a job never seen to end counts
/// as running) and says so in the warnings.
pub fn load_runs(
    state_dir: &Path,
    client: Option<&hpcstage_slurm::client::ClientSettings>,
) -> Result<(Vec<RunView>, Vec<String>)> {
    let store = crate::run::RunStore::open(state_dir)?;
    let mut views = Vec::new();
    let mut warnings = Vec::new();
    for id in store.ids()? {
        match store.load(&id) {
            Ok(view) => views.push(view),
            Err(e) => warnings.push(format!("skipping damaged run {id}: {e}")),
        }
    }
    if let Some(client) = client {
        warnings.extend(crate::refresh::refresh(
            &store, &mut views, state_dir, client,
        ));
    }
    Ok((views, warnings))
}

/// Where the items come from and how they are judged.
#[derive(Debug, Clone, Copy)]
pub struct Sources<'a> {
    pub state_dir: &'a Path,
    /// The ledger's runs, as [`load_runs`] gave them.
    pub views: &'a [RunView],
    /// Folders searched for `.hpcstage/` markers; when given, only items under them are
    /// kept (the ledger's runs still count as readers of stages).
    pub scan_roots: &'a [PathBuf],
    pub policy: &'a PurgePolicy,
    pub scratch_root: Option<&'a Path>,
    pub now: Timestamp,
}

/// Everything tracked: the ledger's stages and runs plus whatever the scanned roots hold,
/// each with its verdict. Damaged ledger entries come back as warnings.
pub fn gather(src: &Sources<'_>) -> Result<(Vec<Item>, Vec<String>)> {
    let ledger = hpcstage_staging::ledger::Ledger::open(src.state_dir)?;
    let mut warnings = Vec::new();
    let mut stages = Vec::new();
    for stage in ledger.stages()? {
        match stage {
            Ok(r) => stages.push(r),
            Err(e) => warnings.push(format!("skipping damaged ledger entry: {e}")),
        }
    }
    let mut scanned_runs = Vec::new();
    let mut roots = Vec::new();
    for root in src.scan_roots {
        if !root.is_dir() {
            warnings.push(format!("--scan {}: not a folder", root.display()));
            continue;
        }
        let (found, runs) = scan_markers(root, 6);
        stages.extend(found);
        scanned_runs.extend(runs);
        roots.push(std::fs::canonicalize(root).unwrap_or(root.clone()));
    }
    let readers = Readers::from_runs(src.views, &scanned_runs);
    let ctx = Assess {
        policy: src.policy,
        now: src.now,
        scratch_root: src.scratch_root,
        readers: &readers,
    };
    let mut items: Vec<Item> = stages.iter().map(|r| stage_item(r, &ctx)).collect();
    items.extend(src.views.iter().map(|v| run_item(&v.record, Some(v), &ctx)));
    items.extend(scanned_runs.iter().map(|r| run_item(r, None, &ctx)));
    if !src.scan_roots.is_empty() {
        items.retain(|i| {
            let path = std::fs::canonicalize(&i.path).unwrap_or(i.path.clone());
            roots.iter().any(|r| path.starts_with(r))
        });
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
            removable: true,
            kept: None,
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
    use crate::testutil::{
        days_before, policy, run_at, set_times, stage_at, write, write_manifest, World,
    };
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
        let item = stage_at(&record, &policy(PurgeBasis::Mtime), now);
        assert_eq!(item.oldest, days_before(now, 20));
        assert_eq!(item.deadline, days_before(now, -10));
        assert_eq!((item.days_left, item.safety), (10, Safety::Safe));
        // 3 data files (as `stage` counts them); the bytes include the manifest (3 lines
        // of 64 hex, 2 spaces, name, newline), which the purge takes too. `.hpcstage/` is
        // bookkeeping.
        assert_eq!((item.files, item.bytes), (3, 7 + 3 * 67 + 19));

        // atime: pulled in by a day, because relatime can lag that much.
        let item = stage_at(&record, &policy(PurgeBasis::Atime), now);
        assert_eq!(item.oldest, days_before(now, 10));
        assert_eq!(item.deadline, days_before(now, -19));

        // ctime: setting the times above changed it, so the clock restarted then.
        let item = stage_at(&record, &policy(PurgeBasis::Ctime), now);
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
        let item = stage_at(&record, &policy(PurgeBasis::Created), now);
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

        let item = stage_at(&record, &p, now);
        assert_eq!(item.oldest, acquired);
        assert_eq!(item.deadline, "2020-03-31T00:00:00Z".parse().unwrap());
        assert!(item.days_left < -365, "{}", item.days_left);
        assert_eq!(item.safety, Safety::Expired);
        assert_eq!(
            item.reason,
            "past its purge deadline; raw data verified on the NAS"
        );
    }

    #[test]
    fn a_partly_purged_folder_says_how_many_files_are_gone() {
        let w = World::new();
        let (_, record) = w.plate7();
        let now = Timestamp::now();
        let p = PurgePolicy::default();
        std::fs::remove_file(record.destination.join("a.tif")).unwrap();
        std::fs::remove_file(record.destination.join("sub/c.csv")).unwrap();
        let item = stage_at(&record, &p, now);
        assert_eq!(item.safety, Safety::PartlyPurged);
        assert_eq!(item.reason, "2 of 3 staged files are gone");
        assert_eq!(item.files, 1, "b.tif (the manifest is bookkeeping)");

        // The purge took the manifest too: the count comes from the stage record.
        std::fs::remove_file(record.destination.join(MANIFEST_NAME)).unwrap();
        let item = stage_at(&record, &p, now);
        assert_eq!(item.safety, Safety::PartlyPurged);
        assert_eq!(item.reason, "2 of 3 staged files are gone");

        // And then the whole folder.
        std::fs::remove_dir_all(&record.destination).unwrap();
        let item = stage_at(&record, &p, now);
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
            let items = vec![stage_at(&record, &p, now), run_at(&run, None, &p, now)];
            assert!(items.iter().all(|i| i.whole_folder == whole_folder));
            let report = build(items, &all, &p, now);
            assert_eq!(report.policy_whole_folder, whole_folder);
            assert_eq!(report.policy_age, "30 days");
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
            removable: safety == Safety::Safe,
            kept: None,
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
        assert_eq!(stage_at(&record, &p, now).safety, Safety::Safe);

        // A file added on the NAS takes nothing from the copy on scratch.
        write(&source.join("d.tif"), "late addition");
        write_manifest(&source);
        let item = stage_at(&record, &p, now);
        assert_eq!(item.safety, Safety::Safe);

        // Appended to on the NAS, its manifest left as it was (the report said
        // SAFE while clean kept the folder).
        std::fs::write(source.join("a.tif"), "aaaa and more").unwrap();
        let item = stage_at(&record, &p, now);
        assert_eq!((item.safety, item.removable), (Safety::AtRisk, false));
        assert_eq!(
            item.reason,
            "1 file is not the verified NAS copy: \
             a.tif (changed on the NAS or on scratch: 13 bytes there, 4 here)"
        );

        // Several files changed: the first few are named, and how many more there are.
        for (name, text) in [("b.tif", "BB"), ("sub/c.csv", "C"), ("a.tif", "AAAA")] {
            std::fs::write(source.join(name), text).unwrap();
        }
        write_manifest(&source);
        write(&record.destination.join("new.csv"), "only here");
        let item = stage_at(&record, &p, now);
        assert_eq!(item.safety, Safety::AtRisk);
        assert_eq!(
            item.reason,
            "4 files are not the verified NAS copy: \
             a.tif (the NAS manifest has another checksum: the NAS source changed), \
             b.tif (the NAS manifest has another checksum: the NAS source changed), \
             sub/c.csv (the NAS manifest has another checksum: the NAS source changed) \
             and 1 more"
        );

        // The manifest is gone.
        std::fs::remove_file(source.join(MANIFEST_NAME)).unwrap();
        let item = stage_at(&record, &p, now);
        assert_eq!(item.safety, Safety::AtRisk);
        assert_eq!(
            item.reason,
            format!(
                "no readable MANIFEST.sha256 at the NAS source {}; nothing proves a verified copy there",
                source.display()
            )
        );

        // The whole source is gone (or the NAS is not mounted here).
        let moved = w.nas().join("elsewhere");
        std::fs::rename(&source, &moved).unwrap();
        let item = stage_at(&record, &p, now);
        assert_eq!(item.safety, Safety::AtRisk);
        assert!(
            item.reason.starts_with(&format!(
                "no readable MANIFEST.sha256 at the NAS source {}",
                source.display()
            )),
            "{}",
            item.reason
        );

        // Past its deadline it is still AT RISK: what is left is the only copy.
        let old: Timestamp = "2020-03-01T00:00:00Z".parse().unwrap();
        set_times(&record.destination, old, old);
        let item = stage_at(&record, &p, now);
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
        let item = stage_at(&record, &p, now);
        assert_eq!(item.safety, Safety::AtRisk);
        assert_eq!(
            item.reason,
            format!(
                "no readable MANIFEST.sha256 at the NAS source {}; nothing proves a verified copy there",
                bare.display()
            )
        );
    }

    #[test]
    fn an_incomplete_or_interrupted_stage_is_incomplete_with_its_deadline() {
        let w = World::new();
        let (_, mut record) = w.plate7();
        let now = Timestamp::now();
        let p = PurgePolicy::default();
        // The record says the last stage failed.
        record.incomplete = Some(hpcstage_staging::record::Incomplete {
            at: now,
            reason: "the last stage did not complete (1 of 3 files SOURCE CORRUPT)".into(),
            failed: vec!["b.tif SOURCE CORRUPT".into()],
            failed_count: 1,
        });
        let item = stage_at(&record, &p, now);
        assert_eq!((item.safety, item.removable), (Safety::Incomplete, false));
        assert_eq!(
            item.reason,
            "the last stage did not complete (1 of 3 files SOURCE CORRUPT): b.tif SOURCE CORRUPT"
        );
        assert_eq!((item.files, item.days_left), (3, 30));
        // Its NAS source gone, what the copy holds may be all there is: said too.
        let source = PathBuf::from(&record.source);
        std::fs::rename(&source, w.nas().join("moved")).unwrap();
        let item = stage_at(&record, &p, now);
        assert!(
            item.reason.ends_with(&format!(
                "; NAS source {} is not reachable; scratch may hold the only copy",
                source.display()
            )),
            "{}",
            item.reason
        );
        std::fs::rename(w.nas().join("moved"), &source).unwrap();

        // A copy killed in the middle: its marker and a temporary file are left.
        record.incomplete = None;
        write(&record.destination.join(".hpcstage/running"), "");
        write(
            &record.destination.join("sub/.hpcstage-tmp.c.csv.1"),
            "half",
        );
        let item = stage_at(&record, &p, now);
        assert_eq!((item.safety, item.removable), (Safety::Incomplete, false));
        assert_eq!(
            item.reason,
            "a copy into it started and did not finish (stopped, or still running); \
             1 temporary file left by an interrupted copy (4 B)"
        );
        assert_eq!(item.files, 3, "temporaries are not data files");

        // Found by --scan without any record: shown, with the folder's own deadline.
        std::fs::remove_file(record.destination.join(".hpcstage/stage.json")).unwrap();
        let (stages, _) = scan_markers(&w.scratch(), 6);
        assert_eq!(stages.len(), 1);
        let item = stage_at(&stages[0], &p, now);
        assert_eq!((item.project.as_str(), item.name.as_str()), ("P", "plate7"));
        assert_eq!((item.safety, item.removable), (Safety::Incomplete, false));
        assert!(
            item.reason
                .starts_with("a copy into it was stopped before it wrote a stage record"),
            "{}",
            item.reason
        );
        assert_eq!(item.days_left, 30);
    }

    #[test]
    fn run_folders_are_at_risk_until_their_results_are_verified_on_the_nas() {
        let w = World::new();
        let run = w.run("P", "r1");
        let now = Timestamp::now();
        let p = PurgePolicy::default();

        let item = run_at(&run, None, &p, now);
        assert_eq!((item.kind, item.safety), (ItemKind::Run, Safety::AtRisk));
        assert_eq!(item.reason, "results not yet pulled back to the NAS");
        assert_eq!(item.files, 3);

        let view = |phase, events| RunView {
            record: run.clone(),
            jobs: Vec::new(),
            phase,
            events,
            damaged: Vec::new(),
            partial: None,
            cleaned_at: None,
        };
        let failed = view(Phase::PullFailed, Vec::new());
        let item = run_at(&run, Some(&failed), &p, now);
        assert_eq!(item.safety, Safety::AtRisk);
        assert_eq!(item.reason, "pull failed; results only on scratch");

        // The pull's marker in the folder makes it SAFE, for anyone who scans it.
        let marker = w.pull(&run);
        let item = run_at(&run, None, &p, now);
        assert_eq!(item.safety, Safety::Safe);
        assert_eq!(item.reason, "results verified on the NAS");

        // ... as long as the NAS results are still what was pulled.
        write(&run.results_dir.join("masks/m2.tif"), "later");
        write_manifest(&run.results_dir);
        let item = run_at(&run, None, &p, now);
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
                    partial: None,
                },
            }],
        );
        let item = run_at(&run, Some(&pulled), &p, now);
        assert_eq!(item.safety, Safety::Safe);

        // A marker naming another run proves nothing.
        let mut other = marker;
        other.run_id = "r2".into();
        write_json(&run.run_dir.join(STATE_DIR).join(PULLED_MARKER), &other).unwrap();
        assert_eq!(run_at(&run, None, &p, now).safety, Safety::AtRisk);

        // Gone without a pull: AT RISK (the results may be lost); gone after: EXPIRED.
        std::fs::remove_dir_all(&run.run_dir).unwrap();
        let item = run_at(&run, None, &p, now);
        assert_eq!(item.safety, Safety::AtRisk);
        assert_eq!(
            item.reason,
            "folder is gone and results were never pulled back"
        );
        let item = run_at(&run, Some(&pulled), &p, now);
        assert_eq!(item.safety, Safety::Expired);
    }

    #[test]
    fn a_pull_that_did_not_finish_leaves_its_run_incomplete() {
        let w = World::new();
        let run = w.run("P", "r1");
        let view = RunView {
            record: run.clone(),
            jobs: Vec::new(),
            phase: Phase::Pulling,
            events: Vec::new(),
            damaged: Vec::new(),
            partial: None,
            cleaned_at: None,
        };
        let item = run_at(&run, Some(&view), &PurgePolicy::default(), Timestamp::now());
        assert_eq!((item.safety, item.removable), (Safety::Incomplete, false));
        assert_eq!(
            item.reason,
            "a pull started and did not finish (stopped, or still running); \
             run `hpcstage pull r1` to finish it"
        );
        assert_eq!(item.days_left, 30);
    }

    #[test]
    fn a_pulled_run_past_its_deadline_is_expired_not_safe() {
        let w = World::new();
        let run = w.run("P", "r1");
        w.pull(&run);
        let old: Timestamp = "2020-03-01T00:00:00Z".parse().unwrap();
        set_times(&run.run_dir, old, old);
        let item = run_at(&run, None, &PurgePolicy::default(), Timestamp::now());
        assert_eq!(item.safety, Safety::Expired);
        assert_eq!(
            item.reason,
            "past its purge deadline; results verified on the NAS"
        );
        assert!(item.removable || item.kept.is_some());
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
        let (views, _) = load_runs(&state, None).unwrap();
        let scratch = w.scratch();
        let src = Sources {
            state_dir: &state,
            views: &views,
            scan_roots: std::slice::from_ref(&scratch),
            policy: &p,
            scratch_root: Some(&scratch),
            now,
        };
        let (items, warnings) = gather(&src).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("skipping damaged ledger entry"));
        let all = Filter {
            within: None,
            owner: None,
            project: None,
        };
        let report = build(items, &all, &p, now);
        let got: Vec<(&str, Safety, bool)> = report
            .items
            .iter()
            .map(|i| (i.name.as_str(), i.safety, i.removable))
            .collect();
        assert_eq!(
            got,
            [
                ("r1", Safety::AtRisk, false),
                ("plate7", Safety::Safe, true)
            ]
        );
        assert_eq!(report.totals.at_risk, 1);

        // --scan ROOT lists only what is under ROOT.
        let elsewhere = w.root.join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        let (items, _) = gather(&Sources {
            scan_roots: std::slice::from_ref(&elsewhere),
            ..src
        })
        .unwrap();
        assert!(items.is_empty(), "{items:?}");
    }

    #[test]
    fn a_stage_that_a_run_still_reads_is_in_use_and_not_removable() {
        let w = World::new();
        let (_, record) = w.plate7();
        let state = w.root.join("state");
        hpcstage_staging::ledger::Ledger::open(&state)
            .unwrap()
            .put_stage(&record)
            .unwrap();
        let mut run = w.run("P", "r1");
        run.input.path = record.destination.clone();
        write_json(&run.run_dir.join(STATE_DIR).join("run.json"), &run).unwrap();
        let store = crate::run::RunStore::open(&state).unwrap();
        store.create(&run).unwrap();
        let facts = |state: &str| crate::run::Event::JobState {
            role: crate::run::JobRole::Compute,
            job_id: "42".into(),
            facts: Box::new(crate::run::JobFacts {
                state: state.into(),
                ..Default::default()
            }),
            observer: "status".into(),
        };
        store
            .append(
                "r1",
                crate::run::Event::Submitted {
                    role: crate::run::JobRole::Compute,
                    job_id: "42".into(),
                    token: "t".into(),
                    array_size: Some(2),
                },
            )
            .unwrap();
        let now = Timestamp::now();
        let p = PurgePolicy::default();
        let scratch = w.scratch();
        let verdict = || {
            let (views, _) = load_runs(&state, None).unwrap();
            let (items, _) = gather(&Sources {
                state_dir: &state,
                views: &views,
                scan_roots: &[],
                policy: &p,
                scratch_root: Some(&scratch),
                now,
            })
            .unwrap();
            let stage = items
                .into_iter()
                .find(|i| i.kind == ItemKind::Stage)
                .unwrap();
            (stage.safety, stage.reason, stage.removable)
        };
        // Submitted, never observed: the scheduler could not be asked yet.
        assert_eq!(
            verdict(),
            (
                Safety::InUse,
                "in use by run r1 (compute job 42 state not known yet)".into(),
                false
            )
        );
        store.append("r1", facts("PENDING")).unwrap();
        assert_eq!(
            verdict(),
            (
                Safety::InUse,
                "in use by run r1 (compute job 42 PENDING)".into(),
                false
            )
        );
        // The job ended, but nothing was pulled: the run may still be retried.
        store.append("r1", facts("CANCELLED by 0")).unwrap();
        assert_eq!(
            verdict(),
            (
                Safety::InUse,
                "in use by run r1 (not pulled yet)".into(),
                false
            )
        );
        // Pulled: it no longer reads the stage.
        let marker = w.pull(&run);
        store
            .append(
                "r1",
                crate::run::Event::Pulled {
                    results_dir: marker.results_dir,
                    manifest_digest: marker.manifest_digest,
                    partial: None,
                },
            )
            .unwrap();
        assert_eq!(
            verdict(),
            (Safety::Safe, "raw data verified on the NAS".into(), true)
        );
        // Another user's unpulled run found by --scan reads it too.
        std::fs::remove_file(run.run_dir.join(STATE_DIR).join(PULLED_MARKER)).unwrap();
        let readers = Readers::from_runs(&[], std::slice::from_ref(&run));
        assert_eq!(readers.of(&record.destination), ["run r1 (not pulled yet)"]);
    }
}
