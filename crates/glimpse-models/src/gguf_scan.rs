//! A bounded pre-scan of a GGUF file's header, run before candle's reader.
//!
//! candle's `Content::read` trusts the header: `general.alignment` = 0
//! divides by zero, a tensor may have no dimensions or a zero one, element
//! counts may overflow, and every metadata array element becomes a 32-byte
//! `Value` however small it is on disk. This scan reads the same bytes
//! without allocating anything the header sizes (strings and arrays are
//! skipped, not read), checks every count and length against the bytes left
//! in the file and against fixed bounds, and then checks that the tensors
//! tile the data section: each one's byte length for its declared type
//! reaches the next one's start (within alignment padding), and the last
//! one reaches the end of the file. A tensor typed Q4_0 over F32 bytes is
//! a quarter of the length its neighbours leave it, and is refused here by
//! name. Only a header that passes is handed to candle.

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::quantized::GgmlDType;

use crate::error::{ModelError, Result};

/// Tensors in one file. Largest released dense models hold ~1,100.
const MAX_TENSORS: u64 = 1 << 16;
/// Metadata entries. Real files hold a few dozen.
const MAX_KVS: u64 = 1 << 16;
/// A metadata key's length (GGUF allows 65535; real keys are < 64 bytes).
const MAX_KEY_LEN: u64 = 4096;
/// A tensor name's length (ggml's own limit is 64).
const MAX_NAME_LEN: u64 = 1024;
/// Metadata array elements in all, each of which candle keeps as a 32-byte
/// value (a 262144-token vocabulary with scores, types and merges is ~1M).
const MAX_ARRAY_ELEMS: u64 = 1 << 22;
/// Arrays within arrays (no released file nests them).
const MAX_DEPTH: usize = 2;
/// `general.alignment` (llama.cpp writes 32).
const MAX_ALIGNMENT: u64 = 1 << 16;
/// Elements of one tensor.
const MAX_TENSOR_ELEMS: u64 = 1 << 40;

/// What the scan learnt that the open file keeps using.
#[derive(Debug)]
pub(crate) struct Header {
    /// Where tensor data begins (the end of the header, aligned).
    pub data_start: u64,
}

/// One tensor of the header.
struct Info {
    name: String,
    dtype: GgmlDType,
    offset: u64,
    bytes: u64,
}

/// The ggml types candle reads (`GgmlDType::from_u32` is crate-private to
/// candle, so the table is repeated here; ids are ggml's).
fn ggml_dtype(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// GGUF metadata value types, by id.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Fixed(u64),
    Bool,
    String,
    Array,
}

fn value_kind(id: u32) -> Option<Kind> {
    Some(match id {
        0 | 1 => Kind::Fixed(1),   // u8, i8
        2 | 3 => Kind::Fixed(2),   // u16, i16
        4..=6 => Kind::Fixed(4),   // u32, i32, f32
        7 => Kind::Bool,           // bool
        8 => Kind::String,         // string
        9 => Kind::Array,          // array
        10..=12 => Kind::Fixed(8), // u64, i64, f64
        _ => return None,
    })
}

struct Scanner<'a, R> {
    r: R,
    pos: u64,
    len: u64,
    /// Version 1 writes lengths and dimensions as u32, later ones as u64.
    wide: bool,
    path: &'a Path,
    array_elems: u64,
}

impl<R: Read + Seek> Scanner<'_, R> {
    fn error(&self, msg: impl std::fmt::Display) -> ModelError {
        ModelError::file(self.path, format!("not a readable GGUF file: {msg}"))
    }

    /// `n` more bytes must lie in the file.
    fn need(&self, n: u64, what: &dyn Fn() -> String) -> Result<()> {
        let left = self.len - self.pos;
        if n > left {
            return Err(self.error(format!(
                "{} needs {n} bytes at byte {}, the file has {left} left",
                what(),
                self.pos
            )));
        }
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        self.need(N as u64, what)?;
        let mut buf = [0u8; N];
        self.r
            .read_exact(&mut buf)
            .map_err(|e| ModelError::file(self.path, e))?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }

    /// A length or count: u32 in version 1, u64 after.
    fn length(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        if self.wide {
            self.u64(what)
        } else {
            self.u32(what).map(u64::from)
        }
    }

    fn skip(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<()> {
        self.need(n, what)?;
        // Short skips (the strings of a vocabulary) read through the
        // caller's buffer; a seek would drop it every time.
        let io = |e| ModelError::file(self.path, e);
        if n <= 1 << 16 {
            let copied =
                std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink()).map_err(io)?;
            if copied != n {
                return Err(self.error(format!("{} ends early", what())));
            }
        } else {
            self.r.seek(SeekFrom::Start(self.pos + n)).map_err(io)?;
        }
        self.pos += n;
        Ok(())
    }

    /// A string of at most `max` bytes, read (keys and tensor names only).
    fn string(&mut self, max: u64, what: &dyn Fn() -> String) -> Result<String> {
        let n = self.length(what)?;
        if n > max {
            return Err(self.error(format!(
                "{} is {n} bytes long, above the limit of {max}",
                what()
            )));
        }
        self.need(n, what)?;
        let mut buf = vec![0u8; n as usize];
        self.r
            .read_exact(&mut buf)
            .map_err(|e| ModelError::file(self.path, e))?;
        self.pos += n;
        // candle trims trailing NULs and decodes lossily; name alike.
        while buf.last() == Some(&0) {
            buf.pop();
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Steps over one value of type `kind`.
    fn skip_value(&mut self, kind: Kind, depth: usize, what: &dyn Fn() -> String) -> Result<()> {
        match kind {
            Kind::Fixed(n) => self.skip(n, what),
            Kind::Bool => match self.bytes::<1>(what)?[0] {
                0 | 1 => Ok(()),
                b => Err(self.error(format!("{} is a bool of value {b}", what()))),
            },
            Kind::String => {
                let n = self.length(what)?;
                self.skip(n, &|| format!("{} (a string of {n} bytes)", what()))
            }
            Kind::Array => {
                if depth >= MAX_DEPTH {
                    return Err(
                        self.error(format!("{} nests arrays deeper than {MAX_DEPTH}", what()))
                    );
                }
                let id = self.u32(what)?;
                let inner = value_kind(id).ok_or_else(|| {
                    self.error(format!("{} is an array of unknown type {id}", what()))
                })?;
                let count = self.length(what)?;
                self.array_elems = self.array_elems.saturating_add(count);
                if self.array_elems > MAX_ARRAY_ELEMS {
                    return Err(self.error(format!(
                        "{} brings the metadata arrays past {MAX_ARRAY_ELEMS} elements",
                        what()
                    )));
                }
                match inner {
                    Kind::Fixed(size) => self.skip(count.saturating_mul(size), &|| {
                        format!("{} (an array of {count} elements)", what())
                    }),
                    _ => {
                        // Every element takes at least one byte: a count
                        // beyond the file is refused before the loop.
                        self.need(count, &|| {
                            format!("{} (an array of {count} elements)", what())
                        })?;
                        for _ in 0..count {
                            self.skip_value(inner, depth + 1, what)?;
                        }
                        Ok(())
                    }
                }
            }
        }
    }
}

/// Scans the header of the GGUF file `r` (`len` bytes); see the module docs.
pub(crate) fn scan<R: Read + Seek>(r: R, len: u64, path: &Path) -> Result<Header> {
    let mut s = Scanner {
        r,
        pos: 0,
        len,
        wide: true,
        path,
        array_elems: 0,
    };
    let magic = s.bytes::<4>(&|| "the magic".into())?;
    if &magic != b"GGUF" {
        return Err(s.error(format!("the file starts with {magic:?}, not \"GGUF\"")));
    }
    let version = s.u32(&|| "the version".into())?;
    if !(1..=3).contains(&version) {
        return Err(s.error(format!(
            "GGUF version {version} is not one glimpse reads (1 to 3)"
        )));
    }
    s.wide = version >= 2;
    let tensor_count = s.length(&|| "the tensor count".into())?;
    let kv_count = s.length(&|| "the metadata count".into())?;
    if tensor_count > MAX_TENSORS || kv_count > MAX_KVS {
        return Err(s.error(format!(
            "the header declares {tensor_count} tensors and {kv_count} metadata entries \
             (glimpse's limits are {MAX_TENSORS} and {MAX_KVS})"
        )));
    }

    let mut alignment = candle_core::quantized::gguf_file::DEFAULT_ALIGNMENT;
    let mut keys = HashSet::new();
    for i in 0..kv_count {
        let entry = move || format!("metadata entry {} of {kv_count}", i + 1);
        let key = s.string(MAX_KEY_LEN, &|| format!("the key of {}", entry()))?;
        let what = || format!("metadata {key}");
        let id = s.u32(&what)?;
        let kind = value_kind(id)
            .ok_or_else(|| s.error(format!("metadata {key} has unknown value type {id}")))?;
        if key == "general.alignment" {
            // candle reads alignments stored as u8/u16/u32 (i8/i16/i32 when
            // not negative) and silently uses 32 otherwise: refuse the rest.
            let raw: i64 = match id {
                0 => i64::from(s.bytes::<1>(&what)?[0]),
                1 => i64::from(i8::from_le_bytes(s.bytes(&what)?)),
                2 => i64::from(u16::from_le_bytes(s.bytes(&what)?)),
                3 => i64::from(i16::from_le_bytes(s.bytes(&what)?)),
                4 => i64::from(u32::from_le_bytes(s.bytes(&what)?)),
                5 => i64::from(i32::from_le_bytes(s.bytes(&what)?)),
                _ => {
                    return Err(ModelError::file(
                        path,
                        "GGUF metadata general.alignment must be a u32",
                    ))
                }
            };
            let value = u64::try_from(raw).unwrap_or(0);
            if !value.is_power_of_two() || value > MAX_ALIGNMENT {
                return Err(ModelError::file(
                    path,
                    format!(
                        "GGUF metadata general.alignment is {raw}; it must be a power of two \
                         from 1 to {MAX_ALIGNMENT}"
                    ),
                ));
            }
            alignment = value;
        } else {
            s.skip_value(kind, 0, &what)?;
        }
        if !keys.insert(key.clone()) {
            return Err(s.error(format!("metadata {key} appears twice")));
        }
    }

    let mut infos: Vec<Info> = Vec::with_capacity(tensor_count as usize);
    let mut names = HashSet::new();
    for i in 0..tensor_count {
        let name = s.string(MAX_NAME_LEN, &|| {
            format!("the name of tensor {} of {tensor_count}", i + 1)
        })?;
        let what = || format!("tensor {name}");
        let tensor_error =
            |msg: String| ModelError::file(path, format!("GGUF tensor {name} {msg}"));
        let n_dims = s.u32(&what)?;
        if !(1..=4).contains(&n_dims) {
            return Err(tensor_error(format!(
                "has {n_dims} dimensions; a tensor has 1 to 4"
            )));
        }
        let mut dims = [0u64; 4];
        for d in dims.iter_mut().take(n_dims as usize) {
            *d = s.length(&what)?;
        }
        let dims = &dims[..n_dims as usize];
        if let Some(axis) = dims.iter().position(|&d| d == 0) {
            return Err(tensor_error(format!(
                "has a dimension of 0 (axis {axis} of {dims:?})"
            )));
        }
        let elems = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= MAX_TENSOR_ELEMS)
            .ok_or_else(|| {
                tensor_error(format!(
                    "has dimensions {dims:?}, more than {MAX_TENSOR_ELEMS} elements"
                ))
            })?;
        let id = s.u32(&what)?;
        let dtype = ggml_dtype(id).ok_or_else(|| {
            ModelError::file(
                path,
                format!(
                    "unsupported GGUF tensor type {} (ggml type {id}) for tensor {name}; glimpse reads \
                     F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K",
                    crate::gguf::ggml_type_name(id)
                ),
            )
        })?;
        let block = dtype.block_size() as u64;
        // ggml quantizes along rows (the first dimension on disk).
        if dims[0] % block != 0 {
            return Err(tensor_error(format!(
                "is typed {dtype:?}, whose blocks hold {block} values, but its rows hold {}",
                dims[0]
            )));
        }
        let bytes = elems / block * dtype.type_size() as u64;
        let offset = s.u64(&what)?;
        if offset % alignment != 0 {
            return Err(tensor_error(format!(
                "starts at data offset {offset}, not a multiple of the alignment {alignment}"
            )));
        }
        if !names.insert(name.clone()) {
            return Err(tensor_error("appears twice".into()));
        }
        infos.push(Info {
            name,
            dtype,
            offset,
            bytes,
        });
    }

    let data_start = s.pos.div_ceil(alignment) * alignment;
    check_extents(&mut infos, data_start, len, alignment, path)?;
    Ok(Header { data_start })
}

/// The tensors, in offset order, must tile the data section: each starts
/// where the one before ends (plus less than `alignment` of padding), and
/// the last ends within padding of the end of the file.
fn check_extents(
    infos: &mut [Info],
    data_start: u64,
    file_len: u64,
    alignment: u64,
    path: &Path,
) -> Result<()> {
    infos.sort_by_key(|t| t.offset);
    let err = |msg: String| ModelError::file(path, msg);
    let mut prev: Option<&Info> = None;
    let mut end = 0u64;
    for t in infos.iter() {
        if t.offset < end {
            let p = prev.map_or("", |p| p.name.as_str());
            return Err(err(format!(
                "GGUF tensor {} starts at data offset {} inside tensor {p}, which as {:?} ends at {end}",
                t.name,
                t.offset,
                prev.map(|p| p.dtype).unwrap_or(t.dtype)
            )));
        }
        let gap = t.offset - end;
        if gap >= alignment {
            return Err(err(match prev {
                Some(p) => format!(
                    "GGUF tensor {} is typed {:?} ({} bytes) but {} bytes lie before the next \
                     tensor {}: its type does not match its data",
                    p.name,
                    p.dtype,
                    p.bytes,
                    p.bytes + gap,
                    t.name
                ),
                None => format!(
                    "GGUF tensor {} starts at data offset {}, leaving {gap} unused bytes before it",
                    t.name, t.offset
                ),
            }));
        }
        end = t
            .offset
            .checked_add(t.bytes)
            .ok_or_else(|| err(format!("GGUF tensor {} ends past any file", t.name)))?;
        prev = Some(t);
    }
    let Some(last) = prev else {
        return Ok(());
    };
    let file_end = data_start.saturating_add(end);
    if file_end > file_len {
        return Err(err(format!(
            "truncated GGUF: tensor {} ends at byte {file_end}, the file has {file_len}",
            last.name
        )));
    }
    let trailing = file_len - file_end;
    if trailing >= alignment {
        return Err(err(format!(
            "GGUF tensor {} is typed {:?} ({} bytes) but {} bytes lie between its start and the \
             end of the file: its type does not match its data",
            last.name,
            last.dtype,
            last.bytes,
            last.bytes + trailing
        )));
    }
    Ok(())
}
