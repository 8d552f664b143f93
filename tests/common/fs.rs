//! Files and folders: writing and reading with the path in every failure, permissions,
//! tree listings, and the temporary folder each test's world lives in.
#![allow(clippy::print_stderr)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Writes a file, creating its parent folders.
pub(crate) fn write(path: impl AsRef<Path>, bytes: impl AsRef<[u8]>) {
    let path = path.as_ref();
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create parent folders");
    }
    fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Appends `bytes` to a file.
pub(crate) fn append(path: &Path, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append");
    f.write_all(bytes).expect("append");
}

pub(crate) fn read(path: impl AsRef<Path>) -> Vec<u8> {
    let path = path.as_ref();
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

pub(crate) fn read_text(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

pub(crate) fn read_json(path: impl AsRef<Path>) -> Value {
    let path = path.as_ref();
    serde_json::from_str(&read_text(path))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

pub(crate) fn chmod(path: impl AsRef<Path>, mode: u32) {
    let path = path.as_ref();
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

pub(crate) fn mode(path: impl AsRef<Path>) -> u32 {
    fs::symlink_metadata(path.as_ref()).expect("stat").mode() & 0o7777
}

pub(crate) fn symlink(target: &str, link: impl AsRef<Path>) {
    std::os::unix::fs::symlink(target, link.as_ref()).expect("create symlink");
}

/// Gives the owner write permission on everything under `root` (not following links).
pub(crate) fn make_writable(root: &Path) {
    let Ok(m) = fs::symlink_metadata(root) else {
        return;
    };
    if m.file_type().is_symlink() {
        return;
    }
    let _ = fs::set_permissions(
        root,
        fs::Permissions::from_mode((m.mode() & 0o7777) | 0o700),
    );
    if m.is_dir() {
        if let Ok(rd) = fs::read_dir(root) {
            for e in rd.flatten() {
                make_writable(&e.path());
            }
        }
    }
}

/// Relative paths of everything under `root` (files, folders, links), unsorted; folders
/// that cannot be read are skipped.
pub(crate) fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let child = rel.join(e.file_name());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(child.clone());
            }
            out.push(child);
        }
    }
    out
}

/// Relative paths of the regular files under `root` (links not followed), sorted.
pub(crate) fn files(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = walk(root)
        .into_iter()
        .filter(|rel| root.join(rel).symlink_metadata().is_ok_and(|m| m.is_file()))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// FNV-1a of `bytes`: a content digest for fingerprints.
pub(crate) fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One test's temporary folder, with the subfolders a world needs. On drop, write
/// permission is given back below it (raw data and read-only trees would stop the
/// clean-up of a non-root user) and it is removed.
pub(crate) struct TempRoot {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    keep_failed: bool,
}

/// The subfolders every world has: HOME, the XDG folders, the ledger, the NAS and scratch.
pub(crate) const WORLD_DIRS: &[&str] =
    &["home", "xdg-config", "xdg-state", "state", "nas", "scratch"];

impl TempRoot {
    /// A private folder `<tmp>/<prefix>XXXX` holding `subdirs`.
    pub(crate) fn new(prefix: &str, subdirs: &[&str]) -> TempRoot {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("create a temporary folder");
        TempRoot::with(dir, subdirs)
    }

    /// A folder `/tmp/<prefix>XXXX` that every user may pass through (jobs of the test
    /// cluster run on the node and must reach it), holding `subdirs`.
    pub(crate) fn shared(prefix: &str, subdirs: &[&str]) -> TempRoot {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/tmp")
            .expect("create a temporary folder in /tmp");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .expect("chmod temporary folder");
        TempRoot::with(dir, subdirs)
    }

    fn with(dir: tempfile::TempDir, subdirs: &[&str]) -> TempRoot {
        let path = dir.path().canonicalize().expect("canonical temp path");
        for sub in subdirs {
            fs::create_dir_all(path.join(sub)).expect("create world folder");
        }
        TempRoot {
            dir: Some(dir),
            path,
            keep_failed: false,
        }
    }

    /// Keeps the folder (and prints its path) when the test fails, for a look at it.
    pub(crate) fn keep_failed(mut self) -> TempRoot {
        self.keep_failed = true;
        self
    }

    /// Canonical path of the folder.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        make_writable(&self.path);
        if let Some(dir) = self.dir.take() {
            if self.keep_failed && std::thread::panicking() {
                eprintln!("kept the failed test's world: {}", dir.keep().display());
            } else {
                let _ = dir.close();
            }
        }
    }
}

/// A 2 x 2 grayscale uint8 TIFF (uncompressed, one strip) holding `pixels`, then `note`
/// (readers ignore bytes no tag points at): a real image, or label mask, small enough for
/// a bash stand-in to write with printf (see [`tiny_tiff_printf`]). The pull decodes
/// masks and compares them with their input image, so stand-ins write real ones.
pub(crate) fn tiny_tiff(pixels: [u8; 4], note: &[u8]) -> Vec<u8> {
    let mut t = b"II*\0\x08\0\0\0".to_vec();
    // (tag, type: 3 SHORT / 4 LONG, value); the pixels follow the IFD at offset 122.
    let entries: [(u16, u16, u32); 9] = [
        (256, 3, 2),   // ImageWidth
        (257, 3, 2),   // ImageLength
        (258, 3, 8),   // BitsPerSample
        (259, 3, 1),   // Compression: none
        (262, 3, 1),   // PhotometricInterpretation: BlackIsZero
        (273, 4, 122), // StripOffsets
        (277, 3, 1),   // SamplesPerPixel
        (278, 3, 2),   // RowsPerStrip
        (279, 4, 4),   // StripByteCounts
    ];
    t.extend_from_slice(&9u16.to_le_bytes());
    for (tag, kind, value) in entries {
        t.extend_from_slice(&tag.to_le_bytes());
        t.extend_from_slice(&kind.to_le_bytes());
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(&value.to_le_bytes());
    }
    t.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(t.len(), 122);
    t.extend_from_slice(&pixels);
    t.extend_from_slice(note);
    t
}

/// A bash function `tiny_mask` printing a [`tiny_tiff`] label mask with one object
/// (label 1), for stand-in predictors: `{ tiny_mask; echo note; } >"$mask"` and a table
/// with one row.
pub(crate) fn tiny_mask_function() -> String {
    let bytes: String = tiny_tiff([1, 0, 0, 0], b"")
        .iter()
        .map(|b| format!("\\x{b:02x}"))
        .collect();
    format!("tiny_mask() {{ printf '{bytes}'; }}\n")
}
