//! The listing of a whole tree of an SSH host in one round trip: GNU `find -printf` run
//! on the host over an exec channel (issue 18). The SFTP walk pays a round trip per
//! folder and per batch of names; this pays one for the tree.
//!
//! Each entry comes as `TYPE SIZE MTIME ATIME MODE PATH\0`: the path last, ended by a
//! NUL, so a name with spaces, newlines or backslashes is read verbatim. Entries become
//! the same listing entries as the SFTP walk's (times in whole seconds, the file type in
//! the mode, no inodes), so a record written by either is judged the same way by the
//! other. The listing counts only when find ran to its end with status 0 (an unreadable
//! folder makes it fail); otherwise the caller lists over SFTP, which reports what it
//! could not read folder by folder.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::pool::{Fault, Remote};
use super::stream::{drain, exit_status, tar_said, EXIT_MARK};
use crate::human::shell_quote;
use crate::walk::{Entry, Filter, Kind, Meta};

/// The shell command run on the host: find over `root` (followed if it is a link), then
/// its status on stderr (libssh2 says 0 when no status came back).
fn command(root: &Path) -> String {
    format!(
        "LC_ALL=C find -H {} -mindepth 1 -printf '%y %s %T@ %A@ %m %P\\0' ; \
         echo \"{EXIT_MARK}$?\" >&2",
        shell_quote(&root.to_string_lossy())
    )
}

/// Seconds of a `find` time (`1700000000.1234567890`), as nanoseconds of whole seconds
/// like SFTP's.
fn seconds_ns(field: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(field).ok()?;
    let whole = text.split('.').next()?;
    whole.parse::<i64>().ok()?.checked_mul(1_000_000_000)
}

/// One record (`TYPE SIZE MTIME ATIME MODE PATH`) as a kind, metadata and path.
fn parse_record(record: &[u8]) -> Option<(Kind, Meta, PathBuf)> {
    let mut fields = record.splitn(6, |b| *b == b' ');
    let kind_field = fields.next()?;
    let size: u64 = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    let mtime_ns = seconds_ns(fields.next()?)?;
    let atime_ns = seconds_ns(fields.next()?)?;
    let perm = u32::from_str_radix(std::str::from_utf8(fields.next()?).ok()?, 8).ok()?;
    let path = fields.next().filter(|p| !p.is_empty())?;
    let (kind, type_bits) = match kind_field {
        b"f" => (Kind::File, 0o100_000),
        b"d" => (Kind::Dir, 0o040_000),
        b"l" => (Kind::Symlink, 0o120_000),
        b"p" => (Kind::Other, 0o010_000),
        b"c" => (Kind::Other, 0o020_000),
        b"b" => (Kind::Other, 0o060_000),
        b"s" => (Kind::Other, 0o140_000),
        _ => (Kind::Other, 0),
    };
    let meta = Meta {
        size,
        mode: type_bits | perm,
        mtime_ns,
        atime_ns,
        ctime_ns: mtime_ns,
        ino: 0,
        dev: 0,
        nlink: 1,
        blocks: size.div_ceil(512),
    };
    Some((kind, meta, PathBuf::from(OsStr::from_bytes(path))))
}

/// The records `find` prints, filtered as the SFTP walk filters: an entry left out takes
/// what is below it along (only the folders left out are kept, to know that).
struct Records<'a> {
    filter: &'a Filter,
    pruned: HashSet<PathBuf>,
}

impl Records<'_> {
    /// The entry of one record, `None` when the filter leaves it out; `Err` names a
    /// record that could not be read.
    fn entry(&mut self, record: &[u8]) -> Result<Option<Entry>, String> {
        let (kind, meta, rel) = parse_record(record).ok_or_else(|| {
            format!(
                "find printed an entry that could not be read: {:?}",
                String::from_utf8_lossy(&record[..record.len().min(200)])
            )
        })?;
        let name = rel.file_name().unwrap_or_default().to_owned();
        let below_pruned = rel.parent().is_some_and(|p| self.pruned.contains(p));
        if below_pruned || self.filter.leaves_out(&rel, &name) || !self.filter.keeps(kind, &rel) {
            if kind == Kind::Dir {
                self.pruned.insert(rel);
            }
            return Ok(None);
        }
        Ok(Some(Entry { rel, kind, meta }))
    }
}

/// The listing `find` printed, filtered as the SFTP walk filters. `Err` names a record
/// that could not be read.
#[cfg(test)]
fn parse_listing(out: &[u8], filter: &Filter) -> Result<crate::walk::Tree, String> {
    let mut tree = crate::walk::Tree::default();
    let mut records = Records {
        filter,
        pruned: HashSet::new(),
    };
    for record in out.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        tree.entries.extend(records.entry(record)?);
    }
    Ok(tree)
}

impl Remote {
    /// Lists the tree below `root` (a folder of the host) in one round trip, as
    /// [`Remote::walk_at`] would, each entry handed to `each` as it is read from the
    /// channel (never the whole listing in memory). The listing counts only if this
    /// returns `Ok`: after an `Err`, what `each` was given is to be dropped. `Err` says
    /// why it could not (no GNU find there, exec refused, a folder find could not read, a
    /// lost connection): the caller then walks over SFTP. The flag says whether find is
    /// unusable there (asking again would fail the same way) rather than stopped by this
    /// tree (an unreadable folder).
    pub(crate) fn find_each(
        &self,
        root: &Path,
        filter: &Filter,
        each: &mut dyn FnMut(Entry),
    ) -> Result<(), (String, bool)> {
        let mut refused = false;
        let mut records = Records {
            filter,
            pruned: HashSet::new(),
        };
        let mut garbled = None;
        let mut listed_any = false;
        let outcome = self.with_session(|session| {
            let mut channel = session.channel_session()?;
            channel.exec(&command(root)).map_err(|e| {
                refused = true;
                Fault::Connection(format!(
                    "the host refused to run a command ({})",
                    e.message()
                ))
            })?;
            channel.send_eof()?;
            let mut reader = BufReader::with_capacity(1 << 16, &mut channel);
            let mut record = Vec::with_capacity(256);
            loop {
                record.clear();
                if reader.read_until(0, &mut record).map_err(Fault::io)? == 0 {
                    break;
                }
                listed_any = true;
                if record.pop() != Some(0) || record.is_empty() || garbled.is_some() {
                    continue;
                }
                match records.entry(&record) {
                    Ok(Some(e)) => each(e),
                    Ok(None) => {}
                    Err(why) => garbled = Some(why),
                }
            }
            drop(reader);
            let stderr = drain(&mut channel)?;
            Ok(stderr)
        });
        let stderr = outcome.map_err(|fault| match fault {
            // A lost connection says nothing of find: the next tree tries it again.
            Fault::Server(_, m) | Fault::Connection(m) => (m, refused),
            Fault::Local(e) => (e.to_string(), refused),
        })?;
        match exit_status(&stderr) {
            Some(0) => garbled.map_or(Ok(()), |why| Err((why, true))),
            status => {
                // GNU find that listed part of the tree and then met what it could not
                // read: the SFTP walk says which folder, and the next tree may list.
                let stopped_by_tree = status == Some(1) && listed_any;
                let why = format!(
                    "`find -printf` on the host {}: {}",
                    status.map_or("did not finish".to_string(), |s| format!(
                        "exited with status {s}"
                    )),
                    tar_said(&stderr)
                );
                Err((why, !stopped_by_tree))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_read_verbatim_with_sftp_like_metadata() {
        let out = b"d 4096 1700000000.5 1700000001.0 755 sub\0\
f 12 1700000002.9999999990 1700000003.0000000000 644 sub/a b\nc\\d \0\
l 3 1700000004.0 1700000004.0 777 -rf\0\
f 0 1700000005.0 1700000005.0 4755 sub/--files-from=x\0";
        let tree = parse_listing(out, &Filter::default()).expect("parsed");
        let rels: Vec<&Path> = tree.entries.iter().map(|e| e.rel.as_path()).collect();
        assert_eq!(
            rels,
            [
                Path::new("sub"),
                Path::new("sub/a b\nc\\d "),
                Path::new("-rf"),
                Path::new("sub/--files-from=x")
            ]
        );
        let file = &tree.entries[1];
        assert_eq!(file.kind, Kind::File);
        assert_eq!(file.meta.size, 12);
        assert_eq!(file.meta.mode, 0o100_644);
        assert_eq!(file.meta.mtime_ns, 1_700_000_002_000_000_000);
        assert_eq!(file.meta.ctime_ns, file.meta.mtime_ns);
        assert_eq!(tree.entries[2].kind, Kind::Symlink);
        assert_eq!(tree.entries[3].meta.mode, 0o104_755);
    }

    #[test]
    fn what_the_filter_leaves_out_takes_its_folder_along() {
        let out = b"d 0 1.0 1.0 755 .hpcstage\0f 1 1.0 1.0 644 .hpcstage/journal\0\
f 1 1.0 1.0 644 .hpcstage-tmp.x\0f 1 1.0 1.0 644 kept\0";
        let tree = parse_listing(out, &Filter::default()).expect("parsed");
        let rels: Vec<&Path> = tree.entries.iter().map(|e| e.rel.as_path()).collect();
        assert_eq!(rels, [Path::new("kept")]);
    }

    #[test]
    fn a_garbled_record_is_an_error_not_a_listing() {
        assert!(parse_listing(b"f twelve 1.0 1.0 644 x\0", &Filter::default()).is_err());
        assert!(parse_listing(b"f 1 1.0\0", &Filter::default()).is_err());
    }

    #[test]
    fn the_command_quotes_the_root_and_ends_each_path_with_a_nul() {
        let cmd = command(Path::new("/nas/it's here"));
        assert!(
            cmd.starts_with(r#"LC_ALL=C find -H "/nas/it's here" -mindepth 1 -printf"#),
            "{cmd}"
        );
        assert!(cmd.contains(r"%P\0'"), "{cmd}");
        assert!(cmd.ends_with(r#"echo "hpcstage-tar-exit:$?" >&2"#), "{cmd}");
    }
}
