//! Arguments of the commands that set a machine up: `doctor`, `config` and `demo`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::ExecutorArg;

#[derive(Debug, Args)]
pub(crate) struct DoctorArgs {
    /// Print JSON: one object per check (check, status, detail, fix)
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ConfigInitArgs {
    /// Write the site file (/etc/hpcstage/config.toml, or $HPCSTAGE_SITE_CONFIG) instead of
    /// the user's (~/.config/hpcstage/config.toml)
    #[arg(long)]
    pub(crate) site: bool,
    /// Print the config to stdout instead of writing a file
    #[arg(long)]
    pub(crate) print: bool,
    /// Ask nothing of this machine ($SCRATCH, sinfo, sacct): the built-in defaults only
    #[arg(long)]
    pub(crate) no_detect: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Print the resolved configuration and where each value came from
    #[command(
        after_help = "Examples:\n  hpcstage config show\n  HPCSTAGE_CONFIG=./lab.toml hpcstage config show --json"
    )]
    Show {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Write a commented config file with what this machine tells ($SCRATCH, partitions,
    /// accounting); never overwrites one
    #[command(
        after_help = "Examples:\n  hpcstage config init                 # ~/.config/hpcstage/config.toml\n  \
sudo hpcstage config init --site     # /etc/hpcstage/config.toml, for every user\n  \
hpcstage config init --site --print --no-detect   # the example site config, every key commented"
    )]
    Init(ConfigInitArgs),
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Create the demo under DIR instead of a new temporary folder
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,
    /// Scale of the generated dataset: number of small files
    #[arg(long, default_value_t = 400, value_name = "N")]
    pub(crate) small_files: usize,
    /// Size of each of the three large files, in MiB
    #[arg(long, default_value_t = 24, value_name = "MIB")]
    pub(crate) large_mib: usize,
    /// Ingest into and pull to this NAS instead of one of the demo's own: an S3 prefix
    /// (`s3://bucket/prefix`, a bucket with Object Lock) or `[user@]host:/path`
    #[arg(long, value_name = "LOCATION")]
    pub(crate) nas: Option<PathBuf>,
    /// Where the demo's jobs run (auto: SLURM when `sbatch` is found, else local)
    #[arg(long, value_enum, default_value_t = ExecutorArg::Auto)]
    pub(crate) executor: ExecutorArg,
}
