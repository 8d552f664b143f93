//! `hpcstage config init`: a commented config file with every key, filled in with what this
//! machine tells ($SCRATCH, the partitions `sinfo` lists, whether `sacct` answers). It never
//! overwrites a file. The same text, undetected, is the example site config of the release
//! tarball (`config init --site --print --no-detect`), and a test checks that it names
//! every key `Config` has and nothing else, so it cannot drift from the real keys.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hpcstage_slurm::client::{ClientSettings, SlurmClient};
use hpcstage_slurm::partition::PartitionLimits as Partition;

use crate::args::ConfigInitArgs;
use crate::config::{self, Config};
use crate::exit::ExitStatus;
use crate::output;

/// What `config init` found on this machine to fill in.
#[derive(Debug, Default)]
pub(crate) struct Detected {
    /// `$SCRATCH`.
    pub(crate) scratch: Option<PathBuf>,
    /// The partitions `sinfo` lists, or why it did not answer (`None`: not asked).
    pub(crate) partitions: Option<Result<Vec<Partition>, String>>,
    /// Whether accounting is on, or why `sacct` did not answer (`None`: not asked).
    pub(crate) accounting: Option<Result<bool, String>>,
}

impl Detected {
    /// Asks `$SCRATCH`, `sinfo` and `sacct` (one try each, 10 s at most).
    pub(crate) fn probe() -> Detected {
        let client = SlurmClient::new(probe_settings(&ClientSettings::default()));
        let slurm = client.available();
        Detected {
            scratch: std::env::var_os("SCRATCH")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            partitions: slurm.then(|| client.partitions().map_err(|e| e.to_string())),
            accounting: slurm.then(|| client.accounting_enabled().map_err(|e| e.to_string())),
        }
    }

    /// The partition that looks like the one for transfers, if any.
    pub(crate) fn transfer_partition(&self) -> Option<&str> {
        let Some(Ok(partitions)) = &self.partitions else {
            return None;
        };
        transfer_like(partitions)
    }
}

/// The SLURM client settings for a quick look at the cluster: one try, 10 s at most.
pub(crate) fn probe_settings(base: &ClientSettings) -> ClientSettings {
    ClientSettings {
        retries: 0,
        timeout: base.timeout.min(Duration::from_secs(10)),
        ..base.clone()
    }
}

/// The first partition whose name says it is for data movement: one holding "transfer",
/// "xfer", "dtn", "datamover" or "copy" (in that order of preference), else one named
/// "io" or "data" (not any name holding those letters: "bioinfo" is no transfer partition).
pub(crate) fn transfer_like(partitions: &[Partition]) -> Option<&str> {
    const PARTS: &[&str] = &["transfer", "xfer", "dtn", "datamover", "copy"];
    const WHOLE: &[&str] = &["io", "data"];
    let lower = |p: &Partition| p.name.to_ascii_lowercase();
    PARTS
        .iter()
        .find_map(|hint| partitions.iter().find(|p| lower(p).contains(hint)))
        .or_else(|| {
            partitions
                .iter()
                .find(|p| WHOLE.contains(&lower(p).as_str()))
        })
        .map(|p| p.name.as_str())
}

/// `hpcstage config init`: writes a commented config, never over an existing file.
pub(crate) fn init(args: &ConfigInitArgs) -> Result<ExitStatus> {
    let detected = if args.no_detect {
        Detected::default()
    } else {
        Detected::probe()
    };
    let text = render_commented(&detected, args.site);
    if args.print {
        output::data_bytes(text.as_bytes());
        return Ok(ExitStatus::Success);
    }
    let path = if args.site {
        config::site_file()
    } else {
        config::user_file().context("cannot tell where the user config goes: $HOME is not set")?
    };
    let needs_root = if args.site {
        " (writing the site config needs root)"
    } else {
        ""
    };
    if let Some(dir) = path.parent() {
        fs_err::create_dir_all(dir)
            .with_context(|| format!("cannot create {}{needs_root}", dir.display()))?;
    }
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "{} exists: `config init` never overwrites a config; edit it (see `hpcstage config init --print`), \
             or move it away and run again",
            path.display()
        ),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot create {}{needs_root}", path.display()))
        }
    };
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    output::data(path.display().to_string());
    for line in detected_notes(&detected) {
        output::note(line);
    }
    output::note("check it with `hpcstage config show` and `hpcstage doctor`");
    Ok(ExitStatus::Success)
}

/// One line per thing detected, for the terminal.
fn detected_notes(d: &Detected) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(s) = &d.scratch {
        notes.push(format!("$SCRATCH: {}", s.display()));
    }
    match &d.partitions {
        Some(Ok(p)) => notes.push(format!(
            "sinfo lists {}; transfer partition: {}",
            partition_list(p),
            d.transfer_partition().unwrap_or("none looks like one")
        )),
        Some(Err(e)) => notes.push(format!("sinfo did not answer: {e}")),
        None => {}
    }
    match &d.accounting {
        Some(Ok(true)) => notes.push("sacct answers: accounting is on".into()),
        Some(Ok(false)) => notes.push("sacct: accounting storage is disabled".into()),
        Some(Err(e)) => notes.push(format!("sacct did not answer: {e}")),
        None => {}
    }
    notes
}

fn partition_list(partitions: &[Partition]) -> String {
    partitions
        .iter()
        .map(|p| format!("{}{}", p.name, if p.is_default { " (default)" } else { "" }))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A TOML string literal.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The config file `config init` writes: every key with what it does, the built-in
/// default commented out (`# key = value`) unless this machine told a better value.
pub(crate) fn render_commented(d: &Detected, site: bool) -> String {
    let defaults = Config::default();
    let (slurm, ssh, s3, purge) = (
        &defaults.slurm,
        &defaults.ssh,
        &defaults.s3,
        &defaults.purge,
    );
    let mut t = String::new();
    let mut line = |s: &str| {
        t.push_str(s);
        t.push('\n');
    };
    line(&format!(
        "# hpcstage configuration: {}, written by `hpcstage config init` (hpcstage {}).",
        if site {
            "the site file, for every user of this machine"
        } else {
            "your user file"
        },
        env!("CARGO_PKG_VERSION")
    ));
    line("#");
    line("# Layers, later wins: built-in defaults < /etc/hpcstage/config.toml (site)");
    line("# < ~/.config/hpcstage/config.toml (user) < $HPCSTAGE_CONFIG or --config < flags.");
    line("# A line `# key = value` shows the built-in default: remove the `# ` to set it.");
    line("# Unknown keys are errors. Check the result with `hpcstage config show` and `hpcstage doctor`.");
    line("");
    line("# Root of the lab NAS, holding <project>/raw/<dataset> and <project>/results/<workflow>/<run>:");
    line("# a folder mounted on this machine, or [user@]host[:port]:/path on an SSH host (its host key");
    line("# must be in ~/.ssh/known_hosts or /etc/ssh/ssh_known_hosts).");
    line("# nas_root = \"/nas/lab\"");
    line("");
    line("# Root of scratch space: datasets are staged to <scratch_root>/<project>/<dataset>.");
    line("# Default: $SCRATCH, when it is set.");
    match (&d.scratch, site) {
        (Some(s), false) => {
            line("# Detected: $SCRATCH.");
            line(&format!("scratch_root = {}", quoted(&s.to_string_lossy())));
        }
        (Some(_), true) => {
            line("# $SCRATCH is set here: each user's own $SCRATCH is used, so leave this unset.");
            line("# scratch_root = \"/scratch/alice\"");
        }
        (None, _) => {
            line(
                "# $SCRATCH is not set here: set the scratch folder (per user, in the user file).",
            );
            line("# scratch_root = \"/scratch/alice\"");
        }
    }
    line("");
    line(
        "# Where hpcstage keeps its ledger of stages and runs; keep it on storage every node sees.",
    );
    line("# Default: $HPCSTAGE_STATE, else $XDG_STATE_HOME/hpcstage (~/.local/state/hpcstage).");
    line("# state_dir = \"/home/alice/.local/state/hpcstage\"");
    line("");
    line("# Files in flight per copy or hash; 0 = sixteen per core, 16 to 64.");
    line(&format!("# jobs = {}", defaults.jobs));
    line("");
    line("# More job template folders, after /etc/hpcstage/templates and ~/.config/hpcstage/templates.");
    line("# template_dirs = []");
    line("");
    line(
        "# Copies of the raw data kept outside hpcstage, for the 3-2-1 check of `hpcstage copies`:",
    );
    line("# name, location ({project} and {dataset} are filled in; a folder reachable here is");
    line(
        "# re-checked by `copies --verify`), media (disk | tape | object), offsite, and optionally",
    );
    line(
        "# datasets, PRJ/NAME globs (default: every dataset). One [[copies]] table each, or inline:",
    );
    line("# copies = [{ name = \"tape-2026\", location = \"/mnt/ltfs/{project}/{dataset}\", media = \"tape\", offsite = true }]");
    line("");
    line("[slurm]");
    line("# auto (SLURM when sbatch is found) | slurm | local (bash on this node, no SLURM)");
    line(&format!("# executor = {}", quoted(&slurm.executor)));
    line("# Partition of pull-back and stage-in jobs: long, light jobs that reach the NAS.");
    match &d.partitions {
        Some(Ok(p)) => {
            line(&format!("# sinfo lists: {}.", partition_list(p)));
            match d.transfer_partition() {
                Some(name) => {
                    line(&format!(
                        "# Suggested: {name}, the one that looks like a transfer partition."
                    ));
                    line(&format!("transfer_partition = {}", quoted(name)));
                }
                None => {
                    line(
                        "# None looks like a transfer partition: ask the admins which one to use.",
                    );
                    line(&format!(
                        "# transfer_partition = {}",
                        quoted(&slurm.transfer_partition)
                    ));
                }
            }
        }
        Some(Err(e)) => {
            line(&format!("# sinfo did not answer: {}", one_line(e)));
            line(&format!(
                "# transfer_partition = {}",
                quoted(&slurm.transfer_partition)
            ));
        }
        None => line(&format!(
            "# transfer_partition = {}",
            quoted(&slurm.transfer_partition)
        )),
    }
    line("# Time limit of pull-back jobs.");
    line(&format!("# pull_time = {}", quoted(&slurm.pull_time)));
    line("# Time limit of one sbatch/sacct/squeue/scontrol call.");
    line(&format!(
        "# command_timeout = {}",
        quoted(&slurm.command_timeout)
    ));
    line("# Retries on \"Socket timed out\" and the like, with back-off.");
    line(&format!("# retries = {}", slurm.retries));
    match &d.accounting {
        Some(Ok(true)) => line("# sacct answered: accounting is on (job states survive the controller forgetting them)."),
        Some(Ok(false)) => line("# sacct: accounting storage is disabled; hpcstage asks scontrol instead, which forgets finished jobs after MinJobAge."),
        Some(Err(e)) => line(&format!("# sacct did not answer: {}", one_line(e))),
        None => {}
    }
    line("");
    line("[ssh]");
    line("# For a NAS given as [user@]host[:port]:/path. Connections used in parallel by one transfer:");
    line(&format!("# sessions = {}", ssh.sessions));
    line("# A network operation blocked this long counts as a lost connection.");
    line(&format!("# timeout = {}", quoted(&ssh.timeout)));
    line("# Reconnects (with back-off) before a transfer gives up; the next run resumes.");
    line(&format!("# retries = {}", ssh.retries));
    line("# Also run sha256sum -c on the NAS host after an upload (it needs sha256sum there).");
    line(&format!("# remote_verify = {}", ssh.remote_verify));
    line("# Small files come through one GNU tar pipe per batch (1.29 or later on the NAS host);");
    line("# the command that runs it there, or \"\" to read every file over SFTP.");
    line(&format!("# tar = {}", quoted(&ssh.tar)));
    line("");
    line("[s3]");
    line("# For S3 sources and nas_root = \"s3://bucket/prefix\". Credentials are not set here: they");
    line("# come from the AWS chain (AWS_* variables, ~/.aws/credentials, the profile below).");
    line("# The service's address; unset: AWS itself (or $AWS_ENDPOINT_URL).");
    line("# endpoint = \"https://s3.example.org\"");
    line("# region = \"us-east-1\"");
    line("# A profile of ~/.aws/config and ~/.aws/credentials.");
    line("# profile = \"lab\"");
    line("# http://host/bucket/key addressing (on-site servers); false: bucket.host.");
    line(&format!("# path_style = {}", s3.path_style));
    line("# Object Lock of what ingest, pull --worm and archive --retain write: COMPLIANCE | GOVERNANCE");
    line(&format!("# lock_mode = {}", quoted(&s3.lock_mode)));
    line("# How long that data is retained, e.g. \"10y\".");
    line(&format!("# retain = {}", quoted(&s3.retain)));
    line("# The S3 service is off-site: archives written to it count as off-site copies (3-2-1).");
    line(&format!("# offsite = {}", s3.offsite));
    line("");
    line("[purge]");
    line("# The site's scratch purge policy, from its documentation. Without it hpcstage assumes");
    line("# mtime / 30 days and says so on every stage: set it in the site file.");
    line("# What the purge looks at: atime | mtime | ctime | created");
    line(&format!("# basis = {}", quoted(&purge.basis)));
    line("# Files older than this are purged, e.g. \"30d\", \"60 days\".");
    line(&format!("# age = {}", quoted(&purge.age)));
    line("# How long before a purge `report` starts warning.");
    line(&format!("# warn = {}", quoted(&purge.warn)));
    line("# The site deletes a whole top-level folder once one file in it qualifies.");
    line(&format!("# whole_folder = {}", purge.whole_folder));
    t
}

/// A (multi-line) message on one line.
pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The template with every `# key = value` line made live.
    fn uncommented(text: &str) -> String {
        text.lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest.split_once(" = ").is_some_and(|(k, _)| {
                        k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
                {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A config file's text over the built-in defaults, as `config::load` layers it.
    fn layered(text: &str) -> Config {
        use figment::providers::{Format, Serialized, Toml};
        figment::Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    /// Every key path (`slurm.retries`) of a TOML table.
    fn keys(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
        for (k, v) in table {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(t) => keys(&path, t, out),
                _ => out.push(path),
            }
        }
    }

    #[test]
    fn the_commented_config_names_every_key_and_nothing_else() {
        let text = render_commented(&Detected::default(), true);
        // Every line is a comment, a section or empty: nothing is set without detection.
        assert!(
            text.lines()
                .all(|l| l.is_empty() || l.starts_with('#') || l.starts_with('[')),
            "{text}"
        );
        let live = uncommented(&text);
        // deny_unknown_fields: a key the template names that Config lacks fails here.
        let parsed: Config = toml::from_str(&live).unwrap_or_else(|e| panic!("{e}\n{live}"));
        let mut in_template = Vec::new();
        keys(
            "",
            &toml::to_string(&parsed).unwrap().parse().unwrap(),
            &mut in_template,
        );
        // Every key Config has (optional ones given a value) must be in the template.
        let full = Config {
            nas_root: Some("/n".into()),
            scratch_root: Some("/s".into()),
            state_dir: Some("/st".into()),
            template_dirs: vec!["/t".into()],
            copies: vec![hpcstage_staging::copies::DeclaredCopy {
                name: "t".into(),
                location: "/l".into(),
                media: "tape".into(),
                offsite: true,
                datasets: Vec::new(),
            }],
            s3: crate::config::S3Config {
                endpoint: Some("https://s3".into()),
                region: Some("r".into()),
                profile: Some("p".into()),
                ..Default::default()
            },
            ..Config::default()
        };
        let mut all = Vec::new();
        keys(
            "",
            &toml::to_string(&full).unwrap().parse().unwrap(),
            &mut all,
        );
        let mut missing: Vec<_> = all.iter().filter(|k| !in_template.contains(k)).collect();
        missing.sort();
        assert!(
            missing.is_empty(),
            "keys missing from `config init`'s template: {missing:?}"
        );
    }

    #[test]
    fn detected_values_are_filled_in() {
        let d = Detected {
            scratch: Some("/scratch/alice".into()),
            partitions: Some(Ok(vec![
                Partition {
                    name: "debug".into(),
                    is_default: true,
                    ..Partition::default()
                },
                Partition {
                    name: "dtn".into(),
                    ..Partition::default()
                },
            ])),
            accounting: Some(Ok(true)),
        };
        let user = layered(&render_commented(&d, false));
        assert_eq!(
            user.scratch_root.as_deref(),
            Some(Path::new("/scratch/alice"))
        );
        assert_eq!(user.slurm.transfer_partition, "dtn");
        // A site file never pins one user's $SCRATCH.
        let site = layered(&render_commented(&d, true));
        assert_eq!(site.scratch_root, None);
    }

    #[test]
    fn transfer_partition_guess() {
        let p = |names: &[&str]| -> Vec<Partition> {
            names
                .iter()
                .map(|n| Partition {
                    name: (*n).into(),
                    ..Partition::default()
                })
                .collect()
        };
        assert_eq!(
            transfer_like(&p(&["debug", "gpu", "transfer"])),
            Some("transfer")
        );
        assert_eq!(
            transfer_like(&p(&["cpu", "io", "data_xfer"])),
            Some("data_xfer")
        );
        assert_eq!(transfer_like(&p(&["cpu", "gpu"])), None);
        assert_eq!(transfer_like(&p(&["bioinfo", "prio"])), None);
        assert_eq!(transfer_like(&p(&["cpu", "IO"])), Some("IO"));
    }
}
