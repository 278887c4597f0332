//! Discrete visual tokens measured (issue 21): a VQ-VAE's reconstruction
//! PSNR and codebook use on held-out images ([`evaluate_vq`]), and a
//! discrete-token model's drawings judged by a contrastive dual encoder
//! ([`evaluate_drawing`]): for every "a {color} {shape}" prompt and
//! several seeds, the drawn image's zero-shot class (the closest of the
//! 24 captions, as [`crate::zeroshot`] classifies) against the prompt.

use serde_json::{json, Value};

use super::{Accuracy, ZeroShotReport};

/// Reconstruction and codebook figures of a VQ over a set of images.
#[derive(Debug, Clone, Default)]
pub struct VqReport {
    pub images: usize,
    /// Mean over images of each one's PSNR (dB), pixels as the VQ reads them.
    pub psnr_db: f64,
    /// Mean squared error over every pixel value (pixels in [−1, 1]).
    pub mse: f64,
    /// Codes used at least once over all the images, of `num_embeddings`.
    pub codes_used: usize,
    pub num_embeddings: usize,
    pub usage: f64,
    /// exp(entropy) of the codes' distribution.
    pub perplexity: f64,
    /// (rows, columns) of an image's codes.
    pub grid: (usize, usize),
    /// With a judge: zero-shot colour / shape of the images as the VQ
    /// reads them (resized) and of their reconstructions.
    pub judged_inputs: Option<ZeroShotReport>,
    pub judged_reconstructions: Option<ZeroShotReport>,
    /// The first images as the VQ reads them and their reconstructions,
    /// 8-bit RGB (as many as asked for).
    pub examples: Vec<(image::RgbImage, image::RgbImage)>,
}

impl VqReport {
    pub fn to_json(&self) -> Value {
        json!({
            "images": self.images,
            "psnr_db": self.psnr_db,
            "mse": self.mse,
            "codes_used": self.codes_used,
            "num_embeddings": self.num_embeddings,
            "codebook_usage": self.usage,
            "perplexity": self.perplexity,
            "grid": [self.grid.0, self.grid.1],
            "judged_inputs": self.judged_inputs.as_ref().map(ZeroShotReport::to_json),
            "judged_reconstructions": self.judged_reconstructions.as_ref().map(ZeroShotReport::to_json),
        })
    }
}

/// Drawings judged: overall and per prompt.
#[derive(Debug, Clone, Default)]
pub struct DrawReport {
    /// Colour, shape and both right, over every drawing.
    pub judged: ZeroShotReport,
    /// Per prompt (in [`crate::caption_prompts`] order): both right.
    pub per_prompt: Vec<(String, Accuracy)>,
    pub seeds: Vec<u64>,
    pub cfg_scale: f32,
    pub temperature: f32,
    /// Seconds spent drawing (sampling and decoding), in all.
    pub draw_secs: f64,
}

impl DrawReport {
    pub fn to_json(&self) -> Value {
        let mut out = self.judged.to_json();
        out["per_prompt"] = self
            .per_prompt
            .iter()
            .map(|(p, a)| json!({"prompt": p, "correct": a.correct, "total": a.total}))
            .collect();
        out["seeds"] = json!(self.seeds);
        out["cfg"] = json!(self.cfg_scale);
        out["temperature"] = json!(self.temperature);
        out["draw_secs"] = json!(self.draw_secs);
        out
    }
}

#[cfg(feature = "engine")]
pub use run::{evaluate_drawing, evaluate_vq};

#[cfg(feature = "engine")]
mod run {
    use candle_core::Tensor;
    use glimpse_data::datasets::ImageAttributes;
    use glimpse_data::vq_processor::VqProcessor;
    use glimpse_data::{load_rgb, ImageLimits};
    use glimpse_engine::pipeline::{DiscretePipeline, DrawOptions, DualPipeline, Result};
    use glimpse_engine::ImageInput;
    use glimpse_models::vq::{psnr_db, CodeStats, VqTokenizer};

    use super::{DrawReport, VqReport};
    use crate::zeroshot::{caption_attributes, caption_prompts};
    use crate::{progress_bar, Accuracy, ZeroShotReport};

    /// Images per encoder pass.
    const BATCH: usize = 32;

    /// Index of the largest value, the first of equals.
    fn argmax(row: &[f32]) -> usize {
        let mut best = 0;
        for (i, v) in row.iter().enumerate() {
            if *v > row[best] {
                best = i;
            }
        }
        best
    }

    /// The closest of the 24 captions (see [`crate::zeroshot`]) for each
    /// image given as PNG bytes.
    fn judge(
        dual: &DualPipeline,
        captions_t: &Tensor,
        pngs: Vec<ImageInput>,
    ) -> Result<Vec<usize>> {
        let refs: Vec<&ImageInput> = pngs.iter().collect();
        // (B, E) x (E, 24) -> (B, 24)
        let sim = dual
            .image_embeds_of(&refs)?
            .matmul(captions_t)?
            .to_vec2::<f32>()?;
        Ok(sim.iter().map(|r| argmax(r)).collect())
    }

    /// (E, 24) caption embeddings, transposed for a matmul.
    fn caption_matrix(dual: &DualPipeline) -> Result<Tensor> {
        let prompts = caption_prompts();
        let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
        Ok(dual.text_embeds(&prompts)?.t()?.contiguous()?)
    }

    /// (1, 3, S, S) pixels as `processor` normalises them, as a PNG.
    fn png(processor: &VqProcessor, pixels: &Tensor, name: String) -> Result<ImageInput> {
        let (_, _, h, w) = pixels.dims4()?;
        let img = processor.to_rgb(&pixels.flatten_all()?.to_vec1::<f32>()?, h, w)?;
        encode_png(&img, name)
    }

    fn encode_png(img: &image::RgbImage, name: String) -> Result<ImageInput> {
        let mut bytes = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| glimpse_engine::pipeline::PipelineError::Usage(format!("{name}: {e}")))?;
        Ok(ImageInput { name, bytes })
    }

    /// Encodes and reconstructs every image (batches of 32): PSNR per
    /// image, the codes over all. With `judge`, each image as the VQ reads
    /// it and its reconstruction are also classified zero-shot.
    pub fn evaluate_vq(
        vq: &VqTokenizer,
        processor: &VqProcessor,
        images: &[ImageAttributes],
        judge_with: Option<&DualPipeline>,
        keep_examples: usize,
        progress: bool,
    ) -> Result<VqReport> {
        let model = &vq.model;
        let k = model.config().num_embeddings;
        let limits = ImageLimits::default();
        let captions = judge_with.map(caption_matrix).transpose()?;
        let mut inputs = ZeroShotReport::default();
        let mut recons = ZeroShotReport::default();
        let (mut psnr_sum, mut mse_sum, mut values) = (0.0f64, 0.0f64, 0usize);
        let mut codes: Vec<u32> = Vec::new();
        let mut grid = (0, 0);
        let mut examples = Vec::new();
        let bar = progress_bar(images.len(), progress, "images");
        for chunk in images.chunks(BATCH) {
            let mut pixels = Vec::with_capacity(chunk.len());
            for a in chunk {
                let name = a.image.display().to_string();
                let img = load_rgb(&a.image, &limits)?;
                let (v, h, w) = processor.preprocess(&img, &name)?;
                // CHW values -> (1, 3, H, W)
                pixels.push(Tensor::from_vec(
                    v,
                    (1, 3, h, w),
                    &candle_core::Device::Cpu,
                )?);
            }
            let x = Tensor::cat(&pixels, 0)?;
            let q = model.encode(&x)?;
            let (_, gh, gw) = q.codes.dims3()?;
            grid = (gh, gw);
            codes.extend(q.codes.flatten_all()?.to_vec1::<u32>()?);
            let y = model.decode_latents(&q.quantized)?;
            // per image: mean squared error over (3, S, S)
            let per_image = (&y - &x)?
                .sqr()?
                .flatten_from(1)?
                .mean(1)?
                .to_vec1::<f32>()?;
            for mse in &per_image {
                psnr_sum += psnr_db(f64::from(*mse));
                mse_sum += f64::from(*mse);
                values += 1;
            }
            for i in 0..chunk.len() {
                if examples.len() >= keep_examples {
                    break;
                }
                let rgb = |t: &Tensor| -> Result<image::RgbImage> {
                    let t = t.narrow(0, i, 1)?;
                    Ok(processor.to_rgb(
                        &t.flatten_all()?.to_vec1::<f32>()?,
                        t.dim(2)?,
                        t.dim(3)?,
                    )?)
                };
                examples.push((rgb(&x)?, rgb(&y)?));
            }
            if let (Some(dual), Some(c)) = (judge_with, &captions) {
                let name = |i: usize, what: &str| format!("{} ({what})", chunk[i].image.display());
                let ins = (0..chunk.len())
                    .map(|i| png(processor, &x.narrow(0, i, 1)?, name(i, "input")))
                    .collect::<Result<Vec<_>>>()?;
                let outs = (0..chunk.len())
                    .map(|i| png(processor, &y.narrow(0, i, 1)?, name(i, "reconstruction")))
                    .collect::<Result<Vec<_>>>()?;
                for (a, best) in chunk.iter().zip(judge(dual, c, ins)?) {
                    inputs.add(a.color, a.shape, best);
                }
                for (a, best) in chunk.iter().zip(judge(dual, c, outs)?) {
                    recons.add(a.color, a.shape, best);
                }
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        let stats = CodeStats::of_slice(&codes, k)?;
        let n = values.max(1) as f64;
        Ok(VqReport {
            images: images.len(),
            psnr_db: psnr_sum / n,
            mse: mse_sum / n,
            codes_used: stats.distinct,
            num_embeddings: k,
            usage: stats.usage,
            perplexity: stats.perplexity,
            grid,
            judged_inputs: judge_with.map(|_| inputs),
            judged_reconstructions: judge_with.map(|_| recons),
            examples,
        })
    }

    /// Draws every "a {color} {shape}" prompt once per seed (`opts`' seed
    /// replaced) and judges each drawing by its closest caption.
    pub fn evaluate_drawing(
        model: &DiscretePipeline,
        judge_with: &DualPipeline,
        seeds: &[u64],
        opts: &DrawOptions,
        progress: bool,
    ) -> Result<DrawReport> {
        let captions = caption_matrix(judge_with)?;
        let prompts = caption_prompts();
        let mut report = DrawReport {
            seeds: seeds.to_vec(),
            cfg_scale: opts.cfg_scale,
            temperature: opts.sampling.temperature,
            ..Default::default()
        };
        let bar = progress_bar(prompts.len() * seeds.len(), progress, "drawings");
        for (k, prompt) in prompts.iter().enumerate() {
            let (color, shape) = caption_attributes(k).unwrap_or_default();
            let mut pngs = Vec::with_capacity(seeds.len());
            for &seed in seeds {
                let mut o = opts.clone();
                o.sampling.seed = seed;
                let d = model.draw(prompt, &o, |_, _| {})?;
                report.draw_secs += d.sample_secs + d.decode_secs;
                pngs.push(encode_png(&d.image, format!("{prompt} (seed {seed})"))?);
                bar.inc(1);
            }
            let mut acc = Accuracy::default();
            for best in judge(judge_with, &captions, pngs)? {
                report.judged.add(Some(color), Some(shape), best);
                acc.add(best == k);
            }
            report.per_prompt.push((prompt.clone(), acc));
        }
        bar.finish_and_clear();
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON carries the tallies as `ZeroShotReport` counts them and
    /// the per-prompt counts beside them.
    #[test]
    fn draw_report_json_counts() {
        let mut r = DrawReport {
            seeds: vec![0, 1],
            cfg_scale: 3.0,
            temperature: 1.0,
            ..Default::default()
        };
        // caption 0 is "a red circle", 1 "a red rectangle"
        r.judged.add(Some("red"), Some("circle"), 0);
        r.judged.add(Some("red"), Some("circle"), 1);
        r.per_prompt.push((
            "a red circle".into(),
            Accuracy {
                correct: 1,
                total: 2,
            },
        ));
        let j = r.to_json();
        assert_eq!(j["both"]["correct"], 1);
        assert_eq!(j["colour"]["correct"], 2);
        assert_eq!(j["shape"]["total"], 2);
        assert_eq!(j["per_prompt"][0]["prompt"], "a red circle");
        assert_eq!(j["per_prompt"][0]["total"], 2);
        assert_eq!(j["seeds"], json!([0, 1]));
    }
}
