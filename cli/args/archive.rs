//! Arguments of the commands that keep data for the long term: `release`, `archive` and
//! `copies`, with the value parsers of sizes and retentions.

use std::path::PathBuf;

use clap::{Args, Subcommand};

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
