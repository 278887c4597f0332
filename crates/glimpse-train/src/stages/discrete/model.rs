//! What a discrete-token model is made of on the training side: the
//! tokenizer's extra special tokens (`<boi>`, `<eoi>`, one per code, in
//! id order so the codes are one interval), the ids they got, and the
//! `config.json` of glimpse's format ([`glimpse_models::discrete`]);
//! and an untrained model written from a seed (tests, tiny examples).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use glimpse_data::{train_bpe_tokenizer, TokenizerTrainConfig};
use glimpse_models::discrete::{code_token, DiscreteConfig, DiscreteModel, BOI, EOI, MODEL_TYPE};
use serde_json::{json, Value};
use tokenizers::Tokenizer;

use crate::error::{Result, TrainError};
use crate::params::{StageWeights, Trainable};
use crate::recipe::{DecoderSpec, SpecialIds};
use crate::stages::corpus::{BOS, EOS, IMAGE, PAD};

/// The special tokens a discrete model's tokenizer adds after glimpse's
/// four (`<pad>`, `</s>`, `<s>`, `<image>`): the markers, then the `k` codes.
pub fn extra_specials(k: usize) -> Vec<String> {
    let mut out = vec![BOI.to_string(), EOI.to_string()];
    out.extend((0..k).map(code_token));
    out
}

/// The ids the tokenizer gave the special tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscreteIds {
    pub text: SpecialIds,
    pub boi: u32,
    pub eoi: u32,
    /// Id of code 0; code `c` is `code_start + c`.
    pub code_start: u32,
}

impl DiscreteIds {
    /// Looks the tokens up; the `k` codes must be consecutive ids.
    pub fn of(tokenizer: &Tokenizer, k: usize) -> Result<Self> {
        let id = |t: &str| {
            tokenizer
                .token_to_id(t)
                .ok_or_else(|| TrainError::Config(format!("the tokenizer has no {t} token")))
        };
        let code_start = id(&code_token(0))?;
        let last = id(&code_token(k.max(1) - 1))?;
        if u64::from(last) != u64::from(code_start) + k as u64 - 1 {
            return Err(TrainError::Config(format!(
                "the tokenizer's {} codes are not consecutive ids ({} .. {last})",
                k, code_start
            )));
        }
        Ok(Self {
            text: SpecialIds {
                vocab_size: tokenizer.get_vocab_size(true),
                pad: id(PAD)?,
                bos: id(BOS)?,
                eos: id(EOS)?,
                image: id(IMAGE)?,
            },
            boi: id(BOI)?,
            eoi: id(EOI)?,
            code_start,
        })
    }
}

/// glimpse's discrete-model `config.json`: the decoder's settings, the
/// VQ's `config.json` as `vq_config`, the markers' and codes' ids.
pub fn config_json(decoder: &DecoderSpec, ids: &DiscreteIds, vq_config: &Value) -> Value {
    json!({
        "model_type": MODEL_TYPE,
        "text_config": decoder.text_config_json(&ids.text),
        "vq_config": vq_config,
        "image_token_id": ids.text.image,
        "boi_token_id": ids.boi,
        "eoi_token_id": ids.eoi,
        "image_code_start": ids.code_start,
    })
}

/// The VQ-VAE's tensors as a discrete model holds them, under `vqmodel.`.
pub fn vq_tensors(vq_dir: &Path) -> Result<HashMap<String, Tensor>> {
    let vq = crate::checkpoint::load_tensors(&vq_dir.join("model.safetensors"))?;
    Ok(vq
        .into_iter()
        .map(|(n, t)| (format!("{}.{n}", glimpse_models::discrete::VQ_PREFIX), t))
        .collect())
}

/// Writes an untrained discrete model to `dir`: a BPE tokenizer trained on
/// `texts` (`vocab_size` as `[tokenizer]` sizes a run's: the markers and
/// codes come on top), the decoder and the VQ-VAE (`vq_config`: a glimpse
/// VQ config with its `image_size`) drawn from `seed`, and the VQ's image
/// processor.
pub fn write_random_model(
    dir: &Path,
    decoder: &DecoderSpec,
    vq_config: &Value,
    processor_json: &Value,
    texts: &[String],
    vocab_size: usize,
    seed: u64,
) -> Result<()> {
    let vq = glimpse_models::vq::VqConfig::from_value(vq_config)
        .map_err(|m| TrainError::Config(format!("vq config: {m}")))?;
    let k = vq.num_embeddings;
    let extra = extra_specials(k);
    let bpe_size = vocab_size + extra.len();
    let mut specials: Vec<String> = [PAD, EOS, BOS, IMAGE].map(String::from).to_vec();
    specials.extend(extra);
    let tokenizer = train_bpe_tokenizer(
        texts,
        &TokenizerTrainConfig {
            vocab_size: bpe_size,
            min_frequency: 1,
            special_tokens: specials,
            bos_token: None,
            lowercase: true,
        },
    )?;
    let ids = DiscreteIds::of(&tokenizer, k)?;
    let config = config_json(decoder, &ids, vq_config);
    let cfg = DiscreteConfig::from_value(&config)
        .map_err(|e| TrainError::Config(format!("discrete config: {e}")))?;
    let weights = StageWeights::new(HashMap::new(), Trainable::All, seed);
    DiscreteModel::new(&cfg, weights.var_builder(&Device::Cpu))?;
    let tensors: BTreeMap<String, Tensor> = weights.tensors()?;
    crate::export::export_discrete(
        dir,
        &config,
        &tensors,
        &tokenizer,
        processor_json,
        &ids.text,
    )
}
