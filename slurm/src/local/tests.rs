//! Local executor tests: real bash scripts in temporary folders.

use std::path::Path;
use std::time::Duration;

use std::process::Command;
use std::time::Instant;

use super::env::{expand_pattern, PatternVars};
use super::*;
use crate::partition::mem_to_mb;

/// Write a script and return its path.
fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn executor(dir: &Path) -> LocalExecutor {
    LocalExecutor::new(dir.join("state")).with_kill_wait(Duration::from_secs(1))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn array_tasks_run_in_order_with_slurm_variables_and_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir_all(work.join("logs")).unwrap();
    let s = script(
        tmp.path(),
        "env.sbatch",
        &format!(
            "#!/bin/bash\n#SBATCH --job-name=envtest\n#SBATCH --array=1,3,5 --cpus-per-task=2\n\
             #SBATCH --mem=1G\n#SBATCH --chdir={}\n#SBATCH --output=logs/%x-%A_%a.out\n\
             #SBATCH --error=logs/%x-%A_%3a.err\nset -eu\n\
             echo \"job=$SLURM_JOB_ID array_job=$SLURM_ARRAY_JOB_ID task=$SLURM_ARRAY_TASK_ID \
             count=$SLURM_ARRAY_TASK_COUNT min=$SLURM_ARRAY_TASK_MIN max=$SLURM_ARRAY_TASK_MAX \
             step=$SLURM_ARRAY_TASK_STEP name=$SLURM_JOB_NAME cpus=$SLURM_CPUS_PER_TASK \
             mem=$SLURM_MEM_PER_NODE part=$SLURM_JOB_PARTITION extra=$EXTRA pwd=$PWD\"\n\
             echo \"to stderr $SLURM_ARRAY_TASK_ID\" >&2\n\
             [[ $SLURM_JOB_NODELIST == \"$SLURMD_NODENAME\" && -n $SLURM_SUBMIT_DIR ]]\n",
            work.display()
        ),
    );
    let job = executor(tmp.path())
        .run(LocalStep::new(&s, tmp.path()).env("EXTRA", "x y"))
        .unwrap();
    assert_eq!(job.state, LocalState::Completed);
    assert_eq!(job.array.as_deref(), Some("1,3,5"));
    let first = job.job_id;
    let ids: Vec<u64> = job.tasks.iter().map(|t| t.job_id).collect();
    assert_eq!(ids, [first, first + 1, first + 2]);
    for (i, task) in job.tasks.iter().enumerate() {
        let t = [1, 3, 5][i];
        assert_eq!(task.state, LocalState::Completed);
        assert_eq!((task.exit_code, task.signal), (Some(0), None));
        assert!(task.start.unwrap() <= task.end.unwrap());
        assert_eq!(
            task.stdout,
            work.join(format!("logs/envtest-{first}_{t}.out"))
        );
        assert_eq!(
            task.stderr,
            work.join(format!("logs/envtest-{first}_{t:03}.err"))
        );
        assert_eq!(
            read(&task.stdout),
            format!(
                "job={} array_job={first} task={t} count=3 min=1 max=5 step=2 name=envtest \
                 cpus=2 mem=1024 part=local extra=x y pwd={}\n",
                first + i as u64,
                work.display()
            )
        );
        assert_eq!(read(&task.stderr), format!("to stderr {t}\n"));
    }
    assert_eq!(job.exit_code(), Some(0));
    // The record says the same as the result.
    let record = executor(tmp.path()).job(first).unwrap().unwrap();
    assert_eq!(record, job);
}

#[test]
fn a_job_that_is_no_array_logs_to_slurm_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let s = script(
        tmp.path(),
        "plain.sh",
        "#!/bin/bash\necho out; echo err >&2; exit 0\n",
    );
    let job = executor(tmp.path())
        .run(LocalStep::new(&s, tmp.path()))
        .unwrap();
    assert_eq!(job.name, "plain.sh");
    let task = &job.tasks[0];
    assert_eq!(task.array_task_id, None);
    assert_eq!(
        task.stdout,
        tmp.path().join(format!("slurm-{}.out", job.job_id))
    );
    assert_eq!(task.stdout, task.stderr);
    assert_eq!(read(&task.stdout), "out\nerr\n");
}

#[test]
fn a_failing_task_fails_the_job_its_afterok_dependent_is_cancelled_and_afterany_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let compute = script(
        tmp.path(),
        "compute.sbatch",
        "#!/bin/bash\n#SBATCH --array=0-2\n#SBATCH --output=%x-%a.log\nif [[ $SLURM_ARRAY_TASK_ID == 1 ]]; then exit 3; fi\necho fine\n",
    );
    let pull = script(
        tmp.path(),
        "pull.sbatch",
        "#!/bin/bash\n#SBATCH --job-name=pull\necho pulled > pulled.txt\n",
    );
    let never = script(tmp.path(), "never.sbatch", "#!/bin/bash\ntouch never.txt\n");
    let jobs = executor(tmp.path())
        .run_chain(&[
            LocalStep::new(&compute, tmp.path()),
            LocalStep::new(&never, tmp.path()).after_ok(),
            LocalStep::new(&pull, tmp.path()).after_any(),
        ])
        .unwrap();
    let states: Vec<LocalState> = jobs[0].tasks.iter().map(|t| t.state).collect();
    assert_eq!(
        states,
        [
            LocalState::Completed,
            LocalState::Failed,
            LocalState::Completed
        ]
    );
    assert_eq!(jobs[0].tasks[1].exit_code, Some(3));
    assert_eq!(jobs[0].state, LocalState::Failed);
    assert_eq!(jobs[0].exit_code(), Some(3));
    assert_eq!(read(&tmp.path().join("compute.sbatch-2.log")), "fine\n");

    assert_eq!(jobs[1].state, LocalState::Cancelled);
    assert_eq!(
        jobs[1].reason.as_deref(),
        Some(
            format!(
                "dependency never satisfied: job {} ended FAILED",
                jobs[0].job_id
            )
            .as_str()
        )
    );
    assert!(jobs[1].tasks.is_empty());
    assert!(!tmp.path().join("never.txt").exists());

    assert_eq!(
        jobs[2].depends_on,
        Some(DependsOn {
            kind: Dependency::AfterAny,
            job_id: jobs[1].job_id
        })
    );
    assert_eq!(jobs[2].state, LocalState::Completed);
    assert_eq!(read(&tmp.path().join("pulled.txt")), "pulled\n");
    // Ids are consecutive: three for the array, then one each.
    assert_eq!(jobs[1].job_id, jobs[0].job_id + 3);
    assert_eq!(jobs[2].job_id, jobs[1].job_id + 1);
}

#[test]
fn afterok_follows_a_failed_job_by_cancelling() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = script(tmp.path(), "bad.sh", "#!/bin/bash\nexit 1\n");
    let next = script(tmp.path(), "next.sh", "#!/bin/bash\ntouch ran\n");
    let jobs = executor(tmp.path())
        .run_chain(&[
            LocalStep::new(&bad, tmp.path()),
            LocalStep::new(&next, tmp.path()).after_ok(),
        ])
        .unwrap();
    assert_eq!(jobs[0].state, LocalState::Failed);
    assert_eq!(jobs[1].state, LocalState::Cancelled);
    assert!(jobs[1].tasks.is_empty());
    assert!(!tmp.path().join("ran").exists());
}

#[test]
fn a_task_ignoring_sigterm_is_killed_after_the_kill_wait() {
    let tmp = tempfile::tempdir().unwrap();
    let s = script(
        tmp.path(),
        "stubborn.sh",
        "#!/bin/bash\n#SBATCH --time=0:01\ntrap '' TERM\nwhile :; do sleep 0.1 || true; done\n",
    );
    let job = executor(tmp.path())
        .run(LocalStep::new(&s, tmp.path()))
        .unwrap();
    let task = &job.tasks[0];
    assert_eq!(task.state, LocalState::Timeout);
    assert_eq!(task.signal, Some(libc::SIGKILL));
    assert!(!task.warning_signal_sent, "no --signal, no warning");
    assert!(
        (1.9..5.0).contains(&task.elapsed_secs),
        "elapsed {}",
        task.elapsed_secs
    );
}

#[test]
fn cancel_stops_a_running_job_and_afterany_still_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let long = script(
        tmp.path(),
        "long.sh",
        "#!/bin/bash\n#SBATCH --array=0-1\nsleep 30\n",
    );
    let pull = script(tmp.path(), "pull.sh", "#!/bin/bash\ntouch pulled\n");
    let ex = executor(tmp.path());
    let ids = ex
        .submit(&[
            LocalStep::new(&long, tmp.path()),
            LocalStep::new(&pull, tmp.path()).after_any(),
        ])
        .unwrap();
    let canceller = {
        let ex = ex.clone();
        let id = ids[0];
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while ex.job(id).unwrap().unwrap().state != LocalState::Running {
                assert!(Instant::now() < deadline);
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(200));
            ex.cancel(id).unwrap();
        })
    };
    let jobs = ex.run_submitted(&ids).unwrap();
    canceller.join().unwrap();
    assert_eq!(jobs[0].state, LocalState::Cancelled);
    assert_eq!(jobs[0].tasks[0].state, LocalState::Cancelled);
    assert_eq!(jobs[0].tasks[0].signal, Some(libc::SIGTERM));
    assert_eq!(
        jobs[0].tasks[1].reason.as_deref(),
        Some("cancelled before it started")
    );
    assert!(jobs[0].tasks[0].elapsed_secs < 5.0);
    assert_eq!(jobs[1].state, LocalState::Completed);
    assert!(tmp.path().join("pulled").exists());
}

#[test]
fn a_cancel_flag_cancels_everything_not_yet_ended() {
    let tmp = tempfile::tempdir().unwrap();
    let a = script(tmp.path(), "a.sh", "#!/bin/bash\ntouch a\n");
    let b = script(tmp.path(), "b.sh", "#!/bin/bash\ntouch b\n");
    let flag = Arc::new(AtomicBool::new(true));
    let jobs = executor(tmp.path())
        .with_cancel_flag(flag)
        .run_chain(&[
            LocalStep::new(&a, tmp.path()),
            LocalStep::new(&b, tmp.path()).after_any(),
        ])
        .unwrap();
    assert!(jobs.iter().all(|j| j.state == LocalState::Cancelled));
    assert!(!tmp.path().join("a").exists() && !tmp.path().join("b").exists());
}

#[test]
fn submitted_jobs_are_pending_until_a_runner_takes_them_once() {
    let tmp = tempfile::tempdir().unwrap();
    let a = script(
        tmp.path(),
        "a.sh",
        "#!/bin/bash\n#SBATCH --job-name=first\ntrue\n",
    );
    let b = script(tmp.path(), "b.sh", "#!/bin/bash\ntrue\n");
    let ex = executor(tmp.path());
    let ids = ex
        .submit(&[
            LocalStep::new(&a, tmp.path()),
            LocalStep::new(&b, tmp.path()).after_any(),
        ])
        .unwrap();
    let pending = ex.job(ids[1]).unwrap().unwrap();
    assert_eq!(pending.state, LocalState::Pending);
    assert_eq!(
        pending.depends_on,
        Some(DependsOn {
            kind: Dependency::AfterAny,
            job_id: ids[0]
        })
    );
    assert_eq!(ex.job(ids[0]).unwrap().unwrap().name, "first");
    // A runner in another process would do just this.
    let done = LocalExecutor::new(tmp.path().join("state"))
        .run_submitted(&ids)
        .unwrap();
    assert!(done.iter().all(|j| j.state == LocalState::Completed));
    assert_eq!(done[0].runner.as_ref().unwrap().pid, std::process::id());
    let again = ex.run_submitted(&ids).unwrap_err();
    assert!(
        matches!(
            again,
            LocalError::NotPending {
                state: LocalState::Completed,
                ..
            }
        ),
        "{again}"
    );
    assert!(matches!(ex.job(999_999), Ok(None)));
    assert!(matches!(
        ex.cancel(999_999),
        Err(LocalError::UnknownJob { .. })
    ));
    let err = ex
        .submit(&[LocalStep::new(&a, tmp.path()).after_ok()])
        .unwrap_err();
    assert!(matches!(err, LocalError::DanglingDependency));
}

#[test]
fn a_job_whose_runner_vanished_reads_as_node_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let a = script(tmp.path(), "a.sh", "#!/bin/bash\ntrue\n");
    let ex = executor(tmp.path());
    let id = ex.submit(&[LocalStep::new(&a, tmp.path())]).unwrap()[0];
    let mut job = ex.load(id).unwrap().unwrap();
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    job.state = LocalState::Running;
    job.runner = Some(Runner {
        pid: gone.id(),
        host: short_hostname(),
    });
    ex.save(&job).unwrap();
    let seen = ex.job(id).unwrap().unwrap();
    assert_eq!(seen.state, LocalState::NodeFail);
    assert!(seen.reason.unwrap().contains("is gone"));
}

#[test]
fn a_missing_log_folder_fails_the_task_as_in_slurm() {
    let tmp = tempfile::tempdir().unwrap();
    let s = script(
        tmp.path(),
        "a.sh",
        "#!/bin/bash\n#SBATCH --output=nowhere/%j.out\ntouch ran\n",
    );
    let job = executor(tmp.path())
        .run(LocalStep::new(&s, tmp.path()))
        .unwrap();
    assert_eq!(job.state, LocalState::Failed);
    let reason = job.tasks[0].reason.clone().unwrap();
    assert!(reason.starts_with("cannot open log file"), "{reason}");
    assert!(reason.contains("nowhere"), "{reason}");
    assert!(!tmp.path().join("ran").exists());
}

#[test]
fn bad_directives_are_errors_naming_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let s = script(
        tmp.path(),
        "a.sh",
        "#!/bin/bash\n#SBATCH --array=5-1\ntrue\n",
    );
    let err = executor(tmp.path())
        .run(LocalStep::new(&s, tmp.path()))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("a.sh, line 2: range 5-1 runs backwards"),
        "{err}"
    );
}

#[test]
fn job_ids_are_unique_across_concurrent_submitters() {
    let tmp = tempfile::tempdir().unwrap();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let ex = executor(tmp.path());
            std::thread::spawn(move || {
                (0..10)
                    .map(|_| ex.reserve_ids(2).unwrap())
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut all: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort_unstable();
    let expected: Vec<u64> = (0..80).map(|i| 1 + 2 * i).collect();
    assert_eq!(all, expected);
}

#[test]
fn filename_patterns_expand_like_sbatch() {
    let v = PatternVars {
        job_id: 42,
        array_job_id: 40,
        task_id: Some(7),
        name: "seg",
        host: "node1",
    };
    assert_eq!(expand_pattern("logs/%x-%A_%a.out", &v), "logs/seg-40_7.out");
    assert_eq!(
        expand_pattern("%j-%4a-%N-%s-%%-%J-%q", &v),
        "42-0007-node1-batch-%-42.batch-%q"
    );
    let plain = PatternVars {
        task_id: None,
        array_job_id: 42,
        ..v
    };
    assert_eq!(expand_pattern("%A_%a", &plain), "42_4294967294");
    assert_eq!(expand_pattern("100%%/%x", &plain), "100%/seg");
}

#[test]
fn memory_converts_to_megabytes() {
    assert_eq!(mem_to_mb("16G"), Some(16_384));
    assert_eq!(mem_to_mb("500"), Some(500));
    assert_eq!(mem_to_mb("2048K"), Some(2));
    assert_eq!(mem_to_mb("1T"), Some(1_048_576));
    assert_eq!(mem_to_mb("lots"), None);
}

#[test]
fn a_job_that_cannot_start_fails_and_the_chain_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let a = script(
        tmp.path(),
        "a.sh",
        "#!/bin/bash\n#SBATCH --chdir=/nonexistent/folder\ntrue\n",
    );
    let b = script(tmp.path(), "b.sh", "#!/bin/bash\ntouch b\n");
    let c = script(tmp.path(), "c.sh", "#!/bin/bash\ntouch c\n");
    let ex = executor(tmp.path());
    let ids = ex
        .submit(&[
            LocalStep::new(&a, tmp.path()),
            LocalStep::new(&b, tmp.path()).after_any(),
            LocalStep::new(&c, tmp.path()).after_any(),
        ])
        .unwrap();
    std::fs::remove_file(&b).unwrap();
    let jobs = ex.run_submitted(&ids).unwrap();
    assert_eq!(jobs[0].state, LocalState::Failed);
    let reason = jobs[0].tasks[0].reason.clone().unwrap();
    assert!(reason.starts_with("cannot "), "{reason}");
    assert_eq!(jobs[1].state, LocalState::Failed);
    assert!(jobs[1].reason.clone().unwrap().contains("b.sh"));
    assert_eq!(jobs[2].state, LocalState::Completed);
    assert!(tmp.path().join("c").exists());
}

#[test]
fn relative_script_paths_are_made_absolute_at_submission() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    script(
        tmp.path(),
        "rel.sh",
        &format!(
            "#!/bin/bash\n#SBATCH --chdir={}\ntouch ran\n",
            work.display()
        ),
    );
    let cwd = std::env::current_dir().unwrap();
    let rel = pathdiff(&tmp.path().join("rel.sh"), &cwd);
    let job = executor(tmp.path())
        .run(LocalStep::new(&rel, &cwd))
        .unwrap();
    assert_eq!(
        job.state,
        LocalState::Completed,
        "{:?}",
        job.tasks[0].reason
    );
    assert!(job.script.is_absolute());
    assert!(work.join("ran").exists());
}

/// `path` relative to `base` (both absolute), with `..` as needed.
fn pathdiff(path: &Path, base: &Path) -> PathBuf {
    let p: Vec<_> = path.components().collect();
    let b: Vec<_> = base.components().collect();
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c);
    }
    out
}
