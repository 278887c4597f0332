//! Hostile GGUF files (issue 23): headers written byte by byte, so each
//! field can be set to what a broken or malicious file holds. Each is refused
//! in one line naming the key or tensor before candle's reader sees it
//! (which used to divide by zero on `general.alignment` = 0, index out of
//! bounds on a tensor without dimensions, and load a tensor typed Q4_0 over
//! F32 bytes as garbage).

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use glimpse_models::{Decoder, GgufFile};

/// GGUF metadata value type ids.
const U32: u32 = 4;
const F32: u32 = 6;
const STRING: u32 = 8;
const ARRAY: u32 = 9;
const U64: u32 = 10;

/// ggml type ids.
const GGML_F32: u32 = 0;
const GGML_Q4_0: u32 = 2;

struct Tensor {
    name: String,
    /// On-disk order: row length first.
    dims: Vec<u64>,
    dtype: u32,
    /// `None`: right after the previous tensor, aligned.
    offset: Option<u64>,
    data: Vec<u8>,
}

/// A GGUF file under construction (version 3, little-endian).
struct Gguf {
    kvs: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<Tensor>,
    /// Alignment used to lay out the data (whatever the metadata says).
    align: u64,
}

fn string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

impl Gguf {
    fn new() -> Self {
        Self {
            kvs: Vec::new(),
            tensors: Vec::new(),
            align: 32,
        }
    }

    fn kv(mut self, key: &str, ty: u32, payload: Vec<u8>) -> Self {
        self.kvs.push((key.to_string(), ty, payload));
        self
    }

    fn u32(self, key: &str, v: u32) -> Self {
        self.kv(key, U32, v.to_le_bytes().to_vec())
    }

    /// A dense F32 tensor of `dims` (on-disk order).
    fn f32_tensor(self, name: &str, dims: &[u64]) -> Self {
        let n: u64 = dims.iter().product();
        let data = (0..n)
            .flat_map(|i| (i as f32 * 0.01).to_le_bytes())
            .collect();
        self.tensor(name, dims, GGML_F32, data)
    }

    fn tensor(mut self, name: &str, dims: &[u64], dtype: u32, data: Vec<u8>) -> Self {
        self.tensors.push(Tensor {
            name: name.to_string(),
            dims: dims.to_vec(),
            dtype,
            offset: None,
            data,
        });
        self
    }

    /// A small llama decoder's metadata (one layer's worth of sizes).
    fn llama_meta(self) -> Self {
        self.kv("general.architecture", STRING, string("llama"))
            .u32("llama.embedding_length", 64)
            .u32("llama.attention.head_count", 4)
            .u32("llama.feed_forward_length", 128)
            .u32("llama.block_count", 1)
            .u32("llama.context_length", 256)
            .u32("llama.vocab_size", 96)
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (key, ty, payload) in &self.kvs {
            out.extend_from_slice(&string(key));
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(payload);
        }
        let pad = |n: u64| n.div_ceil(self.align) * self.align;
        let mut next = 0u64;
        let mut offsets = Vec::new();
        for t in &self.tensors {
            let offset = t.offset.unwrap_or(next);
            offsets.push(offset);
            next = pad(offset + t.data.len() as u64);
            out.extend_from_slice(&string(&t.name));
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.dtype.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
        }
        out.resize(pad(out.len() as u64) as usize, 0);
        let start = out.len();
        for (t, offset) in self.tensors.iter().zip(offsets) {
            let at = start + offset as usize;
            if out.len() < at + t.data.len() {
                out.resize(at + t.data.len(), 0);
            }
            out[at..at + t.data.len()].copy_from_slice(&t.data);
        }
        out.resize(pad(out.len() as u64) as usize, 0);
        out
    }

    fn write(&self, dir: &Path, name: &str) -> Result<std::path::PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, self.bytes())?;
        Ok(path)
    }
}

/// The two-tensor file every case below breaks one way.
fn good() -> Gguf {
    Gguf::new()
        .llama_meta()
        .f32_tensor("token_embd.weight", &[64, 96])
        .f32_tensor("output_norm.weight", &[64])
}

fn open_error(path: &Path) -> String {
    match GgufFile::open(path) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => {
            let text = e.to_string();
            assert!(!text.contains('\n'), "{text}");
            assert!(text.contains(&path.display().to_string()), "{text}");
            text
        }
    }
}

fn assert_has(text: &str, want: &str) {
    assert!(text.contains(want), "{text}\n  lacks: {want}");
}

#[test]
fn the_hand_written_file_is_valid() -> Result<()> {
    // Every case below differs from this file in one field only.
    let tmp = tempfile::tempdir()?;
    let path = good().write(tmp.path(), "good.gguf")?;
    let file = GgufFile::open(&path)?;
    let (cfg, _) = file.decoder_config()?;
    assert_eq!((cfg.vocab_size, cfg.hidden_size), (96, 64));
    let t = file.raw_tensor("token_embd.weight", &[96, 64], &Device::Cpu)?;
    let row: Vec<f32> = t
        .dequantize(&Device::Cpu)?
        .narrow(0, 1, 1)?
        .flatten_all()?
        .to_vec1()?;
    assert!((row[0] - 0.64).abs() < 1e-6, "{}", row[0]);
    Ok(())
}

#[test]
fn zero_alignment_is_refused() -> Result<()> {
    // candle's reader divided by it.
    let tmp = tempfile::tempdir()?;
    for (value, name) in [(0u32, "zero"), (3, "three")] {
        let path = good()
            .u32("general.alignment", value)
            .write(tmp.path(), &format!("{name}.gguf"))?;
        assert_has(
            &open_error(&path),
            &format!("GGUF metadata general.alignment is {value}; it must be a power of two"),
        );
    }
    // A u64 alignment candle would silently ignore (and read at 32).
    let path = good()
        .kv("general.alignment", U64, 64u64.to_le_bytes().to_vec())
        .write(tmp.path(), "u64.gguf")?;
    assert_has(&open_error(&path), "general.alignment must be a u32");
    Ok(())
}

#[test]
fn tensor_without_dimensions_is_refused() -> Result<()> {
    // A tensor of no dimensions made gguf.rs index out of bounds.
    let tmp = tempfile::tempdir()?;
    let path = Gguf::new()
        .llama_meta()
        .tensor("token_embd.weight", &[], GGML_F32, vec![0; 4])
        .write(tmp.path(), "no_dims.gguf")?;
    assert_has(
        &open_error(&path),
        "GGUF tensor token_embd.weight has 0 dimensions; a tensor has 1 to 4",
    );
    let path = Gguf::new()
        .llama_meta()
        .tensor("token_embd.weight", &[64, 0], GGML_F32, Vec::new())
        .write(tmp.path(), "zero_dim.gguf")?;
    assert_has(
        &open_error(&path),
        "GGUF tensor token_embd.weight has a dimension of 0 (axis 1 of [64, 0])",
    );
    let path = Gguf::new()
        .llama_meta()
        .tensor(
            "token_embd.weight",
            &[1 << 32, 1 << 32],
            GGML_F32,
            Vec::new(),
        )
        .write(tmp.path(), "huge_dims.gguf")?;
    assert_has(&open_error(&path), "more than 1099511627776 elements");
    Ok(())
}

#[test]
fn huge_lengths_and_counts_are_refused_before_allocation() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    // A string that claims a terabyte.
    let mut huge_string = (1u64 << 40).to_le_bytes().to_vec();
    huge_string.extend_from_slice(b"short");
    let path = good()
        .kv("general.name", STRING, huge_string)
        .write(tmp.path(), "string.gguf")?;
    let e = open_error(&path);
    assert_has(&e, "not a readable GGUF file: metadata general.name (a string of 1099511627776 bytes) needs 1099511627776 bytes");
    // An array of 2³⁰ strings (each would become a candle value).
    let mut array = STRING.to_le_bytes().to_vec();
    array.extend_from_slice(&(1u64 << 30).to_le_bytes());
    let path = good()
        .kv("tokenizer.ggml.tokens", ARRAY, array)
        .write(tmp.path(), "array.gguf")?;
    assert_has(
        &open_error(&path),
        "metadata tokenizer.ggml.tokens brings the metadata arrays past 4194304 elements",
    );
    // A key that claims 2⁶³ bytes.
    let mut bytes = good().bytes();
    let at = bytes
        .windows(b"general.architecture".len())
        .position(|w| w == b"general.architecture")
        .context("key")?
        - 8;
    bytes[at..at + 8].copy_from_slice(&(1u64 << 63).to_le_bytes());
    let path = tmp.path().join("key.gguf");
    std::fs::write(&path, &bytes)?;
    assert_has(
        &open_error(&path),
        "the key of metadata entry 1 of 7 is 9223372036854775808 bytes long, above the limit of 4096",
    );
    // Counts far past the file.
    let mut bytes = good().bytes();
    bytes[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let path = tmp.path().join("count.gguf");
    std::fs::write(&path, &bytes)?;
    assert_has(
        &open_error(&path),
        "the header declares 1099511627776 tensors",
    );
    Ok(())
}

#[test]
fn tensor_typed_q4_0_over_f32_bytes_is_refused() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    // 64 × 96 f32 values (24576 bytes) declared Q4_0 (3456 bytes).
    let f32_bytes: Vec<u8> = (0..64 * 96)
        .flat_map(|i| (i as f32).to_le_bytes())
        .collect();
    let path = Gguf::new()
        .llama_meta()
        .tensor("token_embd.weight", &[64, 96], GGML_Q4_0, f32_bytes.clone())
        .f32_tensor("output_norm.weight", &[64])
        .write(tmp.path(), "q4_over_f32.gguf")?;
    assert_has(
        &open_error(&path),
        "GGUF tensor token_embd.weight is typed Q4_0 (3456 bytes) but 24576 bytes lie before the next tensor output_norm.weight: its type does not match its data",
    );
    // The same as the last tensor: measured against the end of the file.
    let path = Gguf::new()
        .llama_meta()
        .tensor("token_embd.weight", &[64, 96], GGML_Q4_0, f32_bytes)
        .write(tmp.path(), "q4_over_f32_last.gguf")?;
    assert_has(
        &open_error(&path),
        "GGUF tensor token_embd.weight is typed Q4_0 (3456 bytes) but 24576 bytes lie between its start and the end of the file",
    );
    // F32 over Q4_0 bytes: longer than its neighbours leave it.
    let mut g = Gguf::new()
        .llama_meta()
        .tensor("token_embd.weight", &[64, 96], GGML_F32, vec![0; 3456])
        .f32_tensor("output_norm.weight", &[64]);
    g.tensors[1].offset = Some(3456);
    let path = g.write(tmp.path(), "f32_over_q4.gguf")?;
    assert_has(
        &open_error(&path),
        "GGUF tensor output_norm.weight starts at data offset 3456 inside tensor token_embd.weight, which as F32 ends at 24576",
    );
    Ok(())
}

#[test]
fn rows_not_a_multiple_of_the_block_are_refused() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    // 48-value rows cannot be Q4_0 (32-value blocks); 48 × 2 = 96 values
    // would otherwise pass as 3 blocks.
    let path = Gguf::new()
        .llama_meta()
        .tensor("token_embd.weight", &[48, 2], GGML_Q4_0, vec![0; 3 * 18])
        .write(tmp.path(), "rows.gguf")?;
    assert_has(
        &open_error(&path),
        "GGUF tensor token_embd.weight is typed Q4_0, whose blocks hold 32 values, but its rows hold 48",
    );
    Ok(())
}

#[test]
fn unusable_decoder_metadata_names_the_key() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dev = Device::Cpu;
    let load = |path: &Path| -> Result<String> {
        let file = GgufFile::open(path)?;
        Ok(match Decoder::load_gguf(&file, None, &dev) {
            Ok(_) => panic!("{} loaded", path.display()),
            Err(e) => e.to_string(),
        })
    };
    let path = good()
        .kv(
            "llama.attention.layer_norm_rms_epsilon",
            F32,
            f32::NAN.to_le_bytes().to_vec(),
        )
        .write(tmp.path(), "nan_eps.gguf")?;
    assert_has(
        &load(&path)?,
        "GGUF metadata llama.attention.layer_norm_rms_epsilon is NaN; it must be a finite number above 0",
    );
    let mut g = good();
    g.kvs.retain(|(k, _, _)| k != "llama.context_length");
    let path = g
        .u32("llama.context_length", 0)
        .write(tmp.path(), "ctx0.gguf")?;
    assert_has(
        &load(&path)?,
        "GGUF metadata llama.context_length is 0; it must be at least 1",
    );
    let mut g = good();
    g.kvs.retain(|(k, _, _)| k != "llama.embedding_length");
    let path = g
        .kv(
            "llama.embedding_length",
            U64,
            (1u64 << 63).to_le_bytes().to_vec(),
        )
        .write(tmp.path(), "hidden.gguf")?;
    assert_has(
        &load(&path)?,
        "GGUF metadata llama.embedding_length is 9223372036854775808, above glimpse's limit of 65536",
    );
    // Checked before the tensors are read, so a dequantized load allocates nothing.
    let file = GgufFile::open(&path)?;
    assert!(Decoder::load_gguf(&file, Some(DType::F32), &dev).is_err());
    Ok(())
}
