//! The built-in templates, rendered and run to completion on the local executor with
//! stand-in tools (no GPU, no trained model, no microscope files, no aligner here). The
//! scripts, directives, arrays, input lists and output checks are the real ones.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{Expected, InputListing, RenderContext, Rendered, TemplateStore};
use hpcstage_slurm::local::{LocalExecutor, LocalJob, LocalState, LocalStep};

struct Lab {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    dataset: PathBuf,
    run: PathBuf,
    bin: PathBuf,
}

impl Lab {
    fn new() -> Lab {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let lab = Lab {
            dataset: root.join("scratch/lab/plate7"),
            run: root.join("scratch/lab/runs/r1"),
            bin: root.join("bin"),
            root,
            _tmp: tmp,
        };
        for d in [&lab.dataset, &lab.bin] {
            std::fs::create_dir_all(d).unwrap();
        }
        lab
    }

    fn file(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.dataset.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        p
    }

    /// An executable stand-in on the job's PATH.
    fn tool(&self, name: &str, body: &str) -> PathBuf {
        let p = self.bin.join(name);
        std::fs::write(&p, format!("#!/bin/bash\nset -eu\n{body}")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn render(&self, template: &str, params: &[(&str, String)]) -> Rendered {
        let t = TemplateStore::new().get(template).unwrap();
        let p: BTreeMap<String, String> = params
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect();
        let mut ctx = RenderContext::new(
            &self.run,
            &self.dataset,
            "r1",
            "hpcstage-r1",
            "/usr/bin/hpcstage",
        );
        ctx.inputs = InputListing::Scan;
        t.render(&p, &ctx)
            .unwrap_or_else(|e| panic!("{template}: {e}"))
    }

    fn run(&self, rendered: &Rendered) -> LocalJob {
        let script = rendered.write().unwrap();
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        LocalExecutor::new(self.root.join("state"))
            .with_kill_wait(Duration::from_secs(1))
            .run(LocalStep::new(script, &self.run).env("PATH", path))
            .unwrap()
    }

    fn read(&self, rel: &str) -> String {
        let p = self.run.join(rel);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn validate(&self, rendered: &Rendered) -> std::process::Output {
        Command::new("bash")
            .arg("-c")
            .arg(rendered.outputs.validate.as_deref().unwrap())
            .current_dir(&self.run)
            .output()
            .unwrap()
    }

    fn logs(&self, job: &LocalJob) -> String {
        job.tasks
            .iter()
            .map(|t| std::fs::read_to_string(&t.stderr).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn ok_outputs(lab: &Lab, rendered: &Rendered) {
    for check in rendered.check_outputs(&lab.run).unwrap() {
        assert!(check.ok, "{check:?}");
    }
    if rendered.outputs.validate.is_some() {
        let v = lab.validate(rendered);
        assert!(
            v.status.success(),
            "validate: {}",
            String::from_utf8_lossy(&v.stderr)
        );
    }
}

/// The rendered job as a pull reads it back from the run's records: without its input
/// list, which the label-mask checks then read from the run folder.
fn recorded(rendered: &Rendered) -> Rendered {
    let back: Rendered = serde_json::from_str(&serde_json::to_string(rendered).unwrap()).unwrap();
    assert_eq!(back.inputs, None);
    back
}

/// Every rule holds, except that the stand-in's masks are read back and refused: they are
/// four TIFF magic bytes and some text, not images.
fn ok_but_standin_masks(lab: &Lab, rendered: &Rendered) {
    for check in recorded(rendered).check_outputs(&lab.run).unwrap() {
        if check.glob.starts_with("masks/") {
            assert_eq!(check.invalid.len(), check.matched.len(), "{check:?}");
            for bad in &check.invalid {
                assert!(
                    bad.reason.starts_with("cannot be decoded as TIFF"),
                    "{bad:?}"
                );
            }
        } else {
            assert!(check.ok, "{check:?}");
        }
    }
}

/// Writes a TIFF header as mask and a CSV table; fails on images named "bad".
const FAKE_PREDICT: &str = r#"
while (($#)); do
    case $1 in
        --model) model=$2 ;; --input) input=$2 ;; --mask) mask=$2 ;; --table) table=$2 ;;
    esac
    shift 2
done
[[ -s $model && -s $input ]]
[[ $input != *bad* ]] || { echo "cannot segment $input" >&2; exit 1; }
printf 'II*\0mask of %s' "$(basename "$input")" >"$mask"
printf 'label,area\n1,42\n' >"$table"
"#;

#[test]
fn unet_seg_runs_one_task_per_chunk_and_leaves_every_output() {
    let lab = Lab::new();
    for f in [
        "a.tif",
        "b.TIFF",
        "sub/c.ome.tif",
        "sub/d.ome.tiff",
        "e.tif",
    ] {
        lab.file(f, "pixels");
    }
    lab.file("notes.txt", "not an image");
    let model = lab.root.join("models/unet.pt");
    std::fs::create_dir_all(model.parent().unwrap()).unwrap();
    std::fs::write(&model, "weights").unwrap();
    let predict = lab.tool("fake-predict", FAKE_PREDICT);
    lab.tool("nvidia-smi", "echo 'Tesla T4, 535.104.05'\n");
    let rendered = lab.render(
        "unet-seg",
        &[
            ("model", model.display().to_string()),
            ("chunk_size", "2".into()),
            (
                "predict_cmd",
                format!(
                    "{} --model {{model}} --input {{input}} --mask {{mask}} --table {{table}}",
                    predict.display()
                ),
            ),
        ],
    );
    assert_eq!(rendered.sbatch.array.as_ref().unwrap().as_str(), "0-2");
    assert_eq!(rendered.sbatch.gres.as_deref(), Some("gpu:1"));
    assert_eq!(rendered.outputs.expect[0].expected, Expected::Exactly(5));

    let job = lab.run(&rendered);
    assert_eq!(job.state, LocalState::Completed, "{}", lab.logs(&job));
    assert_eq!(job.tasks.len(), 3);
    ok_but_standin_masks(&lab, &rendered);
    assert_eq!(lab.read("masks/sub/d.ome.tif"), "II*\0mask of d.ome.tiff");
    assert_eq!(lab.read("tables/b.csv"), "label,area\n1,42\n");
    assert_eq!(lab.read("qc/gpu-1.txt"), "Tesla T4, 535.104.05\n");
    let sha = Command::new("sha256sum").arg(&model).output().unwrap();
    assert_eq!(
        lab.read("qc/model.sha256"),
        String::from_utf8(sha.stdout).unwrap()
    );
    let summary = lab.read("qc/summary-2.tsv");
    // Sorted by bytes: a.tif b.TIFF e.tif sub/c.ome.tif sub/d.ome.tiff, two per task.
    assert!(
        summary.starts_with("image\tmask\ttable\tstatus\tseconds\tobjects\tmedian_area\tinference_seconds\tdevice\tgpu\nsub/d.ome.tiff\tmasks/sub/d.ome.tif\ttables/sub/d.csv\tok\t"),
        "{summary}"
    );
    assert_eq!(
        rendered.outputs.intermediate_paths(&lab.run).unwrap(),
        [lab.run.join("work")]
    );

    // A re-run keeps what is done.
    let again = lab.run(&lab.render(
        "unet-seg",
        &[
            ("model", model.display().to_string()),
            ("chunk_size", "5".into()),
            ("predict_cmd", "false".into()),
        ],
    ));
    assert_eq!(again.state, LocalState::Completed, "{}", lab.logs(&again));
    assert!(lab.read("qc/summary-0.tsv").contains("\tdone-before\t"));
}

#[test]
fn unet_seg_reports_failed_images_and_keeps_going() {
    let lab = Lab::new();
    for f in ["a.tif", "bad.tif", "c.tif"] {
        lab.file(f, "pixels");
    }
    let model = lab.root.join("model.pt");
    std::fs::write(&model, "weights").unwrap();
    let predict = lab.tool("fake-predict", FAKE_PREDICT);
    lab.tool("nvidia-smi", "exit 9\n");
    let rendered = lab.render(
        "unet-seg",
        &[
            ("model", model.display().to_string()),
            ("chunk_size", "3".into()),
            ("gpus", "0".into()),
            (
                "predict_cmd",
                format!(
                    "{} --model {{model}} --input {{input}} --mask {{mask}} --table {{table}}",
                    predict.display()
                ),
            ),
        ],
    );
    assert_eq!(rendered.sbatch.gres, None);
    let job = lab.run(&rendered);
    assert_eq!(job.state, LocalState::Failed);
    assert_eq!(job.tasks[0].exit_code, Some(1));
    assert!(
        lab.logs(&job).contains("1 image(s) failed in task 0"),
        "{}",
        lab.logs(&job)
    );
    assert_eq!(lab.read("qc/gpu-0.txt"), "none\n");
    let summary = lab.read("qc/summary-0.tsv");
    assert!(
        summary.contains("bad.tif\tmasks/bad.ome.tif\ttables/bad.csv\tfailed\t"),
        "{summary}"
    );
    assert!(
        lab.run.join("masks/c.ome.tif").exists(),
        "images after the failure are done"
    );
    let checks = rendered.check_outputs(&lab.run).unwrap();
    assert_eq!(checks[0].matched.len(), 2);
    assert!(!checks[0].ok);
}

/// A converter that writes an OME-Zarr folder or a TIFF header, by the output's name.
const FAKE_CONVERTER: &str = r#"
input=$1 output=$2
[[ -s $input ]]
if [[ $output == *.ome.zarr ]]; then
    mkdir -p "$output/0/0"
    echo '{"zarr_format": 2}' >"$output/.zgroup"
    printf 'chunk' >"$output/0/0/0"
else
    printf 'II*\0converted' >"$output"
fi
"#;

#[test]
fn convert_writes_one_ome_zarr_or_ome_tiff_per_input() {
    for (format, ext) in [("ome-zarr", "ome.zarr"), ("ome-tiff", "ome.tif")] {
        let lab = Lab::new();
        for f in ["x.czi", "sub/y.LIF", "z.nd2"] {
            lab.file(f, "raw microscope bytes");
        }
        lab.file("readme.txt", "not an input");
        let conv = lab.tool("fake-bf", FAKE_CONVERTER);
        let rendered = lab.render(
            "convert",
            &[
                ("format", format.to_string()),
                (
                    "converter",
                    format!("{} {{input}} {{output}}", conv.display()),
                ),
                ("mem", "2G".into()),
            ],
        );
        assert_eq!(
            rendered.inputs.as_deref().unwrap(),
            ["sub/y.LIF", "x.czi", "z.nd2"]
        );
        assert_eq!(rendered.sbatch.array.as_ref().unwrap().as_str(), "0-2");
        let job = lab.run(&rendered);
        assert_eq!(job.state, LocalState::Completed, "{}", lab.logs(&job));
        ok_outputs(&lab, &rendered);
        for out in ["x", "sub/y", "z"] {
            assert!(
                lab.run.join(format!("converted/{out}.{ext}")).exists(),
                "{format} {out}"
            );
        }
        assert!(lab
            .read("qc/convert-0.tsv")
            .contains(&format!("sub/y.LIF\tconverted/sub/y.{ext}\tok\t")));
    }
}

#[test]
fn convert_validation_catches_a_broken_output() {
    let lab = Lab::new();
    lab.file("x.czi", "raw");
    let conv = lab.tool("fake-bf", "mkdir -p \"$2\"; echo junk > \"$2/file\"\n");
    let rendered = lab.render(
        "convert",
        &[(
            "converter",
            format!("{} {{input}} {{output}}", conv.display()),
        )],
    );
    assert_eq!(lab.run(&rendered).state, LocalState::Completed);
    let v = lab.validate(&rendered);
    assert!(!v.status.success());
    assert!(String::from_utf8_lossy(&v.stderr).contains("no Zarr group in converted/x.ome.zarr"));
}

/// minimap2 stand-in: records its arguments, writes a one-read SAM.
const FAKE_MINIMAP2: &str = r#"
if [[ ${1:-} == --version ]]; then echo 2.26-fake; exit 0; fi
printf '%s\n' "$@" >>"$HPCSTAGE_RUN_DIR/minimap2-args.txt"
printf '@HD\tVN:1.6\n@SQ\tSN:chr1\tLN:100\nr1\t0\tchr1\t1\t60\t4M\t*\t0\t0\tACGT\tIIII\n'
"#;

/// samtools stand-in: sort copies stdin to -o, index/flagstat/quickcheck/--version.
const FAKE_SAMTOOLS: &str = r#"
cmd=$1; shift
case $cmd in
    --version) echo "samtools 1.16-fake" ;;
    sort)
        out=
        while (($#)); do case $1 in -o) out=$2; shift 2 ;; -@|-T|-O|-m) shift 2 ;; *) shift ;; esac; done
        cat >"$out" ;;
    index) for a in "$@"; do f=$a; done; echo index >"$f.bai" ;;
    flagstat) echo "1 + 0 in total (QC-passed reads + QC-failed reads)" ;;
    quickcheck) exit 0 ;;
esac
"#;

#[test]
fn align_runs_one_task_per_sample_from_a_reads_glob_or_a_sheet() {
    let lab = Lab::new();
    lab.file("fastq/S1_R1.fastq.gz", "reads");
    lab.file("fastq/S1_R2.fastq.gz", "mates");
    lab.file("fastq/S2_L001_R1_001.fq.gz", "reads");
    lab.file("ref/genome.fa", ">chr1\nACGT\n");
    lab.tool("minimap2", FAKE_MINIMAP2);
    lab.tool("samtools", FAKE_SAMTOOLS);
    let reference = lab.dataset.join("ref/genome.fa").display().to_string();
    let rendered = lab.render(
        "align",
        &[("reference", reference.clone()), ("threads", "2".into())],
    );
    assert_eq!(
        rendered.inputs.as_deref().unwrap(),
        ["fastq/S1_R1.fastq.gz", "fastq/S2_L001_R1_001.fq.gz"]
    );
    assert_eq!(rendered.sbatch.cpus_per_task, Some(2));
    let job = lab.run(&rendered);
    assert_eq!(job.state, LocalState::Completed, "{}", lab.logs(&job));
    ok_outputs(&lab, &rendered);
    for sample in ["S1", "S2_L001"] {
        assert!(
            lab.run.join(format!("bam/{sample}.bam.bai")).exists(),
            "{sample}"
        );
        assert!(lab
            .read(&format!("qc/{sample}.flagstat.txt"))
            .contains("in total"));
        assert!(lab
            .read(&format!("qc/{sample}.versions.txt"))
            .contains("samtools 1.16-fake"));
    }
    assert!(lab.read("bam/S1.bam").contains("chr1"));
    let args = lab.read("minimap2-args.txt");
    let s1 = format!(
        "-t\n2\n-a\n-x\nsr\n-R\n@RG\\tID:S1\\tSM:S1\n{reference}\n{d}/fastq/S1_R1.fastq.gz\n{d}/fastq/S1_R2.fastq.gz\n",
        d = lab.dataset.display()
    );
    assert!(args.starts_with(&s1), "{args}");
    assert!(
        args.ends_with(&format!(
            "{}/fastq/S2_L001_R1_001.fq.gz\n",
            lab.dataset.display()
        )),
        "{args}"
    );

    // The same data through a sample sheet, with a sample name of its own.
    let lab2 = Lab::new();
    lab2.file("a_1.fq", "reads");
    lab2.file("a_2.fq", "mates");
    lab2.file(
        "samples.tsv",
        "sample\treads1\treads2\nliver-1\ta_1.fq\ta_2.fq\n",
    );
    lab2.tool("minimap2", FAKE_MINIMAP2);
    lab2.tool("samtools", FAKE_SAMTOOLS);
    let rendered = lab2.render(
        "align",
        &[
            ("reference", "/refs/genome.mmi".into()),
            ("sample_sheet", "samples.tsv".into()),
        ],
    );
    assert_eq!(
        rendered.inputs.as_deref().unwrap(),
        ["liver-1\ta_1.fq\ta_2.fq"]
    );
    let job = lab2.run(&rendered);
    assert_eq!(job.state, LocalState::Completed, "{}", lab2.logs(&job));
    ok_outputs(&lab2, &rendered);
    assert!(lab2
        .read("minimap2-args.txt")
        .contains(&format!("{}/a_2.fq", lab2.dataset.display())));
    assert!(lab2.run.join("bam/liver-1.bam").exists());
}

#[test]
fn align_refuses_sample_names_that_are_no_file_names() {
    let lab = Lab::new();
    lab.file("a.fq", "reads");
    lab.file("samples.tsv", "sample\treads1\n../../x\ta.fq\n");
    lab.tool("minimap2", FAKE_MINIMAP2);
    lab.tool("samtools", FAKE_SAMTOOLS);
    let rendered = lab.render(
        "align",
        &[
            ("reference", "/r.fa".into()),
            ("sample_sheet", "samples.tsv".into()),
        ],
    );
    let job = lab.run(&rendered);
    assert_eq!(job.state, LocalState::Failed);
    assert!(lab.logs(&job).contains("not usable as a file name"));
    assert!(!Path::new(&lab.run.join("minimap2-args.txt")).exists());
}
