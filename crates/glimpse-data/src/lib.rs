//! glimpse-data: everything between files on disk and model-ready tensors:
//! image decoding, HF image-processor parity, tokenization.

pub mod error;
pub mod image_io;
pub mod pil_resize;
pub mod preprocess;
pub mod tokenize;

pub use error::{DataError, Result};
pub use image_io::{decode_rgb, load_rgb, ImageLimits};
pub use preprocess::{preprocess, preprocess_batch, ProcessorConfig};
pub use tokenize::{EncodedBatch, Padding, TextTokenizer};
