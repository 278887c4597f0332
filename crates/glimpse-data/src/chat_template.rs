//! A model's Jinja `chat_template`, rendered as transformers'
//! `apply_chat_template(conversation, tokenize=False, add_generation_prompt=..)`
//! does (`utils/chat_template_utils.py`): jinja2 with `trim_blocks`,
//! `lstrip_blocks` and loop controls, its own `tojson`, `raise_exception` and
//! `strftime_now`, Python's string and dict methods, and the special tokens
//! of `tokenizer_config.json` as variables.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use minijinja::{AutoEscape, Environment, Error, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::error::{one_line, DataError, Result};
use crate::files::{exists, read_bounded_text, MAX_CONFIG_BYTES};
use crate::jinja_compat;
use crate::mem_budget::{run_bounded, BoundedError};

/// Template operations one render may take (minijinja's fuel: about one
/// per instruction). The templates of the fixtures and the shipped model
/// take 23 to 44 per message, so a conversation of a thousand messages
/// uses under 1% of this (tests/hostile_inputs.rs renders one on 1%); a
/// loop nested in a loop, which minijinja's own 100000-item cap on `range`
/// does not stop, ends here in about a third of a second.
pub const RENDER_FUEL: u64 = 10_000_000;

/// Most bytes one render may write: a prompt past any context window
/// glimpse serves (a million tokens is about 4 MiB of text).
pub const MAX_RENDER_BYTES: usize = 16 << 20;

/// Most heap one render may hold (`mem_budget`): the output cap four times
/// over and more. minijinja bounds neither `~` nor `+`, so without it a
/// template that doubles a string forty times asks for a terabyte.
pub const MAX_RENDER_MEMORY: usize = 128 << 20;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The special tokens a template sees as `bos_token`, `eos_token`,
/// `unk_token` and `pad_token`; an absent one is undefined there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub unk_token: Option<String>,
    pub pad_token: Option<String>,
}

impl SpecialTokens {
    fn pairs(&self) -> [(&'static str, &Option<String>); 4] {
        [
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
            ("unk_token", &self.unk_token),
            ("pad_token", &self.pad_token),
        ]
    }
}

/// Name of the one template in each environment; errors cite its lines.
const TEMPLATE: &str = "chat_template";

/// A compiled chat template with the special tokens it renders with.
pub struct ChatTemplate {
    /// Shared with the thread each render runs on.
    env: Arc<Environment<'static>>,
    /// The file it came from, or `chat_template` (for errors).
    name: String,
    special: SpecialTokens,
    /// Set once a render passed [`MAX_RENDER_MEMORY`]: its thread stays
    /// parked holding that memory, so later renders are refused at once
    /// rather than park another.
    poisoned: AtomicBool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("name", &self.name)
            .field("special", &self.special)
            .finish_non_exhaustive()
    }
}

/// The error `raise_exception(msg)` carries, found again after rendering.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

fn raise_exception(msg: Value) -> std::result::Result<Value, Error> {
    let msg = msg
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| msg.to_string());
    Err(Error::new(ErrorKind::InvalidOperation, msg.clone()).with_source(Raised(msg)))
}

fn strftime_now(format: String) -> std::result::Result<String, Error> {
    jinja_compat::strftime_now(&format)
}

impl ChatTemplate {
    /// Compiles `source` once; a template jinja cannot parse is an error
    /// naming the line.
    pub fn new(source: &str, special_tokens: SpecialTokens) -> Result<Self> {
        Self::named(TEMPLATE, source, special_tokens)
    }

    fn named(name: &str, source: &str, special: SpecialTokens) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // jinja2 drops one trailing newline of the source, as minijinja does
        // unless told to keep it.
        env.set_keep_trailing_newline(false);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        // templates come with downloaded models: bound their work
        env.set_fuel(Some(RENDER_FUEL));
        env.set_formatter(jinja_compat::py_formatter);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", jinja_compat::tojson);
        env.add_filter("indent", jinja_compat::indent);
        env.add_filter("batch", jinja_compat::batch);
        env.add_filter("replace", jinja_compat::replace);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE, rewrite_generation_tags(source))
            .map_err(|e| DataError::ChatTemplate {
                name: name.to_string(),
                msg: one_line(format!("cannot compile: {e}")),
            })?;
        Ok(Self {
            env: Arc::new(env),
            name: name.to_string(),
            special,
            poisoned: AtomicBool::new(false),
        })
    }

    /// The same template under another operation budget than
    /// [`RENDER_FUEL`] (a server may want a tighter one).
    pub fn with_fuel(mut self, fuel: u64) -> Self {
        Arc::make_mut(&mut self.env).set_fuel(Some(fuel));
        self
    }

    /// The template's jinja source as compiled (transformers'
    /// `{% generation %}` markers already rewritten to plain blocks), for a
    /// trainer that writes it into the model it exports.
    pub fn source(&self) -> Result<String> {
        let template = self.env.get_template(TEMPLATE).map_err(|e| self.err(e))?;
        Ok(template.source().to_string())
    }

    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// The conversation as the model reads it, with the assistant header
    /// appended when `add_generation_prompt`.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt)
    }

    /// [`ChatTemplate::render`] for messages of any serialisable shape (a
    /// `serde_json::Value` list with content parts or tool calls, say).
    pub fn render_with<M: Serialize + ?Sized>(
        &self,
        messages: &M,
        add_generation_prompt: bool,
    ) -> Result<String> {
        if self.poisoned.load(Ordering::Relaxed) {
            return Err(self.over_memory());
        }
        // transformers passes `tools` and `documents` as None when absent.
        let mut ctx: Vec<(&str, Value)> = vec![
            ("messages", Value::from_serialize(messages)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("tools", Value::from(())),
            ("documents", Value::from(())),
        ];
        for (key, token) in self.special.pairs() {
            if let Some(token) = token {
                ctx.push((key, Value::from(token.as_str())));
            }
        }
        let ctx: Value = ctx.into_iter().collect();
        // On a thread of its own under the memory budget (`mem_budget`).
        let env = Arc::clone(&self.env);
        let rendered = run_bounded(MAX_RENDER_MEMORY, move || {
            let mut out = CappedWriter::default();
            let result = env
                .get_template(TEMPLATE)
                .and_then(|t| t.render_captured_to(ctx, &mut out).map(|_| ()));
            (result, out)
        });
        let (result, out) = match rendered {
            Ok(done) => done,
            Err(BoundedError::OverBudget { .. }) => {
                self.poisoned.store(true, Ordering::Relaxed);
                return Err(self.over_memory());
            }
            Err(e) => return Err(self.msg(e)),
        };
        match result {
            Ok(()) => {}
            Err(_) if out.over => {
                return Err(self.msg(format!(
                    "output exceeds {} MiB (a loop without bound?)",
                    MAX_RENDER_BYTES >> 20
                )))
            }
            Err(e) => return Err(self.err(e)),
        }
        String::from_utf8(out.buf).map_err(|_| self.msg("output is not UTF-8"))
    }

    fn over_memory(&self) -> DataError {
        self.msg(format!(
            "rendering needs more than {} MiB of memory (a string doubled in a loop?)",
            MAX_RENDER_MEMORY >> 20
        ))
    }

    fn msg(&self, msg: impl std::fmt::Display) -> DataError {
        DataError::ChatTemplate {
            name: self.name.clone(),
            msg: one_line(msg),
        }
    }

    fn err(&self, e: Error) -> DataError {
        if e.kind() == ErrorKind::OutOfFuel {
            return self.msg(format!(
                "rendering takes more than {} operations (a loop without bound?)",
                self.env.fuel().unwrap_or(RENDER_FUEL)
            ));
        }
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(c) = cause {
            if let Some(raised) = c.downcast_ref::<Raised>() {
                return self.msg(format!("raise_exception: {raised}"));
            }
            cause = c.source();
        }
        self.msg(e)
    }

    /// The template of a transformers model folder: `chat_template.jinja`,
    /// else `tokenizer_config.json`'s `chat_template` (a string, or a list
    /// of `{name, template}` of which "default" is taken), else a
    /// processor's `chat_template.json`; `None` when there is none. Special
    /// tokens come from `tokenizer_config.json`, else `special_tokens_map.json`.
    pub fn from_model_dir(dir: &Path) -> Result<Option<Self>> {
        let config_path = dir.join("tokenizer_config.json");
        let config = read_json(&config_path)?;
        let mut special = match &config {
            Some(c) => special_tokens_from(c, &config_path)?,
            None => SpecialTokens::default(),
        };
        let map_path = dir.join("special_tokens_map.json");
        if let Some(map) = read_json(&map_path)? {
            let from_map = special_tokens_from(&map, &map_path)?;
            special.bos_token = special.bos_token.or(from_map.bos_token);
            special.eos_token = special.eos_token.or(from_map.eos_token);
            special.unk_token = special.unk_token.or(from_map.unk_token);
            special.pad_token = special.pad_token.or(from_map.pad_token);
        }

        let jinja_path = dir.join("chat_template.jinja");
        if exists(&jinja_path) {
            let source = read_bounded_text(&jinja_path, MAX_CONFIG_BYTES, "chat template")
                .map_err(|e| DataError::ChatTemplate {
                    name: jinja_path.display().to_string(),
                    msg: one_line(e),
                })?;
            return Self::named(&jinja_path.display().to_string(), &source, special).map(Some);
        }
        if let Some(config) = &config {
            if let Some(source) = template_from_config(config, &config_path)? {
                return Self::named(&config_path.display().to_string(), &source, special).map(Some);
            }
        }
        let processor_path = dir.join("chat_template.json");
        if let Some(processor) = read_json(&processor_path)? {
            if let Some(source) = template_from_config(&processor, &processor_path)? {
                return Self::named(&processor_path.display().to_string(), &source, special)
                    .map(Some);
            }
        }
        Ok(None)
    }
}

/// An optional JSON file of a model folder: `None` when nothing is there;
/// anything else there must be a regular file under the config cap.
fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if !exists(path) {
        return Ok(None);
    }
    let err = |msg: String| DataError::ChatTemplate {
        name: path.display().to_string(),
        msg: one_line(msg),
    };
    let text =
        read_bounded_text(path, MAX_CONFIG_BYTES, "config").map_err(|e| err(e.to_string()))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| err(format!("invalid JSON: {e}")))
}

/// The render's output, refused past [`MAX_RENDER_BYTES`]; `over` tells
/// that write failure from any other.
#[derive(Default)]
struct CappedWriter {
    buf: Vec<u8>,
    over: bool,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.buf.len().saturating_add(bytes.len()) > MAX_RENDER_BYTES {
            self.over = true;
            return Err(std::io::Error::other("chat template output cap"));
        }
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `chat_template` of a config: a string, a list of `{name, template}`
/// (the "default" one), or absent/null.
fn template_from_config(config: &serde_json::Value, path: &Path) -> Result<Option<String>> {
    let err = |msg: &str| DataError::ChatTemplate {
        name: path.display().to_string(),
        msg: msg.to_string(),
    };
    match config.get("chat_template") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Array(list)) => {
            for entry in list {
                if entry.get("name").and_then(|n| n.as_str()) == Some("default") {
                    return match entry.get("template").and_then(|t| t.as_str()) {
                        Some(t) => Ok(Some(t.to_string())),
                        None => Err(err(
                            "chat_template \"default\" entry has no string \"template\"",
                        )),
                    };
                }
            }
            Err(err("chat_template list has no entry named \"default\""))
        }
        Some(_) => Err(err(
            "chat_template is neither a string nor a list of {name, template}",
        )),
    }
}

/// bos/eos/unk/pad of a tokenizer config: each a string, an AddedToken
/// object `{"content": ..}`, null or absent.
fn special_tokens_from(config: &serde_json::Value, path: &Path) -> Result<SpecialTokens> {
    let field = |key: &str| -> Result<Option<String>> {
        match config.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(obj @ serde_json::Value::Object(_)) => match obj.get("content") {
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                _ => Err(DataError::ChatTemplate {
                    name: path.display().to_string(),
                    msg: format!("{key} is an object without a string \"content\""),
                }),
            },
            Some(_) => Err(DataError::ChatTemplate {
                name: path.display().to_string(),
                msg: format!("{key} is neither a string, an AddedToken object nor null"),
            }),
        }
    };
    Ok(SpecialTokens {
        bos_token: field("bos_token")?,
        eos_token: field("eos_token")?,
        unk_token: field("unk_token")?,
        pad_token: field("pad_token")?,
    })
}

/// transformers' `{% generation %}..{% endgeneration %}` marks assistant
/// text for its token masks and otherwise renders its body; minijinja has no
/// such tag, so it becomes `{% if true %}..{% endif %}`, the same block for
/// whitespace control.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        // `%}` is looked for after the `{%`: in `{%}` they share a `%`
        let Some(end) = tag[2..].find("%}").map(|i| i + 2) else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let body = inner
            .trim_start_matches(['-', '+'])
            .trim_end_matches(['-', '+']);
        let keyword = body.trim();
        let replacement = match keyword {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(new) => {
                out.push_str("{%");
                out.push_str(&inner.replacen(keyword, new, 1));
                out.push_str("%}");
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tags_become_if_blocks() {
        assert_eq!(
            rewrite_generation_tags(
                "a{%- generation %}b{% endgeneration -%}c{% if x %}{% endif %}"
            ),
            "a{%- if true %}b{% endif -%}c{% if x %}{% endif %}"
        );
    }
}
