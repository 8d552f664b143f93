//! Reading what SLURM prints into the job types of `state.rs`.
//!
//! This module turns the text printed by `sbatch --parsable`, `sacct --parsable2`,
//! `squeue --format` and `scontrol show job -o` into typed values. It runs no
//! processes (that is `client/`), so every parser here is tested against recorded
//! outputs of several Slurm versions.
//!
//! Choices forced by the man pages:
//! - `sacct` (22.05 `--helpformat`) has no `Restarts` field; restarts come only from
//!   `scontrol show job` (`Restarts=`).
//! - `sacct -X --jobs=<array job>` lists every task (`123_1`) and one combined row for
//!   still-pending tasks (`123_[2-5]`); `JobIDRaw` is the id of the record itself (a
//!   task's own job id, or the array job id for the combined row).
//! - `Start`/`End` are local times without a zone (`YYYY-MM-DDTHH:MM:SS` while
//!   `SLURM_TIME_FORMAT` is unset), or `Unknown`/`None`. `scontrol` prints an *expected*
//!   start for pending jobs and the time-limit end for running ones: those are dropped.
//! - States are printed in full by `--parsable2`, including `CANCELLED by <uid>`; a
//!   trailing `+` (a truncated column) is tolerated.
//! - Columns are read by name: `sacct`'s from [`SACCT_FORMAT`] itself, `squeue`'s from
//!   the names given to each `%` field in [`SQUEUE_COLUMNS`], so a column added to a
//!   format cannot shift the others.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use regex::Regex;

use crate::error::{Error, Result};
use crate::state::{ArrayTask, JobId, JobInfo, JobRef, JobState, Source};

/// Parses the output of `sbatch --parsable`: `jobid[;cluster]`.
///
/// Warnings go to stderr, so the first non-empty line of stdout is the answer. The
/// non-parsable form `Submitted batch job 123` is accepted too (a site wrapper around
/// `sbatch` may drop `--parsable`).
pub fn parse_sbatch_output(stdout: &str) -> Result<(JobId, Option<String>)> {
    let line = stdout
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .ok_or_else(|| parse_error("job id in sbatch output", stdout))?;
    if let Some(rest) = line.strip_prefix("Submitted batch job ") {
        let mut words = rest.split_whitespace();
        let id = words.next().unwrap_or_default().parse()?;
        // `sbatch` without `--parsable` on a federation: `... 123 on cluster north`.
        let cluster = match (words.next(), words.next(), words.next()) {
            (Some("on"), Some("cluster"), Some(cluster)) => Some(cluster.to_owned()),
            _ => None,
        };
        return Ok((id, cluster));
    }
    let (id, cluster) = match line.split_once(';') {
        Some((id, cluster)) => (
            id,
            Some(cluster.trim().to_owned()).filter(|c| !c.is_empty()),
        ),
        None => (line, None),
    };
    let id = id
        .parse()
        .map_err(|_| parse_error("job id in sbatch output", stdout))?;
    Ok((id, cluster))
}

/// Number of GPUs in a TRES string: `gres/gpu=2` (sacct, scontrol) or, failing that,
/// the sum of typed entries `gres/gpu:a100=2`; `squeue`'s `gres:gpu:2` and
/// `gres/gpu:a100:2` (tres-per-node) too.
pub fn gpus_in_tres(tres: &str) -> u32 {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r"^gres[/:]gpu(?::([A-Za-z0-9_.-]+))?[=:](\d+)$").expect("valid regex")
    });
    let mut untyped = None;
    let mut typed = 0u32;
    for item in tres.split(',') {
        if let Some(c) = re.captures(item.trim()) {
            let n: u32 = c[2].parse().unwrap_or(0);
            match c.get(1) {
                // `gres:gpu:tesla` without a count would be read as type only; the
                // regex requires digits at the end, so a type is never a count.
                Some(_) => typed += n,
                None => untyped = Some(untyped.unwrap_or(0) + n),
            }
        }
    }
    untyped.unwrap_or(typed)
}

/// Parses `[DD-[HH:]]MM:SS` (sacct `Elapsed`, scontrol `RunTime`, squeue `%M`).
pub fn parse_elapsed(s: &str) -> Option<u64> {
    let t = s.trim();
    let (days, clock) = match t.split_once('-') {
        Some((d, rest)) => (d.parse::<u64>().ok()?, rest),
        None => (0, t),
    };
    let parts: Vec<u64> = clock
        .split(':')
        .map(|p| p.parse::<u64>().ok())
        .collect::<Option<_>>()?;
    let (h, m, sec) = match parts.as_slice() {
        [h, m, s] => (*h, *m, *s),
        [m, s] => (0, *m, *s),
        [s] if days == 0 => (0, 0, *s),
        _ => return None,
    };
    Some(((days * 24 + h) * 60 + m) * 60 + sec)
}

/// Parses a SLURM timestamp (`2024-03-01T12:00:05`, local time). `Unknown`, `None`,
/// `N/A`, empty and anything unreadable give `None`.
pub fn parse_time(s: &str) -> Option<Timestamp> {
    let t = s.trim();
    if matches!(t, "" | "Unknown" | "None" | "N/A" | "(null)") {
        return None;
    }
    let dt: DateTime = t.parse().ok()?;
    dt.to_zoned(TimeZone::system()).ok().map(|z| z.timestamp())
}

/// Formats a timestamp the way `sacct --starttime` reads it (local time).
pub fn format_time(ts: Timestamp) -> String {
    ts.to_zoned(TimeZone::system())
        .strftime("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

/// The `--format` for [`parse_sacct`]. Free-text fields come last so that a `|` inside
/// a job name cannot shift the other columns.
pub const SACCT_FORMAT: &str = "JobIDRaw,JobID,State,ExitCode,DerivedExitCode,ElapsedRaw,Start,End,NodeList,Partition,Account,AllocTRES,User,Reason,Comment,JobName";

/// The `--format` for [`parse_squeue`]: raw id, `JobID` form, state, time used, start,
/// end, nodes, partition, account, user, reason, tres-per-node, comment, name.
pub const SQUEUE_FORMAT: &str = "%A|%i|%T|%M|%S|%e|%N|%P|%a|%u|%r|%b|%k|%j";

/// The name [`parse_squeue`] reads each field of [`SQUEUE_FORMAT`] by (squeue(1),
/// `--format`), spelled as `sacct` names the same column.
const SQUEUE_COLUMNS: &[(&str, &str)] = &[
    ("%A", "JobIDRaw"),
    ("%i", "JobID"),
    ("%T", "State"),
    ("%M", "Elapsed"),
    ("%S", "Start"),
    ("%e", "End"),
    ("%N", "NodeList"),
    ("%P", "Partition"),
    ("%a", "Account"),
    ("%u", "User"),
    ("%r", "Reason"),
    ("%b", "TresPerNode"),
    ("%k", "Comment"),
    ("%j", "JobName"),
];

/// The column names of [`SACCT_FORMAT`], in order.
fn sacct_columns() -> &'static [&'static str] {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES.get_or_init(|| SACCT_FORMAT.split(',').collect())
}

/// The column names of [`SQUEUE_FORMAT`], in order.
fn squeue_columns() -> &'static [&'static str] {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES.get_or_init(|| {
        SQUEUE_FORMAT
            .split('|')
            .map(|code| {
                SQUEUE_COLUMNS.iter().find(|(c, _)| *c == code).map_or_else(
                    || panic!("{code} in SQUEUE_FORMAT has no name"),
                    |(_, n)| *n,
                )
            })
            .collect()
    })
}

/// One line of a `|`-separated listing, read by column name. The last column takes the
/// rest of the line, so a `|` in a job name stays in the name.
struct Row<'a> {
    names: &'static [&'static str],
    fields: Vec<&'a str>,
}

impl<'a> Row<'a> {
    /// Splits `line` into the columns `names`; `None` when it has fewer.
    fn split(line: &'a str, names: &'static [&'static str]) -> Option<Self> {
        let fields: Vec<&str> = line.splitn(names.len(), '|').collect();
        (fields.len() == names.len()).then_some(Row { names, fields })
    }

    /// The field of column `name`, which must be one of the format's.
    fn get(&self, name: &str) -> &'a str {
        let index = self
            .names
            .iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| panic!("no column {name} in the format"));
        self.fields[index]
    }
}

/// Parses `sacct -X --parsable2 --noheader --format=<SACCT_FORMAT>` output, one
/// record per line (array tasks are not grouped here). Step rows (`123.batch`) are
/// skipped.
pub fn parse_sacct(text: &str) -> Result<Vec<JobInfo>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f = Row::split(line, sacct_columns()).ok_or_else(|| parse_error("sacct line", line))?;
        if f.get("JobID").contains('.') || f.get("JobIDRaw").contains('.') {
            continue;
        }
        let mut info = job_row(&f, "sacct line", line, Source::Sacct)?;
        info.exit_code = f.get("ExitCode").parse().ok();
        info.derived_exit_code = f.get("DerivedExitCode").parse().ok();
        info.elapsed_secs = f.get("ElapsedRaw").trim().parse().ok();
        info.nodes = info.nodes.filter(|n| n != "None assigned");
        info.alloc_tres = non_empty(f.get("AllocTRES"));
        info.gpus = info.alloc_tres.as_deref().map_or(0, gpus_in_tres);
        out.push(info.settle());
    }
    Ok(out)
}

/// Parses `squeue --noheader --format=<SQUEUE_FORMAT>` output.
pub fn parse_squeue(text: &str) -> Result<Vec<JobInfo>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f =
            Row::split(line, squeue_columns()).ok_or_else(|| parse_error("squeue line", line))?;
        let mut info = job_row(&f, "squeue line", line, Source::Squeue)?;
        info.elapsed_secs = parse_elapsed(f.get("Elapsed"));
        info.gpus = non_empty(f.get("TresPerNode")).map_or(0, |t| gpus_in_tres(&t));
        out.push(info.settle());
    }
    Ok(out)
}

/// The columns `sacct` and `squeue` both print, under the same names; what only one
/// of them knows is left empty for the caller.
fn job_row(f: &Row<'_>, what: &'static str, line: &str, source: Source) -> Result<JobInfo> {
    let raw_id: JobId = f
        .get("JobIDRaw")
        .parse()
        .map_err(|_| parse_error(what, line))?;
    let job_ref: JobRef = f
        .get("JobID")
        .parse()
        .map_err(|_| parse_error(what, line))?;
    let Ok(state) = f.get("State").parse::<JobState>();
    Ok(JobInfo {
        id: job_ref.job,
        raw_id,
        array_task: job_ref.task,
        name: f.get("JobName").to_owned(),
        state,
        exit_code: None,
        derived_exit_code: None,
        elapsed_secs: None,
        start: parse_time(f.get("Start")),
        end: parse_time(f.get("End")),
        nodes: non_empty(f.get("NodeList")),
        partition: non_empty(f.get("Partition")),
        account: non_empty(f.get("Account")),
        alloc_tres: None,
        gpus: 0,
        restarts: None,
        user: non_empty(f.get("User")),
        reason: non_empty(f.get("Reason")),
        comment: non_empty(f.get("Comment")),
        source,
        tasks: Vec::new(),
    })
}

/// Splits one `scontrol show job -o` line into its `Key=Value` pairs.
///
/// Values may hold spaces (`Command=`, `Comment=`, `Reason=`): a word that does not
/// start like a key (`Name=` with a capital and no spaces) continues the value before it.
pub fn scontrol_fields(line: &str) -> BTreeMap<String, String> {
    static KEY: OnceLock<Regex> = OnceLock::new();
    let key = KEY.get_or_init(|| Regex::new(r"^[A-Z][A-Za-z0-9_/:]*=").expect("valid regex"));
    let mut map = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for word in line.split_whitespace() {
        if let Some(m) = key.find(word) {
            if let Some((k, v)) = current.take() {
                map.insert(k, v);
            }
            let k = word[..m.end() - 1].to_owned();
            current = Some((k, word[m.end()..].to_owned()));
        } else if let Some((_, v)) = current.as_mut() {
            v.push(' ');
            v.push_str(word);
        }
    }
    if let Some((k, v)) = current {
        map.insert(k, v);
    }
    map
}

/// Parses `scontrol show job -o` output (one job or array task per line).
///
/// Knows both the 20.11–22.05 spelling (`TRES=` is the allocation) and 23.02+
/// (`ReqTRES=` and `AllocTRES=`).
pub fn parse_scontrol(text: &str) -> Result<Vec<JobInfo>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f = scontrol_fields(line);
        let get = |k: &str| f.get(k).map(String::as_str).and_then(non_null);
        let raw_id: JobId = get("JobId")
            .ok_or_else(|| parse_error("scontrol line", line))?
            .parse()
            .map_err(|_| parse_error("scontrol line", line))?;
        let (id, array_task) = match (get("ArrayJobId"), get("ArrayTaskId")) {
            (Some(base), Some(task)) => {
                let base: JobId = base
                    .parse()
                    .map_err(|_| parse_error("scontrol line", line))?;
                let task = if task.bytes().all(|b| b.is_ascii_digit()) {
                    task.parse()
                        .map_err(|_| parse_error("scontrol line", line))?
                } else {
                    ArrayTask::Pending(task.to_owned())
                };
                (base, Some(task))
            }
            _ => (raw_id, None),
        };
        let Ok(state) = get("JobState").unwrap_or("").parse::<JobState>();
        let alloc_tres = get("AllocTRES").or_else(|| get("TRES")).map(str::to_owned);
        let user = get("UserId").map(|u| match u.split_once('(') {
            Some((name, _)) => name.to_owned(),
            None => u.to_owned(),
        });
        let info = JobInfo {
            id,
            raw_id,
            array_task,
            name: get("JobName").unwrap_or("").to_owned(),
            state,
            exit_code: get("ExitCode").and_then(|v| v.parse().ok()),
            derived_exit_code: get("DerivedExitCode").and_then(|v| v.parse().ok()),
            elapsed_secs: get("RunTime").and_then(parse_elapsed),
            start: get("StartTime").and_then(parse_time),
            end: get("EndTime").and_then(parse_time),
            nodes: get("NodeList").map(str::to_owned),
            partition: get("Partition").map(str::to_owned),
            account: get("Account").map(str::to_owned),
            gpus: alloc_tres.as_deref().map_or(0, gpus_in_tres),
            alloc_tres,
            restarts: get("Restarts").and_then(|v| v.parse().ok()),
            user,
            comment: get("Comment").map(str::to_owned),
            reason: get("Reason").map(str::to_owned),
            source: Source::Scontrol,
            tasks: Vec::new(),
        };
        out.push(info.settle());
    }
    Ok(out)
}

fn non_empty(s: &str) -> Option<String> {
    non_null(s).map(str::to_owned)
}

fn non_null(s: &str) -> Option<&str> {
    let t = s.trim();
    (!matches!(t, "" | "(null)" | "N/A")).then_some(t)
}

pub(crate) fn parse_error(what: &'static str, text: &str) -> Error {
    Error::Parse {
        what,
        text: text.trim().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ExitCode;
    #[test]
    fn sbatch_parsable_forms() {
        assert_eq!(parse_sbatch_output("123\n").unwrap(), (JobId(123), None));
        assert_eq!(
            parse_sbatch_output("4567;cluster\n").unwrap(),
            (JobId(4567), Some("cluster".to_owned()))
        );
        assert_eq!(
            parse_sbatch_output("\n  89;\n").unwrap(),
            (JobId(89), None),
            "an empty cluster part is no cluster"
        );
        assert_eq!(
            parse_sbatch_output("Submitted batch job 77\n").unwrap(),
            (JobId(77), None)
        );
        assert_eq!(
            parse_sbatch_output("Submitted batch job 78 on cluster north\n").unwrap(),
            (JobId(78), Some("north".to_owned()))
        );
        for bad in ["", "\n", "abc", "12a;x", "-1"] {
            let err = parse_sbatch_output(bad).unwrap_err();
            assert!(matches!(err, Error::Parse { .. }), "{bad:?}: {err}");
        }
    }

    #[test]
    fn elapsed_and_times() {
        assert_eq!(parse_elapsed("00:00:01"), Some(1));
        assert_eq!(parse_elapsed("0:05"), Some(5));
        assert_eq!(parse_elapsed("1:02:03"), Some(3723));
        assert_eq!(parse_elapsed("2-00:00:10"), Some(172_810));
        assert_eq!(parse_elapsed("INVALID"), None);
        assert_eq!(parse_time("Unknown"), None);
        assert_eq!(parse_time("None"), None);
        assert_eq!(parse_time("N/A"), None);
        let t = parse_time("2024-03-01T12:00:05").unwrap();
        assert_eq!(format_time(t), "2024-03-01T12:00:05");
    }

    #[test]
    fn gpus_from_tres_spellings() {
        assert_eq!(
            gpus_in_tres("billing=1,cpu=1,gres/gpu=1,mem=100M,node=1"),
            1
        );
        assert_eq!(
            gpus_in_tres("cpu=8,mem=64G,node=1,billing=8,gres/gpu=2,gres/gpu:a100=2"),
            2
        );
        assert_eq!(gpus_in_tres("cpu=8,gres/gpu:a100=2,gres/gpu:v100=1"), 3);
        assert_eq!(gpus_in_tres("gres:gpu:1"), 1);
        assert_eq!(gpus_in_tres("gres/gpu:tesla:4"), 4);
        assert_eq!(gpus_in_tres("cpu=1,mem=1000M,node=1"), 0);
        assert_eq!(gpus_in_tres(""), 0);
    }

    /// Slurm 22.05 (this machine's version), `sacct -X --parsable2 --noheader
    /// --format=<SACCT_FORMAT>` for a finished job, a cancelled one, an OOM kill, a
    /// failed step with a clean script exit, and an array with a combined pending row.
    const SACCT_22_05: &str = "\
41|41|COMPLETED|0:0|0:0|2|2024-05-02T10:00:01|2024-05-02T10:00:03|localhost|debug|root|billing=1,cpu=1,mem=100M,node=1|root|None|hpcstage-7f3a|hello
42|42|CANCELLED by 0|0:15|0:0|31|2024-05-02T10:01:00|2024-05-02T10:01:31|localhost|debug|root|billing=1,cpu=1,mem=100M,node=1|root|None||sleeper
43|43|OUT_OF_MEMORY|0:125|0:0|12|2024-05-02T10:02:00|2024-05-02T10:02:12|localhost|gpu|lab|billing=2,cpu=2,gres/gpu=1,mem=4000M,node=1|alice|None||unet-seg
44|44|COMPLETED|0:0|2:0|7|2024-05-02T10:03:00|2024-05-02T10:03:07|localhost|debug|lab|billing=1,cpu=1,mem=100M,node=1|alice|None||steps
51|50_1|COMPLETED|0:0|0:0|3|2024-05-02T10:05:00|2024-05-02T10:05:03|localhost|gpu|lab|billing=1,cpu=1,gres/gpu=1,mem=100M,node=1|alice|None|tok|arr
52|50_2|RUNNING|0:0|0:0|40|2024-05-02T10:05:00|Unknown|localhost|gpu|lab|billing=1,cpu=1,gres/gpu=1,mem=100M,node=1|alice|None|tok|arr
50|50_[3-5]|PENDING|0:0|0:0|0|Unknown|Unknown|None assigned|gpu|lab||alice|Resources|tok|arr
";

    #[test]
    fn sacct_22_05_rows() {
        let rows = parse_sacct(SACCT_22_05).unwrap();
        assert_eq!(rows.len(), 7);
        let ok = &rows[0];
        assert_eq!(ok.id, JobId(41));
        assert_eq!(ok.state, JobState::Completed);
        assert_eq!(ok.exit_code, Some(ExitCode::default()));
        assert_eq!(ok.elapsed_secs, Some(2));
        assert_eq!(ok.nodes.as_deref(), Some("localhost"));
        assert_eq!(ok.comment.as_deref(), Some("hpcstage-7f3a"));
        assert_eq!(ok.name, "hello");
        assert!(ok.start.is_some() && ok.end.is_some());
        assert_eq!(ok.source, Source::Sacct);

        assert_eq!(rows[1].state, JobState::Cancelled { by: Some(0) });
        assert_eq!(
            rows[1].exit_code,
            Some(ExitCode {
                status: 0,
                signal: 15
            })
        );
        assert_eq!(rows[1].comment, None);

        let oom = &rows[2];
        assert_eq!(oom.state, JobState::OutOfMemory);
        assert_eq!(oom.gpus, 1);
        assert_eq!(oom.user.as_deref(), Some("alice"));
        assert_eq!(oom.partition.as_deref(), Some("gpu"));

        assert_eq!(rows[3].state, JobState::Completed);
        assert_eq!(
            rows[3].derived_exit_code,
            Some(ExitCode {
                status: 2,
                signal: 0
            })
        );

        assert_eq!(rows[4].id, JobId(50));
        assert_eq!(rows[4].raw_id, JobId(51));
        assert_eq!(rows[4].array_task, Some(ArrayTask::Index(1)));
        assert_eq!(rows[5].end, None, "a running job has no end yet");
        let pending = &rows[6];
        assert_eq!(pending.raw_id, JobId(50));
        assert_eq!(pending.array_task, Some(ArrayTask::Pending("3-5".into())));
        assert_eq!(pending.nodes, None);
        assert_eq!(pending.start, None);
        assert_eq!(pending.reason.as_deref(), Some("Resources"));
    }

    /// Slurm 20.11 and 23.11 print the same columns; 23.11 orders TRES differently
    /// and shows array tasks throttled with `%`.
    #[test]
    fn sacct_other_versions() {
        let v20 = "\
1001|1001|TIMEOUT|0:0|0:0|60|2021-01-10T08:00:00|2021-01-10T08:01:00|node01|batch|proj|cpu=4,mem=16G,node=1,billing=4|bob|TimeLimit||long run
1002|1002|NODE_FAIL|1:0|0:0|5|2021-01-10T08:00:00|2021-01-10T08:00:05|node[01-02]|batch|proj|cpu=8,mem=32G,node=2,billing=8|bob|None||x|with|pipes
";
        let rows = parse_sacct(v20).unwrap();
        assert_eq!(rows[0].state, JobState::Timeout);
        assert_eq!(rows[0].name, "long run");
        assert_eq!(rows[1].state, JobState::NodeFail);
        assert_eq!(
            rows[1].name, "x|with|pipes",
            "the name is last and keeps its pipes"
        );
        assert_eq!(rows[1].nodes.as_deref(), Some("node[01-02]"));

        let v23 = "\
2001|2001|PREEMPTED|0:15|0:0|100|2024-11-01T09:00:00|2024-11-01T09:01:40|gpu01|gpu|lab|billing=8,cpu=8,gres/gpu:a100=2,gres/gpu=2,mem=64G,node=1|carol|None||train
2002|2002|REQUEUED|0:0|0:0|10|2024-11-01T09:00:00|2024-11-01T09:00:10|gpu01|gpu|lab|billing=8,cpu=8,gres/gpu=2,mem=64G,node=1|carol|None||train
2003|2003|BOOT_FAIL|0:0|0:0|0|None|2024-11-01T09:00:00|cloud01|cloud|lab||carol|None||c
2004|2004|DEADLINE|0:0|0:0|0|None|2024-11-01T09:00:00|None assigned|debug|lab||carol|DeadLine||d
2006|2005_[1-10%2]|PENDING|0:0|0:0|0|Unknown|Unknown|None assigned|debug|lab||carol|JobArrayTaskLimit||e
2010|2010.batch|COMPLETED|0:0|0:0|1|2024-11-01T09:00:00|2024-11-01T09:00:01|gpu01|||cpu=1|||||batch
";
        let rows = parse_sacct(v23).unwrap();
        assert_eq!(rows.len(), 5, "step rows are skipped");
        assert_eq!(rows[0].state, JobState::Preempted);
        assert_eq!(rows[0].gpus, 2);
        assert_eq!(rows[1].state, JobState::Requeued);
        assert!(!rows[1].state.is_terminal());
        assert_eq!(rows[2].state, JobState::BootFail);
        assert_eq!(rows[3].state, JobState::Deadline);
        assert_eq!(
            rows[4].array_task,
            Some(ArrayTask::Pending("1-10%2".into()))
        );
    }

    #[test]
    fn sacct_garbage_is_a_parse_error_with_the_line() {
        let err = parse_sacct("sacct: fatal: something odd\n").unwrap_err();
        match err {
            Error::Parse { text, .. } => assert_eq!(text, "sacct: fatal: something odd"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn squeue_rows() {
        let text = "\
60|60|PENDING|0:00|N/A|N/A||debug|root|root|Dependency|N/A|hpcstage-aa|pull-back
61|61|RUNNING|1:05|2024-05-02T10:00:00|2024-05-02T11:00:00|localhost|gpu|root|root|None|gres:gpu:1|hpcstage-bb|unet
62|62|COMPLETED|0:03|2024-05-02T10:00:00|2024-05-02T10:00:03|localhost|debug|root|root|None|N/A|(null)|done
70|70_[2-4]|PENDING|0:00|2024-05-02T12:00:00|2024-05-02T13:00:00||debug|root|root|Resources|N/A|tok|arr
71|70_1|RUNNING|0:10|2024-05-02T10:00:00|2024-05-02T11:00:00|localhost|debug|root|root|None|N/A|tok|arr
";
        let rows = parse_squeue(text).unwrap();
        assert_eq!(rows.len(), 5);
        assert_eq!(rows[0].state, JobState::Pending);
        assert_eq!(rows[0].reason.as_deref(), Some("Dependency"));
        assert_eq!(rows[0].nodes, None);
        assert_eq!(rows[1].gpus, 1);
        assert_eq!(rows[1].elapsed_secs, Some(65));
        assert_eq!(rows[1].end, None, "a running job's end is only an estimate");
        assert_eq!(rows[2].comment, None);
        assert!(rows[2].end.is_some());
        assert_eq!(rows[2].exit_code, None, "squeue does not know exit codes");
        assert_eq!(
            rows[3].start, None,
            "a pending job's start is only an estimate"
        );
        assert_eq!(rows[3].array_task, Some(ArrayTask::Pending("2-4".into())));
        assert_eq!(rows[4].raw_id, JobId(71));
        assert_eq!(rows[4].id, JobId(70));
    }

    /// `scontrol show job -o` as printed by 20.11 (TRES=, no AllocTRES).
    const SCONTROL_20_11: &str = "JobId=812 JobName=my job.sh UserId=alice(1000) GroupId=alice(1000) MCS_label=N/A Priority=4294901758 Nice=0 Account=lab QOS=normal JobState=FAILED Reason=NonZeroExitCode Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=3:0 DerivedExitCode=0:0 RunTime=00:00:02 TimeLimit=UNLIMITED TimeMin=N/A SubmitTime=2021-01-10T08:00:00 EligibleTime=2021-01-10T08:00:00 AccrueTime=2021-01-10T08:00:00 StartTime=2021-01-10T08:00:01 EndTime=2021-01-10T08:00:03 Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2021-01-10T08:00:01 Partition=debug AllocNode:Sid=login1:4242 ReqNodeList=(null) ExcNodeList=(null) NodeList=node01 BatchHost=node01 NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,mem=100M,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 MinMemoryNode=100M MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) Command=/home/alice/my job.sh WorkDir=/home/alice Comment=hpcstage-t1 StdErr=/home/alice/slurm-812.out StdIn=/dev/null StdOut=/home/alice/slurm-812.out Power= NtasksPerTRES:0";

    /// 22.05 (this machine): a gpu job, completed, with TresPerNode.
    const SCONTROL_22_05: &str = "JobId=7 JobName=gpu.sh UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901753 Nice=0 Account=root QOS=normal JobState=COMPLETED Reason=None Dependency=(null) Requeue=1 Restarts=1 BatchFlag=1 Reboot=0 ExitCode=0:0 DerivedExitCode=0:0 RunTime=00:00:01 TimeLimit=UNLIMITED TimeMin=N/A SubmitTime=2024-05-02T10:00:00 EligibleTime=2024-05-02T10:00:00 AccrueTime=2024-05-02T10:00:00 StartTime=2024-05-02T10:00:01 EndTime=2024-05-02T10:00:02 Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2024-05-02T10:00:01 Scheduler=Main Partition=gpu AllocNode:Sid=localhost:1234 ReqNodeList=(null) ExcNodeList=(null) NodeList=localhost BatchHost=localhost NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,mem=100M,node=1,billing=1,gres/gpu=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 MinMemoryNode=100M MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) Command=/tmp/gpu.sh WorkDir=/tmp StdErr=/tmp/slurm-7.out StdIn=/dev/null StdOut=/tmp/slurm-7.out Power= TresPerNode=gres:gpu:1";

    /// 23.11: ReqTRES/AllocTRES, an array task and the pending rest of the array.
    const SCONTROL_23_11: &str = "\
JobId=301 ArrayJobId=300 ArrayTaskId=1 JobName=arr UserId=carol(1002) GroupId=lab(500) MCS_label=N/A Priority=1 Nice=0 Account=lab QOS=normal JobState=RUNNING Reason=None Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:01:10 TimeLimit=01:00:00 TimeMin=N/A SubmitTime=2024-11-01T09:00:00 EligibleTime=2024-11-01T09:00:00 AccrueTime=2024-11-01T09:00:00 StartTime=2024-11-01T09:00:01 EndTime=2024-11-01T10:00:01 Deadline=N/A PreemptEligibleTime=2024-11-01T09:00:01 PreemptTime=None SuspendTime=None SecsPreSuspend=0 LastSchedEval=2024-11-01T09:00:01 Scheduler=Main Partition=gpu AllocNode:Sid=login:99 ReqNodeList=(null) ExcNodeList=(null) NodeList=gpu01 BatchHost=gpu01 NumNodes=1 NumCPUs=2 NumTasks=1 CPUs/Task=2 ReqB:S:C:T=0:0:*:* ReqTRES=cpu=2,mem=8G,node=1,billing=2,gres/gpu=1 AllocTRES=cpu=2,mem=8G,node=1,billing=2,gres/gpu=1,gres/gpu:a100=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=2 MinMemoryNode=8G MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) Command=/scratch/run.sh WorkDir=/scratch Comment=hpcstage-c3 StdErr=/scratch/%A_%a.err StdIn=/dev/null StdOut=/scratch/%A_%a.out TresPerNode=gres/gpu:1
JobId=300 ArrayJobId=300 ArrayTaskId=2-4%2 ArrayTaskThrottle=2 JobName=arr UserId=carol(1002) GroupId=lab(500) MCS_label=N/A Priority=1 Nice=0 Account=lab QOS=normal JobState=PENDING Reason=JobArrayTaskLimit Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:00 TimeLimit=01:00:00 TimeMin=N/A SubmitTime=2024-11-01T09:00:00 EligibleTime=2024-11-01T09:00:00 AccrueTime=2024-11-01T09:00:00 StartTime=2024-11-01T10:00:01 EndTime=2024-11-01T11:00:01 Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2024-11-01T09:00:01 Scheduler=Main Partition=gpu AllocNode:Sid=login:99 ReqNodeList=(null) ExcNodeList=(null) NodeList= NumNodes=1 NumCPUs=2 NumTasks=1 CPUs/Task=2 ReqB:S:C:T=0:0:*:* ReqTRES=cpu=2,mem=8G,node=1,billing=2,gres/gpu=1 AllocTRES=(null) Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=2 MinMemoryNode=8G MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null) Command=/scratch/run.sh WorkDir=/scratch Comment=hpcstage-c3 StdErr=/scratch/%A_%a.err StdIn=/dev/null StdOut=/scratch/%A_%a.out TresPerNode=gres/gpu:1
";

    #[test]
    fn scontrol_20_11() {
        let rows = parse_scontrol(SCONTROL_20_11).unwrap();
        assert_eq!(rows.len(), 1);
        let j = &rows[0];
        assert_eq!(j.id, JobId(812));
        assert_eq!(j.name, "my job.sh", "a value with a space is kept whole");
        assert_eq!(j.state, JobState::Failed);
        assert_eq!(
            j.exit_code,
            Some(ExitCode {
                status: 3,
                signal: 0
            })
        );
        assert_eq!(j.user.as_deref(), Some("alice"));
        assert_eq!(
            j.alloc_tres.as_deref(),
            Some("cpu=1,mem=100M,node=1,billing=1")
        );
        assert_eq!(j.gpus, 0);
        assert_eq!(j.restarts, Some(0));
        assert_eq!(j.comment.as_deref(), Some("hpcstage-t1"));
        assert_eq!(j.reason.as_deref(), Some("NonZeroExitCode"));
        assert_eq!(j.elapsed_secs, Some(2));
        assert!(j.end.is_some());
        let fields = scontrol_fields(SCONTROL_20_11);
        assert_eq!(fields["Command"], "/home/alice/my job.sh");
        assert_eq!(fields["AllocNode:Sid"], "login1:4242");
    }

    #[test]
    fn scontrol_22_05() {
        let j = &parse_scontrol(SCONTROL_22_05).unwrap()[0];
        assert_eq!(j.state, JobState::Completed);
        assert_eq!(j.gpus, 1);
        assert_eq!(j.nodes.as_deref(), Some("localhost"));
        assert_eq!(j.restarts, Some(1));
        assert_eq!(j.derived_exit_code, Some(ExitCode::default()));
        assert_eq!(j.comment, None);
        assert_eq!(j.source, Source::Scontrol);
    }

    #[test]
    fn scontrol_23_11_array() {
        let rows = parse_scontrol(SCONTROL_23_11).unwrap();
        assert_eq!(rows.len(), 2);
        let running = &rows[0];
        assert_eq!((running.id, running.raw_id), (JobId(300), JobId(301)));
        assert_eq!(running.array_task, Some(ArrayTask::Index(1)));
        assert_eq!(running.gpus, 1, "gres/gpu=1 wins over the typed duplicate");
        assert_eq!(
            running.end, None,
            "EndTime of a running job is its time limit"
        );
        assert_eq!(running.derived_exit_code, None);
        let pending = &rows[1];
        assert_eq!(pending.array_task, Some(ArrayTask::Pending("2-4%2".into())));
        assert_eq!(
            pending.start, None,
            "StartTime of a pending job is an estimate"
        );
        assert_eq!(pending.alloc_tres, None);
        assert_eq!(pending.nodes, None);
    }

    #[test]
    fn array_summary() {
        let rows: Vec<JobInfo> = parse_sacct(SACCT_22_05)
            .unwrap()
            .into_iter()
            .filter(|r| r.id == JobId(50))
            .collect();
        let s = JobInfo::summarise_array(JobId(50), rows.clone());
        assert_eq!(s.state, JobState::Running);
        assert!(!s.state.is_terminal());
        assert_eq!(s.tasks.len(), 3);
        assert_eq!(s.end, None);

        let mut done = rows.clone();
        for r in &mut done {
            r.state = JobState::Completed;
        }
        done[1].state = JobState::Failed;
        done[1].exit_code = Some(ExitCode {
            status: 4,
            signal: 0,
        });
        let s = JobInfo::summarise_array(JobId(50), done);
        assert_eq!(s.state, JobState::Failed);
        assert_eq!(
            s.exit_code,
            Some(ExitCode {
                status: 4,
                signal: 0
            })
        );
        assert_eq!(s.raw_id, JobId(50));
        assert_eq!(s.array_task, None);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["tasks"][1]["array_task"], "2");
        assert_eq!(json["state"], "FAILED");
        let back: JobInfo = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn every_column_read_is_in_its_format() {
        assert_eq!(sacct_columns().len(), 16);
        assert_eq!(
            squeue_columns().len(),
            SQUEUE_FORMAT.split('|').count(),
            "every squeue field has a name"
        );
    }
}
