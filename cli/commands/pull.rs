//! `hpcstage pull RUN`: validate a run's outputs and copy them to the NAS with
//! provenance; what the pull-back job runs, and safe to run by hand at any time.

use anyhow::Result;
use hpcstage_lifecycle::backend::Backend;
use hpcstage_lifecycle::pull::{pull, PullOptions, PullOutcome};
use hpcstage_lifecycle::run::RunStore;
use hpcstage_staging::human::{bytes, count};

use super::ExitStatus;
use crate::args::PullArgs;
use crate::config::Settings;
use crate::output;

pub(crate) fn run(settings: &Settings, args: &PullArgs) -> Result<ExitStatus> {
    let store = RunStore::open(&settings.state_dir)?;
    let id = store.resolve(&args.run)?;
    let view = store.load(&id)?;
    let backend =
        Backend::for_executor(view.record.executor, &settings.state_dir, &settings.client);
    let mut opts = PullOptions {
        wait: args.wait,
        allow_partial: args.allow_partial,
        worm: args.worm,
        jobs: args.parallel.jobs.unwrap_or(settings.jobs).max(1),
        notify: |msg| output::note(msg),
        ssh: super::ssh_options(settings, &args.parallel),
        remote_verify: args.remote_verify || settings.remote_verify,
        s3: settings.s3.clone(),
        ..PullOptions::default()
    };
    // Another pull of the same run (the pull-back job, or someone by hand) is waited for:
    // as long as --wait allows, else up to the default hour; then this one reports.
    if args.wait {
        opts.busy_timeout = opts.wait_timeout;
    }
    let bar = output::Bar::new("pulling", args.json);
    let outcome = pull(&store, &id, &backend, &opts, &bar);
    bar.finish();
    let outcome = outcome?;
    if args.json {
        output::json(&outcome);
    }
    Ok(match outcome {
        PullOutcome::AlreadyPulled {
            results_dir,
            concurrent,
            protected,
        } => {
            if !args.json && protected {
                output::data(format!(
                    "run {id} was already pulled to {}; write-protected it (--worm)",
                    results_dir.display()
                ));
            } else if !args.json {
                output::data(match concurrent {
                    Some(holder) => format!(
                        "run {id} was pulled to {} by another process ({holder}) while this one waited; nothing to do",
                        results_dir.display()
                    ),
                    None => format!(
                        "run {id} was already pulled to {}; nothing to do",
                        results_dir.display()
                    ),
                });
            }
            ExitStatus::Success
        }
        PullOutcome::Pulled {
            results_dir,
            files,
            bytes: size,
            manifest_digest,
            purged,
            partial,
            missing,
        } => {
            if !args.json {
                output::data(format!(
                    "pulled run {id}{} → {} ({}, {}; MANIFEST.sha256 {manifest_digest})",
                    if partial { " PARTIAL" } else { "" },
                    results_dir.display(),
                    count(files, "file"),
                    bytes(size)
                ));
                if partial {
                    output::warn(format!(
                        "partial pull (--allow-partial): outputs missing: {}",
                        missing.join("; ")
                    ));
                }
                for p in purged {
                    output::note(format!("purged intermediate {}", p.display()));
                }
            }
            ExitStatus::Success
        }
        PullOutcome::Failed { failed_dir, reason } => {
            if !args.json {
                output::error(format!("run {id} not accepted: {reason}"));
                output::error(format!(
                    "logs and a FAILED README are in {}; scratch was left as it is",
                    failed_dir.display()
                ));
            }
            ExitStatus::Partial
        }
    })
}
