//! Layered configuration: built-in defaults < site file < user file < $HPCSTAGE_CONFIG
//! (or --config) < flags, resolved into [`Settings`] that the commands use.
//!
//! Every value remembers where it came from, for `hpcstage config show`. Unknown keys are
//! errors, so a typo in a site file does not silently fall back to a default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use etcetera::BaseStrategy;
use figment::providers::{Format, Serialized, Toml};
use figment::{Figment, Metadata, Profile, Provider};
use hpcstage_staging::copies::{DeclaredCopy, MEDIA};
use hpcstage_staging::policy::{PurgeBasis, PurgePolicy};
use hpcstage_staging::remote::{Location, SshOptions};
use hpcstage_staging::storage::{LockMode, Retention, S3Options};
use serde::{Deserialize, Serialize};

use crate::args::GlobalArgs;

/// The configuration file's shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Root of the lab NAS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) nas_root: Option<PathBuf>,
    /// Root of scratch space.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) scratch_root: Option<PathBuf>,
    /// Ledger folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) state_dir: Option<PathBuf>,
    /// Files in flight; 0 means sixteen per core (16 to 64).
    pub(crate) jobs: usize,
    pub(crate) purge: PurgeConfig,
    /// Extra template folders (after the site and user ones; later wins).
    #[serde(default)]
    pub(crate) template_dirs: Vec<PathBuf>,
    #[serde(default)]
    pub(crate) slurm: SlurmConfig,
    /// Remote NAS access (`nas_root = "host:/path"` or `user@host:port:/path` sources).
    pub(crate) ssh: SshConfig,
    /// Copies of the raw data kept outside hpcstage (`[[copies]]`), for `hpcstage copies`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) copies: Vec<DeclaredCopy>,
    /// S3 object storage (`nas_root = "s3://bucket/prefix"`, `stage s3://...`).
    #[serde(default)]
    pub(crate) s3: S3Config,
}

/// `[s3]`: where the S3 service is and how WORM data is kept there. Credentials are not
/// configured here: they come from the AWS chain (environment, ~/.aws/credentials, the
/// profile named here).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct S3Config {
    /// e.g. "https://s3.lab.org"; unset: AWS (or $AWS_ENDPOINT_URL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) region: Option<String>,
    /// A profile of ~/.aws/config and ~/.aws/credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) profile: Option<String>,
    /// http://host/bucket/key addressing (on-site servers); false: bucket.host.
    pub(crate) path_style: bool,
    /// Object Lock mode of WORM data: "COMPLIANCE" or "GOVERNANCE".
    pub(crate) lock_mode: String,
    /// How long WORM data is retained, e.g. "10y".
    pub(crate) retain: String,
    /// The S3 service is off-site: archives written to it count as off-site copies.
    pub(crate) offsite: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: None,
            region: None,
            profile: None,
            path_style: true,
            lock_mode: "COMPLIANCE".into(),
            retain: "10y".into(),
            offsite: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct SshConfig {
    /// SSH connections used in parallel for one transfer.
    pub(crate) sessions: usize,
    /// How long one network operation may block before the connection counts as lost.
    pub(crate) timeout: String,
    /// Reconnects after a dropped connection before the transfer fails.
    pub(crate) retries: u32,
    /// Check uploads with `sha256sum -c` on the NAS host (as `--remote-verify`).
    pub(crate) remote_verify: bool,
    /// The command that runs GNU tar on the NAS host, to stream small files; "" for none.
    pub(crate) tar: String,
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            sessions: 4,
            timeout: "60s".into(),
            retries: 5,
            remote_verify: false,
            tar: "tar".into(),
        }
    }
}

/// `[slurm]`: how jobs are submitted.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct SlurmConfig {
    /// "auto" (SLURM when `sbatch` is found, else local), "slurm" or "local".
    pub(crate) executor: String,
    /// Partition of pull-back and stage-in jobs.
    pub(crate) transfer_partition: String,
    /// Time limit of pull-back jobs.
    pub(crate) pull_time: String,
    /// Time limit of one SLURM command, e.g. "30s".
    pub(crate) command_timeout: String,
    /// Retries of a SLURM command on transient errors.
    pub(crate) retries: u32,
}

impl Default for SlurmConfig {
    fn default() -> Self {
        SlurmConfig {
            executor: "auto".into(),
            transfer_partition: "transfer".into(),
            pull_time: "12:00:00".into(),
            command_timeout: "30s".into(),
            retries: 3,
        }
    }
}

/// `[purge]`: the site's scratch purge policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PurgeConfig {
    /// atime, mtime, ctime or created.
    pub(crate) basis: String,
    /// e.g. "30d", "60 days".
    pub(crate) age: String,
    /// Warning window, e.g. "7d".
    pub(crate) warn: String,
    /// The site deletes a whole top-level folder once one file in it qualifies.
    pub(crate) whole_folder: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            nas_root: None,
            scratch_root: None,
            state_dir: None,
            jobs: 0,
            purge: PurgeConfig {
                basis: "mtime".into(),
                age: "30d".into(),
                warn: "7d".into(),
                whole_folder: false,
            },
            template_dirs: Vec::new(),
            slurm: SlurmConfig::default(),
            ssh: SshConfig::default(),
            s3: S3Config::default(),
            copies: Vec::new(),
        }
    }
}

/// Resolved settings (paths known, durations parsed).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) nas_root: Option<PathBuf>,
    pub(crate) scratch_root: Option<PathBuf>,
    pub(crate) state_dir: PathBuf,
    pub(crate) jobs: usize,
    pub(crate) policy: PurgePolicy,
    /// False when no layer set the purge policy (the defaults are a guess).
    pub(crate) policy_configured: bool,
    /// (key, value, source) for `config show`; `None` for a value nothing set.
    pub(crate) provenance: Vec<(String, Option<String>, String)>,
    /// Template folders in override order (site, user, configured).
    pub(crate) template_dirs: Vec<PathBuf>,
    pub(crate) slurm: SlurmConfig,
    /// Settings of the SLURM client.
    pub(crate) client: hpcstage_slurm::client::ClientSettings,
    pub(crate) ssh: SshOptions,
    /// `[ssh] remote_verify`.
    pub(crate) remote_verify: bool,
    pub(crate) s3: S3Options,
    /// `[s3] offsite`: archives on S3 are off-site copies.
    pub(crate) s3_offsite: bool,
    /// `[[copies]]`.
    pub(crate) copies: Vec<DeclaredCopy>,
}

impl Settings {
    /// The scratch root, or an error that says how to set it.
    pub(crate) fn scratch_root(&self) -> Result<&Path> {
        self.scratch_root.as_deref().context(
            "no scratch root configured: set $SCRATCH, `scratch_root` in ~/.config/hpcstage/config.toml, \
             or pass --scratch-root DIR",
        )
    }

    /// The path part of the NAS root (local or on the NAS host), against which dataset
    /// paths are read as `<root>/<project>/raw/<dataset>`.
    pub(crate) fn nas_layout_root(&self) -> Result<Option<PathBuf>> {
        self.nas_root
            .as_deref()
            .map(|p| parse_location(p).map(|l| l.path().to_path_buf()))
            .transpose()
    }

    /// The warning of a command that uses the purge policy when no layer set it.
    pub(crate) fn policy_warning(&self) -> Option<String> {
        (!self.policy_configured).then(|| {
            let user = user_file().map_or_else(
                || "~/.config/hpcstage/config.toml".to_string(),
                |p| p.display().to_string(),
            );
            format!(
                "no purge policy configured; assuming mtime, 30 days (set [purge] basis/age in \
                 {} for the site, or in {user} for yourself)",
                site_file().display()
            )
        })
    }

    /// The NAS root, or an error that says how to set it.
    pub(crate) fn nas_root(&self) -> Result<&Path> {
        self.nas_root.as_deref().context(
            "no NAS root configured: set `nas_root` in /etc/hpcstage/config.toml or \
             ~/.config/hpcstage/config.toml, or pass --nas-root DIR",
        )
    }
}

/// A provider with a human name for `config show`.
struct Named<P> {
    name: &'static str,
    inner: P,
}

impl<P: Provider> Provider for Named<P> {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> figment::Result<figment::value::Map<Profile, figment::value::Dict>> {
        self.inner.data()
    }
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Site config file (`$HPCSTAGE_SITE_CONFIG` overrides the location).
pub(crate) fn site_file() -> PathBuf {
    env_path("HPCSTAGE_SITE_CONFIG").unwrap_or_else(|| PathBuf::from("/etc/hpcstage/config.toml"))
}

/// `$XDG_CONFIG_HOME/hpcstage/config.toml` (`~/.config/...` by default); `None` when
/// there is no home to put it in.
pub(crate) fn user_file() -> Option<PathBuf> {
    let xdg = etcetera::choose_base_strategy().ok()?;
    Some(xdg.config_dir().join("hpcstage/config.toml"))
}

/// `$XDG_STATE_HOME/hpcstage` (`~/.local/state/hpcstage` by default), `/tmp/hpcstage`
/// without a home.
fn default_state_dir() -> PathBuf {
    etcetera::choose_base_strategy()
        .ok()
        .and_then(|xdg| xdg.state_dir())
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("hpcstage")
}

/// Loads every layer and resolves the settings.
pub(crate) fn load(global: &GlobalArgs) -> Result<Settings> {
    let mut figment = Figment::new().merge(Named {
        name: "built-in default",
        inner: Serialized::defaults(Config::default()),
    });
    if let Some(scratch) = env_path("SCRATCH") {
        figment = figment.merge(Named {
            name: "$SCRATCH",
            inner: Serialized::default("scratch_root", scratch),
        });
    }
    figment = figment.merge(Toml::file(site_file()));
    if let Some(user) = user_file() {
        figment = figment.merge(Toml::file(user));
    }
    let explicit = global
        .config
        .clone()
        .or_else(|| env_path("HPCSTAGE_CONFIG"));
    if let Some(file) = &explicit {
        if !file.is_file() {
            bail!(
                "config file {} does not exist (given by --config or $HPCSTAGE_CONFIG)",
                file.display()
            );
        }
        figment = figment.merge(Toml::file(file));
    }
    if let Some(state) = env_path("HPCSTAGE_STATE") {
        figment = figment.merge(Named {
            name: "$HPCSTAGE_STATE",
            inner: Serialized::default("state_dir", state),
        });
    }
    for (key, value) in [
        ("nas_root", &global.nas_root),
        ("scratch_root", &global.scratch_root),
        ("state_dir", &global.state_dir),
    ] {
        if let Some(v) = value {
            figment = figment.merge(Named {
                name: "command line",
                inner: Serialized::default(key, location(v)?),
            });
        }
    }

    let config: Config = figment
        .extract()
        .map_err(explain)
        .context("invalid configuration (run `hpcstage config show` after fixing it)")?;

    let source_of = |key: &str| -> String {
        match figment.find_metadata(key) {
            Some(m) => source_name(m),
            None => "unset".to_string(),
        }
    };
    let basis: PurgeBasis = config
        .purge
        .basis
        .parse()
        .with_context(|| format!("purge.basis (from {})", source_of("purge.basis")))?;
    let age = parse_duration(
        "purge.age",
        &config.purge.age,
        &source_of("purge.age"),
        DAYS,
    )?;
    let warn = parse_duration(
        "purge.warn",
        &config.purge.warn,
        &source_of("purge.warn"),
        DAYS,
    )?;
    let policy_configured = ["purge.basis", "purge.age"]
        .iter()
        .any(|k| source_of(k) != "built-in default");

    let state_dir = config.state_dir.clone().unwrap_or_else(default_state_dir);
    let mut provenance = Vec::new();
    let show = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    provenance.push((
        "nas_root".into(),
        show(&config.nas_root),
        source_of("nas_root"),
    ));
    provenance.push((
        "scratch_root".into(),
        show(&config.scratch_root),
        source_of("scratch_root"),
    ));
    provenance.push((
        "state_dir".into(),
        Some(state_dir.display().to_string()),
        if config.state_dir.is_some() {
            source_of("state_dir")
        } else {
            "built-in default ($XDG_STATE_HOME/hpcstage)".into()
        },
    ));
    for (key, value) in [
        ("jobs", config.jobs.to_string()),
        ("purge.basis", basis.to_string()),
        ("purge.age", config.purge.age.clone()),
        ("purge.warn", config.purge.warn.clone()),
        ("purge.whole_folder", config.purge.whole_folder.to_string()),
    ] {
        provenance.push((key.into(), Some(value), source_of(key)));
    }

    for (key, value) in [
        ("slurm.executor", config.slurm.executor.clone()),
        (
            "slurm.transfer_partition",
            config.slurm.transfer_partition.clone(),
        ),
        ("slurm.pull_time", config.slurm.pull_time.clone()),
        (
            "slurm.command_timeout",
            config.slurm.command_timeout.clone(),
        ),
        ("slurm.retries", config.slurm.retries.to_string()),
        ("ssh.sessions", config.ssh.sessions.to_string()),
        ("ssh.timeout", config.ssh.timeout.clone()),
        ("ssh.retries", config.ssh.retries.to_string()),
        ("ssh.remote_verify", config.ssh.remote_verify.to_string()),
        ("ssh.tar", config.ssh.tar.clone()),
        ("s3.path_style", config.s3.path_style.to_string()),
        ("s3.lock_mode", config.s3.lock_mode.clone()),
        ("s3.retain", config.s3.retain.clone()),
        ("s3.offsite", config.s3.offsite.to_string()),
    ] {
        provenance.push((key.into(), Some(value), source_of(key)));
    }
    for (key, value) in [
        ("s3.endpoint", &config.s3.endpoint),
        ("s3.region", &config.s3.region),
        ("s3.profile", &config.s3.profile),
    ] {
        provenance.push((key.into(), value.clone(), source_of(key)));
    }
    let s3 = s3_options(&config.s3, &source_of)?;
    if !matches!(config.slurm.executor.as_str(), "auto" | "slurm" | "local") {
        bail!(
            "slurm.executor = {:?} (from {}): expected auto, slurm or local",
            config.slurm.executor,
            source_of("slurm.executor")
        );
    }
    let command_timeout = parse_duration(
        "slurm.command_timeout",
        &config.slurm.command_timeout,
        &source_of("slurm.command_timeout"),
        SECONDS,
    )?;
    for c in &config.copies {
        if !MEDIA.contains(&c.media.as_str()) {
            bail!(
                "copies: {:?} has media = {:?} (from {}): expected disk, tape or object",
                c.name,
                c.media,
                source_of("copies")
            );
        }
    }
    let mut template_dirs = vec![site_file().with_file_name("templates")];
    if let Some(user) = user_file() {
        template_dirs.push(user.with_file_name("templates"));
    }
    template_dirs.extend(config.template_dirs.iter().cloned());
    provenance.push((
        "template_dirs".into(),
        Some(
            template_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        "site and user folders, then template_dirs".into(),
    ));
    let client = hpcstage_slurm::client::ClientSettings {
        timeout: command_timeout,
        retries: config.slurm.retries,
        ..Default::default()
    };

    let jobs = if config.jobs == 0 {
        // Copies and hashes wait on storage far more than on the CPU (a cold small file is
        // a round trip, more so on NFS or Lustre): many files in flight per core keep both
        // busy. Measured in bench/run.sh on 2 cores, 20,000 cold 16 KiB files: manifest
        // create took 1.45 s with 8 in flight, 0.9 with 16, 0.78 with 32. Big files are
        // streamed a few at a time whatever this is (`direct::StreamSlot`).
        std::thread::available_parallelism().map_or(32, |n| (n.get() * 16).clamp(16, 64))
    } else {
        config.jobs
    };
    Ok(Settings {
        nas_root: config.nas_root.as_deref().map(location).transpose()?,
        scratch_root: config.scratch_root.as_deref().map(absolute).transpose()?,
        state_dir,
        jobs,
        policy: PurgePolicy {
            basis,
            age,
            warn,
            whole_folder: config.purge.whole_folder,
        },
        policy_configured,
        provenance,
        template_dirs,
        slurm: config.slurm.clone(),
        client,
        ssh: SshOptions {
            sessions: config.ssh.sessions.max(1),
            timeout: parse_duration(
                "ssh.timeout",
                &config.ssh.timeout,
                &source_of("ssh.timeout"),
                SECONDS,
            )?,
            retries: config.ssh.retries,
            tar: Some(config.ssh.tar.trim().to_string()).filter(|t| !t.is_empty()),
            ..SshOptions::default()
        },
        remote_verify: config.ssh.remote_verify,
        copies: config.copies.clone(),
        s3,
        s3_offsite: config.s3.offsite,
    })
}

/// `[s3]` resolved: the lock mode and retention checked.
fn s3_options(config: &S3Config, source_of: &dyn Fn(&str) -> String) -> Result<S3Options> {
    let mode = LockMode::parse(&config.lock_mode).with_context(|| {
        format!(
            "s3.lock_mode = {:?} (from {}): expected \"COMPLIANCE\" or \"GOVERNANCE\"",
            config.lock_mode,
            source_of("s3.lock_mode")
        )
    })?;
    let keep = parse_duration("s3.retain", &config.retain, &source_of("s3.retain"), YEARS)?;
    if keep < Duration::from_secs(86_400) {
        bail!(
            "s3.retain = {:?} (from {}) is shorter than a day; WORM retention is counted in days or years, e.g. \"10y\"",
            config.retain,
            source_of("s3.retain")
        );
    }
    if let Some(endpoint) = &config.endpoint {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            bail!(
                "s3.endpoint = {endpoint:?} (from {}) is not a URL; write e.g. \"https://s3.lab.org\"",
                source_of("s3.endpoint")
            );
        }
    }
    Ok(S3Options {
        endpoint: config.endpoint.clone(),
        region: config.region.clone(),
        profile: config.profile.clone(),
        path_style: config.path_style,
        retention: Retention { mode, keep },
        ..S3Options::default()
    })
}

/// The unit a bare number of a duration key most likely meant, and an example.
struct Unit {
    suffix: &'static str,
    name: &'static str,
    example: &'static str,
}

const DAYS: Unit = Unit {
    suffix: "d",
    name: "days",
    example: "\"30d\" or \"60 days\"",
};
const YEARS: Unit = Unit {
    suffix: "y",
    name: "years",
    example: "\"10y\" or \"3650d\"",
};
const SECONDS: Unit = Unit {
    suffix: "s",
    name: "seconds",
    example: "\"30s\" or \"2m\"",
};

fn parse_duration(key: &str, value: &str, source: &str, unit: Unit) -> Result<Duration> {
    let value = value.trim();
    if value.parse::<f64>().is_ok() {
        bail!(
            "{key} = {value:?} (from {source}) has no unit; write \"{value}{}\" for {value} {}",
            unit.suffix,
            unit.name
        );
    }
    humantime::parse_duration(value).map_err(|e| {
        anyhow::anyhow!(
            "{key} = {value:?} (from {source}) is not a duration ({e}); write e.g. {}",
            unit.example
        )
    })
}

/// Where a configuration value came from: the file's absolute path (figment shows files
/// relative to the current folder, which from `/` reads `etc/hpcstage/...`), or the
/// layer's name.
fn source_name(m: &Metadata) -> String {
    match &m.source {
        Some(figment::Source::File(path)) => path.display().to_string(),
        Some(other) => other.to_string(),
        None => m.name.to_string(),
    }
}

/// A configuration error as a user can act on it: the file and line of the key, and for
/// an unknown key the known one it was probably meant to be.
fn explain(errors: figment::Error) -> anyhow::Error {
    let lines: Vec<String> = errors.into_iter().map(|e| explain_one(&e)).collect();
    anyhow::anyhow!("{}", lines.join("; "))
}

fn explain_one(e: &figment::Error) -> String {
    let key = e.path.join(".");
    let file = match e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
        Some(figment::Source::File(path)) => Some(path.clone()),
        _ => None,
    };
    let leaf = e.path.last().map_or("", String::as_str);
    let place = match &file {
        Some(path) => match line_of(path, leaf) {
            Some(line) => format!("{}:{line}: ", path.display()),
            None => format!("{}: ", path.display()),
        },
        None => e
            .metadata
            .as_ref()
            .map_or(String::new(), |m| format!("{}: ", source_name(m))),
    };
    match &e.kind {
        figment::error::Kind::UnknownField(field, expected) => {
            let known = expected.join(", ");
            match closest(field, expected) {
                Some(guess) => format!(
                    "{place}unknown key `{key}`: did you mean `{guess}`? (known here: {known})"
                ),
                None => format!("{place}unknown key `{key}` (known here: {known})"),
            }
        }
        kind => format!("{place}{key}: {kind}"),
    }
}

/// The 1-based line of `key = ...` in a TOML file, when it can be found.
fn line_of(path: &Path, key: &str) -> Option<usize> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .or_else(|| l.strip_prefix(&format!("\"{key}\"")))
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

/// The known key a typo most likely meant: a few letters off (`scratch_rot`), or one
/// holding the other (`max_age` for `age`).
fn closest<'a>(typed: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::levenshtein(typed, k), *k))
        .filter(|(d, k)| *d <= 3.max(k.len() / 3) || typed.contains(k) || k.contains(typed))
        .min()
        .map(|(_, k)| k)
}

/// A local path made absolute, or `[user@]host[:port]:/path` kept as it is.
pub(crate) fn location(path: &Path) -> Result<PathBuf> {
    let location = parse_location(path)?;
    Ok(location
        .local_path()
        .map_or_else(|| path.to_path_buf(), Path::to_path_buf))
}

/// Reads a NAS path as a local folder (made absolute) or a remote one.
pub(crate) fn parse_location(path: &Path) -> Result<Location> {
    let location = Location::parse(path.as_os_str())?;
    Ok(match location.local_path() {
        Some(p) => location.with_path(absolute(p)?),
        None => location,
    })
}

/// Makes a path absolute against the current folder without resolving symlinks.
pub(crate) fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot make {} absolute", path.display()))
}
