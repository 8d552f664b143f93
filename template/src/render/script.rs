//! The job script in its fixed order: shebang, directives, the template's name and hash,
//! strict mode, the run facts as quoted variables, the USR1 trap and helpers, the body.

use std::fmt::Write as _;

use super::*;

/// The in-job helpers every script gets. Plain text, no values: those are set above it.
const HELPERS: &str = r#"# In-job safety: sbatch --signal=B:USR1@<grace> makes SLURM send USR1 to this shell
# <grace> seconds before the time limit. The trap records it in the run folder, so that
# `hpcstage pull` reports TIMEOUT with partial outputs instead of a bare kill, and lets the
# current step go on until SLURM stops the job.
hpcstage_on_usr1() {
    local marker="$HPCSTAGE_RUN_DIR/.hpcstage/signal-USR1"
    printf '%s job=%s array_job=%s task=%s host=%s: time limit imminent\n' \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "${SLURM_JOB_ID:-}" "${SLURM_ARRAY_JOB_ID:-}" \
        "${SLURM_ARRAY_TASK_ID:-}" "${HOSTNAME:-}" >>"$marker" || true
    sync "$marker" 2>/dev/null || true
    echo "hpcstage: USR1 received, the time limit is near" >&2
}
trap hpcstage_on_usr1 USR1

# hpcstage_run CMD [ARG...]: run one long step. Bash runs a trap only once the foreground
# command has finished, which would be too late; a step started in the background and
# awaited lets the trap run at once while the step goes on.
hpcstage_run() {
    "$@" &
    local pid=$! rc
    while :; do
        rc=0
        wait "$pid" || rc=$?
        # Above 128 with the step still alive: a trapped signal interrupted the wait.
        if ((rc > 128)) && kill -0 "$pid" 2>/dev/null; then
            continue
        fi
        return "$rc"
    done
}

# hpcstage_task_inputs: this array task's share of the input list into the array
# TASK_INPUTS (paths relative to $HPCSTAGE_INPUT_DIR, or sample-sheet rows). Task N takes
# items N*per_task .. N*per_task+per_task-1, so a re-run of single tasks (--array=3,7)
# processes the same items.
hpcstage_task_inputs() {
    local -a all=()
    if [[ ! -r $HPCSTAGE_INPUTS ]]; then
        echo "hpcstage: input list $HPCSTAGE_INPUTS is missing" >&2
        return 1
    fi
    mapfile -d '' -t all <"$HPCSTAGE_INPUTS"
    local task=${SLURM_ARRAY_TASK_ID:-0}
    TASK_INPUTS=("${all[@]:task*HPCSTAGE_PER_TASK:HPCSTAGE_PER_TASK}")
}
"#;

/// The start-up check of a template whose tools need Python modules ([tools]
/// python_modules): pairs of import name and what to install follow it, as
/// HPCSTAGE_PYTHON_MODULES.
const REQUIRE_PYTHON: &str = r#"
# hpcstage_require_python PYTHON: stop the job, before it reads any input, when PYTHON is
# missing or cannot import a module the template's tools need (every missing one named).
hpcstage_require_python() {
    local py=$1
    if ! command -v "$py" >/dev/null 2>&1; then
        echo "hpcstage: no Python '$py' on $(hostname): load its module or activate its environment before submitting (sbatch passes the environment on), or give the template's python parameter the interpreter's path" >&2
        exit 1
    fi
    "$py" - "${HPCSTAGE_PYTHON_MODULES[@]}" <<'PY' || exit 1
import importlib, sys
args = sys.argv[1:]
missing = []
for name, install in zip(args[::2], args[1::2]):
    try:
        importlib.import_module(name)
    except Exception as e:
        missing.append("%s (install %s; %s: %s)" % (name, install, type(e).__name__, e))
if missing:
    sys.stderr.write("hpcstage: missing Python package%s for this job: %s. Python: %s. "
                     "Install them in that environment, or point the template's python parameter "
                     "at one that has them.\n" % ("s" if len(missing) > 1 else "", "; ".join(missing), sys.executable))
    sys.exit(1)
PY
}
"#;

#[allow(clippy::too_many_arguments)]
pub(super) fn assemble(
    spec: &TemplateSpec,
    ctx: &RenderContext,
    paths: &ContextPaths,
    sbatch: &SbatchArgs,
    per_task: Option<u64>,
    inputs: Option<&Vec<String>>,
    hash: &str,
    body: &str,
) -> Result<String, TemplateError> {
    let q = |s: &str| {
        quote(s).map_err(|e| TemplateError::Context {
            what: "run value",
            value: s.to_string(),
            reason: e.to_string(),
        })
    };
    let per_task = per_task.unwrap_or_else(|| inputs.map_or(1, |l| l.len().max(1) as u64));
    let mut s = String::new();
    s.push_str("#!/bin/bash\n");
    s.push_str(&sbatch.directives());
    let _ = writeln!(
        s,
        "#\n# Job script of run {run}, rendered by hpcstage from template {name} {version}.\n\
         # Template sha256: {hash}\n\
         # Change the template, not this file: every run renders it anew.\n",
        run = ctx.run_id,
        name = spec.template.name,
        version = spec.template.version,
    );
    s.push_str("set -euo pipefail\n\n");
    s.push_str("# Run facts, fixed at render time.\n");
    let _ = writeln!(s, "HPCSTAGE_RUN_ID={}", q(&ctx.run_id)?);
    let _ = writeln!(s, "HPCSTAGE_RUN_DIR={}", q(&paths.run_dir)?);
    let _ = writeln!(s, "HPCSTAGE_INPUT_DIR={}", q(&paths.input_dir)?);
    let _ = writeln!(
        s,
        "HPCSTAGE_INPUTS={}",
        q(&format!("{}/{INPUTS_FILE}", paths.run_dir))?
    );
    let _ = writeln!(s, "HPCSTAGE_PER_TASK={per_task}");
    let _ = writeln!(s, "HPCSTAGE_BIN={}", q(&paths.hpcstage)?);
    s.push_str(
        "export HPCSTAGE_RUN_ID HPCSTAGE_RUN_DIR HPCSTAGE_INPUT_DIR HPCSTAGE_INPUTS \
         HPCSTAGE_PER_TASK HPCSTAGE_BIN\n",
    );
    s.push_str("cd \"$HPCSTAGE_RUN_DIR\"\nmkdir -p .hpcstage logs\n\n");
    s.push_str(HELPERS);
    if !spec.tools.python_modules.is_empty() {
        s.push_str(REQUIRE_PYTHON);
        let words: Vec<String> = spec
            .tools
            .python_modules
            .iter()
            .flat_map(|(module, install)| [q(module), q(install)])
            .collect::<Result<_, _>>()?;
        let _ = writeln!(s, "HPCSTAGE_PYTHON_MODULES=({})", words.join(" "));
    }
    let _ = writeln!(s, "\n# ---- template {} ----", spec.template.name);
    s.push_str(body);
    if !body.ends_with('\n') {
        s.push('\n');
    }
    Ok(s)
}
