//! glimpse-data: everything between files on disk and model-ready tensors:
//! image decoding, HF image-processor parity, tokenization (tokenizer.json
//! or GGUF metadata), chat templates, video frames.

pub mod anyres;
pub mod chat_template;
pub mod datasets;
pub mod dynamic_tiles;
pub mod error;
pub mod files;
pub mod gguf_tokenizer;
pub mod image_io;
pub mod image_split;
mod jinja_compat;
pub mod llava_next_video;
pub mod mem_budget;
pub mod mllama_tiles;
pub mod moving_shapes;
pub mod pil_resize;
pub mod preprocess;
pub mod processor_config;
pub mod qwen2_vl_patches;
pub mod qwen2_vl_video;
pub mod synth_shapes;
pub mod tokenize;
pub mod tokenizer_train;
pub mod video;
pub mod vq_processor;

pub use anyres::{preprocess_anyres, AnyresGrid, GridPinpoints, Unpadded};
pub use chat_template::{ChatMessage, ChatTemplate, SpecialTokens, MAX_RENDER_BYTES, RENDER_FUEL};
pub use dynamic_tiles::{preprocess_tiles, TileGrid, TilingConfig};
pub use error::{DataError, Result};
pub use files::{
    read_bounded, read_bounded_text, ReadError, MAX_CONFIG_BYTES, MAX_DATASET_BYTES,
    MAX_TOKENIZER_BYTES,
};
pub use gguf_tokenizer::{tokenizer_from_gguf, GgufTokenizer};
pub use image_io::{decode_rgb, load_rgb, read_image_file, ImageLimits, MAX_IMAGE_FILE_BYTES};
pub use image_split::{preprocess_split, split_layout, SplitLayout};
pub use llava_next_video::LlavaNextVideoProcessor;
pub use pil_resize::Filter;
pub use preprocess::{center_crop, preprocess, preprocess_batch};
pub use processor_config::{CropSize, PerChannel, ProcessorConfig, SizeSpec, MAX_PROCESSOR_SIDE};
pub use qwen2_vl_patches::{smart_resize, Qwen2VlPatches, Qwen2VlProcessor};
pub use qwen2_vl_video::Qwen2VlVideoProcessor;
pub use tokenize::{read_tokenizer_json, EncodedBatch, Padding, TextTokenizer};
pub use tokenizer_train::{save_tokenizer, train_bpe_tokenizer, TokenizerTrainConfig};
pub use video::{
    load_video, FrameSampling, Video, VideoFrame, VideoLimits, VideoOptions, VideoSource,
};
