//! The provenance of pulled results: `run.json` for programs, `README.md` for people.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hpcstage_template::Rendered;
use jiff::Timestamp;
use serde::Serialize;

use super::validate::{summarize, Validation};
use crate::error::{Error, Result};
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

/// The provenance README's layout (people read it; `run.json` is for programs).
const README_TEMPLATE: &str = include_str!("README.md.j2");

/// `README.md` of a results folder, rendered from [`README_TEMPLATE`] with the facts of
/// `run.json` and a few lines worked out here.
pub(super) fn readme_text(p: &Provenance<'_>, params: &BTreeMap<String, String>) -> Result<String> {
    let retries: Vec<String> = p.earlier_compute_jobs.iter().map(retried_line).collect();
    let validation = if p.validation.ok {
        "all expected outputs present".to_string()
    } else {
        format!("PARTIAL: {}", summarize(p.validation))
    };
    let model_summary = p
        .model
        .as_ref()
        .and_then(|m| m.metadata.as_ref())
        .map(model_summary);
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(true);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.add_filter("or_unknown", |v: minijinja::Value| {
        if v.is_none() || v.is_undefined() {
            "unknown".to_string()
        } else {
            v.to_string()
        }
    });
    let context = minijinja::context! {
        p => minijinja::Value::from_serialize(p),
        params => params.iter().collect::<Vec<_>>(),
        retries => retries,
        validation => validation,
        model_summary => model_summary,
        executor => p.run.executor.to_string(),
    };
    env.render_str(README_TEMPLATE, context)
        .map_err(|e| Error::Record {
            path: PathBuf::from("lifecycle/src/pull/README.md.j2"),
            reason: format!(
                "the provenance README template does not render ({e:#}); please report this"
            ),
        })
}

/// Each parameter of the run and its value as JSON (`"a"`, `0.5`), by name.
pub(super) fn param_values(rendered: &Rendered) -> BTreeMap<String, String> {
    rendered
        .params
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                serde_json::to_value(v)
                    .ok()
                    .and_then(|v| v.get("value").map(|x| x.to_string()))
                    .unwrap_or_default(),
            )
        })
        .collect()
}

/// `retried after job 41 (FAILED exit 1:0): outputs of its completed tasks 0, 2 are included`.
fn retried_line(e: &EarlierJob) -> String {
    let done: Vec<&str> = e
        .tasks
        .iter()
        .filter(|(_, s)| s.as_str() == "COMPLETED")
        .map(|(k, _)| k.as_str())
        .collect();
    format!(
        "retried after job {} ({}{}){}",
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
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digests::{FileDigest, ParamInput};
    use crate::run::JobFacts;
    use crate::testutil::World;

    fn fixture(world: &World, partial: bool) -> (RunRecord, JobFacts, Validation) {
        let run = world.run("P", "r1");
        let facts = JobFacts {
            state: "COMPLETED".into(),
            exit_code: Some("0:0".into()),
            nodes: Some("node1".into()),
            gpus: Some(1),
            restarts: Some(0),
            elapsed_secs: Some(0),
            ..JobFacts::default()
        };
        let validation = Validation {
            checks: Vec::new(),
            command: None,
            ok: !partial,
        };
        (run, facts, validation)
    }

    /// Every section in order, the executor in users' words, unknowns said as such.
    #[test]
    fn the_readme_tells_every_fact_in_its_section_and_the_executor_as_users_know_it() {
        let world = World::new();
        for partial in [false, true] {
            let (run, facts, validation) = fixture(&world, partial);
            let p = Provenance {
                run: &run,
                compute_job_id: "42".into(),
                compute_job: &facts,
                array_size: partial.then_some(3),
                earlier_compute_jobs: if partial { vec![EarlierJob { job_id: "41".into(), state: Some("FAILED".into()), exit_code: Some("1:0".into()), tasks: [("0".to_string(), "COMPLETED".to_string()), ("1".into(), "FAILED".into())].into() }] } else { vec![] },
                model: partial.then(|| ModelInfo { path: "/m.onnx".into(), sha256: vec![FileDigest { path: "/m.onnx".into(), sha256: "ab".into() }], metadata: Some(serde_json::json!({"producer_name": "torch", "producer_version": "2", "opset": [{"domain": "", "version": 17}], "inputs": [{"name": "x", "shape": [1, 3]}], "outputs": []})) }),
                param_inputs: if partial { vec![ParamInput { param: "ref".into(), value: "g.fa".into(), resolved: None, files: vec![], unreadable: vec![] }, ParamInput { param: "sheet".into(), value: "s.csv".into(), resolved: Some("/d/s.csv".into()), files: vec![FileDigest { path: "/d/s.csv".into(), sha256: "cd".into() }], unreadable: vec!["/d/x: denied".into()] }] } else { vec![] },
                gpus: if partial { vec!["A100".into(), "driver 550".into()] } else { vec![] },
                validation: &validation,
                partial,
                missing: if partial { vec!["masks/*.tif: 1 of 2".into()] } else { vec![] },
                timed_out_warning: partial,
                pulled_at: jiff::Timestamp::now(),
                pulled_by: "bob".into(),
                pulled_on: "node1".into(),
                hpcstage_version: "0.1.0",
            };
            let params: BTreeMap<String, String> = [
                ("a".to_string(), "\"x\"".to_string()),
                ("b".into(), "0.5".into()),
            ]
            .into();
            let text = readme_text(&p, &params).unwrap();
            let mut expected = vec![
                if partial {
                    "# PARTIAL segmentation results: run r1"
                } else {
                    "# segmentation results: run r1"
                },
                "## Workflow",
                "- template: unet-seg version 1",
                "## Parameters",
                "- a = \"x\"",
                "- b = 0.5",
                "## Input",
                "- dataset: P/d (NAS: ",
                "## Job",
                "- executor: local",
                "- job id: 42",
                "- exit code: 0:0 (derived unknown)",
                "- restarts: 0",
                "## Provenance",
                "- submitted by alice on login1 at ",
            ];
            if partial {
                expected.extend([
                    "## Missing",
                    "- masks/*.tif: 1 of 2",
                    "## Model",
                    "- sha256: ab  /m.onnx",
                    "- model: ONNX, producer torch 2, opset  17; inputs: x [1,3]; outputs:  (qc/model.json)",
                    "- ref = g.fa: not found when pulled",
                    "- sheet = s.csv (/d/s.csv):",
                    "  - sha256: cd  /d/s.csv",
                    "  - unreadable: /d/x: denied",
                    "- array tasks: 3",
                    "- retried after job 41 (FAILED exit 1:0): outputs of its completed tasks 0 are included",
                    "- GPUs allocated: 1; model and driver (nvidia-smi in the job): A100; driver 550",
                    "- warning: the job received its time-limit signal (USR1) before it ended",
                ]);
            } else {
                assert!(
                    !text.contains("## Model") && !text.contains("array tasks"),
                    "{text}"
                );
                assert!(
                    text.contains("(nvidia-smi in the job): not recorded\n"),
                    "{text}"
                );
            }
            for line in expected {
                assert!(
                    text.lines().any(|l| l.starts_with(line)),
                    "README lacks {line:?}:\n{text}"
                );
            }
            assert!(!text.contains("\n\n\n"), "{text}");
            assert!(
                text.ends_with("validation: PARTIAL: \n") == partial,
                "{text}"
            );
        }
    }
}
