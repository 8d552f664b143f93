//! Placing a tree on an SSH host: a verified upload into a hidden `.NAME.upload` folder next
//! to the final place (`remote::Remote::begin_upload`, resumed by a rerun), held by the
//! name's lock file (`.NAME.ingest.lock`, created exclusively) when asked,
//! `MANIFEST.sha256`,
//! one rename into place (never over an existing folder), then `chmod -R a-w` when
//! protected. The immutable flag cannot be set over SFTP and is reported as not applied.

use std::io::Write;
use std::path::{Path, PathBuf};

use ssh2::{OpenFlags, OpenType};

use super::{Listed, PlaceOptions, Placed, Placement};
use crate::copy::CopyReport;
use crate::error::{Error, Result};
use crate::hash::Digest;
use crate::lock::{held_by_a_gone_process, holder};
use crate::manifest::ManifestEntry;
use crate::progress::Progress;
use crate::remote::{Fault, Remote, RemoteErrorKind, Upload, UploadOptions};
use crate::sorted::InOrder;
use crate::worm::Protection;

struct SftpPlacement<'a> {
    remote: &'a Remote,
    upload: Upload<'a>,
    final_path: PathBuf,
    opts: PlaceOptions,
    /// What `put_bytes` wrote (the upload lists it with what `put_tree` put).
    described: Vec<PathBuf>,
    /// Held until the placement is over, finished or not.
    _lock: Option<SftpLock<'a>>,
}

/// Starts placing a tree at `final_path` (absolute on the host).
pub(crate) fn place_sftp<'a>(
    remote: &'a Remote,
    final_path: &Path,
    opts: &PlaceOptions,
) -> Result<Box<dyn Placement + 'a>> {
    if opts.copy.dry_run {
        return Err(Error::Invalid {
            what: "option",
            value: "--dry-run".to_string(),
            reason: "not available for a remote NAS; list the source with `find` instead"
                .to_string(),
        });
    }
    // Refused before the lock too: who may not write next to it still hears that the
    // tree exists.
    if remote.exists(final_path)? {
        return Err(Error::DatasetExists {
            path: remote.display(final_path),
        });
    }
    let lock = opts
        .exclusive
        .then(|| SftpLock::acquire(remote, final_path, opts.hidden))
        .transpose()?;
    let upload = remote
        .begin_upload(final_path)
        .map_err(|e| exists(remote, final_path, e))?;
    Ok(Box::new(SftpPlacement {
        remote,
        upload,
        final_path: final_path.to_path_buf(),
        opts: opts.clone(),
        described: Vec::new(),
        _lock: lock,
    }))
}

/// The lock of one tree name on an SSH host: `.NAME.<hidden>.lock` next to the hidden
/// folder, created with SFTP's CREATE|EXCL (`O_EXCL` on the server, so two writers never
/// both create it) and holding `pid N on HOST`; removed when the placement ends. One left
/// by a process of this host that is gone (killed) is taken over; any other refuses the
/// placement with `Error::Locked`, naming the lock file and its holder.
struct SftpLock<'a> {
    remote: &'a Remote,
    path: PathBuf,
}

impl<'a> SftpLock<'a> {
    fn acquire(remote: &'a Remote, final_path: &Path, hidden: &str) -> Result<Self> {
        let parent = final_path.parent().unwrap_or(Path::new("/"));
        let name = final_path.file_name().unwrap_or_default().to_string_lossy();
        let path = parent.join(format!(".{name}.{hidden}.lock"));
        remote.mkdir_all(parent)?;
        let holder = holder();
        for _ in 0..3 {
            let created = remote.run(&path, |sftp| {
                let mut file = sftp
                    .open_mode(
                        &path,
                        OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCLUSIVE,
                        0o644,
                        OpenType::File,
                    )
                    .map_err(Fault::of)?;
                file.write_all(holder.as_bytes()).map_err(Fault::io)
            });
            let failed = match created {
                Ok(()) => return Ok(SftpLock { remote, path }),
                Err(e) => e,
            };
            // Servers answer an exclusive create of an existing file with a generic
            // failure (SFTP v3 has no "exists" status): what is there tells.
            let said = match remote.read_small_at(&path) {
                Ok(said) => String::from_utf8_lossy(&said).trim().to_string(),
                Err(_) if !remote.exists(&path)? => return Err(failed),
                Err(e) => return Err(e),
            };
            if !held_by_a_gone_process(&said) {
                // The lock file is named: if its holder is gone on another host, it is
                // what to remove.
                return Err(Error::Locked {
                    path: remote.display(&path),
                    holder: if said.is_empty() {
                        "which one, its lock file does not say".to_string()
                    } else {
                        said
                    },
                });
            }
            remote.run(&path, |sftp| sftp.unlink(&path).map_err(Fault::of))?;
        }
        Err(Error::Locked {
            path: remote.display(final_path),
            holder: "another process, which keeps taking it".to_string(),
        })
    }
}

impl Drop for SftpLock<'_> {
    fn drop(&mut self) {
        let path = &self.path;
        let _ = self
            .remote
            .run(path, |sftp| sftp.unlink(path).map_err(Fault::of));
    }
}

/// Refused at the start (or, if one appeared meanwhile, at the rename into place): what is
/// there is never replaced.
fn exists(remote: &Remote, final_path: &Path, e: Error) -> Error {
    let shown = remote.display(final_path);
    match e {
        Error::Remote {
            kind: RemoteErrorKind::AlreadyExists,
            ref path,
            ..
        } if *path == shown => Error::DatasetExists { path: shown },
        e => e,
    }
}

impl Placement for SftpPlacement<'_> {
    fn path(&self) -> PathBuf {
        self.remote.display(&self.final_path)
    }

    fn display(&self, rel: &Path) -> PathBuf {
        self.remote.display(&self.upload.tmp().join(rel))
    }

    fn put_tree(&mut self, src: &Path, progress: &dyn Progress) -> Result<CopyReport> {
        let opts = UploadOptions {
            filter: self.opts.copy.filter.clone(),
            remote_verify: self.opts.remote_verify,
            preserve_mtime: true,
            use_source_manifest: self.opts.copy.use_source_manifest,
        };
        let sent = self.upload.put_tree(src, &opts, progress)?;
        Ok(CopyReport {
            files_total: sent.files,
            bytes_total: sent.bytes,
            bytes_to_copy: sent.bytes,
            copied: sent.files - sent.resumed,
            bytes_copied: sent.bytes,
            skipped: sent.resumed,
            symlinks: sent.symlinks,
            dirs: sent.dirs,
            manifest_digest: Some(self.upload.manifest().digest()),
            elapsed: sent.elapsed,
            ..CopyReport::default()
        })
    }

    fn listed(&self) -> Result<InOrder> {
        let mut sent = self.upload.manifest();
        sent.entries.retain(|e| !self.described.contains(&e.path));
        Ok(InOrder::from_manifest(sent))
    }

    fn put_bytes(&mut self, rel: &Path, bytes: &[u8]) -> Result<Digest> {
        let digest = self.upload.put_bytes(rel, bytes)?;
        self.described.push(rel.to_path_buf());
        Ok(digest)
    }

    fn finish(self: Box<Self>, described: &[ManifestEntry]) -> Result<Placed> {
        // The upload writes its own manifest: what it put, which must be what the caller
        // lists (a file described but not put, or put with other bytes, stops it here).
        let manifest = super::manifest_with(self.listed()?, described)?;
        let (remote, final_path) = (self.remote, self.final_path.clone());
        let sent = self.upload.manifest();
        if sent.digest() != manifest.digest() {
            return Err(Error::Remote {
                path: remote.display(self.upload.tmp()),
                kind: RemoteErrorKind::Other,
                message: format!(
                    "the uploaded files ({}) do not match the manifest to write ({}); the hidden folder is kept and a rerun checks it again",
                    sent.len(),
                    manifest.len()
                ),
            });
        }
        let listed = Listed {
            files: manifest.len() as u64,
            digest: manifest.digest(),
        };
        self.upload
            .finish(self.opts.remote_verify)
            .map_err(|e| exists(remote, &final_path, e))?;
        if !self.opts.protect {
            return Ok(Placed::unprotected(listed));
        }
        remote.protect(&final_path)?;
        Ok(Placed {
            listed,
            protection: Some(Protection {
                read_only: true,
                immutable: self.opts.immutable.then(|| {
                    Err("the immutable flag cannot be set over SFTP; ask the NAS administrator (chattr +i)".to_string())
                }),
            }),
            retention: None,
            snapshot: None,
        })
    }
}
