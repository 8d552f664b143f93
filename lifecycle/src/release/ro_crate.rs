//! `ro-crate-metadata.json`: the bag's payload described as an RO-Crate 1.3 that follows
//! the Process Run Crate profile (0.5), and the well-formedness check `release verify`
//! makes of it.
//!
//! The SLURM job is a `CreateAction`: its instrument is the job template (version and
//! hash, with the hpcstage that ran it as a requirement), its object the input dataset
//! (with the digest of its NAS manifest), the model and the images in the bag, its result
//! the outputs in the bag; agent, start and end time, and the resources the job used as
//! `PropertyValue`s from `run.json`. Every file of the payload is a `File` with its size
//! and SHA-256. Nothing here depends on when the release is made: the publication date is
//! the pull's, so a rerun writes the same bytes.
//!
//! RO-Crate 1.3 because its JSON-LD context ships in a registry package (PyPI `rocrate`),
//! which lets validators run offline; `resourceUsage` comes from the Workflow Run terms and
//! is declared inline so the crate needs no second remote context.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::bag::PayloadFile;
use super::meta::Metadata;
use crate::run::RunRecord;

pub const METADATA_FILE: &str = "ro-crate-metadata.json";
pub const CONTEXT: &str = "https://w3id.org/ro/crate/1.3/context";
pub const SPEC: &str = "https://w3id.org/ro/crate/1.3";
pub const PROCESS_RUN_CRATE: &str = "https://w3id.org/ro/wfrun/process/0.5";
const RESOURCE_USAGE: &str = "https://w3id.org/ro/terms/workflow-run#resourceUsage";

/// What a file of the payload is to the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An input image (of the representative subset).
    Input,
    /// Something the job made (masks, tables, QC, alignments).
    Output,
    /// The template and the rendered job script.
    Script,
    /// Descriptions written for the services (file lists, `.zenodo.json`, provenance).
    Description,
}

/// A payload file as the crate describes it (paths relative to `data/`).
#[derive(Debug, Clone)]
pub struct Part {
    pub path: String,
    pub role: Role,
    pub size: u64,
    pub sha256: String,
    pub description: String,
}

impl Part {
    pub fn new(file: &PayloadFile, role: Role, description: String) -> Part {
        Part {
            path: file.rel.trim_start_matches("data/").to_string(),
            role,
            size: file.size,
            sha256: file.sha256.clone(),
            description,
        }
    }
}

/// What the crate is built from.
pub struct CrateInput<'a> {
    pub record: &'a RunRecord,
    /// `run.json` of the results folder.
    pub provenance: &'a Value,
    pub meta: &'a Metadata,
    pub parts: &'a [Part],
    /// The digest of the results folder's MANIFEST.sha256.
    pub results_digest: &'a str,
    /// Where the template files are in the payload, if there.
    pub template_files: &'a [String],
}

/// The crate's JSON, pretty-printed with a final newline.
pub fn build(input: &CrateInput<'_>) -> Vec<u8> {
    let mut graph: Vec<Value> = vec![json!({
        "@id": METADATA_FILE,
        "@type": "CreativeWork",
        "about": {"@id": "./"},
        "conformsTo": {"@id": SPEC},
    })];
    describe_root(input, &mut graph);
    describe_files(input.parts, &mut graph);
    let template_id = describe_software(input, &mut graph);
    describe_job(input, &template_id, &mut graph);
    let doc = json!({
        "@context": [CONTEXT, {"resourceUsage": RESOURCE_USAGE}],
        "@graph": graph,
    });
    let mut bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// The compute job's id, as `run.json` records it.
fn job_id(provenance: &Value) -> &str {
    provenance["compute_job_id"].as_str().unwrap_or("unknown")
}

/// The root dataset (inserted after the descriptor) with its authors, publisher, funding,
/// citations, license and profile.
fn describe_root(input: &CrateInput<'_>, graph: &mut Vec<Value>) {
    let CrateInput {
        record,
        provenance,
        meta,
        parts,
        ..
    } = input;
    let job_id = job_id(provenance);
    let license_id = format!("https://spdx.org/licenses/{}", meta.license());
    let mut authors = Vec::new();
    let mut organizations: BTreeMap<String, Value> = BTreeMap::new();
    for (i, a) in meta.meta.authors.iter().enumerate() {
        let id = a.orcid_id().map_or_else(
            || format!("#author-{}", i + 1),
            |o| format!("https://orcid.org/{o}"),
        );
        let mut person = json!({
            "@id": id,
            "@type": "Person",
            "name": a.full_name(),
            "givenName": a.given,
            "familyName": a.family,
        });
        if let Some(aff) = &a.affiliation {
            let org_id = format!("#organization-{}", slug(aff));
            organizations.insert(
                org_id.clone(),
                json!({"@id": org_id, "@type": "Organization", "name": aff}),
            );
            person["affiliation"] = json!({"@id": org_id});
        }
        authors.push(json!({"@id": id}));
        graph.push(person);
    }
    graph.extend(organizations.into_values());

    let mut root = json!({
        "@id": "./",
        "@type": "Dataset",
        "name": meta.title(),
        "description": meta.description(),
        "datePublished": iso_time(provenance["pulled_at"].as_str().unwrap_or("1970-01-01T00:00:00Z")),
        "license": {"@id": license_id},
        "author": one_or_many(authors),
        "version": meta.version(),
        "identifier": record.id,
        "conformsTo": {"@id": PROCESS_RUN_CRATE},
        "hasPart": one_or_many(parts.iter().map(|p| json!({"@id": p.path})).collect()),
        "mentions": {"@id": format!("#job-{job_id}")},
    });
    if let Some(org) = meta
        .meta
        .authors
        .iter()
        .find_map(|a| a.affiliation.as_deref())
    {
        root["publisher"] = json!({"@id": format!("#organization-{}", slug(org))});
    }
    if !meta.meta.keywords.is_empty() {
        root["keywords"] = json!(meta.meta.keywords.join(", "));
    }
    let grants: Vec<Value> = meta
        .meta
        .funding
        .iter()
        .enumerate()
        .map(|(i, f)| {
            json!({
                "@id": format!("#grant-{}", i + 1),
                "@type": "Grant",
                "name": f.award.clone().or_else(|| f.funder.clone()).unwrap_or_default(),
                "identifier": f.award,
                "funder": {"@id": format!("#funder-{}", i + 1)},
            })
        })
        .collect();
    if !grants.is_empty() {
        root["funding"] = one_or_many(grants.iter().map(|g| json!({"@id": g["@id"]})).collect());
        for (i, f) in meta.meta.funding.iter().enumerate() {
            graph.push(json!({
                "@id": format!("#funder-{}", i + 1),
                "@type": "Organization",
                "name": f.funder.clone().unwrap_or_default(),
            }));
        }
        graph.extend(grants);
    }
    let citations: Vec<Value> = meta
        .meta
        .related
        .iter()
        .filter_map(|r| r.identifier.as_deref())
        .map(|id| json!({"@id": identifier_url(id)}))
        .collect();
    for r in &meta.meta.related {
        if let Some(id) = r.identifier.as_deref() {
            graph.push(json!({
                "@id": identifier_url(id),
                "@type": "CreativeWork",
                "name": r.title.clone().unwrap_or_else(|| id.to_string()),
            }));
        }
    }
    if !citations.is_empty() {
        root["citation"] = one_or_many(citations);
    }
    graph.insert(1, root);
    graph.push(json!({
        "@id": PROCESS_RUN_CRATE,
        "@type": ["CreativeWork", "Profile"],
        "name": "Process Run Crate",
        "version": "0.5",
    }));
    graph.push(json!({
        "@id": license_id,
        "@type": "CreativeWork",
        "name": meta.license(),
        "identifier": meta.license(),
        "description": format!("SPDX license {}", meta.license()),
    }));
}

/// Every payload file, with its size, SHA-256 and media type.
fn describe_files(parts: &[Part], graph: &mut Vec<Value>) {
    for p in parts {
        graph.push(json!({
            "@id": p.path,
            "@type": "File",
            "name": p.path.rsplit('/').next().unwrap_or(&p.path),
            "description": p.description,
            "contentSize": p.size.to_string(),
            "sha256": p.sha256,
            "encodingFormat": media_type(&p.path),
        }));
    }
}

/// The template (the job's instrument) and the hpcstage that ran it; returns the
/// template's id.
fn describe_software(input: &CrateInput<'_>, graph: &mut Vec<Value>) -> String {
    let CrateInput {
        record,
        provenance,
        template_files,
        ..
    } = input;
    let template_id = format!("#template-{}-{}", record.template, record.template_version);
    let hpcstage_version = provenance["hpcstage_version"]
        .as_str()
        .unwrap_or(&record.tool_version)
        .to_string();
    let mut template = json!({
        "@id": template_id,
        "@type": "SoftwareApplication",
        "name": format!("hpcstage job template {}", record.template),
        "version": record.template_version,
        "identifier": format!("sha256:{}", record.template_hash),
        "description": format!(
            "The SLURM job template {} {}; identifier: the SHA-256 of its spec and script, as hpcstage computes it.",
            record.template, record.template_version
        ),
        "url": template_files.first().cloned().unwrap_or_else(|| format!("hpcstage-template:{}", record.template)),
        "softwareRequirements": {"@id": "#hpcstage"},
    });
    if !template_files.is_empty() {
        template["hasPart"] = json!(template_files
            .iter()
            .map(|f| json!({"@id": f}))
            .collect::<Vec<_>>());
    }
    graph.push(template);
    graph.push(json!({
        "@id": "#hpcstage",
        "@type": "SoftwareApplication",
        "name": "hpcstage",
        "version": hpcstage_version,
        "url": "zenodo/README.md",
        "description": "Staged the input to scratch, submitted the job and pulled its validated results back to the NAS with verified copies; made this bag.",
    }));

    template_id
}

/// The compute job as a `CreateAction`: what it used, what it made, who ran it, when, and
/// with which resources.
fn describe_job(input: &CrateInput<'_>, template_id: &str, graph: &mut Vec<Value>) {
    let CrateInput {
        record,
        provenance,
        parts,
        results_digest,
        ..
    } = input;
    let job = &provenance["compute_job"];
    let job_id = job_id(provenance);
    let mut objects = vec![json!({"@id": "#input-dataset"})];
    graph.push(json!({
        "@id": "#input-dataset",
        "@type": "CreativeWork",
        "name": record.input.stage_id,
        "description": format!(
            "The raw dataset on the NAS ({}); identifier: the SHA-256 of its MANIFEST.sha256, which lists every file with its SHA-256.",
            record.input.source
        ),
        "identifier": format!("sha256:{}", record.input.manifest_digest),
    }));
    if let Some(model) = provenance.get("model").filter(|m| !m.is_null()) {
        let sha = model["sha256"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|d| d["sha256"].as_str())
            .unwrap_or_default();
        objects.push(json!({"@id": "#model"}));
        graph.push(json!({
            "@id": "#model",
            "@type": "CreativeWork",
            "name": model["path"].as_str().unwrap_or("model"),
            "description": "The model file the job read, hashed by the job.",
            "sha256": sha,
        }));
    }
    objects.extend(
        parts
            .iter()
            .filter(|p| p.role == Role::Input)
            .map(|p| json!({"@id": p.path})),
    );
    let results: Vec<Value> = parts
        .iter()
        .filter(|p| p.role == Role::Output)
        .map(|p| json!({"@id": p.path}))
        .collect();

    let owner = record.owner.clone();
    graph.push(json!({
        "@id": "#agent",
        "@type": "Person",
        "name": owner,
        "description": format!("The account that submitted run {} on {}.", record.id, record.host),
    }));
    let usage = resource_usage(provenance);
    let usage_ids: Vec<Value> = usage.iter().map(|u| json!({"@id": u["@id"]})).collect();
    graph.extend(usage);

    let mut action = json!({
        "@id": format!("#job-{job_id}"),
        "@type": "CreateAction",
        "name": format!("SLURM job {job_id}: {} over {}", record.template, record.input.stage_id),
        "description": format!(
            "Compute job of run {} ({:?} executor); its results were validated and pulled to the NAS (results manifest sha256:{results_digest}).",
            record.id, record.executor
        ),
        "instrument": {"@id": template_id},
        "object": one_or_many(objects),
        "result": one_or_many(results),
        "agent": {"@id": "#agent"},
        "actionStatus": "http://schema.org/CompletedActionStatus",
        "resourceUsage": one_or_many(usage_ids),
    });
    for (key, field) in [("startTime", "start"), ("endTime", "end")] {
        if let Some(t) = job[field].as_str() {
            action[key] = json!(iso_time(t));
        }
    }
    graph.push(action);
}

/// What the job used, as `PropertyValue`s, from `run.json`.
fn resource_usage(provenance: &Value) -> Vec<Value> {
    let job = &provenance["compute_job"];
    let mut usage = Vec::new();
    let mut property = |name: &str, value: Value, unit: Option<&str>| {
        if value.is_null() {
            return;
        }
        let id = format!("#resource-{name}");
        let mut pv = json!({"@id": id, "@type": "PropertyValue", "name": name, "propertyID": name, "value": value});
        if let Some(u) = unit {
            pv["unitCode"] = json!(u);
        }
        usage.push(pv);
    };
    // What a reader of a run asks first (GPUs, TRES, node, elapsed) is always there, as
    // "unknown" when the scheduler did not say (the local executor has no TRES).
    let known = |v: &Value| {
        if v.is_null() {
            json!("unknown")
        } else {
            v.clone()
        }
    };
    property("gpus", known(&job["gpus"]), None);
    property(
        "gpu_models",
        json!(provenance["gpus"].as_array().map(|g| g
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("; "))),
        None,
    );
    property("alloc_tres", known(&job["alloc_tres"]), None);
    property("nodes", known(&job["nodes"]), None);
    property("partition", job["partition"].clone(), None);
    property("elapsed", known(&job["elapsed_secs"]), Some("s"));
    property("exit_code", job["exit_code"].clone(), None);
    property("state", job["state"].clone(), None);
    property("array_size", provenance["array_size"].clone(), None);
    usage
}

/// One value as itself, several as an array (RO-Crate 1.3 prefers no singleton arrays).
fn one_or_many(mut values: Vec<Value>) -> Value {
    if values.len() == 1 {
        values.remove(0)
    } else {
        Value::Array(values)
    }
}

/// A time as ISO 8601 with whole seconds and a numeric offset
/// (`2026-12-07T11:38:08.6144Z` → `2026-12-07T11:38:08+00:00`), the form the Process Run
/// Crate checks ask for. SLURM reports local times without a zone
/// (`2026-12-07T11:38:08`): they get this machine's offset at that time.
fn iso_time(t: &str) -> String {
    let zoned = t
        .parse::<jiff::Timestamp>()
        .map(|ts| ts.to_zoned(jiff::tz::TimeZone::UTC))
        .or_else(|_| {
            t.parse::<jiff::civil::DateTime>()
                .and_then(|dt| dt.to_zoned(jiff::tz::TimeZone::system()))
        });
    match zoned {
        Ok(z) => z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        Err(_) => t.to_string(),
    }
}

/// A DOI as its resolver URL; a URL as it is.
pub fn identifier_url(id: &str) -> String {
    if id.starts_with("http://") || id.starts_with("https://") {
        id.to_string()
    } else {
        format!("https://doi.org/{}", id.trim_start_matches("doi:"))
    }
}

fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// The IANA media type of a payload file, by its name.
pub fn media_type(path: &str) -> &'static str {
    let lower = path.to_ascii_lowercase();
    let ext = lower.rsplit('.').next().unwrap_or_default();
    match ext {
        "tif" | "tiff" => "image/tiff",
        "csv" => "text/csv",
        "tsv" => "text/tab-separated-values",
        "json" => "application/json",
        "md" => "text/markdown",
        "sbatch" | "sh" => "text/x-shellscript",
        "toml" => "application/toml",
        "cff" | "yaml" | "yml" => "application/yaml",
        "bam" | "cram" | "bai" | "crai" => "application/octet-stream",
        "gz" => "application/gzip",
        _ => "text/plain",
    }
}

/// Checks that `data/ro-crate-metadata.json` is a well-formed RO-Crate 1.2 or 1.3 whose
/// files are in the payload; each problem is added to `problems`.
pub fn check(data: &std::path::Path, payload: &[PayloadFile], problems: &mut Vec<String>) {
    let path = data.join(METADATA_FILE);
    let name = format!("data/{METADATA_FILE}");
    let doc: Value = match std::fs::read(&path) {
        Err(e) => return problems.push(format!("{name}: {e} (the RO-Crate metadata file)")),
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => return problems.push(format!("{name}: not JSON: {e}")),
        },
    };
    let contexts: Vec<&str> = match &doc["@context"] {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let versions = ["1.2", "1.3"];
    if !contexts.iter().any(|c| {
        versions
            .iter()
            .any(|v| *c == format!("https://w3id.org/ro/crate/{v}/context"))
    }) {
        problems.push(format!(
            "{name}: @context names no RO-Crate 1.2 or 1.3 context"
        ));
    }
    let Some(graph) = doc["@graph"].as_array() else {
        return problems.push(format!("{name}: no @graph array"));
    };
    let mut by_id: BTreeMap<&str, &Value> = BTreeMap::new();
    for e in graph {
        match e["@id"].as_str() {
            None => problems.push(format!("{name}: an entity has no @id")),
            Some(id) => {
                if by_id.insert(id, e).is_some() {
                    problems.push(format!("{name}: @id {id:?} appears twice"));
                }
            }
        }
    }
    match by_id.get(METADATA_FILE) {
        None => problems.push(format!("{name}: no metadata descriptor ({METADATA_FILE})")),
        Some(d) => {
            if d["about"]["@id"] != "./" {
                problems.push(format!("{name}: the descriptor is not about \"./\""));
            }
            let conforms = d["conformsTo"]["@id"].as_str().unwrap_or_default();
            if !versions
                .iter()
                .any(|v| conforms == format!("https://w3id.org/ro/crate/{v}"))
            {
                problems.push(format!(
                    "{name}: the descriptor conforms to {conforms:?}, not RO-Crate 1.2 or 1.3"
                ));
            }
        }
    }
    match by_id.get("./") {
        None => problems.push(format!("{name}: no root data entity \"./\"")),
        Some(root) => {
            if !has_type(root, "Dataset") {
                problems.push(format!("{name}: the root entity is not a Dataset"));
            }
            for key in ["name", "description", "datePublished", "license"] {
                if root.get(key).is_none_or(Value::is_null) {
                    problems.push(format!("{name}: the root entity has no {key}"));
                }
            }
        }
    }
    let files: BTreeSet<&str> = payload
        .iter()
        .map(|f| f.rel.trim_start_matches("data/"))
        .collect();
    for (id, e) in &by_id {
        let local = !id.starts_with('#') && !id.contains(':') && *id != "./";
        if local && has_type(e, "File") && !files.contains(id) {
            problems.push(format!("{name}: File {id:?} is not in the payload"));
        }
        // Every reference inside the crate resolves to an entity of the graph.
        if let Some(parts) = e.get("hasPart") {
            for r in parts
                .as_array()
                .into_iter()
                .flatten()
                .chain(parts.get("@id").map(|_| parts))
            {
                if let Some(target) = r["@id"].as_str() {
                    if !by_id.contains_key(target) {
                        problems.push(format!(
                            "{name}: {id:?} has part {target:?}, which the graph does not describe"
                        ));
                    }
                }
            }
        }
    }
}

fn has_type(e: &Value, t: &str) -> bool {
    match &e["@type"] {
        Value::String(s) => s == t,
        Value::Array(a) => a.iter().any(|x| x == t),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_get_whole_seconds_and_an_offset() {
        assert_eq!(
            iso_time("2026-12-07T11:38:08.614484264Z"),
            "2026-12-07T11:38:08+00:00"
        );
        assert_eq!(
            iso_time("2026-12-07T11:38:08+02:00"),
            "2026-12-07T09:38:08+00:00"
        );
        let local = iso_time("2026-12-07T11:38:08");
        assert!(
            local.starts_with("2026-12-07T") && local.len() == 25,
            "{local}"
        );
        assert_eq!(iso_time("unknown"), "unknown");
    }
}
