//! Asking for job states: one batched `sacct`, then `squeue` and `scontrol` for what
//! accounting does not know (yet), merged into one record per requested id; and the
//! small questions `config init` and `doctor` ask (partitions, accounting, ping).

use std::collections::{BTreeSet, HashMap};

use jiff::{SignedDuration, Timestamp};

use super::exec::{accounting_disabled, invalid_job_id, Outcome};
use super::SlurmClient;
use crate::error::{Error, Result};
use crate::parse::{
    format_time, parse_sacct, parse_scontrol, parse_squeue, SACCT_FORMAT, SQUEUE_FORMAT,
};
use crate::state::{JobId, JobInfo, JobState};

impl SlurmClient {
    /// [`SlurmClient::query`] and [`SlurmClient::query_since`]: `earliest` is the
    /// earliest submission time of the jobs, if known.
    pub(super) fn query_from(
        &self,
        ids: &[JobId],
        earliest: Option<Timestamp>,
    ) -> Result<HashMap<JobId, JobInfo>> {
        let wanted: BTreeSet<JobId> = ids.iter().copied().collect();
        if wanted.is_empty() {
            return Ok(HashMap::new());
        }
        let since = match earliest {
            Some(t) => t.checked_sub(SignedDuration::from_hours(1)).unwrap_or(t),
            None => {
                let back = SignedDuration::try_from(self.settings.sacct_lookback)
                    .unwrap_or(SignedDuration::MAX);
                Timestamp::now()
                    .checked_sub(back)
                    .unwrap_or(Timestamp::UNIX_EPOCH)
            }
        };

        let mut found: HashMap<JobId, Vec<JobInfo>> = HashMap::new();
        let mut sacct_error = None;
        match self.sacct_rows(&wanted, since) {
            Ok(Some(rows)) => assign(rows, &wanted, &mut found),
            Ok(None) => {}
            Err(e @ (Error::ControllerUnreachable { .. } | Error::Timeout { .. })) => {
                sacct_error = Some(e);
            }
            Err(e) => return Err(e),
        }

        // Ask the controller about jobs accounting does not know, or may not know
        // completely yet (see `accounting_unsure`), and about pending ones: why a job
        // waits is the controller's current word (accounting records it late).
        let ask: BTreeSet<JobId> = wanted
            .iter()
            .filter(|id| {
                found.get(id).is_none_or(|rows| {
                    accounting_unsure(**id, rows)
                        || rows.iter().any(|r| r.state == JobState::Pending)
                })
            })
            .copied()
            .collect();
        if !ask.is_empty() {
            let mut from_ctld: HashMap<JobId, Vec<JobInfo>> = HashMap::new();
            // Only a pending job's reason is at stake when accounting answered for every
            // job asked: its rows stand if the controller does not answer.
            let only_pending = ask.iter().all(|id| {
                found
                    .get(id)
                    .is_some_and(|rows| !accounting_unsure(*id, rows))
            });
            match self.squeue_rows(&ask) {
                Ok(rows) => assign(rows, &ask, &mut from_ctld),
                Err(_) if only_pending => {}
                Err(e) => return Err(sacct_error.unwrap_or(e)),
            }
            // squeue knows no exit codes and no TRES: ask scontrol about finished jobs,
            // and about jobs that neither accounting nor squeue listed.
            for id in &ask {
                let needed = match from_ctld.get(id) {
                    Some(rows) => rows.iter().any(|r| r.state.is_terminal()),
                    None => !found.contains_key(id),
                };
                if !needed {
                    continue;
                }
                let mut rows = HashMap::new();
                match self.scontrol_rows(*id) {
                    Ok(r) => assign(r, &BTreeSet::from([*id]), &mut rows),
                    Err(e) => return Err(sacct_error.unwrap_or(e)),
                }
                if let Some(r) = rows.remove(id) {
                    from_ctld.insert(*id, r);
                }
            }
            for (id, ctld_rows) in from_ctld {
                let rows = match found.remove(&id) {
                    Some(acct_rows) => prefer_settled(acct_rows, ctld_rows),
                    None => ctld_rows,
                };
                found.insert(id, rows);
            }
        }

        let mut answer = HashMap::new();
        for id in wanted {
            let info = match found.remove(&id) {
                Some(rows) => merge_rows(id, rows),
                None => match sacct_error.take() {
                    Some(e) => return Err(e),
                    None => JobInfo::not_found(id),
                },
            };
            answer.insert(id, info);
        }
        Ok(answer)
    }

    /// `sacct` rows for `ids`; `None` when accounting is disabled.
    fn sacct_rows(&self, ids: &BTreeSet<JobId>, since: Timestamp) -> Result<Option<Vec<JobInfo>>> {
        self.ask(
            "sacct",
            vec![
                "-X".into(),
                "--parsable2".into(),
                "--noheader".into(),
                format!("--jobs={}", join_ids(ids)),
                format!("--starttime={}", format_time(since)),
                format!("--format={SACCT_FORMAT}"),
            ],
            accounting_disabled,
            parse_sacct,
        )
    }

    fn squeue_rows(&self, ids: &BTreeSet<JobId>) -> Result<Vec<JobInfo>> {
        // One unknown id: `slurm_load_jobs error: Invalid job id specified`.
        let rows = self.ask(
            "squeue",
            vec![
                "--noheader".into(),
                "--all".into(),
                "--states=all".into(),
                format!("--jobs={}", join_ids(ids)),
                format!("--format={SQUEUE_FORMAT}"),
            ],
            invalid_job_id,
            parse_squeue,
        );
        Ok(rows?.unwrap_or_default())
    }

    fn scontrol_rows(&self, id: JobId) -> Result<Vec<JobInfo>> {
        let rows = self.ask(
            "scontrol",
            vec![
                "--all".into(),
                "--oneliner".into(),
                "show".into(),
                "job".into(),
                id.to_string(),
            ],
            invalid_job_id,
            parse_scontrol,
        );
        Ok(rows?.unwrap_or_default())
    }

    /// Whether accounting is on: `Ok(false)` when `sacct` says accounting storage is
    /// disabled, an error when `sacct` cannot answer (slurmdbd down, a timeout).
    pub fn accounting_enabled(&self) -> Result<bool> {
        let args = [
            "--noheader",
            "--allocations",
            "--starttime=now",
            "--format=JobID",
        ];
        let answer = self.ask(
            "sacct",
            args.map(String::from).to_vec(),
            accounting_disabled,
            |_| Ok(()),
        );
        Ok(answer?.is_some())
    }

    /// One value of the controller's configuration (`scontrol show config`), `None` when
    /// it is unset (`(null)`) or not listed.
    pub fn config_value(&self, key: &str) -> Result<Option<String>> {
        let text = self.ask_text("scontrol", vec!["show".into(), "config".into()])?;
        Ok(text.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            (k.trim() == key && v != "(null)" && !v.is_empty()).then(|| v.to_owned())
        }))
    }

    /// Whether the controller answers `scontrol ping` (one try, no retries).
    pub fn ping(&self) -> Result<bool> {
        let inv = self.query_invocation("scontrol", vec!["ping".into()])?;
        match self.run_once(&inv)? {
            Outcome::Exited(out) => {
                let stdout = String::from_utf8_lossy(&out.stdout);
                Ok(stdout.lines().any(|l| l.trim_end().ends_with(" is UP")))
            }
            Outcome::TimedOut => Ok(false),
        }
    }
}

/// Files rows under the requested id they answer: the array (or plain) job id, or a
/// task's own id when that is what was asked.
fn assign(rows: Vec<JobInfo>, wanted: &BTreeSet<JobId>, found: &mut HashMap<JobId, Vec<JobInfo>>) {
    for row in rows {
        if row.raw_id != row.id && wanted.contains(&row.raw_id) {
            found.entry(row.raw_id).or_default().push(row.clone());
        }
        if wanted.contains(&row.id) {
            found.entry(row.id).or_default().push(row);
        }
    }
}

/// Whether a finished accounting record is complete. slurmdbd briefly shows a job
/// that just ended as `COMPLETED` with an empty `Partition` (seen on 22.05: its start
/// record is written after its end), so a finished row without a partition is not
/// final yet.
fn settled(row: &JobInfo) -> bool {
    !(row.state.is_terminal() && row.partition.is_none())
}

/// Whether accounting's rows for one job may be incomplete: an unsettled row, or an
/// array whose recorded tasks are all finished (a task split from the array shortly
/// before may not be recorded yet, while the array record itself already shows the
/// last task done). A task asked for by its own id is one record, complete in itself.
fn accounting_unsure(id: JobId, rows: &[JobInfo]) -> bool {
    let array_done = rows.iter().any(|r| r.array_task.is_some() && r.id == id)
        && rows.iter().all(|r| r.state.is_terminal());
    array_done || !rows.iter().all(settled)
}

/// Merges one job's accounting rows into the controller's (which are more current):
/// a settled accounting row replaces the controller's row of the same finished task
/// (it is the final record); a record the controller no longer holds is kept.
fn prefer_settled(acct: Vec<JobInfo>, ctld: Vec<JobInfo>) -> Vec<JobInfo> {
    let mut rows = ctld;
    for a in acct {
        match rows.iter_mut().find(|c| c.raw_id == a.raw_id) {
            Some(c) => {
                if c.array_task == a.array_task && c.state.is_terminal() && settled(&a) {
                    *c = a;
                }
            }
            None => rows.push(a),
        }
    }
    rows
}

/// One record per requested id: a plain job's row, a task's row, or an array summary.
fn merge_rows(id: JobId, mut rows: Vec<JobInfo>) -> JobInfo {
    let asked_for_task = rows.len() == 1 && rows[0].raw_id == id && rows[0].id != id;
    if rows.iter().all(|r| r.array_task.is_none()) || asked_for_task {
        rows.swap_remove(0)
    } else {
        JobInfo::summarise_array(id, rows)
    }
}

fn join_ids(ids: &BTreeSet<JobId>) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
