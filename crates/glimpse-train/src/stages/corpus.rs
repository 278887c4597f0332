//! What the easy-VQA recipe trains on, prepared once per run: the splits,
//! decoded and normalised images, the chat format, the tokenizer trained
//! on the training text, and every example as token segments.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use glimpse_data::datasets::{
    easy_vqa_to_captions, image_attributes, load_easy_vqa_split, ImageAttributes, SegmentKind,
    VqaExample,
};
use glimpse_data::{
    load_rgb, preprocess_batch, save_tokenizer, train_bpe_tokenizer, ChatTemplate, ImageLimits,
    ProcessorConfig, SpecialTokens, TokenizerTrainConfig,
};
use serde_json::json;
use tokenizers::Tokenizer;

use crate::error::{one_line, Result, TrainError};
use crate::recipe::{Recipe, SpecialIds};

pub const PAD: &str = "<pad>";
pub const BOS: &str = "<s>";
pub const EOS: &str = "</s>";
pub const IMAGE: &str = "<image>";
/// A video's placeholder, in tokenizers trained on rows with videos.
pub const VIDEO: &str = "<video>";

/// The chat format of glimpse-trained models: `user: ` and `assistant: `
/// turns, image parts as `<image>` lines (video parts as `<video>` lines),
/// `</s>` closing each answer. A turn's images come before its text
/// whatever order the parts arrive in (OpenAI clients often send the text
/// first): the models are trained on image-then-question prompts.
pub const CHAT_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}user: {% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'video' %}<video>\n{% endif %}{% endfor %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}\n{% elif message['role'] == 'assistant' %}assistant: {{ message['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";

/// The caption request of the align stage.
pub const DESCRIBE: &str = "what is in the image?";

/// CLIP's normalisation, at the tower's resolution.
pub fn processor_json(image_size: usize) -> serde_json::Value {
    json!({
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": true,
        "size": {"shortest_edge": image_size},
        "resample": 3,
        "do_center_crop": true,
        "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": [0.481_454_66, 0.457_827_5, 0.408_210_73],
        "image_std": [0.268_629_54, 0.261_302_6, 0.275_777_1],
        "do_convert_rgb": true,
    })
}

/// One split: its questions, its distinct images (in id order) with their
/// pixels, and what each image shows.
pub struct Split {
    /// The split's `questions.json`, which errors about its data name.
    pub source: PathBuf,
    pub questions: Vec<VqaExample>,
    /// Distinct image paths; `image_index[path]` is the row in `pixels`.
    pub images: Vec<PathBuf>,
    pub image_index: BTreeMap<PathBuf, usize>,
    /// (N, 3, H, W), normalised.
    pub pixels: Tensor,
    pub attributes: Vec<ImageAttributes>,
}

pub struct Corpus {
    pub train: Split,
    pub test: Split,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub ids: SpecialIds,
    pub processor: ProcessorConfig,
    pub processor_json: serde_json::Value,
}

fn data_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io(format!("{}: {}", path.display(), one_line(e)))
}

/// The most bytes a run's decoded pixels (both splits, f32) may take;
/// `model.vision.image_size` is what scales them.
pub const MAX_PIXEL_BYTES: u128 = 8 << 30;

impl Split {
    /// `role` (`training` or `evaluation`) says in an error what the split
    /// was for. `budget`: bytes of pixels still allowed, for images of
    /// `side`² pixels.
    #[allow(clippy::too_many_arguments)]
    fn load(
        dir: &Path,
        role: &str,
        limit: Option<usize>,
        processor: &ProcessorConfig,
        side: usize,
        budget: &mut u128,
        device: &Device,
    ) -> Result<Self> {
        let source = dir.join("questions.json");
        let mut questions = load_easy_vqa_split(dir)?;
        let mut ids: Vec<u32> = questions.iter().map(|q| q.image_id).collect();
        ids.sort_unstable();
        ids.dedup();
        if let Some(n) = limit {
            ids.truncate(n);
            let keep: std::collections::BTreeSet<u32> = ids.iter().copied().collect();
            questions.retain(|q| keep.contains(&q.image_id));
        }
        if questions.is_empty() {
            return Err(TrainError::NoData {
                path: source,
                msg: format!("no questions: the {role} set is empty"),
            });
        }
        // Checked before any image is decoded: every image of the split
        // becomes a (3, S, S) f32 block in one tensor.
        let bytes = ids.len() as u128 * 3 * (side as u128).pow(2) * 4;
        if bytes > *budget {
            return Err(TrainError::Config(format!(
                "model.vision.image_size {side}: the {} images of {} would take {:.1} GiB as pixels, over the trainer's {} GiB",
                ids.len(),
                dir.display(),
                bytes as f64 / (1u64 << 30) as f64,
                MAX_PIXEL_BYTES >> 30
            )));
        }
        *budget -= bytes;
        let by_id = image_attributes(&questions)?;
        let images: Vec<PathBuf> = ids
            .iter()
            .map(|id| dir.join("images").join(format!("{id}.png")))
            .collect();
        let attributes = ids
            .iter()
            .zip(&images)
            .map(|(id, p)| {
                by_id.get(id).cloned().unwrap_or(ImageAttributes {
                    image: p.clone(),
                    color: None,
                    shape: None,
                })
            })
            .collect();
        let limits = ImageLimits::default();
        let decoded = images
            .iter()
            .map(|p| Ok((p.display().to_string(), load_rgb(p, &limits)?)))
            .collect::<std::result::Result<Vec<_>, glimpse_data::DataError>>()?;
        let pixels = preprocess_batch(&decoded, processor)?.to_device(device)?;
        let image_index = images
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), i))
            .collect();
        Ok(Self {
            source,
            questions,
            images,
            image_index,
            pixels,
            attributes,
        })
    }

    pub fn image_row(&self, path: &Path) -> usize {
        self.image_index.get(path).copied().unwrap_or(0)
    }
}

/// What a run reads of easy-VQA and how: the VLM recipe's settings
/// ([`CorpusOptions::of_recipe`]), or the discrete stage's (VQ-processed
/// images, image codes among the tokenizer's special tokens).
pub struct CorpusOptions {
    /// The root holding `train/` and `test/`.
    pub root: PathBuf,
    /// Train on the first N training images only.
    pub train_images: Option<usize>,
    /// The image processor's `preprocessor_config.json` and the side of
    /// the square images it makes.
    pub processor_json: serde_json::Value,
    pub image_size: usize,
    /// The BPE's size, special tokens and bytes included.
    pub vocab_size: usize,
    /// Special tokens after `<pad>`, `</s>`, `<s>`, `<image>` (which get
    /// ids 0..4), in id order.
    pub extra_specials: Vec<String>,
}

impl CorpusOptions {
    pub fn of_recipe(recipe: &Recipe) -> Self {
        Self {
            root: recipe.easy_vqa_root(),
            train_images: recipe.data.train_images,
            processor_json: processor_json(recipe.model.vision.image_size),
            image_size: recipe.model.vision.image_size,
            vocab_size: recipe.tokenizer.vocab_size,
            // a tiling model's tile tags (stages reading data files tile)
            extra_specials: recipe
                .model
                .tiling
                .map(|t| glimpse_data::dynamic_tiles::all_tags(t.max_tiles))
                .unwrap_or_default(),
        }
    }
}

impl Corpus {
    /// Loads both splits, and trains the tokenizer on the training text
    /// (or reuses `tokenizer_path` when it exists, so a resumed run keeps
    /// its ids).
    pub fn prepare(recipe: &Recipe, tokenizer_path: &Path, device: &Device) -> Result<Self> {
        Self::prepare_with(&CorpusOptions::of_recipe(recipe), tokenizer_path, device)
    }

    /// [`Corpus::prepare`] with the options spelled out.
    pub fn prepare_with(
        opts: &CorpusOptions,
        tokenizer_path: &Path,
        device: &Device,
    ) -> Result<Self> {
        let root = &opts.root;
        let (train_dir, test_dir) = (root.join("train"), root.join("test"));
        for dir in [&train_dir, &test_dir] {
            if !dir.join("questions.json").is_file() {
                return Err(TrainError::Io(format!(
                    "{}: no easy-VQA split here (expected questions.json and images/); run scripts/fetch_easy_vqa.sh",
                    dir.display()
                )));
            }
        }
        let processor_json = opts.processor_json.clone();
        let processor =
            ProcessorConfig::from_json(&processor_json.to_string(), Path::new("[model.vision]"))
                .map_err(|e| TrainError::Config(format!("image processor: {e}")))?;
        let mut budget = MAX_PIXEL_BYTES;
        let train = Split::load(
            &train_dir,
            "training",
            opts.train_images,
            &processor,
            opts.image_size,
            &mut budget,
            device,
        )?;
        let test = Split::load(
            &test_dir,
            "evaluation",
            None,
            &processor,
            opts.image_size,
            &mut budget,
            device,
        )?;
        let template = ChatTemplate::new(
            CHAT_TEMPLATE,
            SpecialTokens {
                bos_token: Some(BOS.into()),
                eos_token: Some(EOS.into()),
                unk_token: None,
                pad_token: Some(PAD.into()),
            },
        )?;
        let tokenizer = if tokenizer_path.is_file() {
            Tokenizer::from_file(tokenizer_path).map_err(|e| data_err(tokenizer_path, e))?
        } else {
            let texts = training_text(&train, &template)?;
            // `</s>` must not get id 2: CLIP configs with `eos_token_id == 2`
            // pool the text tower at the largest id (transformers' legacy rule).
            let mut special_tokens: Vec<String> = [PAD, EOS, BOS, IMAGE].map(String::from).to_vec();
            special_tokens.extend(opts.extra_specials.iter().cloned());
            let tok = train_bpe_tokenizer(
                &texts,
                &TokenizerTrainConfig {
                    vocab_size: opts.vocab_size,
                    min_frequency: 1,
                    special_tokens,
                    bos_token: None,
                    lowercase: true,
                },
            )?;
            if let Some(dir) = tokenizer_path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| data_err(dir, e))?;
            }
            save_tokenizer(&tok, tokenizer_path)?;
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
        Ok(Self {
            train,
            test,
            tokenizer,
            template,
            ids,
            processor,
            processor_json,
        })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(|e| TrainError::Config(format!("tokenising {text:?}: {}", one_line(e))))?
            .get_ids()
            .to_vec())
    }

    /// The rendered prompt of one user turn (image first when `image`),
    /// ending with the assistant cue, as `glimpse ask` renders it.
    pub fn prompt_text(&self, question: &str, image: bool) -> Result<String> {
        let mut content = Vec::new();
        if image {
            content.push(json!({"type": "image"}));
        }
        content.push(json!({"type": "text", "text": question}));
        Ok(self
            .template
            .render_with(&[json!({"role": "user", "content": content})], true)?)
    }

    /// One single-turn example as segments: the prompt (image placeholder
    /// expanded to `image_tokens` copies), and the answer with `</s>`.
    pub fn qa_segments(
        &self,
        question: &str,
        answer: &str,
        image_tokens: Option<usize>,
    ) -> Result<Vec<(SegmentKind, Vec<u32>)>> {
        let prompt = self.encode(&self.prompt_text(question, image_tokens.is_some())?)?;
        let mut segments = Vec::new();
        let mut text = Vec::new();
        for id in prompt {
            if id == self.ids.image {
                if !text.is_empty() {
                    segments.push((SegmentKind::User, std::mem::take(&mut text)));
                }
                segments.push((SegmentKind::Image, vec![id; image_tokens.unwrap_or(1)]));
            } else {
                text.push(id);
            }
        }
        segments.push((SegmentKind::User, text));
        let mut reply = self.encode(&format!(" {answer}"))?;
        reply.push(self.ids.eos);
        segments.push((SegmentKind::Assistant, reply));
        Ok(segments)
    }

    /// The run's text side as data-file stages use it: the trained
    /// tokenizer and glimpse's chat template.
    pub fn text_side(&self) -> Result<crate::text_side::TextSide> {
        let special = SpecialTokens {
            bos_token: Some(BOS.into()),
            eos_token: Some(EOS.into()),
            unk_token: None,
            pad_token: Some(PAD.into()),
        };
        Ok(crate::text_side::TextSide {
            tokenizer: self.tokenizer.clone(),
            template: ChatTemplate::new(CHAT_TEMPLATE, special.clone())?,
            template_source: CHAT_TEMPLATE.to_string(),
            special,
            ids: self.ids,
            video: None,
        })
    }

    /// Captions of the training images (colour and shape from the answers).
    pub fn train_captions(&self) -> Result<Vec<(usize, String)>> {
        Ok(easy_vqa_to_captions(&self.train.questions)?
            .into_iter()
            .map(|r| (self.train.image_row(&r.image), r.caption))
            .collect())
    }
}

/// Every text a model of this run reads or writes: the questions and
/// answers in the chat format, the caption exchanges, the zero-shot
/// prompts.
fn training_text(train: &Split, template: &ChatTemplate) -> Result<Vec<String>> {
    let mut texts = Vec::new();
    let mut push = |q: &str, a: &str| -> Result<()> {
        texts.push(template.render_with(
            &[
                json!({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}),
                json!({"role": "assistant", "content": a}),
            ],
            false,
        )?);
        Ok(())
    };
    for q in &train.questions {
        push(&q.question, &q.answer)?;
    }
    for a in &train.attributes {
        push(DESCRIBE, &a.caption())?;
    }
    for c in glimpse_data::datasets::COLORS {
        texts.push(format!("a {c} shape"));
    }
    for s in glimpse_data::datasets::SHAPES {
        texts.push(format!("a {s}"));
    }
    Ok(texts)
}
