//! What every user sees first: `--help`, usage errors, and where the configuration came
//! from (built-in < site file < user file < $HPCSTAGE_CONFIG < flags; $SCRATCH as the
//! default scratch root).

mod common;

use common::{assert_text, write, Env};
use serde_json::json;

#[test]
fn top_level_help() {
    let env = Env::new();
    let run = env.run(["--help"]);
    run.code(0);
    assert_text(&run.stderr, "");
    insta::assert_snapshot!("help", run.stdout);
}

#[test]
fn stage_help() {
    let env = Env::new();
    let run = env.run(["stage", "--help"]);
    run.code(0);
    insta::assert_snapshot!("stage_help", run.stdout);
}

#[test]
fn usage_errors_exit_2() {
    let env = Env::new();
    // Every command exits 2 on a flag it does not know.
    for command in [
        "ingest",
        "manifest create",
        "manifest verify",
        "stage",
        "template list",
        "submit",
        "stage-and-run",
        "pull",
        "status",
        "epilogue",
        "report",
        "clean",
        "config show",
        "demo",
    ] {
        let mut args: Vec<&str> = command.split(' ').collect();
        args.push("--no-such-flag");
        env.run(&args)
            .code(2)
            .err_has("unexpected argument '--no-such-flag'");
    }
    for args in [
        vec!["stage"],
        vec!["stage", "src", "--no-such-flag"],
        vec!["manifest", "verify"],
        vec!["no-such-command"],
        vec!["stage", "src", "--jobs", "many"],
    ] {
        let run = env.run(&args);
        run.code(2).err_has("For more information, try '--help'.");
        assert_text(&run.stdout, "");
    }
}

/// The keys whose layering these tests pin down (`config show` lists more).
const LAYERED: [&str; 8] = [
    "nas_root",
    "scratch_root",
    "state_dir",
    "jobs",
    "purge.basis",
    "purge.age",
    "purge.warn",
    "purge.whole_folder",
];

/// The rows of `config show --json` for the keys in [`LAYERED`], in its order.
fn rows(json: &serde_json::Value) -> serde_json::Value {
    let rows = json.as_array().expect("config show --json prints a list");
    serde_json::Value::Array(
        rows.iter()
            .filter(|r| LAYERED.iter().any(|k| r["key"] == *k))
            .cloned()
            .collect(),
    )
}

/// The row of one key.
fn row(json: &serde_json::Value, key: &str) -> serde_json::Value {
    json.as_array()
        .expect("config show --json prints a list")
        .iter()
        .find(|r| r["key"] == key)
        .unwrap_or_else(|| panic!("no {key} row in {json}"))
        .clone()
}

/// `config show --json`.
fn shown(env: &Env, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["config", "show", "--json"];
    args.extend_from_slice(extra);
    let run = env.run(args);
    run.code(0);
    run.json()
}

#[test]
fn config_layers_override_in_order_and_say_where_each_value_came_from() {
    let mut env = Env::new();
    write(
        env.site_config(),
        "nas_root = \"/site/nas\"\nscratch_root = \"/site/scratch\"\njobs = 3\n\
         [purge]\nbasis = \"atime\"\nage = \"60d\"\nwarn = \"10d\"\n",
    );
    write(
        env.user_config(),
        "scratch_root = \"/user/scratch\"\njobs = 4\n[purge]\nage = \"45d\"\n",
    );
    write(
        env.path("explicit.toml"),
        "jobs = 5\n[purge]\nwhole_folder = true\n",
    );
    env.set_env("HPCSTAGE_CONFIG", env.path("explicit.toml"));
    env.set_env("SCRATCH", "/env/scratch");

    let got = rows(&shown(&env, &["--nas-root", "/flag/nas"]));
    let (site, user, explicit) = (
        env.site_config().display().to_string(),
        env.user_config().display().to_string(),
        env.path("explicit.toml").display().to_string(),
    );
    assert_eq!(
        got,
        json!([
            {"key": "nas_root", "value": "/flag/nas", "source": "command line"},
            {"key": "scratch_root", "value": "/user/scratch", "source": user},
            {"key": "state_dir", "value": env.state().display().to_string(), "source": "$HPCSTAGE_STATE"},
            {"key": "jobs", "value": "5", "source": explicit},
            {"key": "purge.basis", "value": "atime", "source": site},
            {"key": "purge.age", "value": "45d", "source": user},
            {"key": "purge.warn", "value": "10d", "source": site},
            {"key": "purge.whole_folder", "value": "true", "source": explicit},
        ])
    );

    // --config names the explicit file too, and flags beat every file.
    let mut cmd = env.command();
    cmd.args([
        "config",
        "show",
        "--json",
        "--scratch-root",
        "/flag/scratch",
    ]);
    let run = env.finish(cmd);
    run.code(0);
    assert_eq!(
        row(&run.json(), "scratch_root"),
        json!({"key": "scratch_root", "value": "/flag/scratch", "source": "command line"})
    );
}

#[test]
fn scratch_is_the_default_scratch_root_and_files_override_it() {
    let mut env = Env::new();
    env.set_env("SCRATCH", "/env/scratch");
    let got = shown(&env, &[]);
    assert_eq!(
        row(&got, "scratch_root"),
        json!({"key": "scratch_root", "value": "/env/scratch", "source": "$SCRATCH"})
    );
    assert_eq!(
        row(&got, "purge.basis"),
        json!({"key": "purge.basis", "value": "mtime", "source": "built-in default"})
    );

    write(env.site_config(), "scratch_root = \"/site/scratch\"\n");
    let got = shown(&env, &[]);
    assert_eq!(
        row(&got, "scratch_root"),
        json!({"key": "scratch_root", "value": "/site/scratch", "source": env.site_config().display().to_string()})
    );
}

#[test]
fn without_any_scratch_root_stage_says_how_to_set_one() {
    let env = Env::new();
    write(env.nas().join("P/raw/ds/x"), "x");
    let mut cmd = env.command();
    cmd.arg("--nas-root")
        .arg(env.nas())
        .arg("stage")
        .arg(env.nas().join("P/raw/ds"));
    let run = env.finish(cmd);
    run.code(1).err_has(
        "error: no scratch root configured: set $SCRATCH, `scratch_root` in \
         ~/.config/hpcstage/config.toml, or pass --scratch-root DIR",
    );
}

#[test]
fn an_unknown_key_in_a_config_file_is_an_error_naming_it() {
    let env = Env::new();
    write(
        env.user_config(),
        "nas_root = \"/nas\"\nscrach_root = \"/typo\"\n",
    );
    let run = env.run(["config", "show"]);
    run.code(1).err_has("error: invalid configuration").err_has(
        "[ROOT]/xdg-config/hpcstage/config.toml:2: unknown key `scrach_root`: \
             did you mean `scratch_root`?",
    );
    assert_text(&run.stdout, "");

    // Inside a table too, and for any command, not only `config show`.
    let env = Env::new();
    write(
        env.site_config(),
        "[purge]\nbasis = \"mtime\"\nmax_age = \"30d\"\n",
    );
    write(env.path("d/x"), "x");
    let run = env.run(["manifest", "create", "d"]);
    run.code(1).err_has(
        "[ROOT]/site.toml:3: unknown key `purge.max_age`: did you mean `age`? \
         (known here: basis, age, warn, whole_folder)",
    );
    assert!(!env.path("d/MANIFEST.sha256").exists());
}

#[test]
fn a_bad_value_names_the_key_and_the_file_it_came_from() {
    let env = Env::new();
    write(env.site_config(), "[purge]\nbasis = \"weekly\"\n");
    env.run(["config", "show"])
        .code(1)
        .err_has("purge.basis (from [ROOT]/site.toml)")
        .err_has("invalid purge basis \"weekly\": expected atime, mtime, ctime or created");

    let env = Env::new();
    write(env.user_config(), "[purge]\nage = \"a month or so\"\n");
    env.run(["config", "show"]).code(1).err_has(
        "purge.age = \"a month or so\" (from [ROOT]/xdg-config/hpcstage/config.toml) is not a duration",
    );

    // A bare number asks for a unit, in days for a purge age.
    let env = Env::new();
    write(env.user_config(), "[purge]\nage = \"30\"\n");
    let run = env.run(["config", "show"]);
    run.code(1).err_has(
        "purge.age = \"30\" (from [ROOT]/xdg-config/hpcstage/config.toml) has no unit; \
         write \"30d\" for 30 days",
    );
    assert!(!run.err().contains("30sec"), "{run}");
}

#[test]
fn s3_settings_are_checked_like_the_other_keys() {
    for (toml, expected) in [
        (
            "[s3]\nlock_mode = \"strict\"\n",
            "s3.lock_mode = \"strict\" (from [ROOT]/xdg-config/hpcstage/config.toml): expected \"COMPLIANCE\" or \"GOVERNANCE\"",
        ),
        (
            "[s3]\nretain = \"10\"\n",
            "s3.retain = \"10\" (from [ROOT]/xdg-config/hpcstage/config.toml) has no unit; write \"10y\" for 10 years",
        ),
        (
            "[s3]\nendpoint = \"s3.lab.org\"\n",
            "s3.endpoint = \"s3.lab.org\" (from [ROOT]/xdg-config/hpcstage/config.toml) is not a URL",
        ),
        (
            "[s3]\nlockmode = \"COMPLIANCE\"\n",
            "unknown key `s3.lockmode`: did you mean `lock_mode`?",
        ),
    ] {
        let env = Env::new();
        write(env.user_config(), toml);
        env.run(["config", "show"]).code(1).err_has(expected);
    }
    let env = Env::new();
    write(
        env.user_config(),
        "[s3]\nendpoint = \"https://s3.lab.org\"\nlock_mode = \"governance\"\nretain = \"7y\"\n",
    );
    env.run(["config", "show"])
        .code(0)
        .out_has("s3.endpoint")
        .out_has("https://s3.lab.org")
        .out_has("s3.retain");
}

#[test]
fn a_missing_explicit_config_file_is_an_error() {
    let env = Env::new();
    env.run(["--config", "nope.toml", "config", "show"])
        .code(1)
        .err_has(
            "error: config file nope.toml does not exist (given by --config or $HPCSTAGE_CONFIG)",
        );
}

#[test]
fn an_io_error_is_printed_once_with_its_path() {
    let env = Env::new();
    write(env.path("src/x"), "x");
    write(env.path("not-a-folder"), "");
    let run = env.run([
        "--state-dir",
        "not-a-folder",
        "stage",
        "src",
        "dest",
        "--project",
        "P",
    ]);
    run.code(1);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(
        errors,
        [format!(
            "error: cannot open the ledger in {root}/not-a-folder: {root}/not-a-folder/stages: \
             Not a directory (os error 20)",
            root = env.root.display()
        )],
        "{run}"
    );
}

/// `config show` run from `/` names files by their absolute paths, and `--json` gives
/// `null` for what nothing set.
#[test]
fn config_show_from_the_root_folder_names_files_absolutely_and_unset_is_null() {
    let env = Env::new();
    write(env.site_config(), "jobs = 7\n");
    let mut cmd = env.command();
    cmd.current_dir("/").args(["config", "show", "--json"]);
    let run = env.finish(cmd);
    run.code(0);
    let j = run.json();
    assert_eq!(
        row(&j, "jobs"),
        json!({"key": "jobs", "value": "7", "source": env.site_config().display().to_string()})
    );
    assert_eq!(
        row(&j, "nas_root")["value"],
        serde_json::Value::Null,
        "{run}"
    );
}

/// What the user typed is checked first: a missing source is named before anything is
/// said about the configuration.
#[test]
fn a_missing_source_is_reported_before_a_missing_scratch_root() {
    let env = Env::new();
    let run = env.run(["stage", "/does/not/exist"]);
    run.code(1).err_has("/does/not/exist");
    assert!(!run.err().contains("scratch root"), "{run}");
}
