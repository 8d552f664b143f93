//! `hpcstage retry RUN` and `hpcstage dismiss RUN`: the two ways to finish a run whose
//! jobs failed. Retry resubmits the failed array tasks into the same run folder with a new
//! pull-back job; dismiss records that the owner gives the results up, so the run stops
//! being AT RISK and `clean` may remove it.

use anyhow::Result;
use hpcstage_lifecycle::backend::Backend;
use hpcstage_lifecycle::chain::retry as retry_run;
use hpcstage_lifecycle::refresh::refresh;
use hpcstage_lifecycle::run::{dismiss as dismiss_run, Executor, RunStore, RunView};

use super::Status;
use crate::args::{DismissArgs, RetryArgs};
use crate::config::Settings;
use crate::output;

/// The run, with its job states brought up to date.
fn refreshed(settings: &Settings, store: &RunStore, run: &str) -> Result<RunView> {
    let id = store.resolve(run)?;
    let mut views = vec![store.load(&id)?];
    for w in refresh(store, &mut views, &settings.state_dir, &settings.client) {
        output::warn(w);
    }
    Ok(views.remove(0))
}

pub(crate) fn retry(settings: &Settings, args: &RetryArgs) -> Result<Status> {
    let store = RunStore::open(&settings.state_dir)?;
    let view = refreshed(settings, &store, &args.run)?;
    let backend =
        Backend::for_executor(view.record.executor, &settings.state_dir, &settings.client);
    let chain = retry_run(&store, &view, &backend, args.array.as_deref())?;
    if view.record.executor == Executor::Local {
        let exe = std::env::current_exe()?;
        super::submit::spawn_local_runner(settings, &exe, &chain)?;
    }
    super::submit::print_chain(&chain, args.json, false);
    Ok(Status::Success)
}

pub(crate) fn dismiss(settings: &Settings, args: &DismissArgs) -> Result<Status> {
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
    Ok(Status::Success)
}
