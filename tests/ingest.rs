//! `hpcstage ingest`: instrument data into `<nas>/<PRJ>/raw/<NAME>/`, verified, described
//! and write-protected, and never over an existing dataset.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    all_entries, assert_lines, assert_manifest_verifies, fingerprint, name, needs_root, read,
    regular_files, wait_for, write, Env, Mount, NEWLINE,
};
use serde_json::json;

/// An acquisition folder as a microscope leaves it.
fn acquisition(env: &Env) -> PathBuf {
    let acq = env.path("acq");
    write(acq.join("plate7/A01.tif"), "tiff A01\n");
    write(acq.join("plate7/A02.TIF"), "tiff A02\n");
    write(acq.join("plate7/layout.csv"), "well,sample\nA01,s1\n");
    write(acq.join("README"), "acquired 2026-11-27\n");
    write(acq.join(name(NEWLINE)), "odd name\n");
    fs::create_dir_all(acq.join("empty")).expect("mkdir");
    acq
}

fn ingest(env: &Env, dataset: &str, extra: &[&str]) -> common::Run {
    let mut args = vec!["ingest", "acq", "--project", "PRJ", "--dataset", dataset];
    args.extend_from_slice(extra);
    env.run_roots(args)
}

#[test]
fn ingest_creates_a_verified_described_write_protected_dataset() {
    let env = Env::new();
    let acq = acquisition(&env);
    let run = ingest(&env, "plate7", &[]);
    run.code(0);
    let ds = env.nas().join("PRJ/raw/plate7");
    assert_lines(
        &run.out().lines().collect::<Vec<_>>()[2..],
        &[
            "ingested PRJ/raw/plate7 → [ROOT]/nas/PRJ/raw/plate7 (5 files, 66 B)",
            "write protection: read-only (chmod -R a-w)",
        ],
    );

    // Everything arrived, plus the manifest and the description.
    let mut expected = regular_files(&acq);
    expected.extend(["MANIFEST.sha256".into(), "dataset.json".into()]);
    expected.sort();
    let mut got = regular_files(&ds);
    got.sort();
    assert_eq!(got, expected);
    for rel in regular_files(&acq) {
        assert!(
            read(acq.join(&rel)) == read(ds.join(&rel)),
            "{} differs",
            rel.display()
        );
    }
    assert!(ds.join("empty").is_dir());
    assert!(
        !env.nas().join("PRJ/raw/.plate7.ingest").exists(),
        "the assembly folder is gone"
    );
    assert!(
        !ds.join(".hpcstage").exists(),
        "no copy bookkeeping in raw data"
    );

    // The manifest covers every file, dataset.json included, and sha256sum agrees.
    let check = env.sh(&ds, "sha256sum -c MANIFEST.sha256");
    check.code(0);
    assert_eq!(
        check.stdout.lines().filter(|l| l.ends_with(": OK")).count(),
        6,
        "{check}"
    );

    let info: serde_json::Value =
        serde_json::from_slice(&read(ds.join("dataset.json"))).expect("dataset.json");
    assert_eq!(info["project"], "PRJ");
    assert_eq!(info["dataset"], "plate7");
    assert_eq!(info["source_path"], acq.display().to_string());
    assert_eq!(info["files"], 5);
    assert_eq!(info["bytes"], 66);
    assert_eq!(
        info["formats"],
        json!({"": 1, "csv": 1, "tif": 2, "txt": 1})
    );

    // Write once: no write bit anywhere, on files or folders.
    for rel in all_entries(&ds).into_iter().chain([PathBuf::new()]) {
        let m = fs::symlink_metadata(ds.join(&rel)).expect("stat");
        assert_eq!(
            m.mode() & 0o222,
            0,
            "{} is writable ({:o})",
            rel.display(),
            m.mode() & 0o7777
        );
    }
}

#[test]
fn a_second_ingest_of_the_same_name_fails_and_changes_nothing() {
    let env = Env::new();
    let acq = acquisition(&env);
    ingest(&env, "plate7", &[]).code(0);
    let raw = env.nas().join("PRJ/raw");
    let before = fingerprint(&raw);

    // Different content this time: still nothing may be replaced or added.
    write(acq.join("plate7/A01.tif"), "a different A01\n");
    write(acq.join("extra.txt"), "extra\n");
    let run = ingest(&env, "plate7", &[]);
    run.code(1).err_has(
        "error: dataset [ROOT]/nas/PRJ/raw/plate7 already exists; raw data is never \
         overwritten or appended to",
    );
    assert_eq!(run.stdout, "", "{run}");
    assert_lines(&fingerprint(&raw), &before);
}

/// Two ingests of one dataset name at once, from two instruments: the second is refused
/// while the first runs (naming it), and touches nothing of what the first is filling;
/// the dataset is then the first one's, whole and verified.
#[test]
fn a_concurrent_ingest_of_the_same_name_is_refused_while_the_first_runs() {
    let env = Env::new();
    acquisition(&env);
    let other = env.path("other");
    write(other.join("B01.tif"), "from the other instrument\n");
    let raw = env.nas().join("PRJ/raw");
    let lock = raw.join(".plate7.ingest.lock");

    let mut first = env.command();
    first.arg("--nas-root").arg(env.nas()).args([
        "ingest",
        "acq",
        "--project",
        "PRJ",
        "--dataset",
        "plate7",
    ]);
    let mut first = first.spawn().expect("start the first ingest");
    let host = fs::read_to_string("/proc/sys/kernel/hostname").expect("host name");
    let (pid, host) = (first.id(), host.trim());
    let holder = format!("pid {pid} on {host}");
    wait_for(&mut first, "the first ingest took its lock", || {
        fs::read_to_string(&lock).is_ok_and(|p| p == holder)
    });
    let raw_pid = libc::pid_t::try_from(first.id()).expect("pid fits");
    // SAFETY: a signal to our own child, not reaped yet.
    assert_eq!(unsafe { libc::kill(raw_pid, libc::SIGSTOP) }, 0);

    let second = env.run_roots(["ingest", "other", "--project", "PRJ", "--dataset", "plate7"]);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(raw_pid, libc::SIGCONT) }, 0);
    second.code(1).err_has(&format!(
        "error: [ROOT]/nas/PRJ/raw/plate7 is locked by another hpcstage process ({holder})"
    ));
    let out = first.wait_with_output().expect("wait for the first ingest");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dataset = raw.join("plate7");
    assert!(!dataset.join("B01.tif").exists());
    assert_eq!(read(dataset.join("plate7/A01.tif")), b"tiff A01\n");
    assert_manifest_verifies(&dataset);
    assert_eq!(
        fs::read_dir(&raw)
            .expect("list raw")
            .map(|e| e.expect("entry").file_name())
            .collect::<Vec<_>>(),
        vec![std::ffi::OsString::from("plate7")],
        "only the dataset is left in raw/"
    );
}

#[test]
fn ingest_json_reports_protection_and_the_description() {
    let env = Env::new();
    acquisition(&env);
    let run = ingest(&env, "plate8", &["--json"]);
    run.code(0);
    let j = run.json();
    assert_eq!(
        j["dataset_path"],
        env.nas().join("PRJ/raw/plate8").display().to_string()
    );
    assert_eq!(j["read_only"], true);
    assert_eq!(j["immutable"], serde_json::Value::Null, "not requested");
    assert_eq!(j["copied"], 5);
    assert_eq!(j["dataset"]["files"], 5);
    assert_eq!(j["ok"], true);
}

/// Clears the immutable flag so the temporary folder can be removed.
struct ClearImmutable(PathBuf);

impl Drop for ClearImmutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr")
            .arg("-R")
            .arg("-i")
            .arg(&self.0)
            .output();
    }
}

/// Whether `lsattr -d` shows the immutable flag on `path`.
fn has_immutable_flag(path: &Path) -> bool {
    let out = Command::new("lsattr")
        .arg("-d")
        .arg(path)
        .output()
        .expect("run lsattr");
    out.status.success()
        && String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .is_some_and(|flags| flags.contains('i'))
}

#[test]
fn immutable_is_reported_as_not_applied_where_the_filesystem_cannot_do_it() {
    needs_root!();
    let env = Env::new();
    acquisition(&env);
    // ramfs has no inode flags at all: chattr +i cannot work there.
    let _nas = Mount::new("ramfs", "mode=0755", &env.nas());
    let run = ingest(&env, "plate7", &["--immutable"]);
    run.code(0);
    let ds = env.nas().join("PRJ/raw/plate7");
    let claim = run
        .out()
        .lines()
        .find_map(|l| l.strip_prefix("immutable flag: ").map(str::to_string))
        .unwrap_or_else(|| panic!("no immutable flag line\n{run}"));
    assert!(claim.starts_with("not applied: "), "{claim}\n{run}");
    assert!(!has_immutable_flag(&ds));
    // The dataset itself is fine and read-only.
    env.sh(&ds, "sha256sum --quiet -c MANIFEST.sha256").code(0);
    assert_eq!(common::mode(&ds) & 0o222, 0);
}

#[test]
fn immutable_is_reported_as_it_really_is() {
    let env = Env::new();
    acquisition(&env);
    let ds = env.nas().join("PRJ/raw/plate7");
    let _clear = ClearImmutable(ds.clone());
    let run = ingest(&env, "plate7", &["--immutable", "--json"]);
    run.code(0);
    let claim = run.json()["immutable"]
        .as_str()
        .unwrap_or_else(|| panic!("no immutable outcome\n{run}"))
        .to_string();
    // Applied or not depends on the filesystem and privileges; the claim must match.
    if claim == "applied (chattr +i)" {
        assert!(
            has_immutable_flag(&ds),
            "claimed applied, but lsattr disagrees"
        );
        let attempt = fs::write(ds.join("sneaky.txt"), "x");
        assert!(attempt.is_err(), "an immutable folder accepted a new file");
    } else {
        assert!(claim.starts_with("not applied: "), "{claim}");
        assert!(
            !has_immutable_flag(&ds),
            "claimed not applied, but lsattr shows it"
        );
    }
}

#[test]
fn ingest_refuses_names_that_are_not_one_folder() {
    let env = Env::new();
    acquisition(&env);
    for bad in ["../escape", ".hidden", "a/b"] {
        let run = ingest(&env, bad, &[]);
        run.code(1).err_has(&format!("invalid dataset {bad:?}"));
    }
    assert!(
        all_entries(&env.nas()).is_empty(),
        "{:?}",
        all_entries(&env.nas())
    );
}

/// An acquisition folder whose own manifest (here written on Windows: CRLF, upper-case
/// hex) no longer matches a file is refused as an integrity failure, exit 3, and nothing
/// appears under the dataset's name.
#[test]
fn an_acquisition_that_disagrees_with_its_own_manifest_exits_3() {
    let env = Env::new();
    let acq = acquisition(&env);
    let listed = |f: &str| {
        let out = std::process::Command::new("sha256sum")
            .arg(acq.join(f))
            .output()
            .expect("sha256sum");
        String::from_utf8_lossy(&out.stdout)[..64].to_uppercase()
    };
    let manifest = format!(
        "{}  plate7/A01.tif\r\n{}  plate7/A02.TIF\r\n",
        listed("plate7/A01.tif"),
        listed("plate7/A02.TIF")
    );
    write(acq.join("MANIFEST.sha256"), manifest);
    write(acq.join("plate7/A02.TIF"), "tiff A02, damaged\n");
    let run = ingest(&env, "plate7", &[]);
    run.code(3).err_has("SOURCE CORRUPT");
    assert!(!env.nas().join("PRJ/raw/plate7").exists(), "{run}");
}
