//! Writing a stage's result as a model directory users load as is: the
//! contrastive encoders as an HF `CLIPModel` folder (`glimpse classify`,
//! `glimpse eval zeroshot`), the text-only decoder as an HF Llama folder
//! (`glimpse generate`), a VLM as an HF LLaVA folder when its parts fit
//! and in glimpse's format otherwise (`glimpse ask`; [`llava`]).

mod llava;

pub use llava::{
    decoder_only_factors, export_glimpse, export_glimpse_on_base, export_llava_hf, export_vlm_auto,
    fits_llava, Adapter, Unfit, VlmExportFormat, VlmParts,
};

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Tensor;
use serde_json::{json, Value};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::Tokenizer;

use crate::checkpoint::{save_tensors, write_atomic};
use crate::error::{one_line, Result, TrainError};
use crate::stages::corpus::{Corpus, BOS, CHAT_TEMPLATE, EOS, PAD};

fn io(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io(format!("{}: {}", path.display(), one_line(e)))
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| io(path, e))?;
    write_atomic(path, text.as_bytes())
}

/// Writes into `dir.tmp` and renames over `dir`, so a half-written model
/// never stands where a complete one is expected.
fn write_dir(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    fill(&tmp)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| io(dir, e))
}

fn tokenizer_files(dir: &Path, tokenizer: &Tokenizer, corpus: &Corpus, chat: bool) -> Result<()> {
    write_tokenizer_files(
        dir,
        tokenizer,
        &corpus.processor_json,
        chat.then_some(&corpus.ids),
    )
}

/// `tokenizer.json`, `tokenizer_config.json`, `preprocessor_config.json`
/// and, for a model that chats (`ids` given), glimpse's chat template and
/// greedy `generation_config.json`.
fn write_tokenizer_files(
    dir: &Path,
    tokenizer: &Tokenizer,
    processor_json: &Value,
    ids: Option<&crate::recipe::SpecialIds>,
) -> Result<()> {
    let path = dir.join("tokenizer.json");
    tokenizer.save(&path, false).map_err(|e| io(&path, e))?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
            "model_max_length": 512,
        }),
    )?;
    write_json(&dir.join("preprocessor_config.json"), processor_json)?;
    if let Some(ids) = ids {
        write_atomic(&dir.join("chat_template.jinja"), CHAT_TEMPLATE.as_bytes())?;
        write_json(
            &dir.join("generation_config.json"),
            &json!({
                "bos_token_id": ids.bos, "eos_token_id": ids.eos,
                "pad_token_id": ids.pad, "do_sample": false,
            }),
        )?;
    }
    Ok(())
}

/// The contrastive encoders as a CLIP folder. Its tokenizer frames text as
/// `<s> … </s>` (the text tower pools at `</s>`).
pub fn export_clip(
    dir: &Path,
    config: &Value,
    tensors: &BTreeMap<String, Tensor>,
    corpus: &Corpus,
) -> Result<()> {
    let mut tokenizer = corpus.tokenizer.clone();
    let framing = TemplateProcessing::builder()
        .try_single(format!("{BOS} $A {EOS}"))
        .map_err(|e| TrainError::Config(format!("tokenizer framing: {e}")))?
        .special_tokens(vec![(BOS, corpus.ids.bos), (EOS, corpus.ids.eos)])
        .build()
        .map_err(|e| TrainError::Config(format!("tokenizer framing: {e}")))?;
    tokenizer.with_post_processor(Some(framing));
    // SigLIP-style training adds a bias CLIP's format has no place for.
    let kept: BTreeMap<String, Tensor> = tensors
        .iter()
        .filter(|(n, _)| n.as_str() != "logit_bias")
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect();
    write_dir(dir, |d| {
        write_json(&d.join("config.json"), config)?;
        save_tensors(&kept, &d.join("model.safetensors"))?;
        tokenizer_files(d, &tokenizer, corpus, false)
    })
}

/// The decoder of the `lm` stage as an HF Llama folder.
pub fn export_llama(
    dir: &Path,
    text_config: &Value,
    tensors: &BTreeMap<String, Tensor>,
    corpus: &Corpus,
) -> Result<()> {
    let renamed: BTreeMap<String, Tensor> = tensors
        .iter()
        .filter_map(|(n, t)| {
            n.strip_prefix("language_model.")
                .map(|rest| (rest.to_string(), t.clone()))
        })
        .collect();
    write_dir(dir, |d| {
        write_json(&d.join("config.json"), text_config)?;
        save_tensors(&renamed, &d.join("model.safetensors"))?;
        tokenizer_files(d, &corpus.tokenizer, corpus, true)
    })
}

/// A VLM in glimpse's format.
pub fn export_vlm(
    dir: &Path,
    config: &Value,
    tensors: &BTreeMap<String, Tensor>,
    corpus: &Corpus,
) -> Result<()> {
    write_dir(dir, |d| {
        write_json(&d.join("config.json"), config)?;
        save_tensors(tensors, &d.join("model.safetensors"))?;
        tokenizer_files(d, &corpus.tokenizer, corpus, true)
    })
}

/// A discrete-token model (`glimpse_discrete`, see
/// `glimpse_models::discrete`): the decoder's tensors under `model.`, the
/// VQ-VAE's under `vqmodel.`, the run's tokenizer (markers and codes among
/// its added tokens) and chat template, the VQ's image processor.
pub fn export_discrete(
    dir: &Path,
    config: &Value,
    tensors: &BTreeMap<String, Tensor>,
    tokenizer: &Tokenizer,
    processor_json: &Value,
    ids: &crate::recipe::SpecialIds,
) -> Result<()> {
    write_dir(dir, |d| {
        write_json(&d.join("config.json"), config)?;
        save_tensors(tensors, &d.join("model.safetensors"))?;
        write_tokenizer_files(d, tokenizer, processor_json, Some(ids))
    })
}
