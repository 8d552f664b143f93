//! `hpcstage manifest create|verify`: byte-compatible with GNU `sha256sum`, both ways, and
//! honest about what it found.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_lines, assert_text, name, read_text, tricky_tree, write, Env, NEWLINE};

/// How GNU tools print a name on one line: `\` first and `\\`, `\n`, `\r` escaped when the
/// name holds any of them.
fn gnu_display(rel: &Path) -> String {
    let s = rel.to_str().expect("test names are UTF-8");
    if s.contains(['\\', '\n', '\r']) {
        let escaped = s
            .replace('\\', "\\\\")
            .replace('\n', "\\n")
            .replace('\r', "\\r");
        format!("\\{escaped}")
    } else {
        s.to_string()
    }
}

/// `sha256sum [FLAGS] -- FILES...` run in `dir`: GNU's own output for these names.
fn gnu_sha256sum(dir: &Path, flags: &[&str], files: &[PathBuf]) -> String {
    let out = Command::new("sha256sum")
        .args(flags)
        .arg("--")
        .args(files)
        .current_dir(dir)
        .env_clear()
        .env("LC_ALL", "C")
        .output()
        .expect("run sha256sum");
    assert!(
        out.status.success(),
        "sha256sum failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 names")
}

#[test]
fn create_writes_exactly_what_gnu_sha256sum_prints_for_the_same_files() {
    let env = Env::new();
    let dir = env.path("data");
    let files = tricky_tree(&dir);

    let run = env.run(["manifest", "create", "data"]);
    run.code(0);
    assert!(
        run.out().starts_with(&format!(
            "wrote [ROOT]/data/MANIFEST.sha256 ({} files, ",
            files.len()
        )),
        "{run}"
    );

    // sha256sum given the same names in byte order prints the same bytes, including the
    // `\`-escaped lines for the backslash, newline and CR names.
    let expected = gnu_sha256sum(&dir, &[], &files);
    assert_text(&read_text(dir.join("MANIFEST.sha256")), &expected);
    assert_eq!(expected.lines().filter(|l| l.starts_with('\\')).count(), 3);
}

#[test]
fn sha256sum_c_accepts_a_created_manifest_with_escaped_names() {
    let env = Env::new();
    let dir = env.path("data");
    let files = tricky_tree(&dir);
    env.run(["manifest", "create", "data"]).code(0);

    let check = env.sh(&dir, "sha256sum -c MANIFEST.sha256");
    check.code(0);
    let ok = check.stdout.lines().filter(|l| l.ends_with(": OK")).count();
    assert_eq!(ok, files.len(), "{check}");
    assert!(!check.stdout.contains("FAILED"), "{check}");
}

#[test]
fn create_is_byte_identical_to_the_find_sort_xargs_sha256sum_pipeline() {
    let env = Env::new();
    let dir = env.path("plain");
    write(dir.join("b.txt"), "b\n");
    write(dir.join("B.txt"), "upper\n");
    write(dir.join("a b/c d.csv"), "1,2\n");
    write(dir.join("a b/ünï.txt"), "u\n");
    write(dir.join("zz/empty"), "");
    write(dir.join("_under"), "x");
    write(dir.join("a-dash"), "y");
    env.run(["manifest", "create", "plain"]).code(0);

    let gnu = env.sh(
        &dir,
        "find . -type f ! -name MANIFEST.sha256 -printf '%P\\0' | LC_ALL=C sort -z \
         | xargs -0 sha256sum",
    );
    gnu.code(0);
    assert_text(&read_text(dir.join("MANIFEST.sha256")), &gnu.stdout);
}

#[test]
fn a_manifest_file_looks_like_this() {
    let env = Env::new();
    let dir = env.path("ds");
    write(dir.join("plate 1/A01.tif"), "well A01\n");
    write(dir.join("plate 1/A02.tif"), "well A02\n");
    write(dir.join("samples.csv"), "id,well\n1,A01\n2,A02\n");
    write(dir.join(name(NEWLINE)), "odd name\n");
    write(dir.join("empty.txt"), "");
    env.run(["manifest", "create", "ds"]).code(0);
    insta::assert_snapshot!("manifest_file", read_text(dir.join("MANIFEST.sha256")));
}

#[test]
fn create_refuses_to_replace_a_manifest_without_force() {
    let env = Env::new();
    write(env.path("d/x"), "x");
    write(env.path("d/MANIFEST.sha256"), "keep me\n");
    let run = env.run(["manifest", "create", "d"]);
    run.code(1)
        .err_has("error: [ROOT]/d/MANIFEST.sha256 already exists; pass --force to replace it");
    assert_text(&read_text(env.path("d/MANIFEST.sha256")), "keep me\n");
    env.run(["manifest", "create", "d", "--force"]).code(0);
    assert_text(
        &read_text(env.path("d/MANIFEST.sha256")),
        &gnu_sha256sum(&env.path("d"), &[], &["x".into()]),
    );
}

/// Writes a manifest with a shell pipeline run inside `dir`, outside `dir`, and checks
/// `hpcstage manifest verify` accepts it with one OK line per file.
fn verify_accepts(env: &Env, dir: &Path, files: &[PathBuf], pipeline: &str) {
    let manifest = env.path("external.sha256");
    env.sh(dir, &format!("{pipeline} > {}", manifest.display()))
        .code(0);
    let run = env.run([
        "manifest".as_ref(),
        "verify".as_ref(),
        dir.as_os_str(),
        "--manifest".as_ref(),
        manifest.as_os_str(),
        "--no-log".as_ref(),
    ]);
    run.code(0);
    let mut got: Vec<&str> = run.stdout.lines().collect();
    got.sort_unstable();
    let mut want: Vec<String> = files
        .iter()
        .map(|f| format!("{}: OK", gnu_display(f)))
        .collect();
    want.sort_unstable();
    assert_lines(&got, &want);
    run.err_has(&format!(
        "{}: {} OK, 0 FAILED, 0 MISSING, 0 unreadable, 0 unlisted",
        dir.display()
            .to_string()
            .replace(&*env.root.to_string_lossy(), "[ROOT]"),
        files.len()
    ));
}

#[test]
fn verify_accepts_find_xargs_sha256sum_output_with_dot_slash_prefixes() {
    let env = Env::new();
    let dir = env.path("data");
    let files = tricky_tree(&dir);
    verify_accepts(
        &env,
        &dir,
        &files,
        "find . -type f -print0 | xargs -0 sha256sum",
    );
}

#[test]
fn verify_accepts_plain_sha256sum_output() {
    let env = Env::new();
    let dir = env.path("data");
    let files = tricky_tree(&dir);
    let list = files
        .iter()
        .map(|f| shell_quote(f))
        .collect::<Vec<_>>()
        .join(" ");
    verify_accepts(&env, &dir, &files, &format!("sha256sum -- {list}"));
}

#[test]
fn verify_accepts_binary_mode_star_lines() {
    let env = Env::new();
    let dir = env.path("data");
    let files = tricky_tree(&dir);
    let text = gnu_sha256sum(&dir, &["-b"], &files);
    assert!(text.lines().all(|l| l.contains(" *")), "{text}");
    verify_accepts(
        &env,
        &dir,
        &files,
        "find . -type f -print0 | xargs -0 sha256sum -b",
    );
}

#[test]
fn verify_accepts_bsd_tag_lines() {
    let env = Env::new();
    let dir = env.path("data");
    let files = tricky_tree(&dir);
    let text = gnu_sha256sum(&dir, &["--tag"], &files);
    assert!(
        text.lines()
            .all(|l| l.starts_with("SHA256 (") || l.starts_with("\\SHA256 (")),
        "{text}"
    );
    verify_accepts(
        &env,
        &dir,
        &files,
        "find . -type f -print0 | xargs -0 sha256sum --tag",
    );
}

fn shell_quote(p: &Path) -> String {
    let s = p.to_str().expect("UTF-8");
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A tree with one file of each verdict: intact, changed, deleted, and one added.
fn damaged_tree(env: &Env) -> PathBuf {
    let dir = env.path("d");
    write(dir.join("intact.txt"), "same\n");
    write(dir.join("sub/changed.txt"), "before\n");
    write(dir.join("sub/deleted.txt"), "gone soon\n");
    write(dir.join(name(NEWLINE)), "odd\n");
    env.run(["manifest", "create", "d"]).code(0);
    write(dir.join("sub/changed.txt"), "after!\n");
    std::fs::remove_file(dir.join("sub/deleted.txt")).expect("delete");
    write(dir.join("added.txt"), "new\n");
    dir
}

#[test]
fn verify_prints_ok_failed_missing_lists_unlisted_files_and_exits_3() {
    let env = Env::new();
    let dir = damaged_tree(&env);
    let run = env.run(["manifest", "verify", "d"]);
    run.code(3);
    let lines = [
        "intact.txt: OK",
        "\\new\\nline.txt: OK",
        "sub/changed.txt: FAILED",
        "sub/deleted.txt: MISSING",
    ];
    assert_text(&run.stdout, &(lines.join("\n") + "\n"));
    let date = common::today();
    let summary = [
        "WARNING: 1 computed checksum did NOT match",
        "WARNING: 1 listed file missing",
        "WARNING: 1 file present but not in the manifest:",
        "  added.txt",
        "[ROOT]/d: 2 OK, 1 FAILED, 1 MISSING, 0 unreadable, 1 unlisted (16 B checked)",
    ];
    assert_text(
        &run.err(),
        &format!("{}\nlog: [ROOT]/d/verify_{date}.log\n", summary.join("\n")),
    );

    // The dated log holds a header, then exactly what was printed.
    let log = read_text(dir.join(format!("verify_{date}.log")));
    let (header, body) = log.split_once('\n').expect("log has a header line");
    assert!(
        header.starts_with(&format!(
            "# hpcstage {} manifest verify {} against {} at {date}T",
            env!("CARGO_PKG_VERSION"),
            dir.display(),
            dir.join("MANIFEST.sha256").display()
        )),
        "{header}"
    );
    let body = body.replace(&*env.root.to_string_lossy(), "[ROOT]");
    assert_text(
        &body,
        &format!("{}\n{}\n", lines.join("\n"), summary.join("\n")),
    );

    // --failures-only keeps only the bad lines (like sha256sum --quiet).
    let quiet = env.run(["manifest", "verify", "d", "--failures-only", "--no-log"]);
    quiet.code(3);
    assert_text(
        &quiet.stdout,
        "sub/changed.txt: FAILED\nsub/deleted.txt: MISSING\n",
    );
}

#[test]
fn verify_json_lists_each_verdict() {
    let env = Env::new();
    damaged_tree(&env);
    let run = env.run(["manifest", "verify", "d", "--json"]);
    run.code(3);
    let json = run.json();
    let date = common::today();
    assert_eq!(
        json,
        serde_json::json!({
            "dir": env.path("d").display().to_string(),
            "manifest": env.path("d/MANIFEST.sha256").display().to_string(),
            "ok": false,
            "files": 4,
            "passed": 2,
            "failed": ["sub/changed.txt"],
            "missing": ["sub/deleted.txt"],
            "unreadable": [],
            "unlisted": ["added.txt"],
            "bytes": 16,
            "log": env.path(format!("d/verify_{date}.log")).display().to_string(),
        }),
        "{run}"
    );
}

#[test]
fn verify_of_an_intact_tree_exits_0_and_says_so() {
    let env = Env::new();
    let dir = env.path("data");
    let files = tricky_tree(&dir);
    env.run(["manifest", "create", "data"]).code(0);
    let run = env.run(["manifest", "verify", "data", "--json", "--no-log"]);
    run.code(0);
    let json = run.json();
    assert_eq!(json["ok"], true, "{run}");
    assert_eq!(json["passed"], files.len(), "{run}");
    assert_eq!(json["failed"], serde_json::json!([]), "{run}");
    assert_eq!(json["missing"], serde_json::json!([]), "{run}");
    assert_eq!(json["unlisted"], serde_json::json!([]), "{run}");
    assert_eq!(json["log"], serde_json::Value::Null, "{run}");
    assert!(!env
        .path(format!("data/verify_{}.log", common::today()))
        .exists());
}

#[test]
fn verify_without_a_manifest_is_an_error_that_says_how_to_make_one() {
    let env = Env::new();
    write(env.path("d/x"), "x");
    let run = env.run(["manifest", "verify", "d"]);
    run.code(1).err_has(
        "error: no manifest at [ROOT]/d/MANIFEST.sha256; create one with `hpcstage manifest create [ROOT]/d`",
    );
    assert_text(&run.stdout, "");
}

/// Manifests as Windows acquisition PCs write them (CRLF, upper-case hex), and lines GNU
/// refuses: `hpcstage manifest verify` and `sha256sum -c` (run in the same folder) agree
/// on every one.
#[test]
fn verify_agrees_with_sha256sum_c_on_windows_written_manifests() {
    let env = Env::new();
    let dir = env.path("acq");
    write(dir.join("a.czi"), b"hello\n");
    write(dir.join("f\r"), b"x");
    let a = gnu_sha256sum(&dir, &[], &[PathBuf::from("a.czi")])[..64].to_string();
    let upper = a.to_uppercase();
    // (manifest text, whether GNU accepts it)
    let cases = [
        (format!("{a}  a.czi\r\n"), true),
        (format!("{a} *a.czi\r\n"), true),
        (format!("SHA256 (a.czi) = {a}\r\n"), true),
        (format!("{upper}  a.czi\r\n"), true),
        (format!("SHA256 (a.czi) = {upper}\r\n"), true),
        (format!("{a}  a.czi\r"), true),
        (format!("\r\n{a}  ./a.czi\r\n\r\n"), true),
        (format!("  {a}  a.czi\r\n"), true),
        (format!("SHA256 (a.czi)={a}\r\n"), true),
        (format!("{a} a.czi\r\n"), true),
        // A second CR is part of the name: `a.czi\r` does not exist.
        (format!("{a}  a.czi\r\r\n"), false),
        (format!("SHA256 (a.czi) = {a}\r\r\n"), false),
        (format!("{a}\r  a.czi\r\n"), false),
        (format!("sha256 (a.czi) = {a}\r\n"), false),
        (format!("{a}  a.czi\r\n{a} a.czi\r\n"), false),
    ];
    for (text, gnu_accepts) in cases {
        write(dir.join("MANIFEST.sha256"), text.as_bytes());
        let gnu = Command::new("sha256sum")
            .args(["-c", "--strict", "MANIFEST.sha256"])
            .current_dir(&dir)
            .env("LC_ALL", "C")
            .output()
            .expect("run sha256sum");
        assert_eq!(
            gnu.status.success(),
            gnu_accepts,
            "sha256sum -c on {text:?}: {}",
            String::from_utf8_lossy(&gnu.stderr)
        );
        let ours = env.run(["manifest", "verify", "acq"]);
        if gnu_accepts {
            ours.code(0);
            assert!(ours.out().contains("a.czi: OK"), "{text:?}: {ours}");
            // The file named `f\r` is not the `a.czi` of a CRLF line: it stays unlisted.
            let unlisted_f = ours.out().contains("f\\r") || ours.err().contains("f\\r");
            assert!(unlisted_f, "f\\r is not listed, so it is reported: {ours}");
        } else {
            assert_ne!(ours.code, Some(0), "{text:?} accepted: {ours}");
        }
    }
}
