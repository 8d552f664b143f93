//! What the user typed: clap structures, validated only as far as clap can.
//!
//! Nothing here resolves paths or reads config; `config.rs` turns these into settings.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// One run (id or unique prefix) in detail
    pub(crate) run: Option<String>,
    /// Print JSON
    #[arg(long)]
    pub(crate) json: bool,
}

/// Output formats of `report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ReportFormat {
    Table,
    Json,
    Csv,
    Markdown,
}

#[derive(Debug, Args)]
pub(crate) struct ReportArgs {
    /// Only what expires within this window (default: the configured warning window), e.g. 7d
    #[arg(long, value_name = "DURATION", conflicts_with = "all")]
    pub(crate) within: Option<String>,
    /// Everything tracked, whatever its deadline
    #[arg(long)]
    pub(crate) all: bool,
    /// Only staged folders and runs under ROOT, found by their .hpcstage markers (also
    /// other users'; repeatable)
    #[arg(long, value_name = "ROOT")]
    pub(crate) scan: Vec<PathBuf>,
    /// Only items of this owner
    #[arg(long)]
    pub(crate) owner: Option<String>,
    /// Only items of this project
    #[arg(long)]
    pub(crate) project: Option<String>,
    /// Output format
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub(crate) format: ReportFormat,
    /// Exit with code 5 when anything is AT RISK (with --copies: or breaks 3-2-1)
    #[arg(long)]
    pub(crate) fail_on_risk: bool,
    /// Add a section of the raw datasets that break 3-2-1 (see `hpcstage copies`)
    #[arg(long)]
    pub(crate) copies: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CleanArgs {
    /// Only this item: a staged dataset as PROJECT/DATASET, a run id (or a unique prefix),
    /// or its folder
    #[arg(value_name = "ITEM")]
    pub(crate) item: Option<String>,
    /// List what would be removed and the space it returns; remove nothing
    #[arg(short = 'n', long)]
    pub(crate) dry_run: bool,
    /// Only items of this project
    #[arg(long)]
    pub(crate) project: Option<String>,
    /// Only folders found under ROOT by their .hpcstage markers (repeatable)
    #[arg(long, value_name = "ROOT")]
    pub(crate) scan: Vec<PathBuf>,
    /// Print JSON
    #[arg(long)]
    pub(crate) json: bool,
}

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
pub(crate) struct ReleaseArgs {
    #[command(subcommand)]
    pub(crate) command: Option<ReleaseCommand>,
    /// Run id (or unique prefix)
    #[arg(required = true)]
    pub(crate) run: Option<String>,
    /// Put the bag here instead of <nas>/<PRJ>/release/<run>/ (a new or empty folder)
    #[arg(long, value_name = "DIR")]
    pub(crate) to: Option<PathBuf>,
    /// Representative images (each with its mask) for the BioImage Archive, chosen
    /// evenly over the dataset, the same on every rerun
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub(crate) sample: usize,
    /// The release's metadata (`hpcstage release init RUN` writes one to fill in)
    #[arg(long, short, value_name = "FILE", default_value = "release.toml")]
    pub(crate) metadata: PathBuf,
    /// Print JSON
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ReleaseCommand {
    /// Write a commented release.toml for RUN, pre-filled with what the run knows
    #[command(
        after_help = "Example:\n  hpcstage release init unet-seg-plate7-20261127T101500-3f2a -o plate7.toml"
    )]
    Init(ReleaseInitArgs),
    /// Check a bag: BagIt completeness, every checksum, the RO-Crate (exit 3 when one fails)
    #[command(
        after_help = "Example:\n  hpcstage release verify /nas/lab/PRJ1/release/unet-seg-plate7-20261127T101500-3f2a"
    )]
    Verify(ReleaseVerifyArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ReleaseInitArgs {
    /// Run id (or unique prefix)
    pub(crate) run: String,
    /// Where to write it (never over an existing file)
    #[arg(long, short, value_name = "FILE", default_value = "release.toml")]
    pub(crate) output: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct ReleaseVerifyArgs {
    /// The bag's folder (it holds bagit.txt)
    pub(crate) dir: PathBuf,
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

/// Where `stage-and-run` stages the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum StageIn {
    /// On this node, before submitting
    Login,
    /// In a job on the transfer partition (SLURM only)
    Job,
}

#[derive(Debug, Args)]
pub(crate) struct ArchiveArgs {
    #[command(subcommand)]
    pub(crate) command: Option<ArchiveCommand>,
    /// PRJ/raw/NAME under nas_root (or the dataset's path), or the id of a pulled run
    #[arg(required = true)]
    pub(crate) what: Option<String>,
    /// Folder the archive folder goes into (a tape staging area, a mounted LTFS volume),
    /// or s3://bucket/prefix (an object store, [s3] in the config)
    #[arg(long, required = true, value_name = "DIR|s3://BUCKET/PREFIX")]
    pub(crate) to: Option<PathBuf>,
    /// Largest chunk: bytes, or with KiB, MiB, GiB, TiB (KB, MB, GB, TB: powers of 1000)
    #[arg(long, default_value = "10GiB", value_parser = parse_size)]
    pub(crate) chunk_size: u64,
    /// What the destination is, for the 3-2-1 check [default: disk for a folder, object
    /// for s3://]
    #[arg(long, value_parser = ["disk", "tape", "object"])]
    pub(crate) media: Option<String>,
    /// The destination is off-site (for the 3-2-1 check; on s3:// also `[s3] offsite = true`)
    #[arg(long)]
    pub(crate) offsite: bool,
    /// Also set the immutable flag (chattr +i) where filesystem and privileges allow
    /// (a folder)
    #[arg(long)]
    pub(crate) immutable: bool,
    /// s3:// only: Object Lock retention of every object, e.g. 10y (the mode is `[s3]
    /// lock_mode`, COMPLIANCE by default); a bucket without Object Lock is refused
    #[arg(long, value_name = "DURATION", value_parser = parse_retain)]
    pub(crate) retain: Option<std::time::Duration>,
    /// Print the outcome as JSON
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ArchiveCommand {
    /// Re-read every chunk and every member against the index (exit 3 on a difference)
    #[command(
        after_help = "Examples:\n  hpcstage archive verify PRJ1-plate7-1a2b3c4d\n  \
hpcstage archive verify /tape/staging/PRJ1-plate7-1a2b3c4d --json"
    )]
    Verify {
        /// Archive id (from the ledger) or archive folder
        archive: String,
        /// Print the outcome as JSON
        #[arg(long)]
        json: bool,
    },
    /// Restore one file, reading only its bytes from the chunks, checked against its SHA-256
    #[command(after_help = "Example:\n  \
hpcstage archive restore PRJ1-plate7-1a2b3c4d --file images/A01.tif --to /tmp/back")]
    Restore {
        /// Archive id (from the ledger) or archive folder
        archive: String,
        /// The file's path in the dataset (as `archive list` shows it)
        #[arg(long)]
        file: PathBuf,
        /// Folder to restore into (default: the current folder)
        #[arg(long, value_name = "DIR", default_value = ".")]
        to: PathBuf,
        /// Print the outcome as JSON
        #[arg(long)]
        json: bool,
    },
    /// List the members of an archive: kind, size, chunk, path
    #[command(
        after_help = "Examples:\n  hpcstage archive list PRJ1-plate7-1a2b3c4d\n  \
hpcstage archive list /tape/staging/PRJ1-plate7-1a2b3c4d --json"
    )]
    List {
        /// Archive id (from the ledger) or archive folder
        archive: String,
        /// Print the members as JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct CopiesArgs {
    /// PRJ/DATASET (default: every dataset under nas_root)
    pub(crate) dataset: Option<String>,
    /// Re-check every reachable copy (the NAS folder against its manifest, archives by
    /// their chunk digests, declared folders against the dataset's manifest)
    #[arg(long)]
    pub(crate) verify: bool,
    /// Exit 5 when a dataset breaks 3-2-1
    #[arg(long)]
    pub(crate) fail_on_risk: bool,
    /// Print the copies as JSON
    #[arg(long)]
    pub(crate) json: bool,
}

/// A retention: a duration of a day or more (`10y`, `365d`).
pub(crate) fn parse_retain(s: &str) -> std::result::Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration ({e}); write e.g. 10y or 30d"))?;
    if d < std::time::Duration::from_secs(86_400) {
        return Err(format!(
            "{s:?} is shorter than a day; Object Lock retention is counted in days or years, e.g. 10y"
        ));
    }
    Ok(d)
}

/// A size: bytes, or a number with KiB, MiB, GiB, TiB (K, M, G, T alike) or KB, MB, GB, TB.
pub(crate) fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 10GiB, 512MiB, 1048576)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use KiB, MiB, GiB, TiB or KB, MB, GB, TB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
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
