//! Label masks, read back: the checks behind `kind = "label-mask"` on an expected output.
//!
//! The pull-back job runs on the transfer partition, where Python (and the libraries that
//! wrote the masks) may be missing, so the masks are decoded here, with the `tiff` crate:
//! every page, strip by strip (a mask of any size is read in bounded memory). A mask passes
//! when it decodes as TIFF, holds one unsigned-integer sample per pixel, has its input
//! image's Y/X (and Z) shape, and its largest label equals the number of rows of its table.
//! Each failure is one sentence naming what is wrong; the caller names the file.
//!
//! The input image is read for its shape only (its header, never its pixels). Its Z is what
//! the predictor sees as Z: `SizeZ` of its OME-XML, `slices` of an ImageJ description, the
//! Z (or page-stack) axes of a tifffile-shaped description, else the number of its pages.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

use regex::Regex;
use tiff::decoder::{ChunkType, Decoder, DecodingResult, Limits};
use tiff::tags::Tag;
use tiff::ColorType;

/// Planes, rows and columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) z: u64,
    pub(crate) y: u32,
    pub(crate) x: u32,
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.z > 1 {
            write!(f, "{} x {} x {} (Z x Y x X)", self.z, self.y, self.x)
        } else {
            write!(f, "{} x {} (Y x X)", self.y, self.x)
        }
    }
}

/// What reading a whole mask found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MaskFacts {
    pub(crate) shape: Shape,
    pub(crate) max_label: u64,
}

/// Checks one mask against its input image and (when given) its table.
pub(crate) fn check_label_mask(
    mask: &Path,
    image: &Path,
    table: Option<&Path>,
) -> Result<MaskFacts, String> {
    let facts = read_mask(mask)?;
    let expected = image_shape(image).map_err(|e| format!("its input image {e}"))?;
    if facts.shape != expected {
        return Err(format!(
            "its shape is {} but its input image {} is {expected}",
            facts.shape,
            image.display()
        ));
    }
    if let Some(table) = table {
        let rows = count_rows(table)?;
        if rows != facts.max_label {
            return Err(format!(
                "its largest label is {} but its table {} has {rows} row{}: a label mask numbers its objects 1..N, one table row each",
                facts.max_label,
                table.display(),
                if rows == 1 { "" } else { "s" }
            ));
        }
    }
    Ok(facts)
}

fn open(path: &Path) -> Result<Decoder<BufReader<File>>, String> {
    let file = File::open(path).map_err(|e| format!("cannot be opened: {e}"))?;
    let mut limits = Limits::default();
    // OME-XML of a large acquisition can exceed the default 1 MiB tag value.
    limits.ifd_value_size = 256 << 20;
    Decoder::new(BufReader::new(file))
        .map(|d| d.with_limits(limits))
        .map_err(|e| format!("cannot be decoded as TIFF: {e}"))
}

/// Decodes every page of a mask: its shape and its largest label.
pub(crate) fn read_mask(path: &Path) -> Result<MaskFacts, String> {
    let undecodable = |e: tiff::TiffError| format!("cannot be decoded as TIFF: {e}");
    let mut d = open(path)?;
    let (x, y) = d.dimensions().map_err(undecodable)?;
    let mut z = 0u64;
    let mut max_label = 0u64;
    loop {
        // Every tag's value is read, so that a file cut short anywhere (tifffile writes
        // the OME-XML after the pixels) fails here, not only one cut in its pixels.
        for tag in d.tag_iter() {
            tag.map_err(undecodable)?;
        }
        if !is_reduced(&mut d) {
            z += 1;
            let dims = d.dimensions().map_err(undecodable)?;
            if dims != (x, y) {
                return Err(format!(
                    "its page {z} is {} x {} but its first page is {y} x {x}: a label mask's planes all have one size",
                    dims.1, dims.0
                ));
            }
            match d.colortype().map_err(undecodable)? {
                ColorType::Gray(_) => {}
                other => {
                    return Err(format!(
                        "its pixels are {other:?}; a label mask has one sample per pixel"
                    ))
                }
            }
            max_label = max_label.max(page_max(&mut d)?);
        }
        if !d.more_images() {
            break;
        }
        d.next_image().map_err(undecodable)?;
    }
    Ok(MaskFacts {
        shape: Shape { z, y, x },
        max_label,
    })
}

/// The largest value of the current page, chunk by chunk; refused for a pixel type that
/// is not an unsigned integer.
fn page_max<R: Read + Seek>(d: &mut Decoder<R>) -> Result<u64, String> {
    let undecodable = |e: tiff::TiffError| format!("cannot be decoded as TIFF: {e}");
    let chunks = match d.get_chunk_type() {
        ChunkType::Strip => d.strip_count().map_err(undecodable)?,
        ChunkType::Tile => d.tile_count().map_err(undecodable)?,
    };
    let mut max = 0u64;
    for i in 0..chunks {
        let m = match d.read_chunk(i).map_err(undecodable)? {
            DecodingResult::U8(v) => v.into_iter().max().map(u64::from),
            DecodingResult::U16(v) => v.into_iter().max().map(u64::from),
            DecodingResult::U32(v) => v.into_iter().max().map(u64::from),
            DecodingResult::U64(v) => v.into_iter().max(),
            other => {
                return Err(format!(
                    "its pixels are {} values; a label mask must be an unsigned integer type (uint8, uint16, uint32)",
                    kind(&other)
                ))
            }
        };
        max = max.max(m.unwrap_or(0));
    }
    Ok(max)
}

fn kind(values: &DecodingResult) -> &'static str {
    match values {
        DecodingResult::F16(_) => "16-bit float",
        DecodingResult::F32(_) => "32-bit float",
        DecodingResult::F64(_) => "64-bit float",
        DecodingResult::I8(_) => "8-bit signed integer",
        DecodingResult::I16(_) => "16-bit signed integer",
        DecodingResult::I32(_) => "32-bit signed integer",
        DecodingResult::I64(_) => "64-bit signed integer",
        _ => "unsigned integer",
    }
}

/// A reduced-resolution page (NewSubfileType bit 0: a pyramid level or thumbnail) is not a
/// plane of the image.
fn is_reduced<R: Read + Seek>(d: &mut Decoder<R>) -> bool {
    d.find_tag_unsigned::<u32>(Tag::NewSubfileType)
        .ok()
        .flatten()
        .is_some_and(|t| t & 1 == 1)
}

/// The Y/X (and Z) shape of an input image, from its header and description.
pub(crate) fn image_shape(path: &Path) -> Result<Shape, String> {
    let undecodable =
        |e: tiff::TiffError| format!("{} cannot be decoded as TIFF: {e}", path.display());
    let mut d = open(path).map_err(|e| format!("{} {e}", path.display()))?;
    let (x, y) = d.dimensions().map_err(undecodable)?;
    let description = d.get_tag_ascii_string(Tag::ImageDescription).ok();
    if let Some(z) = description.as_deref().and_then(described_z) {
        return Ok(Shape { z, y, x });
    }
    let mut z = 0;
    loop {
        if !is_reduced(&mut d) && d.dimensions().map_err(undecodable)? == (x, y) {
            z += 1;
        }
        if !d.more_images() {
            break;
        }
        d.next_image().map_err(undecodable)?;
    }
    Ok(Shape { z, y, x })
}

/// Z as the image's own description gives it: OME-XML, ImageJ or tifffile's shape.
fn described_z(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.contains("<OME") || text.contains(":OME") {
        let pixels = Regex::new(r"<(?:\w+:)?Pixels\b([^>]*)>").ok()?;
        let attrs = pixels.captures(text)?.get(1)?.as_str();
        let size_z = Regex::new(r#"\bSizeZ\s*=\s*"(\d+)""#).ok()?;
        return size_z.captures(attrs)?.get(1)?.as_str().parse().ok();
    }
    if text.starts_with("ImageJ=") {
        let field = |k: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('=')?.trim().parse().ok())
        };
        let images = field("images").unwrap_or(1);
        let per_plane = field("channels").unwrap_or(1) * field("frames").unwrap_or(1);
        return Some(field("slices").unwrap_or(images / per_plane.max(1)).max(1));
    }
    if text.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        let shape: Vec<u64> = v
            .get("shape")?
            .as_array()?
            .iter()
            .map(serde_json::Value::as_u64)
            .collect::<Option<_>>()?;
        let axes = v.get("axes").and_then(serde_json::Value::as_str);
        return Some(match axes {
            Some(axes) if axes.len() == shape.len() => axes
                .chars()
                .zip(&shape)
                .filter(|(a, _)| matches!(a.to_ascii_uppercase(), 'Z' | 'I' | 'Q'))
                .map(|(_, n)| *n)
                .product(),
            // Without axes, tifffile calls every leading dimension a page axis (Q).
            _ => shape.iter().rev().skip(2).product(),
        });
    }
    None
}

/// Data rows of a CSV table (its header excluded).
pub(crate) fn count_rows(path: &Path) -> Result<u64, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .map_err(|e| format!("its table {} cannot be read: {e}", path.display()))?;
    let mut rows = 0;
    for record in reader.records() {
        record.map_err(|e| format!("its table {} is not valid CSV: {e}", path.display()))?;
        rows += 1;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn z_comes_from_the_image_description() {
        let ome = r#"<?xml version="1.0"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0"><Pixels DimensionOrder="XYCZT" ID="Pixels:0" SizeC="2" SizeT="1" SizeX="128" SizeY="96" SizeZ="6" Type="uint16"></Pixels></Image></OME>"#;
        assert_eq!(described_z(ome), Some(6));
        assert_eq!(
            described_z("ImageJ=1.11a\nimages=12\nchannels=2\nslices=6\nhyperstack=true\n"),
            Some(6)
        );
        assert_eq!(described_z("ImageJ=1.11a\nimages=5\n"), Some(5));
        assert_eq!(
            described_z(r#"{"shape": [6, 2, 64, 64], "axes": "ZCYX"}"#),
            Some(6)
        );
        assert_eq!(described_z(r#"{"shape": [3, 64, 64]}"#), Some(3));
        assert_eq!(described_z("a microscope's own words"), None);
    }

    #[test]
    fn a_mask_is_read_to_its_largest_label_and_a_signed_one_is_refused() {
        use tiff::encoder::{colortype, TiffEncoder};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.tif");
        let mut file = File::create(&path).unwrap();
        let mut enc = TiffEncoder::new(&mut file).unwrap();
        for plane in 0..3u16 {
            let pixels: Vec<u16> = (0..12)
                .map(|i| if i == 5 { 300 + plane } else { 0 })
                .collect();
            enc.write_image::<colortype::Gray16>(4, 3, &pixels).unwrap();
        }
        drop(file);
        let facts = read_mask(&path).unwrap();
        assert_eq!(facts.shape, Shape { z: 3, y: 3, x: 4 });
        assert_eq!(facts.max_label, 302);

        let signed = dir.path().join("s.tif");
        let mut file = File::create(&signed).unwrap();
        TiffEncoder::new(&mut file)
            .unwrap()
            .write_image::<colortype::GrayI16>(4, 3, &[-1i16; 12])
            .unwrap();
        drop(file);
        let err = read_mask(&signed).unwrap_err();
        assert!(err.contains("16-bit signed integer values"), "{err}");
    }
}
