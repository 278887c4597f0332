//! glimpse-data: everything between files on disk and model-ready tensors:
//! image decoding, HF image-processor parity, tokenization.

pub mod error;
pub mod image_io;
pub mod pil_resize;
pub mod preprocess;
pub mod processor_config;
pub mod tokenize;

pub use error::{DataError, Result};
pub use image_io::{decode_rgb, load_rgb, ImageLimits};
pub use pil_resize::Filter;
pub use preprocess::{center_crop, preprocess, preprocess_batch};
pub use processor_config::{CropSize, PerChannel, ProcessorConfig, SizeSpec};
pub use tokenize::{EncodedBatch, Padding, TextTokenizer};
