//! `hpcstage doctor`: checks this machine for what each command needs, one line per check
//! with the fix, so a new site (or a user on a new cluster) finds what is missing before a
//! stage or a pull-back job fails at night.
//!
//! Exit 0 only when everything the configuration uses works. A check of something the
//! configuration does not use (an SSH NAS when the NAS is mounted, SLURM with the local
//! executor) is skipped; what only degrades hpcstage (no purge policy, accounting off, no
//! Epilog) is a warning and does not fail the run. SLURM is asked once per check with a
//! short time limit: a doctor that hangs on a dead controller would be no help.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use hpcstage_slurm::client::SlurmClient;
use hpcstage_slurm::partition::PartitionLimits as Partition;
use hpcstage_staging::remote::{Location, SshOptions};
use hpcstage_staging::storage::diagnose::{self, Check as Diagnosed};
use serde::Serialize;

use super::config::{one_line, probe_settings};
use super::ExitStatus;
use crate::args::{DoctorArgs, GlobalArgs};
use crate::config::{self, Settings};
use crate::output;

/// How one check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Level {
    Ok,
    /// Works, but something is missing that hpcstage would use.
    Warn,
    /// Something the configuration uses does not work.
    Fail,
    /// Not used by this configuration, or could not be checked (a check it needs failed).
    Skip,
}

impl Level {
    fn label(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
            Level::Skip => "skip",
        }
    }
}

#[derive(Debug, Serialize)]
struct Check {
    check: &'static str,
    status: Level,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

/// The checks, in the order they ran.
#[derive(Default)]
struct Report(Vec<Check>);

impl Report {
    /// A check that needs no fix (ok or skipped).
    fn push(&mut self, check: &'static str, status: Level, detail: impl AsRef<str>) {
        self.0.push(Check {
            check,
            status,
            detail: one_line(detail.as_ref()),
            fix: None,
        });
    }

    /// A check made by a storage backend.
    fn add(&mut self, check: Diagnosed) {
        let status = match check.level {
            diagnose::CheckLevel::Ok => Level::Ok,
            diagnose::CheckLevel::Warn => Level::Warn,
            diagnose::CheckLevel::Fail => Level::Fail,
            diagnose::CheckLevel::Skip => Level::Skip,
        };
        match check.fix {
            Some(fix) => self.with_fix(check.name, status, check.detail, fix),
            None => self.push(check.name, status, check.detail),
        }
    }

    /// A check that failed or warns, with how to fix it.
    fn with_fix(
        &mut self,
        check: &'static str,
        status: Level,
        detail: impl AsRef<str>,
        fix: impl AsRef<str>,
    ) {
        self.0.push(Check {
            check,
            status,
            detail: one_line(detail.as_ref()),
            fix: Some(one_line(fix.as_ref())),
        });
    }
}

pub(crate) fn run(global: &GlobalArgs, args: &DoctorArgs) -> Result<ExitStatus> {
    let mut report = Report::default();
    match config::load(global) {
        Ok(settings) => {
            report.push("config", Level::Ok, config_sources(global));
            folders(&settings, &mut report);
            nas(&settings, &mut report);
            purge(&settings, &mut report);
            slurm(&settings, &mut report);
        }
        Err(e) => report.with_fix(
            "config",
            Level::Fail,
            format!("{e:#}"),
            "fix the file or value named above; `hpcstage config init --print` shows every key",
        ),
    }
    if args.json {
        output::json(&report.0);
    } else {
        for c in &report.0 {
            let fix = c
                .fix
                .as_deref()
                .map(|f| format!(" -> fix: {f}"))
                .unwrap_or_default();
            output::data(format!(
                "{:<4}  {:<18}  {}{fix}",
                c.status.label(),
                c.check,
                c.detail
            ));
        }
    }
    let failed: Vec<&str> = report
        .0
        .iter()
        .filter(|c| c.status == Level::Fail)
        .map(|c| c.check)
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} of {} checks failed ({}); each line above says how to fix it",
            failed.len(),
            report.0.len(),
            failed.join(", ")
        );
    }
    Ok(ExitStatus::Success)
}

/// Which config files resolved.
fn config_sources(global: &GlobalArgs) -> String {
    let mut files: Vec<String> = [Some(config::site_file()), config::user_file()]
        .into_iter()
        .flatten()
        .chain(global.config.clone())
        .chain(
            std::env::var_os("HPCSTAGE_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        )
        .filter(|p| p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    files.dedup();
    if files.is_empty() {
        "resolves (built-in defaults only: no config file; `hpcstage config init` writes one)"
            .into()
    } else {
        format!("resolves from {}", files.join(", "))
    }
}

/// Scratch and state folders (and a local NAS root, in `nas`).
fn folders(settings: &Settings, report: &mut Report) {
    match &settings.scratch_root {
        Some(dir) => report.add(diagnose::folder("scratch_root", dir, "scratch_root")),
        None => report.with_fix(
            "scratch_root",
            Level::Warn,
            "not set: `stage` needs a destination",
            "set $SCRATCH, or scratch_root in ~/.config/hpcstage/config.toml",
        ),
    }
    // The ledger folder is made on first use: its nearest existing parent must be writable.
    let state = &settings.state_dir;
    if state.exists() {
        report.add(diagnose::folder("state_dir", state, "state_dir"));
    } else {
        match state.ancestors().find(|a| a.exists()) {
            Some(parent) if diagnose::writable(parent).is_ok() => report.push(
                "state_dir",
                Level::Ok,
                format!(
                    "{} will be created (under {})",
                    state.display(),
                    parent.display()
                ),
            ),
            _ => report.with_fix(
                "state_dir",
                Level::Fail,
                format!("{} cannot be created here", state.display()),
                "set $HPCSTAGE_STATE or state_dir to a writable folder on a shared home",
            ),
        }
    }
}

/// The NAS root, checked by the backend that serves it (a folder; an SSH host's key,
/// login, folder and `sha256sum` for `--remote-verify`; an S3 bucket and its Object Lock).
fn nas(settings: &Settings, report: &mut Report) {
    let Some(root) = &settings.nas_root else {
        report.with_fix(
            "nas_root",
            Level::Warn,
            "not set: `ingest` and `pull` need it",
            "set nas_root in /etc/hpcstage/config.toml (or pass --nas-root)",
        );
        return;
    };
    let location = match Location::parse(root.as_os_str()) {
        Ok(location) => location,
        Err(e) => {
            return report.with_fix(
                "nas_root",
                Level::Fail,
                e.to_string(),
                "write nas_root as /path or [user@]host[:port]:/path",
            )
        }
    };
    // Asked once, with a short time limit: a doctor that hangs on a dead host is no help.
    let ssh = SshOptions {
        sessions: 1,
        timeout: settings.ssh.timeout.min(std::time::Duration::from_secs(15)),
        retries: 0,
        ..settings.ssh.clone()
    };
    let needs = diagnose::Needs {
        remote_verify: settings.remote_verify,
    };
    for check in diagnose::diagnose(&location, &ssh, &settings.s3, needs) {
        report.add(check);
    }
}

fn purge(settings: &Settings, report: &mut Report) {
    let value = |key: &str| {
        settings
            .provenance
            .iter()
            .find(|(k, _, _)| k == key)
            .and_then(|(_, v, _)| v.as_deref())
            .unwrap_or("?")
    };
    let detail = format!(
        "basis {}, age {}, warn {}{}",
        value("purge.basis"),
        value("purge.age"),
        value("purge.warn"),
        if settings.policy.whole_folder {
            ", whole folders"
        } else {
            ""
        }
    );
    if settings.policy_configured {
        report.push("purge policy", Level::Ok, detail);
    } else {
        report.with_fix(
            "purge policy",
            Level::Warn,
            format!("not configured: deadlines assume {detail}"),
            "set [purge] basis and age, from the site's scratch policy, in /etc/hpcstage/config.toml",
        );
    }
}

/// sinfo, the transfer partition, sbatch, sacct and the Epilog.
fn slurm(settings: &Settings, report: &mut Report) {
    const CHECKS: [&str; 5] = ["sinfo", "transfer partition", "sbatch", "sacct", "epilog"];
    let client = SlurmClient::new(probe_settings(&settings.client));
    let executor = settings.slurm.executor.as_str();
    if executor == "local" {
        for c in CHECKS {
            report.push(c, Level::Skip, "executor = local: SLURM is not used");
        }
        return;
    }
    if !client.available() {
        let (level, detail) = if executor == "slurm" {
            (Level::Fail, "sbatch is not on PATH, and executor = slurm")
        } else {
            (
                Level::Warn,
                "sbatch is not on PATH: jobs run with the local executor on this node",
            )
        };
        report.with_fix(
            "sinfo",
            level,
            detail,
            "load the SLURM module or add SLURM's bin folder to PATH (or set [slurm] executor = \"local\")",
        );
        for c in &CHECKS[1..] {
            report.push(c, Level::Skip, "SLURM is not installed here");
        }
        return;
    }
    let partitions = match client.partitions() {
        Ok(p) => {
            let names: Vec<String> = p.iter().map(|p| p.name.clone()).collect();
            report.push(
                "sinfo",
                Level::Ok,
                format!("answers; partitions: {}", names.join(", ")),
            );
            Some(p)
        }
        Err(e) => {
            report.with_fix(
                "sinfo",
                Level::Fail,
                e.to_string(),
                "check that the controller is up (`scontrol ping`) and that SLURM_CONF or /etc/slurm/slurm.conf names it",
            );
            None
        }
    };
    let transfer = &settings.slurm.transfer_partition;
    match &partitions {
        Some(p) => transfer_partition(&client, p, transfer, report),
        None => {
            report.push("transfer partition", Level::Skip, "sinfo did not answer");
            report.push(
                "sbatch",
                Level::Skip,
                "sinfo did not answer: the controller is unreachable",
            );
        }
    }
    match client.accounting_enabled() {
        Ok(true) => report.push("sacct", Level::Ok, "answers; accounting is on"),
        Ok(false) => report.with_fix(
            "sacct",
            Level::Warn,
            "accounting storage is disabled: finished jobs are known only until the controller forgets them (MinJobAge)",
            "admins: AccountingStorageType=accounting_storage/slurmdbd in slurm.conf",
        ),
        Err(e) => report.with_fix(
            "sacct",
            Level::Fail,
            e.to_string(),
            "check that slurmdbd is up (`sacctmgr show cluster`); job states need it",
        ),
    }
    if partitions.is_some() {
        epilog(&client, report);
    } else {
        report.push(
            "epilog",
            Level::Skip,
            "sinfo did not answer: the controller is unreachable",
        );
    }
}

fn transfer_partition(
    client: &SlurmClient,
    partitions: &[Partition],
    transfer: &str,
    report: &mut Report,
) {
    if !partitions.iter().any(|p| p.name == transfer) {
        let suggestion = super::config::transfer_like(partitions)
            .map(|p| format!("set [slurm] transfer_partition = \"{p}\""))
            .unwrap_or_else(|| "ask the admins which partition runs data transfers, and set [slurm] transfer_partition".into());
        report.with_fix(
            "transfer partition",
            Level::Fail,
            format!("{transfer:?} is not a partition sinfo lists: pull-back jobs would be refused"),
            suggestion,
        );
        report.push("sbatch", Level::Skip, "no transfer partition to test");
        return;
    }
    report.push(
        "transfer partition",
        Level::Ok,
        format!("{transfer} exists"),
    );
    match client.test_submit(transfer) {
        Ok(()) => report.push(
            "sbatch",
            Level::Ok,
            format!("the controller accepts a job on {transfer} (sbatch --test-only)"),
        ),
        Err(e) => report.with_fix(
            "sbatch",
            Level::Fail,
            e.to_string(),
            format!("check your account and its access to partition {transfer} (`sacctmgr show assoc user=$USER`)"),
        ),
    }
}

/// The Epilog records job ends for `status`; optional, so its absence is a warning.
fn epilog(client: &SlurmClient, report: &mut Report) {
    let install = "admins: Epilog=/usr/local/sbin/hpcstage-epilog in slurm.conf, with the wrapper \
                   from the release tarball on every node (README, Install)";
    let value = match client.config_value("Epilog") {
        Ok(Some(v)) => v,
        Ok(None) => {
            return report.with_fix(
                "epilog",
                Level::Warn,
                "no Epilog in slurm.conf: job ends are recorded only when someone runs `hpcstage status`",
                install,
            )
        }
        Err(e) => return report.with_fix("epilog", Level::Warn, e.to_string(), "check `scontrol show config`"),
    };
    let scripts: Vec<PathBuf> = value.split(',').map(|s| PathBuf::from(s.trim())).collect();
    let present: Vec<&PathBuf> = scripts.iter().filter(|p| p.is_file()).collect();
    if present.is_empty() {
        if compute_node() {
            report.with_fix(
                "epilog",
                Level::Fail,
                format!("slurm.conf names Epilog={value}, which is missing on this compute node: SLURM drains a node whose Epilog fails"),
                "install the Epilog script on every node",
            );
        } else {
            report.push(
                "epilog",
                Level::Skip,
                format!("Epilog={value}; not a compute node (no slurmd here), so not checked here"),
            );
        }
        return;
    }
    match present.iter().find(|p| calls_hpcstage(p)) {
        Some(p) => report.push("epilog", Level::Ok, format!("{} runs `hpcstage epilogue`", p.display())),
        None => report.with_fix(
            "epilog",
            Level::Warn,
            format!("Epilog={value} does not run `hpcstage epilogue`"),
            "add `hpcstage epilogue --timeout 5s` to it (it always exits 0), or see README, Install",
        ),
    }
}

/// Whether an Epilog script calls `hpcstage epilogue`.
fn calls_hpcstage(script: &Path) -> bool {
    std::fs::read(script)
        .map(|b| {
            let text = String::from_utf8_lossy(&b[..b.len().min(64 * 1024)]);
            text.contains("hpcstage") && text.contains("epilogue")
        })
        .unwrap_or(false)
}

/// Whether slurmd runs on this machine.
fn compute_node() -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs
        .flatten()
        .any(|p| std::fs::read_to_string(p.path().join("comm")).is_ok_and(|c| c.trim() == "slurmd"))
}
