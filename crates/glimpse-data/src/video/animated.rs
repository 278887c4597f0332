//! Animated GIF and WebP through the `image` crate's animation decoders.
//!
//! The frame count and delays are not in either header (the `image`
//! crate exposes no WebP frame count), so the file is read twice, one
//! frame at a time: first for the count and delays, then, with the indices
//! known, to keep the sampled frames; the second pass stops after the last
//! one. No more than one decoded frame (plus the decoder's canvas) is held
//! besides the kept ones.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};

use image::codecs::gif::GifDecoder;
use image::codecs::webp::WebPDecoder;
use image::{AnimationDecoder, Frames, ImageDecoder};

use super::{check_sampled_bytes, sample, Video, VideoFrame, VideoOptions, VideoSource};
use crate::error::{DataError, Result};
use crate::image_io::composite_on_white;

#[derive(Debug, Clone, Copy)]
pub(super) enum Format {
    Gif,
    WebP,
}

/// A delay this short or shorter is shown as [`SHORT_DELAY_SHOWN_MS`]:
/// browsers do so for GIF (a delay of 0 or 1 hundredths is common in files
/// made for them) and Chromium for WebP as well.
const SHORT_DELAY_MS: f64 = 10.0;
const SHORT_DELAY_SHOWN_MS: f64 = 100.0;

pub(super) fn load(
    file: File,
    format: Format,
    name: &str,
    options: &VideoOptions,
) -> Result<Video> {
    let source = match format {
        Format::Gif => VideoSource::Gif,
        Format::WebP => VideoSource::WebP,
    };
    let limits = &options.limits;

    // pass 1: how many frames, and when each is shown
    let (width, height, frames) = open_frames(&file, format, name, options)?;
    let mut starts = Vec::new();
    let mut clock_ms = 0.0f64;
    for (k, frame) in frames.enumerate() {
        if k >= limits.max_source_frames {
            return Err(DataError::video(
                name,
                format!("more than {} frames", limits.max_source_frames),
            ));
        }
        let frame = frame.map_err(|e| decode_error(name, k, e))?;
        starts.push(clock_ms / 1000.0);
        let (numer, denom) = frame.delay().numer_denom_ms();
        let delay = f64::from(numer) / f64::from(denom.max(1));
        clock_ms += if delay <= SHORT_DELAY_MS {
            SHORT_DELAY_SHOWN_MS
        } else {
            delay
        };
    }
    let total = starts.len();
    // clock_ms > 0 whenever there is a frame: short delays count as 100 ms
    let fps = total as f64 / (clock_ms / 1000.0);
    let indices = sample(name, options, total, fps)?;
    check_sampled_bytes(name, limits, indices.len(), width, height)?;

    // pass 2: decode again, keeping the sampled frames
    let (_, _, frames) = open_frames(&file, format, name, options)?;
    let mut kept = Vec::with_capacity(indices.len());
    let mut wanted = indices.iter().copied().peekable();
    for (k, frame) in frames.enumerate() {
        let Some(&next) = wanted.peek() else { break };
        let frame = frame.map_err(|e| decode_error(name, k, e))?;
        if k == next {
            wanted.next();
            kept.push(VideoFrame {
                index: k,
                timestamp: starts[k],
                image: composite_on_white(frame.buffer()),
            });
        }
    }
    if kept.len() != indices.len() {
        // the file changed between the passes
        return Err(DataError::video(
            name,
            format!(
                "frame {} is gone on the second read (file changed?)",
                indices[kept.len()]
            ),
        ));
    }
    Ok(Video {
        source,
        total_frames: total,
        fps,
        width,
        height,
        frames: kept,
    })
}

/// A decoder over the file from its start, its canvas size checked against
/// the frame limits before any frame is decoded. A still WebP (no
/// animation chunk) is a single frame with no delay.
fn open_frames<'a>(
    file: &'a File,
    format: Format,
    name: &str,
    options: &VideoOptions,
) -> Result<(u32, u32, Frames<'a>)> {
    let mut reader = BufReader::new(file);
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|e| DataError::video(name, e))?;
    let header_error = |e: image::ImageError| {
        DataError::video(
            name,
            format!("cannot read header (no frames, or a truncated or corrupt file): {e}"),
        )
    };
    let limits = &options.limits.frame;
    let check = |w: u32, h: u32| {
        limits
            .check(w, h)
            .map_err(|msg| DataError::video(name, msg))
    };
    match format {
        Format::Gif => {
            let mut decoder = GifDecoder::new(reader).map_err(header_error)?;
            let (w, h) = decoder.dimensions();
            check(w, h)?;
            decoder
                .set_limits(decode_limits(options))
                .map_err(|e| DataError::video(name, e))?;
            Ok((w, h, decoder.into_frames()))
        }
        Format::WebP => {
            let decoder = WebPDecoder::new(reader).map_err(header_error)?;
            let (w, h) = decoder.dimensions();
            check(w, h)?;
            if decoder.has_animation() {
                return Ok((w, h, decoder.into_frames()));
            }
            // the animation decoder reads animated files only
            let still =
                image::DynamicImage::from_decoder(decoder).map_err(|e| decode_error(name, 0, e))?;
            let frame = image::Frame::new(still.into_rgba8());
            Ok((w, h, Frames::new(Box::new(std::iter::once(Ok(frame))))))
        }
    }
}

/// What the GIF decoder may allocate (it checks each frame against this):
/// an RGBA canvas and a frame at the pixel limit, plus slack, as for still
/// images.
fn decode_limits(options: &VideoOptions) -> image::Limits {
    let frame = &options.limits.frame;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(frame.max_pixels.saturating_mul(8).saturating_add(1 << 26));
    limits.max_image_width = Some(frame.max_side);
    limits.max_image_height = Some(frame.max_side);
    limits
}

fn decode_error(name: &str, k: usize, e: image::ImageError) -> DataError {
    DataError::video(
        name,
        format!("frame {k}: cannot decode (truncated or corrupt file?): {e}"),
    )
}
