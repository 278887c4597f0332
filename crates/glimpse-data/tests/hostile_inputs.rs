//! Hostile files and configs: each is refused with one line naming the file
//! and what is wrong, quickly, and without reading, inflating or allocating
//! what the input asks for. FIFOs and devices are Unix things; those tests
//! are Unix-only.

mod common;
use common::chunk;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use glimpse_data::datasets::{load_caption_jsonl, load_easy_vqa_split, load_llava_json};
use glimpse_data::{
    decode_rgb, load_rgb, preprocess, read_bounded, ChatTemplate, ImageLimits, ProcessorConfig,
    SpecialTokens, TextTokenizer, MAX_CONFIG_BYTES, MAX_DATASET_BYTES, MAX_RENDER_BYTES,
    RENDER_FUEL,
};
use image::{DynamicImage, ImageBuffer, ImageFormat, RgbImage, RgbaImage};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn err_of<T>(r: glimpse_data::Result<T>) -> String {
    match r {
        Ok(_) => panic!("accepted"),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "{msg:?}");
            msg
        }
    }
}

/// Runs `f` on a thread and gives its result, or fails the test when it
/// takes longer than `secs` (a read that blocks would otherwise hang the
/// suite; the blocked thread dies with the test process).
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .with_context(|| format!("did not return within {secs} s (blocked?)"))
}

#[cfg(unix)]
fn mkfifo(path: &Path) -> Result<()> {
    let status = std::process::Command::new("mkfifo").arg(path).status()?;
    anyhow::ensure!(status.success(), "mkfifo {} failed", path.display());
    Ok(())
}

/// A file of `len` bytes that takes no disk: `set_len` leaves a hole.
fn sparse(path: &Path, len: u64) -> Result<()> {
    std::fs::File::create(path)?.set_len(len)?;
    Ok(())
}

// ---------------------------------------------------------------- images

#[cfg(unix)]
#[test]
fn fifo_as_image_is_refused_without_blocking() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let fifo = dir.path().join("cat.png");
    mkfifo(&fifo)?;
    let p = fifo.clone();
    let err = within(5, move || err_of(load_rgb(&p, &ImageLimits::default())))?;
    assert_eq!(
        err,
        format!("image {}: not a regular file (a FIFO)", fifo.display())
    );
    Ok(())
}

#[cfg(unix)]
#[test]
fn dev_zero_as_image_is_refused() -> Result<()> {
    let err = within(5, || {
        err_of(load_rgb(Path::new("/dev/zero"), &ImageLimits::default()))
    })?;
    assert_eq!(
        err,
        "image /dev/zero: not a regular file (a character device)"
    );
    Ok(())
}

#[test]
fn two_gib_image_is_refused_by_its_size() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let big = dir.path().join("big.png");
    sparse(&big, 2 << 30)?;
    let start = Instant::now();
    let err = err_of(load_rgb(&big, &ImageLimits::default()));
    assert_eq!(
        err,
        format!(
            "image {}: 2147483648 bytes; image files over 256 MiB are refused",
            big.display()
        )
    );
    // refused from the metadata, not after reading 2 GiB of zeros
    assert!(start.elapsed() < Duration::from_secs(2));
    Ok(())
}

fn zlib_zeros(len: usize) -> Result<Vec<u8>> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&vec![0u8; len])?;
    Ok(z.finish()?)
}

/// Deflate's bit order: fields LSB first, Huffman codes MSB first.
#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    acc: u32,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u32, bits: u32) {
        for i in 0..bits {
            self.acc |= ((value >> i) & 1) << self.n;
            self.n += 1;
            if self.n == 8 {
                self.out.push(self.acc as u8);
                (self.acc, self.n) = (0, 0);
            }
        }
    }

    fn code(&mut self, code: u32, bits: u32) {
        for i in (0..bits).rev() {
            self.put((code >> i) & 1, 1);
        }
    }
}

/// A zlib stream of `1 + 258 * repeats` zero bytes at 2 bits per 258:
/// about 1 MB for a gigabyte (compressing a gigabyte would take seconds).
/// One dynamic-Huffman block whose codes are literal 0 `10`, end of block
/// `11`, length 258 `0` and distance 1 `0`: a literal zero, then copies of
/// it, each copy all zero bits.
fn zlib_zero_bomb(repeats: usize) -> Vec<u8> {
    let mut b = Bits::default();
    b.put(1, 1); // final block
    b.put(2, 2); // dynamic Huffman
    b.put(286 - 257, 5); // HLIT: literal/length codes 0..=285
    b.put(0, 5); // HDIST: one distance code
    b.put(18 - 4, 4); // HCLEN: code-length code lengths given for 18 symbols
                      // in deflate's order 16 17 18 0 8 7 9 6 10 5 11 4 12 3 13 2 14 1:
                      // symbol 1 gets 1 bit, symbols 2 and 18 get 2
    for len in [0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1] {
        b.put(len, 3);
    }
    // canonical code-length codes: 1 -> 0, 2 -> 10, 18 -> 11
    let (one, two, zeros) = ((0, 1), (0b10, 2), (0b11, 2));
    b.code(two.0, two.1); // literal 0: length 2
    b.code(zeros.0, zeros.1);
    b.put(138 - 11, 7); // literals 1..=138: unused
    b.code(zeros.0, zeros.1);
    b.put(117 - 11, 7); // 139..=255
    b.code(two.0, two.1); // 256, end of block: length 2
    b.code(zeros.0, zeros.1);
    b.put(28 - 11, 7); // 257..=284
    b.code(one.0, one.1); // 285, length 258: length 1
    b.code(one.0, one.1); // distance code 0 (distance 1): length 1
                          // data: literal 0 (10), then (258 @ 1) as 0 + 0, then end of block (11)
    b.code(0b10, 2);
    for _ in 0..repeats {
        b.code(0, 2);
    }
    b.code(0b11, 2);
    b.put(0, 7); // flush to a byte
    let total = 1 + 258 * repeats as u64;
    // Adler-32 of zeros: a stays 1, b gains 1 per byte
    let adler = ((total % 65_521) << 16 | 1) as u32;
    let mut z = vec![0x78, 0x01];
    z.extend_from_slice(&b.out);
    z.extend_from_slice(&adler.to_be_bytes());
    z
}

#[test]
fn zero_bomb_stream_is_valid_zlib() -> Result<()> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::ZlibDecoder::new(&zlib_zero_bomb(1000)[..]),
        &mut out,
    )?;
    assert_eq!(out.len(), 1 + 258 * 1000);
    assert!(out.iter().all(|&b| b == 0));
    Ok(())
}

/// A 1x1 RGB PNG with an `iCCP` chunk holding `icc` zlib-compressed.
fn png_with_icc(icc_zlib: &[u8]) -> Result<Vec<u8>> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&1u32.to_be_bytes());
    ihdr.extend_from_slice(&1u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    chunk(&mut png, b"IHDR", &ihdr);
    let mut iccp = b"bomb\0\0".to_vec(); // name, NUL, method 0 (zlib)
    iccp.extend_from_slice(icc_zlib);
    chunk(&mut png, b"iCCP", &iccp);
    // one row: filter byte 0, then the pixel (10, 20, 30)
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&[0, 10, 20, 30])?;
    chunk(&mut png, b"IDAT", &z.finish()?);
    chunk(&mut png, b"IEND", &[]);
    Ok(png)
}

#[test]
fn icc_profile_bomb_is_refused_not_inflated() -> Result<()> {
    // 1 GiB of profile in about 1 MB of file
    let bomb = png_with_icc(&zlib_zero_bomb((1 << 30) / 258))?;
    assert!(bomb.len() < 1_100_000, "{} bytes", bomb.len());
    let start = Instant::now();
    let err = err_of(decode_rgb(&bomb, "bomb.png", &ImageLimits::default()));
    assert_eq!(
        err,
        "image bomb.png: iCCP chunk: ICC profile inflates past 1 MiB (decompression bomb?)"
    );
    // inflating 1 MiB takes milliseconds; the whole gigabyte would take seconds
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );

    // an ordinary profile (a few KiB) decodes as before
    let fine = png_with_icc(&zlib_zeros(3 << 10)?)?;
    let img = decode_rgb(&fine, "fine.png", &ImageLimits::default())?;
    assert_eq!(img.get_pixel(0, 0).0, [10, 20, 30]);
    Ok(())
}

#[test]
fn large_ordinary_images_still_decode() -> Result<()> {
    // the two decode budgets (metadata, then pixels) leave room for big
    // photos: 4000x3000 RGBA PNG and a wide 16-bit PNG row
    for (img, name) in [
        (
            DynamicImage::ImageRgba8(RgbaImage::new(4000, 3000)),
            "photo.png",
        ),
        (
            DynamicImage::ImageRgba16(ImageBuffer::new(65_535, 2)),
            "wide16.png",
        ),
    ] {
        let mut bytes = std::io::Cursor::new(Vec::new());
        img.write_to(&mut bytes, ImageFormat::Png)?;
        let rgb = decode_rgb(bytes.get_ref(), name, &ImageLimits::default())?;
        assert_eq!(rgb.dimensions(), (img.width(), img.height()), "{name}");
    }
    Ok(())
}

/// A PNG header claiming `w` x `h` 8-bit RGB, with a token of pixel data.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut png, b"IEND", &[]);
    png
}

#[test]
fn huge_dimensions_in_a_header_are_refused() {
    let limits = ImageLimits::default();
    assert_eq!(
        err_of(decode_rgb(&png_header(100_000, 100_000), "huge.png", &limits)),
        "image huge.png: 100000x100000 = 10000000000 pixels exceeds the limit of 89478485 (decompression bomb?)"
    );
    // within the pixel limit, past the side limit
    assert_eq!(
        err_of(decode_rgb(&png_header(70_000, 10), "strip.png", &limits)),
        "image strip.png: 70000x10: a side over 65535 pixels is refused"
    );
    // rows this wide are past what the decoder may allocate for the header
    // (its row buffer comes out of the metadata budget): refused there
    let err = err_of(decode_rgb(
        &png_header(u32::MAX, u32::MAX),
        "max.png",
        &limits,
    ));
    assert!(
        err.starts_with("image max.png: cannot read header"),
        "{err}"
    );
}

// ------------------------------------------------------ processor configs

fn config_err(json: &str) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("preprocessor_config.json");
    std::fs::write(&path, json)?;
    let err = err_of(ProcessorConfig::from_file(&path));
    Ok(err.replace(&path.display().to_string(), "P"))
}

#[test]
fn out_of_range_processor_sizes_name_file_and_field() -> Result<()> {
    // would allocate a 100000² crop canvas (30 GB) per image
    assert_eq!(
        config_err(r#"{"size": 224, "crop_size": 100000, "do_center_crop": true}"#)?,
        "image processor config P: crop_size height 100000 width 100000 is out of range: each side must be 1..=8192"
    );
    assert_eq!(
        config_err(r#"{"size": {"shortest_edge": 65536}}"#)?,
        "image processor config P: size shortest_edge 65536 is out of range 1..=8192"
    );
    assert_eq!(
        config_err(r#"{"size": {"height": 384, "width": 18446744073709551615}}"#)?,
        "image processor config P: size height 384 width 18446744073709551615 is out of range: each side must be 1..=8192"
    );
    assert_eq!(
        config_err(r#"{"size": 224, "crop_size": {"height": 0, "width": 224}}"#)?,
        "image processor config P: crop_size height 0 width 224 is out of range: each side must be 1..=8192"
    );
    // a negative size is not a size at all
    let err = config_err(r#"{"size": {"shortest_edge": -224}}"#)?;
    assert!(
        err.starts_with("image processor config P: field size: expected"),
        "{err}"
    );
    // even when unused (no resize), a bad size is a bad file
    assert!(config_err(r#"{"do_resize": false, "size": 100000}"#)?.contains("out of range"));
    Ok(())
}

#[test]
fn non_finite_or_non_positive_statistics_are_refused() -> Result<()> {
    let std_msg = |v: &str| {
        format!("image processor config P: image_std {v} must be finite numbers > 0 (normalising divides by them)")
    };
    assert_eq!(
        config_err(r#"{"size": 32, "image_std": [0.5, -0.5, 0.5]}"#)?,
        std_msg("[0.5, -0.5, 0.5]")
    );
    // 1e39 is a finite f64 but not a finite f32: it would divide to 0
    assert_eq!(
        config_err(r#"{"size": 32, "image_std": 1e39}"#)?,
        std_msg("[inf, inf, inf]")
    );
    assert_eq!(
        config_err(r#"{"size": 32, "image_mean": [0.5, 1e39, 0.5]}"#)?,
        "image processor config P: image_mean [0.5, inf, 0.5] must be finite numbers"
    );
    // JSON has no NaN: spelled as a string it is a type error on the field
    let err = config_err(r#"{"size": 32, "image_std": "NaN"}"#)?;
    assert!(
        err.starts_with("image processor config P: field image_std: expected 3 numbers"),
        "{err}"
    );
    assert_eq!(
        config_err(r#"{"size": 32, "rescale_factor": -0.5}"#)?,
        "image processor config P: rescale_factor -0.5 must be a finite number > 0"
    );
    let err = config_err(r#"{"size": 32, "rescale_factor": 1e999}"#)?;
    assert!(
        err.starts_with("image processor config P: invalid JSON"),
        "{err}"
    );
    Ok(())
}

#[test]
fn oversized_resize_names_the_image_and_the_processor() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("preprocessor_config.json");
    // within the per-side bound, but an ordinary 16:9 photo resizes past
    // the canvas limit: the processor's size is at fault, and named
    std::fs::write(&path, r#"{"size": {"shortest_edge": 8192}}"#)?;
    let cfg = ProcessorConfig::from_file(&path)?;
    let err = err_of(preprocess(&RgbImage::new(1600, 900), "photo.jpg", &cfg));
    assert_eq!(
        err,
        format!(
            "image photo.jpg: 1600x900 would resize to 14563x8192 (size shortest_edge 8192 of {}): over the 16777216 pixels preprocessing allocates (aspect ratio too extreme for this processor)",
            path.display()
        )
    );
    Ok(())
}

#[cfg(unix)]
#[test]
fn config_files_that_are_not_regular_files_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("preprocessor_config.json");
    mkfifo(&cfg)?;
    let p = cfg.clone();
    let err = within(5, move || err_of(ProcessorConfig::from_file(&p)))?;
    assert_eq!(
        err,
        format!(
            "image processor config {}: not a regular file (a FIFO)",
            cfg.display()
        )
    );

    let tok = dir.path().join("tokenizer.json");
    mkfifo(&tok)?;
    let p = tok.clone();
    let err = within(5, move || err_of(TextTokenizer::from_file(&p)))?;
    assert_eq!(
        err,
        format!("tokenizer {}: not a regular file (a FIFO)", tok.display())
    );

    // a FIFO where the chat template would be is reported, not skipped
    let jinja = dir.path().join("chat_template.jinja");
    mkfifo(&jinja)?;
    let d = dir.path().to_path_buf();
    let err = within(5, move || err_of(ChatTemplate::from_model_dir(&d)))?;
    assert_eq!(
        err,
        format!(
            "chat template {}: not a regular file (a FIFO)",
            jinja.display()
        )
    );
    Ok(())
}

#[test]
fn oversized_config_files_are_refused_by_size() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tc = dir.path().join("tokenizer_config.json");
    sparse(&tc, MAX_CONFIG_BYTES + 1)?;
    let err = err_of(ChatTemplate::from_model_dir(dir.path()));
    assert_eq!(
        err,
        format!(
            "chat template {}: 67108865 bytes; config files over 64 MiB are refused",
            tc.display()
        )
    );
    let pc = dir.path().join("preprocessor_config.json");
    sparse(&pc, 16 << 30)?;
    assert_eq!(
        err_of(ProcessorConfig::from_file(&pc)),
        format!(
            "image processor config {}: 17179869184 bytes; config files over 64 MiB are refused",
            pc.display()
        )
    );
    Ok(())
}

// --------------------------------------------------------------- datasets

#[test]
fn oversized_dataset_files_are_refused_by_size() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("llava.json");
    sparse(&json, MAX_DATASET_BYTES + 1)?;
    let start = Instant::now();
    assert_eq!(
        err_of(load_llava_json(&json)),
        format!(
            "dataset {}: 2147483649 bytes; dataset files over 2048 MiB are refused",
            json.display()
        )
    );
    let jsonl = dir.path().join("captions.jsonl");
    sparse(&jsonl, 5 << 30)?;
    assert_eq!(
        err_of(load_caption_jsonl(&jsonl)),
        format!(
            "dataset {}: 5368709120 bytes; dataset files over 2048 MiB are refused",
            jsonl.display()
        )
    );
    let split = dir.path().join("train");
    std::fs::create_dir(&split)?;
    let questions = split.join("questions.json");
    sparse(&questions, 3 << 30)?;
    assert_eq!(
        err_of(load_easy_vqa_split(&split)),
        format!(
            "dataset {}: 3221225472 bytes; dataset files over 2048 MiB are refused",
            questions.display()
        )
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    Ok(())
}

#[cfg(unix)]
#[test]
fn non_regular_dataset_files_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let fifo = dir.path().join("llava.json");
    mkfifo(&fifo)?;
    let p = fifo.clone();
    let err = within(5, move || err_of(load_llava_json(&p)))?;
    assert_eq!(
        err,
        format!("dataset {}: not a regular file (a FIFO)", fifo.display())
    );
    let err = within(5, || err_of(load_caption_jsonl(Path::new("/dev/zero"))))?;
    assert_eq!(
        err,
        "dataset /dev/zero: not a regular file (a character device)"
    );
    assert_eq!(
        err_of(load_llava_json(dir.path())),
        format!("dataset {}: is a directory", dir.path().display())
    );
    Ok(())
}

#[test]
fn read_bounded_stops_at_the_cap() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let f = dir.path().join("f");
    std::fs::write(&f, b"12345")?;
    assert_eq!(read_bounded(&f, 5, "test")?, b"12345");
    assert_eq!(
        read_bounded(&f, 4, "test").unwrap_err().to_string(),
        "5 bytes; test files over 4 bytes are refused"
    );
    Ok(())
}

// ---------------------------------------------------------- chat templates

fn template(src: &str) -> Result<ChatTemplate> {
    Ok(ChatTemplate::new(src, SpecialTokens::default())?)
}

#[test]
fn nested_loops_run_out_of_fuel_quickly() -> Result<()> {
    // each range is within minijinja's 100000-item cap; together 10^10 steps
    let t = template(
        "{% for a in range(100000) %}{% for b in range(100000) %}{{ '' }}{% endfor %}{% endfor %}",
    )?;
    let start = Instant::now();
    let err = err_of(t.render(&[], false));
    let took = start.elapsed();
    eprintln!("nested loops refused after {took:?}");
    assert_eq!(
        err,
        format!(
            "chat template chat_template: rendering takes more than {RENDER_FUEL} operations (a loop without bound?)"
        )
    );
    // within a second in a release build; the bound leaves room for a busy CI
    assert!(took < Duration::from_secs(3), "{took:?}");

    // a single range past minijinja's own cap was already refused
    let err = err_of(template("{% for a in range(1000000) %}{% endfor %}")?.render(&[], false));
    assert!(err.contains("range has too many elements"), "{err}");
    Ok(())
}

#[test]
fn output_bombs_stop_at_the_output_cap() -> Result<()> {
    // 100000 x 1 MB: 100 GB of prompt in a few hundred thousand operations
    let t = template("{% for i in range(100000) %}{{ 'x' * 1000000 }}{% endfor %}")?;
    let start = Instant::now();
    let err = err_of(t.render(&[], false));
    assert_eq!(
        err,
        format!(
            "chat template chat_template: output exceeds {} MiB (a loop without bound?)",
            MAX_RENDER_BYTES >> 20
        )
    );
    assert!(start.elapsed() < Duration::from_secs(3));
    Ok(())
}

/// Filters that widen their input are bounded before they build their
/// result (found by crates/glimpse-fuzz), and `{%}` is a syntax error, not a
/// slicing panic; ordinary uses of the same filters still work.
#[test]
fn widening_filters_are_bounded_and_broken_tags_are_errors() -> Result<()> {
    let cases = [
        ("{{ 'x'|indent(2000000000) }}", "indent width 2000000000 is over the 1024"),
        ("{{ 'x'|indent(width=5000) }}", "indent width 5000 is over the 1024"),
        ("{{ messages|tojson(indent=100000000) }}", "tojson indent width 100000000 is over the 1024"),
        ("{{ messages|batch(1000000000) }}", "batch count 1000000000 is over the 65536"),
        (
            "{{ (((((('a' * 1000)|replace('a', 'aaaaaaaaaa'))|replace('a', 'aaaaaaaaaa'))|replace('a', 'aaaaaaaaaa'))|replace('a', 'aaaaaaaaaa'))|replace('a', 'aaaaaaaaaa'))|length }}",
            "replace would make a string of 100000000 bytes",
        ),
    ];
    for (src, want) in cases {
        let start = Instant::now();
        let err = match template(src)?.render(&[], false) {
            Ok(out) => anyhow::bail!("{src}: accepted, {} bytes", out.len()),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(want), "{src}: {err}");
        assert!(start.elapsed() < Duration::from_secs(3), "{src}");
    }
    let err = ChatTemplate::new("{%}", SpecialTokens::default())
        .err()
        .context("{%} compiled")?
        .to_string();
    assert!(
        err.starts_with("chat template chat_template: cannot compile"),
        "{err}"
    );
    let ok = template("{{ 'a\nb'|indent(4) }}|{{ [1, 2, 3]|batch(2)|list|length }}|{{ 'abc'|replace('b', 'xyz') }}")?;
    assert_eq!(ok.render(&[], false)?, "a\n    b|2|axyzc");
    Ok(())
}

/// SmolLM2-Instruct's template (from its GGUF's `tokenizer.chat_template`).
const SMOLLM2: &str = r"{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A system message then `turns` user/assistant exchanges; user content as
/// image + text parts when `parts`.
fn long_chat(turns: usize, parts: bool) -> serde_json::Value {
    let mut messages = vec![serde_json::json!({"role": "system", "content": "Be brief."})];
    for i in 0..turns {
        let question = format!("question {i}: what colour is the shape in this picture?");
        let user = if parts {
            serde_json::json!([{"type": "image"}, {"type": "text", "text": question}])
        } else {
            serde_json::Value::from(question)
        };
        messages.push(serde_json::json!({"role": "user", "content": user}));
        messages
            .push(serde_json::json!({"role": "assistant", "content": format!("answer {i}: blue")}));
    }
    serde_json::Value::Array(messages)
}

#[test]
fn real_templates_render_long_chats_on_a_hundredth_of_the_budget() -> Result<()> {
    let special = SpecialTokens {
        bos_token: Some("<s>".into()),
        eos_token: Some("</s>".into()),
        ..Default::default()
    };
    let mut templates = vec![(
        "SmolLM2".to_string(),
        ChatTemplate::new(SMOLLM2, special.clone())?,
        false,
    )];
    for dir in [
        "fixtures/decoders/llama-gqa-tied",
        "fixtures/decoders/llama-untied-llama3",
        "fixtures/decoders/qwen2",
        "fixtures/llava/clip-llama",
        "fixtures/llava/clip-llama-multilayer",
        "fixtures/llava/siglip-qwen2",
        "models/glimpse-easy-vqa",
    ] {
        let path = repo().join(dir);
        let t = ChatTemplate::from_model_dir(&path)?.with_context(|| format!("{dir}: none"))?;
        templates.push((dir.to_string(), t, !dir.contains("decoders")));
    }
    // 1001 messages, each template on 1% of the fuel every render gets
    // (they need 23k to 44k operations for this)
    for (name, t, parts) in templates {
        let t = t.with_fuel(RENDER_FUEL / 100);
        let start = Instant::now();
        let text = t
            .render_with(&long_chat(500, parts), true)
            .with_context(|| name.clone())?;
        assert!(text.contains("question 499"), "{name}");
        eprintln!("{name}: {} bytes in {:?}", text.len(), start.elapsed());
    }
    Ok(())
}
