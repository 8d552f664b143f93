//! `hpcstage config show`: the resolved configuration and where each value came from.
//! `hpcstage config init` lives in `config/init.rs`.

mod init;

use anyhow::Result;
use serde::Serialize;

pub(crate) use self::init::{init, one_line, probe_settings, transfer_like};
use super::Status;
use crate::config::Settings;
use crate::output;

#[derive(Serialize)]
struct Row<'a> {
    key: &'a str,
    value: &'a str,
    source: &'a str,
}

pub(crate) fn show(settings: &Settings, json: bool) -> Result<Status> {
    if json {
        let rows: Vec<Row<'_>> = settings
            .provenance
            .iter()
            .map(|(key, value, source)| Row { key, value, source })
            .collect();
        output::json(&rows);
    } else {
        let mut t = output::table(&["key", "value", "source"]);
        for (k, v, s) in &settings.provenance {
            t.add_row(vec![k, v, s]);
        }
        output::data(t.to_string());
        if !settings.policy_configured {
            output::warn(
                "no purge policy configured; the defaults (mtime, 30 days) are a guess: \
                 set [purge] basis/age in /etc/hpcstage/config.toml",
            );
        }
    }
    Ok(Status::Success)
}
