//! `hpcstage archive DATASET|RUN --to DIR`, and `archive verify|restore|list`: cold-archive
//! packages of NAS datasets and pulled results.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hpcstage_lifecycle::run::RunStore;
use hpcstage_staging::archive::{self, read, ArchiveSettings, Destination};
use hpcstage_staging::human::{bytes, count};
use hpcstage_staging::ledger::Ledger;
use hpcstage_staging::storage;
use hpcstage_staging::walk::MANIFEST_NAME;

use super::ExitStatus;
use crate::args::{ArchiveArgs, ArchiveCommand};
use crate::config::{absolute, parse_location, Settings};
use crate::output;

pub(crate) fn run(settings: &Settings, args: &ArchiveArgs) -> Result<ExitStatus> {
    let ledger = Ledger::open(&settings.state_dir)?;
    match &args.command {
        Some(ArchiveCommand::Verify { archive, json }) => verify(&ledger, archive, *json),
        Some(ArchiveCommand::Restore {
            archive,
            file,
            to,
            json,
        }) => restore(&ledger, archive, file, to, *json),
        Some(ArchiveCommand::List { archive, json }) => list(&ledger, archive, *json),
        None => create(settings, &ledger, args),
    }
}

/// What is archived: (folder, project, name, kind).
pub(crate) fn resolve(
    settings: &Settings,
    what: &str,
) -> Result<(PathBuf, String, String, &'static str)> {
    let as_path = Path::new(what);
    let looks_like_path = what.contains('/') || as_path.is_dir();
    if looks_like_path {
        let folder = if as_path.is_absolute() || what.starts_with("./") || what.starts_with("../") {
            absolute(as_path)?
        } else {
            let root = match settings
                .nas_root
                .as_deref()
                .map(parse_location)
                .transpose()?
            {
                Some(root) => match storage::local_folder(&root) {
                    Ok(dir) => dir.to_path_buf(),
                    Err(kind) => bail!(
                        "archive reads the dataset from a mounted NAS; nas_root {root} is {kind}: \
                             run it where the NAS is mounted, or give the dataset's local path"
                    ),
                },
                None if as_path.is_dir() => PathBuf::new(),
                None => bail!(
                    "no nas_root configured to find {what} under: set nas_root in the config, pass \
                     --nas-root DIR, or give the dataset's full path"
                ),
            };
            absolute(&root.join(as_path))?
        };
        if !folder.is_dir() {
            bail!(
                "dataset {} does not exist (expected PRJ/raw/NAME under nas_root, a dataset folder, or a run id)",
                folder.display()
            );
        }
        let name = folder
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .with_context(|| format!("{} has no name to archive it under", folder.display()))?;
        let parent = folder.parent().unwrap_or(Path::new("/"));
        let project = if parent.file_name().is_some_and(|n| n == "raw") {
            parent
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            String::new()
        };
        return Ok((folder, project, name, "dataset"));
    }
    let store = RunStore::open(&settings.state_dir)?;
    let id = store.resolve(what).with_context(|| {
        format!("{what} is neither PRJ/raw/NAME, a dataset folder, nor a run id the ledger knows")
    })?;
    let view = store.load(&id)?;
    let results = view.record.results_dir.clone();
    if !results.join(MANIFEST_NAME).is_file() {
        bail!(
            "run {id} has no pulled results in {} (no {MANIFEST_NAME}); pull it first: hpcstage pull {id}",
            results.display()
        );
    }
    Ok((results, view.record.project.clone(), id, "run"))
}

fn create(settings: &Settings, ledger: &Ledger, args: &ArchiveArgs) -> Result<ExitStatus> {
    let what = args.what.as_deref().expect("clap requires it");
    let to = args.to.as_deref().expect("clap requires it");
    let (source, project, name, kind) = resolve(settings, what)?;
    archive::check_source(&source)?;
    let dest = Destination::parse(to.as_os_str(), &settings.s3, args.retain, args.immutable)?;
    let s = ArchiveSettings {
        source,
        project,
        name,
        kind: kind.to_string(),
        chunk_size: args.chunk_size,
        immutable: args.immutable,
        media: args
            .media
            .clone()
            .unwrap_or_else(|| dest.media().to_string()),
        offsite: args.offsite || (dest.is_object_store() && settings.s3_offsite),
        dest,
    };
    let bar = output::Bar::new("archiving", args.json);
    let outcome = archive::create(&s, ledger, &bar);
    bar.finish();
    let outcome = outcome?;
    let r = &outcome.record;
    if args.json {
        output::json(&serde_json::json!({
            "record": r,
            "already": outcome.already,
            "resumed": outcome.resumed,
            "written": outcome.written,
            "nas_record": outcome.nas_record.as_ref().map(|p| p.display().to_string()).map_err(Clone::clone),
        }));
        return Ok(ExitStatus::Success);
    }
    if outcome.already {
        output::data(format!(
            "{} was archived already: {} ({}); nothing written",
            r.source.display(),
            r.location,
            count(r.chunks.len() as u64, "chunk")
        ));
    } else {
        output::data(format!(
            "archived {} → {} ({}, {}, {}{})",
            r.source.display(),
            r.location,
            count(r.files, "file"),
            bytes(r.bytes),
            count(r.chunks.len() as u64, "chunk"),
            if outcome.resumed > 0 {
                format!("; {} kept from an earlier run", outcome.resumed)
            } else {
                String::new()
            }
        ));
        output::data(format!("archive id: {}", r.id));
        output::data(match (&r.retention, r.read_only) {
            (Some(retention), _) => format!("write protection: {retention}"),
            (None, true) => "write protection: read-only (chmod -R a-w)".to_string(),
            (None, false) => "write protection: none: the objects can be replaced or deleted (--retain 10y gives Object Lock retention)".to_string(),
        });
        if let Some(zfs) = &r.zfs_snapshot {
            if zfs.starts_with("ZFS snapshot ") {
                output::data(zfs);
            } else {
                output::note(zfs);
            }
        }
        if let Some(imm) = &r.immutable {
            output::data(match imm {
                Ok(()) => "immutable flag: applied (chattr +i)".to_string(),
                Err(why) => format!("immutable flag: not applied: {why}"),
            });
        }
    }
    match &outcome.nas_record {
        Ok(p) => output::note(format!("recorded in the ledger and in {}", p.display())),
        Err(why) => output::warn(format!(
            "recorded in the ledger, but not beside the dataset on the NAS: {why}"
        )),
    }
    Ok(ExitStatus::Success)
}

fn verify(ledger: &Ledger, id: &str, json: bool) -> Result<ExitStatus> {
    let (store, record) = archive::open(id, ledger)?;
    let bar = output::Bar::new("verifying", json);
    let v = read::verify(&*store, record.as_ref().map(|r| r.index_sha256), &bar);
    bar.finish();
    let v = v?;
    if v.ok() {
        if let Some(r) = &record {
            archive::mark_verified(ledger, r)?;
        }
    }
    if json {
        output::json(&serde_json::json!({ "ok": v.ok(), "verify": v }));
    } else {
        for m in &v.bad_members {
            output::data(format!(
                "{}: FAILED (in {}: hashes to {}, the index says {})",
                m.path,
                m.chunk.as_deref().unwrap_or("its parts"),
                m.computed,
                m.expected
            ));
        }
        for o in &v.bad_objects {
            output::data(format!("{}: FAILED ({})", o.name, o.reason));
        }
        if v.ok() {
            output::data(format!(
                "archive {} at {}: OK ({}, {} read back, {} checked)",
                v.archive,
                v.location,
                count(v.chunks as u64, "chunk"),
                bytes(v.bytes_read),
                count(v.members as u64, "member")
            ));
        } else {
            output::error(format!(
                "archive {} at {}: {} and {} differ from the index",
                v.archive,
                v.location,
                count(v.bad_members.len() as u64, "member"),
                count(v.bad_objects.len() as u64, "object")
            ));
        }
    }
    Ok(if v.ok() {
        ExitStatus::Success
    } else {
        ExitStatus::Integrity
    })
}

fn restore(ledger: &Ledger, id: &str, file: &Path, to: &Path, json: bool) -> Result<ExitStatus> {
    let (store, _) = archive::open(id, ledger)?;
    let r = read::restore(&*store, file, &absolute(to)?)?;
    if json {
        output::json(&r);
    } else {
        output::data(format!(
            "restored {} ({}, sha256 {}) from {}; read {} bytes of the archive",
            r.path.display(),
            bytes(r.size),
            r.sha256.map_or("-".to_string(), |d| d.to_hex()),
            r.chunks.join(", "),
            r.bytes_read
        ));
    }
    Ok(ExitStatus::Success)
}

fn list(ledger: &Ledger, id: &str, json: bool) -> Result<ExitStatus> {
    let (store, _) = archive::open(id, ledger)?;
    let index = archive::read_index(&*store)?;
    if json {
        output::json(&serde_json::json!({
            "archive": index.archive,
            "dataset": index.dataset,
            "chunks": index.chunks,
            "members": index.rows,
        }));
        return Ok(ExitStatus::Success);
    }
    let mut table = output::table(&["KIND", "SIZE", "CHUNK", "PATH"]);
    for r in &index.rows {
        let mut path = hpcstage_staging::manifest::display_name(&r.path);
        if let Some(t) = &r.target {
            path.push_str(" -> ");
            path.push_str(&hpcstage_staging::manifest::display_name(t));
        }
        table.add_row(vec![
            r.kind.clone(),
            bytes(r.size),
            r.chunk.clone().unwrap_or_else(|| "-".into()),
            path,
        ]);
    }
    output::data(table.to_string());
    Ok(ExitStatus::Success)
}
