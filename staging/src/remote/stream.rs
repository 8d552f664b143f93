//! Many small files of an SSH host in one pipe: GNU tar run on the host over an exec
//! channel, the file list fed NUL-separated on its stdin, the archive parsed as it
//! arrives (issue 18). SFTP pays several round trips per file (open, read, stat, close);
//! a pipe pays one per batch, which is how `rsync -e ssh` moves small files.
//!
//! Nothing is trusted unchecked. Each member must be the next file asked for (its name
//! byte for byte), a regular file, of the listed size and mtime; a member that is not is
//! left out (the caller reads that file over SFTP). A batch counts only when tar ran to
//! its end and said so (the caller may use a member earlier where the source manifest
//! vouches for its bytes): the shell prints `hpcstage-tar-exit:STATUS` on stderr after tar
//! (libssh2 reports status 0 when no status came back, as when the connection or tar is
//! killed). A file that changed while tar read it, or shrank (tar pads it with zeros),
//! makes tar exit non-zero, and the caller then reads the whole batch again over SFTP.
//! Names go NUL-separated and verbatim (`--null --verbatim-files-from --no-unquote`): a
//! name with a newline, a backslash or a leading `-` is a name, never an option.
//! This module never retries and never writes: SFTP, with its reconnects and resumed
//! reads, is the fallback.

use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::pool::{Fault, Remote};
use crate::error::{Error, Result};
use crate::human::shell_quote;
use crate::walk::Meta;

/// The line the shell prints on stderr once tar has ended, with its exit status.
pub(super) const EXIT_MARK: &str = "hpcstage-tar-exit:";

/// Why a stream did not deliver a batch that can be trusted.
#[derive(Debug)]
pub(crate) struct StreamFailure {
    pub(crate) reason: String,
    /// The host cannot stream at all (no tar there, one without the GNU options, exec
    /// refused): asking again in this run would fail the same way.
    pub(crate) unusable: bool,
    /// An error of the caller's `each`, as it came.
    pub(crate) local: Option<Error>,
}

/// The shell command run on the host: tar over `root`, names from stdin, then its status.
fn command(tar: &str, root: &Path) -> String {
    format!(
        "{tar} --create --file=- --format=gnu --directory={} --null --verbatim-files-from \
         --no-unquote --no-recursion --hard-dereference --files-from=- ; \
         echo \"{EXIT_MARK}$?\" >&2",
        shell_quote(&root.to_string_lossy())
    )
}

/// The exit status the shell printed after tar, if it did.
pub(super) fn exit_status(stderr: &str) -> Option<i32> {
    stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(EXIT_MARK))
        .and_then(|s| s.trim().parse().ok())
}

/// What the command (tar, find) said besides its status, on one line, for a message.
pub(super) fn tar_said(stderr: &str) -> String {
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with(EXIT_MARK) && !l.trim().is_empty())
        .take(3)
        .collect();
    if said.is_empty() {
        "nothing on stderr".into()
    } else {
        said.join("; ")
    }
}

/// A tar that cannot run at all: not found, not executable, or without the GNU options
/// this stream needs (busybox and bsdtar say "unrecognized option" or "not supported").
fn tar_unusable(status: i32, stderr: &str) -> bool {
    let said = stderr.to_ascii_lowercase();
    status == 126
        || status == 127
        || said.contains("option")
        || said.contains("usage")
        || said.contains("not found")
}

/// `true` when a member's header describes the listed regular file.
fn matches_listed(header: &tar::Header, listed: &Meta) -> bool {
    let secs = i64::try_from(header.mtime().unwrap_or(u64::MAX)).unwrap_or(i64::MAX);
    header.entry_type().is_file()
        && header.size().ok() == Some(listed.size)
        && secs.checked_mul(1_000_000_000) == Some(listed.mtime_ns)
}

/// The names NUL-separated, as tar reads them on its stdin.
fn name_list(files: &[(&Path, &Meta)]) -> Vec<u8> {
    let mut list = Vec::new();
    for (rel, _) in files {
        list.extend_from_slice(rel.as_os_str().as_bytes());
        list.push(0);
    }
    list
}

/// Reads the archive member by member, passing each one that matches its listing to
/// `each`, then the rest of stdout; returns how many were delivered. An error of `each`
/// is kept in `local`.
fn read_members(
    archive: impl Read,
    files: &[(&Path, &Meta)],
    each: &mut dyn FnMut(usize, &mut dyn Read) -> Result<()>,
    local: &mut Option<Error>,
) -> std::result::Result<usize, Fault> {
    let mut delivered = 0usize;
    // Buffered: tar reads a 512-byte header per member, and each read of a libssh2
    // channel itself takes the session's lock.
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(256 << 10, archive));
    let mut next = 0usize;
    for entry in archive.entries().map_err(Fault::io)? {
        let mut entry = entry.map_err(Fault::io)?;
        let name = entry.path_bytes().into_owned();
        let Some(skip) = files[next..]
            .iter()
            .position(|(rel, _)| rel.as_os_str().as_bytes() == name.as_slice())
        else {
            return Err(Fault::Connection(format!(
                "tar sent {:?}, which was not asked for at that point",
                String::from_utf8_lossy(&name)
            )));
        };
        // Files skipped over were not sent (tar could not read them): the caller reads
        // them itself, as it does a member that does not match its listing.
        next += skip;
        if matches_listed(entry.header(), files[next].1) {
            if let Err(e) = each(next, &mut entry) {
                *local = Some(e);
                return Err(Fault::Connection("stopped by the copy".into()));
            }
            delivered += 1;
        }
        next += 1;
    }
    // What follows the archive (tar's padding to its record size).
    std::io::copy(&mut archive.into_inner(), &mut std::io::sink()).map_err(Fault::io)?;
    Ok(delivered)
}

/// Reads the command's stderr up to the channel's close and returns it.
pub(super) fn drain(channel: &mut ssh2::Channel) -> std::result::Result<String, Fault> {
    let mut stderr = String::new();
    channel
        .stderr()
        .take(1 << 20)
        .read_to_string(&mut stderr)
        .map_err(Fault::io)?;
    channel.wait_close()?;
    Ok(stderr)
}

/// What a stream's command ended with: its stderr (with the shell's exit mark) once the
/// archive was read.
type Streamed = std::result::Result<(usize, String), Fault>;

impl Remote {
    /// Streams `files` (paths relative to `root`, with their listed metadata) from the
    /// host through `tar` (the command that runs GNU tar there), calling `each` with the
    /// index in `files` and the bytes of every file delivered, in order (see the module
    /// docs for what is checked). `Ok` (with how many files were delivered) only when
    /// the whole batch can be trusted.
    pub(crate) fn tar_stream(
        &self,
        tar: &str,
        root: &Path,
        files: &[(&Path, &Meta)],
        each: &mut dyn FnMut(usize, &mut dyn Read) -> Result<()>,
    ) -> std::result::Result<usize, StreamFailure> {
        let mut local: Option<Error> = None;
        let mut unusable = false;
        let command = command(tar, root);
        let streamed = self.tar_channel(&command, files, each, &mut local, &mut unusable);
        let outcome = streamed.and_then(|(delivered, stderr)| match exit_status(&stderr) {
            Some(0) => Ok(delivered),
            Some(status) => {
                unusable = delivered == 0 && tar_unusable(status, &stderr);
                Err(Fault::Connection(format!(
                    "`{tar}` on the host exited with status {status}: {}",
                    tar_said(&stderr)
                )))
            }
            None => Err(Fault::Connection(format!(
                "the stream ended before tar's exit status came back (killed?): {}",
                tar_said(&stderr)
            ))),
        });
        outcome.map_err(|fault| StreamFailure {
            reason: match fault {
                Fault::Server(_, m) | Fault::Connection(m) => m,
                Fault::Local(e) => e.to_string(),
            },
            unusable,
            local,
        })
    }

    /// The stream over an exec channel of a pooled connection.
    fn tar_channel(
        &self,
        command: &str,
        files: &[(&Path, &Meta)],
        each: &mut dyn FnMut(usize, &mut dyn Read) -> Result<()>,
        local: &mut Option<Error>,
        unusable: &mut bool,
    ) -> Streamed {
        self.with_session(|session| {
            let mut channel = session.channel_session()?;
            if let Err(e) = channel.exec(command) {
                *unusable = true;
                return Err(Fault::Connection(format!(
                    "the host refused to run a command ({})",
                    e.message()
                )));
            }
            // The list of a batch is small (see `copy/stream.rs`) and fits the channel's
            // window: writing it never waits for the archive to be read.
            channel.write_all(&name_list(files)).map_err(Fault::io)?;
            channel.send_eof()?;
            let delivered = read_members(&mut channel, files, each, local)?;
            let stderr = drain(&mut channel)?;
            Ok((delivered, stderr))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_quotes_the_root_and_reads_names_verbatim() {
        let cmd = command("tar", Path::new("/nas/it's here"));
        assert!(cmd.starts_with("tar --create --file=- "), "{cmd}");
        assert!(cmd.contains(r#"--directory="/nas/it's here" "#), "{cmd}");
        assert!(
            cmd.contains("--null --verbatim-files-from --no-unquote"),
            "{cmd}"
        );
        assert!(cmd.ends_with(r#"echo "hpcstage-tar-exit:$?" >&2"#), "{cmd}");
    }

    #[test]
    fn the_exit_status_is_the_last_mark_and_none_without_one() {
        assert_eq!(
            exit_status("tar: x: Cannot stat\nhpcstage-tar-exit:2\n"),
            Some(2)
        );
        assert_eq!(exit_status("hpcstage-tar-exit:0"), Some(0));
        assert_eq!(exit_status("tar: something\n"), None);
        assert_eq!(exit_status(""), None);
    }

    #[test]
    fn a_missing_or_foreign_tar_is_unusable_a_vanished_file_is_not() {
        assert!(tar_unusable(127, "sh: 1: /no/tar: not found\n"));
        assert!(tar_unusable(
            1,
            "tar: unrecognized option '--verbatim-files-from'\n"
        ));
        assert!(!tar_unusable(
            2,
            "tar: gone.txt: Cannot stat: No such file or directory\n"
        ));
    }
}
