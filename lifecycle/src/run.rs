//! Run records and their events, stored under `<state>/runs/<id>/`.
//!
//! `run.json` is written once when the run is created; `events/` holds one create-only
//! file per event, named so that a plain sort orders them by time. Readers fold the events
//! into a [`RunView`]. A damaged event file is reported, not fatal.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use hpcstage_staging::host::{current_user, hostname};
use hpcstage_staging::record::{read_json, write_json};

/// What a job does in a run's chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobRole {
    StageIn,
    Compute,
    PullBack,
}

/// Where the run's jobs execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Executor {
    Slurm,
    Local,
}

impl std::fmt::Display for Executor {
    /// As a sentence or the provenance README names it, in the words users know:
    /// `SLURM`, `local`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Executor::Slurm => "SLURM",
            Executor::Local => "local",
        })
    }
}

/// The staged input of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRef {
    /// `<project>/<dataset>` of the stage record.
    pub stage_id: String,
    pub path: PathBuf,
    pub manifest_digest: String,
    /// Where the data came from on the NAS.
    pub source: String,
}

/// A run as created. Never changes after it is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub project: String,
    pub template: String,
    pub template_version: String,
    pub template_hash: String,
    pub workflow: String,
    pub params: BTreeMap<String, String>,
    pub input: InputRef,
    /// The run folder on scratch (script, logs, outputs).
    pub run_dir: PathBuf,
    /// Where validated results go on the NAS.
    pub results_dir: PathBuf,
    pub executor: Executor,
    pub created_at: Timestamp,
    pub owner: String,
    pub host: String,
    pub tool_version: String,
}

/// Facts about a job as SLURM (or the local executor) reported them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFacts {
    pub state: String,
    pub exit_code: Option<String>,
    pub derived_exit_code: Option<String>,
    pub elapsed_secs: Option<u64>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub nodes: Option<String>,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub alloc_tres: Option<String>,
    pub gpus: Option<u32>,
    pub restarts: Option<u32>,
    /// Array tasks: task id → state (all must be terminal before a pull).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tasks: BTreeMap<String, String>,
    /// Array tasks that ended: task id → exit code (`7:0`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub task_exit_codes: BTreeMap<String, String>,
    /// Why a pending job waits, as squeue says (`Resources`, `PartitionConfig`,
    /// `JobHeldUser`, `Dependency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Something that happened to a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A job was submitted.
    Submitted {
        role: JobRole,
        job_id: String,
        token: String,
        #[serde(default)]
        array_size: Option<u32>,
    },
    /// A job's state was observed (polls, the pull-back job, the epilogue).
    JobState {
        role: JobRole,
        job_id: String,
        facts: Box<JobFacts>,
        /// Who observed it: "status", "pull-back", "epilogue", "local".
        observer: String,
    },
    /// A submission failed.
    SubmitFailed {
        role: JobRole,
        error: String,
    },
    PullStarted,
    Pulled {
        results_dir: PathBuf,
        manifest_digest: String,
        /// Pulled with `--allow-partial`: these expected outputs are missing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        partial: Option<Vec<String>>,
    },
    PullFailed {
        reason: String,
    },
    Note {
        text: String,
    },
    /// `hpcstage clean` removed the run folder from scratch (its results are on the NAS).
    Cleaned {
        path: PathBuf,
        bytes: u64,
    },
    /// The owner gave up on the run's results (`hpcstage dismiss`): it is no longer AT
    /// RISK and `clean` may remove its folder.
    Dismissed {
        #[serde(default)]
        reason: Option<String>,
    },
}

/// An event with its time and author.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamped {
    pub at: Timestamp,
    pub host: String,
    pub user: String,
    #[serde(flatten)]
    pub event: Event,
}

/// What is known of one job of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobView {
    pub role: JobRole,
    pub job_id: String,
    pub token: String,
    pub array_size: Option<u32>,
    /// Latest observation, if any.
    pub facts: Option<JobFacts>,
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Created,
    Submitted,
    Pulling,
    Pulled,
    PullFailed,
    SubmitFailed,
    Dismissed,
}

/// A run and everything that happened to it.
#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    pub record: RunRecord,
    pub jobs: Vec<JobView>,
    pub phase: Phase,
    pub events: Vec<Stamped>,
    /// Event files that could not be read.
    pub damaged: Vec<String>,
    /// The pull was partial (`--allow-partial`): the expected outputs that are missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partial: Option<Vec<String>>,
    /// When `hpcstage clean` removed the run folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleaned_at: Option<Timestamp>,
}

impl RunView {
    /// The job in `role`, if submitted.
    pub fn job(&self, role: JobRole) -> Option<&JobView> {
        self.jobs.iter().rev().find(|j| j.role == role)
    }
}

/// The run part of the ledger.
#[derive(Debug, Clone)]
pub struct RunStore {
    root: PathBuf,
}

impl RunStore {
    /// Opens `<state>/runs`, creating it when needed.
    pub fn open(state_dir: &Path) -> Result<Self> {
        let root = state_dir.join("runs");
        std::fs::create_dir_all(&root).map_err(|e| hpcstage_staging::Error::io(&root, e))?;
        Ok(RunStore { root })
    }

    /// The folder of run `id`.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Writes a new run; fails if the id exists.
    pub fn create(&self, record: &RunRecord) -> Result<()> {
        let dir = self.dir(&record.id);
        std::fs::create_dir(&dir).map_err(|e| hpcstage_staging::Error::io(&dir, e))?;
        std::fs::create_dir(dir.join("events"))
            .map_err(|e| hpcstage_staging::Error::io(dir.join("events"), e))?;
        write_json(&dir.join("run.json"), record)?;
        Ok(())
    }

    /// Appends an event to run `id` as a new file (never overwriting another).
    pub fn append(&self, id: &str, event: Event) -> Result<Stamped> {
        let stamped = Stamped {
            at: Timestamp::now(),
            host: hostname(),
            user: current_user(),
            event,
        };
        let dir = self.dir(id).join("events");
        let name = format!(
            "{:020}-{}-{}-{:04x}.json",
            stamped.at.as_nanosecond(),
            hpcstage_staging::ledger::file_safe(&stamped.host),
            std::process::id(),
            fastrand::u16(..)
        );
        let path = dir.join(name);
        let text = serde_json::to_vec_pretty(&stamped).map_err(|e| Error::Record {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        // Write under a hidden name, then hard-link into place: readers never see a torn
        // event, and link() fails rather than replace an existing file.
        let tmp = dir.join(format!(
            ".tmp-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        let io = |p: &Path, e| Error::Staging(hpcstage_staging::Error::io(p, e));
        let mut f = std::fs::File::create_new(&tmp).map_err(|e| io(&tmp, e))?;
        f.write_all(&text).map_err(|e| io(&tmp, e))?;
        f.sync_all().map_err(|e| io(&tmp, e))?;
        drop(f);
        let linked = std::fs::hard_link(&tmp, &path).map_err(|e| io(&path, e));
        let _ = std::fs::remove_file(&tmp);
        linked?;
        Ok(stamped)
    }

    /// All run ids, sorted.
    pub fn ids(&self) -> Result<Vec<String>> {
        let mut ids: Vec<String> = std::fs::read_dir(&self.root)
            .map_err(|e| hpcstage_staging::Error::io(&self.root, e))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("run.json").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Finds a run by full id or unique prefix.
    pub fn resolve(&self, id: &str) -> Result<String> {
        let ids = self.ids()?;
        if ids.iter().any(|i| i == id) {
            return Ok(id.to_string());
        }
        let matches: Vec<&String> = ids.iter().filter(|i| i.starts_with(id)).collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(Error::UnknownRun {
                id: id.to_string(),
                ledger: self.root.clone(),
            }),
            many => Err(Error::Ambiguous {
                id: id.to_string(),
                matches: many
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Reads a run and folds its events.
    pub fn load(&self, id: &str) -> Result<RunView> {
        let dir = self.dir(id);
        let record: RunRecord = read_json(&dir.join("run.json"))?;
        let events_dir = dir.join("events");
        let mut names: Vec<PathBuf> = std::fs::read_dir(&events_dir)
            .map_err(|e| hpcstage_staging::Error::io(&events_dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        let mut events = Vec::new();
        let mut damaged = Vec::new();
        for p in names {
            match read_json::<Stamped>(&p) {
                Ok(e) => events.push(e),
                Err(e) => damaged.push(e.to_string()),
            }
        }
        Ok(fold(record, events, damaged))
    }
}

fn fold(record: RunRecord, events: Vec<Stamped>, damaged: Vec<String>) -> RunView {
    let mut jobs: Vec<JobView> = Vec::new();
    let mut phase = Phase::Created;
    let mut partial = None;
    let mut cleaned_at = None;
    for s in &events {
        match &s.event {
            Event::Submitted {
                role,
                job_id,
                token,
                array_size,
            } => {
                jobs.push(JobView {
                    role: *role,
                    job_id: job_id.clone(),
                    token: token.clone(),
                    array_size: *array_size,
                    facts: None,
                });
                // After a failure, a new submission is a retry (`hpcstage retry`).
                if !matches!(phase, Phase::Pulled | Phase::Dismissed) {
                    phase = Phase::Submitted;
                }
            }
            Event::JobState { job_id, facts, .. } => {
                if let Some(j) = jobs.iter_mut().rev().find(|j| &j.job_id == job_id) {
                    j.facts = Some((**facts).clone());
                }
            }
            Event::SubmitFailed { .. } => phase = Phase::SubmitFailed,
            Event::PullStarted => {
                if phase != Phase::Pulled {
                    phase = Phase::Pulling;
                }
            }
            Event::Pulled { partial: p, .. } => {
                phase = Phase::Pulled;
                partial.clone_from(p);
            }
            Event::PullFailed { .. } => {
                if phase != Phase::Pulled {
                    phase = Phase::PullFailed;
                }
            }
            Event::Dismissed { .. } => {
                if phase != Phase::Pulled {
                    phase = Phase::Dismissed;
                }
            }
            Event::Note { .. } => {}
            Event::Cleaned { .. } => cleaned_at = Some(s.at),
        }
    }
    RunView {
        record,
        jobs,
        phase,
        events,
        damaged,
        partial,
        cleaned_at,
    }
}

/// A job state as users read it: SLURM's `CANCELLED by 1000` names the user
/// (`CANCELLED by alice`); anything else is shown as recorded.
pub fn state_label(state: &str) -> String {
    if let Some(uid) = state
        .strip_prefix("CANCELLED by ")
        .and_then(|u| u.trim().parse::<u32>().ok())
    {
        if let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
            return format!("CANCELLED by {}", user.name);
        }
    }
    state.to_string()
}

/// The marker a pull leaves in a run folder (`.hpcstage/pulled.json`).
pub const PULLED_MARKER: &str = "pulled.json";

/// Marker written into a run folder once its results are verified on the NAS, so that a
/// `--scan` by another user (who cannot read the owner's ledger) sees it is safe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PulledMarker {
    pub run_id: String,
    pub results_dir: PathBuf,
    pub manifest_digest: String,
    pub pulled_at: Timestamp,
    /// A partial pull: the expected outputs that are missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<Vec<String>>,
}

/// Written into the run folder's `.hpcstage/` by `hpcstage dismiss`, so that `report
/// --scan` and `clean` see the dismissal without the owner's ledger.
pub const DISMISSED_MARKER: &str = "dismissed.json";

/// A run whose results its owner gave up (`hpcstage dismiss`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dismissal {
    pub run_id: String,
    pub reason: Option<String>,
    pub at: Timestamp,
    pub by: String,
}

/// Whether the run was dismissed: the folder's marker, else the ledger's event. The one
/// place `report` and `clean` learn it.
pub fn dismissal(record: &RunRecord, view: Option<&RunView>) -> Option<Dismissal> {
    let marker = record.run_dir.join(".hpcstage").join(DISMISSED_MARKER);
    if let Ok(d) = read_json::<Dismissal>(&marker) {
        if d.run_id == record.id {
            return Some(d);
        }
    }
    let view = view.filter(|v| v.phase == Phase::Dismissed)?;
    view.events.iter().rev().find_map(|s| match &s.event {
        Event::Dismissed { reason } => Some(Dismissal {
            run_id: record.id.clone(),
            reason: reason.clone(),
            at: s.at,
            by: s.user.clone(),
        }),
        _ => None,
    })
}

/// Records that the owner gives up the results of a run whose jobs have all ended (the
/// caller refreshes their states first): an event in the ledger and a marker in the run
/// folder. A pulled run has nothing at risk, and a job still queued or running could
/// still write results, so both are refused.
pub fn dismiss(store: &RunStore, view: &RunView, reason: Option<String>) -> Result<Dismissal> {
    let id = &view.record.id;
    let not_now = |reason: String| Error::NotNow {
        id: id.clone(),
        reason,
    };
    if view.phase == Phase::Pulled {
        return Err(not_now(format!(
            "its results were pulled to {}; there is nothing to dismiss (`hpcstage clean` removes the scratch folder)",
            view.record.results_dir.display()
        )));
    }
    for j in &view.jobs {
        let state = j.facts.as_ref().map_or("submitted", |f| f.state.as_str());
        if !crate::refresh::ended(state) {
            return Err(not_now(format!(
                "its {} job {} is {state}; cancel it first (scancel {}) or let it end",
                serde_json::to_value(j.role)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                j.job_id,
                j.job_id
            )));
        }
    }
    let stamped = store.append(
        id,
        Event::Dismissed {
            reason: reason.clone(),
        },
    )?;
    let dismissal = Dismissal {
        run_id: id.clone(),
        reason,
        at: stamped.at,
        by: stamped.user,
    };
    let state = view.record.run_dir.join(".hpcstage");
    if state.is_dir() {
        write_json(&state.join(DISMISSED_MARKER), &dismissal)?;
    }
    Ok(dismissal)
}

/// A new run id: `<template>-<dataset>-<UTC time>-<4 hex>`, readable and sortable by time
/// within a template and dataset.
pub fn new_run_id(template: &str, dataset: &str, now: Timestamp) -> String {
    use hpcstage_staging::ledger::file_safe;
    format!(
        "{}-{}-{}-{:04x}",
        file_safe(template),
        file_safe(dataset),
        now.strftime("%Y%m%dT%H%M%S"),
        fastrand::u16(..)
    )
}

/// A fresh run record with the common fields filled in.
#[allow(clippy::too_many_arguments)]
pub fn new_record(
    id: String,
    project: String,
    template: String,
    template_version: String,
    template_hash: String,
    workflow: String,
    params: BTreeMap<String, String>,
    input: InputRef,
    run_dir: PathBuf,
    results_dir: PathBuf,
    executor: Executor,
) -> RunRecord {
    RunRecord {
        id,
        project,
        template,
        template_version,
        template_hash,
        workflow,
        params,
        input,
        run_dir,
        results_dir,
        executor,
        created_at: Timestamp::now(),
        owner: current_user(),
        host: hostname(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> RunRecord {
        new_record(
            id.into(),
            "P".into(),
            "unet-seg".into(),
            "1".into(),
            "h".into(),
            "segmentation".into(),
            BTreeMap::new(),
            InputRef {
                stage_id: "P/d".into(),
                path: "/s/P/d".into(),
                manifest_digest: "x".into(),
                source: "/nas/P/raw/d".into(),
            },
            "/s/P/runs/r".into(),
            "/nas/P/results/segmentation/r".into(),
            Executor::Local,
        )
    }

    #[test]
    fn events_fold_into_jobs_and_phase() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(dir.path()).unwrap();
        store.create(&record("r1")).unwrap();
        assert!(store.create(&record("r1")).is_err(), "ids are create-only");
        store
            .append(
                "r1",
                Event::Submitted {
                    role: JobRole::Compute,
                    job_id: "10".into(),
                    token: "t".into(),
                    array_size: Some(2),
                },
            )
            .unwrap();
        store
            .append(
                "r1",
                Event::JobState {
                    role: JobRole::Compute,
                    job_id: "10".into(),
                    facts: Box::new(JobFacts {
                        state: "FAILED".into(),
                        exit_code: Some("3:0".into()),
                        ..JobFacts::default()
                    }),
                    observer: "status".into(),
                },
            )
            .unwrap();
        store.append("r1", Event::PullStarted).unwrap();
        let view = store.load("r1").unwrap();
        assert_eq!(view.phase, Phase::Pulling);
        let job = view.job(JobRole::Compute).unwrap();
        assert_eq!(job.facts.as_ref().unwrap().state, "FAILED");
        assert_eq!(store.resolve("r").unwrap(), "r1");
        assert!(matches!(store.resolve("x"), Err(Error::UnknownRun { .. })));
    }

    #[test]
    fn a_cancelling_uid_is_shown_as_its_user_name() {
        assert_eq!(state_label("CANCELLED by 0"), "CANCELLED by root");
        assert_eq!(state_label("CANCELLED by 4000000"), "CANCELLED by 4000000");
        assert_eq!(state_label("FAILED"), "FAILED");
    }

    #[test]
    fn a_damaged_event_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(dir.path()).unwrap();
        store.create(&record("r2")).unwrap();
        std::fs::write(store.dir("r2").join("events/0-bad.json"), "{").unwrap();
        store.append("r2", Event::PullStarted).unwrap();
        let view = store.load("r2").unwrap();
        assert_eq!(view.damaged.len(), 1);
        assert_eq!(view.phase, Phase::Pulling);
    }
}
