//! safetensors inputs: a tiny Llama checkpoint written here (8-byte header
//! length, JSON header, data), mutated in its header (dtype, shape,
//! data_offsets, metadata, through the JSON mutator), its length prefix
//! and its bytes.

use std::sync::{Arc, OnceLock};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use serde_json::{json, Map, Value};

use crate::harness::Case;
use crate::mutate::{apply_bytes, apply_json, byte_op, interesting_u64, json_op, ByteOp, JsonOp};

/// The tiny Llama both checkpoint formats carry: vocab 32, width 16, one
/// layer, 2 query heads of 8, 1 key/value head, MLP 32, tied head.
pub mod tiny {
    pub const VOCAB: usize = 32;
    pub const HIDDEN: usize = 16;
    pub const FFN: usize = 32;
    pub const HEADS: usize = 2;
    pub const KV_HEADS: usize = 1;
    pub const HEAD_DIM: usize = HIDDEN / HEADS;
    pub const CTX: usize = 64;

    /// Its HF `config.json`.
    pub fn config_json() -> String {
        serde_json::json!({
            "model_type": "llama",
            "vocab_size": VOCAB,
            "hidden_size": HIDDEN,
            "intermediate_size": FFN,
            "num_hidden_layers": 1,
            "num_attention_heads": HEADS,
            "num_key_value_heads": KV_HEADS,
            "max_position_embeddings": CTX,
            "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0,
            "tie_word_embeddings": true,
            "bos_token_id": 1,
            "eos_token_id": 2
        })
        .to_string()
    }

    /// (HF name, HF shape) of every tensor.
    pub fn tensors() -> Vec<(&'static str, Vec<usize>)> {
        let kv = KV_HEADS * HEAD_DIM;
        vec![
            ("model.embed_tokens.weight", vec![VOCAB, HIDDEN]),
            ("model.layers.0.input_layernorm.weight", vec![HIDDEN]),
            (
                "model.layers.0.self_attn.q_proj.weight",
                vec![HIDDEN, HIDDEN],
            ),
            ("model.layers.0.self_attn.k_proj.weight", vec![kv, HIDDEN]),
            ("model.layers.0.self_attn.v_proj.weight", vec![kv, HIDDEN]),
            (
                "model.layers.0.self_attn.o_proj.weight",
                vec![HIDDEN, HIDDEN],
            ),
            (
                "model.layers.0.post_attention_layernorm.weight",
                vec![HIDDEN],
            ),
            ("model.layers.0.mlp.gate_proj.weight", vec![FFN, HIDDEN]),
            ("model.layers.0.mlp.up_proj.weight", vec![FFN, HIDDEN]),
            ("model.layers.0.mlp.down_proj.weight", vec![HIDDEN, FFN]),
            ("model.norm.weight", vec![HIDDEN]),
        ]
    }

    /// Deterministic small values: norms near 1, matrices near 0.
    pub fn values(name: &str, n: usize) -> Vec<f32> {
        let norm = name.contains("norm");
        (0..n)
            .map(|i| {
                let x = ((i * 7919 + name.len() * 31) % 97) as f32 / 97.0 - 0.5;
                if norm {
                    1.0 + x * 0.1
                } else {
                    x * 0.2
                }
            })
            .collect()
    }
}

/// safetensors dtype names, real and not.
pub const DTYPES: &[&str] = &[
    "F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64", "BOOL",
    "F8_E4M3", "F8_E5M2", "E8M0", "F4", "F6_E2M3", "f32", "", "XYZ",
];

/// The bytes of a safetensors file: header (padded to 8) then data.
pub fn assemble(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.as_bytes().to_vec();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

/// The tiny Llama as safetensors, in F32 or BF16 / F16 (halves by
/// truncating the f32 bits, which is exact for BF16 and fine for a seed).
pub fn tiny_checkpoint(dtype: &str) -> Vec<u8> {
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut data = Vec::new();
    for (name, shape) in tiny::tensors() {
        let n: usize = shape.iter().product();
        let start = data.len();
        for v in tiny::values(name, n) {
            match dtype {
                "F32" => data.extend_from_slice(&v.to_le_bytes()),
                "BF16" => data.extend_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes()),
                _ => data.extend_from_slice(&f32_to_f16(v).to_le_bytes()),
            }
        }
        header.insert(
            name.to_string(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    assemble(&Value::Object(header).to_string(), &data)
}

/// f32 → IEEE half, round toward zero; enough for seed values in ±2.
fn f32_to_f16(v: f32) -> u16 {
    let bits = v.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    let mant = bits & 0x7f_ffff;
    if exp <= 0 {
        sign
    } else if exp >= 31 {
        sign | 0x7c00
    } else {
        sign | ((exp as u16) << 10) | (mant >> 13) as u16
    }
}

/// Splits a safetensors file into its header text and data; `None` when
/// the length prefix does not fit.
pub fn split(bytes: &[u8]) -> Option<(String, &[u8])> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header = bytes.get(8..8usize.checked_add(n)?)?;
    Some((
        String::from_utf8_lossy(header).into_owned(),
        &bytes[8 + n..],
    ))
}

/// Named seed files.
pub type Seeds = Arc<Vec<(String, Vec<u8>)>>;

pub fn seeds() -> Seeds {
    static SEEDS: OnceLock<Seeds> = OnceLock::new();
    SEEDS
        .get_or_init(|| {
            Arc::new(
                ["F32", "BF16", "F16"]
                    .iter()
                    .map(|d| (format!("tiny llama {d}"), tiny_checkpoint(d)))
                    .collect(),
            )
        })
        .clone()
}

pub fn seed_cases() -> Vec<Case> {
    seeds()
        .iter()
        .map(|(n, b)| Case::new(b.clone(), n.clone()))
        .collect()
}

const KEYS: &[&str] = &[
    "dtype",
    "shape",
    "data_offsets",
    "__metadata__",
    "model.embed_tokens.weight",
    "model.norm.weight",
    "lm_head.weight",
    "format",
];

/// How the length prefix is written.
#[derive(Debug, Clone)]
enum Prefix {
    Right,
    Value(u64),
    Plus(i8),
}

/// A whole-tensor change: same-width integer dtype over the float data
/// (offsets stay valid), or a shape that no longer matches the offsets.
#[derive(Debug, Clone)]
enum TensorOp {
    Retype(Index, &'static str),
    Reshape(Index, Vec<u64>),
    Offsets(Index, u64, u64),
}

fn tensor_op() -> impl Strategy<Value = TensorOp> {
    prop_oneof![
        3 => (any::<Index>(), select(&["I32", "U32", "I16", "U8", "BOOL", "F16", "F64", "I64"][..]))
            .prop_map(|(i, d)| TensorOp::Retype(i, d)),
        2 => (any::<Index>(), vec(interesting_u64(), 0..4)).prop_map(|(i, s)| TensorOp::Reshape(i, s)),
        2 => (any::<Index>(), interesting_u64(), interesting_u64())
            .prop_map(|(i, a, b)| TensorOp::Offsets(i, a, b)),
    ]
}

impl TensorOp {
    fn apply(&self, header: &mut Value) -> String {
        let Some(obj) = header.as_object_mut() else {
            return String::new();
        };
        let names: Vec<String> = obj
            .keys()
            .filter(|k| *k != "__metadata__")
            .cloned()
            .collect();
        if names.is_empty() {
            return String::new();
        }
        let pick = |i: &Index| names[i.index(names.len())].clone();
        match self {
            TensorOp::Retype(i, d) => {
                let n = pick(i);
                obj[&n]["dtype"] = json!(d);
                format!("{n}: dtype {d}")
            }
            TensorOp::Reshape(i, s) => {
                let n = pick(i);
                obj[&n]["shape"] = json!(s);
                format!("{n}: shape {s:?}")
            }
            TensorOp::Offsets(i, a, b) => {
                let n = pick(i);
                obj[&n]["data_offsets"] = json!([a, b]);
                format!("{n}: data_offsets [{a}, {b}]")
            }
        }
    }
}

/// safetensors mutations.
pub fn strategy() -> BoxedStrategy<Case> {
    let seeds = seeds();
    let prefix = prop_oneof![
        8 => Just(Prefix::Right),
        1 => interesting_u64().prop_map(Prefix::Value),
        1 => (-9i8..9).prop_map(Prefix::Plus),
    ];
    let tensor_ops = prop_oneof![2 => Just(Vec::new()), 3 => vec(tensor_op(), 1..3)];
    let json_ops = prop_oneof![2 => Just(Vec::new()), 2 => vec(json_op(KEYS, DTYPES), 1..4)];
    let data_cut = prop_oneof![6 => Just(None), 1 => any::<Index>().prop_map(Some)];
    let byte_ops = prop_oneof![5 => Just(Vec::new()), 1 => vec(byte_op(), 1..4)];
    (
        any::<Index>(),
        tensor_ops,
        json_ops,
        prefix,
        data_cut,
        byte_ops,
    )
        .prop_map(move |(seed, t, j, p, cut, b)| mutate(&seeds, seed, &t, &j, &p, cut, &b))
        .boxed()
}

fn mutate(
    seeds: &[(String, Vec<u8>)],
    seed: Index,
    tensor_ops: &[TensorOp],
    json_ops: &[JsonOp],
    prefix: &Prefix,
    cut: Option<Index>,
    byte_ops: &[ByteOp],
) -> Case {
    let (name, bytes) = &seeds[seed.index(seeds.len())];
    let (header, data) = split(bytes).expect("seed splits");
    let mut header: Value = serde_json::from_str(&header).expect("seed header is JSON");
    let mut did = vec![name.clone()];
    did.extend(tensor_ops.iter().map(|op| op.apply(&mut header)));
    let (text, what) = apply_json(header, json_ops);
    if !what.is_empty() {
        did.push(what);
    }
    let mut data = data.to_vec();
    if let Some(i) = cut {
        let at = i.index(data.len() + 1);
        data.truncate(at);
        did.push(format!("data cut to {at} bytes"));
    }
    let mut out = assemble(&text, &data);
    match prefix {
        Prefix::Right => {}
        Prefix::Value(v) => {
            out[..8].copy_from_slice(&v.to_le_bytes());
            did.push(format!("length prefix {v}"));
        }
        Prefix::Plus(d) => {
            let n = u64::from_le_bytes(out[..8].try_into().unwrap_or([0; 8]));
            let v = n.wrapping_add(*d as i64 as u64);
            out[..8].copy_from_slice(&v.to_le_bytes());
            did.push(format!("length prefix {n}{d:+}"));
        }
    }
    if !byte_ops.is_empty() {
        did.push(apply_bytes(&mut out, byte_ops));
    }
    Case::new(out, did.join("; "))
}
