//! Image inputs: tiny valid PNG / JPEG / GIF / BMP / WebP files made with
//! the `image` crate (and the repository's fixture images), mutated in
//! their header fields (with the PNG CRC kept right, so the decoder sees
//! the new value), in their bytes, and by PNG chunks spliced in (an ICC
//! profile that inflates past the memory budget, EXIF orientations).

use std::io::Cursor;
use std::sync::{Arc, OnceLock};

use image::{DynamicImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

use crate::harness::Case;
use crate::mutate::{apply_bytes, byte_op, interesting_u64, ByteOp, Field};

/// A valid image with the numeric header fields a mutation may target.
#[derive(Debug, Clone)]
pub struct ImageSeed {
    pub name: String,
    pub bytes: Vec<u8>,
    pub fields: Vec<Field>,
}

fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format)
        .unwrap_or_else(|e| panic!("encode {format:?}: {e}"));
    out.into_inner()
}

fn pattern_rgb(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x * 40) as u8, (y * 60) as u8, ((x + y) * 20) as u8])
    })
}

fn pattern_rgba(w: u32, h: u32) -> RgbaImage {
    RgbaImage::from_fn(w, h, |x, y| {
        Rgba([(x * 40) as u8, (y * 60) as u8, 90, (x * y * 30) as u8])
    })
}

fn u32_be(bytes: &[u8], at: usize) -> Option<u32> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// A PNG chunk: length, type, data, CRC over type and data.
pub fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = Vec::with_capacity(data.len() + 12);
    c.extend_from_slice(&(data.len() as u32).to_be_bytes());
    c.extend_from_slice(kind);
    c.extend_from_slice(data);
    c.extend_from_slice(&crc32fast::hash(&c[4..]).to_be_bytes());
    c
}

/// The header fields of a PNG / JPEG / GIF / BMP / WebP file.
fn fields_of(bytes: &[u8]) -> Vec<Field> {
    let f = |name: &str, offset: usize, width: usize, big_endian: bool| Field {
        name: name.to_string(),
        offset,
        width,
        big_endian,
        crc: None,
    };
    let mut out = Vec::new();
    if bytes.starts_with(b"\x89PNG") {
        // Every chunk's length, and IHDR's fields with its CRC recomputed.
        let mut at = 8;
        while let Some(len) = u32_be(bytes, at) {
            let kind =
                String::from_utf8_lossy(&bytes[at + 4..(at + 8).min(bytes.len())]).to_string();
            out.push(f(&format!("{kind} length"), at, 4, true));
            let end = at + 12 + len as usize;
            if kind == "IHDR" && end <= bytes.len() {
                let crc = Some((at + 4..at + 8 + len as usize, at + 8 + len as usize));
                for (name, off, width) in [
                    ("IHDR width", 8, 4),
                    ("IHDR height", 12, 4),
                    ("IHDR bit depth", 16, 1),
                    ("IHDR colour type", 17, 1),
                    ("IHDR compression", 18, 1),
                    ("IHDR filter", 19, 1),
                    ("IHDR interlace", 20, 1),
                ] {
                    out.push(Field {
                        crc: crc.clone(),
                        ..f(name, at + off, width, true)
                    });
                }
            }
            if end > bytes.len() || kind == "IEND" {
                break;
            }
            at = end;
        }
    } else if bytes.starts_with(&[0xff, 0xd8]) {
        let mut at = 2;
        while at + 4 <= bytes.len() && bytes[at] == 0xff {
            let marker = bytes[at + 1];
            let len = u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
            out.push(f(
                &format!("JPEG segment {marker:#04x} length"),
                at + 2,
                2,
                true,
            ));
            if matches!(marker, 0xc0..=0xc3) {
                out.push(f("JPEG precision", at + 4, 1, true));
                out.push(f("JPEG height", at + 5, 2, true));
                out.push(f("JPEG width", at + 7, 2, true));
                out.push(f("JPEG components", at + 9, 1, true));
            }
            if marker == 0xda {
                break;
            }
            at += 2 + len;
        }
    } else if bytes.starts_with(b"GIF8") {
        out.push(f("GIF screen width", 6, 2, false));
        out.push(f("GIF screen height", 8, 2, false));
        out.push(f("GIF flags", 10, 1, false));
        if let Some(p) = bytes.iter().skip(13).position(|&b| b == 0x2c) {
            let p = p + 13;
            out.push(f("GIF frame left", p + 1, 2, false));
            out.push(f("GIF frame width", p + 5, 2, false));
            out.push(f("GIF frame height", p + 7, 2, false));
            out.push(f("GIF frame flags", p + 9, 1, false));
            out.push(f("GIF LZW min code size", p + 10, 1, false));
        }
    } else if bytes.starts_with(b"BM") {
        for (name, off, width) in [
            ("BMP file size", 2, 4),
            ("BMP data offset", 10, 4),
            ("BMP header size", 14, 4),
            ("BMP width", 18, 4),
            ("BMP height", 22, 4),
            ("BMP planes", 26, 2),
            ("BMP bits per pixel", 28, 2),
            ("BMP compression", 30, 4),
            ("BMP image size", 34, 4),
            ("BMP colours used", 46, 4),
        ] {
            out.push(f(name, off, width, false));
        }
    } else if bytes.starts_with(b"RIFF") {
        out.push(f("RIFF size", 4, 4, false));
        out.push(f("WebP chunk size", 16, 4, false));
        out.push(f("VP8L packed size", 21, 4, false));
    }
    out
}

/// An EXIF block (big-endian TIFF) holding one orientation entry.
pub fn exif_orientation(value: u16) -> Vec<u8> {
    let mut e = b"MM\0\x2a\0\0\0\x08".to_vec();
    e.extend_from_slice(&1u16.to_be_bytes());
    e.extend_from_slice(&0x0112u16.to_be_bytes());
    e.extend_from_slice(&3u16.to_be_bytes());
    e.extend_from_slice(&1u32.to_be_bytes());
    e.extend_from_slice(&value.to_be_bytes());
    e.extend_from_slice(&[0, 0]);
    e.extend_from_slice(&0u32.to_be_bytes());
    e
}

/// Inserts a chunk right after IHDR (byte 33 of any PNG).
fn with_chunk(png: &[u8], chunk: &[u8]) -> Vec<u8> {
    let at = 33.min(png.len());
    let mut out = png[..at].to_vec();
    out.extend_from_slice(chunk);
    out.extend_from_slice(&png[at..]);
    out
}

fn repo_file(rel: &str) -> Option<Vec<u8>> {
    std::fs::read(crate::repo_root().join(rel)).ok()
}

/// The valid images every image mutation starts from.
pub fn seeds() -> Arc<Vec<ImageSeed>> {
    static SEEDS: OnceLock<Arc<Vec<ImageSeed>>> = OnceLock::new();
    SEEDS
        .get_or_init(|| {
            let rgb = DynamicImage::ImageRgb8(pattern_rgb(5, 3));
            let rgba = DynamicImage::ImageRgba8(pattern_rgba(4, 4));
            let gray = DynamicImage::ImageLuma8(image::GrayImage::from_fn(3, 3, |x, y| {
                image::Luma([(x * 80 + y) as u8])
            }));
            let gray16 = DynamicImage::ImageLuma16(image::ImageBuffer::from_fn(2, 2, |x, y| {
                image::Luma([(x * 30000 + y * 1000) as u16])
            }));
            let rgb8x8 = DynamicImage::ImageRgb8(pattern_rgb(8, 8));
            let png = encode(rgb.clone(), ImageFormat::Png);
            let mut list = vec![
                ("png rgb 5x3".to_string(), png.clone()),
                (
                    "png rgba 4x4".into(),
                    encode(rgba.clone(), ImageFormat::Png),
                ),
                ("png gray 3x3".into(), encode(gray, ImageFormat::Png)),
                ("png gray16 2x2".into(), encode(gray16, ImageFormat::Png)),
                (
                    "png rgb 5x3 with eXIf orientation 6".into(),
                    with_chunk(&png, &png_chunk(b"eXIf", &exif_orientation(6))),
                ),
                (
                    "jpeg rgb 8x8".into(),
                    encode(rgb8x8.clone(), ImageFormat::Jpeg),
                ),
                ("gif 4x4".into(), encode(rgba.clone(), ImageFormat::Gif)),
                ("bmp rgb 5x3".into(), encode(rgb, ImageFormat::Bmp)),
                (
                    "webp lossless rgba 4x4".into(),
                    encode(rgba, ImageFormat::WebP),
                ),
            ];
            for rel in [
                "fixtures/images/gray.png",
                "fixtures/images/rotated.jpg",
                "fixtures/images/rgba.png",
            ] {
                if let Some(b) = repo_file(rel) {
                    list.push((rel.to_string(), b));
                }
            }
            Arc::new(
                list.into_iter()
                    .map(|(name, bytes)| ImageSeed {
                        fields: fields_of(&bytes),
                        name,
                        bytes,
                    })
                    .collect(),
            )
        })
        .clone()
}

/// Zlib stream of `n` zero bytes, compressed as far as deflate goes
/// (~1000:1), made in pieces so the zeros are never held in memory.
pub fn zlib_zeros(n: usize) -> Vec<u8> {
    use miniz_oxide::deflate::core::{create_comp_flags_from_zip_params, CompressorOxide};
    use miniz_oxide::deflate::stream::deflate;
    use miniz_oxide::MZFlush;
    let mut c = CompressorOxide::new(create_comp_flags_from_zip_params(9, 15, 0));
    let zeros = vec![0u8; 1 << 20];
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut left = n;
    loop {
        let take = left.min(zeros.len());
        let flush = if take == left {
            MZFlush::Finish
        } else {
            MZFlush::None
        };
        let mut input = &zeros[..take];
        loop {
            let r = deflate(&mut c, input, &mut buf, flush);
            out.extend_from_slice(&buf[..r.bytes_written]);
            input = &input[r.bytes_consumed..];
            let done = matches!(r.status, Ok(miniz_oxide::MZStatus::StreamEnd));
            if done || r.status.is_err() || (input.is_empty() && flush == MZFlush::None) {
                break;
            }
        }
        left -= take;
        if flush == MZFlush::Finish {
            break;
        }
    }
    out
}

/// An iCCP chunk whose profile inflates to `n` bytes.
fn icc_bomb(n: usize) -> Vec<u8> {
    static BOMB: OnceLock<Vec<u8>> = OnceLock::new();
    let z = BOMB.get_or_init(|| zlib_zeros(n));
    let mut data = b"bomb\0\0".to_vec();
    data.extend_from_slice(z);
    png_chunk(b"iCCP", &data)
}

/// A chunk spliced into a PNG seed after IHDR.
#[derive(Debug, Clone)]
pub enum PngChunk {
    /// An ICC profile inflating past the image target's memory budget.
    IccBomb,
    Exif(u16),
    /// A second IHDR (with this width).
    SecondIhdr(u32),
    /// A tEXt chunk of this many bytes.
    Text(usize),
    /// An ancillary chunk whose length field says `u32::MAX`.
    LyingLength,
}

fn png_chunk_op() -> impl Strategy<Value = PngChunk> {
    prop_oneof![
        1 => Just(PngChunk::IccBomb),
        3 => prop_oneof![Just(0u16), 1u16..9, Just(9), Just(0xffff)].prop_map(PngChunk::Exif),
        1 => interesting_u64().prop_map(|w| PngChunk::SecondIhdr(w as u32)),
        1 => prop_oneof![Just(0usize), Just(1), Just(80), Just(100_000)].prop_map(PngChunk::Text),
        1 => Just(PngChunk::LyingLength),
    ]
}

/// Bytes of the ICC bomb's inflated profile: above the image target's
/// 256 MiB budget, so a decoder that inflates it whole is caught.
pub const ICC_BOMB_BYTES: usize = 300 << 20;

impl PngChunk {
    fn bytes(&self) -> Vec<u8> {
        match self {
            PngChunk::IccBomb => icc_bomb(ICC_BOMB_BYTES),
            PngChunk::Exif(v) => png_chunk(b"eXIf", &exif_orientation(*v)),
            PngChunk::SecondIhdr(w) => {
                let mut d = w.to_be_bytes().to_vec();
                d.extend_from_slice(&[0, 0, 0, 4, 8, 2, 0, 0, 0]);
                png_chunk(b"IHDR", &d)
            }
            PngChunk::Text(n) => {
                let mut d = b"Comment\0".to_vec();
                d.resize(8 + n, b'a');
                png_chunk(b"tEXt", &d)
            }
            PngChunk::LyingLength => {
                let mut c = png_chunk(b"zTXt", b"k\0\0x");
                c[..4].copy_from_slice(&u32::MAX.to_be_bytes());
                c
            }
        }
    }
}

/// Image mutations: header fields, bytes, and PNG chunks.
pub fn strategy() -> BoxedStrategy<Case> {
    let seeds = seeds();
    let field_ops = vec((any::<Index>(), interesting_u64()), 0..3);
    let byte_ops = prop_oneof![3 => Just(Vec::new()), 2 => vec(byte_op(), 1..5)];
    let chunk = prop_oneof![4 => Just(None), 1 => png_chunk_op().prop_map(Some)];
    (any::<Index>(), field_ops, byte_ops, chunk)
        .prop_map(move |(seed, fields, bytes, chunk)| mutate(&seeds, seed, &fields, &bytes, chunk))
        .boxed()
}

fn mutate(
    seeds: &[ImageSeed],
    seed: Index,
    fields: &[(Index, u64)],
    bytes: &[ByteOp],
    chunk: Option<PngChunk>,
) -> Case {
    let s = &seeds[seed.index(seeds.len())];
    let mut out = s.bytes.clone();
    let mut did = vec![s.name.clone()];
    if !s.fields.is_empty() {
        for (i, v) in fields {
            did.push(s.fields[i.index(s.fields.len())].set(&mut out, *v));
        }
    }
    // After the fields: their offsets are the seed's.
    if let Some(c) = chunk.filter(|_| out.starts_with(b"\x89PNG")) {
        out = with_chunk(&out, &c.bytes());
        did.push(format!("insert chunk {c:?}"));
    }
    if !bytes.is_empty() {
        did.push(apply_bytes(&mut out, bytes));
    }
    Case::new(out, did.join("; "))
}

/// The seeds as cases.
pub fn seed_cases() -> Vec<Case> {
    seeds()
        .iter()
        .map(|s| Case::new(s.bytes.clone(), s.name.clone()))
        .collect()
}
