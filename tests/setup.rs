//! Setting hpcstage up on a cluster: shell completions and man pages (checked by the real
//! shells and by groff/man), `config init` (with what the real test cluster tells) and
//! `doctor`, against the real cluster, with the cluster unreachable for the tested process
//! only (a copy of slurm.conf naming dead ports), without SLURM on PATH, and against a real
//! sshd for a NAS reached over SSH.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::cluster::{slurm_test, which};
use common::run::{self, assert_doctor_line as assert_line, Run};
use common::sshd::Sshd;
use common::{read_text, write, Env};

/// `program` on PATH, or a failure that says how to get it (scripts/test installs it).
#[track_caller]
fn needs(program: &str, package: &str) -> PathBuf {
    which(program).unwrap_or_else(|| {
        panic!("`{program}` is not installed: apt-get install {package} (scripts/test does)")
    })
}

/// Runs `program ARGS` with a clean environment.
fn tool(program: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("LC_ALL", "C")
        .env("PATH", run::inherited_path());
    Run::of(cmd)
}

/// The completion script `hpcstage completions SHELL` prints, written to a file.
fn completion_file(env: &Env, shell: &str) -> PathBuf {
    let out = env.run(["completions", shell]);
    out.code(0);
    assert!(out.stdout.contains("stage-and-run"), "{out}");
    let path = env.path(format!("completion.{shell}"));
    write(&path, &out.stdout);
    path
}

#[test]
fn bash_completion_parses_and_completes_subcommands_and_flags() {
    let env = Env::new();
    let bash = needs("bash", "bash");
    let file = completion_file(&env, "bash");
    tool(&bash, &["-n", file.to_str().unwrap()]).code(0);
    // Load it and ask it, as bash would on <Tab>.
    let ask = |words: &str| {
        let script = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}; \
             _hpcstage hpcstage \"${{COMP_WORDS[-1]}}\" \"${{COMP_WORDS[-2]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            file.display()
        );
        let out = tool(&bash, &["-c", &script]);
        out.code(0);
        let mut words: Vec<String> = out.stdout.lines().map(str::to_owned).collect();
        words.sort();
        words
    };
    assert_eq!(
        ask("hpcstage sta"),
        ["stage", "stage-and-run", "status"],
        "subcommands starting with sta"
    );
    assert!(ask("hpcstage doctor --").contains(&"--json".to_string()));
    assert!(ask("hpcstage config ''").contains(&"init".to_string()));
}

#[test]
fn zsh_and_fish_completions_parse() {
    let env = Env::new();
    let zsh = needs("zsh", "zsh");
    let file = completion_file(&env, "zsh");
    assert!(read_text(&file).starts_with("#compdef hpcstage"));
    tool(&zsh, &["-n", file.to_str().unwrap()]).code(0);
    let fish = needs("fish", "fish");
    let file = completion_file(&env, "fish");
    tool(&fish, &["--no-execute", file.to_str().unwrap()]).code(0);
    // fish loads it and completes the subcommands.
    let out = tool(
        &fish,
        &[
            "-c",
            &format!("source {}; complete -C 'hpcstage man'", file.display()),
        ],
    );
    out.code(0);
    assert!(
        out.stdout.lines().any(|l| l.starts_with("manifest\t")),
        "{out}"
    );
    assert!(
        out.stdout.lines().any(|l| l.starts_with("manpages\t")),
        "{out}"
    );
}

#[test]
fn an_unknown_shell_is_a_usage_error() {
    let env = Env::new();
    env.run(["completions", "tcsh"])
        .code(2)
        .err_has("possible values: bash");
}

#[test]
fn man_pages_cover_every_subcommand_and_render_cleanly() {
    let env = Env::new();
    let dir = env.path("man/man1");
    let out = env.run(["manpages".as_ref(), dir.as_os_str()]);
    out.code(0);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // One page per command `--help` lists, at every level (less `help`).
    let mut expected = vec!["hpcstage.1".to_string()];
    let mut todo = vec![Vec::<String>::new()];
    while let Some(path) = todo.pop() {
        let mut args = path.clone();
        args.push("--help".into());
        let help = env.run(&args);
        help.code(0);
        for sub in listed_commands(&help.stdout) {
            let mut sub_path = path.clone();
            sub_path.push(sub);
            expected.push(format!("hpcstage-{}.1", sub_path.join("-")));
            todo.push(sub_path);
        }
    }
    expected.sort();
    assert!(expected.len() > 20, "{expected:?}");
    assert_eq!(names, expected, "man pages written\n{out}");
    // Every listed path is one written.
    assert_eq!(out.stdout.lines().count(), expected.len(), "{out}");

    // groff with all warnings: a page with bad requests or escapes warns here.
    let groff = needs("groff", "groff-base");
    for name in &names {
        let page = dir.join(name);
        let run = tool(
            &groff,
            &["-k", "-man", "-Tutf8", "-ww", "-z", page.to_str().unwrap()],
        );
        run.code(0);
        assert!(run.stderr.is_empty(), "groff warns on {name}\n{run}");
    }
    // man itself shows a subcommand page with its options and examples.
    let man = needs("man", "man-db");
    let mut cmd = Command::new(man);
    cmd.args(["-l", dir.join("hpcstage-stage.1").to_str().unwrap()])
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .env("LC_ALL", "C")
        .env("PATH", run::inherited_path());
    let page = Run::of(cmd);
    page.code(0);
    for needle in [
        "hpcstage-stage",
        "--dry-run",
        "hpcstage stage /nas/lab/PRJ1/raw/plate7",
    ] {
        assert!(
            page.stdout.contains(needle),
            "man page lacks {needle:?}\n{page}"
        );
    }
}

/// The names under `Commands:` in a `--help` text, without `help`.
fn listed_commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // A wrapped description continues further in.
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------------------------------
// config init
// ---------------------------------------------------------------------------------------

/// The world's command with the runner's `$SLURM_CONF`.
fn with_cluster(env: &Env, args: &[&str]) -> Run {
    let mut cmd = env.command();
    run::pass_slurm_conf(&mut cmd);
    cmd.args(args);
    env.finish(cmd)
}

#[test]
fn config_init_fills_in_what_the_cluster_tells_and_never_overwrites() {
    let _cluster = slurm_test!();
    let mut env = Env::new();
    env.set_env("SCRATCH", env.scratch());
    let out = with_cluster(&env, &["config", "init"]);
    out.code(0);
    let file = env.user_config();
    assert_eq!(out.stdout.trim(), file.to_str().unwrap(), "{out}");
    out.err_has("sinfo lists debug (default), gpu, transfer; transfer partition: transfer")
        .err_has("sacct answers: accounting is on");
    let text = read_text(&file);
    for line in [
        &format!("scratch_root = \"{}\"", env.scratch().display()),
        "# sinfo lists: debug (default), gpu, transfer.",
        "transfer_partition = \"transfer\"",
        "# sacct answered: accounting is on",
        "# basis = \"mtime\"",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(line)),
            "lacks {line:?}:\n{text}"
        );
    }
    // What it wrote is what config show reads, from that file.
    let show = env.run(["config", "show", "--json"]);
    show.code(0);
    let rows = show.json();
    let source = |key: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == key)
            .map(|r| r["source"].as_str().unwrap().to_owned())
    };
    for key in ["slurm.transfer_partition", "scratch_root"] {
        let from = source(key).unwrap();
        assert!(file.ends_with(&from), "{key} comes from {from}\n{show}");
    }

    // A second init, user or site, changes nothing that exists.
    write(&file, "jobs = 7\n");
    with_cluster(&env, &["config", "init"])
        .code(1)
        .err_has("exists: `config init` never overwrites a config");
    assert_eq!(read_text(&file), "jobs = 7\n");
    write(env.site_config(), "# the admins' own\n");
    with_cluster(&env, &["config", "init", "--site"])
        .code(1)
        .err_has("site.toml exists");
    assert_eq!(read_text(env.site_config()), "# the admins' own\n");
}

#[test]
fn config_init_site_writes_the_site_file_without_one_users_scratch() {
    let mut env = Env::new();
    env.set_env("SCRATCH", env.scratch());
    let out = env.run(["config", "init", "--site", "--no-detect"]);
    out.code(0);
    let text = read_text(env.site_config());
    assert!(
        text.starts_with("# hpcstage configuration: the site file"),
        "{text}"
    );
    assert!(
        !text.contains(&env.scratch().display().to_string()),
        "{text}"
    );
    // Every key is commented out: the file sets nothing yet, and parses.
    env.run(["config", "show"]).code(0);
    assert_eq!(
        env.run(["config", "init", "--site", "--no-detect", "--print"])
            .stdout,
        text
    );
}

// ---------------------------------------------------------------------------------------
// doctor
// ---------------------------------------------------------------------------------------

/// A site config with the world's NAS and scratch and a purge policy.
fn configured(env: &Env, extra: &str) {
    std::fs::create_dir_all(env.nas()).unwrap();
    write(
        env.site_config(),
        format!(
            "nas_root = \"{}\"\nscratch_root = \"{}\"\n{extra}\n[purge]\nbasis = \"atime\"\nage = \"60d\"\n",
            env.nas().display(),
            env.scratch().display()
        ),
    );
}

#[test]
fn doctor_passes_on_the_real_cluster() {
    let _cluster = slurm_test!();
    let env = Env::new();
    configured(&env, "");
    let out = with_cluster(&env, &["doctor"]);
    out.code(0);
    assert_line(&out, "config", "ok", "site.toml");
    assert_line(&out, "scratch_root", "ok", "exists and is writable");
    assert_line(&out, "nas_root", "ok", "exists and is writable");
    assert_line(&out, "ssh", "skip", "local folder");
    assert_line(&out, "purge policy", "ok", "basis atime, age 60d, warn 7d");
    assert_line(&out, "sinfo", "ok", "partitions: debug, gpu, transfer");
    assert_line(&out, "transfer partition", "ok", "transfer exists");
    assert_line(&out, "sbatch", "ok", "sbatch --test-only");
    assert_line(&out, "sacct", "ok", "accounting is on");
    // The test cluster has no Epilog: a warning with the slurm.conf line, not a failure.
    assert_line(
        &out,
        "epilog",
        "warn",
        "fix: admins: Epilog=/usr/local/sbin/hpcstage-epilog",
    );
    // No job was submitted by the check.
    let json = with_cluster(&env, &["doctor", "--json"]);
    json.code(0);
    let checks = json.json();
    assert!(
        checks
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] != "fail"),
        "{json}"
    );
}

#[test]
fn doctor_fails_with_fixes_when_the_cluster_is_unreachable() {
    let _cluster = slurm_test!();
    let env = Env::new();
    configured(&env, "");
    // The real slurm.conf, with the controller's and slurmdbd's ports pointing nowhere:
    // unreachable for this process only, the shared cluster keeps running.
    let conf = std::env::var_os("SLURM_CONF").map_or("/etc/slurm/slurm.conf".into(), PathBuf::from);
    let dead = dead_port();
    let text: String = read_text(&conf)
        .lines()
        .map(|l| {
            let key = l
                .split('=')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            match key.as_str() {
                "slurmctldport" => format!("SlurmctldPort={dead}"),
                "accountingstorageport" => format!("AccountingStoragePort={dead}"),
                _ => l.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dead_conf = env.path("slurm.conf");
    write(&dead_conf, text + "\n");
    let mut cmd = env.command();
    cmd.env("SLURM_CONF", &dead_conf).arg("doctor");
    let out = env.finish(cmd);
    out.code(1)
        .err_has("2 of 11 checks failed (sinfo, sacct); each line above says how to fix it");
    assert_line(&out, "sinfo", "FAIL", "Unable to contact slurm controller");
    assert_line(
        &out,
        "sinfo",
        "FAIL",
        "fix: check that the controller is up",
    );
    assert_line(&out, "transfer partition", "skip", "sinfo did not answer");
    assert_line(&out, "sbatch", "skip", "controller is unreachable");
    assert_line(&out, "sacct", "FAIL", "fix: check that slurmdbd is up");
    // What does not need SLURM is still checked.
    assert_line(&out, "scratch_root", "ok", "writable");
    assert!(
        out.elapsed.as_secs() < 40,
        "a dead controller must not hang the doctor\n{out}"
    );
}

/// A loopback port nothing listens on.
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn doctor_without_slurm_on_path() {
    let mut env = Env::new();
    configured(&env, "");
    // PATH without the SLURM commands.
    let bin = env.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    env.set_env("PATH", &bin);
    let out = env.run(["doctor"]);
    out.code(0);
    assert_line(
        &out,
        "sinfo",
        "warn",
        "sbatch is not on PATH: jobs run with the local executor",
    );
    assert_line(&out, "sacct", "skip", "SLURM is not installed here");
    // With executor = slurm the same is a failure.
    configured(&env, "[slurm]\nexecutor = \"slurm\"");
    let out = env.run(["doctor"]);
    out.code(1).err_has("(sinfo)");
    assert_line(&out, "sinfo", "FAIL", "fix: load the SLURM module");
}

#[test]
fn doctor_names_missing_folders_a_wrong_partition_and_a_missing_policy() {
    let _cluster = slurm_test!();
    let env = Env::new();
    write(
        env.site_config(),
        format!(
            "nas_root = \"{}\"\nscratch_root = \"/nonexistent/scratch\"\n[slurm]\ntransfer_partition = \"dtn\"\n",
            env.path("no-nas").display()
        ),
    );
    let out = with_cluster(&env, &["doctor"]);
    out.code(1);
    assert_line(
        &out,
        "scratch_root",
        "FAIL",
        "/nonexistent/scratch does not exist -> fix: create it",
    );
    assert_line(&out, "nas_root", "FAIL", "no-nas does not exist");
    assert_line(
        &out,
        "transfer partition",
        "FAIL",
        "\"dtn\" is not a partition sinfo lists",
    );
    assert_line(
        &out,
        "transfer partition",
        "FAIL",
        "set [slurm] transfer_partition = \"transfer\"",
    );
    assert_line(&out, "purge policy", "warn", "not configured");
    // A broken config is the first line, and fails.
    write(env.site_config(), "nas_rot = \"/x\"\n");
    let out = env.run(["doctor"]);
    out.code(1);
    assert_line(&out, "config", "FAIL", "nas_rot");
}

#[test]
fn doctor_checks_an_ssh_nas_host_key_folder_and_sha256sum() {
    let env = Env::new();
    let sshd = Sshd::start(&env);
    let nas = sshd.remote_dir(&env, "remote-nas");
    std::fs::create_dir_all(env.scratch()).unwrap();
    write(
        env.site_config(),
        format!(
            "nas_root = \"{}\"\nscratch_root = \"{}\"\n[slurm]\nexecutor = \"local\"\n[ssh]\nremote_verify = true\n[purge]\nbasis = \"mtime\"\nage = \"30d\"\n",
            sshd.spec(&nas),
            env.scratch().display()
        ),
    );
    let out = env.run(["doctor"]);
    out.code(0);
    assert_line(&out, "ssh", "ok", "nas: host key known, login accepted");
    assert_line(&out, "nas_root", "ok", "exists and is writable");
    assert_line(&out, "sha256sum", "ok", "--remote-verify works");
    assert_line(&out, "sbatch", "skip", "executor = local");

    // Without the known_hosts entry: refused, with the ssh-keyscan line to fix it.
    sshd.write_known_hosts(&env, "");
    let out = env.run(["doctor"]);
    out.code(1);
    let keyscan = format!("ssh-keyscan -t ed25519 -p {} 127.0.0.1 >>", sshd.port());
    assert_line(&out, "ssh", "FAIL", &keyscan);
    assert_line(
        &out,
        "ssh",
        "FAIL",
        "fix: check the fingerprint with the NAS admins",
    );
    assert_line(&out, "nas_root", "skip", "needs the SSH connection");
}

/// A folder of SLURM commands for the world's PATH: the real ones, except that
/// `scontrol show config` reports `Epilog = EPILOG` (the test cluster has none, and its
/// slurm.conf is shared: it is not changed).
fn slurm_with_epilog(env: &Env, epilog: &str) -> PathBuf {
    let dir = env.path("slurm-bin");
    std::fs::create_dir_all(&dir).unwrap();
    for tool in ["sinfo", "sacct", "sbatch", "squeue"] {
        let real = which(tool).unwrap();
        let link = dir.join(tool);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(real, link).unwrap();
    }
    let scontrol = which("scontrol").unwrap();
    let script = dir.join("scontrol");
    write(
        &script,
        format!(
            "#!/bin/sh\nif [ \"$1 $2\" = 'show config' ]; then\n  {real} show config | sed 's|^Epilog .*|Epilog                  = {epilog}|'\nelse\n  exec {real} \"$@\"\nfi\n",
            real = scontrol.display()
        ),
    );
    common::chmod(&script, 0o755);
    dir
}

#[test]
fn doctor_checks_the_epilog_slurm_conf_names() {
    let _cluster = slurm_test!();
    let mut env = Env::new();
    configured(&env, "");
    let wrapper = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/hpcstage-epilog");
    let path = |dir: &Path| {
        format!(
            "{}:{}",
            dir.display(),
            run::inherited_path().to_string_lossy()
        )
    };
    // The wrapper of the release tarball: it runs `hpcstage epilogue`.
    let dir = slurm_with_epilog(&env, wrapper.to_str().unwrap());
    env.set_env("PATH", path(&dir));
    let out = with_cluster(&env, &["doctor"]);
    out.code(0);
    assert_line(
        &out,
        "epilog",
        "ok",
        "hpcstage-epilog runs `hpcstage epilogue`",
    );
    // Another site's Epilog, without hpcstage in it: a warning.
    slurm_with_epilog(&env, "/bin/true");
    let out = with_cluster(&env, &["doctor"]);
    out.code(0);
    assert_line(
        &out,
        "epilog",
        "warn",
        "Epilog=/bin/true does not run `hpcstage epilogue`",
    );
    // Named but missing on this node, which runs slurmd: SLURM would drain it.
    slurm_with_epilog(&env, "/usr/local/sbin/hpcstage-epilog-missing");
    let out = with_cluster(&env, &["doctor"]);
    out.code(1).err_has("(epilog)");
    assert_line(&out, "epilog", "FAIL", "missing on this compute node");
}
