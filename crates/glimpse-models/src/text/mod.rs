//! Text models: the text towers of the dual encoders (CLIP, SigLIP) and the
//! Llama-family causal decoder.

pub mod decoder;
pub mod decoder_config;
pub mod decoder_weights;
pub mod encoder;

pub use decoder::{Decoder, DecoderCache, DecoderLayer, DecoderLayout, LayerHook, LogitsFor};
pub use decoder_config::{DecoderConfig, DecoderKind};
pub use decoder_weights::{DecoderWeights, TokenEmbedding};
pub use encoder::{TextConfig, TextFlavor, TextOutput, TextTransformer};

/// Refuses token ids at or past `vocab_size` (or negative ones, for signed
/// id tensors) before an embedding lookup would fail on them as an index.
pub(crate) fn check_token_ids(
    ids: &candle_core::Tensor,
    vocab_size: usize,
) -> crate::error::Result<()> {
    use candle_core::DType;
    let flat = ids.flatten_all()?;
    if flat.elem_count() == 0 {
        return Ok(());
    }
    let out_of_range = |id: i128| id < 0 || id >= vocab_size as i128;
    let bad = match flat.dtype() {
        DType::U32 => flat
            .to_vec1::<u32>()?
            .into_iter()
            .map(i128::from)
            .find(|&id| out_of_range(id)),
        _ => flat
            .to_dtype(DType::I64)?
            .to_vec1::<i64>()?
            .into_iter()
            .map(i128::from)
            .find(|&id| out_of_range(id)),
    };
    match bad {
        Some(id) => Err(crate::error::ModelError::Input(format!(
            "token id {id} is beyond the model's vocabulary of {vocab_size}"
        ))),
        None => Ok(()),
    }
}
