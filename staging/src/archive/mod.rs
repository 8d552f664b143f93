//! Cold-archive packages of a dataset: deterministic POSIX pax tar chunks, an index of
//! every member and chunk, a manifest over both and a README for whoever finds them.
//!
//! An archive of the dataset `PRJ/raw/NAME` goes into `<DEST>/<ID>/`, where the id is
//! `PRJ-NAME-<first 8 hex digits of the plan's fingerprint>`: the same dataset gives the
//! same id, the same folder and the same bytes, so a rerun after a kill resumes in place.
//! The archive is recorded in the ledger (`<state>/archives/<ID>--<KEY>.json`, KEY from the archive's
//! location) and beside the dataset on the NAS (`<parent>/.hpcstage-archives/<NAME>/`), since the dataset
//! itself is write-protected.
//!
//! See docs/ARCHITECTURE.md#archives.

pub mod bucket;
pub mod chunk;
pub mod index;
pub mod plan;
pub mod read;
pub mod store;
pub mod write;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::hash::Digest;
use crate::ledger::{file_safe, Ledger};
use crate::progress::Progress;
use crate::record::{read_json, write_json};
use crate::remote::{Location, LocationKind};
use crate::storage::{Retention, S3Options, S3Url};
use crate::worm::Protection;
use bucket::BucketStore;
use index::{ChunkRow, Index, INDEX_NAME};
use store::{ChunkStore, FolderStore};

pub use plan::MIN_CHUNK;

/// File name of the manifest over chunks, index and README.
pub const MANIFEST_NAME: &str = "ARCHIVE-MANIFEST.sha256";
/// File name of the README.
pub const README_NAME: &str = "README.txt";
/// The default chunk size: 10 GiB.
pub const DEFAULT_CHUNK: u64 = 10 << 30;
/// Folder beside an archived dataset that holds its archive records.
pub const NAS_RECORDS: &str = ".hpcstage-archives";

/// What is archived.
#[derive(Debug, Clone)]
pub struct ArchiveSettings {
    /// The dataset folder (holding its `MANIFEST.sha256`).
    pub source: PathBuf,
    pub project: String,
    /// The dataset's name (or the run id): the top folder inside the chunks.
    pub name: String,
    /// "dataset" or "run".
    pub kind: String,
    /// Where the archive's folder (or prefix) goes.
    pub dest: Destination,
    pub chunk_size: u64,
    /// Also `chattr +i` where allowed.
    pub immutable: bool,
    /// What the destination is: disk, tape or object.
    pub media: String,
    pub offsite: bool,
}

/// Where archives go: `<folder>/<ID>/` or `s3://bucket/prefix/<ID>/`.
#[derive(Debug, Clone)]
pub enum Destination {
    Folder(PathBuf),
    Bucket {
        url: S3Url,
        s3: S3Options,
        /// Object Lock retention of every object (`None`: none).
        retention: Option<Retention>,
    },
}

impl Destination {
    /// The destination `to` names (see [`Location::parse`]): a folder of this machine, made
    /// absolute, or an S3 prefix reached with `s3`. `retain` (Object Lock retention, in
    /// `s3`'s lock mode) is only for a bucket and `immutable` (`chattr +i`) only for a
    /// folder. An SSH host is refused: an archive is written where it can be read back
    /// at disk speed.
    pub fn parse(
        to: &OsStr,
        s3: &S3Options,
        retain: Option<std::time::Duration>,
        immutable: bool,
    ) -> Result<Destination> {
        let refuse = |reason: String| Error::Invalid {
            what: "archive destination",
            value: to.to_string_lossy().into_owned(),
            reason,
        };
        match Location::parse(to)? {
            Location::S3(url) => {
                if immutable {
                    return Err(refuse("--immutable is for a folder (chattr +i); on an s3:// destination give --retain DURATION for Object Lock retention".into()));
                }
                Ok(Destination::Bucket {
                    url,
                    s3: s3.clone(),
                    retention: retain.map(|keep| Retention {
                        mode: s3.retention.mode,
                        keep,
                    }),
                })
            }
            Location::Local(folder) => {
                let folder = std::path::absolute(&folder).at(&folder)?;
                if retain.is_some() {
                    return Err(refuse(format!("--retain is Object Lock retention, for an s3:// destination; the folder {} is made read-only (add --immutable for chattr +i)", folder.display())));
                }
                Ok(Destination::Folder(folder))
            }
            Location::Remote(spec) => Err(refuse(format!(
                "{} is {}; archive to a folder of this machine (mount the host, e.g. /mnt/{}) or to an s3:// prefix",
                spec,
                LocationKind::SshHost,
                spec.host
            ))),
        }
    }

    /// What the archive is written to, for the record: `disk` or `object`.
    pub fn media(&self) -> &'static str {
        match self {
            Destination::Folder(_) => "disk",
            Destination::Bucket { .. } => "object",
        }
    }

    /// Whether this is an object store (off this machine's disks).
    pub fn is_object_store(&self) -> bool {
        matches!(self, Destination::Bucket { .. })
    }
}

/// The record of an archive, in the ledger and beside the dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveRecord {
    pub id: String,
    pub project: String,
    /// The dataset's name, or the run id.
    pub name: String,
    pub kind: String,
    /// The archived folder.
    pub source: PathBuf,
    /// The archive folder.
    pub location: String,
    pub media: String,
    pub offsite: bool,
    pub created_at: Timestamp,
    /// When every chunk was last read back from storage and found as recorded.
    pub verified_at: Timestamp,
    pub chunk_size: u64,
    pub files: u64,
    pub bytes: u64,
    /// SHA-256 of the dataset's `MANIFEST.sha256` when it was archived.
    pub manifest_digest: Digest,
    pub index_sha256: Digest,
    pub chunks: Vec<ChunkRow>,
    pub read_only: bool,
    /// The Object Lock retention of every object (an archive on S3), as read back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
    /// `None`: not asked for; else applied, or why not.
    pub immutable: Option<std::result::Result<(), String>>,
    /// The ZFS snapshot held of the archived folder's filesystem (see [`crate::zfs`]), or
    /// why there is none.
    #[serde(default)]
    pub zfs_snapshot: Option<String>,
    pub tool_version: String,
}

/// What [`create`] did.
#[derive(Debug)]
pub struct Outcome {
    pub record: ArchiveRecord,
    /// The archive was complete already: nothing was written.
    pub already: bool,
    /// Chunks kept from a killed run, and chunks written by this one.
    pub resumed: usize,
    pub written: usize,
    pub protection: Option<Protection>,
    /// Where the NAS record went, or why it could not be written.
    pub nas_record: std::result::Result<PathBuf, String>,
}

/// The archive id of a plan of `project`/`name`.
pub fn archive_id(project: &str, name: &str, fingerprint: &Digest) -> String {
    let base = if project.is_empty() || name.starts_with(project) {
        file_safe(name)
    } else {
        format!("{}-{}", file_safe(project), file_safe(name))
    };
    format!("{base}-{}", &fingerprint.to_hex()[..8])
}

/// Archives `settings.source` into `<dest>/<ID>/` and records it.
pub fn create(
    settings: &ArchiveSettings,
    ledger: &Ledger,
    progress: &dyn Progress,
) -> Result<Outcome> {
    let plan = plan::plan(&settings.source, &settings.name, settings.chunk_size)?;
    let id = archive_id(&settings.project, &settings.name, &plan.fingerprint);
    let store: Box<dyn ChunkStore> = match &settings.dest {
        Destination::Folder(root) => Box::new(FolderStore::new(&root.join(&id))),
        Destination::Bucket { url, s3, retention } => Box::new(BucketStore::connect(
            &url.with_prefix(url.prefix.join(&id)),
            s3,
            ledger,
            *retention,
            plan.chunk_size,
        )?),
    };
    let store = &*store;
    let dataset_label = format!("{}/{}", settings.project, settings.name);
    let (index, already, resumed, written, protection) = if store.complete()? {
        let index = read_index(store)?;
        // Killed between its last write and its protection: protected now.
        let protection = store.protect_finished(settings.immutable)?;
        (index, true, 0, 0, protection)
    } else {
        store.prepare()?;
        let w = write::write_chunks(&settings.source, &plan, store, progress)?;
        let index = Index::from_plan(&id, &dataset_label, &plan, w.chunks, &w.part_digests);
        let index_bytes = index.to_bytes();
        let index_digest = store.put_small(INDEX_NAME, &index_bytes)?;
        let readme = readme(&index);
        let readme_digest = store.put_small(README_NAME, readme.as_bytes())?;
        let mut manifest = Vec::new();
        for c in &index.chunks {
            crate::manifest::write_line(&mut manifest, &c.sha256, c.name.as_bytes());
        }
        crate::manifest::write_line(&mut manifest, &index_digest, INDEX_NAME.as_bytes());
        crate::manifest::write_line(&mut manifest, &readme_digest, README_NAME.as_bytes());
        store.put_small(MANIFEST_NAME, &manifest)?;
        store.finish()?;
        let protection = store.retain(settings.immutable)?;
        (index, false, w.resumed, w.written, Some(protection))
    };
    let snapshot = crate::zfs::snapshot_and_hold(
        &settings.source,
        &format!("{}-{}", settings.project, settings.name),
        "archive",
    );
    let now = Timestamp::now();
    let earlier = ledger
        .archive(&id)
        .unwrap_or_default()
        .into_iter()
        .find(|r| r.location == store.location());
    let index_sha256 = Digest::of(&store.get_small(INDEX_NAME)?);
    let record = ArchiveRecord {
        id: id.clone(),
        project: settings.project.clone(),
        name: settings.name.clone(),
        kind: settings.kind.clone(),
        source: settings.source.clone(),
        location: store.location(),
        media: settings.media.clone(),
        offsite: settings.offsite,
        created_at: earlier.as_ref().map_or(now, |r| r.created_at),
        verified_at: if already {
            earlier.as_ref().map_or(now, |r| r.verified_at)
        } else {
            now
        },
        chunk_size: plan.chunk_size,
        files: plan.files,
        bytes: plan.bytes,
        manifest_digest: plan.manifest_digest,
        index_sha256,
        chunks: index.chunks.clone(),
        read_only: match &protection {
            Some(p) => p.read_only,
            None => earlier.as_ref().is_none_or(|r| r.read_only),
        },
        // What this run applied; a finished archive keeps what its record says.
        retention: if already {
            earlier.as_ref().and_then(|r| r.retention.clone())
        } else {
            store.retention()
        },
        immutable: match &protection {
            Some(p) => p.immutable.clone(),
            None => earlier.as_ref().and_then(|r| r.immutable.clone()),
        },
        zfs_snapshot: Some(crate::zfs::describe(&snapshot)),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    ledger.put_archive(&record)?;
    let nas_record = write_nas_record(&record).map_err(|e| e.to_string());
    Ok(Outcome {
        record,
        already,
        resumed,
        written,
        protection,
        nas_record,
    })
}

/// The NAS record `file` of an archive of `source`.
fn nas_record_path(source: &Path, file: &str) -> PathBuf {
    let parent = source.parent().unwrap_or(Path::new("/"));
    let name = source.file_name().map(PathBuf::from).unwrap_or_default();
    parent.join(NAS_RECORDS).join(name).join(file)
}

fn write_nas_record(record: &ArchiveRecord) -> Result<PathBuf> {
    let path = nas_record_path(
        &record.source,
        &record_file_name(&record.id, &record.location),
    );
    write_json(&path, record)?;
    Ok(path)
}

/// The archive records beside the dataset folder `source` on the NAS.
pub fn nas_records(source: &Path) -> Vec<Result<ArchiveRecord>> {
    let dir = nas_record_path(source, "x.json");
    let dir = dir.parent().expect("a record has a folder");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.as_encoded_bytes().starts_with(b"zfs-"))
        })
        .collect();
    paths.sort();
    paths.iter().map(|p| read_json(p)).collect()
}

/// `<id>--<8 hex digits of the location>.json`: one record per copy of an archive (the
/// same dataset archived to two tapes gives the same id twice).
fn record_file_name(id: &str, location: &str) -> String {
    let key = Digest::of(location.as_bytes()).to_hex();
    format!("{}--{}.json", file_safe(id), &key[..8])
}

impl Ledger {
    /// Stores (or replaces) an archive record.
    pub fn put_archive(&self, record: &ArchiveRecord) -> Result<PathBuf> {
        let path = self
            .root()
            .join("archives")
            .join(record_file_name(&record.id, &record.location));
        write_json(&path, record)?;
        Ok(path)
    }

    /// The records of the archive `id` (one per location).
    pub fn archive(&self, id: &str) -> Result<Vec<ArchiveRecord>> {
        Ok(self
            .archives()?
            .into_iter()
            .flatten()
            .filter(|r| r.id == id)
            .collect())
    }

    /// Every archive record, sorted by file name; damaged ones come back as errors.
    pub fn archives(&self) -> Result<Vec<Result<ArchiveRecord>>> {
        let dir = self.root().join("archives");
        let mut paths: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(dir, e)),
        };
        paths.retain(|p| p.extension().is_some_and(|x| x == "json"));
        paths.sort();
        Ok(paths.iter().map(|p| read_json(p)).collect())
    }
}

/// The archive at `location` (a folder, or `s3://bucket/prefix/ID` reached with the
/// process's `[s3]` settings) for reading. A folder that is not there is an error
/// naming it: on another machine, or unmounted.
pub fn open_location(location: &str, ledger: &Ledger) -> Result<Box<dyn ChunkStore>> {
    match Location::parse(OsStr::new(location))? {
        Location::S3(url) => Ok(Box::new(BucketStore::connect(
            &url,
            &S3Options::process(),
            ledger,
            None,
            0,
        )?)),
        Location::Local(dir) if dir.is_dir() => Ok(Box::new(FolderStore::new(&dir))),
        Location::Local(dir) => Err(Error::Invalid {
            what: "archive folder",
            value: dir.display().to_string(),
            reason: "it is not a folder of this machine (archived on another host, or its disk is not mounted here)".into(),
        }),
        Location::Remote(spec) => Err(Error::Invalid {
            what: "archive location",
            value: location.to_string(),
            reason: format!("{spec} is {}; archives are read from a folder of this machine or an s3:// prefix", LocationKind::SshHost),
        }),
    }
}

/// Opens the archive named by `id_or_dir`: an archive folder (holding
/// `ARCHIVE-INDEX.tsv`), an `s3://` prefix holding one, or an id the ledger knows.
pub fn open(
    id_or_dir: &str,
    ledger: &Ledger,
) -> Result<(Box<dyn ChunkStore>, Option<ArchiveRecord>)> {
    let direct = match Location::parse(OsStr::new(id_or_dir))? {
        Location::S3(_) => Some(open_location(id_or_dir.trim_end_matches('/'), ledger)?),
        Location::Local(dir) if dir.join(INDEX_NAME).is_file() => {
            let dir = std::path::absolute(&dir).at(&dir)?;
            Some(open_location(&dir.display().to_string(), ledger)?)
        }
        _ => None,
    };
    if let Some(store) = direct {
        let index = read_index(&*store)?;
        let record = ledger
            .archive(&index.archive)?
            .into_iter()
            .find(|r| Path::new(&r.location) == Path::new(&store.location()));
        return Ok((store, record));
    }
    let mut found = ledger.archive(id_or_dir)?;
    match found.len() {
        1 => {
            let record = found.remove(0);
            Ok((open_location(&record.location, ledger)?, Some(record)))
        }
        0 => {
            let known: Vec<String> = ledger
                .archives()?
                .into_iter()
                .flatten()
                .map(|r| r.id)
                .collect();
            Err(Error::Invalid {
                what: "archive",
                value: id_or_dir.to_string(),
                reason: if Path::new(id_or_dir).is_dir() {
                    format!("{id_or_dir} is a folder without {INDEX_NAME}: not an archive folder")
                } else if known.is_empty() {
                    "neither an archive folder nor an archive id; the ledger has no archives yet (make one with `hpcstage archive PRJ/raw/NAME --to DIR`)".to_string()
                } else {
                    format!(
                        "neither an archive folder nor an archive id; known ids: {}",
                        known.join(", ")
                    )
                },
            })
        }
        _ => Err(Error::Invalid {
            what: "archive",
            value: id_or_dir.to_string(),
            reason: format!(
                "has copies in {} places; name the one you mean by its folder: {}",
                found.len(),
                found
                    .iter()
                    .map(|r| r.location.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// Reads the index of an archive.
pub fn read_index(store: &dyn ChunkStore) -> Result<Index> {
    let bytes = store.get_small(INDEX_NAME)?;
    Index::parse(&bytes, &PathBuf::from(store.location()).join(INDEX_NAME))
}

/// Marks an archive as verified now, in the ledger and on the NAS.
pub fn mark_verified(ledger: &Ledger, record: &ArchiveRecord) -> Result<ArchiveRecord> {
    let mut record = record.clone();
    record.verified_at = Timestamp::now();
    ledger.put_archive(&record)?;
    let _ = write_nas_record(&record);
    Ok(record)
}

/// The README of an archive: what it is, and how to restore it with `tar` and
/// `sha256sum` alone. A function of the index: the same archive, the same text.
pub fn readme(index: &Index) -> String {
    let top = &index.top;
    let chunks: Vec<&str> = index.chunks.iter().map(|c| c.name.as_str()).collect();
    let split: Vec<String> = index
        .rows
        .iter()
        .filter(|r| r.kind == "split")
        .map(|r| {
            let parts = index.parts_of(&r.path);
            let names: Vec<String> = parts
                .iter()
                .map(|p| {
                    format!(
                        "'{top}/{}'",
                        String::from_utf8_lossy(p.path.as_os_str().as_encoded_bytes())
                    )
                })
                .collect();
            let whole = format!(
                "'{top}/{}'",
                String::from_utf8_lossy(r.path.as_os_str().as_encoded_bytes())
            );
            format!(
                "    cat {parts} > {whole} && rm {parts}\n    chmod {:04o} {whole} && touch -m -d @{} {whole}\n",
                r.mode,
                chunk::pax_time(r.mtime_ns),
                parts = names.join(" "),
            )
        })
        .collect();
    let links: Vec<String> = index
        .rows
        .iter()
        .filter(|r| r.kind == "hardlink" && r.chunk.is_none())
        .map(|r| {
            format!(
                "    ln '{top}/{}' '{top}/{}'\n",
                String::from_utf8_lossy(
                    r.target
                        .as_deref()
                        .unwrap_or(Path::new(""))
                        .as_os_str()
                        .as_encoded_bytes()
                ),
                String::from_utf8_lossy(r.path.as_os_str().as_encoded_bytes())
            )
        })
        .collect();
    let mut text = format!(
        "\
ARCHIVE {archive}

This folder is a cold-archive copy of the research dataset {dataset}, written by
hpcstage. It holds:

  {chunk_list}
      POSIX (pax) tar files (\"chunks\"), each readable on its own with GNU tar or
      bsdtar. Every file of the dataset is under the folder {top}/ in them.
  {INDEX_NAME}
      A text index: every file with the chunk holding it, the byte offset of its data
      in that chunk, its size and its SHA-256; and the SHA-256 of every chunk.
  {MANIFEST_NAME}
      SHA-256 checksums of the chunks, the index and this README.
  {README_NAME}
      This text.

Inside the chunks, {top}/MANIFEST.sha256 lists the SHA-256 of every file of the dataset.

1. Check that nothing changed since the archive was written:

    sha256sum -c {MANIFEST_NAME}

2. Restore everything (into the current folder):

    for c in chunk-*.tar; do tar -xpf \"$c\" || break; done
",
        archive = index.archive,
        dataset = index.dataset,
        chunk_list = chunks.join(", "),
    );
    if !split.is_empty() {
        text.push_str(
            "
   Files larger than a chunk were stored in parts (NAME.part-0001, NAME.part-0002,
   ...), each in chunks of their own. Put them back together, in the order of their
   numbers, after extracting, and give them their mode and time:

",
        );
        for s in &split {
            text.push_str(s);
        }
    }
    if !links.is_empty() {
        text.push_str(
            "
   These names are hard links to a file stored in parts; make them again:

",
        );
        for l in &links {
            text.push_str(l);
        }
    }
    text.push_str(&format!(
        "
3. Check every restored file against the dataset's own checksums:

    cd {top} && sha256sum -c MANIFEST.sha256

To restore a single file, extract only it (the name as listed by `tar -tf CHUNK`):

    tar -xpf CHUNK '{top}/path/of/the/file'

or copy its bytes straight out of the chunk with the OFFSET and STORED columns of its
\"member\" line in {INDEX_NAME} (plain files only; for \"sparse\" files use tar):

    tail -c +$((OFFSET + 1)) CHUNK | head -c STORED > file && sha256sum file

and compare with the SHA256 column of the same line. The index's format is explained in
its first lines. Chunk size: {chunk_size} bytes.
",
        chunk_size = index.chunk_size
    ));
    text
}

/// The dataset folder `source` must be a folder.
pub fn check_source(source: &Path) -> Result<()> {
    let meta = std::fs::metadata(source).at(source)?;
    if !meta.is_dir() {
        return Err(Error::SourceMissing {
            path: source.to_path_buf(),
        });
    }
    Ok(())
}
