//! MP4 / MOV and WebM / MKV through the system `ffprobe` and `ffmpeg`.
//!
//! `ffprobe` counts the frames (packets of the first video stream) and
//! reads the size and frame rate; `ffmpeg` then decodes and sends back
//! only the sampled frames, as raw RGB on its stdout, where exactly their
//! bytes are read. Both run as child processes under a timeout, their
//! output bounded.
//!
//! What ffmpeg may touch is pinned down: it reads the file glimpse opened
//! and checked (a regular file, handed over as its stdin, reopened as
//! `/dev/stdin` so it can seek), with the container's demuxer named
//! (`-f`: no format guessing) and only the `file` protocol allowed, so a
//! file cannot make it open a URL. Frames come out as coded, without the
//! container's display rotation (`-noautorotate`), so their size is the
//! one probed.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use image::RgbImage;
use serde::Deserialize;

use super::{check_sampled_bytes, sample, Video, VideoFrame, VideoOptions, VideoSource};
use crate::error::{DataError, Result};

/// Most bytes of ffprobe's JSON read (one stream's few fields).
const MAX_PROBE_BYTES: u64 = 1 << 20;
/// Most bytes of a tool's stderr kept for its error message.
const MAX_STDERR_BYTES: u64 = 16 << 10;

pub(super) fn load(
    file: File,
    source: VideoSource,
    name: &str,
    options: &VideoOptions,
) -> Result<Video> {
    let demuxer = match source {
        VideoSource::Mp4 => "mov",
        _ => "matroska",
    };
    let probe_input = file.try_clone().map_err(|e| DataError::video(name, e))?;
    let stream = probe(probe_input, demuxer, name, options)?;
    let (width, height) = (stream.width, stream.height);
    options
        .limits
        .frame
        .check(width, height)
        .map_err(|msg| DataError::video(name, msg))?;
    let total = stream.frame_count();
    let fps = stream.fps();
    if fps <= 0.0 {
        // timestamps are index / fps
        return Err(DataError::video(name, "ffprobe finds no frame rate"));
    }
    let indices = sample(name, options, total, fps)?;
    check_sampled_bytes(name, &options.limits, indices.len(), width, height)?;

    let frame_bytes = width as usize * height as usize * 3;
    let want = indices.len() * frame_bytes;
    // one output frame per selected frame, none duplicated to keep the
    // input's rate: `-fps_mode passthrough` (ffmpeg 5.1+), or its older
    // spelling `-vsync passthrough` for an ffmpeg that does not know it
    let mut run = None;
    for sync_flag in ["-fps_mode", "-vsync"] {
        let input = file.try_clone().map_err(|e| DataError::video(name, e))?;
        let command = decode_command(options, demuxer, total, indices.len(), sync_flag);
        let attempt = run_bounded(command, input, want as u64, "ffmpeg", name, options)?;
        let unknown_flag =
            !attempt.status.success() && attempt.stderr.contains("Unrecognized option 'fps_mode'");
        if !(sync_flag == "-fps_mode" && unknown_flag) {
            run = Some(attempt);
            break;
        }
    }
    let Some(run) = run else {
        return Err(DataError::video(
            name,
            "ffmpeg knows neither -fps_mode nor -vsync",
        ));
    };
    if !run.status.success() {
        return Err(tool_failed("ffmpeg", &run, name));
    }
    if run.stdout.len() != want {
        return Err(DataError::video(
            name,
            format!(
                "ffmpeg decoded {} of the {} sampled frames (truncated or corrupt file?)",
                run.stdout.len() / frame_bytes,
                indices.len()
            ),
        ));
    }
    // frames split off the end, so the buffer is copied once, not held twice
    let mut rgb = run.stdout;
    let mut frames = Vec::with_capacity(indices.len());
    for &index in indices.iter().rev() {
        let pixels = rgb.split_off(rgb.len() - frame_bytes);
        frames.push(VideoFrame {
            index,
            timestamp: index as f64 / fps,
            // one frame's bytes exactly, so from_raw cannot refuse them
            image: RgbImage::from_raw(width, height, pixels).unwrap_or_default(),
        });
    }
    frames.reverse();
    Ok(Video {
        source,
        total_frames: total,
        fps,
        width,
        height,
        frames,
    })
}

/// The ffmpeg run that writes the sampled frames, raw RGB, to stdout;
/// `sync_flag` names the frame-rate mode option (see `load`).
fn decode_command(
    options: &VideoOptions,
    demuxer: &str,
    total: usize,
    count: usize,
    sync_flag: &str,
) -> Command {
    let mut command = tool(&options.ffmpeg);
    command
        .args(["-hide_banner", "-nostdin", "-loglevel", "error"])
        .args(input_args(demuxer))
        .args(["-map", "0:v:0", "-vf"])
        .arg(select_filter(total, count))
        .args([sync_flag, "passthrough", "-frames:v"])
        .arg(count.to_string())
        .args(["-pix_fmt", "rgb24", "-f", "rawvideo", "pipe:1"]);
    command
}

/// ffmpeg's `select` keeping frame `n` (its number among decoded frames,
/// from 0) when some `i` in `0..count` has `floor(i * total / count) = n`
/// (the sampling rule): exactly when `floor(((n + 1) * count - 1) / total)`
/// exceeds `floor((n * count - 1) / total)`. One short expression whatever
/// the count, where a list of `eq(n, k)` grows with it. ffmpeg evaluates
/// it in doubles, exact for these integers (up to 2^53).
fn select_filter(total: usize, count: usize) -> String {
    format!("select='gt(floor(((n+1)*{count}-1)/{total})-floor((n*{count}-1)/{total}),0)'")
}

/// The input options shared by ffprobe and ffmpeg (see the module note).
fn input_args(demuxer: &str) -> [&str; 6] {
    [
        "-protocol_whitelist",
        "file",
        "-f",
        demuxer,
        "-i",
        STDIN_INPUT,
    ]
}

#[cfg(unix)]
const STDIN_INPUT: &str = "file:/dev/stdin";
#[cfg(not(unix))]
const STDIN_INPUT: &str = "pipe:0";

fn tool(program: &std::path::Path) -> Command {
    let mut command = Command::new(program);
    command.env("AV_LOG_FORCE_NOCOLOR", "1");
    command
}

/// What ffprobe says of the first video stream.
#[derive(Debug, Deserialize)]
struct ProbedStream {
    width: u32,
    height: u32,
    /// Packets demuxed (`-count_packets`): one per frame for video.
    nb_read_packets: Option<String>,
    /// The container's frame count where it has one (MP4's sample table).
    nb_frames: Option<String>,
    avg_frame_rate: Option<String>,
    r_frame_rate: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Probe {
    #[serde(default)]
    streams: Vec<ProbedStream>,
}

impl ProbedStream {
    fn frame_count(&self) -> usize {
        let parse = |s: &Option<String>| s.as_deref().and_then(|s| s.parse::<usize>().ok());
        parse(&self.nb_read_packets)
            .or_else(|| parse(&self.nb_frames))
            .unwrap_or(0)
    }

    /// The average frame rate, else the base rate; 0 when neither is known.
    fn fps(&self) -> f64 {
        [&self.avg_frame_rate, &self.r_frame_rate]
            .into_iter()
            .filter_map(|r| r.as_deref().and_then(parse_rate))
            .next()
            .unwrap_or(0.0)
    }
}

/// `"30000/1001"` → 29.97; `"0/0"` (unknown) → None.
fn parse_rate(rate: &str) -> Option<f64> {
    let (num, den) = rate.split_once('/')?;
    let (num, den): (f64, f64) = (num.trim().parse().ok()?, den.trim().parse().ok()?);
    let fps = num / den;
    (fps.is_finite() && fps > 0.0).then_some(fps)
}

fn probe(file: File, demuxer: &str, name: &str, options: &VideoOptions) -> Result<ProbedStream> {
    let mut command = tool(&options.ffprobe);
    command
        .args(["-hide_banner", "-v", "error"])
        .args(input_args(demuxer))
        .args(["-select_streams", "v:0", "-count_packets", "-show_entries"])
        .arg("stream=width,height,nb_frames,nb_read_packets,avg_frame_rate,r_frame_rate")
        .args(["-of", "json"]);
    let run = run_bounded(command, file, MAX_PROBE_BYTES, "ffprobe", name, options)?;
    if !run.status.success() {
        return Err(tool_failed("ffprobe", &run, name));
    }
    let probe: Probe = serde_json::from_slice(&run.stdout)
        .map_err(|e| DataError::video(name, format!("ffprobe's output: {e}")))?;
    let stream = probe.streams.into_iter().next().ok_or_else(|| {
        DataError::video(name, "no video stream with frames: the video has no frames")
    })?;
    if stream.frame_count() == 0 {
        return Err(DataError::video(name, "the video has no frames"));
    }
    Ok(stream)
}

/// A finished child's exit status, its stdout (at most the cap asked
/// for) and the start of its stderr.
struct Run {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

/// Runs `command` with `stdin` as its standard input, reading at most
/// `max_stdout` bytes of its output (a child that writes more is killed)
/// and the first [`MAX_STDERR_BYTES`] of its errors, and killing it past
/// the timeout.
fn run_bounded(
    mut command: Command,
    mut stdin: File,
    max_stdout: u64,
    tool: &str,
    name: &str,
    options: &VideoOptions,
) -> Result<Run> {
    // where `/dev/stdin` is the same open file (not a fresh open, as on
    // Linux), the child starts at our offset: rewind it
    stdin
        .seek(SeekFrom::Start(0))
        .map_err(|e| DataError::video(name, e))?;
    command
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::video(
            name,
            format!(
                "`{tool}` not found ({}): decoding MP4, WebM and MKV needs ffmpeg installed \
                 (ffmpeg and ffprobe on PATH, e.g. apt-get install ffmpeg)",
                program_name(&command)
            ),
        ),
        _ => DataError::video(name, format!("cannot run {tool}: {e}")),
    })?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        kill(&mut child);
        return Err(DataError::video(name, format!("{tool}: no pipes")));
    };
    let out_reader = std::thread::spawn(move || {
        // one byte past the cap tells "too much" from "exactly the cap";
        // returning drops the pipe, so a child writing on gets EPIPE
        let mut bytes = Vec::new();
        let result = stdout.take(max_stdout + 1).read_to_end(&mut bytes);
        result.map(|_| bytes)
    });
    let err_reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let mut stderr = stderr;
        let _ = (&mut stderr).take(MAX_STDERR_BYTES).read_to_end(&mut bytes);
        // drain the rest, so a chatty child never blocks on a full pipe
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        String::from_utf8_lossy(&bytes).into_owned()
    });

    let deadline = Instant::now() + options.limits.ffmpeg_timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                kill(&mut child);
                return Err(DataError::video(
                    name,
                    format!(
                        "{tool} did not finish within {} s",
                        options.limits.ffmpeg_timeout.as_secs_f64()
                    ),
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                kill(&mut child);
                return Err(DataError::video(name, format!("{tool}: {e}")));
            }
        }
    };
    let stdout = out_reader
        .join()
        .map_err(|_| DataError::video(name, format!("{tool}: output reader panicked")))?
        .map_err(|e| DataError::video(name, format!("{tool}'s output: {e}")))?;
    let stderr = err_reader.join().unwrap_or_default();
    if stdout.len() as u64 > max_stdout {
        return Err(DataError::video(
            name,
            format!("{tool} wrote more than the {max_stdout} bytes expected"),
        ));
    }
    Ok(Run {
        status,
        stdout,
        stderr,
    })
}

fn program_name(command: &Command) -> String {
    command.get_program().to_string_lossy().into_owned()
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A tool's failure as one line: its first error line and, when it
/// differs, its last (the summary), without ffmpeg's `[demuxer @ 0x...]`
/// prefixes or the input's placeholder name (the error names the file).
fn tool_failed(tool: &str, run: &Run, name: &str) -> DataError {
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .map(clean_log_line)
        .filter(|l| !l.is_empty())
        .collect();
    let message = match (lines.first(), lines.last()) {
        (Some(first), Some(last)) if first != last => format!("{first} … {last}"),
        (Some(first), _) => first.to_string(),
        _ => "no message".to_string(),
    };
    DataError::video(
        name,
        format!(
            "{tool} failed ({}): {message} (truncated or corrupt file?)",
            run.status
        ),
    )
}

fn clean_log_line(line: &str) -> &str {
    let mut line = line.trim();
    if line.starts_with('[') {
        if let Some(end) = line.find("] ") {
            line = line[end + 2..].trim_start();
        }
    }
    if let Some(rest) = line.strip_prefix(STDIN_INPUT) {
        line = rest.trim_start_matches(':').trim_start();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The select expression, evaluated as ffmpeg does (in doubles),
    /// keeps exactly the sampling rule's frames.
    #[test]
    fn select_expression_keeps_the_rules_frames() {
        for total in 1..200usize {
            for count in 1..=total {
                let kept: Vec<usize> = (0..total)
                    .filter(|&n| {
                        let (n, c, t) = (n as f64, count as f64, total as f64);
                        (((n + 1.0) * c - 1.0) / t).floor() - ((n * c - 1.0) / t).floor() > 0.0
                    })
                    .collect();
                assert_eq!(
                    kept,
                    super::super::uniform_indices(total, count),
                    "{total} {count}"
                );
            }
        }
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("25/1"), Some(25.0));
        assert_eq!(parse_rate("0/0"), None);
        assert!((parse_rate("30000/1001").unwrap() - 29.97).abs() < 1e-3);
    }
}
