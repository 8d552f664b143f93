//! What the user typed: clap structures, validated only as far as clap can.
//!
//! Nothing here resolves paths or reads config; `config.rs` turns these into settings.
//! This file holds the command line itself; each group of commands keeps its arguments
//! in a file of its own.

mod archive;
mod data;
mod jobs;
mod setup;
mod tracking;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub(crate) use archive::{
    ArchiveArgs, ArchiveCommand, CopiesArgs, ReleaseArgs, ReleaseCommand, ReleaseInitArgs,
    ReleaseVerifyArgs,
};
pub(crate) use data::{
    CopyArgs, IngestArgs, ManifestCommand, ManifestCreateArgs, ManifestVerifyArgs, ParallelArgs,
    PullArgs, ShardArgs, StageArgs,
};
pub(crate) use jobs::{
    DismissArgs, EpilogueArgs, ExecutorArg, JobArgs, RenderArgs, RetryArgs, RunArgs,
    StageAndRunArgs, StageIn, SubmitArgs, TemplateCommand,
};
pub(crate) use setup::{ConfigCommand, ConfigInitArgs, DemoArgs, DoctorArgs};
pub(crate) use tracking::{CleanArgs, ReportArgs, ReportFormat, StatusArgs};

/// Move research data NAS → scratch → SLURM job → NAS, verified at every hop.
#[derive(Debug, Parser)]
#[command(
    name = "hpcstage",
    version,
    about,
    long_about = "Move research data along its lifecycle on an HPC cluster, proving at every hop \
that no byte changed:\n\n\
  1. ingest         instrument data into <nas>/PRJ/raw/NAME: manifest, write protection\n\
  2. stage          a dataset NAS -> scratch, verified and resumable; purge deadline kept\n\
  3. stage-and-run  stage, then a SLURM compute job -> pull-back job; log out\n\
  4. pull           validated outputs -> <nas>/PRJ/results/<workflow>/<run>, with provenance\n\
  5. report         what scratch will purge soon, and what is not yet safe on the NAS\n\
  6. clean          remove scratch copies that have a verified copy on the NAS\n\
  7. release        a pulled run as a BagIt bag to deposit (BioImage Archive, Zenodo, ENA)\n\
  8. archive        cold-archive packages (tar chunks, index); copies: the 3-2-1 check\n\
  also: manifest (sha256sum-compatible), status, retry, dismiss, template, submit, epilogue,\n\
  config, doctor, demo\n\n\
Configuration is layered: built-in defaults < /etc/hpcstage/config.toml < \
~/.config/hpcstage/config.toml < $HPCSTAGE_CONFIG (or --config) < flags. \
Run `hpcstage config show` to see the result and where each value came from.",
    after_help = "Exit codes: 0 success, 1 error, 2 usage error, 3 integrity failure \
(checksum mismatch, missing or corrupt file), 4 some files failed (see the list printed), \
5 `report --fail-on-risk` found data AT RISK, 130/143 a copy stopped cleanly on SIGINT/SIGTERM \
(run it again to finish)."
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Flags every command takes.
#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// Config file layered over the site and user files [env: HPCSTAGE_CONFIG]
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Root of the lab NAS (holds <project>/raw and <project>/results): a folder,
    /// [user@]host[:port]:/path on an SSH host, or s3://bucket/prefix
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) nas_root: Option<PathBuf>,
    /// Root of scratch space (default: $SCRATCH)
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) scratch_root: Option<PathBuf>,
    /// Where hpcstage keeps its ledger [env: HPCSTAGE_STATE]
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// Print only errors and the requested data (no progress, no notes)
    #[arg(short, long, global = true)]
    pub(crate) quiet: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Copy instrument data into <nas_root>/<project>/raw/<dataset>, verified and write-protected
    #[command(
        after_help = "Examples:\n  hpcstage ingest /mnt/microscope/2026-11-27 --project PRJ1 --dataset plate7\n  \
hpcstage --nas-root nas.lab.org:/export/lab ingest /mnt/microscope/2026-11-27 --project PRJ1 --dataset plate7 --remote-verify\n  \
hpcstage --nas-root s3://lab-raw ingest /mnt/microscope/2026-11-27 --project PRJ1 --dataset plate7   # Object Lock retention from [s3]"
    )]
    Ingest(IngestArgs),
    /// Create or check MANIFEST.sha256 files (compatible with sha256sum)
    #[command(subcommand)]
    Manifest(ManifestCommand),
    /// Copy a dataset from the NAS to scratch, verified, incremental and resumable
    #[command(
        after_help = "Examples:\n  hpcstage stage /nas/lab/PRJ1/raw/plate7\n  \
hpcstage stage /nas/lab/PRJ1/raw/plate7 --dry-run\n  \
hpcstage stage /data/run42 /scratch/me/PRJ1/run42 --include '*.fastq.gz'\n  \
hpcstage stage nas.lab.org:/export/lab/PRJ1/raw/plate7 --ssh-sessions 8\n  \
hpcstage stage s3://lab-raw/PRJ1/raw/plate7\n  \
hpcstage stage /nas/lab/PRJ1/raw/plate7 --shards 4\n\n\
A source on an SSH host is reached as OpenSSH would (~/.ssh/config, ssh-agent or key files); its \
host key must already be in ~/.ssh/known_hosts. An S3 source ([s3] in the config, credentials from \
the AWS chain) is a dataset only once its MANIFEST.sha256 object exists.\n\n\
--shards N returns at once: an array job on the transfer partition copies the N shards, each \
task on whichever transfer node SLURM gives it, and a final task merges them into the \
destination and writes MANIFEST.sha256 (follow it with `squeue`; logs in \
DEST/.hpcstage/shard-jobs/)."
    )]
    Stage(StageArgs),
    /// List, show and render job templates
    #[command(subcommand)]
    Template(TemplateCommand),
    /// Render a template over a staged dataset and submit it, with a pull-back job
    #[command(
        after_help = "Example:\n  hpcstage submit unet-seg --input PRJ1/plate7 -p model=/models/unet.pt"
    )]
    Submit(SubmitArgs),
    /// Stage a dataset, then submit compute job → pull-back job, and return at once
    #[command(
        after_help = "Examples:\n  hpcstage stage-and-run /nas/lab/PRJ1/raw/plate7 unet-seg -p model=/models/unet.pt\n  \
hpcstage stage-and-run /nas/lab/PRJ1/raw/plate7 unet-seg --stage-in job --shards 4 -p model=/models/unet.pt\n\n\
Prints the run id and job ids, then returns: nothing keeps running on the login node. The \
pull-back job (partition `transfer`, --dependency=afterany) validates the outputs and copies \
them to <nas_root>/<project>/results/<workflow>/<run>/. Follow it with `hpcstage status RUN`."
    )]
    StageAndRun(StageAndRunArgs),
    /// Validate a run's outputs and copy them to the NAS (what the pull-back job runs)
    #[command(
        after_help = "Examples:\n  hpcstage pull unet-seg-plate7-20261127T101500-3f2a --wait\n  \
hpcstage pull unet-seg-plate7-20261127T101500-3f2a --remote-verify   # nas_root on an SSH host\n  \
hpcstage pull unet-seg-plate7-20261127T101500-3f2a --worm   # on S3: Object Lock retention"
    )]
    Pull(PullArgs),
    /// Resubmit the failed array tasks of a run into its folder, with a new pull-back job
    #[command(
        after_help = "Examples:\n  hpcstage retry unet-seg-plate7-20261127T101500-3f2a\n  \
hpcstage retry unet-seg-plate7-20261127T101500-3f2a --array 3,7   # chosen tasks\n\n\
The tasks run again with their own inputs in the same run folder, so that the new pull-back \
job collects the outputs of every task into one results folder. A task whose outputs exist \
already skips them (the built-in templates do)."
    )]
    Retry(RetryArgs),
    /// Give up a run's results: it leaves the AT RISK count and `clean` may remove it
    #[command(
        after_help = "Examples:\n  hpcstage dismiss unet-seg-plate7-20261127T101500-3f2a --reason 'wrong model'\n  \
hpcstage clean --dry-run   # the dismissed run's scratch folder may now go\n\n\
Recorded in the ledger and in the run folder. Refused while a job of the run is queued or \
running (cancel it first) and for a run whose results were pulled."
    )]
    Dismiss(DismissArgs),
    /// Make a deposit-ready BagIt bag of a pulled run (BioImage Archive, Zenodo, ENA)
    #[command(
        after_help = "Examples:\n  hpcstage release init unet-seg-plate7-20261127T101500-3f2a   # writes release.toml to fill in\n  \
hpcstage release unet-seg-plate7-20261127T101500-3f2a --sample 8\n  \
hpcstage release unet-seg-plate7-20261127T101500-3f2a --metadata ~/plate7.toml --to /tmp/bag\n  \
hpcstage release verify /nas/lab/PRJ1/release/unet-seg-plate7-20261127T101500-3f2a\n\n\
The bag goes to <nas>/<PRJ>/release/<run>/ (BagIt: data/ holds ro-crate-metadata.json, bia/, \
zenodo/ and, for alignment runs, ena/). Only a run pulled and verified on the NAS is \
released; a run that failed is refused. `release verify` exits 3 when a file does not match.",
        args_conflicts_with_subcommands = true,
        subcommand_negates_reqs = true
    )]
    Release(ReleaseArgs),
    /// Show runs (with their jobs) and staged datasets, with purge deadlines
    #[command(after_help = "Examples:\n  hpcstage status\n  hpcstage status RUN --json")]
    Status(StatusArgs),
    /// Record a job's end from SLURM's Epilog: fast, bounded, drops to the job user, exits 0
    #[command(
        after_help = "In slurm.conf (every node):\n  Epilog=/usr/local/sbin/hpcstage-epilog\n\n\
with /usr/local/sbin/hpcstage-epilog:\n  #!/bin/sh\n  exec /usr/local/bin/hpcstage epilogue --timeout 5s\n\n\
It reads SLURM_JOB_ID, SLURM_JOB_USER, SLURM_JOB_EXIT_CODE2, SLURM_JOB_DERIVED_EC and \
SLURM_JOB_GPUS, becomes the job's user, adds one event to that user's ledger when the job \
belongs to an hpcstage run, and always exits 0 (a failing Epilog drains the node). The ledger \
is the job user's state folder: state_dir in their ~/.config/hpcstage/config.toml or the \
site's, else ~/.local/state/hpcstage under their home.\n\n\
Test an install as root with a job of yours that ended:\n  \
SLURM_JOB_ID=123 SLURM_JOB_USER=alice SLURM_JOB_EXIT_CODE2=0:0 hpcstage epilogue --verbose"
    )]
    Epilogue(EpilogueArgs),
    /// Runs a run's jobs with the local executor (started detached by submit)
    #[command(hide = true)]
    RunLocal {
        /// Run id
        run: String,
    },
    /// Report what scratch will purge soon, and whether that would lose data
    #[command(after_help = "Examples:\n  hpcstage report --within 7d\n  \
hpcstage report --scan /scratch/lab --format markdown   # the whole lab, for an email\n  \
hpcstage report --fail-on-risk                          # exit 5 when anything is AT RISK\n  \
hpcstage report --copies                                # and the datasets that break 3-2-1\n\n\
Weekly from cron:\n  0 7 * * MON  hpcstage report --within 7d --format markdown | mail -s 'scratch expiring' lab@example.org\n\
or from scrontab (`scrontab -e`):\n  #SCRON --partition=transfer --time=00:10:00\n  0 7 * * MON  hpcstage report --within 7d --format markdown")]
    Report(ReportArgs),
    /// Remove scratch copies that are provably safe on the NAS
    #[command(
        after_help = "Examples:\n  hpcstage clean --dry-run                 # what would go, and why the rest stays\n  \
hpcstage clean\n  \
hpcstage clean --project PRJ1\n  \
hpcstage clean PRJ1/plate7               # one staged dataset (or a run id)"
    )]
    Clean(CleanArgs),
    /// Pack a raw dataset or a run's results into a cold archive (tar chunks, index)
    #[command(
        args_conflicts_with_subcommands = true,
        subcommand_negates_reqs = true,
        after_help = "Examples:\n  hpcstage archive PRJ1/raw/plate7 --to /tape/staging\n  \
hpcstage archive PRJ1/raw/plate7 --to /mnt/ltfs --media tape --offsite --chunk-size 50GiB\n  \
hpcstage archive PRJ1/raw/plate7 --to s3://lab-archive/cold --retain 10y --offsite   # Object Lock\n  \
hpcstage archive unet-seg-plate7-20261127T101500-3f2a --to /tape/staging   # a run's results\n  \
hpcstage archive list PRJ1-plate7-1a2b3c4d\n  \
hpcstage archive verify /tape/staging/PRJ1-plate7-1a2b3c4d\n  \
hpcstage archive restore PRJ1-plate7-1a2b3c4d --file images/A01.tif --to /tmp/back\n\n\
The archive goes into DIR/<ID>/ (ID = PRJ-NAME-<8 hex digits of its layout>): POSIX tar \
chunks readable alone with GNU tar or bsdtar, ARCHIVE-INDEX.tsv, ARCHIVE-MANIFEST.sha256 and \
a README.txt on restoring with tar and sha256sum alone. The same dataset gives the same \
chunks byte for byte; a killed archive resumes when run again. On s3:// each chunk is a \
multipart upload read back before it counts, ARCHIVE-MANIFEST.sha256 is written last, and \
--retain gives every object Object Lock retention, read back from the server."
    )]
    Archive(ArchiveArgs),
    /// The 3-2-1 check: every copy of each dataset, when verified, whether 3-2-1 holds
    #[command(after_help = "Examples:\n  hpcstage copies PRJ1/plate7\n  \
hpcstage copies --verify          # re-check every reachable copy\n  \
hpcstage copies --json\n\n\
Copies are the NAS raw folder, the archives made by `hpcstage archive`, and the [[copies]] \
declared in the config:\n  [[copies]]\n  name = \"tape-2026\"\n  location = \"/mnt/ltfs/{project}/{dataset}\"\n  \
media = \"tape\"      # disk, tape or object\n  offsite = true\n\n\
3-2-1 holds with three copies or more, on two kinds of media or more, one of them off-site. \
Exit 5 with --fail-on-risk when a dataset breaks it.")]
    Copies(CopiesArgs),
    /// Show the resolved configuration, or write a commented one (config init)
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run the whole lifecycle on a generated dataset in a temporary NAS and scratch
    #[command(
        after_help = "Examples:\n  hpcstage demo\n  hpcstage demo --dir /tmp/hpcstage-demo --executor local\n  \
hpcstage demo --nas s3://lab-demo/hpcstage   # a bucket with Object Lock, [s3] configured"
    )]
    Demo(DemoArgs),
    /// Check this machine for what hpcstage needs: one line per check, with the fix
    #[command(
        after_help = "Examples:\n  hpcstage doctor\n  hpcstage doctor --json\n\n\
Checks: the config resolves; scratch, NAS and state folders exist and are writable (over SSH \
for a remote NAS: known_hosts entry, login, sha256sum for --remote-verify); sinfo, sacct and \
sbatch answer and accounting is on; the transfer partition exists and accepts jobs; a purge \
policy is configured; the Epilog is installed where this is a compute node. Exits 0 only when \
everything the configuration uses works; a warning alone does not fail it."
    )]
    Doctor(DoctorArgs),
    /// Print the completion script for a shell (bash, zsh, fish, elvish, powershell)
    #[command(after_help = "Examples:\n  \
hpcstage completions bash > ~/.local/share/bash-completion/completions/hpcstage\n  \
hpcstage completions zsh > ~/.zfunc/_hpcstage        # with fpath+=(~/.zfunc) before compinit\n  \
hpcstage completions fish > ~/.config/fish/completions/hpcstage.fish")]
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Write the man pages of hpcstage and of every subcommand into a folder
    #[command(after_help = "Example:\n  \
hpcstage manpages ~/.local/share/man/man1 && man hpcstage-stage")]
    Manpages {
        /// Folder to write hpcstage.1, hpcstage-stage.1, ... into (created if missing)
        dir: PathBuf,
    },
}
