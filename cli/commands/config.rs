//! `hpcstage config show`: the resolved configuration and where each value came from.
//! `hpcstage config init` lives in `config/init.rs`.

mod init;

use anyhow::Result;
use serde::Serialize;

pub(crate) use self::init::{init, one_line, probe_settings, transfer_like};
use super::ExitStatus;
use crate::config::Settings;
use crate::output;

#[derive(Serialize)]
struct Row<'a> {
    key: &'a str,
    /// `null` for a value nothing set.
    value: Option<&'a str>,
    source: &'a str,
}

pub(crate) fn show(settings: &Settings, json: bool) -> Result<ExitStatus> {
    if json {
        let rows: Vec<Row<'_>> = settings
            .provenance
            .iter()
            .map(|(key, value, source)| Row {
                key,
                value: value.as_deref(),
                source,
            })
            .collect();
        output::json(&rows);
    } else {
        let mut t = output::table(&["key", "value", "source"]);
        for (k, v, s) in &settings.provenance {
            t.add_row(vec![k, v.as_deref().unwrap_or("(unset)"), s]);
        }
        output::data(t.to_string());
        if let Some(warning) = settings.policy_warning() {
            output::warn(warning);
        }
    }
    Ok(ExitStatus::Success)
}
