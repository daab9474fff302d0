//! Container and stream summary (`emollama probe FILE`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ffmpeg_next as ffmpeg;
use serde::Serialize;

use super::MediaError;
use super::decode::{VideoRequest, run, scan_video};
use super::sample::FrameSampling;

/// One stream of a container.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamInfo {
    pub index: usize,
    /// "video" | "audio" | "other"
    pub kind: String,
    /// Codec name as FFmpeg spells it ("h264", "aac", ...).
    pub codec: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fps: Option<f64>,
    pub sample_rate: Option<u32>,
    pub channels: Option<u16>,
    pub duration_s: Option<f64>,
    /// Frame/packet count declared by the container (`nb_frames`), if any.
    pub frames: Option<u64>,
}

/// Summary of a media file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeInfo {
    pub path: PathBuf,
    /// Container format name (e.g. "mov,mp4,m4a,3gp,3g2,mj2").
    pub format: String,
    /// Container duration in seconds (0 if unknown).
    pub duration_s: f64,
    pub streams: Vec<StreamInfo>,
    /// Frames of the main video stream: `nb_frames`, or counted by demuxing packets.
    pub video_frame_count: Option<u64>,
    /// Index (into `streams`, equal to the stream index) of the main video stream.
    pub video_stream: Option<usize>,
    /// Index of the main audio stream.
    pub audio_stream: Option<usize>,
    /// Duration the frame sampling is computed over: the main video stream's duration,
    /// else the container's, else the span of its packets.
    pub video_duration_s: Option<f64>,
}

/// Probe a media file: format, duration and streams.
pub fn probe(path: &Path) -> Result<ProbeInfo, MediaError> {
    let ictx = super::open_input(path)?;
    let format = ictx.format().name().to_string();
    let container = super::container_duration_s(&ictx);
    let mut streams = Vec::new();
    for st in ictx.streams() {
        let params = st.parameters();
        let medium = params.medium();
        // SAFETY: `params` wraps the stream's valid AVCodecParameters for the duration of the borrow.
        let (w, h, rate, ch) = unsafe {
            let p = params.as_ptr();
            ((*p).width, (*p).height, (*p).sample_rate, (*p).ch_layout.nb_channels)
        };
        let is_video = medium == ffmpeg::media::Type::Video;
        let is_audio = medium == ffmpeg::media::Type::Audio;
        let frames = st.frames();
        streams.push(StreamInfo {
            index: st.index(),
            kind: super::kind_name(medium).to_string(),
            codec: params.id().name().to_string(),
            width: (is_video && w > 0).then_some(w as u32),
            height: (is_video && h > 0).then_some(h as u32),
            fps: if is_video { super::q2d(st.avg_frame_rate()).or_else(|| super::q2d(st.rate())) } else { None },
            sample_rate: (is_audio && rate > 0).then_some(rate as u32),
            channels: (is_audio && ch > 0).then(|| u16::try_from(ch).unwrap_or(u16::MAX)),
            duration_s: super::stream_duration_s(&st),
            frames: (frames > 0).then_some(frames as u64),
        });
    }
    let video_stream = super::best_video_stream(&ictx);
    let audio_stream = super::best_audio_stream(&ictx);
    let mut video_frame_count = None;
    let mut video_duration_s = None;
    if let Some(vi) = video_stream {
        let info = streams.iter().find(|s| s.index == vi);
        let declared = info.and_then(|s| s.frames);
        let dur = info.and_then(|s| s.duration_s).or(container);
        if declared.is_none() || dur.is_none() {
            let scan = scan_video(path, vi)?;
            video_frame_count = Some(declared.unwrap_or(scan.packets));
            video_duration_s = Some(dur.unwrap_or(scan.duration_s));
        } else {
            video_frame_count = declared;
            video_duration_s = dur;
        }
    }
    Ok(ProbeInfo {
        path: path.to_path_buf(),
        format,
        duration_s: container.or(video_duration_s).unwrap_or(0.0),
        streams,
        video_frame_count,
        video_stream,
        audio_stream,
        video_duration_s,
    })
}

/// The video stream's frame size: what a decode at the file's own resolution asks for.
pub fn frame_size(path: &Path) -> Result<(u32, u32), MediaError> {
    let info = probe(path)?;
    let Some(v) = info.video() else {
        let streams: Vec<String> = info.streams.iter().map(|s| s.kind.clone()).collect();
        return Err(MediaError::NoVideoStream { path: path.to_path_buf(), streams: streams.join(", ") });
    };
    match (v.width, v.height) {
        (Some(w), Some(h)) if w > 0 && h > 0 => Ok((w, h)),
        _ => Err(MediaError::decode(path, "the video stream has no frame size")),
    }
}

/// The presentation times (seconds from the stream start) of the frames `sampling` picks,
/// found by decoding without scaling.
pub fn sampled_frame_times(path: &Path, sampling: &FrameSampling) -> Result<Vec<f64>, MediaError> {
    let out = run(path, Some(VideoRequest { sampling, scale: None }), false)?;
    Ok(out.video.map(|v| v.timestamps).unwrap_or_default())
}

fn fmt_opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "?".to_string(), |x| x.to_string())
}

impl ProbeInfo {
    /// Target times of `sampling` over this file's video duration.
    pub fn sample_times(&self, sampling: &FrameSampling) -> Vec<f64> {
        sampling.target_times_at(self.video_duration_s.unwrap_or(self.duration_s), self.video().and_then(|v| v.fps).unwrap_or(super::sample::DEFAULT_FPS))
    }

    pub fn video(&self) -> Option<&StreamInfo> {
        self.video_stream.and_then(|i| self.streams.iter().find(|s| s.index == i))
    }

    pub fn audio(&self) -> Option<&StreamInfo> {
        self.audio_stream.and_then(|i| self.streams.iter().find(|s| s.index == i))
    }

    /// Human-readable summary.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "file:     {}", self.path.display());
        let _ = writeln!(s, "format:   {}", self.format);
        let _ = writeln!(s, "duration: {:.3} s", self.duration_s);
        for st in &self.streams {
            let main = if Some(st.index) == self.video_stream || Some(st.index) == self.audio_stream {
                " (main)"
            } else {
                ""
            };
            let mut line = format!("stream #{} {}{}: {}", st.index, st.kind, main, st.codec);
            match st.kind.as_str() {
                "video" => {
                    let _ = write!(line, ", {}x{}", fmt_opt(st.width), fmt_opt(st.height));
                    if let Some(fps) = st.fps {
                        let _ = write!(line, ", {fps:.3} fps");
                    }
                }
                "audio" => {
                    let _ = write!(line, ", {} Hz, {} ch", fmt_opt(st.sample_rate), fmt_opt(st.channels));
                }
                _ => {}
            }
            if let Some(d) = st.duration_s {
                let _ = write!(line, ", {d:.3} s");
            }
            if let Some(n) = st.frames {
                let _ = write!(line, ", {n} frames");
            }
            let _ = writeln!(s, "{line}");
        }
        if self.video_stream.is_none() {
            let _ = writeln!(s, "video:    none");
        }
        if let Some(n) = self.video_frame_count {
            let _ = writeln!(s, "video frames: {n}");
        }
        if self.audio_stream.is_none() {
            let _ = writeln!(s, "audio:    none (decoding gives silence, missing = true)");
        }
        s
    }
}
