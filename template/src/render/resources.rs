//! The `sbatch` options of a rendered job: the spec's resource expressions evaluated with
//! the parameters, the command line's overrides on top, checked, and the per-task array.

use std::collections::BTreeMap;

use minijinja::value::Value;

use super::{expr, ContextPaths, RenderContext, LOG_DIR};
use crate::check;
use crate::spec::{ArrayRule, ResourceExpr, TemplateSpec};
use crate::{is_simple_name, TemplateError};
use hpcstage_slurm::duration::SlurmDuration;
use hpcstage_slurm::sbatch::{ArraySpec, SbatchArgs, SignalSpec, DEFAULT_SIGNAL_GRACE};

/// Build the `sbatch` options from spec expressions, parameters and overrides.
pub(super) fn resources(
    spec: &TemplateSpec,
    ctx: &RenderContext,
    paths: &ContextPaths,
    plain: &BTreeMap<String, Value>,
    inputs: Option<&Vec<String>>,
) -> Result<(SbatchArgs, Option<u64>), TemplateError> {
    let r = &spec.resources;
    let o = &ctx.resources;
    let field = |name: &'static str,
                 from_spec: Option<String>,
                 over: &Option<String>|
     -> Result<Option<String>, TemplateError> {
        let text = match (over, from_spec) {
            (Some(v), _) => v.trim().to_string(),
            (None, Some(t)) => expr(&t, plain).map_err(|reason| TemplateError::Resource {
                field: name,
                value: t.clone(),
                reason,
            })?,
            (None, None) => return Ok(None),
        };
        if text.contains(['\n', '\r', '\0']) {
            return Err(TemplateError::Resource {
                field: name,
                value: text,
                reason: "must be one line".to_string(),
            });
        }
        Ok((!text.is_empty()).then_some(text))
    };
    let checked =
        |name: &'static str, value: Option<String>, f: fn(&str) -> Result<String, String>| {
            value
                .map(|v| {
                    f(&v).map_err(|reason| TemplateError::Resource {
                        field: name,
                        value: v.clone(),
                        reason,
                    })
                })
                .transpose()
        };
    let text_of = |e: &Option<ResourceExpr>| e.as_ref().map(ResourceExpr::as_text);

    let mut args = SbatchArgs {
        partition: checked(
            "partition",
            field("partition", r.partition.clone(), &o.partition)?,
            check::name_list,
        )?,
        account: checked(
            "account",
            field("account", r.account.clone(), &o.account)?,
            check::name_list,
        )?,
        qos: checked(
            "qos",
            field("qos", r.qos.clone(), &o.qos)?,
            check::name_list,
        )?,
        gres: checked("gres", field("gres", r.gres.clone(), &o.gres)?, check::gres)?,
        mem: checked("mem", field("mem", r.mem.clone(), &o.mem)?, check::mem)?,
        constraint: checked(
            "constraint",
            field("constraint", r.constraint.clone(), &o.constraint)?,
            check::constraint,
        )?,
        ..SbatchArgs::default()
    };
    if let Some(v) = field("cpus_per_task", text_of(&r.cpus_per_task), &o.cpus_per_task)? {
        args.cpus_per_task = Some(check::cpus(&v).map_err(|reason| TemplateError::Resource {
            field: "cpus_per_task",
            value: v.clone(),
            reason,
        })?);
    }
    if let Some(v) = field("time", r.time.clone(), &o.time)? {
        args.time = Some(check::time(&v).map_err(|reason| TemplateError::Resource {
            field: "time",
            value: v.clone(),
            reason,
        })?);
    }

    // The array: an explicit range, or one task per `per_task` inputs.
    let mut per_task = None;
    let array_text =
        match &r.array {
            Some(ArrayRule::Range(t)) => field("array", Some(t.clone()), &None)?,
            Some(ArrayRule::PerInput(rule)) => {
                let per = field("array.per_task", Some(rule.per_task.as_text()), &None)?
                    .unwrap_or_default();
                let per: u64 = per.parse().ok().filter(|&n| n >= 1).ok_or_else(|| {
                    TemplateError::Resource {
                        field: "array.per_task",
                        value: per.clone(),
                        reason: "expected a whole number of inputs per task, at least 1"
                            .to_string(),
                    }
                })?;
                per_task = Some(per);
                let max_parallel = match &rule.max_parallel {
                    Some(e) => {
                        let t = field("array.max_parallel", Some(e.as_text()), &None)?
                            .unwrap_or_default();
                        if t.is_empty() {
                            None
                        } else {
                            Some(t.parse::<u32>().map_err(|_| TemplateError::Resource {
                                field: "array.max_parallel",
                                value: t.clone(),
                                reason: "expected a whole number (0 for no limit)".to_string(),
                            })?)
                        }
                    }
                    None => None,
                };
                match (inputs, &o.array) {
                    (_, Some(_)) => None,
                    (None, None) => {
                        return Err(TemplateError::InputsUnknown {
                            template: spec.template.name.clone(),
                        })
                    }
                    (Some(list), None) => {
                        let n = (list.len() as u64).div_ceil(per);
                        let n = u32::try_from(n).map_err(|_| TemplateError::Resource {
                            field: "array",
                            value: n.to_string(),
                            reason: "too many array tasks".to_string(),
                        })?;
                        ArraySpec::zero_based(n, max_parallel).map(|a| a.to_string())
                    }
                }
            }
            None => None,
        };
    let array_text = match &o.array {
        Some(v) => field("array", None, &Some(v.clone()))?,
        None => array_text,
    };
    if let Some(t) = array_text {
        let array = check::array(&t).map_err(|reason| TemplateError::Resource {
            field: "array",
            value: t.clone(),
            reason,
        })?;
        // An `--array` override keeps `per_task`: a task past the last input would run
        // with no inputs at all.
        if let (Some(per), Some(list), Some(_)) = (per_task, inputs, &o.array) {
            let n_tasks = (list.len() as u64).div_ceil(per);
            if let Some(bad) = array.tasks().iter().find(|&&t| u64::from(t) >= n_tasks) {
                return Err(TemplateError::Resource {
                    field: "array",
                    value: t.clone(),
                    reason: format!(
                        "task {bad} has no inputs: {} inputs at {per} per task make tasks 0-{}",
                        list.len(),
                        n_tasks.saturating_sub(1)
                    ),
                });
            }
        }
        args.array = Some(array);
    }

    // In-job safety: USR1 to the batch shell `grace` before the limit.
    let grace_text = field("signal_grace", r.signal_grace.clone(), &o.signal_grace)?;
    let mut grace = match grace_text {
        None => DEFAULT_SIGNAL_GRACE,
        Some(t) => SlurmDuration::parse(&t).map_err(|e| TemplateError::Resource {
            field: "signal_grace",
            value: t.clone(),
            reason: e.to_string(),
        })?,
    };
    if let Some(limit) = args.time {
        // A grace as long as the limit would signal at start; keep at most half of it.
        if grace.as_secs() * 2 > limit.as_secs() {
            grace = SlurmDuration::from_secs(limit.as_secs() / 2);
        }
    }
    if grace.as_secs() > 0 {
        args.signal = Some(SignalSpec::usr1_before(grace));
    }

    let job_name = ctx
        .job_name
        .clone()
        .unwrap_or_else(|| spec.template.name.clone());
    if !is_simple_name(&job_name) {
        return Err(TemplateError::Context {
            what: "job name",
            value: job_name,
            reason: "use letters, digits, '_', '-' and '.'".to_string(),
        });
    }
    args.job_name = Some(job_name);
    let logs = format!("{}/{LOG_DIR}", paths.run_dir.replace('%', "%%"));
    let pattern = if args.array.is_some() {
        "%x-%A_%a"
    } else {
        "%x-%j"
    };
    args.chdir = Some(paths.run_dir.clone());
    args.output = Some(format!("{logs}/{pattern}.out"));
    args.error = Some(format!("{logs}/{pattern}.err"));
    // Requeued jobs (NODE_FAIL, preemption) keep their earlier log lines.
    args.open_mode = Some("append".to_string());
    args.comment = Some(ctx.token.clone());
    Ok((args, per_task))
}
