//! Chat-template inputs: small Jinja programs from a grammar (loops,
//! conditionals, macros that call themselves, string and list
//! repetition, filters that widen their input, `namespace` accumulators),
//! a few shapes known to explode (nested loops, doubling, recursion) with
//! drawn sizes, and the repository's real templates with such constructs
//! or raw byte mutations spliced in.

use std::sync::{Arc, OnceLock};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};

use crate::harness::Case;
use crate::mutate::{apply_bytes, byte_op};

/// An expression.
#[derive(Debug, Clone)]
pub enum E {
    Int(i64),
    Str(&'static str),
    Var(&'static str),
    Range(Box<E>),
    Bin(Box<E>, &'static str, Box<E>),
    Filter(Box<E>, &'static str),
    /// A call of macro `m`.
    Call(Box<E>),
    List(Vec<E>),
    Index(Box<E>, Box<E>),
}

/// A template node.
#[derive(Debug, Clone)]
pub enum N {
    Text(&'static str),
    Out(E),
    For(&'static str, E, Vec<N>, bool),
    If(E, Vec<N>, Vec<N>),
    Set(&'static str, E),
    /// `{% macro m(n) %}body{% endmacro %}` then `{{ m(arg) }}`.
    Macro(Vec<N>, E),
    /// `{% set ns = namespace(v=...) %}` then a loop updating `ns.v`.
    Accumulate(E, E),
}

const VARS: &[&str] = &[
    "messages",
    "message",
    "m",
    "x",
    "n",
    "loop.index",
    "loop.length",
    "bos_token",
    "eos_token",
    "add_generation_prompt",
    "ns.v",
    "messages[0]['content']",
    "message['role']",
    "undefined_thing",
];

const STRINGS: &[&str] = &["a", "ab", "", "<s>", "{{", "%}", "\\n", "é", "x y"];

const FILTERS: &[&str] = &[
    "length",
    "upper",
    "lower",
    "title",
    "trim",
    "list",
    "join",
    "join(', ')",
    "tojson",
    "tojson(indent=4)",
    "string",
    "reverse",
    "sort",
    "unique",
    "first",
    "last",
    "int",
    "float",
    "abs",
    "items",
    "batch(2)",
    "slice(3)",
    "replace('a', 'aaaaaaaaaa')",
    "center(100000000)",
    "indent(1000000)",
    "wordcount",
    "default('d')",
    "safe",
    "map('upper')",
    "selectattr('role')",
    "select",
    "sum",
    "max",
    "min",
    "round",
    "capitalize",
    "split",
    "split('a')",
    "format(1, 2)",
    "dictsort",
];

const OPS: &[&str] = &[
    "+", "-", "*", "/", "//", "%", "**", "~", "==", "<", "and", "or", "in",
];

fn int() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => -2i64..12,
        2 => select(&[100i64, 1000, 10_000, 100_000, 1_000_000, 1 << 31, 1 << 40, i64::MAX, i64::MIN, -1_000_000][..]),
    ]
}

fn expr() -> impl Strategy<Value = E> {
    let leaf = prop_oneof![
        3 => int().prop_map(E::Int),
        2 => select(STRINGS).prop_map(E::Str),
        3 => select(VARS).prop_map(E::Var),
    ];
    leaf.prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            2 => inner.clone().prop_map(|e| E::Range(Box::new(e))),
            4 => (inner.clone(), select(OPS), inner.clone())
                .prop_map(|(a, op, b)| E::Bin(Box::new(a), op, Box::new(b))),
            3 => (inner.clone(), select(FILTERS)).prop_map(|(e, f)| E::Filter(Box::new(e), f)),
            1 => inner.clone().prop_map(|e| E::Call(Box::new(e))),
            1 => vec(inner.clone(), 0..4).prop_map(E::List),
            1 => (inner.clone(), inner).prop_map(|(a, b)| E::Index(Box::new(a), Box::new(b))),
        ]
    })
}

fn nodes() -> impl Strategy<Value = Vec<N>> {
    let leaf = prop_oneof![
        2 => select(&["hi", "\n", " ", "<|user|>", "{", "}"][..]).prop_map(N::Text),
        3 => expr().prop_map(N::Out),
        1 => (select(&["x", "n", "m"][..]), expr()).prop_map(|(v, e)| N::Set(v, e)),
    ];
    let node = leaf.prop_recursive(4, 32, 4, |inner| {
        let body = vec(inner.clone(), 0..4);
        prop_oneof![
            3 => (select(&["x", "m", "message", "n"][..]), expr(), body.clone(), prop::bool::weighted(0.1))
                .prop_map(|(v, e, b, rec)| N::For(v, e, b, rec)),
            2 => (expr(), body.clone(), body.clone()).prop_map(|(c, a, b)| N::If(c, a, b)),
            1 => (body, expr()).prop_map(|(b, e)| N::Macro(b, e)),
            1 => (expr(), expr()).prop_map(|(init, step)| N::Accumulate(init, step)),
        ]
    });
    vec(node, 1..6)
}

impl E {
    fn render(&self) -> String {
        match self {
            E::Int(i) => i.to_string(),
            E::Str(s) => format!("'{s}'"),
            E::Var(v) => (*v).to_string(),
            E::Range(e) => format!("range({})", e.render()),
            E::Bin(a, op, b) => format!("({} {op} {})", a.render(), b.render()),
            E::Filter(e, f) => format!("({})|{f}", e.render()),
            E::Call(e) => format!("m({})", e.render()),
            E::List(items) => format!(
                "[{}]",
                items.iter().map(E::render).collect::<Vec<_>>().join(", ")
            ),
            E::Index(a, b) => format!("({})[{}]", a.render(), b.render()),
        }
    }
}

fn render(nodes: &[N]) -> String {
    nodes.iter().map(N::render).collect()
}

impl N {
    fn render(&self) -> String {
        match self {
            N::Text(t) => (*t).to_string(),
            N::Out(e) => format!("{{{{ {} }}}}", e.render()),
            N::For(v, e, body, recursive) => {
                let rec = if *recursive { " recursive" } else { "" };
                let inner = render(body);
                let inner = if *recursive {
                    format!("{inner}{{{{ loop({v}) }}}}")
                } else {
                    inner
                };
                format!("{{% for {v} in {}{rec} %}}{inner}{{% endfor %}}", e.render())
            }
            N::If(c, a, b) => format!(
                "{{% if {} %}}{}{{% else %}}{}{{% endif %}}",
                c.render(),
                render(a),
                render(b)
            ),
            N::Set(v, e) => format!("{{% set {v} = {} %}}", e.render()),
            N::Macro(body, arg) => format!(
                "{{% macro m(n) %}}{}{{% endmacro %}}{{{{ m({}) }}}}",
                render(body),
                arg.render()
            ),
            N::Accumulate(init, step) => format!(
                "{{% set ns = namespace(v={}) %}}{{% for i in range(20) %}}{{% set ns.v = ns.v ~ {} %}}{{% endfor %}}{{{{ ns.v|length }}}}",
                init.render(),
                step.render()
            ),
        }
    }
}

/// Shapes known to be expensive, with drawn sizes.
#[derive(Debug, Clone)]
pub enum Shape {
    NestedLoops(u32, u64),
    SelfRecursion,
    DoublingRecursion(u32),
    StringTimes(u64, u64),
    Doubling(u32),
    BigRange(u64),
    ReplaceChain(u32),
    MessagesTimes(u64),
    RecursiveLoop,
    Pow(u64, u64),
    WideFilter(&'static str),
    DeepNesting(u32),
}

fn shape() -> impl Strategy<Value = Shape> {
    let big = select(&[10u64, 100, 1000, 10_000, 100_000, 1_000_000, 1 << 31][..]);
    prop_oneof![
        3 => (2u32..5, big.clone()).prop_map(|(d, n)| Shape::NestedLoops(d, n)),
        1 => Just(Shape::SelfRecursion),
        1 => (10u32..64).prop_map(Shape::DoublingRecursion),
        2 => (big.clone(), big.clone()).prop_map(|(a, b)| Shape::StringTimes(a, b)),
        // past ~26 doublings a render meets its memory budget (`mem_budget`)
        2 => (10u32..64).prop_map(Shape::Doubling),
        1 => big.clone().prop_map(Shape::BigRange),
        1 => (2u32..8).prop_map(Shape::ReplaceChain),
        1 => big.clone().prop_map(Shape::MessagesTimes),
        1 => Just(Shape::RecursiveLoop),
        1 => (big.clone(), big).prop_map(|(a, b)| Shape::Pow(a, b)),
        1 => select(&["center(2000000000)", "indent(2000000000)", "tojson(indent=100000000)", "batch(1000000000)", "wordwrap(1)", "truncate(1000000000)"][..])
            .prop_map(Shape::WideFilter),
        1 => prop_oneof![Just(100u32), Just(1000), Just(10_000)].prop_map(Shape::DeepNesting),
    ]
}

impl Shape {
    fn render(&self) -> String {
        match self {
            Shape::NestedLoops(depth, n) => {
                let mut s = String::new();
                for d in 0..*depth {
                    s.push_str(&format!("{{% for i{d} in range({n}) %}}"));
                }
                s.push('.');
                for _ in 0..*depth {
                    s.push_str("{% endfor %}");
                }
                s
            }
            Shape::SelfRecursion => "{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}".into(),
            Shape::DoublingRecursion(n) => format!(
                "{{% macro m(n) %}}{{% if n > 0 %}}{{{{ m(n - 1) }}}}{{{{ m(n - 1) }}}}{{% else %}}x{{% endif %}}{{% endmacro %}}{{{{ m({n}) }}}}"
            ),
            Shape::StringTimes(a, b) => format!("{{{{ ('ab' * {a}) * {b} }}}}"),
            Shape::Doubling(n) => format!(
                "{{% set ns = namespace(s='ab') %}}{{% for i in range({n}) %}}{{% set ns.s = ns.s ~ ns.s %}}{{% endfor %}}{{{{ ns.s|length }}}}"
            ),
            Shape::BigRange(n) => format!("{{{{ range({n})|list|length }}}}{{{{ range({n})|join(',') }}}}"),
            Shape::ReplaceChain(k) => {
                let mut e = "('a' * 1000)".to_string();
                for _ in 0..*k {
                    e = format!("({e})|replace('a', 'aaaaaaaaaa')");
                }
                format!("{{{{ ({e})|length }}}}")
            }
            Shape::MessagesTimes(n) => format!(
                "{{% for m in messages * {n} %}}{{{{ m['content'] }}}}{{% endfor %}}"
            ),
            Shape::RecursiveLoop => {
                "{% for m in messages recursive %}{{ loop(messages) }}{% endfor %}".into()
            }
            Shape::Pow(a, b) => format!("{{{{ {a} ** {b} }}}}{{{{ ({a} ** {b}) * 'x' }}}}"),
            Shape::WideFilter(f) => format!("{{{{ messages|{f} }}}}{{{{ 'x'|{f} }}}}"),
            Shape::DeepNesting(n) => {
                let mut s = String::new();
                for _ in 0..*n {
                    s.push_str("{% if true %}");
                }
                s.push('x');
                for _ in 0..*n {
                    s.push_str("{% endif %}");
                }
                s.push_str(&"(".repeat(*n as usize));
                s
            }
        }
    }
}

/// The repository's chat templates.
pub fn real_templates() -> Arc<Vec<(String, String)>> {
    static T: OnceLock<Arc<Vec<(String, String)>>> = OnceLock::new();
    T.get_or_init(|| {
        let root = crate::repo_root();
        let mut out = Vec::new();
        for rel in [
            "models/glimpse-easy-vqa/chat_template.jinja",
            "fixtures/decoders/llama-gqa-tied/chat_template.jinja",
            "fixtures/decoders/qwen2/chat_template.jinja",
            "fixtures/llava/siglip-qwen2/chat_template.jinja",
            "fixtures/llava/clip-llama-multilayer/chat_template.jinja",
        ] {
            if let Ok(t) = std::fs::read_to_string(root.join(rel)) {
                out.push((rel.to_string(), t));
            }
        }
        Arc::new(out)
    })
    .clone()
}

pub fn seed_cases() -> Vec<Case> {
    real_templates()
        .iter()
        .map(|(n, t)| Case::new(t.clone(), n.clone()))
        .collect()
}

/// Chat-template inputs.
pub fn strategy() -> BoxedStrategy<Case> {
    let real = real_templates();
    let real2 = real.clone();
    prop_oneof![
        4 => nodes().prop_map(|n| {
            let t = render(&n);
            Case::new(t.clone(), "grammar")
        }),
        3 => shape().prop_map(|s| Case::new(s.render(), format!("{s:?}"))),
        2 => (any::<Index>(), any::<Index>(), prop_oneof![shape().prop_map(|s| s.render()), nodes().prop_map(|n| render(&n))])
            .prop_map(move |(which, at, insert)| {
                let (name, t) = &real[which.index(real.len())];
                // Splice at a char boundary.
                let mut pos = at.index(t.len() + 1);
                while !t.is_char_boundary(pos) {
                    pos -= 1;
                }
                let out = format!("{}{insert}{}", &t[..pos], &t[pos..]);
                Case::new(out, format!("{name} with a construct spliced in at byte {pos}"))
            }),
        1 => (any::<Index>(), vec(byte_op(), 1..4)).prop_map(move |(which, ops)| {
            let (name, t) = &real2[which.index(real2.len())];
            let mut b = t.as_bytes().to_vec();
            let did = apply_bytes(&mut b, &ops);
            Case::new(b, format!("{name}: {did}"))
        }),
    ]
    .boxed()
}
