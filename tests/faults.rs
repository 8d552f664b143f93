//! What goes wrong in real life, and what hpcstage must do about it: killed runs, bit rot
//! at the destination, sources changing under the copy, full disks, missing sources,
//! hostile manifests and corruption on the NAS.
//!
//! The invariant behind most of these: a file never appears under its final name at the
//! destination unless its bytes were verified.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{
    assert_final_names_match_source, assert_manifest_verifies, assert_text, needs_root, noise,
    read, read_text, regular_files, temporaries, wait_for, write, Env, Mount,
};
use filetime::FileTime;
use serde_json::json;

fn sha256_hex(env: &Env, path: &Path) -> String {
    let run = env.sh(
        path.parent().expect("parent"),
        &format!(
            "sha256sum < '{}'",
            path.file_name().expect("name").to_string_lossy()
        ),
    );
    run.code(0);
    run.stdout[..64].to_string()
}

/// Starts `hpcstage stage src DEST --jobs 1 --json`, freezes it once `started` holds, lets
/// another writer take all the space left in `disk` (the writer is returned: the space is
/// free again once it is dropped and its file removed), lets the stage go on into the full
/// disk, and returns its JSON summary after checking that it failed (exit 4) with the full
/// disk, and only with it.
fn fill_the_disk_under(
    env: &Env,
    dest: &str,
    disk: &Path,
    what: &str,
    started: impl Fn() -> bool,
) -> (serde_json::Value, fs::File) {
    let mut cmd = env.command();
    cmd.args([
        "stage",
        "src",
        dest,
        "--project",
        "P",
        "--jobs",
        "1",
        "--json",
    ]);
    let mut child = cmd.spawn().expect("start hpcstage");
    wait_for(&mut child, what, started);
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
    // SAFETY: plain signal sends to our own child, which has not been reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let mut filler = fs::File::create(disk.join("filler")).expect("create filler");
    // write_all fills the last bit of room with a short write, then fails.
    let chunk = vec![0x5a_u8; 1 << 16];
    let full = loop {
        if let Err(e) = filler.write_all(&chunk).and_then(|()| filler.sync_data()) {
            break e;
        }
    };
    assert_eq!(full.raw_os_error(), Some(libc::ENOSPC), "{full}");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let out = child.wait_with_output().expect("wait for hpcstage");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(4),
        "a full disk is \"some files failed\"\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );

    // Every failure is the full disk (or a file not tried after it), the journal included
    // when it could not be written either.
    let j: serde_json::Value = serde_json::from_str(&stdout).expect("JSON summary");
    let failed = j["failed"].as_array().expect("failed list");
    assert!(
        failed.iter().any(|f| f["kind"] == "disk-full"
            && f["error"]
                .as_str()
                .is_some_and(|e| e.contains("No space left on device"))),
        "no disk-full failure reported:\n{stdout}"
    );
    assert!(
        failed
            .iter()
            .all(|f| f["kind"] == "disk-full" || f["kind"] == "not-attempted"),
        "{stdout}"
    );
    (j, filler)
}

/// What a copy that failed part-way leaves: every final name holds its source's bytes, no
/// temporary file is left, and no manifest says the copy is complete.
fn assert_a_failed_copy_left_nothing_unverified(src: &Path, dest: &Path) {
    assert_final_names_match_source(src, dest);
    assert_eq!(
        temporaries(dest),
        Vec::<PathBuf>::new(),
        "temporaries were left"
    );
    assert!(!dest.join("MANIFEST.sha256").exists());
}

#[test]
fn after_sigkill_mid_stage_no_unverified_file_has_a_final_name_and_a_rerun_finishes() {
    let env = Env::new();
    let src = env.path("src");
    // 256 MiB in 2048 files: the copy takes long enough to be killed in the middle.
    let base = noise(1, 128 << 10);
    for d in 0..8u64 {
        for f in 0..256u64 {
            let mut data = base.clone();
            data[..8].copy_from_slice(&(d * 256 + f).to_le_bytes());
            write(src.join(format!("d{d}/f{f:03}.bin")), data);
        }
    }
    let dest = env.path("dest");
    let journal = dest.join(".hpcstage/journal");

    let mut cmd = env.command();
    cmd.args(["stage", "src", "dest", "--project", "P", "--jobs", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("start hpcstage");
    wait_for(&mut child, "the journal got its first lines", || {
        fs::metadata(&journal).is_ok_and(|m| m.len() > 0)
    });
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("reap");
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "the stage finished ({status}) before SIGKILL landed: nothing was tested"
        );
    }

    // The killed run: whatever carries its final name is byte-for-byte the source.
    let finished = assert_final_names_match_source(&src, &dest);
    assert!(
        finished < 2048,
        "all {finished} files were done: the kill came too late"
    );
    // Still tracked, as incomplete: its record was written before the copy started.
    let record: serde_json::Value =
        serde_json::from_slice(&read(dest.join(".hpcstage/stage.json"))).expect("stage.json");
    assert!(record["incomplete"].is_object(), "{record}");
    assert!(!dest.join("MANIFEST.sha256").exists());
    let status = env.run(["status", "--json"]);
    status.code(0);
    let item = status.json()["items"][0].clone();
    assert_eq!(item["safety"], "INCOMPLETE", "{status}");
    assert!(
        item["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("staging started and has not finished")),
        "{item}"
    );

    // The rerun resumes (trusting what the journal verified) and completes.
    let run = env.run([
        "stage",
        "src",
        "dest",
        "--project",
        "P",
        "--jobs",
        "1",
        "--json",
    ]);
    run.code(0);
    let j = run.json();
    let (copied, skipped) = (
        j["copied"].as_u64().expect("copied"),
        j["skipped"].as_u64().expect("skipped"),
    );
    assert_eq!(copied + skipped, 2048, "{run}");
    assert!(
        skipped > 0,
        "the rerun ignored the journal and copied everything again"
    );
    assert_eq!(
        temporaries(&dest),
        Vec::<PathBuf>::new(),
        "temporary files were left"
    );
    assert_eq!(assert_final_names_match_source(&src, &dest), 2048);
    env.run(["manifest", "verify", "dest", "--no-log"]).code(0);
    env.sh(&dest, "sha256sum --quiet -c MANIFEST.sha256")
        .code(0);
}

#[test]
fn a_flipped_byte_at_the_destination_is_caught_by_verify_and_repaired_by_stage_verify() {
    let env = Env::new();
    write(env.path("src/a.dat"), noise(11, 4096));
    write(env.path("src/b.dat"), noise(12, 4096));
    env.run(["stage", "src", "dest", "--project", "P"]).code(0);

    // Bit rot: one byte changes; size, inode and mtime stay as they were.
    let victim = env.path("dest/a.dat");
    let before = fs::metadata(&victim).expect("stat");
    let mut bytes = read(&victim);
    bytes[100] ^= 0xff;
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(&victim)
            .expect("open for writing");
        f.write_all(&bytes).expect("write");
    }
    filetime::set_file_mtime(&victim, FileTime::from_last_modification_time(&before))
        .expect("restore mtime");
    let after = fs::metadata(&victim).expect("stat");
    assert_eq!(
        (after.len(), after.ino(), after.mtime(), after.mtime_nsec()),
        (
            before.len(),
            before.ino(),
            before.mtime(),
            before.mtime_nsec()
        )
    );

    let verify = env.run(["manifest", "verify", "dest", "--no-log"]);
    verify.code(3);
    assert_text(&verify.stdout, "a.dat: FAILED\nb.dat: OK\n");

    // A plain re-stage trusts size, mtime and inode: it does not notice.
    let plain = env.run(["stage", "src", "dest", "--project", "P", "--json"]);
    plain.code(0);
    assert_eq!(
        (&plain.json()["copied"], &plain.json()["repaired"]),
        (&json!(0), &json!([]))
    );

    // --verify re-reads what the journal calls verified, repairs it and says so.
    let repair = env.run(["stage", "src", "dest", "--project", "P", "--verify"]);
    repair
        .code(0)
        .err_has("warning: a.dat: destination no longer matched; copied again");
    assert_eq!(read(&victim), read(env.path("src/a.dat")));
    let verify = env.run(["manifest", "verify", "dest", "--no-log"]);
    verify.code(0);
    assert_text(&verify.stdout, "a.dat: OK\nb.dat: OK\n");
}

#[test]
fn a_source_file_that_changes_during_the_copy_fails_and_never_gets_its_final_name() {
    let env = Env::new();
    let big = env.path("src/big.bin");
    write(&big, noise(21, 48 << 20));
    write(env.path("src/small.txt"), "small\n");

    // An instrument still writing: append to the big file until the stage is over.
    let stop = Arc::new(AtomicBool::new(false));
    let appender = {
        let (stop, big) = (Arc::clone(&stop), big.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                common::append(&big, b"one more line\n");
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    let run = env.run([
        "stage",
        "src",
        "dest",
        "--project",
        "P",
        "--jobs",
        "1",
        "--json",
    ]);
    stop.store(true, Ordering::Relaxed);
    appender.join().expect("appender thread");

    run.code(4);
    let j = run.json();
    assert_eq!(
        j["failed"],
        json!([{
            "path": "big.bin",
            "kind": "source-changed",
            "error": format!("{}: the file changed while it was being copied; run again", big.display()),
        }]),
        "{run}"
    );
    assert_eq!(j["copied"], 1);
    assert_eq!(
        j["record"],
        serde_json::Value::Null,
        "an incomplete stage got a record"
    );
    assert!(
        !env.path("dest/big.bin").exists(),
        "a changing file got its final name"
    );
    assert_eq!(temporaries(&env.path("dest")), Vec::<PathBuf>::new());
    assert!(!env.path("dest/MANIFEST.sha256").exists());

    // Once the file holds still, the same command finishes the job.
    env.run(["stage", "src", "dest", "--project", "P"]).code(0);
    assert_eq!(
        assert_final_names_match_source(&env.path("src"), &env.path("dest")),
        2
    );
}

#[test]
fn a_destination_too_small_is_refused_before_anything_is_copied() {
    needs_root!();
    let env = Env::new();
    for i in 0..10 {
        write(env.path(format!("src/f{i}.bin")), noise(i, 1 << 20));
    }
    let small = env.path("small");
    let _mount = Mount::new("tmpfs", "size=8m", &small);
    let run = env.run(["stage", "src", "small/dest", "--project", "P"]);
    run.code(1)
        .err_has(
            "error: not enough space at [ROOT]/small/dest: 10.0 MiB needed, 8.0 MiB available\n",
        )
        .err_has("hint: free space at the destination");
    assert_eq!(run.stdout, "");
    assert_eq!(regular_files(&small.join("dest")), Vec::<PathBuf>::new());
    assert_eq!(temporaries(&small), Vec::<PathBuf>::new());
}

#[test]
fn a_disk_that_fills_up_during_the_copy_fails_those_files_and_a_rerun_finishes() {
    needs_root!();
    let env = Env::new();
    let src = env.path("src");
    for i in 0..192 {
        write(
            src.join(format!("a/f{i:03}.bin")),
            noise(100 + i, 256 << 10),
        );
    }
    let small = env.path("small");
    let mount = Mount::new("tmpfs", "size=64m", &small);

    // 48 MiB into 64 MiB passes the pre-flight check. Once the stage is well into the
    // copy (ten files written to temporary names), it is frozen, another writer takes all
    // the space left, and the stage goes on into a full disk.
    let (j, filler) = fill_the_disk_under(
        &env,
        "small/dest",
        &small,
        "ten files were being copied",
        || temporaries(&small.join("dest/a")).len() >= 10,
    );
    let failed = j["failed"].as_array().expect("failed list");

    // The rest was copied, failed, or not attempted after the disk filled: at most the
    // first 100 of those are named, the others counted.
    let data_failures = failed
        .iter()
        .filter(|f| f["path"] != ".hpcstage/journal")
        .count();
    let named_not_attempted = failed
        .iter()
        .filter(|f| f["kind"] == "not-attempted")
        .count();
    assert!(named_not_attempted <= 100, "{j}");
    let more = j["not_attempted_more"]
        .as_u64()
        .expect("not_attempted_more");
    assert!(more == 0 || named_not_attempted == 100, "{j}");
    assert_eq!(
        j["copied"].as_u64().expect("copied") + data_failures as u64 + more,
        192,
        "{j}"
    );
    let dest = small.join("dest");
    assert_a_failed_copy_left_nothing_unverified(&src, &dest);

    // Room again: the same command completes. (Files the failed run copied but could not
    // journal are copied again, next to their unjournaled copies: give it room for that.)
    drop(filler);
    fs::remove_file(small.join("filler")).expect("remove filler");
    mount.remount("size=128m");
    env.run(["stage", "src", "small/dest", "--project", "P"])
        .code(0);
    assert_eq!(assert_final_names_match_source(&src, &dest), 192);
    env.sh(&dest, "sha256sum --quiet -c MANIFEST.sha256")
        .code(0);
}

#[test]
fn a_disk_that_fills_up_during_a_direct_copy_of_big_files_fails_them_and_a_rerun_finishes() {
    needs_root!();
    let env = Env::new();
    let src = env.path("src");
    // Big files (streamed past the page cache) with tails that are not whole blocks.
    for i in 0..3u64 {
        write(
            src.join(format!("big{i}.tif")),
            noise(300 + i, (12 << 20) + 4097),
        );
    }
    let small = env.path("disk");
    let _mount = Mount::ext4_image(&env.path("disk.img"), 64, &small);

    // The stage is frozen as its first temporary file appears, another writer takes all the
    // space, and the stage goes on into a full disk with direct writes.
    let (j, filler) = fill_the_disk_under(
        &env,
        "disk/dest",
        &small,
        "the first big file was being copied",
        // Data temporaries, not the stage record's (written first, in `.hpcstage/`).
        || {
            temporaries(&small.join("dest"))
                .iter()
                .any(|t| !t.starts_with(small.join("dest/.hpcstage")))
        },
    );
    let dest = small.join("dest");
    assert!(
        j["copied"].as_u64().expect("copied") < 3,
        "nothing failed:\n{j}"
    );
    assert_a_failed_copy_left_nothing_unverified(&src, &dest);

    // Room again: the same command completes, and sha256sum agrees.
    drop(filler);
    fs::remove_file(small.join("filler")).expect("remove filler");
    env.run(["stage", "src", "disk/dest", "--project", "P"])
        .code(0);
    assert_eq!(assert_final_names_match_source(&src, &dest), 3);
    assert_manifest_verifies(&dest);
}

#[test]
fn a_missing_source_is_an_error_naming_it() {
    let env = Env::new();
    let run = env.run(["stage", "no/such/dataset", "dest", "--project", "P"]);
    run.code(1)
        .err_has("error: source [ROOT]/no/such/dataset does not exist or is not a folder\n")
        .err_has("hint: check the path (and that the NAS is mounted on this node)");
    assert!(!env.path("dest").exists());

    write(env.path("a-file"), "not a folder");
    let run = env.run(["stage", "a-file", "dest", "--project", "P"]);
    run.code(1)
        .err_has("error: source [ROOT]/a-file does not exist or is not a folder");
    assert!(!env.path("dest").exists());
}

/// A folder `d` with `ok.txt`, and next to it a file the manifest tries to reach.
fn hostile_setup(env: &Env) -> (String, String) {
    write(env.path("d/ok.txt"), "fine\n");
    write(env.path("secret.txt"), "outside the folder\n");
    (
        sha256_hex(env, &env.path("d/ok.txt")),
        sha256_hex(env, &env.path("secret.txt")),
    )
}

#[test]
fn hostile_manifests_are_refused_with_file_and_line_and_nothing_outside_is_read() {
    let env = Env::new();
    let (ok, secret) = hostile_setup(&env);
    let abs = env.path("secret.txt").display().to_string();
    let unsafe_path = |line: usize, entry: &str| {
        format!("MANIFEST.sha256:{line}: refusing unsafe path {entry:?} (absolute or climbing out with '..')")
    };
    let cases: Vec<(String, String)> = vec![
        (
            format!("{secret}  ../secret.txt\n"),
            unsafe_path(1, "../secret.txt"),
        ),
        (
            format!("{ok}  ok.txt\n{secret}  {abs}\n"),
            unsafe_path(2, &abs),
        ),
        (
            format!("{ok}  ok.txt\n{secret}  ./sub/../../secret.txt\n"),
            unsafe_path(2, "./sub/../../secret.txt"),
        ),
        (
            format!("{ok}  ok.txt\nzz{}  ok.txt\n", &ok[2..]),
            "MANIFEST.sha256:2: bad checksum (expected 64 hex digits)".into(),
        ),
        (
            format!("{ok}  ok.txt\n{}\n", &secret[..40]),
            "MANIFEST.sha256:2: truncated line".into(),
        ),
        (
            format!("# made by hand\n\n{ok}  ok.txt\n\\{secret}  ok\\q.txt\n"),
            "MANIFEST.sha256:4: bad escape in path (only \\\\, \\n and \\r are allowed)".into(),
        ),
    ];
    for (text, message) in cases {
        write(env.path("d/MANIFEST.sha256"), &text);
        let run = env.run(["manifest", "verify", "d"]);
        run.code(1);
        let first = run.stderr.lines().next().unwrap_or_default().to_string();
        assert!(
            first.starts_with(&format!("error: {}/d/{message}", env.root.display())),
            "manifest {text:?}: expected the error to start with {message:?}\n{run}"
        );
        assert_eq!(run.stdout, "", "something was checked\n{run}");
        let logs: Vec<_> = regular_files(&env.path("d"))
            .into_iter()
            .filter(|p| p.to_string_lossy().starts_with("verify_"))
            .collect();
        assert!(
            logs.is_empty(),
            "a log was written for a refused manifest: {logs:?}"
        );
    }
}

#[test]
fn stage_refuses_a_source_whose_manifest_is_hostile() {
    let env = Env::new();
    let (_, secret) = hostile_setup(&env);
    write(
        env.path("d/MANIFEST.sha256"),
        format!("{secret}  ../secret.txt\n"),
    );
    let run = env.run(["stage", "d", "dest", "--project", "P"]);
    run.code(1).err_has(
        "error: [ROOT]/d/MANIFEST.sha256:1: refusing unsafe path \"../secret.txt\" \
         (absolute or climbing out with '..')\n\
         hint: fix or regenerate the manifest",
    );
    assert!(!env.path("dest").exists(), "the destination was created");
}

#[test]
fn a_nas_file_that_no_longer_matches_its_manifest_is_not_copied() {
    let env = Env::new();
    let ds = env.nas().join("P/raw/ds");
    for (f, seed) in [("a.dat", 31), ("b.dat", 32), ("c.dat", 33)] {
        write(ds.join(f), noise(seed, 2048));
    }
    env.run(["manifest".as_ref(), "create".as_ref(), ds.as_os_str()])
        .code(0);
    let listed = sha256_hex(&env, &ds.join("b.dat"));
    // Silent corruption on the NAS: same size, same mtime, different bytes.
    let meta = fs::metadata(ds.join("b.dat")).expect("stat");
    let mut bytes = read(ds.join("b.dat"));
    bytes[0] ^= 1;
    write(ds.join("b.dat"), &bytes);
    filetime::set_file_mtime(
        ds.join("b.dat"),
        FileTime::from_last_modification_time(&meta),
    )
    .expect("restore mtime");
    let now = sha256_hex(&env, &ds.join("b.dat"));

    let run = env.run_roots(["stage".as_ref(), ds.as_os_str(), "--json".as_ref()]);
    run.code(3);
    let j = run.json();
    assert_eq!(j["source_manifest_used"], true);
    assert_eq!(
        j["failed"],
        json!([{
            "path": "b.dat",
            "kind": "source-corrupt",
            "error": format!(
                "{}: SOURCE CORRUPT: content hashes to {now} but the source MANIFEST.sha256 says {listed}; not copied",
                ds.join("b.dat").display()
            ),
        }]),
        "{run}"
    );
    let dest = env.scratch().join("P/ds");
    assert_eq!(
        regular_files(&dest),
        vec![PathBuf::from("a.dat"), PathBuf::from("c.dat")]
    );
    assert_final_names_match_source(&ds, &dest);

    // Said plainly in the human output too.
    let run = env.run_roots(["stage".as_ref(), ds.as_os_str()]);
    run.code(3).err_has(&format!(
        "error:   b.dat: [ROOT]/nas/P/raw/ds/b.dat: SOURCE CORRUPT: content hashes to {now} \
         but the source MANIFEST.sha256 says {listed}; not copied"
    ));
    assert!(!dest.join("b.dat").exists());
}

/// A dry run says what the run will do: a listed file that no longer matches the NAS
/// manifest is SOURCE CORRUPT there too, with the same exit code. The manifest is the
/// kind a Windows acquisition PC writes (CRLF, upper-case hex).
#[test]
fn a_dry_run_reports_source_corrupt_as_the_run_does_from_a_windows_manifest() {
    let env = Env::new();
    let ds = env.nas().join("P/raw/ds");
    for (f, seed) in [("a.dat", 41), ("b.dat", 42)] {
        write(ds.join(f), noise(seed, 4096));
    }
    let windows: String = ["a.dat", "b.dat"]
        .iter()
        .map(|f| format!("{} *{f}\r\n", sha256_hex(&env, &ds.join(f)).to_uppercase()))
        .collect();
    write(ds.join("MANIFEST.sha256"), windows);
    let mut bytes = read(ds.join("b.dat"));
    bytes[100] ^= 1;
    write(ds.join("b.dat"), &bytes);

    let dry = env.run_roots(["stage".as_ref(), ds.as_os_str(), "--dry-run".as_ref()]);
    dry.code(3)
        .err_has("1 file would fail:")
        .err_has("b.dat: SOURCE CORRUPT: content hashes to");
    assert_eq!(dry.out().lines().collect::<Vec<_>>(), ["+ a.dat"], "{dry}");
    assert!(!env.scratch().join("P/ds").exists(), "a dry run wrote");

    let j = env
        .run_roots([
            "stage".as_ref(),
            ds.as_os_str(),
            "--dry-run".as_ref(),
            "--json".as_ref(),
        ])
        .json();
    assert_eq!(j["failed"][0]["kind"], "source-corrupt");
    assert_eq!(j["source_manifest_used"], true);

    let run = env.run_roots(["stage".as_ref(), ds.as_os_str()]);
    run.code(3)
        .err_has("1 file failed:")
        .err_has("b.dat: SOURCE CORRUPT");
    assert_eq!(
        regular_files(&env.scratch().join("P/ds")),
        [PathBuf::from("a.dat")]
    );
}

/// Ctrl-C (or SIGTERM from `scancel`/a session's end) mid-stage: the run stops reading,
/// removes the temporaries of the files in flight, keeps what it verified, says so, and
/// exits 128 + the signal; a rerun finishes.
#[test]
fn sigint_or_sigterm_mid_stage_stops_cleanly_and_a_rerun_finishes() {
    for (signal, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")] {
        // The signal may land after the last file was placed (the stage then stops while
        // writing its manifest): try again, a few times, for one that lands mid-copy.
        for attempt in 1..=4 {
            let env = Env::new();
            let src = env.path("src");
            // Many small files and two big ones (streamed past the cache), so that the signal
            // finds files in flight of both kinds.
            let base = noise(7, 128 << 10);
            for f in 0..1024u64 {
                let mut data = base.clone();
                data[..8].copy_from_slice(&f.to_le_bytes());
                write(src.join(format!("d/f{f:04}.bin")), data);
            }
            write(src.join("big/a.raw"), noise(8, 96 << 20));
            write(src.join("big/b.raw"), noise(9, 96 << 20));
            let dest = env.path("dest");
            let journal = dest.join(".hpcstage/journal");

            let mut cmd = env.command();
            cmd.args(["stage", "src", "dest", "--project", "P", "--jobs", "2"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = cmd.spawn().expect("start hpcstage");
            wait_for(&mut child, "the journal got its first lines", || {
                fs::metadata(&journal).is_ok_and(|m| m.len() > 0)
            });
            let pid = i32::try_from(child.id()).expect("pid");
            assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
            let out = child.wait_with_output().expect("reap");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(128 + signal),
                "{name}: {:?}\n{stderr}",
                out.status
            );
            assert!(
                stderr.contains(&format!("error: interrupted by {name}: "))
                    && stderr.contains("files verified in")
                    && stderr.contains("run the same command again to finish"),
                "{stderr}"
            );
            assert_eq!(
                temporaries(&dest),
                Vec::<PathBuf>::new(),
                "{name}: temporary files were left"
            );
            let finished = assert_final_names_match_source(&src, &dest);
            if finished == 1026 && attempt < 4 {
                continue;
            }
            assert!(
                finished < 1026,
                "{name} came after the end: nothing was tested"
            );
            assert!(
                dest.join(".hpcstage/running").exists(),
                "the interrupted stage is not marked as unfinished"
            );
            // Recorded before it copied, as incomplete: the copy stays tracked.
            let record: serde_json::Value =
                serde_json::from_str(&read_text(dest.join(".hpcstage/stage.json"))).unwrap();
            assert!(record["incomplete"].is_object(), "{record:#}");

            let run = env.run(["stage", "src", "dest", "--project", "P", "--json"]);
            run.code(0);
            let j = run.json();
            assert!(j["skipped"].as_u64().expect("skipped") > 0, "{run}");
            assert_eq!(assert_final_names_match_source(&src, &dest), 1026);
            assert!(!dest.join(".hpcstage/running").exists());
            env.sh(&dest, "sha256sum --quiet -c MANIFEST.sha256")
                .code(0);
            break;
        }
    }
}

/// A scratch mounted read-only (maintenance) is named, with a hint instead of a bare
/// `Read-only file system (os error 30)`.
#[test]
fn a_read_only_scratch_gets_a_hint() {
    needs_root!();
    let env = Env::new();
    write(env.path("src/a.dat"), noise(51, 1024));
    let scratch = env.path("ro-scratch");
    let _mount = Mount::new("tmpfs", "ro,size=1m", &scratch);
    let run = env.run(["stage", "src", "ro-scratch/P/ds", "--project", "P"]);
    run.code(1)
        .err_has("[ROOT]/ro-scratch")
        .err_has("hint: that filesystem is mounted read-only")
        .err_has("findmnt -T PATH");
}
