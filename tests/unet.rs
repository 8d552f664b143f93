//! The U-Net behind `unet-seg`, with the real libraries: the shipped predictor
//! (`templates/tools/unet-predict`) runs a tiny U-Net built with the `onnx` helper API
//! (encoder, decoder, skip connection; weights that separate bright disks from
//! background) under `onnxruntime`, over synthetic images of disks whose true labels are
//! known (`tests/unet/fixtures.py`, written with `tifffile` and `numpy`). Then the template
//! around it: the local executor and the real test cluster run it, the pull reads every
//! mask back in Rust and refuses the ones that are not what they claim to be.
//!
//! The Python libraries come from the virtual environment `scripts/test` installs
//! (`target/test-python`), found through `HPCSTAGE_TEST_PYTHON`. A test that needs it fails,
//! saying how to make it, when it is missing: it never passes without them.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::cluster::slurm_test;
use common::run::Run;
use common::slurm::{World, CHAIN_TIMEOUT};
use common::{read_text, write};
use serde_json::Value;

/// The interpreter of the test environment, checked to import what the predictor needs.
fn python() -> PathBuf {
    const HOW: &str = "HPCSTAGE_TEST_PYTHON must name a Python with numpy, tifffile, onnxruntime, \
        onnx and scikit-image. scripts/test makes one; by hand: python3 -m venv target/test-python && \
        target/test-python/bin/pip install numpy tifffile onnxruntime onnx scikit-image && \
        export HPCSTAGE_TEST_PYTHON=$PWD/target/test-python/bin/python";
    let Some(py) = std::env::var_os("HPCSTAGE_TEST_PYTHON") else {
        panic!("HPCSTAGE_TEST_PYTHON is not set. {HOW}");
    };
    let py = PathBuf::from(py);
    let check = Command::new(&py)
        .args(["-c", "import numpy, tifffile, onnxruntime, onnx, skimage"])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}. {HOW}", py.display()));
    assert!(
        check.status.success(),
        "{} cannot import the packages: {}. {HOW}",
        py.display(),
        String::from_utf8_lossy(&check.stderr)
    );
    py
}

fn source(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// `python tests/unet/fixtures.py ARGS...`, expected to succeed.
fn fixture<S: AsRef<OsStr>>(args: &[S]) -> Run {
    let mut cmd = Command::new(python());
    cmd.arg(source("tests/unet/fixtures.py")).args(args);
    let run = Run::of(cmd);
    run.code(0);
    run
}

/// A fixture's JSON answer.
fn fixture_json<S: AsRef<OsStr>>(args: &[S]) -> Value {
    fixture(args).json()
}

/// `python templates/tools/unet-predict ARGS...`.
fn predict<S: AsRef<OsStr>>(args: &[S]) -> Run {
    let mut cmd = Command::new(python());
    cmd.arg(source("templates/tools/unet-predict"))
        .args(args)
        .env_remove("CUDA_VISIBLE_DEVICES");
    Run::of(cmd)
}

fn p(path: &Path) -> &OsStr {
    path.as_os_str()
}

/// A temporary folder with the tiny U-Net in it.
struct Bench {
    dir: tempfile::TempDir,
}

impl Bench {
    fn new() -> Bench {
        let bench = Bench {
            dir: tempfile::tempdir().expect("temporary folder"),
        };
        fixture(&[OsStr::new("model"), p(&bench.model())]);
        bench
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn model(&self) -> PathBuf {
        self.path("unet.onnx")
    }

    /// Disks on noise: the image `NAME.tif` and its truth `NAME.truth.tif`.
    fn disks(&self, name: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
        let image = self.path(&format!("{name}.tif"));
        let truth = self.path(&format!("{name}.truth.tif"));
        let mut args = vec![OsStr::new("disks"), p(&image), p(&truth)];
        args.extend(extra.iter().map(OsStr::new));
        fixture(&args);
        (image, truth)
    }

    /// Runs the predictor on `image`; returns (mask, table, qc line).
    fn predict(&self, image: &Path, name: &str, extra: &[&str]) -> (PathBuf, PathBuf, String) {
        let mask = self.path(&format!("{name}.mask.ome.tif"));
        let table = self.path(&format!("{name}.csv"));
        let qc = self.path(&format!("{name}.qc.tsv"));
        let model = self.model();
        let mut args = vec![
            OsStr::new("--model"),
            p(&model),
            OsStr::new("--input"),
            p(image),
            OsStr::new("--mask"),
            p(&mask),
            OsStr::new("--table"),
            p(&table),
            OsStr::new("--qc"),
            p(&qc),
        ];
        args.extend(extra.iter().map(OsStr::new));
        predict(&args).code(0);
        (mask, table, read_text(&qc))
    }
}

/// Every true disk found once, each with IoU >= 0.9, labels 1..N, one table row each.
fn assert_matches_truth(mask: &Path, truth: &Path, table: &Path) -> Value {
    let c = fixture_json(&[OsStr::new("compare"), p(mask), p(truth)]);
    assert_eq!(c["objects"], c["truth"], "object count: {c}");
    assert_eq!(c["max_label"], c["truth"], "labels run 1..N: {c}");
    assert!(c["truth"].as_u64().unwrap() >= 3, "a real test image: {c}");
    assert!(c["min_iou"].as_f64().unwrap() >= 0.9, "IoU per object: {c}");
    let rows = read_text(table).lines().count() - 1;
    assert_eq!(
        rows as u64,
        c["truth"].as_u64().unwrap(),
        "one table row per object"
    );
    c
}

#[test]
fn the_predictor_finds_every_disk_with_iou_of_at_least_0_9() {
    let bench = Bench::new();
    let (image, truth) = bench.disks("plate", &["--size", "200", "--seed", "1", "--ome"]);
    let (mask, table, qc) = bench.predict(&image, "plate", &[]);
    assert_matches_truth(&mask, &truth, &table);

    let m = fixture_json(&[OsStr::new("inspect"), p(&mask)]);
    assert_eq!(m["is_ome"], true, "{m}");
    assert_eq!(m["has_ome_xml"], true, "{m}");
    assert_eq!(m["shape"], serde_json::json!([200, 200]), "{m}");
    assert_eq!(m["dtype"], "uint8", "{m}");
    assert_eq!(m["compression"], "ADOBE_DEFLATE", "{m}");
    assert_eq!(
        m["physical_size_x"], true,
        "the image's pixel size is kept: {m}"
    );

    let header = read_text(&table).lines().next().unwrap().to_string();
    assert_eq!(
        header,
        "label,area,centroid_y,centroid_x,bbox_min_y,bbox_min_x,bbox_max_y,bbox_max_x,\
         mean_intensity_ch0,max_intensity_ch0"
    );
    let qc: Vec<&str> = qc.trim_end().split('\t').collect();
    assert_eq!(qc.len(), 5, "{qc:?}");
    assert_eq!(qc[3..], ["CPU", "none"], "device and GPU: {qc:?}");
    assert!(qc[2].parse::<f64>().is_ok(), "inference seconds: {qc:?}");
}

#[test]
fn an_image_larger_than_the_tile_gives_the_labels_of_the_untiled_image() {
    let bench = Bench::new();
    let (image, truth) = bench.disks("big", &["--size", "300", "--seed", "3"]);
    // 64-pixel tiles overlapping by 32: a 5 x 5 grid over 300 x 300.
    let (tiled, tiled_table, _) = bench.predict(
        &image,
        "tiled",
        &["--tile", "64", "--overlap", "32", "--batch-size", "3"],
    );
    let (whole, _, _) = bench.predict(&image, "whole", &["--tile", "1024"]);
    let same = fixture_json(&[OsStr::new("equal"), p(&tiled), p(&whole)]);
    assert_eq!(same["differing"], 0, "no seam: {same}");
    assert_matches_truth(&tiled, &truth, &tiled_table);
}

#[test]
fn a_z_stack_gives_a_z_stack_mask() {
    let bench = Bench::new();
    let (image, truth) = bench.disks(
        "stack",
        &[
            "--size",
            "128",
            "--z",
            "6",
            "--channels",
            "2",
            "--ome",
            "--seed",
            "5",
        ],
    );
    let (mask, table, _) = bench.predict(&image, "stack", &["--channels", "0"]);
    let m = fixture_json(&[OsStr::new("inspect"), p(&mask)]);
    assert_eq!(m["shape"], serde_json::json!([6, 128, 128]), "{m}");
    assert_eq!(m["axes"], "ZYX", "{m}");
    assert_matches_truth(&mask, &truth, &table);
    let header = read_text(&table).lines().next().unwrap().to_string();
    assert!(
        header.contains(",centroid_z,") && header.ends_with("max_intensity_ch0,max_intensity_ch1"),
        "3D measures and both channels: {header}"
    );

    // Two channels and a one-channel model: the predictor asks which one.
    let refused = predict(&[
        OsStr::new("--model"),
        p(&bench.model()),
        OsStr::new("--input"),
        p(&image),
        OsStr::new("--mask"),
        p(&bench.path("x.ome.tif")),
        OsStr::new("--table"),
        p(&bench.path("x.csv")),
    ]);
    refused
        .code(2)
        .err_has("the image has 2 channel(s), the model takes 1: choose them with --channels");
}

#[test]
fn a_3d_model_segments_a_z_stack_as_a_volume() {
    let bench = Bench::new();
    let model = bench.path("unet3d.onnx");
    fixture(&[OsStr::new("model"), p(&model), OsStr::new("--3d")]);
    let (image, truth) = bench.disks("vol", &["--size", "96", "--z", "6", "--ome", "--seed", "8"]);
    let mask = bench.path("vol.mask.ome.tif");
    let table = bench.path("vol.csv");
    predict(&[
        OsStr::new("--model"),
        p(&model),
        OsStr::new("--input"),
        p(&image),
        OsStr::new("--mask"),
        p(&mask),
        OsStr::new("--table"),
        p(&table),
    ])
    .code(0);
    let m = fixture_json(&[OsStr::new("inspect"), p(&mask)]);
    assert_eq!(m["shape"], serde_json::json!([6, 96, 96]), "{m}");
    assert_matches_truth(&mask, &truth, &table);
    let described = predict(&[OsStr::new("--describe-model"), p(&model)]);
    described.code(0);
    assert_eq!(
        described.json()["inputs"][0]["shape"],
        serde_json::json!(["N", 1, "Z", "Y", "X"])
    );
}

#[test]
fn touching_objects_are_split_and_specks_below_the_minimum_size_dropped() {
    let bench = Bench::new();
    let image = bench.path("touching.tif");
    let truth = bench.path("touching.truth.tif");
    fixture(&[OsStr::new("touching"), p(&image), p(&truth)]);
    let (split, table, _) = bench.predict(&image, "split", &[]);
    let c = fixture_json(&[OsStr::new("compare"), p(&split), p(&truth)]);
    assert_eq!((&c["objects"], &c["truth"]), (&2.into(), &2.into()), "{c}");
    assert!(c["min_iou"].as_f64().unwrap() >= 0.9, "IoU per object: {c}");
    assert_eq!(
        read_text(&table).lines().count() - 1,
        2,
        "one row per object"
    );

    // Without the watershed the two are one object; without a minimum size the speck
    // is one too.
    let (merged, _, _) =
        bench.predict(&image, "merged", &["--split-depth", "0", "--min-size", "1"]);
    let c = fixture_json(&[OsStr::new("compare"), p(&merged), p(&truth)]);
    assert_eq!(c["objects"], 2, "{c}");
    assert!(
        c["min_iou"].as_f64().unwrap() < 0.6,
        "the pair is merged: {c}"
    );
}

// ---------------------------------------------------------------------------------------
// The template around it
// ---------------------------------------------------------------------------------------

/// Five disk images as dataset `plate` of project P (one in a subfolder), and the model.
fn plate(world: &World) -> (PathBuf, PathBuf) {
    let acq = world.path("acq/plate");
    for (i, name) in [
        "a1.ome.tif",
        "a2.ome.tif",
        "a3.ome.tif",
        "a4.ome.tif",
        "sub/b1.tif",
    ]
    .iter()
    .enumerate()
    {
        let image = acq.join(name);
        std::fs::create_dir_all(image.parent().unwrap()).unwrap();
        let truth = world.path(format!("truth/{i}.tif"));
        std::fs::create_dir_all(truth.parent().unwrap()).unwrap();
        let seed = (i + 10).to_string();
        let mut args = vec![OsStr::new("disks"), p(&image), p(&truth)];
        args.extend(["--size", "96", "--seed", &seed].map(OsStr::new));
        if name.ends_with(".ome.tif") {
            args.push(OsStr::new("--ome"));
        }
        fixture(&args);
    }
    let model = world.path("models/unet.onnx");
    std::fs::create_dir_all(model.parent().unwrap()).unwrap();
    fixture(&[OsStr::new("model"), p(&model)]);
    let ingest = world.run([
        OsStr::new("ingest"),
        acq.as_os_str(),
        OsStr::new("--project"),
        OsStr::new("P"),
        OsStr::new("--dataset"),
        OsStr::new("plate"),
    ]);
    ingest.code(0);
    (world.nas().join("P/raw/plate"), model)
}

/// `stage-and-run RAW unet-seg -p ... --json` with the real predictor and `python`.
fn unet_args(raw: &Path, model: &Path, python: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "stage-and-run".into(),
        raw.display().to_string(),
        "unet-seg".into(),
    ];
    args.extend(
        [
            format!("model={}", model.display()),
            format!("python={}", python.display()),
            "cpus=1".into(),
            "mem=1G".into(),
            "time=10m".into(),
        ]
        .into_iter()
        .chain(extra.iter().map(|s| (*s).to_string()))
        .flat_map(|p| ["-p".to_string(), p]),
    );
    args.push("--json".into());
    args
}

fn logs(run_dir: &Path) -> String {
    common::fs::files(&run_dir.join("logs"))
        .iter()
        .map(|f| format!("--- {f}\n{}", read_text(run_dir.join("logs").join(f))))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_pull_reads_every_mask_back_and_refuses_those_that_are_not_what_they_claim() {
    let world = World::new();
    let py = python();
    let (raw, model) = plate(&world);
    let mut args = unet_args(&raw, &model, &py, &["gpus=0", "chunk_size=3"]);
    args.extend([
        "--executor".into(),
        "local".into(),
        "--wait".into(),
        "--no-pull".into(),
    ]);
    let run = world.run(&args);
    run.code(0);
    let chain = common::cluster::Chain::of(&run);
    let dir = &chain.run_dir;
    assert!(
        dir.join("masks/sub/b1.ome.tif").is_file(),
        "the job made every mask\n{}",
        logs(dir)
    );
    assert!(
        dir.join("tools/unet-predict").is_file(),
        "the predictor ships with the run"
    );

    // Four masks made into what a validator must refuse; a5 (sub/b1) stays good.
    let bad = |kind: &str, mask: &str| {
        let path = dir.join(mask);
        let like = dir.join("good.ome.tif");
        std::fs::rename(&path, &like).unwrap();
        fixture(&[
            OsStr::new("bad-mask"),
            OsStr::new(kind),
            p(&path),
            OsStr::new("--like"),
            p(&like),
        ]);
        std::fs::remove_file(like).unwrap();
    };
    bad("truncated", "masks/a1.ome.tif");
    bad("wrong-size", "masks/a2.ome.tif");
    bad("float", "masks/a3.ome.tif");
    let table = dir.join("tables/a4.csv");
    let text = read_text(&table);
    let rows: Vec<&str> = text.lines().collect();
    let kept = rows.len() - 1;
    write(&table, format!("{}\n", rows[..kept].join("\n")));
    let max_label = kept; // labels 1..N, N = the rows before one was removed

    let pulled = world.run(["pull", &chain.run_id, "--json"]);
    pulled.code(4);
    let failed = chain.failed_dir();
    let readme = read_text(failed.join("README.md"));
    for needle in [
        "masks/a1.ome.tif: cannot be decoded as TIFF".to_string(),
        format!("masks/a2.ome.tif: its shape is 48 x 96 (Y x X) but its input image {} is 96 x 96 (Y x X)",
            world.scratch().join("P/plate/a2.ome.tif").display()),
        "masks/a3.ome.tif: its pixels are 32-bit float values; a label mask must be an unsigned integer type".into(),
        format!("masks/a4.ome.tif: its largest label is {max_label} but its table tables/a4.csv has {} rows", max_label - 1),
    ] {
        assert!(readme.contains(&needle), "{needle:?} in\n{readme}");
    }
    assert!(
        !readme.contains("masks/sub/b1.ome.tif"),
        "the good mask is not blamed\n{readme}"
    );
    assert!(readme.contains("4 of them invalid"), "{readme}");
    let validation: Value =
        serde_json::from_str(&read_text(failed.join("validation.json"))).expect("validation.json");
    let invalid: Vec<&str> = validation["checks"][0]["invalid"]
        .as_array()
        .expect("invalid outputs listed")
        .iter()
        .map(|v| v["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        invalid,
        [
            "masks/a1.ome.tif",
            "masks/a2.ome.tif",
            "masks/a3.ome.tif",
            "masks/a4.ome.tif"
        ]
    );
    assert!(
        !chain.results_dir.exists(),
        "nothing reaches the validated results"
    );
}

#[test]
fn a_missing_python_package_stops_the_job_before_any_image_is_read() {
    let world = World::new();
    let py = python();
    // A real environment with every package but scikit-image: a bare venv whose
    // site-packages links to the test environment's, skimage left out.
    let venv = world.path("venv-without-skimage");
    let made = Command::new(&py)
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv)
        .status()
        .unwrap();
    assert!(made.success());
    let site = |python: &Path| -> PathBuf {
        let out = Command::new(python)
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ])
            .output()
            .unwrap();
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    };
    let bare_py = venv.join("bin/python");
    let (from, to) = (site(&py), site(&bare_py));
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("skimage")
            && !name.to_string_lossy().starts_with("scikit_image")
        {
            std::os::unix::fs::symlink(entry.path(), to.join(&name)).unwrap();
        }
    }
    let (raw, model) = plate(&world);
    let mut args = unet_args(&raw, &model, &bare_py, &["gpus=0"]);
    args.extend(["--executor".into(), "local".into(), "--wait".into()]);
    let run = world.run(&args);
    let chain = common::cluster::Chain::of(&run);
    let logs = logs(&chain.run_dir);
    assert!(
        logs.contains(
            "hpcstage: missing Python package for this job: skimage (install scikit-image;"
        ),
        "{logs}"
    );
    assert!(
        !logs.contains("tifffile (install"),
        "only what is missing is named\n{logs}"
    );
    assert!(
        !chain.run_dir.join("masks").exists() && !chain.run_dir.join("qc").exists(),
        "stopped before any image was read"
    );
    let status = world.status(&chain.run_id);
    assert_eq!(status["phase"], "pull-failed", "{status:#}");
    let readme = read_text(chain.failed_dir().join("README.md"));
    assert!(readme.contains("exit code 1"), "{readme}");
}

#[test]
fn stage_and_run_on_the_gpu_partition_brings_back_ome_tiff_masks_made_on_the_cpu() {
    let _cluster = slurm_test!();
    let world = World::new();
    let py = python();
    let (raw, model) = plate(&world);
    let args = unet_args(
        &raw,
        &model,
        &py,
        &["partition=gpu", "gpus=1", "chunk_size=3"],
    );
    let run = world.run(&args);
    run.code(0);
    let chain = common::cluster::Chain::of(&run);
    let status = world.wait_chain(&chain, CHAIN_TIMEOUT);
    assert_eq!(
        status["phase"],
        "pulled",
        "{status:#}\n{}",
        logs(&chain.run_dir)
    );
    let results = &chain.results_dir;

    for (i, mask) in ["a1", "a2", "a3", "a4", "sub/b1"].iter().enumerate() {
        let mask = results.join(format!("masks/{mask}.ome.tif"));
        let m = fixture_json(&[OsStr::new("inspect"), p(&mask)]);
        assert_eq!(m["is_ome"], true, "{}: {m}", mask.display());
        assert_eq!(m["has_ome_xml"], true, "{m}");
        assert_eq!(m["shape"], serde_json::json!([96, 96]), "{m}");
        let truth = world.path(format!("truth/{i}.tif"));
        let table = results.join(format!(
            "tables/{}.csv",
            ["a1", "a2", "a3", "a4", "sub/b1"][i]
        ));
        assert_matches_truth(&mask, &truth, &table);
    }
    let summaries: String = ["qc/summary-0.tsv", "qc/summary-1.tsv"]
        .iter()
        .map(|f| read_text(results.join(f)))
        .collect();
    let rows: Vec<Vec<&str>> = summaries
        .lines()
        .filter(|l| !l.starts_with("image\t"))
        .map(|l| l.split('\t').collect())
        .collect();
    assert_eq!(rows.len(), 5, "{summaries}");
    for row in &rows {
        assert_eq!(row[3], "ok", "{row:?}");
        assert_eq!(
            row[8..],
            ["CPU", "none"],
            "the test GPUs are not real: {row:?}"
        );
    }

    let model_sha = read_text(results.join("qc/model.sha256"));
    let readme = read_text(results.join("README.md"));
    assert!(
        readme.contains(&format!("- sha256: {}", model_sha.trim())),
        "{readme}"
    );
    assert!(
        readme.contains("- model: ONNX, producer hpcstage-unet-tiny-model 1, opset ai.onnx 17; inputs: image [\"N\",1,\"Y\",\"X\"]; outputs: foreground"),
        "{readme}"
    );
    let run_json: Value = serde_json::from_str(&read_text(results.join("run.json"))).unwrap();
    let meta = &run_json["model"]["metadata"];
    assert_eq!(
        meta["producer_name"], "hpcstage-unet-tiny-model",
        "{run_json:#}"
    );
    assert_eq!(meta["inputs"][0]["name"], "image");
    assert_eq!(meta["outputs"][0]["name"], "foreground");
    assert!(
        results.join("tools/unet-predict").is_file(),
        "the code that ran is kept"
    );
}

// ---------------------------------------------------------------------------------------
// The demo
// ---------------------------------------------------------------------------------------

/// Runs `hpcstage demo` (local executor, a small dataset) with the `python3` of the
/// environment `venv` first on PATH; returns its world, the run and the results folder of
/// its segmentation.
fn demo_with(venv: &Path) -> (World, Run, PathBuf) {
    let mut world = World::new();
    world.prepend_path(venv.join("bin"));
    let dir = world.path("demo");
    let run = world.run([
        OsStr::new("demo"),
        OsStr::new("--executor"),
        OsStr::new("local"),
        OsStr::new("--small-files"),
        OsStr::new("20"),
        OsStr::new("--large-mib"),
        OsStr::new("1"),
        OsStr::new("--dir"),
        dir.as_os_str(),
    ]);
    run.code(0);
    let results = dir.join("nas/demo-lab/results/segmentation");
    let run_dir = std::fs::read_dir(&results)
        .unwrap_or_else(|e| panic!("{}: {e}\n{run}", results.display()))
        .map(|e| e.unwrap().path())
        .find(|p| !p.ends_with("_failed"))
        .unwrap_or_else(|| panic!("no results\n{run}"));
    // The demo leaves read-only data behind; its world goes with the test.
    world.sh(&dir, "chmod -R u+w .").code(0);
    (world, run, run_dir)
}

#[test]
fn the_demo_runs_the_real_predictor_when_python_has_its_packages() {
    let venv = python().parent().unwrap().parent().unwrap().to_path_buf();
    let (_world, run, results) = demo_with(&venv);
    run.out_has("the real predictor: unet-predict with onnxruntime and a tiny U-Net")
        .out_has("6/6 pulled validated results");
    let readme = read_text(results.join("README.md"));
    assert!(
        readme.contains("- model: ONNX, producer hpcstage-unet-tiny-model 1"),
        "{readme}"
    );
    let summary = read_text(results.join("qc/summary-0.tsv"));
    let rows: Vec<&str> = summary.lines().skip(1).collect();
    assert_eq!(
        rows.len(),
        12,
        "12 field images; the preview link is not an input\n{summary}"
    );
    for row in rows {
        let cols: Vec<&str> = row.split('\t').collect();
        assert_eq!(
            (cols[3], cols[5], cols[8]),
            ("ok", "3", "CPU"),
            "three disks per field: {row}"
        );
    }
}

#[test]
fn the_demo_says_it_uses_the_stand_in_when_python_lacks_the_packages() {
    let py = python();
    let bare = tempfile::tempdir().unwrap();
    let made = Command::new(&py)
        .args(["-m", "venv", "--without-pip"])
        .arg(bare.path())
        .status()
        .unwrap();
    assert!(made.success());
    let (_world, run, results) = demo_with(bare.path());
    run.out_has("a stand-in predictor")
        .out_has("6/6 pulled validated results")
        .err_has("the stand-in predictor was used because")
        .err_has("cannot import numpy");
    assert!(results
        .join("masks/plate7/well_A01/field_0000.ome.tif")
        .is_file());
    assert!(
        !results.join("masks/preview.ome.tif").exists(),
        "a symbolic link is not an input"
    );
}
