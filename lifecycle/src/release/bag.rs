//! BagIt (RFC 8493): the bag's tag files, written once the payload under `data/` is
//! complete, and the check of a bag (`hpcstage release verify`).
//!
//! Payload manifests in SHA-256 and SHA-512 (the Library of Congress and most
//! preservation systems expect SHA-512; the lab's own tools speak SHA-256), a SHA-256 tag
//! manifest over the other tag files, `bag-info.txt` with `Payload-Oxum`. Paths in
//! manifests are relative to the bag, `/`-separated, with `%`, CR and LF
//! percent-encoded as section 2.1.3 asks. The check reads every payload file once for
//! both digests and reports every problem it finds, not only the first.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256, Sha512};

use super::ReleaseError;

pub const BAGIT_TXT: &str = "bagit.txt";
pub const BAG_INFO: &str = "bag-info.txt";
pub const PAYLOAD_ALGORITHMS: [&str; 2] = ["sha256", "sha512"];
pub const TAG_MANIFEST: &str = "tagmanifest-sha256.txt";

/// One payload file with its digests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadFile {
    /// Relative to the bag: `data/...`.
    pub rel: String,
    pub sha256: String,
    pub sha512: String,
    pub size: u64,
}

/// What `bag-info.txt` says besides the computed fields.
#[derive(Debug, Clone)]
pub struct BagInfo {
    pub source_organization: String,
    pub external_identifier: String,
    pub external_description: String,
    pub contact_name: Option<String>,
    pub bagging_date: String,
}

/// SHA-256 and SHA-512 of a file, in one read, and its size.
pub fn hash_both(path: &Path) -> std::io::Result<(String, String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut a = Sha256::new();
    let mut b = Sha512::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        a.update(&buf[..n]);
        b.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(a.finalize()), hex::encode(b.finalize()), size))
}

/// Every regular file under `bag/data`, sorted by path, with its digests. Anything that is
/// not a regular file or folder is an error: a bag holds files.
pub fn hash_payload(bag: &Path) -> Result<Vec<PayloadFile>, ReleaseError> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(bag.join("data")).sort_by_file_name() {
        let entry = entry.map_err(|e| ReleaseError::io(bag.join("data"), e.into()))?;
        let kind = entry.file_type();
        if kind.is_dir() {
            continue;
        }
        let path = entry.path();
        if !kind.is_file() {
            return Err(ReleaseError::io(
                path.to_path_buf(),
                std::io::Error::other("not a regular file; a bag's payload holds files only"),
            ));
        }
        let (sha256, sha512, size) =
            hash_both(path).map_err(|e| ReleaseError::io(path.to_path_buf(), e))?;
        out.push(PayloadFile {
            rel: rel_of(bag, path),
            sha256,
            sha512,
            size,
        });
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

fn rel_of(bag: &Path, path: &Path) -> String {
    path.strip_prefix(bag)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

/// A manifest path, percent-encoded (RFC 8493 2.1.3).
fn encode(path: &str) -> String {
    path.replace('%', "%25")
        .replace('\n', "%0A")
        .replace('\r', "%0D")
}

fn decode(path: &str) -> String {
    path.replace("%0A", "\n")
        .replace("%0a", "\n")
        .replace("%0D", "\r")
        .replace("%0d", "\r")
        .replace("%25", "%")
}

/// The tag files of a bag whose payload is `payload`: each as (name, bytes), in the order
/// they are written (the tag manifest last).
pub fn tag_files(payload: &[PayloadFile], info: &BagInfo) -> Vec<(String, Vec<u8>)> {
    let mut files = vec![(
        BAGIT_TXT.to_string(),
        b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n".to_vec(),
    )];
    for alg in PAYLOAD_ALGORITHMS {
        let mut text = String::new();
        for f in payload {
            let digest = if alg == "sha256" {
                &f.sha256
            } else {
                &f.sha512
            };
            text.push_str(&format!("{digest}  {}\n", encode(&f.rel)));
        }
        files.push((format!("manifest-{alg}.txt"), text.into_bytes()));
    }
    let bytes: u64 = payload.iter().map(|f| f.size).sum();
    let mut text = String::new();
    let mut field = |k: &str, v: &str| {
        // Values are one line each (section 2.2.2 allows folding; nobody needs it here).
        text.push_str(&format!("{k}: {}\n", v.replace(['\n', '\r'], " ")));
    };
    field("Source-Organization", &info.source_organization);
    if let Some(c) = &info.contact_name {
        field("Contact-Name", c);
    }
    field("External-Description", &info.external_description);
    field("External-Identifier", &info.external_identifier);
    field("Bagging-Date", &info.bagging_date);
    field(
        "Bag-Software-Agent",
        &format!("hpcstage {}", env!("CARGO_PKG_VERSION")),
    );
    field("Payload-Oxum", &format!("{bytes}.{}", payload.len()));
    files.push((BAG_INFO.to_string(), text.into_bytes()));
    let mut tags = String::new();
    for (name, bytes) in &files {
        tags.push_str(&format!("{}  {name}\n", hex::encode(Sha256::digest(bytes))));
    }
    files.push((TAG_MANIFEST.to_string(), tags.into_bytes()));
    files
}

/// What checking a bag found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BagCheck {
    pub dir: PathBuf,
    /// Payload files and bytes found.
    pub files: u64,
    pub bytes: u64,
    /// The manifests checked (payload and tag).
    pub manifests: Vec<String>,
    /// Every problem, one sentence each; empty when the bag is valid.
    pub problems: Vec<String>,
}

impl BagCheck {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks a bag: its declaration, every payload and tag manifest (each listed file there
/// and matching, each payload file listed in every payload manifest), `Payload-Oxum`, and
/// the RO-Crate's metadata file ([`super::ro_crate::check`]).
pub fn verify(dir: &Path) -> Result<BagCheck, ReleaseError> {
    if !dir.is_dir() {
        return Err(ReleaseError::io(
            dir.to_path_buf(),
            std::io::Error::other("not a folder; give the bag's folder (it holds bagit.txt)"),
        ));
    }
    let mut check = BagCheck {
        dir: dir.to_path_buf(),
        ..BagCheck::default()
    };
    let problems = &mut check.problems;
    match std::fs::read_to_string(dir.join(BAGIT_TXT)) {
        Ok(text) if text.lines().any(|l| l.starts_with("BagIt-Version: ")) => {}
        Ok(_) => problems.push(format!("{BAGIT_TXT} has no BagIt-Version line")),
        Err(e) => problems.push(format!("{BAGIT_TXT}: {e} (not a bag?)")),
    }
    let payload = hash_payload(dir)?;
    check.files = payload.len() as u64;
    check.bytes = payload.iter().map(|f| f.size).sum();
    let on_disk: BTreeMap<&str, &PayloadFile> =
        payload.iter().map(|f| (f.rel.as_str(), f)).collect();

    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| ReleaseError::io(dir.to_path_buf(), e))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    let payload_manifests: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("manifest-") && n.ends_with(".txt"))
        .collect();
    if payload_manifests.is_empty() {
        problems.push("no payload manifest (manifest-<algorithm>.txt)".to_string());
    }
    for name in &payload_manifests {
        let alg = &name["manifest-".len()..name.len() - 4];
        check.manifests.push((*name).clone());
        let Some(lines) = read_manifest(dir, name, problems) else {
            continue;
        };
        let mut listed = BTreeSet::new();
        for (digest, path) in lines {
            if !path.starts_with("data/") {
                problems.push(format!("{name}: {path} is not under data/"));
                continue;
            }
            match on_disk.get(path.as_str()) {
                None => problems.push(format!("{path}: MISSING (listed in {name})")),
                Some(f) => {
                    let actual = match alg {
                        "sha256" => &f.sha256,
                        "sha512" => &f.sha512,
                        _ => {
                            problems.push(format!(
                                "{name}: algorithm {alg} is not supported (sha256, sha512)"
                            ));
                            break;
                        }
                    };
                    if !actual.eq_ignore_ascii_case(&digest) {
                        problems.push(format!("{path}: FAILED {alg} check ({name})"));
                    }
                }
            }
            listed.insert(path);
        }
        for f in &payload {
            if !listed.contains(&f.rel) {
                problems.push(format!("{}: not listed in {name}", f.rel));
            }
        }
    }

    match read_info(dir) {
        Ok(info) => match info.get("Payload-Oxum") {
            None => problems.push(format!("{BAG_INFO} has no Payload-Oxum")),
            Some(oxum) => {
                let actual = format!("{}.{}", check.bytes, check.files);
                if *oxum != actual {
                    problems.push(format!(
                        "Payload-Oxum is {oxum} but the payload holds {actual} (bytes.files)"
                    ));
                }
            }
        },
        Err(e) => problems.push(format!("{BAG_INFO}: {e}")),
    }

    for name in names
        .iter()
        .filter(|n| n.starts_with("tagmanifest-") && n.ends_with(".txt"))
    {
        let alg = &name["tagmanifest-".len()..name.len() - 4];
        check.manifests.push(name.clone());
        let Some(lines) = read_manifest(dir, name, problems) else {
            continue;
        };
        for (digest, path) in lines {
            let file = dir.join(&path);
            match hash_both(&file) {
                Err(e) => problems.push(format!(
                    "{path}: MISSING or unreadable ({e}; listed in {name})"
                )),
                Ok((sha256, sha512, _)) => {
                    let actual = if alg == "sha512" { sha512 } else { sha256 };
                    if !actual.eq_ignore_ascii_case(&digest) {
                        problems.push(format!("{path}: FAILED {alg} check ({name})"));
                    }
                }
            }
        }
    }
    super::ro_crate::check(&dir.join("data"), &payload, problems);
    Ok(check)
}

/// The lines of a manifest as (digest, decoded path); a malformed line is a problem.
fn read_manifest(
    dir: &Path,
    name: &str,
    problems: &mut Vec<String>,
) -> Option<Vec<(String, String)>> {
    let text = match std::fs::read_to_string(dir.join(name)) {
        Ok(t) => t,
        Err(e) => {
            problems.push(format!("{name}: {e}"));
            return None;
        }
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        match line.split_once(char::is_whitespace) {
            Some((digest, path)) if !path.trim_start().is_empty() => {
                out.push((digest.to_string(), decode(path.trim_start())));
            }
            _ => problems.push(format!("{name} line {}: not `<digest> <path>`", i + 1)),
        }
    }
    Some(out)
}

/// `bag-info.txt` as label → value (the last of repeated labels).
fn read_info(dir: &Path) -> std::io::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(dir.join(BAG_INFO))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bag of two files and a minimal crate, valid.
    fn small_bag(dir: &Path) {
        let data = dir.join("data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        std::fs::write(data.join("a.txt"), "a\n").unwrap();
        std::fs::write(data.join("sub/b%1.txt"), "b\n").unwrap();
        let graph = serde_json::json!({
            "@context": "https://w3id.org/ro/crate/1.3/context",
            "@graph": [
                {"@id": "ro-crate-metadata.json", "@type": "CreativeWork", "about": {"@id": "./"},
                 "conformsTo": {"@id": "https://w3id.org/ro/crate/1.3"}},
                {"@id": "./", "@type": "Dataset", "name": "n", "description": "d",
                 "datePublished": "2026-12-07", "license": {"@id": "https://spdx.org/licenses/CC0-1.0"},
                 "hasPart": [{"@id": "a.txt"}]},
                {"@id": "a.txt", "@type": "File"}
            ]
        });
        std::fs::write(data.join("ro-crate-metadata.json"), graph.to_string()).unwrap();
        let info = BagInfo {
            source_organization: "Lab".into(),
            external_identifier: "run-1".into(),
            external_description: "t".into(),
            contact_name: None,
            bagging_date: "2026-12-07".into(),
        };
        for (name, bytes) in tag_files(&hash_payload(dir).unwrap(), &info) {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }

    #[test]
    fn a_complete_bag_verifies_and_each_damage_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        small_bag(dir);
        let check = verify(dir).unwrap();
        assert!(check.ok(), "{:?}", check.problems);
        assert_eq!(check.files, 3);
        assert!(std::fs::read_to_string(dir.join("manifest-sha256.txt"))
            .unwrap()
            .contains("  data/sub/b%251.txt\n"));

        std::fs::write(dir.join("data/extra.txt"), "x").unwrap();
        std::fs::remove_file(dir.join("data/sub/b%1.txt")).unwrap();
        std::fs::write(dir.join("bag-info.txt"), "Payload-Oxum: 1.1\n").unwrap();
        let problems = verify(dir).unwrap().problems;
        for expected in [
            "data/sub/b%1.txt: MISSING (listed in manifest-sha256.txt)",
            "data/extra.txt: not listed in manifest-sha512.txt",
            "bag-info.txt: FAILED sha256 check (tagmanifest-sha256.txt)",
        ] {
            assert!(
                problems.iter().any(|p| p == expected),
                "{expected}\n{problems:#?}"
            );
        }
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("Payload-Oxum is 1.1")),
            "{problems:#?}"
        );
    }

    #[test]
    fn a_crate_that_is_not_ro_crate_1_2_or_1_3_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        small_bag(dir);
        let path = dir.join("data/ro-crate-metadata.json");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("1.3", "1.1");
        let text = text.replace(
            "{\"@id\":\"a.txt\",\"@type\":\"File\"}",
            "{\"@id\":\"gone.txt\",\"@type\":\"File\"}",
        );
        std::fs::write(&path, text).unwrap();
        let mut problems = Vec::new();
        let payload = hash_payload(dir).unwrap();
        super::super::ro_crate::check(&dir.join("data"), &payload, &mut problems);
        let all = problems.join("\n");
        assert!(
            all.contains("@context names no RO-Crate 1.2 or 1.3 context"),
            "{all}"
        );
        assert!(all.contains("not RO-Crate 1.2 or 1.3"), "{all}");
        assert!(
            all.contains("\"./\" has part \"a.txt\", which the graph does not describe"),
            "{all}"
        );
        assert!(
            all.contains("File \"gone.txt\" is not in the payload"),
            "{all}"
        );
    }

    #[test]
    fn manifest_paths_are_percent_encoded_both_ways() {
        let p = "data/a%b\nc\rd";
        assert_eq!(encode(p), "data/a%25b%0Ac%0Dd");
        assert_eq!(decode(&encode(p)), p);
    }
}
