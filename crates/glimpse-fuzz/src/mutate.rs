//! Mutation operators as proptest strategies: raw bytes, fields at known
//! offsets, JSON trees and TOML trees. Each operator says what it did, so a
//! failure report reads "set text_config.hidden_size = 9223372036854775807".

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};

// ------------------------------------------------------------ numbers

/// Integers that sit on the edges parsers get wrong.
pub const INTERESTING_U64: &[u64] = &[
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    15,
    16,
    31,
    32,
    63,
    64,
    127,
    128,
    255,
    256,
    1023,
    1024,
    4095,
    4096,
    65535,
    65536,
    100_000,
    1 << 20,
    (1 << 24) + 1,
    i32::MAX as u64,
    1 << 31,
    u32::MAX as u64,
    1 << 32,
    1 << 40,
    1 << 48,
    1 << 53,
    (1 << 53) + 1,
    1 << 62,
    i64::MAX as u64,
    1 << 63,
    u64::MAX - 1,
    u64::MAX,
];

/// An interesting integer, or any integer now and then.
pub fn interesting_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => select(INTERESTING_U64),
        1 => any::<u64>(),
        1 => 0u64..300,
    ]
}

fn interesting_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => select(INTERESTING_U64).prop_map(|v| v as i64),
        3 => select(INTERESTING_U64).prop_map(|v| (v as i64).wrapping_neg()),
        1 => any::<i64>(),
    ]
}

fn interesting_f64() -> impl Strategy<Value = f64> {
    select(
        &[
            0.0,
            -0.0,
            0.5,
            -1.0,
            1e-320,
            1e-45,
            1.5,
            3.999,
            1e10,
            1e19,
            1e300,
            -1e300,
            f64::MAX,
            f64::MIN_POSITIVE,
            9.2e18,
            1.8446744073709552e19,
        ][..],
    )
}

// ------------------------------------------------------------ bytes

/// A byte-level mutation; positions are relative to the input's length.
#[derive(Debug, Clone)]
pub enum ByteOp {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    SetU16(Index, u16, bool),
    SetU32(Index, u32, bool),
    SetU64(Index, u64),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    Truncate(Index),
    Duplicate(Index, Index, usize),
}

pub fn byte_op() -> impl Strategy<Value = ByteOp> {
    let edge_byte = prop_oneof![
        select(&[0u8, 1, 0x7f, 0x80, 0xff, b'{', b'"', b'\\', b'\n'][..]),
        any::<u8>()
    ];
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| ByteOp::FlipBit(i, b)),
        2 => (any::<Index>(), edge_byte).prop_map(|(i, v)| ByteOp::SetByte(i, v)),
        1 => (any::<Index>(), interesting_u64(), any::<bool>())
            .prop_map(|(i, v, be)| ByteOp::SetU16(i, v as u16, be)),
        2 => (any::<Index>(), interesting_u64(), any::<bool>())
            .prop_map(|(i, v, be)| ByteOp::SetU32(i, v as u32, be)),
        2 => (any::<Index>(), interesting_u64()).prop_map(|(i, v)| ByteOp::SetU64(i, v)),
        1 => (any::<Index>(), vec(any::<u8>(), 1..16)).prop_map(|(i, b)| ByteOp::Insert(i, b)),
        1 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| ByteOp::Remove(i, n)),
        1 => any::<Index>().prop_map(ByteOp::Truncate),
        1 => (any::<Index>(), any::<Index>(), 1usize..128)
            .prop_map(|(a, b, n)| ByteOp::Duplicate(a, b, n)),
    ]
}

fn put(bytes: &mut [u8], at: usize, value: &[u8]) {
    let end = (at + value.len()).min(bytes.len());
    let n = end.saturating_sub(at);
    bytes[at..end].copy_from_slice(&value[..n]);
}

impl ByteOp {
    /// Applies the mutation; returns what it did.
    pub fn apply(&self, bytes: &mut Vec<u8>) -> String {
        if bytes.is_empty() {
            if let ByteOp::Insert(_, b) = self {
                bytes.extend_from_slice(b);
                return format!("insert {} bytes", b.len());
            }
            return "no-op on empty input".into();
        }
        let len = bytes.len();
        match self {
            ByteOp::FlipBit(i, bit) => {
                let at = i.index(len);
                bytes[at] ^= 1 << bit;
                format!("flip bit {bit} of byte {at}")
            }
            ByteOp::SetByte(i, v) => {
                let at = i.index(len);
                bytes[at] = *v;
                format!("byte {at} = {v:#04x}")
            }
            ByteOp::SetU16(i, v, be) => {
                let at = i.index(len);
                put(
                    bytes,
                    at,
                    &if *be {
                        v.to_be_bytes()
                    } else {
                        v.to_le_bytes()
                    },
                );
                format!("u16 at {at} = {v}{}", if *be { " (BE)" } else { "" })
            }
            ByteOp::SetU32(i, v, be) => {
                let at = i.index(len);
                put(
                    bytes,
                    at,
                    &if *be {
                        v.to_be_bytes()
                    } else {
                        v.to_le_bytes()
                    },
                );
                format!("u32 at {at} = {v}{}", if *be { " (BE)" } else { "" })
            }
            ByteOp::SetU64(i, v) => {
                let at = i.index(len);
                put(bytes, at, &v.to_le_bytes());
                format!("u64 at {at} = {v}")
            }
            ByteOp::Insert(i, b) => {
                let at = i.index(len + 1);
                bytes.splice(at..at, b.iter().copied());
                format!("insert {} bytes at {at}", b.len())
            }
            ByteOp::Remove(i, n) => {
                let at = i.index(len);
                let end = (at + n).min(len);
                bytes.drain(at..end);
                format!("remove {} bytes at {at}", end - at)
            }
            ByteOp::Truncate(i) => {
                let at = i.index(len);
                bytes.truncate(at);
                format!("truncate to {at} bytes")
            }
            ByteOp::Duplicate(from, to, n) => {
                let a = from.index(len);
                let end = (a + n).min(len);
                let chunk = bytes[a..end].to_vec();
                let b = to.index(len + 1);
                bytes.splice(b..b, chunk);
                format!("copy bytes {a}..{end} to {b}")
            }
        }
    }
}

/// Applies a list of byte mutations, joining their descriptions.
pub fn apply_bytes(bytes: &mut Vec<u8>, ops: &[ByteOp]) -> String {
    ops.iter()
        .map(|op| op.apply(bytes))
        .collect::<Vec<_>>()
        .join("; ")
}

// ------------------------------------------------------------ fields

/// A numeric field at a known offset of a seed (an image's width, a
/// length prefix), with the checksum that covers it when there is one.
#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub offset: usize,
    /// 1, 2, 4 or 8 bytes.
    pub width: usize,
    pub big_endian: bool,
    /// PNG: CRC-32 over `range` written big-endian at `at`.
    pub crc: Option<(std::ops::Range<usize>, usize)>,
}

impl Field {
    pub fn set(&self, bytes: &mut [u8], value: u64) -> String {
        if self.offset + self.width > bytes.len() {
            return format!("{} out of range", self.name);
        }
        let raw = if self.big_endian {
            value.to_be_bytes()[8 - self.width..].to_vec()
        } else {
            value.to_le_bytes()[..self.width].to_vec()
        };
        bytes[self.offset..self.offset + self.width].copy_from_slice(&raw);
        if let Some((range, at)) = &self.crc {
            if range.end <= bytes.len() && at + 4 <= bytes.len() {
                let crc = crc32fast::hash(&bytes[range.clone()]);
                bytes[*at..at + 4].copy_from_slice(&crc.to_be_bytes());
            }
        }
        format!("{} = {value}", self.name)
    }
}

// ------------------------------------------------------------ JSON

/// A JSON value a mutation puts somewhere.
#[derive(Debug, Clone)]
pub enum JsonLeaf {
    U(u64),
    I(i64),
    F(f64),
    Str(String),
    Bool(bool),
    Null,
    EmptyArray,
    EmptyObject,
    /// Text that is not valid JSON but that some parsers take (`NaN`,
    /// `Infinity`) or that overflows every number type.
    Raw(&'static str),
}

pub const RAW_NUMBERS: &[&str] = &[
    "NaN",
    "-NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e400",
    "18446744073709551616",
    "-9223372036854775809",
    "340282366920938463463374607431768211456",
    "0.0000000000000000000000000000000000000000000000001",
    "1E+2",
    "-0",
];

pub fn json_leaf(strings: &'static [&'static str]) -> impl Strategy<Value = JsonLeaf> {
    prop_oneof![
        6 => interesting_u64().prop_map(JsonLeaf::U),
        3 => interesting_i64().prop_map(JsonLeaf::I),
        2 => interesting_f64().prop_map(JsonLeaf::F),
        2 => select(strings).prop_map(|s| JsonLeaf::Str(s.to_string())),
        1 => "[ -~]{0,12}".prop_map(JsonLeaf::Str),
        1 => (1usize..4).prop_map(|k| JsonLeaf::Str("x".repeat(k * 100_000))),
        1 => any::<bool>().prop_map(JsonLeaf::Bool),
        1 => Just(JsonLeaf::Null),
        1 => Just(JsonLeaf::EmptyArray),
        1 => Just(JsonLeaf::EmptyObject),
        2 => select(RAW_NUMBERS).prop_map(JsonLeaf::Raw),
    ]
}

/// What a JSON mutation does at the node it picks.
#[derive(Debug, Clone)]
pub enum JsonAction {
    Replace(JsonLeaf),
    Delete,
    /// Adds (or overwrites) a key in the nearest object.
    AddKey(String, JsonLeaf),
    /// Wraps the node in a one-element array.
    WrapInArray,
    /// Makes an array hold its first item many times.
    Repeat(usize),
    /// Replaces the node with a copy of another node.
    CopyFrom(Index),
}

#[derive(Debug, Clone)]
pub struct JsonOp {
    pub node: Index,
    pub action: JsonAction,
}

/// JSON mutations whose new keys and strings come from `keys` and `strings`.
pub fn json_op(
    keys: &'static [&'static str],
    strings: &'static [&'static str],
) -> impl Strategy<Value = JsonOp> {
    let action = prop_oneof![
        8 => json_leaf(strings).prop_map(JsonAction::Replace),
        2 => Just(JsonAction::Delete),
        3 => (select(keys), json_leaf(strings))
            .prop_map(|(k, v)| JsonAction::AddKey(k.to_string(), v)),
        1 => Just(JsonAction::WrapInArray),
        1 => select(&[2usize, 100, 10_000, 200_000][..]).prop_map(JsonAction::Repeat),
        1 => any::<Index>().prop_map(JsonAction::CopyFrom),
    ];
    (any::<Index>(), action).prop_map(|(node, action)| JsonOp { node, action })
}

type Path = Vec<PathSeg>;

#[derive(Debug, Clone)]
pub enum PathSeg {
    Key(String),
    At(usize),
}

fn collect_paths(v: &serde_json::Value, here: &mut Path, out: &mut Vec<Path>) {
    out.push(here.clone());
    match v {
        serde_json::Value::Object(m) => {
            for (k, child) in m {
                here.push(PathSeg::Key(k.clone()));
                collect_paths(child, here, out);
                here.pop();
            }
        }
        serde_json::Value::Array(a) => {
            // Long arrays (token lists) would drown the rest: first items only.
            for (i, child) in a.iter().enumerate().take(16) {
                here.push(PathSeg::At(i));
                collect_paths(child, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

fn path_text(p: &Path) -> String {
    if p.is_empty() {
        return "(root)".into();
    }
    p.iter()
        .map(|s| match s {
            PathSeg::Key(k) => k.clone(),
            PathSeg::At(i) => format!("[{i}]"),
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn get_mut<'a>(v: &'a mut serde_json::Value, p: &[PathSeg]) -> Option<&'a mut serde_json::Value> {
    let mut cur = v;
    for seg in p {
        cur = match seg {
            PathSeg::Key(k) => cur.get_mut(k.as_str())?,
            PathSeg::At(i) => cur.get_mut(*i)?,
        };
    }
    Some(cur)
}

fn get<'a>(v: &'a serde_json::Value, p: &[PathSeg]) -> Option<&'a serde_json::Value> {
    let mut cur = v;
    for seg in p {
        cur = match seg {
            PathSeg::Key(k) => cur.get(k.as_str())?,
            PathSeg::At(i) => cur.get(*i)?,
        };
    }
    Some(cur)
}

/// Raw leaves become placeholder strings, replaced in the text at the end.
fn leaf_value(leaf: &JsonLeaf, raws: &mut Vec<&'static str>) -> serde_json::Value {
    use serde_json::Value;
    match leaf {
        JsonLeaf::U(u) => Value::from(*u),
        JsonLeaf::I(i) => Value::from(*i),
        JsonLeaf::F(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        JsonLeaf::Str(s) => Value::from(s.as_str()),
        JsonLeaf::Bool(b) => Value::from(*b),
        JsonLeaf::Null => Value::Null,
        JsonLeaf::EmptyArray => Value::Array(Vec::new()),
        JsonLeaf::EmptyObject => Value::Object(Default::default()),
        JsonLeaf::Raw(r) => {
            raws.push(r);
            Value::from(format!("\u{1}RAW{}\u{1}", raws.len() - 1))
        }
    }
}

fn leaf_text(leaf: &JsonLeaf) -> String {
    match leaf {
        JsonLeaf::Str(s) if s.len() > 40 => format!("a string of {} bytes", s.len()),
        JsonLeaf::Str(s) => format!("{s:?}"),
        JsonLeaf::U(u) => u.to_string(),
        JsonLeaf::I(i) => i.to_string(),
        JsonLeaf::F(f) => format!("{f:e}"),
        JsonLeaf::Bool(b) => b.to_string(),
        JsonLeaf::Null => "null".into(),
        JsonLeaf::EmptyArray => "[]".into(),
        JsonLeaf::EmptyObject => "{}".into(),
        JsonLeaf::Raw(r) => (*r).to_string(),
    }
}

/// Most bytes one repeat or copy may add to an input: mutations that
/// compound (repeat an item that was itself repeated) must not make a case
/// of gigabytes in the process that draws it.
pub const MAX_GROWTH: usize = 4 << 20;

fn json_size(v: &serde_json::Value) -> usize {
    serde_json::to_vec(v).map_or(usize::MAX, |b| b.len())
}

/// Applies JSON mutations to `value` and returns its text and what was done.
pub fn apply_json(mut value: serde_json::Value, ops: &[JsonOp]) -> (String, String) {
    use serde_json::Value;
    let mut raws: Vec<&'static str> = Vec::new();
    let mut did = Vec::new();
    for op in ops {
        let mut paths = Vec::new();
        collect_paths(&value, &mut Vec::new(), &mut paths);
        let path = paths[op.node.index(paths.len())].clone();
        let where_ = path_text(&path);
        match &op.action {
            JsonAction::Replace(leaf) => {
                let new = leaf_value(leaf, &mut raws);
                if let Some(slot) = get_mut(&mut value, &path) {
                    *slot = new;
                    did.push(format!("set {where_} = {}", leaf_text(leaf)));
                }
            }
            JsonAction::Delete => {
                let Some((last, parent)) = path.split_last() else {
                    continue;
                };
                if let Some(p) = get_mut(&mut value, parent) {
                    match (p, last) {
                        (Value::Object(m), PathSeg::Key(k)) => {
                            m.remove(k);
                        }
                        (Value::Array(a), PathSeg::At(i)) if *i < a.len() => {
                            a.remove(*i);
                        }
                        _ => continue,
                    }
                    did.push(format!("delete {where_}"));
                }
            }
            JsonAction::AddKey(k, leaf) => {
                // The node itself when it is an object, else its parent.
                let mut target = path.clone();
                loop {
                    if matches!(get(&value, &target), Some(Value::Object(_))) || target.is_empty() {
                        break;
                    }
                    target.pop();
                }
                let new = leaf_value(leaf, &mut raws);
                if let Some(Value::Object(m)) = get_mut(&mut value, &target) {
                    m.insert(k.clone(), new);
                    let at = path_text(&target);
                    did.push(format!("add {at}.{k} = {}", leaf_text(leaf)));
                }
            }
            JsonAction::WrapInArray => {
                if let Some(slot) = get_mut(&mut value, &path) {
                    let inner = slot.take();
                    *slot = Value::Array(vec![inner]);
                    did.push(format!("wrap {where_} in an array"));
                }
            }
            JsonAction::Repeat(n) => {
                if let Some(Value::Array(a)) = get_mut(&mut value, &path) {
                    if let Some(first) = a.first().cloned() {
                        // Repeating a repeated array would multiply sizes:
                        // an input stays within MAX_GROWTH of new bytes.
                        let item = json_size(&first).max(1);
                        let n = (*n).min((MAX_GROWTH / item).max(1));
                        a.resize(n, first);
                        did.push(format!("repeat {where_}[0] {n} times"));
                    }
                }
            }
            JsonAction::CopyFrom(from) => {
                let src = paths[from.index(paths.len())].clone();
                // A node copied into its own subtree would double each time.
                if src.len() <= path.len() {
                    continue;
                }
                if let Some(copy) = get(&value, &src)
                    .filter(|v| json_size(v) <= MAX_GROWTH)
                    .cloned()
                {
                    if let Some(slot) = get_mut(&mut value, &path) {
                        *slot = copy;
                        did.push(format!("copy {} to {where_}", path_text(&src)));
                    }
                }
            }
        }
    }
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    for (k, raw) in raws.iter().enumerate() {
        text = text.replace(&format!("\"\\u0001RAW{k}\\u0001\""), raw);
    }
    (text, did.join("; "))
}

// ------------------------------------------------------------ TOML

/// A TOML value a mutation puts somewhere.
#[derive(Debug, Clone)]
pub enum TomlLeaf {
    I(i64),
    F(f64),
    Str(String),
    Bool(bool),
    EmptyArray,
    EmptyTable,
    Date,
}

fn toml_leaf(strings: &'static [&'static str]) -> impl Strategy<Value = TomlLeaf> {
    prop_oneof![
        6 => interesting_i64().prop_map(TomlLeaf::I),
        2 => prop_oneof![
            interesting_f64(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
        ]
        .prop_map(TomlLeaf::F),
        2 => select(strings).prop_map(|s| TomlLeaf::Str(s.to_string())),
        1 => "[ -~]{0,12}".prop_map(TomlLeaf::Str),
        1 => any::<bool>().prop_map(TomlLeaf::Bool),
        1 => Just(TomlLeaf::EmptyArray),
        1 => Just(TomlLeaf::EmptyTable),
        1 => Just(TomlLeaf::Date),
    ]
}

#[derive(Debug, Clone)]
pub enum TomlAction {
    Replace(TomlLeaf),
    Delete,
    AddKey(String, TomlLeaf),
    /// Adds an empty table of this name at the top.
    AddSection(String),
}

#[derive(Debug, Clone)]
pub struct TomlOp {
    pub node: Index,
    pub action: TomlAction,
}

pub fn toml_op(
    keys: &'static [&'static str],
    strings: &'static [&'static str],
) -> impl Strategy<Value = TomlOp> {
    let action = prop_oneof![
        8 => toml_leaf(strings).prop_map(TomlAction::Replace),
        2 => Just(TomlAction::Delete),
        3 => (select(keys), toml_leaf(strings)).prop_map(|(k, v)| TomlAction::AddKey(k.to_string(), v)),
        1 => select(keys).prop_map(|k| TomlAction::AddSection(k.to_string())),
    ];
    (any::<Index>(), action).prop_map(|(node, action)| TomlOp { node, action })
}

fn toml_value(leaf: &TomlLeaf) -> toml::Value {
    match leaf {
        TomlLeaf::I(i) => toml::Value::Integer(*i),
        TomlLeaf::F(f) => toml::Value::Float(*f),
        TomlLeaf::Str(s) => toml::Value::String(s.clone()),
        TomlLeaf::Bool(b) => toml::Value::Boolean(*b),
        TomlLeaf::EmptyArray => toml::Value::Array(Vec::new()),
        TomlLeaf::EmptyTable => toml::Value::Table(Default::default()),
        TomlLeaf::Date => "1979-05-27T07:32:00Z"
            .parse::<toml::value::Datetime>()
            .map(toml::Value::Datetime)
            .unwrap_or(toml::Value::Boolean(false)),
    }
}

fn toml_paths(v: &toml::Value, here: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(here.clone());
    if let toml::Value::Table(t) = v {
        for (k, child) in t {
            here.push(k.clone());
            toml_paths(child, here, out);
            here.pop();
        }
    }
}

fn toml_get_mut<'a>(v: &'a mut toml::Value, p: &[String]) -> Option<&'a mut toml::Value> {
    let mut cur = v;
    for k in p {
        cur = cur.as_table_mut()?.get_mut(k)?;
    }
    Some(cur)
}

/// Applies TOML mutations to a table and returns its text and what was done.
pub fn apply_toml(table: toml::Table, ops: &[TomlOp]) -> (String, String) {
    let mut value = toml::Value::Table(table);
    let mut did = Vec::new();
    for op in ops {
        let mut paths = Vec::new();
        toml_paths(&value, &mut Vec::new(), &mut paths);
        let path = paths[op.node.index(paths.len())].clone();
        let where_ = if path.is_empty() {
            "(root)".to_string()
        } else {
            path.join(".")
        };
        match &op.action {
            TomlAction::Replace(leaf) => {
                if path.is_empty() {
                    continue;
                }
                if let Some(slot) = toml_get_mut(&mut value, &path) {
                    *slot = toml_value(leaf);
                    did.push(format!("set {where_} = {leaf:?}"));
                }
            }
            TomlAction::Delete => {
                let Some((last, parent)) = path.split_last() else {
                    continue;
                };
                if let Some(t) = toml_get_mut(&mut value, parent).and_then(|p| p.as_table_mut()) {
                    t.remove(last);
                    did.push(format!("delete {where_}"));
                }
            }
            TomlAction::AddKey(k, leaf) => {
                let mut target = path.clone();
                while !target.is_empty()
                    && !matches!(
                        toml_get_mut(&mut value, &target),
                        Some(toml::Value::Table(_))
                    )
                {
                    target.pop();
                }
                if let Some(t) = toml_get_mut(&mut value, &target).and_then(|p| p.as_table_mut()) {
                    t.insert(k.clone(), toml_value(leaf));
                    did.push(format!("add {}.{k} = {leaf:?}", target.join(".")));
                }
            }
            TomlAction::AddSection(k) => {
                if let Some(t) = value.as_table_mut() {
                    t.insert(k.clone(), toml::Value::Table(Default::default()));
                    did.push(format!("add section [{k}]"));
                }
            }
        }
    }
    let text = match value {
        toml::Value::Table(t) => toml::to_string(&t).unwrap_or_default(),
        _ => String::new(),
    };
    (text, did.join("; "))
}
