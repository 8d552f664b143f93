//! `hpcstage report`, `status` and `clean` against a lab built with the binary itself:
//! datasets ingested into the NAS and staged to scratch, runs recorded in the ledger.
//! What users see is snapshotted after normalizing dates, times and the temporary path.

mod common;

use std::ffi::OsStr;
use std::path::PathBuf;

use common::report::{age_files, listing, Env};
use common::{chmod, write};
use serde_json::Value;

/// One MiB of data per dataset, so that sizes print the same whatever the length of the
/// ingest metadata (`dataset.json` names the user and the temporary path).
fn plate(seed: u8) -> Vec<(String, String)> {
    vec![
        (
            "well_A01.tif".into(),
            char::from(b'a' + seed).to_string().repeat(512 << 10),
        ),
        (
            "well_A02.tif".into(),
            char::from(b'k' + seed).to_string().repeat(512 << 10),
        ),
        ("notes/plate.txt".into(), format!("plate {seed}\n")),
    ]
}

fn ingest(env: &Env, project: &str, dataset: &str, seed: u8) -> PathBuf {
    let files = plate(seed);
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    env.ingest(project, dataset, &files)
}

/// alice's lab:
/// PRJ1/plate7 staged, its NAS copy intact (SAFE);
/// PRJ1/plate8 staged, then its NAS manifest deleted (AT RISK);
/// PRJ1/plate9 staged, then one file purged from scratch (PARTLY PURGED);
/// PRJ1 runs seg-r1 (not pulled: AT RISK) and seg-r2 (pulled: SAFE);
/// PRJ0/scans staged by bob (SAFE).
fn lab() -> Env {
    let env = Env::new();
    for (project, dataset, seed, owner) in [
        ("PRJ0", "scans", 0, "bob"),
        ("PRJ1", "plate7", 1, "alice"),
        ("PRJ1", "plate8", 2, "alice"),
        ("PRJ1", "plate9", 3, "alice"),
    ] {
        let source = ingest(&env, project, dataset, seed);
        env.stage(&source, None, project);
        env.set_owner(&env.scratch().join(project).join(dataset), owner);
    }
    let plate8 = env.nas().join("PRJ1/raw/plate8");
    chmod(&plate8, 0o755);
    std::fs::remove_file(plate8.join("MANIFEST.sha256")).expect("remove the NAS manifest");
    let plate9 = env.scratch().join("PRJ1/plate9");
    chmod(plate9.join("notes"), 0o755);
    std::fs::remove_file(plate9.join("notes/plate.txt")).expect("purge one file");
    env.add_run("PRJ1", "seg-r1", "alice", false);
    env.add_run("PRJ1", "seg-r2", "alice", true);
    age_files(&env.scratch());
    env
}

/// A lab with one safe staged dataset only, its files 36 hours old.
fn safe_lab() -> (Env, PathBuf) {
    let env = Env::new();
    let source = ingest(&env, "PRJ1", "plate7", 1);
    env.stage(&source, None, "PRJ1");
    env.set_owner(&env.scratch().join("PRJ1/plate7"), "alice");
    age_files(&env.scratch());
    (env, source)
}

/// The JSON report with volatile values replaced: timestamps, and the byte counts of
/// staged datasets (they hold the ingest metadata, whose length varies).
fn stable_json(run: &common::Run) -> String {
    let mut report = run.json();
    for key in ["bytes", "at_risk_bytes"] {
        report["totals"][key] = "[BYTES]".into();
    }
    for item in report["items"].as_array_mut().expect("items") {
        if item["kind"] == "stage" {
            item["bytes"] = "[BYTES]".into();
        }
    }
    let text = serde_json::to_string_pretty(&report).expect("JSON");
    common::report::normalize(&text, run.root())
}

#[test]
fn report_all_as_a_table() {
    let env = lab();
    let run = env.run(["report", "--all"]);
    run.code(0);
    assert_eq!(run.err(), "", "no policy warning: the policy is configured");
    insta::assert_snapshot!("report_table", run.out());
}

#[test]
fn report_all_as_json() {
    let env = lab();
    let run = env.run(["report", "--all", "--format", "json"]);
    run.code(0);
    insta::assert_snapshot!("report_json", stable_json(&run));
}

#[test]
fn report_all_as_csv() {
    let env = lab();
    let run = env.run(["report", "--all", "--format", "csv"]);
    run.code(0);
    // Column 6 is bytes; staged datasets hold the ingest metadata, whose length varies.
    let csv: Vec<String> = run
        .out()
        .lines()
        .map(|line| {
            let mut fields: Vec<&str> = line.split(',').collect();
            if fields[2] == "stage" {
                fields[5] = "[BYTES]";
            }
            fields.join(",")
        })
        .collect();
    insta::assert_snapshot!("report_csv", csv.join("\n"));
}

#[test]
fn report_all_as_markdown() {
    let env = lab();
    let run = env.run(["report", "--all", "--format", "markdown"]);
    run.code(0);
    // Columns are padded to their widest cell, whose width depends on the temporary
    // folder's path: compare the table with the padding taken out.
    let unpadded: Vec<String> = run
        .out()
        .lines()
        .map(|line| match line.strip_prefix('|') {
            Some(cells) => {
                let cells: Vec<&str> = cells
                    .split_inclusive('|')
                    .map(|c| c.trim_end_matches('|').trim())
                    .map(|c| {
                        if !c.is_empty() && c.chars().all(|c| c == '-') {
                            "---"
                        } else {
                            c
                        }
                    })
                    .collect();
                format!(
                    "|{}",
                    cells
                        .iter()
                        .map(|c| if *c == "---" {
                            "---|".to_string()
                        } else {
                            format!(" {c} |")
                        })
                        .collect::<String>()
                )
            }
            None => line.to_string(),
        })
        .collect();
    let unpadded = unpadded.join("\n") + "\n";
    insta::assert_snapshot!("report_markdown", unpadded);
}

#[test]
fn fail_on_risk_exits_5_only_when_something_is_at_risk() {
    let (env, source) = safe_lab();
    env.run(["report", "--all", "--fail-on-risk"]).code(0);

    // The NAS manifest is gone: nothing proves the raw data is still there.
    chmod(&source, 0o755);
    std::fs::remove_file(source.join("MANIFEST.sha256")).expect("remove the NAS manifest");
    let run = env.run(["report", "--all", "--fail-on-risk", "--format", "json"]);
    run.code(5);
    let report = run.json();
    assert_eq!(report["totals"]["at_risk"], 1);
    assert_eq!(report["items"][0]["safety"], "AT_RISK");
    // Without the flag the report is still a success.
    env.run(["report", "--all"]).code(0);
    // AT RISK items show in any window, so a weekly cron job catches them.
    env.run(["report", "--within", "1d", "--fail-on-risk"])
        .code(5);
}

#[test]
fn an_unpulled_run_makes_fail_on_risk_exit_5() {
    let (env, _) = safe_lab();
    let run = env.add_run("PRJ1", "seg-r1", "alice", false);
    let report = env.run(["report", "--fail-on-risk", "--format", "json"]);
    report.code(5);
    let json = report.json();
    let items = json["items"].as_array().expect("items");
    assert_eq!(
        items.len(),
        1,
        "the safe stage is 30 days out: not in the window"
    );
    assert_eq!(items[0]["name"], run.id);
    assert_eq!(items[0]["reason"], "results not yet pulled back to the NAS");
}

#[test]
fn within_hides_safe_items_beyond_the_window() {
    let (env, _) = safe_lab();
    let names = |args: &[&str]| -> Vec<String> {
        let run = env.run(args.iter().chain(&["--format", "json"]));
        run.code(0);
        run.json()["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["name"].as_str().expect("name").to_string())
            .collect()
    };
    assert_eq!(names(&["report", "--within", "7d"]), Vec::<String>::new());
    assert_eq!(
        names(&["report"]),
        Vec::<String>::new(),
        "default: warn = 7d"
    );
    assert_eq!(names(&["report", "--within", "40d"]), ["plate7"]);
    assert_eq!(names(&["report", "--all"]), ["plate7"]);
    // A wider warning window in the config widens the default.
    let config = std::fs::read_to_string(env.config())
        .expect("config")
        .replace("warn = \"7d\"", "warn = \"45d\"");
    write(env.config(), config);
    assert_eq!(names(&["report"]), ["plate7"]);

    let run = env.run(["report", "--within", "7d"]);
    run.code(0);
    assert!(
        run.out()
            .starts_with("Scratch purge report, YYYY-MM-DD HH:MM UTC (expiring within 7 days;"),
        "{run}"
    );
    // An empty report says so in words, not with an empty table.
    assert_eq!(
        run.out(),
        "Scratch purge report, YYYY-MM-DD HH:MM UTC (expiring within 7 days; policy: mtime \
         older than 30 days)\nNothing expires within 7 days and nothing is at risk.\n"
    );
    let json = env
        .run(["report", "--within", "7d", "--format", "json"])
        .json();
    assert_eq!(json["items"], serde_json::json!([]));
    let md = env.run(["report", "--within", "7d", "--format", "markdown"]);
    assert!(
        md.out()
            .trim_end()
            .ends_with("\n\nNothing expires within 7 days and nothing is at risk."),
        "{md}"
    );
}

#[test]
fn scan_finds_two_owners_folders_without_a_ledger_and_groups_by_owner() {
    let mut env = Env::new();
    let lab = env.path("lab-scratch");
    let source = ingest(&env, "PRJ1", "plate7", 1);
    for owner in ["bob", "alice"] {
        env.state = env.path(format!("state-{owner}"));
        let dest = lab.join(owner).join("PRJ1/plate7");
        env.stage(&source, Some(&dest), "PRJ1");
        env.set_owner(&dest, owner);
    }
    // The data engineer's view: a ledger of their own that knows nothing of either.
    env.state = env.path("state-engineer");
    let run = env.run([
        OsStr::new("report"),
        OsStr::new("--all"),
        OsStr::new("--scan"),
        lab.as_os_str(),
        OsStr::new("--format"),
        OsStr::new("json"),
    ]);
    run.code(0);
    let report = run.json();
    let got: Vec<(String, String, String)> = report["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            (
                i["owner"].as_str().expect("owner").to_string(),
                i["path"].as_str().expect("path").to_string(),
                i["safety"].as_str().expect("safety").to_string(),
            )
        })
        .collect();
    let path = |owner: &str| lab.join(owner).join("PRJ1/plate7").display().to_string();
    assert_eq!(
        got,
        [
            ("alice".to_string(), path("alice"), "SAFE".to_string()),
            ("bob".to_string(), path("bob"), "SAFE".to_string()),
        ]
    );
    assert_eq!(report["totals"]["items"], 2);

    // --owner picks one of them; a relative --scan root works as well.
    let run = env.run([
        "report",
        "--all",
        "--scan",
        "lab-scratch",
        "--owner",
        "bob",
        "--format",
        "csv",
    ]);
    run.code(0);
    let rows: Vec<&str> = run.stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{run}");
    assert!(rows[0].starts_with("PRJ1,bob,stage,plate7,"), "{run}");
}

#[test]
fn clean_dry_run_lists_and_removes_nothing() {
    let env = lab();
    let before = listing(&env.root);
    let run = env.run(["clean", "--dry-run"]);
    run.code(0);
    assert_eq!(
        listing(&env.root),
        before,
        "a dry run changed the filesystem"
    );
    let mut lines: Vec<String> = run.out().lines().map(str::to_string).collect();
    lines.sort();
    insta::assert_snapshot!("clean_dry_run", lines.join("\n"));
    assert!(
        run.err().starts_with("dry run: ")
            && run
                .err()
                .ends_with(" would be freed; nothing was removed\n"),
        "{run}"
    );
}

#[test]
fn clean_removes_what_is_safe_and_refuses_the_rest_with_reasons() {
    let env = lab();
    let run = env.run(["clean", "--json"]);
    run.code(0);
    let json = run.json();
    let mut decided: Vec<(String, String)> = json["candidates"]
        .as_array()
        .expect("candidates")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().expect("name").to_string(),
                c["refused"].as_str().unwrap_or("removed").to_string(),
            )
        })
        .collect();
    decided.sort();
    let nas = env.nas().display().to_string();
    assert_eq!(
        decided,
        [
            ("PRJ0/scans".to_string(), "removed".to_string()),
            // seg-r1 reads it and was not pulled: it may still need it.
            (
                "PRJ1/plate7".to_string(),
                "in use by run seg-r1 (not pulled yet)".to_string()
            ),
            (
                "PRJ1/plate8".to_string(),
                format!(
                    "no readable MANIFEST.sha256 at the NAS source {nas}/PRJ1/raw/plate8; \
                     nothing proves a verified copy there"
                )
            ),
            ("PRJ1/plate9".to_string(), "removed".to_string()),
            (
                "seg-r1".to_string(),
                "results not yet pulled back to the NAS".to_string()
            ),
            ("seg-r2".to_string(), "removed".to_string()),
        ]
    );
    let scratch = env.scratch();
    for gone in ["PRJ0/scans", "PRJ1/plate9", "PRJ1/runs/seg-r2"] {
        assert!(!scratch.join(gone).exists(), "{gone} is still there");
    }
    for kept in [
        "PRJ1/plate7/well_A01.tif",
        "PRJ1/plate8/well_A01.tif",
        "PRJ1/runs/seg-r1/masks/well_A01.tif",
    ] {
        assert!(scratch.join(kept).is_file(), "{kept} was removed");
    }
    // The NAS is untouched.
    assert!(env.nas().join("PRJ1/raw/plate7/well_A01.tif").is_file());
    assert!(env
        .nas()
        .join("PRJ1/results/segmentation/seg-r2/masks/well_A01.tif")
        .is_file());
    // Removed stages leave the ledger; a removed run stays, shown as cleaned (not as
    // EXPIRED with days left).
    let report = env.run(["report", "--all", "--format", "json"]);
    let json = report.json();
    let names: Vec<(&str, &str)> = json["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            (
                i["name"].as_str().expect("name"),
                i["safety"].as_str().expect("safety"),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("plate8", "AT_RISK"),
            ("seg-r1", "AT_RISK"),
            ("plate7", "IN_USE"),
            ("seg-r2", "CLEANED")
        ],
        "{report}"
    );
    let table = env.run(["report", "--all"]);
    let row = table
        .out()
        .lines()
        .find(|l| l.contains("seg-r2"))
        .unwrap_or_else(|| panic!("no seg-r2\n{table}"))
        .to_string();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[8..=10],
        ["-", "-", "CLEANED"],
        "no deadline or days left for a folder that is gone: {row}"
    );
    let status = env.run(["status"]);
    assert!(
        status
            .out()
            .contains("seg-r2: CLEANED: removed by `hpcstage clean` on YYYY-MM-DD"),
        "{status}"
    );

    // The human form says why each refused folder is kept.
    let run = env.run(["clean"]);
    run.code(0);
    let mut lines: Vec<String> = run.out().lines().map(str::to_string).collect();
    lines.sort();
    insta::assert_snapshot!("clean_refusals", lines.join("\n"));
    // Nothing is left to remove: clean says so, and why for each folder it keeps.
    assert_eq!(
        run.err(),
        "nothing can be removed: 3 folders are kept, each for the reason shown\n0 B freed\n"
    );
}

#[test]
fn clean_never_follows_a_hostile_ledger_entry_out_of_scratch() {
    let (env, _) = safe_lab();
    // A stage record in the ledger whose destination is a folder outside scratch that
    // carries a matching marker: everything checks out except where it is.
    let victim = env.path("home/thesis");
    write(victim.join("chapter1.tex"), "years of work");
    let ledger = env.state.join("stages");
    let original = std::fs::read_dir(&ledger)
        .expect("ledger")
        .flatten()
        .next()
        .expect("a stage record")
        .path();
    let mut record: Value =
        serde_json::from_slice(&std::fs::read(&original).expect("read")).expect("JSON");
    for dest in [
        victim.display().to_string(),
        format!("{}/PRJ1/../../home/thesis", env.scratch().display()),
    ] {
        record["destination"] = dest.clone().into();
        write(
            ledger.join("evil.json"),
            serde_json::to_vec(&record).expect("JSON"),
        );
        write(
            victim.join(".hpcstage/stage.json"),
            serde_json::to_vec(&record).expect("JSON"),
        );
        let run = env.run(["clean"]);
        run.code(0);
        assert!(
            victim.join("chapter1.tex").is_file(),
            "{dest} was removed\n{run}"
        );
        assert!(run.stdout.contains(&format!("keep    {dest} (")), "{run}");
    }
    // A symlink inside scratch that points out.
    let link = env.scratch().join("PRJ1/thesis");
    std::os::unix::fs::symlink(&victim, &link).expect("symlink");
    record["destination"] = link.display().to_string().into();
    write(
        ledger.join("evil.json"),
        serde_json::to_vec(&record).expect("JSON"),
    );
    write(
        victim.join(".hpcstage/stage.json"),
        serde_json::to_vec(&record).expect("JSON"),
    );
    let run = env.run(["clean"]);
    run.code(0);
    assert!(victim.join("chapter1.tex").is_file(), "{run}");
    assert!(
        run.stdout.contains(&format!(
            "{} is a symbolic link; refusing to remove it",
            link.display()
        )) && run
            .stdout
            .contains(&format!("keep    {} (", link.display())),
        "{run}"
    );
}

#[test]
fn status_shows_the_stage_with_its_deadline() {
    let (env, _) = safe_lab();
    // The files' mtimes set the deadline (not the time of staging): 30 days after them.
    let aged = age_files(&env.scratch());
    let deadline = (aged + jiff::SignedDuration::from_hours(30 * 24))
        .strftime("%Y-%m-%d")
        .to_string();
    let deadline = deadline.as_str();

    let run = env.run(["status"]);
    run.code(0);
    assert_eq!(run.err(), "");
    let row = run
        .stdout
        .lines()
        .find(|l| l.contains("PRJ1/plate7"))
        .unwrap_or_else(|| panic!("no row for the stage\n{run}"));
    let cells: Vec<&str> = row
        .trim_matches(|c| c == '│' || c == ' ')
        .split_whitespace()
        .collect();
    let path = env.scratch().join("PRJ1/plate7").display().to_string();
    assert_eq!(
        cells,
        [
            "stage",
            "PRJ1/plate7",
            path.as_str(),
            // What `stage` counted: the manifest is bookkeeping.
            "4",
            "1.0",
            "MiB",
            deadline,
            "28",
            "SAFE"
        ],
        "{run}"
    );

    let json = env.run(["status", "--json"]);
    json.code(0);
    let items = json.json()["items"].clone();
    assert_eq!(
        items[0]["deadline"].as_str().expect("deadline")[..10],
        *deadline
    );
    assert_eq!(items[0]["days_left"], 28);

    // Without a configured policy the deadline is a guess, and status says so.
    write(
        env.config(),
        format!("scratch_root = \"{}\"\n", env.scratch().display()),
    );
    let run = env.run(["status"]);
    run.code(0);
    assert_eq!(
        run.err(),
        "warning: no purge policy configured; assuming mtime, 30 days \
         (set [purge] basis/age in [ROOT]/site.toml for the site, or in \
         [ROOT]/xdg-config/hpcstage/config.toml for yourself)\n"
    );
}

#[test]
fn status_with_nothing_tracked_says_how_to_start() {
    let env = Env::new();
    let run = env.run(["status"]);
    run.code(0);
    assert_eq!(run.out(), "");
    assert_eq!(
        run.err(),
        "nothing tracked yet in [ROOT]/state (stage a dataset with `hpcstage stage`)\n"
    );
}

#[test]
fn report_heading_names_a_whole_folder_policy() {
    let (env, _) = safe_lab();
    env.write_config("whole_folder = true\n");
    let run = env.run(["report", "--all"]);
    run.code(0);
    assert!(
        run.out().starts_with(
            "Scratch purge report, YYYY-MM-DD HH:MM UTC (all tracked items; \
             policy: mtime older than 30 days, whole folder at once)\n"
        ),
        "{run}"
    );
    let json = env.run(["report", "--all", "--format", "json"]).json();
    assert_eq!(json["policy_whole_folder"], true);
    assert_eq!(json["items"][0]["whole_folder"], true);
}

/// The stage record next to the data, and the ledger's copy of it.
fn records(env: &Env, dest: &std::path::Path) -> (Value, Vec<Value>) {
    let marker: Value =
        serde_json::from_slice(&std::fs::read(dest.join(".hpcstage/stage.json")).expect("read"))
            .expect("JSON");
    let ledger: Vec<Value> = std::fs::read_dir(env.state.join("stages"))
        .expect("ledger")
        .flatten()
        .map(|e| serde_json::from_slice(&std::fs::read(e.path()).expect("read")).expect("JSON"))
        .collect();
    (marker, ledger)
}

/// The row of `name` in a JSON report or status.
fn item<'a>(json: &'a Value, name: &str) -> &'a Value {
    json["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no item {name} in {json:#}"))
}

/// Replaces a file on the NAS (raw data is write-protected after ingest).
fn rewrite_on_nas(source: &std::path::Path, rel: &str, text: &str) {
    chmod(source, 0o755);
    chmod(source.join(rel), 0o644);
    write(source.join(rel), text);
}

#[test]
fn a_failed_restage_keeps_its_record_and_manifest_and_shows_incomplete() {
    let (env, source) = safe_lab();
    let dest = env.scratch().join("PRJ1/plate7");
    let manifest = std::fs::read(dest.join("MANIFEST.sha256")).expect("manifest");
    let (before, _) = records(&env, &dest);
    let original = std::fs::read_to_string(source.join("well_A02.tif")).expect("read");

    // One NAS file no longer matches the NAS manifest: SOURCE CORRUPT, exit 3.
    rewrite_on_nas(&source, "well_A02.tif", &"x".repeat(original.len()));
    let run = env.run([OsStr::new("stage"), source.as_os_str()]);
    run.code(3).err_has("SOURCE CORRUPT");

    // The good copy stays tracked: manifest, record and ledger entry.
    assert_eq!(
        std::fs::read(dest.join("MANIFEST.sha256")).expect("manifest"),
        manifest
    );
    let (after, ledger) = records(&env, &dest);
    assert_eq!(
        ledger,
        std::slice::from_ref(&after),
        "the ledger holds the same record"
    );
    let mut unchanged = after.clone();
    let incomplete = unchanged
        .as_object_mut()
        .expect("object")
        .remove("incomplete")
        .expect("marked incomplete");
    assert_eq!(unchanged, before, "the rest is the last complete stage's");
    assert_eq!(
        incomplete["failed"],
        serde_json::json!(["well_A02.tif SOURCE CORRUPT"])
    );
    assert_eq!(incomplete["failed_count"], 1);
    // A second failing run keeps them as well.
    env.run([OsStr::new("stage"), source.as_os_str()]).code(3);
    assert_eq!(
        std::fs::read(dest.join("MANIFEST.sha256")).expect("manifest"),
        manifest
    );
    assert_eq!(
        records(&env, &dest).0["manifest_digest"],
        before["manifest_digest"]
    );

    // status and report say INCOMPLETE, with what failed and the deadline.
    let status = env.run(["status"]);
    status.code(0);
    assert!(
        status.out().contains(
            "PRJ1/plate7: INCOMPLETE: the last stage did not complete (1 of 4 files SOURCE \
             CORRUPT); rerun `hpcstage stage` to finish: well_A02.tif SOURCE CORRUPT"
        ),
        "{status}"
    );
    let report = env.run(["report", "--all", "--format", "json"]).json();
    let plate7 = item(&report, "plate7");
    assert_eq!(plate7["safety"], "INCOMPLETE");
    assert_eq!(plate7["days_left"], 28);
    assert_eq!(plate7["removable"], false);
    assert_eq!(report["totals"]["incomplete"], 1);
    let clean = env.run(["clean", "--dry-run"]);
    clean.code(0);
    assert!(
        clean.out().starts_with(&format!(
            "keep    {} (INCOMPLETE; 1.0 MiB, 4 files; deadline YYYY-MM-DD, 28 days left): \
             the last stage did not complete",
            "[ROOT]/scratch/PRJ1/plate7"
        )),
        "{clean}"
    );
    assert!(
        clean
            .err()
            .starts_with("nothing can be removed: 1 folder is kept, each for the reason shown\n"),
        "{clean}"
    );

    // Without its manifest, verify points at the stage, never at `manifest create`.
    chmod(&dest, 0o755);
    std::fs::remove_file(dest.join("MANIFEST.sha256")).expect("remove");
    let verify = env.run([
        OsStr::new("manifest"),
        OsStr::new("verify"),
        dest.as_os_str(),
    ]);
    verify
        .code(1)
        .err_has("do not create a manifest over it")
        .err_has("`hpcstage stage [ROOT]/nas/PRJ1/raw/plate7 [ROOT]/scratch/PRJ1/plate7`");
    verify.err_lacks("create one with");
    let create = env.run([
        OsStr::new("manifest"),
        OsStr::new("create"),
        dest.as_os_str(),
    ]);
    create.code(1).err_has("its last stage did not complete");
    assert!(!dest.join("MANIFEST.sha256").exists());

    // Once the source is right again, a rerun completes and the mark goes.
    write(source.join("well_A02.tif"), &original);
    env.run([OsStr::new("stage"), source.as_os_str()]).code(0);
    let (done, _) = records(&env, &dest);
    assert!(done.get("incomplete").is_none(), "{done:#}");
    assert_eq!(
        env.run(["report", "--all", "--format", "json"]).json()["items"][0]["safety"],
        "SAFE"
    );
}

#[test]
fn a_first_stage_that_fails_is_tracked_as_incomplete() {
    let env = Env::new();
    let source = ingest(&env, "PRJ1", "plate7", 1);
    rewrite_on_nas(&source, "notes/plate.txt", "plate 99\n");
    env.run([OsStr::new("stage"), source.as_os_str()]).code(3);
    let status = env.run(["status", "--json"]);
    status.code(0);
    let json = status.json();
    let plate7 = item(&json, "plate7");
    assert_eq!(plate7["safety"], "INCOMPLETE", "{json:#}");
    assert_eq!(plate7["files"], 3, "what was verified is on scratch");
    assert!(
        plate7["reason"]
            .as_str()
            .expect("reason")
            .ends_with("notes/plate.txt SOURCE CORRUPT"),
        "{plate7}"
    );
    // 30 days from the copy, less the seconds since (whole days left, rounded down: 29
    // once the second of the copy has passed, as on a loaded machine).
    let days_left = plate7["days_left"].as_i64();
    assert!(matches!(days_left, Some(29 | 30)), "{plate7}");
}

#[test]
fn an_interrupted_stage_shows_as_incomplete_everywhere() {
    let (env, _) = safe_lab();
    let dest = env.scratch().join("PRJ1/plate7");
    // What a kill in the middle of a re-stage leaves: the `running` marker and the
    // temporary file of a file in flight.
    chmod(&dest, 0o755);
    write(dest.join(".hpcstage/running"), "");
    write(
        dest.join(".hpcstage-tmp.well_A03.tif.4f2a"),
        "x".repeat(3000),
    );
    let status = env.run(["status"]);
    assert!(
        status.out().contains(
            "PRJ1/plate7: INCOMPLETE: a copy into it started and did not finish (stopped, or \
             still running); 1 temporary file left by an interrupted copy (2.9 KiB)"
        ),
        "{status}"
    );
    // A first stage killed before any record: found by --scan only.
    let other = env.scratch().join("PRJ2/plate1");
    write(other.join(".hpcstage/journal"), "");
    write(other.join(".hpcstage/running"), "");
    write(other.join("well_A01.tif"), "a");
    write(other.join(".hpcstage-tmp.well_A02.tif.1"), "half");
    let scan = env.run([
        OsStr::new("report"),
        OsStr::new("--all"),
        OsStr::new("--scan"),
        env.scratch().as_os_str(),
        OsStr::new("--format"),
        OsStr::new("json"),
    ]);
    scan.code(0);
    let json = scan.json();
    for (name, bytes) in [("plate7", None), ("plate1", Some(5))] {
        let i = item(&json, name);
        assert_eq!(i["safety"], "INCOMPLETE", "{i}");
        assert_eq!(i["days_left"], if name == "plate7" { 28 } else { 30 });
        if let Some(b) = bytes {
            assert_eq!(i["bytes"], b, "temporaries count in the size");
        }
    }
    let clean = env.run([
        OsStr::new("clean"),
        OsStr::new("--scan"),
        env.scratch().as_os_str(),
    ]);
    clean.code(0);
    assert!(dest.join("well_A01.tif").is_file() && other.join("well_A01.tif").is_file());
    assert_eq!(clean.out().lines().count(), 2, "{clean}");
    assert!(
        clean
            .out()
            .lines()
            .all(|l| l.starts_with("keep    ") && l.contains("(INCOMPLETE; ")),
        "{clean}"
    );
}

#[test]
fn report_and_clean_agree_that_a_changed_nas_file_or_a_scratch_edit_is_at_risk() {
    let env = Env::new();
    for dataset in ["plate7", "plate8"] {
        let source = ingest(&env, "PRJ1", dataset, 1);
        env.stage(&source, None, "PRJ1");
    }
    // plate7: a NAS file appended to after staging (its NAS manifest untouched).
    let source = env.nas().join("PRJ1/raw/plate7");
    chmod(&source, 0o755);
    chmod(source.join("notes"), 0o755);
    chmod(source.join("notes/plate.txt"), 0o644);
    common::append(&source.join("notes/plate.txt"), b"appended on the NAS\n");
    // plate8: a staged file edited in place on scratch, same size.
    let edited = env.scratch().join("PRJ1/plate8/well_A01.tif");
    chmod(&edited, 0o644);
    let size = std::fs::metadata(&edited).expect("stat").len() as usize;
    write(&edited, "z".repeat(size));

    let report = env.run(["report", "--all", "--format", "json"]).json();
    let clean = env.run(["clean", "--dry-run", "--json"]).json();
    let kept = |name: &str| -> String {
        clean["candidates"]
            .as_array()
            .expect("candidates")
            .iter()
            .find(|c| c["name"] == format!("PRJ1/{name}"))
            .and_then(|c| c["refused"].as_str())
            .unwrap_or_else(|| panic!("{name} not kept: {clean:#}"))
            .to_string()
    };
    for (name, why) in [
        (
            "plate7",
            "1 file is not the verified NAS copy: notes/plate.txt (changed on the NAS or on \
             scratch: 28 bytes there, 8 here)",
        ),
        (
            "plate8",
            "1 file is not the verified NAS copy: well_A01.tif (edited on scratch after it was \
             verified)",
        ),
    ] {
        let i = item(&report, name);
        assert_eq!(
            (i["safety"].as_str(), i["reason"].as_str()),
            (Some("AT_RISK"), Some(why))
        );
        assert_eq!(kept(name), why, "clean keeps it for the same reason");
    }
}

#[test]
fn clean_takes_a_project_or_an_item_and_report_scan_lists_only_its_root() {
    let env = lab();
    // Only PRJ0: PRJ1's removable plate9 stays.
    let run = env.run(["clean", "--project", "PRJ0"]);
    run.code(0);
    assert!(!env.scratch().join("PRJ0/scans").exists());
    assert!(env.scratch().join("PRJ1/plate9").exists());
    // One item by name: a stage as PROJECT/DATASET, a run by id prefix.
    let run = env.run(["clean", "PRJ1/plate9", "--dry-run"]);
    run.code(0);
    assert_eq!(
        run.out(),
        "remove  [ROOT]/scratch/PRJ1/plate9 (1.0 MiB, 3 files)\n"
    );
    let run = env.run(["clean", "seg-r"]);
    run.code(1)
        .err_has("\"seg-r\" names 2 runs: seg-r1, seg-r2");
    env.run(["clean", "seg-r2"]).code(0);
    assert!(!env.scratch().join("PRJ1/runs/seg-r2").exists());
    assert!(env.scratch().join("PRJ1/plate9").exists());
    env.run(["clean", "PRJ9/nothing"])
        .code(1)
        .err_has("no staged dataset or run \"PRJ9/nothing\" is tracked");

    // --scan ROOT: only what lies under ROOT, not the rest of the ledger.
    let root = env.scratch().join("PRJ1/runs");
    let run = env.run([
        OsStr::new("report"),
        OsStr::new("--all"),
        OsStr::new("--scan"),
        root.as_os_str(),
        OsStr::new("--format"),
        OsStr::new("json"),
    ]);
    let names: Vec<String> = run.json()["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["name"].as_str().expect("name").to_string())
        .collect();
    assert_eq!(names, ["seg-r1", "seg-r2"], "{run}");
    let run = env.run([
        OsStr::new("report"),
        OsStr::new("--all"),
        OsStr::new("--scan"),
        root.as_os_str(),
    ]);
    assert!(
        run.out()
            .ends_with("2 items, 31 B in 3 files; 1 AT RISK (31 B), 0 expired, 0 partly purged\n"),
        "{run}"
    );
}

#[test]
fn stage_status_and_report_count_the_same_files() {
    let env = Env::new();
    let source = ingest(&env, "PRJ1", "plate7", 1);
    let staged = env.stage(&source, None, "PRJ1");
    let dest = env.scratch().join("PRJ1/plate7");
    // A verify log next to the data is bookkeeping, like the manifest.
    env.run([
        OsStr::new("manifest"),
        OsStr::new("verify"),
        dest.as_os_str(),
    ])
    .code(0);
    assert!(std::fs::read_dir(&dest)
        .expect("read")
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("verify_")));
    let status = env.run(["status", "--json"]).json();
    let report = env.run(["report", "--all", "--format", "json"]).json();
    assert_eq!(staged["files"], 4, "3 data files and dataset.json");
    assert_eq!(item(&status, "plate7")["files"], staged["files"]);
    assert_eq!(item(&report, "plate7")["files"], staged["files"]);
}
