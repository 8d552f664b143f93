//! `hpcstage copies [PRJ/DATASET]`: the 3-2-1 check.

use anyhow::Result;

use super::Status;
use crate::args::CopiesArgs;
use crate::config::Settings;

pub(crate) fn run(_settings: &Settings, _args: &CopiesArgs) -> Result<Status> {
    anyhow::bail!("not yet")
}
