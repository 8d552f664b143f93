//! What each deposit service reads, as text: the BioImage Archive file list and REMBI
//! study, Zenodo's `.zenodo.json` and `CITATION.cff`, ENA's Webin-CLI read manifests; and
//! the choice of the representative images.
//!
//! Everything here is a pure function of the run's records and `release.toml`, so a rerun
//! writes the same bytes: no clock, no randomness, sorted input.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::meta::{Funding, Metadata};
use crate::run::RunRecord;

/// An image of the dataset and the mask the run made of it (paths relative to the raw
/// dataset and the results folder).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pair {
    pub image: String,
    pub mask: String,
}

/// `n` pairs spread evenly over `pairs` sorted by image path (the first, the last and
/// evenly between): deterministic, and spanning the plate rather than its first wells.
pub fn representative(mut pairs: Vec<Pair>, n: usize) -> Vec<Pair> {
    pairs.sort();
    let len = pairs.len();
    if n >= len {
        return pairs;
    }
    if n == 0 {
        return Vec::new();
    }
    if n == 1 {
        return vec![pairs[0].clone()];
    }
    (0..n)
        .map(|i| pairs[i * (len - 1) / (n - 1)].clone())
        .collect()
}

/// The BioImage Archive file list: the first column `Files` (paths relative to the
/// folder uploaded, `bia/`), then annotations; each mask names its image in
/// `source_image`.
pub fn bia_file_list(pairs: &[Pair], images_dir: &str, masks_dir: &str) -> String {
    let mut t = String::from("Files\ttype\tsource_image\tdataset_path\n");
    for p in pairs {
        let image = format!("{images_dir}/{}", p.image);
        let _ = writeln!(t, "{}\timage\t\t{}", tsv(&image), tsv(&p.image));
        let _ = writeln!(
            t,
            "{}\tlabel mask\t{}\t{}",
            tsv(&format!(
                "{masks_dir}/{}",
                p.mask.trim_start_matches("masks/")
            )),
            tsv(&image),
            tsv(&p.image)
        );
    }
    t
}

fn tsv(s: &str) -> String {
    s.replace(['\t', '\n', '\r'], " ")
}

/// The study in REMBI's sections (Study, Author, Biosample, Specimen, Image acquisition,
/// Image analysis), as label–value lines, for the BioImage Archive's submission form.
pub fn rembi_study(meta: &Metadata, record: &RunRecord, images: usize) -> String {
    let m = &meta.meta;
    let r = m.rembi.clone().unwrap_or_default();
    let mut t = String::new();
    let mut section = |name: &str, rows: &[(&str, String)]| {
        if rows.iter().all(|(_, v)| v.is_empty()) {
            return;
        }
        let _ = writeln!(t, "{name}");
        for (k, v) in rows {
            if !v.is_empty() {
                let _ = writeln!(t, "{k}\t{}", tsv(v));
            }
        }
        t.push('\n');
    };
    section(
        "Study",
        &[
            ("Title", meta.title().to_string()),
            ("Description", meta.description().to_string()),
            ("Keywords", m.keywords.join("; ")),
            ("License", meta.license().to_string()),
            ("Study type", r.study_type.clone().unwrap_or_default()),
            (
                "Funding",
                m.funding
                    .iter()
                    .map(Funding::label)
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        ],
    );
    for a in &m.authors {
        section(
            "Author",
            &[
                ("Name", a.full_name()),
                ("ORCID", a.orcid_id().unwrap_or_default().to_string()),
                ("Affiliation", a.affiliation.clone().unwrap_or_default()),
            ],
        );
    }
    let organism = match r.ncbi_taxon {
        Some(tax) => format!(
            "{} (NCBI:txid{tax})",
            r.organism.clone().unwrap_or_default()
        ),
        None => r.organism.clone().unwrap_or_default(),
    };
    section(
        "Biosample",
        &[
            ("Organism", organism),
            ("Description", r.biosample.clone().unwrap_or_default()),
        ],
    );
    section(
        "Specimen",
        &[("Sample preparation", r.specimen.clone().unwrap_or_default())],
    );
    section(
        "Image acquisition",
        &[
            (
                "Imaging method",
                r.imaging_method.clone().unwrap_or_default(),
            ),
            (
                "Imaging instrument",
                r.instrument.clone().unwrap_or_default(),
            ),
        ],
    );
    section(
        "Image analysis",
        &[
            (
                "Method",
                format!(
                    "{} {} (hpcstage run {}; template hash sha256:{})",
                    record.template, record.template_version, record.id, record.template_hash
                ),
            ),
            (
                "Images in this submission",
                format!(
                    "{images} representative images with their label masks (file list: files.tsv)"
                ),
            ),
        ],
    );
    t.truncate(t.trim_end().len());
    t.push('\n');
    t
}

/// `.zenodo.json`: the deposit's metadata as Zenodo's GitHub and API uploads read it.
pub fn zenodo_json(meta: &Metadata) -> Vec<u8> {
    let m = &meta.meta;
    let creators: Vec<Value> = m
        .authors
        .iter()
        .map(|a| {
            let mut c = json!({"name": a.family_given()});
            if let Some(o) = a.orcid_id() {
                c["orcid"] = json!(o);
            }
            if let Some(aff) = &a.affiliation {
                c["affiliation"] = json!(aff);
            }
            c
        })
        .collect();
    let related: Vec<Value> = m
        .related
        .iter()
        .filter_map(|r| {
            let id = r.identifier.as_deref()?;
            Some(json!({
                "identifier": super::ro_crate::identifier_url(id),
                "relation": r.relation.as_deref().unwrap_or("isSupplementTo"),
            }))
        })
        .collect();
    let mut doc = json!({
        "upload_type": "dataset",
        "title": meta.title(),
        "description": meta.description(),
        "creators": creators,
        "access_right": "open",
        "license": meta.license().to_ascii_lowercase(),
        "keywords": m.keywords,
        "version": meta.version(),
        "related_identifiers": related,
    });
    let funding: Vec<String> = m.funding.iter().map(Funding::label).collect();
    if !funding.is_empty() {
        doc["notes"] = json!(format!("Funding: {}", funding.join("; ")));
    }
    let mut bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// A YAML double-quoted scalar (JSON's string syntax is valid YAML).
fn yaml(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// `CITATION.cff` (Citation File Format 1.2.0).
pub fn citation_cff(meta: &Metadata, record: &RunRecord) -> String {
    let m = &meta.meta;
    let mut t = String::new();
    let _ = writeln!(t, "cff-version: 1.2.0");
    let _ = writeln!(
        t,
        "message: \"If you use these data, please cite them as below.\""
    );
    let _ = writeln!(t, "type: dataset");
    let _ = writeln!(t, "title: {}", yaml(meta.title()));
    let _ = writeln!(t, "abstract: {}", yaml(meta.description()));
    let _ = writeln!(t, "version: {}", yaml(meta.version()));
    let _ = writeln!(t, "license: {}", yaml(meta.license()));
    if !m.keywords.is_empty() {
        let _ = writeln!(t, "keywords:");
        for k in &m.keywords {
            let _ = writeln!(t, "  - {}", yaml(k));
        }
    }
    let _ = writeln!(t, "authors:");
    for a in &m.authors {
        let _ = writeln!(
            t,
            "  - family-names: {}",
            yaml(a.family.as_deref().unwrap_or_default())
        );
        let _ = writeln!(
            t,
            "    given-names: {}",
            yaml(a.given.as_deref().unwrap_or_default())
        );
        if let Some(o) = a.orcid_id() {
            let _ = writeln!(t, "    orcid: {}", yaml(&format!("https://orcid.org/{o}")));
        }
        if let Some(aff) = &a.affiliation {
            let _ = writeln!(t, "    affiliation: {}", yaml(aff));
        }
    }
    let _ = writeln!(t, "identifiers:");
    let _ = writeln!(t, "  - type: other");
    let _ = writeln!(t, "    value: {}", yaml(&record.id));
    let _ = writeln!(t, "    description: \"hpcstage run id\"");
    t
}

/// One sample's ENA Webin-CLI read manifest (`webin-cli -context reads -manifest FILE`).
pub fn ena_manifest(
    meta: &Metadata,
    record: &RunRecord,
    sample: &str,
    file_field: &str,
    file: &str,
) -> String {
    let e = meta.meta.ena.clone().unwrap_or_default();
    let accession = e.samples.get(sample).map_or(sample, String::as_str);
    let mut t = String::new();
    for (k, v) in [
        ("STUDY", e.study.as_deref().unwrap_or_default()),
        ("SAMPLE", accession),
        ("NAME", &format!("{}-{sample}", record.id)),
        ("PLATFORM", e.platform.as_deref().unwrap_or_default()),
        ("INSTRUMENT", e.instrument.as_deref().unwrap_or_default()),
        (
            "LIBRARY_SOURCE",
            e.library_source.as_deref().unwrap_or_default(),
        ),
        (
            "LIBRARY_SELECTION",
            e.library_selection.as_deref().unwrap_or_default(),
        ),
        (
            "LIBRARY_STRATEGY",
            e.library_strategy.as_deref().unwrap_or_default(),
        ),
        (file_field, file),
    ] {
        let _ = writeln!(t, "{k}\t{}", tsv(v));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(n: usize) -> Vec<Pair> {
        (0..n)
            .map(|i| Pair {
                image: format!("img{i:02}.tif"),
                mask: format!("masks/img{i:02}.ome.tif"),
            })
            .collect()
    }

    #[test]
    fn the_subset_spans_the_list_and_ignores_its_order() {
        let chosen: Vec<String> = representative(pairs(12), 4)
            .into_iter()
            .map(|p| p.image)
            .collect();
        assert_eq!(chosen, ["img00.tif", "img03.tif", "img07.tif", "img11.tif"]);
        let mut reversed = pairs(12);
        reversed.reverse();
        assert_eq!(representative(reversed, 4), representative(pairs(12), 4));
        assert_eq!(representative(pairs(3), 5).len(), 3);
    }
}
