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
    insta::assert_snapshot!("report_markdown", run.out());
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
    assert!(
        run.out()
            .ends_with("0 items, 0 B in 0 files; 0 AT RISK (0 B), 0 expired, 0 partly purged\n"),
        "{run}"
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
            ("PRJ1/plate7".to_string(), "removed".to_string()),
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
                "results were not pulled back to the NAS yet (run `hpcstage pull`)".to_string()
            ),
            ("seg-r2".to_string(), "removed".to_string()),
        ]
    );
    let scratch = env.scratch();
    for gone in [
        "PRJ0/scans",
        "PRJ1/plate7",
        "PRJ1/plate9",
        "PRJ1/runs/seg-r2",
    ] {
        assert!(!scratch.join(gone).exists(), "{gone} is still there");
    }
    for kept in [
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
    // Removed stages leave the ledger; what is left is what the report shows.
    let report = env.run(["report", "--all", "--format", "json"]);
    let json = report.json();
    let names: Vec<&str> = json["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["plate8", "seg-r1", "seg-r2"], "{report}");

    // The human form says why each refused folder is kept.
    let run = env.run(["clean"]);
    run.code(0);
    let mut lines: Vec<String> = run.out().lines().map(str::to_string).collect();
    lines.sort();
    insta::assert_snapshot!("clean_refusals", lines.join("\n"));
    assert_eq!(run.err(), "0 B freed\n");
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
        assert!(run.stdout.contains(&format!("keep    {dest}: ")), "{run}");
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
            "keep    {}: {} is a symbolic link; refusing to remove it",
            link.display(),
            link.display()
        )),
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
            "5",
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
