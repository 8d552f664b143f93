//! The "expiring soon" report: every tracked scratch copy and run folder with its purge
//! deadline, whether losing it would lose data, and whether `clean` may remove it.
//!
//! Both `report` and `clean` take their verdict from here (they once disagreed,
//! the report calling SAFE what clean kept): [`stage_item`] and [`run_item`] gather the
//! facts of one folder and [`decide`] turns them into one [`Safety`], one reason and one
//! answer to "may clean remove it". SAFE means a verified copy is on the NAS (raw data that
//! was staged, or results that were pulled); AT RISK means scratch may hold the only copy
//! (results not pulled back, a failed pull, a NAS source that vanished or changed, a
//! staged file edited on scratch); INCOMPLETE a stage or pull that did not finish; IN USE a
//! staged copy that a run still reads; PARTIAL a run pulled with outputs missing; EXPIRED
//! and PARTLY PURGED say what the purge already did; CLEANED a run folder `clean` removed.
//! Deadlines come from the files' real timestamps as they are now (see
//! `hpcstage_staging::policy`). Only a staged file whose inode or mtime moved since it was
//! verified is read again (its content decides whether it was edited).

//!
//! The module has three parts: [`scan`] finds what is tracked (the ledger, and folders
//! marked `.hpcstage/` under `--scan` roots), [`verdict`] judges one folder, and
//! [`summary`] filters, orders and totals the items for the report. Printing them is the
//! command's (`cli/commands/report.rs`).

mod nas_copy;
pub mod scan;
pub mod summary;
#[cfg(test)]
mod tests;
pub mod verdict;

use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use hpcstage_staging::policy::{PurgeBasis, PurgePolicy};

pub use scan::{gather, load_runs, scan_markers, Sources};
pub use summary::{apply_whole_folder, build};
pub use verdict::{nas_results_state, pulled_proof, run_item, stage_item, Readers};

/// What kind of scratch folder an item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ItemKind {
    Stage,
    Run,
}

impl ItemKind {
    /// The name the table, the CSV and `--json` give it (`stage`, `run`).
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Stage => "stage",
            ItemKind::Run => "run",
        }
    }
}

/// Whether losing the folder would lose data. Ordered: most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Safety {
    AtRisk,
    Incomplete,
    InUse,
    Partial,
    PartlyPurged,
    Expired,
    /// Its owner gave up the results (`hpcstage dismiss`): nothing to protect.
    Dismissed,
    Safe,
    Cleaned,
}

impl Safety {
    /// The label users see.
    pub fn label(self) -> &'static str {
        match self {
            Safety::AtRisk => "AT RISK",
            Safety::Incomplete => "INCOMPLETE",
            Safety::InUse => "IN USE",
            Safety::Partial => "PARTIAL",
            Safety::PartlyPurged => "PARTLY PURGED",
            Safety::Expired => "EXPIRED",
            Safety::Dismissed => "DISMISSED",
            Safety::Safe => "SAFE",
            Safety::Cleaned => "CLEANED",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub kind: ItemKind,
    pub project: String,
    /// Dataset or run id.
    pub name: String,
    pub owner: String,
    pub path: PathBuf,
    pub bytes: u64,
    /// Data files: what `stage` counted (not `MANIFEST.sha256`, `verify_*.log` or
    /// temporaries).
    pub files: u64,
    pub basis: PurgeBasis,
    pub oldest: Timestamp,
    pub deadline: Timestamp,
    pub days_left: i64,
    /// The site deletes the whole top-level folder once one file qualifies: at the
    /// deadline everything goes, not just the oldest files.
    pub whole_folder: bool,
    pub safety: Safety,
    /// Why it has that safety, in a few words.
    pub reason: String,
    /// Whether `clean` may remove the folder.
    pub removable: bool,
    /// Why `clean` keeps it (`None` when removable).
    #[serde(skip)]
    pub kept: Option<String>,
}

impl Item {
    /// Whether the folder is still on scratch (a deadline means something).
    pub fn present(&self) -> bool {
        !matches!(self.safety, Safety::Cleaned) && self.kept.as_deref() != Some(GONE)
    }

    /// The deadline's day and the days left, for a table: `-` for a folder that is gone.
    pub fn deadline_cells(&self) -> [String; 2] {
        if self.present() {
            [
                self.deadline.strftime("%Y-%m-%d").to_string(),
                self.days_left.to_string(),
            ]
        } else {
            ["-".into(), "-".into()]
        }
    }
}

/// What `clean` says of a folder that is no longer there.
pub const GONE: &str = "already gone";

/// What to include.
#[derive(Debug, Clone)]
pub struct Filter {
    /// Only items whose deadline is within this window (None: everything).
    pub within: Option<Duration>,
    pub owner: Option<String>,
    pub project: Option<String>,
}

/// The report: items grouped by project and owner, most urgent first, and totals.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub generated_at: Timestamp,
    pub policy_basis: PurgeBasis,
    pub policy_age: String,
    pub policy_whole_folder: bool,
    pub within_days: Option<u64>,
    pub items: Vec<Item>,
    pub totals: Totals,
}

/// Sums over the reported items.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub items: usize,
    pub bytes: u64,
    pub files: u64,
    pub at_risk: usize,
    pub at_risk_bytes: u64,
    pub incomplete: usize,
    pub in_use: usize,
    pub expired: usize,
    pub partly_purged: usize,
}

/// What every verdict needs besides the folder itself.
#[derive(Debug, Clone, Copy)]
pub struct Assess<'a> {
    pub policy: &'a PurgePolicy,
    pub now: Timestamp,
    /// `clean` removes only inside it; without one nothing is removable.
    pub scratch_root: Option<&'a Path>,
    pub readers: &'a Readers,
}
