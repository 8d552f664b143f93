//! `hpcstage demo`: the whole lifecycle on a generated dataset, with a temporary NAS,
//! scratch and state folder, so a new user (or a laptop) sees everything work.

use anyhow::Result;

use super::Status;
use crate::args::DemoArgs;
use crate::config::Settings;

pub(crate) fn run(_settings: &Settings, _args: &DemoArgs) -> Result<Status> {
    anyhow::bail!("the demo is not built yet")
}
