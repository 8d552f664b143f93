use super::links::symlink_warning;
use super::*;
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
