//! Building blocks shared by every architecture: activations, attention,
//! MLPs, the pre-LayerNorm encoder layer and position-grid interpolation.

pub mod activation;
pub mod attention;
pub mod block_matmul;
pub mod causal_attention;
mod cpu_grad;
pub mod encoder;
pub mod fused_attention;
pub mod interpolate;
pub mod kv_cache;
pub mod layer_norm;
pub mod linear;
mod linear_op;
pub mod mlp;
mod q4_1_matmul;
mod q8_0_matmul;
pub mod qlinear;
pub mod rms_norm;
pub mod rope;
mod rope_op;
mod simd_act;
mod softmax_op;
pub mod swiglu;

pub use activation::Activation;
pub use attention::SelfAttention;
pub use encoder::{Encoder, EncoderLayer};
pub use layer_norm::LayerNorm;
pub use linear::Linear;
pub use mlp::Mlp;
pub use rms_norm::RmsNorm;
