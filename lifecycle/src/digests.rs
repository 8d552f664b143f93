//! Fingerprints of what a run read besides its staged dataset: the files its `path`
//! parameters name (a model, a reference genome, a sample sheet), for the provenance of
//! its results (`run.json`, `README.md`).
//!
//! The staged dataset is covered by its manifest digest; a reference or a model is not,
//! and results are only reproducible with the exact one. So every `path` parameter of
//! every template that names an existing file or folder when the results are pulled is
//! hashed then (a folder: each regular file in it, sorted), relative paths being taken
//! from the run folder (the job's working folder) or else the staged dataset. A
//! parameter that names nothing there is recorded as not found, not skipped silently.
//! unet-seg also hashes its model inside the job (`qc/model.sha256`): that record, made
//! when the job read the model, is kept as the model's fingerprint.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use hpcstage_staging::hash::hash_file;
use hpcstage_template::{ParamValue, Rendered};

use crate::run::RunRecord;

/// A file and its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub path: String,
    pub sha256: String,
}

impl FileDigest {
    /// A `sha256sum` line (`<hex>  <path>`, or `<hex> *<path>`); `None` for anything else.
    pub fn from_sha256sum_line(line: &str) -> Option<FileDigest> {
        let (hex, rest) = line.split_once(' ')?;
        let path = rest.strip_prefix(' ').or_else(|| rest.strip_prefix('*'))?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| FileDigest {
            path: path.to_string(),
            sha256: hex.to_ascii_lowercase(),
        })
    }
}

/// The model a run used and its fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub path: String,
    /// The model file(s), as the job hashed them. Older `run.json` files hold
    /// `sha256sum` lines here; they are read into the same shape.
    #[serde(deserialize_with = "digests_or_lines")]
    pub sha256: Vec<FileDigest>,
    /// The model's own metadata (producer, opset, inputs, outputs) as the job recorded it
    /// in `qc/model.json`, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

/// Reads `[{"path", "sha256"}]` or, from older records, `["<hex>  <path>"]`.
fn digests_or_lines<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<FileDigest>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Item {
        Digest(FileDigest),
        Line(String),
    }
    let items = Vec::<Item>::deserialize(d)?;
    items
        .into_iter()
        .map(|i| match i {
            Item::Digest(d) => Ok(d),
            Item::Line(l) => FileDigest::from_sha256sum_line(&l)
                .ok_or_else(|| serde::de::Error::custom(format!("not a sha256sum line: {l:?}"))),
        })
        .collect()
}

/// The model of a run with a `model` parameter: the job's `qc/model.sha256`, else the
/// file hashed now.
pub fn model_info(record: &RunRecord, run_dir: &Path) -> Option<ModelInfo> {
    let path = record.params.get("model")?.clone();
    let sha256 = match std::fs::read_to_string(run_dir.join("qc/model.sha256")) {
        Ok(text) => text
            .lines()
            .filter_map(FileDigest::from_sha256sum_line)
            .collect(),
        Err(_) => match hash_file(Path::new(&path)) {
            Ok((d, _)) => vec![FileDigest {
                path: path.clone(),
                sha256: d.to_hex(),
            }],
            Err(_) => Vec::new(),
        },
    };
    let metadata = std::fs::read(run_dir.join("qc/model.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    Some(ModelInfo {
        path,
        sha256,
        metadata,
    })
}

/// One `path` parameter and what it named when the results were pulled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamInput {
    pub param: String,
    /// The value as given.
    pub value: String,
    /// Where it was found (`None`: nowhere).
    pub resolved: Option<PathBuf>,
    /// Each regular file, with its SHA-256 (one for a file, every file of a folder).
    pub files: Vec<FileDigest>,
    /// Files that could not be read, with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

/// Hashes what every non-empty `path` parameter of the run names.
pub fn param_inputs(rendered: &Rendered) -> Vec<ParamInput> {
    rendered
        .params
        .iter()
        .filter_map(|(name, v)| match v {
            ParamValue::Path(p) if !p.is_empty() => Some((name, p)),
            _ => None,
        })
        .map(|(name, value)| {
            let given = Path::new(value);
            let resolved = if given.is_absolute() {
                given.exists().then(|| given.to_path_buf())
            } else {
                [&rendered.run_dir, &rendered.input_dir]
                    .into_iter()
                    .map(|base| base.join(given))
                    .find(|p| p.exists())
            };
            let mut input = ParamInput {
                param: name.clone(),
                value: value.clone(),
                resolved: resolved.clone(),
                files: Vec::new(),
                unreadable: Vec::new(),
            };
            if let Some(root) = resolved {
                for file in regular_files(&root) {
                    match hash_file(&file) {
                        Ok((d, _)) => input.files.push(FileDigest {
                            path: file.display().to_string(),
                            sha256: d.to_hex(),
                        }),
                        Err(e) => input.unreadable.push(e.to_string()),
                    }
                }
            }
            input
        })
        .collect()
}

/// `root` itself when it is a file; else every regular file below it, sorted by path
/// (links are not followed).
fn regular_files(root: &Path) -> Vec<PathBuf> {
    if root.is_file() {
        return vec![root.to_path_buf()];
    }
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_record_reads_both_the_new_and_the_old_form() {
        let hex = "ab".repeat(32);
        let new: ModelInfo = serde_json::from_value(serde_json::json!({
            "path": "/m/unet.pt", "sha256": [{"path": "/m/unet.pt", "sha256": hex}]
        }))
        .unwrap();
        let old: ModelInfo = serde_json::from_value(serde_json::json!({
            "path": "/m/unet.pt", "sha256": [format!("{hex}  /m/unet.pt")]
        }))
        .unwrap();
        assert_eq!(new, old);
        assert_eq!(
            serde_json::to_value(&old).unwrap()["sha256"],
            serde_json::json!([{"path": "/m/unet.pt", "sha256": hex}])
        );
        let bad: Result<ModelInfo, _> = serde_json::from_value(serde_json::json!({
            "path": "/m", "sha256": ["not a line"]
        }));
        assert!(bad.is_err());
    }

    #[test]
    fn sha256sum_lines_text_and_binary() {
        let hex = "0f".repeat(32);
        assert_eq!(
            FileDigest::from_sha256sum_line(&format!("{hex} *./w/a b.pt")),
            Some(FileDigest {
                path: "./w/a b.pt".into(),
                sha256: hex.clone()
            })
        );
        assert_eq!(FileDigest::from_sha256sum_line("xyz  a"), None);
    }
}
