//! The jobs of a sharded stage (`stage --shards N`, issue 18): an array job on the
//! transfer partition, one task per shard, each on whichever transfer node SLURM gives
//! it, and a final task that depends on the whole array (`afterany`), merges the shards
//! and finishes the stage; after it, and only after it, whatever `then` names (the
//! compute → pull-back chain of `stage-and-run --stage-in job`).
//!
//! Retries: the tasks are `--requeue`, so a task on a node that fails (NODE_FAIL) or is
//! preempted is started again by SLURM and resumes its shard from the shard's journal; a
//! task that exits with an error is not, and the final task reruns that shard itself
//! (`staging::shard::merge`). The plan and the copying are `staging::shard`'s; this
//! module only writes the two scripts and submits them.

use std::path::{Path, PathBuf};

use hpcstage_slurm::client::{SlurmClient, SubmitRequest};
use hpcstage_slurm::state::{JobId, JobState, NOT_FOUND};
use hpcstage_staging::manifest::write_atomic;
use hpcstage_staging::record::{read_json, write_json};
use hpcstage_staging::shard::jobs_dir;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// What the jobs of a sharded stage run and where.
#[derive(Debug, Clone)]
pub struct ShardJobs<'a> {
    /// `hpcstage [global options] stage SRC DEST --project P --dataset D`, shell-quoted;
    /// a task adds `--shard I/N`, the final task `--merge-shards`.
    pub stage_command: &'a str,
    pub dest: &'a Path,
    pub shards: u32,
    pub partition: &'a str,
    /// `--time` of each task.
    pub time: &'a str,
    /// The dataset, for the job names.
    pub name: &'a str,
    /// A shell command the final task runs once the stage is complete.
    pub then: Option<&'a str>,
}

/// The submitted jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSubmission {
    /// The array job: task `I` copies shard `I`.
    pub array: JobId,
    /// The final task.
    pub last: JobId,
    /// Where the scripts and their logs are (`DEST/.hpcstage/shard-jobs`).
    pub dir: PathBuf,
}

/// The jobs of the last sharded stage into `dest`, written when they were submitted.
fn jobs_path(dest: &Path) -> PathBuf {
    jobs_dir(dest).join("jobs.json")
}

/// The sharded stage into `dest` whose final task has not ended yet, with that task's
/// state; `None` when there is none (never submitted, ended, or forgotten by SLURM). A
/// second plan would overwrite the shard lists the running tasks copy from.
pub fn under_way(client: &SlurmClient, dest: &Path) -> Result<Option<(ShardSubmission, JobState)>> {
    let path = jobs_path(dest);
    if !path.exists() {
        return Ok(None);
    }
    let submitted: ShardSubmission = match read_json(&path) {
        Ok(s) => s,
        // A torn record: its jobs cannot be asked about; the plan is redone.
        Err(hpcstage_staging::Error::Parse { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let state = client
        .query(&[submitted.last])?
        .remove(&submitted.last)
        .map(|info| info.state);
    Ok(state
        .filter(|s| !s.is_terminal() && *s != JobState::Unknown(NOT_FOUND.into()))
        .map(|s| (submitted, s)))
}

/// The array job's script.
pub fn array_script(jobs: &ShardJobs<'_>) -> String {
    let dir = jobs_dir(jobs.dest);
    format!(
        "#!/bin/bash\n\
         # Sharded stage into {dest}: task I copies shard I ({dir}/I.list)\n\
         # into {dest}/.hpcstage/shards/I.\n\
         {directives}\
         set -euo pipefail\n\
         exec {command} --shard \"$SLURM_ARRAY_TASK_ID/{n}\"\n",
        dest = comment(jobs.dest),
        dir = comment(&dir),
        directives = directives(
            jobs,
            "stage-shard",
            Some(jobs.shards.saturating_sub(1)),
            "shard-%a.out"
        ),
        command = jobs.stage_command,
        n = jobs.shards,
    )
}

/// The final task's script.
pub fn final_script(jobs: &ShardJobs<'_>) -> String {
    let then = jobs.then.map(|t| format!("exec {t}\n")).unwrap_or_default();
    format!(
        "#!/bin/bash\n\
         # Final task of the sharded stage into {dest}: reruns any shard its task did\n\
         # not finish, moves the verified files into place, writes MANIFEST.sha256.\n\
         {directives}\
         set -euo pipefail\n\
         {command} --merge-shards\n\
         {then}",
        dest = comment(jobs.dest),
        directives = directives(jobs, "stage-merge", None, "merge.out"),
        command = jobs.stage_command,
    )
}

/// Writes both scripts into `DEST/.hpcstage/shard-jobs` and submits the array, then the
/// final task with `--dependency=afterany:<array>`.
pub fn submit(client: &SlurmClient, jobs: &ShardJobs<'_>) -> Result<ShardSubmission> {
    let dir = jobs_dir(jobs.dest);
    let array_path = dir.join("shards.sbatch");
    write_atomic(&array_path, array_script(jobs).as_bytes())?;
    let final_path = dir.join("merge.sbatch");
    write_atomic(&final_path, final_script(jobs).as_bytes())?;
    let mut req = SubmitRequest::new(&array_path);
    req.workdir = Some(dir.clone());
    let array = client.submit(&req)?.id;
    let mut req = SubmitRequest::new(&final_path);
    req.workdir = Some(dir.clone());
    req.args.push(format!("--dependency=afterany:{array}"));
    let last = client.submit(&req)?.id;
    let submitted = ShardSubmission { array, last, dir };
    write_json(&jobs_path(jobs.dest), &submitted)?;
    Ok(submitted)
}

/// The `#SBATCH` lines both scripts share: a requeueable one-CPU job on the transfer
/// partition (an array of tasks `0..=last` when `array` is given) that appends its
/// output to `DEST/.hpcstage/shard-jobs/<output>`.
fn directives(jobs: &ShardJobs<'_>, job: &str, array: Option<u32>, output: &str) -> String {
    let array = array
        .map(|last| format!("#SBATCH --array=0-{last}\n"))
        .unwrap_or_default();
    format!(
        "#SBATCH --job-name={job}-{name}\n\
         #SBATCH --partition={partition}\n\
         #SBATCH --time={time}\n\
         {array}\
         #SBATCH --cpus-per-task=1\n\
         #SBATCH --requeue\n\
         #SBATCH --open-mode=append\n\
         #SBATCH --output={dir}/{output}\n",
        name = job_name(jobs.name),
        partition = jobs.partition,
        time = jobs.time,
        dir = comment(&jobs_dir(jobs.dest)),
    )
}

/// A path in a comment line: control characters must not start a new line.
fn comment(path: &Path) -> String {
    path.display().to_string().escape_debug().to_string()
}

fn job_name(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_array_has_one_requeueable_task_per_shard_and_the_final_task_runs_then_last() {
        let jobs = ShardJobs {
            stage_command: "/bin/hpcstage stage /nas/p/raw/d /scratch/p/d",
            dest: Path::new("/scratch/p/d"),
            shards: 4,
            partition: "transfer",
            time: "08:00:00",
            name: "plate 7",
            then: Some("/bin/hpcstage submit unet --input /scratch/p/d"),
        };
        let array = array_script(&jobs);
        for line in [
            "#SBATCH --array=0-3\n",
            "#SBATCH --partition=transfer\n",
            "#SBATCH --requeue\n",
            "#SBATCH --job-name=stage-shard-plate7\n",
            "#SBATCH --output=/scratch/p/d/.hpcstage/shard-jobs/shard-%a.out\n",
            "exec /bin/hpcstage stage /nas/p/raw/d /scratch/p/d --shard \"$SLURM_ARRAY_TASK_ID/4\"\n",
        ] {
            assert!(array.contains(line), "{line:?} in\n{array}");
        }
        let last = final_script(&jobs);
        assert!(
            last.ends_with(
                "/bin/hpcstage stage /nas/p/raw/d /scratch/p/d --merge-shards\n\
                 exec /bin/hpcstage submit unet --input /scratch/p/d\n"
            ),
            "{last}"
        );
        assert!(!last.contains("--array"), "{last}");
    }
}
