//! Parameter values: the user's `key=value` strings checked against their declared types.
//!
//! Errors name the parameter, its type and the value, and list what would have been valid.
//! Path values are not looked up on disk: the job node may see other mounts than the login
//! node; they only have to be usable as one path on one line.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::spec::{ParamSpec, ParamType, TemplateSpec};
use super::TemplateError;
use hpcstage_slurm::duration::SlurmDuration;

/// A checked parameter value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "lowercase")]
pub enum ParamValue {
    String(String),
    Int(i64),
    Path(String),
    Duration(SlurmDuration),
    Enum(String),
}

impl ParamValue {
    /// The declared type.
    pub fn kind(&self) -> ParamType {
        match self {
            ParamValue::String(_) => ParamType::String,
            ParamValue::Int(_) => ParamType::Int,
            ParamValue::Path(_) => ParamType::Path,
            ParamValue::Duration(_) => ParamType::Duration,
            ParamValue::Enum(_) => ParamType::Enum,
        }
    }
}

/// The value as text: ints in decimal, durations in SLURM's format.
impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::String(s) | ParamValue::Path(s) | ParamValue::Enum(s) => f.write_str(s),
            ParamValue::Int(n) => write!(f, "{n}"),
            ParamValue::Duration(d) => f.write_str(&d.to_slurm()),
        }
    }
}

/// Check one raw value against a parameter's declaration.
pub(crate) fn check_value(spec: &ParamSpec, raw: &str) -> Result<ParamValue, TemplateError> {
    let invalid = |reason: String| TemplateError::InvalidParam {
        name: spec.name.clone(),
        kind: spec.kind,
        value: raw.to_string(),
        reason,
    };
    if raw.contains('\0') {
        return Err(invalid("contains a NUL byte".to_string()));
    }
    match spec.kind {
        ParamType::String => Ok(ParamValue::String(raw.to_string())),
        ParamType::Int => {
            let n: i64 = raw
                .trim()
                .parse()
                .map_err(|_| invalid("not a whole number".to_string()))?;
            if let Some(lo) = spec.min.filter(|&lo| n < lo) {
                return Err(invalid(format!("must be at least {lo}")));
            }
            if let Some(hi) = spec.max.filter(|&hi| n > hi) {
                return Err(invalid(format!("must be at most {hi}")));
            }
            Ok(ParamValue::Int(n))
        }
        ParamType::Path => {
            if raw.contains(['\n', '\r']) {
                return Err(invalid("a path cannot contain a line break".to_string()));
            }
            if raw.starts_with('~') {
                return Err(invalid(
                    "'~' is not expanded in job scripts; give an absolute path".to_string(),
                ));
            }
            Ok(ParamValue::Path(raw.to_string()))
        }
        ParamType::Duration => SlurmDuration::parse(raw)
            .map(ParamValue::Duration)
            .map_err(|e| invalid(e.to_string())),
        ParamType::Enum => {
            if spec.choices.iter().any(|c| c == raw) {
                Ok(ParamValue::Enum(raw.to_string()))
            } else {
                Err(TemplateError::NotInChoices {
                    name: spec.name.clone(),
                    value: raw.to_string(),
                    choices: spec.choices.clone(),
                })
            }
        }
    }
}

/// Check the given values against the spec and fill in defaults.
///
/// Unknown names are refused first (listing the valid ones), then every missing required
/// parameter is named at once, then each value is checked against its type.
pub(crate) fn resolve(
    spec: &TemplateSpec,
    given: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, ParamValue>, TemplateError> {
    let template = &spec.template.name;
    if let Some(unknown) = given.keys().find(|k| spec.param(k).is_none()) {
        return Err(TemplateError::UnknownParam {
            template: template.clone(),
            name: unknown.clone(),
            valid: spec.param_names(),
        });
    }
    let missing: Vec<String> = spec
        .params
        .iter()
        .filter(|p| p.required() && !given.contains_key(&p.name))
        .map(|p| {
            if p.help.is_empty() {
                format!("{} ({})", p.name, type_word(p.kind))
            } else {
                format!("{} ({}: {})", p.name, type_word(p.kind), p.help)
            }
        })
        .collect();
    if !missing.is_empty() {
        return Err(TemplateError::MissingParams {
            template: template.clone(),
            missing,
        });
    }
    let mut values = BTreeMap::new();
    for p in &spec.params {
        let raw = match (given.get(&p.name), &p.default) {
            (Some(v), _) => v.clone(),
            (None, Some(d)) => d.as_text(),
            (None, None) => unreachable!("missing required parameters were refused above"),
        };
        values.insert(p.name.clone(), check_value(p, &raw)?);
    }
    Ok(values)
}

fn type_word(kind: ParamType) -> &'static str {
    match kind {
        ParamType::String => "string",
        ParamType::Int => "int",
        ParamType::Path => "path",
        ParamType::Duration => "duration",
        ParamType::Enum => "enum",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TemplateSpec {
        TemplateSpec::parse(
            r#"
[template]
name = "t"
version = "1"
workflow = "w"

[[params]]
name = "model"
type = "path"
help = "model file"

[[params]]
name = "chunk_size"
type = "int"
default = 8
min = 1

[[params]]
name = "aligner"
type = "enum"
choices = ["minimap2", "bwa-mem2", "star"]
default = "minimap2"

[[params]]
name = "time"
type = "duration"
default = "2h"

[[params]]
name = "note"
type = "string"
default = ""
"#,
            "t.toml",
        )
        .unwrap()
    }

    fn given(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn defaults_fill_in_and_types_are_applied() {
        let v = resolve(&spec(), &given(&[("model", "/m.pt"), ("time", "1d 2h")])).unwrap();
        assert_eq!(v["model"], ParamValue::Path("/m.pt".into()));
        assert_eq!(v["chunk_size"], ParamValue::Int(8));
        assert_eq!(v["aligner"], ParamValue::Enum("minimap2".into()));
        assert_eq!(v["time"].to_string(), "1-02:00:00");
        assert_eq!(v["note"], ParamValue::String(String::new()));
    }

    #[test]
    fn an_int_given_text_names_the_parameter_type_and_value() {
        let err = resolve(&spec(), &given(&[("model", "m"), ("chunk_size", "abc")]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "parameter chunk_size expects an int, got \"abc\": not a whole number"
        );
        let err = resolve(&spec(), &given(&[("model", "m"), ("chunk_size", "0")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 1"), "{err}");
    }

    #[test]
    fn unknown_parameters_list_the_valid_ones() {
        let err = resolve(&spec(), &given(&[("modle", "m")]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "template t has no parameter \"modle\"; valid parameters: model, chunk_size, aligner, time, note"
        );
    }

    #[test]
    fn missing_required_parameters_are_named_with_their_help() {
        let err = resolve(&spec(), &given(&[])).unwrap_err().to_string();
        assert_eq!(err, "template t needs parameter model (path: model file)");
    }

    #[test]
    fn enum_values_outside_the_choices_list_them() {
        let err = resolve(&spec(), &given(&[("model", "m"), ("aligner", "bowtie")]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "parameter aligner must be one of minimap2, bwa-mem2, star, got \"bowtie\""
        );
    }

    #[test]
    fn paths_refuse_line_breaks_nul_and_tilde_but_are_not_looked_up() {
        for bad in ["a\nb", "a\0b", "~/model.pt"] {
            assert!(
                resolve(&spec(), &given(&[("model", bad)])).is_err(),
                "{bad:?}"
            );
        }
        let v = resolve(&spec(), &given(&[("model", "models/does-not-exist.pt")])).unwrap();
        assert_eq!(v["model"].to_string(), "models/does-not-exist.pt");
    }

    #[test]
    fn strings_may_hold_anything_but_nul() {
        let hostile = "x'; touch /tmp/pwned; '\n$(id)";
        let v = resolve(&spec(), &given(&[("model", "m"), ("note", hostile)])).unwrap();
        assert_eq!(v["note"].to_string(), hostile);
    }

    #[test]
    fn values_serialize_with_their_type() {
        let json =
            serde_json::to_string(&ParamValue::Duration(SlurmDuration::from_secs(60))).unwrap();
        assert_eq!(json, r#"{"type":"duration","value":"00:01:00"}"#);
        let back: ParamValue = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ParamValue::Duration(SlurmDuration::from_secs(60)));
    }
}
