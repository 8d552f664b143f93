//! The checks of a NAS reached over SSH: the host key and the login, the folder, and
//! `sha256sum` on the host for `--remote-verify`.

use crate::human::shell_quote;
use crate::remote::{Remote, RemoteSpec, SshOptions};
use crate::Error;

use super::{Check, CheckLevel, Needs};

/// The hint for a missing source on an SSH host.
pub(super) const MISSING_HINT: &str =
    "check the path on the NAS host (for example with `ssh HOST ls -ld PATH`)";

pub(super) fn nas(spec: &RemoteSpec, ssh: &SshOptions, needs: Needs) -> Vec<Check> {
    let authority = spec.authority();
    let remote = match Remote::connect(spec, ssh) {
        Ok(r) => r,
        Err(e) => {
            let fix = match &e {
                Error::HostKey(p) if p.changed => {
                    "ask the NAS admins for the host's fingerprint before replacing the old key (the ssh-keygen -R line above)".to_string()
                }
                Error::HostKey(_) => {
                    "check the fingerprint with the NAS admins, then add the key to known_hosts (the ssh-keyscan line above)".to_string()
                }
                _ => format!("check that `ssh {authority}` works from this node"),
            };
            return vec![
                Check::with_fix("ssh", CheckLevel::Fail, e.to_string(), fix),
                Check::new("nas_root", CheckLevel::Skip, "needs the SSH connection"),
                Check::new("sha256sum", CheckLevel::Skip, "needs the SSH connection"),
            ];
        }
    };
    vec![
        Check::new(
            "ssh",
            CheckLevel::Ok,
            format!("{authority}: host key known, login accepted"),
        ),
        folder(&remote, spec),
        sha256sum(&remote, needs),
    ]
}

/// The root folder exists on the host and the login may write to it.
fn folder(remote: &Remote, spec: &RemoteSpec) -> Check {
    let authority = spec.authority();
    let root = spec.path.display().to_string();
    let quoted = shell_quote(&root);
    match remote.exec(&format!(
        "test -d {quoted} && test -w {quoted} && echo hpcstage-ok"
    )) {
        Ok((0, out)) if out.contains("hpcstage-ok") => Check::new(
            "nas_root",
            CheckLevel::Ok,
            format!("{authority}:{root} exists and is writable"),
        ),
        Ok((_, out)) => Check::with_fix(
            "nas_root",
            CheckLevel::Fail,
            format!("{authority}:{root} is not a writable folder {}", out.trim()),
            "create it on the NAS host or ask for write access, or set nas_root to another folder",
        ),
        Err(e) => Check::with_fix(
            "nas_root",
            CheckLevel::Fail,
            e.to_string(),
            format!("check `ssh {authority} ls -ld {quoted}`"),
        ),
    }
}

/// `sha256sum` on the host: a failure when `--remote-verify` is on by default, else a
/// warning.
fn sha256sum(remote: &Remote, needs: Needs) -> Check {
    let level = if needs.remote_verify {
        CheckLevel::Fail
    } else {
        CheckLevel::Warn
    };
    match remote.exec("command -v sha256sum") {
        Ok((0, out)) if !out.trim().is_empty() => Check::new(
            "sha256sum",
            CheckLevel::Ok,
            format!("on the NAS host: {} (--remote-verify works)", out.trim()),
        ),
        Ok(_) => Check::with_fix(
            "sha256sum",
            level,
            "the NAS host has no sha256sum: --remote-verify cannot run there",
            "install GNU coreutils on the NAS host, or leave [ssh] remote_verify = false",
        ),
        Err(e) => Check::with_fix(
            "sha256sum",
            level,
            e.to_string(),
            "check `ssh HOST command -v sha256sum`",
        ),
    }
}
