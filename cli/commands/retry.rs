//! `hpcstage retry RUN`: one of the two ways to finish a run whose jobs failed (the other
//! is `dismiss`). It resubmits the failed array tasks into the same run folder with a new
//! pull-back job, so that one pull collects the outputs of every task.

use anyhow::Result;
use hpcstage_lifecycle::backend::Backend;
use hpcstage_lifecycle::chain::retry as retry_run;
use hpcstage_lifecycle::refresh::refresh;
use hpcstage_lifecycle::run::{Executor, RunStore, RunView};

use super::ExitStatus;
use crate::args::RetryArgs;
use crate::config::Settings;
use crate::output;

/// The run, with its job states brought up to date.
pub(crate) fn refreshed(settings: &Settings, store: &RunStore, run: &str) -> Result<RunView> {
    let id = store.resolve(run)?;
    let mut views = vec![store.load(&id)?];
    for w in refresh(store, &mut views, &settings.state_dir, &settings.client) {
        output::warn(w);
    }
    Ok(views.remove(0))
}

pub(crate) fn run(settings: &Settings, args: &RetryArgs) -> Result<ExitStatus> {
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
    Ok(ExitStatus::Success)
}
