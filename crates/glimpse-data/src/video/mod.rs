//! Video input: frames sampled uniformly, each with its index and
//! timestamp, from an animated GIF or WebP (the `image` crate), a folder
//! of frame images, or an MP4 / WebM / MKV file (the system `ffmpeg` and
//! `ffprobe`, as child processes).
//!
//! Frames are decoded as they are needed and only the sampled ones kept:
//! GIF and WebP stream from the open file, one frame at a time; a folder
//! decodes only its sampled files; ffmpeg is asked for the sampled frames
//! alone, as raw RGB over a pipe. Every size is checked against
//! [`ImageLimits`] before a pixel is decoded, and the sampled frames
//! together against [`VideoLimits::max_sampled_bytes`].

mod animated;
mod ffmpeg;
mod folder;
mod sampling;

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use image::RgbImage;

pub use folder::natural_cmp;
pub use sampling::{uniform_indices, FrameSampling};

use crate::error::{DataError, Result};
use crate::files::{open_bounded, ReadError};
use crate::image_io::ImageLimits;

/// One sampled frame.
#[derive(Debug, Clone)]
pub struct VideoFrame {
    /// Position in the source, from 0.
    pub index: usize,
    /// When the frame is shown, in seconds from the start.
    pub timestamp: f64,
    pub image: RgbImage,
}

/// Where the frames came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoSource {
    Gif,
    WebP,
    /// A folder of frame images.
    FrameFolder,
    /// MP4 / MOV (ISO base media), through ffmpeg.
    Mp4,
    /// WebM / MKV (Matroska), through ffmpeg.
    Matroska,
}

/// A video's sampled frames and what the sampling was based on.
#[derive(Debug, Clone)]
pub struct Video {
    pub source: VideoSource,
    /// Frames in the source, `T` of the sampling rule.
    pub total_frames: usize,
    /// Frames per second of the source: the container's average rate, a
    /// GIF or WebP's frame count over its duration, or a folder's given
    /// (or default) rate.
    pub fps: f64,
    pub width: u32,
    pub height: u32,
    /// The sampled frames, in order.
    pub frames: Vec<VideoFrame>,
}

/// Bounds on what one video may cost.
#[derive(Debug, Clone)]
pub struct VideoLimits {
    /// Each frame's size, checked from the header before decoding.
    pub frame: ImageLimits,
    /// Largest video file accepted (ffmpeg, GIF and WebP stream it).
    pub max_file_bytes: u64,
    /// Most frames a GIF / WebP may hold or a folder may list (their
    /// frames are counted before sampling).
    pub max_source_frames: usize,
    /// Most bytes the sampled frames may take together as RGB.
    pub max_sampled_bytes: u64,
    /// Wall-clock limit on each ffmpeg / ffprobe run.
    pub ffmpeg_timeout: Duration,
}

impl Default for VideoLimits {
    fn default() -> Self {
        Self {
            frame: ImageLimits::default(),
            max_file_bytes: 16 << 30,
            max_source_frames: 1_000_000,
            // 64 frames of 4K RGB are 1.6 GB
            max_sampled_bytes: 2 << 30,
            ffmpeg_timeout: Duration::from_secs(300),
        }
    }
}

/// Frame rate given to a folder of frames when none is: ffmpeg's image
/// sequence reader assumes the same.
pub const DEFAULT_FOLDER_FPS: f64 = 25.0;

/// How to load a video.
#[derive(Debug, Clone)]
pub struct VideoOptions {
    pub sampling: FrameSampling,
    /// Frame rate of a folder of frames (timestamps are `index / fps`);
    /// [`DEFAULT_FOLDER_FPS`] when `None`. Files carry their own.
    pub folder_fps: Option<f64>,
    pub limits: VideoLimits,
    /// The programs run for MP4 / WebM / MKV, looked up on `PATH` by
    /// default.
    pub ffmpeg: PathBuf,
    pub ffprobe: PathBuf,
    /// What errors call the video; its path when `None` (a server names
    /// the request's video, not the temporary file holding its bytes).
    pub name: Option<String>,
}

impl Default for VideoOptions {
    fn default() -> Self {
        Self {
            sampling: FrameSampling::default(),
            folder_fps: None,
            limits: VideoLimits::default(),
            ffmpeg: PathBuf::from("ffmpeg"),
            ffprobe: PathBuf::from("ffprobe"),
            name: None,
        }
    }
}

impl VideoOptions {
    /// What errors call the video at `path`.
    fn video_name(&self, path: &Path) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| path.display().to_string())
    }
}

/// Loads the sampled frames of the video at `path`: a folder of frame
/// images, or a file whose format is sniffed from its first bytes (GIF,
/// WebP, MP4 / MOV, WebM / MKV), not its extension.
pub fn load_video(path: &Path, options: &VideoOptions) -> Result<Video> {
    let name = options.video_name(path);
    options
        .sampling
        .validate()
        .map_err(|msg| DataError::video(&name, msg))?;
    let meta = std::fs::metadata(path).map_err(|e| DataError::video(&name, ReadError::from(e)))?;
    if meta.is_dir() {
        return folder::load(path, options);
    }
    let mut file = open_bounded(path, options.limits.max_file_bytes, "video")
        .map_err(|e| DataError::video(&name, e))?;
    let mut head = [0u8; 12];
    let got = read_head(&mut file, &mut head).map_err(|e| DataError::video(&name, e))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| DataError::video(&name, e))?;
    match sniff(&head[..got]) {
        Some(Container::Gif) => animated::load(file, animated::Format::Gif, &name, options),
        Some(Container::WebP) => animated::load(file, animated::Format::WebP, &name, options),
        Some(Container::Mp4) => ffmpeg::load(file, VideoSource::Mp4, &name, options),
        Some(Container::Matroska) => ffmpeg::load(file, VideoSource::Matroska, &name, options),
        None if got == 0 => Err(DataError::video(&name, "empty file")),
        None => Err(DataError::video(
            &name,
            "not a supported video (GIF, WebP, MP4, WebM or MKV file, or a folder of frames)",
        )),
    }
}

enum Container {
    Gif,
    WebP,
    Mp4,
    Matroska,
}

/// The container, from the file's first 12 bytes.
fn sniff(head: &[u8]) -> Option<Container> {
    if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        return Some(Container::Gif);
    }
    if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        return Some(Container::WebP);
    }
    // EBML magic: every Matroska file, WebM included, starts with it
    if head.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
        return Some(Container::Matroska);
    }
    // ISO base media: a box size then its type; `ftyp` leads MP4 and
    // modern MOV, older QuickTime files may open on another top-level box
    if head.len() >= 8 && matches!(&head[4..8], b"ftyp" | b"moov" | b"mdat" | b"wide" | b"free") {
        return Some(Container::Mp4);
    }
    None
}

/// Reads up to `buf.len()` bytes (fewer only at the end of the file).
fn read_head(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The sampled indices of a video, or its error naming the video.
fn sample(name: &str, options: &VideoOptions, total: usize, fps: f64) -> Result<Vec<usize>> {
    options
        .sampling
        .indices(total, fps)
        .map_err(|msg| DataError::video(name, msg))
}

/// Refuses a sampling whose frames would take more than the budget as RGB.
fn check_sampled_bytes(
    name: &str,
    limits: &VideoLimits,
    count: usize,
    width: u32,
    height: u32,
) -> Result<()> {
    let bytes = (count as u64)
        .saturating_mul(u64::from(width) * u64::from(height))
        .saturating_mul(3);
    if bytes > limits.max_sampled_bytes {
        return Err(DataError::video(
            name,
            format!(
                "{count} frames of {width}x{height} take {bytes} bytes as RGB, over the limit of {}; \
                 sample fewer (--frames / --max-frames)",
                limits.max_sampled_bytes
            ),
        ));
    }
    Ok(())
}
