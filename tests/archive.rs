//! `hpcstage archive`: cold-archive packages read back with GNU tar, bsdtar and sha256sum,
//! byte-identical when made again, checked by `archive verify`, restored one file at a
//! time with a seek, and resumed after `kill -9`; the results of a pulled run archived by
//! its id; `copies` (3-2-1) before and after an archive and declared copies; snapshots and
//! holds on zfs-fuse; archives on S3 (the Ceph RadosGW of tests/s3/): round trip, a
//! one-file restore whose bytes are counted at a relay, a changed chunk caught, Object
//! Lock retention, `kill -9` and rerun, refused credentials, 3-2-1 with an object store.

#![allow(clippy::print_stderr)]

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;

use common::s3::{locked_bucket, plain_bucket, relay, S3World};
use common::{
    all_entries, assert_manifest_verifies, noise, read, tricky_tree, wait_for, write, Env, Run,
};

/// `nas/PRJ/raw/ds`, ingested from `acq` (the tricky tree, plus `big.bin` of 3 MiB, larger
/// than the 1 MiB chunks the tests use, so it is split).
fn dataset(env: &Env) -> PathBuf {
    let acq = env.path("acq");
    tricky_tree(&acq);
    write(acq.join("big.bin"), noise(11, 3 << 20));
    env.run_roots(["ingest", "acq", "--project", "PRJ", "--dataset", "ds"])
        .code(0);
    env.nas().join("PRJ/raw/ds")
}

fn archive(env: &Env, to: &str, extra: &[&str]) -> Run {
    let mut args = vec![
        "archive",
        "PRJ/raw/ds",
        "--to",
        to,
        "--chunk-size",
        "1MiB",
        "--json",
    ];
    args.extend_from_slice(extra);
    env.run_roots(args)
}

/// The archive folder (`DEST/<ID>`) an archive run reports.
fn archive_dir(run: &Run) -> PathBuf {
    PathBuf::from(run.json()["record"]["location"].as_str().expect("location"))
}

fn chunks(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read archive folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    out.sort();
    out
}

/// Extracts every chunk with `tool` (`tar` or `bsdtar`) into `into`, then runs the
/// README's commands that put split files together.
fn extract_like_the_readme(env: &Env, tool: &str, dir: &Path, into: &Path) {
    fs::create_dir_all(into).expect("mkdir");
    for c in chunks(dir) {
        let run = env.sh(into, &format!("{tool} -xpf '{}'", c.display()));
        assert_eq!(
            run.code,
            Some(0),
            "{tool} cannot read {} alone\n{run}",
            c.display()
        );
    }
    let readme = fs::read_to_string(dir.join("README.txt")).expect("README.txt");
    let mut ran = 0;
    for line in readme.lines() {
        let line = line.trim_start();
        if ["cat '", "ln '", "chmod "]
            .iter()
            .any(|p| line.starts_with(p))
        {
            env.sh(into, line).code(0);
            ran += 1;
        }
    }
    assert!(
        ran > 0,
        "the README says how to put big.bin together:\n{readme}"
    );
}

/// Mode and (for files and links) content and mtime of every entry, and which names
/// share an inode.
fn shape(root: &Path) -> Vec<String> {
    let entries = all_entries(root);
    entries
        .iter()
        .map(|rel| {
            let p = root.join(rel);
            let m = fs::symlink_metadata(&p).expect("stat");
            let links: Vec<&PathBuf> = entries
                .iter()
                .filter(|o| {
                    let om = fs::symlink_metadata(root.join(o)).expect("stat");
                    m.is_file() && om.ino() == m.ino()
                })
                .collect();
            let mtime = if m.is_dir() { 0 } else { m.mtime() };
            format!(
                "{rel:?} mode={:o} size={} mtime={mtime} names={links:?}",
                m.mode(),
                m.size()
            )
        })
        .collect()
}

#[test]
fn a_tricky_dataset_extracts_with_gnu_tar_and_bsdtar_to_an_identical_tree() {
    let env = Env::new();
    let ds = dataset(&env);
    let run = archive(&env, "tape", &[]);
    run.code(0);
    let dir = archive_dir(&run);
    assert!(dir.starts_with(env.path("tape")), "{}", dir.display());
    assert!(
        chunks(&dir).len() >= 4,
        "big.bin is split: {:?}",
        chunks(&dir)
    );
    for c in chunks(&dir) {
        assert!(
            fs::metadata(&c).expect("chunk").len() <= 1 << 20,
            "{} is at most 1 MiB",
            c.display()
        );
    }
    // The archive's own manifest, with sha256sum.
    env.sh(&dir, "sha256sum --strict -c ARCHIVE-MANIFEST.sha256")
        .code(0);
    let index = fs::read_to_string(dir.join("ARCHIVE-INDEX.tsv")).expect("index");
    assert!(
        index.contains("\tsparse\t16777216\t"),
        "sparse.img is stored with its holes:\n{index}"
    );
    assert!(
        index.contains("\tsplit\t3145728\t"),
        "big.bin is split:\n{index}"
    );
    assert!(
        index.contains("new\\nline.txt"),
        "names escaped in the index:\n{index}"
    );

    for tool in ["tar", "bsdtar"] {
        let into = env.path(format!("x-{tool}"));
        extract_like_the_readme(&env, tool, &dir, &into);
        let back = into.join("ds");
        assert_manifest_verifies(&back);
        let diff = env.sh(
            &env.root,
            &format!(
                "diff -r --no-dereference '{}' '{}'",
                ds.display(),
                back.display()
            ),
        );
        assert_eq!(
            diff.code,
            Some(0),
            "{tool}: the extracted tree differs\n{diff}"
        );
        assert_eq!(
            shape(&back),
            shape(&ds),
            "{tool}: modes, mtimes, hard links"
        );
        let sparse = fs::metadata(back.join("sparse.img")).expect("sparse.img");
        assert!(
            sparse.blocks() * 512 < 1 << 20,
            "{tool}: sparse.img keeps its holes ({} blocks)",
            sparse.blocks()
        );
    }
    // Recorded in the ledger and beside the dataset on the NAS.
    let id = run.json()["record"]["id"].as_str().expect("id").to_string();
    let nas_records = env.nas().join("PRJ/raw/.hpcstage-archives/ds");
    let listed: Vec<_> = fs::read_dir(&nas_records).expect("NAS record").collect();
    assert_eq!(listed.len(), 1, "one record on the NAS");
    let record = common::fs::read_json(listed[0].as_ref().expect("entry").path());
    assert_eq!(record["id"], id.as_str());
    assert_eq!(
        record["chunks"].as_array().expect("chunks").len(),
        chunks(&dir).len()
    );
    // Write-protected.
    assert_eq!(fs::metadata(&dir).expect("dir").mode() & 0o222, 0);
    // list names every file.
    env.run(["archive", "list", &id])
        .code(0)
        .out_has("sparse.img")
        .out_has("big.bin.part-0001");
}

#[test]
fn the_same_dataset_archived_again_gives_identical_chunks() {
    let env = Env::new();
    dataset(&env);
    let first = archive(&env, "tape1", &[]);
    first.code(0);
    let second = archive(&env, "tape2", &[]);
    second.code(0);
    let (a, b) = (archive_dir(&first), archive_dir(&second));
    assert_eq!(a.file_name(), b.file_name(), "the same id");
    let names: Vec<_> = chunks(&a)
        .iter()
        .map(|c| c.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        chunks(&b)
            .iter()
            .map(|c| c.file_name().unwrap().to_owned())
            .collect::<Vec<_>>()
    );
    for name in names.iter().map(PathBuf::from).chain([
        PathBuf::from("ARCHIVE-INDEX.tsv"),
        PathBuf::from("ARCHIVE-MANIFEST.sha256"),
    ]) {
        assert!(
            fs::read(a.join(&name)).unwrap() == fs::read(b.join(&name)).unwrap(),
            "{} differs",
            name.display()
        );
    }
    // Run again: nothing written; an archive left writable (killed before its protection)
    // is protected now.
    common::fs::make_writable(&a);
    let again = archive(&env, "tape1", &[]);
    again.code(0);
    assert_eq!(again.json()["already"], true);
    assert_eq!(
        fs::metadata(&a).unwrap().mode() & 0o222,
        0,
        "read-only again"
    );
    assert_eq!(
        fs::metadata(a.join("chunk-00001.tar")).unwrap().mode() & 0o222,
        0
    );

    // Two copies of one archive: `archive verify ID` asks which.
    let id = first.json()["record"]["id"].as_str().unwrap().to_string();
    env.run(["archive", "verify", &id])
        .code(1)
        .err_has("name the one you mean by its folder");
}

/// The byte offset of `member`'s data in its chunk, from the index.
fn offset_of(dir: &Path, member: &str) -> (String, u64) {
    let index = fs::read_to_string(dir.join("ARCHIVE-INDEX.tsv")).expect("index");
    let line = index
        .lines()
        .find(|l| l.starts_with("member\t") && l.split('\t').nth(9) == Some(member))
        .unwrap_or_else(|| panic!("{member} in the index:\n{index}"));
    let f: Vec<&str> = line.split('\t').collect();
    (f[1].to_string(), f[2].parse().expect("offset"))
}

#[test]
fn a_flipped_byte_is_caught_by_verify_naming_the_member() {
    let env = Env::new();
    dataset(&env);
    let run = archive(&env, "tape", &[]);
    run.code(0);
    let dir = archive_dir(&run);
    let id = run.json()["record"]["id"].as_str().unwrap().to_string();
    env.run(["archive", "verify", &id]).code(0).out_has("OK");

    let (chunk, offset) = offset_of(&dir, "sub/deep/data.bin");
    common::fs::make_writable(&dir);
    let path = dir.join(&chunk);
    let mut bytes = fs::read(&path).unwrap();
    bytes[offset as usize + 100] ^= 0x01;
    fs::write(&path, bytes).unwrap();

    let bad = env.run(["archive", "verify", &id]);
    bad.code(3)
        .out_has("sub/deep/data.bin: FAILED")
        .out_has(&format!("{chunk}: FAILED"));
    assert!(
        !bad.out().contains("a b.txt: FAILED"),
        "only the damaged member is named\n{bad}"
    );
    // The folder works as well as the id.
    env.run(["archive", "verify", dir.to_str().unwrap(), "--json"])
        .code(3);
    // A restore of the damaged file refuses to give it a name.
    env.run([
        "archive",
        "restore",
        &id,
        "--file",
        "sub/deep/data.bin",
        "--to",
        "back",
    ])
    .code(3)
    .err_has("the index says");
    assert!(!env.path("back/data.bin").exists());
}

/// Runs `hpcstage ARGS` under bash and returns its outcome and the bytes it read from
/// storage (`read_bytes` of /proc/PID/io of the shell, which adds its children's when it
/// reaps them).
fn run_counting_reads(env: &Env, args: &[&str]) -> (Run, u64) {
    let base = env.command();
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(r#""$0" "$@"; s=$?; grep read_bytes /proc/$$/io >&2; exit $s"#)
        .arg(base.get_program())
        .args(args)
        .env_clear();
    for (k, v) in base.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd.current_dir(&env.root);
    let run = env.finish(cmd);
    let read = run
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("read_bytes: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no read_bytes\n{run}"));
    (run, read)
}

#[test]
fn one_file_of_a_four_chunk_archive_is_restored_reading_only_its_bytes() {
    let env = Env::new();
    let acq = env.path("acq");
    for i in 0..4u64 {
        write(acq.join(format!("f{i}.bin")), noise(i, 8 << 20));
    }
    env.run_roots(["ingest", "acq", "--project", "PRJ", "--dataset", "ds"])
        .code(0);
    let run = env.run_roots([
        "archive",
        "PRJ/raw/ds",
        "--to",
        "tape",
        "--chunk-size",
        "9MiB",
        "--json",
    ]);
    run.code(0);
    let dir = archive_dir(&run);
    assert_eq!(chunks(&dir).len(), 4, "{:?}", chunks(&dir));
    let total: u64 = chunks(&dir)
        .iter()
        .map(|c| fs::metadata(c).unwrap().len())
        .sum();
    let id = run.json()["record"]["id"].as_str().unwrap().to_string();

    let (restore, read) = run_counting_reads(
        &env,
        &[
            "archive", "restore", &id, "--file", "f2.bin", "--to", "back", "--json",
        ],
    );
    restore.code(0);
    assert_eq!(restore.json()["bytes_read"], 8 << 20, "{restore}");
    assert_eq!(common::read(env.path("back/f2.bin")), noise(2, 8 << 20));
    // What the process read from storage: the member (past the page cache) and little
    // else; far from the 4 chunks, or even 2.
    assert!(read >= 8 << 20, "the member is read from storage: {read}");
    assert!(
        read < (8 << 20) + (2 << 20),
        "read {read} bytes for an 8 MiB file of a {total}-byte archive"
    );
}

#[test]
fn kill_9_mid_archive_leaves_no_unverified_chunk_and_a_rerun_completes() {
    let env = Env::new();
    let acq = env.path("acq");
    for i in 0..48u64 {
        write(acq.join(format!("f{i:02}.bin")), noise(i, 1 << 20));
    }
    env.run_roots(["ingest", "acq", "--project", "PRJ", "--dataset", "ds"])
        .code(0);
    let dest = env.path("tape");
    let mut cmd = env.command();
    cmd.arg("--nas-root").arg(env.nas());
    cmd.args([
        "archive",
        "PRJ/raw/ds",
        "--to",
        "tape",
        "--chunk-size",
        "1MiB",
    ]);
    let mut child = cmd.spawn().expect("spawn archive");
    let chunk_count = |dest: &Path| -> usize {
        fs::read_dir(dest)
            .into_iter()
            .flatten()
            .flatten()
            .map(|d| chunks(&d.path()).len())
            .sum()
    };
    wait_for(&mut child, "three chunks", || chunk_count(&dest) >= 3);
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    let dir = fs::read_dir(&dest).unwrap().next().unwrap().unwrap().path();
    assert!(
        !dir.join("ARCHIVE-INDEX.tsv").exists(),
        "killed before the end"
    );
    // An archive never interrupted, to compare with.
    let fresh = archive_dir(&env.run_roots([
        "archive",
        "PRJ/raw/ds",
        "--to",
        "fresh",
        "--chunk-size",
        "1MiB",
        "--json",
    ]));
    // Under a chunk's name there are only whole, verified bytes (a chunk is renamed
    // after its read-back); the journal vouches for nothing else.
    let journal = fs::read_to_string(dir.join(".hpcstage/archive-journal")).unwrap_or_default();
    for c in chunks(&dir) {
        let name = c.file_name().unwrap();
        assert!(
            fs::read(&c).unwrap() == fs::read(fresh.join(name)).unwrap(),
            "{} holds other bytes than the finished chunk",
            c.display()
        );
    }
    for line in journal.lines() {
        let j: serde_json::Value = serde_json::from_str(line).expect("journal line");
        let c = dir.join(j["name"].as_str().unwrap());
        let digest = hpcstage_staging::hash::Digest::of(&fs::read(&c).unwrap()).to_hex();
        assert_eq!(
            j["sha256"].as_str(),
            Some(digest.as_str()),
            "{}",
            c.display()
        );
    }
    let rerun = env.run_roots([
        "archive",
        "PRJ/raw/ds",
        "--to",
        "tape",
        "--chunk-size",
        "1MiB",
    ]);
    rerun.code(0).out_has("kept from an earlier run");
    assert!(!dir.join(".hpcstage").exists(), "no resume state left");
    env.sh(&dir, "sha256sum --strict -c ARCHIVE-MANIFEST.sha256")
        .code(0);
    env.run(["archive", "verify", dir.to_str().unwrap()])
        .code(0);
    // The same bytes as an archive never interrupted.
    let fresh = archive_dir(&env.run_roots([
        "archive",
        "PRJ/raw/ds",
        "--to",
        "fresh",
        "--chunk-size",
        "1MiB",
        "--json",
    ]));
    for c in chunks(&fresh) {
        assert!(fs::read(&c).unwrap() == fs::read(dir.join(c.file_name().unwrap())).unwrap());
    }
}

#[test]
fn copies_says_3_2_1_fails_for_one_copy_and_holds_after_an_archive_and_declared_copies() {
    let env = Env::new();
    let acq = env.path("acq");
    write(acq.join("a.txt"), "a\n");
    write(acq.join("sub/b.bin"), noise(3, 4096));
    env.run_roots(["ingest", "acq", "--project", "PRJ", "--dataset", "ds"])
        .code(0);

    let one = env.run_roots(["copies", "PRJ/ds", "--json"]);
    one.code(0);
    let d = &one.json()[0];
    assert_eq!(d["holds"], false, "{one}");
    assert_eq!(d["copies"].as_array().unwrap().len(), 1);
    assert_eq!(d["copies"][0]["kind"], "nas");
    env.run_roots(["copies", "--fail-on-risk"])
        .code(5)
        .out_has("3-2-1: FAILS (1 of the 3 copies needed; one kind of media (disk), 2 needed; no copy off-site)");

    // The weekly report names it.
    env.run_roots(["report", "--copies", "--fail-on-risk"])
        .code(5)
        .out_has("3-2-1: 1 raw datasets break it")
        .out_has("PRJ/ds");

    // An archive to an off-site tape, and a USB disk declared in the config.
    env.run_roots([
        "archive",
        "PRJ/raw/ds",
        "--to",
        "tape",
        "--media",
        "tape",
        "--offsite",
    ])
    .code(0);
    let usb = env.path("usb/PRJ/ds");
    fs::create_dir_all(usb.parent().unwrap()).unwrap();
    env.sh(
        &env.root,
        &format!(
            "cp -a '{}' '{}'",
            env.nas().join("PRJ/raw/ds").display(),
            usb.display()
        ),
    )
    .code(0);
    write(
        env.user_config(),
        format!(
            "[[copies]]\nname = \"usb\"\nlocation = \"{}/usb/{{project}}/{{dataset}}\"\nmedia = \"disk\"\noffsite = false\n",
            env.root.display()
        ),
    );
    let three = env.run_roots(["copies", "PRJ/ds", "--verify", "--fail-on-risk", "--json"]);
    three.code(0);
    let d = &three.json()[0];
    assert_eq!(d["holds"], true, "{three}");
    let kinds: Vec<&str> = d["copies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["nas", "archive", "declared"]);
    for c in d["copies"].as_array().unwrap() {
        assert_eq!(c["status"], "ok", "{c}");
        assert!(c["last_verified"].is_string(), "{c}");
    }

    env.run_roots([
        "report",
        "--copies",
        "--fail-on-risk",
        "--format",
        "markdown",
    ])
    .code(0)
    .out_has("## Raw datasets that break 3-2-1")
    .out_has("None: every raw dataset has 3 copies");

    // A damaged declared copy is found by --verify and no longer counts.
    common::fs::make_writable(&usb);
    write(usb.join("a.txt"), "b\n");
    let bad = env.run_roots(["copies", "PRJ/ds", "--verify"]);
    bad.code(3)
        .out_has("failed: 1 FAILED")
        .out_has("3-2-1: FAILS (2 of the 3 copies needed)");

    // An archive whose folder is gone from this machine (an unmounted tape) is unreachable,
    // with the folder named; it is not read as an empty archive.
    fs::rename(env.path("tape"), env.path("tape-elsewhere")).unwrap();
    let gone = env.run_roots(["copies", "PRJ/ds", "--verify", "--json"]);
    let archive = gone.json()[0]["copies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "archive")
        .cloned()
        .unwrap_or_else(|| panic!("no archive copy listed: {gone}"));
    assert_eq!(archive["status"], "unreachable", "{gone}");
    let detail = archive["detail"].as_str().unwrap();
    assert!(
        detail.contains(&env.path("tape").display().to_string())
            && detail.contains("not a folder of this machine"),
        "{detail}"
    );

    // An SSH host is no archive destination: refused before anything is written, with the
    // host named and where to archive instead.
    env.run_roots(["archive", "PRJ/raw/ds", "--to", "tapehost:/srv/tape"])
        .code(1)
        .err_has("tapehost:/srv/tape")
        .err_has("a NAS reached over SSH")
        .err_has("or to an s3:// prefix");
    assert!(!env.path("tapehost:").exists());
}

#[test]
fn the_results_of_a_pulled_run_are_archived_by_its_id() {
    let Some(_cluster) = common::cluster::cluster() else {
        return;
    };
    let lab = common::pull::Lab::new();
    let raw = lab.ingest("d1");
    let predict = lab.stand_in(
        "predict",
        r#"{ tiny_mask; printf 'mask of %s\n' "$(basename "$input")"; } >"$mask"
printf 'label,area\n1,%s\n' "$(stat -c %s "$input")" >"$table""#,
    );
    let chain = lab.submit(&raw, &predict, &[], true);
    let bound = std::time::Duration::from_secs(120);
    common::pull::wait_ended(&chain.compute_job, bound);
    let pulled = common::pull::wait_ended(chain.pull_job.as_deref().expect("pull-back job"), bound);
    assert_eq!(pulled.state, "COMPLETED", "{pulled:?}");

    let run = lab.run(["archive", &chain.run_id, "--to", "tape", "--json"]);
    run.code(0);
    let record = &run.json()["record"];
    assert_eq!(record["kind"], "run");
    assert_eq!(record["name"], chain.run_id.as_str());
    assert_eq!(record["source"], chain.results_dir.to_str().unwrap());
    let dir = PathBuf::from(record["location"].as_str().unwrap());
    let into = lab.path("x");
    fs::create_dir_all(&into).unwrap();
    for c in chunks(&dir) {
        let mut tar = common::run::clean("tar");
        tar.arg("-xf").arg(&c).current_dir(&into);
        Run::of(tar).code(0);
    }
    assert_manifest_verifies(&into.join(&chain.run_id));
    // The record beside the results on the NAS.
    let beside = chain
        .results_dir
        .parent()
        .unwrap()
        .join(".hpcstage-archives")
        .join(&chain.run_id);
    assert_eq!(fs::read_dir(beside).expect("NAS record").count(), 1);
}

/// A ZFS pool on a file vdev under the test's folder, mounted at `mountpoint`; destroyed
/// (holds released) when dropped. Needs the zfs-fuse daemon (scripts/test starts it).
struct Pool {
    name: String,
}

impl Pool {
    fn new(env: &Env, mountpoint: &Path) -> Option<Pool> {
        let answers = Command::new("zpool")
            .arg("list")
            .output()
            .is_ok_and(|o| o.status.success());
        if !common::gate::service(
            "zfs",
            answers,
            "zfs-fuse is not running: install zfs-fuse and start it as root (`zfs-fuse`), as scripts/test does",
        ) {
            return None;
        }
        let name = format!("hpcst{}", std::process::id());
        let vdev = env.path("vdev.img");
        fs::File::create(&vdev).unwrap().set_len(128 << 20).unwrap();
        let mut cmd = common::run::clean("zpool");
        cmd.args(["create", "-o", "cachefile=none", "-m"])
            .arg(mountpoint)
            .arg(&name)
            .arg(&vdev);
        Run::of(cmd).code(0);
        Some(Pool { name })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let snaps = Command::new("zfs")
            .args([
                "list", "-H", "-t", "snapshot", "-o", "name", "-r", &self.name,
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for s in snaps.lines() {
            let _ = Command::new("zfs")
                .args(["release", "hpcstage", s])
                .output();
        }
        // The FUSE mount may still be busy for a moment after the last command.
        for _ in 0..20 {
            let destroyed = Command::new("zpool")
                .args(["destroy", "-f", &self.name])
                .output()
                .is_ok_and(|o| o.status.success());
            if destroyed {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        eprintln!("zpool destroy -f {} failed: destroy it by hand", self.name);
    }
}

#[test]
fn on_zfs_ingest_and_archive_take_a_held_snapshot_that_cannot_be_destroyed() {
    let env = Env::new();
    // The NAS is a ZFS filesystem.
    let Some(pool) = Pool::new(&env, &env.nas()) else {
        return;
    };
    let acq = env.path("acq");
    write(acq.join("a.txt"), "a\n");
    let ingest = env.run_roots([
        "ingest",
        "acq",
        "--project",
        "PRJ",
        "--dataset",
        "ds",
        "--json",
    ]);
    ingest.code(0);
    let zfs = ingest.json()["zfs"].as_str().unwrap().to_string();
    let snapshot = format!(
        "{}@hpcstage-PRJ-ds-{}",
        pool.name,
        common::today().replace('-', "")
    );
    assert_eq!(zfs, format!("ZFS snapshot {snapshot} held (hpcstage)"));
    let listed = common::run::tool("zfs", &["list", "-H", "-t", "snapshot", "-o", "name"]);
    assert!(listed.stdout.lines().any(|l| l == snapshot), "{listed}");
    // The hold keeps it.
    let destroy = common::run::tool("zfs", &["destroy", &snapshot]);
    assert_ne!(destroy.code, Some(0), "{destroy}");
    assert!(destroy.stderr.contains("dataset is busy"), "{destroy}");

    let archive = env.run_roots(["archive", "PRJ/raw/ds", "--to", "tape", "--json"]);
    archive.code(0);
    assert_eq!(archive.json()["record"]["zfs_snapshot"], zfs.as_str());
    // `copies` shows the snapshot, and does not count it.
    let copies = env.run_roots(["copies", "PRJ/ds", "--json"]);
    let kinds: Vec<String> = copies.json()[0]["copies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                c["kind"].as_str().unwrap(),
                c["name"].as_str().unwrap()
            )
        })
        .collect();
    assert!(kinds.contains(&format!("snapshot {snapshot}")), "{kinds:?}");
    assert!(copies.out().contains("taken by ingest"), "{copies}");
}

#[test]
fn elsewhere_ingest_says_there_is_no_zfs_snapshot() {
    let env = Env::new();
    write(env.path("acq/a.txt"), "a\n");
    env.run_roots(["ingest", "acq", "--project", "PRJ", "--dataset", "ds"])
        .code(0)
        .err_has("not on a ZFS filesystem: no snapshot; protected by chmod");
}

// ---------------------------------------------------------------------------------------
// Archives on S3 (the Ceph RadosGW of tests/s3/), looked at with the AWS CLI.

/// `nas/PRJ/raw/ds` of `files` (name, bytes), ingested in `w`'s world.
fn s3_dataset(w: &S3World, files: &[(&str, Vec<u8>)]) {
    for (name, bytes) in files {
        write(w.env.path("acq").join(name), bytes);
    }
    w.env
        .run_roots(["ingest", "acq", "--project", "PRJ", "--dataset", "ds"])
        .code(0);
}

/// `archive PRJ/raw/ds --to URL --json ARGS...`
fn archive_to(w: &S3World, url: &str, extra: &[&str]) -> Run {
    let mut args = vec!["archive", "PRJ/raw/ds", "--to", url, "--json"];
    args.extend_from_slice(extra);
    w.env.run_roots(args)
}

/// The keys under the archive's prefix (relative to it), sorted.
fn s3_objects(w: &S3World, bucket: &str, location: &str) -> Vec<String> {
    let run = w.aws(&["s3", "ls", "--recursive", &format!("{location}/")]);
    run.code(0);
    let prefix = location.trim_start_matches(&format!("s3://{bucket}/"));
    let mut keys: Vec<String> = run
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .map(|k| {
            k.trim_start_matches(prefix)
                .trim_start_matches('/')
                .to_string()
        })
        .collect();
    keys.sort();
    keys
}

#[test]
fn an_archive_to_s3_round_trips_and_one_file_is_restored_with_a_range_get() {
    let Some(w) = S3World::new("archive") else {
        return;
    };
    let bucket = plain_bucket();
    let files: Vec<(String, Vec<u8>)> = (0..4u64)
        .map(|i| (format!("f{i}.bin"), noise(i, 2 << 20)))
        .chain([("sub/a b.txt".to_string(), b"a b\n".to_vec())])
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    s3_dataset(&w, &refs);
    let run = archive_to(&w, &w.url(&bucket, "cold"), &["--chunk-size", "3MiB"]);
    run.code(0);
    let record = &run.json()["record"];
    let location = record["location"].as_str().expect("location").to_string();
    let id = record["id"].as_str().expect("id").to_string();
    assert_eq!(location, w.url(&bucket, &format!("cold/{id}")));
    assert_eq!(record["media"], "object", "an object store by default");
    let keys = s3_objects(&w, &bucket, &location);
    let chunk_keys: Vec<&String> = keys.iter().filter(|k| k.ends_with(".tar")).collect();
    assert!(chunk_keys.len() >= 4, "{keys:?}");
    for name in ["ARCHIVE-INDEX.tsv", "ARCHIVE-MANIFEST.sha256", "README.txt"] {
        assert!(keys.iter().any(|k| k == name), "{name} in {keys:?}");
    }
    w.assert_no_multipart_uploads(&bucket);

    // What the bucket holds is a plain archive: sha256sum and GNU tar read it.
    let fetched = w.env.path("fetched");
    w.aws(&[
        "s3",
        "cp",
        "--recursive",
        "--quiet",
        &location,
        &fetched.display().to_string(),
    ])
    .code(0);
    w.env
        .sh(&fetched, "sha256sum --strict -c ARCHIVE-MANIFEST.sha256")
        .code(0);
    w.env
        .sh(
            &fetched,
            "for c in chunk-*.tar; do tar -xpf \"$c\" || exit 1; done",
        )
        .code(0);
    assert_manifest_verifies(&fetched.join("ds"));

    // verify and list from S3, by id and by location.
    w.env
        .run(["archive", "verify", &id])
        .code(0)
        .out_has(&format!("archive {id} at {location}: OK"));
    w.env.run(["archive", "verify", &location]).code(0);
    w.env
        .run(["archive", "list", &id])
        .code(0)
        .out_has("sub/a b.txt");

    // One file restored through a relay that counts what the server sends: the member's
    // bytes and the small index, not the chunks.
    let (relay, sent) = relay(std::time::Duration::ZERO);
    let config = w.env.path("relay.toml");
    write(&config, format!("[s3]\nendpoint = \"{relay}\"\n"));
    let restore = w.env.run([
        "--config",
        &config.display().to_string(),
        "archive",
        "restore",
        &id,
        "--file",
        "f2.bin",
        "--to",
        "back",
        "--json",
    ]);
    restore.code(0);
    assert_eq!(restore.json()["bytes_read"], 2 << 20, "{restore}");
    assert!(read(w.env.path("back/f2.bin")) == noise(2, 2 << 20));
    let total: u64 = record["chunks"]
        .as_array()
        .expect("chunks")
        .iter()
        .map(|c| c["bytes"].as_u64().expect("bytes"))
        .sum();
    let sent = sent.load(Ordering::SeqCst);
    assert!(sent >= 2 << 20, "the member came through the relay: {sent}");
    assert!(
        sent < (2 << 20) + (64 << 10),
        "the server sent {sent} bytes for a 2 MiB file of a {total}-byte archive"
    );

    // Archived again: nothing written.
    let again = archive_to(&w, &w.url(&bucket, "cold"), &["--chunk-size", "3MiB"]);
    again.code(0);
    assert_eq!(again.json()["already"], true);
    w.cleanup(&bucket);
}

#[test]
fn a_new_version_of_a_chunk_with_other_bytes_is_caught_by_verify_naming_the_member() {
    let Some(w) = S3World::new("archive-flip") else {
        return;
    };
    let bucket = locked_bucket();
    s3_dataset(
        &w,
        &[
            ("a.txt", b"a\n".to_vec()),
            ("sub/deep/data.bin", noise(5, 300_000)),
        ],
    );
    let run = archive_to(&w, &w.url(&bucket, "cold"), &[]);
    run.code(0);
    let location = run.json()["record"]["location"]
        .as_str()
        .unwrap()
        .to_string();
    let id = run.json()["record"]["id"].as_str().unwrap().to_string();
    w.env.run(["archive", "verify", &id]).code(0);

    // A second version of the chunk, one byte of data.bin flipped.
    let got = w.env.path("got");
    w.aws(&[
        "s3",
        "cp",
        "--recursive",
        "--quiet",
        &location,
        &got.display().to_string(),
    ])
    .code(0);
    let (chunk, offset) = offset_of(&got, "sub/deep/data.bin");
    let mut bytes = fs::read(got.join(&chunk)).unwrap();
    bytes[offset as usize + 100] ^= 0x01;
    fs::write(got.join(&chunk), bytes).unwrap();
    w.aws(&[
        "s3",
        "cp",
        "--quiet",
        &got.join(&chunk).display().to_string(),
        &format!("{location}/{chunk}"),
    ])
    .code(0);

    let bad = w.env.run(["archive", "verify", &id]);
    bad.code(3)
        .out_has("sub/deep/data.bin: FAILED")
        .out_has(&format!("{chunk}: FAILED"));
    assert!(!bad.out().contains("a.txt: FAILED"), "{bad}");
    w.env
        .run([
            "archive",
            "restore",
            &id,
            "--file",
            "sub/deep/data.bin",
            "--to",
            "back",
        ])
        .code(3)
        .err_has("the index says");
    assert!(!w.env.path("back/data.bin").exists());
    // The 3-2-1 check reads it too, and no longer counts it.
    w.env
        .run_roots(["copies", "PRJ/ds", "--verify"])
        .code(3)
        .out_has("failed: 1 members and 1 objects differ from the index");
    w.assert_no_multipart_uploads(&bucket);
    w.cleanup(&bucket);
}

#[test]
fn retain_gives_every_object_compliance_object_lock_and_a_delete_is_refused() {
    let Some(w) = S3World::new("archive-lock") else {
        return;
    };
    let bucket = locked_bucket();
    s3_dataset(&w, &[("a.txt", b"a\n".to_vec())]);
    let config = w.env.path("compliance.toml");
    write(&config, "[s3]\nlock_mode = \"COMPLIANCE\"\n");
    let config = config.display().to_string();

    // A bucket without Object Lock is refused before anything is written.
    let plain = plain_bucket();
    w.env
        .run_roots([
            "--config",
            &config,
            "archive",
            "PRJ/raw/ds",
            "--to",
            &w.url(&plain, "cold"),
            "--retain",
            "1d",
        ])
        .code(1)
        .err_has(&format!(
            "s3://{plain}: write protection (WORM) was asked, but the bucket has no Object Lock"
        ));
    let listing = w.aws(&[
        "s3",
        "ls",
        "--recursive",
        &format!("{}/", w.url(&plain, "")),
    ]);
    assert_eq!(listing.stdout, "", "objects were written: {listing}");

    let run = w.env.run_roots([
        "--config",
        &config,
        "archive",
        "PRJ/raw/ds",
        "--to",
        &w.url(&bucket, "cold"),
        "--retain",
        "1d",
    ]);
    run.code(0).out_has(
        "write protection: Object Lock COMPLIANCE for 1day on every object (read back from the server)",
    );
    let id = run
        .out()
        .lines()
        .find_map(|l| l.strip_prefix("archive id: "))
        .expect("archive id")
        .to_string();
    for name in ["chunk-00001.tar", "ARCHIVE-MANIFEST.sha256"] {
        let key = w.key(&format!("cold/{id}/{name}"));
        let head = w.aws(&["s3api", "head-object", "--bucket", &bucket, "--key", &key]);
        head.code(0).out_has("\"ObjectLockMode\": \"COMPLIANCE\"");
        let version: serde_json::Value = serde_json::from_str(&head.stdout).unwrap();
        let version = format!("--version-id={}", version["VersionId"].as_str().unwrap());
        let delete = w.aws(&[
            "s3api",
            "delete-object",
            "--bucket",
            &bucket,
            "--key",
            &key,
            &version,
            "--bypass-governance-retention",
        ]);
        assert_ne!(
            delete.code,
            Some(0),
            "a locked version was deleted: {delete}"
        );
        delete.err_has("AccessDenied");
    }
    // The record keeps it.
    let copies = w.env.run_roots(["copies", "PRJ/ds", "--json"]);
    copies.code(0);
    // A retention shorter than a day is a usage error.
    w.env
        .run_roots([
            "archive",
            "PRJ/raw/ds",
            "--to",
            &w.url(&bucket, "cold3"),
            "--retain",
            "1h",
        ])
        .code(2)
        .err_has("shorter than a day");
    // An S3 flag on a folder, and a folder flag on S3, are refused.
    w.env
        .run_roots(["archive", "PRJ/raw/ds", "--to", "tape", "--retain", "1d"])
        .code(1)
        .err_has("--retain is Object Lock retention, for an s3:// destination");
    w.env
        .run_roots([
            "archive",
            "PRJ/raw/ds",
            "--to",
            &w.url(&bucket, "cold2"),
            "--immutable",
        ])
        .code(1)
        .err_has("--immutable is for a folder");
    w.assert_no_multipart_uploads(&bucket);
}

#[test]
fn an_archive_to_s3_killed_mid_upload_counts_no_unverified_chunk_and_a_rerun_completes() {
    let Some(w) = S3World::new("archive-kill") else {
        return;
    };
    let bucket = plain_bucket();
    // Chunks of two 10 MiB files: multipart uploads of two parts (16 MiB and 4 MiB).
    let files: Vec<(String, Vec<u8>)> = (0..6u64)
        .map(|i| (format!("f{i}.bin"), noise(i, 10 << 20)))
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    s3_dataset(&w, &refs);
    let url = w.url(&bucket, "cold");
    // Through a relay at about 10 MB/s: a chunk's upload is in flight for a while.
    let (relay, _) = relay(std::time::Duration::from_millis(6));
    let config = w.env.path("relay.toml");
    write(&config, format!("[s3]\nendpoint = \"{relay}\"\n"));
    let mut cmd = w.env.command();
    cmd.arg("--config").arg(&config);
    let args = [
        "--nas-root".to_string(),
        w.env.nas().display().to_string(),
        "archive".into(),
        "PRJ/raw/ds".into(),
        "--to".into(),
        url.clone(),
        "--chunk-size".into(),
        "24MiB".into(),
    ];
    let journals = w.env.state().join("archive-journals");
    let journal_lines = || -> Vec<String> {
        fs::read_dir(&journals)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|e| {
                fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    cmd.args(&args);
    let mut child = cmd.spawn().expect("start archive");
    wait_for(
        &mut child,
        "a chunk counted and another being uploaded",
        || {
            !journal_lines().is_empty()
                && w.aws(&[
                    "s3api",
                    "list-multipart-uploads",
                    "--bucket",
                    &bucket,
                    "--prefix",
                    &w.prefix,
                ])
                .stdout
                .contains("UploadId")
        },
    );
    child.kill().expect("kill -9");
    child.wait().unwrap();
    let lines = journal_lines();
    let keys = s3_objects(&w, &bucket, &url);
    assert!(
        !keys.iter().any(|k| k.ends_with("ARCHIVE-MANIFEST.sha256")),
        "killed before the end: {keys:?}"
    );
    // Every chunk the journal counts holds, on the server, the bytes it was verified as.
    let got = w.env.path("got");
    for line in &lines {
        let j: serde_json::Value = serde_json::from_str(line).expect("journal line");
        let name = j["name"].as_str().unwrap();
        let id = keys
            .iter()
            .find(|k| k.ends_with(name))
            .unwrap_or_else(|| panic!("{name} counted but not in {keys:?}"));
        w.aws(&[
            "s3",
            "cp",
            "--quiet",
            &format!("{url}/{id}"),
            &got.join(name).display().to_string(),
        ])
        .code(0);
        let digest = hpcstage_staging::hash::Digest::of(&fs::read(got.join(name)).unwrap());
        assert_eq!(
            j["sha256"].as_str(),
            Some(digest.to_hex().as_str()),
            "{name}"
        );
    }

    let rerun = w.env.run(&args);
    rerun.code(0).out_has("kept from an earlier run");
    w.assert_no_multipart_uploads(&bucket);
    assert!(journal_lines().is_empty(), "no resume journal left");
    let location = rerun
        .out()
        .lines()
        .find_map(|l| l.strip_prefix("archive id: "))
        .map(|id| format!("{url}/{id}"))
        .expect("archive id");
    w.env
        .run(["archive", "verify", &location])
        .code(0)
        .out_has("OK");
    w.cleanup(&bucket);
}

#[test]
fn an_archive_to_s3_with_wrong_credentials_is_refused_with_the_bucket_named() {
    let Some(mut w) = S3World::new("archive-auth") else {
        return;
    };
    let bucket = plain_bucket();
    s3_dataset(&w, &[("a.txt", b"a\n".to_vec())]);
    w.env
        .set_env("AWS_SECRET_ACCESS_KEY", "not-the-secret-at-all-0000");
    let run = archive_to(&w, &w.url(&bucket, "cold"), &[]);
    run.code(1)
        .err_has(&format!(
            "s3://{bucket}: HeadBucket: the S3 service refused the credentials"
        ))
        .err_has("check the access key and secret")
        .err_lacks("not-the-secret-at-all");
    w.env
        .run(["archive", "verify", &w.url(&bucket, "cold/x")])
        .code(1)
        .err_has("refused the credentials");
    assert!(w
        .env
        .state()
        .join("archives")
        .read_dir()
        .map_or(true, |mut d| d.next().is_none()));
}

#[test]
fn copies_holds_after_an_archive_to_an_offsite_object_store_and_a_declared_tape_copy() {
    let Some(w) = S3World::new("archive-321") else {
        return;
    };
    let bucket = plain_bucket();
    s3_dataset(
        &w,
        &[("a.txt", b"a\n".to_vec()), ("sub/b.bin", noise(3, 4096))],
    );
    w.env
        .run_roots(["copies", "PRJ/ds", "--fail-on-risk"])
        .code(5)
        .out_has("3-2-1: FAILS (1 of the 3 copies needed; one kind of media (disk), 2 needed; no copy off-site)");

    // The S3 service is declared off-site in the config (`--offsite` would do as well).
    let mut config = fs::read_to_string(w.env.user_config()).unwrap().replacen(
        "[s3]\n",
        "[s3]\noffsite = true\n",
        1,
    );
    write(w.env.user_config(), &config);
    archive_to(&w, &w.url(&bucket, "cold"), &[]).code(0);
    config.push_str(
        "\n[[copies]]\nname = \"lto-2026\"\nlocation = \"vault:LTO-0042\"\nmedia = \"tape\"\noffsite = true\n",
    );
    write(w.env.user_config(), config);
    let run = w
        .env
        .run_roots(["copies", "PRJ/ds", "--verify", "--fail-on-risk", "--json"]);
    run.code(0);
    let d = &run.json()[0];
    assert_eq!(d["holds"], true, "{run}");
    let archive = &d["copies"][1];
    assert_eq!(archive["kind"], "archive");
    assert_eq!(archive["media"], "object");
    assert_eq!(archive["offsite"], true);
    assert_eq!(
        archive["status"], "ok",
        "read from S3 and found as recorded: {run}"
    );
    assert!(archive["location"].as_str().unwrap().starts_with("s3://"));
    w.cleanup(&bucket);
}
