//! What the report covers: the ledger's stages and runs, and folders found by their
//! `.hpcstage/` markers under `--scan` roots (other users' too).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use jiff::Timestamp;

use hpcstage_staging::policy::{format_age, PurgePolicy};
use hpcstage_staging::record::{read_json, StageRecord};
use hpcstage_staging::walk::STATE_DIR;

use super::verdict::{run_item, stage_item, Readers};
use super::{Assess, Item};
use crate::error::Result;
use crate::run::{RunRecord, RunView};

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
