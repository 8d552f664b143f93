//! Where data lives: a local path or `[user@]host[:port]:/path` on an SSH host.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `[user@]host[:port]:/path`, as written by the user (the host may be an alias of
/// `~/.ssh/config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSpec {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// Absolute path on the remote host.
    pub path: PathBuf,
}

impl RemoteSpec {
    /// The same host with another path.
    pub fn with_path(&self, path: impl Into<PathBuf>) -> RemoteSpec {
        RemoteSpec {
            path: path.into(),
            ..self.clone()
        }
    }

    /// `[user@]host[:port]` without the path.
    pub fn authority(&self) -> String {
        let mut s = String::new();
        if let Some(u) = &self.user {
            s.push_str(u);
            s.push('@');
        }
        if self.host.contains(':') {
            s.push_str(&format!("[{}]", self.host));
        } else {
            s.push_str(&self.host);
        }
        if let Some(p) = self.port {
            s.push_str(&format!(":{p}"));
        }
        s
    }
}

impl fmt::Display for RemoteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.authority(), self.path.display())
    }
}

/// A folder on this machine or on an SSH host, or a prefix in an S3 bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    Remote(RemoteSpec),
    S3(crate::storage::S3Url),
}

impl Location {
    /// Reads `[user@]host[:port]:/path` or a local path. A colon only makes a path remote
    /// when it comes before the first `/` (so `./a:b` and `/x/a:b` stay local), as with
    /// scp and rsync.
    pub fn parse(text: &OsStr) -> Result<Location> {
        let bytes = text.as_bytes();
        if crate::storage::S3Url::is_s3(bytes) {
            return crate::storage::S3Url::parse(&text.to_string_lossy()).map(Location::S3);
        }
        let first_slash = bytes.iter().position(|&b| b == b'/');
        let colon = if bytes.first() == Some(&b'[') {
            // [v6addr]... : the colon after the closing bracket.
            bytes.iter().position(|&b| b == b']').and_then(|end| {
                bytes[end..]
                    .iter()
                    .position(|&b| b == b':')
                    .map(|p| p + end)
            })
        } else {
            bytes.iter().position(|&b| b == b':')
        };
        let remote = matches!((colon, first_slash), (Some(c), Some(s)) if c < s)
            || matches!((colon, first_slash), (Some(_), None));
        if !remote || bytes.starts_with(b".") {
            return Ok(Location::Local(PathBuf::from(text)));
        }
        let invalid = |reason: &str| Error::Invalid {
            what: "remote location",
            value: text.to_string_lossy().into_owned(),
            reason: format!("{reason}; write it as [user@]host[:port]:/absolute/path"),
        };
        let text_str = text
            .to_str()
            .ok_or_else(|| invalid("the user and host part is not valid UTF-8"))?;
        let (authority, path) = split_authority(text_str).ok_or_else(|| invalid("no path"))?;
        let (user, host_port) = match authority.rsplit_once('@') {
            Some((u, h)) if !u.is_empty() => (Some(u.to_string()), h),
            Some(_) => return Err(invalid("empty user name before '@'")),
            None => (None, authority),
        };
        let (host, port) = match host_port.strip_prefix('[') {
            Some(rest) => {
                let (h, after) = rest
                    .split_once(']')
                    .ok_or_else(|| invalid("unclosed '[' in the host"))?;
                (h.to_string(), after.strip_prefix(':'))
            }
            None => match host_port.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (host_port.to_string(), None),
            },
        };
        if host.is_empty() {
            return Err(invalid("empty host name"));
        }
        let port =
            match port {
                None => None,
                Some(p) => Some(p.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(|| {
                    invalid(&format!("port {p:?} is not a number from 1 to 65535"))
                })?),
            };
        if !path.starts_with('/') {
            return Err(invalid(&format!(
                "the remote path {path:?} is not absolute (home-relative paths are not supported)"
            )));
        }
        Ok(Location::Remote(RemoteSpec {
            user,
            host,
            port,
            path: PathBuf::from(path),
        }))
    }

    /// The path part (the local path, or the path on the remote host).
    pub fn path(&self) -> &Path {
        match self {
            Location::Local(p) => p,
            Location::Remote(r) => &r.path,
            Location::S3(u) => &u.prefix,
        }
    }

    /// The same place with another path.
    pub fn with_path(&self, path: impl Into<PathBuf>) -> Location {
        match self {
            Location::Local(_) => Location::Local(path.into()),
            Location::Remote(r) => Location::Remote(r.with_path(path)),
            Location::S3(u) => Location::S3(u.with_prefix(path)),
        }
    }

    /// Reached over the network (SSH or S3), not a folder of this machine.
    pub fn is_remote(&self) -> bool {
        self.local_path().is_none()
    }

    /// The folder of this machine, when the location is one.
    pub fn local_path(&self) -> Option<&Path> {
        match self {
            Location::Local(p) => Some(p),
            Location::Remote(_) | Location::S3(_) => None,
        }
    }

    /// What kind of place this is, for messages.
    pub fn kind(&self) -> LocationKind {
        match self {
            Location::Local(_) => LocationKind::Folder,
            Location::Remote(_) => LocationKind::SshHost,
            Location::S3(_) => LocationKind::ObjectStore,
        }
    }
}

/// The kind of a [`Location`], for messages (what a backend can do is in
/// `storage::Capabilities`, not here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocationKind {
    Folder,
    SshHost,
    ObjectStore,
}

impl fmt::Display for LocationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LocationKind::Folder => "a folder of this machine",
            LocationKind::SshHost => "a NAS reached over SSH",
            LocationKind::ObjectStore => "an S3 object store",
        })
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::Remote(r) => r.fmt(f),
            Location::S3(u) => u.fmt(f),
        }
    }
}

/// Splits `authority:path` where the authority may itself hold `:port` or `[v6]`: the path
/// starts at the first `:` followed by `/`, or else at the last `:`.
fn split_authority(text: &str) -> Option<(&str, &str)> {
    if let Some(i) = text.find(":/") {
        return Some((&text[..i], &text[i + 1..]));
    }
    let i = text.rfind(':')?;
    Some((&text[..i], &text[i + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(s: &str) -> RemoteSpec {
        match Location::parse(OsStr::new(s)).unwrap() {
            Location::Remote(r) => r,
            other => panic!("{s} parsed as {other:?}"),
        }
    }

    #[test]
    fn reads_user_host_port_and_path() {
        let r = remote("alice@nas.lab.org:2222:/export/lab/P1/raw/plate7");
        assert_eq!(r.user.as_deref(), Some("alice"));
        assert_eq!(r.host, "nas.lab.org");
        assert_eq!(r.port, Some(2222));
        assert_eq!(r.path, PathBuf::from("/export/lab/P1/raw/plate7"));
        assert_eq!(
            r.to_string(),
            "alice@nas.lab.org:2222:/export/lab/P1/raw/plate7"
        );

        let r = remote("nas:/data");
        assert_eq!((r.user, r.host.as_str(), r.port), (None, "nas", None));
        let r = remote("[::1]:22:/data");
        assert_eq!((r.host.as_str(), r.port), ("::1", Some(22)));
        assert_eq!(r.to_string(), "[::1]:22:/data");
    }

    #[test]
    fn colons_after_a_slash_stay_local() {
        for s in ["/nas/a:b", "./host:/x", "rel/dir:x", "plain"] {
            assert_eq!(
                Location::parse(OsStr::new(s)).unwrap(),
                Location::Local(PathBuf::from(s)),
                "{s}"
            );
        }
    }

    #[test]
    fn refuses_what_cannot_be_reached() {
        for (s, why) in [
            ("nas:relative/path", "not absolute"),
            ("nas:99999:/x", "port"),
            ("@nas:/x", "empty user"),
            (":/x", "empty host"),
        ] {
            let e = Location::parse(OsStr::new(s)).unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
    }
}
