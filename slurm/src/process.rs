//! Signalling a child's whole process group: the one way hpcstage stops a command it
//! started (a SLURM command past its timeout, a local job past its time limit or
//! cancelled, a validation command past its timeout).
//!
//! Killing only the child's pid leaves its children running: a wrapper script's `sleep`,
//! a `samtools` under a validation `bash -c`. So every such child is started as the
//! leader of its own process group ([`own_group`]) and stopped with [`signal_group`],
//! which addresses the group (`kill(-pgid, sig)`) and never our own.

use std::io::Read;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Makes `cmd` start as the leader of a new process group (its pgid is its pid).
pub fn own_group(cmd: &mut std::process::Command) -> &mut std::process::Command {
    cmd.process_group(0)
}

/// Sends `signal` to the process group led by `pid` (a child started with
/// [`own_group`]). A group already gone is not an error;
/// a pid of 0 or one that does not fit is ignored (it would address our own group or
/// every process).
pub fn signal_group(pid: u32, signal: i32) {
    send(pid, signal, true);
}

/// Kills the process group led by `pid` (SIGKILL): what a timeout does.
pub fn kill_group(pid: u32) {
    signal_group(pid, libc::SIGKILL);
}

/// Sends `signal` to the process `pid` alone (SLURM's `--signal=B:`: the batch shell
/// only).
pub fn signal_process(pid: u32, signal: i32) {
    send(pid, signal, false);
}

/// kill(2) to `pid`, or to the group it leads (a negative pid, never our own group). A
/// target already gone (ESRCH) and a signal number nix does not know are ignored.
fn send(pid: u32, signal: i32, group: bool) {
    let (Ok(pid), Ok(signal)) = (i32::try_from(pid), Signal::try_from(signal)) else {
        return;
    };
    if pid > 0 {
        let _ = kill(Pid::from_raw(if group { -pid } else { pid }), signal);
    }
}

/// Runs `cmd` (stdout and stderr piped, started with [`own_group`]) and collects its
/// output, unless it takes longer than `timeout`: then its whole process group is killed
/// and the answer is `None`. The time covers the exit and the reading of both pipes (a
/// grandchild that keeps a pipe open counts as still running).
pub fn output_within(cmd: &mut Command, timeout: Duration) -> std::io::Result<Option<Output>> {
    let deadline = Instant::now() + timeout;
    let mut child = own_group(cmd).spawn()?;
    let (tx, rx) = mpsc::channel();
    for (index, pipe) in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .enumerate()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let read = pipe.map_or(Ok(0), |mut p| p.read_to_end(&mut bytes));
            let _ = tx.send((index, read.map(|_| bytes)));
        });
    }
    drop(tx);
    let Some(status) = wait_until(&mut child, deadline)? else {
        stop(&mut child);
        return Ok(None);
    };
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((0, read)) => stdout = read?,
            Ok((_, read)) => stderr = read?,
            Err(_) => {
                stop(&mut child);
                return Ok(None);
            }
        }
    }
    Ok(Some(Output {
        status,
        stdout,
        stderr,
    }))
}

/// Waits for `child` to exit, polling, until `deadline`; `None` when it is still running.
fn wait_until(
    child: &mut Child,
    deadline: Instant,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Kills a child that ran out of time, with its process group, and reaps it.
fn stop(child: &mut Child) {
    kill_group(child.id());
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    fn alive(pid: i32) -> bool {
        kill(Pid::from_raw(pid), None).is_ok()
    }

    #[test]
    fn the_whole_group_goes_not_only_its_leader() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild.pid");
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(format!("sleep 300 & echo $! > {}; wait", pidfile.display()))
            .stdin(Stdio::null());
        let mut child = own_group(&mut cmd).spawn().unwrap();
        let started = Instant::now();
        while !pidfile.exists() || std::fs::read_to_string(&pidfile).unwrap().trim().is_empty() {
            assert!(started.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(20));
        }
        let grandchild: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(alive(grandchild));
        kill_group(child.id());
        child.wait().unwrap();
        let started = Instant::now();
        while alive(grandchild) {
            // Reaped by init once killed; a zombie counts as alive to kill(0) briefly.
            let stat =
                std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z ") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the grandchild survived its group's kill"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
