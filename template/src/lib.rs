//! hpcstage-template: job templates, as typed specs, shell-safe rendering into `sbatch`
//! scripts, and the checks of what a job must leave behind.
//!
//! A template is a pair of files: `<name>.toml`, the spec (typed parameters, resources,
//! inputs, expected outputs, intermediates), and `<name>.sbatch.j2`, the body of the job
//! script in minijinja syntax. [`render`] turns a template, the user's `-p key=value`
//! strings and a [`RenderContext`] (run folder, staged input, run id, token) into a
//! [`Rendered`] job: the complete script, the typed `sbatch` arguments, the typed parameter
//! values and the template's hash for provenance.
//!
//! Why it is built this way:
//! - Parameters reach a shell. Every interpolated value is shell-quoted by the environment's
//!   formatter, so `x'; touch /tmp/pwned; '` or `$(id)` arrives at the program as those exact
//!   bytes. The only ways around it are explicit: `trusted = true` on a parameter in the spec
//!   or the `| trusted` filter in the template. A scan of the template refuses interpolations
//!   placed where quoting cannot help (inside quotes, comments or here-documents).
//! - Undefined variables are errors (minijinja's strict mode): a typo must not become an empty
//!   string in a command line.
//! - `#SBATCH` lines come from typed resources, never from template text, so a job's
//!   resources can be validated, overridden (`--time 4h`) and shown before submission.
//! - Path parameters are not checked for existence: the job node may mount things the login
//!   node does not see.
//!
//! A crate of its own (docs/ARCHITECTURE.md#crates-and-what-each-may-import): nothing here
//! talks to SLURM. It uses `hpcstage-slurm` only for the typed `sbatch` options
//! ([`SbatchArgs`], [`SlurmDuration`]), which the local executor reads back from a script;
//! it does no printing and runs no job (`hpcstage_slurm::local` runs a rendered script
//! without SLURM).

#[cfg(test)]
mod builtin_tests;
mod check;
mod lint;
#[cfg(test)]
mod local_tests;
mod masks;
mod outputs;
mod params;
mod quote;
mod render;
mod spec;
mod store;

use std::path::PathBuf;

pub use hpcstage_slurm::duration::{DurationError, SlurmDuration};
pub use hpcstage_slurm::sbatch::{
    ArraySpec, ResourceOverrides, SbatchArgs, SignalSpec, DEFAULT_SIGNAL_GRACE,
};
pub use outputs::{
    input_stem, Expected, InvalidOutput, OutputCheck, ResolvedOutputRule, ResolvedOutputs,
    RunInputs,
};
pub use params::ParamValue;
pub use render::{
    each_input, read_inputs, render, InputListing, ListedFile, RenderContext, Rendered,
    ShippedTool, INPUTS_FILE, LOG_DIR, SCRIPT_FILE, SIGNAL_MARKER, TOOLS_DIR,
};
pub use spec::{
    ArrayRule, InputsSpec, OutputKind, OutputRule, OutputsSpec, ParamSpec, ParamType,
    PerInputArray, ResourceExpr, ResourcesSpec, TemplateMeta, TemplateSpec, ToolsSpec,
};
pub use store::{Template, TemplateInfo, TemplateOrigin, TemplateStore};

/// Errors from loading, validating and rendering templates.
///
/// Each variant names the template, parameter, field or path at fault and, where there is
/// one, the set of valid values, so that the binary can print it as is.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// Reading a template file or folder, or writing a rendered job, failed.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        /// The operating system's error, printed in the message (and so not returned
        /// again as `source()`: each cause is printed once).
        error: std::io::Error,
    },

    /// A spec is not valid TOML or breaks a rule of the spec format.
    #[error("template spec {origin}: {reason}")]
    Spec { origin: String, reason: String },

    /// No template of that name in the built-ins or the template folders.
    #[error("unknown template {name:?}; available: {}", list_or_none(.available))]
    UnknownTemplate {
        name: String,
        available: Vec<String>,
    },

    /// A spec was found without its script body, or the other way round.
    #[error("template {name}: {path} is missing")]
    MissingFile { name: String, path: PathBuf },

    /// A parameter was given that the template does not declare.
    #[error("template {template} has no parameter {name:?}; valid parameters: {}", list_or_none(.valid))]
    UnknownParam {
        template: String,
        name: String,
        valid: Vec<String>,
    },

    /// Required parameters (those without a default) were not given.
    #[error("template {template} needs parameter{} {}", plural(.missing.len()), .missing.join(", "))]
    MissingParams {
        template: String,
        missing: Vec<String>,
    },

    /// A parameter value does not fit the parameter's type.
    #[error("parameter {name} expects {kind}, got {value:?}: {reason}")]
    InvalidParam {
        name: String,
        kind: ParamType,
        value: String,
        reason: String,
    },

    /// An enum parameter was given a value outside its choices.
    #[error("parameter {name} must be one of {}, got {value:?}", .choices.join(", "))]
    NotInChoices {
        name: String,
        value: String,
        choices: Vec<String>,
    },

    /// A resource (from the spec, a parameter or an override) is not valid for `sbatch`.
    #[error("resource {field} = {value:?} is not valid: {reason}")]
    Resource {
        field: &'static str,
        value: String,
        reason: String,
    },

    /// A value of the render context (run id, token, folders) is not usable.
    #[error("invalid {what} {value:?}: {reason}")]
    Context {
        what: &'static str,
        value: String,
        reason: String,
    },

    /// The template text does not parse.
    #[error("template {template}: syntax error: {reason}")]
    Syntax { template: String, reason: String },

    /// Rendering failed (an undefined variable, a failing filter, a NUL byte in a value).
    #[error("template {template}: {reason}")]
    Render { template: String, reason: String },

    /// A value is interpolated where shell quoting cannot make it safe.
    #[error(
        "template {template}, line {line}: `{expr}` is interpolated {place}; hpcstage quotes every \
         value itself, so put it outside quotes, comments and here-documents \
         (or mark it `| trusted` if it is meant to be shell code)"
    )]
    UnsafeInterpolation {
        template: String,
        line: usize,
        expr: String,
        place: &'static str,
    },

    /// Bash text the template language would swallow (for example `${#` opening a comment).
    #[error("template {template}, line {line}: {reason}")]
    TemplateText {
        template: String,
        line: usize,
        reason: String,
    },

    /// The input listing could not be built (unreadable folder, bad glob, bad sample sheet).
    #[error("inputs of template {template}: {reason}")]
    Inputs { template: String, reason: String },

    /// No input file matched the template's input globs.
    #[error("no input of template {template} found in {dir}: nothing matches {}", .globs.join(", "))]
    NoInputs {
        template: String,
        dir: PathBuf,
        globs: Vec<String>,
    },

    /// The job's array is sized from its inputs, but the inputs are not known yet.
    #[error(
        "template {template} sizes its job array from the input files, \
         but the inputs are not known (stage the dataset before rendering)"
    )]
    InputsUnknown { template: String },
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_string()
    } else {
        items.join(", ")
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Is `name` usable as a template, parameter-free identifier (template names, workflow
/// folders, job names)? Letters, digits, `_`, `-` and `.`, not starting with `.` or `-`.
pub(crate) fn is_simple_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}
