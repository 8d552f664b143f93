//! Arguments of the commands that watch scratch: `status`, `report` and `clean`.

use std::path::PathBuf;

use clap::Args;

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
