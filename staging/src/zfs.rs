//! WORM on ZFS: when a dataset lies on a ZFS filesystem, `ingest` and `archive` take a
//! snapshot of that filesystem (`pool/fs@hpcstage-<name>-<YYYYMMDD>`) and put a hold on it
//! (tag `hpcstage`), so that it cannot be destroyed until the hold is released. Elsewhere
//! the caller falls back to chmod and chattr and says so.
//!
//! The record goes beside the dataset, with its archive records
//! (`<parent>/.hpcstage-archives/<NAME>/zfs-<snapshot>.json`), since the dataset itself is
//! write-protected. See docs/ARCHITECTURE.md#worm-on-zfs.

use std::path::{Path, PathBuf};
use std::process::Command;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::archive::NAS_RECORDS;
use crate::error::Result;
use crate::ledger::file_safe;
use crate::record::{read_json, write_json};

/// The hold tag hpcstage puts on its snapshots.
pub const HOLD_TAG: &str = "hpcstage";

/// A snapshot hpcstage took and holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// `pool/fs@hpcstage-<name>-<date>`.
    pub snapshot: String,
    pub hold: String,
    /// The folder it protects.
    pub path: PathBuf,
    pub taken_at: Timestamp,
    /// "ingest" or "archive".
    pub by: String,
}

/// The ZFS filesystem holding `path`, when it is one (`findmnt` says `zfs` or `fuse.zfs`).
pub fn filesystem_of(path: &Path) -> Option<String> {
    let out = Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE,SOURCE", "-T"])
        .arg(path)
        .env("LC_ALL", "C")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = text.split_whitespace();
    let (fstype, source) = (fields.next()?, fields.next()?);
    matches!(fstype, "zfs" | "fuse.zfs").then(|| source.to_string())
}

/// Snapshots and holds the ZFS filesystem of `path` for the dataset `name`; `Ok(None)` when
/// `path` is not on ZFS (the caller says so and relies on chmod and chattr), `Err` with
/// the reason when ZFS refused.
pub fn snapshot_and_hold(
    path: &Path,
    name: &str,
    by: &str,
) -> std::result::Result<Option<Snapshot>, String> {
    let Some(fs) = filesystem_of(path) else {
        return Ok(None);
    };
    let now = Timestamp::now();
    let date = now.strftime("%Y%m%d").to_string();
    let snapshot = format!("{fs}@hpcstage-{}-{date}", file_safe(name));
    if !exists(&snapshot) {
        zfs(&["snapshot", &snapshot])?;
    }
    if let Err(e) = zfs(&["hold", HOLD_TAG, &snapshot]) {
        // A rerun on the same day finds its own hold there.
        if !e.contains("tag already exists") {
            return Err(e);
        }
    }
    let record = Snapshot {
        snapshot,
        hold: HOLD_TAG.to_string(),
        path: path.to_path_buf(),
        taken_at: now,
        by: by.to_string(),
    };
    // The first record of a snapshot stays (an archive on the day of the ingest finds the
    // ingest's snapshot).
    let file = record_path(path, &record.snapshot);
    if !file.exists() {
        let _ = write_json(&file, &record);
    }
    Ok(Some(record))
}

fn exists(snapshot: &str) -> bool {
    Command::new("zfs")
        .args(["list", "-H", "-t", "snapshot", "-o", "name", snapshot])
        .env("LC_ALL", "C")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn zfs(args: &[&str]) -> std::result::Result<(), String> {
    let out = Command::new("zfs")
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| format!("cannot run zfs: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "zfs {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn record_path(path: &Path, snapshot: &str) -> PathBuf {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().map(PathBuf::from).unwrap_or_default();
    let file = file_safe(snapshot);
    parent
        .join(NAS_RECORDS)
        .join(name)
        .join(format!("zfs-{file}.json"))
}

/// The snapshots recorded beside the dataset folder `path`.
pub fn recorded(path: &Path) -> Result<Vec<Snapshot>> {
    let dir = record_path(path, "x");
    let dir = dir.parent().expect("a record has a folder");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.as_encoded_bytes().starts_with(b"zfs-"))
        })
        .collect();
    paths.sort();
    Ok(paths.iter().filter_map(|p| read_json(p).ok()).collect())
}

/// A one-line account of the outcome, for the command's output.
pub fn describe(outcome: &std::result::Result<Option<Snapshot>, String>) -> String {
    match outcome {
        Ok(Some(s)) => format!("ZFS snapshot {} held ({})", s.snapshot, s.hold),
        Ok(None) => "not on a ZFS filesystem: no snapshot; protected by chmod (and chattr +i where asked and allowed)".to_string(),
        Err(e) => format!("ZFS snapshot not taken: {e}"),
    }
}
