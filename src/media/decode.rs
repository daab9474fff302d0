//! Decoding: sampled RGB24 video frames and 16 kHz mono f32 audio, in one demux pass.
//!
//! Video frames are picked with the [`FrameSampling`] rule (the frame on screen at each target
//! time) while decoding; only the picked frames go through swscale (BILINEAR → RGB24).
//! Audio goes through swresample to mono packed f32 at [`AUDIO_SAMPLE_RATE`], with the
//! resampler flushed at the end, which makes it bit-identical to
//! `ffmpeg -i f -ac 1 -ar 16000 -f f32le -`.

use std::path::Path;

use ffmpeg_next as ffmpeg;
use ffmpeg::format::Sample;
use ffmpeg::format::sample::Type as SampleType;
use ffmpeg::{ChannelLayout, frame};

use super::sample::{FrameSampling, MAX_SAMPLED_FRAMES, TIME_EPSILON};
use super::{AUDIO_SAMPLE_RATE, MediaError};

/// Largest accepted output width/height.
pub const MAX_DIMENSION: u32 = 8192;

/// Sampled video frames.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoFrames {
    pub width: u32,
    pub height: u32,
    /// RGB24, row-major `height x width x 3`, no padding. Empty vectors when decoded
    /// without scaling (see [`super::sampled_frame_times`]).
    pub frames: Vec<Vec<u8>>,
    /// Presentation times of the chosen frames, seconds from the stream start.
    pub timestamps: Vec<f64>,
}

/// Decoded audio track.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    /// Mono f32 at `sample_rate` (always [`AUDIO_SAMPLE_RATE`]).
    pub samples: Vec<f32>,
    pub sample_rate: u32,
    /// `true`: the file had no audio stream; `samples` is silence of the file's duration.
    pub missing: bool,
}

impl Audio {
    pub fn duration_s(&self) -> f64 {
        if self.sample_rate == 0 { 0.0 } else { self.samples.len() as f64 / f64::from(self.sample_rate) }
    }
}

/// Video frames and audio of one clip.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedClip {
    pub video: VideoFrames,
    pub audio: Audio,
    /// Container duration in seconds (the video stream's if the container does not say).
    pub duration_s: f64,
}

/// Decode the frames `sampling` picks, scaled (BILINEAR) to `width x height` RGB24.
pub fn decode_video(
    path: &Path,
    sampling: &FrameSampling,
    width: u32,
    height: u32,
) -> Result<VideoFrames, MediaError> {
    let req = VideoRequest { sampling, scale: Some((width, height)) };
    let out = run(path, Some(req), false)?;
    out.video.ok_or_else(|| MediaError::decode(path, "internal: no video result"))
}

/// Decode the whole audio track to 16 kHz mono f32 (bit-identical to
/// `ffmpeg -i f -ac 1 -ar 16000 -f f32le -`). No audio stream → silence of the
/// container duration with `missing = true`.
pub fn decode_audio(path: &Path) -> Result<Audio, MediaError> {
    let out = run(path, None, true)?;
    out.audio.ok_or_else(|| MediaError::decode(path, "internal: no audio result"))
}

/// [`decode_video`] and [`decode_audio`] in a single demux pass.
pub fn decode_clip(
    path: &Path,
    sampling: &FrameSampling,
    width: u32,
    height: u32,
) -> Result<DecodedClip, MediaError> {
    let req = VideoRequest { sampling, scale: Some((width, height)) };
    let out = run(path, Some(req), true)?;
    match (out.video, out.audio) {
        (Some(video), Some(audio)) => Ok(DecodedClip { video, audio, duration_s: out.duration_s }),
        _ => Err(MediaError::decode(path, "internal: missing video or audio result")),
    }
}

// ---------------------------------------------------------------------------------------------

pub(crate) struct VideoRequest<'a> {
    pub sampling: &'a FrameSampling,
    /// `None`: do not convert pixels, only report the picked frames' times.
    pub scale: Option<(u32, u32)>,
}

pub(crate) struct RunOutput {
    pub video: Option<VideoFrames>,
    pub audio: Option<Audio>,
    pub duration_s: f64,
}

fn validate_request(path: &Path, req: &VideoRequest<'_>) -> Result<(), MediaError> {
    req.sampling.validate().map_err(|d| MediaError::invalid(path, d))?;
    if let Some((w, h)) = req.scale
        && (w == 0 || h == 0 || w > MAX_DIMENSION || h > MAX_DIMENSION)
    {
        return Err(MediaError::invalid(
            path,
            format!("output size {w}x{h} is out of range (1..={MAX_DIMENSION} per side)"),
        ));
    }
    Ok(())
}

fn is_eagain(e: &ffmpeg::Error) -> bool {
    matches!(e, ffmpeg::Error::Other { errno } if *errno == ffmpeg::error::EAGAIN)
}

/// Duration used to compute sampling targets: the video stream's duration, else the
/// container's, else the span of the video packets (found by demuxing).
pub(crate) fn video_duration_s(
    path: &Path,
    ictx: &ffmpeg::format::context::Input,
    video_index: usize,
) -> Result<f64, MediaError> {
    if let Some(st) = ictx.stream(video_index)
        && let Some(d) = super::stream_duration_s(&st)
    {
        return Ok(d);
    }
    if let Some(d) = super::container_duration_s(ictx) {
        return Ok(d);
    }
    Ok(scan_video(path, video_index)?.duration_s)
}

/// Nominal frame rate of a video stream (average, else real base rate, else 25).
fn stream_fps(st: &ffmpeg::format::stream::Stream) -> f64 {
    super::q2d(st.avg_frame_rate())
        .or_else(|| super::q2d(st.rate()))
        .filter(|f| *f >= 1e-3 && *f <= 1e6)
        .unwrap_or(25.0)
}

pub(crate) struct VideoScan {
    pub packets: u64,
    pub duration_s: f64,
}

/// Demux (no decoding) the video stream's packets: count them and measure their span.
pub(crate) fn scan_video(path: &Path, video_index: usize) -> Result<VideoScan, MediaError> {
    let mut ictx = super::open_input(path)?;
    let (tb, start, fps) = match ictx.stream(video_index) {
        Some(st) => (st.time_base(), st.start_time(), stream_fps(&st)),
        None => return Err(MediaError::decode(path, "video stream vanished while scanning")),
    };
    let mut first: Option<i64> = (start != ffmpeg::ffi::AV_NOPTS_VALUE).then_some(start);
    let mut end: Option<i64> = None;
    let mut packets = 0u64;
    let mut invalid = 0u32;
    loop {
        let mut pkt = ffmpeg::Packet::empty();
        match pkt.read(&mut ictx) {
            Ok(()) => invalid = 0,
            Err(ffmpeg::Error::Eof) => break,
            Err(ffmpeg::Error::InvalidData) => {
                invalid += 1;
                if invalid > 10_000 {
                    break;
                }
                continue;
            }
            Err(_) => break,
        }
        if pkt.stream() != video_index {
            continue;
        }
        packets += 1;
        if let Some(p) = pkt.pts().or(pkt.dts()) {
            let e = p.saturating_add(pkt.duration().max(0));
            end = Some(end.map_or(e, |x| x.max(e)));
            first = Some(first.map_or(p, |x| x.min(p)));
        }
    }
    let duration_s = match (first, end) {
        (Some(f), Some(e)) if e > f => super::ticks_to_s(e.saturating_sub(f), tb),
        // No timestamps at all (raw elementary streams): packets at the nominal rate.
        _ => packets as f64 / fps,
    };
    Ok(VideoScan { packets, duration_s: if duration_s.is_finite() { duration_s } else { 0.0 } })
}

/// Holds the picked frames; converts each distinct picked frame once.
struct Picker {
    scale: Option<(u32, u32)>,
    scaler: Option<ffmpeg::software::scaling::Context>,
    frames: Vec<Vec<u8>>,
    timestamps: Vec<f64>,
    /// Sequence number of the frame converted last, and its index in `frames`.
    last: Option<(u64, usize)>,
}

impl Picker {
    fn pick(&mut self, f: &frame::Video, t: f64, seq: u64) -> Result<(), String> {
        if let Some((s, i)) = self.last
            && s == seq
        {
            let copy = self.frames.get(i).cloned().unwrap_or_default();
            self.frames.push(copy);
            self.timestamps.push(t);
            return Ok(());
        }
        let rgb = match self.scale {
            Some((w, h)) => self.convert(f, w, h)?,
            None => Vec::new(),
        };
        self.last = Some((seq, self.frames.len()));
        self.frames.push(rgb);
        self.timestamps.push(t);
        Ok(())
    }

    fn convert(&mut self, f: &frame::Video, w: u32, h: u32) -> Result<Vec<u8>, String> {
        use ffmpeg::software::scaling;
        if f.width() == 0 || f.height() == 0 || f.format() == ffmpeg::format::Pixel::None {
            return Err("decoded a video frame with no size or pixel format".into());
        }
        let stale = match &self.scaler {
            Some(s) => {
                let i = s.input();
                i.format != f.format() || i.width != f.width() || i.height != f.height()
            }
            None => true,
        };
        if stale {
            let ctx = scaling::Context::get(
                f.format(),
                f.width(),
                f.height(),
                ffmpeg::format::Pixel::RGB24,
                w,
                h,
                scaling::Flags::BILINEAR,
            )
            .map_err(|e| {
                format!("cannot scale {:?} {}x{} to RGB24 {w}x{h}: {e}", f.format(), f.width(), f.height())
            })?;
            self.scaler = Some(ctx);
        }
        let Some(scaler) = self.scaler.as_mut() else {
            return Err("internal: no scaler".into());
        };
        let mut rgb = frame::Video::new(ffmpeg::format::Pixel::RGB24, w, h);
        scaler.run(f, &mut rgb).map_err(|e| format!("swscale failed: {e}"))?;
        // SAFETY: only checks whether the buffer was allocated.
        if unsafe { rgb.is_empty() } {
            return Err("could not allocate an RGB frame".into());
        }
        let (w, h) = (w as usize, h as usize);
        let row = w * 3;
        let stride = rgb.stride(0);
        let data = rgb.data(0);
        let mut out = Vec::with_capacity(row * h);
        for y in 0..h {
            let line = data
                .get(y * stride..y * stride + row)
                .ok_or_else(|| "RGB frame buffer smaller than expected".to_string())?;
            out.extend_from_slice(line);
        }
        Ok(out)
    }
}

struct Held {
    frame: frame::Video,
    t: f64,
    seq: u64,
}

struct VideoState {
    index: usize,
    tb: ffmpeg::Rational,
    start: i64,
    fallback_frame_s: f64,
    /// Time and sequence number of the last frame that had a timestamp.
    anchor: Option<(f64, u64)>,
    /// Latest frame time seen.
    last_time: Option<f64>,
    dec: ffmpeg::decoder::Video,
    targets: Vec<f64>,
    next: usize,
    prev: Option<Held>,
    picker: Picker,
    seq: u64,
    packets: u64,
    errors: u64,
    last_error: Option<String>,
    eof_sent: bool,
}

impl VideoState {
    fn done(&self) -> bool {
        self.next >= self.targets.len()
    }

    fn send(&mut self, pkt: &ffmpeg::Packet) -> Result<(), String> {
        match self.dec.send_packet(pkt) {
            Ok(()) => {}
            Err(ffmpeg::Error::Eof) => {}
            Err(e) => {
                self.errors += 1;
                self.last_error = Some(e.to_string());
            }
        }
        self.drain()
    }

    fn finish(&mut self) -> Result<(), String> {
        if !self.eof_sent {
            self.eof_sent = true;
            if let Err(e) = self.dec.send_eof() {
                self.errors += 1;
                self.last_error = Some(e.to_string());
            }
            self.drain()?;
        }
        // Remaining targets are after the last frame: the last frame stays on screen.
        if let Some(prev) = self.prev.take() {
            while self.next < self.targets.len() {
                self.picker.pick(&prev.frame, prev.t, prev.seq)?;
                self.next += 1;
            }
        }
        Ok(())
    }

    fn drain(&mut self) -> Result<(), String> {
        loop {
            let mut f = frame::Video::empty();
            match self.dec.receive_frame(&mut f) {
                Ok(()) => self.on_frame(f)?,
                Err(e) if is_eagain(&e) => return Ok(()),
                Err(ffmpeg::Error::Eof) => return Ok(()),
                Err(e) => {
                    self.errors += 1;
                    self.last_error = Some(e.to_string());
                    return Ok(());
                }
            }
        }
    }

    fn on_frame(&mut self, f: frame::Video) -> Result<(), String> {
        let seq = self.seq;
        self.seq += 1;
        let t = match f.pts().or_else(|| f.timestamp()) {
            Some(p) => super::ticks_to_s(p.saturating_sub(self.start), self.tb),
            // No timestamp: nominal frame interval after the last timestamped frame.
            None => match self.anchor {
                Some((t0, s0)) => t0 + (seq - s0) as f64 * self.fallback_frame_s,
                None => seq as f64 * self.fallback_frame_s,
            },
        };
        if f.pts().or_else(|| f.timestamp()).is_some() {
            self.anchor = Some((t, seq));
        }
        let t = if t.is_finite() { t } else { 0.0 };
        while self.next < self.targets.len() && self.targets[self.next] + TIME_EPSILON < t {
            match &self.prev {
                Some(p) => self.picker.pick(&p.frame, p.t, p.seq)?,
                // Target before the first frame: the first frame.
                None => self.picker.pick(&f, t, seq)?,
            }
            self.next += 1;
        }
        self.last_time = Some(self.last_time.map_or(t, |x: f64| x.max(t)));
        self.prev = Some(Held { frame: f, t, seq });
        Ok(())
    }
}

struct AudioState {
    index: usize,
    dec: ffmpeg::decoder::Audio,
    swr: Option<ffmpeg::software::resampling::Context>,
    samples: Vec<f32>,
    frames: u64,
    packets: u64,
    errors: u64,
    last_error: Option<String>,
}

impl AudioState {
    fn send(&mut self, pkt: &ffmpeg::Packet) -> Result<(), String> {
        match self.dec.send_packet(pkt) {
            Ok(()) | Err(ffmpeg::Error::Eof) => {}
            Err(e) => {
                self.errors += 1;
                self.last_error = Some(e.to_string());
            }
        }
        self.drain()
    }

    fn finish(&mut self) -> Result<(), String> {
        if let Err(e) = self.dec.send_eof() {
            self.errors += 1;
            self.last_error = Some(e.to_string());
        }
        self.drain()?;
        self.flush_resampler()
    }

    fn drain(&mut self) -> Result<(), String> {
        loop {
            let mut f = frame::Audio::empty();
            match self.dec.receive_frame(&mut f) {
                Ok(()) => self.on_frame(&mut f)?,
                Err(e) if is_eagain(&e) => return Ok(()),
                Err(ffmpeg::Error::Eof) => return Ok(()),
                Err(e) => {
                    self.errors += 1;
                    self.last_error = Some(e.to_string());
                    return Ok(());
                }
            }
        }
    }

    fn on_frame(&mut self, f: &mut frame::Audio) -> Result<(), String> {
        use ffmpeg::software::resampling;
        self.frames += 1;
        if f.samples() == 0 {
            return Ok(());
        }
        let channels = f.channels();
        if channels == 0 || f.rate() == 0 || f.format() == Sample::None {
            return Err(format!(
                "audio frame with invalid parameters ({channels} channels, {} Hz, {:?})",
                f.rate(),
                f.format()
            ));
        }
        let layout = f.channel_layout();
        if layout.is_empty() || layout.channels() != i32::from(channels) {
            // e.g. WAV/PCM without a channel mask: FFmpeg's default layout for the count.
            f.set_channel_layout(ChannelLayout::default(i32::from(channels)));
        }
        let stale = match &self.swr {
            Some(s) => {
                let i = s.input();
                i.format != f.format() || i.channel_layout != f.channel_layout() || i.rate != f.rate()
            }
            None => true,
        };
        if stale {
            // Parameters changed mid-stream: drain the old resampler first.
            self.flush_resampler()?;
            let ctx = resampling::Context::get(
                f.format(),
                f.channel_layout(),
                f.rate(),
                Sample::F32(SampleType::Packed),
                ChannelLayout::MONO,
                AUDIO_SAMPLE_RATE,
            )
            .map_err(|e| format!("cannot create resampler ({:?}, {} Hz): {e}", f.format(), f.rate()))?;
            self.swr = Some(ctx);
        }
        let Some(swr) = self.swr.as_mut() else {
            return Err("internal: no resampler".into());
        };
        let in_samples = i32::try_from(f.samples()).map_err(|_| "audio frame too large".to_string())?;
        // SAFETY: `swr` is a valid, initialised SwrContext.
        let cap = unsafe { ffmpeg::ffi::swr_get_out_samples(swr.as_mut_ptr(), in_samples) };
        if cap < 0 {
            return Err(format!("swresample error {cap}"));
        }
        let mut out = frame::Audio::new(Sample::F32(SampleType::Packed), (cap as usize).max(16), ChannelLayout::MONO);
        swr.run(f, &mut out).map_err(|e| format!("swresample failed: {e}"))?;
        append_f32(&mut self.samples, &out)
    }

    fn flush_resampler(&mut self) -> Result<(), String> {
        let Some(swr) = self.swr.as_mut() else {
            return Ok(());
        };
        for _ in 0..10_000 {
            let mut out = frame::Audio::new(Sample::F32(SampleType::Packed), 4096, ChannelLayout::MONO);
            swr.flush(&mut out).map_err(|e| format!("swresample flush failed: {e}"))?;
            if out.samples() == 0 {
                break;
            }
            append_f32(&mut self.samples, &out)?;
        }
        self.swr = None;
        Ok(())
    }
}

fn append_f32(dst: &mut Vec<f32>, out: &frame::Audio) -> Result<(), String> {
    let n = out.samples();
    if n == 0 {
        return Ok(());
    }
    // SAFETY: only checks whether the buffer was allocated.
    if unsafe { out.is_empty() } {
        return Err("could not allocate an audio frame".into());
    }
    let bytes = out
        .data(0)
        .get(..n * 4)
        .ok_or_else(|| "resampled audio buffer smaller than expected".to_string())?;
    dst.extend(bytes.chunks_exact(4).map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]])));
    Ok(())
}

fn silence(duration_s: f64) -> Vec<f32> {
    let n = (duration_s.max(0.0) * f64::from(AUDIO_SAMPLE_RATE)).round();
    // Guard against absurd container durations (cap at 24 h of audio).
    let n = if n.is_finite() { (n as usize).min(24 * 3600 * AUDIO_SAMPLE_RATE as usize) } else { 0 };
    vec![0.0; n]
}

fn open_decoder_context(
    path: &Path,
    st: &ffmpeg::format::stream::Stream,
    frame_threads: bool,
) -> Result<ffmpeg::codec::Context, MediaError> {
    let mut ctx = ffmpeg::codec::Context::from_parameters(st.parameters()).map_err(|e| {
        MediaError::decode(path, format!("stream #{}: cannot read codec parameters: {e}", st.index()))
    })?;
    if frame_threads {
        ctx.set_threading(ffmpeg::threading::Config {
            kind: ffmpeg::threading::Type::Frame,
            count: 0,
            ..Default::default()
        });
    }
    Ok(ctx)
}

/// One demux pass feeding the requested decoders.
pub(crate) fn run(
    path: &Path,
    video: Option<VideoRequest<'_>>,
    want_audio: bool,
) -> Result<RunOutput, MediaError> {
    super::init();
    if let Some(req) = &video {
        validate_request(path, req)?;
    }
    let mut ictx = super::open_input(path)?;
    let container_duration = super::container_duration_s(&ictx);
    let (mut vstate, video_duration) = match &video {
        Some(req) => {
            let (v, d) = open_video(path, &ictx, req)?;
            (Some(v), Some(d))
        }
        None => (None, None),
    };
    let mut astate = if want_audio { open_audio(path, &ictx)? } else { None };
    let (stopped_early, invalid_total) = demux(path, &mut ictx, &mut vstate, &mut astate)?;
    if !stopped_early && invalid_total > 0 {
        check_truncation(path, &ictx, vstate.as_ref(), astate.as_ref())?;
    }
    let video_out = match vstate.as_mut() {
        Some(v) => Some(finish_video(path, v, video.as_ref().and_then(|r| r.scale), stopped_early, video_duration)?),
        None => None,
    };
    let duration_s = container_duration.or(video_duration).unwrap_or(0.0);
    let audio_out = if want_audio { Some(finish_audio(path, &ictx, astate.as_mut(), container_duration, video_duration)?) } else { None };
    Ok(RunOutput { video: video_out, audio: audio_out, duration_s })
}

/// Opens the video decoder and the frame picker for `req`; returns them and the video's duration.
fn open_video(path: &Path, ictx: &ffmpeg::format::context::Input, req: &VideoRequest<'_>) -> Result<(VideoState, f64), MediaError> {
    let Some(vi) = super::best_video_stream(ictx) else {
        return Err(MediaError::NoVideoStream { path: path.to_path_buf(), streams: super::stream_kinds(ictx) });
    };
    super::check_index_within_file(path, ictx, vi)?;
    let dur = video_duration_s(path, ictx, vi)?;
    let Some(st) = ictx.stream(vi) else {
        return Err(MediaError::decode(path, "video stream vanished"));
    };
    let wanted = req.sampling.uncapped_count(dur);
    if wanted > MAX_SAMPLED_FRAMES {
        return Err(MediaError::invalid(
            path,
            format!(
                "sampling {:?} would select {wanted} frames of this {dur:.1} s video (limit {MAX_SAMPLED_FRAMES}); set max_frames",
                req.sampling
            ),
        ));
    }
    let targets = req.sampling.target_times_at(dur, stream_fps(&st));
    if targets.is_empty() {
        return Err(MediaError::invalid(path, format!("sampling {:?} selects no frames", req.sampling)));
    }
    if let Some((w, h)) = req.scale {
        let bytes = (w as u128) * (h as u128) * 3 * targets.len() as u128;
        if bytes > 16 * (1u128 << 30) {
            return Err(MediaError::invalid(path, format!("{} frames of {w}x{h} RGB exceed 16 GiB", targets.len())));
        }
    }
    let ctx = open_decoder_context(path, &st, true)?;
    let codec = st.parameters().id().name();
    let mut dec = ctx
        .decoder()
        .video()
        .map_err(|e| MediaError::decode(path, format!("cannot open the {codec} video decoder: {e}")))?;
    dec.set_packet_time_base(st.time_base());
    let fps = stream_fps(&st);
    let state = VideoState {
        index: vi,
        tb: st.time_base(),
        start: super::stream_start(&st),
        fallback_frame_s: 1.0 / fps,
        anchor: None,
        last_time: None,
        dec,
        targets,
        next: 0,
        prev: None,
        picker: Picker {
            scale: req.scale,
            scaler: None,
            frames: Vec::new(),
            timestamps: Vec::new(),
            last: None,
        },
        seq: 0,
        packets: 0,
        errors: 0,
        last_error: None,
        eof_sent: false,
    };
    Ok((state, dur))
}

/// Opens the audio decoder of the best audio stream (`None`: the file has none).
fn open_audio(path: &Path, ictx: &ffmpeg::format::context::Input) -> Result<Option<AudioState>, MediaError> {
    let Some(ai) = super::best_audio_stream(ictx) else { return Ok(None) };
    super::check_index_within_file(path, ictx, ai)?;
    let Some(st) = ictx.stream(ai) else {
        return Err(MediaError::decode(path, "audio stream vanished"));
    };
    let ctx = open_decoder_context(path, &st, false)?;
    let codec = st.parameters().id().name();
    let mut dec = ctx
        .decoder()
        .audio()
        .map_err(|e| MediaError::decode(path, format!("cannot open the {codec} audio decoder: {e}")))?;
    dec.set_packet_time_base(st.time_base());
    Ok(Some(AudioState {
        index: ai,
        dec,
        swr: None,
        samples: Vec::new(),
        frames: 0,
        packets: 0,
        errors: 0,
        last_error: None,
    }))
}

/// Reads every packet into the decoders (stopping early once the frames are picked and no audio is
/// wanted). Returns whether it stopped early and how many invalid packets it skipped.
fn demux(path: &Path, ictx: &mut ffmpeg::format::context::Input, vstate: &mut Option<VideoState>, astate: &mut Option<AudioState>) -> Result<(bool, u64), MediaError> {
    let mut stopped_early = false;
    let mut read_error: Option<String> = None;
    let mut invalid_run = 0u32;
    let mut invalid_total = 0u64;
    loop {
        let mut pkt = ffmpeg::Packet::empty();
        match pkt.read(ictx) {
            Ok(()) => invalid_run = 0,
            Err(ffmpeg::Error::Eof) => break,
            Err(ffmpeg::Error::InvalidData) => {
                // A corrupt/partial packet: the demuxer can resync, keep going (bounded).
                invalid_total += 1;
                invalid_run += 1;
                if invalid_run > 10_000 {
                    read_error = Some("too many consecutive invalid packets".into());
                    break;
                }
                continue;
            }
            Err(e) => {
                read_error = Some(e.to_string());
                break;
            }
        }
        let si = pkt.stream();
        if let Some(v) = vstate.as_mut().filter(|v| v.index == si) {
            v.packets += 1;
            if !v.done() {
                v.send(&pkt).map_err(|d| MediaError::decode(path, d))?;
            }
        } else if let Some(a) = astate.as_mut().filter(|a| a.index == si) {
            a.packets += 1;
            a.send(&pkt).map_err(|d| MediaError::decode(path, d))?;
        }
        if astate.is_none() && vstate.as_ref().is_some_and(|v| v.done()) {
            stopped_early = true;
            break;
        }
    }
    if let Some(e) = &read_error {
        return Err(MediaError::decode(path, format!("read error: {e}")));
    }
    Ok((stopped_early, invalid_total))
}

/// Truncation that the index check cannot see: the demuxer reported corrupt or partial packets and
/// delivered fewer packets than the container declares. PCM tracks are skipped: their `nb_frames`
/// counts samples, not packets.
fn check_truncation(path: &Path, ictx: &ffmpeg::format::context::Input, vstate: Option<&VideoState>, astate: Option<&AudioState>) -> Result<(), MediaError> {
    let check = |index: usize, got: u64, what: &str| -> Result<(), MediaError> {
        let Some(st) = ictx.stream(index) else { return Ok(()) };
        let codec = st.parameters().id().name();
        if codec.starts_with("pcm_") || codec.starts_with("adpcm_") {
            return Ok(());
        }
        let declared = st.frames();
        if declared > 0 && got < declared as u64 {
            return Err(MediaError::decode(
                path,
                format!("truncated or corrupt file: the {what} stream has {got} of {declared} packets"),
            ));
        }
        Ok(())
    };
    if let Some(v) = vstate {
        check(v.index, v.packets, "video")?;
    }
    if let Some(a) = astate {
        check(a.index, a.packets, "audio")?;
    }
    Ok(())
}

/// Flushes the video decoder and takes the picked frames.
fn finish_video(path: &Path, v: &mut VideoState, scale: Option<(u32, u32)>, stopped_early: bool, video_duration: Option<f64>) -> Result<VideoFrames, MediaError> {
    v.finish().map_err(|d| MediaError::decode(path, d))?;
    if v.seq == 0 {
        let why = v.last_error.clone().unwrap_or_else(|| "no packets".into());
        return Err(MediaError::decode(path, format!("no decodable video frames ({why})")));
    }
    if v.errors > 0 {
        tracing::warn!(
            path = %path.display(),
            errors = v.errors,
            "video decoded with errors (last: {})",
            v.last_error.as_deref().unwrap_or("?")
        );
    }
    // Containers indexed at the end (Matroska, AVI) give no truncation signal; a
    // video that stops far short of its declared duration is the best hint.
    if let (false, Some(dur), Some(last)) = (stopped_early, video_duration, v.last_time)
        && dur > 1.0
        && last < 0.5 * dur
    {
        tracing::warn!(
            path = %path.display(),
            "video frames end at {last:.2} s of a declared {dur:.2} s: truncated file?"
        );
    }
    let (w, h) = scale.unwrap_or((0, 0));
    Ok(VideoFrames {
        width: w,
        height: h,
        frames: std::mem::take(&mut v.picker.frames),
        timestamps: std::mem::take(&mut v.picker.timestamps),
    })
}

/// Flushes the audio decoder and takes the samples; a file without audio gives silence of its duration.
fn finish_audio(path: &Path, ictx: &ffmpeg::format::context::Input, astate: Option<&mut AudioState>, container_duration: Option<f64>, video_duration: Option<f64>) -> Result<Audio, MediaError> {
    match astate {
        Some(a) => {
            a.finish().map_err(|d| MediaError::decode(path, d))?;
            if a.samples.is_empty() && a.packets > 0 {
                let why = a.last_error.clone().unwrap_or_else(|| "no frames".into());
                return Err(MediaError::decode(path, format!("no decodable audio ({why})")));
            }
            if a.errors > 0 {
                tracing::warn!(
                    path = %path.display(),
                    errors = a.errors,
                    "audio decoded with errors (last: {})",
                    a.last_error.as_deref().unwrap_or("?")
                );
            }
            Ok(Audio { samples: std::mem::take(&mut a.samples), sample_rate: AUDIO_SAMPLE_RATE, missing: false })
        }
        None => {
            let d = match container_duration {
                Some(d) => d,
                None => match super::best_video_stream(ictx) {
                    Some(vi) => video_duration.map_or_else(|| video_duration_s(path, ictx, vi), Ok)?,
                    None => 0.0,
                },
            };
            Ok(Audio { samples: silence(d), sample_rate: AUDIO_SAMPLE_RATE, missing: true })
        }
    }
}
