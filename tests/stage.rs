//! `hpcstage stage SRC [DEST]`: a faithful, verified, incremental copy to scratch, with a
//! stage record and a purge deadline that does not lie.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use common::{
    all_entries, assert_final_names_match_source, assert_lines, assert_manifest_verifies,
    assert_text, is_root, mode, noise, read, regular_files, temporaries, tricky_tree, write, Env,
    Mount,
};
use filetime::FileTime;
use serde_json::json;

const NO_POLICY_WARNING: &str = "warning: no purge policy configured; assuming mtime, 30 days \
(set [purge] basis/age in [ROOT]/site.toml for the site, or in \
[ROOT]/xdg-config/hpcstage/config.toml for yourself)";

/// The warning of a stage whose source has no `MANIFEST.sha256` (paths as the test shows them).
fn no_manifest_warning(src: &str) -> String {
    format!(
        "no MANIFEST.sha256 in {src}: the copy is read back and checked on scratch, but nothing \
         checks the files against the NAS's own checksums end to end (`hpcstage ingest` writes \
         one for new data)"
    )
}

/// The stdout lines of a copy summary, with the timing part of the bytes line cut off.
fn summary_lines(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(|l| match l.split_once(" in ") {
            Some((head, _)) if l.starts_with("bytes: ") => head.to_string(),
            _ => l.to_string(),
        })
        .collect()
}

#[test]
fn stage_copies_a_tricky_tree_faithfully() {
    let env = Env::new();
    let src = env.path("src");
    let files = tricky_tree(&src);
    assert_eq!(files.len(), 12);

    let run = env.run(["stage", "src", "dest", "--project", "P"]);
    run.code(0);
    let dest = env.path("dest");
    let lines = summary_lines(&run.stdout);
    assert_lines(
        &lines[..2],
        &[
            "files: 12 total, 10 copied, 0 unchanged, 0 failed; 2 hard links, 4 symlinks, 5 folders",
            "bytes: 16.1 MiB copied of 16.1 MiB",
        ],
    );
    // Links pointing out of the tree are copied as links, with a warning; inside ones quietly.
    assert_text(
        &run.err(),
        &format!(
            "{NO_POLICY_WARNING}\nstaging [ROOT]/src → [ROOT]/dest\n\
             warning: outside: symlink points outside the tree (/etc/passwd); copied as a link, not followed\n\
             warning: sub/escape: symlink points outside the tree (../../elsewhere); copied as a link, not followed\n\
             warning: {}\n",
            no_manifest_warning("[ROOT]/src")
        ),
    );

    // Same entries (plus the manifest), same bytes under every final name.
    let mut expected = all_entries(&src);
    expected.push("MANIFEST.sha256".into());
    expected.sort();
    let mut got = all_entries(&dest);
    got.sort();
    assert_eq!(got, expected);
    assert_eq!(assert_final_names_match_source(&src, &dest), files.len());

    // Symlinks stay links with the same target; nothing is followed.
    for link in ["link", "sub/up", "outside", "sub/escape"] {
        let meta = fs::symlink_metadata(dest.join(link)).expect("stat link");
        assert!(meta.file_type().is_symlink(), "{link} is not a symlink");
        assert_eq!(
            fs::read_link(dest.join(link)).expect("readlink"),
            fs::read_link(src.join(link)).expect("readlink"),
            "{link}"
        );
    }
    assert!(!dest.join("elsewhere").exists());

    // Hard links stay hard links: one inode, three names.
    let ino = |p: &str| fs::metadata(dest.join(p)).expect("stat").ino();
    assert_eq!(ino("hard"), ino("a b.txt"));
    assert_eq!(ino("sub/hard2"), ino("a b.txt"));
    assert_eq!(fs::metadata(dest.join("a b.txt")).expect("stat").nlink(), 3);

    // The sparse file has the same bytes and (loosely) stays sparse.
    let sparse = fs::metadata(dest.join("sparse.img")).expect("stat");
    assert_eq!(sparse.len(), 16 << 20);
    assert!(
        sparse.blocks() * 512 < sparse.len() / 2,
        "sparse.img was filled in: {} blocks for {} bytes",
        sparse.blocks(),
        sparse.len()
    );

    // Empty files and empty folders are kept; modes are kept, read-only ones included.
    assert_eq!(fs::metadata(dest.join("empty.dat")).expect("stat").len(), 0);
    assert!(dest.join("empty-dir").is_dir() && dest.join("sub/empty-too").is_dir());
    assert_eq!(mode(dest.join("ro")), 0o555);
    assert_eq!(mode(dest.join("ro/inner.txt")), 0o444);
    assert_eq!(mode(dest.join("ro-file.txt")), 0o400);
    for rel in all_entries(&src) {
        if !fs::symlink_metadata(src.join(&rel))
            .expect("stat")
            .file_type()
            .is_symlink()
        {
            assert_eq!(
                mode(dest.join(&rel)),
                mode(src.join(&rel)),
                "mode of {}",
                rel.display()
            );
        }
    }

    // The destination's manifest is the real sha256sum's business too.
    env.sh(&dest, "sha256sum --quiet -c MANIFEST.sha256")
        .code(0);
}

fn nas_dataset(env: &Env) -> std::path::PathBuf {
    let ds = env.nas().join("P1/raw/plate7");
    write(ds.join("A01.tif"), "well A01\n");
    write(ds.join("A02.tif"), "well A02\n");
    write(ds.join("meta/plate.csv"), "plate,7\n");
    ds
}

#[test]
fn the_default_destination_is_scratch_project_dataset() {
    let env = Env::new();
    let ds = nas_dataset(&env);
    let run = env.run_roots(["stage".as_ref(), ds.as_os_str(), "--json".as_ref()]);
    run.code(0);
    let json = run.json();
    let dest = env.scratch().join("P1/plate7");
    assert_eq!(json["destination"], dest.display().to_string(), "{run}");
    assert_eq!(json["project"], "P1");
    assert_eq!(json["dataset"], "plate7");
    assert_eq!(
        regular_files(&dest),
        ["A01.tif", "A02.tif", "MANIFEST.sha256", "meta/plate.csv"]
            .map(std::path::PathBuf::from)
            .to_vec()
    );
}

#[test]
fn scratch_env_var_is_the_default_scratch_root() {
    let mut env = Env::new();
    let ds = nas_dataset(&env);
    let scratch = env.path("from-env");
    env.set_env("SCRATCH", &scratch);
    let mut cmd = env.command();
    cmd.arg("--nas-root").arg(env.nas()).arg("stage").arg(&ds);
    let run = env.finish(cmd);
    run.code(0)
        .err_has("staging [ROOT]/nas/P1/raw/plate7 → [ROOT]/from-env/P1/plate7");
    assert!(scratch.join("P1/plate7/A01.tif").is_file());
}

#[test]
fn a_source_outside_the_nas_root_needs_a_project() {
    let env = Env::new();
    write(env.path("elsewhere/run42/x"), "x");
    let run = env.run_roots(["stage", "elsewhere/run42"]);
    run.code(1).err_has("pass --project");
    assert!(all_entries(&env.scratch()).is_empty());
    env.run_roots(["stage", "elsewhere/run42", "--project", "P9"])
        .code(0);
    assert!(env.scratch().join("P9/run42/x").is_file());
}

#[test]
fn a_rerun_copies_nothing_and_a_changed_source_file_is_copied_again() {
    let env = Env::new();
    write(env.path("src/a.txt"), "alpha\n");
    write(env.path("src/b.txt"), "bravo\n");
    write(env.path("src/sub/c.txt"), "charlie\n");
    let stage = || env.run(["stage", "src", "dest", "--project", "P", "--json"]);

    let first = stage();
    first.code(0);
    let j = first.json();
    assert_eq!(
        (&j["copied"], &j["skipped"], &j["ok"]),
        (&json!(3), &json!(0), &json!(true))
    );

    let second = stage();
    second.code(0);
    let j = second.json();
    assert_eq!(
        (
            &j["copied"],
            &j["bytes_copied"],
            &j["skipped"],
            &j["changes"]
        ),
        (&json!(0), &json!(0), &json!(3), &json!([])),
        "{second}"
    );

    // Same size, new content and mtime: the journal notices the source changed.
    write(env.path("src/b.txt"), "BRAVO\n");
    filetime::set_file_mtime(
        env.path("src/b.txt"),
        FileTime::from_unix_time(1_600_000_000, 0),
    )
    .expect("set mtime");
    write(env.path("src/new.txt"), "new\n");
    let third = stage();
    third.code(0);
    let j = third.json();
    assert_eq!(
        (&j["copied"], &j["skipped"], &j["changes"]),
        (
            &json!(2),
            &json!(2),
            &json!([[">", "b.txt"], ["+", "new.txt"]])
        ),
        "{third}"
    );
    assert_eq!(read(env.path("dest/b.txt")), b"BRAVO\n");
    env.sh(&env.path("dest"), "sha256sum --quiet -c MANIFEST.sha256")
        .code(0);
}

/// A source file rewritten with its size and mtime kept (`cp -p`, `touch -r`) looks
/// unchanged to the journal; once the source's manifest is made again it says otherwise,
/// and the file is copied again.
#[test]
fn a_source_rewritten_with_its_mtime_kept_is_copied_again_when_its_manifest_says_so() {
    let env = Env::new();
    let src = env.path("src");
    write(src.join("a.txt"), "alpha\n");
    write(src.join("b.txt"), "bravo\n");
    env.run(["manifest", "create", "src"]).code(0);
    let stage = || env.run(["stage", "src", "dest", "--project", "P", "--json"]);
    stage().code(0);

    let mtime =
        FileTime::from_last_modification_time(&fs::metadata(src.join("b.txt")).expect("stat"));
    write(src.join("b.txt"), "BRAVO\n");
    filetime::set_file_mtime(src.join("b.txt"), mtime).expect("set mtime");
    env.run(["manifest", "create", "src", "--force"]).code(0);
    let run = stage();
    run.code(0);
    let j = run.json();
    assert_eq!(
        (&j["copied"], &j["skipped"], &j["changes"]),
        (&json!(1), &json!(1), &json!([[">", "b.txt"]])),
        "{run}"
    );
    assert_eq!(read(env.path("dest/b.txt")), b"BRAVO\n");
    assert_manifest_verifies(&env.path("dest"));
}

#[test]
fn dry_run_itemizes_what_would_change_and_writes_nothing() {
    let env = Env::new();
    let src = env.path("src");
    write(src.join("a.txt"), "alpha\n");
    write(src.join("sub/b.txt"), "bravo\n");
    write(src.join("sub/c d.txt"), "charlie delta\n");
    write(src.join(common::name(common::NEWLINE)), "odd\n");
    fs::create_dir_all(src.join("empty")).expect("mkdir");
    fs::hard_link(src.join("a.txt"), src.join("a-again.txt")).expect("hard link");
    common::symlink("a.txt", src.join("link"));

    let run = env.run(["stage", "src", "dest", "--project", "P", "--dry-run"]);
    run.code(0);
    insta::assert_snapshot!("dry_run_itemized", run.stdout);
    assert_text(
        &run.err(),
        &format!(
            "{NO_POLICY_WARNING}\nwarning: {}\n\
             dry run: 6 to copy (30 B), 0 unchanged; nothing was written\n",
            no_manifest_warning("[ROOT]/src")
        ),
    );
    assert!(
        !env.path("dest").exists(),
        "a dry run created the destination"
    );

    // After a real stage: a changed source, a deleted and a damaged destination file.
    env.run(["stage", "src", "dest", "--project", "P"]).code(0);
    let dest = env.path("dest");
    write(src.join("sub/b.txt"), "bravo, changed\n");
    fs::remove_file(dest.join("sub/c d.txt")).expect("delete");
    write(
        dest.join(common::name(common::NEWLINE)),
        "damaged, and longer\n",
    );
    let before = common::fingerprint(&dest);
    let state_before = common::fingerprint(&dest.join(".hpcstage"));

    let run = env.run(["stage", "src", "dest", "--project", "P", "--dry-run"]);
    run.code(0);
    assert_text(
        &run.stdout,
        "! \\new\\nline.txt\n> sub/b.txt\n+ sub/c d.txt\n",
    );
    run.err_has("dry run: 3 to copy (33 B), 1 unchanged; nothing was written");
    assert_lines(&common::fingerprint(&dest), &before);
    assert_lines(&common::fingerprint(&dest.join(".hpcstage")), &state_before);

    // The real run does what the dry run said.
    let run = env.run(["stage", "src", "dest", "--project", "P", "--json"]);
    run.code(0);
    assert_eq!(
        run.json()["changes"],
        json!([
            ["!", "\\new\\nline.txt"],
            [">", "sub/b.txt"],
            ["+", "sub/c d.txt"]
        ]),
        "{run}"
    );
    assert_final_names_match_source(&src, &dest);
}

#[test]
fn include_and_exclude_globs_choose_the_files() {
    let env = Env::new();
    let src = env.path("src");
    for f in [
        "a.tif",
        "notes.txt",
        "sub/b.tif",
        "sub/c.csv",
        "sub/scratch/y.tif",
        "scratch/x.tif",
        "keep/d.csv",
    ] {
        write(src.join(f), f);
    }
    let run = env.run([
        "stage",
        "src",
        "dest",
        "--project",
        "P",
        "--include",
        "*.tif",
        "--include",
        "keep/*.csv",
        "--exclude",
        "scratch",
    ]);
    run.code(0);
    let dest = env.path("dest");
    assert_eq!(
        regular_files(&dest),
        ["MANIFEST.sha256", "a.tif", "keep/d.csv", "sub/b.tif"]
            .map(std::path::PathBuf::from)
            .to_vec()
    );
    assert_eq!(
        common::read_text(dest.join("MANIFEST.sha256"))
            .lines()
            .map(|l| &l[66..])
            .collect::<Vec<_>>(),
        ["a.tif", "keep/d.csv", "sub/b.tif"]
    );
    assert!(!dest.join("scratch").exists() && !dest.join("sub/scratch").exists());

    let bad = env.run([
        "stage",
        "src",
        "dest2",
        "--project",
        "P",
        "--include",
        "[oops",
    ]);
    bad.code(1).err_has("invalid glob \"[oops\"");
    assert!(!env.path("dest2").exists());
}

/// Parses an RFC 3339 timestamp from a record.
fn ts(v: &serde_json::Value) -> jiff::Timestamp {
    v.as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {v}"))
        .parse()
        .expect("RFC 3339 timestamp")
}

#[test]
fn a_stage_is_recorded_next_to_the_data_and_in_the_ledger_with_its_purge_deadline() {
    let env = Env::new();
    let ds = nas_dataset(&env);
    let started = jiff::Timestamp::now();
    let run = env.run_roots(["stage".as_ref(), ds.as_os_str(), "--json".as_ref()]);
    run.code(0);
    let finished = jiff::Timestamp::now();
    let dest = env.scratch().join("P1/plate7");

    let record: serde_json::Value =
        serde_json::from_slice(&read(dest.join(".hpcstage/stage.json"))).expect("stage.json");
    assert_eq!(
        run.json()["record"],
        record,
        "the printed record is the stored one"
    );
    assert_eq!(record["id"], "P1/plate7");
    assert_eq!(record["project"], "P1");
    assert_eq!(record["dataset"], "plate7");
    assert_eq!(record["source"], ds.display().to_string());
    assert_eq!(record["destination"], dest.display().to_string());
    assert_eq!(record["files"], 3);
    assert_eq!(record["bytes"], 26);
    assert_eq!(record["purge"]["basis"], "mtime");
    assert_eq!(record["purge"]["age"], "30 days");
    let digest = env.sh(&dest, "sha256sum < MANIFEST.sha256");
    assert_eq!(
        record["manifest_digest"].as_str(),
        Some(&digest.stdout[..64]),
        "manifest_digest is the SHA-256 of MANIFEST.sha256"
    );

    // Fresh copies on an mtime-purged scratch: the clock starts now, 30 days to go.
    let staged_at = ts(&record["staged_at"]);
    let oldest = ts(&record["purge"]["oldest"]);
    let deadline = ts(&record["purge"]["deadline"]);
    assert!(started <= staged_at && staged_at <= finished, "{record}");
    assert!(started <= oldest && oldest <= staged_at, "{record}");
    assert_eq!(deadline, oldest + jiff::SignedDuration::from_hours(30 * 24));

    let ledger: Vec<_> = fs::read_dir(env.state().join("stages"))
        .expect("ledger folder")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    let name = ledger[0]
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with("P1--plate7--") && name.ends_with(".json"),
        "{name}"
    );
    let in_ledger: serde_json::Value = serde_json::from_slice(&read(&ledger[0])).expect("JSON");
    assert_eq!(in_ledger, record);
}

fn old_source(env: &Env) -> std::path::PathBuf {
    let src = env.path("src");
    write(src.join("old.dat"), "from 2020\n");
    write(src.join("sub/older.dat"), "also from 2020\n");
    let t2020 = FileTime::from_unix_time(1_577_880_000, 123_456_789);
    for f in ["old.dat", "sub/older.dat"] {
        filetime::set_file_times(src.join(f), t2020, t2020).expect("set times");
    }
    src
}

#[test]
fn on_an_mtime_purged_scratch_old_source_mtimes_are_not_kept() {
    let env = Env::new();
    let src = old_source(&env);
    let started = FileTime::now();
    let run = env.run(["stage", "src", "dest", "--project", "P", "--json"]);
    run.code(0);
    for f in ["old.dat", "sub/older.dat"] {
        let m = fs::metadata(env.path("dest").join(f)).expect("stat");
        let mtime = FileTime::from_last_modification_time(&m);
        assert!(
            mtime.unix_seconds() >= started.unix_seconds() - 1,
            "{f}: destination mtime {mtime} is older than the stage (would be purged at once)"
        );
        let src_mtime =
            FileTime::from_last_modification_time(&fs::metadata(src.join(f)).expect("stat"));
        assert_eq!(
            src_mtime.unix_seconds(),
            1_577_880_000,
            "the source was touched"
        );
    }
    let deadline = ts(&run.json()["record"]["purge"]["deadline"]);
    let in_29_days = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(29 * 24);
    assert!(
        deadline > in_29_days,
        "deadline {deadline} is not ~30 days away"
    );

    // The journal remembers the source mtimes, so the rerun is still incremental.
    let again = env.run(["stage", "src", "dest", "--project", "P", "--json"]);
    again.code(0);
    assert_eq!(again.json()["copied"], 0, "{again}");
}

#[test]
fn with_an_atime_purge_policy_source_mtimes_are_kept() {
    let env = Env::new();
    let src = old_source(&env);
    write(
        env.site_config(),
        "[purge]\nbasis = \"atime\"\nage = \"60d\"\n",
    );
    let run = env.run(["stage", "src", "dest", "--project", "P", "--json"]);
    run.code(0).err_lacks("no purge policy configured");
    for f in ["old.dat", "sub/older.dat"] {
        let s = fs::metadata(src.join(f)).expect("stat");
        let d = fs::metadata(env.path("dest").join(f)).expect("stat");
        assert_eq!(
            (d.mtime(), d.mtime_nsec()),
            (s.mtime(), s.mtime_nsec()),
            "{f}: mtime not preserved"
        );
    }
    let record = &run.json()["record"];
    assert_eq!(record["purge"]["basis"], "atime");
    assert_eq!(record["purge"]["age"], "60 days");
    // atime under relatime can lag a day: the deadline is pulled in by one.
    let oldest = ts(&record["purge"]["oldest"]);
    assert_eq!(
        ts(&record["purge"]["deadline"]),
        oldest + jiff::SignedDuration::from_hours(59 * 24)
    );
    // ... and the human output says why the days left are one fewer than the age.
    let run = env.run(["stage", "src", "dest", "--project", "P"]);
    run.code(0)
        .out_has("purge: atime older than 60 days → deadline ")
        .err_has("the atime deadline is a day early on purpose: under relatime");
}

#[test]
fn the_json_summary_of_a_stage_parses_and_adds_up() {
    let env = Env::new();
    let src = env.path("src");
    tricky_tree(&src);
    let run = env.run(["stage", "src", "dest", "--project", "P", "--json"]);
    run.code(0);
    // With --json, stdout is exactly one JSON document.
    let j = run.json();
    assert_eq!(j["ok"], true);
    assert_eq!(j["dry_run"], false);
    assert_eq!(j["files_total"], 12);
    assert_eq!(j["copied"], 10);
    assert_eq!(j["hard_links"], 2);
    assert_eq!(j["symlinks"], 4);
    assert_eq!(j["dirs"], 5);
    // Hard links cost no bytes: "a b.txt" (19 bytes) is copied once for its three names.
    assert_eq!(
        j["bytes_copied"].as_u64().expect("number") + 2 * 19,
        j["bytes_total"].as_u64().expect("number"),
        "{run}"
    );
    assert_eq!(j["failed"], json!([]));
    assert_eq!(j["source_manifest_used"], false);
    assert_eq!(
        j["warnings"],
        json!([
            "outside: symlink points outside the tree (/etc/passwd); copied as a link, not followed",
            "sub/escape: symlink points outside the tree (../../elsewhere); copied as a link, not followed",
            no_manifest_warning(&src.display().to_string()),
        ])
    );
    let files: u64 = regular_files(&src)
        .iter()
        .map(|f| fs::metadata(src.join(f)).expect("stat").len())
        .sum();
    assert_eq!(j["bytes_total"], files);
    assert_eq!(j["record"]["files"], 12);
    assert_eq!(
        j["manifest_digest"], j["record"]["manifest_digest"],
        "{run}"
    );
}

#[test]
fn staging_into_an_existing_verified_copy_of_read_only_data_works_again() {
    // Raw data is read-only on the NAS; a second stage of it must still be able to add a
    // file to a read-only folder at the destination and put its mode back.
    let env = Env::new();
    let src = env.path("src");
    write(src.join("ro/a.txt"), "a\n");
    common::chmod(src.join("ro/a.txt"), 0o444);
    common::chmod(src.join("ro"), 0o555);
    env.run(["stage", "src", "dest", "--project", "P"]).code(0);
    common::chmod(src.join("ro"), 0o755);
    write(src.join("ro/b.txt"), "b\n");
    common::chmod(src.join("ro"), 0o555);
    env.run(["stage", "src", "dest", "--project", "P"]).code(0);
    assert_eq!(read(env.path("dest/ro/b.txt")), b"b\n");
    assert_eq!(mode(env.path("dest/ro")), 0o555);
    assert_final_names_match_source(&src, &env.path("dest"));
}

/// Big files of awkward lengths, as the copy engine streams them: past the page cache on a
/// disk filesystem, through it on tmpfs (which refuses direct I/O). Either way the bytes
/// arrive exactly, the holes of a sparse file stay holes, and sha256sum agrees.
#[test]
fn big_files_of_odd_lengths_arrive_exactly_with_or_without_direct_io() {
    let env = Env::new();
    let src = env.path("src");
    let sizes = [
        (8 << 20) + 1,     // just past the streaming threshold
        (9 << 20) + 4095,  // a tail one byte short of a block
        (12 << 20) - 4096, // whole blocks, no tail
        (65 << 20) + 513,  // past the batch size: flushed by itself
    ];
    for (i, size) in sizes.into_iter().enumerate() {
        write(
            src.join(format!("img/tile{i}.tif")),
            noise(700 + i as u64, size),
        );
    }
    // A sparse 20 MiB file: data in the middle, a hole at each end.
    let sparse = fs::File::create(src.join("img/sparse.raw")).expect("create sparse file");
    sparse.set_len(20 << 20).expect("size sparse file");
    std::os::unix::fs::FileExt::write_all_at(&sparse, &noise(799, 300_000), 9 << 20)
        .expect("write into sparse file");
    drop(sparse);

    let mut dests = vec![env.path("dest")];
    let _tmpfs = is_root().then(|| {
        let mount = env.path("mem");
        let guard = Mount::new("tmpfs", "size=256m", &mount);
        dests.push(mount.join("dest"));
        guard
    });
    for dest in &dests {
        let rel = dest.strip_prefix(&env.root).expect("inside the world");
        let rel = rel.to_str().expect("a UTF-8 path");
        env.run(["stage", "src", rel, "--project", "P"]).code(0);
        assert_eq!(
            assert_final_names_match_source(&src, dest),
            5,
            "{}",
            dest.display()
        );
        assert_eq!(temporaries(dest), Vec::<std::path::PathBuf>::new());
        assert_manifest_verifies(dest);
        let sparse = fs::metadata(dest.join("img/sparse.raw")).expect("stat");
        assert_eq!(sparse.len(), 20 << 20);
        assert!(
            sparse.blocks() * 512 <= 8 << 20,
            "{}: sparse.raw was filled in: {} blocks",
            dest.display(),
            sparse.blocks()
        );
    }
}

/// A folder of the destination can be another filesystem, mounted inside it. The batch
/// flush of the destination's own filesystem does not reach it, so its files are flushed
/// one by one: their read-back still comes from storage, here the loop device under the
/// mount (every byte staged there is read from it), not from dirty cached pages.
#[test]
fn files_on_a_filesystem_mounted_inside_the_destination_are_read_back_from_its_device() {
    common::needs_root!();
    let env = Env::new();
    let src = env.path("src");
    write(src.join("top.dat"), noise(800, 1000));
    let mut staged_there = 0;
    for i in 0..24u64 {
        let len = (150 << 10) + i as usize * 4099;
        write(src.join(format!("sub/f{i:02}.dat")), noise(801 + i, len));
        staged_there += len as u64;
    }
    // Streamed and read back past the cache as it is written.
    write(src.join("sub/big.tif"), noise(830, (10 << 20) + 17));
    staged_there += (10 << 20) + 17;

    let dest = env.path("dest");
    let mount = Mount::ext4_image(&env.path("sub.img"), 64, &dest.join("sub"));
    let device = env
        .sh(&env.root, "findmnt -n -o SOURCE --mountpoint dest/sub")
        .code(0)
        .stdout
        .trim()
        .to_string();
    let name = device
        .strip_prefix("/dev/")
        .expect("a /dev path")
        .to_string();
    let sectors_read = || -> u64 {
        let stat = fs::read_to_string(format!("/sys/block/{name}/stat")).expect("device stat");
        stat.split_whitespace()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .expect("sectors read")
    };

    let before = sectors_read();
    env.run(["stage", "src", "dest", "--project", "P"]).code(0);
    let read_from_device = (sectors_read() - before) * 512;
    assert!(
        read_from_device >= staged_there,
        "{read_from_device} bytes read from {device} during the stage, \
         {staged_there} staged onto it: a read-back was answered by the cache"
    );
    assert_eq!(assert_final_names_match_source(&src, &dest), 26);
    assert_eq!(temporaries(&dest), Vec::<std::path::PathBuf>::new());
    assert_manifest_verifies(&dest);
    drop(mount);
}

/// `stage <nas>/PRJ/raw` (the dataset name forgotten) would copy every dataset of the
/// project as one named `raw`: refused, naming a dataset to stage instead, unless asked.
#[test]
fn a_projects_whole_raw_area_is_refused_unless_asked_for() {
    let env = Env::new();
    let raw = env.nas().join("P/raw");
    write(raw.join("plate7/a.tif"), "a");
    write(raw.join("plate8/b.tif"), "b");

    let run = env.run_roots(["stage".as_ref(), raw.as_os_str()]);
    run.code(1).err_has(
        "this is a project's raw/ area (it holds plate7, plate8, ...), not one dataset; \
         stage one dataset, e.g. [ROOT]/nas/P/raw/plate7, or pass --allow-raw-area",
    );
    assert!(!env.scratch().join("P").exists());

    // A dataset that is itself called `raw` is a dataset.
    write(raw.join("raw/c.tif"), "c");
    env.run_roots(["stage".as_ref(), raw.join("raw").as_os_str()])
        .code(0);

    let run = env.run_roots([
        "stage".as_ref(),
        raw.as_os_str(),
        "--allow-raw-area".as_ref(),
    ]);
    run.code(0);
    // Said once: nothing in a raw area as a whole is checked against a manifest.
    assert_eq!(
        run.err().matches("no MANIFEST.sha256 in").count(),
        1,
        "{run}"
    );
    assert!(env.scratch().join("P/raw/plate7/a.tif").is_file());
}

#[test]
fn a_stage_that_cannot_start_leaves_no_record() {
    let env = Env::new();
    let missing = env.nas().join("P1/raw/nothing");
    env.run_roots(["stage".as_ref(), missing.as_os_str()])
        .code(1);
    assert!(!env.scratch().join("P1/nothing").exists());
    let ledger = env.state().join("stages");
    assert!(
        fs::read_dir(&ledger).map_or(true, |mut d| d.next().is_none()),
        "a ledger entry was left for a stage that never started"
    );
}
