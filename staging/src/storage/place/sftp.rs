//! Placing a tree on an SSH host: a verified upload into a hidden `.NAME.upload` folder next
//! to the final place (`remote::Remote::begin_upload`, resumed by a rerun), `MANIFEST.sha256`,
//! one rename into place (never over an existing folder), then `chmod -R a-w` when
//! protected. The immutable flag cannot be set over SFTP and is reported as not applied.

use std::path::{Path, PathBuf};

use super::{PlaceOptions, Placed, Placement};
use crate::copy::CopyReport;
use crate::error::{Error, Result};
use crate::hash::Digest;
use crate::manifest::Manifest;
use crate::progress::Progress;
use crate::remote::{Remote, RemoteErrorKind, Upload, UploadOptions};
use crate::worm::Protection;

struct SftpPlacement<'a> {
    remote: &'a Remote,
    upload: Upload<'a>,
    final_path: PathBuf,
    opts: PlaceOptions,
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
    let upload = remote
        .begin_upload(final_path)
        .map_err(|e| exists(remote, final_path, e))?;
    Ok(Box::new(SftpPlacement {
        remote,
        upload,
        final_path: final_path.to_path_buf(),
        opts: opts.clone(),
    }))
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
            manifest: self.upload.manifest(),
            elapsed: sent.elapsed,
            ..CopyReport::default()
        })
    }

    fn put_bytes(&mut self, rel: &Path, bytes: &[u8]) -> Result<Digest> {
        self.upload.put_bytes(rel, bytes)
    }

    fn finish(self: Box<Self>, _manifest: &Manifest) -> Result<Placed> {
        // The upload's own manifest: what it put, which is what `_manifest` lists.
        let (remote, final_path) = (self.remote, self.final_path.clone());
        self.upload
            .finish(self.opts.remote_verify)
            .map_err(|e| exists(remote, &final_path, e))?;
        if !self.opts.protect {
            return Ok(Placed::default());
        }
        remote.protect(&final_path)?;
        Ok(Placed {
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
