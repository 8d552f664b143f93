//! `release.toml`: what only the people behind a run know (title, authors, license, the
//! biology), which the deposit services ask for and the run's records do not hold.
//!
//! The file is small and written by hand, so every required field that is missing is
//! named with the file, and `hpcstage release init` writes a commented template that is
//! pre-filled with what the run knows. Nothing here is guessed: a field the user left out
//! stays out of the bundle, and a required one stops the release.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ReleaseError;
use crate::run::RunRecord;

/// The metadata of one release, as read from `release.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseMeta {
    pub title: Option<String>,
    pub description: Option<String>,
    #[serde(default)]
    pub authors: Vec<Author>,
    /// SPDX license id (`CC-BY-4.0`).
    pub license: Option<String>,
    #[serde(default)]
    pub keywords: Vec<String>,
    /// The release's own version (default `1`).
    pub version: Option<String>,
    /// Who made the bag (`Source-Organization` of bag-info.txt); default: the first
    /// author's affiliation.
    pub organization: Option<String>,
    #[serde(default)]
    pub funding: Vec<Funding>,
    /// Related publications and datasets.
    #[serde(default)]
    pub related: Vec<Related>,
    /// REMBI basics, for imaging runs.
    pub rembi: Option<Rembi>,
    /// ENA submission facts, for alignment runs.
    pub ena: Option<Ena>,
}

/// A person, written as the services want it: family and given names apart.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Author {
    pub given: Option<String>,
    pub family: Option<String>,
    /// `0000-0002-1825-0097` (or its `https://orcid.org/` form).
    pub orcid: Option<String>,
    pub affiliation: Option<String>,
}

impl Author {
    /// `Family, Given`, as Zenodo's creators list them.
    pub fn family_given(&self) -> String {
        format!(
            "{}, {}",
            self.family.as_deref().unwrap_or_default(),
            self.given.as_deref().unwrap_or_default()
        )
    }

    /// `Given Family`.
    pub fn full_name(&self) -> String {
        format!(
            "{} {}",
            self.given.as_deref().unwrap_or_default(),
            self.family.as_deref().unwrap_or_default()
        )
    }

    /// The bare ORCID iD (`0000-0002-1825-0097`).
    pub fn orcid_id(&self) -> Option<&str> {
        let o = self.orcid.as_deref()?;
        Some(
            o.strip_prefix("https://orcid.org/")
                .or_else(|| o.strip_prefix("http://orcid.org/"))
                .unwrap_or(o),
        )
    }
}

/// A grant.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Funding {
    pub funder: Option<String>,
    pub award: Option<String>,
}

impl Funding {
    /// `Funder Award`, either part left out when it is not given.
    pub fn label(&self) -> String {
        format!(
            "{} {}",
            self.funder.as_deref().unwrap_or_default(),
            self.award.as_deref().unwrap_or_default()
        )
        .trim()
        .to_string()
    }
}

/// A related publication or dataset.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Related {
    /// A DOI (`10.1234/abcd`) or a URL.
    pub identifier: Option<String>,
    /// DataCite relation, as Zenodo takes it (`isSupplementTo`, `references`, `cites`).
    pub relation: Option<String>,
    pub title: Option<String>,
}

/// The REMBI basics the BioImage Archive asks of every study.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rembi {
    /// Scientific name (`Homo sapiens`).
    pub organism: Option<String>,
    /// NCBI taxon id, when known.
    pub ncbi_taxon: Option<u64>,
    /// What was imaged (`HeLa cells, fixed, DAPI`).
    pub biosample: Option<String>,
    /// How it was prepared.
    pub specimen: Option<String>,
    /// `confocal microscopy`, `widefield fluorescence microscopy` ...
    pub imaging_method: Option<String>,
    /// The microscope (`Zeiss LSM 980`).
    pub instrument: Option<String>,
    /// The study type (`segmentation`, `high content screen`).
    pub study_type: Option<String>,
}

/// What ENA's Webin-CLI read submission manifests need.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ena {
    /// Study accession (`PRJEB12345`) or alias.
    pub study: Option<String>,
    /// `ILLUMINA`, `OXFORD_NANOPORE`, `PACBIO_SMRT` ...
    pub platform: Option<String>,
    /// `Illumina NovaSeq 6000` ...
    pub instrument: Option<String>,
    /// `GENOMIC`, `TRANSCRIPTOMIC` ...
    pub library_source: Option<String>,
    /// `RANDOM`, `PCR`, `cDNA` ...
    pub library_selection: Option<String>,
    /// `WGS`, `RNA-Seq`, `AMPLICON` ...
    pub library_strategy: Option<String>,
    /// Sample name (as the run names it) → sample accession (`ERS...`) or alias; a sample
    /// not listed uses its own name.
    #[serde(default)]
    pub samples: BTreeMap<String, String>,
}

/// What kind of deposit a run makes, from its workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Images and masks: BioImage Archive and Zenodo.
    Imaging,
    /// Reads and alignments: ENA and Zenodo.
    Sequencing,
    /// Anything else: Zenodo only.
    Other,
}

impl Kind {
    /// The kind of a run, from its workflow and template.
    pub fn of(record: &RunRecord) -> Kind {
        match record.workflow.as_str() {
            "segmentation" | "imaging" => Kind::Imaging,
            "alignment" | "sequencing" => Kind::Sequencing,
            _ => Kind::Other,
        }
    }
}

/// A validated `release.toml`: every required field is there.
#[derive(Debug, Clone)]
pub struct Metadata {
    pub meta: ReleaseMeta,
    pub path: PathBuf,
}

impl Metadata {
    pub fn title(&self) -> &str {
        self.meta.title.as_deref().unwrap_or_default()
    }
    pub fn description(&self) -> &str {
        self.meta.description.as_deref().unwrap_or_default()
    }
    pub fn license(&self) -> &str {
        self.meta.license.as_deref().unwrap_or_default()
    }
    pub fn version(&self) -> &str {
        self.meta.version.as_deref().unwrap_or("1")
    }
    /// `Source-Organization`: the one given, else the first author's affiliation.
    pub fn organization(&self) -> String {
        self.meta
            .organization
            .clone()
            .or_else(|| self.meta.authors.iter().find_map(|a| a.affiliation.clone()))
            .unwrap_or_default()
    }
}

/// Reads and checks `release.toml` for a run of `kind`.
pub fn read(path: &Path, kind: Kind) -> Result<Metadata, ReleaseError> {
    let text = std::fs::read_to_string(path).map_err(|e| ReleaseError::Metadata {
        path: path.to_path_buf(),
        reason: if e.kind() == std::io::ErrorKind::NotFound {
            "no such file; `hpcstage release init RUN` writes one to fill in".to_string()
        } else {
            e.to_string()
        },
    })?;
    let meta: ReleaseMeta = toml::from_str(&text).map_err(|e| ReleaseError::Metadata {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    check(&meta, kind).map_err(|(field, hint)| ReleaseError::MissingField {
        path: path.to_path_buf(),
        field,
        hint,
    })?;
    Ok(Metadata {
        meta,
        path: path.to_path_buf(),
    })
}

/// The first required field that is missing or wrong, with what it should hold.
fn check(m: &ReleaseMeta, kind: Kind) -> Result<(), (String, String)> {
    let missing = |field: &str, hint: &str| Err((field.to_string(), hint.to_string()));
    let blank = |v: &Option<String>| v.as_deref().is_none_or(|s| s.trim().is_empty());
    if blank(&m.title) {
        return missing("title", "the deposit's title");
    }
    if blank(&m.description) {
        return missing("description", "a paragraph on what the data are");
    }
    if m.authors.is_empty() {
        return missing(
            "authors",
            "at least one [[authors]] with given, family (and orcid, affiliation)",
        );
    }
    for (i, a) in m.authors.iter().enumerate() {
        if blank(&a.family) {
            return missing(&format!("authors[{i}].family"), "the family name");
        }
        if blank(&a.given) {
            return missing(&format!("authors[{i}].given"), "the given names");
        }
        if let Some(id) = a.orcid_id() {
            if !orcid_ok(id) {
                return missing(
                    &format!("authors[{i}].orcid"),
                    &format!("{id:?} is not an ORCID iD (0000-0002-1825-0097: four groups of four, with its check digit)"),
                );
            }
        }
    }
    match m.license.as_deref() {
        None | Some("") => {
            return missing("license", "an SPDX license id such as CC-BY-4.0 or CC0-1.0")
        }
        Some(l)
            if !l
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.+".contains(c)) =>
        {
            return missing(
                "license",
                &format!("{l:?} is not an SPDX id (CC-BY-4.0, CC0-1.0, MIT ...)"),
            )
        }
        Some(_) => {}
    }
    match kind {
        Kind::Imaging => {
            let r = m.rembi.clone().unwrap_or_default();
            if blank(&r.organism) {
                return missing(
                    "rembi.organism",
                    "the organism's scientific name (Homo sapiens)",
                );
            }
            if blank(&r.imaging_method) {
                return missing(
                    "rembi.imaging_method",
                    "how the images were made (confocal microscopy)",
                );
            }
            if blank(&r.instrument) {
                return missing("rembi.instrument", "the microscope (Zeiss LSM 980)");
            }
        }
        Kind::Sequencing => {
            let e = m.ena.clone().unwrap_or_default();
            for (field, value) in [
                ("ena.study", &e.study),
                ("ena.platform", &e.platform),
                ("ena.instrument", &e.instrument),
                ("ena.library_source", &e.library_source),
                ("ena.library_selection", &e.library_selection),
                ("ena.library_strategy", &e.library_strategy),
            ] {
                if blank(value) {
                    return missing(field, "as ENA's Webin-CLI read manifests name it");
                }
            }
        }
        Kind::Other => {}
    }
    Ok(())
}

/// An ORCID iD with a valid ISO 7064 11,2 check digit.
fn orcid_ok(id: &str) -> bool {
    let digits: Vec<char> = id.chars().filter(|c| *c != '-').collect();
    if id.len() != 19 || digits.len() != 16 {
        return false;
    }
    let mut total = 0u32;
    for c in &digits[..15] {
        let Some(d) = c.to_digit(10) else {
            return false;
        };
        total = (total + d) * 2;
    }
    let check = (12 - total % 11) % 11;
    let expected = if check == 10 {
        'X'
    } else {
        char::from_digit(check, 10).unwrap_or('?')
    };
    digits[15].eq_ignore_ascii_case(&expected)
}

/// A commented `release.toml` for `record`, pre-filled with what the run knows; the
/// authors are left for the user (a release refuses the file until they are there).
pub fn template(record: &RunRecord, kind: Kind, model: Option<&str>) -> String {
    let dataset = &record.input.stage_id;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Metadata of the release of run {id}, for `hpcstage release {id}`.\n\
         # Fill in what is missing (the authors at least), then run the release.\n\
         # Required: title, description, [[authors]] (given, family), license{extra}.\n",
        id = record.id,
        extra = match kind {
            Kind::Imaging => ", [rembi] organism, imaging_method, instrument",
            Kind::Sequencing => ", the [ena] section",
            Kind::Other => "",
        }
    );
    let _ = writeln!(
        t,
        "title = {}",
        toml_str(&format!(
            "{} of {dataset} with {} {}",
            capitalize(&record.workflow),
            record.template,
            record.template_version
        ))
    );
    let mut description = format!(
        "{} results of run {} ({} {}) over the dataset {dataset}",
        capitalize(&record.workflow),
        record.id,
        record.template,
        record.template_version
    );
    if let Some(m) = model {
        let _ = write!(description, ", with the model {m}");
    }
    description.push('.');
    let _ = writeln!(t, "description = {}", toml_str(&description));
    let _ = writeln!(
        t,
        "# SPDX id: CC-BY-4.0 (Zenodo's default for data), CC0-1.0, MIT ...\nlicense = \"CC-BY-4.0\""
    );
    let mut keywords = vec![record.workflow.clone(), record.template.clone()];
    if kind == Kind::Imaging {
        keywords.extend(["microscopy".to_string(), "bioimage".to_string()]);
    }
    let keywords: Vec<String> = keywords.iter().map(|k| toml_str(k)).collect();
    let _ = writeln!(t, "keywords = [{}]", keywords.join(", "));
    let _ = writeln!(
        t,
        "# The release's own version (Zenodo's version field).\nversion = \"1\""
    );
    let _ = writeln!(
        t,
        "# bag-info.txt Source-Organization (default: the first author's affiliation).\n# organization = \"\"\n"
    );
    let _ = writeln!(
        t,
        "# One [[authors]] per person, in order (the run was made by {owner}):\n\
         # [[authors]]\n\
         # given = \"Ada\"\n\
         # family = \"Lovelace\"\n\
         # orcid = \"0000-0002-1825-0097\"\n\
         # affiliation = \"Institut Example, CNRS\"\n",
        owner = record.owner
    );
    let _ = writeln!(
        t,
        "# [[funding]]\n# funder = \"Agence Nationale de la Recherche\"\n# award = \"ANR-22-CE00-0000\"\n\n\
         # Related publications or datasets (a DOI or a URL; relation as DataCite/Zenodo name it).\n\
         # [[related]]\n# identifier = \"10.1234/example\"\n# relation = \"isSupplementTo\"\n# title = \"\"\n"
    );
    match kind {
        Kind::Imaging => {
            let _ = writeln!(
                t,
                "# REMBI basics for the BioImage Archive study.\n[rembi]\n\
                 organism = \"\"          # scientific name: Homo sapiens\n\
                 # ncbi_taxon = 9606\n\
                 # biosample = \"\"       # what was imaged\n\
                 # specimen = \"\"        # how it was prepared\n\
                 imaging_method = \"\"    # confocal microscopy, widefield fluorescence microscopy ...\n\
                 instrument = \"\"        # the microscope\n\
                 study_type = {}",
                toml_str(&record.workflow)
            );
        }
        Kind::Sequencing => {
            let _ = writeln!(
                t,
                "# ENA Webin-CLI read submission (one manifest per sample).\n[ena]\n\
                 study = \"\"             # PRJEB12345\n\
                 platform = \"ILLUMINA\"\n\
                 instrument = \"\"        # Illumina NovaSeq 6000\n\
                 library_source = \"GENOMIC\"\n\
                 library_selection = \"RANDOM\"\n\
                 library_strategy = \"WGS\"\n\
                 # sample name → ENA sample accession (default: the name itself)\n\
                 [ena.samples]\n\
                 # sampleA = \"ERS0000001\""
            );
        }
        Kind::Other => {}
    }
    t
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orcid_check_digits() {
        assert!(orcid_ok("0000-0002-1825-0097"));
        assert!(orcid_ok("0000-0002-1694-233X"));
        assert!(!orcid_ok("0000-0002-1825-0098"));
        assert!(!orcid_ok("0000000218250097"));
    }

    #[test]
    fn missing_authors_are_named() {
        let m: ReleaseMeta =
            toml::from_str("title = \"t\"\ndescription = \"d\"\nlicense = \"CC-BY-4.0\"").unwrap();
        assert_eq!(check(&m, Kind::Other).unwrap_err().0, "authors");
    }

    #[test]
    fn each_kind_of_run_names_what_its_service_needs() {
        let base = "title = \"t\"\ndescription = \"d\"\nlicense = \"CC-BY-4.0\"\n\
                    [[authors]]\ngiven = \"A\"\nfamily = \"B\"\n";
        let m: ReleaseMeta = toml::from_str(base).unwrap();
        assert!(check(&m, Kind::Other).is_ok());
        assert_eq!(check(&m, Kind::Imaging).unwrap_err().0, "rembi.organism");
        assert_eq!(check(&m, Kind::Sequencing).unwrap_err().0, "ena.study");
        let m: ReleaseMeta =
            toml::from_str(&format!("{base}orcid = \"0000-0002-1825-0098\"\n")).unwrap();
        assert_eq!(check(&m, Kind::Other).unwrap_err().0, "authors[0].orcid");
        let m: ReleaseMeta = toml::from_str(&base.replace("CC-BY-4.0", "CC BY")).unwrap();
        assert_eq!(check(&m, Kind::Other).unwrap_err().0, "license");
    }

    #[test]
    fn the_init_template_parses_and_lacks_only_what_people_know() {
        let record: crate::run::RunRecord = serde_json::from_value(serde_json::json!({
            "id": "unet-seg-p-1", "project": "P", "template": "unet-seg",
            "template_version": "1.0.0", "template_hash": "00", "workflow": "segmentation",
            "params": {}, "input": {"stage_id": "P/p", "path": "/s/P/p",
            "manifest_digest": "00", "source": "/n/P/raw/p"}, "run_dir": "/s/P/runs/r",
            "results_dir": "/n/P/results/segmentation/r", "executor": "local",
            "created_at": "2026-12-07T10:00:00Z", "owner": "ada", "host": "h",
            "tool_version": "0.1.0"
        }))
        .unwrap();
        let text = template(&record, Kind::Imaging, Some("/m/unet.onnx"));
        let m: ReleaseMeta = toml::from_str(&text).unwrap();
        assert_eq!(
            m.title.as_deref(),
            Some("Segmentation of P/p with unet-seg 1.0.0")
        );
        assert_eq!(check(&m, Kind::Imaging).unwrap_err().0, "authors");
    }
}
