//! Signalling a child's whole process group: the one way hpcstage stops a command it
//! started (a SLURM command past its timeout, a local job past its time limit or
//! cancelled, a validation command past its timeout).
//!
//! Killing only the child's pid leaves its children running: a wrapper script's `sleep`,
//! a `samtools` under a validation `bash -c`. So every such child is started as the
//! leader of its own process group ([`own_group`]) and stopped with [`signal_group`],
//! which addresses the group (`kill(-pgid, sig)`) and never our own.

use std::os::unix::process::CommandExt;

/// Makes `cmd` start as the leader of a new process group (its pgid is its pid).
pub fn own_group(cmd: &mut std::process::Command) -> &mut std::process::Command {
    cmd.process_group(0)
}

/// Sends `signal` to the process group led by `pid` (a child started with
/// [`own_group`], or tokio's `process_group(0)`). A group already gone is not an error;
/// a pid of 0 or one that does not fit is ignored (it would address our own group or
/// every process).
pub fn signal_group(pid: u32, signal: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        if pid > 0 {
            // SAFETY: kill(2) takes plain integers and touches no memory of ours; a
            // negative pid addresses the child's own process group, never ours.
            unsafe {
                libc::kill(-pid, signal);
            }
        }
    }
}

/// Kills the process group led by `pid` (SIGKILL): what a timeout does.
pub fn kill_group(pid: u32) {
    signal_group(pid, libc::SIGKILL);
}

/// Sends `signal` to the process `pid` alone (SLURM's `--signal=B:`: the batch shell
/// only).
pub fn signal_process(pid: u32, signal: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        if pid > 0 {
            // SAFETY: as in `signal_group`; a vanished target only yields ESRCH.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    fn alive(pid: i32) -> bool {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(pid, 0) == 0 }
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
