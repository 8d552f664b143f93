//! The 3-2-1 check: every known copy of a dataset (the NAS raw folder, the archives made by
//! `archive`, the copies declared in the config), when each was last verified, and whether
//! there are three copies or more, on two kinds of media or more, one of them off-site.
//!
//! When a copy was last verified is remembered in the ledger (`copies/<PRJ>--<NAME>.json`)
//! for the NAS folder and the declared copies; an archive's is in its own record.
//!
//! See docs/ARCHITECTURE.md#the-3-2-1-check.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::archive::{self, read, ArchiveRecord};
use crate::error::Result;
use crate::hash::Digest;
use crate::ledger::{file_safe, Ledger};
use crate::manifest::Manifest;
use crate::progress::NoProgress;
use crate::record::{read_json, write_json};
use crate::walk::MANIFEST_NAME;

/// A copy declared in the config (`[[copies]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredCopy {
    pub name: String,
    /// Where it is: a path (`{project}` and `{dataset}` are filled in) or any text.
    pub location: String,
    /// disk, tape or object.
    pub media: String,
    pub offsite: bool,
    /// `PRJ/NAME` globs of the datasets it holds (default: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datasets: Vec<String>,
}

/// The kinds of media.
pub const MEDIA: [&str; 3] = ["disk", "tape", "object"];

impl DeclaredCopy {
    /// Whether it holds `project/dataset`.
    pub fn holds(&self, project: &str, dataset: &str) -> bool {
        let name = format!("{project}/{dataset}");
        self.datasets.is_empty()
            || self.datasets.iter().any(|g| {
                globset::Glob::new(g)
                    .map(|g| g.compile_matcher().is_match(&name))
                    .unwrap_or(false)
            })
    }

    /// The location with `{project}` and `{dataset}` filled in.
    pub fn location_of(&self, project: &str, dataset: &str) -> String {
        self.location
            .replace("{project}", project)
            .replace("{dataset}", dataset)
    }
}

/// One copy of a dataset.
#[derive(Debug, Clone, Serialize)]
pub struct Copy {
    pub name: String,
    /// nas, archive or declared.
    pub kind: String,
    pub location: String,
    pub media: String,
    pub offsite: bool,
    pub last_verified: Option<Timestamp>,
    /// ok, failed, unverified (never checked by hpcstage), unreachable (from here).
    pub status: String,
    pub detail: String,
}

impl Copy {
    /// Whether it counts towards 3-2-1: everything but a copy whose last check failed and
    /// a snapshot (on the same pool as the folder it protects).
    pub fn counts(&self) -> bool {
        self.status != "failed" && self.kind != "snapshot"
    }
}

/// Every copy of one dataset, and the verdict.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetCopies {
    pub project: String,
    pub dataset: String,
    pub path: PathBuf,
    pub copies: Vec<Copy>,
    pub holds: bool,
    /// Why 3-2-1 does not hold (empty when it does).
    pub reasons: Vec<String>,
}

/// The 3-2-1 verdict over `copies`: whether it holds, and what is missing.
pub fn rule_321(copies: &[Copy]) -> (bool, Vec<String>) {
    let counted: Vec<&Copy> = copies.iter().filter(|c| c.counts()).collect();
    let media: BTreeSet<&str> = counted.iter().map(|c| c.media.as_str()).collect();
    let mut reasons = Vec::new();
    if counted.len() < 3 {
        reasons.push(format!("{} of the 3 copies needed", counted.len()));
    }
    if media.len() < 2 {
        reasons.push(format!(
            "one kind of media ({}), 2 needed",
            media.iter().next().copied().unwrap_or("none")
        ));
    }
    if !counted.iter().any(|c| c.offsite) {
        reasons.push("no copy off-site".to_string());
    }
    (reasons.is_empty(), reasons)
}

/// When hpcstage last checked the NAS folder and declared copies of a dataset.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Checks {
    /// Copy name → (when, ok, detail).
    checks: BTreeMap<String, (Timestamp, bool, String)>,
}

fn checks_path(ledger: &Ledger, project: &str, dataset: &str) -> PathBuf {
    ledger.root().join("copies").join(format!(
        "{}--{}.json",
        file_safe(project),
        file_safe(dataset)
    ))
}

/// The copies of the dataset `<nas_root>/<project>/raw/<dataset>`; with `verify`, each
/// reachable one is checked first (the NAS folder and declared folders against the
/// dataset's manifest, archives by their chunk and member digests).
pub fn of_dataset(
    nas_root: &Path,
    project: &str,
    dataset: &str,
    declared: &[DeclaredCopy],
    ledger: &Ledger,
    verify: bool,
) -> Result<DatasetCopies> {
    let path = crate::ingest::raw_path(nas_root, project, dataset);
    let cpath = checks_path(ledger, project, dataset);
    let mut checks: Checks = read_json(&cpath).unwrap_or_default();
    let manifest_digest = std::fs::read(path.join(MANIFEST_NAME))
        .ok()
        .map(|b| Digest::of(&b));
    let mut copies = Vec::new();

    // The NAS raw folder.
    if verify {
        let outcome = check_folder(&path, manifest_digest);
        checks.checks.insert(
            "nas".into(),
            (
                Timestamp::now(),
                outcome.is_ok(),
                outcome.err().unwrap_or_default(),
            ),
        );
    }
    copies.push(from_checks(
        &checks,
        "nas",
        Copy {
            name: "nas".into(),
            kind: "nas".into(),
            location: path.display().to_string(),
            media: "disk".into(),
            offsite: false,
            last_verified: None,
            status: "unverified".into(),
            detail: String::new(),
        },
    ));

    // ZFS snapshots held by hpcstage: shown, not counted (they share the NAS's pool).
    for snap in crate::zfs::recorded(&path)? {
        copies.push(Copy {
            name: snap.snapshot.clone(),
            kind: "snapshot".into(),
            location: snap.snapshot.clone(),
            media: "disk".into(),
            offsite: false,
            last_verified: None,
            status: "held".into(),
            detail: format!(
                "taken by {} (hold {}); same pool as the NAS folder: not counted",
                snap.by, snap.hold
            ),
        });
    }

    // Archives: the ledger's and those recorded beside the dataset.
    let mut records: BTreeMap<(String, String), ArchiveRecord> = BTreeMap::new();
    for r in ledger.archives()?.into_iter().flatten() {
        if r.source == path {
            records.insert((r.id.clone(), r.location.clone()), r);
        }
    }
    for r in archive::nas_records(&path).into_iter().flatten() {
        records
            .entry((r.id.clone(), r.location.clone()))
            .or_insert(r);
    }
    for (_, mut r) in records {
        let mut copy = Copy {
            name: r.id.clone(),
            kind: "archive".into(),
            location: r.location.clone(),
            media: r.media.clone(),
            offsite: r.offsite,
            last_verified: Some(r.verified_at),
            status: "ok".into(),
            detail: String::new(),
        };
        let key = format!("archive:{}:{}", r.id, r.location);
        if let Some((at, false, detail)) = checks.checks.get(&key) {
            if *at > r.verified_at {
                copy.status = "failed".into();
                copy.detail = detail.clone();
            }
        }
        if manifest_digest.is_some_and(|d| d != r.manifest_digest) {
            copy.status = "failed".into();
            copy.detail =
                "holds another version of the dataset (its MANIFEST.sha256 differs)".into();
        } else if verify {
            // An archive on S3 is read once, chunk by chunk, every member hashed on the
            // way (docs/ARCHITECTURE.md#the-3-2-1-check says why not by its metadata).
            let reachable = archive::open_location(&r.location, ledger).map_err(|e| e.to_string());
            if let Err(why) = &reachable {
                copy.status = "unreachable".into();
                copy.detail = why.clone();
            }
            if let Ok(store) = reachable {
                match read::verify(&*store, Some(r.index_sha256), &NoProgress) {
                    Ok(v) if v.ok() => {
                        r = archive::mark_verified(ledger, &r)?;
                        copy.last_verified = Some(r.verified_at);
                        copy.status = "ok".into();
                        copy.detail.clear();
                    }
                    Ok(v) => {
                        copy.status = "failed".into();
                        copy.detail = format!(
                            "{} members and {} objects differ from the index (hpcstage archive verify {})",
                            v.bad_members.len(),
                            v.bad_objects.len(),
                            r.location
                        );
                    }
                    Err(e) => {
                        copy.status = "failed".into();
                        copy.detail = e.to_string();
                    }
                }
            }
        }
        if verify && copy.status == "failed" {
            checks
                .checks
                .insert(key, (Timestamp::now(), false, copy.detail.clone()));
        }
        copies.push(copy);
    }

    // Declared copies.
    for d in declared.iter().filter(|d| d.holds(project, dataset)) {
        let location = d.location_of(project, dataset);
        let key = format!("declared:{}", d.name);
        if verify {
            let folder = Path::new(&location);
            if folder.is_dir() {
                let outcome = check_folder(folder, manifest_digest);
                checks.checks.insert(
                    key.clone(),
                    (
                        Timestamp::now(),
                        outcome.is_ok(),
                        outcome.err().unwrap_or_default(),
                    ),
                );
            }
        }
        let mut copy = from_checks(
            &checks,
            &key,
            Copy {
                name: d.name.clone(),
                kind: "declared".into(),
                location: location.clone(),
                media: d.media.clone(),
                offsite: d.offsite,
                last_verified: None,
                status: "unverified".into(),
                detail: String::new(),
            },
        );
        if verify && !Path::new(&location).is_dir() {
            copy.status = "unreachable".into();
            copy.detail = "not a folder reachable from here; check it where it is".into();
        }
        copies.push(copy);
    }
    if verify {
        write_json(&cpath, &checks)?;
    }
    let (holds, reasons) = rule_321(&copies);
    Ok(DatasetCopies {
        project: project.to_string(),
        dataset: dataset.to_string(),
        path,
        copies,
        holds,
        reasons,
    })
}

fn from_checks(checks: &Checks, key: &str, mut copy: Copy) -> Copy {
    if let Some((at, ok, detail)) = checks.checks.get(key) {
        copy.last_verified = Some(*at);
        copy.status = if *ok { "ok" } else { "failed" }.into();
        copy.detail = detail.clone();
    }
    copy
}

/// Checks a folder copy against its manifest, and that manifest against the NAS one.
fn check_folder(folder: &Path, nas_manifest: Option<Digest>) -> std::result::Result<(), String> {
    let bytes = std::fs::read(folder.join(MANIFEST_NAME))
        .map_err(|e| format!("{}: {e}", folder.join(MANIFEST_NAME).display()))?;
    if let Some(nas) = nas_manifest.filter(|d| *d != Digest::of(&bytes)) {
        return Err(format!(
            "its {MANIFEST_NAME} is not the dataset's ({nas}): another version"
        ));
    }
    let manifest =
        Manifest::parse(&bytes, &folder.join(MANIFEST_NAME)).map_err(|e| e.to_string())?;
    let verified =
        crate::manifest::verify(folder, &manifest, &NoProgress).map_err(|e| e.to_string())?;
    if !verified.all_ok() {
        let (_, failed, missing, unreadable) = verified.counts();
        return Err(format!(
            "{failed} FAILED, {missing} MISSING and {unreadable} unreadable against {MANIFEST_NAME}"
        ));
    }
    Ok(())
}

/// The datasets under `<nas_root>/*/raw/*` (hidden folders aside), as (project, dataset).
pub fn datasets(nas_root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let visible = |e: &std::fs::DirEntry| {
        !e.file_name().as_encoded_bytes().starts_with(b".") && e.path().is_dir()
    };
    for p in std::fs::read_dir(nas_root).into_iter().flatten().flatten() {
        if !visible(&p) {
            continue;
        }
        for d in std::fs::read_dir(p.path().join("raw"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if visible(&d) {
                out.push((
                    p.file_name().to_string_lossy().into_owned(),
                    d.file_name().to_string_lossy().into_owned(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(media: &str, offsite: bool, status: &str) -> Copy {
        Copy {
            name: "c".into(),
            kind: "declared".into(),
            location: String::new(),
            media: media.into(),
            offsite,
            last_verified: None,
            status: status.into(),
            detail: String::new(),
        }
    }

    #[test]
    fn three_copies_two_media_one_offsite() {
        let nas = copy("disk", false, "ok");
        assert_eq!(rule_321(std::slice::from_ref(&nas)).1.len(), 3);
        let holds = [
            nas.clone(),
            copy("disk", false, "ok"),
            copy("tape", true, "unverified"),
        ];
        assert_eq!(rule_321(&holds), (true, vec![]));
        let failed = [
            nas.clone(),
            copy("disk", false, "ok"),
            copy("tape", true, "failed"),
        ];
        assert!(
            !rule_321(&failed).0,
            "a copy that failed its check does not count"
        );
        let same_media = [
            nas.clone(),
            copy("disk", true, "ok"),
            copy("disk", false, "ok"),
        ];
        assert_eq!(
            rule_321(&same_media).1,
            vec!["one kind of media (disk), 2 needed"]
        );
    }
}
