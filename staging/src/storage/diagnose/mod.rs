//! What `hpcstage doctor` is told about a place that holds data: each backend lists its
//! own checks (a folder: there and writable; an SSH host: host key, login, folder,
//! `sha256sum`; an S3 bucket: reachable, Object Lock), so the doctor reports them without
//! knowing which kind of place it asked about.
//!
//! Like the rest of `storage`, nothing here prints: the checks are data, shown by the CLI.

mod local;
mod s3;
mod sftp;

use std::path::Path;

use super::S3Options;
use crate::remote::{Location, SshOptions};

pub use local::{folder, writable};

/// How one check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckLevel {
    Ok,
    /// Works, but something is missing that hpcstage would use.
    Warn,
    /// Something the configuration uses does not work.
    Fail,
    /// Not needed by this place, or not checked because a check it needs failed.
    Skip,
}

/// One line of a diagnosis: what was checked, how it went, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The check's name, as the doctor lists it (`nas_root`, `ssh`, `worm`, ...).
    pub name: &'static str,
    pub level: CheckLevel,
    pub detail: String,
    /// What to do about it (a failure or a warning).
    pub fix: Option<String>,
}

impl Check {
    /// A check that needs no fix.
    pub(crate) fn new(name: &'static str, level: CheckLevel, detail: impl Into<String>) -> Check {
        Check {
            name,
            level,
            detail: detail.into(),
            fix: None,
        }
    }

    /// A check that failed or warns, with how to fix it.
    pub(crate) fn with_fix(
        name: &'static str,
        level: CheckLevel,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name,
            level,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// What the doctor needs of a NAS beyond reading and writing it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Needs {
    /// `--remote-verify` is on by default: `sha256sum` must run on an SSH host.
    pub remote_verify: bool,
}

/// The checks of the NAS root at `location`, by the backend that serves it (connected to
/// with `ssh` or `s3`): the `nas_root` check and those of how it is reached.
pub fn diagnose(location: &Location, ssh: &SshOptions, s3: &S3Options, needs: Needs) -> Vec<Check> {
    match location {
        Location::Local(dir) => local::nas(dir),
        Location::Remote(spec) => sftp::nas(spec, ssh, needs),
        Location::S3(url) => s3::nas(url, s3),
    }
}

/// The hint for a source that `path` names and that is not there, said by the backend
/// that serves such a path (only the path's form is read: nothing is connected to).
pub fn missing_hint(path: &Path) -> &'static str {
    match Location::parse(path.as_os_str()) {
        Ok(Location::Remote(_)) => sftp::MISSING_HINT,
        Ok(Location::S3(_)) => s3::MISSING_HINT,
        Ok(Location::Local(_)) | Err(_) => local::MISSING_HINT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_source_is_hinted_at_by_the_backend_its_path_names() {
        assert_eq!(
            missing_hint(Path::new("/nas/lab/P1/raw/x")),
            local::MISSING_HINT
        );
        assert_eq!(missing_hint(Path::new("relative/x")), local::MISSING_HINT);
        assert_eq!(
            missing_hint(Path::new("alice@nas:/export/P1/raw/x")),
            sftp::MISSING_HINT
        );
        assert!(sftp::MISSING_HINT.starts_with("check the path on the NAS host"));
        assert_eq!(
            missing_hint(Path::new("s3://lab-raw/P1/raw/x")),
            s3::MISSING_HINT
        );
    }

    #[test]
    fn a_local_nas_is_diagnosed_as_a_folder_without_ssh() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let location = Location::Local(tmp.path().join("absent"));
        let checks = diagnose(
            &location,
            &SshOptions::default(),
            &S3Options::default(),
            Needs::default(),
        );
        let levels: Vec<_> = checks.iter().map(|c| (c.name, c.level)).collect();
        assert_eq!(
            levels,
            [("nas_root", CheckLevel::Fail), ("ssh", CheckLevel::Skip)]
        );
        assert!(
            checks[0].detail.ends_with("absent does not exist"),
            "{checks:?}"
        );
    }
}
