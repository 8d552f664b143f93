//! The client against fake SLURM commands: shell scripts in a temp `bin_dir` that
//! log their arguments to `<name>.calls` and answer as recorded from real clusters.

use super::exec::{classify, current_uid, find_on_path, Failure, Invocation};
use super::submit::validate_token;
use super::*;
use crate::error::Error;
use crate::parse::{format_time, SACCT_FORMAT};
use crate::state::{ExitCode, JobState, Source};
use jiff::SignedDuration;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;

struct Fakes {
    dir: tempfile::TempDir,
}

impl Fakes {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a fake command; `$D` is its folder, `$N` how often it ran (this run
    /// included).
    fn write(&self, name: &str, body: &str) {
        let text = format!(
            "#!/bin/sh\nD=\"$(dirname \"$0\")\"\necho \"$*\" >> \"$D/{name}.calls\"\n\
             N=$(grep -c '' \"$D/{name}.calls\")\n{body}\n"
        );
        let path = self.path(name);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn calls(&self, name: &str) -> Vec<String> {
        fs::read_to_string(self.path(&format!("{name}.calls")))
            .map(|s| s.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    fn settings(&self) -> ClientSettings {
        ClientSettings {
            timeout: Duration::from_secs(5),
            retries: 3,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(40),
            bin_dir: Some(self.dir.path().to_owned()),
            sacct_lookback: Duration::from_secs(3600),
            user: None,
        }
    }

    fn client(&self) -> SlurmClient {
        SlurmClient::new(self.settings())
    }

    fn client_with_timeout(&self, timeout: Duration) -> SlurmClient {
        SlurmClient::new(ClientSettings {
            timeout,
            ..self.settings()
        })
    }
}

fn request(token: &str) -> SubmitRequest {
    SubmitRequest {
        script: PathBuf::from("/scratch/run/job.sbatch"),
        token: token.to_owned(),
        ..SubmitRequest::default()
    }
}

/// A fake sbatch that records the job in `$D/queue` (as `squeue --format=%F|%k`
/// prints it), like a controller that accepted it.
const SBATCH_RECORDS: &str = r#"tok=""
for a in "$@"; do case "$a" in --comment=*) tok="${a#--comment=}";; esac; done
echo "4242|$tok" >> "$D/queue""#;

const SQUEUE_FROM_QUEUE: &str = r#"echo "17|(null)"
echo "18|someone-elses-token"
cat "$D/queue" 2>/dev/null
exit 0"#;

fn process_gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn submit_passes_everything_to_sbatch() {
    let f = Fakes::new();
    f.write(
        "sbatch",
        r#"echo "$HPCSTAGE_RUN" > "$D/env"; pwd > "$D/cwd"; echo 4242"#,
    );
    let workdir = tempfile::tempdir().unwrap();
    let req = SubmitRequest {
        script: PathBuf::from("/scratch/run/job.sbatch"),
        script_args: vec!["chunk 1".into()],
        workdir: Some(workdir.path().to_owned()),
        name: Some("unet-seg".into()),
        args: vec!["--partition=gpu".into(), "--dependency=afterany:41".into()],
        env: vec![("HPCSTAGE_RUN".into(), "run-7".into())],
        token: "hpcstage-abc.1".into(),
    };
    let sub = f.client().submit(&req).unwrap();
    assert_eq!(
        sub,
        Submitted {
            id: JobId(4242),
            cluster: None,
            token: "hpcstage-abc.1".into(),
            found_by_lookup: false,
            attempts: 1,
        }
    );
    let expected = format!(
        "--parsable --comment=hpcstage-abc.1 --job-name=unet-seg --chdir={} \
         --partition=gpu --dependency=afterany:41 /scratch/run/job.sbatch chunk 1",
        workdir.path().display()
    );
    assert_eq!(f.calls("sbatch"), vec![expected]);
    assert_eq!(fs::read_to_string(f.path("env")).unwrap(), "run-7\n");
    assert_eq!(
        fs::read_to_string(f.path("cwd")).unwrap().trim(),
        workdir.path().canonicalize().unwrap().to_str().unwrap()
    );
}

#[test]
fn submit_reads_the_cluster() {
    let f = Fakes::new();
    f.write("sbatch", "echo 'sbatch: warning: x' >&2; echo '4243;north'");
    let sub = f.client().submit(&request("t1")).unwrap();
    assert_eq!(
        (sub.id, sub.cluster.as_deref()),
        (JobId(4243), Some("north"))
    );
}

#[test]
fn timed_out_sbatch_that_submitted_is_found_not_resubmitted() {
    let f = Fakes::new();
    f.write(
        "sbatch",
        &format!("{SBATCH_RECORDS}\nsleep 30 &\necho $! > \"$D/sleep.pid\"\nwait"),
    );
    f.write("squeue", SQUEUE_FROM_QUEUE);
    f.write("sacct", "exit 0");
    let client = f.client_with_timeout(Duration::from_millis(500));
    let sub = client.submit(&request("tok-hang")).unwrap();
    assert_eq!(sub.id, JobId(4242));
    assert!(sub.found_by_lookup);
    assert_eq!(sub.attempts, 1);
    assert_eq!(f.calls("sbatch").len(), 1, "sbatch must not run twice");
    assert_eq!(
        f.calls("squeue"),
        vec![format!(
            "--noheader --all --states=all --user={} --format=%F|%k",
            current_uid()
        )]
    );
    assert!(f.calls("sacct").is_empty(), "squeue knew it");
    // The wrapper's `sleep` was in the killed process group.
    let pid: u32 = fs::read_to_string(f.path("sleep.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !process_gone(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        process_gone(pid),
        "the hung sbatch's child {pid} still runs"
    );
}

#[test]
fn timed_out_sbatch_that_did_not_submit_is_retried_once_looked_up() {
    let f = Fakes::new();
    f.write(
        "sbatch",
        r#"if [ "$N" -eq 1 ]; then sleep 30; fi
echo 4250"#,
    );
    f.write("squeue", SQUEUE_FROM_QUEUE);
    f.write("sacct", "echo '40|other|x'");
    let client = f.client_with_timeout(Duration::from_millis(400));
    let sub = client.submit(&request("tok-retry")).unwrap();
    assert_eq!(sub.id, JobId(4250));
    assert!(!sub.found_by_lookup);
    assert_eq!(sub.attempts, 2);
    assert_eq!(f.calls("squeue").len(), 1);
    let sacct = f.calls("sacct");
    assert_eq!(sacct.len(), 1);
    assert!(
        sacct[0].starts_with("-X --parsable2 --noheader --user=")
            && sacct[0].contains(" --starttime=")
            && sacct[0].ends_with(" --format=JobID,Comment,JobName"),
        "{sacct:?}"
    );
}

#[test]
fn socket_timeout_after_submitting_is_found_in_accounting_by_name() {
    let f = Fakes::new();
    // The job ran and left the controller already; accounting has it, without
    // the comment (no AccountingStoreFlags=job_comment), under the token as name.
    f.write(
        "sbatch",
        "echo 'sbatch: error: Batch job submission failed: Socket timed out on send/recv operation' >&2; exit 1",
    );
    f.write("squeue", "exit 0");
    f.write(
        "sacct",
        "echo '4260||tok-name'\necho '4261_1||other'\necho '4262|tok-name-not|x'",
    );
    let mut req = request("tok-name");
    req.name = Some("tok-name".into());
    let sub = f.client().submit(&req).unwrap();
    assert_eq!((sub.id, sub.found_by_lookup), (JobId(4260), true));
    assert_eq!(f.calls("sbatch").len(), 1);
}

#[test]
fn array_job_found_by_comment_in_accounting() {
    let f = Fakes::new();
    f.write("sbatch", "sleep 30");
    f.write("squeue", "exit 0");
    f.write(
        "sacct",
        "echo '4270_1|tok-arr|job'\necho '4270_[2-3]|tok-arr|job'",
    );
    let sub = f
        .client_with_timeout(Duration::from_millis(300))
        .submit(&request("tok-arr"))
        .unwrap();
    assert_eq!((sub.id, sub.found_by_lookup), (JobId(4270), true));
}

#[test]
fn connect_failure_is_retried_without_lookup() {
    let f = Fakes::new();
    f.write(
        "sbatch",
        r#"if [ "$N" -le 2 ]; then
  echo 'sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)' >&2
  exit 1
fi
echo 99"#,
    );
    let sub = f.client().submit(&request("tok-cf")).unwrap();
    assert_eq!(
        (sub.id, sub.attempts, sub.found_by_lookup),
        (JobId(99), 3, false)
    );
    assert!(
        f.calls("squeue").is_empty(),
        "nothing was sent: no lookup needed"
    );
}

#[test]
fn controller_down_gives_up_after_the_retries() {
    let f = Fakes::new();
    f.write(
        "sbatch",
        "echo 'sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)' >&2; exit 1",
    );
    let err = f.client().submit(&request("tok-down")).unwrap_err();
    match &err {
        Error::ControllerUnreachable {
            attempts, stderr, ..
        } => {
            assert_eq!(*attempts, 4);
            assert!(stderr.contains("Unable to contact slurm controller"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(f.calls("sbatch").len(), 4);
    assert!(err.to_string().contains("failed 4 times"), "{err}");
}

#[test]
fn rejected_submission_fails_at_once_with_stderr() {
    let f = Fakes::new();
    f.write(
        "sbatch",
        "echo 'sbatch: error: Batch job submission failed: Invalid partition name specified' >&2; exit 1",
    );
    let mut req = request("tok-bad");
    req.args = vec!["--partition=nope".into()];
    let err = f.client().submit(&req).unwrap_err();
    match &err {
        Error::CommandFailed {
            command,
            status,
            stderr,
        } => {
            assert!(command.contains("--partition=nope"), "{command}");
            assert_eq!(status.code(), Some(1));
            assert_eq!(
                stderr,
                "sbatch: error: Batch job submission failed: Invalid partition name specified"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(f.calls("sbatch").len(), 1);
    assert!(f.calls("squeue").is_empty());
}

#[test]
fn failed_lookup_stops_instead_of_risking_a_duplicate() {
    let f = Fakes::new();
    f.write("sbatch", "sleep 30");
    f.write(
        "squeue",
        "echo 'squeue: error: Socket timed out on send/recv operation' >&2; exit 1",
    );
    let err = f
        .client_with_timeout(Duration::from_millis(300))
        .submit(&request("tok-unsure"))
        .unwrap_err();
    match &err {
        Error::SubmitUncertain { token, lookup, .. } => {
            assert_eq!(token, "tok-unsure");
            assert!(matches!(**lookup, Error::ControllerUnreachable { .. }));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(f.calls("sbatch").len(), 1);
    assert_eq!(f.calls("squeue").len(), 4, "the lookup itself was retried");
    assert!(err.to_string().contains("tok-unsure"));
}

#[test]
fn unreadable_sbatch_output_is_resolved_by_the_token() {
    let f = Fakes::new();
    f.write(
        "sbatch",
        &format!("{SBATCH_RECORDS}\necho 'queued, probably'"),
    );
    f.write("squeue", SQUEUE_FROM_QUEUE);
    let sub = f.client().submit(&request("tok-odd")).unwrap();
    assert_eq!((sub.id, sub.found_by_lookup), (JobId(4242), true));
}

#[test]
fn bad_tokens_are_refused_before_running_anything() {
    let f = Fakes::new();
    f.write("sbatch", "echo 1");
    for token in ["", "has space", "a|b", "a,b"] {
        let err = f.client().submit(&request(token)).unwrap_err();
        assert!(
            matches!(err, Error::InvalidToken { .. }),
            "{token:?}: {err}"
        );
    }
    assert!(f.calls("sbatch").is_empty());
    let t = new_token();
    assert!(validate_token(&t).is_ok(), "{t}");
    assert_ne!(new_token(), t);
}

const SACCT_ROWS: &str = "\
41|41|COMPLETED|0:0|0:0|2|2024-05-02T10:00:01|2024-05-02T10:00:03|localhost|debug|root|billing=1,cpu=1,node=1|root|None|t41|hello
43|43|OUT_OF_MEMORY|0:125|0:0|12|2024-05-02T10:02:00|2024-05-02T10:02:12|localhost|gpu|lab|billing=2,cpu=2,gres/gpu=1,node=1|alice|None||unet
51|50_1|COMPLETED|0:0|0:0|3|2024-05-02T10:05:00|2024-05-02T10:05:03|localhost|debug|lab|billing=1,cpu=1,node=1|alice|None||arr
50|50_[2-3]|PENDING|0:0|0:0|0|Unknown|Unknown|None assigned|debug|lab||alice|Priority||arr";

fn sacct_printing(rows: &str) -> String {
    format!("cat <<'EOF'\n{rows}\nEOF")
}

#[test]
fn one_batched_sacct_call_answers_everything() {
    let f = Fakes::new();
    f.write("sacct", &sacct_printing(SACCT_ROWS));
    let since: Timestamp = "2024-05-02T08:00:00Z".parse().unwrap();
    let ids = [JobId(43), JobId(41), JobId(50), JobId(41)];
    let got = f.client().query_since(&ids, since).unwrap();
    let calls = f.calls("sacct");
    assert_eq!(
        calls,
        vec![format!(
            "-X --parsable2 --noheader --jobs=41,43,50 --starttime={} --format={SACCT_FORMAT}",
            format_time(since.checked_sub(SignedDuration::from_hours(1)).unwrap())
        )]
    );
    // Only the array with pending tasks is asked of the controller, for its reason;
    // the controller not answering leaves accounting's word.
    assert_eq!(f.calls("squeue").len(), 0, "no fake squeue: the call fails");
    assert_eq!(got[&JobId(50)].tasks[1].reason.as_deref(), Some("Priority"));
    assert_eq!(got.len(), 3);
    assert_eq!(got[&JobId(41)].state, JobState::Completed);
    assert_eq!(got[&JobId(43)].state, JobState::OutOfMemory);
    assert_eq!(got[&JobId(43)].gpus, 1);
    let array = &got[&JobId(50)];
    assert_eq!(array.state, JobState::Pending, "two tasks still pending");
    assert!(!array.state.is_terminal());
    assert_eq!(array.tasks.len(), 2);
    assert_eq!(array.tasks[0].raw_id, JobId(51));
}

#[test]
fn a_pending_job_gets_the_controllers_current_reason() {
    let f = Fakes::new();
    f.write(
        "sacct",
        &sacct_printing(
            "70|70|PENDING|0:0|0:0|0|Unknown|Unknown|None assigned|gpu|lab||alice|None||unet\n\
             41|41|COMPLETED|0:0|0:0|2|2024-05-02T10:00:01|2024-05-02T10:00:03|localhost|debug|root|billing=1,cpu=1,node=1|root|None|t41|hello",
        ),
    );
    f.write(
        "squeue",
        "echo '70|70|PENDING|0:00|N/A|N/A||gpu|lab|alice|PartitionConfig|gres:gpu:1|t70|unet'",
    );
    let got = f.client().query(&[JobId(70), JobId(41)]).unwrap();
    let squeue = f.calls("squeue");
    assert_eq!(squeue.len(), 1);
    assert!(
        squeue[0].contains("--jobs=70 "),
        "only the pending job: {squeue:?}"
    );
    assert_eq!(got[&JobId(70)].reason.as_deref(), Some("PartitionConfig"));
    assert_eq!(got[&JobId(70)].state, JobState::Pending);
    assert_eq!(got[&JobId(41)].state, JobState::Completed);
}

#[test]
fn a_task_asked_for_by_its_own_id_is_answered_as_that_task() {
    let f = Fakes::new();
    f.write("sacct", &sacct_printing(SACCT_ROWS));
    let got = f.client().query(&[JobId(51)]).unwrap();
    let task = &got[&JobId(51)];
    assert_eq!(task.id, JobId(50));
    assert_eq!(task.array_task, Some(crate::state::ArrayTask::Index(1)));
    assert!(task.tasks.is_empty());
}

#[test]
fn an_array_accounting_thinks_done_is_checked_with_the_controller() {
    let f = Fakes::new();
    // Task 2 (job 52) started moments ago and is not in accounting yet.
    f.write(
        "sacct",
        &sacct_printing(
            "51|50_1|COMPLETED|0:0|0:0|3|2024-05-02T10:05:00|2024-05-02T10:05:03|localhost|debug|lab|billing=1,cpu=1,node=1|alice|None||arr
50|50_3|COMPLETED|0:0|0:0|3|2024-05-02T10:05:00|2024-05-02T10:05:03|localhost|debug|lab|billing=1,cpu=1,node=1|alice|None||arr",
        ),
    );
    f.write(
        "squeue",
        "echo '52|50_2|RUNNING|0:01|2024-05-02T10:05:04|N/A|localhost|debug|lab|alice|None|N/A||arr'
echo '51|50_1|COMPLETED|0:03|2024-05-02T10:05:00|2024-05-02T10:05:03|localhost|debug|lab|alice|None|N/A||arr'
echo '50|50_3|COMPLETED|0:03|2024-05-02T10:05:00|2024-05-02T10:05:03|localhost|debug|lab|alice|None|N/A||arr'",
    );
    f.write(
        "scontrol",
        "echo 'JobId=52 ArrayJobId=50 ArrayTaskId=2 JobName=arr JobState=RUNNING Reason=None ExitCode=0:0 RunTime=00:00:01 StartTime=2024-05-02T10:05:04 EndTime=2024-05-02T11:05:04 Partition=debug NodeList=localhost TRES=cpu=1,node=1'
echo 'JobId=51 ArrayJobId=50 ArrayTaskId=1 JobName=arr JobState=COMPLETED Reason=None ExitCode=0:0 RunTime=00:00:03 StartTime=2024-05-02T10:05:00 EndTime=2024-05-02T10:05:03 Partition=debug NodeList=localhost TRES=cpu=1,node=1'
echo 'JobId=50 ArrayJobId=50 ArrayTaskId=3 JobName=arr JobState=COMPLETED Reason=None ExitCode=0:0 RunTime=00:00:03 StartTime=2024-05-02T10:05:00 EndTime=2024-05-02T10:05:03 Partition=debug NodeList=localhost TRES=cpu=1,node=1'",
    );
    let got = f.client().query(&[JobId(50)]).unwrap();
    let array = &got[&JobId(50)];
    assert_eq!(array.state, JobState::Running, "{array:#?}");
    let tasks: Vec<String> = array
        .tasks
        .iter()
        .map(|t| format!("{} {} {:?}", t.job_ref(), t.state, t.source))
        .collect();
    assert_eq!(
        tasks,
        [
            "50_1 COMPLETED Sacct",
            "50_2 RUNNING Scontrol",
            "50_3 COMPLETED Sacct"
        ]
    );
    assert_eq!(f.calls("scontrol"), ["--all --oneliner show job 50"]);
}

#[test]
fn an_array_the_controller_forgot_is_taken_from_accounting() {
    let f = Fakes::new();
    f.write(
        "sacct",
        &sacct_printing(
            "51|50_1|COMPLETED|0:0|0:0|3|2024-05-02T10:05:00|2024-05-02T10:05:03|localhost|debug|lab|billing=1,cpu=1,node=1|alice|None||arr
50|50_2|FAILED|2:0|0:0|3|2024-05-02T10:05:00|2024-05-02T10:05:03|localhost|debug|lab|billing=1,cpu=1,node=1|alice|None||arr",
        ),
    );
    f.write(
        "squeue",
        "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1",
    );
    f.write("scontrol", "exit 99");
    let got = f.client().query(&[JobId(50)]).unwrap();
    let array = &got[&JobId(50)];
    assert_eq!(array.state, JobState::Failed);
    assert_eq!(
        array.exit_code,
        Some(ExitCode {
            status: 2,
            signal: 0
        })
    );
    assert_eq!(f.calls("squeue").len(), 1);
    assert!(f.calls("scontrol").is_empty());
}

#[test]
fn an_unsettled_accounting_record_is_completed_from_the_controller() {
    let f = Fakes::new();
    // Recorded on the test cluster a moment after the job ended: no partition yet.
    f.write(
        "sacct",
        &sacct_printing(
            "34|34|COMPLETED|0:0|0:0|0|2026-11-27T21:43:20|2026-11-27T21:43:20|localhost||root|billing=1,cpu=1,node=1|root|None||race1",
        ),
    );
    f.write(
        "squeue",
        "echo '34|34|COMPLETED|0:00|2026-11-27T21:43:20|2026-11-27T21:43:20|localhost|debug|root|root|None|N/A|(null)|race1'",
    );
    f.write(
        "scontrol",
        "echo 'JobId=34 JobName=race1 UserId=root(0) Account=root JobState=COMPLETED Reason=None Restarts=0 ExitCode=0:0 DerivedExitCode=0:0 RunTime=00:00:00 StartTime=2026-11-27T21:43:20 EndTime=2026-11-27T21:43:20 Partition=debug NodeList=localhost TRES=cpu=1,node=1,billing=1'",
    );
    let got = f.client().query(&[JobId(34)]).unwrap();
    let job = &got[&JobId(34)];
    assert_eq!(job.source, Source::Scontrol);
    assert_eq!(job.partition.as_deref(), Some("debug"));
    assert_eq!(job.state, JobState::Completed);
}

#[test]
fn socket_timeouts_are_retried_with_backoff() {
    let f = Fakes::new();
    f.write(
        "sacct",
        &format!(
            "if [ \"$N\" -le 2 ]; then echo 'sacct: error: slurm_persist_conn_open_without_init: failed to open persistent connection to host:localhost:6819: Socket timed out on send/recv operation' >&2; exit 1; fi\n{}",
            sacct_printing(SACCT_ROWS)
        ),
    );
    let started = std::time::Instant::now();
    let got = f.client().query(&[JobId(41)]).unwrap();
    assert_eq!(got[&JobId(41)].exit_code, Some(ExitCode::default()));
    assert_eq!(f.calls("sacct").len(), 3);
    // Two backoffs of at least 5 ms and 10 ms (half of 10 ms and 20 ms).
    assert!(started.elapsed() >= Duration::from_millis(15));
}

#[test]
fn accounting_disabled_falls_back_to_squeue_then_scontrol() {
    let f = Fakes::new();
    f.write(
        "sacct",
        "echo 'sacct: error: Slurm accounting storage is disabled' >&2; exit 1",
    );
    f.write(
        "squeue",
        "echo '61|61|RUNNING|1:05|2024-05-02T10:00:00|2024-05-02T11:00:00|localhost|gpu|root|root|None|gres:gpu:1|t61|unet'
echo '62|62|COMPLETED|0:03|2024-05-02T10:00:00|2024-05-02T10:00:03|localhost|debug|root|root|None|N/A|t62|done'",
    );
    f.write(
        "scontrol",
        r#"case "$*" in
*" 62") echo 'JobId=62 JobName=done UserId=root(0) GroupId=root(0) Account=root QOS=normal JobState=COMPLETED Reason=None Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 DerivedExitCode=0:0 RunTime=00:00:03 TimeLimit=UNLIMITED SubmitTime=2024-05-02T10:00:00 StartTime=2024-05-02T10:00:00 EndTime=2024-05-02T10:00:03 Partition=debug NodeList=localhost TRES=cpu=1,mem=100M,node=1,billing=1 Comment=t62 Command=/x WorkDir=/tmp' ;;
*) echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1 ;;
esac"#,
    );
    let got = f
        .client()
        .query(&[JobId(61), JobId(62), JobId(63)])
        .unwrap();
    let squeue = f.calls("squeue");
    assert_eq!(squeue.len(), 1, "one batched squeue");
    assert!(squeue[0].contains("--jobs=61,62,63"), "{squeue:?}");
    assert_eq!(
        f.calls("scontrol"),
        vec![
            "--all --oneliner show job 62".to_owned(),
            "--all --oneliner show job 63".to_owned()
        ],
        "scontrol for the finished job and the one squeue did not list"
    );
    assert_eq!(got[&JobId(61)].state, JobState::Running);
    assert_eq!(got[&JobId(61)].source, Source::Squeue);
    assert_eq!(got[&JobId(61)].gpus, 1);
    let done = &got[&JobId(62)];
    assert_eq!(
        (done.source, done.exit_code),
        (Source::Scontrol, Some(ExitCode::default()))
    );
    let gone = &got[&JobId(63)];
    assert_eq!(gone.source, Source::NotFound);
    assert_eq!(gone.state.to_string(), "NOT_FOUND");
    assert!(
        !gone.state.is_terminal(),
        "a vanished job is never assumed done"
    );
}

#[test]
fn a_job_nobody_knows_is_not_found_not_completed() {
    let f = Fakes::new();
    f.write("sacct", "exit 0");
    f.write(
        "squeue",
        "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1",
    );
    f.write(
        "scontrol",
        "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1",
    );
    let got = f.client().query(&[JobId(7)]).unwrap();
    assert_eq!(got[&JobId(7)], JobInfo::not_found(JobId(7)));
}

#[test]
fn database_down_but_controller_knows_the_job() {
    let f = Fakes::new();
    f.write(
        "sacct",
        "echo 'sacct: error: Problem talking to the database: Connection refused' >&2; exit 1",
    );
    f.write(
        "squeue",
        "echo '70|70|PENDING|0:00|N/A|N/A||debug|root|root|Dependency|N/A|t|pull'",
    );
    let got = f.client().query(&[JobId(70)]).unwrap();
    assert_eq!(got[&JobId(70)].state, JobState::Pending);
    assert_eq!(f.calls("sacct").len(), 4);
}

#[test]
fn database_down_and_job_gone_from_controller_is_an_error() {
    let f = Fakes::new();
    f.write(
        "sacct",
        "echo 'sacct: error: Problem talking to the database: Connection refused' >&2; exit 1",
    );
    f.write("squeue", "exit 0");
    f.write(
        "scontrol",
        "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1",
    );
    let err = f.client().query(&[JobId(71)]).unwrap_err();
    assert!(
        matches!(&err, Error::ControllerUnreachable { command, .. } if command.contains("sacct")),
        "{err:?}"
    );
}

#[test]
fn controller_down_is_reported_after_retries() {
    let f = Fakes::new();
    let down = "echo 'error: Unable to contact slurm controller (connect failure)' >&2; exit 1";
    f.write(
        "sacct",
        "echo 'sacct: error: Problem talking to the database: Connection refused' >&2; exit 1",
    );
    f.write("squeue", down);
    let err = f.client().query(&[JobId(72)]).unwrap_err();
    assert!(
        matches!(err, Error::ControllerUnreachable { attempts: 4, .. }),
        "{err:?}"
    );
}

#[test]
fn hanging_commands_time_out_and_are_killed() {
    let f = Fakes::new();
    f.write("sacct", "sleep 30");
    let client = SlurmClient::new(ClientSettings {
        timeout: Duration::from_millis(200),
        retries: 1,
        ..f.settings()
    });
    let started = std::time::Instant::now();
    let err = client.query(&[JobId(1)]).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    match &err {
        Error::Timeout {
            attempts, timeout, ..
        } => assert_eq!((*attempts, *timeout), (2, Duration::from_millis(200))),
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        err.to_string().contains("within 0.2 s (2 attempts)"),
        "{err}"
    );
}

#[test]
fn query_environment_is_cleaned_but_sbatch_keeps_the_callers() {
    // Values that would break parsing if they reached the commands. Other tests
    // running meanwhile see them too, which only makes them stricter.
    for (k, v) in [
        ("SQUEUE_FORMAT", "%all"),
        ("SQUEUE_FORMAT2", "all"),
        ("SACCT_FORMAT", "jobid%50"),
        ("SINFO_FORMAT", "%all"),
        ("SLURM_TIME_FORMAT", "relative"),
        ("SQUEUE_SORT", "-t"),
        ("SQUEUE_USERS", "nobody"),
    ] {
        std::env::set_var(k, v);
    }
    let f = Fakes::new();
    f.write("sacct", "env > \"$D/sacct.env\"; exit 0");
    f.write("squeue", "exit 0");
    f.write("scontrol", "exit 0");
    f.write("sbatch", "env > \"$D/sbatch.env\"; echo 5");
    f.client().query(&[JobId(1)]).unwrap();
    let env = fs::read_to_string(f.path("sacct.env")).unwrap();
    for var in [
        "SQUEUE_FORMAT=",
        "SQUEUE_FORMAT2=",
        "SACCT_FORMAT=",
        "SINFO_FORMAT=",
        "SLURM_TIME_FORMAT=",
        "SQUEUE_SORT=",
        "SQUEUE_USERS=",
    ] {
        assert!(!env.lines().any(|l| l.starts_with(var)), "{var} leaked");
    }
    assert!(env.lines().any(|l| l == "LC_ALL=C"));
    f.client().submit(&request("tok-env")).unwrap();
    let env = fs::read_to_string(f.path("sbatch.env")).unwrap();
    assert!(
        env.lines().any(|l| l == "SLURM_TIME_FORMAT=relative"),
        "sbatch exports its environment into the job: it is left alone"
    );
}

#[test]
fn missing_commands_say_slurm_is_not_installed() {
    let f = Fakes::new();
    let client = f.client();
    assert!(!client.available());
    let err = client.submit(&request("tok-x")).unwrap_err();
    assert!(
        matches!(&err, Error::NotInstalled { program, on_path: false } if program.ends_with("/sbatch")),
        "{err:?}"
    );
    f.write("sbatch", "echo 1");
    assert!(client.available());

    let path = std::env::join_paths([f.dir.path()]).unwrap();
    assert_eq!(
        find_on_path("sbatch", Some(path.clone())),
        Some(f.path("sbatch"))
    );
    assert_eq!(find_on_path("sacct", Some(path)), None);
    fs::write(f.path("squeue"), "not executable").unwrap();
    let path = std::env::join_paths([f.dir.path()]).unwrap();
    assert_eq!(find_on_path("squeue", Some(path)), None);
    let err = SlurmClient::new(ClientSettings::default())
        .program("surely-not-a-slurm-command")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "SLURM is not installed here: `surely-not-a-slurm-command` was not found on PATH"
    );
}

#[test]
fn cancel() {
    let f = Fakes::new();
    f.write("scancel", "exit 0");
    f.client().cancel(JobId(5)).unwrap();
    assert_eq!(f.calls("scancel"), vec!["5".to_owned()]);

    f.write(
        "scancel",
        "echo 'scancel: error: Kill job error on job id 6: Job/step already completing or completed' >&2; exit 1",
    );
    f.client().cancel(JobId(6)).unwrap();

    f.write(
        "scancel",
        "echo 'scancel: error: Kill job error on job id 7: Invalid job id specified' >&2; exit 1",
    );
    let err = f.client().cancel(JobId(7)).unwrap_err();
    assert!(matches!(err, Error::CommandFailed { .. }), "{err:?}");
}

#[test]
fn ping() {
    let f = Fakes::new();
    f.write("scontrol", "echo 'Slurmctld(primary) at vm is UP'");
    assert!(f.client().ping().unwrap());
    f.write(
        "scontrol",
        "echo 'Slurmctld(primary) at vm is DOWN'; echo 'Slurmctld(backup) at b is UP'",
    );
    assert!(f.client().ping().unwrap(), "the backup answers");
    f.write(
        "scontrol",
        "echo 'Slurmctld(primary) at vm is DOWN'; exit 1",
    );
    assert!(!f.client().ping().unwrap());
    f.write("scontrol", "sleep 30");
    assert!(!f
        .client_with_timeout(Duration::from_millis(200))
        .ping()
        .unwrap());
}

#[test]
fn backoff_grows_is_jittered_and_capped() {
    let client = SlurmClient::new(ClientSettings {
        backoff_initial: Duration::from_secs(1),
        backoff_max: Duration::from_secs(30),
        ..ClientSettings::default()
    });
    for _ in 0..50 {
        let first = client.backoff(1);
        assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
        let third = client.backoff(3);
        assert!(third >= Duration::from_secs(2) && third <= Duration::from_secs(4));
        let late = client.backoff(40);
        assert!(late >= Duration::from_secs(15) && late <= Duration::from_secs(30));
    }
    let samples: BTreeSet<Duration> = (0..20).map(|_| client.backoff(2)).collect();
    assert!(samples.len() > 1, "jittered");
}

#[test]
fn errors_name_the_command_and_keep_stderr() {
    let f = Fakes::new();
    f.write(
        "sacct",
        "echo '  sacct: fatal: Invalid field requested: \"Bogus\"  ' >&2; exit 1",
    );
    let err = f.client().query(&[JobId(3)]).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("sacct -X --parsable2 --noheader '--jobs=3'"),
        "{text}"
    );
    assert!(
        text.ends_with(": sacct: fatal: Invalid field requested: \"Bogus\""),
        "{text}"
    );
    assert_eq!(f.calls("sacct").len(), 1, "a real answer is not retried");
}

#[test]
fn command_lines_paste_into_a_shell() {
    let words = ["--noheader", "--jobs=1,2", "--format=%F|%k", "it's", ""];
    let inv = Invocation {
        program: "sacct".into(),
        args: words.iter().map(|w| w.to_string()).collect(),
        env: Vec::new(),
        cwd: None,
        clean_env: false,
    };
    let line = inv.command_line();
    assert!(line.starts_with("sacct --noheader "), "{line}");
    let back = shlex::split(&line).expect("a shell splits it");
    assert_eq!(back[1..], words.map(String::from), "{line}");
}

#[test]
fn classification() {
    assert_eq!(
        classify(
            "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation"
        ),
        Failure::Transient
    );
    assert_eq!(
        classify("squeue: error: Unable to contact slurm controller (connect failure)"),
        Failure::NotDelivered
    );
    assert_eq!(
        classify("sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying"),
        Failure::NotDelivered
    );
    assert_eq!(
        classify("sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified"),
        Failure::Permanent
    );
}
