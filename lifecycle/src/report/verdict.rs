//! The verdict on one folder: the facts of a staged copy or a run folder, and the one
//! [`Safety`], reason and "may clean remove it" that [`decide`] makes of them.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use jiff::Timestamp;

use hpcstage_staging::policy::days_left;
use hpcstage_staging::record::{read_json, StageRecord};
use hpcstage_staging::scan::{scan, Scan};
use hpcstage_staging::sorted::ManifestFile;
use hpcstage_staging::storage::NasAccess;
use hpcstage_staging::walk::{MANIFEST_NAME, STATE_DIR};

use super::nas_copy::{manifest_digest, nas_copy_state, tree_diff, Check};
use super::{Assess, Item, ItemKind, Safety, GONE};
use crate::clean::{guard, plain_path, Guard};
use crate::refresh::ended;
use crate::run::{Event, Phase, PulledMarker, RunRecord, RunView, PULLED_MARKER};

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
    let found = scan(dest);
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
    if facts.incomplete.is_none() {
        // Only a complete copy has a manifest to check against the NAS. It is checked
        // line by line and read in path order beside an ordered walk of the folder,
        // never held whole (see nas_copy).
        let scratch_manifest = ManifestFile::open(&dest.join(MANIFEST_NAME)).ok();
        let tree = scratch_manifest
            .as_ref()
            .and_then(|m| tree_diff(dest, m).ok());
        // Files in unreadable folders are not missing, only unseen.
        if found.errors.is_empty() {
            let missing = match (&scratch_manifest, &tree) {
                (Some(_), Some(t)) => t.missing,
                (Some(_), None) => 0,
                (None, _) => record.files.saturating_sub(found.files),
            };
            if missing > 0 {
                facts.purged = Some(format!(
                    "{missing} of {} staged files are gone",
                    record.files
                ));
            }
        }
        match nas_copy_state(record, scratch_manifest.as_ref(), tree.as_ref()) {
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
            hpcstage_staging::human::count(found.temporaries, "temporary file"),
            hpcstage_staging::human::bytes(found.temporary_bytes)
        ));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// Says so when part of a folder could not be scanned: its counts and deadline may be off.
fn note_unreadable(facts: &mut Facts, errors: &[hpcstage_staging::Error]) {
    if let Some(first) = errors.first() {
        facts.notes.push(format!(
            "{} could not be read (first: {first}), so the deadline may be earlier",
            hpcstage_staging::human::count(errors.len() as u64, "entry")
        ));
        facts.refused = facts.refused.take().or(Some(format!(
            "part of the folder could not be read: {first}"
        )));
    }
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
    match folder.tree_exists() {
        Ok(true) => Ok(()),
        Ok(false) => Err(unreachable(String::new())),
        Err(e) => Err(unreachable(format!(" ({e})"))),
    }
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
    let found = scan(dir);
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
        .and_then(|f| manifest_digest(f.as_ref()));
    match read {
        Ok(Some(d)) if d.to_hex() == digest => Ok(()),
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
