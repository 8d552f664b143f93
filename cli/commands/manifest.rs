//! `hpcstage manifest create|verify DIR`: sha256sum-compatible manifests.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hpcstage_staging::fmt::bytes;
use hpcstage_staging::ledger::file_safe;
use hpcstage_staging::manifest::{self, display_name, Check, Manifest};
use hpcstage_staging::walk::{Filter, MANIFEST_NAME, TMP_PREFIX};
use serde::Serialize;

use super::{pool, Status};
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

pub(crate) fn create(settings: &Settings, args: &ManifestCreateArgs) -> Result<Status> {
    let dir = absolute(&args.dir)?;
    if !dir.is_dir() {
        bail!("{} does not exist or is not a folder", dir.display());
    }
    let to_stdout = args.output.as_deref() == Some(Path::new("-"));
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
            "{} files could not be read; no manifest written (a manifest that silently leaves files out is worse than none)",
            streamed.errors.len()
        );
    }
    let elapsed = started.elapsed();
    if to_stdout {
        output::data_from(tmp.reopen()?)?;
        return Ok(Status::Success);
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
            "wrote {} ({} files, {} hashed in {:.1}s, {})",
            out_path.display(),
            streamed.files,
            bytes(streamed.bytes),
            elapsed.as_secs_f64(),
            output::rate(streamed.bytes, elapsed)
        ));
    }
    Ok(Status::Success)
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

pub(crate) fn verify(settings: &Settings, args: &ManifestVerifyArgs) -> Result<Status> {
    let dir = absolute(&args.dir)?;
    if !dir.is_dir() {
        bail!("{} does not exist or is not a folder", dir.display());
    }
    let manifest_path = match &args.manifest {
        Some(p) => absolute(p)?,
        None => dir.join(MANIFEST_NAME),
    };
    if !manifest_path.is_file() {
        bail!(
            "no manifest at {}; create one with `hpcstage manifest create {}`",
            manifest_path.display(),
            dir.display()
        );
    }
    let manifest = Manifest::read(&manifest_path)?;
    let bar = output::Bar::new("verifying", args.json);
    let verified =
        pool(settings, &args.parallel)?.install(|| manifest::verify(&dir, &manifest, &bar));
    bar.finish();
    let verified = verified?;

    let mut lines = Vec::with_capacity(verified.checks.len());
    for (path, check) in &verified.checks {
        let name = display_name(path);
        lines.push(match check {
            Check::Ok => format!("{name}: OK"),
            Check::Failed(_) => format!("{name}: FAILED"),
            Check::Missing => format!("{name}: MISSING"),
            Check::Unreadable(why) => format!("{name}: FAILED open or read ({why})"),
        });
    }
    let (ok, failed, missing, unreadable) = verified.counts();
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
    if !verified.unlisted.is_empty() {
        summary.push(format!(
            "WARNING: {} file{} present but not in the manifest:",
            verified.unlisted.len(),
            plural(verified.unlisted.len())
        ));
        summary.extend(
            verified
                .unlisted
                .iter()
                .map(|p| format!("  {}", display_name(p))),
        );
    }
    summary.push(format!(
        "{}: {ok} OK, {failed} FAILED, {missing} MISSING, {unreadable} unreadable, {} unlisted ({} checked)",
        dir.display(),
        verified.unlisted.len(),
        bytes(verified.bytes)
    ));

    let log = if args.no_log {
        None
    } else {
        Some(write_log(
            settings,
            &dir,
            &manifest_path,
            args.log.as_deref(),
            &lines,
            &summary,
        )?)
    };

    let status = if verified.all_ok() {
        Status::Success
    } else {
        Status::Integrity
    };
    if args.json {
        let pick = |want: fn(&Check) -> bool| -> Vec<String> {
            verified
                .checks
                .iter()
                .filter(|(_, c)| want(c))
                .map(|(p, _)| display_name(p))
                .collect()
        };
        output::json(&VerifyJson {
            dir: dir.display().to_string(),
            manifest: manifest_path.display().to_string(),
            ok: verified.all_ok(),
            files: verified.checks.len(),
            passed: ok,
            failed: pick(|c| matches!(c, Check::Failed(_))),
            missing: pick(|c| matches!(c, Check::Missing)),
            unreadable: verified
                .checks
                .iter()
                .filter_map(|(p, c)| match c {
                    Check::Unreadable(why) => Some((display_name(p), why.clone())),
                    _ => None,
                })
                .collect(),
            unlisted: verified.unlisted.iter().map(|p| display_name(p)).collect(),
            bytes: verified.bytes,
            log: log.map(|p| p.display().to_string()),
        });
        return Ok(status);
    }
    for (line, (_, check)) in lines.iter().zip(&verified.checks) {
        if !(args.failures_only && *check == Check::Ok) {
            output::data(line);
        }
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

/// Writes the dated log into DIR (the `sha256sum -c | tee verify_$(date +%F).log` habit),
/// or into the state folder when DIR is write-protected raw data.
fn write_log(
    settings: &Settings,
    dir: &Path,
    manifest: &Path,
    explicit: Option<&Path>,
    lines: &[String],
    summary: &[String],
) -> Result<PathBuf> {
    let now = jiff::Zoned::now();
    let date = now.strftime("%Y-%m-%d").to_string();
    let mut text = format!(
        "# hpcstage {} manifest verify {} against {} at {}\n",
        env!("CARGO_PKG_VERSION"),
        dir.display(),
        manifest.display(),
        now.strftime("%Y-%m-%dT%H:%M:%S%:z")
    );
    for l in lines.iter().chain(summary) {
        text.push_str(l);
        text.push('\n');
    }
    if let Some(path) = explicit {
        let path = absolute(path)?;
        std::fs::write(&path, &text)
            .with_context(|| format!("cannot write log {}", path.display()))?;
        return Ok(path);
    }
    let in_dir = dir.join(format!("verify_{date}.log"));
    match std::fs::write(&in_dir, &text) {
        Ok(()) => Ok(in_dir),
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
            std::fs::write(&fallback, &text)
                .with_context(|| format!("cannot write log {}", fallback.display()))?;
            output::note(format!(
                "{} is write-protected; log written to the state folder instead",
                dir.display()
            ));
            Ok(fallback)
        }
        Err(e) => Err(e).with_context(|| format!("cannot write log {}", in_dir.display())),
    }
}
