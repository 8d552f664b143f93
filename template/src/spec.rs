//! The template spec (`<name>.toml`): what a template declares about itself.
//!
//! Parsing refuses unknown keys (a typo such as `defualt` must not silently make a parameter
//! required) and checks everything that can be checked without parameter values: names,
//! types, defaults against their types, enum choices. What depends on parameters (resource
//! expressions, globs) is checked at render time. The format is documented in
//! `templates/README.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::params::check_value;
use super::TemplateError;

/// A parsed and checked template spec.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    pub template: TemplateMeta,
    #[serde(default)]
    pub params: Vec<ParamSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<InputsSpec>,
    #[serde(default)]
    pub resources: ResourcesSpec,
    #[serde(default)]
    pub outputs: OutputsSpec,
    #[serde(default)]
    pub tools: ToolsSpec,
    /// The spec's text as read, hashed with the body for provenance.
    #[serde(skip)]
    pub source: String,
}

/// `[template]`: identity and where results go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateMeta {
    /// Equal to the file name without `.toml`.
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// Folder under `results/` on the NAS that runs of this template land in.
    pub workflow: String,
}

/// The type of a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// Any text without NUL bytes.
    String,
    /// A signed 64-bit integer, optionally within `min`/`max`.
    Int,
    /// A path, absolute or relative to the run folder; not checked for existence.
    Path,
    /// A duration (`2h`, `1d 2h`, `HH:MM:SS`), rendered in SLURM's format.
    Duration,
    /// One of `choices`.
    Enum,
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParamType::String => "a string",
            ParamType::Int => "an int",
            ParamType::Path => "a path",
            ParamType::Duration => "a duration",
            ParamType::Enum => "one of its choices",
        })
    }
}

/// A scalar as TOML allows it for defaults and resources: `8` or `"8"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ResourceExpr {
    Int(i64),
    Text(String),
}

impl ResourceExpr {
    /// The text form: an expression to render, or a plain value.
    pub fn as_text(&self) -> String {
        match self {
            ResourceExpr::Int(n) => n.to_string(),
            ResourceExpr::Text(s) => s.clone(),
        }
    }
}

/// `[[params]]`: one typed parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// Absent: the parameter is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<ResourceExpr>,
    #[serde(default)]
    pub help: String,
    /// Interpolated without shell quoting. Only for values that are shell code by design.
    #[serde(default)]
    pub trusted: bool,
    /// The allowed values of an `enum`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    /// Bounds of an `int`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
}

impl ParamSpec {
    /// Required parameters have no default.
    pub fn required(&self) -> bool {
        self.default.is_none()
    }
}

/// `[inputs]`: which files of the staged dataset are this template's inputs.
///
/// The list is made at render time, sorted, written to the run folder
/// (`.hpcstage/inputs.list`) and read by every array task, so all tasks agree on who does
/// what and the pull can count one output per input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputsSpec {
    /// Globs relative to the input folder (`**/*.tif`); may use parameters.
    #[serde(default)]
    pub globs: Vec<String>,
    #[serde(default)]
    pub case_insensitive: bool,
    /// A sample sheet (TSV) whose data rows are the inputs instead of files; may use
    /// parameters; when it renders empty, the globs apply. Relative to the input folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sheet: Option<String>,
    /// The sheet's first data row is a header.
    #[serde(default = "yes")]
    pub sheet_header: bool,
    /// Rendering fails when no input is found.
    #[serde(default = "yes")]
    pub required: bool,
}

fn yes() -> bool {
    true
}

/// `[resources]`: what the job asks SLURM for. Every value may be a template expression
/// over the parameters (`"{{ time }}"`); an empty result leaves the option out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesSpec {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    pub gres: Option<String>,
    pub cpus_per_task: Option<ResourceExpr>,
    pub mem: Option<String>,
    pub time: Option<String>,
    pub constraint: Option<String>,
    pub array: Option<ArrayRule>,
    /// How long before the time limit SLURM sends USR1 to the batch shell; default 5m,
    /// `"0s"` turns the signal off.
    pub signal_grace: Option<String>,
}

/// How the job array is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ArrayRule {
    /// SLURM's syntax, possibly an expression: `"0-{{ n - 1 }}"`.
    Range(String),
    /// One task per `per_task` inputs: `{ per_task = "{{ chunk_size }}" }`.
    PerInput(PerInputArray),
}

/// `array = { per_task = ..., max_parallel = ... }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerInputArray {
    pub per_task: ResourceExpr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<ResourceExpr>,
}

/// `[outputs]`: what a successful run leaves, checked by the pull.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputsSpec {
    #[serde(default)]
    pub expect: Vec<OutputRule>,
    /// A shell command run in the run folder after the job; exit 0 means valid. Rendered
    /// like the body (values quoted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validate: Option<String>,
    /// Globs (relative to the run folder) of scratch files to purge once results are safe.
    #[serde(default)]
    pub intermediates: Vec<String>,
}

/// `[tools]`: programs shipped with the template and what they need from the job's
/// environment.
///
/// The files live in `tools/` beside the spec (built-ins: `templates/tools/`, compiled in)
/// and are copied into the run folder's `tools/` when it is rendered, so the job finds them
/// on whatever node it runs, and the results on the NAS keep the exact code that ran.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsSpec {
    #[serde(default)]
    pub files: Vec<String>,
    /// Python modules the tools import: import name → what to install. The script gets
    /// `hpcstage_require_python PYTHON`, which imports each and stops the job naming every
    /// one that is missing, before any input is read.
    #[serde(default)]
    pub python_modules: BTreeMap<String, String>,
}

/// What an expected output must be, beyond existing and being non-empty.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputKind {
    /// Any file or folder.
    #[default]
    File,
    /// A label mask (TIFF): decodes, unsigned integer pixels, its input image's shape, and
    /// as many rows in its table as its largest label.
    LabelMask,
}

/// `[[outputs.expect]]`: one expected output glob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputRule {
    /// Relative to the run folder; `*` stays within a folder, `**` crosses folders; may use
    /// parameters.
    pub glob: String,
    /// At least this many matches (default 1, or 0 when `per_input`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_count: Option<u64>,
    /// Exactly one match per input.
    #[serde(default)]
    pub per_input: bool,
    /// Every match must be a non-empty file, or a folder holding a non-empty file.
    #[serde(default = "yes")]
    pub non_empty: bool,
    #[serde(default)]
    pub kind: OutputKind,
    /// `label-mask`: a glob of the inputs the masks belong to (case-insensitive); a mask
    /// pairs with the input of the same stem (the input's path without its extension, and
    /// `.ome` before it; the mask's path without the glob's leading folders and suffix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<String>,
    /// `label-mask`: the mask's table, relative to the run folder, `{stem}` replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
}

/// Names the render context uses; parameters cannot take them.
pub(crate) const RESERVED: &[&str] = &[
    "run_dir",
    "input_dir",
    "run_id",
    "token",
    "hpcstage",
    "inputs_file",
    "n_inputs",
    "per_task",
    "template",
    "resources",
    "job_name",
    "loop",
    "self",
    "super",
    "range",
    "dict",
    "namespace",
    "debug",
    "true",
    "false",
    "none",
];

impl TemplateSpec {
    /// The parameters marked `trusted`, whose values the lint lets into raw places.
    pub fn trusted_params(&self) -> Vec<&str> {
        self.params
            .iter()
            .filter(|p| p.trusted)
            .map(|p| p.name.as_str())
            .collect()
    }

    /// Parse and check a spec. `origin` names it in errors (a path or `built-in unet-seg`).
    pub fn parse(text: &str, origin: &str) -> Result<Self, TemplateError> {
        let err = |reason: String| TemplateError::Spec {
            origin: origin.to_string(),
            reason,
        };
        let mut spec: TemplateSpec = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        spec.source = text.to_string();
        spec.check().map_err(err)?;
        Ok(spec)
    }

    /// The parameter called `name`.
    pub fn param(&self, name: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Names of the parameters, in spec order.
    pub fn param_names(&self) -> Vec<String> {
        self.params.iter().map(|p| p.name.clone()).collect()
    }

    fn check(&self) -> Result<(), String> {
        let t = &self.template;
        if !super::is_simple_name(&t.name) {
            return Err(format!(
                "template name {:?} may contain only letters, digits, '_', '-' and '.'",
                t.name
            ));
        }
        if !super::is_simple_name(&t.version) {
            return Err(format!(
                "version {:?} is not a plain version string",
                t.version
            ));
        }
        if !super::is_simple_name(&t.workflow) {
            return Err(format!(
                "workflow {:?} must be a single folder name (letters, digits, '_', '-', '.')",
                t.workflow
            ));
        }
        let mut seen = BTreeSet::new();
        for p in &self.params {
            let ident = !p.name.is_empty()
                && p.name
                    .starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && p.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ident {
                return Err(format!(
                    "parameter name {:?} must be lowercase letters, digits and '_', not starting with a digit",
                    p.name
                ));
            }
            if RESERVED.contains(&p.name.as_str()) {
                return Err(format!(
                    "parameter name {:?} is reserved (the template context uses it)",
                    p.name
                ));
            }
            if !seen.insert(p.name.as_str()) {
                return Err(format!("parameter {:?} is declared twice", p.name));
            }
            match p.kind {
                ParamType::Enum => {
                    if p.choices.is_empty() {
                        return Err(format!("enum parameter {:?} has no choices", p.name));
                    }
                    let unique: BTreeSet<_> = p.choices.iter().collect();
                    if unique.len() != p.choices.len() {
                        return Err(format!("enum parameter {:?} repeats a choice", p.name));
                    }
                }
                _ if !p.choices.is_empty() => {
                    return Err(format!(
                        "parameter {:?} has choices but is not of type enum",
                        p.name
                    ));
                }
                _ => {}
            }
            if p.kind != ParamType::Int && (p.min.is_some() || p.max.is_some()) {
                return Err(format!(
                    "parameter {:?} has min/max but is not of type int",
                    p.name
                ));
            }
            if let (Some(lo), Some(hi)) = (p.min, p.max) {
                if lo > hi {
                    return Err(format!(
                        "parameter {:?} has min {lo} above max {hi}",
                        p.name
                    ));
                }
            }
            if let Some(default) = &p.default {
                check_value(p, &default.as_text())
                    .map_err(|e| format!("default of parameter {:?}: {e}", p.name))?;
            }
        }
        if let Some(inputs) = &self.inputs {
            if inputs.globs.is_empty() && inputs.sheet.is_none() {
                return Err("[inputs] needs globs or a sheet".to_string());
            }
        }
        if let Some(ArrayRule::PerInput(_)) = &self.resources.array {
            if self.inputs.is_none() {
                return Err("array per_task needs an [inputs] section to count inputs".to_string());
            }
        }
        for rule in &self.outputs.expect {
            if rule.glob.trim().is_empty() {
                return Err("an [[outputs.expect]] glob is empty".to_string());
            }
            if rule.kind != OutputKind::LabelMask
                && (rule.matches.is_some() || rule.table.is_some())
            {
                return Err(format!(
                    "output {:?}: matches and table belong to kind = \"label-mask\"",
                    rule.glob
                ));
            }
            if rule.table.as_ref().is_some_and(|t| !t.contains("{stem}")) {
                return Err(format!(
                    "output {:?}: its table needs {{stem}}, e.g. \"tables/{{stem}}.csv\"",
                    rule.glob
                ));
            }
        }
        for file in &self.tools.files {
            if !super::is_simple_name(file) {
                return Err(format!(
                    "tool {file:?} must be a file name in the template folder's tools/ (letters, digits, '_', '-', '.')"
                ));
            }
        }
        for module in self.tools.python_modules.keys() {
            let ident = module.split('.').all(|part| {
                part.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            });
            if !ident {
                return Err(format!("python module {module:?} is not an import name"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[template]
name = "t"
version = "1"
workflow = "w"
"#;

    fn parse(extra: &str) -> Result<TemplateSpec, TemplateError> {
        TemplateSpec::parse(&format!("{MINIMAL}{extra}"), "test.toml")
    }

    #[test]
    fn a_minimal_spec_parses_and_keeps_its_source() {
        let spec = parse("").unwrap();
        assert_eq!(spec.template.name, "t");
        assert!(spec.params.is_empty());
        assert!(spec.source.contains("workflow"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = parse("[[params]]\nname = \"x\"\ntype = \"int\"\ndefualt = 3\n").unwrap_err();
        assert!(err.to_string().contains("defualt"), "{err}");
    }

    #[test]
    fn bad_parameters_are_refused_with_the_reason() {
        let cases = [
            ("[[params]]\nname = \"Bad\"\ntype = \"int\"\n", "lowercase"),
            ("[[params]]\nname = \"run_dir\"\ntype = \"path\"\n", "reserved"),
            ("[[params]]\nname = \"e\"\ntype = \"enum\"\n", "no choices"),
            ("[[params]]\nname = \"n\"\ntype = \"int\"\ndefault = \"abc\"\n", "default of parameter"),
            ("[[params]]\nname = \"e\"\ntype = \"enum\"\nchoices = [\"a\"]\ndefault = \"b\"\n", "default of parameter"),
            ("[[params]]\nname = \"s\"\ntype = \"string\"\nchoices = [\"a\"]\n", "not of type enum"),
            ("[[params]]\nname = \"a\"\ntype = \"int\"\n[[params]]\nname = \"a\"\ntype = \"int\"\n", "twice"),
            ("[[params]]\nname = \"a\"\ntype = \"float\"\n", "unknown variant"),
            ("[resources]\narray = { per_task = 4 }\n", "[inputs]"),
        ];
        for (extra, needle) in cases {
            let err = parse(extra).unwrap_err().to_string();
            assert!(err.contains(needle), "{extra}\n=> {err}");
        }
    }

    #[test]
    fn resources_accept_numbers_or_expressions() {
        let spec = parse(
            "[inputs]\nglobs = [\"*.tif\"]\n[resources]\ncpus_per_task = 4\ntime = \"{{ time }}\"\narray = { per_task = \"{{ n }}\", max_parallel = 2 }\n",
        )
        .unwrap();
        assert_eq!(spec.resources.cpus_per_task, Some(ResourceExpr::Int(4)));
        assert!(matches!(spec.resources.array, Some(ArrayRule::PerInput(_))));
        let spec = parse("[resources]\narray = \"0-3\"\n").unwrap();
        assert_eq!(spec.resources.array, Some(ArrayRule::Range("0-3".into())));
    }
}
