//! `hpcstage dismiss RUN`: the owner gives a failed run's results up. Recorded in the
//! ledger and the run folder, so the run stops being AT RISK in `report` and `clean` may
//! remove its folder. The other way to finish such a run is `retry`.

use anyhow::Result;
use hpcstage_lifecycle::run::{dismiss as dismiss_run, RunStore};

use super::retry::refreshed;
use super::ExitStatus;
use crate::args::DismissArgs;
use crate::config::Settings;
use crate::output;

pub(crate) fn run(settings: &Settings, args: &DismissArgs) -> Result<ExitStatus> {
    let store = RunStore::open(&settings.state_dir)?;
    let view = refreshed(settings, &store, &args.run)?;
    let d = dismiss_run(&store, &view, args.reason.clone())?;
    if args.json {
        output::json(&d);
    } else {
        output::data(format!(
            "run {} dismissed{}: no longer AT RISK; `hpcstage clean` may remove {}",
            d.run_id,
            d.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            view.record.run_dir.display()
        ));
    }
    Ok(ExitStatus::Success)
}
