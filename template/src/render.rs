//! Rendering: spec + template text + parameters + run context → a complete job script.
//!
//! The script is assembled in a fixed order, because sbatch only honours `#SBATCH` lines
//! before the first command: the shebang, the directives from typed resources, a comment
//! naming the template and its hash, `set -euo pipefail`, the run facts as quoted shell
//! variables, the USR1 trap (in-job safety, docs/ARCHITECTURE.md#the-epilog), two helpers, and
//! then the template body. Rendering reads the input folder (to list inputs) but writes
//! nothing; [`Rendered::write`] writes the run folder.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use minijinja::value::Value;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::outputs::{
    compile_glob, walk, Expected, OutputCheck, ResolvedOutputRule, ResolvedOutputs, RunInputs,
};
use super::params::{self, ParamValue};
use super::quote::{describe, plain_env, quote, shell_env};
use super::spec::{InputsSpec, OutputKind, TemplateSpec};
use super::{lint, TemplateError};
use hpcstage_slurm::duration::SlurmDuration;
use hpcstage_slurm::sbatch::{ResourceOverrides, SbatchArgs};

/// The job script's file name in the run folder.
pub const SCRIPT_FILE: &str = "job.sbatch";
/// The run's input list: relative paths (or sample-sheet rows), each ended by a NUL byte.
pub const INPUTS_FILE: &str = ".hpcstage/inputs.list";
/// Written by the USR1 trap when SLURM announces the time limit; one line per task.
pub const SIGNAL_MARKER: &str = ".hpcstage/signal-USR1";
/// Job logs (`%x-%A_%a.out` / `.err`) inside the run folder.
pub const LOG_DIR: &str = "logs";

/// Where the inputs of a render come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum InputListing {
    /// List the input folder with the spec's `[inputs]` globs or sheet (the default).
    #[default]
    Scan,
    /// These inputs, relative to the input folder, already listed by the caller.
    Given(Vec<String>),
    /// Not known yet (for showing a template before staging); a template that sizes its
    /// array from the inputs then fails with [`TemplateError::InputsUnknown`].
    Unknown,
    /// The files of an input tree that is not a folder of this machine (an SSH host, a
    /// bucket), listed by the caller: the spec's globs pick from them as from a scan. A
    /// spec that reads a sample sheet leaves the inputs unknown (the sheet is not read).
    Listed(Vec<ListedFile>),
}

/// A file of an input tree listed by the caller ([`InputListing::Listed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedFile {
    /// Relative to the input folder, `/`-separated.
    pub rel: String,
    /// A symbolic link (skipped as a scan skips it).
    pub link: bool,
}

/// The facts of one run that a template may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderContext {
    /// The run folder on scratch (absolute): job outputs, logs and the script live here.
    pub run_dir: PathBuf,
    /// The staged dataset (absolute).
    pub input_dir: PathBuf,
    pub run_id: String,
    /// De-duplication token, written as the job's `--comment`.
    pub token: String,
    /// The hpcstage executable (absolute), for templates that call it.
    pub hpcstage: PathBuf,
    /// Job name; the template's name when unset.
    pub job_name: Option<String>,
    pub inputs: InputListing,
    /// Resource values that win over the spec (`--time 4h`).
    pub resources: ResourceOverrides,
}

impl RenderContext {
    /// A context with inputs scanned, no overrides and the template's name as job name.
    pub fn new(
        run_dir: impl Into<PathBuf>,
        input_dir: impl Into<PathBuf>,
        run_id: impl Into<String>,
        token: impl Into<String>,
        hpcstage: impl Into<PathBuf>,
    ) -> Self {
        RenderContext {
            run_dir: run_dir.into(),
            input_dir: input_dir.into(),
            run_id: run_id.into(),
            token: token.into(),
            hpcstage: hpcstage.into(),
            job_name: None,
            inputs: InputListing::Scan,
            resources: ResourceOverrides::default(),
        }
    }
}

/// A rendered job, ready to write and submit. Serializable for the run's records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendered {
    pub template: String,
    pub version: String,
    pub workflow: String,
    /// `sha256(spec text || 0x00 || template text)`, lowercase hex.
    pub template_hash: String,
    pub run_id: String,
    pub run_dir: PathBuf,
    pub input_dir: PathBuf,
    /// The complete job script.
    pub script: String,
    /// The resolved `sbatch` options (also the script's `#SBATCH` lines).
    pub sbatch: SbatchArgs,
    /// The same as `--flag=value` arguments.
    pub sbatch_args: Vec<String>,
    /// Every parameter, typed, defaults filled in.
    pub params: BTreeMap<String, ParamValue>,
    /// The inputs (relative paths or sheet rows) when known, in task order: held while
    /// the run is rendered and submitted and written to [`INPUTS_FILE`] in the run folder
    /// by [`Rendered::write`], never into the run's records (a million inputs would be a
    /// million names in one JSON document, read whole by every pull). A record read back
    /// has `None` here and [`Rendered::n_inputs`]; one written before then still lists
    /// them, and is read as it is.
    #[serde(default, skip_serializing)]
    pub inputs: Option<Vec<String>>,
    /// How many inputs, when known (the length of [`INPUTS_FILE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_inputs: Option<u64>,
    /// Inputs per array task, when the array is sized from the inputs.
    pub per_task: Option<u64>,
    pub outputs: ResolvedOutputs,
    /// Programs shipped with the template, written to the run folder's `tools/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ShippedTool>,
    /// Symbolic links the input globs matched, left out: inputs are regular files (a link
    /// `latest.czi` to a file already listed would be processed twice).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_links: Vec<String>,
}

/// A program shipped with a template (`[tools] files`): its name, its SHA-256 for the
/// run's records, and its text (not kept in the records: the run folder has the file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShippedTool {
    pub name: String,
    pub sha256: String,
    #[serde(skip)]
    pub content: String,
}

impl ShippedTool {
    pub fn new(name: impl Into<String>, content: String) -> Self {
        ShippedTool {
            name: name.into(),
            sha256: hex_digest(content.as_bytes()),
            content,
        }
    }
}

/// Where shipped tools go in the run folder.
pub const TOOLS_DIR: &str = "tools";

impl Rendered {
    /// Check the run folder (`run_dir`, where this job's outputs are) against the expected
    /// outputs, with this run's inputs for the rules that compare outputs with them.
    /// The input list is read from the run folder's [`INPUTS_FILE`] when a rule needs it
    /// (a label mask is read against the input of its name) and this record does not
    /// hold it.
    pub fn check_outputs(&self, run_dir: &Path) -> Result<Vec<OutputCheck>, TemplateError> {
        let needed = self
            .outputs
            .expect
            .iter()
            .any(|r| r.kind == OutputKind::LabelMask);
        let read;
        let list = match &self.inputs {
            Some(list) => Some(list.as_slice()),
            None if needed && self.n_inputs.is_some() => {
                read = read_inputs(run_dir)?;
                Some(read.as_slice())
            }
            None => None,
        };
        self.outputs.check(
            run_dir,
            RunInputs {
                dir: &self.input_dir,
                list,
            },
        )
    }

    /// How many inputs, when known.
    pub fn input_count(&self) -> Option<u64> {
        self.n_inputs
            .or_else(|| self.inputs.as_ref().map(|l| l.len() as u64))
    }

    /// Write the run folder: the script ([`SCRIPT_FILE`]), the input list ([`INPUTS_FILE`])
    /// and empty `logs/` and `.hpcstage/` folders (SLURM does not create log folders; a
    /// job whose log folder is missing fails at start). Returns the script's path.
    pub fn write(&self) -> Result<PathBuf, TemplateError> {
        let dir = &self.run_dir;
        // `.hpcstage/`: hpcstage's own records (`hpcstage_staging::walk::STATE_DIR`), which
        // hold the input list.
        let state = Path::new(INPUTS_FILE).parent().unwrap_or(Path::new(""));
        for sub in [Path::new(LOG_DIR), state] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(|source| TemplateError::Io {
                path: p,
                error: source,
            })?;
        }
        if let Some(inputs) = &self.inputs {
            let mut bytes = Vec::new();
            for item in inputs {
                bytes.extend_from_slice(item.as_bytes());
                bytes.push(0);
            }
            write_atomic(&dir.join(INPUTS_FILE), &bytes)?;
        }
        for tool in self.tools.iter().filter(|t| !t.content.is_empty()) {
            let folder = dir.join(TOOLS_DIR);
            std::fs::create_dir_all(&folder).map_err(|source| TemplateError::Io {
                path: folder.clone(),
                error: source,
            })?;
            let path = folder.join(&tool.name);
            write_atomic(&path, tool.content.as_bytes())?;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .map_err(|source| TemplateError::Io {
                    path,
                    error: source,
                })?;
        }
        let script = dir.join(SCRIPT_FILE);
        write_atomic(&script, self.script.as_bytes())?;
        Ok(script)
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TemplateError> {
    let tmp = path.with_extension("tmp-hpcstage");
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| TemplateError::Io {
            path: p,
            error: source,
        }
    };
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// `sha256(spec || 0x00 || template)` as lowercase hex.
pub(crate) fn template_hash(spec_source: &str, template_source: &str) -> String {
    hex_digest(&[spec_source.as_bytes(), &[0u8], template_source.as_bytes()].concat())
}

fn hex_digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Render a template for one run.
///
/// `params` are the user's raw `name=value` strings; they are checked against the spec
/// (unknown, missing, wrongly typed values are errors naming the parameter). `spec.source`
/// and `template_source` are hashed into [`Rendered::template_hash`].
pub fn render(
    spec: &TemplateSpec,
    template_source: &str,
    params: &BTreeMap<String, String>,
    ctx: &RenderContext,
) -> Result<Rendered, TemplateError> {
    let name = spec.template.name.as_str();
    let ctx_paths = check_context(ctx)?;
    let trusted = spec.trusted_params();
    lint::check(name, template_source, &trusted)?;
    if let Some(cmd) = &spec.outputs.validate {
        lint::check(&format!("{name} (outputs.validate)"), cmd, &trusted)?;
    }

    let values = params::resolve(spec, params)?;
    let mut plain: BTreeMap<String, Value> = values
        .iter()
        .map(|(k, v)| (k.clone(), plain_value(v)))
        .collect();

    let mut skipped_links = Vec::new();
    let inputs = match (&ctx.inputs, &spec.inputs) {
        (InputListing::Given(list), _) => Some(check_given_inputs(name, list)?),
        (InputListing::Scan, Some(ispec)) => scan_inputs(
            name,
            ispec,
            InputTree::Folder(&ctx.input_dir),
            &plain,
            &mut skipped_links,
        )?,
        (InputListing::Listed(files), Some(ispec)) => scan_inputs(
            name,
            ispec,
            InputTree::Listed(files),
            &plain,
            &mut skipped_links,
        )?,
        (InputListing::Scan | InputListing::Listed(_), None) | (InputListing::Unknown, _) => None,
    };
    if let (Some(list), Some(ispec)) = (&inputs, &spec.inputs) {
        if list.is_empty() && ispec.required {
            return Err(TemplateError::NoInputs {
                template: name.to_string(),
                dir: ctx.input_dir.clone(),
                globs: ispec.globs.clone(),
            });
        }
    }
    if let Some(list) = &inputs {
        plain.insert("n_inputs".into(), Value::from(list.len()));
    }

    let (sbatch, per_task) = resources(spec, ctx, &ctx_paths, &plain, inputs.as_ref())?;
    let outputs = resolve_outputs(spec, &plain, inputs.as_ref().map(Vec::len))?;

    // The body's context: typed values (quoted when printed), run facts, resources.
    let mut body_ctx: BTreeMap<String, Value> = values
        .iter()
        .map(|(k, v)| {
            let trusted = spec.param(k).is_some_and(|p| p.trusted);
            let value = if trusted {
                Value::from_safe_string(v.to_string())
            } else {
                plain_value(v)
            };
            (k.clone(), value)
        })
        .collect();
    body_ctx.insert("run_dir".into(), Value::from(ctx_paths.run_dir.clone()));
    body_ctx.insert("input_dir".into(), Value::from(ctx_paths.input_dir.clone()));
    body_ctx.insert("run_id".into(), Value::from(ctx.run_id.clone()));
    body_ctx.insert("token".into(), Value::from(ctx.token.clone()));
    body_ctx.insert("hpcstage".into(), Value::from(ctx_paths.hpcstage.clone()));
    body_ctx.insert(
        "inputs_file".into(),
        Value::from(format!("{}/{INPUTS_FILE}", ctx_paths.run_dir)),
    );
    if let Some(list) = &inputs {
        body_ctx.insert("n_inputs".into(), Value::from(list.len()));
    }
    if let Some(n) = per_task {
        body_ctx.insert("per_task".into(), Value::from(n));
    }
    body_ctx.insert(
        "job_name".into(),
        Value::from(sbatch.job_name.clone().unwrap_or_default()),
    );
    body_ctx.insert(
        "template".into(),
        Value::from_iter([
            ("name", Value::from(spec.template.name.clone())),
            ("version", Value::from(spec.template.version.clone())),
            ("workflow", Value::from(spec.template.workflow.clone())),
        ]),
    );
    body_ctx.insert("resources".into(), resources_value(&sbatch));

    let env = shell_env();
    let tmpl = env
        .template_from_named_str(name, template_source)
        .map_err(|e| TemplateError::Syntax {
            template: name.to_string(),
            reason: describe(&e, template_source),
        })?;
    let body = tmpl
        .render(Value::from_iter(body_ctx.clone()))
        .map_err(|e| TemplateError::Render {
            template: name.to_string(),
            reason: describe(&e, template_source),
        })?;
    let validate = match &spec.outputs.validate {
        Some(cmd) => Some(
            env.render_str(cmd, Value::from_iter(body_ctx))
                .map_err(|e| TemplateError::Render {
                    template: format!("{name} (outputs.validate)"),
                    reason: describe(&e, cmd),
                })?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let outputs = ResolvedOutputs {
        validate,
        ..outputs
    };

    let hash = template_hash(&spec.source, template_source);
    let script = assemble(
        spec,
        ctx,
        &ctx_paths,
        &sbatch,
        per_task,
        inputs.as_ref(),
        &hash,
        &body,
    )?;
    Ok(Rendered {
        template: spec.template.name.clone(),
        version: spec.template.version.clone(),
        workflow: spec.template.workflow.clone(),
        template_hash: hash,
        run_id: ctx.run_id.clone(),
        run_dir: ctx.run_dir.clone(),
        input_dir: ctx.input_dir.clone(),
        script,
        sbatch_args: sbatch.to_args(),
        sbatch,
        params: values,
        n_inputs: inputs.as_ref().map(|l| l.len() as u64),
        inputs,
        per_task,
        outputs,
        tools: Vec::new(),
        skipped_links,
    })
}

/// The items of the run folder's [`INPUTS_FILE`] in task order, each handed to `each`
/// as it is read (the list is never held); `each` returns `false` to stop. A run
/// without the file has no items.
pub fn each_input(
    run_dir: &Path,
    each: &mut dyn FnMut(String) -> bool,
) -> Result<(), TemplateError> {
    use std::io::BufRead;
    let path = run_dir.join(INPUTS_FILE);
    let io = |error| TemplateError::Io {
        path: path.clone(),
        error,
    };
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    let mut reader = std::io::BufReader::new(file);
    let mut item = Vec::new();
    loop {
        item.clear();
        if reader.read_until(0, &mut item).map_err(io)? == 0 {
            return Ok(());
        }
        if item.last() == Some(&0) {
            item.pop();
        }
        if !item.is_empty() && !each(String::from_utf8_lossy(&item).into_owned()) {
            return Ok(());
        }
    }
}

/// The whole of the run folder's [`INPUTS_FILE`] (see [`each_input`]).
pub fn read_inputs(run_dir: &Path) -> Result<Vec<String>, TemplateError> {
    let mut out = Vec::new();
    each_input(run_dir, &mut |item| {
        out.push(item);
        true
    })?;
    Ok(out)
}

/// A typed value for expressions: ints as numbers, everything else as text.
fn plain_value(v: &ParamValue) -> Value {
    match v {
        ParamValue::Int(n) => Value::from(*n),
        other => Value::from(other.to_string()),
    }
}

fn resources_value(s: &SbatchArgs) -> Value {
    let text = |v: &Option<String>| Value::from(v.clone().unwrap_or_default());
    Value::from_iter([
        ("partition", text(&s.partition)),
        ("gres", text(&s.gres)),
        ("cpus_per_task", Value::from(s.cpus_per_task.unwrap_or(1))),
        ("mem", text(&s.mem)),
        (
            "time",
            Value::from(s.time.map(SlurmDuration::to_slurm).unwrap_or_default()),
        ),
        (
            "array",
            Value::from(
                s.array
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            ),
        ),
    ])
}

/// The context's paths as checked text.
struct ContextPaths {
    run_dir: String,
    input_dir: String,
    hpcstage: String,
}

fn check_context(ctx: &RenderContext) -> Result<ContextPaths, TemplateError> {
    let path = |what: &'static str, p: &Path| -> Result<String, TemplateError> {
        let bad = |reason: &str| TemplateError::Context {
            what,
            value: p.display().to_string(),
            reason: reason.to_string(),
        };
        let s = p.to_str().ok_or_else(|| bad("not valid UTF-8"))?;
        if !p.is_absolute() {
            return Err(bad(
                "must be an absolute path (the job runs on another node)",
            ));
        }
        if s.contains(['\n', '\r', '\0']) {
            return Err(bad("must not contain line breaks or NUL bytes"));
        }
        let trimmed = s.trim_end_matches('/');
        Ok(if trimmed.is_empty() { "/" } else { trimmed }.to_string())
    };
    if !super::is_simple_name(&ctx.run_id) {
        return Err(TemplateError::Context {
            what: "run id",
            value: ctx.run_id.clone(),
            reason: "use letters, digits, '_', '-' and '.'".to_string(),
        });
    }
    let token_ok = !ctx.token.is_empty()
        && ctx.token.len() <= 200
        && ctx
            .token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'='));
    if !token_ok {
        return Err(TemplateError::Context {
            what: "token",
            value: ctx.token.clone(),
            reason: "use up to 200 letters, digits, '_', '-', '.', ':' and '='".to_string(),
        });
    }
    Ok(ContextPaths {
        run_dir: path("run folder", &ctx.run_dir)?,
        input_dir: path("input folder", &ctx.input_dir)?,
        hpcstage: path("hpcstage executable", &ctx.hpcstage)?,
    })
}

fn check_given_inputs(template: &str, list: &[String]) -> Result<Vec<String>, TemplateError> {
    for item in list {
        if item.contains('\0') || item.is_empty() || item.starts_with('/') {
            return Err(TemplateError::Inputs {
                template: template.to_string(),
                reason: format!("input {item:?} must be a non-empty relative path without NUL"),
            });
        }
    }
    Ok(list.to_vec())
}

/// Render a short expression (resource value, glob, sheet path) without quoting.
fn expr(text: &str, ctx: &BTreeMap<String, Value>) -> Result<String, String> {
    if !text.contains("{{") && !text.contains("{%") {
        return Ok(text.trim().to_string());
    }
    plain_env()
        .render_str(text, Value::from_iter(ctx.clone()))
        .map(|s| s.trim().to_string())
        .map_err(|e| describe(&e, text))
}

/// The inputs: sheet rows, or the regular files the globs match. Links the globs match
/// go to `skipped_links` instead. `None` when they cannot be known here: a sheet in a
/// tree that is only listed.
fn scan_inputs(
    template: &str,
    spec: &InputsSpec,
    tree: InputTree<'_>,
    ctx: &BTreeMap<String, Value>,
    skipped_links: &mut Vec<String>,
) -> Result<Option<Vec<String>>, TemplateError> {
    let err = |reason: String| TemplateError::Inputs {
        template: template.to_string(),
        reason,
    };
    if let Some(sheet) = &spec.sheet {
        let rel = expr(sheet, ctx).map_err(|e| err(format!("sheet {sheet:?}: {e}")))?;
        if !rel.is_empty() {
            let InputTree::Folder(input_dir) = tree else {
                return Ok(None);
            };
            let path = input_dir.join(&rel);
            let text = std::fs::read_to_string(&path).map_err(|source| TemplateError::Io {
                path: path.clone(),
                error: source,
            })?;
            let mut rows: Vec<String> = text
                .lines()
                .map(|l| l.trim_end_matches('\r'))
                .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                .map(str::to_string)
                .collect();
            if spec.sheet_header && !rows.is_empty() {
                rows.remove(0);
            }
            return Ok(Some(rows));
        }
    }
    let mut matchers = Vec::new();
    for g in &spec.globs {
        let rendered = expr(g, ctx).map_err(|e| err(format!("glob {g:?}: {e}")))?;
        if rendered.is_empty() {
            continue;
        }
        matchers.push(compile_glob(&rendered, spec.case_insensitive).map_err(err)?);
    }
    let files: Vec<ListedFile> = match tree {
        InputTree::Folder(input_dir) => {
            if !input_dir.is_dir() {
                return Err(TemplateError::Io {
                    path: input_dir.to_path_buf(),
                    error: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "input folder not found",
                    ),
                });
            }
            walk(input_dir)?
                .into_iter()
                .filter(|e| !e.is_dir)
                .map(|e| ListedFile {
                    rel: e.rel,
                    link: e.is_link,
                })
                .collect()
        }
        InputTree::Listed(files) => {
            let mut files = files.to_vec();
            files.sort_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
            files
        }
    };
    let mut inputs = Vec::new();
    for f in files {
        if !matchers.iter().any(|m| m.is_match(&f.rel)) {
            continue;
        }
        if f.link {
            skipped_links.push(f.rel);
        } else {
            inputs.push(f.rel);
        }
    }
    Ok(Some(inputs))
}

/// Where [`scan_inputs`] finds the files: a folder it walks, or a caller's listing.
#[derive(Clone, Copy)]
enum InputTree<'a> {
    Folder(&'a Path),
    Listed(&'a [ListedFile]),
}

fn resolve_outputs(
    spec: &TemplateSpec,
    plain: &BTreeMap<String, Value>,
    n_inputs: Option<usize>,
) -> Result<ResolvedOutputs, TemplateError> {
    let name = &spec.template.name;
    let bad = |what: &str, g: &str, reason: String| TemplateError::Spec {
        origin: format!("template {name}"),
        reason: format!("{what} {g:?}: {reason}"),
    };
    let mut expect = Vec::new();
    for rule in &spec.outputs.expect {
        let glob = expr(&rule.glob, plain).map_err(|e| bad("output glob", &rule.glob, e))?;
        compile_glob(&glob, false).map_err(|e| bad("output glob", &rule.glob, e))?;
        let expected = match (rule.per_input, n_inputs) {
            (true, Some(n)) => Expected::Exactly(n as u64),
            (true, None) => Expected::AtLeast(rule.min_count.unwrap_or(1)),
            (false, _) => Expected::AtLeast(rule.min_count.unwrap_or(1)),
        };
        let rendered =
            |text: &Option<String>, what: &str| -> Result<Option<String>, TemplateError> {
                text.as_ref()
                    .map(|t| expr(t, plain).map_err(|e| bad(what, t, e)))
                    .transpose()
            };
        expect.push(ResolvedOutputRule {
            glob,
            expected,
            non_empty: rule.non_empty,
            kind: rule.kind,
            matches: rendered(&rule.matches, "input glob")?,
            table: rendered(&rule.table, "table")?,
        });
    }
    let mut intermediates = Vec::new();
    for g in &spec.outputs.intermediates {
        let glob = expr(g, plain).map_err(|e| bad("intermediate glob", g, e))?;
        compile_glob(&glob, false).map_err(|e| bad("intermediate glob", g, e))?;
        intermediates.push(glob);
    }
    Ok(ResolvedOutputs {
        expect,
        validate: None,
        intermediates,
    })
}

mod resources;
mod script;

use resources::resources;
use script::assemble;
#[cfg(test)]
mod tests;
