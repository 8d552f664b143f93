//! Submitting without duplicates (`sbatch` with a token, the token lookup after a
//! timeout), `sbatch --test-only` and `scancel`.

use std::collections::BTreeSet;

use jiff::{SignedDuration, Timestamp};

use super::exec::{
    accounting_disabled, classify, clean_stderr, current_uid, failed, Failure, Invocation, Outcome,
};
use super::{SlurmClient, SubmitRequest, Submitted};
use crate::error::{Error, Result};
use crate::parse::{format_time, parse_sbatch_output};
use crate::state::{JobId, JobRef};

/// A fresh submission token: `hpcstage-<unix µs>-<pid>-<random>`.
pub fn new_token() -> String {
    let now = Timestamp::now();
    format!(
        "hpcstage-{}-{}-{:08x}",
        now.as_microsecond(),
        std::process::id(),
        fastrand::u32(..)
    )
}

pub(super) fn validate_token(token: &str) -> Result<()> {
    let reason = if token.is_empty() {
        Some("it is empty")
    } else if token.len() > 200 {
        Some("it is longer than 200 characters")
    } else if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'+'))
    {
        Some("only letters, digits and - _ . : + are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidToken {
            token: token.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

impl SlurmClient {
    fn user_filter(&self) -> String {
        match &self.settings.user {
            Some(user) => user.clone(),
            None => current_uid().to_string(),
        }
    }

    fn sbatch_invocation(&self, req: &SubmitRequest) -> Result<Invocation> {
        let mut args = vec!["--parsable".to_owned(), format!("--comment={}", req.token)];
        if let Some(name) = &req.name {
            args.push(format!("--job-name={name}"));
        }
        if let Some(dir) = &req.workdir {
            args.push(format!("--chdir={}", dir.display()));
        }
        args.extend(req.args.iter().cloned());
        args.push(req.script.to_string_lossy().into_owned());
        args.extend(req.script_args.iter().cloned());
        Ok(Invocation {
            program: self.program("sbatch")?,
            args,
            env: req.env.clone(),
            cwd: req.workdir.clone(),
            clean_env: false,
        })
    }

    /// Submits a job; see the module docs for the de-duplication.
    pub fn submit(&self, req: &SubmitRequest) -> Result<Submitted> {
        validate_token(&req.token)?;
        let inv = self.sbatch_invocation(req)?;
        let first_try = Timestamp::now();
        let attempts = self.settings.retries + 1;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let found = |id| Submitted {
                id,
                cluster: None,
                token: req.token.clone(),
                found_by_lookup: true,
                attempts: attempt,
            };
            let (error, look_up) = match self.run_once(&inv)? {
                Outcome::Exited(out) if out.status.success() => {
                    let stdout = String::from_utf8_lossy(&out.stdout);
                    if let Ok((id, cluster)) = parse_sbatch_output(&stdout) {
                        return Ok(Submitted {
                            id,
                            cluster,
                            token: req.token.clone(),
                            found_by_lookup: false,
                            attempts: attempt,
                        });
                    }
                    // Submitted, but the id is unreadable: the token finds it.
                    let unexpected = Error::UnexpectedOutput {
                        command: inv.command_line(),
                        what: "job id",
                        text: stdout.trim().to_owned(),
                    };
                    return match self.lookup_token(req, first_try) {
                        Ok(Some(id)) => Ok(found(id)),
                        Ok(None) | Err(_) => Err(unexpected),
                    };
                }
                Outcome::Exited(out) => {
                    let stderr = clean_stderr(&out.stderr);
                    let failure = classify(&stderr);
                    if failure == Failure::Permanent {
                        return Err(Error::CommandFailed {
                            command: inv.command_line(),
                            status: out.status,
                            stderr,
                        });
                    }
                    let error = Error::ControllerUnreachable {
                        command: inv.command_line(),
                        attempts: attempt,
                        stderr,
                    };
                    (error, failure == Failure::Transient)
                }
                Outcome::TimedOut => {
                    let error = Error::Timeout {
                        command: inv.command_line(),
                        timeout: self.settings.timeout,
                        attempts: attempt,
                    };
                    (error, true)
                }
            };
            if look_up {
                // Wait first: a controller slow enough to time sbatch out may still be
                // registering the job.
                std::thread::sleep(self.backoff(attempt));
                match self.lookup_token(req, first_try) {
                    Ok(Some(id)) => return Ok(found(id)),
                    Ok(None) => {}
                    Err(lookup) => {
                        return Err(Error::SubmitUncertain {
                            token: req.token.clone(),
                            command: inv.command_line(),
                            lookup: Box::new(lookup),
                        })
                    }
                }
            }
            if attempt >= attempts {
                return Err(error);
            }
            if !look_up {
                std::thread::sleep(self.backoff(attempt));
            }
        }
    }

    /// Finds the job carrying `req.token`; see the module docs.
    fn lookup_token(&self, req: &SubmitRequest, since: Timestamp) -> Result<Option<JobId>> {
        let user = self.user_filter();
        let args = vec![
            "--noheader".into(),
            "--all".into(),
            "--states=all".into(),
            format!("--user={user}"),
            "--format=%F|%k".into(),
        ];
        let stdout = self.ask_text("squeue", args)?;
        let ids: BTreeSet<JobId> = stdout
            .lines()
            .filter_map(|l| l.trim().split_once('|'))
            .filter(|(_, comment)| *comment == req.token)
            .filter_map(|(id, _)| id.parse().ok())
            .collect();
        if let Some(id) = ids.first() {
            return Ok(Some(*id));
        }

        let start = since
            .checked_sub(SignedDuration::from_mins(10))
            .unwrap_or(since);
        let args = vec![
            "-X".into(),
            "--parsable2".into(),
            "--noheader".into(),
            format!("--user={user}"),
            format!("--starttime={}", format_time(start)),
            "--format=JobID,Comment,JobName".into(),
        ];
        let answer = self.ask("sacct", args, accounting_disabled, |t| Ok(t.to_owned()));
        let Some(stdout) = answer? else {
            return Ok(None);
        };
        let ids: BTreeSet<JobId> = stdout
            .lines()
            .filter_map(|l| {
                let mut f = l.trim().splitn(3, '|');
                let (id, comment, name) = (f.next()?, f.next()?, f.next()?);
                (comment == req.token || name == req.token)
                    .then(|| id.parse::<JobRef>().ok().map(|r| r.job))
                    .flatten()
            })
            .collect();
        Ok(ids.first().copied())
    }

    /// Cancels a job (all tasks of an array). A job already finished is not an error.
    pub fn cancel(&self, id: JobId) -> Result<()> {
        let inv = self.query_invocation("scancel", vec![id.to_string()])?;
        let out = self.run_retrying(&inv)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("already completing or completed") {
            return Ok(());
        }
        if !out.status.success() {
            return Err(failed(&inv, &out));
        }
        Ok(())
    }

    /// Asks the controller whether it would accept a one-minute job on `partition`
    /// (`sbatch --test-only`): nothing is submitted.
    pub fn test_submit(&self, partition: &str) -> Result<()> {
        let args = vec![
            "--test-only".to_owned(),
            format!("--partition={partition}"),
            "--time=1".to_owned(),
            "--output=/dev/null".to_owned(),
            "--wrap=true".to_owned(),
        ];
        self.ask_text("sbatch", args).map(drop)
    }
}
