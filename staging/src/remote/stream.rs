//! Many small files of an SSH host in one pipe: GNU tar run on the host over an exec
//! channel, the file list fed NUL-separated on its stdin, the archive parsed as it
//! arrives (issue 18). SFTP pays several round trips per file (open, read, stat, close);
//! a pipe pays one per batch, which is how `rsync -e ssh` moves small files.
//!
//! One command runs per connection for the whole run, not one per batch: a shell loop
//! that reads a line with the byte length of a batch's name list, hands exactly that
//! many bytes to tar (`head -c`), and after tar prints its status twice: a line on
//! stderr and a 512-byte trailer block on stdout. The host thus starts a login shell
//! (which may read the user's start-up files) once per connection, and a batch costs a
//! `head` and a `tar` there. GNU tar pads its archive to whole records of 10240 bytes
//! (`--blocking-factor=20`, given explicitly); the trailer follows the last record, so
//! each batch's output is read to its exact end and the next batch starts clean. A tar
//! that printed nothing (not found) leaves the trailer alone on stdout.
//!
//! Nothing is trusted unchecked. Each member must be the next file asked for (its name
//! byte for byte), a regular file, of the listed size and mtime; a member that is not is
//! left out (the caller reads that file over SFTP). A batch counts only when tar ran to
//! its end and said so with status 0 (the caller may use a member earlier where the
//! source manifest vouches for its bytes); a stream that ends without the trailer (the
//! connection or tar killed) or with an output that is not an archive and a trailer
//! counts as broken, and that connection is closed. A file that changed while tar read
//! it, or shrank (tar pads it with zeros), makes tar exit non-zero, and the caller then
//! reads the whole batch again over SFTP.
//! Names go NUL-separated and verbatim (`--null --verbatim-files-from --no-unquote`): a
//! name with a newline, a backslash or a leading `-` is a name, never an option.
//! This module never retries and never writes: SFTP, with its reconnects and resumed
//! reads, is the fallback.

use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

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

/// The bytes of a tar block, and of a record of `--blocking-factor=20`.
const BLOCK: usize = 512;
const RECORD: u64 = 20 * BLOCK as u64;

/// The shell loop run on the host once per connection (see the module docs): for each
/// batch, tar over `root` with the names `head` hands it, then its status on stderr and
/// as a trailer block on stdout. Without `head` it says so with status 127 at once.
fn command(tar: &str, root: &Path) -> String {
    let tar_run = format!(
        "{tar} --create --file=- --format=gnu --blocking-factor=20 --directory={} --null \
         --verbatim-files-from --no-unquote --no-recursion --hard-dereference --files-from=-",
        shell_quote(&root.to_string_lossy())
    );
    format!(
        "command -v head >/dev/null 2>&1 || {{ echo 'head: not found' >&2; s=127; \
         echo \"{EXIT_MARK}$s\" >&2; printf '%-511s\\n' \"{EXIT_MARK}$s\"; exit $s; }}; \
         while IFS= read -r n && [ \"$n\" -gt 0 ]; do \
         head -c \"$n\" | {tar_run}; s=$?; \
         echo \"{EXIT_MARK}$s\" >&2; printf '%-511s\\n' \"{EXIT_MARK}$s\"; done"
    )
}

/// The status a trailer block carries, or `None` when `block` is not a trailer (a tar
/// header has its magic at byte 257, where a trailer has spaces).
fn trailer_status(block: &[u8; BLOCK]) -> Option<i32> {
    if &block[257..262] == b"ustar" {
        return None;
    }
    let text = std::str::from_utf8(block).ok()?;
    text.strip_prefix(EXIT_MARK)?.trim_end().parse().ok()
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

/// A reader that counts the bytes read through it.
struct Counted<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// A member's bytes as the caller reads them, keeping the first error of the stream's
/// own read, so that a connection that broke in the middle of a member is told apart
/// from the caller's failure to store it.
struct Member<'a, R> {
    inner: &'a mut R,
    broke: Option<std::io::Error>,
}

impl<R: Read> Read for Member<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            if self.broke.is_none() && e.kind() != std::io::ErrorKind::Interrupted {
                self.broke = Some(std::io::Error::new(e.kind(), e.to_string()));
            }
        })
    }
}

/// Reads one batch's output (an archive, then the trailer; or the trailer alone) to its
/// exact end, passing each member that matches its listing to `each`; returns how many
/// were delivered and tar's status. An error of `each` is kept in `local`.
fn read_output(
    out: &mut impl Read,
    files: &[(&Path, &Meta)],
    each: &mut dyn FnMut(usize, &mut dyn Read) -> Result<()>,
    local: &mut Option<Error>,
) -> std::result::Result<(usize, i32), Fault> {
    let mut first = [0u8; BLOCK];
    out.read_exact(&mut first).map_err(Fault::io)?;
    if let Some(status) = trailer_status(&first) {
        return Ok((0, status));
    }
    let mut counted = Counted {
        inner: std::io::Cursor::new(first).chain(&mut *out),
        read: 0,
    };
    let delivered = read_members(&mut counted, files, each, local)?;
    // tar stops at the first zero block of the end; GNU tar wrote two and padded the
    // archive with zeros to a whole record.
    let end = (counted.read + BLOCK as u64).div_ceil(RECORD) * RECORD;
    let mut padding = Vec::new();
    let left = end - counted.read;
    (&mut counted)
        .take(left)
        .read_to_end(&mut padding)
        .map_err(Fault::io)?;
    if padding.iter().any(|b| *b != 0) || counted.read != end {
        return Err(Fault::Connection(
            "tar's archive did not end as GNU tar ends one".into(),
        ));
    }
    let mut trailer = [0u8; BLOCK];
    counted.read_exact(&mut trailer).map_err(Fault::io)?;
    let status = trailer_status(&trailer).ok_or_else(|| {
        Fault::Connection("the archive was not followed by tar's exit status".into())
    })?;
    Ok((delivered, status))
}

/// Reads the archive member by member, passing each one that matches its listing to
/// `each`; returns how many were delivered. An error of `each` is kept in `local`.
fn read_members(
    archive: impl Read,
    files: &[(&Path, &Meta)],
    each: &mut dyn FnMut(usize, &mut dyn Read) -> Result<()>,
    local: &mut Option<Error>,
) -> std::result::Result<usize, Fault> {
    let mut delivered = 0usize;
    let mut archive = tar::Archive::new(archive);
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
            let mut member = Member {
                inner: &mut entry,
                broke: None,
            };
            if let Err(e) = each(next, &mut member) {
                // The stream broke under the caller's read: the stream failed, not the copy.
                if let Some(broke) = member.broke {
                    return Err(Fault::io(broke));
                }
                *local = Some(e);
                return Err(Fault::Connection("stopped by the copy".into()));
            }
            delivered += 1;
        }
        next += 1;
    }
    Ok(delivered)
}

/// Reads the command's stderr up to the line with its exit mark (or the channel's end),
/// and returns it.
fn stderr_to_mark(mut stderr: impl Read) -> std::result::Result<String, Fault> {
    let mut said = Vec::new();
    let mut chunk = [0u8; 4096];
    while said.len() < 1 << 20 {
        let text = String::from_utf8_lossy(&said);
        if text.lines().any(|l| l.starts_with(EXIT_MARK)) && said.ends_with(b"\n") {
            break;
        }
        match stderr.read(&mut chunk).map_err(Fault::io)? {
            0 => break,
            n => said.extend_from_slice(&chunk[..n]),
        }
    }
    Ok(String::from_utf8_lossy(&said).into_owned())
}

/// A channel of `session` that runs `command` on the host; with the error, whether the
/// host refused to run it.
fn start(
    session: &ssh2::Session,
    command: &str,
) -> std::result::Result<ssh2::Channel, (Fault, bool)> {
    let mut channel = session
        .channel_session()
        .map_err(|e| (Fault::of(e), false))?;
    if let Err(e) = channel.exec(command) {
        return Err((
            Fault::Connection(format!(
                "the host refused to run a command ({})",
                e.message()
            )),
            true,
        ));
    }
    Ok(channel)
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
        let outcome = streamed.and_then(|(delivered, status, stderr)| match status {
            0 => Ok(delivered),
            status => {
                unusable = delivered == 0 && tar_unusable(status, &stderr);
                Err(Fault::Connection(format!(
                    "`{tar}` on the host exited with status {status}: {}",
                    tar_said(&stderr)
                )))
            }
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

    /// Opens the connections a run streams over, and starts the tar loop on each, while
    /// the caller plans (see [`Remote::warm_up`]).
    pub(crate) fn prepare_tar_stream(this: &Arc<Remote>, tar: &str, root: &Path) {
        this.warm_up(&command(tar, root), |session, command| {
            start(session, command).ok()
        });
    }

    /// One batch through the tar loop kept on a pooled connection: the length of the
    /// name list and the list, then the batch's output and what tar said. A broken
    /// stream is an `Err` (and closes that connection); tar's status comes back as it is.
    fn tar_channel(
        &self,
        command: &str,
        files: &[(&Path, &Meta)],
        each: &mut dyn FnMut(usize, &mut dyn Read) -> Result<()>,
        local: &mut Option<Error>,
        unusable: &mut bool,
    ) -> std::result::Result<(usize, i32, String), Fault> {
        let open = |session: &ssh2::Session| {
            start(session, command).map_err(|(fault, refused)| {
                *unusable = refused;
                fault
            })
        };
        self.with_kept_channel(command, open, |channel| {
            let list = name_list(files);
            // The list of a batch is small (see `copy/stream.rs`) and fits the channel's
            // window: writing it never waits for the archive to be read. Never `flush`
            // the channel: libssh2's flush (`libssh2_channel_flush_ex`) throws away what
            // was received and not yet read, and tar's first members may be in by then
            // (the stream then lost bytes and broke off). A channel write is sent as it
            // is made.
            channel
                .write_all(format!("{}\n", list.len()).as_bytes())
                .and_then(|()| channel.write_all(&list))
                .map_err(Fault::io)?;
            // Buffered: tar reads a 512-byte header per member, and each read of a
            // libssh2 channel itself takes the session's lock. Nothing follows a batch's
            // trailer until the next list is sent, so the buffer ends empty.
            let mut out = std::io::BufReader::with_capacity(256 << 10, &mut *channel);
            let (delivered, status) = read_output(&mut out, files, each, local)?;
            if !out.buffer().is_empty() {
                return Err(Fault::Connection(
                    "the host sent more than tar's archive and its status".into(),
                ));
            }
            drop(out);
            let stderr = stderr_to_mark(channel.stderr())?;
            Ok((delivered, status, stderr))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_quotes_the_root_and_reads_names_verbatim() {
        let cmd = command("tar", Path::new("/nas/it's here"));
        assert!(
            cmd.contains(r#"head -c "$n" | tar --create --file=- "#),
            "{cmd}"
        );
        assert!(cmd.contains(r#"--directory="/nas/it's here" "#), "{cmd}");
        assert!(
            cmd.contains("--null --verbatim-files-from --no-unquote"),
            "{cmd}"
        );
        assert!(
            cmd.ends_with(
                r#"echo "hpcstage-tar-exit:$s" >&2; printf '%-511s\n' "hpcstage-tar-exit:$s"; done"#
            ),
            "{cmd}"
        );
    }

    /// What the loop prints for one batch: `members` as GNU tar archives them (padded
    /// to a whole record), then the trailer with `status`.
    fn batch_output(members: &[(&str, &[u8])], status: i32) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, bytes) in members {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mtime(7);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            builder
                .append_data(&mut header, name, *bytes)
                .expect("append");
        }
        let mut out = builder.into_inner().expect("finish");
        out.resize(out.len().div_ceil(RECORD as usize) * RECORD as usize, 0);
        let trailer = format!("{EXIT_MARK}{status}");
        out.extend_from_slice(format!("{trailer:<511}\n").as_bytes());
        out
    }

    /// `read_output` of `names` (each listed with `size` bytes and mtime 7): what each
    /// delivered file held, or the fault.
    fn read_one(
        out: &mut impl Read,
        names: &[&str],
        size: u64,
    ) -> std::result::Result<(Vec<Vec<u8>>, i32), String> {
        let meta = Meta {
            size,
            mtime_ns: 7_000_000_000,
            ..Meta::default()
        };
        let paths: Vec<&Path> = names.iter().map(Path::new).collect();
        let files: Vec<(&Path, &Meta)> = paths.iter().map(|p| (*p, &meta)).collect();
        let mut got = Vec::new();
        let mut local = None;
        let (delivered, status) = read_output(
            out,
            &files,
            &mut |_, r| {
                let mut bytes = Vec::new();
                r.read_to_end(&mut bytes).map_err(|e| Error::io("x", e))?;
                got.push(bytes);
                Ok(())
            },
            &mut local,
        )
        .map_err(|f| format!("{f:?}"))?;
        assert_eq!(delivered, got.len());
        Ok((got, status))
    }

    #[test]
    fn batches_are_read_one_after_another_to_their_exact_end() {
        let mut stream = batch_output(&[("a", b"aaa"), ("b", b"bbb")], 0);
        stream.extend(batch_output(&[("c", b"ccc")], 1));
        // A tar that printed nothing (not found): the trailer alone.
        stream.extend(format!("{:<511}\n", format!("{EXIT_MARK}127")).as_bytes());
        let mut reader = stream.as_slice();
        let (got, status) = read_one(&mut reader, &["a", "b"], 3).expect("first batch");
        assert_eq!((got, status), (vec![b"aaa".to_vec(), b"bbb".to_vec()], 0));
        let (got, status) = read_one(&mut reader, &["c"], 3).expect("second batch");
        assert_eq!((got, status), (vec![b"ccc".to_vec()], 1));
        assert_eq!(read_one(&mut reader, &["d"], 3), Ok((vec![], 127)));
        assert!(reader.is_empty(), "{} bytes left", reader.len());
    }

    #[test]
    fn an_archive_cut_short_or_without_its_trailer_is_a_broken_stream() {
        let whole = batch_output(&[("a", b"aaa")], 0);
        for cut in [100, whole.len() - 600, whole.len() - 1] {
            let mut reader = &whole[..cut];
            assert!(read_one(&mut reader, &["a"], 3).is_err(), "cut at {cut}");
        }
        // A member named like the trailer is still a member.
        let name = format!("{EXIT_MARK}0");
        let odd = batch_output(&[(name.as_str(), b"xyz")], 0);
        let (got, status) = read_one(&mut odd.as_slice(), &[name.as_str()], 3).expect("read");
        assert_eq!((got, status), (vec![b"xyz".to_vec()], 0));
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
