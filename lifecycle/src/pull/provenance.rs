//! The provenance of pulled results: `run.json` for programs, `README.md` for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use hpcstage_template::Rendered;
use jiff::Timestamp;
use serde::Serialize;

use super::validate::{summarize, Validation};
use crate::run::{JobFacts, JobRole, RunRecord, RunView};

/// Machine-readable provenance, `run.json` in the results folder.
#[derive(Debug, Clone, Serialize)]
pub struct Provenance<'a> {
    pub run: &'a RunRecord,
    pub compute_job_id: String,
    pub compute_job: &'a JobFacts,
    pub array_size: Option<u32>,
    /// Compute jobs before the last one (`hpcstage retry`): the outputs of their tasks
    /// that completed are part of these results.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub earlier_compute_jobs: Vec<EarlierJob>,
    pub model: Option<ModelInfo>,
    /// What each `path` parameter named, hashed (a reference genome, a sample sheet).
    pub param_inputs: Vec<crate::digests::ParamInput>,
    pub gpus: Vec<String>,
    pub validation: &'a Validation,
    /// Pulled with `--allow-partial` although the job failed or outputs did not validate.
    pub partial: bool,
    /// What a partial pull lacks: each failed output rule, and the inputs without an
    /// output where that can be told.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    pub timed_out_warning: bool,
    pub pulled_at: Timestamp,
    pub pulled_by: String,
    pub pulled_on: String,
    pub hpcstage_version: &'static str,
}

pub use crate::digests::ModelInfo;

/// A compute job of the run before a retry, as last observed.
#[derive(Debug, Clone, Serialize)]
pub struct EarlierJob {
    pub job_id: String,
    pub state: Option<String>,
    pub exit_code: Option<String>,
    /// Its array tasks and their states.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tasks: BTreeMap<String, String>,
}

/// Every compute job of the run but the last.
pub(super) fn earlier_compute_jobs(view: &RunView) -> Vec<EarlierJob> {
    let compute: Vec<_> = view
        .jobs
        .iter()
        .filter(|j| j.role == JobRole::Compute)
        .collect();
    compute[..compute.len().saturating_sub(1)]
        .iter()
        .map(|j| EarlierJob {
            job_id: j.job_id.clone(),
            state: j.facts.as_ref().map(|f| f.state.clone()),
            exit_code: j.facts.as_ref().and_then(|f| f.exit_code.clone()),
            tasks: j
                .facts
                .as_ref()
                .map(|f| f.tasks.clone())
                .unwrap_or_default(),
        })
        .collect()
}

/// One line on the model's own metadata (`qc/model.json`, written by the ONNX predictor).
fn model_summary(m: &serde_json::Value) -> String {
    let text = |k: &str| m[k].as_str().unwrap_or("").to_string();
    let io = |k: &str| {
        m[k].as_array()
            .into_iter()
            .flatten()
            .map(|v| format!("{} {}", v["name"].as_str().unwrap_or("?"), v["shape"]))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let opset = m["opset"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| format!("{} {}", o["domain"].as_str().unwrap_or("?"), o["version"]))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "ONNX, producer {} {}, opset {opset}; inputs: {}; outputs: {}",
        text("producer_name"),
        text("producer_version"),
        io("inputs"),
        io("outputs")
    )
}

pub(super) fn gpu_lines(run_dir: &Path) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(run_dir.join("qc"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("gpu"))
        })
        .collect();
    files.sort();
    let mut lines: Vec<String> = files
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| t.lines().map(|l| l.trim().to_string()).collect::<Vec<_>>())
        .filter(|l| !l.is_empty())
        .collect();
    lines.sort();
    lines.dedup();
    lines
}

pub(super) fn readme_text(p: &Provenance<'_>, rendered: &Rendered) -> String {
    let r = p.run;
    let j = p.compute_job;
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".into());
    let mut t = String::new();
    if p.partial {
        let _ = writeln!(t, "# PARTIAL {} results: run {}\n", r.workflow, r.id);
        let _ = writeln!(
            t,
            "PARTIAL outputs of a `{}` job (pulled with `--allow-partial`): the job failed or \
             not every expected output validated. What is here was copied from scratch with \
             every file verified; check it with `sha256sum -c MANIFEST.sha256`.\n",
            r.template
        );
        let _ = writeln!(t, "## Missing\n");
        for m in &p.missing {
            let _ = writeln!(t, "- {m}");
        }
        let _ = writeln!(t);
    } else {
        let _ = writeln!(t, "# {} results: run {}\n", r.workflow, r.id);
        let _ = writeln!(
            t,
            "Validated outputs of a `{}` job, copied from scratch with every file verified. \
             Check them with `sha256sum -c MANIFEST.sha256`; `run.json` holds the same facts for programs.\n",
            r.template
        );
    }
    let _ = writeln!(t, "## Workflow\n");
    let _ = writeln!(
        t,
        "- template: {} version {}",
        r.template, r.template_version
    );
    let _ = writeln!(
        t,
        "- template hash (sha256 of spec and script): {}",
        r.template_hash
    );
    let _ = writeln!(t, "- hpcstage: {}", p.hpcstage_version);
    let _ = writeln!(t, "\n## Parameters\n");
    let params: BTreeMap<&String, String> = rendered
        .params
        .iter()
        .map(|(k, v)| {
            (
                k,
                serde_json::to_value(v)
                    .ok()
                    .and_then(|v| v.get("value").map(|x| x.to_string()))
                    .unwrap_or_default(),
            )
        })
        .collect();
    for (k, v) in params {
        let _ = writeln!(t, "- {k} = {v}");
    }
    let _ = writeln!(t, "\n## Input\n");
    let _ = writeln!(
        t,
        "- dataset: {} (NAS: {})",
        r.input.stage_id, r.input.source
    );
    let _ = writeln!(t, "- staged copy: {}", r.input.path.display());
    let _ = writeln!(t, "- manifest digest: {}", r.input.manifest_digest);
    if let Some(m) = &p.model {
        let _ = writeln!(t, "\n## Model\n");
        let _ = writeln!(t, "- path: {}", m.path);
        for d in &m.sha256 {
            let _ = writeln!(t, "- sha256: {}  {}", d.sha256, d.path);
        }
        if let Some(meta) = &m.metadata {
            let _ = writeln!(t, "- model: {} (qc/model.json)", model_summary(meta));
        }
    }
    if !p.param_inputs.is_empty() {
        let _ = writeln!(t, "\n## Files named by parameters\n");
        for i in &p.param_inputs {
            match &i.resolved {
                None => {
                    let _ = writeln!(t, "- {} = {}: not found when pulled", i.param, i.value);
                }
                Some(at) => {
                    let _ = writeln!(t, "- {} = {} ({}):", i.param, i.value, at.display());
                    for d in &i.files {
                        let _ = writeln!(t, "  - sha256: {}  {}", d.sha256, d.path);
                    }
                    for e in &i.unreadable {
                        let _ = writeln!(t, "  - unreadable: {e}");
                    }
                }
            }
        }
    }
    let _ = writeln!(t, "\n## Job\n");
    let _ = writeln!(t, "- executor: {:?}", r.executor);
    let _ = writeln!(t, "- job id: {}", p.compute_job_id);
    if let Some(n) = p.array_size {
        let _ = writeln!(t, "- array tasks: {n}");
    }
    for e in &p.earlier_compute_jobs {
        let done: Vec<&str> = e
            .tasks
            .iter()
            .filter(|(_, s)| s.as_str() == "COMPLETED")
            .map(|(k, _)| k.as_str())
            .collect();
        let _ = writeln!(
            t,
            "- retried after job {} ({}{}){}",
            e.job_id,
            e.state.as_deref().unwrap_or("state unknown"),
            e.exit_code
                .as_deref()
                .map(|c| format!(" exit {c}"))
                .unwrap_or_default(),
            if done.is_empty() {
                String::new()
            } else {
                format!(
                    ": outputs of its completed tasks {} are included",
                    done.join(", ")
                )
            }
        );
    }
    let _ = writeln!(t, "- state: {}", j.state);
    let _ = writeln!(
        t,
        "- exit code: {} (derived {})",
        opt(&j.exit_code),
        opt(&j.derived_exit_code)
    );
    let _ = writeln!(t, "- nodes: {}", opt(&j.nodes));
    let _ = writeln!(
        t,
        "- partition: {}, account: {}",
        opt(&j.partition),
        opt(&j.account)
    );
    let _ = writeln!(t, "- allocated TRES: {}", opt(&j.alloc_tres));
    let _ = writeln!(
        t,
        "- GPUs allocated: {}; model and driver (nvidia-smi in the job): {}",
        j.gpus.map_or("unknown".to_string(), |n| n.to_string()),
        if p.gpus.is_empty() {
            "not recorded".to_string()
        } else {
            p.gpus.join("; ")
        }
    );
    let _ = writeln!(
        t,
        "- start: {}, end: {}, elapsed: {} s",
        opt(&j.start),
        opt(&j.end),
        j.elapsed_secs.map_or("unknown".into(), |s| s.to_string())
    );
    let _ = writeln!(
        t,
        "- restarts: {}",
        j.restarts.map_or("unknown".into(), |n| n.to_string())
    );
    if p.timed_out_warning {
        let _ = writeln!(
            t,
            "- warning: the job received its time-limit signal (USR1) before it ended"
        );
    }
    let _ = writeln!(t, "\n## Provenance\n");
    let _ = writeln!(
        t,
        "- submitted by {} on {} at {}",
        r.owner, r.host, r.created_at
    );
    let _ = writeln!(
        t,
        "- pulled by {} on {} at {}",
        p.pulled_by, p.pulled_on, p.pulled_at
    );
    let _ = writeln!(
        t,
        "- validation: {}",
        if p.validation.ok {
            "all expected outputs present".to_string()
        } else {
            format!("PARTIAL: {}", summarize(p.validation))
        }
    );
    t
}
