//! `hpcstage manifest create|verify DIR`: sha256sum-compatible manifests.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hpcstage_staging::human::{bytes, count};
use hpcstage_staging::ledger::file_safe;
use hpcstage_staging::manifest::{self, display_name, Check};
use hpcstage_staging::verify;
use hpcstage_staging::walk::{Filter, MANIFEST_NAME, STATE_DIR, TMP_PREFIX};
use serde::Serialize;

use super::{pool, ExitStatus};
use crate::args::{ManifestCreateArgs, ManifestVerifyArgs};
use crate::config::{absolute, Settings};
use crate::output;

#[derive(Serialize)]
struct CreateJson {
    manifest: String,
    files: usize,
    bytes: u64,
    elapsed_secs: f64,
    digest: String,
}

/// When `dir` is a staged copy whose stage did not complete (its record says so, its
/// copy's `running` marker or its journal is there without a record), what to do instead
/// of hashing it: a manifest made from the files as they are would vouch for content that
/// no stage verified against its source. Rerunning the stage finishes the copy
/// and writes the manifest from its journal.
fn unfinished_stage(dir: &Path) -> Option<String> {
    use hpcstage_staging::record::{read_json, StageRecord};
    let state = dir.join(STATE_DIR);
    let record = read_json::<StageRecord>(&state.join("stage.json")).ok();
    let why = match &record {
        Some(r) if r.incomplete.is_some() => "its last stage did not complete",
        Some(_) if state.join("running").exists() => "a stage into it did not finish",
        Some(_) => return None,
        None if state.join("running").exists() || state.join("journal").exists() => {
            "a stage into it did not finish"
        }
        None => return None,
    };
    let rerun = match &record {
        Some(r) if !r.source.is_empty() => format!(
            "hpcstage stage {} {}",
            hpcstage_staging::human::shell_quote(&r.source),
            hpcstage_staging::human::shell_quote(&dir.display().to_string())
        ),
        _ => format!(
            "hpcstage stage SOURCE {}",
            hpcstage_staging::human::shell_quote(&dir.display().to_string())
        ),
    };
    Some(format!(
        "{} is a staged copy and {why}, so its journal does not verify every file; \
         do not create a manifest over it: finish the copy with `{rerun}`, which writes the \
         manifest of what it verified",
        dir.display()
    ))
}

pub(crate) fn create(settings: &Settings, args: &ManifestCreateArgs) -> Result<ExitStatus> {
    let dir = absolute(&args.dir)?;
    if !dir.is_dir() {
        bail!("{} does not exist or is not a folder", dir.display());
    }
    let to_stdout = args.output.as_deref() == Some(Path::new("-"));
    if !args.force {
        if let Some(advice) = unfinished_stage(&dir) {
            bail!(
                "{advice} (pass --force to hash the files as they are, knowing that nothing \
                 checked them against their source)"
            );
        }
    }
    let out_path = match &args.output {
        Some(p) if !to_stdout => absolute(p)?,
        _ => dir.join(MANIFEST_NAME),
    };
    if !to_stdout && out_path.exists() && !args.force {
        bail!(
            "{} already exists; pass --force to replace it, or check it with `hpcstage manifest verify {}`",
            out_path.display(),
            dir.display()
        );
    }
    let started = std::time::Instant::now();
    let bar = output::Bar::new("hashing", args.json || to_stdout);
    // The text is written as the files are hashed, into a temporary file next to its
    // place (renamed there only when complete) or, for stdout, in the temporary folder:
    // memory stays flat however many files there are.
    let tmp_dir = if to_stdout {
        std::env::temp_dir()
    } else {
        out_path.parent().unwrap_or(&dir).to_path_buf()
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempfile_in(&tmp_dir)
        .with_context(|| format!("cannot write a temporary file in {}", tmp_dir.display()))?;
    let tmp_path = tmp.path().to_path_buf();
    let streamed = {
        let mut writer = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        let streamed = pool(settings, &args.parallel)?
            .install(|| manifest::create_into(&dir, &Filter::default(), &bar, &mut writer));
        writer
            .flush()
            .with_context(|| format!("cannot write {}", tmp_path.display()))?;
        streamed
    };
    bar.finish();
    let streamed = streamed?;
    if !streamed.errors.is_empty() {
        for e in &streamed.errors {
            output::error(e.to_string());
        }
        bail!(
            "{} could not be read; no manifest written (a manifest that silently leaves files out is worse than none)",
            count(streamed.errors.len() as u64, "file")
        );
    }
    let elapsed = started.elapsed();
    if to_stdout {
        output::data_from(tmp.reopen()?)?;
        return Ok(ExitStatus::Success);
    }
    tmp.as_file()
        .sync_data()
        .with_context(|| format!("cannot write {}", tmp.path().display()))?;
    tmp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    tmp.persist(&out_path)
        .with_context(|| format!("cannot write {}", out_path.display()))?;
    let digest = streamed.digest.map(|d| d.to_hex()).unwrap_or_default();
    if args.json {
        output::json(&CreateJson {
            manifest: out_path.display().to_string(),
            files: streamed.files as usize,
            bytes: streamed.bytes,
            elapsed_secs: elapsed.as_secs_f64(),
            digest,
        });
    } else {
        output::data(format!(
            "wrote {} ({}, {} hashed in {:.1}s, {})",
            out_path.display(),
            count(streamed.files as u64, "file"),
            bytes(streamed.bytes),
            elapsed.as_secs_f64(),
            output::rate(streamed.bytes, elapsed)
        ));
    }
    Ok(ExitStatus::Success)
}

#[derive(Serialize)]
struct VerifyJson {
    dir: String,
    manifest: String,
    ok: bool,
    files: usize,
    passed: usize,
    failed: Vec<String>,
    missing: Vec<String>,
    unreadable: Vec<(String, String)>,
    unlisted: Vec<String>,
    bytes: u64,
    log: Option<String>,
}

pub(crate) fn verify(settings: &Settings, args: &ManifestVerifyArgs) -> Result<ExitStatus> {
    let dir = absolute(&args.dir)?;
    if !dir.is_dir() {
        bail!("{} does not exist or is not a folder", dir.display());
    }
    let manifest_path = match &args.manifest {
        Some(p) => absolute(p)?,
        None => dir.join(MANIFEST_NAME),
    };
    if !manifest_path.is_file() {
        if let Some(advice) = unfinished_stage(&dir) {
            bail!("no manifest at {}: {advice}", manifest_path.display());
        }
        bail!(
            "no manifest at {}; create one with `hpcstage manifest create {}`",
            manifest_path.display(),
            dir.display()
        );
    }
    // Every line is checked before any file is read; then the files are checked and
    // reported one by one, so a manifest of millions of lines needs no more memory than
    // a small one.
    let plan = verify::Plan::open(&manifest_path)?;
    let mut log = if args.no_log {
        None
    } else {
        Some(open_log(
            settings,
            &dir,
            &manifest_path,
            args.log.as_deref(),
        )?)
    };
    let mut log_error = None;
    let (mut failed_names, mut missing_names, mut unreadable_names) =
        (Vec::new(), Vec::new(), Vec::new());
    let bar = output::Bar::new("verifying", args.json);
    let totals = pool(settings, &args.parallel)?.install(|| {
        plan.run(&dir, &bar, &mut |path, check| {
            let name = display_name(path);
            let line = match check {
                Check::Ok => format!("{name}: OK"),
                Check::Failed(_) => format!("{name}: FAILED"),
                Check::Missing => format!("{name}: MISSING"),
                Check::Unreadable(why) => format!("{name}: FAILED open or read ({why})"),
            };
            if let Some((path, writer)) = &mut log {
                if log_error.is_none() {
                    log_error = writeln!(writer, "{line}").err().map(|e| {
                        anyhow::Error::new(e)
                            .context(format!("cannot write log {}", path.display()))
                    });
                }
            }
            let quiet_ok = args.failures_only && *check == Check::Ok;
            if !(args.json || quiet_ok) {
                bar.suspend(|| output::data(&line));
            }
            match check {
                Check::Ok => {}
                Check::Failed(_) => failed_names.push(name),
                Check::Missing => missing_names.push(name),
                Check::Unreadable(why) => unreadable_names.push((name, why.clone())),
            }
        })
    });
    bar.finish();
    let totals = totals?;
    if let Some(e) = log_error {
        return Err(e);
    }

    let (ok, failed, missing, unreadable) =
        (totals.ok, totals.failed, totals.missing, totals.unreadable);
    let mut summary = Vec::new();
    if failed > 0 {
        summary.push(format!(
            "WARNING: {failed} computed checksum{} did NOT match",
            plural(failed)
        ));
    }
    if missing > 0 {
        summary.push(format!(
            "WARNING: {missing} listed file{} missing",
            plural(missing)
        ));
    }
    if unreadable > 0 {
        summary.push(format!(
            "WARNING: {unreadable} listed file{} could not be read",
            plural(unreadable)
        ));
    }
    if !totals.unlisted.is_empty() {
        summary.push(format!(
            "WARNING: {} file{} present but not in the manifest:",
            totals.unlisted.len(),
            plural(totals.unlisted.len())
        ));
        summary.extend(
            totals
                .unlisted
                .iter()
                .map(|p| format!("  {}", display_name(p))),
        );
    }
    summary.push(format!(
        "{}: {ok} OK, {failed} FAILED, {missing} MISSING, {unreadable} unreadable, {} unlisted ({} checked)",
        dir.display(),
        totals.unlisted.len(),
        bytes(totals.bytes)
    ));
    let log = match log {
        Some((path, mut writer)) => {
            summary
                .iter()
                .try_for_each(|l| writeln!(writer, "{l}"))
                .and_then(|()| writer.flush())
                .with_context(|| format!("cannot write log {}", path.display()))?;
            Some(path)
        }
        None => None,
    };

    let status = if totals.all_ok() {
        ExitStatus::Success
    } else {
        ExitStatus::Integrity
    };
    if args.json {
        output::json(&VerifyJson {
            dir: dir.display().to_string(),
            manifest: manifest_path.display().to_string(),
            ok: totals.all_ok(),
            files: ok + failed + missing + unreadable,
            passed: ok,
            failed: failed_names,
            missing: missing_names,
            unreadable: unreadable_names,
            unlisted: totals.unlisted.iter().map(|p| display_name(p)).collect(),
            bytes: totals.bytes,
            log: log.map(|p| p.display().to_string()),
        });
        return Ok(status);
    }
    for s in &summary {
        output::note(s);
    }
    if let Some(log) = log {
        output::note(format!("log: {}", log.display()));
    }
    Ok(status)
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Opens the dated log in DIR (the `sha256sum -c | tee verify_$(date +%F).log` habit),
/// or in the state folder when DIR is write-protected raw data, and writes its header.
fn open_log(
    settings: &Settings,
    dir: &Path,
    manifest: &Path,
    explicit: Option<&Path>,
) -> Result<(PathBuf, std::io::BufWriter<std::fs::File>)> {
    let now = jiff::Zoned::now();
    let date = now.strftime("%Y-%m-%d").to_string();
    let header = format!(
        "# hpcstage {} manifest verify {} against {} at {}\n",
        env!("CARGO_PKG_VERSION"),
        dir.display(),
        manifest.display(),
        now.strftime("%Y-%m-%dT%H:%M:%S%:z")
    );
    let create = |path: &Path| -> std::io::Result<std::io::BufWriter<std::fs::File>> {
        let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
        w.write_all(header.as_bytes())?;
        Ok(w)
    };
    if let Some(path) = explicit {
        let path = absolute(path)?;
        let w = create(&path).with_context(|| format!("cannot write log {}", path.display()))?;
        return Ok((path, w));
    }
    let in_dir = dir.join(format!("verify_{date}.log"));
    match create(&in_dir) {
        Ok(w) => Ok((in_dir, w)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            let logs = settings.state_dir.join("logs");
            std::fs::create_dir_all(&logs)
                .with_context(|| format!("cannot create {}", logs.display()))?;
            let name = file_safe(&dir.display().to_string());
            let fallback = logs.join(format!(
                "verify_{}_{date}.log",
                name.trim_start_matches('_')
            ));
            let w = create(&fallback)
                .with_context(|| format!("cannot write log {}", fallback.display()))?;
            output::note(format!(
                "{} is write-protected; log written to the state folder instead",
                dir.display()
            ));
            Ok((fallback, w))
        }
        Err(e) => Err(e).with_context(|| format!("cannot write log {}", in_dir.display())),
    }
}
