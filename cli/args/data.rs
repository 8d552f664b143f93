//! Arguments of the commands that move data: `ingest`, `stage`, `pull`, `manifest`, and
//! the copy and parallelism flags they share.

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub(crate) struct ParallelArgs {
    /// Files processed in parallel (default: sixteen per core, 16 to 64, from the config's `jobs`)
    #[arg(short, long, value_name = "N")]
    pub(crate) jobs: Option<usize>,
    /// SSH connections used in parallel when the NAS is remote (default: [ssh] sessions, 4)
    #[arg(long, value_name = "N")]
    pub(crate) ssh_sessions: Option<usize>,
}

#[derive(Debug, Args)]
pub(crate) struct CopyArgs {
    /// Show what would be copied and change nothing (files listed in the source manifest are
    /// read, to report any that no longer match it as the copy would)
    #[arg(short = 'n', long)]
    pub(crate) dry_run: bool,
    /// Re-read files already verified at the destination and repair any that changed
    #[arg(long)]
    pub(crate) verify: bool,
    /// Copy only files matching GLOB (repeatable; without '/' it matches names at any depth)
    #[arg(long, value_name = "GLOB")]
    pub(crate) include: Vec<String>,
    /// Skip files and folders matching GLOB (repeatable)
    #[arg(long, value_name = "GLOB")]
    pub(crate) exclude: Vec<String>,
    #[command(flatten)]
    pub(crate) parallel: ParallelArgs,
    /// Print a machine-readable summary
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct StageArgs {
    /// Dataset folder on the NAS, e.g. <nas_root>/PRJ1/raw/plate7, or on an SSH host:
    /// [user@]host[:port]:/path (host aliases of ~/.ssh/config work)
    pub(crate) source: PathBuf,
    /// Destination (default: <scratch_root>/<project>/<dataset>)
    pub(crate) dest: Option<PathBuf>,
    /// Project name, when SRC is not under <nas_root>/<project>/
    #[arg(long)]
    pub(crate) project: Option<String>,
    /// Dataset name (default: from SRC)
    #[arg(long)]
    pub(crate) dataset: Option<String>,
    /// Stage SRC even though it is a project's whole raw/ area rather than one dataset
    #[arg(long)]
    pub(crate) allow_raw_area: bool,
    #[command(flatten)]
    pub(crate) copy: CopyArgs,
    #[command(flatten)]
    pub(crate) shards: ShardArgs,
}

/// Staging spread across transfer nodes (issue 18). `--shard` and `--merge-shards` are
/// what the array tasks and the final task run.
#[derive(Debug, Args, Clone, Default)]
pub(crate) struct ShardArgs {
    /// Split the files into N shards (balanced by bytes and file count) copied by an array
    /// job on the transfer partition, one task per shard, then merged by a final task;
    /// returns at once with the job ids
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub(crate) shards: Option<u32>,
    /// Copy shard I of N of the plan into DEST/.hpcstage/shards/I (run by an array task)
    #[arg(long, value_name = "I/N", hide = true, conflicts_with = "shards")]
    pub(crate) shard: Option<String>,
    /// Finish a sharded stage: rerun unfinished shards, move the verified files into
    /// place, write MANIFEST.sha256 (run by the final task)
    #[arg(long, hide = true, conflicts_with_all = ["shards", "shard"])]
    pub(crate) merge_shards: bool,
    /// A shell command the final task runs once the stage is complete (the chain of
    /// `stage-and-run --stage-in job --shards N`)
    #[arg(long, value_name = "COMMAND", hide = true, requires = "shards")]
    pub(crate) then: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct IngestArgs {
    /// Acquisition folder to ingest
    pub(crate) source: PathBuf,
    /// Project the dataset belongs to
    #[arg(long)]
    pub(crate) project: String,
    /// Name of the dataset under <project>/raw/
    #[arg(long)]
    pub(crate) dataset: String,
    /// Also set the immutable flag (chattr +i) where filesystem and privileges allow
    #[arg(long)]
    pub(crate) immutable: bool,
    /// With a remote NAS (nas_root = "host:/path"): also check the uploaded folder with
    /// `sha256sum -c` run on the NAS host itself, before it is renamed into place
    #[arg(long)]
    pub(crate) remote_verify: bool,
    #[command(flatten)]
    pub(crate) copy: CopyArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ManifestCommand {
    /// Hash every file under DIR into DIR/MANIFEST.sha256 (same format as sha256sum)
    #[command(
        after_help = "Example:\n  hpcstage manifest create /nas/lab/PRJ1/raw/plate7\n  \
cd /nas/lab/PRJ1/raw/plate7 && sha256sum -c MANIFEST.sha256   # accepts it"
    )]
    Create(ManifestCreateArgs),
    /// Check DIR against its manifest, like `sha256sum -c`, and write verify_YYYY-MM-DD.log
    #[command(after_help = "Example:\n  hpcstage manifest verify /scratch/me/PRJ1/plate7")]
    Verify(ManifestVerifyArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ManifestCreateArgs {
    /// Folder to hash
    pub(crate) dir: PathBuf,
    /// Write the manifest here instead of DIR/MANIFEST.sha256 ("-" for standard output)
    #[arg(short, long, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
    /// Replace an existing manifest
    #[arg(long)]
    pub(crate) force: bool,
    #[command(flatten)]
    pub(crate) parallel: ParallelArgs,
    /// Print a machine-readable summary
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ManifestVerifyArgs {
    /// Folder to check
    pub(crate) dir: PathBuf,
    /// Manifest to check against (default DIR/MANIFEST.sha256); its paths are relative to DIR
    #[arg(short, long, value_name = "FILE")]
    pub(crate) manifest: Option<PathBuf>,
    /// Write the log here instead of DIR/verify_YYYY-MM-DD.log
    #[arg(long, value_name = "FILE", conflicts_with = "no_log")]
    pub(crate) log: Option<PathBuf>,
    /// Do not write a log
    #[arg(long)]
    pub(crate) no_log: bool,
    /// Print only failures (like sha256sum --quiet)
    #[arg(long)]
    pub(crate) failures_only: bool,
    #[command(flatten)]
    pub(crate) parallel: ParallelArgs,
    /// Print a machine-readable report
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct PullArgs {
    /// Run id (or unique prefix)
    pub(crate) run: String,
    /// Wait for the compute job to end instead of refusing
    #[arg(long)]
    pub(crate) wait: bool,
    /// Pull what validates even when the job failed or outputs are missing
    #[arg(long)]
    pub(crate) allow_partial: bool,
    /// Write-protect the results folder (chmod -R a-w; on S3, the Object Lock retention of
    /// [s3] on every object, refused for a bucket without Object Lock)
    #[arg(long)]
    pub(crate) worm: bool,
    /// With a remote NAS (nas_root = "host:/path"): also check the uploaded folder with
    /// `sha256sum -c` run on the NAS host itself, before it is renamed into place
    /// (default: [ssh] remote_verify)
    #[arg(long)]
    pub(crate) remote_verify: bool,
    #[command(flatten)]
    pub(crate) parallel: ParallelArgs,
    /// Print JSON
    #[arg(long)]
    pub(crate) json: bool,
}
