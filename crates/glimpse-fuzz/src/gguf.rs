//! GGUF inputs: the tiny Llama of [`crate::safetensors::tiny`] with a
//! llama-style tokenizer, written by a GGUF writer of our own (so that a
//! mutation can lie in any field: counts, string and array lengths, value
//! types, dimension counts, dimensions, tensor types and offsets, the
//! alignment), then byte mutations on top.
//!
//! Layout (GGUF v3, little-endian): magic `GGUF`, version u32, tensor count
//! u64, metadata count u64; each metadata entry is a string key (u64
//! length + bytes), a u32 type and the value (arrays: u32 item type, u64
//! count, items); each tensor is a name, a u32 dimension count, u64
//! dimensions (innermost first), a u32 ggml type and a u64 offset into the
//! data section, which starts at the next multiple of `general.alignment`.

use std::sync::{Arc, OnceLock};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};

use crate::harness::Case;
use crate::mutate::{apply_bytes, byte_op, interesting_u64, ByteOp};
use crate::safetensors::tiny;

/// A metadata value as written. `Str` and `Arr` carry the length to write,
/// which a mutation may make lie.
#[derive(Debug, Clone)]
pub enum GVal {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(u8),
    Str(Vec<u8>, Option<u64>),
    Arr(u32, Vec<GVal>, Option<u64>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GVal {
    pub fn str(s: &str) -> Self {
        GVal::Str(s.as_bytes().to_vec(), None)
    }

    /// The GGUF type id of this value.
    pub fn type_id(&self) -> u32 {
        match self {
            GVal::U8(_) => 0,
            GVal::I8(_) => 1,
            GVal::U16(_) => 2,
            GVal::I16(_) => 3,
            GVal::U32(_) => 4,
            GVal::I32(_) => 5,
            GVal::F32(_) => 6,
            GVal::Bool(_) => 7,
            GVal::Str(..) => 8,
            GVal::Arr(..) => 9,
            GVal::U64(_) => 10,
            GVal::I64(_) => 11,
            GVal::F64(_) => 12,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            GVal::U8(v) => out.push(*v),
            GVal::I8(v) => out.push(*v as u8),
            GVal::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            GVal::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            GVal::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            GVal::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            GVal::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            GVal::Bool(v) => out.push(*v),
            GVal::Str(s, lie) => write_str(out, s, *lie),
            GVal::Arr(item, items, lie) => {
                out.extend_from_slice(&item.to_le_bytes());
                out.extend_from_slice(&lie.unwrap_or(items.len() as u64).to_le_bytes());
                for i in items {
                    i.write(out);
                }
            }
            GVal::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            GVal::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            GVal::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
}

fn write_str(out: &mut Vec<u8>, s: &[u8], lie: Option<u64>) {
    out.extend_from_slice(&lie.unwrap_or(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
}

#[derive(Debug, Clone)]
pub struct Kv {
    pub key: Vec<u8>,
    pub key_len: Option<u64>,
    /// The type id written, normally `value.type_id()`.
    pub type_id: u32,
    pub value: GVal,
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: Vec<u8>,
    pub n_dims: Option<u32>,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub offset: u64,
}

/// A GGUF file before it is written; every count may lie.
#[derive(Debug, Clone)]
pub struct Gguf {
    pub magic: [u8; 4],
    pub version: u32,
    pub tensor_count: Option<u64>,
    pub kv_count: Option<u64>,
    pub kvs: Vec<Kv>,
    pub tensors: Vec<TensorInfo>,
    /// Padding before the data section (what the writer aligns to).
    pub alignment: u64,
    pub data: Vec<u8>,
}

impl Gguf {
    pub fn kv(&mut self, key: &str, value: GVal) {
        let kv = Kv {
            key: key.as_bytes().to_vec(),
            key_len: None,
            type_id: value.type_id(),
            value,
        };
        match self.kvs.iter_mut().find(|k| k.key == key.as_bytes()) {
            Some(slot) => *slot = kv,
            None => self.kvs.push(kv),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.magic);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(
            &self
                .tensor_count
                .unwrap_or(self.tensors.len() as u64)
                .to_le_bytes(),
        );
        out.extend_from_slice(&self.kv_count.unwrap_or(self.kvs.len() as u64).to_le_bytes());
        for kv in &self.kvs {
            write_str(&mut out, &kv.key, kv.key_len);
            out.extend_from_slice(&kv.type_id.to_le_bytes());
            kv.value.write(&mut out);
        }
        for t in &self.tensors {
            write_str(&mut out, &t.name, None);
            out.extend_from_slice(&t.n_dims.unwrap_or(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.to_le_bytes());
            out.extend_from_slice(&t.offset.to_le_bytes());
        }
        let align = if (1..=1 << 16).contains(&self.alignment) {
            self.alignment as usize
        } else {
            32
        };
        while out.len() % align != 0 {
            out.push(0);
        }
        out.extend_from_slice(&self.data);
        out
    }
}

/// GGUF names and dims (innermost first) of the tiny Llama's tensors.
fn gguf_tensors() -> Vec<(String, Vec<u64>)> {
    let hf_to_gguf = |hf: &str| -> String {
        hf.replace("model.embed_tokens", "token_embd")
            .replace("model.norm", "output_norm")
            .replace("model.layers.", "blk.")
            .replace("input_layernorm", "attn_norm")
            .replace("post_attention_layernorm", "ffn_norm")
            .replace("self_attn.q_proj", "attn_q")
            .replace("self_attn.k_proj", "attn_k")
            .replace("self_attn.v_proj", "attn_v")
            .replace("self_attn.o_proj", "attn_output")
            .replace("mlp.gate_proj", "ffn_gate")
            .replace("mlp.up_proj", "ffn_up")
            .replace("mlp.down_proj", "ffn_down")
    };
    tiny::tensors()
        .into_iter()
        .map(|(name, shape)| {
            let dims = shape.iter().rev().map(|&d| d as u64).collect();
            (hf_to_gguf(name), dims)
        })
        .collect()
}

/// The tokenizer's pieces: specials, the SentencePiece space, bytes of
/// ASCII letters, up to the model's vocabulary.
fn tokens() -> Vec<String> {
    let mut t: Vec<String> = ["<unk>", "<s>", "</s>", "▁"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for c in 'a'..='z' {
        t.push(c.to_string());
    }
    t.push("▁a".into());
    t.push("ab".into());
    t.truncate(tiny::VOCAB);
    t
}

const TEMPLATE: &str = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";

/// The tiny Llama as a valid GGUF file description.
pub fn tiny_gguf() -> Gguf {
    let mut g = Gguf {
        magic: *b"GGUF",
        version: 3,
        tensor_count: None,
        kv_count: None,
        kvs: Vec::new(),
        tensors: Vec::new(),
        alignment: 32,
        data: Vec::new(),
    };
    g.kv("general.architecture", GVal::str("llama"));
    g.kv("general.alignment", GVal::U32(32));
    g.kv("llama.context_length", GVal::U32(tiny::CTX as u32));
    g.kv("llama.embedding_length", GVal::U32(tiny::HIDDEN as u32));
    g.kv("llama.block_count", GVal::U32(1));
    g.kv("llama.feed_forward_length", GVal::U32(tiny::FFN as u32));
    g.kv("llama.attention.head_count", GVal::U32(tiny::HEADS as u32));
    g.kv(
        "llama.attention.head_count_kv",
        GVal::U32(tiny::KV_HEADS as u32),
    );
    g.kv("llama.attention.layer_norm_rms_epsilon", GVal::F32(1e-6));
    g.kv("llama.rope.freq_base", GVal::F32(10000.0));
    g.kv(
        "llama.rope.dimension_count",
        GVal::U32(tiny::HEAD_DIM as u32),
    );
    g.kv("tokenizer.ggml.model", GVal::str("llama"));
    let toks = tokens();
    g.kv(
        "tokenizer.ggml.tokens",
        GVal::Arr(8, toks.iter().map(|t| GVal::str(t)).collect(), None),
    );
    g.kv(
        "tokenizer.ggml.scores",
        GVal::Arr(
            6,
            (0..toks.len()).map(|i| GVal::F32(-(i as f32))).collect(),
            None,
        ),
    );
    g.kv(
        "tokenizer.ggml.token_type",
        GVal::Arr(
            5,
            (0..toks.len())
                .map(|i| {
                    GVal::I32(match i {
                        0 => 2,
                        1 | 2 => 3,
                        _ => 1,
                    })
                })
                .collect(),
            None,
        ),
    );
    g.kv("tokenizer.ggml.bos_token_id", GVal::U32(1));
    g.kv("tokenizer.ggml.eos_token_id", GVal::U32(2));
    g.kv("tokenizer.ggml.unknown_token_id", GVal::U32(0));
    g.kv("tokenizer.chat_template", GVal::str(TEMPLATE));
    for (name, dims) in gguf_tensors() {
        while !g.data.len().is_multiple_of(32) {
            g.data.push(0);
        }
        let n: u64 = dims.iter().product();
        g.tensors.push(TensorInfo {
            name: name.as_bytes().to_vec(),
            n_dims: None,
            dims,
            ggml_type: 0,
            offset: g.data.len() as u64,
        });
        for v in tiny::values(&name, n as usize) {
            g.data.extend_from_slice(&v.to_le_bytes());
        }
    }
    g
}

pub fn seed_cases() -> Vec<Case> {
    vec![Case::new(tiny_gguf().to_bytes(), "tiny llama gguf")]
}

/// Metadata keys a mutation sets.
const META_KEYS: &[&str] = &[
    "general.alignment",
    "general.architecture",
    "llama.context_length",
    "llama.embedding_length",
    "llama.block_count",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.attention.layer_norm_rms_epsilon",
    "llama.attention.key_length",
    "llama.attention.value_length",
    "llama.rope.freq_base",
    "llama.rope.dimension_count",
    "llama.rope.scaling.type",
    "llama.rope.scaling.factor",
    "llama.rope.scaling.original_context_length",
    "llama.attention.sliding_window",
    "llama.vocab_size",
    "qwen2.embedding_length",
    "tokenizer.ggml.model",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
    "tokenizer.chat_template",
];

/// ggml tensor type ids: real ones (F32, F16, the Q and K quants, IQ,
/// I8..I64, F64, BF16) and past the end.
const GGML_TYPES: &[u32] = &[
    0,
    1,
    2,
    3,
    6,
    7,
    8,
    9,
    10,
    11,
    12,
    13,
    14,
    15,
    16,
    19,
    20,
    24,
    25,
    26,
    27,
    28,
    30,
    34,
    39,
    40,
    99,
    1 << 16,
    u32::MAX,
];

fn gval() -> impl Strategy<Value = GVal> {
    let floats = select(
        &[
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -1.0,
            0.0,
            -0.0,
            1e-45,
            1e38,
            0.5,
            1e6,
        ][..],
    );
    let strings = select(
        &[
            "llama", "qwen2", "mistral", "gpt2", "", "a b", "linear", "yarn", "{{ x",
        ][..],
    );
    prop_oneof![
        6 => interesting_u64().prop_map(|v| GVal::U32(v as u32)),
        2 => interesting_u64().prop_map(GVal::U64),
        2 => interesting_u64().prop_map(|v| GVal::I32(-(v as i32))),
        1 => interesting_u64().prop_map(|v| GVal::I64(-(v as i64))),
        3 => floats.prop_map(GVal::F32),
        1 => any::<u8>().prop_map(GVal::Bool),
        2 => strings.prop_map(GVal::str),
        1 => Just(GVal::Arr(4, Vec::new(), None)),
        1 => vec(interesting_u64().prop_map(|v| GVal::U32(v as u32)), 0..4)
            .prop_map(|items| GVal::Arr(4, items, None)),
        1 => Just(GVal::Arr(8, vec![GVal::str("a"); 3], None)),
        1 => any::<u8>().prop_map(GVal::U8),
        1 => any::<i16>().prop_map(GVal::I16),
        1 => any::<u16>().prop_map(GVal::U16),
        1 => any::<i8>().prop_map(GVal::I8),
        1 => Just(GVal::F64(f64::NAN)),
    ]
}

/// One structural GGUF mutation.
#[derive(Debug, Clone)]
pub enum GgufOp {
    TensorCount(u64),
    KvCount(u64),
    Version(u32),
    Magic([u8; 4]),
    /// Set (or add) a metadata key.
    Meta(&'static str, GVal),
    /// Write another type id before an entry's value.
    KvType(Index, u32),
    KeyLen(Index, u64),
    /// A string or array value whose length field lies.
    ValueLen(Index, u64),
    DropKv(Index),
    DupKv(Index),
    Dims(Index, Vec<u64>),
    NDims(Index, u32),
    TensorType(Index, u32),
    Offset(Index, u64),
    DropTensor(Index),
    DupTensor(Index),
    RenameTensor(Index, &'static str),
    /// The padding the data section starts after (the value of
    /// `general.alignment` stays).
    Padding(u64),
    CutData(Index),
}

fn gguf_op() -> impl Strategy<Value = GgufOp> {
    let names = select(
        &[
            "output.weight",
            "rope_freqs.weight",
            "blk.1.attn_q.weight",
            "token_embd.weight",
            "",
            "blk.0.attn_q.weight\0",
        ][..],
    );
    prop_oneof![
        1 => interesting_u64().prop_map(GgufOp::TensorCount),
        1 => interesting_u64().prop_map(GgufOp::KvCount),
        1 => select(&[0u32, 1, 2, 3, 4, 0x0300_0000, u32::MAX][..]).prop_map(GgufOp::Version),
        1 => Just(GgufOp::Magic(*b"GGUG")),
        8 => (select(META_KEYS), gval()).prop_map(|(k, v)| GgufOp::Meta(k, v)),
        2 => (any::<Index>(), prop_oneof![0u32..13, Just(13), Just(99), Just(u32::MAX)])
            .prop_map(|(i, t)| GgufOp::KvType(i, t)),
        1 => (any::<Index>(), interesting_u64()).prop_map(|(i, v)| GgufOp::KeyLen(i, v)),
        2 => (any::<Index>(), interesting_u64()).prop_map(|(i, v)| GgufOp::ValueLen(i, v)),
        1 => any::<Index>().prop_map(GgufOp::DropKv),
        1 => any::<Index>().prop_map(GgufOp::DupKv),
        4 => (any::<Index>(), vec(interesting_u64(), 0..5)).prop_map(|(i, d)| GgufOp::Dims(i, d)),
        1 => (any::<Index>(), prop_oneof![Just(0u32), 3u32..6, Just(u32::MAX)])
            .prop_map(|(i, n)| GgufOp::NDims(i, n)),
        3 => (any::<Index>(), select(GGML_TYPES)).prop_map(|(i, t)| GgufOp::TensorType(i, t)),
        3 => (any::<Index>(), interesting_u64()).prop_map(|(i, o)| GgufOp::Offset(i, o)),
        1 => any::<Index>().prop_map(GgufOp::DropTensor),
        1 => any::<Index>().prop_map(GgufOp::DupTensor),
        1 => (any::<Index>(), names).prop_map(|(i, n)| GgufOp::RenameTensor(i, n)),
        1 => select(&[1u64, 8, 64][..]).prop_map(GgufOp::Padding),
        1 => any::<Index>().prop_map(GgufOp::CutData),
    ]
}

impl GgufOp {
    fn apply(&self, g: &mut Gguf) -> String {
        let nk = g.kvs.len();
        let nt = g.tensors.len();
        let key =
            |g: &Gguf, i: &Index| String::from_utf8_lossy(&g.kvs[i.index(nk)].key).into_owned();
        let tname = |g: &Gguf, i: &Index| {
            String::from_utf8_lossy(&g.tensors[i.index(nt)].name).into_owned()
        };
        match self {
            GgufOp::TensorCount(n) => {
                g.tensor_count = Some(*n);
                format!("tensor count {n}")
            }
            GgufOp::KvCount(n) => {
                g.kv_count = Some(*n);
                format!("metadata count {n}")
            }
            GgufOp::Version(v) => {
                g.version = *v;
                format!("version {v}")
            }
            GgufOp::Magic(m) => {
                g.magic = *m;
                "magic GGUG".into()
            }
            GgufOp::Meta(k, v) => {
                g.kv(k, v.clone());
                format!("{k} = {v:?}")
            }
            GgufOp::KvType(i, t) if nk > 0 => {
                let k = key(g, i);
                g.kvs[i.index(nk)].type_id = *t;
                format!("{k}: type id {t}")
            }
            GgufOp::KeyLen(i, v) if nk > 0 => {
                let k = key(g, i);
                g.kvs[i.index(nk)].key_len = Some(*v);
                format!("{k}: key length {v}")
            }
            GgufOp::ValueLen(i, v) if nk > 0 => {
                let k = key(g, i);
                match &mut g.kvs[i.index(nk)].value {
                    GVal::Str(_, lie) | GVal::Arr(_, _, lie) => {
                        *lie = Some(*v);
                        format!("{k}: value length {v}")
                    }
                    _ => String::new(),
                }
            }
            GgufOp::DropKv(i) if nk > 0 => {
                let k = key(g, i);
                g.kvs.remove(i.index(nk));
                format!("drop {k}")
            }
            GgufOp::DupKv(i) if nk > 0 => {
                let k = key(g, i);
                let kv = g.kvs[i.index(nk)].clone();
                g.kvs.push(kv);
                format!("duplicate {k}")
            }
            GgufOp::Dims(i, d) if nt > 0 => {
                let n = tname(g, i);
                g.tensors[i.index(nt)].dims = d.clone();
                format!("{n}: dims {d:?}")
            }
            GgufOp::NDims(i, d) if nt > 0 => {
                let n = tname(g, i);
                g.tensors[i.index(nt)].n_dims = Some(*d);
                format!("{n}: n_dims {d}")
            }
            GgufOp::TensorType(i, t) if nt > 0 => {
                let n = tname(g, i);
                g.tensors[i.index(nt)].ggml_type = *t;
                format!("{n}: ggml type {t}")
            }
            GgufOp::Offset(i, o) if nt > 0 => {
                let n = tname(g, i);
                g.tensors[i.index(nt)].offset = *o;
                format!("{n}: offset {o}")
            }
            GgufOp::DropTensor(i) if nt > 0 => {
                let n = tname(g, i);
                g.tensors.remove(i.index(nt));
                format!("drop tensor {n}")
            }
            GgufOp::DupTensor(i) if nt > 0 => {
                let n = tname(g, i);
                let t = g.tensors[i.index(nt)].clone();
                g.tensors.push(t);
                format!("duplicate tensor {n}")
            }
            GgufOp::RenameTensor(i, new) if nt > 0 => {
                let n = tname(g, i);
                g.tensors[i.index(nt)].name = new.as_bytes().to_vec();
                format!("rename tensor {n} to {new:?}")
            }
            GgufOp::Padding(a) => {
                g.alignment = *a;
                format!("data padded to {a}")
            }
            GgufOp::CutData(i) => {
                let at = i.index(g.data.len() + 1);
                g.data.truncate(at);
                format!("data cut to {at} bytes")
            }
            _ => String::new(),
        }
    }
}

fn seed() -> Arc<Gguf> {
    static SEED: OnceLock<Arc<Gguf>> = OnceLock::new();
    SEED.get_or_init(|| Arc::new(tiny_gguf())).clone()
}

/// GGUF mutations: structural, then (sometimes) bytes.
pub fn strategy() -> BoxedStrategy<Case> {
    let seed = seed();
    let byte_ops = prop_oneof![4 => Just(Vec::new()), 1 => vec(byte_op(), 1..4)];
    (vec(gguf_op(), 0..4), byte_ops)
        .prop_map(move |(ops, bytes)| mutate(&seed, &ops, &bytes))
        .boxed()
}

fn mutate(seed: &Gguf, ops: &[GgufOp], bytes: &[ByteOp]) -> Case {
    let mut g = seed.clone();
    let mut did: Vec<String> = ops
        .iter()
        .map(|op| op.apply(&mut g))
        .filter(|s| !s.is_empty())
        .collect();
    let mut out = g.to_bytes();
    if !bytes.is_empty() {
        did.push(apply_bytes(&mut out, bytes));
    }
    if did.is_empty() {
        did.push("unchanged".into());
    }
    Case::new(out, did.join("; "))
}
