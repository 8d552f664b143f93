use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

use super::ending::ManifestOut;
use super::links::symlink_warning;
use super::*;
use crate::hash::Digest;
use crate::manifest::{write_line, Manifest};
use crate::progress::NoProgress;

fn tree(root: &Path) {
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(root.join("a/b/one.tif"), vec![1u8; 10_000]).unwrap();
    std::fs::write(root.join("two"), "2").unwrap();
    std::fs::hard_link(root.join("two"), root.join("two-again")).unwrap();
    std::os::unix::fs::symlink("two", root.join("link")).unwrap();
}

#[test]
fn copies_verifies_and_then_skips() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dest) = (dir.path().join("src"), dir.path().join("dest"));
    tree(&src);
    let r = copy_tree(&src, &dest, &CopyOptions::default(), &NoProgress).unwrap();
    assert!(r.ok(), "{:?}", r.failed);
    assert_eq!((r.copied, r.hard_links, r.symlinks), (2, 1, 1));
    assert!(dest.join("empty").is_dir());
    assert!(same_inode(&dest.join("two"), &dest.join("two-again")));
    assert_eq!(
        std::fs::read_link(dest.join("link")).unwrap(),
        Path::new("two")
    );
    assert_eq!(r.manifest.len(), 3);
    let again = copy_tree(&src, &dest, &CopyOptions::default(), &NoProgress).unwrap();
    assert_eq!((again.copied, again.skipped), (0, 2));
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    assert_eq!(again.manifest, r.manifest);
}

#[test]
fn a_source_that_disagrees_with_its_manifest_is_not_copied() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dest) = (dir.path().join("src"), dir.path().join("dest"));
    tree(&src);
    let m = crate::manifest::create(&src, &Filter::default(), &NoProgress).unwrap();
    m.manifest.write_atomic(&src.join(MANIFEST_NAME)).unwrap();
    std::fs::write(src.join("a/b/one.tif"), vec![2u8; 10_000]).unwrap();
    let r = copy_tree(&src, &dest, &CopyOptions::default(), &NoProgress).unwrap();
    assert_eq!(r.failed.len(), 1);
    assert_eq!(r.failed[0].kind, FailureKind::SourceCorrupt);
    assert!(!dest.join("a/b/one.tif").exists());
}

#[test]
fn dry_run_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dest) = (dir.path().join("src"), dir.path().join("dest"));
    tree(&src);
    let opts = CopyOptions {
        dry_run: true,
        ..CopyOptions::default()
    };
    let r = copy_tree(&src, &dest, &opts, &NoProgress).unwrap();
    assert!(!dest.exists());
    let codes: Vec<_> = r
        .changes
        .iter()
        .map(|(p, c)| format!("{} {}", c.code(), p.display()))
        .collect();
    assert_eq!(
        codes,
        vec![
            "d a",
            "d a/b",
            "+ a/b/one.tif",
            "d empty",
            "L link",
            "+ two",
            "h two-again"
        ]
    );
}

#[test]
fn symlinks_pointing_out_are_flagged() {
    assert!(symlink_warning_for("x", "../../etc").is_some());
    assert!(symlink_warning_for("a/x", "../b").is_none());
    assert!(symlink_warning_for("x", "/etc/passwd").is_some());
}

fn symlink_warning_for(rel: &str, target: &str) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join(rel);
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, &link).unwrap();
    symlink_warning(&LocalDir::new(dir.path()), Path::new(rel))
}

/// The paths of a journal's lines, in the file's order.
fn journal_paths(dest: &Path) -> Vec<PathBuf> {
    std::fs::read(dest.join(STATE_DIR).join("journal"))
        .unwrap()
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| crate::journal::parse_line(l).unwrap().0)
        .collect()
}

fn many_files(root: &Path, n: usize) {
    for i in 0..n {
        let p = root.join(format!("d{}/f{:05}", i % 7, (i * 7919) % n));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("{i}\n")).unwrap();
    }
}

#[test]
fn the_journal_ends_in_path_order_one_line_a_file_and_a_rerun_rewrites_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dest) = (dir.path().join("src"), dir.path().join("dest"));
    many_files(&src, 300);
    let opts = CopyOptions {
        jobs: 4,
        batch_files: 16,
        ..CopyOptions::default()
    };
    let r = copy_tree(&src, &dest, &opts, &NoProgress).unwrap();
    assert!(r.ok(), "{:?}", r.failed);
    let paths = journal_paths(&dest);
    assert_eq!(paths.len(), 300);
    assert!(paths
        .windows(2)
        .all(|w| w[0].as_os_str().as_bytes() < w[1].as_os_str().as_bytes()));
    let listed: Vec<PathBuf> = r.manifest.entries.iter().map(|e| e.path.clone()).collect();
    assert_eq!(paths, listed);

    let stamp = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.ino(), m.mtime(), m.mtime_nsec())
    };
    let (journal, manifest) = (
        dest.join(STATE_DIR).join("journal"),
        dest.join(MANIFEST_NAME),
    );
    let before = (stamp(&journal), stamp(&manifest));
    let again = copy_tree(&src, &dest, &opts, &NoProgress).unwrap();
    assert_eq!(
        (again.copied, again.skipped, again.changes_total),
        (0, 300, 0)
    );
    assert_eq!(
        (stamp(&journal), stamp(&manifest)),
        before,
        "a no-op rewrote"
    );
    assert_eq!(again.manifest_digest(), r.manifest_digest());

    // One file changed: copied again, and the journal is in path order again.
    std::fs::write(src.join(&listed[17]), "changed").unwrap();
    let changed = copy_tree(&src, &dest, &opts, &NoProgress).unwrap();
    assert_eq!((changed.copied, changed.skipped), (1, 299));
    assert_eq!(changed.changes, vec![(listed[17].clone(), Change::Changed)]);
    assert_eq!(journal_paths(&dest), listed);
    assert_ne!(changed.manifest_digest(), r.manifest_digest());
    let on_disk = Manifest::read(&manifest).unwrap();
    assert_eq!(on_disk, changed.manifest);
}

#[test]
fn without_the_manifest_in_memory_the_report_has_its_digest() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dest) = (dir.path().join("src"), dir.path().join("dest"));
    tree(&src);
    let opts = CopyOptions {
        keep_manifest: false,
        ..CopyOptions::default()
    };
    let r = copy_tree(&src, &dest, &opts, &NoProgress).unwrap();
    assert!(r.ok(), "{:?}", r.failed);
    assert!(r.manifest.is_empty());
    let bytes = std::fs::read(dest.join(MANIFEST_NAME)).unwrap();
    assert_eq!(r.manifest_digest, Some(Digest::of(&bytes)));
    assert_eq!(Manifest::parse(&bytes, &dest).unwrap().len(), 3);
}

#[test]
fn changes_beyond_the_cap_are_counted_not_named() {
    let dir = tempfile::tempdir().unwrap();
    let (src, dest) = (dir.path().join("src"), dir.path().join("dest"));
    let n = CHANGES_KEPT + 5;
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..n {
        std::fs::write(src.join(format!("f{i:06}")), "").unwrap();
    }
    let opts = CopyOptions {
        dry_run: true,
        ..CopyOptions::default()
    };
    let r = copy_tree(&src, &dest, &opts, &NoProgress).unwrap();
    assert_eq!(r.changes.len(), CHANGES_KEPT);
    assert_eq!(r.changes_total, n as u64);
    assert_eq!(r.dirs_changed, 0);
    assert_eq!(r.changes[0].0, PathBuf::from("f000000"));
}

#[test]
fn a_manifest_is_written_only_from_where_it_differs_and_only_when_it_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(MANIFEST_NAME);
    let lines = |names: &[&str]| -> Vec<Vec<u8>> {
        names
            .iter()
            .map(|n| {
                let mut l = Vec::new();
                write_line(&mut l, &Digest::of(n.as_bytes()), n.as_bytes());
                l
            })
            .collect()
    };
    let make = |names: &[&str]| -> (Digest, Option<tempfile::NamedTempFile>) {
        let mut out = ManifestOut::new(&path);
        for l in lines(names) {
            out.push(&l).unwrap();
        }
        out.finish().unwrap()
    };
    let cases: [&[&str]; 6] = [
        &["a", "b", "c"],      // none there: written
        &["a", "b", "c"],      // the same: not written
        &["a", "x", "c"],      // differs in the middle
        &["a", "x"],           // shorter
        &["a", "x", "c", "d"], // longer
        &[],                   // empty
    ];
    for (i, names) in cases.iter().enumerate() {
        let expected: Vec<u8> = lines(names).concat();
        let (digest, tmp) = make(names);
        assert_eq!(digest, Digest::of(&expected), "case {i}");
        if i == 1 {
            assert!(tmp.is_none(), "an unchanged manifest was written again");
            continue;
        }
        let tmp = tmp.unwrap_or_else(|| panic!("case {i}: not written"));
        assert_eq!(std::fs::read(tmp.path()).unwrap(), expected, "case {i}");
        put_manifest(tmp, &path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected, "case {i}");
    }
    let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(leftovers, 1, "a temporary was left behind");
}
