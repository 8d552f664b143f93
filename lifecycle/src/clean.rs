//! Deciding which scratch folders can go, and removing them.
//!
//! A folder is removed only when it is provably safe: a staged copy whose NAS source
//! manifest still lists every staged file with the same checksum, or a run folder whose
//! results were pulled and whose NAS results manifest is the one recorded at the pull.
//! Every folder must also sit inside the scratch root and carry its own `.hpcstage/`
//! marker naming the same path, so a damaged or hostile ledger entry can never point
//! `clean` at anything else. Nothing is ever `touch`ed to postpone a purge.

use std::path::{Path, PathBuf};

use serde::Serialize;

use hpcstage_staging::manifest::Manifest;
use hpcstage_staging::record::{read_json, StageRecord};
use hpcstage_staging::scan::scan;
use hpcstage_staging::walk::{MANIFEST_NAME, STATE_DIR};
use hpcstage_staging::worm::make_writable;

use crate::error::Result;
use crate::report::{ItemKind, PulledMarker};
use crate::run::RunRecord;

/// What `clean` decided for one folder.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub kind: ItemKind,
    pub name: String,
    pub path: PathBuf,
    pub bytes: u64,
    pub files: u64,
    /// `None`: safe to remove; `Some(reason)`: refused.
    pub refused: Option<String>,
}

/// Checks that `path` is a folder strictly inside `scratch_root` (after resolving links).
fn inside_scratch(path: &Path, scratch_root: &Path) -> std::result::Result<(), String> {
    let root = std::fs::canonicalize(scratch_root)
        .map_err(|e| format!("scratch root {}: {e}", scratch_root.display()))?;
    let real = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if real == root || !real.starts_with(&root) {
        return Err(format!(
            "{} is not inside the scratch root {}; refusing to remove it",
            real.display(),
            root.display()
        ));
    }
    Ok(())
}

/// Decides whether a staged copy can be removed.
pub fn assess_stage(record: &StageRecord, scratch_root: &Path) -> Candidate {
    let path = record.destination.clone();
    let mut c = Candidate {
        kind: ItemKind::Stage,
        name: record.id.clone(),
        path: path.clone(),
        bytes: 0,
        files: 0,
        refused: None,
    };
    c.refused = stage_refusal(record, scratch_root).err();
    if c.refused.is_none() {
        let s = scan(&path, false);
        (c.bytes, c.files) = (s.bytes, s.files);
    }
    c
}

fn stage_refusal(record: &StageRecord, scratch_root: &Path) -> std::result::Result<(), String> {
    let dest = &record.destination;
    if !dest.is_dir() {
        return Err("already gone".into());
    }
    inside_scratch(dest, scratch_root)?;
    let marker: StageRecord =
        read_json(&dest.join(STATE_DIR).join("stage.json")).map_err(|_| {
            "no stage record in the folder (.hpcstage/stage.json); not a complete stage".to_string()
        })?;
    if marker.destination != *dest {
        return Err("the folder's stage record names another path".into());
    }
    let scratch = Manifest::read(&dest.join(MANIFEST_NAME))
        .map_err(|_| "the scratch copy has no readable MANIFEST.sha256".to_string())?;
    let source = Path::new(&record.source);
    let nas = Manifest::read(&source.join(MANIFEST_NAME)).map_err(|_| {
        format!(
            "no readable MANIFEST.sha256 at the NAS source {}; nothing proves a verified copy there",
            source.display()
        )
    })?;
    let nas = nas.to_map();
    for e in &scratch.entries {
        match nas.get(e.path.as_path()) {
            Some(d) if *d == e.digest => {}
            Some(_) => {
                return Err(format!(
                    "{} differs between scratch and the NAS manifest (the NAS source changed)",
                    e.path.display()
                ))
            }
            None => {
                return Err(format!(
                    "{} is on scratch but not in the NAS manifest",
                    e.path.display()
                ))
            }
        }
    }
    Ok(())
}

/// Decides whether a run folder can be removed.
pub fn assess_run(record: &RunRecord, scratch_root: &Path) -> Candidate {
    let path = record.run_dir.clone();
    let mut c = Candidate {
        kind: ItemKind::Run,
        name: record.id.clone(),
        path: path.clone(),
        bytes: 0,
        files: 0,
        refused: None,
    };
    c.refused = run_refusal(record, scratch_root).err();
    if c.refused.is_none() {
        let s = scan(&path, false);
        (c.bytes, c.files) = (s.bytes, s.files);
    }
    c
}

fn run_refusal(record: &RunRecord, scratch_root: &Path) -> std::result::Result<(), String> {
    let dir = &record.run_dir;
    if !dir.is_dir() {
        return Err("already gone".into());
    }
    inside_scratch(dir, scratch_root)?;
    let marker: RunRecord = read_json(&dir.join(STATE_DIR).join("run.json"))
        .map_err(|_| "no run record in the folder (.hpcstage/run.json)".to_string())?;
    if marker.run_dir != *dir || marker.id != record.id {
        return Err("the folder's run record names another run".into());
    }
    let pulled: PulledMarker =
        read_json(&dir.join(STATE_DIR).join("pulled.json")).map_err(|_| {
            "results were not pulled back to the NAS yet (run `hpcstage pull`)".to_string()
        })?;
    let nas = Manifest::read(&pulled.results_dir.join(MANIFEST_NAME)).map_err(|_| {
        format!(
            "the NAS results manifest {} is not readable",
            pulled.results_dir.join(MANIFEST_NAME).display()
        )
    })?;
    if nas.digest().to_hex() != pulled.manifest_digest {
        return Err("the NAS results manifest changed since the pull".into());
    }
    Ok(())
}

/// Removes a folder that [`assess_stage`] or [`assess_run`] found safe.
pub fn remove(candidate: &Candidate) -> Result<()> {
    debug_assert!(candidate.refused.is_none());
    make_writable(&candidate.path)?;
    std::fs::remove_dir_all(&candidate.path)
        .map_err(|e| hpcstage_staging::Error::io(&candidate.path, e))?;
    Ok(())
}
