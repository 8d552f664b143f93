//! Writing a folder to a remote host: verified uploads into a hidden folder next to the
//! target, a `MANIFEST.sha256`, then one rename into place, so a half-written folder never
//! appears under its final name.
//!
//! Per file: the local file is read once and hashed while it is sent; the remote file is
//! flushed (`fsync@openssh.com` where the server offers it), read back over SFTP and
//! hashed; a mismatch fails the file. `--remote-verify` adds `sha256sum -c` run on the
//! remote host itself over the whole folder before the rename.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use sha2::{Digest as _, Sha256};
use ssh2::{FileStat, OpenFlags, OpenType, Sftp};

use super::pool::{Fault, Remote, RemoteErrorKind};
use crate::error::{Error, Result};
use crate::hash::{self, Digest};
use crate::manifest::{check_listed, Manifest, ManifestEntry};
use crate::progress::Progress;
use crate::walk::{self, Filter, Kind, Meta, MANIFEST_NAME};

/// How to upload.
#[derive(Debug, Clone, Default)]
pub struct UploadOptions {
    pub filter: Filter,
    /// Run `sha256sum -c` on the remote host over the finished folder.
    pub remote_verify: bool,
    /// Give remote files the local mtimes.
    pub preserve_mtime: bool,
    /// Check each file against the `MANIFEST.sha256` at the top of the local folder, when
    /// there is one (as a local copy does): a file that differs is corruption at the
    /// source, and the upload fails.
    pub use_source_manifest: bool,
}

/// What an upload did.
#[derive(Debug, Default, serde::Serialize)]
pub struct UploadReport {
    pub files: u64,
    pub bytes: u64,
    /// Files already complete in the hidden folder from an interrupted upload.
    pub resumed: u64,
    pub dirs: u64,
    pub symlinks: u64,
    #[serde(skip)]
    pub manifest: Manifest,
    pub remote_verified: bool,
    #[serde(skip)]
    pub elapsed: Duration,
}

/// An upload in progress: files go into `tmp`, which becomes `dest` at [`Upload::finish`].
pub struct Upload<'a> {
    remote: &'a Remote,
    tmp: PathBuf,
    dest: PathBuf,
    entries: Mutex<Vec<ManifestEntry>>,
    /// Symlinks and folders this upload made.
    links: Mutex<Vec<PathBuf>>,
    dirs: Mutex<Vec<PathBuf>>,
}

impl Remote {
    /// Starts writing the folder `dest` (absolute on the remote host): refuses when it
    /// exists, makes its parents, and opens (or resumes) the hidden folder next to it.
    pub fn begin_upload(&self, dest: &Path) -> Result<Upload<'_>> {
        if self.exists(dest)? {
            return Err(Error::Remote {
                path: self.display(dest),
                kind: RemoteErrorKind::AlreadyExists,
                message: String::new(),
            });
        }
        let parent = dest.parent().unwrap_or(Path::new("/"));
        let name = dest
            .file_name()
            .ok_or_else(|| Error::Invalid {
                what: "remote folder",
                value: self.display(dest).display().to_string(),
                reason: "has no folder name".to_string(),
            })?
            .to_string_lossy()
            .into_owned();
        self.mkdir_all(parent)?;
        let tmp = parent.join(format!(".{name}.upload"));
        self.mkdir_all(&tmp)?;
        Ok(Upload {
            remote: self,
            tmp,
            dest: dest.to_path_buf(),
            entries: Mutex::new(Vec::new()),
            links: Mutex::new(Vec::new()),
            dirs: Mutex::new(Vec::new()),
        })
    }

    /// True when something exists at `path` (not following a final link).
    pub fn exists(&self, path: &Path) -> Result<bool> {
        match self.run(path, |sftp| sftp.lstat(path).map_err(Fault::of)) {
            Ok(_) => Ok(true),
            Err(Error::Remote {
                kind: RemoteErrorKind::NotFound,
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// True when `path` is a folder (following links).
    pub fn is_dir(&self, path: &Path) -> Result<bool> {
        match self.run(path, |sftp| sftp.stat(path).map_err(Fault::of)) {
            Ok(st) => Ok(st.is_dir()),
            Err(Error::Remote {
                kind: RemoteErrorKind::NotFound,
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `mkdir -p` on the remote host.
    pub fn mkdir_all(&self, path: &Path) -> Result<()> {
        let mut missing = Vec::new();
        let mut at = path.to_path_buf();
        loop {
            match self.run(&at, |sftp| sftp.stat(&at).map_err(Fault::of)) {
                Ok(st) if st.is_dir() => break,
                Ok(_) => {
                    return Err(Error::Remote {
                        path: self.display(&at),
                        kind: RemoteErrorKind::AlreadyExists,
                        message: "not a folder".to_string(),
                    })
                }
                Err(Error::Remote {
                    kind: RemoteErrorKind::NotFound,
                    ..
                }) => {
                    missing.push(at.clone());
                    match at.parent() {
                        Some(p) => at = p.to_path_buf(),
                        None => break,
                    }
                }
                Err(e) => return Err(e),
            }
        }
        for dir in missing.iter().rev() {
            self.run(dir, |sftp| match sftp.mkdir(dir, 0o755) {
                Ok(()) => Ok(()),
                // Made meanwhile by a parallel worker.
                Err(_) if sftp.stat(dir).is_ok_and(|s| s.is_dir()) => Ok(()),
                Err(e) => Err(Fault::of(e)),
            })?;
        }
        Ok(())
    }

    /// Makes a remote folder and everything in it read-only (`chmod -R a-w`).
    pub fn protect(&self, dir: &Path) -> Result<u64> {
        let listing = self.run(dir, |sftp| sftp.readdir(dir).map_err(Fault::of))?;
        let mut count = 0;
        for (path, st) in listing {
            if st.is_dir() {
                count += self.protect(&path)?;
            } else if st.file_type() != ssh2::FileType::Symlink {
                self.chmod(&path, st.perm.unwrap_or(0o644) & !0o222)?;
                count += 1;
            }
        }
        let st = self.run(dir, |sftp| sftp.stat(dir).map_err(Fault::of))?;
        self.chmod(dir, st.perm.unwrap_or(0o755) & !0o222)?;
        Ok(count + 1)
    }

    pub(crate) fn chmod(&self, path: &Path, mode: u32) -> Result<()> {
        self.run(path, |sftp| {
            sftp.setstat(path, stat_with(Some(mode & 0o7777), None))
                .map_err(Fault::of)
        })
    }

    /// Runs `command` on the remote host through a shell; returns exit status and output.
    pub fn exec(&self, command: &str) -> Result<(i32, String)> {
        let (session, _sftp) = self.endpoint().connect(self.options())?;
        // The command prints nothing until it is done (`sha256sum --quiet` over a big
        // folder takes as long as reading it): no time limit on waiting for it.
        session.set_timeout(0);
        let lost = |e: ssh2::Error| Error::ConnectionLost {
            host: self.spec().authority(),
            path: self.display(self.root()),
            attempts: 1,
            reason: e.message().to_string(),
        };
        let mut channel = session.channel_session().map_err(lost)?;
        channel.exec(command).map_err(lost)?;
        let mut out = String::new();
        channel
            .read_to_string(&mut out)
            .map_err(|e| Error::io(self.display(self.root()), e))?;
        let mut err = String::new();
        let _ = channel.stderr().read_to_string(&mut err);
        channel.wait_close().map_err(lost)?;
        let status = channel.exit_status().map_err(lost)?;
        out.push_str(&err);
        Ok((status, out))
    }
}

/// The line the remote check prints once `sha256sum -c` has passed. libssh2 gives exit
/// status 0 when the server sent none (a command killed by a signal, some restricted
/// shells), so success is this line, not the status alone.
const VERIFIED: &str = "hpcstage: sha256sum -c passed";

/// What the exit status and output of the remote check mean: passed, or why not.
fn remote_verify_outcome(status: i32, output: &str) -> std::result::Result<(), String> {
    let passed = output.lines().any(|l| l == VERIFIED);
    match status {
        0 if passed => Ok(()),
        0 => Err(format!(
            "sha256sum -c on the remote host did not say it passed (no exit status came back: was it killed?): {}",
            output.trim()
        )),
        127 => Err("the remote host has no sha256sum (drop --remote-verify there)".to_string()),
        _ => Err(format!(
            "sha256sum -c on the remote host failed (exit {status}): {}",
            output.trim()
        )),
    }
}

impl Upload<'_> {
    /// The hidden folder files go to.
    pub fn tmp(&self) -> &Path {
        &self.tmp
    }

    /// Uploads the local folder `src` (its top-level manifest and state excluded, as in
    /// every copy) with `jobs` files in flight.
    pub fn put_tree(
        &self,
        src: &Path,
        opts: &UploadOptions,
        progress: &dyn Progress,
    ) -> Result<UploadReport> {
        let started = Instant::now();
        let source_manifest = if opts.use_source_manifest {
            Manifest::read_if_present(src)?
        } else {
            None
        };
        let expected = source_manifest
            .as_ref()
            .map(Manifest::to_map)
            .unwrap_or_default();
        let tree = walk::walk(src, &opts.filter)?;
        if let Some(e) = tree.errors.into_iter().next() {
            return Err(e);
        }
        let mut entries = tree.entries;
        walk::sort_by_bytes(&mut entries, |e| &e.rel);
        let mut report = UploadReport::default();
        for d in entries.iter().filter(|e| e.kind == Kind::Dir) {
            self.remote.mkdir_all(&self.tmp.join(&d.rel))?;
            self.dirs.lock().expect("dirs lock").push(d.rel.clone());
            report.dirs += 1;
        }
        let files: Vec<_> = entries.iter().filter(|e| e.kind == Kind::File).collect();
        progress.start(files.len() as u64, files.iter().map(|e| e.meta.size).sum());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.remote.options().sessions)
            .build()
            .map_err(|e| Error::io(src, std::io::Error::other(e.to_string())))?;
        let resumed = std::sync::atomic::AtomicU64::new(0);
        let results: Vec<Result<()>> = pool.install(|| {
            files
                .par_iter()
                .map(|e| {
                    let local = src.join(&e.rel);
                    let mtime = opts.preserve_mtime.then_some(e.meta.mtime_ns);
                    let (digest, was_there) =
                        self.put_file(&local, &e.rel, e.meta.mode, mtime, progress)?;
                    // In the hidden folder only: the upload fails, nothing is placed.
                    let listed = expected.get(e.rel.as_path()).copied();
                    check_listed(&local, listed, digest)?;
                    if was_there {
                        resumed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    self.entries
                        .lock()
                        .expect("entries lock")
                        .push(ManifestEntry {
                            path: e.rel.clone(),
                            digest,
                        });
                    progress.add_file();
                    Ok(())
                })
                .collect()
        });
        results.into_iter().collect::<Result<Vec<()>>>()?;
        for s in entries.iter().filter(|e| e.kind == Kind::Symlink) {
            let target =
                std::fs::read_link(src.join(&s.rel)).map_err(|e| Error::io(src.join(&s.rel), e))?;
            let link = self.tmp.join(&s.rel);
            self.remote.run(&link, |sftp| {
                let _ = sftp.unlink(&link);
                // OpenSSH's server takes the two paths of SSH_FXP_SYMLINK in the opposite
                // order to the draft, which libssh2 follows: target first.
                sftp.symlink(&target, &link).map_err(Fault::of)
            })?;
            report.symlinks += 1;
            self.links.lock().expect("links lock").push(s.rel.clone());
        }
        report.files = files.len() as u64;
        report.bytes = files.iter().map(|e| e.meta.size).sum();
        report.resumed = resumed.into_inner();
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Uploads bytes as `rel` in the folder (for README, run.json, dataset.json).
    pub fn put_bytes(&self, rel: &Path, bytes: &[u8]) -> Result<Digest> {
        let digest =
            self.write_verified(rel, bytes.len() as u64, 0o644, None, &mut |w| w(bytes))?;
        let mut entries = self.entries.lock().expect("entries lock");
        entries.retain(|e| e.path != rel);
        entries.push(ManifestEntry {
            path: rel.to_path_buf(),
            digest,
        });
        Ok(digest)
    }

    /// The manifest of what was put so far.
    pub fn manifest(&self) -> Manifest {
        Manifest::from_entries(self.entries.lock().expect("entries lock").clone())
    }

    /// Writes `MANIFEST.sha256`, checks the folder with the remote `sha256sum -c` when
    /// asked, and renames the folder into place (never over an existing one).
    pub fn finish(self, remote_verify: bool) -> Result<Manifest> {
        let manifest = self.manifest();
        self.prune_unlisted(&manifest)?;
        let text = manifest.to_bytes();
        self.write_verified(
            Path::new(MANIFEST_NAME),
            text.len() as u64,
            0o644,
            None,
            &mut |w| w(&text),
        )?;
        if remote_verify {
            let command = format!(
                "cd -- {} && sha256sum --check --quiet --strict {MANIFEST_NAME} && echo '{VERIFIED}'",
                crate::human::shell_quote(&self.tmp.to_string_lossy())
            );
            let (status, output) = self.remote.exec(&command)?;
            if let Err(reason) = remote_verify_outcome(status, &output) {
                return Err(Error::Remote {
                    path: self.remote.display(&self.tmp),
                    kind: RemoteErrorKind::Other,
                    message: reason,
                });
            }
        }
        let (tmp, dest) = (&self.tmp, &self.dest);
        self.remote.run(dest, |sftp| {
            // OpenSSH renames a folder only when nothing is at the target (it checks
            // first), which is the no-replace rename wanted here.
            if sftp.lstat(dest).is_ok() {
                return Err(Fault::Server(
                    RemoteErrorKind::AlreadyExists,
                    "already exists".to_string(),
                ));
            }
            sftp.rename(tmp, dest, Some(ssh2::RenameFlags::NATIVE))
                .map_err(Fault::of)
        })?;
        Ok(manifest)
    }

    /// Removes what an earlier, different upload left in the hidden folder (files the
    /// manifest does not list, links and folders this upload did not make, bookkeeping
    /// and temporaries included), so that nothing unlisted reaches the final folder.
    fn prune_unlisted(&self, manifest: &Manifest) -> Result<()> {
        let listed: std::collections::HashSet<&Path> =
            manifest.entries.iter().map(|e| e.path.as_path()).collect();
        let links = self.links.lock().expect("links lock");
        let dirs = self.dirs.lock().expect("dirs lock");
        let mut stale_dirs = Vec::new();
        let mut pending = vec![PathBuf::new()];
        while let Some(rel_dir) = pending.pop() {
            let dir = self.tmp.join(&rel_dir);
            let listing = self
                .remote
                .run(&dir, |sftp| sftp.readdir(&dir).map_err(Fault::of))?;
            for (path, st) in listing {
                let Some(name) = path.file_name() else {
                    continue;
                };
                let rel = rel_dir.join(name);
                let keep = match st.file_type() {
                    ssh2::FileType::Directory => {
                        pending.push(rel.clone());
                        dirs.contains(&rel)
                    }
                    ssh2::FileType::Symlink => links.contains(&rel),
                    ssh2::FileType::RegularFile => {
                        listed.contains(rel.as_path()) || rel == Path::new(MANIFEST_NAME)
                    }
                    _ => false,
                };
                if keep {
                    continue;
                }
                if st.is_dir() {
                    stale_dirs.push(rel);
                } else {
                    let path = self.tmp.join(&rel);
                    self.remote
                        .run(&path, |sftp| sftp.unlink(&path).map_err(Fault::of))?;
                }
            }
        }
        // Their contents are gone by now; deepest first.
        stale_dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for rel in stale_dirs {
            let path = self.tmp.join(&rel);
            self.remote
                .run(&path, |sftp| sftp.rmdir(&path).map_err(Fault::of))?;
        }
        Ok(())
    }

    /// Uploads one local file; returns its digest and whether an interrupted upload had
    /// already put it there complete.
    /// Opens a complete remote file to write and flushes it; whether that worked.
    fn flush_in_place(&self, path: &Path) -> bool {
        self.remote
            .run(path, |sftp| {
                let mut f = sftp.open_mode(path, OpenFlags::WRITE, 0, OpenType::File)?;
                flush_remote(&mut f)?;
                f.close().map_err(Fault::of)
            })
            .is_ok()
    }

    fn put_file(
        &self,
        local: &Path,
        rel: &Path,
        mode: u32,
        mtime_ns: Option<i64>,
        progress: &dyn Progress,
    ) -> Result<(Digest, bool)> {
        let before = Meta::from_std(&std::fs::metadata(local).map_err(|e| Error::io(local, e))?);
        let size = before.size;
        // Resume: a regular file of the right size is read back and compared before any
        // write (anything else there is replaced by write_verified).
        let remote_path = self.tmp.join(rel);
        let present = self
            .remote
            .run(&remote_path, |sftp| Ok(sftp.lstat(&remote_path).ok()))?;
        let resumable = present.as_ref().is_some_and(|st| {
            st.file_type() == ssh2::FileType::RegularFile && st.size == Some(size)
        });
        if resumable {
            let (want, _) = hash::hash_file(local)?;
            let (got, n) = self.read_back(rel, size)?;
            // Still writable: its upload may have been killed between the write and the
            // flush, so it is flushed now. (Its mode is set after the flush: one made
            // read-only was flushed, and cannot be opened to write.) A server that will not
            // open it to write gets it uploaded again below.
            let writable = present
                .as_ref()
                .and_then(|st| st.perm)
                .is_some_and(|perm| perm & 0o200 != 0);
            if got == want && n == size && (!writable || self.flush_in_place(&remote_path)) {
                self.set_meta(&remote_path, mode, mtime_ns)?;
                progress.add_bytes(size);
                return Ok((want, true));
            }
        }
        let digest = self.write_verified(rel, size, mode, mtime_ns, &mut |w| {
            let mut file = std::fs::File::open(local).map_err(|e| Error::io(local, e))?;
            hash::with_buffer(|buf| loop {
                let n = match file.read(buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => break Err(Error::io(local, e)),
                };
                w(&buf[..n])?;
                progress.add_bytes(n as u64);
            })?;
            // The same check as a local copy: a file rewritten while it was read is not
            // what any one moment held.
            let after = Meta::from_std(&file.metadata().map_err(|e| Error::io(local, e))?);
            if !before.unchanged(&after) {
                return Err(Error::SourceChanged {
                    path: local.to_path_buf(),
                });
            }
            Ok(())
        })?;
        Ok((digest, false))
    }

    /// Writes a remote file from `fill` (which calls its writer with successive blocks),
    /// hashing what is sent; flushes it, reads it back and compares. A lost connection
    /// starts the file again on a new one.
    fn write_verified(
        &self,
        rel: &Path,
        size: u64,
        mode: u32,
        mtime_ns: Option<i64>,
        fill: &mut dyn FnMut(&mut BlockWriter<'_>) -> Result<()>,
    ) -> Result<Digest> {
        let path = self.tmp.join(rel);
        let sent = self.remote.run(&path, |sftp: &Sftp| {
            // Always a fresh regular file: whatever is at the name (a partial file, or a
            // link an earlier attempt left, which a plain open would follow) goes first,
            // and the exclusive create never writes through a link.
            if let Ok(st) = sftp.lstat(&path) {
                if st.is_dir() {
                    return Err(Fault::Server(
                        RemoteErrorKind::AlreadyExists,
                        "a folder is where a file goes".to_string(),
                    ));
                }
                sftp.unlink(&path).map_err(Fault::of)?;
            }
            let mut f = sftp.open_mode(
                &path,
                OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCLUSIVE,
                0o600,
                OpenType::File,
            )?;
            let mut hasher = Sha256::new();
            let mut remote_error = None;
            let mut n = 0u64;
            let filled = fill(&mut |block: &[u8]| {
                hasher.update(block);
                n += block.len() as u64;
                f.write_all(block).map_err(|e| {
                    remote_error = Some(e);
                    Error::io(&path, std::io::Error::other("remote write failed"))
                })
            });
            if let Some(e) = remote_error {
                return Err(Fault::io(e));
            }
            filled.map_err(Fault::Local)?;
            // Not every server offers fsync@openssh.com (a read-back still follows); any
            // other failure there, or at close, is the server's answer (a full disk, a
            // quota) and final.
            flush_remote(&mut f)?;
            f.close().map_err(Fault::of)?;
            Ok((Digest::from_hasher(hasher), n))
        })?;
        let (digest, n) = sent;
        let (back, back_len) = self.read_back(rel, n)?;
        if back != digest || back_len != n || n != size {
            return Err(Error::ReadBackMismatch {
                path: self.remote.display(&path),
                wrote: digest.to_hex(),
                wrote_len: n,
                read: back.to_hex(),
                read_len: back_len,
            });
        }
        self.set_meta(&path, mode, mtime_ns)?;
        Ok(digest)
    }

    /// Mode, and mtime when given, of a file of the folder.
    fn set_meta(&self, path: &Path, mode: u32, mtime_ns: Option<i64>) -> Result<()> {
        let mtime = mtime_ns.map(|ns| u64::try_from(ns.div_euclid(1_000_000_000)).unwrap_or(0));
        self.remote.run(path, |sftp| {
            sftp.setstat(path, stat_with(Some(mode & 0o7777), mtime))
                .map_err(Fault::of)
        })
    }

    /// Hashes a remote file of the folder as the server returns it; `size` is what it
    /// should hold (to size the reads; more or fewer bytes still show).
    fn read_back(&self, rel: &Path, size: u64) -> Result<(Digest, u64)> {
        let mut hasher = Sha256::new();
        let (_, _, n) = hash::with_buffer(|buf| {
            self.remote
                .stream_file_at(&self.tmp.join(rel), None, Some(size), 0, buf, &mut |b| {
                    hasher.update(b);
                    Ok(())
                })
        })?;
        Ok((Digest::from_hasher(hasher), n))
    }
}

/// Flushes an open remote file to the NAS's storage (`fsync@openssh.com`). Not every
/// server offers it (a read-back still follows); any other failure is the server's answer
/// (a full disk, a quota) and final.
pub(crate) fn flush_remote(f: &mut ssh2::File) -> std::result::Result<(), Fault> {
    match f.fsync() {
        Err(e) if e.code() != ssh2::ErrorCode::SFTP(FX_OP_UNSUPPORTED) => Err(Fault::of(e)),
        _ => Ok(()),
    }
}

/// SSH_FX_OP_UNSUPPORTED: the server does not offer an extension.
const FX_OP_UNSUPPORTED: i32 = 8;

/// Takes the next block of a file being written.
type BlockWriter<'w> = dyn FnMut(&[u8]) -> Result<()> + 'w;

fn stat_with(perm: Option<u32>, mtime: Option<u64>) -> FileStat {
    FileStat {
        size: None,
        uid: None,
        gid: None,
        perm,
        atime: mtime,
        mtime,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remote_check_passes_only_when_it_says_so() {
        assert_eq!(remote_verify_outcome(0, &format!("{VERIFIED}\n")), Ok(()));
        // Status 0 without the line: no exit status came back (killed, odd shell).
        let silent = remote_verify_outcome(0, "").unwrap_err();
        assert!(silent.contains("did not say it passed"), "{silent}");
        let failed = remote_verify_outcome(
            1,
            "a.tif: FAILED\nsha256sum: WARNING: 1 computed checksum did NOT match\n",
        )
        .unwrap_err();
        assert!(
            failed.contains("(exit 1)") && failed.contains("a.tif: FAILED"),
            "{failed}"
        );
        let missing = remote_verify_outcome(127, "sh: sha256sum: not found").unwrap_err();
        assert!(missing.contains("no sha256sum"), "{missing}");
        // The line must be a whole line, not part of another message.
        assert!(remote_verify_outcome(0, &format!("not {VERIFIED}")).is_err());
    }
}
