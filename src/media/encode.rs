//! Writing MP4 clips (used by the synthetic dataset generator).
//!
//! Video: H.264 (libx264, yuv420p, CRF 18) or MPEG-4 part 2 (qscale 2); audio: FFmpeg's
//! native AAC encoder (fltp, mono). Written to `<path>.tmp`, then renamed. Bitexact flags
//! on the muxer and codecs and a single encoder thread make the output deterministic for
//! the same input and FFmpeg build.

use std::path::Path;

use ffmpeg_next as ffmpeg;
use ffmpeg::format::Sample;
use ffmpeg::format::sample::Type as SampleType;
use ffmpeg::{ChannelLayout, Rational, codec, encoder, frame};
use serde::{Deserialize, Serialize};

use super::MediaError;
use super::decode::MAX_DIMENSION;

/// Video codec of written clips.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VideoCodec {
    /// H.264 via libx264 (yuv420p).
    H264,
    /// MPEG-4 part 2 (FFmpeg's native encoder, always available).
    Mpeg4,
}

impl VideoCodec {
    /// Whether the H.264 encoder (libx264) is available in the linked FFmpeg.
    pub fn h264_available() -> bool {
        super::init();
        encoder::find_by_name("libx264").is_some()
    }

    /// H.264 if libx264 is available, else MPEG-4 part 2.
    pub fn best_available() -> Self {
        if Self::h264_available() { VideoCodec::H264 } else { VideoCodec::Mpeg4 }
    }

    /// The codec that will actually be used: H.264 falls back to MPEG-4 (with a warning)
    /// when libx264 is missing.
    pub fn resolve(self) -> Self {
        match self {
            VideoCodec::H264 if !Self::h264_available() => {
                tracing::warn!("H.264 encoder (libx264) not available in this FFmpeg; writing MPEG-4 part 2");
                VideoCodec::Mpeg4
            }
            c => c,
        }
    }

    /// FFmpeg codec name as probed back from the file ("h264" / "mpeg4").
    pub fn codec_name(self) -> &'static str {
        match self {
            VideoCodec::H264 => "h264",
            VideoCodec::Mpeg4 => "mpeg4",
        }
    }
}

impl Default for VideoCodec {
    fn default() -> Self {
        Self::best_available()
    }
}

/// What to write.
#[derive(Debug, Clone, Copy)]
pub struct ClipSpec<'a> {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// RGB24 frames, each `height * width * 3` bytes, row-major, no padding.
    pub frames: &'a [Vec<u8>],
    /// Mono samples in [-1, 1] at `sample_rate`. Empty: no audio stream is written.
    pub audio: &'a [f32],
    pub sample_rate: u32,
    pub codec: VideoCodec,
}

/// Sample rates the AAC encoder accepts; other rates are resampled to 48 kHz.
const AAC_RATES: [u32; 13] = [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350];

fn validate(path: &Path, spec: &ClipSpec<'_>) -> Result<(), MediaError> {
    let bad = |d: String| Err(MediaError::invalid(path, d));
    if spec.width == 0 || spec.height == 0 || spec.width > MAX_DIMENSION || spec.height > MAX_DIMENSION {
        return bad(format!("frame size {}x{} out of range (1..={MAX_DIMENSION})", spec.width, spec.height));
    }
    if !spec.width.is_multiple_of(2) || !spec.height.is_multiple_of(2) {
        return bad(format!("frame size {}x{} must be even for yuv420p", spec.width, spec.height));
    }
    if spec.fps == 0 || spec.fps > 1000 {
        return bad(format!("fps {} out of range (1..=1000)", spec.fps));
    }
    if spec.frames.is_empty() {
        return bad("no video frames to write".into());
    }
    let want = spec.width as usize * spec.height as usize * 3;
    if let Some((i, f)) = spec.frames.iter().enumerate().find(|(_, f)| f.len() != want) {
        return bad(format!(
            "frame {i} has {} bytes, expected {want} ({}x{} RGB24)",
            f.len(),
            spec.width,
            spec.height
        ));
    }
    if !spec.audio.is_empty() && (spec.sample_rate == 0 || spec.sample_rate > 768_000) {
        return bad(format!("audio sample rate {} out of range", spec.sample_rate));
    }
    Ok(())
}

/// Write an MP4 clip (video + optional AAC audio) atomically to `path`.
pub fn write_clip(path: &Path, spec: &ClipSpec<'_>) -> Result<(), MediaError> {
    super::init();
    validate(path, spec)?;
    // The encoder's own error is kept aside: the atomic write only carries io errors.
    let mut encode_error = None;
    let written = crate::storage::write_atomic_with(path, |tmp| {
        // Create the file here first so a bad directory gives a proper io::Error.
        std::fs::File::create(tmp)?;
        write_mp4(path, tmp, spec).map_err(|e| {
            encode_error = Some(e);
            std::io::Error::other("encoding failed")
        })
    });
    match (written, encode_error) {
        (_, Some(e)) => Err(e),
        (Ok(()), None) => Ok(()),
        (Err(e), None) => Err(MediaError::io(path, e.source)),
    }
}

fn is_again_or_eof(e: &ffmpeg::Error) -> bool {
    matches!(e, ffmpeg::Error::Eof) || matches!(e, ffmpeg::Error::Other { errno } if *errno == ffmpeg::error::EAGAIN)
}


/// The H.264 (or MPEG-4 part 2) encoder for `spec`'s frames, its stream index and time base.
fn open_video_out(octx: &mut ffmpeg::format::context::Output, spec: &ClipSpec, cflags: codec::Flags, enc_err: &dyn Fn(String) -> MediaError) -> Result<(encoder::video::Encoder, usize, Rational), MediaError> {
    let kind = spec.codec.resolve();
    let vcodec = match kind {
        VideoCodec::H264 => encoder::find_by_name("libx264"),
        VideoCodec::Mpeg4 => encoder::find(codec::Id::MPEG4),
    }
    .ok_or_else(|| enc_err(format!("no {} encoder in this FFmpeg", kind.codec_name())))?;
    let fps = i32::try_from(spec.fps).map_err(|_| enc_err("fps too large".into()))?;
    let vtb = Rational::new(1, fps);
    let mut venc = codec::Context::new_with_codec(vcodec)
        .encoder()
        .video()
        .map_err(|e| enc_err(format!("video encoder context: {e}")))?;
    venc.set_width(spec.width);
    venc.set_height(spec.height);
    venc.set_format(ffmpeg::format::Pixel::YUV420P);
    venc.set_time_base(vtb);
    venc.set_frame_rate(Some(Rational::new(fps, 1)));
    venc.set_gop(spec.fps.saturating_mul(2).max(1));
    venc.set_threading(ffmpeg::threading::Config {
        kind: ffmpeg::threading::Type::Frame,
        count: 1,
        ..Default::default()
    });
    let mut vopts = ffmpeg::Dictionary::new();
    match kind {
        VideoCodec::H264 => {
            venc.set_flags(cflags);
            vopts.set("preset", "medium");
            vopts.set("crf", "18");
            // The macroblock-tree lookahead reads uninitialised memory on tiny frames (64x64), which makes
            // output differ run to run; without it the synthetic dataset is byte-reproducible.
            vopts.set("x264-params", "mbtree=0");
        }
        VideoCodec::Mpeg4 => {
            venc.set_flags(cflags | codec::Flags::QSCALE);
            venc.set_global_quality(2 * ffmpeg::ffi::FF_QP2LAMBDA);
            venc.set_max_b_frames(0);
        }
    }
    let venc = venc
        .open_as_with(vcodec, vopts)
        .map_err(|e| enc_err(format!("cannot open the {} encoder: {e}", kind.codec_name())))?;
    let vindex = {
        let mut st = octx.add_stream(vcodec).map_err(|e| enc_err(format!("add video stream: {e}")))?;
        st.set_time_base(vtb);
        st.set_avg_frame_rate(Rational::new(fps, 1));
        st.set_parameters(&venc);
        st.index()
    };
    Ok((venc, vindex, vtb))
}
/// One mono planar-f32 frame of `len` samples: `chunk`, zero-padded.
fn audio_frame(chunk: &[f32], len: usize, rate: u32) -> Result<frame::Audio, String> {
    let mut af = frame::Audio::new(Sample::F32(SampleType::Planar), len, ChannelLayout::MONO);
    af.set_rate(rate);
    let dst = af.data_mut(0);
    if dst.len() < len * 4 {
        return Err("could not allocate an audio frame".into());
    }
    for (i, d) in dst[..len * 4].chunks_exact_mut(4).enumerate() {
        d.copy_from_slice(&chunk.get(i).copied().unwrap_or(0.0).to_ne_bytes());
    }
    Ok(af)
}

/// The AAC encoder and its stream for `spec`'s audio (resampled to a rate AAC takes).
fn open_audio_out(octx: &mut ffmpeg::format::context::Output, spec: &ClipSpec, cflags: codec::Flags, enc_err: &dyn Fn(String) -> MediaError) -> Result<AudioOut, MediaError> {
    let acodec = encoder::find_by_name("aac")
        .or_else(|| encoder::find(codec::Id::AAC))
        .ok_or_else(|| enc_err("no AAC encoder in this FFmpeg".into()))?;
    let rate = if AAC_RATES.contains(&spec.sample_rate) { spec.sample_rate } else { 48_000 };
    let rate_i = i32::try_from(rate).map_err(|_| enc_err("sample rate too large".into()))?;
    let mut aenc = codec::Context::new_with_codec(acodec)
        .encoder()
        .audio()
        .map_err(|e| enc_err(format!("audio encoder context: {e}")))?;
    aenc.set_rate(rate_i);
    aenc.set_channel_layout(ChannelLayout::MONO);
    aenc.set_channels(1);
    aenc.set_format(Sample::F32(SampleType::Planar));
    // 96 kb/s, but no more than the AAC maximum of 6144 bits per 1024-sample frame.
    aenc.set_bit_rate((96_000usize).min(6 * rate as usize));
    aenc.set_time_base(Rational::new(1, rate_i));
    aenc.set_flags(cflags);
    let aenc = aenc
        .open_as(acodec)
        .map_err(|e| enc_err(format!("cannot open the AAC encoder: {e}")))?;
    let aindex = {
        let mut st = octx.add_stream(acodec).map_err(|e| enc_err(format!("add audio stream: {e}")))?;
        st.set_time_base(Rational::new(1, rate_i));
        st.set_parameters(&aenc);
        st.index()
    };
    let pcm = resample_audio(spec.audio, spec.sample_rate, rate).map_err(enc_err)?;
    let frame_size = match aenc.frame_size() {
        0 => 1024,
        n => n as usize,
    };
    let small_last = acodec.capabilities().contains(codec::capabilities::Capabilities::SMALL_LAST_FRAME)
        || acodec.capabilities().contains(codec::capabilities::Capabilities::VARIABLE_FRAME_SIZE);
    Ok(AudioOut { enc: aenc, stream: aindex, rate, pcm, frame_size, small_last })
}


/// The opened AAC encoder and the whole track, resampled to the encoder's rate (planar f32).
struct AudioOut {
    enc: encoder::audio::Encoder,
    stream: usize,
    rate: u32,
    pcm: Vec<f32>,
    frame_size: usize,
    /// The encoder accepts a short final frame (else it is zero-padded).
    small_last: bool,
}

struct Track {
    enc_tb: Rational,
    stream: usize,
    stream_tb: Rational,
    /// Default packet duration (encoder time base) when the encoder leaves it at 0.
    default_duration: i64,
}

fn drain_packets(
    enc: &mut encoder::Encoder,
    track: &Track,
    octx: &mut ffmpeg::format::context::Output,
) -> Result<(), String> {
    loop {
        let mut pkt = ffmpeg::Packet::empty();
        match enc.receive_packet(&mut pkt) {
            Ok(()) => {}
            Err(e) if is_again_or_eof(&e) => return Ok(()),
            Err(e) => return Err(format!("encoder error: {e}")),
        }
        if pkt.duration() <= 0 {
            pkt.set_duration(track.default_duration);
        }
        pkt.set_stream(track.stream);
        pkt.rescale_ts(track.enc_tb, track.stream_tb);
        pkt.write_interleaved(octx).map_err(|e| format!("muxer error: {e}"))?;
    }
}

/// Convert mono f32 at `in_rate` to planar f32 at `out_rate` (swresample, flushed).
fn resample_audio(input: &[f32], in_rate: u32, out_rate: u32) -> Result<Vec<f32>, String> {
    use ffmpeg::software::resampling;
    let mut swr = resampling::Context::get(
        Sample::F32(SampleType::Packed),
        ChannelLayout::MONO,
        in_rate,
        Sample::F32(SampleType::Planar),
        ChannelLayout::MONO,
        out_rate,
    )
    .map_err(|e| format!("cannot create resampler: {e}"))?;
    let mut out = Vec::with_capacity(input.len().saturating_mul(out_rate as usize) / in_rate.max(1) as usize + 64);
    let push = |out: &mut Vec<f32>, f: &frame::Audio| -> Result<(), String> {
        let n = f.samples();
        if n == 0 {
            return Ok(());
        }
        let bytes = f.data(0).get(..n * 4).ok_or("resampled buffer too small")?;
        out.extend(bytes.chunks_exact(4).map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]])));
        Ok(())
    };
    for chunk in input.chunks(4096) {
        let mut inf = frame::Audio::new(Sample::F32(SampleType::Packed), chunk.len(), ChannelLayout::MONO);
        inf.set_rate(in_rate);
        {
            let dst = inf.data_mut(0);
            if dst.len() < chunk.len() * 4 {
                return Err("could not allocate an audio frame".into());
            }
            for (d, s) in dst.chunks_exact_mut(4).zip(chunk) {
                let v = if s.is_finite() { s.clamp(-1.0, 1.0) } else { 0.0 };
                d.copy_from_slice(&v.to_ne_bytes());
            }
        }
        // SAFETY: valid, initialised SwrContext.
        let cap = unsafe { ffmpeg::ffi::swr_get_out_samples(swr.as_mut_ptr(), chunk.len() as i32) };
        if cap < 0 {
            return Err(format!("swresample error {cap}"));
        }
        let mut of = frame::Audio::new(Sample::F32(SampleType::Planar), (cap as usize).max(16), ChannelLayout::MONO);
        swr.run(&inf, &mut of).map_err(|e| format!("swresample failed: {e}"))?;
        push(&mut out, &of)?;
    }
    for _ in 0..10_000 {
        let mut of = frame::Audio::new(Sample::F32(SampleType::Planar), 4096, ChannelLayout::MONO);
        swr.flush(&mut of).map_err(|e| format!("swresample flush failed: {e}"))?;
        if of.samples() == 0 {
            break;
        }
        push(&mut out, &of)?;
    }
    Ok(out)
}

fn write_mp4(path: &Path, tmp: &Path, spec: &ClipSpec<'_>) -> Result<(), MediaError> {
    let enc_err = |d: String| MediaError::encode(path, d);
    let url = super::file_url(tmp)?;
    let mut octx = ffmpeg::format::output_as(&url, "mp4")
        .map_err(|e| enc_err(format!("cannot create MP4 output: {e}")))?;
    // SAFETY: valid output context; only sets a flag (no encoder version / dates in the file).
    unsafe {
        (*octx.as_mut_ptr()).flags |= ffmpeg::ffi::AVFMT_FLAG_BITEXACT;
    }
    let global_header = octx.format().flags().contains(ffmpeg::format::Flags::GLOBAL_HEADER);
    let mut cflags = codec::Flags::BITEXACT;
    if global_header {
        cflags |= codec::Flags::GLOBAL_HEADER;
    }

    // --- video encoder
    let (mut venc, vindex, vtb) = open_video_out(&mut octx, spec, cflags, &enc_err)?;

    // --- audio encoder (optional)
    let mut audio = if spec.audio.is_empty() { None } else { Some(open_audio_out(&mut octx, spec, cflags, &enc_err)?) };

    let mut hopts = ffmpeg::Dictionary::new();
    hopts.set("movflags", "+faststart");
    octx.write_header_with(hopts).map_err(|e| enc_err(format!("cannot write the MP4 header: {e}")))?;

    let stream_tb = |octx: &ffmpeg::format::context::Output, i: usize| octx.stream(i).map(|s| s.time_base());
    let vtrack = Track {
        enc_tb: vtb,
        stream: vindex,
        stream_tb: stream_tb(&octx, vindex).unwrap_or(vtb),
        default_duration: 1,
    };
    let atrack = audio.as_ref().map(|a| {
        let tb = Rational::new(1, a.rate as i32);
        Track {
            enc_tb: tb,
            stream: a.stream,
            stream_tb: stream_tb(&octx, a.stream).unwrap_or(tb),
            default_duration: a.frame_size as i64,
        }
    });

    // --- RGB → YUV420P converter
    use ffmpeg::software::scaling;
    let mut sws = scaling::Context::get(
        ffmpeg::format::Pixel::RGB24,
        spec.width,
        spec.height,
        ffmpeg::format::Pixel::YUV420P,
        spec.width,
        spec.height,
        scaling::Flags::BILINEAR,
    )
    .map_err(|e| enc_err(format!("cannot create the RGB→YUV converter: {e}")))?;
    let row = spec.width as usize * 3;
    let mut rgb = frame::Video::new(ffmpeg::format::Pixel::RGB24, spec.width, spec.height);

    // --- interleaved encode: whichever stream is earlier goes next
    let n_video = spec.frames.len();
    let (n_chunks, fs) = audio.as_ref().map_or((0, 1), |a| (a.pcm.len().div_ceil(a.frame_size), a.frame_size));
    let arate = audio.as_ref().map_or(1, |a| a.rate) as u128;
    let (mut vi, mut aj) = (0usize, 0usize);
    while vi < n_video || aj < n_chunks {
        // video time vi/fps <= audio time aj*fs/rate  <=>  vi*rate <= aj*fs*fps
        let video_next = vi < n_video
            && (aj >= n_chunks || (vi as u128) * arate <= (aj as u128) * (fs as u128) * u128::from(spec.fps));
        if video_next {
            let src = &spec.frames[vi];
            let stride = rgb.stride(0);
            {
                let dst = rgb.data_mut(0);
                for y in 0..spec.height as usize {
                    let d = dst
                        .get_mut(y * stride..y * stride + row)
                        .ok_or_else(|| enc_err("RGB frame buffer too small".into()))?;
                    d.copy_from_slice(&src[y * row..(y + 1) * row]);
                }
            }
            let mut yuv = frame::Video::new(ffmpeg::format::Pixel::YUV420P, spec.width, spec.height);
            sws.run(&rgb, &mut yuv).map_err(|e| enc_err(format!("RGB→YUV conversion: {e}")))?;
            yuv.set_pts(Some(vi as i64));
            venc.send_frame(&yuv).map_err(|e| enc_err(format!("video encoder: {e}")))?;
            drain_packets(&mut venc, &vtrack, &mut octx).map_err(enc_err)?;
            vi += 1;
        } else if let (Some(a), Some(track)) = (audio.as_mut(), atrack.as_ref()) {
            let start = aj * fs;
            let end = (start + fs).min(a.pcm.len());
            let chunk = &a.pcm[start..end];
            let len = if a.small_last { chunk.len() } else { fs };
            let mut af = audio_frame(chunk, len, a.rate).map_err(enc_err)?;
            af.set_pts(Some(start as i64));
            a.enc.send_frame(&af).map_err(|e| enc_err(format!("audio encoder: {e}")))?;
            drain_packets(&mut a.enc, track, &mut octx).map_err(enc_err)?;
            aj += 1;
        } else {
            break;
        }
    }

    // --- flush encoders
    venc.send_eof().map_err(|e| enc_err(format!("video encoder flush: {e}")))?;
    drain_packets(&mut venc, &vtrack, &mut octx).map_err(enc_err)?;
    if let (Some(a), Some(track)) = (audio.as_mut(), atrack.as_ref()) {
        a.enc.send_eof().map_err(|e| enc_err(format!("audio encoder flush: {e}")))?;
        drain_packets(&mut a.enc, track, &mut octx).map_err(enc_err)?;
    }
    octx.write_trailer().map_err(|e| enc_err(format!("cannot finish the MP4 file: {e}")))?;
    drop(octx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_serde() {
        assert_eq!(serde_json::to_string(&VideoCodec::H264).unwrap(), "\"h264\"");
        assert_eq!(serde_json::from_str::<VideoCodec>("\"mpeg4\"").unwrap(), VideoCodec::Mpeg4);
    }

    #[test]
    fn rejects_bad_spec() {
        let frames = vec![vec![0u8; 10]];
        let spec = ClipSpec {
            width: 4,
            height: 4,
            fps: 8,
            frames: &frames,
            audio: &[],
            sample_rate: 16_000,
            codec: VideoCodec::Mpeg4,
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.mp4");
        let e = write_clip(&p, &spec).unwrap_err();
        assert!(matches!(e, MediaError::InvalidRequest { .. }), "{e}");
        assert!(!p.exists());
    }
}
