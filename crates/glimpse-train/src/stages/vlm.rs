//! `align`, `instruct`, `full`: the VLM learns to answer from the image.
//! align trains the projector (and cross-attention blocks) on captions;
//! instruct adds the decoder on the questions; full adds the tower.
//!
//! Images come decoded up front (easy-VQA splits, [`Images::Decoded`]) or
//! from the rows' files as batches need them ([`Images::Files`]); videos
//! (rows' `"video"`, for a model with a temporal aggregator) from their
//! files too, `temporal.num_frames` frames sampled uniformly, each frame
//! through the tower, the frames' features aggregated over time into an
//! image's worth of rows at the `<video>` placeholders. A tiling model
//! (`[model.tiling]`) reads each image as `glimpse ask` does: the frames
//! `glimpse_data::preprocess_tiles` cuts (crops, then a thumbnail), each
//! through the tower, each frame's tag before its rows in the prompt
//! ([`tile_prompt_ids`]), so an image's frame count, like a video's, is
//! per item. While the tower is frozen its features are computed once per
//! image (or video) and reused by every later step (no tower pass, no
//! gradient).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};
use glimpse_data::datasets::SegmentKind;
use glimpse_data::{
    load_rgb, load_video, preprocess_batch, preprocess_tiles, FrameSampling, ImageLimits,
    ProcessorConfig, TileGrid, TilingConfig, VideoOptions,
};
use glimpse_eval::{answer_kind_label, KindTally};
use glimpse_models::lora::LoraDropout;
use glimpse_models::{FusionConfig, LogitsFor, Vlm, VlmCache};

use super::batch::{exact_matches, labelled_loss, left_padded, scored_tokens};
use super::corpus::{Corpus, Split, DESCRIBE};
use super::lm::spread;
use super::rows::{row_segments, BadKind, BadRows, Row};
use crate::error::{Result, TrainError};
use crate::losses::masked_lm_loss;
use crate::text_side::{ImageIds, Role, TextSide};
use crate::trainer::{EvalMetrics, Task};

type Segments = Vec<(SegmentKind, Vec<u32>)>;

/// One training or evaluation example: its images (indices into its
/// split's [`Images`]) and its token segments.
pub struct VlmExample {
    /// The row id, which bad-row reports name.
    pub id: String,
    pub images: Vec<usize>,
    /// Indices into its split's videos.
    pub videos: Vec<usize>,
    pub segments: Segments,
    /// The answer's kind (`glimpse_eval::answer_kind_label`), which the
    /// evaluation tallies by; "caption" for align's captions.
    pub kind: &'static str,
}

/// What a VLM stage trains on (the easy-VQA corpus path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VlmData {
    /// align: "what is in the image?" → caption.
    Captions,
    /// instruct / full: every training question, one per example.
    Questions,
}

/// Features kept for a frozen tower, at most this many bytes (then images
/// beyond go through the tower each time they come up).
const FEATURE_CACHE_BYTES: usize = 2 << 30;

/// A split's images.
pub enum Images<'a> {
    /// Decoded and normalised up front: (N, 3, H, W).
    Decoded(&'a Tensor),
    /// Read from disk when a batch needs them.
    Files(Box<ImageFiles>),
}

/// What the items of an [`ImageFiles`] are, and how many tower inputs
/// (frames) each becomes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ItemKind {
    /// Images, one frame each.
    Image,
    /// Videos (files or folders of frames), `frames` sampled from each
    /// uniformly; their examples' `videos`.
    Video { frames: usize },
    /// Images cut into tower-sized tiles (+ a thumbnail) by
    /// `glimpse_data::preprocess_tiles`, as many frames as each image's
    /// grid has; `side` is the tower's input size.
    Tiled { tiling: TilingConfig, side: usize },
}

/// Images (or videos) decoded from disk per batch; the ones that fail are
/// reported as bad rows once and left out from then on.
pub struct ImageFiles {
    /// The data file the rows came from (bad-row reports name it).
    pub source: PathBuf,
    pub paths: Vec<PathBuf>,
    pub processor: ProcessorConfig,
    pub bad_rows: Arc<BadRows>,
    pub kind: ItemKind,
    /// Pixels of the items the current batch needs: (3, H, W) an image,
    /// (F, 3, H, W) a video or a tiled image.
    batch: Mutex<HashMap<usize, Tensor>>,
    /// A frozen tower's features by item: (L, Dv) an image, (F, L, Dv) a
    /// video or a tiled image; and their bytes.
    features: Mutex<(HashMap<usize, Tensor>, usize)>,
    /// Items that could not be read.
    unreadable: Mutex<BTreeSet<usize>>,
}

impl ImageFiles {
    pub fn new(
        source: PathBuf,
        paths: Vec<PathBuf>,
        processor: ProcessorConfig,
        bad_rows: Arc<BadRows>,
    ) -> Self {
        Self {
            source,
            paths,
            processor,
            bad_rows,
            kind: ItemKind::Image,
            batch: Mutex::default(),
            features: Mutex::default(),
            unreadable: Mutex::default(),
        }
    }

    /// The same over videos, `frames` sampled from each.
    pub fn videos(
        source: PathBuf,
        paths: Vec<PathBuf>,
        processor: ProcessorConfig,
        bad_rows: Arc<BadRows>,
        frames: usize,
    ) -> Self {
        Self {
            kind: ItemKind::Video { frames },
            ..Self::new(source, paths, processor, bad_rows)
        }
    }

    /// The same over images a tiling model reads as tiles.
    pub fn tiled(
        source: PathBuf,
        paths: Vec<PathBuf>,
        processor: ProcessorConfig,
        bad_rows: Arc<BadRows>,
        tiling: TilingConfig,
        side: usize,
    ) -> Self {
        Self {
            kind: ItemKind::Tiled { tiling, side },
            ..Self::new(source, paths, processor, bad_rows)
        }
    }

    /// The items of `ex` these files hold: its images, or its videos.
    fn items<'e>(&self, ex: &'e VlmExample) -> &'e [usize] {
        match self.kind {
            ItemKind::Image | ItemKind::Tiled { .. } => &ex.images,
            ItemKind::Video { .. } => &ex.videos,
        }
    }

    /// One item's pixels: (3, H, W) an image, (F, 3, H, W) a video's
    /// sampled frames or a tiled image's frames; the error is why it
    /// cannot be read.
    fn decode(&self, path: &std::path::Path) -> std::result::Result<Tensor, String> {
        let name = path.display().to_string();
        match self.kind {
            ItemKind::Tiled { tiling, side } => {
                let img = load_rgb(path, &ImageLimits::default()).map_err(|e| e.to_string())?;
                // (F, 3, side, side)
                let (pixels, _) = preprocess_tiles(&img, &name, &self.processor, side, &tiling)
                    .map_err(|e| e.to_string())?;
                Ok(pixels)
            }
            ItemKind::Image => {
                let img = load_rgb(path, &ImageLimits::default()).map_err(|e| e.to_string())?;
                // (1, 3, H, W) -> (3, H, W)
                let t =
                    preprocess_batch(&[(name, img)], &self.processor).map_err(|e| e.to_string())?;
                t.squeeze(0).map_err(|e| e.to_string())
            }
            ItemKind::Video { frames } => {
                let options = VideoOptions {
                    sampling: FrameSampling::frames(frames),
                    ..VideoOptions::default()
                };
                let video = load_video(path, &options).map_err(|e| e.to_string())?;
                let frames: Vec<(String, image::RgbImage)> = video
                    .frames
                    .into_iter()
                    .map(|f| (format!("{name} frame {}", f.index), f.image))
                    .collect();
                // (F, 3, H, W)
                preprocess_batch(&frames, &self.processor).map_err(|e| e.to_string())
            }
        }
    }

    fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
        m.lock()
            .map_err(|_| TrainError::State("image cache lock poisoned".into()))
    }

    /// Decodes the items of `examples` that are neither cached as features
    /// nor known bad, into the batch's pixel map (replacing the last
    /// batch's); returns which examples are usable. An item that fails is
    /// a bad row of the example that brought it (under `fail`, the error).
    fn prepare(&self, examples: &[&VlmExample]) -> Result<Vec<bool>> {
        let mut pixels = HashMap::new();
        let kind = match self.kind {
            ItemKind::Image | ItemKind::Tiled { .. } => BadKind::UnreadableImage,
            ItemKind::Video { .. } => BadKind::UnreadableVideo,
        };
        let mut ok = Vec::with_capacity(examples.len());
        for ex in examples {
            let mut good = true;
            for &i in self.items(ex) {
                if Self::lock(&self.unreadable)?.contains(&i) {
                    good = false;
                    continue;
                }
                if pixels.contains_key(&i) || Self::lock(&self.features)?.0.contains_key(&i) {
                    continue;
                }
                match self.decode(&self.paths[i]) {
                    Ok(t) => {
                        pixels.insert(i, t);
                    }
                    Err(e) => {
                        Self::lock(&self.unreadable)?.insert(i);
                        self.bad_rows.report(&self.source, &ex.id, kind, &e)?;
                        good = false;
                    }
                }
            }
            ok.push(good);
        }
        *Self::lock(&self.batch)? = pixels;
        Ok(ok)
    }

    /// Whether every item of `ex` is usable (after [`Self::prepare`]).
    fn usable(&self, ex: &VlmExample) -> Result<bool> {
        let bad = Self::lock(&self.unreadable)?;
        Ok(self.items(ex).iter().all(|i| !bad.contains(i)))
    }

    /// Tower features of `items` (flat, in order) of the current batch:
    /// those a frozen tower computed before are reused, the rest go
    /// through the tower together (and are kept while the tower is frozen,
    /// up to [`FEATURE_CACHE_BYTES`]).
    ///
    /// # Shapes
    /// -> (n, L, Dv) for images, (n, F, L, Dv) for videos, (ΣF_k, L, Dv)
    /// for tiled images (each image's frames in turn)
    fn features(&self, model: &Vlm, items: &[usize], frozen: bool) -> Result<Tensor> {
        let batch = Self::lock(&self.batch)?;
        let mut cache = Self::lock(&self.features)?;
        // items the cache lacks go through the tower together
        let missing: Vec<usize> = {
            let mut seen = BTreeSet::new();
            items
                .iter()
                .copied()
                .filter(|i| !(frozen && cache.0.contains_key(i)))
                .filter(|i| seen.insert(*i))
                .collect()
        };
        let mut fresh: HashMap<usize, Tensor> = HashMap::new();
        if !missing.is_empty() {
            let pixels = missing
                .iter()
                .map(|i| {
                    batch.get(i).cloned().ok_or_else(|| {
                        TrainError::State(format!(
                            "{} was not decoded for its batch",
                            self.paths[*i].display()
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let feats: Vec<Tensor> = match self.kind {
                // (n, 3, H, W) -> (n, L, Dv)
                ItemKind::Image => {
                    let f = tower_features(model, &Tensor::stack(&pixels, 0)?)?;
                    (0..missing.len())
                        .map(|k| f.get(k))
                        .collect::<candle_core::Result<_>>()?
                }
                // each (F_k, 3, H, W) -> (ΣF_k, 3, H, W) -> (ΣF_k, L, Dv),
                // then each image's (F_k, L, Dv)
                ItemKind::Tiled { .. } => {
                    let counts: Vec<usize> = pixels
                        .iter()
                        .map(|p| p.dim(0))
                        .collect::<candle_core::Result<_>>()?;
                    let f = tower_features(model, &Tensor::cat(&pixels, 0)?)?;
                    let mut start = 0;
                    counts
                        .iter()
                        .map(|&n| {
                            let part = f.narrow(0, start, n);
                            start += n;
                            part
                        })
                        .collect::<candle_core::Result<_>>()?
                }
                ItemKind::Video { .. } => {
                    // (n, F, 3, H, W)
                    let pixels = Tensor::stack(&pixels, 0)?;
                    let (n, f, c, h, w) = pixels.dims5()?;
                    // (n, F, 3, H, W) -> (n·F, 3, H, W) -> (n·F, L, Dv)
                    let per_frame = tower_features(model, &pixels.reshape((n * f, c, h, w))?)?;
                    let (_, l, d) = per_frame.dims3()?;
                    // (n·F, L, Dv) -> (n, F, L, Dv)
                    let f = per_frame.reshape((n, f, l, d))?;
                    (0..n)
                        .map(|k| f.get(k))
                        .collect::<candle_core::Result<_>>()?
                }
            };
            for (&i, f) in missing.iter().zip(feats) {
                if frozen {
                    let bytes = f.elem_count() * 4;
                    if cache.1 + bytes <= FEATURE_CACHE_BYTES {
                        cache.1 += bytes;
                        cache.0.insert(i, f.clone());
                    }
                }
                fresh.insert(i, f);
            }
        }
        let parts = items
            .iter()
            .map(|i| {
                fresh
                    .get(i)
                    .or_else(|| cache.0.get(i))
                    .cloned()
                    .ok_or_else(|| TrainError::State(format!("no features for item {i}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(match self.kind {
            ItemKind::Tiled { .. } => Tensor::cat(&parts, 0)?,
            _ => Tensor::stack(&parts, 0)?,
        })
    }
}

pub struct VlmTask<'a> {
    pub model: Vlm,
    pad: u32,
    train: Vec<VlmExample>,
    eval: Vec<VlmExample>,
    train_images: Images<'a>,
    eval_images: Images<'a>,
    /// The rows' videos (a model with a temporal aggregator).
    train_videos: Option<Box<ImageFiles>>,
    eval_videos: Option<Box<ImageFiles>>,
    tower_frozen: bool,
    /// Tower features of every decoded train / eval image when the tower
    /// is frozen: (N, L, Dv).
    train_features: Option<Tensor>,
    eval_features: Option<Tensor>,
    /// The LoRA adapters' dropout, when a stage trains them: reseeded per
    /// micro-step (a resumed run draws the same masks), off to evaluate.
    lora_dropout: Option<LoraDropout>,
    device: Device,
}

/// Placeholders per image in the prompt: early fusion expands `<image>`
/// to the image's rows; cross fusion keeps one token (as `glimpse ask`).
fn placeholder_tokens(model: &Vlm) -> Result<usize> {
    Ok(match model.config().fusion {
        FusionConfig::Early => model.config().image_tokens()?,
        FusionConfig::Cross { .. } => 1,
    })
}

impl<'a> VlmTask<'a> {
    /// The easy-VQA corpus path: splits decoded up front.
    pub fn new(
        model: Vlm,
        corpus: &'a Corpus,
        data: VlmData,
        tower_frozen: bool,
        eval_n: usize,
        device: &Device,
    ) -> Result<Self> {
        let m = placeholder_tokens(&model)?;
        let train = match data {
            VlmData::Captions => corpus
                .train_captions()?
                .into_iter()
                .enumerate()
                .map(|(k, (image, caption))| {
                    Ok(VlmExample {
                        id: k.to_string(),
                        images: vec![image],
                        videos: Vec::new(),
                        segments: corpus.qa_segments(DESCRIBE, &caption, Some(m))?,
                        kind: "caption",
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            VlmData::Questions => questions(
                corpus,
                &corpus.train,
                &corpus.train.questions.iter().collect::<Vec<_>>(),
                m,
            )?,
        };
        // Held out like the training data: test captions for align, test
        // questions otherwise.
        let eval = match data {
            VlmData::Captions => spread(&corpus.test.attributes, eval_n)
                .into_iter()
                .enumerate()
                .map(|(k, a)| {
                    Ok(VlmExample {
                        id: k.to_string(),
                        images: vec![corpus.test.image_row(&a.image)],
                        videos: Vec::new(),
                        segments: corpus.qa_segments(DESCRIBE, &a.caption(), Some(m))?,
                        kind: "caption",
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            VlmData::Questions => questions(
                corpus,
                &corpus.test,
                &spread(&corpus.test.questions, eval_n),
                m,
            )?,
        };
        if eval.is_empty() {
            return Err(TrainError::NoData {
                path: corpus.test.source.clone(),
                msg: "no test example to evaluate the VLM stage on".into(),
            });
        }
        let (train_features, eval_features) = if tower_frozen {
            (
                Some(tower_features(&model, &corpus.train.pixels)?),
                Some(tower_features(&model, &corpus.test.pixels)?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            model,
            pad: corpus.ids.pad,
            train,
            eval,
            train_images: Images::Decoded(&corpus.train.pixels),
            eval_images: Images::Decoded(&corpus.test.pixels),
            train_videos: None,
            eval_videos: None,
            tower_frozen,
            train_features,
            eval_features,
            lora_dropout: None,
            device: device.clone(),
        })
    }

    /// Rows from data files: each row's conversation rendered by `text`'s
    /// chat template, its images read when batches need them. Rows that
    /// cannot be used are reported to the files' [`BadRows`].
    #[allow(clippy::too_many_arguments)]
    pub fn from_rows(
        model: Vlm,
        text: &TextSide,
        train: (PathBuf, Vec<Row>),
        eval: (PathBuf, Vec<Row>),
        processor: &ProcessorConfig,
        bad_rows: Arc<BadRows>,
        tower_frozen: bool,
        eval_n: usize,
        device: &Device,
    ) -> Result<Self> {
        let m = placeholder_tokens(&model)?;
        // a video takes an image's rows (its frames pooled over time)
        let video = model
            .config()
            .video
            .as_ref()
            .map(|v| v.temporal.num_frames());
        let max_tokens = model.config().text.max_position_embeddings;
        let cross = matches!(model.config().fusion, FusionConfig::Cross { .. });
        let tiling = model.config().tiling;
        let side = model.config().vision.image_size;
        // a tiling model's grid of each image (its size decides it), read
        // once per distinct file; `Err`: why the image cannot be read
        let mut grids: HashMap<PathBuf, std::result::Result<TileGrid, String>> = HashMap::new();
        let mut build = |(source, rows): (PathBuf, Vec<Row>),
                         limit: Option<usize>|
         -> Result<(Vec<VlmExample>, Box<ImageFiles>, Box<ImageFiles>)> {
            let rows: Vec<&Row> = match limit {
                Some(n) => spread(&rows, n),
                None => rows.iter().collect(),
            };
            // distinct paths, each an index
            let mut images_at = (Vec::new(), HashMap::<PathBuf, usize>::new());
            let mut videos_at = (Vec::new(), HashMap::<PathBuf, usize>::new());
            let index = |at: &mut (Vec<PathBuf>, HashMap<PathBuf, usize>), ps: &[PathBuf]| {
                ps.iter()
                    .map(|p| {
                        *at.1.entry(p.clone()).or_insert_with(|| {
                            at.0.push(p.clone());
                            at.0.len() - 1
                        })
                    })
                    .collect::<Vec<usize>>()
            };
            let mut examples = Vec::new();
            for row in rows {
                if cross && row.images.len() != 1 {
                    let why = format!(
                        "{} image(s); cross fusion trains on one image per row",
                        row.images.len()
                    );
                    bad_rows.report(&source, &row.id, BadKind::Placeholders, &why)?;
                    continue;
                }
                if !row.videos.is_empty() && video.is_none() {
                    let why = "a video row, but the model reads no video (add [model.temporal])";
                    bad_rows.report(&source, &row.id, BadKind::Placeholders, why)?;
                    continue;
                }
                // a tiling model: each image's tags and rows, by its grid
                let mut tiled: Vec<Vec<u32>> = Vec::new();
                if tiling.is_some() {
                    // every tile tag starts so (`<tile_3>`, `<tile_global_thumbnail>`)
                    if row.messages.iter().any(|(_, c)| c.contains("<tile_")) {
                        let why = "its text holds a tile tag (<tile_…>), which only the image layout may use";
                        bad_rows.report(&source, &row.id, BadKind::Placeholders, why)?;
                        continue;
                    }
                    let mut unreadable = None;
                    for path in &row.images {
                        let grid = grids
                            .entry(path.clone())
                            .or_insert_with(|| {
                                let img = load_rgb(path, &ImageLimits::default())
                                    .map_err(|e| e.to_string())?;
                                let cfg = model.config();
                                cfg.tile_grid(img.height() as usize, img.width() as usize)
                                    .ok_or_else(|| "the model does not tile".to_string())
                            })
                            .clone();
                        match grid {
                            Ok(g) => tiled.push(tile_prompt_ids(text, &g, m)?),
                            Err(e) => {
                                unreadable = Some(e);
                                break;
                            }
                        }
                    }
                    if let Some(why) = unreadable {
                        bad_rows.report(&source, &row.id, BadKind::UnreadableImage, &why)?;
                        continue;
                    }
                }
                let images_ids = match tiling {
                    Some(_) => ImageIds::Each(&tiled),
                    None => ImageIds::Repeat(m),
                };
                let Some(segments) =
                    row_segments(&source, row, text, images_ids, m, max_tokens, &bad_rows)?
                else {
                    continue;
                };
                let images = index(&mut images_at, &row.images);
                let videos = index(&mut videos_at, &row.videos);
                let last_answer = row
                    .messages
                    .iter()
                    .rev()
                    .find(|(r, _)| *r == Role::Assistant)
                    .map(|(_, a)| a.as_str())
                    .unwrap_or("");
                examples.push(VlmExample {
                    id: row.id.clone(),
                    images,
                    videos,
                    segments,
                    kind: answer_kind_label(last_answer),
                });
            }
            let files = Box::new(match tiling {
                Some(t) => ImageFiles::tiled(
                    source.clone(),
                    images_at.0,
                    processor.clone(),
                    bad_rows.clone(),
                    t,
                    side,
                ),
                None => ImageFiles::new(
                    source.clone(),
                    images_at.0,
                    processor.clone(),
                    bad_rows.clone(),
                ),
            });
            let videos = Box::new(ImageFiles::videos(
                source,
                videos_at.0,
                processor.clone(),
                bad_rows.clone(),
                video.unwrap_or(1),
            ));
            Ok((examples, files, videos))
        };
        let (train_ex, train_files, train_videos) = build(train, None)?;
        let eval_source = eval.0.clone();
        let (eval_ex, eval_files, eval_videos) = build(eval, Some(eval_n))?;
        if train_ex.is_empty() {
            return Err(TrainError::NoData {
                path: train_files.source.clone(),
                msg: "no usable training row (see the skipped rows above)".into(),
            });
        }
        if eval_ex.is_empty() {
            return Err(TrainError::NoData {
                path: eval_source,
                msg: "no usable row to evaluate the VLM stage on".into(),
            });
        }
        Ok(Self {
            model,
            pad: text.ids.pad,
            train: train_ex,
            eval: eval_ex,
            train_images: Images::Files(train_files),
            eval_images: Images::Files(eval_files),
            train_videos: Some(train_videos),
            eval_videos: Some(eval_videos),
            tower_frozen,
            train_features: None,
            eval_features: None,
            lora_dropout: None,
            device: device.clone(),
        })
    }

    pub fn set_lora_dropout(&mut self, dropout: LoraDropout) {
        self.lora_dropout = Some(dropout);
    }

    /// Tower features of `images` (flat, in order) from `source`.
    ///
    /// # Shapes
    /// -> (N, L, Dv)
    fn features(
        &self,
        images: &[usize],
        source: &Images,
        precomputed: Option<&Tensor>,
    ) -> Result<Tensor> {
        let rows: Vec<u32> = images.iter().map(|&i| i as u32).collect();
        let index = Tensor::new(rows.as_slice(), &self.device)?;
        match source {
            // (N_all, L, Dv) -> (N, L, Dv)
            Images::Decoded(pixels) => match precomputed {
                Some(f) => Ok(f.index_select(&index, 0)?),
                None => tower_features(&self.model, &pixels.index_select(&index, 0)?),
            },
            Images::Files(files) => files.features(&self.model, images, self.tower_frozen),
        }
    }

    /// Projected rows of `videos` (flat, in order) from `files`: each
    /// video's frames' tower features aggregated over time, then the
    /// projector.
    ///
    /// # Shapes
    /// -> (N, M, D)
    fn video_rows(&self, videos: &[usize], files: Option<&ImageFiles>) -> Result<Tensor> {
        let (Some(files), Some(temporal)) = (files, self.model.temporal.as_ref()) else {
            return Err(TrainError::State(
                "video rows without the model's temporal aggregator".into(),
            ));
        };
        // (N, F, L, Dv) -> (N, L, Dv)
        let pooled =
            temporal.forward(&files.features(&self.model, videos, self.tower_frozen)?)?;
        // (N, L, Dv) -> (N, M, D)
        Ok(self
            .model
            .multi_modal_projector
            .forward_with_instruction(&pooled, None, None)?)
    }

    /// The decoder's input for a batch of examples whose images come from
    /// `source` and videos from `videos`: embeddings with the images and
    /// videos in place (early fusion) or the images attached to the cache
    /// (cross fusion), the tokens and labels, and the cache.
    ///
    /// # Shapes
    /// -> embeds (B, T, D)
    fn inputs(
        &self,
        examples: &[&VlmExample],
        source: &Images,
        videos: Option<&ImageFiles>,
        precomputed: Option<&Tensor>,
    ) -> Result<(Tensor, super::batch::TokenBatch, VlmCache)> {
        let segs: Vec<&[(SegmentKind, Vec<u32>)]> =
            examples.iter().map(|e| e.segments.as_slice()).collect();
        let batch = left_padded(&segs, self.pad, &trained, &self.device)?;
        let flat: Vec<usize> = examples
            .iter()
            .flat_map(|e| e.images.iter().copied())
            .collect();
        let flat_videos: Vec<usize> = examples
            .iter()
            .flat_map(|e| e.videos.iter().copied())
            .collect();
        let (b, t) = batch.ids.dims2()?;
        let text = self.model.language_model.embed(&batch.ids)?;
        let mut cache = self.model.new_cache(b);
        if flat.is_empty() && flat_videos.is_empty() {
            return Ok((text, batch, cache));
        }
        // (N, L, Dv) -> (N, M, D)
        let images = if flat.is_empty() {
            None
        } else {
            Some(self.model.multi_modal_projector.forward_with_instruction(
                &self.features(&flat, source, precomputed)?,
                None,
                None,
            )?)
        };
        let cfg = self.model.config();
        let mut visual: Vec<(u32, Tensor)> = images
            .iter()
            .map(|rows| (cfg.image_token_id, rows.clone()))
            .collect();
        if let (false, Some(v)) = (flat_videos.is_empty(), &cfg.video) {
            visual.push((v.video_token_id, self.video_rows(&flat_videos, videos)?));
        }
        let embeds = match (&cfg.fusion, images) {
            (FusionConfig::Early, _) => splice(&text, &visual, &batch.rows)?,
            (FusionConfig::Cross { .. }, None) => text,
            (FusionConfig::Cross { .. }, Some(images)) => {
                // one image per row (checked when the rows were read)
                self.model.attach_images(&mut cache, &images, None)?;
                text
            }
        };
        debug_assert_eq!(embeds.dims3()?.1, t);
        Ok((embeds, batch, cache))
    }

    /// Logits at every position and labels of a batch of examples.
    ///
    /// # Shapes
    /// -> logits (B, T, V)
    fn forward(
        &self,
        examples: &[&VlmExample],
        source: &Images,
        videos: Option<&ImageFiles>,
        precomputed: Option<&Tensor>,
    ) -> Result<(Tensor, super::batch::TokenBatch)> {
        let (embeds, batch, mut cache) = self.inputs(examples, source, videos, precomputed)?;
        let logits =
            self.model
                .forward_embeds(&embeds, Some(&batch.valid), &mut cache, LogitsFor::All)?;
        Ok((logits, batch))
    }

    /// The examples of `batch` whose images and videos can be read (all
    /// of them for decoded splits).
    fn usable<'e>(&'e self, batch: &[usize]) -> Result<Vec<&'e VlmExample>> {
        let mut out = Vec::with_capacity(batch.len());
        for &i in batch {
            let ex = &self.train[i];
            let ok = match &self.train_images {
                Images::Decoded(_) => true,
                Images::Files(files) => files.usable(ex)?,
            };
            let ok = ok
                && match &self.train_videos {
                    None => true,
                    Some(files) => files.usable(ex)?,
                };
            if ok {
                out.push(ex);
            }
        }
        Ok(out)
    }
}

/// The ids an image's `<image>` becomes in a tiling model's prompt: each
/// frame's tag, then `rows` placeholders, the text [`TileGrid::prompt`]
/// lays out tokenised without special tokens, as the engine expands an
/// image's placeholder at inference, so that training and `glimpse ask`
/// read the same tokens.
pub fn tile_prompt_ids(text: &TextSide, grid: &TileGrid, rows: usize) -> Result<Vec<u32>> {
    let image = text.ids.image;
    let token = text.tokenizer.id_to_token(image).ok_or_else(|| {
        TrainError::Config(format!(
            "the image placeholder {image} is not in the tokenizer"
        ))
    })?;
    let ids = text.encode(&grid.prompt(&token, rows))?;
    let slots = ids.iter().filter(|&&id| id == image).count();
    if slots != grid.frames() * rows {
        return Err(TrainError::State(format!(
            "a tiled image's prompt holds {slots} {token} tokens for its {} frames of {rows} rows",
            grid.frames()
        )));
    }
    Ok(ids)
}

/// The tokens a VLM stage trains: the answer's (the collate labels them,
/// and each shard's loss divides by their count).
fn trained(kind: SegmentKind) -> bool {
    kind == SegmentKind::Assistant
}

fn questions(
    corpus: &Corpus,
    split: &Split,
    qs: &[&glimpse_data::datasets::VqaExample],
    image_tokens: usize,
) -> Result<Vec<VlmExample>> {
    qs.iter()
        .enumerate()
        .map(|(k, q)| {
            Ok(VlmExample {
                id: k.to_string(),
                images: vec![split.image_row(&q.image)],
                videos: Vec::new(),
                segments: corpus.qa_segments(&q.question, &q.answer, Some(image_tokens))?,
                kind: answer_kind_label(&q.answer),
            })
        })
        .collect()
}

/// The tower's features as the projector reads them, in chunks.
///
/// # Shapes
/// `pixels`: (N, 3, H, W) -> (N, L, Dv)
pub fn tower_features(model: &Vlm, pixels: &Tensor) -> Result<Tensor> {
    let cfg = model.config();
    let layer = cfg.feature_layers.first().copied().unwrap_or(-1);
    let n = pixels.dim(0)?;
    let mut parts = Vec::new();
    let mut start = 0;
    while start < n {
        let len = 256.min(n - start);
        let h = model
            .vision_tower
            .hidden_state(&pixels.narrow(0, start, len)?, layer)?;
        parts.push(cfg.select.select(&h)?);
        start += len;
    }
    // One chunk (≤ 256 images) is the narrowed view itself; callers
    // `index_select` rows, which needs a contiguous tensor.
    Ok(Tensor::cat(&parts, 0)?.contiguous()?)
}

/// Early fusion for a batch: each row's placeholder positions take its
/// images' rows in order, image after image, and its videos' rows at their
/// own placeholder likewise (differentiable: one gather from a table).
/// `visual` holds per placeholder id every image (or video) of the batch,
/// row after row.
///
/// # Shapes
/// `text`: (B, T, D), each of `visual`: (N, M, D) -> (B, T, D)
fn splice(text: &Tensor, visual: &[(u32, Tensor)], rows: &[Vec<u32>]) -> Result<Tensor> {
    let (b, t, d) = text.dims3()?;
    // [(B·T, D); (N_1·M, D); (N_2·M, D); ...]
    let mut parts = vec![text.reshape((b * t, d))?];
    let mut index: Vec<u32> = (0..(b * t) as u32).collect();
    let mut start = b * t;
    for (placeholder, rows_of) in visual {
        let (n, m, _) = rows_of.dims3()?;
        // (N, M, D) -> (N·M, D)
        parts.push(rows_of.reshape((n * m, d))?.to_dtype(text.dtype())?);
        // the next row to place, counted over the whole batch
        let mut next = 0usize;
        for (r, row) in rows.iter().enumerate() {
            for (p, &id) in row.iter().enumerate() {
                if id == *placeholder {
                    if next < n * m {
                        index[r * t + p] = (start + next) as u32;
                    }
                    next += 1;
                }
            }
        }
        // every prompt's layout (placeholders per image, per tile, per
        // video) must hold exactly the rows its pictures became
        if next != n * m {
            return Err(TrainError::State(format!(
                "the batch's prompts hold {next} placeholder(s) {placeholder} for {} visual rows",
                n * m
            )));
        }
        start += n * m;
    }
    let table = Tensor::cat(&parts, 0)?;
    let index = Tensor::from_vec(index, b * t, text.device())?;
    // (B·T, D) -> (B, T, D)
    Ok(table.index_select(&index, 0)?.reshape((b, t, d))?)
}

impl Task for VlmTask<'_> {
    fn len(&self) -> usize {
        self.train.len()
    }

    /// Reads the batch's images and videos first (files): rows whose
    /// images or videos fail are reported and left out of the batch, and
    /// of its count.
    fn loss_terms(&self, batch: &[usize]) -> Result<Option<usize>> {
        let ex: Vec<&VlmExample> = batch.iter().map(|&i| &self.train[i]).collect();
        if let Images::Files(files) = &self.train_images {
            files.prepare(&ex)?;
        }
        if let Some(files) = &self.train_videos {
            files.prepare(&ex)?;
        }
        let segs: Vec<&[(SegmentKind, Vec<u32>)]> = self
            .usable(batch)?
            .into_iter()
            .map(|e| e.segments.as_slice())
            .collect();
        Ok(Some(scored_tokens(&segs, &trained)))
    }

    /// The LM head runs only at the answer positions.
    fn loss(&self, batch: &[usize], seed: u64, denominator: Option<usize>) -> Result<Tensor> {
        if let Some(d) = &self.lora_dropout {
            d.set_seed(seed);
        }
        let ex = self.usable(batch)?;
        if ex.is_empty() {
            return Ok(Tensor::zeros((), candle_core::DType::F32, &self.device)?);
        }
        let (embeds, b, mut cache) = self.inputs(
            &ex,
            &self.train_images,
            self.train_videos.as_deref(),
            self.train_features.as_ref(),
        )?;
        let vocab = self.model.config().text.vocab_size;
        labelled_loss(&b.labels, vocab, denominator, |rows| {
            // (B, T) positions -> (n, V) logits
            Ok(self
                .model
                .forward_embeds_at(&embeds, Some(&b.valid), &mut cache, rows)?)
        })
    }

    /// Exact-match accuracy of the greedy answers on the held-out rows
    /// (see [`exact_matches`]; a conversation counts when every answer in
    /// it is right), overall and by answer kind when there are several,
    /// and their loss.
    fn evaluate(&mut self) -> Result<EvalMetrics> {
        if let Some(d) = &self.lora_dropout {
            d.set_training(false);
        }
        let result = self.evaluate_rows();
        if let Some(d) = &self.lora_dropout {
            d.set_training(true);
        }
        result
    }
}

impl VlmTask<'_> {
    fn evaluate_rows(&mut self) -> Result<EvalMetrics> {
        let mut tally = KindTally::default();
        let mut loss = 0.0;
        let mut n = 0usize;
        // Evaluation takes logits at every position, (B, T, V) f32: rows
        // per chunk so that they stay near 256 MiB (a 49k vocabulary and
        // 400-token conversations allow 3 rows; easy-VQA's tiny model 128).
        let vocab = self.model.config().text.vocab_size.max(1);
        let longest = self
            .eval
            .iter()
            .map(|e| e.segments.iter().map(|(_, v)| v.len()).sum::<usize>())
            .max()
            .unwrap_or(1)
            .max(1);
        let rows = ((256usize << 20) / (vocab * longest * 4)).clamp(1, 128);
        for chunk in self.eval.chunks(rows) {
            let mut ex: Vec<&VlmExample> = chunk.iter().collect();
            let files = [
                match &self.eval_images {
                    Images::Files(files) => Some(&**files),
                    Images::Decoded(_) => None,
                },
                self.eval_videos.as_deref(),
            ];
            for files in files.into_iter().flatten() {
                let ok = files.prepare(&ex)?;
                ex = ex
                    .into_iter()
                    .zip(ok)
                    .filter(|(_, ok)| *ok)
                    .map(|(e, _)| e)
                    .collect();
            }
            if ex.is_empty() {
                continue;
            }
            let (logits, b) = self.forward(
                &ex,
                &self.eval_images,
                self.eval_videos.as_deref(),
                self.eval_features.as_ref(),
            )?;
            loss += f64::from(masked_lm_loss(&logits, &b.labels, true)?.to_scalar::<f32>()?)
                * ex.len() as f64;
            n += ex.len();
            for (e, ok) in ex.iter().zip(exact_matches(&logits, &b.label_rows)?) {
                tally.add(e.kind, ok);
            }
        }
        // by kind when there are several (align's examples are all captions)
        let by_kind = (tally.by_kind.len() > 1)
            .then(|| tally.by_kind.iter())
            .into_iter()
            .flatten()
            .map(|(k, a)| (format!("{k}_accuracy"), a.fraction()))
            .collect();
        Ok(EvalMetrics {
            loss: (n > 0).then(|| loss / n as f64),
            accuracy: (n > 0).then(|| tally.overall.fraction()),
            extra: by_kind,
        })
    }
}
