//! `hpcstage submit` and `hpcstage stage-and-run`: render a template over a staged
//! dataset into a new run folder and submit compute job → pull-back job. Both return at
//! once with the job ids; with the local executor the chain runs in a detached process
//! (or in the foreground with `--wait`).

use std::path::Path;

use anyhow::{bail, Context, Result};
use hpcstage_lifecycle::backend::{local_state_dir, Backend};
use hpcstage_lifecycle::chain::{
    prepare, run_local as run_local_chain, submit, Chain, SubmitSettings,
};
use hpcstage_lifecycle::run::{Executor, RunStore};
use hpcstage_slurm::client::SlurmClient;
use hpcstage_slurm::local::LocalExecutor;
use hpcstage_staging::ledger::Ledger;
use hpcstage_staging::record::{read_json, StageRecord};
use hpcstage_staging::storage::{self, Storage};
use hpcstage_staging::walk::{Filter, Kind};
use hpcstage_template::{InputListing, ListedFile, RenderContext, Template, TemplateError};

use super::ExitStatus;
use crate::args::{ExecutorArg, RunArgs, StageAndRunArgs, StageArgs, SubmitArgs};
use crate::config::{absolute, parse_location, Settings};
use crate::output;

/// The executor to use: SLURM when asked or when `sbatch` is found.
pub(crate) fn executor(settings: &Settings, arg: ExecutorArg) -> Result<Executor> {
    let choice = match arg {
        ExecutorArg::Auto => settings.slurm.executor.as_str(),
        ExecutorArg::Slurm => "slurm",
        ExecutorArg::Local => "local",
    };
    let slurm_here = SlurmClient::new(settings.client.clone()).available();
    Ok(match choice {
        "slurm" if !slurm_here => bail!(
            "the SLURM executor was asked for but `sbatch` is not on PATH; use --executor local to run here"
        ),
        "slurm" => Executor::Slurm,
        "local" => Executor::Local,
        _ if slurm_here => Executor::Slurm,
        _ => {
            output::note("no sbatch found: using the local executor (jobs run with bash on this machine)");
            Executor::Local
        }
    })
}

/// Finds a staged dataset by id (`<project>/<dataset>`) or by its folder.
pub(crate) fn find_stage(settings: &Settings, input: &str) -> Result<StageRecord> {
    let as_path = Path::new(input);
    if as_path.is_dir() {
        let marker = absolute(as_path)?.join(".hpcstage/stage.json");
        return read_json(&marker).with_context(|| {
            format!(
                "{input} is not a completely staged dataset (no {}); stage it with `hpcstage stage`",
                marker.display()
            )
        });
    }
    let ledger = Ledger::open(&settings.state_dir)?;
    let mut matches: Vec<StageRecord> = ledger
        .stages()?
        .into_iter()
        .filter_map(|r| r.ok())
        .filter(|r| r.id == input || r.dataset == input)
        .collect();
    matches.sort_by_key(|r| r.staged_at);
    match matches.pop() {
        Some(r) => Ok(r),
        None => bail!(
            "no staged dataset {input:?} in {} (give <project>/<dataset> as `hpcstage status` lists it, or a staged folder)",
            settings.state_dir.display()
        ),
    }
}

pub(crate) fn run_submit(settings: &Settings, args: &SubmitArgs) -> Result<ExitStatus> {
    let stage = find_stage(settings, &args.input)?;
    launch(settings, &args.template, &stage, &args.run)
}

pub(crate) fn run_stage_and_run(settings: &Settings, args: &StageAndRunArgs) -> Result<ExitStatus> {
    if args.shards.is_some() && args.stage_in != crate::args::StageIn::Job {
        bail!("--shards needs --stage-in job: the shards are copied by jobs on the transfer partition, e.g. `hpcstage stage-and-run SRC TEMPLATE --stage-in job --shards 4`");
    }
    // Fail on a bad template or parameter before copying anything.
    let template = super::template::store(settings).get(&args.template)?;
    let job = args.stage_in == crate::args::StageIn::Job;
    let source = precheck(settings, &template, &args.source, &args.run, job)?;
    if job {
        return stage_in_job(settings, args);
    }

    let stage_args = StageArgs {
        source: args.source.clone(),
        dest: None,
        project: args.project.clone(),
        dataset: args.dataset.clone(),
        allow_raw_area: false,
        shards: crate::args::ShardArgs::default(),
        copy: crate::args::CopyArgs {
            dry_run: false,
            verify: false,
            include: Vec::new(),
            exclude: Vec::new(),
            parallel: crate::args::ParallelArgs {
                jobs: None,
                ssh_sessions: None,
            },
            json: args.run.json,
        },
    };
    let (status, record) =
        super::stage::stage_quietly(settings, &stage_args, source, !args.run.json)?;
    let Some(record) = record else {
        output::error("staging failed; nothing was submitted");
        return Ok(status);
    };
    launch(settings, &args.template, &record, &args.run)
}

/// Renders the job in memory over the NAS copy of the dataset: a parameter of the wrong
/// type, an unknown parameter, a bad resource or an empty input list fails here, before
/// anything is staged, and not after a long copy. The inputs are listed through the
/// source's storage, whatever kind it is; returns that storage for the stage to use.
///
/// A source that cannot be reached or listed leaves the inputs unknown, and only the
/// parameters are checked: staging reports it (on this node, with the storage's own
/// error, at once; with `--stage-in job`, from the transfer node, which may reach a NAS
/// this node does not).
fn precheck(
    settings: &Settings,
    template: &Template,
    source: &Path,
    args: &RunArgs,
    in_job: bool,
) -> Result<Option<Box<dyn Storage>>> {
    let params = super::template::params(&args.job.params)?;
    let location = parse_location(source)?;
    // The stage below connects with these same options (no --ssh-sessions here).
    let ssh = super::ssh_options(
        settings,
        &crate::args::ParallelArgs {
            jobs: None,
            ssh_sessions: None,
        },
    );
    let store = match storage::open(&location, &ssh, &settings.s3) {
        Ok(store) => Some(store),
        Err(_) if in_job => None,
        Err(e) => return Err(e.into()),
    };
    let exe = std::env::current_exe().context("cannot find the hpcstage executable")?;
    let run_dir = std::env::temp_dir().join("hpcstage-precheck");
    // The job reads the staged copy, a folder of the compute node: where the source is
    // not a folder of this machine, a stand-in folder takes its place in the render.
    let input_dir = store
        .as_deref()
        .and_then(Storage::local_root)
        .map_or_else(|| run_dir.join("input"), Path::to_path_buf);
    let mut ctx = RenderContext::new(&run_dir, &input_dir, "precheck", "precheck", exe);
    ctx.resources = super::template::overrides(&args.job);
    ctx.inputs = store
        .as_deref()
        .and_then(listed_inputs)
        .map_or(InputListing::Unknown, InputListing::Listed);
    match template.render(&params, &ctx) {
        Ok(_) | Err(TemplateError::InputsUnknown { .. }) => Ok(store),
        // Named as the user wrote the source.
        Err(TemplateError::NoInputs {
            template, globs, ..
        }) => Err(TemplateError::NoInputs {
            template,
            dir: location.to_string().into(),
            globs,
        }
        .into()),
        Err(e) => Err(e.into()),
    }
}

/// The files of the tree in `store`, or `None` when it is not there as a whole tree (a
/// missing folder, a prefix without its manifest) or could not be listed in full.
fn listed_inputs(store: &dyn Storage) -> Option<Vec<ListedFile>> {
    if !store.tree_exists().ok()? {
        return None;
    }
    let tree = store.list(&Filter::default()).ok()?;
    if !tree.errors.is_empty() {
        return None;
    }
    Some(
        tree.entries
            .into_iter()
            .filter(|e| matches!(e.kind, Kind::File | Kind::Symlink))
            .map(|e| ListedFile {
                rel: e.rel.to_string_lossy().into_owned(),
                link: e.kind == Kind::Symlink,
            })
            .collect(),
    )
}

fn launch(
    settings: &Settings,
    template: &str,
    stage: &StageRecord,
    args: &RunArgs,
) -> Result<ExitStatus> {
    let template = super::template::store(settings).get(template)?;
    let executor = executor(settings, args.executor)?;
    let exe = std::env::current_exe().context("cannot find the hpcstage executable")?;
    let store = RunStore::open(&settings.state_dir)?;
    let results = args.results.as_deref().map(absolute).transpose()?;
    let submit_settings = SubmitSettings {
        template: &template,
        params: super::template::params(&args.job.params)?,
        overrides: super::template::overrides(&args.job),
        input: stage,
        scratch_root: settings.scratch_root()?,
        results_dir: results,
        nas_root: settings.nas_root.as_deref(),
        state_dir: &settings.state_dir,
        hpcstage: &exe,
        executor,
        pull_back: !args.no_pull,
        pull_partition: settings.slurm.transfer_partition.clone(),
        pull_time: settings.slurm.pull_time.clone(),
        worm: args.worm,
    };
    let prepared = prepare(&store, &submit_settings)?;
    super::template::note_skipped_links(&prepared.rendered);
    let backend = Backend::for_executor(executor, &settings.state_dir, &settings.client);
    if let Backend::Slurm(client) = &backend {
        warn_beyond_partition(client, &prepared.rendered.sbatch);
    }
    let chain = submit(&store, &prepared, &backend, !args.no_pull).with_context(|| {
        // The client's error names the command that failed; say why it most likely did.
        let controller_down = match &backend {
            Backend::Slurm(client) => !client.ping().unwrap_or(false),
            Backend::Local(_) => false,
        };
        format!(
            "run {} was prepared but could not be submitted{}",
            prepared.record.id,
            if controller_down {
                " (the SLURM controller, slurmctld, does not answer `scontrol ping`)"
            } else {
                ""
            }
        )
    })?;
    let finished = executor == Executor::Local && args.wait;
    if executor == Executor::Local {
        if args.wait {
            let exec = LocalExecutor::new(local_state_dir(&settings.state_dir));
            run_local_chain(&store, &chain.run_id, &exec)?;
        } else {
            spawn_local_runner(settings, &exe, &chain)?;
        }
    }
    print_chain(&chain, args.json, finished);
    Ok(ExitStatus::Success)
}

/// Warns when the compute job asks for more than its partition's nodes have: such a job
/// may be accepted and then wait forever (`PartitionConfig`). Only a warning: `sinfo`
/// not answering does not stop a submission.
fn warn_beyond_partition(client: &SlurmClient, sbatch: &hpcstage_template::SbatchArgs) {
    let Ok(partitions) = client.partitions() else {
        return;
    };
    for problem in hpcstage_slurm::partition::exceeds(&partitions, sbatch) {
        output::warn(format!(
            "the compute job {problem} (sinfo); it may wait forever in the queue: lower the \
             request (-p cpus=..., -p mem=..., --time ...) or pick another partition (--partition)"
        ));
    }
}

/// Prints what was submitted; `finished` when the chain already ran (`--executor local
/// --wait`), so that there is nothing left to follow.
pub(crate) fn print_chain(chain: &Chain, json: bool, finished: bool) {
    if json {
        output::json(chain);
        return;
    }
    output::data(format!("run {}", chain.run_id));
    output::data(format!("  run folder:   {}", chain.run_dir.display()));
    output::data(format!("  compute job:  {}", chain.compute_job));
    if let Some(p) = &chain.pull_job {
        output::data(format!(
            "  pull-back job: {p} (afterany:{})",
            chain.compute_job
        ));
    }
    output::data(format!("  results:      {}", chain.results_dir.display()));
    if finished {
        output::note(format!(
            "done; see how it ended with: hpcstage status {}",
            chain.run_id
        ));
    } else {
        output::note(format!("follow it with: hpcstage status {}", chain.run_id));
    }
}

/// Starts `hpcstage run-local RUN` in its own session, detached from this terminal, with
/// its output in the run's logs.
pub(crate) fn spawn_local_runner(settings: &Settings, exe: &Path, chain: &Chain) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let log = chain.run_dir.join("logs").join("local-runner.log");
    let out = fs_err::File::create(&log)?.into_parts().0;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--state-dir")
        .arg(&settings.state_dir)
        .arg("run-local")
        .arg(&chain.run_id)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            let _ = nix::unistd::setsid();
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("cannot start the local runner {}", exe.display()))?;
    Ok(())
}

pub(crate) fn run_local(settings: &Settings, run: &str) -> Result<ExitStatus> {
    let store = RunStore::open(&settings.state_dir)?;
    let id = store.resolve(run)?;
    let exec = LocalExecutor::new(local_state_dir(&settings.state_dir));
    run_local_chain(&store, &id, &exec)?;
    Ok(ExitStatus::Success)
}

use hpcstage_lifecycle::chain::shell_quote as quote;

/// This very `hpcstage` with the global options a job needs to find the same ledger,
/// scratch and NAS, shell-quoted.
pub(crate) fn global_command(settings: &Settings) -> Result<String> {
    let exe = std::env::current_exe().context("cannot find the hpcstage executable")?;
    let mut global = vec![
        quote(&exe.display().to_string()),
        "--state-dir".into(),
        quote(&settings.state_dir.display().to_string()),
        "--scratch-root".into(),
        quote(&settings.scratch_root()?.display().to_string()),
    ];
    if let Some(nas) = &settings.nas_root {
        global.push("--nas-root".into());
        global.push(quote(&nas.display().to_string()));
    }
    Ok(global.join(" "))
}

/// `--stage-in job`: a job on the transfer partition stages the data and then submits the
/// compute → pull-back chain itself (`hpcstage submit` from inside the job), so that the
/// login node does no copying at all. Only the stage-in job id is known at return.
fn stage_in_job(settings: &Settings, args: &StageAndRunArgs) -> Result<ExitStatus> {
    if executor(settings, args.run.executor)? != Executor::Slurm {
        bail!("--stage-in job needs SLURM (sbatch); without it, stage on this node (the default)");
    }
    let source = parse_location(&args.source)?;
    let target = hpcstage_staging::stage::derive_target(
        source.path(),
        settings.nas_layout_root()?.as_deref(),
        settings.scratch_root()?,
        args.project.as_deref(),
        args.dataset.as_deref(),
    )?;
    let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%S").to_string();
    let dir = settings
        .scratch_root()?
        .join(&target.project)
        .join("stage-in")
        .join(format!("{}-{stamp}", target.dataset));
    fs_err::create_dir_all(&dir)?;
    let global = global_command(settings)?;
    let mut submit = format!(
        "{global} submit {} --input {} --executor slurm",
        quote(&args.template),
        quote(&target.destination.display().to_string())
    );
    for p in &args.run.job.params {
        submit.push_str(&format!(" -p {}", quote(p)));
    }
    for (flag, value) in [
        ("--time", &args.run.job.time),
        ("--partition", &args.run.job.partition),
        ("--account", &args.run.job.account),
        ("--array", &args.run.job.array),
    ] {
        if let Some(v) = value {
            submit.push_str(&format!(" {flag} {}", quote(v)));
        }
    }
    if let Some(r) = &args.run.results {
        submit.push_str(&format!(
            " --results {}",
            quote(&absolute(r)?.display().to_string())
        ));
    }
    if args.run.no_pull {
        submit.push_str(" --no-pull");
    }
    if args.run.worm {
        submit.push_str(" --worm");
    }
    // Sharded: the stage-in job plans and submits the shards; their final task submits
    // the chain.
    let (shards, then) = match args.shards {
        Some(n) => (
            format!(" --shards {n} --then {}", quote(&submit)),
            String::new(),
        ),
        None => (String::new(), format!("exec {submit}\n")),
    };
    let script = dir.join("stage-in.sbatch");
    let text = format!(
        "#!/bin/bash\n\
         # Stage-in job: stages {src} to scratch, then submits the {template} run over it.\n\
         #SBATCH --job-name=stage-in-{name}\n\
         #SBATCH --partition={partition}\n\
         #SBATCH --time={time}\n\
         #SBATCH --cpus-per-task=1\n\
         #SBATCH --output={dir}/stage-in-%j.out\n\
         set -euo pipefail\n\
         {global} stage {srcq} {destq} --project {project} --dataset {dataset}{shards}\n\
         {then}",
        // A comment line: control characters in the path must not start a new line.
        src = source.to_string().escape_debug(),
        template = args.template,
        name = target
            .dataset
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect::<String>(),
        partition = settings.slurm.transfer_partition,
        time = settings.slurm.pull_time,
        dir = dir.display(),
        srcq = quote(&source.to_string()),
        destq = quote(&target.destination.display().to_string()),
        project = quote(&target.project),
        dataset = quote(&target.dataset),
    );
    fs_err::write(&script, text)?;
    let client = SlurmClient::new(settings.client.clone());
    let mut req = hpcstage_slurm::client::SubmitRequest::new(&script);
    req.workdir = Some(dir.clone());
    let job = client
        .submit(&req)
        .with_context(|| format!("cannot submit the stage-in job {}", script.display()))?;
    if args.run.json {
        output::json(&serde_json::json!({
            "stage_in_job": job.id.to_string(),
            "script": script,
            "destination": target.destination,
        }));
    } else {
        output::data(format!("stage-in job {} ({})", job.id, script.display()));
        output::data(format!(
            "  stages {} → {}",
            source,
            target.destination.display()
        ));
        output::data(format!(
            "  then submits {} → pull-back; follow with `hpcstage status` once it has run (log: {}/stage-in-{}.out)",
            args.template,
            dir.display(),
            job.id
        ));
    }
    Ok(ExitStatus::Success)
}
