//! The ledger: hpcstage's memory of stages (and later runs) in the state directory.
//!
//! Home folders are shared across nodes, often over NFS, so every write is a whole-file
//! atomic rename of a record; there is no database and no long-held lock. A damaged
//! record is reported by name and skipped, never fatal for the others.
//!
//! See docs/ARCHITECTURE.md#on-disk-layouts.

use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::error::{IoContext, Result};
use crate::record::{read_json, write_json, StageRecord};

/// The state directory.
#[derive(Debug, Clone)]
pub struct Ledger {
    root: PathBuf,
}

impl Ledger {
    /// Opens (creating when needed) the ledger at `root`.
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root.join("stages")).at(root.join("stages"))?;
        Ok(Ledger {
            root: root.to_path_buf(),
        })
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn stage_path(&self, record: &StageRecord) -> PathBuf {
        let key = Digest::of(record.destination.as_os_str().as_encoded_bytes()).to_hex();
        let name = format!(
            "{}--{}--{}.json",
            file_safe(&record.project),
            file_safe(&record.dataset),
            &key[..8]
        );
        self.root.join("stages").join(name)
    }

    /// Stores (or replaces) a stage record; returns its file.
    pub fn put_stage(&self, record: &StageRecord) -> Result<PathBuf> {
        let path = self.stage_path(record);
        write_json(&path, record)?;
        Ok(path)
    }

    /// Stores a stage record unless one for the same destination is there already.
    pub fn put_stage_if_missing(&self, record: &StageRecord) -> Result<()> {
        if !self.stage_path(record).is_file() {
            self.put_stage(record)?;
        }
        Ok(())
    }

    /// All stage records, sorted by id; damaged ones come back as errors.
    pub fn stages(&self) -> Result<Vec<Result<StageRecord>>> {
        let dir = self.root.join("stages");
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .at(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        Ok(paths.iter().map(|p| read_json(p)).collect())
    }
}

/// Keeps a name usable as (part of) a file name.
pub fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Ledger {
    /// Removes the ledger entry of a stage (after its scratch copy was cleaned).
    pub fn remove_stage(&self, record: &StageRecord) -> Result<()> {
        let path = self.stage_path(record);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(crate::Error::io(path, e)),
            _ => Ok(()),
        }
    }
}
