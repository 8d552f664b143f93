//! Expected outputs and intermediates, resolved for one run, and the check of a run folder
//! against them.
//!
//! The pull decides what to do with the result (copy, refuse, `--allow-partial`); this
//! module only says what matched. Globs are relative to the run folder; `*` stays within one
//! folder and `**` crosses folders. A match may be a folder (an OME-Zarr store is one): a
//! folder counts as non-empty when it holds at least one non-empty file. A rule of kind
//! `label-mask` also reads each match (see [`super::masks`]) against its input image and
//! its table.

use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};
use serde::{Deserialize, Serialize};

use super::masks::check_label_mask;
use super::spec::OutputKind;
use super::TemplateError;

/// An output rule with its glob rendered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedOutputRule {
    pub glob: String,
    pub expected: Expected,
    pub non_empty: bool,
    #[serde(default)]
    pub kind: OutputKind,
    /// `label-mask`: glob of the inputs the matches belong to (rendered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<String>,
    /// `label-mask`: each match's table, `{stem}` to replace (rendered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
}

/// How many matches a rule wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "count")]
pub enum Expected {
    AtLeast(u64),
    /// One per input.
    Exactly(u64),
}

impl Expected {
    fn accepts(self, n: u64) -> bool {
        match self {
            Expected::AtLeast(m) => n >= m,
            Expected::Exactly(m) => n == m,
        }
    }
}

/// A template's outputs for one run: rules, validation command and intermediates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedOutputs {
    pub expect: Vec<ResolvedOutputRule>,
    /// A shell command (values quoted) to run with bash in the run folder; exit 0 = valid.
    pub validate: Option<String>,
    /// Globs of scratch files to purge after a verified pull.
    pub intermediates: Vec<String>,
}

/// What one rule found in a run folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputCheck {
    pub glob: String,
    pub expected: Expected,
    /// Matching paths, relative to the run folder, sorted.
    pub matched: Vec<String>,
    /// Matches that are empty files or folders without a non-empty file.
    pub empty: Vec<String>,
    /// Matches that are not what the rule's kind says they are, with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalid: Vec<InvalidOutput>,
    pub ok: bool,
}

/// An output that exists but is not what it claims to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidOutput {
    /// Relative to the run folder.
    pub path: String,
    /// One sentence: what is wrong with it.
    pub reason: String,
}

/// The run's inputs, for rules that compare an output with its input.
#[derive(Debug, Clone, Copy)]
pub struct RunInputs<'a> {
    /// The staged dataset (absolute).
    pub dir: &'a Path,
    /// Relative to `dir`; `None` when the run did not list them.
    pub list: Option<&'a [String]>,
}

impl ResolvedOutputs {
    /// Check the run folder against every rule. The first rule that fails does not stop the
    /// others: every result is returned.
    pub fn check(
        &self,
        run_dir: &Path,
        inputs: RunInputs<'_>,
    ) -> Result<Vec<OutputCheck>, TemplateError> {
        let matchers = self
            .expect
            .iter()
            .map(|rule| compile_glob(&rule.glob, false))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| TemplateError::Spec {
                origin: "outputs".to_string(),
                reason,
            })?;
        // One walk for every rule, keeping only what matches: a run folder may hold
        // millions of files (an OME-Zarr store's chunks), its matches are few.
        let mut matches: Vec<Vec<Entry>> = vec![Vec::new(); self.expect.len()];
        walk_each(run_dir, &mut |e| {
            for (m, found) in matchers.iter().zip(&mut matches) {
                if m.is_match(&e.rel) {
                    found.push(e.clone());
                }
            }
            Next::Descend
        })?;
        let mut checks = Vec::new();
        for (rule, mut matched) in self.expect.iter().zip(matches) {
            matched.sort_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
            let mut empty = Vec::new();
            if rule.non_empty {
                for e in &matched {
                    if !e.has_content(run_dir)? {
                        empty.push(e.rel.clone());
                    }
                }
            }
            let invalid = match rule.kind {
                OutputKind::File => Vec::new(),
                OutputKind::LabelMask => {
                    let masks: Vec<&str> = matched
                        .iter()
                        .filter(|e| !empty.contains(&e.rel))
                        .map(|e| e.rel.as_str())
                        .collect();
                    check_masks(rule, run_dir, inputs, &masks)?
                }
            };
            let count = matched.len() as u64;
            checks.push(OutputCheck {
                glob: rule.glob.clone(),
                expected: rule.expected,
                ok: rule.expected.accepts(count) && empty.is_empty() && invalid.is_empty(),
                matched: matched.into_iter().map(|e| e.rel.clone()).collect(),
                empty,
                invalid,
            });
        }
        Ok(checks)
    }

    /// Paths in the run folder matching the intermediates' globs (outermost matches only:
    /// a matched folder stands for everything inside it).
    pub fn intermediate_paths(&self, run_dir: &Path) -> Result<Vec<PathBuf>, TemplateError> {
        let matchers = self
            .intermediates
            .iter()
            .map(|g| compile_glob(g, false))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| TemplateError::Spec {
                origin: "intermediates".to_string(),
                reason,
            })?;
        let mut out: Vec<String> = Vec::new();
        // A matched folder is not walked into: what it holds goes with it.
        walk_each(run_dir, &mut |e| {
            if matchers.iter().any(|m| m.is_match(&e.rel)) {
                out.push(e.rel.clone());
                Next::Skip
            } else {
                Next::Descend
            }
        })?;
        out.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        Ok(out.into_iter().map(|r| run_dir.join(r)).collect())
    }
}

/// Reads each mask of a `label-mask` rule against the input of the same stem and its table.
fn check_masks(
    rule: &ResolvedOutputRule,
    run_dir: &Path,
    inputs: RunInputs<'_>,
    masks: &[&str],
) -> Result<Vec<InvalidOutput>, TemplateError> {
    let bad_glob = |reason| TemplateError::Spec {
        origin: "outputs".to_string(),
        reason,
    };
    let matcher = compile_glob(rule.matches.as_deref().unwrap_or("**"), true).map_err(bad_glob)?;
    let by_stem: std::collections::HashMap<String, &String> = inputs
        .list
        .unwrap_or_default()
        .iter()
        .filter(|i| matcher.is_match(i.as_str()))
        .map(|i| (input_stem(i), i))
        .collect();
    let mut invalid = Vec::new();
    for &mask in masks {
        let stem = output_stem(&rule.glob, mask);
        let result = match by_stem.get(&stem) {
            None => Err(format!(
                "no input image is named {stem:?} (with .tif, .tiff, .ome.tif or .ome.tiff), so its shape cannot be checked{}",
                if inputs.list.is_none() { " (the run has no input list)" } else { "" }
            )),
            Some(input) => {
                let table = rule
                    .table
                    .as_ref()
                    .map(|t| run_dir.join(t.replace("{stem}", &stem)));
                match &table {
                    Some(t) if !t.is_file() => Err(format!(
                        "its table {} is missing",
                        t.strip_prefix(run_dir).unwrap_or(t).display()
                    )),
                    _ => check_label_mask(&run_dir.join(mask), &inputs.dir.join(input), table.as_deref())
                        .map(|_| ()),
                }
            }
        };
        if let Err(reason) = result {
            invalid.push(InvalidOutput {
                path: mask.to_string(),
                reason: reason.replace(&format!("{}/", run_dir.display()), ""),
            });
        }
    }
    Ok(invalid)
}

/// An input's stem: its path without the extension, and without `.ome` before it.
pub fn input_stem(rel: &str) -> String {
    let (dir, name) = rel.rsplit_once('/').map_or(("", rel), |(d, n)| (d, n));
    let mut stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
    if stem.len() > 4 && stem[stem.len() - 4..].eq_ignore_ascii_case(".ome") {
        stem = &stem[..stem.len() - 4];
    }
    if dir.is_empty() {
        stem.to_string()
    } else {
        format!("{dir}/{stem}")
    }
}

/// An output's stem: its path without the glob's literal leading folders and literal suffix
/// (`masks/a/b.ome.tif` of `masks/**/*.ome.tif` is `a/b`).
fn output_stem(glob: &str, rel: &str) -> String {
    const META: &[char] = &['*', '?', '[', ']', '{', '}'];
    let mut prefix = String::new();
    for part in glob.split('/') {
        if part.contains(META) {
            break;
        }
        prefix.push_str(part);
        prefix.push('/');
    }
    let last = glob.rsplit('/').next().unwrap_or(glob);
    let suffix = last.rfind(META).map_or("", |i| &last[i + 1..]);
    let rel = rel.strip_prefix(prefix.as_str()).unwrap_or(rel);
    rel.strip_suffix(suffix).unwrap_or(rel).to_string()
}

/// A glob for paths relative to a root: not absolute, no `..`, one line.
pub(crate) fn compile_glob(glob: &str, case_insensitive: bool) -> Result<GlobMatcher, String> {
    if glob.starts_with('/') {
        return Err(format!("glob {glob:?} must be relative"));
    }
    if glob.split('/').any(|c| c == "..") {
        return Err(format!("glob {glob:?} must not climb out with '..'"));
    }
    if glob.contains(['\n', '\r', '\0']) || glob.trim().is_empty() {
        return Err(format!("glob {glob:?} is empty or holds a line break"));
    }
    GlobBuilder::new(glob)
        .literal_separator(true)
        .case_insensitive(case_insensitive)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("invalid glob {glob:?}: {e}"))
}

/// One path under a walked root.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// Relative, `/`-separated.
    pub(crate) rel: String,
    pub(crate) is_dir: bool,
    /// A symbolic link (never followed: a link to a folder is not walked into).
    pub(crate) is_link: bool,
    pub(crate) len: u64,
}

impl Entry {
    fn has_content(&self, root: &Path) -> Result<bool, TemplateError> {
        if !self.is_dir {
            return Ok(self.len > 0);
        }
        let mut found = false;
        walk_each(&root.join(&self.rel), &mut |e| {
            found = !e.is_dir && e.len > 0;
            if found {
                Next::Stop
            } else {
                Next::Descend
            }
        })?;
        Ok(found)
    }
}

/// What a walk does after an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Go on (into the entry, when it is a folder).
    Descend,
    /// Go on, but not into this folder.
    Skip,
    /// End the walk.
    Stop,
}

/// Every file and folder under `root`, relative, sorted by bytes. Symlinks are listed but
/// not followed; `.hpcstage` folders (hpcstage's own records) are skipped; names that are
/// not UTF-8 are an error naming the path.
pub(crate) fn walk(root: &Path) -> Result<Vec<Entry>, TemplateError> {
    let mut out = Vec::new();
    walk_each(root, &mut |e| {
        out.push(e.clone());
        Next::Descend
    })?;
    out.sort_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
    Ok(out)
}

/// The entries [`walk`] lists, handed to `f` one at a time in no set order (a folder
/// before what it holds), nothing kept: memory grows with the depth and the folders
/// waiting to be read, not with the files.
pub(crate) fn walk_each(
    root: &Path,
    f: &mut dyn FnMut(&Entry) -> Next,
) -> Result<(), TemplateError> {
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let io = |source| TemplateError::Io {
            path: dir.clone(),
            error: source,
        };
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(TemplateError::Io {
                    path: entry.path(),
                    error: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "file name is not valid UTF-8",
                    ),
                });
            };
            if name == ".hpcstage" {
                continue;
            }
            let child = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            let meta = entry.metadata().map_err(|source| TemplateError::Io {
                path: entry.path(),
                error: source,
            })?;
            let entry = Entry {
                rel: child,
                is_dir: meta.is_dir(),
                is_link: meta.file_type().is_symlink(),
                len: meta.len(),
            };
            match f(&entry) {
                Next::Descend if entry.is_dir => stack.push(entry.rel),
                Next::Descend | Next::Skip => {}
                Next::Stop => return Ok(()),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn rule(glob: &str, expected: Expected, non_empty: bool) -> ResolvedOutputRule {
        ResolvedOutputRule {
            glob: glob.into(),
            expected,
            non_empty,
            kind: OutputKind::File,
            matches: None,
            table: None,
        }
    }

    fn no_inputs(root: &Path) -> RunInputs<'_> {
        RunInputs {
            dir: root,
            list: None,
        }
    }

    #[test]
    fn stems_pair_masks_with_their_images() {
        assert_eq!(input_stem("plate/a.ome.TIF"), "plate/a");
        assert_eq!(input_stem("b.tiff"), "b");
        assert_eq!(input_stem("c.v2.tif"), "c.v2");
        assert_eq!(
            output_stem("masks/**/*.ome.tif", "masks/plate/a.ome.tif"),
            "plate/a"
        );
        assert_eq!(output_stem("masks/*.ome.tif", "masks/c.v2.ome.tif"), "c.v2");
    }

    #[test]
    fn rules_count_matches_and_report_empty_ones() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(root, "masks/a.ome.tif", "x");
        touch(root, "masks/sub/b.ome.tif", "");
        touch(root, "tables/a.csv", "x");
        touch(root, "out/c.ome.zarr/0/0", "x");
        std::fs::create_dir_all(root.join("out/d.ome.zarr")).unwrap();
        touch(root, ".hpcstage/inputs.list", "x");
        let outputs = ResolvedOutputs {
            expect: vec![
                rule("masks/**/*.ome.tif", Expected::Exactly(2), true),
                rule("tables/*.csv", Expected::Exactly(2), true),
                rule("out/*.ome.zarr", Expected::AtLeast(1), true),
                rule("**/inputs.list", Expected::AtLeast(0), false),
            ],
            ..ResolvedOutputs::default()
        };
        let checks = outputs.check(root, no_inputs(root)).unwrap();
        assert_eq!(
            checks[0].matched,
            ["masks/a.ome.tif", "masks/sub/b.ome.tif"]
        );
        assert_eq!(checks[0].empty, ["masks/sub/b.ome.tif"]);
        assert!(!checks[0].ok);
        assert!(!checks[1].ok, "one table for two inputs");
        assert_eq!(checks[2].matched, ["out/c.ome.zarr", "out/d.ome.zarr"]);
        assert_eq!(checks[2].empty, ["out/d.ome.zarr"]);
        assert!(checks[3].matched.is_empty(), ".hpcstage is never an output");
    }

    #[test]
    fn intermediates_list_outermost_matches() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(root, "work/x/y.tmp", "x");
        touch(root, "masks/a.ome.tif", "x");
        touch(root, "bam/s.bam.tmp", "x");
        let outputs = ResolvedOutputs {
            intermediates: vec!["work".into(), "work/**".into(), "**/*.tmp".into()],
            ..ResolvedOutputs::default()
        };
        let paths = outputs.intermediate_paths(root).unwrap();
        assert_eq!(paths, vec![root.join("bam/s.bam.tmp"), root.join("work")]);
    }

    #[test]
    fn globs_must_stay_inside() {
        assert!(compile_glob("/etc/*", false).is_err());
        assert!(compile_glob("a/../../b", false).is_err());
        assert!(compile_glob("*.TIF", true).unwrap().is_match("x.tif"));
        assert!(!compile_glob("*.tif", false).unwrap().is_match("a/x.tif"));
    }
}
