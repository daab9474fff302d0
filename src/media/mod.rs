//! Media decoding, sampling, probing and encoding (ffmpeg-next on FFmpeg 5.1).
//!
//! * [`decode_video`] / [`decode_audio`] / [`decode_clip`]: sampled RGB24 frames and 16 kHz mono
//!   f32 audio (bit-identical to `ffmpeg -i f -ac 1 -ar 16000 -f f32le -`).
//! * [`FrameSampling`]: which frames to pick (target times, "frame on screen at t").
//! * [`probe()`]: container/stream summary for `emollama probe FILE`.
//! * [`write_clip`]: writes MP4 (H.264 or MPEG-4 part 2 + AAC) for the synthetic dataset.
//!
//! Every failure is a typed [`MediaError`] naming the file; bad media never panics or hangs.

pub mod audio_clips;
pub mod decode;
pub mod encode;
pub mod face;
pub mod fbank;
pub mod pixels;
pub mod probe;
pub mod resize;
pub mod sample;
pub mod voice;

pub use decode::{Audio, DecodedClip, VideoFrames, decode_audio, decode_clip, decode_video};
pub use encode::{ClipSpec, VideoCodec, write_clip};
pub use pixels::{PixelTransform, PixelView, ViewRole};
pub use probe::{ProbeInfo, StreamInfo, frame_size, probe, sampled_frame_times};
pub use sample::{FrameSampling, GlobalFrame};

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Once;

use ffmpeg_next as ffmpeg;

/// Sample rate of every decoded audio track (mono f32).
pub const AUDIO_SAMPLE_RATE: u32 = 16_000;

/// Typed media errors. Every variant names the file and the cause, e.g.
/// "`/x/y.mp4`: no video stream (streams: audio)".
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// A remote media file could not be fetched (the storage error names the URI); `outage`: the
    /// storage was unreachable after its retries.
    #[error("{detail}")]
    Fetch { path: PathBuf, detail: String, outage: bool },
    #[error("`{}`: file not found", path.display())]
    NotFound { path: PathBuf },
    /// Not a media file, unknown format, empty file, directory, ...
    #[error("`{}`: cannot open as media: {detail}", path.display())]
    Open { path: PathBuf, detail: String },
    #[error("`{}`: no video stream (streams: {streams})", path.display())]
    NoVideoStream { path: PathBuf, streams: String },
    /// Corrupt or truncated media.
    #[error("`{}`: decode error: {detail}", path.display())]
    Decode { path: PathBuf, detail: String },
    #[error("`{}`: encode error: {detail}", path.display())]
    Encode { path: PathBuf, detail: String },
    #[error("`{}`: I/O error: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// The face front end could not use the clip (no face under `missing = "drop"`, or a model error).
    #[error("`{}`: {detail}", path.display())]
    NoFace { path: PathBuf, detail: String },
    /// The request itself is invalid (e.g. `n = 0` frames, zero output size).
    #[error("`{}`: invalid request: {detail}", path.display())]
    InvalidRequest { path: PathBuf, detail: String },
}

impl MediaError {
    /// Storage unreachable after retries: not the file's fault, so never a skipped sample.
    pub fn is_outage(&self) -> bool {
        matches!(self, MediaError::Fetch { outage: true, .. })
    }

    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            MediaError::NotFound { path }
            | MediaError::Open { path, .. }
            | MediaError::NoVideoStream { path, .. }
            | MediaError::Decode { path, .. }
            | MediaError::Encode { path, .. }
            | MediaError::Io { path, .. }
            | MediaError::InvalidRequest { path, .. }
            | MediaError::NoFace { path, .. }
            | MediaError::Fetch { path, .. } => path,
        }
    }

    pub(crate) fn open(path: &Path, detail: impl Into<String>) -> Self {
        MediaError::Open { path: path.to_path_buf(), detail: detail.into() }
    }
    pub(crate) fn decode(path: &Path, detail: impl Into<String>) -> Self {
        MediaError::Decode { path: path.to_path_buf(), detail: detail.into() }
    }
    pub(crate) fn encode(path: &Path, detail: impl Into<String>) -> Self {
        MediaError::Encode { path: path.to_path_buf(), detail: detail.into() }
    }
    pub(crate) fn invalid(path: &Path, detail: impl Into<String>) -> Self {
        MediaError::InvalidRequest { path: path.to_path_buf(), detail: detail.into() }
    }
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        MediaError::Io { path: path.to_path_buf(), source }
    }
}

/// Initialise FFmpeg once (idempotent) and set its log level to `Error`.
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        if let Err(e) = ffmpeg::init() {
            tracing::warn!("ffmpeg init failed: {e}");
        }
        ffmpeg::log::set_level(ffmpeg::log::Level::Error);
    });
}

/// The URL handed to libavformat: always the `file:` protocol, so a path that
/// looks like `http://…` or `pipe:` is still treated as a local file.
pub(crate) fn file_url(path: &Path) -> Result<String, MediaError> {
    let s = path
        .to_str()
        .ok_or_else(|| MediaError::invalid(path, "path is not valid UTF-8 (FFmpeg needs a UTF-8 path)"))?;
    if s.contains('\0') {
        return Err(MediaError::invalid(path, "path contains a NUL byte"));
    }
    Ok(format!("file:{s}"))
}

/// Check that `path` is an existing, non-empty regular file.
pub(crate) fn check_input_file(path: &Path) -> Result<u64, MediaError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(MediaError::NotFound { path: path.to_path_buf() });
        }
        Err(e) => return Err(MediaError::io(path, e)),
    };
    if meta.is_dir() {
        return Err(MediaError::open(path, "is a directory, not a media file"));
    }
    if meta.len() == 0 {
        return Err(MediaError::open(path, "empty file"));
    }
    Ok(meta.len())
}

/// Open a media file for demuxing, with typed errors:
/// missing → `NotFound`; empty / unknown format / no streams → `Open`;
/// a recognised container that fails to parse (e.g. a truncated MP4) → `Decode`.
pub(crate) fn open_input(path: &Path) -> Result<ffmpeg::format::context::Input, MediaError> {
    init();
    check_input_file(path)?;
    let url = file_url(path)?;
    match ffmpeg::format::input(&url) {
        Ok(ictx) => {
            if ictx.nb_streams() == 0 {
                return Err(MediaError::open(path, "no audio or video streams found (not a media file?)"));
            }
            Ok(ictx)
        }
        Err(e) => Err(classify_open_error(path, e)),
    }
}

fn classify_open_error(path: &Path, e: ffmpeg::Error) -> MediaError {
    match sniff_format(path) {
        Some(fmt) => MediaError::decode(
            path,
            format!("truncated or corrupt {fmt} file (the container header could not be parsed: {e})"),
        ),
        None => MediaError::open(path, format!("not a recognised media file (unknown format: {e})")),
    }
}

/// Guess the container from the first bytes (libavformat's probe), without opening it.
/// Returns a format name only for a confident match (score ≥ AVPROBE_SCORE_MAX / 4).
fn sniff_format(path: &Path) -> Option<String> {
    const PROBE_BYTES: usize = 4096;
    let padding = ffmpeg::ffi::AVPROBE_PADDING_SIZE as usize;
    let mut file = std::fs::File::open(path).ok()?;
    let mut buf = vec![0u8; PROBE_BYTES + padding];
    let mut n = 0;
    while n < PROBE_BYTES {
        match file.read(&mut buf[n..PROBE_BYTES]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return None,
        }
    }
    if n == 0 {
        return None;
    }
    let name = c"";
    let pd = ffmpeg::ffi::AVProbeData {
        filename: name.as_ptr(),
        buf: buf.as_mut_ptr(),
        buf_size: n as i32,
        mime_type: std::ptr::null(),
    };
    let mut score: i32 = 0;
    // SAFETY: `pd` points at a buffer of `n` bytes followed by AVPROBE_PADDING_SIZE zero bytes,
    // as av_probe_input_format2 requires; the returned pointer is to a static AVInputFormat.
    let fmt = unsafe { ffmpeg::ffi::av_probe_input_format2(&pd, 1, &mut score) };
    if fmt.is_null() || score < 25 {
        return None;
    }
    // SAFETY: non-null static AVInputFormat; `name` is a static C string.
    let name = unsafe {
        let p = (*fmt).name;
        if p.is_null() {
            return Some("media".to_string());
        }
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    };
    Some(name)
}

/// Rational → f64, `None` for 0/0, x/0 or non-positive values.
pub(crate) fn q2d(r: ffmpeg::Rational) -> Option<f64> {
    if r.denominator() == 0 || r.numerator() <= 0 {
        return None;
    }
    let v = f64::from(r.numerator()) / f64::from(r.denominator());
    v.is_finite().then_some(v)
}

/// `ticks * tb` in seconds, rounded once (so 3072 * 1/10240 is exactly the f64 nearest 0.3).
/// An invalid time base is taken as microseconds.
pub(crate) fn ticks_to_s(ticks: i64, tb: ffmpeg::Rational) -> f64 {
    if tb.denominator() <= 0 || tb.numerator() <= 0 {
        return ticks as f64 / 1_000_000.0;
    }
    ticks as f64 * f64::from(tb.numerator()) / f64::from(tb.denominator())
}

/// Container duration in seconds, if known and positive.
pub(crate) fn container_duration_s(ictx: &ffmpeg::format::context::Input) -> Option<f64> {
    let d = ictx.duration();
    if d == ffmpeg::ffi::AV_NOPTS_VALUE || d <= 0 {
        return None;
    }
    Some(d as f64 / f64::from(ffmpeg::ffi::AV_TIME_BASE))
}

/// Stream duration in seconds from its header, if known and positive.
pub(crate) fn stream_duration_s(st: &ffmpeg::format::stream::Stream) -> Option<f64> {
    let d = st.duration();
    if d == ffmpeg::ffi::AV_NOPTS_VALUE || d <= 0 {
        return None;
    }
    let s = ticks_to_s(d, st.time_base());
    (s.is_finite() && s > 0.0).then_some(s)
}

/// The stream's start time in its time base (0 if unknown).
pub(crate) fn stream_start(st: &ffmpeg::format::stream::Stream) -> i64 {
    let s = st.start_time();
    if s == ffmpeg::ffi::AV_NOPTS_VALUE { 0 } else { s }
}

/// The largest byte offset (`pos + size`) the stream's demuxer index refers to, if the
/// container has an index (MP4/MOV sample tables, AVI idx1, Matroska cues, ...).
pub(crate) fn index_end(st: &ffmpeg::format::stream::Stream) -> Option<i64> {
    // SAFETY: `st` wraps a valid AVStream of an open input; the entries are only read, and no
    // other libavformat call happens while the pointers are in use.
    unsafe {
        let p = st.as_ptr() as *mut ffmpeg::ffi::AVStream;
        let n = ffmpeg::ffi::avformat_index_get_entries_count(p);
        let mut end: Option<i64> = None;
        for i in 0..n.max(0) {
            let e = ffmpeg::ffi::avformat_index_get_entry(p, i);
            if e.is_null() || (*e).pos < 0 {
                continue;
            }
            let x = (*e).pos.saturating_add(i64::from((*e).size().max(0)));
            end = Some(end.map_or(x, |m| m.max(x)));
        }
        end
    }
}

/// `Decode` error if the index of stream `index` points past the end of the file, i.e. the
/// file was cut after its header (e.g. an MP4 with `moov` up front, truncated).
pub(crate) fn check_index_within_file(
    path: &Path,
    ictx: &ffmpeg::format::context::Input,
    index: usize,
) -> Result<(), MediaError> {
    let Some(st) = ictx.stream(index) else { return Ok(()) };
    let Some(end) = index_end(&st) else { return Ok(()) };
    let size = std::fs::metadata(path).map_err(|e| MediaError::io(path, e))?.len();
    if end > 0 && end as u64 > size {
        return Err(MediaError::decode(
            path,
            format!(
                "truncated file: stream #{index}'s index refers to byte {end} but the file has only {size} bytes"
            ),
        ));
    }
    Ok(())
}

pub(crate) fn kind_name(t: ffmpeg::media::Type) -> &'static str {
    match t {
        ffmpeg::media::Type::Video => "video",
        ffmpeg::media::Type::Audio => "audio",
        _ => "other",
    }
}

/// Whether a stream is a real video track (not cover art / an attached picture).
pub(crate) fn is_real_video(st: &ffmpeg::format::stream::Stream) -> bool {
    st.parameters().medium() == ffmpeg::media::Type::Video
        && !st.disposition().contains(ffmpeg::format::stream::Disposition::ATTACHED_PIC)
}

/// The best real video stream's index.
pub(crate) fn best_video_stream(ictx: &ffmpeg::format::context::Input) -> Option<usize> {
    if let Some(st) = ictx.streams().best(ffmpeg::media::Type::Video)
        && is_real_video(&st)
    {
        return Some(st.index());
    }
    ictx.streams().find(is_real_video).map(|s| s.index())
}

pub(crate) fn best_audio_stream(ictx: &ffmpeg::format::context::Input) -> Option<usize> {
    ictx.streams().best(ffmpeg::media::Type::Audio).map(|s| s.index())
}

/// "audio, other" — the kinds of all streams, for `NoVideoStream`.
pub(crate) fn stream_kinds(ictx: &ffmpeg::format::context::Input) -> String {
    let kinds: Vec<&str> = ictx
        .streams()
        .map(|s| {
            if s.parameters().medium() == ffmpeg::media::Type::Video && !is_real_video(&s) {
                "cover-art"
            } else {
                kind_name(s.parameters().medium())
            }
        })
        .collect();
    if kinds.is_empty() { "none".to_string() } else { kinds.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_display_names_file() {
        let e = MediaError::NoVideoStream { path: "/x/y.mp4".into(), streams: "audio".into() };
        assert_eq!(e.to_string(), "`/x/y.mp4`: no video stream (streams: audio)");
        assert_eq!(e.path(), Path::new("/x/y.mp4"));
    }

    #[test]
    fn init_is_idempotent() {
        init();
        init();
    }
}
