//! The checks of a folder of this machine: there, a folder, and writable.

use std::path::Path;

use super::{Check, CheckLevel};

/// The hint for a missing local source.
pub(super) const MISSING_HINT: &str = "check the path (and that the NAS is mounted on this node)";

/// A local NAS root: the folder, and no SSH needed.
pub(super) fn nas(dir: &Path) -> Vec<Check> {
    vec![
        folder("nas_root", dir, "nas_root"),
        Check::new(
            "ssh",
            CheckLevel::Skip,
            "the NAS is a local folder: no SSH needed",
        ),
    ]
}

/// The check `name` of a folder that must exist and be writable; the fix names the
/// config `key` that chose it.
pub fn folder(name: &'static str, dir: &Path, key: &str) -> Check {
    let shown = dir.display();
    if !dir.is_dir() {
        let what = if dir.exists() {
            "is not a folder"
        } else {
            "does not exist"
        };
        return Check::with_fix(
            name,
            CheckLevel::Fail,
            format!("{shown} {what}"),
            format!("create it (mkdir -p {shown}; mount it), or set {key} to another folder"),
        );
    }
    match writable(dir) {
        Ok(()) => Check::new(
            name,
            CheckLevel::Ok,
            format!("{shown} exists and is writable"),
        ),
        Err(e) => Check::with_fix(
            name,
            CheckLevel::Fail,
            format!("{shown} is not writable: {e}"),
            format!("ask for write access to {shown}, or set {key} to a folder of yours"),
        ),
    }
}

/// Creates and removes a file in `dir`.
pub fn writable(dir: &Path) -> std::io::Result<()> {
    tempfile::Builder::new()
        .prefix(".hpcstage-doctor.")
        .tempfile_in(dir)
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writable_folder_is_ok_and_a_missing_one_fails_with_its_key() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let ok = folder("scratch_root", tmp.path(), "scratch_root");
        assert_eq!(ok.level, CheckLevel::Ok, "{ok:?}");
        assert!(ok.detail.ends_with("exists and is writable"), "{ok:?}");

        let missing = tmp.path().join("nope");
        let failed = folder("nas_root", &missing, "nas_root");
        assert_eq!(failed.level, CheckLevel::Fail);
        assert_eq!(
            failed.detail,
            format!("{} does not exist", missing.display())
        );
        assert!(
            failed
                .fix
                .as_deref()
                .is_some_and(|f| f.contains("set nas_root")),
            "{failed:?}"
        );

        let checks = nas(tmp.path());
        let names: Vec<_> = checks.iter().map(|c| (c.name, c.level)).collect();
        assert_eq!(
            names,
            [("nas_root", CheckLevel::Ok), ("ssh", CheckLevel::Skip)]
        );
    }
}
