//! What a local task sees: SLURM's variables, the expanded log file patterns, and the
//! host name SLURM would give the node.

use std::ffi::OsString;

use super::task::JobPlan;
use super::{LocalExecutor, LocalJob};

/// `%a` of a job that is no array, as SLURM writes it (NO_VAL - 1).
const NO_ARRAY_TASK: &str = "4294967294";

impl LocalExecutor {
    pub(super) fn task_env(
        &self,
        job: &LocalJob,
        plan: &JobPlan,
        this_job: u64,
        task_id: Option<u32>,
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = Vec::new();
        let mut set = |k: &str, v: String| env.push((k.to_string(), v));
        set("SLURM_JOB_ID", this_job.to_string());
        set("SLURM_JOBID", this_job.to_string());
        set("SLURM_JOB_NAME", plan.name.clone());
        set("SLURM_SUBMIT_DIR", job.submit_dir.display().to_string());
        set("SLURM_SUBMIT_HOST", self.host.clone());
        set("SLURM_JOB_PARTITION", "local".to_string());
        set("SLURM_JOB_NODELIST", self.host.clone());
        set("SLURM_NODELIST", self.host.clone());
        set("SLURMD_NODENAME", self.host.clone());
        set("SLURM_CLUSTER_NAME", "local".to_string());
        set("SLURM_JOB_NUM_NODES", "1".to_string());
        set("SLURM_NNODES", "1".to_string());
        set("SLURM_NTASKS", "1".to_string());
        set("SLURM_RESTART_COUNT", "0".to_string());
        if let Ok(user) = std::env::var("USER") {
            set("SLURM_JOB_USER", user);
        }
        if let Some(c) = plan.cpus_per_task {
            set("SLURM_CPUS_PER_TASK", c.to_string());
            set("SLURM_JOB_CPUS_PER_NODE", c.to_string());
        }
        if let Some(mb) = plan.mem_mb {
            set("SLURM_MEM_PER_NODE", mb.to_string());
        }
        if let (Some(tasks), Some(t)) = (&plan.tasks, task_id) {
            let min = tasks.first().copied().unwrap_or(0);
            let max = tasks.last().copied().unwrap_or(0);
            let step = match tasks.as_slice() {
                [a, b, ..] if tasks.windows(2).all(|w| w[1] - w[0] == b - a) => b - a,
                _ => 1,
            };
            set("SLURM_ARRAY_JOB_ID", job.job_id.to_string());
            set("SLURM_ARRAY_TASK_ID", t.to_string());
            set("SLURM_ARRAY_TASK_COUNT", tasks.len().to_string());
            set("SLURM_ARRAY_TASK_MIN", min.to_string());
            set("SLURM_ARRAY_TASK_MAX", max.to_string());
            set("SLURM_ARRAY_TASK_STEP", step.to_string());
        }
        set("HPCSTAGE_EXECUTOR", "local".to_string());
        env.extend(job.env.iter().cloned());
        env
    }
}

pub(super) struct PatternVars<'a> {
    pub(super) job_id: u64,
    pub(super) array_job_id: u64,
    pub(super) task_id: Option<u32>,
    pub(super) name: &'a str,
    pub(super) host: &'a str,
}

/// Expand SLURM's filename patterns (sbatch(1), "filename pattern"): `%%`, `%A`, `%a`,
/// `%j`, `%J`, `%N`, `%n`, `%s`, `%t`, `%u`, `%x`, with zero padding (`%4a`) for numbers.
/// Unknown patterns are kept as written.
pub(super) fn expand_pattern(pattern: &str, v: &PatternVars<'_>) -> String {
    let mut out = String::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut width = String::new();
        while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
            width.push(d);
            chars.next();
        }
        let Some(spec) = chars.next() else {
            out.push('%');
            out.push_str(&width);
            break;
        };
        let pad = |n: String| -> String {
            let w: usize = width.parse().unwrap_or(0).min(10);
            format!("{n:0>w$}")
        };
        match spec {
            '%' => out.push('%'),
            'A' => out.push_str(&pad(v.array_job_id.to_string())),
            'a' => out.push_str(&pad(v
                .task_id
                .map_or_else(|| NO_ARRAY_TASK.to_string(), |t| t.to_string()))),
            'j' => out.push_str(&pad(v.job_id.to_string())),
            'J' => out.push_str(&format!("{}.batch", pad(v.job_id.to_string()))),
            'n' | 't' => out.push_str(&pad("0".to_string())),
            's' => out.push_str("batch"),
            'N' => out.push_str(v.host),
            'u' => out.push_str(&std::env::var("USER").unwrap_or_else(|_| "unknown".into())),
            'x' => out.push_str(v.name),
            other => {
                out.push('%');
                out.push_str(&width);
                out.push(other);
            }
        }
    }
    out
}

/// This machine's name up to the first dot, as SLURM names nodes.
pub(super) fn short_hostname() -> String {
    let name = match nix::unistd::gethostname() {
        Ok(name) => name.to_string_lossy().into_owned(),
        Err(_) => std::env::var_os("HOSTNAME")
            .map(OsString::into_string)
            .and_then(Result::ok)
            .unwrap_or_else(|| "localhost".to_string()),
    };
    name.split('.').next().unwrap_or("localhost").to_string()
}
