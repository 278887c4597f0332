//! What the `glimpse` CLI and server share, and neither owns: a model
//! directory or file loaded with its tokenizer, chat template and image
//! processor (`pipeline`), typed requests, and the scheduler that runs many
//! generation requests at once. No HTTP and no argv here: the CLI turns
//! flags into these calls, the server turns HTTP requests into them.

pub mod device;
pub mod model;
pub mod pipeline;
pub mod request;
pub mod scheduler;

pub use model::{Admitted, EmbedInput, LoadedModel, ModelKind};
pub use request::{FrameSampling, GenerateParams, ImageInput, Message, Part, Prompt, VideoInput};
pub use scheduler::{Event, SchedulerOptions, SchedulerStats, Summary};
