//! The report's verdicts and summary against folders built in temporary directories.

use super::*;
use crate::run::{Event, Phase, RunView, PULLED_MARKER};
use crate::testutil::{
    days_before, policy, run_at, set_times, stage_at, write, write_manifest, World,
};
use hpcstage_staging::record::write_json;
use hpcstage_staging::walk::{MANIFEST_NAME, STATE_DIR};
use jiff::SignedDuration;

#[test]
fn deadlines_follow_each_basis_from_the_files_real_timestamps() {
    let w = World::new();
    let (_, mut record) = w.plate7();
    let now = Timestamp::now();
    record.staged_at = days_before(now, 5);
    let before_ctime = days_before(now, 0);
    set_times(
        &record.destination,
        days_before(now, 10),
        days_before(now, 20),
    );
    let after_ctime = Timestamp::now();

    // mtime: the oldest mtime plus 30 days.
    let item = stage_at(&record, &policy(PurgeBasis::Mtime), now);
    assert_eq!(item.oldest, days_before(now, 20));
    assert_eq!(item.deadline, days_before(now, -10));
    assert_eq!((item.days_left, item.safety), (10, Safety::Safe));
    // 3 data files (as `stage` counts them); the bytes include the manifest (3 lines
    // of 64 hex, 2 spaces, name, newline), which the purge takes too. `.hpcstage/` is
    // bookkeeping.
    assert_eq!((item.files, item.bytes), (3, 7 + 3 * 67 + 19));

    // atime: pulled in by a day, because relatime can lag that much.
    let item = stage_at(&record, &policy(PurgeBasis::Atime), now);
    assert_eq!(item.oldest, days_before(now, 10));
    assert_eq!(item.deadline, days_before(now, -19));

    // ctime: setting the times above changed it, so the clock restarted then.
    let item = stage_at(&record, &policy(PurgeBasis::Ctime), now);
    let start = Timestamp::from_second(before_ctime.as_second()).unwrap();
    assert!(
        item.oldest >= start && item.oldest <= after_ctime,
        "ctime {} not between {start} and {after_ctime}",
        item.oldest
    );
    assert_eq!(
        item.deadline,
        item.oldest + SignedDuration::from_hours(24 * 30)
    );

    // created: the time of staging, whatever the files say.
    let item = stage_at(&record, &policy(PurgeBasis::Created), now);
    assert_eq!(item.oldest, record.staged_at);
    assert_eq!(item.deadline, days_before(now, -25));
    assert_eq!(item.days_left, 25);
}

/// Why staging never preserves source mtimes on an mtime-purged scratch: raw data
/// acquired in 2020 keeps 2020 mtimes, and a copy carrying them is older than any
/// purge age the moment it lands. The purge takes it the same night.
#[test]
fn preserved_old_mtimes_on_an_mtime_purged_scratch_expire_at_once() {
    let w = World::new();
    let (_, record) = w.plate7();
    let acquired: Timestamp = "2020-03-01T00:00:00Z".parse().unwrap();
    set_times(&record.destination, acquired, acquired);
    let now = Timestamp::now();
    let p = policy(PurgeBasis::Mtime);
    assert!(!p.preserve_mtime(), "staging must not keep source mtimes");

    let item = stage_at(&record, &p, now);
    assert_eq!(item.oldest, acquired);
    assert_eq!(item.deadline, "2020-03-31T00:00:00Z".parse().unwrap());
    assert!(item.days_left < -365, "{}", item.days_left);
    assert_eq!(item.safety, Safety::Expired);
    assert_eq!(
        item.reason,
        "past its purge deadline; raw data verified on the NAS"
    );
}

#[test]
fn a_partly_purged_folder_says_how_many_files_are_gone() {
    let w = World::new();
    let (_, record) = w.plate7();
    let now = Timestamp::now();
    let p = PurgePolicy::default();
    std::fs::remove_file(record.destination.join("a.tif")).unwrap();
    std::fs::remove_file(record.destination.join("sub/c.csv")).unwrap();
    let item = stage_at(&record, &p, now);
    assert_eq!(item.safety, Safety::PartlyPurged);
    assert_eq!(item.reason, "2 of 3 staged files are gone");
    assert_eq!(item.files, 1, "b.tif (the manifest is bookkeeping)");

    // The purge took the manifest too: the count comes from the stage record.
    std::fs::remove_file(record.destination.join(MANIFEST_NAME)).unwrap();
    let item = stage_at(&record, &p, now);
    assert_eq!(item.safety, Safety::PartlyPurged);
    assert_eq!(item.reason, "2 of 3 staged files are gone");

    // And then the whole folder.
    std::fs::remove_dir_all(&record.destination).unwrap();
    let item = stage_at(&record, &p, now);
    assert_eq!(item.safety, Safety::Expired);
    assert_eq!(item.reason, "folder is gone (purged or removed)");
}

#[test]
fn the_whole_folder_policy_is_carried_into_items_and_the_report() {
    let w = World::new();
    let (_, record) = w.plate7();
    let run = w.run("P", "r1");
    let now = Timestamp::now();
    let all = Filter {
        within: None,
        owner: None,
        project: None,
    };
    for whole_folder in [false, true] {
        let p = PurgePolicy {
            whole_folder,
            ..PurgePolicy::default()
        };
        let items = vec![stage_at(&record, &p, now), run_at(&run, None, &p, now)];
        assert!(items.iter().all(|i| i.whole_folder == whole_folder));
        let report = build(items, &all, &p, now);
        assert_eq!(report.policy_whole_folder, whole_folder);
        assert_eq!(report.policy_age, "30 days");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["items"][0]["whole_folder"], whole_folder);
    }
}

fn item(project: &str, owner: &str, name: &str, safety: Safety, days: i64, bytes: u64) -> Item {
    let now = Timestamp::now();
    Item {
        kind: ItemKind::Stage,
        project: project.into(),
        name: name.into(),
        owner: owner.into(),
        path: PathBuf::from(format!("/scratch/{project}/{owner}/{name}")),
        bytes,
        files: 1,
        basis: PurgeBasis::Mtime,
        oldest: now,
        deadline: days_before(now, -days),
        days_left: days,
        whole_folder: false,
        safety,
        reason: String::new(),
        removable: safety == Safety::Safe,
        kept: None,
    }
}

#[test]
fn at_risk_comes_first_within_each_project_and_owner_with_totals() {
    let now = Timestamp::now();
    let items = vec![
        item("P1", "bob", "b-safe", Safety::Safe, 2, 1),
        item("P1", "alice", "a-safe-soon", Safety::Safe, 1, 10),
        item("P1", "alice", "a-expired", Safety::Expired, -3, 100),
        item("P1", "alice", "a-risk-late", Safety::AtRisk, 20, 1000),
        item("P1", "alice", "a-risk-soon", Safety::AtRisk, 3, 10_000),
        item("P0", "zoe", "z-partly", Safety::PartlyPurged, -1, 100_000),
        item("P0", "zoe", "z-safe", Safety::Safe, 5, 1_000_000),
        // The same folder found twice (ledger and --scan) counts once.
        item("P1", "bob", "b-safe", Safety::Safe, 2, 1),
    ];
    let all = Filter {
        within: None,
        owner: None,
        project: None,
    };
    let report = build(items.clone(), &all, &PurgePolicy::default(), now);
    let order: Vec<&str> = report.items.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        order,
        [
            "z-partly",
            "z-safe",
            "a-risk-soon",
            "a-risk-late",
            "a-expired",
            "a-safe-soon",
            "b-safe"
        ]
    );
    let t = &report.totals;
    assert_eq!((t.items, t.bytes, t.files), (7, 1_111_111, 7));
    assert_eq!((t.at_risk, t.at_risk_bytes), (2, 11_000));
    assert_eq!((t.expired, t.partly_purged), (1, 1));

    // A window hides SAFE items beyond it, never anything at risk or already hit.
    let week = Filter {
        within: Some(Duration::from_secs(4 * 86_400)),
        owner: Some("alice".into()),
        project: None,
    };
    let report = build(items.clone(), &week, &PurgePolicy::default(), now);
    let order: Vec<&str> = report.items.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        order,
        ["a-risk-soon", "a-risk-late", "a-expired", "a-safe-soon"]
    );
    assert_eq!(report.within_days, Some(4));
    let p0 = Filter {
        within: Some(Duration::from_secs(86_400)),
        owner: None,
        project: Some("P0".into()),
    };
    let report = build(items, &p0, &PurgePolicy::default(), now);
    let order: Vec<&str> = report.items.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(order, ["z-partly"]);
}

#[test]
fn a_stage_whose_nas_source_vanished_or_changed_is_at_risk() {
    let w = World::new();
    let (source, record) = w.plate7();
    let now = Timestamp::now();
    let p = PurgePolicy::default();
    assert_eq!(stage_at(&record, &p, now).safety, Safety::Safe);

    // A file added on the NAS takes nothing from the copy on scratch.
    write(&source.join("d.tif"), "late addition");
    write_manifest(&source);
    let item = stage_at(&record, &p, now);
    assert_eq!(item.safety, Safety::Safe);

    // Appended to on the NAS, its manifest left as it was (the report said
    // SAFE while clean kept the folder).
    std::fs::write(source.join("a.tif"), "aaaa and more").unwrap();
    let item = stage_at(&record, &p, now);
    assert_eq!((item.safety, item.removable), (Safety::AtRisk, false));
    assert_eq!(
        item.reason,
        "1 file is not the verified NAS copy: \
         a.tif (changed on the NAS or on scratch: 13 bytes there, 4 here)"
    );

    // Several files changed: the first few are named, and how many more there are.
    for (name, text) in [("b.tif", "BB"), ("sub/c.csv", "C"), ("a.tif", "AAAA")] {
        std::fs::write(source.join(name), text).unwrap();
    }
    write_manifest(&source);
    write(&record.destination.join("new.csv"), "only here");
    let item = stage_at(&record, &p, now);
    assert_eq!(item.safety, Safety::AtRisk);
    assert_eq!(
        item.reason,
        "4 files are not the verified NAS copy: \
         a.tif (the NAS manifest has another checksum: the NAS source changed), \
         b.tif (the NAS manifest has another checksum: the NAS source changed), \
         sub/c.csv (the NAS manifest has another checksum: the NAS source changed) \
         and 1 more"
    );

    // The manifest is gone.
    std::fs::remove_file(source.join(MANIFEST_NAME)).unwrap();
    let item = stage_at(&record, &p, now);
    assert_eq!(item.safety, Safety::AtRisk);
    assert_eq!(
        item.reason,
        format!(
            "no readable MANIFEST.sha256 at the NAS source {}; nothing proves a verified copy there",
            source.display()
        )
    );

    // The whole source is gone (or the NAS is not mounted here).
    let moved = w.nas().join("elsewhere");
    std::fs::rename(&source, &moved).unwrap();
    let item = stage_at(&record, &p, now);
    assert_eq!(item.safety, Safety::AtRisk);
    assert!(
        item.reason.starts_with(&format!(
            "no readable MANIFEST.sha256 at the NAS source {}",
            source.display()
        )),
        "{}",
        item.reason
    );

    // Past its deadline it is still AT RISK: what is left is the only copy.
    let old: Timestamp = "2020-03-01T00:00:00Z".parse().unwrap();
    set_times(&record.destination, old, old);
    let item = stage_at(&record, &p, now);
    assert_eq!(item.safety, Safety::AtRisk);
    assert!(
        item.reason.ends_with("; past its purge deadline"),
        "{}",
        item.reason
    );

    // Staged from a folder without a manifest: nothing proves a verified copy.
    let bare = w.root.join("bare");
    write(&bare.join("x.txt"), "x");
    let record = w.stage_to(&bare, &w.scratch().join("P/bare"), "P", "bare");
    assert_eq!(record.source_manifest_digest, None);
    let item = stage_at(&record, &p, now);
    assert_eq!(item.safety, Safety::AtRisk);
    assert_eq!(
        item.reason,
        format!(
            "no readable MANIFEST.sha256 at the NAS source {}; nothing proves a verified copy there",
            bare.display()
        )
    );
}

#[test]
fn an_incomplete_or_interrupted_stage_is_incomplete_with_its_deadline() {
    let w = World::new();
    let (_, mut record) = w.plate7();
    let now = Timestamp::now();
    let p = PurgePolicy::default();
    // The record says the last stage failed.
    record.incomplete = Some(hpcstage_staging::record::Incomplete {
        at: now,
        reason: "the last stage did not complete (1 of 3 files SOURCE CORRUPT)".into(),
        failed: vec!["b.tif SOURCE CORRUPT".into()],
        failed_count: 1,
    });
    let item = stage_at(&record, &p, now);
    assert_eq!((item.safety, item.removable), (Safety::Incomplete, false));
    assert_eq!(
        item.reason,
        "the last stage did not complete (1 of 3 files SOURCE CORRUPT): b.tif SOURCE CORRUPT"
    );
    assert_eq!((item.files, item.days_left), (3, 30));
    // Its NAS source gone, what the copy holds may be all there is: said too.
    let source = PathBuf::from(&record.source);
    std::fs::rename(&source, w.nas().join("moved")).unwrap();
    let item = stage_at(&record, &p, now);
    assert!(
        item.reason.ends_with(&format!(
            "; NAS source {} is not reachable; scratch may hold the only copy",
            source.display()
        )),
        "{}",
        item.reason
    );
    std::fs::rename(w.nas().join("moved"), &source).unwrap();

    // A copy killed in the middle: its marker and a temporary file are left.
    record.incomplete = None;
    write(&record.destination.join(".hpcstage/running"), "");
    write(
        &record.destination.join("sub/.hpcstage-tmp.c.csv.1"),
        "half",
    );
    let item = stage_at(&record, &p, now);
    assert_eq!((item.safety, item.removable), (Safety::Incomplete, false));
    assert_eq!(
        item.reason,
        "a copy into it started and did not finish (stopped, or still running); \
         1 temporary file left by an interrupted copy (4 B)"
    );
    assert_eq!(item.files, 3, "temporaries are not data files");

    // Found by --scan without any record: shown, with the folder's own deadline.
    std::fs::remove_file(record.destination.join(".hpcstage/stage.json")).unwrap();
    let (stages, _) = scan_markers(&w.scratch(), 6);
    assert_eq!(stages.len(), 1);
    let item = stage_at(&stages[0], &p, now);
    assert_eq!((item.project.as_str(), item.name.as_str()), ("P", "plate7"));
    assert_eq!((item.safety, item.removable), (Safety::Incomplete, false));
    assert!(
        item.reason
            .starts_with("a copy into it was stopped before it wrote a stage record"),
        "{}",
        item.reason
    );
    assert_eq!(item.days_left, 30);
}

#[test]
fn run_folders_are_at_risk_until_their_results_are_verified_on_the_nas() {
    let w = World::new();
    let run = w.run("P", "r1");
    let now = Timestamp::now();
    let p = PurgePolicy::default();

    let item = run_at(&run, None, &p, now);
    assert_eq!((item.kind, item.safety), (ItemKind::Run, Safety::AtRisk));
    assert_eq!(item.reason, "results not yet pulled back to the NAS");
    assert_eq!(item.files, 3);

    let view = |phase, events| RunView {
        record: run.clone(),
        jobs: Vec::new(),
        phase,
        events,
        damaged: Vec::new(),
        partial: None,
        cleaned_at: None,
    };
    let failed = view(Phase::PullFailed, Vec::new());
    let item = run_at(&run, Some(&failed), &p, now);
    assert_eq!(item.safety, Safety::AtRisk);
    assert_eq!(item.reason, "pull failed; results only on scratch");

    // The pull's marker in the folder makes it SAFE, for anyone who scans it.
    let marker = w.pull(&run);
    let item = run_at(&run, None, &p, now);
    assert_eq!(item.safety, Safety::Safe);
    assert_eq!(item.reason, "results verified on the NAS");

    // ... as long as the NAS results are still what was pulled.
    write(&run.results_dir.join("masks/m2.tif"), "later");
    write_manifest(&run.results_dir);
    let item = run_at(&run, None, &p, now);
    assert_eq!(item.safety, Safety::AtRisk);
    assert!(
        item.reason.contains("changed since the pull"),
        "{}",
        item.reason
    );

    // Without the marker, the ledger's `pulled` event is the proof.
    std::fs::remove_file(run.run_dir.join(STATE_DIR).join(PULLED_MARKER)).unwrap();
    let digest = write_manifest(&run.results_dir).digest().to_hex();
    let pulled = view(
        Phase::Pulled,
        vec![crate::run::Stamped {
            at: now,
            host: "n1".into(),
            user: "alice".into(),
            event: Event::Pulled {
                results_dir: marker.results_dir.clone(),
                manifest_digest: digest,
                partial: None,
            },
        }],
    );
    let item = run_at(&run, Some(&pulled), &p, now);
    assert_eq!(item.safety, Safety::Safe);

    // A marker naming another run proves nothing.
    let mut other = marker;
    other.run_id = "r2".into();
    write_json(&run.run_dir.join(STATE_DIR).join(PULLED_MARKER), &other).unwrap();
    assert_eq!(run_at(&run, None, &p, now).safety, Safety::AtRisk);

    // Gone without a pull: AT RISK (the results may be lost); gone after: EXPIRED.
    std::fs::remove_dir_all(&run.run_dir).unwrap();
    let item = run_at(&run, None, &p, now);
    assert_eq!(item.safety, Safety::AtRisk);
    assert_eq!(
        item.reason,
        "folder is gone and results were never pulled back"
    );
    let item = run_at(&run, Some(&pulled), &p, now);
    assert_eq!(item.safety, Safety::Expired);
}

#[test]
fn a_pull_that_did_not_finish_leaves_its_run_incomplete() {
    let w = World::new();
    let run = w.run("P", "r1");
    let view = RunView {
        record: run.clone(),
        jobs: Vec::new(),
        phase: Phase::Pulling,
        events: Vec::new(),
        damaged: Vec::new(),
        partial: None,
        cleaned_at: None,
    };
    let item = run_at(&run, Some(&view), &PurgePolicy::default(), Timestamp::now());
    assert_eq!((item.safety, item.removable), (Safety::Incomplete, false));
    assert_eq!(
        item.reason,
        "a pull started and did not finish (stopped, or still running); \
         run `hpcstage pull r1` to finish it"
    );
    assert_eq!(item.days_left, 30);
}

#[test]
fn a_pulled_run_past_its_deadline_is_expired_not_safe() {
    let w = World::new();
    let run = w.run("P", "r1");
    w.pull(&run);
    let old: Timestamp = "2020-03-01T00:00:00Z".parse().unwrap();
    set_times(&run.run_dir, old, old);
    let item = run_at(&run, None, &PurgePolicy::default(), Timestamp::now());
    assert_eq!(item.safety, Safety::Expired);
    assert_eq!(
        item.reason,
        "past its purge deadline; results verified on the NAS"
    );
    assert!(item.removable || item.kept.is_some());
}

#[test]
fn scan_finds_marked_folders_of_every_owner_and_only_those() {
    let w = World::new();
    let source = w.nas_dataset("P", "d", &[("x.txt", "x")]);
    let lab = w.scratch();
    let mut alice = w.stage_to(&source, &lab.join("alice/P/d"), "P", "d");
    alice.owner = "alice".into();
    let mut bob = w.stage_to(&source, &lab.join("bob/P/d"), "P", "d");
    bob.owner = "bob".into();
    write_json(&bob.destination.join(STATE_DIR).join("stage.json"), &bob).unwrap();
    let run = w.run("P", "r1");
    // A copy of a staged folder keeps a marker that names the original: not a stage.
    let copy = lab.join("alice/P/copy-of-d");
    w.stage_to(&source, &copy, "P", "d");
    let mut stale = alice.clone();
    stale.destination = lab.join("alice/P/d");
    write_json(&copy.join(STATE_DIR).join("stage.json"), &stale).unwrap();
    // Unmarked folders are not hpcstage's.
    write(&lab.join("carol/notes.txt"), "n");

    let (stages, runs) = scan_markers(&lab, 6);
    let mut found: Vec<(String, PathBuf)> = stages
        .iter()
        .map(|r| (r.owner.clone(), r.destination.clone()))
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            ("alice".to_string(), alice.destination.clone()),
            ("bob".to_string(), bob.destination.clone())
        ]
    );
    assert_eq!(runs, [run]);

    // Through a symlinked scratch root (`/scratch` -> `/gpfs/scratch`) too.
    let link = w.root.join("scratch-link");
    std::os::unix::fs::symlink(&lab, &link).unwrap();
    let (stages, runs) = scan_markers(&link, 6);
    assert_eq!((stages.len(), runs.len()), (2, 1));
}

/// Drops the capabilities that let root read any folder, for the calling thread only
/// (Linux keeps capabilities per thread), so that root meets "permission denied" too.
fn drop_read_override_in_this_thread() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const DAC_OVERRIDE: u32 = 1 << 1;
    const DAC_READ_SEARCH: u32 = 1 << 2;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset with a version-3 header and two data structs, as
    // capget(2) documents; both pointers are valid for the call.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()),
            0
        );
        data[0].effective &= !(DAC_OVERRIDE | DAC_READ_SEARCH);
        assert_eq!(
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()),
            0
        );
    }
}

#[test]
fn scan_skips_folders_it_cannot_read_and_goes_on() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new();
    let source = w.nas_dataset("P", "d", &[("x.txt", "x")]);
    let lab = w.scratch();
    let mut expected = Vec::new();
    for user in ["a", "m", "z"] {
        expected.push(
            w.stage_to(&source, &lab.join(user).join("P/d"), "P", "d")
                .destination,
        );
        // Private folders of other users, between and around the readable ones.
        let private = lab.join(format!("{user}-private"));
        write(&private.join("P/d/.hpcstage/stage.json"), "{}");
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o000)).unwrap();
    }
    let (stages, _) = std::thread::spawn(move || {
        drop_read_override_in_this_thread();
        scan_markers(&lab, 6)
    })
    .join()
    .unwrap();
    let mut found: Vec<PathBuf> = stages.into_iter().map(|r| r.destination).collect();
    found.sort();
    assert_eq!(found, expected);
}

#[test]
fn gather_reads_the_ledger_and_the_scanned_roots_once_each() {
    let w = World::new();
    let (_, record) = w.plate7();
    let state = w.root.join("state");
    let ledger = hpcstage_staging::ledger::Ledger::open(&state).unwrap();
    ledger.put_stage(&record).unwrap();
    write(&state.join("stages/broken.json"), "{");
    let run = w.run("P", "r1");
    let store = crate::run::RunStore::open(&state).unwrap();
    store.create(&run).unwrap();
    let now = Timestamp::now();
    let p = PurgePolicy::default();
    let (views, _) = load_runs(&state, None).unwrap();
    let scratch = w.scratch();
    let src = Sources {
        state_dir: &state,
        views: &views,
        scan_roots: std::slice::from_ref(&scratch),
        policy: &p,
        scratch_root: Some(&scratch),
        now,
    };
    let (items, warnings) = gather(&src).unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with("skipping damaged ledger entry"));
    let all = Filter {
        within: None,
        owner: None,
        project: None,
    };
    let report = build(items, &all, &p, now);
    let got: Vec<(&str, Safety, bool)> = report
        .items
        .iter()
        .map(|i| (i.name.as_str(), i.safety, i.removable))
        .collect();
    assert_eq!(
        got,
        [
            ("r1", Safety::AtRisk, false),
            ("plate7", Safety::Safe, true)
        ]
    );
    assert_eq!(report.totals.at_risk, 1);

    // --scan ROOT lists only what is under ROOT.
    let elsewhere = w.root.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let (items, _) = gather(&Sources {
        scan_roots: std::slice::from_ref(&elsewhere),
        ..src
    })
    .unwrap();
    assert!(items.is_empty(), "{items:?}");
}

#[test]
fn a_stage_that_a_run_still_reads_is_in_use_and_not_removable() {
    let w = World::new();
    let (_, record) = w.plate7();
    let state = w.root.join("state");
    hpcstage_staging::ledger::Ledger::open(&state)
        .unwrap()
        .put_stage(&record)
        .unwrap();
    let mut run = w.run("P", "r1");
    run.input.path = record.destination.clone();
    write_json(&run.run_dir.join(STATE_DIR).join("run.json"), &run).unwrap();
    let store = crate::run::RunStore::open(&state).unwrap();
    store.create(&run).unwrap();
    let facts = |state: &str| crate::run::Event::JobState {
        role: crate::run::JobRole::Compute,
        job_id: "42".into(),
        facts: Box::new(crate::run::JobFacts {
            state: state.into(),
            ..Default::default()
        }),
        observer: "status".into(),
    };
    store
        .append(
            "r1",
            crate::run::Event::Submitted {
                role: crate::run::JobRole::Compute,
                job_id: "42".into(),
                token: "t".into(),
                array_size: Some(2),
            },
        )
        .unwrap();
    let now = Timestamp::now();
    let p = PurgePolicy::default();
    let scratch = w.scratch();
    let verdict = || {
        let (views, _) = load_runs(&state, None).unwrap();
        let (items, _) = gather(&Sources {
            state_dir: &state,
            views: &views,
            scan_roots: &[],
            policy: &p,
            scratch_root: Some(&scratch),
            now,
        })
        .unwrap();
        let stage = items
            .into_iter()
            .find(|i| i.kind == ItemKind::Stage)
            .unwrap();
        (stage.safety, stage.reason, stage.removable)
    };
    // Submitted, never observed: the scheduler could not be asked yet.
    assert_eq!(
        verdict(),
        (
            Safety::InUse,
            "in use by run r1 (compute job 42 state not known yet)".into(),
            false
        )
    );
    store.append("r1", facts("PENDING")).unwrap();
    assert_eq!(
        verdict(),
        (
            Safety::InUse,
            "in use by run r1 (compute job 42 PENDING)".into(),
            false
        )
    );
    // The job ended, but nothing was pulled: the run may still be retried.
    store.append("r1", facts("CANCELLED by 0")).unwrap();
    assert_eq!(
        verdict(),
        (
            Safety::InUse,
            "in use by run r1 (not pulled yet)".into(),
            false
        )
    );
    // Pulled: it no longer reads the stage.
    let marker = w.pull(&run);
    store
        .append(
            "r1",
            crate::run::Event::Pulled {
                results_dir: marker.results_dir,
                manifest_digest: marker.manifest_digest,
                partial: None,
            },
        )
        .unwrap();
    assert_eq!(
        verdict(),
        (Safety::Safe, "raw data verified on the NAS".into(), true)
    );
    // Another user's unpulled run found by --scan reads it too.
    std::fs::remove_file(run.run_dir.join(STATE_DIR).join(PULLED_MARKER)).unwrap();
    let readers = Readers::from_runs(&[], std::slice::from_ref(&run));
    assert_eq!(readers.of(&record.destination), ["run r1 (not pulled yet)"]);
}

mod whole_folder {
    use super::*;

    fn item(path: &str, name: &str, deadline: &str) -> Item {
        let d: Timestamp = deadline.parse().unwrap();
        Item {
            kind: ItemKind::Stage,
            project: "P".into(),
            name: name.into(),
            owner: "o".into(),
            path: path.into(),
            bytes: 0,
            files: 0,
            basis: PurgeBasis::Mtime,
            oldest: d,
            deadline: d,
            days_left: 0,
            safety: Safety::Safe,
            reason: "raw data verified on the NAS".into(),
            whole_folder: true,
            removable: true,
            kept: None,
        }
    }

    #[test]
    fn items_under_one_top_folder_share_its_earliest_deadline() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut items = vec![
            item("/s/P/a", "a", "2026-01-10T00:00:00Z"),
            item("/s/P/runs/r", "r", "2026-01-05T00:00:00Z"),
            item("/s/Q/b", "b", "2026-01-20T00:00:00Z"),
        ];
        apply_whole_folder(&mut items, Path::new("/s"), now);
        assert_eq!(
            items[0].deadline,
            "2026-01-05T00:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert!(
            items[0].reason.contains("all of /s/P with r"),
            "{}",
            items[0].reason
        );
        assert_eq!(
            items[1].deadline,
            "2026-01-05T00:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(
            items[2].deadline,
            "2026-01-20T00:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(items[0].days_left, 4);
    }
}
