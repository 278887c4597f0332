//! The text side of a run: tokenizer, chat template and special ids, from
//! the run's own BPE (easy-VQA path) or a pretrained decoder. It turns a
//! conversation into token segments whose labels are the assistant's
//! tokens exactly as the chat template renders them.

use std::ops::Range;

use glimpse_data::datasets::SegmentKind;
use glimpse_data::{ChatTemplate, SpecialTokens};
use serde_json::json;
use tokenizers::Tokenizer;

use crate::error::{one_line, Result, TrainError};
use crate::recipe::SpecialIds;

/// The placeholder a training row and a prompt carry per image.
pub const IMAGE_TOKEN: &str = "<image>";
/// The placeholder a training row and a prompt carry per video.
pub const VIDEO_TOKEN: &str = "<video>";

pub type Segments = Vec<(SegmentKind, Vec<u32>)>;

/// What each `<image>` of a conversation becomes.
#[derive(Debug, Clone, Copy)]
pub enum ImageIds<'a> {
    /// The placeholder id this many times, for every image.
    Repeat(usize),
    /// Each image's own ids, in order (a tiling model: every frame's tag,
    /// then its rows' placeholders, `stages::vlm::tile_prompt_ids`). A
    /// placeholder past the list stays one id; the caller's count of
    /// images against placeholders refuses such a row.
    Each(&'a [Vec<u32>]),
}

/// Who says a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

impl Role {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

pub struct TextSide {
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    /// The template's jinja source, written into exported models.
    pub template_source: String,
    pub special: SpecialTokens,
    pub ids: SpecialIds,
    /// The `<video>` placeholder's id, when the tokenizer has it (one
    /// trained on rows with videos; see `stages::corpus::rows_text_side`).
    pub video: Option<u32>,
}

/// A jinja prelude that lets a text-only chat template (SmolLM2's, say)
/// read OpenAI-style content parts: each message whose content is a list
/// becomes one string, an `<image>` line per image part and then the text,
/// the form LLaVA's training rows have. Strings pass through unchanged, so
/// training rows render exactly as the decoder's own template renders them.
pub fn accept_content_parts(source: &str) -> String {
    const PRELUDE: &str = concat!(
        "{%- set glimpse_parts = namespace(messages=[]) -%}",
        "{%- for m in messages -%}",
        "{%- if m['content'] is string or m['content'] is none -%}",
        "{%- set glimpse_parts.messages = glimpse_parts.messages + [m] -%}",
        "{%- else -%}",
        "{%- set glimpse_text = namespace(s='') -%}",
        "{%- for p in m['content'] -%}{%- if p['type'] == 'image' -%}",
        "{%- set glimpse_text.s = glimpse_text.s + '<image>\\n' -%}",
        "{%- endif -%}{%- endfor -%}",
        "{%- for p in m['content'] -%}{%- if p['type'] == 'text' -%}",
        "{%- set glimpse_text.s = glimpse_text.s + p['text'] -%}",
        "{%- endif -%}{%- endfor -%}",
        "{%- set glimpse_parts.messages = glimpse_parts.messages + ",
        "[{'role': m['role'], 'content': glimpse_text.s}] -%}",
        "{%- endif -%}",
        "{%- endfor -%}",
        "{%- set messages = glimpse_parts.messages -%}",
    );
    if source.contains("glimpse_parts") {
        return source.to_string();
    }
    format!("{PRELUDE}{source}")
}

impl TextSide {
    /// The text side of a run that reads only data files and trains its
    /// decoder from scratch (no `[data] easy_vqa`, no `[model.decoder]
    /// from`): glimpse's chat template, and a byte-level BPE of
    /// `vocab_size` trained on the rows' conversations as that template
    /// renders them, `<video>` among its special tokens beside `<image>`.
    /// A resumed run reads its `tokenizer_path` again (same ids).
    /// `extra_specials` (a tiling recipe's tile tags) join the special
    /// tokens after `<video>`.
    pub fn trained_on_rows(
        rows: &[&crate::stages::rows::Row],
        vocab_size: usize,
        tokenizer_path: &std::path::Path,
        extra_specials: &[String],
    ) -> Result<Self> {
        use crate::stages::corpus::{BOS, CHAT_TEMPLATE, EOS, IMAGE, PAD, VIDEO};
        let io = |e: &dyn std::fmt::Display| {
            TrainError::Io(format!("{}: {}", tokenizer_path.display(), one_line(e)))
        };
        let special = SpecialTokens {
            bos_token: Some(BOS.into()),
            eos_token: Some(EOS.into()),
            unk_token: None,
            pad_token: Some(PAD.into()),
        };
        let template = ChatTemplate::new(CHAT_TEMPLATE, special.clone())?;
        let tokenizer = if tokenizer_path.is_file() {
            Tokenizer::from_file(tokenizer_path).map_err(|e| io(&e))?
        } else {
            let mut texts = Vec::with_capacity(rows.len());
            for row in rows {
                let msgs: Vec<serde_json::Value> = row
                    .messages
                    .iter()
                    .map(|(r, c)| json!({"role": r.as_str(), "content": c}))
                    .collect();
                texts.push(template.render_with(&msgs, false)?);
            }
            // the easy-VQA tokenizer's ids 0..4 (see `Corpus`), then `<video>`
            let mut special_tokens: Vec<String> =
                [PAD, EOS, BOS, IMAGE, VIDEO].map(String::from).to_vec();
            special_tokens.extend(extra_specials.iter().cloned());
            let tok = glimpse_data::train_bpe_tokenizer(
                &texts,
                &glimpse_data::TokenizerTrainConfig {
                    vocab_size,
                    min_frequency: 1,
                    special_tokens,
                    bos_token: None,
                    lowercase: true,
                },
            )?;
            if let Some(dir) = tokenizer_path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| io(&e))?;
            }
            glimpse_data::save_tokenizer(&tok, tokenizer_path)?;
            tok
        };
        let id = |t: &str| {
            tokenizer.token_to_id(t).ok_or_else(|| {
                TrainError::Config(format!(
                    "{}: the tokenizer has no {t} token",
                    tokenizer_path.display()
                ))
            })
        };
        let ids = SpecialIds {
            vocab_size: tokenizer.get_vocab_size(true),
            pad: id(PAD)?,
            bos: id(BOS)?,
            eos: id(EOS)?,
            image: id(IMAGE)?,
        };
        let video = Some(id(VIDEO)?);
        Ok(Self {
            tokenizer,
            template,
            template_source: CHAT_TEMPLATE.to_string(),
            special,
            ids,
            video,
        })
    }

    /// Each of `tags` must be one token of the tokenizer, none of them a
    /// placeholder or special id: a tiling model's prompt announces each
    /// tile by its tag, as `glimpse ask` checks at load. `source` names
    /// the tokenizer in the error.
    pub fn check_tags(&self, tags: &[String], source: &str) -> Result<()> {
        let taken = [Some(self.ids.image), self.video, Some(self.ids.pad)];
        for tag in tags {
            let ids = self.encode(tag)?;
            match ids.as_slice() {
                [id] if !taken.contains(&Some(*id)) => {}
                [id] => {
                    return Err(TrainError::Config(format!(
                        "{source}: the tile tag {tag} is token {id}, which the tokenizer already uses for a placeholder or padding"
                    )))
                }
                _ => {
                    return Err(TrainError::Config(format!(
                        "{source}: the tile tag {tag} is {} tokens, not one (a tokenizer trained without [model.tiling]?)",
                        ids.len()
                    )))
                }
            }
        }
        Ok(())
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(|e| TrainError::Config(format!("tokenising {text:?}: {}", one_line(e))))?
            .get_ids()
            .to_vec())
    }

    /// A conversation as token segments: the template renders it; the byte
    /// ranges an assistant turn adds (its content and whatever the template
    /// closes it with, `<|im_end|>` or `</s>`) are found by rendering each
    /// prefix with the generation prompt; tokens starting inside them are
    /// [`SegmentKind::Assistant`]; each `<image>` becomes its [`ImageIds`]
    /// and each `<video>` (when the tokenizer
    /// has it) `video_tokens` copies of its own ([`SegmentKind::Image`]
    /// both). `Err` is why the row cannot be used (the template refuses it,
    /// or renders a prefix that the whole conversation does not start with).
    pub fn conversation_segments(
        &self,
        messages: &[(Role, String)],
        images: ImageIds,
        video_tokens: usize,
    ) -> std::result::Result<Segments, String> {
        let render = |upto: usize, gen: bool| -> std::result::Result<String, String> {
            let msgs: Vec<serde_json::Value> = messages[..upto]
                .iter()
                .map(|(r, c)| json!({"role": r.as_str(), "content": c}))
                .collect();
            self.template
                .render_with(&msgs, gen)
                .map_err(|e| format!("chat template: {e}"))
        };
        let full = render(messages.len(), false)?;
        let mut spans: Vec<Range<usize>> = Vec::new();
        for (k, (role, _)) in messages.iter().enumerate() {
            if *role != Role::Assistant {
                continue;
            }
            let before = render(k, true)?;
            let through = render(k + 1, false)?;
            if !full.starts_with(&through) || !through.starts_with(&before) {
                return Err(format!(
                    "the chat template does not render turn {k} as a prefix of the conversation; its assistant tokens cannot be found"
                ));
            }
            spans.push(before.len()..through.len());
        }
        let enc = self
            .tokenizer
            .encode(full.as_str(), false)
            .map_err(|e| format!("tokenizer: {}", one_line(e)))?;
        let mut segments: Segments = Vec::new();
        let mut push = |kind: SegmentKind, ids: &[u32]| match segments.last_mut() {
            Some((k, v)) if *k == kind && kind != SegmentKind::Image => v.extend_from_slice(ids),
            _ => segments.push((kind, ids.to_vec())),
        };
        let mut image = 0usize;
        for (&id, &(start, _)) in enc.get_ids().iter().zip(enc.get_offsets()) {
            if id == self.ids.image {
                match images {
                    ImageIds::Repeat(n) => push(SegmentKind::Image, &vec![id; n]),
                    ImageIds::Each(each) => match each.get(image) {
                        Some(ids) => push(SegmentKind::Image, ids),
                        None => push(SegmentKind::Image, &[id]),
                    },
                }
                image += 1;
            } else if Some(id) == self.video {
                push(SegmentKind::Image, &vec![id; video_tokens]);
            } else if spans.iter().any(|s| s.contains(&start)) {
                push(SegmentKind::Assistant, &[id]);
            } else {
                push(SegmentKind::User, &[id]);
            }
        }
        if !segments.iter().any(|(k, _)| *k == SegmentKind::Assistant) {
            return Err("no assistant tokens to learn from".into());
        }
        Ok(segments)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(template: &str) -> TextSide {
        let tok = glimpse_data::train_bpe_tokenizer(
            &[
                "user: <image>\nwhat is it? assistant: a red circle</s><|im_start|><|im_end|>"
                    .into(),
            ],
            &glimpse_data::TokenizerTrainConfig {
                vocab_size: 300,
                min_frequency: 1,
                special_tokens: [
                    "<pad>",
                    "</s>",
                    "<s>",
                    IMAGE_TOKEN,
                    "<|im_start|>",
                    "<|im_end|>",
                ]
                .map(String::from)
                .to_vec(),
                bos_token: None,
                lowercase: false,
            },
        )
        .expect("tokenizer");
        let special = SpecialTokens {
            bos_token: Some("<s>".into()),
            eos_token: Some("</s>".into()),
            unk_token: None,
            pad_token: Some("<pad>".into()),
        };
        let id = |t: &str| tok.token_to_id(t).expect("special");
        let ids = SpecialIds {
            vocab_size: tok.get_vocab_size(true),
            pad: id("<pad>"),
            bos: id("<s>"),
            eos: id("</s>"),
            image: id(IMAGE_TOKEN),
        };
        let source = accept_content_parts(template);
        TextSide {
            template: ChatTemplate::new(&source, special.clone()).expect("template"),
            template_source: source,
            tokenizer: tok,
            special,
            ids,
            video: None,
        }
    }

    const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

    fn text(side: &TextSide, ids: &[u32]) -> String {
        side.tokenizer.decode(ids, false).expect("decode")
    }

    /// The labels are the assistant's turns as the template closes them
    /// (`<|im_end|>` and its newline), in every turn; the image placeholder
    /// is expanded; the user's text and the template's headers are not
    /// labelled.
    #[test]
    fn assistant_tokens_are_what_the_template_renders_for_them() {
        let s = side(CHATML);
        let msgs = vec![
            (Role::User, "<image>\nwhat is it?".to_string()),
            (Role::Assistant, "a red circle".to_string()),
            (Role::User, "and?".to_string()),
            (Role::Assistant, "round".to_string()),
        ];
        let segs = s
            .conversation_segments(&msgs, ImageIds::Repeat(3), 1)
            .expect("segments");
        let assistant: Vec<String> = segs
            .iter()
            .filter(|(k, _)| *k == SegmentKind::Assistant)
            .map(|(_, v)| text(&s, v))
            .collect();
        assert_eq!(assistant, ["a red circle<|im_end|>\n", "round<|im_end|>\n"]);
        let images: Vec<&Vec<u32>> = segs
            .iter()
            .filter(|(k, _)| *k == SegmentKind::Image)
            .map(|(_, v)| v)
            .collect();
        assert_eq!(images, [&vec![s.ids.image; 3]]);
        let user: String = segs
            .iter()
            .filter(|(k, _)| *k == SegmentKind::User)
            .map(|(_, v)| text(&s, v))
            .collect();
        assert!(user.contains("<|im_start|>assistant\n"), "{user}");
        assert!(!user.contains("circle"), "{user}");
    }

    /// Content parts render like the LLaVA row's string, so prompts at
    /// inference read as the rows trained.
    #[test]
    fn content_parts_render_as_the_training_rows_do() {
        let s = side(CHATML);
        let parts = s
            .template
            .render_with(
                &[json!({"role": "user", "content": [
                    {"type": "text", "text": "what is it?"}, {"type": "image"}]})],
                true,
            )
            .expect("render");
        let plain = s
            .template
            .render_with(
                &[json!({"role": "user", "content": "<image>\nwhat is it?"})],
                true,
            )
            .expect("render");
        assert_eq!(parts, plain);
    }

    #[test]
    fn a_conversation_without_an_answer_is_refused() {
        let s = side(CHATML);
        let err = s
            .conversation_segments(&[(Role::User, "hi".into())], ImageIds::Repeat(1), 1)
            .expect_err("no answer");
        assert!(err.contains("no assistant tokens"), "{err}");
    }
}
