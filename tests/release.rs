//! `hpcstage release`: the bag of the demo's segmentation run, checked by the validators
//! the deposit services and preservation tools use, offline: `bagit.py --validate`
//! (Library of Congress), `rocrate-validator` (RO-Crate 1.3 and the Process Run Crate
//! profile) and `cffconvert --validate` (CITATION.cff). And the refusals: a run not pulled,
//! a `release.toml` without authors.
//!
//! The validators come from the virtual environment `scripts/test` installs
//! (`target/release-python`: PyPI bagit, roc-validator, rocrate, cffconvert), found through
//! `HPCSTAGE_RELEASE_VENV`. A test that needs them fails, saying how to make it, when it is
//! missing: it never passes without them. rocrate-validator resolves the crate's JSON-LD
//! context through its HTTP cache; `tests/release/seed_rocrate_cache.py` fills a fresh
//! cache from the context the PyPI package `rocrate` ships, so no network is needed.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::cluster::slurm_test;
use common::read_text;
use common::run::Run;
use common::slurm::World;
use serde_json::Value;

/// The validators' virtual environment, checked to hold all of them.
fn venv() -> PathBuf {
    const HOW: &str = "HPCSTAGE_RELEASE_VENV must name a virtual environment with the PyPI packages \
        bagit, roc-validator, rocrate and cffconvert. scripts/test makes one; by hand: \
        python3 -m venv target/release-python && target/release-python/bin/pip install bagit \
        roc-validator rocrate cffconvert && export HPCSTAGE_RELEASE_VENV=$PWD/target/release-python";
    let Some(dir) = std::env::var_os("HPCSTAGE_RELEASE_VENV") else {
        panic!("HPCSTAGE_RELEASE_VENV is not set. {HOW}");
    };
    let dir = PathBuf::from(dir);
    for tool in ["bagit.py", "rocrate-validator", "cffconvert", "python"] {
        assert!(
            dir.join("bin").join(tool).is_file(),
            "{} has no bin/{tool}. {HOW}",
            dir.display()
        );
    }
    dir
}

fn tool(venv: &Path, name: &str, args: &[&OsStr]) -> Run {
    let mut cmd = Command::new(venv.join("bin").join(name));
    cmd.args(args);
    Run::of(cmd)
}

/// The demo (local executor) in a fresh world; returns the world, the demo's folder, its
/// run id and the bag it released.
fn demo() -> (World, PathBuf, String, PathBuf) {
    demo_on("local")
}

/// [`demo`] with the given executor.
fn demo_on(executor: &str) -> (World, PathBuf, String, PathBuf) {
    let world = World::new();
    let dir = world.path("demo");
    let run = world.run([
        OsStr::new("demo"),
        OsStr::new("--executor"),
        OsStr::new(executor),
        OsStr::new("--small-files"),
        OsStr::new("20"),
        OsStr::new("--large-mib"),
        OsStr::new("1"),
        OsStr::new("--dir"),
        dir.as_os_str(),
    ]);
    run.code(0)
        .out_has("released the run as a BagIt bag to deposit → ");
    let release = dir.join("nas/demo-lab/release");
    let bag = std::fs::read_dir(&release)
        .unwrap_or_else(|e| panic!("{}: {e}\n{run}", release.display()))
        .map(|e| e.unwrap().path())
        .find(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .unwrap_or_else(|| panic!("no bag\n{run}"));
    let id = bag.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        run.stdout.contains(&bag.display().to_string()),
        "the demo prints where the bag is\n{run}"
    );
    // The demo leaves read-only data behind; its world goes with the test.
    world.sh(&dir, "chmod -R u+w .").code(0);
    (world, dir, id, bag)
}

/// `hpcstage --state-dir <demo>/state ARGS...` (the demo keeps its own ledger).
fn in_demo<S: AsRef<OsStr>>(world: &World, dir: &Path, args: &[S]) -> Run {
    let state = dir.join("state");
    let mut all: Vec<&OsStr> = vec![OsStr::new("--state-dir"), state.as_os_str()];
    all.extend(args.iter().map(AsRef::as_ref));
    world.run(all)
}

/// `hpcstage release RUN --metadata FILE --to DIR` in the demo's ledger.
fn release_to(world: &World, dir: &Path, id: &str, metadata: &Path, to: &Path) -> Run {
    release_sample(world, dir, id, metadata, to, "5")
}

/// [`release_to`] with `--sample N`.
fn release_sample(world: &World, dir: &Path, id: &str, metadata: &Path, to: &Path, n: &str) -> Run {
    in_demo(
        world,
        dir,
        &[
            OsStr::new("release"),
            OsStr::new(id),
            OsStr::new("--sample"),
            OsStr::new(n),
            OsStr::new("--metadata"),
            metadata.as_os_str(),
            OsStr::new("--to"),
            to.as_os_str(),
        ],
    )
}

/// The rows of the BioImage Archive file list, by column name.
fn file_list(bag: &Path) -> Vec<std::collections::BTreeMap<String, String>> {
    let text = read_text(bag.join("data/bia/files.tsv"));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    assert_eq!(
        header[0], "Files",
        "the first column of a BIA file list is Files\n{text}"
    );
    lines
        .map(|l| {
            header
                .iter()
                .zip(l.split('\t'))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

#[test]
fn the_demo_release_passes_bagit_rocrate_validator_and_cffconvert_offline() {
    let venv = venv();
    let (world, dir, id, bag) = demo();

    tool(
        &venv,
        "bagit.py",
        &[OsStr::new("--validate"), bag.as_os_str()],
    )
    .code(0);
    tool(
        &venv,
        "cffconvert",
        &[
            OsStr::new("--validate"),
            OsStr::new("-i"),
            bag.join("data/zenodo/CITATION.cff").as_os_str(),
        ],
    )
    .code(0);
    let cache = world.path("rocrate-cache/http_cache");
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/release/seed_rocrate_cache.py");
    tool(&venv, "python", &[seed.as_os_str(), cache.as_os_str()]).code(0);
    for profile in [
        &["-p", "ro-crate-1.3"][..],
        &["-p", "process-run-crate", "-nh"][..],
    ] {
        let mut args: Vec<&OsStr> = [
            "validate",
            "--offline",
            "--no-paging",
            "--output-format",
            "json",
        ]
        .iter()
        .map(OsStr::new)
        .collect();
        args.extend([OsStr::new("--cache-path"), cache.as_os_str()]);
        args.extend(profile.iter().map(OsStr::new));
        let data = bag.join("data");
        args.push(data.as_os_str());
        let run = tool(&venv, "rocrate-validator", &args);
        run.code(0);
        let report: Value = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("rocrate-validator JSON: {e}\n{run}"));
        assert_eq!(report["passed"], true, "{profile:?}\n{run}");
    }
    in_demo(&world, &dir, &["release", "verify", bag.to_str().unwrap()])
        .code(0)
        .out_has("valid bag");

    // bag-info.txt names the run.
    let info = read_text(bag.join("bag-info.txt"));
    for field in [
        "Payload-Oxum: ",
        "Bagging-Date: ",
        "Source-Organization: hpcstage demo",
    ] {
        assert!(info.contains(field), "{field}\n{info}");
    }
    assert!(
        info.contains(&format!("External-Identifier: {id}\n")),
        "{info}"
    );
    for tag in [
        "bagit.txt",
        "manifest-sha256.txt",
        "manifest-sha512.txt",
        "tagmanifest-sha256.txt",
    ] {
        assert!(bag.join(tag).is_file(), "{tag}");
    }

    // The crate: RO-Crate 1.3, the job as a CreateAction with what it used and made.
    let results = dir.join("nas/demo-lab/results/segmentation").join(&id);
    let provenance: Value = serde_json::from_str(&read_text(results.join("run.json"))).unwrap();
    let doc: Value =
        serde_json::from_str(&read_text(bag.join("data/ro-crate-metadata.json"))).unwrap();
    let graph = doc["@graph"].as_array().unwrap();
    let entity = |id: &str| {
        graph
            .iter()
            .find(|e| e["@id"] == id)
            .unwrap_or_else(|| panic!("no entity {id}\n{doc:#}"))
    };
    assert_eq!(
        entity("ro-crate-metadata.json")["conformsTo"]["@id"],
        "https://w3id.org/ro/crate/1.3"
    );
    let action = graph
        .iter()
        .find(|e| e["@type"] == "CreateAction")
        .expect("a CreateAction");
    let template = entity(action["instrument"]["@id"].as_str().unwrap());
    assert_eq!(template["version"], provenance["run"]["template_version"]);
    assert_eq!(
        template["identifier"],
        format!(
            "sha256:{}",
            provenance["run"]["template_hash"].as_str().unwrap()
        )
    );
    assert_eq!(
        entity("#hpcstage")["version"],
        provenance["hpcstage_version"]
    );
    let objects: Vec<&str> = action["object"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["@id"].as_str().unwrap())
        .collect();
    assert_eq!(
        entity("#input-dataset")["identifier"],
        format!(
            "sha256:{}",
            provenance["run"]["input"]["manifest_digest"]
                .as_str()
                .unwrap()
        )
    );
    assert!(
        objects.contains(&"#input-dataset") && objects.contains(&"#model"),
        "{objects:?}"
    );
    assert_eq!(
        entity("#model")["sha256"],
        provenance["model"]["sha256"][0]["sha256"],
        "the model with its sha256"
    );
    assert!(
        action["startTime"].is_string() && action["endTime"].is_string(),
        "{action:#}"
    );
    assert!(entity(action["agent"]["@id"].as_str().unwrap())["@type"] == "Person");
    let usage: Vec<&str> = action["resourceUsage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| entity(u["@id"].as_str().unwrap())["name"].as_str().unwrap())
        .collect();
    for name in ["gpus", "alloc_tres", "nodes", "elapsed", "gpu_models"] {
        assert!(usage.contains(&name), "{name} in {usage:?}");
    }
    let results_in_crate: Vec<&str> = action["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["@id"].as_str().unwrap())
        .collect();
    assert!(
        results_in_crate.iter().any(|r| r.starts_with("bia/masks/"))
            && results_in_crate
                .iter()
                .any(|r| r.starts_with("zenodo/tables/")),
        "{results_in_crate:?}"
    );

    // Zenodo's part.
    let zenodo: Value =
        serde_json::from_str(&read_text(bag.join("data/zenodo/.zenodo.json"))).unwrap();
    assert_eq!(zenodo["upload_type"], "dataset");
    assert_eq!(zenodo["creators"][0]["name"], "Lovelace, Ada");
    assert_eq!(zenodo["creators"][0]["orcid"], "0000-0002-1825-0097");
    assert_eq!(zenodo["license"], "cc0-1.0");
    for f in [
        "job.sbatch",
        "template/unet-seg.sbatch.j2",
        "template/unet-seg.toml",
        "qc/summary-0.tsv",
    ] {
        assert!(bag.join("data/zenodo").join(f).is_file(), "zenodo/{f}");
    }

    // Every mask of the BIA file list names an image that is in the bundle, and the
    // image is the dataset's own bytes.
    let rows = file_list(&bag);
    let images: Vec<&str> = rows
        .iter()
        .filter(|r| r["type"] == "image")
        .map(|r| r["Files"].as_str())
        .collect();
    let masks: Vec<_> = rows.iter().filter(|r| r["type"] == "label mask").collect();
    assert_eq!(
        (images.len(), masks.len()),
        (4, 4),
        "the demo releases 4 pairs\n{rows:?}"
    );
    for m in masks {
        let source = m["source_image"].as_str();
        assert!(
            images.contains(&source),
            "{m:?} names {source}, not an image of the list"
        );
        let in_bag = bag.join("data/bia").join(source);
        let raw = dir.join("nas/demo-lab/raw/plate7").join(&m["dataset_path"]);
        assert_eq!(
            std::fs::read(&in_bag).unwrap(),
            std::fs::read(&raw).unwrap(),
            "{}",
            in_bag.display()
        );
        assert!(bag.join("data/bia").join(&m["Files"]).is_file(), "{m:?}");
    }
}

#[test]
fn a_rerun_gives_the_same_payload_and_a_flipped_byte_fails_verify_and_bagit() {
    let venv = venv();
    let (world, dir, id, bag) = demo();
    let metadata = dir.join("release.toml");

    // Two more releases of the same run, elsewhere: the same payload, byte for byte, and
    // the same representative subset.
    let again: Vec<PathBuf> = ["again-1", "again-2"]
        .iter()
        .map(|n| world.path(n))
        .collect();
    // An empty folder takes the bag.
    std::fs::create_dir(&again[0]).unwrap();
    for to in &again {
        release_sample(&world, &dir, &id, &metadata, to, "4").code(0);
    }
    for manifest in ["manifest-sha256.txt", "manifest-sha512.txt"] {
        let first = read_text(bag.join(manifest));
        for to in &again {
            assert_eq!(
                read_text(to.join(manifest)),
                first,
                "{manifest} of {}",
                to.display()
            );
        }
    }
    assert_eq!(file_list(&again[0]), file_list(&bag));
    // A smaller sample is chosen the same way: spread over the plate, first and last.
    let small = world.path("small");
    release_sample(&world, &dir, &id, &metadata, &small, "2").code(0);
    let images: Vec<String> = file_list(&small)
        .into_iter()
        .filter(|r| r["type"] == "image")
        .map(|r| r["dataset_path"].clone())
        .collect();
    assert_eq!(
        images,
        [
            "plate7/well_A01/field_0000.tif",
            "plate7/well_D03/field_0011.tif"
        ],
        "the first and the last of the 12 images"
    );

    // A release already in place is left as it is.
    in_demo(
        &world,
        &dir,
        &[
            OsStr::new("release"),
            OsStr::new(&id),
            OsStr::new("--metadata"),
            metadata.as_os_str(),
        ],
    )
    .code(0)
    .out_has("was released before");

    // One flipped byte in a mask.
    let copy = &again[1];
    let mask = std::fs::read_dir(copy.join("data/bia/masks/plate7"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    let mask = std::fs::read_dir(&mask)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&mask).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&mask, bytes).unwrap();
    let rel = mask.strip_prefix(copy).unwrap().display().to_string();
    in_demo(&world, &dir, &["release", "verify", copy.to_str().unwrap()])
        .code(3)
        .out_has(&format!("{rel}: FAILED sha256 check"));
    tool(
        &venv,
        "bagit.py",
        &[OsStr::new("--validate"), copy.as_os_str()],
    )
    .code(1);
}

#[test]
fn a_run_not_pulled_failed_or_damaged_and_a_release_toml_without_authors_are_refused() {
    let (world, dir, id, _bag) = demo();

    // `release init` writes the template; without authors, a release names the field.
    let toml = dir.join("mine.toml");
    in_demo(
        &world,
        &dir,
        &[
            OsStr::new("release"),
            OsStr::new("init"),
            OsStr::new(&id),
            OsStr::new("-o"),
            toml.as_os_str(),
        ],
    )
    .code(0);
    let text = read_text(&toml);
    assert!(
        text.contains("title = \"Segmentation of demo-lab/plate7 with unet-seg 1.0.0\""),
        "{text}"
    );
    let to = world.path("bag");
    let run = release_to(&world, &dir, &id, &toml, &to);
    run.code(1)
        .err_has("required field `authors` is missing")
        .err_has("[ROOT]/demo/mine.toml");
    assert!(!to.exists(), "nothing is made");

    // A results file on the NAS that no longer matches its manifest: nothing is released.
    let results = dir.join("nas/demo-lab/results/segmentation").join(&id);
    let table = results.join("tables/plate7/well_B02/field_0005.csv");
    let mut bytes = std::fs::read(&table).unwrap();
    bytes[0] ^= 0x20;
    std::fs::write(&table, &bytes).unwrap();
    release_to(&world, &dir, &id, &dir.join("release.toml"), &to)
        .code(3)
        .err_has("[ROOT]/demo/nas/demo-lab/results/segmentation/")
        .err_has("tables/plate7/well_B02/field_0005.csv")
        .err_has("nothing was released");
    assert!(!to.exists(), "nothing is made");
    assert!(
        !world.path(".bag.partial").exists(),
        "no half-made bag is left"
    );
    bytes[0] ^= 0x20;
    std::fs::write(&table, &bytes).unwrap();

    // A second run of the same template over the same dataset, compute job only.
    let provenance: Value = serde_json::from_str(&read_text(
        dir.join("nas/demo-lab/results/segmentation")
            .join(&id)
            .join("run.json"),
    ))
    .unwrap();
    let params = provenance["run"]["params"].as_object().unwrap();
    let mut args: Vec<String> = vec![
        "--nas-root".into(),
        dir.join("nas").display().to_string(),
        "--scratch-root".into(),
        dir.join("scratch").display().to_string(),
        "submit".into(),
        "unet-seg".into(),
        "--input".into(),
        "demo-lab/plate7".into(),
        "--executor".into(),
        "local".into(),
        "--no-pull".into(),
        "--wait".into(),
        "--json".into(),
    ];
    for (k, v) in params {
        args.push("-p".into());
        args.push(format!("{k}={}", v.as_str().unwrap()));
    }
    let submitted = in_demo(&world, &dir, &args);
    submitted.code(0);
    let unpulled = submitted.json()["run_id"].as_str().unwrap().to_string();
    release_to(&world, &dir, &unpulled, &dir.join("release.toml"), &to)
        .code(1)
        .err_has(&format!(
        "run {unpulled} cannot be released: its results were never pulled and verified on the NAS"
    ))
        .err_has(&format!("hpcstage pull {unpulled}"));
    assert!(!to.exists(), "nothing is made");

    // A run whose job failed: its pull-back job puts the logs in _failed/, and the release
    // refuses it.
    let mut failing: Vec<String> = args
        .iter()
        .filter(|a| a.as_str() != "--no-pull")
        .cloned()
        .collect();
    failing.extend(["-p".into(), "predict_cmd=false".into()]);
    let submitted = in_demo(&world, &dir, &failing);
    submitted.code(0);
    let failed = submitted.json()["run_id"].as_str().unwrap().to_string();
    release_to(&world, &dir, &failed, &dir.join("release.toml"), &to)
        .code(1)
        .err_has(&format!(
            "run {failed} cannot be released: its results were not accepted"
        ));
    assert!(!to.exists(), "nothing is made");
}

/// A reference of `len` bases and `n` reads of 100 bases taken from it, as FASTA and
/// FASTQ (a fixed linear congruential sequence: the same on every run).
fn reference_and_reads(len: usize, n: usize, seed: u64) -> (String, String) {
    let mut state = seed;
    let mut next = || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize
    };
    let reference: Vec<u8> = (0..len).map(|_| b"ACGT"[next() % 4]).collect();
    let mut fasta = String::from(">chrT\n");
    for line in reference.chunks(60) {
        fasta.push_str(std::str::from_utf8(line).unwrap());
        fasta.push('\n');
    }
    let mut fastq = String::new();
    for i in 0..n {
        let p = next() % (len - 100);
        let read = std::str::from_utf8(&reference[p..p + 100]).unwrap();
        fastq.push_str(&format!("@read{i}\n{read}\n+\n{}\n", "I".repeat(100)));
    }
    (fasta, fastq)
}

#[test]
fn an_alignment_run_gets_an_ena_manifest_per_sample_with_the_reads_md5() {
    let venv = venv();
    for tool in ["minimap2", "samtools", "md5sum"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .unwrap()
                .status
                .success(),
            "{tool} is not installed (apt-get install -y minimap2 samtools coreutils)"
        );
    }
    let world = World::new();
    let (fasta, s1) = reference_and_reads(3000, 40, 7);
    let (_, s2) = reference_and_reads(3000, 60, 7);
    let reference = world.path("ref/chrT.fa");
    common::write(&reference, &fasta);
    let raw = world.dataset("reads", &[("s1_R1.fastq", s1), ("s2_R1.fastq", s2)]);
    let run = world.run([
        OsStr::new("stage-and-run"),
        raw.as_os_str(),
        OsStr::new("align"),
        OsStr::new("-p"),
        OsStr::new(&format!("reference={}", reference.display())),
        OsStr::new("-p"),
        OsStr::new("threads=1"),
        OsStr::new("--executor"),
        OsStr::new("local"),
        OsStr::new("--wait"),
        OsStr::new("--json"),
    ]);
    run.code(0);
    let id = run.json()["run_id"].as_str().unwrap().to_string();

    let toml = world.path("release.toml");
    world
        .run([
            OsStr::new("release"),
            OsStr::new("init"),
            OsStr::new(&id),
            OsStr::new("-o"),
            toml.as_os_str(),
        ])
        .code(0);
    let template = read_text(&toml);
    // The [ena] section must be filled in: the release names the first field missing.
    world
        .run([
            OsStr::new("release"),
            OsStr::new(&id),
            OsStr::new("-m"),
            toml.as_os_str(),
        ])
        .code(1)
        .err_has("required field `authors` is missing");
    let filled = template
        .replace(
            "# [[authors]]\n# given = \"Ada\"\n# family = \"Lovelace\"",
            "[[authors]]\ngiven = \"Ada\"\nfamily = \"Lovelace\"",
        )
        .replace("study = \"\"", "study = \"PRJEB00001\"")
        .replace(
            "instrument = \"\"",
            "instrument = \"Illumina NovaSeq 6000\"",
        )
        .replace("# sampleA = \"ERS0000001\"", "s1 = \"ERS0000001\"");
    common::write(&toml, &filled);
    let released = world.run([
        OsStr::new("release"),
        OsStr::new(&id),
        OsStr::new("-m"),
        toml.as_os_str(),
        OsStr::new("--json"),
    ]);
    released.code(0);
    let bag = PathBuf::from(released.json()["dir"].as_str().unwrap());
    assert_eq!(
        bag,
        world.nas().join("P/release").join(&id),
        "the default place"
    );
    assert_eq!(
        released.json()["ena_samples"],
        serde_json::json!(["s1", "s2"])
    );

    let ena = bag.join("data/ena");
    assert_eq!(
        read_text(ena.join("s1.manifest.txt")),
        format!(
            "STUDY\tPRJEB00001\nSAMPLE\tERS0000001\nNAME\t{id}-s1\nPLATFORM\tILLUMINA\nINSTRUMENT\tIllumina NovaSeq 6000\n\
             LIBRARY_SOURCE\tGENOMIC\nLIBRARY_SELECTION\tRANDOM\nLIBRARY_STRATEGY\tWGS\nBAM\tbam/s1.bam\n"
        )
    );
    assert!(
        read_text(ena.join("s2.manifest.txt")).contains("SAMPLE\ts2\n"),
        "a sample not listed keeps its name"
    );
    // The reads' checksums, as ENA checks them, by GNU md5sum; the BAMs are the pulled ones.
    world
        .sh(&ena, "md5sum -c MD5SUMS")
        .code(0)
        .out_has("bam/s1.bam: OK");
    for s in ["s1", "s2"] {
        assert_eq!(
            std::fs::read(ena.join(format!("bam/{s}.bam"))).unwrap(),
            std::fs::read(
                world
                    .nas()
                    .join("P/results/alignment")
                    .join(&id)
                    .join(format!("bam/{s}.bam"))
            )
            .unwrap()
        );
    }
    assert!(bag.join("data/zenodo/qc/s1.flagstat.txt").is_file());
    assert!(
        !bag.join("data/bia").exists(),
        "no BioImage Archive part for reads"
    );
    tool(
        &venv,
        "bagit.py",
        &[OsStr::new("--validate"), bag.as_os_str()],
    )
    .code(0);
    world
        .run([OsStr::new("release"), OsStr::new("verify"), bag.as_os_str()])
        .code(0);
}

#[test]
fn the_crate_of_a_job_on_the_cluster_holds_what_slurm_accounted() {
    let _cluster = slurm_test!();
    let (_world, dir, id, bag) = demo_on("slurm");
    let provenance: Value = serde_json::from_str(&read_text(
        dir.join("nas/demo-lab/results/segmentation")
            .join(&id)
            .join("run.json"),
    ))
    .unwrap();
    let job = &provenance["compute_job"];
    assert_eq!(job["state"], "COMPLETED", "{provenance:#}");
    let doc: Value =
        serde_json::from_str(&read_text(bag.join("data/ro-crate-metadata.json"))).unwrap();
    let graph = doc["@graph"].as_array().unwrap();
    let value = |name: &str| {
        graph
            .iter()
            .find(|e| e["@id"] == format!("#resource-{name}"))
            .unwrap_or_else(|| panic!("no {name}\n{doc:#}"))["value"]
            .clone()
    };
    let tres = value("alloc_tres");
    assert!(
        tres.as_str().is_some_and(|t| t.contains("cpu=1")),
        "the TRES sacct gave: {tres}"
    );
    assert_eq!(tres, job["alloc_tres"]);
    assert_eq!(value("nodes"), job["nodes"]);
    assert_eq!(value("partition"), job["partition"]);
    assert_eq!(value("elapsed"), job["elapsed_secs"]);
    let action = graph.iter().find(|e| e["@type"] == "CreateAction").unwrap();
    assert_eq!(
        action["@id"],
        format!("#job-{}", provenance["compute_job_id"].as_str().unwrap())
    );
    // SLURM's times are local, without a zone: the crate gives them an offset.
    let start = action["startTime"].as_str().unwrap();
    assert_eq!(start.len(), 25, "{start}");
    assert!(
        start.starts_with(&job["start"].as_str().unwrap()[..19]),
        "{start} {job:#}"
    );
}
