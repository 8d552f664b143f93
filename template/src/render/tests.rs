//! Rendering tests. Scripts are rendered and then run with bash, so that "inert" is what
//! bash does with the text, not what we believe it does.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use super::*;
use crate::{TemplateError, TemplateStore};

const ECHO_SPEC: &str = r#"
[template]
name = "echo"
version = "1"
workflow = "test"

[[params]]
name = "value"
type = "string"

[[params]]
name = "file"
type = "path"
default = "out/value.bin"

[[params]]
name = "cmd"
type = "string"
default = "printf %s"

[[params]]
name = "n"
type = "int"
default = 3

[[params]]
name = "limit"
type = "duration"
default = "1d 2h"

[resources]
time = "{{ limit }}"
cpus_per_task = "{{ n }}"
"#;

/// Writes the value three ways: as an argument, through a configurable command, and as a
/// word in a loop.
const ECHO_BODY: &str = r#"mkdir -p out "$(dirname {{ file }})"
printf '%s' {{ value }} > {{ file }}
{{ cmd | argv }} {{ value }} > out/via-cmd.bin
for w in {{ value }} {{ run_id }}; do printf '[%s]' "$w"; done > out/words.txt
"#;

fn spec(text: &str) -> TemplateSpec {
    TemplateSpec::parse(text, "test").unwrap()
}

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

fn ctx(run_dir: &Path, input_dir: &Path) -> RenderContext {
    RenderContext::new(
        run_dir,
        input_dir,
        "r1",
        "tok-1",
        "/opt/hpcstage/bin/hpcstage",
    )
}

/// Run a script with bash, outside any SLURM job.
fn bash(script: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(script);
    for (k, _) in std::env::vars() {
        if k.starts_with("SLURM_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("bash runs")
}

fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "script failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn hostile_values_render_inert_and_arrive_verbatim() {
    let tmp = tempfile::tempdir().unwrap();
    // A run folder whose name needs quoting itself: space, quote, '#', '%'.
    let run = tmp.path().join("run dir's #1 %x");
    let input = tmp.path().join("input");
    std::fs::create_dir_all(&input).unwrap();
    let marker = tmp.path().join("pwned");
    let m = marker.display().to_string();
    let hostile = [
        format!("x'; touch {m}; '"),
        format!("$(touch {m})"),
        format!("`touch {m}`"),
        format!("a\ntouch {m}\n"),
        format!("\"; touch {m}; \""),
        format!("\\'; touch {m} #"),
        format!("a\r\ntouch {m}"),
        "*".to_string(),
        "~".to_string(),
        "${IFS}$HOME".to_string(),
        " -n ".to_string(),
        "'".to_string(),
        String::new(),
        "!! ^x ^".to_string(),
        "tab\there, ünïcode\u{a0}nbsp".to_string(),
        "-e \\x41".to_string(),
    ];
    let s = spec(ECHO_SPEC);
    for value in &hostile {
        let rendered = render(
            &s,
            ECHO_BODY,
            &params(&[("value", value)]),
            &ctx(&run, &input),
        )
        .unwrap_or_else(|e| panic!("{value:?}: {e}"));
        let script = rendered.write().unwrap();
        let out = bash(&script, &[]);
        assert_success(&out);
        assert!(
            !marker.exists(),
            "{value:?} ran a command:\n{}",
            rendered.script
        );
        let got = std::fs::read(run.join("out/value.bin")).unwrap();
        assert_eq!(got, value.as_bytes(), "{value:?} changed on the way");
        let via_cmd = std::fs::read(run.join("out/via-cmd.bin")).unwrap();
        assert_eq!(via_cmd, value.as_bytes(), "{value:?} through `cmd | argv`");
        let words = std::fs::read_to_string(run.join("out/words.txt")).unwrap();
        assert_eq!(
            words,
            format!("[{value}][r1]"),
            "{value:?} split into words"
        );
    }
}

#[test]
fn hostile_paths_and_commands_stay_arguments() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let marker = tmp.path().join("pwned");
    let m = marker.display().to_string();
    let s = spec(ECHO_SPEC);
    let file = format!("out/a; touch {m}; b");
    let rendered = render(
        &s,
        ECHO_BODY,
        &params(&[
            ("value", "v"),
            ("file", &file),
            ("cmd", &format!("printf %s ;touch {m}")),
        ]),
        &ctx(&run, tmp.path()),
    )
    .unwrap();
    let out = bash(&rendered.write().unwrap(), &[]);
    assert_success(&out);
    assert!(!marker.exists());
    assert_eq!(std::fs::read(run.join(&file)).unwrap(), b"v");
    // The command's extra words are printf arguments, printed rather than run.
    let via_cmd = std::fs::read_to_string(run.join("out/via-cmd.bin")).unwrap();
    assert_eq!(via_cmd, format!(";touch{m}v"));
}

#[test]
fn scripts_start_with_directives_then_strict_mode_then_the_trap() {
    let s = spec(ECHO_SPEC);
    let run = Path::new("/scratch/lab/runs/r1");
    let r = render(
        &s,
        ECHO_BODY,
        &params(&[("value", "v")]),
        &ctx(run, Path::new("/scratch/lab/ds")),
    )
    .unwrap();
    assert_eq!(
        r.sbatch_args,
        [
            "--job-name=echo",
            "--cpus-per-task=3",
            "--time=1-02:00:00",
            "--chdir=/scratch/lab/runs/r1",
            "--output=/scratch/lab/runs/r1/logs/%x-%j.out",
            "--error=/scratch/lab/runs/r1/logs/%x-%j.err",
            "--open-mode=append",
            "--signal=B:USR1@300",
            "--comment=tok-1",
        ]
    );
    assert!(r
        .script
        .starts_with("#!/bin/bash\n#SBATCH --job-name=echo\n"));
    let lines: Vec<&str> = r.script.lines().collect();
    let first_command = lines
        .iter()
        .position(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap();
    assert_eq!(lines[first_command], "set -euo pipefail");
    assert_eq!(
        lines[..first_command]
            .iter()
            .filter(|l| l.starts_with("#SBATCH "))
            .count(),
        r.sbatch_args.len()
    );
    assert!(r.script.contains("\ntrap hpcstage_on_usr1 USR1\n"));
    assert!(r.script.contains("HPCSTAGE_RUN_DIR=/scratch/lab/runs/r1\n"));
    assert!(r.script.ends_with("done > out/words.txt\n"));
    // sbatch reads back what we meant.
    assert_eq!(SbatchArgs::from_script(&r.script).unwrap(), r.sbatch);
    assert_eq!(
        r.params["limit"],
        ParamValue::Duration(SlurmDuration::from_secs(93_600))
    );
    assert_eq!(r.template_hash, template_hash(&s.source, ECHO_BODY));
}

#[test]
fn directives_survive_awkward_run_folders() {
    let s = spec(ECHO_SPEC);
    let run = Path::new("/scratch/my lab/#7 100%");
    let r = render(
        &s,
        ECHO_BODY,
        &params(&[("value", "v")]),
        &ctx(run, Path::new("/d")),
    )
    .unwrap();
    assert!(r
        .script
        .contains("#SBATCH --output=\"/scratch/my lab/#7 100%%/logs/%x-%j.out\"\n"));
    let back = SbatchArgs::from_script(&r.script).unwrap();
    assert_eq!(
        back.output.as_deref(),
        Some("/scratch/my lab/#7 100%%/logs/%x-%j.out")
    );
    assert_eq!(back.chdir.as_deref(), Some("/scratch/my lab/#7 100%"));
}

#[test]
fn overrides_win_and_the_signal_grace_fits_the_limit() {
    let s = spec(ECHO_SPEC);
    let mut c = ctx(Path::new("/r"), Path::new("/d"));
    c.resources.time = Some("30m".into());
    c.resources.partition = Some("debug".into());
    c.resources.mem = Some("2g".into());
    let r = render(&s, ECHO_BODY, &params(&[("value", "v")]), &c).unwrap();
    assert_eq!(r.sbatch.time, Some(SlurmDuration::from_secs(1800)));
    assert_eq!(r.sbatch.partition.as_deref(), Some("debug"));
    assert_eq!(r.sbatch.mem.as_deref(), Some("2G"));
    assert_eq!(r.sbatch.signal.as_ref().unwrap().to_string(), "B:USR1@300");

    c.resources.time = Some("4m".into());
    let r = render(&s, ECHO_BODY, &params(&[("value", "v")]), &c).unwrap();
    assert_eq!(r.sbatch.signal.as_ref().unwrap().to_string(), "B:USR1@120");

    c.resources.signal_grace = Some("0s".into());
    let r = render(&s, ECHO_BODY, &params(&[("value", "v")]), &c).unwrap();
    assert_eq!(r.sbatch.signal, None);

    // A parameter can carry the limit too: -p limit=45m.
    let c = ctx(Path::new("/r"), Path::new("/d"));
    let r = render(
        &s,
        ECHO_BODY,
        &params(&[("value", "v"), ("limit", "45m")]),
        &c,
    )
    .unwrap();
    assert_eq!(r.sbatch.time, Some(SlurmDuration::from_secs(2700)));
}

#[test]
fn bad_resources_and_context_values_are_refused_by_name() {
    let s = spec(ECHO_SPEC);
    let p = params(&[("value", "v")]);
    let mut c = ctx(Path::new("/r"), Path::new("/d"));
    c.resources.gres = Some("gpu:1 --x".into());
    let err = render(&s, ECHO_BODY, &p, &c).unwrap_err().to_string();
    assert!(
        err.starts_with("resource gres = \"gpu:1 --x\" is not valid"),
        "{err}"
    );

    let mut c = ctx(Path::new("/r"), Path::new("/d"));
    c.resources.mem = Some("lots".into());
    let err = render(&s, ECHO_BODY, &p, &c).unwrap_err().to_string();
    assert!(err.starts_with("resource mem = \"lots\""), "{err}");

    let err = render(
        &s,
        ECHO_BODY,
        &params(&[("value", "v"), ("limit", "60")]),
        &ctx(Path::new("/r"), Path::new("/d")),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("parameter limit expects a duration, got \"60\""),
        "{err}"
    );

    let c = ctx(Path::new("relative/run"), Path::new("/d"));
    let err = render(&s, ECHO_BODY, &p, &c).unwrap_err().to_string();
    assert!(err.contains("must be an absolute path"), "{err}");

    let mut c = ctx(Path::new("/r"), Path::new("/d"));
    c.token = "a b".into();
    assert!(matches!(
        render(&s, ECHO_BODY, &p, &c),
        Err(TemplateError::Context { what: "token", .. })
    ));
}

#[test]
fn parameter_errors_are_clear() {
    let s = spec(ECHO_SPEC);
    let c = ctx(Path::new("/r"), Path::new("/d"));
    let err = render(&s, ECHO_BODY, &params(&[("value", "v"), ("n", "abc")]), &c).unwrap_err();
    assert_eq!(
        err.to_string(),
        "parameter n expects an int, got \"abc\": not a whole number"
    );
    let err = render(&s, ECHO_BODY, &params(&[("value", "v"), ("nn", "1")]), &c).unwrap_err();
    assert_eq!(
        err.to_string(),
        "template echo has no parameter \"nn\"; valid parameters: value, file, cmd, n, limit"
    );
    let err = render(&s, ECHO_BODY, &params(&[]), &c).unwrap_err();
    assert_eq!(
        err.to_string(),
        "template echo needs parameter value (string)"
    );
}

#[test]
fn undefined_variables_are_errors_naming_the_line() {
    let s = spec(ECHO_SPEC);
    let c = ctx(Path::new("/r"), Path::new("/d"));
    let err = render(
        &s,
        "echo ok\necho {{ valeu }}\n",
        &params(&[("value", "v")]),
        &c,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("template echo: undefined value"), "{msg}");
    assert!(msg.contains("line 2: echo {{ valeu }}"), "{msg}");
}

#[test]
fn unsafe_interpolations_are_refused_before_rendering() {
    let s = spec(ECHO_SPEC);
    let c = ctx(Path::new("/r"), Path::new("/d"));
    let err = render(&s, "echo \"{{ value }}\"\n", &params(&[("value", "v")]), &c).unwrap_err();
    assert_eq!(
        err.to_string(),
        "template echo, line 1: `{{ value }}` is interpolated inside double quotes; hpcstage \
         quotes every value itself, so put it outside quotes, comments and here-documents \
         (or mark it `| trusted` if it is meant to be shell code)"
    );
}

#[test]
fn trusted_parameters_are_interpolated_as_code() {
    let text = ECHO_SPEC.replace(
        "name = \"cmd\"\ntype = \"string\"\n",
        "name = \"cmd\"\ntype = \"string\"\ntrusted = true\n",
    );
    let s = spec(&text);
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let body = "mkdir -p out\n{{ cmd }} > out/code.txt\n";
    let r = render(
        &s,
        body,
        &params(&[("value", "v"), ("cmd", "echo a; echo b")]),
        &ctx(&run, tmp.path()),
    )
    .unwrap();
    assert_success(&bash(&r.write().unwrap(), &[]));
    assert_eq!(
        std::fs::read_to_string(run.join("out/code.txt")).unwrap(),
        "b\n"
    );
}

const SEG_SPEC: &str = r#"
[template]
name = "seg"
version = "1"
workflow = "segmentation"

[[params]]
name = "chunk"
type = "int"
default = 2

[inputs]
globs = ["**/*.tif", "**/*.tiff"]
case_insensitive = true

[resources]
array = { per_task = "{{ chunk }}", max_parallel = 2 }

[[outputs.expect]]
glob = "masks/**/*.tif"
per_input = true

[[outputs.expect]]
glob = "qc/*.tsv"
"#;

const SEG_BODY: &str = "mkdir -p out\nhpcstage_task_inputs\necho {{ n_inputs }} {{ per_task }} > out/n.txt\nprintf '%s\\n' \"${TASK_INPUTS[@]}\" > \"out/task-${SLURM_ARRAY_TASK_ID:-0}.txt\"\n";

fn touch(root: &Path, rel: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, "x").unwrap();
}

#[test]
fn inputs_are_listed_sorted_and_split_among_array_tasks() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("ds");
    for f in [
        "a.tif",
        "B.TIF",
        "sub/c.ome.tiff",
        "notes.txt",
        ".hpcstage/journal.tif",
    ] {
        touch(&input, f);
    }
    let run = tmp.path().join("run");
    let r = render(&spec(SEG_SPEC), SEG_BODY, &params(&[]), &ctx(&run, &input)).unwrap();
    assert_eq!(
        r.inputs.as_deref().unwrap(),
        ["B.TIF", "a.tif", "sub/c.ome.tiff"]
    );
    assert_eq!(r.per_task, Some(2));
    assert_eq!(r.sbatch.array.as_ref().unwrap().as_str(), "0-1%2");
    assert!(r
        .sbatch_args
        .contains(&format!("--output={}/logs/%x-%A_%a.out", run.display())));
    assert_eq!(r.outputs.expect[0].expected, Expected::Exactly(3));
    assert_eq!(r.outputs.expect[1].expected, Expected::AtLeast(1));

    let script = r.write().unwrap();
    assert_eq!(
        std::fs::read(run.join(INPUTS_FILE)).unwrap(),
        b"B.TIF\0a.tif\0sub/c.ome.tiff\0"
    );
    assert!(run.join(LOG_DIR).is_dir());
    for task in ["0", "1"] {
        assert_success(&bash(&script, &[("SLURM_ARRAY_TASK_ID", task)]));
    }
    let read = |f: &str| std::fs::read_to_string(run.join(f)).unwrap();
    assert_eq!(read("out/n.txt"), "3 2\n");
    assert_eq!(read("out/task-0.txt"), "B.TIF\na.tif\n");
    assert_eq!(read("out/task-1.txt"), "sub/c.ome.tiff\n");
}

#[test]
fn symbolic_links_are_never_inputs_and_are_named_as_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("ds");
    touch(&input, "a.tif");
    touch(&input, "plates/b.tif");
    std::os::unix::fs::symlink("a.tif", input.join("latest.tif")).unwrap();
    // A link to a folder of images is not walked into either.
    std::os::unix::fs::symlink("plates", input.join("current")).unwrap();
    let run = tmp.path().join("run");
    let r = render(&spec(SEG_SPEC), SEG_BODY, &params(&[]), &ctx(&run, &input)).unwrap();
    assert_eq!(r.inputs.as_deref().unwrap(), ["a.tif", "plates/b.tif"]);
    assert_eq!(r.skipped_links, ["latest.tif"]);
}

#[test]
fn an_array_override_keeps_per_task_and_refuses_tasks_without_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("ds");
    for f in ["a.tif", "b.tif", "c.tif"] {
        touch(&input, f);
    }
    let run = tmp.path().join("run");
    let mut c = ctx(&run, &input);
    c.resources.array = Some("1".into());
    let r = render(&spec(SEG_SPEC), SEG_BODY, &params(&[]), &c).unwrap();
    assert_eq!(r.sbatch.array.as_ref().unwrap().as_str(), "1");
    assert_eq!(r.per_task, Some(2));
    c.resources.array = Some("0,2".into());
    let e = render(&spec(SEG_SPEC), SEG_BODY, &params(&[]), &c).unwrap_err();
    assert_eq!(
        e.to_string(),
        "resource array = \"0,2\" is not valid: task 2 has no inputs: 3 inputs at 2 per task make tasks 0-1"
    );
}

#[test]
fn missing_or_unknown_inputs_are_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("empty");
    std::fs::create_dir_all(&input).unwrap();
    let s = spec(SEG_SPEC);
    let err = render(&s, SEG_BODY, &params(&[]), &ctx(Path::new("/r"), &input)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "no input of template seg found in {}: nothing matches **/*.tif, **/*.tiff",
            input.display()
        )
    );

    let mut c = ctx(Path::new("/r"), &input);
    c.inputs = InputListing::Unknown;
    let err = render(&s, SEG_BODY, &params(&[]), &c).unwrap_err();
    assert!(matches!(err, TemplateError::InputsUnknown { .. }), "{err}");
    // An explicit array does not need the inputs.
    c.resources.array = Some("0-9".into());
    let r = render(&s, "true\n", &params(&[]), &c).unwrap();
    assert_eq!(r.sbatch.array.unwrap().tasks().len(), 10);

    let mut c = ctx(Path::new("/r"), &input);
    c.inputs = InputListing::Given(vec!["x.tif".into(), "y.tif".into(), "z.tif".into()]);
    let r = render(&s, SEG_BODY, &params(&[("chunk", "1")]), &c).unwrap();
    assert_eq!(r.sbatch.array.unwrap().as_str(), "0-2%2");
}

#[test]
fn a_listed_tree_is_picked_from_by_the_globs_as_a_scanned_folder_is() {
    let listed = |rel: &str, link: bool| ListedFile {
        rel: rel.to_string(),
        link,
    };
    let s = spec(SEG_SPEC);
    let mut c = ctx(Path::new("/r"), Path::new("/not/on/this/machine"));
    c.inputs = InputListing::Listed(vec![
        listed("b/2.TIF", false),
        listed("notes.txt", false),
        listed("a/1.tif", false),
        listed("a/link.tif", true),
    ]);
    let r = render(&s, SEG_BODY, &params(&[("chunk", "1")]), &c).unwrap();
    // Sorted by bytes, links left out, as a scan of the same folder gives them.
    assert_eq!(
        r.inputs,
        Some(vec!["a/1.tif".to_string(), "b/2.TIF".to_string()])
    );
    assert_eq!(r.skipped_links, ["a/link.tif"]);
    assert_eq!(r.sbatch.array.unwrap().as_str(), "0-1%2");

    // Nothing that matches: the same refusal as for an empty folder.
    c.inputs = InputListing::Listed(vec![listed("notes.txt", false)]);
    let err = render(&s, SEG_BODY, &params(&[]), &c).unwrap_err();
    assert!(matches!(err, TemplateError::NoInputs { .. }), "{err}");
}

#[test]
fn a_sample_sheet_gives_one_input_per_row() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("ds");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(
        input.join("samples.tsv"),
        "sample\tr1\tr2\n# a comment\nS1\ta_R1.fq.gz\ta_R2.fq.gz\r\n\nS2\tb.fq.gz\n",
    )
    .unwrap();
    let text = r#"
[template]
name = "al"
version = "1"
workflow = "alignment"

[[params]]
name = "sheet"
type = "path"
default = ""

[inputs]
globs = ["*.fq.gz"]
sheet = "{{ sheet }}"

[resources]
array = { per_task = 1 }
"#;
    let r = render(
        &spec(text),
        "true\n",
        &params(&[("sheet", "samples.tsv")]),
        &ctx(Path::new("/r"), &input),
    )
    .unwrap();
    assert_eq!(
        r.inputs.unwrap(),
        ["S1\ta_R1.fq.gz\ta_R2.fq.gz", "S2\tb.fq.gz"]
    );
    assert_eq!(r.sbatch.array.unwrap().as_str(), "0-1");
}

#[test]
fn usr1_is_trapped_while_a_step_runs_and_marks_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let body = "mkdir -p out\ntouch out/started\nhpcstage_run bash -c 'sleep 2; echo step-finished' > out/step.txt\necho after > out/after.txt\n";
    let r = render(
        &spec(ECHO_SPEC),
        body,
        &params(&[("value", "v")]),
        &ctx(&run, tmp.path()),
    )
    .unwrap();
    let script = r.write().unwrap();
    let mut child = Command::new("bash").arg(&script).spawn().unwrap();
    let started = run.join("out/started");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !started.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the script did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) with a pid we own and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    let marker = run.join(SIGNAL_MARKER);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while !marker.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the trap did not run while the step was running"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&marker).unwrap();
    assert!(text.contains("time limit imminent"), "{text}");
    assert_eq!(
        std::fs::read_to_string(run.join("out/step.txt")).unwrap(),
        "step-finished\n"
    );
    assert!(run.join("out/after.txt").exists());
}

#[test]
fn the_hash_is_sha256_of_spec_nul_template() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("both");
    std::fs::write(&file, format!("{ECHO_SPEC}\0{ECHO_BODY}")).unwrap();
    let out = Command::new("sha256sum").arg(&file).output().unwrap();
    let expected = String::from_utf8(out.stdout).unwrap()[..64].to_string();
    assert_eq!(template_hash(ECHO_SPEC, ECHO_BODY), expected);
    assert_ne!(template_hash(ECHO_SPEC, "x"), expected);
}

/// Render a built-in with stand-in values and the given inputs.
fn render_builtin(name: &str, extra: &[(&str, &str)], inputs: &[&str]) -> Rendered {
    let t = TemplateStore::new().get(name).unwrap();
    let mut p = params(extra);
    for param in &t.spec.params {
        if param.required() && !p.contains_key(&param.name) {
            p.insert(param.name.clone(), "/models/stand-in".to_string());
        }
    }
    let mut c = ctx(
        Path::new("/scratch/lab/runs/r1"),
        Path::new("/scratch/lab/plate7"),
    );
    c.inputs = InputListing::Given(inputs.iter().map(|s| (*s).to_string()).collect());
    t.render(&p, &c).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn builtins_render_to_valid_bash() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: [Case; 5] = [
        ("unet-seg", &[], &["a.tif", "b.tif", "c.tif"]),
        (
            "unet-seg",
            &[("gpus", "0"), ("chunk_size", "1"), ("max_parallel", "2")],
            &["a.tif", "b.tif"],
        ),
        ("align", &[("aligner", "star")], &["s1_R1.fq.gz"]),
        ("convert", &[], &["x.czi", "y.lif"]),
        (
            "convert",
            &[
                ("format", "ome-tiff"),
                ("converter", "my-conv {input} {output}"),
            ],
            &["x.nd2"],
        ),
    ];
    for (name, extra, inputs) in cases {
        let r = render_builtin(name, extra, inputs);
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("job.sbatch");
        std::fs::write(&file, &r.script).unwrap();
        let out = Command::new("bash").arg("-n").arg(&file).output().unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            SbatchArgs::from_script(&r.script).unwrap(),
            r.sbatch,
            "{name}"
        );
        if let Some(cmd) = &r.outputs.validate {
            std::fs::write(&file, cmd).unwrap();
            let out = Command::new("bash").arg("-n").arg(&file).output().unwrap();
            assert!(
                out.status.success(),
                "{name} validate: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let gpu = render_builtin("unet-seg", &[], &["a.tif"]);
    assert_eq!(gpu.sbatch.gres.as_deref(), Some("gpu:1"));
    assert_eq!(gpu.sbatch.partition.as_deref(), Some("gpu"));
    let cpu = render_builtin("unet-seg", &[("gpus", "0"), ("partition", "")], &["a.tif"]);
    assert_eq!((cpu.sbatch.gres, cpu.sbatch.partition), (None, None));
    let tiff = render_builtin("convert", &[("format", "ome-tiff")], &["x.czi"]);
    assert_eq!(tiff.outputs.expect[0].glob, "converted/**/*.ome.tif");
}

#[test]
fn unet_seg_script_snapshot() {
    let r = render_builtin(
        "unet-seg",
        &[("chunk_size", "2")],
        &["a.tif", "b.tif", "sub/c.ome.tif"],
    );
    insta::assert_snapshot!(r.script);
}

#[test]
fn a_rendered_job_round_trips_through_json_for_the_run_record() {
    let mut c = ctx(Path::new("/scratch/r"), Path::new("/scratch/d"));
    c.job_name = Some("seg-plate7".into());
    c.inputs = InputListing::Given(vec!["a.tif".into(), "b.tif".into()]);
    let r = render(&spec(SEG_SPEC), SEG_BODY, &params(&[]), &c).unwrap();
    assert_eq!(r.sbatch.job_name.as_deref(), Some("seg-plate7"));
    let json = serde_json::to_string(&r).unwrap();
    let back: Rendered = serde_json::from_str(&json).unwrap();
    // All but the input list, which the run folder holds (counted in the record).
    assert_eq!(
        back,
        Rendered {
            inputs: None,
            ..r.clone()
        }
    );
    assert_eq!(back.input_count(), Some(2));
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["sbatch"]["array"], "0%2");
    assert_eq!(
        value["params"]["chunk"],
        serde_json::json!({"type": "int", "value": 2})
    );
    assert_eq!(
        value["outputs"]["expect"][0]["expected"],
        serde_json::json!({"kind": "exactly", "count": 2})
    );
}

#[test]
fn the_records_count_the_inputs_the_run_folder_lists_and_an_older_record_keeps_its_list() {
    let run = tempfile::tempdir().unwrap();
    let s = spec(SEG_SPEC);
    let mut c = ctx(run.path(), Path::new("/in"));
    let names = ["b/2.tif", "a\nnew line.tif", "c.tif"];
    c.inputs = InputListing::Given(names.iter().map(|n| n.to_string()).collect());
    let r = render(&s, SEG_BODY, &params(&[("chunk", "1")]), &c).unwrap();
    r.write().unwrap();

    // The record counts them; the run folder lists them, in task order.
    let json = serde_json::to_value(&r).unwrap();
    assert!(json.get("inputs").is_none(), "{json}");
    assert_eq!(json["n_inputs"], 3);
    let back: Rendered = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back.inputs, None);
    assert_eq!(back.input_count(), Some(3));
    assert_eq!(read_inputs(run.path()).unwrap(), names);
    let mut second = Vec::new();
    each_input(run.path(), &mut |i| {
        second.push(i);
        false
    })
    .unwrap();
    assert_eq!(second, ["b/2.tif"], "stopped after the first");

    // A run recorded before holds the list in its record.
    let mut older = json;
    older.as_object_mut().unwrap().remove("n_inputs");
    older["inputs"] = serde_json::json!(["x.tif"]);
    let older: Rendered = serde_json::from_value(older).unwrap();
    assert_eq!(older.inputs.as_deref(), Some(&["x.tif".to_string()][..]));
    assert_eq!(older.input_count(), Some(1));
    // A run folder without a list has no inputs.
    assert!(read_inputs(Path::new("/nonexistent")).unwrap().is_empty());
}
