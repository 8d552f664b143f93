//! Records written next to the data and in the ledger: the stage record
//! (`DEST/.hpcstage/stage.json`) and the dataset description (`raw/<NAME>/dataset.json`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::policy::PurgeBasis;

/// The purge facts of a staged copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeInfo {
    pub basis: PurgeBasis,
    /// Policy age, e.g. "30 days".
    pub age: String,
    pub whole_folder: bool,
    /// The oldest timestamp the purge looks at.
    pub oldest: Timestamp,
    pub deadline: Timestamp,
}

/// One staged dataset on scratch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRecord {
    /// `<project>/<dataset>`.
    pub id: String,
    pub project: String,
    pub dataset: String,
    /// Where the data came from (a path, later also `host:/path`).
    pub source: String,
    pub destination: PathBuf,
    pub files: u64,
    pub bytes: u64,
    /// SHA-256 of the destination's `MANIFEST.sha256`.
    pub manifest_digest: Digest,
    /// SHA-256 of the source's `MANIFEST.sha256` when it had one.
    pub source_manifest_digest: Option<Digest>,
    pub staged_at: Timestamp,
    pub owner: String,
    pub host: String,
    pub purge: PurgeInfo,
    pub tool_version: String,
    /// Set while the copy is not complete: the last stage failed or was stopped, or is
    /// still running. The rest of the record is then the last complete stage's (or, for a
    /// first stage, what the unfinished copy had verified).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete: Option<Incomplete>,
}

/// Why a staged copy is not complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incomplete {
    /// When the stage that did not complete ran.
    pub at: Timestamp,
    /// What happened, in a few words.
    pub reason: String,
    /// The first files that failed, as `path: what`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
    /// How many files failed in all.
    #[serde(default)]
    pub failed_count: u64,
}

impl Incomplete {
    /// How many failed files [`Incomplete::failed`] names at most.
    pub const SHOWN: usize = 3;

    /// One line for a table: the reason, the files named and how many more there are.
    pub fn summary(&self) -> String {
        let mut text = self.reason.clone();
        if !self.failed.is_empty() {
            text.push_str(": ");
            text.push_str(&self.failed.join(", "));
            let more = self.failed_count.saturating_sub(self.failed.len() as u64);
            if more > 0 {
                text.push_str(&format!(" and {more} more"));
            }
        }
        text
    }
}

/// `dataset.json` of an ingested raw dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub project: String,
    pub dataset: String,
    pub source_host: String,
    pub source_path: String,
    /// File extension (lowercase, without dot; "" for none) → number of files.
    pub formats: BTreeMap<String, u64>,
    pub files: u64,
    pub bytes: u64,
    pub ingested_at: Timestamp,
    pub ingested_by: String,
    pub manifest_digest: Option<Digest>,
    pub tool_version: String,
}

/// Writes any record as pretty JSON, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = json_bytes(path, value)?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).at(parent)?;
    }
    crate::manifest::write_atomic(path, &text)
}

/// A record as written to `path`: pretty JSON and a final newline.
pub fn json_bytes<T: Serialize>(path: &Path, value: &T) -> Result<Vec<u8>> {
    let mut text = serde_json::to_vec_pretty(value).map_err(|e| Error::Parse {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    text.push(b'\n');
    Ok(text)
}

/// Reads a JSON record; a malformed one is an error naming the file.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read(path).at(path)?;
    serde_json::from_slice(&text).map_err(|e| Error::Parse {
        path: path.to_path_buf(),
        reason: format!("not a valid record: {e}"),
    })
}
