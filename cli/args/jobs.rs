//! Arguments of the commands that run jobs: `template`, `submit`, `stage-and-run`,
//! `retry`, `dismiss` and `epilogue`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub(crate) enum TemplateCommand {
    /// List built-in, site and user templates
    #[command(after_help = "Example:\n  hpcstage template list")]
    List {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Show a template's parameters, resources, outputs and script
    #[command(after_help = "Example:\n  hpcstage template show unet-seg")]
    Show {
        /// Template name
        name: String,
    },
    /// Print the exact job script a template renders to
    #[command(
        after_help = "Example:\n  hpcstage template render align --input /scratch/me/PRJ1/run42 -p reference=/ref/hg38.fa"
    )]
    Render(RenderArgs),
}

/// Where jobs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ExecutorArg {
    /// SLURM when `sbatch` is found, else local
    Auto,
    Slurm,
    /// Run with bash on this machine (no SLURM needed)
    Local,
}

#[derive(Debug, Args)]
pub(crate) struct JobArgs {
    /// Template parameter (repeatable), e.g. -p model=/models/unet.pt
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE", value_parser = key_value)]
    pub(crate) params: Vec<String>,
    /// Override the time limit, e.g. 2h
    #[arg(long, value_name = "DURATION")]
    pub(crate) time: Option<String>,
    /// Override the partition
    #[arg(long)]
    pub(crate) partition: Option<String>,
    /// Override the account
    #[arg(long)]
    pub(crate) account: Option<String>,
    /// Run only these array tasks, in SLURM's syntax (e.g. 3,7 or 0-9%2); each task keeps
    /// its inputs, so `--array 3,7` re-runs exactly the inputs of tasks 3 and 7
    #[arg(long, value_name = "LIST")]
    pub(crate) array: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct RenderArgs {
    /// Template name
    pub(crate) name: String,
    /// Staged dataset folder the job would read (for input listing)
    #[arg(long, value_name = "DIR")]
    pub(crate) input: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) job: JobArgs,
    /// Also validate the script with `sbatch --test-only`
    #[arg(long)]
    pub(crate) check: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) job: JobArgs,
    /// Results folder on the NAS (default <nas_root>/<project>/results/<workflow>/<run>)
    #[arg(long, value_name = "NAS_DIR")]
    pub(crate) results: Option<PathBuf>,
    /// Where jobs run
    #[arg(long, value_enum, default_value_t = ExecutorArg::Auto)]
    pub(crate) executor: ExecutorArg,
    /// Submit the compute job only (pull later with `hpcstage pull RUN`)
    #[arg(long)]
    pub(crate) no_pull: bool,
    /// With the local executor: run the chain in the foreground and return when done
    #[arg(long)]
    pub(crate) wait: bool,
    /// The pull-back job write-protects the results it puts on the NAS (`pull --worm`)
    #[arg(long, conflicts_with = "no_pull")]
    pub(crate) worm: bool,
    /// Print JSON
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    /// Template name
    pub(crate) template: String,
    /// Staged input: a stage id (<project>/<dataset>) or a staged folder
    #[arg(long, value_name = "STAGE")]
    pub(crate) input: String,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

#[derive(Debug, Args)]
pub(crate) struct StageAndRunArgs {
    /// Dataset folder on the NAS
    pub(crate) source: PathBuf,
    /// Where the staging runs: here on the login node, or as a job on the transfer
    /// partition that then submits the compute and pull-back jobs itself
    #[arg(long, value_enum, default_value_t = StageIn::Login)]
    pub(crate) stage_in: StageIn,
    /// Template name
    pub(crate) template: String,
    /// Project name, when SRC is not under <nas_root>/<project>/
    #[arg(long)]
    pub(crate) project: Option<String>,
    /// Dataset name (default: from SRC)
    #[arg(long)]
    pub(crate) dataset: Option<String>,
    /// With --stage-in job: stage in N shards over the transfer nodes (see `stage
    /// --shards`); the chain is submitted by the final task
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub(crate) shards: Option<u32>,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

/// Where `stage-and-run` stages the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum StageIn {
    /// On this node, before submitting
    Login,
    /// In a job on the transfer partition (SLURM only)
    Job,
}

#[derive(Debug, Args)]
pub(crate) struct RetryArgs {
    /// Run id (or unique prefix)
    pub(crate) run: String,
    /// Re-run these array tasks instead of the failed ones, in SLURM's syntax (e.g. 3,7)
    #[arg(long, value_name = "LIST")]
    pub(crate) array: Option<String>,
    /// Print JSON
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DismissArgs {
    /// Run id (or unique prefix)
    pub(crate) run: String,
    /// Why, for the ledger and the report
    #[arg(long, value_name = "TEXT")]
    pub(crate) reason: Option<String>,
    /// Print JSON
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct EpilogueArgs {
    /// Hard time limit; the command exits 0 when it is reached
    #[arg(long, default_value = "5s", value_name = "DURATION")]
    pub(crate) timeout: humantime::Duration,
    /// Say each step on stderr (the job user, the state folder chosen and why, the run
    /// found or not), to test an install by hand
    #[arg(short, long)]
    pub(crate) verbose: bool,
}

/// A `-p KEY=VALUE` as given, refused by the parser (a usage error, exit 2) when it has no
/// `=` or no name.
fn key_value(p: &str) -> Result<String, String> {
    match p.split_once('=') {
        Some(("", _)) => Err("the parameter name is empty; write KEY=VALUE".into()),
        Some(_) => Ok(p.to_string()),
        None => Err("expected KEY=VALUE, e.g. -p model=/models/unet.onnx".into()),
    }
}
