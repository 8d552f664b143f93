//! The local executor running a rendered template: SLURM's time limit and warning signal
//! as the rendered script sees them (moved here from the executor's own tests, which
//! cannot depend on this crate).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use hpcstage_slurm::local::{LocalExecutor, LocalState, LocalStep};

use crate::{render, RenderContext, TemplateSpec, SIGNAL_MARKER};

fn executor(dir: &Path) -> LocalExecutor {
    LocalExecutor::new(dir.join("state")).with_kill_wait(Duration::from_secs(1))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A rendered template with a 3 s limit and a 1 s signal grace: USR1 at 2 s, the trap
/// marks the run, TERM at 3 s ends it as TIMEOUT.
#[test]
fn the_time_limit_warns_with_usr1_then_ends_the_task_as_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let spec = TemplateSpec::parse(
        "[template]\nname = \"slow\"\nversion = \"1\"\nworkflow = \"t\"\n\
         [resources]\ntime = \"3s\"\nsignal_grace = \"1s\"\n",
        "slow.toml",
    )
    .unwrap();
    let body = "echo started\nhpcstage_run sleep 30\necho not-reached\n";
    let ctx = RenderContext::new(&run, tmp.path(), "r1", "tok", "/usr/bin/hpcstage");
    let rendered = render(&spec, body, &BTreeMap::new(), &ctx).unwrap();
    assert!(rendered
        .sbatch_args
        .contains(&"--time=00:00:03".to_string()));
    assert!(rendered
        .sbatch_args
        .contains(&"--signal=B:USR1@1".to_string()));
    let script = rendered.write().unwrap();

    let job = executor(tmp.path())
        .run(LocalStep::new(&script, &run))
        .unwrap();
    let task = &job.tasks[0];
    assert_eq!(job.state, LocalState::Timeout);
    assert_eq!(task.state, LocalState::Timeout);
    assert!(task.warning_signal_sent);
    assert_eq!(task.signal, Some(libc::SIGTERM));
    assert_eq!(task.reason.as_deref(), Some("time limit 00:00:03 reached"));
    assert!(
        (2.9..6.0).contains(&task.elapsed_secs),
        "elapsed {}",
        task.elapsed_secs
    );
    let marker = read(&run.join(SIGNAL_MARKER));
    assert!(marker.contains(&format!("job={} ", job.job_id)), "{marker}");
    assert!(marker.contains("time limit imminent"), "{marker}");
    let log = read(&task.stdout);
    assert_eq!(log, "started\n");
    assert_eq!(
        task.stdout,
        run.join(format!("logs/slow-{}.out", job.job_id))
    );
    assert!(read(&task.stderr).contains("USR1 received"));
}
