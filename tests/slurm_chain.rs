//! The whole chain on the real test cluster (`bash tests/cluster/up.sh`): stage, compute job,
//! pull-back job (`afterany`), results on the NAS. Every built-in template runs to the end:
//! `align` with the real minimap2 and samtools, `unet-seg` and `convert` with stand-in
//! programs (there is no GPU, model or microscope file here; the scripts, directives,
//! arrays and chains are the real ones). Then what goes wrong on real clusters: a failing
//! job, an `sbatch` that times out after submitting, a controller that goes away, hostile
//! and invalid parameters. The local executor runs the same chain without SLURM.
//!
//! Tests that use SLURM hold the cluster one at a time (one of them stops slurmctld); they
//! fail, saying how to start it, where the cluster is missing or does not answer (unless
//! `HPCSTAGE_TEST_SKIP=cluster` opts out; see `tests/common/gate.rs`).

mod common;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cluster::{bounded, slurm_test, which, Chain};
use common::fs::{files, tiny_mask_function, tiny_tiff};
use common::slurm::{job, jobs_under, World, CHAIN_TIMEOUT};
use common::{assert_lines, read_text};
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Stand-ins and data
// ---------------------------------------------------------------------------------------

/// A stand-in for a U-Net predict command: checks it can read the model and the image,
/// writes a (tiny, real) label mask of one object and a measurement table. `prelude` runs
/// first (a sleep, an exit).
fn predict(world: &World, name: &str, prelude: &str) -> PathBuf {
    let tiny_mask = tiny_mask_function();
    world.script(
        name,
        &format!(
            r#"set -eu
{tiny_mask}{prelude}
while (($#)); do
    case $1 in
        --model) model=$2; shift 2 ;;
        --input) input=$2; shift 2 ;;
        --mask) mask=$2; shift 2 ;;
        --table) table=$2; shift 2 ;;
        *) shift ;;
    esac
done
[[ -r $model ]] || {{ echo "cannot read the model $model" >&2; exit 2; }}
[[ -r $input ]] || {{ echo "cannot read the image $input" >&2; exit 2; }}
{{ tiny_mask; printf 'labels of %s\n' "$(basename "$input")"; }} >"$mask"
printf 'object,area\n1,%s\n' "$(wc -c <"$input")" >"$table"
"#
        ),
    )
}

/// `-p` arguments for unet-seg with a stand-in predict command, sized for the test node.
fn unet_params(model: &Path, predict: &Path, extra: &[&str]) -> Vec<String> {
    let mut params = vec![
        format!("model={}", model.display()),
        format!(
            "predict_cmd={} --model {{model}} --input {{input}} --mask {{mask}} --table {{table}}",
            predict.display()
        ),
        "cpus=1".into(),
        "mem=200M".into(),
        "time=10m".into(),
    ];
    params.extend(extra.iter().map(|s| s.to_string()));
    params.into_iter().flat_map(|p| ["-p".into(), p]).collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Three small images, one in a subfolder (its folder is mirrored in the outputs).
fn test_images() -> [(&'static str, Vec<u8>); 3] {
    [
        ("img1.tif", tiny_tiff([1, 2, 3, 4], b"pixels of one")),
        ("img2.tif", tiny_tiff([5, 6, 7, 8], b"pixels of two")),
        ("sub/img3.tif", tiny_tiff([9, 8, 7, 6], b"pixels of three")),
    ]
}

fn model(world: &World) -> PathBuf {
    let path = world.path("models/unet-v3.pt");
    common::write(&path, "weights");
    path
}

/// A reproducible random sequence of A, C, G and T.
fn random_dna(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            b"ACGT"[(x >> 62) as usize]
        })
        .collect()
}

fn reverse_complement(s: &[u8]) -> Vec<u8> {
    s.iter()
        .rev()
        .map(|b| match b {
            b'A' => b'T',
            b'C' => b'G',
            b'G' => b'C',
            _ => b'A',
        })
        .collect()
}

fn fastq_record(name: &str, seq: &[u8]) -> String {
    format!(
        "@{name}\n{}\n+\n{}\n",
        String::from_utf8_lossy(seq),
        "I".repeat(seq.len())
    )
}

/// A 4 kb reference, sample `s1` (100 single-end reads, half of them reverse strand) and
/// sample `s2` (100 read pairs from 300 bp fragments), all taken from the reference.
fn reference_and_reads() -> (String, Vec<(String, String)>) {
    let reference = random_dna(4000, 7);
    let mut fasta = String::from(">chrT test reference\n");
    for line in reference.chunks(60) {
        fasta.push_str(&String::from_utf8_lossy(line));
        fasta.push('\n');
    }
    let positions = random_dna(200, 11);
    let pos = |i: usize| -> usize {
        let a = usize::from(positions[2 * i] % 64);
        let b = usize::from(positions[2 * i + 1] % 64);
        (a * 61 + b * 7 + i * 29) % (4000 - 300)
    };
    let (mut s1, mut r1, mut r2) = (String::new(), String::new(), String::new());
    for i in 0..100 {
        let p = pos(i);
        let read = &reference[p..p + 100];
        let read = if i % 2 == 0 {
            read.to_vec()
        } else {
            reverse_complement(read)
        };
        s1.push_str(&fastq_record(&format!("s1_read{i}"), &read));
        let fragment = &reference[p..p + 300];
        r1.push_str(&fastq_record(&format!("s2_pair{i}"), &fragment[..100]));
        r2.push_str(&fastq_record(
            &format!("s2_pair{i}"),
            &reverse_complement(&fragment[200..]),
        ));
    }
    (
        fasta,
        vec![
            ("s1_R1.fastq".into(), s1),
            ("s2_R1.fastq".into(), r1),
            ("s2_R2.fastq".into(), r2),
        ],
    )
}

// ---------------------------------------------------------------------------------------
// Checks shared by the tests
// ---------------------------------------------------------------------------------------

/// `sha256sum -c` of the results folder passes and lists every file but the manifest.
fn assert_results_verified(world: &World, results: &Path) {
    let check = world.sh(results, "sha256sum --strict -c MANIFEST.sha256");
    check.code(0);
    let mut checked: Vec<String> = check
        .stdout
        .lines()
        .map(|l| {
            l.strip_suffix(": OK")
                .unwrap_or_else(|| panic!("not OK: {l}\n{check}"))
                .to_string()
        })
        .collect();
    checked.sort();
    let mut present = files(results);
    present.retain(|f| f != "MANIFEST.sha256");
    assert_lines(&checked, &present);
}

/// The staged input is still on scratch and still matches its manifest.
fn assert_input_kept(world: &World, dataset: &str) {
    let staged = world.scratch().join("P").join(dataset);
    world
        .sh(&staged, "sha256sum --strict --quiet -c MANIFEST.sha256")
        .code(0);
}

/// The compute job's last facts in a `status RUN --json` answer.
fn compute(status: &Value) -> &Value {
    &job(status, "compute").expect("a compute job")["facts"]
}

fn pull_back(status: &Value) -> &Value {
    &job(status, "pull-back").expect("a pull-back job")["facts"]
}

/// The logs an array job writes, for every task.
fn array_logs(template: &str, job_id: &str, tasks: u32) -> Vec<String> {
    (0..tasks)
        .flat_map(|t| ["err", "out"].map(|ext| format!("logs/{template}-{job_id}_{t}.{ext}")))
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------
// 1. Every built-in template, to the end
// ---------------------------------------------------------------------------------------

#[test]
fn align_runs_minimap2_and_samtools_per_sample_and_pulls_sorted_indexed_bams() {
    let _cluster = slurm_test!();
    for tool in ["minimap2", "samtools"] {
        assert!(
            which(tool).is_some(),
            "{tool} is not installed (apt-get install -y minimap2 samtools)"
        );
    }
    let world = World::new();
    let (fasta, reads) = reference_and_reads();
    let reference = world.path("ref/chrT.fa");
    common::write(&reference, fasta);
    let files_in: Vec<(&str, &[u8])> = reads
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_bytes()))
        .collect();
    let raw = world.dataset("reads", &files_in);

    let reference_param = format!("reference={}", reference.display());
    let chain = world.stage_and_run(
        &raw,
        "align",
        &[
            "-p",
            &reference_param,
            "-p",
            "threads=1",
            "-p",
            "mem=500M",
            "-p",
            "time=10m",
        ],
    );
    let status = world.wait_chain(&chain, CHAIN_TIMEOUT);
    assert_eq!(status["phase"], "pulled", "{status:#}");
    let facts = compute(&status);
    assert_eq!(facts["state"], "COMPLETED", "{status:#}");
    assert_eq!(facts["exit_code"], "0:0");
    assert_eq!(
        facts["partition"], "debug",
        "the cluster's default partition"
    );
    assert_eq!(job(&status, "compute").unwrap()["array_size"], 2);
    assert_eq!(pull_back(&status)["partition"], "transfer");

    let results = &chain.results_dir;
    let mut expected = vec![
        "README.md".to_string(),
        "bam/s1.bam".into(),
        "bam/s1.bam.bai".into(),
        "bam/s2.bam".into(),
        "bam/s2.bam.bai".into(),
        "job.sbatch".into(),
        "qc/s1.flagstat.txt".into(),
        "qc/s1.versions.txt".into(),
        "qc/s2.flagstat.txt".into(),
        "qc/s2.versions.txt".into(),
        "run.json".into(),
        "validation.json".into(),
        "MANIFEST.sha256".into(),
    ];
    expected.extend(array_logs("align", &chain.compute_job, 2));
    assert_lines(&files(results), &sorted(expected));
    assert_results_verified(&world, results);

    // Real alignments: sorted, indexed, every read mapped.
    for (sample, reads, paired) in [("s1", 100, false), ("s2", 200, true)] {
        let bam = results.join(format!("bam/{sample}.bam"));
        let bam = bam.to_string_lossy();
        world
            .sh(results, &format!("samtools quickcheck -v {bam}"))
            .code(0);
        let header = world.sh(results, &format!("samtools view -H {bam}"));
        header.code(0);
        assert!(header.stdout.contains("SO:coordinate"), "{header}");
        assert!(
            header
                .stdout
                .contains(&format!("@RG\tID:{sample}\tSM:{sample}")),
            "{header}"
        );
        world
            .sh(results, &format!("samtools idxstats {bam}"))
            .code(0);
        let flagstat = read_text(results.join(format!("qc/{sample}.flagstat.txt")));
        let count = |what: &str| -> u64 {
            flagstat
                .lines()
                .find(|l| l.contains(what))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no {what:?} line in\n{flagstat}"))
        };
        assert_eq!(count("in total"), reads, "{flagstat}");
        assert_eq!(count("primary mapped"), reads, "{flagstat}");
        if paired {
            assert_eq!(count("paired in sequencing"), reads, "{flagstat}");
        }
        let versions = read_text(results.join(format!("qc/{sample}.versions.txt")));
        assert!(
            versions.starts_with("minimap2 ") && versions.contains("samtools "),
            "{versions}"
        );
    }

    // The reference is a path parameter: its SHA-256 is part of the provenance.
    let sums = world.sh(results, &format!("sha256sum {}", reference.display()));
    sums.code(0);
    let hex = sums.stdout.split_whitespace().next().unwrap().to_string();
    let run: Value = serde_json::from_str(&read_text(results.join("run.json"))).unwrap();
    let reference_input = run["param_inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["param"] == "reference")
        .unwrap_or_else(|| panic!("reference in {run:#}"))
        .clone();
    assert_eq!(
        reference_input["files"],
        serde_json::json!([{ "path": reference.display().to_string(), "sha256": hex }]),
        "{run:#}"
    );
    let readme = read_text(results.join("README.md"));
    assert!(
        readme.contains(&format!("  - sha256: {hex}  {}\n", reference.display())),
        "{readme}"
    );

    // Scratch: the input stays, the intermediates (work/) are gone.
    assert_input_kept(&world, "reads");
    assert!(chain.run_dir.join("bam/s1.bam").is_file());
    assert!(!chain.run_dir.join("work").exists(), "work/ was purged");
}

#[test]
fn unet_seg_runs_on_the_gpu_partition_and_records_the_gpu_and_node() {
    let _cluster = slurm_test!();
    let world = World::new();
    let raw = world.dataset("plate1", &test_images());
    let predict = predict(&world, "fake-predict", "");
    let params = unet_params(&model(&world), &predict, &[]);
    let chain = world.stage_and_run(&raw, "unet-seg", &strs(&params));
    let status = world.wait_chain(&chain, CHAIN_TIMEOUT);
    assert_eq!(status["phase"], "pulled", "{status:#}");
    let facts = compute(&status);
    assert_eq!(facts["state"], "COMPLETED", "{status:#}");
    assert_eq!(facts["partition"], "gpu");
    assert_eq!(facts["gpus"], 1);
    assert_eq!(facts["nodes"], "localhost");

    let script = read_text(chain.run_dir.join("job.sbatch"));
    for directive in [
        "#SBATCH --partition=gpu\n",
        "#SBATCH --gres=gpu:1\n",
        "#SBATCH --array=0\n",
    ] {
        assert!(script.contains(directive), "{directive:?} in\n{script}");
    }

    let results = &chain.results_dir;
    let mut expected = vec![
        "MANIFEST.sha256".to_string(),
        "README.md".into(),
        "job.sbatch".into(),
        "masks/img1.ome.tif".into(),
        "masks/img2.ome.tif".into(),
        "masks/sub/img3.ome.tif".into(),
        "qc/gpu-0.txt".into(),
        "qc/model.sha256".into(),
        "qc/summary-0.tsv".into(),
        "run.json".into(),
        "tables/img1.csv".into(),
        "tables/img2.csv".into(),
        "tables/sub/img3.csv".into(),
        "tools/unet-predict".into(),
        "tools/unet-tiny-model".into(),
        "validation.json".into(),
    ];
    expected.extend(array_logs("unet-seg", &chain.compute_job, 1));
    assert_lines(&files(results), &sorted(expected));
    assert_results_verified(&world, results);
    assert_eq!(
        common::read(results.join("masks/sub/img3.ome.tif")),
        [tiny_tiff([1, 0, 0, 0], b"labels of img3.tif\n")].concat()
    );

    let readme = read_text(results.join("README.md"));
    for line in [
        "- nodes: localhost\n",
        "- partition: gpu,",
        "- GPUs allocated: 1;",
        "- state: COMPLETED\n",
    ] {
        assert!(readme.contains(line), "{line:?} in README.md:\n{readme}");
    }
    let tres_line = readme
        .lines()
        .find(|l| l.starts_with("- allocated TRES: "))
        .unwrap_or_else(|| panic!("no TRES line in\n{readme}"));
    assert!(tres_line.contains("gres/gpu=1"), "{tres_line}");
    let run: Value = serde_json::from_str(&read_text(results.join("run.json"))).unwrap();
    assert_eq!(run["compute_job"]["nodes"], "localhost");
    assert_eq!(run["compute_job"]["gpus"], 1);
    assert!(
        run["compute_job"]["alloc_tres"]
            .as_str()
            .is_some_and(|t| t.contains("gres/gpu=1")),
        "{run:#}"
    );
    assert_eq!(run["compute_job_id"], chain.compute_job.as_str());

    assert_input_kept(&world, "plate1");
    assert!(!chain.run_dir.join("work").exists(), "work/ was purged");
    assert!(chain.run_dir.join("masks/img1.ome.tif").is_file());

    // What `status RUN` shows of it.
    let text = world.run(["status", &chain.run_id]);
    text.code(0);
    let out = text.out();
    let pull = chain.pull_job.as_deref().expect("a pull-back job");
    for part in [
        format!("run {} (pulled)\n", chain.run_id),
        "  template:  unet-seg 1.0.0 (slurm executor)\n".to_string(),
        format!(
            "  compute job: {} COMPLETED exit 0:0\n      nodes localhost, partition gpu, elapsed ",
            chain.compute_job
        ),
        format!("  pull-back job: {pull} COMPLETED exit 0:0\n      nodes xfer"),
    ] {
        assert!(out.contains(&part), "{part:?} in\n{text}");
    }
    // The pull-back job ran on one of the transfer nodes (tests/cluster/up.sh).
    let pull_line = out
        .lines()
        .find(|l| l.contains("partition transfer"))
        .unwrap_or_default();
    assert!(
        pull_line.starts_with("      nodes xfer") && pull_line.contains(", partition transfer, "),
        "{text}"
    );
    let compute_line = out
        .lines()
        .find(|l| l.contains("partition gpu"))
        .unwrap_or_default();
    assert!(compute_line.contains("gres/gpu=1"), "{text}");
}

#[test]
fn convert_runs_one_task_per_microscope_file_with_a_stand_in_converter() {
    let _cluster = slurm_test!();
    let world = World::new();
    let raw = world.dataset(
        "scope",
        &[
            ("well_A1.czi", &b"CZI raw A1"[..]),
            ("day2/well_B2.nd2", &b"ND2 raw B2"[..]),
            ("notes.txt", &b"not a microscope file"[..]),
        ],
    );
    // Writes an OME-Zarr store as bioformats2raw would (root group, one chunk).
    let converter = world.script(
        "fake-bioformats2raw",
        r#"set -eu
input=$1 output=$2 threads=$3
[[ -s $input && $threads == 1 ]]
mkdir -p "$output/0/0"
echo '{"zarr_format": 2}' >"$output/.zgroup"
cp "$input" "$output/0/0/0"
"#,
    );
    let converter_param = format!(
        "converter={} {{input}} {{output}} {{threads}}",
        converter.display()
    );
    let chain = world.stage_and_run(
        &raw,
        "convert",
        &[
            "-p",
            &converter_param,
            "-p",
            "threads=1",
            "-p",
            "mem=200M",
            "-p",
            "time=10m",
        ],
    );
    let status = world.wait_chain(&chain, CHAIN_TIMEOUT);
    assert_eq!(status["phase"], "pulled", "{status:#}");
    assert_eq!(compute(&status)["state"], "COMPLETED");
    assert_eq!(job(&status, "compute").unwrap()["array_size"], 2);

    let results = &chain.results_dir;
    let mut expected = vec![
        "MANIFEST.sha256".to_string(),
        "README.md".into(),
        "converted/day2/well_B2.ome.zarr/.zgroup".into(),
        "converted/day2/well_B2.ome.zarr/0/0/0".into(),
        "converted/well_A1.ome.zarr/.zgroup".into(),
        "converted/well_A1.ome.zarr/0/0/0".into(),
        "job.sbatch".into(),
        "qc/convert-0.tsv".into(),
        "qc/convert-1.tsv".into(),
        "run.json".into(),
        "validation.json".into(),
    ];
    expected.extend(array_logs("convert", &chain.compute_job, 2));
    assert_lines(&files(results), &sorted(expected));
    assert_results_verified(&world, results);
    assert_eq!(
        read_text(results.join("converted/day2/well_B2.ome.zarr/0/0/0")),
        "ND2 raw B2"
    );
    let tsv = read_text(results.join("qc/convert-1.tsv"));
    assert!(
        tsv.starts_with(
            "input\toutput\tstatus\tseconds\nwell_A1.czi\tconverted/well_A1.ome.zarr\tok\t"
        ),
        "{tsv}"
    );
    assert_input_kept(&world, "scope");
    assert!(!chain.run_dir.join("work").exists(), "work/ was purged");
}

// ---------------------------------------------------------------------------------------
// 2. A failing job
// ---------------------------------------------------------------------------------------

#[test]
fn a_failing_job_still_gets_its_pull_back_job_which_files_logs_not_results() {
    let _cluster = slurm_test!();
    let world = World::new();
    let raw = world.dataset("plate1", &test_images()[..1]);
    let predict = predict(
        &world,
        "broken-predict",
        "echo 'CUDA error: out of memory' >&2; exit 3",
    );
    let params = unet_params(&model(&world), &predict, &["gpus=0", "partition=debug"]);
    let chain = world.stage_and_run(&raw, "unet-seg", &strs(&params));
    let status = world.wait_chain(&chain, CHAIN_TIMEOUT);

    assert_eq!(status["phase"], "pull-failed", "{status:#}");
    let facts = compute(&status);
    assert_eq!(facts["state"], "FAILED", "{status:#}");
    assert_eq!(facts["exit_code"], "3:0", "{status:#}");
    // The pull-back job ran (afterany), after the compute job.
    let pull = pull_back(&status);
    assert!(
        pull["start"].is_string(),
        "the pull-back job ran: {status:#}"
    );
    assert!(
        pull["start"].as_str() >= facts["end"].as_str(),
        "{status:#}"
    );
    let reason = status["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "pull-failed")
        .and_then(|e| e["reason"].as_str())
        .unwrap_or_else(|| panic!("no pull-failed event: {status:#}"));
    assert!(
        reason.contains(&format!(
            "compute job {} ended FAILED (exit code 3:0)",
            chain.compute_job
        )),
        "{reason}"
    );

    // Logs and a FAILED README in _failed/<run>/, nothing in the validated area.
    let failed = chain.failed_dir();
    let present = files(&failed);
    let mut expected = vec![
        "README.md".to_string(),
        "job.sbatch".into(),
        "qc/summary-0.tsv".into(),
        "validation.json".into(),
    ];
    expected.extend(array_logs("unet-seg", &chain.compute_job, 1));
    for f in &expected {
        assert!(present.contains(f), "{f} in {present:#?}");
    }
    assert!(
        !present
            .iter()
            .any(|f| f.starts_with("masks/") || f.starts_with("tables/")),
        "no outputs among the logs: {present:#?}"
    );
    let readme = read_text(failed.join("README.md"));
    assert!(
        readme.starts_with(&format!("# FAILED: run {}\n", chain.run_id)),
        "{readme}"
    );
    assert!(readme.contains("exit code 3:0"), "{readme}");
    let err_log = read_text(failed.join(format!("logs/unet-seg-{}_0.err", chain.compute_job)));
    assert!(err_log.contains("CUDA error: out of memory"), "{err_log}");
    assert!(
        !chain.results_dir.exists(),
        "no results folder for a failed run"
    );
    let workflow_dir = chain.results_dir.parent().unwrap();
    assert_lines(&files_and_dirs(workflow_dir), &["_failed"]);
    // Scratch is left as it was for a look.
    assert!(chain.run_dir.join("work").is_dir());
    assert_input_kept(&world, "plate1");

    let table = world.run(["status"]);
    table.code(0);
    let row = table
        .stdout
        .lines()
        .find(|l| l.contains(&chain.run_id))
        .unwrap_or_else(|| panic!("no row for the run\n{table}"));
    assert!(row.contains("pull-failed"), "{row}");
    assert!(
        row.contains(&format!("{} FAILED exit 3:0", chain.compute_job)),
        "{row}"
    );
}

fn files_and_dirs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------
// 3. Arrays
// ---------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------
// 2b. Finishing a failed run: retry, chosen tasks, dismiss; what failed and why it waits
// ---------------------------------------------------------------------------------------

/// A predict command that fails with exit 7 on `img2.tif` until `fixed` exists.
fn flaky_predict(world: &World, fixed: &Path) -> PathBuf {
    predict(
        world,
        "flaky-predict",
        &format!(
            r#"for a; do
    if [[ $a == */img2.tif && ! -e {} ]]; then echo "segfault on $a" >&2; exit 7; fi
done"#,
            fixed.display()
        ),
    )
}

#[test]
fn retry_reruns_only_the_failed_task_in_the_same_run_and_one_pull_collects_every_output() {
    let _cluster = slurm_test!();
    let world = World::new();
    let raw = world.dataset("plate9", &test_images());
    let fixed = world.path("fixed");
    let predict = flaky_predict(&world, &fixed);
    let params = unet_params(
        &model(&world),
        &predict,
        &["gpus=0", "partition=debug", "chunk_size=1"],
    );
    let chain = world.stage_and_run(&raw, "unet-seg", &strs(&params));
    let status = world.wait_chain(&chain, CHAIN_TIMEOUT);
    assert_eq!(status["phase"], "pull-failed", "{status:#}");

    // What failed is named: task 1, image img2.tif (from qc/summary-1.tsv), exit 7.
    assert_eq!(
        status["failed_tasks"],
        serde_json::json!([{
            "task": 1, "state": "FAILED", "exit_code": "7:0",
            "inputs": ["img2.tif"], "inputs_failed_known": true
        }]),
        "{status:#}"
    );
    let text = world.run(["status", &chain.run_id]);
    text.code(0)
        .out_has("  failed:\n    task 1 (FAILED exit 7:0): failed on img2.tif\n")
        .out_has(&format!("hpcstage retry {}", chain.run_id));
    let table = world.run(["status"]);
    table.code(0).out_has(&format!(
        "{} FAILED exit 7:0; failed tasks 1",
        chain.compute_job
    ));
    let readme = read_text(chain.failed_dir().join("README.md"));
    assert!(
        readme.contains("- failed:\n  - task 1 (FAILED exit 7:0): failed on img2.tif\n"),
        "{readme}"
    );
    assert!(
        readme.contains(&format!("`hpcstage retry {}`", chain.run_id)),
        "{readme}"
    );

    // Fixed: retry resubmits task 1 only, into the same run folder, with a new pull-back.
    common::write(&fixed, "");
    let retried = world.run(["retry", &chain.run_id, "--json"]);
    retried.code(0);
    let again = Chain::of(&retried);
    assert_eq!(again.run_id, chain.run_id);
    assert_eq!(again.run_dir, chain.run_dir);
    assert_ne!(again.compute_job, chain.compute_job);
    let status = world.wait_chain(&again, CHAIN_TIMEOUT);
    assert_eq!(status["phase"], "pulled", "{status:#}");
    let facts = compute(&status);
    assert_eq!(facts["state"], "COMPLETED", "{status:#}");
    assert_eq!(job(&status, "compute").unwrap()["array_size"], 1);
    let tasks: Vec<&String> = facts["tasks"].as_object().unwrap().keys().collect();
    assert_eq!(tasks, [&format!("{}_1", again.compute_job)], "{status:#}");
    assert!(status["failed_tasks"].as_array().unwrap().is_empty());

    // One results folder with every image's outputs: tasks 0 and 2 of the first job, task 1
    // of the retry.
    let results = &chain.results_dir;
    let present = files(results);
    for f in [
        "masks/img1.ome.tif",
        "masks/img2.ome.tif",
        "masks/sub/img3.ome.tif",
        "tables/img2.csv",
        "qc/summary-0.tsv",
        "qc/summary-1.tsv",
        "qc/summary-2.tsv",
    ] {
        assert!(present.iter().any(|p| p == f), "{f} in {present:#?}");
    }
    assert!(
        present
            .iter()
            .any(|p| *p == format!("logs/unet-seg-{}_1.out", again.compute_job)),
        "{present:#?}"
    );
    assert!(
        !present
            .iter()
            .any(|p| p.starts_with(&format!("logs/unet-seg-{}_0", again.compute_job))),
        "task 0 did not run again: {present:#?}"
    );
    assert_results_verified(&world, results);
    // The provenance says which jobs the outputs come from.
    let readme = read_text(results.join("README.md"));
    let first = &chain.compute_job;
    assert!(
        readme.contains(&format!(
            "- retried after job {first} (FAILED exit 7:0): outputs of its completed tasks {first}_0, {first}_2 are included\n"
        )),
        "{readme}"
    );
    let run: Value = serde_json::from_str(&read_text(results.join("run.json"))).unwrap();
    assert_eq!(run["compute_job_id"], again.compute_job.as_str());
    assert_eq!(
        run["earlier_compute_jobs"][0]["job_id"],
        first.as_str(),
        "{run:#}"
    );

    // A pulled run has nothing to retry or dismiss.
    world
        .run(["retry", &chain.run_id])
        .code(1)
        .err_has("there is nothing to retry");
    world
        .run(["dismiss", &chain.run_id])
        .code(1)
        .err_has("there is nothing to dismiss");
}

#[test]
fn submit_array_runs_only_the_chosen_tasks_with_their_own_inputs() {
    let _cluster = slurm_test!();
    let world = World::new();
    let raw = world.dataset("plate8", &test_images());
    world.run(["stage", &raw.to_string_lossy()]).code(0);
    let predict = predict(&world, "fake-predict", "");
    let mut args: Vec<String> = vec![
        "submit".into(),
        "unet-seg".into(),
        "--input".into(),
        "P/plate8".into(),
    ];
    args.extend(unet_params(
        &model(&world),
        &predict,
        &["gpus=0", "partition=debug", "chunk_size=1"],
    ));
    // A task past the last input is refused before anything is submitted.
    let mut beyond = args.clone();
    beyond.extend(["--array".into(), "1,5".into()]);
    world
        .run(&beyond)
        .code(1)
        .err_has("task 5 has no inputs: 3 inputs at 1 per task make tasks 0-2");
    assert!(jobs_under(&world.root).is_empty(), "nothing submitted");

    args.extend(["--array".into(), "0,2".into(), "--json".into()]);
    let run = world.run(&args);
    run.code(0);
    let chain = Chain::of(&run);
    let script = read_text(chain.run_dir.join("job.sbatch"));
    assert!(script.contains("#SBATCH --array=0,2\n"), "{script}");
    let status = world.wait_chain(&chain, CHAIN_TIMEOUT);
    assert_eq!(job(&status, "compute").unwrap()["array_size"], 2);
    let facts = compute(&status);
    let tasks: Vec<&String> = facts["tasks"].as_object().unwrap().keys().collect();
    let id = &chain.compute_job;
    assert_eq!(
        tasks,
        [&format!("{id}_0"), &format!("{id}_2")],
        "{status:#}"
    );
    // Tasks 0 and 2 segmented their own images; task 1's image was not run.
    assert!(chain.run_dir.join("masks/img1.ome.tif").is_file());
    assert!(chain.run_dir.join("masks/sub/img3.ome.tif").is_file());
    assert!(!chain.run_dir.join("masks/img2.ome.tif").exists());
}

#[test]
fn a_request_beyond_the_partition_warns_waits_with_its_reason_and_can_be_dismissed() {
    let _cluster = slurm_test!();
    let world = World::new();
    let raw = world.dataset("plate6", &test_images()[..1]);
    let predict = predict(&world, "fake-predict", "");
    // The test node has 2 CPUs and 4000 MB.
    let params = unet_params(
        &model(&world),
        &predict,
        &["gpus=0", "partition=debug", "cpus=4"],
    );
    let mut all: Vec<&str> = vec!["stage-and-run", raw.to_str().unwrap(), "unet-seg"];
    all.extend(strs(&params));
    all.push("--json");
    let run = world.run(&all);
    run.code(0).err_has(
        "warning: the compute job asks for 4 CPUs per task; the nodes of partition debug have at most 2 (sinfo)",
    );
    let chain = Chain::of(&run);

    // status says why it waits, as squeue does.
    let started = Instant::now();
    let reason = loop {
        let status = world.status(&chain.run_id);
        if let Some(r) = compute(&status)["reason"].as_str() {
            break r.to_string();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{status:#}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(reason, "PartitionConfig");
    world
        .run(["status", &chain.run_id])
        .code(0)
        .out_has(&format!(
            "  compute job: {} PENDING (PartitionConfig)\n",
            chain.compute_job
        ));

    // Not dismissed while a job could still run; cancelled, it ends AT RISK.
    world
        .run(["dismiss", &chain.run_id])
        .code(1)
        .err_has(&format!(
            "its compute job {id} is PENDING; cancel it first (scancel {id})",
            id = chain.compute_job
        ));
    bounded("scancel", &[&chain.compute_job], 20).code(0);
    let status = world.wait_chain(&chain, CHAIN_TIMEOUT);
    assert_eq!(status["phase"], "pull-failed", "{status:#}");
    // Accounting says `CANCELLED by 0` for a job cancelled while it ran (shown as
    // `CANCELLED by root`); the controller says just CANCELLED for a pending one.
    let shown = world.run(["status", &chain.run_id]);
    shown
        .code(0)
        .out_has(&format!("  compute job: {} CANCELLED", chain.compute_job))
        .out_has("    task 0 (CANCELLED");
    assert!(!shown.out().contains("CANCELLED by 0"), "{shown}");
    world
        .run(["report", "--fail-on-risk"])
        .code(5)
        .out_has("pull failed; results only on scratch");

    // Dismissed: it leaves the AT RISK count and clean may remove its folder.
    world
        .run([
            "dismiss",
            &chain.run_id,
            "--reason",
            "asked for too many CPUs",
        ])
        .code(0)
        .out_has(&format!(
            "run {} dismissed (asked for too many CPUs)",
            chain.run_id
        ));
    assert_eq!(world.status(&chain.run_id)["phase"], "dismissed");
    let report = world.run(["report", "--all", "--fail-on-risk", "--format", "json"]);
    report.code(0);
    let items = report.json()["items"].clone();
    let item = items
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == chain.run_id.as_str())
        .unwrap_or_else(|| panic!("the run in {items:#}"));
    assert_eq!(item["safety"], "DISMISSED", "{item:#}");
    assert!(
        item["reason"]
            .as_str()
            .unwrap()
            .contains("(asked for too many CPUs)"),
        "{item:#}"
    );
    world
        .run(["clean"])
        .code(0)
        .out_has(&format!("removed [ROOT]/scratch/P/runs/{} (", chain.run_id));
    assert!(!chain.run_dir.exists());
    // Gone and dismissed is not AT RISK either.
    world.run(["report", "--all", "--fail-on-risk"]).code(0);

    // More GPUs and memory than the node has: warned, then refused by sbatch. The run that
    // could not be submitted is AT RISK until dismissed.
    let mut more = unet_params(&model(&world), &predict, &["mem=5000M"]);
    more.extend(["-p".into(), "gpus=3".into()]);
    let mut all: Vec<&str> = vec!["stage-and-run", raw.to_str().unwrap(), "unet-seg"];
    all.extend(strs(&more));
    let refused = world.run(&all);
    refused
        .code(1)
        .err_has("warning: the compute job asks for 5000M of memory; the nodes of partition gpu have at most 4000 MB")
        .err_has("warning: the compute job asks for 3 GPUs; the nodes of partition gpu have at most 2")
        .err_has("could not be submitted");
    let failed_run = refused
        .err()
        .split("run ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no run id in\n{refused}"))
        .to_string();
    assert_eq!(world.status(&failed_run)["phase"], "submit-failed");
    world.run(["report", "--fail-on-risk"]).code(5);
    world.run(["dismiss", &failed_run]).code(0);
    world.run(["report", "--all", "--fail-on-risk"]).code(0);
}

/// Every file and folder under `dir` (itself included) without a write bit.
fn assert_write_protected(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut all = vec![String::new()];
    all.extend(files_and_dirs_deep(dir));
    for rel in all {
        let mode = fs::symlink_metadata(dir.join(&rel))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o222,
            0,
            "{rel:?} of {} is writable: {mode:o}",
            dir.display()
        );
    }
}

fn files_and_dirs_deep(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(dir.join(&rel)).unwrap() {
            let e = e.unwrap();
            let child = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                stack.push(child.clone());
            }
            out.push(child.to_string_lossy().into_owned());
        }
    }
    out
}

#[test]
fn worm_protects_results_from_the_pull_back_job_and_from_a_later_pull() {
    let _cluster = slurm_test!();
    let world = World::new();
    let raw = world.dataset("plate5", &test_images()[..1]);
    let predict = predict(&world, "fake-predict", "");
    let mut params = unet_params(&model(&world), &predict, &["gpus=0", "partition=debug"]);

    // Without --worm the results stay writable; a later `pull --worm` protects them.
    let chain = world.stage_and_run(&raw, "unet-seg", &strs(&params));
    assert_eq!(world.wait_chain(&chain, CHAIN_TIMEOUT)["phase"], "pulled");
    let mode = fs::metadata(chain.results_dir.join("README.md"))
        .unwrap()
        .permissions();
    assert!(!mode.readonly(), "not protected without --worm");
    world
        .run(["pull", &chain.run_id, "--worm"])
        .code(0)
        .out_has("was already pulled to ")
        .out_has("; write-protected it (--worm)");
    assert_write_protected(&chain.results_dir);

    // stage-and-run --worm: the pull-back job protects them itself.
    params.push("--worm".into());
    let chain = world.stage_and_run(&raw, "unet-seg", &strs(&params));
    let pull_script = read_text(chain.run_dir.join("pull.sbatch"));
    assert!(
        pull_script.contains(&format!(" pull --wait {} --worm\n", chain.run_id)),
        "{pull_script}"
    );
    assert_eq!(world.wait_chain(&chain, CHAIN_TIMEOUT)["phase"], "pulled");
    assert_write_protected(&chain.results_dir);
}

#[test]
fn the_pull_back_job_waits_for_every_array_task() {
    let _cluster = slurm_test!();
    let world = World::new();
    let raw = world.dataset("plate1", &test_images());
    // Tasks take a while and (one CPU each, two on the node) cannot all run at once.
    let predict = predict(&world, "slow-predict", "sleep 3");
    let params = unet_params(
        &model(&world),
        &predict,
        &["chunk_size=1", "gpus=0", "partition=debug"],
    );
    let chain = world.stage_and_run(&raw, "unet-seg", &strs(&params));
    let script = read_text(chain.run_dir.join("job.sbatch"));
    assert!(script.contains("#SBATCH --array=0-2\n"), "{script}");
    let status = world.wait_chain(&chain, CHAIN_TIMEOUT);
    assert_eq!(status["phase"], "pulled", "{status:#}");
    let compute_job = job(&status, "compute").unwrap();
    assert_eq!(compute_job["array_size"], 3);
    let facts = compute(&status);
    assert_eq!(facts["state"], "COMPLETED", "{status:#}");
    let id = &chain.compute_job;
    let tasks: serde_json::Map<String, Value> = (0..3)
        .map(|t| (format!("{id}_{t}"), Value::from("COMPLETED")))
        .collect();
    assert_eq!(facts["tasks"], Value::Object(tasks), "{status:#}");

    // Accounting: every task ended before the pull-back job started.
    let pull_id = chain.pull_job.as_deref().expect("a pull-back job");
    let sacct = bounded(
        "sacct",
        &[
            "-X",
            "--parsable2",
            "--noheader",
            "--format=JobID,State,Start,End",
            "-j",
            &format!("{id},{pull_id}"),
        ],
        30,
    );
    sacct.code(0);
    let rows: Vec<Vec<&str>> = sacct
        .stdout
        .lines()
        .map(|l| l.split('|').collect())
        .collect();
    let pull_start = rows
        .iter()
        .find(|r| r[0] == pull_id)
        .map(|r| r[2])
        .unwrap_or_else(|| panic!("no pull-back row\n{sacct}"));
    let task_ends: Vec<&str> = rows
        .iter()
        .filter(|r| r[0].starts_with(&format!("{id}_")))
        .map(|r| r[3])
        .collect();
    assert_eq!(task_ends.len(), 3, "{sacct}");
    for end in task_ends {
        assert!(
            end <= pull_start,
            "a task ended after the pull began\n{sacct}"
        );
    }

    let results = &chain.results_dir;
    let present = files(results);
    for f in [
        "masks/img1.ome.tif",
        "masks/img2.ome.tif",
        "masks/sub/img3.ome.tif",
        "qc/summary-0.tsv",
        "qc/summary-1.tsv",
        "qc/summary-2.tsv",
    ] {
        assert!(present.iter().any(|p| p == f), "{f} in {present:#?}");
    }
    for log in array_logs("unet-seg", id, 3) {
        assert!(present.contains(&log), "{log} in {present:#?}");
    }
    assert_results_verified(&world, results);
}

// ---------------------------------------------------------------------------------------
// 4. sbatch times out after submitting
// ---------------------------------------------------------------------------------------

#[test]
fn an_sbatch_that_hangs_after_submitting_leaves_exactly_one_job_and_the_chain_goes_on() {
    let _cluster = slurm_test!();
    let mut world = World::new();
    let raw = world.dataset("plate1", &test_images()[..1]);
    let real_sbatch = which("sbatch").expect("sbatch on PATH");
    let wrap_dir = world.path("wrap");
    // Submits, then hangs as an sbatch stuck on a slow controller's answer would (the
    // hanging process keeps the wrapper's path in its command line, to be found below).
    let wrapper = world.script_at(
        &wrap_dir.join("sbatch"),
        &format!(
            "{} \"$@\"\nexec -a \"$0.hanging\" sleep 1000\n",
            real_sbatch.display()
        ),
    );
    world.prepend_path(&wrap_dir);
    world.configure("[slurm]\ncommand_timeout = \"5s\"\nretries = 1\n");

    let predict = predict(&world, "fake-predict", "");
    let params = unet_params(&model(&world), &predict, &["gpus=0", "partition=debug"]);
    let started = Instant::now();
    let chain = world.stage_and_run(&raw, "unet-seg", &strs(&params));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(10),
        "both submissions waited for their timeout ({took:?})"
    );

    let status = world.status(&chain.run_id);
    let token = |role: &str| {
        job(&status, role).unwrap()["token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (compute_token, pull_token) = (token("compute"), token("pull-back"));
    let mut found: Vec<(String, String, String)> = jobs_under(&chain.run_dir)
        .into_iter()
        .map(|j| (j.id, j.name, j.comment))
        .collect();
    found.sort();
    let pull_name = format!("pull-{}", &chain.run_id[..chain.run_id.len().min(40)]);
    let pull_id = chain.pull_job.clone().expect("a pull-back job");
    let mut expected = vec![
        (
            chain.compute_job.clone(),
            "unet-seg".to_string(),
            compute_token,
        ),
        (pull_id, pull_name, pull_token),
    ];
    expected.sort();
    assert_eq!(
        found, expected,
        "one job per submission, found by its token"
    );

    // The hanging wrappers were killed with their process group.
    let wrapper = wrapper.to_string_lossy();
    assert_lines(&processes_mentioning(&wrapper), &[] as &[&str]);

    let status = world.wait_chain(&chain, CHAIN_TIMEOUT);
    assert_eq!(status["phase"], "pulled", "{status:#}");
    assert_results_verified(&world, &chain.results_dir);
}

/// Command lines of live processes that mention `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = fs::read_to_string(entry.path().join("stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        });
        if text.contains(needle) && !zombie {
            found.push(text);
        }
    }
    found
}

// ---------------------------------------------------------------------------------------
// 5. The controller goes away during a chain
// ---------------------------------------------------------------------------------------

/// Restarts the test cluster when dropped, whatever happened in between, so that a failed
/// assertion does not leave the later tests without a controller.
struct Restart;

impl Restart {
    fn now() {
        let up = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/up.sh");
        let run = bounded("bash", &[up.to_str().unwrap()], 180);
        run.code(0);
    }
}

impl Drop for Restart {
    fn drop(&mut self) {
        if std::thread::panicking() {
            Restart::now();
        }
    }
}

fn slurmctld_pid() -> Option<u32> {
    let dir = std::env::var("HPCSTAGE_CLUSTER_DIR")
        .unwrap_or_else(|_| "/var/tmp/hpcstage-cluster".into());
    let from_file = fs::read_to_string(Path::new(&dir).join("run/slurmctld.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "slurmctld")
        });
    from_file.or_else(|| {
        bounded("pgrep", &["-x", "slurmctld"], 10)
            .stdout
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
    })
}

fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

#[test]
fn status_warns_while_the_controller_is_down_and_the_chain_completes_after_restart() {
    let _cluster = slurm_test!();
    let world = World::new();
    world.configure("[slurm]\ncommand_timeout = \"5s\"\nretries = 1\n");
    let raw = world.dataset("plate1", &test_images()[..1]);
    let predict = predict(&world, "slow-predict", "sleep 20");
    let params = unet_params(&model(&world), &predict, &["gpus=0", "partition=debug"]);
    let chain = world.stage_and_run(&raw, "unet-seg", &strs(&params));

    // Wait until the compute job runs.
    let started = Instant::now();
    loop {
        let status = world.status(&chain.run_id);
        if compute(&status)["state"] == "RUNNING" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the compute job did not start: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    let restart = Restart;
    let pid = slurmctld_pid().expect("slurmctld's pid");
    bounded("kill", &["-TERM", &pid.to_string()], 10).code(0);
    let stopping = Instant::now();
    while alive(pid) {
        assert!(
            stopping.elapsed() < Duration::from_secs(30),
            "slurmctld (pid {pid}) did not stop"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let asked = Instant::now();
    let table = world.run(["status"]);
    let took = asked.elapsed();
    table.code(0);
    table.err_has("the SLURM controller (slurmctld) does not answer");
    assert!(!table.stderr.contains("panicked"), "{table}");
    let row = table
        .stdout
        .lines()
        .find(|l| l.contains(&chain.run_id))
        .unwrap_or_else(|| panic!("the run is listed\n{table}"));
    assert!(row.contains("submitted"), "{row}");
    assert!(
        took < Duration::from_secs(30),
        "status answered in {took:?} without the controller"
    );
    let one = world.run(["status", &chain.run_id, "--json"]);
    one.code(0);
    one.err_has("slurmctld");
    assert_eq!(one.json()["record"]["id"], chain.run_id.as_str());

    // A new submission fails, says why, and is recorded as such.
    let refused = world.run(
        ["submit", "unet-seg", "--input", "P/plate1", "--json"]
            .into_iter()
            .chain(strs(&params)),
    );
    refused.code(1).err_has(
        "could not be submitted (the SLURM controller, slurmctld, does not answer `scontrol ping`)",
    );
    let runs = world.run(["status", "--json"]);
    runs.code(0);
    let failed_run = runs.json()["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["record"]["id"] != chain.run_id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("the refused run is recorded\n{runs}"));
    assert_eq!(failed_run["phase"], "submit-failed", "{failed_run:#}");
    let failed_dir = PathBuf::from(failed_run["record"]["run_dir"].as_str().unwrap());

    Restart::now();
    drop(restart);
    let stray = jobs_under(&failed_dir);
    assert!(stray.is_empty(), "the refused run has no job: {stray:#?}");
    let status = world.wait_chain(&chain, CHAIN_TIMEOUT);
    assert_eq!(status["phase"], "pulled", "{status:#}");
    let facts = compute(&status);
    assert_eq!(facts["state"], "COMPLETED", "{status:#}");
    assert_eq!(facts["exit_code"], "0:0");
    assert_results_verified(&world, &chain.results_dir);

    let after = world.run(["status"]);
    after.code(0);
    assert!(!after.stderr.contains("slurmctld"), "{after}");
    let row = after
        .stdout
        .lines()
        .find(|l| l.contains(&chain.run_id))
        .unwrap_or_else(|| panic!("the run is listed\n{after}"));
    assert!(row.contains("pulled"), "{row}");
    assert!(
        row.contains(&format!("{} COMPLETED exit 0:0", chain.compute_job)),
        "{row}"
    );
}

// ---------------------------------------------------------------------------------------
// 6. Hostile and invalid parameters
// ---------------------------------------------------------------------------------------

#[test]
fn hostile_parameters_reach_the_program_as_plain_bytes() {
    let _cluster = slurm_test!();
    let world = World::new();
    let raw = world.dataset("plate1", &test_images()[..1]);
    let markers: Vec<PathBuf> = (1..=3)
        .map(|n| PathBuf::from(format!("/tmp/pwned-{}-{n}", std::process::id())))
        .collect();
    for m in &markers {
        let _ = fs::remove_file(m);
    }
    // A model file whose path is an injection attempt: the job must read exactly it.
    let model = world.path(format!(
        "models/$(id)/x'; touch {}; '",
        markers[0].display()
    ));
    common::write(&model, "weights");
    let predict = predict(&world, "fake-predict", "");
    let predict_cmd = format!(
        "predict_cmd={} --model {{model}} --input {{input}} --mask {{mask}} --table {{table}} \
         --note $(touch {}) --also `touch {}`",
        predict.display(),
        markers[1].display(),
        markers[2].display()
    );
    let model_param = format!("model={}", model.display());
    world.run(["stage", raw.to_str().unwrap()]).code(0);
    let submit = world.run([
        "submit",
        "unet-seg",
        "--input",
        "P/plate1",
        "-p",
        &model_param,
        "-p",
        &predict_cmd,
        "-p",
        "gpus=0",
        "-p",
        "partition=debug",
        "-p",
        "cpus=1",
        "-p",
        "mem=200M",
        "--json",
    ]);
    submit.code(0);
    let chain = Chain::of(&submit);
    let status = world.wait_chain(&chain, CHAIN_TIMEOUT);
    assert_eq!(status["phase"], "pulled", "{status:#}");
    for m in &markers {
        assert!(!m.exists(), "{} was created", m.display());
    }
    let sums = read_text(chain.results_dir.join("qc/model.sha256"));
    assert!(
        sums.ends_with(&format!("  {}\n", model.display())),
        "{sums}"
    );
    let readme = read_text(chain.results_dir.join("README.md"));
    assert!(
        readme.contains(&format!("- path: {}\n", model.display())),
        "{readme}"
    );

    // `template render` shows the value quoted; bash reads it back unchanged.
    let staged = world.scratch().join("P/plate1");
    let render = world.run([
        OsStr::new("template"),
        OsStr::new("render"),
        OsStr::new("unet-seg"),
        OsStr::new("--input"),
        staged.as_os_str(),
        OsStr::new("-p"),
        OsStr::new(&model_param),
    ]);
    render.code(0);
    let line = render
        .stdout
        .lines()
        .find(|l| l.starts_with("MODEL="))
        .unwrap_or_else(|| panic!("no MODEL= line\n{render}"));
    assert!(line.starts_with("MODEL='"), "{line}");
    let back = world.sh(&world.root, &format!("{line}\nprintf '%s' \"$MODEL\""));
    back.code(0);
    assert_eq!(back.stdout, model.to_string_lossy());
    for m in &markers {
        assert!(!m.exists(), "{} was created", m.display());
    }
}

#[test]
fn invalid_parameters_and_unknown_templates_are_refused_before_anything_is_submitted() {
    let _cluster = slurm_test!();
    let world = World::new();
    let raw = world.dataset("plate1", &test_images()[..1]);
    let raw = raw.to_str().unwrap();
    let model = model(&world);
    let model = format!("model={}", model.display());
    let all_params =
        "valid parameters: model, predict_cmd, python, chunk_size, gpus, partition, cpus, \
                      mem, time, max_parallel";
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["unet-seg", "-p", &model, "-p", "chunk_size=abc"],
            "error: parameter chunk_size expects an int, got \"abc\": not a whole number".into(),
        ),
        (
            vec!["unet-seg", "-p", &model, "-p", "chunk_size=0"],
            "error: parameter chunk_size expects an int, got \"0\": must be at least 1".into(),
        ),
        (
            vec!["unet-seg", "-p", &model, "-p", "time=forever"],
            "error: parameter time expects a duration, got \"forever\"".into(),
        ),
        (
            vec!["unet-seg", "-p", &model, "-p", "chunk-size=4"],
            format!("error: template unet-seg has no parameter \"chunk-size\"; {all_params}"),
        ),
        (
            vec!["unet-seg"],
            "error: template unet-seg needs parameter model".into(),
        ),
        (
            vec!["align", "-p", "reference=/ref.fa", "-p", "aligner=bowtie"],
            "error: parameter aligner must be one of minimap2, bwa-mem2, star, got \"bowtie\""
                .into(),
        ),
        (
            vec!["unet-segment", "-p", &model],
            "error: unknown template \"unet-segment\"; available: align, convert, unet-seg".into(),
        ),
    ];

    // stage-and-run refuses before staging anything.
    for (args, message) in &cases {
        let mut all = vec!["stage-and-run", raw];
        all.extend(args);
        let run = world.run(&all);
        run.code(1).err_has(message);
        assert!(
            !world.scratch().join("P").exists(),
            "nothing was staged\n{run}"
        );
    }
    // submit refuses before writing a run folder.
    world.run(["stage", raw]).code(0);
    for (args, message) in &cases {
        let mut all = vec!["submit", args[0], "--input", "P/plate1"];
        all.extend(&args[1..]);
        let run = world.run(&all);
        run.code(1).err_has(message);
    }
    // A -p without `=` is a usage error: the argument parser refuses it (exit 2).
    for start in [
        vec!["stage-and-run", raw, "unet-seg"],
        vec!["submit", "unet-seg", "--input", "P/plate1"],
    ] {
        let mut all = start;
        all.extend(["-p", model.as_str(), "-p", "novalue"]);
        world.run(&all).code(2).err_has(
            "invalid value 'novalue' for '--param <KEY=VALUE>': expected KEY=VALUE, e.g. -p model=/models/unet.onnx",
        );
    }
    assert!(!world.scratch().join("P/runs").exists(), "no run folder");
    let status = world.run(["status", "--json"]);
    status.code(0);
    assert_eq!(status.json()["runs"], serde_json::json!([]));
    let submitted = jobs_under(&world.root);
    assert!(
        submitted.is_empty(),
        "nothing was submitted: {submitted:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// 7. Templates as users see them
// ---------------------------------------------------------------------------------------

#[test]
fn template_list_shows_the_built_ins() {
    let world = World::new();
    let run = world.run(["template", "list"]);
    run.code(0);
    insta::assert_snapshot!("template_list", run.stdout);
    let json = world.run(["template", "list", "--json"]);
    json.code(0);
    let names: Vec<String> = json
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| format!("{} {} {}", t["name"], t["workflow"], t["origin"]))
        .collect();
    assert_lines(
        &names,
        &[
            r#""align" "alignment" "built-in""#,
            r#""convert" "conversion" "built-in""#,
            r#""unet-seg" "segmentation" "built-in""#,
        ],
    );
}

#[test]
fn template_show_lists_parameters_then_the_spec_and_script() {
    let world = World::new();
    let run = world.run(["template", "show", "unet-seg"]);
    run.code(0);
    let out = run.out();
    assert!(
        out.starts_with(
            "unet-seg 1.0.0 (built-in) — U-Net cell segmentation on GPU: compressed OME-TIFF \
             masks, per-image measurement tables, QC\nresults go to: results/segmentation/<run>/\n"
        ),
        "{run}"
    );
    let row = |name: &str| -> Vec<String> {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("│ {name} ")))
            .unwrap_or_else(|| panic!("no row for {name}\n{run}"));
        // Columns are set apart by runs of spaces; values hold single spaces at most.
        line.trim_matches(['│', ' '])
            .split("  ")
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect()
    };
    assert_eq!(row("model")[..3], ["model", "a path", "(required)"]);
    assert_eq!(row("chunk_size")[..3], ["chunk_size", "an int", "16"]);
    assert_eq!(row("time")[..3], ["time", "a duration", "4h"]);
    assert_eq!(row("partition")[..3], ["partition", "a string", "gpu"]);
    assert!(
        out.contains("\n--- unet-seg.toml ---\n# U-Net cell segmentation"),
        "{run}"
    );
    assert!(
        out.contains("--- unet-seg.sbatch.j2 ---\n# U-Net cell segmentation"),
        "{run}"
    );
    assert!(
        out.contains("PREDICT=( {{ predict_cmd | argv }} )"),
        "{run}"
    );

    let unknown = world.run(["template", "show", "segment"]);
    unknown
        .code(1)
        .err_has("unknown template \"segment\"; available: align, convert, unet-seg");
}

#[test]
fn template_render_shows_the_exact_script_for_a_staged_folder() {
    let world = World::new();
    let (_, reads) = reference_and_reads();
    let dir = world.path("reads");
    for (name, content) in &reads {
        common::write(dir.join(name), content);
    }
    let run = world.run([
        OsStr::new("template"),
        OsStr::new("render"),
        OsStr::new("align"),
        OsStr::new("--input"),
        dir.as_os_str(),
        OsStr::new("-p"),
        OsStr::new("reference=/refs/GRCh38 primary.mmi"),
        OsStr::new("-p"),
        OsStr::new("threads=4"),
        OsStr::new("--time"),
        OsStr::new("90m"),
    ]);
    run.code(0);
    let out = run.out();
    let directives: Vec<&str> = out.lines().filter(|l| l.starts_with("#SBATCH")).collect();
    let render_dir = directives
        .iter()
        .find_map(|l| l.strip_prefix("#SBATCH --chdir="))
        .unwrap_or_else(|| panic!("no --chdir\n{run}"))
        .to_string();
    assert_lines(
        &directives,
        &[
            "#SBATCH --job-name=align".to_string(),
            "#SBATCH --cpus-per-task=4".into(),
            "#SBATCH --mem=32G".into(),
            "#SBATCH --time=01:30:00".into(),
            "#SBATCH --array=0-1".into(),
            format!("#SBATCH --chdir={render_dir}"),
            format!("#SBATCH --output={render_dir}/logs/%x-%A_%a.out"),
            format!("#SBATCH --error={render_dir}/logs/%x-%A_%a.err"),
            "#SBATCH --open-mode=append".into(),
            "#SBATCH --signal=B:USR1@300".into(),
            "#SBATCH --comment=TOKEN".into(),
        ],
    );
    for line in [
        "REF='/refs/GRCh38 primary.mmi'\n",
        "ALIGNER=minimap2\n",
        "THREADS=4\n",
        "PRESET=sr\n",
        "SHEET=''\n",
        "HPCSTAGE_INPUT_DIR=[ROOT]/reads\n",
        "HPCSTAGE_PER_TASK=1\n",
        "# ---- template align ----\n",
    ] {
        assert!(out.contains(line), "{line:?} in\n{run}");
    }
    assert!(out.starts_with("#!/bin/bash\n"), "{run}");
}

#[test]
fn template_render_check_passes_sbatch_test_only() {
    let _cluster = slurm_test!();
    let world = World::new();
    let images = world.path("images");
    for (name, content) in test_images() {
        common::write(images.join(name), content);
    }
    let images = images.to_str().unwrap();
    let ok = world.run([
        "template",
        "render",
        "unet-seg",
        "--input",
        images,
        "-p",
        "model=/models/m.pt",
        "-p",
        "cpus=1",
        "-p",
        "mem=200M",
        "--check",
    ]);
    ok.code(0).err_has("sbatch --test-only: ");
    ok.err_has("in partition gpu");
    assert!(ok.stdout.contains("#SBATCH --gres=gpu:1\n"), "{ok}");

    // Too big for the test node: the check says so and fails.
    let too_big = world.run([
        "template",
        "render",
        "unet-seg",
        "--input",
        images,
        "-p",
        "model=/models/m.pt",
        "-p",
        "gpus=8",
        "-p",
        "cpus=1",
        "-p",
        "mem=200M",
        "--check",
    ]);
    too_big
        .code(1)
        .err_has("sbatch --test-only rejected the script:");
    assert!(
        jobs_under(&world.root).is_empty(),
        "--test-only submits nothing"
    );
}

// ---------------------------------------------------------------------------------------
// 8. The local executor
// ---------------------------------------------------------------------------------------

#[test]
fn the_local_executor_runs_the_whole_chain_in_the_foreground_with_wait() {
    let world = World::new();
    let raw = world.dataset("plate1", &test_images());
    let predict = predict(&world, "fake-predict", "");
    let mut args = unet_params(&model(&world), &predict, &["chunk_size=2", "gpus=0"]);
    args.extend(["--executor".into(), "local".into(), "--wait".into()]);
    let chain = world.stage_and_run(&raw, "unet-seg", &strs(&args));
    // Done when the command returns.
    let status = world.status(&chain.run_id);
    assert_eq!(status["phase"], "pulled", "{status:#}");
    assert_eq!(status["record"]["executor"], "local");
    let facts = compute(&status);
    assert_eq!(facts["state"], "COMPLETED", "{status:#}");
    assert_eq!(facts["partition"], "local");
    assert_eq!(facts["exit_code"], "0:0");
    assert_eq!(pull_back(&status)["state"], "COMPLETED", "{status:#}");
    assert_eq!(job(&status, "compute").unwrap()["array_size"], 2);
    let results = &chain.results_dir;
    let present = files(results);
    for f in [
        "masks/img1.ome.tif",
        "masks/sub/img3.ome.tif",
        "qc/summary-0.tsv",
        "qc/summary-1.tsv",
        "run.json",
        "README.md",
    ] {
        assert!(present.iter().any(|p| p == f), "{f} in {present:#?}");
    }
    assert_results_verified(&world, results);
    assert!(read_text(results.join("README.md")).contains("- executor: local\n"));
    assert!(!chain.run_dir.join("work").exists(), "work/ was purged");
    assert_input_kept(&world, "plate1");

    // Done when it returns: nothing left to follow.
    let mut again: Vec<String> = vec![
        "submit".into(),
        "unet-seg".into(),
        "--input".into(),
        "P/plate1".into(),
    ];
    again.extend(args);
    let run = world.run(&again);
    run.code(0)
        .err_has("done; see how it ended with: hpcstage status ")
        .err_lacks("follow it with");
}

#[test]
fn the_local_executor_retries_the_failed_task_in_a_detached_runner() {
    let world = World::new();
    let raw = world.dataset("plate4", &test_images());
    let fixed = world.path("fixed");
    let predict = flaky_predict(&world, &fixed);
    let mut args = unet_params(&model(&world), &predict, &["chunk_size=1", "gpus=0"]);
    args.extend(["--executor".into(), "local".into(), "--wait".into()]);
    let chain = world.stage_and_run(&raw, "unet-seg", &strs(&args));
    let status = world.status(&chain.run_id);
    assert_eq!(status["phase"], "pull-failed", "{status:#}");
    assert_eq!(status["failed_tasks"][0]["task"], 1, "{status:#}");

    common::write(&fixed, "");
    let retried = world.run(["retry", &chain.run_id, "--json"]);
    retried.code(0);
    let again = Chain::of(&retried);
    // The local executor reads --array from the script: a copy with only that line changed.
    let copies: Vec<PathBuf> = fs::read_dir(chain.run_dir.join(".hpcstage"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".sbatch"))
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    let original = read_text(chain.run_dir.join("job.sbatch"));
    let copy = read_text(&copies[0]);
    assert_eq!(
        copy,
        original.replace("#SBATCH --array=0-2\n", "#SBATCH --array=1\n"),
        "{copy}"
    );
    let started = Instant::now();
    let status = loop {
        let status = world.status(&chain.run_id);
        if matches!(status["phase"].as_str(), Some("pulled" | "pull-failed"))
            && job(&status, "pull-back").is_some_and(|j| {
                j["job_id"] == again.pull_job.as_deref().unwrap_or_default()
                    && j["facts"]["state"]
                        .as_str()
                        .is_some_and(common::slurm::ended)
            })
        {
            break status;
        }
        assert!(started.elapsed() < CHAIN_TIMEOUT, "{status:#}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(status["phase"], "pulled", "{status:#}");
    let tasks: Vec<&String> = compute(&status)["tasks"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(tasks, [&format!("{}_1", again.compute_job)], "{status:#}");
    for f in [
        "masks/img1.ome.tif",
        "masks/img2.ome.tif",
        "masks/sub/img3.ome.tif",
    ] {
        assert!(chain.results_dir.join(f).is_file(), "{f}");
    }
    assert_results_verified(&world, &chain.results_dir);
}

#[test]
fn the_local_executor_without_wait_returns_at_once_and_a_detached_runner_finishes() {
    let world = World::new();
    let raw = world.dataset("plate1", &test_images()[..2]);
    let predict = predict(&world, "slow-predict", "sleep 3");
    let mut args = unet_params(&model(&world), &predict, &["gpus=0"]);
    args.extend(["--executor".into(), "local".into()]);
    let started = Instant::now();
    let chain = world.stage_and_run(&raw, "unet-seg", &strs(&args));
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "stage-and-run returned after {took:?}, not at once (the job takes 6 s)"
    );
    let early = world.status(&chain.run_id);
    assert_eq!(early["phase"], "submitted", "{early:#}");

    let status = world.wait_chain(&chain, CHAIN_TIMEOUT);
    assert_eq!(status["phase"], "pulled", "{status:#}");
    assert_eq!(compute(&status)["state"], "COMPLETED", "{status:#}");
    assert_eq!(pull_back(&status)["state"], "COMPLETED", "{status:#}");
    assert_results_verified(&world, &chain.results_dir);
    let runner_log = read_text(chain.run_dir.join("logs/local-runner.log"));
    assert!(!runner_log.contains("error"), "{runner_log}");
}

#[test]
fn stage_in_as_a_job_stages_on_the_transfer_partition_then_submits_the_chain() {
    let _cluster = slurm_test!();
    let world = World::new();
    let raw = world.dataset("plate1", &test_images());
    let predict = predict(&world, "fake-predict", "");
    let params = unet_params(&model(&world), &predict, &[]);
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("stage-and-run"),
        raw.as_os_str(),
        OsStr::new("unet-seg"),
        OsStr::new("--stage-in"),
        OsStr::new("job"),
        OsStr::new("--json"),
    ];
    args.extend(params.iter().map(OsStr::new));
    let run = world.run(args);
    run.code(0);
    let stage_in_job = run.json()["stage_in_job"]
        .as_str()
        .expect("stage_in_job in the JSON")
        .to_string();

    // The run exists only once the stage-in job has staged the data and submitted it.
    let started = Instant::now();
    let run_id = loop {
        let all = world.run(["status", "--json"]);
        all.code(0);
        if let Some(id) = all.json()["runs"][0]["record"]["id"].as_str() {
            break id.to_string();
        }
        assert!(
            started.elapsed() < CHAIN_TIMEOUT,
            "no run appeared after stage-in job {stage_in_job}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let status = world.status(&run_id);
    let chain = Chain {
        run_id: run_id.clone(),
        run_dir: status["record"]["run_dir"]
            .as_str()
            .expect("run_dir")
            .into(),
        results_dir: status["record"]["results_dir"]
            .as_str()
            .expect("results_dir")
            .into(),
        compute_job: String::new(),
        pull_job: None,
    };
    let status = world.wait_chain(&chain, CHAIN_TIMEOUT);
    assert_eq!(status["phase"], "pulled", "{status:#}");
    assert_results_verified(&world, &chain.results_dir);
    assert_input_kept(&world, "plate1");

    // The stage-in job ran on the transfer partition and before the compute job.
    let acct = bounded(
        "sacct",
        &[
            "-X",
            "--parsable2",
            "--noheader",
            "--format=Partition,State",
            "-j",
            &stage_in_job,
        ],
        20,
    );
    assert!(
        acct.stdout.starts_with("transfer|COMPLETED"),
        "stage-in job {stage_in_job}: {:?}",
        acct.stdout
    );
}
