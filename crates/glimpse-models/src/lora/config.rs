//! PEFT's `adapter_config.json` for LoRA (peft 0.21 field names), read
//! strictly: a feature glimpse does not implement (DoRA, biases, per-module
//! ranks, layer selection, replaced modules...) is refused by its field
//! rather than ignored, because ignoring it would give other numbers than
//! PEFT does.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::error::{ConfigError, ModelError, Result};

/// Rank bound: released adapters use 4..256; 4096 is past any of them and
/// keeps `r · (in + out)` far from overflow.
pub const MAX_RANK: usize = 4096;

/// Which linear layers get an adapter, as PEFT's `target_modules` says.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetModules {
    /// A module is targeted when its name equals an entry or ends with
    /// `.entry` (PEFT's list rule: `q_proj`, `self_attn.q_proj`).
    Names(Vec<String>),
    /// A module is targeted when the pattern matches its whole name
    /// (PEFT's `re.fullmatch`). Rust's regex syntax: no look-around or
    /// back-references.
    Regex(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    /// Dropout on the adapter's input while training (0 ≤ p < 1).
    pub lora_dropout: f32,
    pub target_modules: TargetModules,
    /// Scale `alpha / sqrt(r)` (rank-stabilised, Kalajdzievski 2023)
    /// instead of `alpha / r`.
    pub use_rslora: bool,
    pub base_model_name_or_path: Option<String>,
    /// PEFT's task (`CAUSAL_LM`); kept for the file, unused by glimpse.
    pub task_type: Option<String>,
}

/// Fields that describe the file or how PEFT initialised weights, with no
/// effect on the numbers an adapter gives.
const METADATA: &[&str] = &[
    "auto_mapping",
    "revision",
    "inference_mode",
    "peft_version",
    "megatron_core",
    "runtime_config",
    "qalora_group_size",
    "ensure_weight_tying",
    "eva_config",
];

/// `init_lora_weights` values that only choose how A and B start. Others
/// (PiSSA, OLoRA, CorDA, LoftQ...) also rewrite the base model's weights,
/// so the adapter needs a base glimpse does not have.
const INIT_ONLY: &[&str] = &["gaussian", "orthogonal", "eva"];

impl LoraConfig {
    /// An adapter of rank `r` on `targets` (module names), no dropout,
    /// scale `alpha / r`.
    pub fn new(r: usize, lora_alpha: f64, targets: &[&str]) -> Self {
        Self {
            r,
            lora_alpha,
            lora_dropout: 0.0,
            target_modules: TargetModules::Names(targets.iter().map(|s| s.to_string()).collect()),
            use_rslora: false,
            base_model_name_or_path: None,
            task_type: Some("CAUSAL_LM".into()),
        }
    }

    /// What the adapter's product is multiplied by: `alpha / r`, or
    /// `alpha / sqrt(r)` with `use_rslora`.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// The bounds every config meets, whether read or built by a recipe.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        crate::limits::size("r", self.r, MAX_RANK)?;
        if !self.lora_alpha.is_finite() {
            return Err(ConfigError::new(
                "lora_alpha",
                format!("is {}; it must be a finite number", self.lora_alpha),
            ));
        }
        if !(self.lora_dropout.is_finite() && (0.0..1.0).contains(&self.lora_dropout)) {
            return Err(ConfigError::new(
                "lora_dropout",
                format!("is {}; it must be in [0, 1)", self.lora_dropout),
            ));
        }
        match &self.target_modules {
            TargetModules::Names(names) if names.is_empty() => Err(ConfigError::new(
                "target_modules",
                "is empty; name the linear layers to adapt (q_proj, v_proj...)",
            )),
            TargetModules::Names(names) => match names.iter().find(|n| n.is_empty()) {
                Some(_) => Err(ConfigError::new("target_modules", "holds an empty name")),
                None => Ok(()),
            },
            TargetModules::Regex(pattern) => compile(pattern).map(|_| ()),
        }
    }

    /// Reads `adapter_config.json` (a regular file under the config cap).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = ModelError::read_config(path)?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::config(path, format!("invalid JSON: {e}")))?;
        Self::from_json(&value).map_err(|e| e.at(path))
    }

    /// Parses PEFT's JSON; every field glimpse cannot honour is named.
    pub fn from_json(value: &Value) -> std::result::Result<Self, ConfigError> {
        let obj = value
            .as_object()
            .ok_or_else(|| ConfigError::new("(top level)", "is not a JSON object"))?;
        match obj.get("peft_type").and_then(Value::as_str) {
            Some("LORA") => {}
            Some(other) => {
                return Err(ConfigError::new(
                    "peft_type",
                    format!("is \"{other}\"; glimpse loads LORA adapters only"),
                ))
            }
            None => {
                return Err(ConfigError::new(
                    "peft_type",
                    "is missing; a PEFT LoRA adapter says \"LORA\"",
                ))
            }
        }
        let mut cfg = Self::new(8, 8.0, &["q_proj", "v_proj"]);
        cfg.task_type = None;
        for (field, v) in obj {
            let field = field.as_str();
            match field {
                "peft_type" => {}
                "r" => cfg.r = uint(field, v)?,
                "lora_alpha" => cfg.lora_alpha = number(field, v)?,
                "lora_dropout" => cfg.lora_dropout = number(field, v)? as f32,
                "use_rslora" => cfg.use_rslora = boolean(field, v)?,
                "target_modules" => cfg.target_modules = targets(v)?,
                "base_model_name_or_path" => cfg.base_model_name_or_path = opt_string(field, v)?,
                "task_type" => cfg.task_type = opt_string(field, v)?,
                "bias" => match v {
                    Value::Null => {}
                    Value::String(s) if s == "none" => {}
                    _ => return Err(unsupported(field, v, "trained biases (only \"none\")")),
                },
                "init_lora_weights" => match v {
                    Value::Bool(_) | Value::Null => {}
                    Value::String(s) if INIT_ONLY.contains(&s.as_str()) => {}
                    _ => {
                        return Err(unsupported(
                            field,
                            v,
                            "an initialisation that rewrites the base model's weights",
                        ))
                    }
                },
                // PEFT's dropout on fan_in_fan_out (Conv1D) layers, DoRA,
                // a bias on lora_B, QA-LoRA: all change the forward pass.
                "fan_in_fan_out" | "use_dora" | "lora_bias" | "use_qalora" => {
                    if boolean(field, v)? {
                        return Err(unsupported(field, v, "this variant of LoRA"));
                    }
                }
                "modules_to_save" => {
                    if !neutral(v) {
                        return Err(unsupported(
                            field,
                            v,
                            "modules trained in full beside the adapter",
                        ));
                    }
                }
                f if METADATA.contains(&f) => {}
                // Everything else (known: rank_pattern, alpha_pattern,
                // layers_to_transform, layers_pattern, exclude_modules,
                // layer_replication, target_parameters,
                // trainable_token_indices, loftq_config, megatron_config,
                // alora_invocation_tokens, arrow_config, corda_config...;
                // or from a later PEFT) is accepted only when unset.
                _ => {
                    if !neutral(v) {
                        return Err(unsupported(field, v, "this PEFT feature"));
                    }
                }
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// PEFT's `adapter_config.json` for this config: every field peft
    /// 0.21 writes, the unsupported features at their off values, so
    /// `PeftModel.from_pretrained` loads it as is.
    pub fn to_json(&self) -> Value {
        let alpha = if self.lora_alpha.fract() == 0.0 && self.lora_alpha.abs() < 1e15 {
            json!(self.lora_alpha as i64)
        } else {
            json!(self.lora_alpha)
        };
        let targets = match &self.target_modules {
            TargetModules::Names(n) => json!(n),
            TargetModules::Regex(p) => json!(p),
        };
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        put("alora_invocation_tokens", Value::Null);
        put("alpha_pattern", json!({}));
        put("arrow_config", Value::Null);
        put("auto_mapping", Value::Null);
        put(
            "base_model_name_or_path",
            json!(self.base_model_name_or_path),
        );
        put("bias", json!("none"));
        put("corda_config", Value::Null);
        put("ensure_weight_tying", json!(false));
        put("eva_config", Value::Null);
        put("exclude_modules", Value::Null);
        put("fan_in_fan_out", json!(false));
        put("inference_mode", json!(true));
        put("init_lora_weights", json!(true));
        put("layer_replication", Value::Null);
        put("layers_pattern", Value::Null);
        put("layers_to_transform", Value::Null);
        put("loftq_config", json!({}));
        put("lora_alpha", alpha);
        put("lora_bias", json!(false));
        put("lora_dropout", json!(self.lora_dropout as f64));
        put("megatron_config", Value::Null);
        put("megatron_core", json!("megatron.core"));
        put("modules_to_save", Value::Null);
        put("peft_type", json!("LORA"));
        put("peft_version", json!("0.21.2"));
        put("r", json!(self.r));
        put("rank_pattern", json!({}));
        put("revision", Value::Null);
        put("target_modules", targets);
        put("target_parameters", Value::Null);
        put("task_type", json!(self.task_type));
        put("trainable_token_indices", Value::Null);
        put("use_dora", json!(false));
        put("use_qalora", json!(false));
        put("use_rslora", json!(self.use_rslora));
        Value::Object(m)
    }

    /// A matcher over module names for [`Self::target_modules`].
    pub fn matcher(&self) -> std::result::Result<TargetMatcher, ConfigError> {
        Ok(match &self.target_modules {
            TargetModules::Names(n) => TargetMatcher::Names(n.clone()),
            TargetModules::Regex(p) => TargetMatcher::Regex(p.clone(), compile(p)?),
        })
    }
}

/// [`TargetModules`] ready to test names.
#[derive(Debug, Clone)]
pub enum TargetMatcher {
    Names(Vec<String>),
    /// The pattern as written, and compiled anchored.
    Regex(String, regex::Regex),
}

impl TargetMatcher {
    /// Whether `module` (its full dotted name) is a target.
    pub fn matches(&self, module: &str) -> bool {
        match self {
            Self::Names(names) => names.iter().any(|t| name_matches(module, t)),
            Self::Regex(_, re) => re.is_match(module),
        }
    }

    /// Which list entries match `module` (for the "matches nothing" check).
    pub(crate) fn entries_matching<'a>(&'a self, module: &'a str) -> Vec<&'a str> {
        match self {
            Self::Names(names) => names
                .iter()
                .filter(|t| name_matches(module, t))
                .map(String::as_str)
                .collect(),
            Self::Regex(p, re) if re.is_match(module) => vec![p.as_str()],
            Self::Regex(..) => Vec::new(),
        }
    }

    /// Every list entry, or the pattern.
    pub(crate) fn entries(&self) -> Vec<&str> {
        match self {
            Self::Names(names) => names.iter().map(String::as_str).collect(),
            Self::Regex(p, _) => vec![p.as_str()],
        }
    }
}

/// PEFT's list rule: the whole name, or its last dotted components.
fn name_matches(module: &str, target: &str) -> bool {
    module == target
        || module
            .strip_suffix(target)
            .is_some_and(|head| head.ends_with('.'))
}

/// PEFT's `re.fullmatch` as an anchored Rust regex.
fn compile(pattern: &str) -> std::result::Result<regex::Regex, ConfigError> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| {
            ConfigError::new(
                "target_modules",
                format!("\"{pattern}\" is not a regular expression glimpse can run ({e}); give a list of module names"),
            )
        })
}

fn targets(v: &Value) -> std::result::Result<TargetModules, ConfigError> {
    match v {
        Value::String(s) => Ok(TargetModules::Regex(s.clone())),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str().map(str::to_string).ok_or_else(|| {
                    ConfigError::new("target_modules", format!("holds {i}, not a module name"))
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(TargetModules::Names),
        Value::Null => Err(ConfigError::new(
            "target_modules",
            "is null; name the adapted modules (PEFT fills them in when it saves)",
        )),
        other => Err(ConfigError::new(
            "target_modules",
            format!("is {other}; expected a list of module names or a regular expression"),
        )),
    }
}

/// Unset: null, false, 0, "", [] or {}.
fn neutral(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Bool(true) => false,
    }
}

fn unsupported(field: &str, v: &Value, what: &str) -> ConfigError {
    let mut shown = v.to_string();
    if shown.len() > 80 {
        let mut end = 77;
        while !shown.is_char_boundary(end) {
            end -= 1;
        }
        shown.truncate(end);
        shown.push_str("...");
    }
    ConfigError::new(
        field,
        format!("is {shown}: glimpse does not support {what}"),
    )
}

fn uint(field: &str, v: &Value) -> std::result::Result<usize, ConfigError> {
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| ConfigError::new(field, format!("is {v}; expected a whole number")))
}

fn number(field: &str, v: &Value) -> std::result::Result<f64, ConfigError> {
    v.as_f64()
        .ok_or_else(|| ConfigError::new(field, format!("is {v}; expected a number")))
}

fn boolean(field: &str, v: &Value) -> std::result::Result<bool, ConfigError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Null => Ok(false),
        _ => Err(ConfigError::new(
            field,
            format!("is {v}; expected true or false"),
        )),
    }
}

fn opt_string(field: &str, v: &Value) -> std::result::Result<Option<String>, ConfigError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(ConfigError::new(
            field,
            format!("is {v}; expected a string"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]})
    }

    fn with(field: &str, v: Value) -> std::result::Result<LoraConfig, ConfigError> {
        let mut b = base();
        b[field] = v;
        LoraConfig::from_json(&b)
    }

    #[test]
    fn list_targets_match_whole_dotted_components() {
        let m = TargetMatcher::Names(vec!["q_proj".into(), "mlp.up_proj".into()]);
        assert!(m.matches("model.layers.0.self_attn.q_proj"));
        assert!(m.matches("q_proj"));
        assert!(!m.matches("model.layers.0.self_attn.xq_proj"));
        assert!(m.matches("model.layers.3.mlp.up_proj"));
        assert!(!m.matches("model.layers.3.xmlp.up_proj"));
    }

    #[test]
    fn a_regex_must_match_the_whole_name() {
        let cfg = with(
            "target_modules",
            json!(r"model\.layers\.\d+\.self_attn\.(q|v)_proj"),
        )
        .unwrap();
        let m = cfg.matcher().unwrap();
        assert!(m.matches("model.layers.12.self_attn.v_proj"));
        assert!(!m.matches("model.layers.12.self_attn.v_proj.x"));
        assert!(!m.matches("x.model.layers.12.self_attn.v_proj"));
        let e = with("target_modules", json!("(?<=a)b")).unwrap_err();
        assert_eq!(e.field, "target_modules");
    }

    #[test]
    fn scale_follows_rslora() {
        let mut cfg = with("use_rslora", json!(false)).unwrap();
        assert_eq!(cfg.scale(), 2.0);
        cfg.use_rslora = true;
        assert_eq!(cfg.scale(), 4.0);
    }

    #[test]
    fn unsupported_fields_are_named() {
        for (field, v) in [
            ("use_dora", json!(true)),
            ("bias", json!("all")),
            ("fan_in_fan_out", json!(true)),
            ("modules_to_save", json!(["multi_modal_projector"])),
            ("rank_pattern", json!({"q_proj": 8})),
            ("layers_to_transform", json!([0])),
            ("init_lora_weights", json!("pissa")),
            ("some_future_feature", json!({"on": true})),
            ("r", json!(0)),
            ("r", json!(5000)),
            ("lora_dropout", json!(1.0)),
            ("target_modules", json!([])),
            ("peft_type", json!("IA3")),
        ] {
            let e = with(field, v.clone()).unwrap_err();
            assert_eq!(e.field, field, "{field} = {v}: {e}");
        }
        // Unset features and metadata are fine.
        for (field, v) in [
            ("some_future_feature", Value::Null),
            ("modules_to_save", Value::Null),
            (
                "auto_mapping",
                json!({"base_model_class": "LlamaForCausalLM"}),
            ),
            ("init_lora_weights", json!("gaussian")),
        ] {
            with(field, v).unwrap();
        }
    }

    #[test]
    fn written_config_reads_back() {
        let mut cfg = LoraConfig::new(16, 32.0, &["q_proj", "v_proj"]);
        cfg.lora_dropout = 0.05;
        cfg.use_rslora = true;
        cfg.base_model_name_or_path = Some("../base".into());
        let back = LoraConfig::from_json(&cfg.to_json()).unwrap();
        assert_eq!(back, cfg);
    }
}
