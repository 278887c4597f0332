//! A folder of frame images as a video: the files in natural name order
//! (`frame2.png` before `frame10.png`), shown at a given frame rate.
//! Only the sampled files are read and decoded.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use super::DEFAULT_FOLDER_FPS;
use super::{check_sampled_bytes, sample, Video, VideoFrame, VideoOptions, VideoSource};
use crate::error::{DataError, Result};
use crate::image_io::load_rgb;

/// Extensions of the frame files a folder may hold (what `load_rgb`
/// decodes), compared without case.
const FRAME_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "webp", "gif", "bmp"];

pub(super) fn load(dir: &Path, options: &VideoOptions) -> Result<Video> {
    let name = options.video_name(dir);
    let fps = options.folder_fps.unwrap_or(DEFAULT_FOLDER_FPS);
    if !(fps.is_finite() && fps > 0.0) {
        return Err(DataError::video(
            &name,
            format!("frame rate {fps}: a positive number is needed"),
        ));
    }
    let files = list_frames(dir, &name, options.limits.max_source_frames)?;
    let indices = sample(&name, options, files.len(), fps)?;

    let mut frames: Vec<VideoFrame> = Vec::with_capacity(indices.len());
    for &index in &indices {
        let (file_name, path) = &files[index];
        let image = load_rgb(path, &options.limits.frame)
            .map_err(|e| DataError::video(&name, format!("frame {file_name}: {e}")))?;
        match frames.first() {
            // the budget needs a size: the first frame's, which all must share
            None => check_sampled_bytes(
                &name,
                &options.limits,
                indices.len(),
                image.width(),
                image.height(),
            )?,
            Some(first) if first.image.dimensions() != image.dimensions() => {
                let (w0, h0) = first.image.dimensions();
                return Err(DataError::video(
                    &name,
                    format!(
                        "frame {file_name} is {}x{} but frame {} is {w0}x{h0}; a video's frames share one size",
                        image.width(),
                        image.height(),
                        files[first.index].0
                    ),
                ));
            }
            Some(_) => {}
        }
        frames.push(VideoFrame {
            index,
            timestamp: index as f64 / fps,
            image,
        });
    }
    let (width, height) = frames[0].image.dimensions();
    Ok(Video {
        source: VideoSource::FrameFolder,
        total_frames: files.len(),
        fps,
        width,
        height,
        frames,
    })
}

/// The folder's frame files (name, path) in natural order. Hidden files
/// (a leading `.`, such as `.DS_Store`) are passed over; anything else
/// that is not a regular file with an image extension is an error naming
/// it, rather than a frame silently left out.
fn list_frames(dir: &Path, name: &str, max: usize) -> Result<Vec<(String, PathBuf)>> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::video(name, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DataError::video(name, e))?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if file_name.starts_with('.') {
            continue;
        }
        if files.len() >= max {
            return Err(DataError::video(name, format!("more than {max} frames")));
        }
        let path = entry.path();
        // follows symlinks: a link to a frame is a frame
        let is_file = std::fs::metadata(&path).is_ok_and(|m| m.is_file());
        if !is_file {
            return Err(DataError::video(
                name,
                format!("{file_name} is not a regular file; a frame folder holds only image files"),
            ));
        }
        let extension = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        if !extension.is_some_and(|e| FRAME_EXTENSIONS.contains(&e.as_str())) {
            return Err(DataError::video(
                name,
                format!(
                    "{file_name} is not an image; a frame folder holds only PNG, JPEG, WebP, GIF or BMP files"
                ),
            ));
        }
        files.push((file_name, path));
    }
    if files.is_empty() {
        return Err(DataError::video(name, "empty folder: no frame images"));
    }
    files.sort_by(|a, b| natural_cmp(&a.0, &b.0));
    Ok(files)
}

/// Natural order of file names: runs of ASCII digits compare as numbers
/// (`frame2` < `frame10`), everything else byte by byte. Names equal that
/// way (`frame01`, `frame1`) fall back to plain byte order, so the order
/// is total.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let (dx, rest_x) = split_digits(x);
                let (dy, rest_y) = split_digits(y);
                let (nx, ny) = (trim_zeros(dx), trim_zeros(dy));
                // equal-length digit strings without leading zeros compare
                // as numbers byte by byte; a longer one is larger
                let order = nx.len().cmp(&ny.len()).then_with(|| nx.cmp(ny));
                if order != Ordering::Equal {
                    return order;
                }
                (x, y) = (rest_x, rest_y);
            }
            (Some(c), Some(d)) => {
                if c != d {
                    return c.cmp(d);
                }
                (x, y) = (&x[1..], &y[1..]);
            }
        }
    }
}

fn split_digits(s: &[u8]) -> (&[u8], &[u8]) {
    let end = s
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(s.len());
    s.split_at(end)
}

fn trim_zeros(digits: &[u8]) -> &[u8] {
    let start = digits
        .iter()
        .position(|&c| c != b'0')
        .unwrap_or(digits.len());
    &digits[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        let mut names = vec![
            "frame10.png",
            "frame2.png",
            "frame1.png",
            "frame01.png",
            "a.png",
            "frame.png",
            "frame2b.png",
            "frame2a.png",
        ];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            [
                "a.png",
                "frame.png",
                "frame01.png",
                "frame1.png",
                "frame2.png",
                "frame2a.png",
                "frame2b.png",
                "frame10.png"
            ]
        );
    }
}
