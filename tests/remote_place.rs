//! Trees placed on an SSH host through the storage layer's placement (the path `ingest`
//! and `pull` share), against a real OpenSSH server on loopback ([`common::sshd`]): one
//! writer of a name at a time (a lock file created exclusively over SFTP), a killed
//! writer's lock taken over by the next run, and a pull killed mid-upload finished by
//! the next one straight from the run folder, with no copy assembled on scratch.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::fs::read_json;
use common::run::wait_child;
use common::sshd::Sshd;
use common::{assert_manifest_verifies, noise, read, read_text, write, Env};

/// A world with an sshd, and its NAS folder (with `P/raw/`), the login user's.
fn world() -> (Env, Sshd, PathBuf) {
    let env = Env::new();
    write(
        env.user_config(),
        "[purge]\nbasis = \"mtime\"\nage = \"30d\"\nwarn = \"7d\"\n",
    );
    let sshd = Sshd::start(&env);
    let nas = sshd.remote_dir(&env, "remote");
    std::fs::create_dir_all(nas.join("P/raw")).expect("mkdir raw");
    sshd.give_to_login_user(&nas);
    (env, sshd, nas)
}

/// `hpcstage --nas-root nas:NAS ingest acq --project P --dataset NAME --jobs 1`
fn ingest_args(sshd: &Sshd, nas: &Path, dataset: &str) -> Vec<String> {
    [
        "--nas-root",
        &sshd.spec(nas),
        "ingest",
        "acq",
        "--project",
        "P",
        "--dataset",
        dataset,
        "--jobs",
        "1",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The bytes of the regular files below `dir` (0 when it is not there).
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| Some((e.path(), e.file_type().ok()?)))
        .map(|(path, kind)| match kind {
            k if k.is_dir() => bytes_under(&path),
            k if k.is_file() => std::fs::metadata(&path).map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Waits until `dir` holds `bytes`, failing if `child` ends first.
fn wait_for_bytes(dir: &Path, bytes: u64, child: &mut std::process::Child) {
    let started = Instant::now();
    while bytes_under(dir) < bytes {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{} never filled",
            dir.display()
        );
        assert!(
            child.try_wait().expect("poll").is_none(),
            "the command ended before {} filled",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_second_ingest_of_a_name_over_ssh_is_refused_while_the_first_runs_and_a_killed_ones_lock_is_taken_over(
) {
    let (env, sshd, nas) = world();
    let big = noise(9, 96 << 20);
    write(env.path("acq/big.bin"), &big);
    write(env.path("acq/small.txt"), "small\n");
    let raw = nas.join("P/raw");

    let mut cmd = env.command();
    cmd.args(ingest_args(&sshd, &nas, "big"));
    let mut first = cmd.spawn().expect("start the first ingest");
    wait_for_bytes(&raw.join(".big.upload"), 4 << 20, &mut first);
    let lock = raw.join(".big.ingest.lock");
    let holder = read_text(&lock);
    assert!(
        holder.starts_with(&format!("pid {} on ", first.id())),
        "the lock file does not name the first ingest: {holder:?}"
    );

    // While the first one writes, a second one of the same name is refused and writes
    // nothing.
    let second = env.run(ingest_args(&sshd, &nas, "big"));
    second
        .code(1)
        .err_has("is locked by another hpcstage process")
        .err_has(&format!("pid {} on ", first.id()));
    assert_eq!(
        read_text(&lock),
        holder,
        "the lock was taken from its holder"
    );

    // Killed: its lock stays, naming a process that is gone; the next ingest takes it over
    // and finishes the dataset.
    first.kill().expect("kill -9 the first ingest");
    let killed = wait_child("hpcstage ingest", first, Duration::from_secs(10));
    assert_eq!(killed.code, None, "the ingest ended before it was killed");
    assert!(lock.is_file(), "the killed ingest's lock file is gone");
    assert!(!raw.join("big").exists(), "a half-written dataset appeared");

    let again = env.run(ingest_args(&sshd, &nas, "big"));
    again.code(0);
    let dataset = raw.join("big");
    assert!(read(dataset.join("big.bin")) == big, "big.bin differs");
    assert_eq!(read_text(dataset.join("small.txt")), "small\n");
    assert_manifest_verifies(&dataset);
    assert_eq!(
        names(&raw),
        vec!["big".to_string()],
        "a lock file or a hidden folder was left"
    );
}

/// A unet-seg predict stand-in that writes a (real) label mask padded with `pad` random
/// bytes, and a table, per image.
fn predict(pad: usize) -> String {
    format!(
        "#!/bin/bash\nset -euo pipefail\n{}\
         while (($#)); do\n  case $1 in\n    --input) input=$2 ;;\n    --mask) mask=$2 ;;\n\
         \x20   --table) table=$2 ;;\n  esac\n  shift 2\ndone\n\
         {{ tiny_mask; head -c {pad} /dev/urandom; }} > \"$mask\"\n\
         printf 'cell,area\\n1,10\\n' > \"$table\"\n",
        common::fs::tiny_mask_function()
    )
}

/// A unet-seg run of two images staged from the SSH NAS and run by the local executor
/// (not pulled), its predict stand-in padding each mask with `pad` random bytes; its id.
fn run_on_ssh_nas(env: &Env, sshd: &Sshd, nas: &Path, pad: usize) -> String {
    write(
        env.user_config(),
        format!(
            "nas_root = \"{}\"\nscratch_root = \"{}\"\n\n[slurm]\nexecutor = \"local\"\n\n\
             [purge]\nbasis = \"mtime\"\nage = \"30d\"\nwarn = \"7d\"\n",
            sshd.spec(nas),
            env.scratch().display()
        ),
    );
    write(
        env.path("acq/img1.tif"),
        common::fs::tiny_tiff([1, 2, 3, 4], b"image one\n"),
    );
    write(
        env.path("acq/img2.tif"),
        common::fs::tiny_tiff([5, 6, 7, 8], b"image two\n"),
    );
    env.run(["ingest", "acq", "--project", "P", "--dataset", "plate"])
        .code(0);
    write(env.path("bin/predict"), predict(pad));
    common::chmod(env.path("bin/predict"), 0o755);
    write(env.path("model.pt"), "stand-in weights\n");
    let submitted = env.run([
        "stage-and-run",
        &sshd.spec(&nas.join("P/raw/plate")),
        "unet-seg",
        "--no-pull",
        "--json",
        "-p",
        &format!("model={}", env.path("model.pt").display()),
        "-p",
        &format!(
            "predict_cmd={} --model {{model}} --input {{input}} --mask {{mask}} --table {{table}}",
            env.path("bin/predict").display()
        ),
        "-p",
        "cpus=1",
        "-p",
        "mem=500M",
        "-p",
        "time=10m",
    ]);
    submitted.code(0);
    submitted.json()["run_id"]
        .as_str()
        .expect("a run id")
        .to_string()
}

#[test]
fn a_pull_to_an_ssh_nas_killed_mid_upload_is_finished_by_the_next_one_with_no_copy_on_scratch() {
    let (env, sshd, nas) = world();
    let id = run_on_ssh_nas(&env, &sshd, &nas, 60_000_000);
    let parent = nas.join("P/results/segmentation");
    let results = parent.join(&id);
    let run_dir = env.scratch().join("P/runs").join(&id);
    let outbox = run_dir.join(".hpcstage/outbox");

    let mut cmd = env.command();
    cmd.args(["pull", &id, "--wait", "--jobs", "1"]);
    let mut child = cmd.spawn().expect("start the pull");
    wait_for_bytes(&parent.join(format!(".{id}.upload")), 8 << 20, &mut child);
    child.kill().expect("kill -9 the pull");
    let killed = wait_child("hpcstage pull", child, Duration::from_secs(10));
    assert_eq!(killed.code, None, "the pull ended before it was killed");
    assert!(!results.exists(), "the killed pull's folder is visible");
    assert!(
        !outbox.exists(),
        "the results were assembled on scratch before the upload"
    );

    let again = env.run(["pull", &id, "--json"]);
    again.code(0);
    assert_eq!(again.json()["outcome"], "pulled", "{again}");
    assert_manifest_verifies(&results);
    let manifest = read_text(results.join("MANIFEST.sha256"));
    for listed in [
        "README.md",
        "run.json",
        "masks/img1.ome.tif",
        "tables/img2.csv",
    ] {
        assert!(
            manifest.contains(&format!("  {listed}\n")),
            "{listed}: {manifest}"
        );
    }
    assert!(
        read(results.join("masks/img1.ome.tif")) == read(run_dir.join("masks/img1.ome.tif")),
        "the mask on the NAS differs from scratch"
    );
    assert_eq!(
        read_json(results.join("run.json"))["run"]["id"],
        id.as_str()
    );
    assert_eq!(
        names(&parent),
        vec![id.clone()],
        "a hidden upload folder or a lock file was left"
    );
    assert!(!outbox.exists(), "a copy of the results stayed on scratch");
}

/// Forgets that run `id` was pulled, as a pull stopped right after its results were in
/// place leaves it: no marker in the run folder, no `pulled` event.
fn forget_pulled(env: &Env, id: &str) {
    let run_dir = env.scratch().join("P/runs").join(id);
    std::fs::remove_file(run_dir.join(".hpcstage/pulled.json")).expect("remove the marker");
    let events = env.state().join("runs").join(id).join("events");
    for entry in std::fs::read_dir(&events).expect("read the events") {
        let path = entry.expect("an event").path();
        if read_text(&path).contains("\"event\": \"pulled\"") {
            std::fs::remove_file(&path).expect("remove the pulled event");
        }
    }
}

/// What a pull's stdout says of the results in place: files, bytes, manifest digest.
fn pulled_summary(stdout: &str) -> String {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("pulled run"))
        .unwrap_or_else(|| panic!("no `pulled run` line in {stdout}"));
    line.split_once(" → ")
        .expect("a → in the line")
        .1
        .to_string()
}

#[test]
fn results_already_on_the_ssh_nas_are_adopted_from_their_listing_and_a_missing_file_refuses_them() {
    let (env, sshd, nas) = world();
    let id = run_on_ssh_nas(&env, &sshd, &nas, 1000);
    let results = nas.join("P/results/segmentation").join(&id);
    let first = env.run(["pull", &id, "--wait"]);
    first.code(0);
    let placed = pulled_summary(&first.stdout);
    assert!(placed.contains(" files, "), "{placed}");
    let mask = results.join("masks/img1.ome.tif");
    let written = std::fs::metadata(&mask).expect("the mask on the NAS");

    // The bookkeeping of a pull stopped after its rename is finished from what the NAS
    // lists (sizes) and its manifest (files, digest); nothing is written again.
    forget_pulled(&env, &id);
    let adopted = env.run(["pull", &id]);
    adopted.code(0);
    assert_eq!(pulled_summary(&adopted.stdout), placed, "{adopted}");
    let after = std::fs::metadata(&mask).expect("the mask on the NAS");
    assert_eq!(
        (after.ino(), after.mtime_nsec(), after.mtime()),
        (written.ino(), written.mtime_nsec(), written.mtime()),
        "the mask was written again"
    );
    env.run(["pull", &id]).code(0).out_has("already pulled");

    // A file its manifest lists but the NAS no longer holds: not adopted, left as it is.
    forget_pulled(&env, &id);
    std::fs::remove_file(results.join("tables/img2.csv")).expect("remove a table");
    env.run(["pull", &id])
        .code(1)
        .err_has("tables/img2.csv of its manifest is missing")
        .err_has("move it away and pull again");
    assert!(mask.is_file(), "the results folder was touched");
}
