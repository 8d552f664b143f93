//! What failed in a run, named: the array tasks that did not complete and, where the
//! run folder says so, the inputs (images, files, samples) they failed on.
//!
//! `FAILED exit 7:0` for a 79-task array tells nobody what to fix. Every task reads a
//! known share of `.hpcstage/inputs.list` (`per_task` items from `task × per_task`), and
//! the built-in templates write one QC table per task (`qc/summary-<task>.tsv`,
//! `qc/convert-<task>.tsv`) with a `status` column. So a failed task is named with the
//! inputs its table marks as failed, or, without a table (a task killed before writing
//! it, a template that writes none), with all of its inputs. Read-only: it never asks the
//! scheduler (the caller passes what it observed) and never writes.

use std::path::Path;

use serde::Serialize;

use hpcstage_staging::record::read_json;
use hpcstage_template::each_input;

use crate::chain::RENDERED_FILE;
use crate::run::JobFacts;

/// A table row status that means the input was done.
const DONE: &[&str] = &["ok", "done-before", "done"];

/// One task that ended other than COMPLETED.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedTask {
    /// The array task id; `None` for a job without an array.
    pub task: Option<u32>,
    pub state: String,
    pub exit_code: Option<String>,
    /// The inputs it failed on (from its QC table), or all of its inputs.
    pub inputs: Vec<String>,
    /// True when `inputs` comes from the task's QC table, false when they are all the
    /// task's inputs and which one failed is not recorded.
    pub inputs_failed_known: bool,
}

impl FailedTask {
    /// `task 3 (FAILED exit 7:0): img4.tif, img9.tif`, for READMEs and `status`.
    pub fn describe(&self) -> String {
        let mut text = match self.task {
            Some(t) => format!("task {t} ({}", self.state),
            None => format!("job ({}", self.state),
        };
        if let Some(c) = &self.exit_code {
            text.push_str(&format!(" exit {c}"));
        }
        text.push(')');
        if !self.inputs.is_empty() {
            const SHOWN: usize = 5;
            let mut names: Vec<String> = self.inputs.iter().take(SHOWN).cloned().collect();
            if self.inputs.len() > SHOWN {
                names.push(format!("and {} more", self.inputs.len() - SHOWN));
            }
            text.push_str(if self.inputs_failed_known {
                ": failed on "
            } else {
                ": its inputs "
            });
            text.push_str(&names.join(", "));
        }
        text
    }
}

/// The tasks of a run's compute job (`facts`, as last observed) that did not complete,
/// with their inputs read from `run_dir`. Empty while the job has not been seen to end.
pub fn failed_tasks(facts: Option<&JobFacts>, run_dir: &Path) -> Vec<FailedTask> {
    let Some(facts) = facts else {
        return Vec::new();
    };
    // Only `per_task` of the rendered job is needed.
    let per_task = read_json::<serde_json::Value>(&run_dir.join(RENDERED_FILE))
        .ok()
        .and_then(|r| r["per_task"].as_u64());
    // A task's share is read from the list on disk, never the whole list held.
    let share = |task: Option<u32>| -> Vec<String> {
        let (start, per) = match (task, per_task) {
            (Some(t), Some(per)) => (
                usize::try_from(u64::from(t) * per).unwrap_or(usize::MAX),
                usize::try_from(per).unwrap_or(usize::MAX),
            ),
            (None, _) => (0, usize::MAX),
            (Some(_), None) => return Vec::new(),
        };
        let (mut seen, mut out) = (0usize, Vec::new());
        let _ = each_input(run_dir, &mut |item| {
            if seen >= start {
                out.push(item);
            }
            seen += 1;
            out.len() < per
        });
        out
    };
    let mut out: Vec<FailedTask> = Vec::new();
    if facts.tasks.is_empty() {
        if facts.state != "COMPLETED" && crate::refresh::ended(&facts.state) {
            out.push(FailedTask {
                task: None,
                state: facts.state.clone(),
                exit_code: facts.exit_code.clone(),
                inputs: share(None),
                inputs_failed_known: false,
            });
        }
        return out;
    }
    for (key, state) in &facts.tasks {
        if state == "COMPLETED" || !crate::refresh::ended(state) {
            continue;
        }
        let task = key
            .rsplit_once('_')
            .and_then(|(_, t)| t.parse::<u32>().ok());
        let from_table = task.and_then(|t| failed_in_tables(run_dir, t));
        let (inputs, known) = match from_table {
            Some(rows) if !rows.is_empty() => (rows, true),
            _ => (share(task), false),
        };
        out.push(FailedTask {
            task,
            state: state.clone(),
            exit_code: facts.task_exit_codes.get(key).cloned(),
            inputs,
            inputs_failed_known: known,
        });
    }
    out.sort_by_key(|t| t.task);
    out
}

/// Inputs marked as not done in the task's QC tables (`qc/*-<task>.tsv` with a header
/// naming a `status` column; the first column names the input). `None` when the task
/// wrote no such table.
fn failed_in_tables(run_dir: &Path, task: u32) -> Option<Vec<String>> {
    let suffix = format!("-{task}.tsv");
    let mut tables: Vec<_> = std::fs::read_dir(run_dir.join("qc"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(&suffix))
        })
        .collect();
    tables.sort();
    let mut found = None;
    for table in tables {
        let Ok(text) = std::fs::read_to_string(&table) else {
            continue;
        };
        let mut lines = text.lines();
        let Some(header) = lines.next() else { continue };
        let Some(col) = header.split('\t').position(|h| h == "status") else {
            continue;
        };
        let rows = found.get_or_insert_with(Vec::new);
        for line in lines {
            let fields: Vec<&str> = line.split('\t').collect();
            if let (Some(name), Some(status)) = (fields.first(), fields.get(col)) {
                if !DONE.contains(status) {
                    rows.push((*name).to_string());
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: &str, tasks: &[(&str, &str, &str)]) -> Option<JobFacts> {
        Some(JobFacts {
            state: state.into(),
            exit_code: Some("7:0".into()),
            tasks: tasks
                .iter()
                .map(|(k, s, _)| ((*k).to_string(), (*s).to_string()))
                .collect(),
            task_exit_codes: tasks
                .iter()
                .map(|(k, _, c)| ((*k).to_string(), (*c).to_string()))
                .collect(),
            ..JobFacts::default()
        })
    }

    #[test]
    fn names_failed_tasks_with_the_images_their_tables_mark_failed() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        std::fs::create_dir_all(run.join(".hpcstage")).unwrap();
        std::fs::create_dir_all(run.join("qc")).unwrap();
        std::fs::write(
            run.join(hpcstage_template::INPUTS_FILE),
            "a.tif\0b.tif\0c.tif\0d.tif\0e.tif\0",
        )
        .unwrap();
        std::fs::write(run.join(RENDERED_FILE), r#"{"per_task": 2}"#).unwrap();
        std::fs::write(
            run.join("qc/summary-1.tsv"),
            "image\tmask\ttable\tstatus\tseconds\nc.tif\tm\tt\tok\t1\nd.tif\tm\tt\tfailed\t2\n",
        )
        .unwrap();
        let j = job(
            "FAILED",
            &[
                ("79_0", "COMPLETED", "0:0"),
                ("79_1", "FAILED", "7:0"),
                ("79_2", "OUT_OF_MEMORY", "0:125"),
            ],
        );
        let failed = failed_tasks(j.as_ref(), run);
        let described: Vec<String> = failed.iter().map(FailedTask::describe).collect();
        // Task 2 wrote no table: all of its inputs are named, as such.
        assert_eq!(
            described,
            [
                "task 1 (FAILED exit 7:0): failed on d.tif",
                "task 2 (OUT_OF_MEMORY exit 0:125): its inputs e.tif"
            ]
        );
    }

    #[test]
    fn a_job_without_an_array_names_every_input_and_a_running_one_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        std::fs::create_dir_all(run.join(".hpcstage")).unwrap();
        std::fs::write(run.join(hpcstage_template::INPUTS_FILE), "s1\0s2\0").unwrap();
        assert_eq!(
            failed_tasks(job("TIMEOUT", &[]).as_ref(), run)[0].describe(),
            "job (TIMEOUT exit 7:0): its inputs s1, s2"
        );
        assert!(failed_tasks(job("RUNNING", &[]).as_ref(), run).is_empty());
    }
}
