// Integration tests for `emollama::media`, checked against the `ffmpeg` / `ffprobe` CLIs.
//
// Test media is generated in a temp dir with the `ffmpeg` CLI. Without the CLI these tests
// fail with a message asking to install it (they never pass silently).

use std::path::{Path, PathBuf};
use std::process::Command;

use emollama::media::{
    self, ClipSpec, FrameSampling, MediaError, VideoCodec, decode_audio, decode_clip, decode_video, probe,
    sampled_frame_times, write_clip,
};

// ----------------------------------------------------------------------------------------------
// helpers

fn require_tool(tool: &str) {
    let ok = Command::new(tool).arg("-version").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(
        ok,
        "the `{tool}` CLI is required by the media tests (it generates and checks test media); \
         install it, e.g. `apt-get install ffmpeg`"
    );
}

fn run(tool: &str, args: &[&str]) -> Vec<u8> {
    require_tool(tool);
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn ffmpeg(args: &[&str]) -> Vec<u8> {
    let mut all = vec!["-hide_banner", "-loglevel", "error", "-nostdin", "-y"];
    all.extend_from_slice(args);
    run("ffmpeg", &all)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// 3 s, 160x120 @ 10 fps testsrc (H.264 with B-frames, yuv420p) + 440 Hz AAC stereo 44.1 kHz.
fn make_av_mp4(dir: &Path) -> PathBuf {
    let p = dir.join("av.mp4");
    ffmpeg(&[
        "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
        "-t", "3", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-ac", "2",
        "-bitexact", s(&p),
    ]);
    p
}

/// 3 s MPEG-4 part 2 in Matroska at 12.5 fps (no per-stream duration: exercises the fallback).
fn make_mkv(dir: &Path) -> PathBuf {
    let p = dir.join("v.mkv");
    ffmpeg(&[
        "-f", "lavfi", "-i", "testsrc2=size=176x144:rate=25/2",
        "-t", "3", "-c:v", "mpeg4", "-q:v", "3", "-an", "-bitexact", s(&p),
    ]);
    p
}

fn make_video_only(dir: &Path) -> PathBuf {
    let p = dir.join("video_only.mp4");
    ffmpeg(&[
        "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10",
        "-t", "3", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-an", "-bitexact", s(&p),
    ]);
    p
}

fn make_audio_only(dir: &Path) -> PathBuf {
    let p = dir.join("audio_only.m4a");
    ffmpeg(&[
        "-f", "lavfi", "-i", "sine=frequency=330:sample_rate=44100",
        "-t", "2", "-c:a", "aac", "-ac", "2", "-bitexact", s(&p),
    ]);
    p
}

fn make_wav(dir: &Path) -> PathBuf {
    let p = dir.join("tone.wav");
    ffmpeg(&[
        "-f", "lavfi", "-i", "sine=frequency=523:sample_rate=22050",
        "-t", "1.7", "-c:a", "pcm_s16le", "-ac", "2", "-bitexact", s(&p),
    ]);
    p
}

/// Presentation times (pts_time) of every video frame, as ffprobe decodes them.
fn ffprobe_frame_times(p: &Path) -> Vec<f64> {
    let out = run(
        "ffprobe",
        &["-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts_time", "-of", "csv=p=0", s(p)],
    );
    String::from_utf8_lossy(&out)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.trim_end_matches(',').parse::<f64>().unwrap_or_else(|e| panic!("pts_time {l:?}: {e}")))
        .collect()
}

/// The duration the sampling is defined over: the video stream's, else the container's.
fn ffprobe_video_duration(p: &Path) -> f64 {
    let q = |entries: &str, extra: &[&str]| -> Option<f64> {
        let mut args = vec!["-v", "error"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-show_entries", entries, "-of", "csv=p=0", s(p)]);
        String::from_utf8_lossy(&run("ffprobe", &args)).trim().trim_end_matches(',').parse().ok()
    };
    q("stream=duration", &["-select_streams", "v:0"])
        .or_else(|| q("format=duration", &[]))
        .expect("ffprobe reports no duration")
}

/// The reference rule: last frame with time <= t, else the first frame.
fn expected_times(frame_times: &[f64], targets: &[f64]) -> Vec<f64> {
    media::sample::select_frames(frame_times, targets).into_iter().map(|i| frame_times[i]).collect()
}

fn decode_cli_audio(p: &Path) -> Vec<f32> {
    let bytes = ffmpeg(&["-i", s(p), "-ac", "1", "-ar", "16000", "-f", "f32le", "-"]);
    assert_eq!(bytes.len() % 4, 0);
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn rms(x: &[f32]) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64).sqrt()
}

/// `r.unwrap_err()` without dumping a successful result (frame buffers) into the log.
fn err<T>(r: Result<T, MediaError>) -> MediaError {
    match r {
        Ok(_) => panic!("expected an error, got Ok"),
        Err(e) => e,
    }
}

fn assert_names_file(e: &MediaError, p: &Path) {
    assert_eq!(e.path(), p, "error names the wrong path: {e}");
    assert!(e.to_string().contains(&format!("`{}`", p.display())), "Display lacks the path: {e}");
}

fn samplings() -> Vec<FrameSampling> {
    vec![
        FrameSampling::Uniform { n: 8 },
        FrameSampling::First,
        FrameSampling::Fps { fps: 3.0, max_frames: None },
        FrameSampling::Fps { fps: 4.0, max_frames: Some(5) },
        // More frames than the video has: repeated picks.
        FrameSampling::Uniform { n: 45 },
    ]
}

// ----------------------------------------------------------------------------------------------
// 1. frame timestamps

fn check_timestamps(p: &Path) {
    let frames = ffprobe_frame_times(p);
    assert!(frames.len() >= 30, "ffprobe saw {} frames", frames.len());
    let duration = ffprobe_video_duration(p);
    let info = probe(p).unwrap();
    let probed = info.video_duration_s.unwrap();
    assert!((probed - duration).abs() < 1e-3, "probe duration {probed} vs ffprobe {duration}");
    for sampling in samplings() {
        let targets = sampling.target_times(duration);
        let want = expected_times(&frames, &targets);
        assert_eq!(info.sample_times(&sampling).len(), targets.len());

        let got = decode_video(p, &sampling, 32, 24).unwrap();
        assert_eq!(got.timestamps.len(), want.len(), "{sampling:?}");
        assert_eq!(got.frames.len(), want.len());
        for (g, w) in got.timestamps.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-6, "{sampling:?}: got {:?} want {:?}", got.timestamps, want);
        }
        let unscaled = sampled_frame_times(p, &sampling).unwrap();
        assert_eq!(unscaled.len(), want.len());
        for (g, w) in unscaled.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-6, "{sampling:?}: sampled_frame_times {unscaled:?} want {want:?}");
        }
    }
}

#[test]
fn timestamps_match_ffprobe_h264_mp4() {
    let dir = tempfile::tempdir().unwrap();
    check_timestamps(&make_av_mp4(dir.path()));
}

#[test]
fn timestamps_match_ffprobe_mpeg4_mkv() {
    let dir = tempfile::tempdir().unwrap();
    check_timestamps(&make_mkv(dir.path()));
}

// ----------------------------------------------------------------------------------------------
// 2. pixel values

/// Compare our picks with `ffmpeg -vf scale=W:H:flags=bilinear -pix_fmt rgb24` of every frame.
///
/// Tolerance: mean absolute difference <= 2 levels (of 255) per frame, max per-pixel diff <= 32.
/// Both sides run the same libswscale BILINEAR YUV420P→RGB24 conversion, but the CLI's `scale`
/// filter configures swscale through libavfilter (colour-range/matrix setup, slice threading),
/// so the rounding of individual pixels may differ by a level or two; a wrong frame, a wrong
/// filter or a stride bug gives diffs in the tens. (With Debian's FFmpeg 5.1 the two are
/// currently pixel-identical.)
fn check_pixels(p: &Path, w: u32, h: u32) {
    let frame_bytes = (w * h * 3) as usize;
    let scale = format!("scale={w}:{h}:flags=bilinear");
    let raw = ffmpeg(&[
        "-i", s(p), "-an", "-vsync", "passthrough", "-vf", &scale, "-pix_fmt", "rgb24", "-f", "rawvideo", "-",
    ]);
    let frames = ffprobe_frame_times(p);
    assert_eq!(raw.len(), frames.len() * frame_bytes, "CLI frame count differs from ffprobe's");
    let duration = ffprobe_video_duration(p);
    let sampling = FrameSampling::Uniform { n: 8 };
    let idx = media::sample::select_frames(&frames, &sampling.target_times(duration));
    let got = decode_video(p, &sampling, w, h).unwrap();
    assert_eq!((got.width, got.height), (w, h));
    assert_eq!(got.frames.len(), idx.len());
    let mut worst = (0.0f64, 0u8);
    for (k, (ours, &i)) in got.frames.iter().zip(&idx).enumerate() {
        assert_eq!(ours.len(), frame_bytes);
        let theirs = &raw[i * frame_bytes..(i + 1) * frame_bytes];
        let (mut sum, mut max) = (0u64, 0u8);
        for (a, b) in ours.iter().zip(theirs) {
            let d = a.abs_diff(*b);
            sum += u64::from(d);
            max = max.max(d);
        }
        let mean = sum as f64 / frame_bytes as f64;
        assert!(mean <= 2.0 && max <= 32, "pick {k} (frame {i}) at {w}x{h}: mean abs diff {mean:.3}, max {max}");
        worst = (worst.0.max(mean), worst.1.max(max));
    }
    eprintln!("{w}x{h}: worst mean abs diff {:.4}, worst max diff {}", worst.0, worst.1);
}

#[test]
fn pixels_match_ffmpeg_cli() {
    let dir = tempfile::tempdir().unwrap();
    let p = make_av_mp4(dir.path());
    check_pixels(&p, 96, 72); // downscale, non-integer factor
    check_pixels(&p, 160, 120); // native size: colour conversion only
    check_pixels(&p, 224, 224); // upscale + aspect change (the encoder input size)
}

// ----------------------------------------------------------------------------------------------
// 3. audio bit-identical to the CLI

fn check_audio_identical(p: &Path) {
    let want = decode_cli_audio(p);
    let got = decode_audio(p).unwrap();
    assert!(!got.missing);
    assert_eq!(got.sample_rate, 16_000);
    assert_eq!(got.samples.len(), want.len(), "sample count differs from the CLI");
    let max = got.samples.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert_eq!(max, 0.0, "max abs diff vs the CLI");
    assert!(rms(&got.samples) > 0.05, "decoded audio is (near) silent"); // lavfi sine: amplitude 1/8
}

#[test]
fn audio_bit_identical_aac_mp4() {
    let dir = tempfile::tempdir().unwrap();
    check_audio_identical(&make_av_mp4(dir.path()));
}

#[test]
fn audio_bit_identical_wav() {
    let dir = tempfile::tempdir().unwrap();
    check_audio_identical(&make_wav(dir.path()));
}

#[test]
fn audio_bit_identical_audio_only_m4a() {
    let dir = tempfile::tempdir().unwrap();
    check_audio_identical(&make_audio_only(dir.path()));
}

// ----------------------------------------------------------------------------------------------
// 4. bad inputs: typed errors naming the file

fn uniform8() -> FrameSampling {
    FrameSampling::Uniform { n: 8 }
}

#[test]
fn bad_input_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("empty.mp4");
    std::fs::write(&p, b"").unwrap();
    for e in [
        err(decode_video(&p, &uniform8(), 32, 32)),
        err(decode_audio(&p)),
        err(decode_clip(&p, &uniform8(), 32, 32)),
        err(probe(&p)),
    ] {
        assert!(matches!(e, MediaError::Open { .. }), "{e:?}");
        assert!(e.to_string().contains("empty"), "{e}");
        assert_names_file(&e, &p);
    }
}

#[test]
fn bad_input_random_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("noise.mp4");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let bytes: Vec<u8> = (0..65_536)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(&p, &bytes).unwrap();
    for e in [
        err(decode_video(&p, &uniform8(), 32, 32)),
        err(decode_audio(&p)),
        err(decode_clip(&p, &uniform8(), 32, 32)),
        err(probe(&p)),
    ] {
        assert!(matches!(e, MediaError::Open { .. }), "{e:?}");
        assert_names_file(&e, &p);
    }
}

#[test]
fn bad_input_truncated_mp4() {
    let dir = tempfile::tempdir().unwrap();
    let full = make_av_mp4(dir.path());
    // Same file with the index (moov) up front: truncation then cuts the sample data instead.
    let faststart = dir.path().join("faststart.mp4");
    ffmpeg(&["-i", s(&full), "-c", "copy", "-movflags", "+faststart", s(&faststart)]);
    for src in [&full, &faststart] {
        let bytes = std::fs::read(src).unwrap();
        let p = dir.path().join(format!("trunc_{}", src.file_name().unwrap().to_str().unwrap()));
        std::fs::write(&p, &bytes[..bytes.len() * 40 / 100]).unwrap();
        for e in [
            err(decode_video(&p, &uniform8(), 32, 32)),
            err(decode_audio(&p)),
            err(decode_clip(&p, &uniform8(), 32, 32)),
        ] {
            assert!(matches!(e, MediaError::Decode { .. }), "{e:?}");
            assert!(e.to_string().contains("truncated"), "{e}");
            assert_names_file(&e, &p);
        }
    }
}

#[test]
fn bad_input_audio_only() {
    let dir = tempfile::tempdir().unwrap();
    let p = make_audio_only(dir.path());
    let e = err(decode_video(&p, &uniform8(), 32, 32));
    assert!(matches!(e, MediaError::NoVideoStream { .. }), "{e:?}");
    assert_eq!(e.to_string(), format!("`{}`: no video stream (streams: audio)", p.display()));
    assert_names_file(&e, &p);
    let e = err(decode_clip(&p, &uniform8(), 32, 32));
    assert!(matches!(e, MediaError::NoVideoStream { .. }), "{e:?}");
    let e = err(sampled_frame_times(&p, &uniform8()));
    assert!(matches!(e, MediaError::NoVideoStream { .. }), "{e:?}");

    let a = decode_audio(&p).unwrap();
    assert!(!a.missing);
    assert!((a.duration_s() - 2.0).abs() < 0.1, "audio duration {}", a.duration_s());
    let info = probe(&p).unwrap();
    assert!(info.video_stream.is_none());
    assert_eq!(info.streams.len(), 1);
    assert_eq!(info.streams[0].kind, "audio");
    assert_eq!(info.streams[0].channels, Some(2));
    assert_eq!(info.streams[0].sample_rate, Some(44_100));
}

#[test]
fn bad_input_video_only() {
    let dir = tempfile::tempdir().unwrap();
    let p = make_video_only(dir.path());
    let a = decode_audio(&p).unwrap();
    assert!(a.missing);
    assert_eq!(a.sample_rate, 16_000);
    // 3 s of silence, within one (1024-sample) audio frame.
    assert!(a.samples.len().abs_diff(48_000) <= 1024, "{} samples", a.samples.len());
    assert!(a.samples.iter().all(|&v| v == 0.0));

    let clip = decode_clip(&p, &uniform8(), 48, 32).unwrap();
    assert!(clip.audio.missing);
    assert_eq!(clip.audio.samples.len(), a.samples.len());
    assert_eq!(clip.video.frames.len(), 8);
    assert!(clip.video.frames.iter().all(|f| f.len() == 48 * 32 * 3));
    assert!((clip.duration_s - 3.0).abs() < 0.05, "duration {}", clip.duration_s);
}

#[test]
fn bad_input_missing_path_and_directory() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("does_not_exist.mp4");
    for e in [
        err(decode_video(&p, &uniform8(), 32, 32)),
        err(decode_audio(&p)),
        err(decode_clip(&p, &uniform8(), 32, 32)),
        err(probe(&p)),
        err(sampled_frame_times(&p, &uniform8())),
    ] {
        assert!(matches!(e, MediaError::NotFound { .. }), "{e:?}");
        assert_names_file(&e, &p);
    }
    let e = err(decode_audio(dir.path()));
    assert!(matches!(e, MediaError::Open { .. }), "{e:?}");
    assert_names_file(&e, dir.path());
}

#[test]
fn bad_request_is_invalid_request() {
    let dir = tempfile::tempdir().unwrap();
    let p = make_video_only(dir.path());
    for (sampling, w, h) in [
        (FrameSampling::Uniform { n: 0 }, 32, 32),
        (FrameSampling::Fps { fps: 0.0, max_frames: None }, 32, 32),
        (FrameSampling::Fps { fps: f64::NAN, max_frames: None }, 32, 32),
        (FrameSampling::Fps { fps: 30.0, max_frames: Some(20_000) }, 32, 32),
        // 5000 fps over 3 s = 15000 frames > the 10000-frame safety limit
        (FrameSampling::Fps { fps: 5000.0, max_frames: None }, 32, 32),
        (uniform8(), 0, 32),
        (uniform8(), 32, 100_000),
    ] {
        let e = err(decode_video(&p, &sampling, w, h));
        assert!(matches!(e, MediaError::InvalidRequest { .. }), "{sampling:?} {w}x{h}: {e:?}");
        assert_names_file(&e, &p);
    }
}

// ----------------------------------------------------------------------------------------------
// 5. write_clip round trip

const SOLID: [u8; 3] = [200, 40, 90];

fn synth_clip() -> (Vec<Vec<u8>>, Vec<f32>) {
    let (w, h) = (64usize, 64usize);
    let frames = (0..16)
        .map(|i| {
            let mut f = vec![0u8; w * h * 3];
            for y in 0..h {
                for x in 0..w {
                    let px = &mut f[(y * w + x) * 3..(y * w + x) * 3 + 3];
                    if i < 8 {
                        px.copy_from_slice(&SOLID);
                    } else {
                        // a moving gradient
                        px.copy_from_slice(&[((x * 4 + i * 8) % 256) as u8, (y * 4) as u8, 128]);
                    }
                }
            }
            f
        })
        .collect();
    let sr = 16_000.0f32;
    let audio = (0..32_000).map(|n| 0.5 * (2.0 * std::f32::consts::PI * 440.0 * n as f32 / sr).sin()).collect();
    (frames, audio)
}

fn check_round_trip(codec: VideoCodec) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("clip.mp4");
    let (frames, audio) = synth_clip();
    let spec = ClipSpec { width: 64, height: 64, fps: 8, frames: &frames, audio: &audio, sample_rate: 16_000, codec };
    write_clip(&p, &spec).unwrap();
    assert!(p.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().filter_map(|e| e.ok()).collect();
    assert_eq!(leftovers.len(), 1, "temporary file left behind");

    // probe
    let info = probe(&p).unwrap();
    let text = info.render_text();
    let v: Vec<_> = info.streams.iter().filter(|s| s.kind == "video").collect();
    let a: Vec<_> = info.streams.iter().filter(|s| s.kind == "audio").collect();
    assert_eq!((v.len(), a.len()), (1, 1), "{text}");
    let used = codec.resolve();
    assert_eq!(v[0].codec, used.codec_name(), "{text}");
    assert!(["h264", "mpeg4"].contains(&v[0].codec.as_str()));
    assert_eq!(a[0].codec, "aac", "{text}");
    assert_eq!((v[0].width, v[0].height), (Some(64), Some(64)));
    assert_eq!(a[0].channels, Some(1));
    assert_eq!(info.video_frame_count, Some(16), "{text}");
    assert!((info.duration_s - 2.0).abs() < 0.1, "{text}");
    assert!((info.video_duration_s.unwrap() - 2.0).abs() < 1e-3, "{text}");
    assert!(text.contains("aac") && text.contains(used.codec_name()), "{text}");

    // decode back: every frame once
    let clip = decode_clip(&p, &FrameSampling::Fps { fps: 8.0, max_frames: None }, 64, 64).unwrap();
    assert_eq!(clip.video.frames.len(), 16);
    assert_eq!((clip.video.width, clip.video.height), (64, 64));
    for (k, t) in clip.video.timestamps.iter().enumerate() {
        assert!((t - k as f64 / 8.0).abs() < 1e-6, "timestamps {:?}", clip.video.timestamps);
    }
    assert!((clip.duration_s - 2.0).abs() < 0.1);
    // colour of a solid frame (lossy yuv420p round trip: within 6 levels per channel)
    for k in [0usize, 3, 7] {
        let f = &clip.video.frames[k];
        let mut mean = [0f64; 3];
        for px in f.chunks_exact(3) {
            for c in 0..3 {
                mean[c] += f64::from(px[c]);
            }
        }
        for c in 0..3 {
            mean[c] /= (f.len() / 3) as f64;
            assert!((mean[c] - f64::from(SOLID[c])).abs() <= 6.0, "frame {k} mean colour {mean:?} vs {SOLID:?}");
        }
    }
    // audio: same length (± AAC priming/padding) and RMS
    assert!(!clip.audio.missing);
    assert!((clip.audio.duration_s() - 2.0).abs() < 0.1, "audio {} s", clip.audio.duration_s());
    let (r_in, r_out) = (rms(&audio), rms(&clip.audio.samples));
    assert!((r_out / r_in - 1.0).abs() < 0.1, "RMS in {r_in:.4} out {r_out:.4}");

    // deterministic output
    let p2 = dir.path().join("clip2.mp4");
    write_clip(&p2, &spec).unwrap();
    assert!(std::fs::read(&p).unwrap() == std::fs::read(&p2).unwrap(), "write_clip is not deterministic");
}

#[test]
fn write_clip_round_trip_default_codec() {
    check_round_trip(VideoCodec::default());
}

#[test]
fn write_clip_round_trip_mpeg4() {
    check_round_trip(VideoCodec::Mpeg4);
}

#[test]
fn write_clip_resamples_odd_rate_and_rejects_bad_spec() {
    let dir = tempfile::tempdir().unwrap();
    let (frames, _) = synth_clip();
    // 10 kHz is not an AAC rate: resampled to 48 kHz inside.
    let audio: Vec<f32> = (0..20_000).map(|n| 0.3 * (n as f32 * 0.2).sin()).collect();
    let p = dir.path().join("odd.mp4");
    let spec = ClipSpec {
        width: 64,
        height: 64,
        fps: 8,
        frames: &frames,
        audio: &audio,
        sample_rate: 10_000,
        codec: VideoCodec::Mpeg4,
    };
    write_clip(&p, &spec).unwrap();
    let a = decode_audio(&p).unwrap();
    assert!((a.duration_s() - 2.0).abs() < 0.1, "{}", a.duration_s());

    // video only
    let p = dir.path().join("silent.mp4");
    write_clip(&p, &ClipSpec { audio: &[], ..spec }).unwrap();
    assert!(decode_audio(&p).unwrap().missing);

    // odd size / wrong frame length / missing directory
    let e = err(write_clip(&dir.path().join("odd_size.mp4"), &ClipSpec { width: 63, ..spec }));
    assert!(matches!(e, MediaError::InvalidRequest { .. }), "{e:?}");
    let e = err(write_clip(&dir.path().join("short.mp4"), &ClipSpec { height: 32, ..spec }));
    assert!(matches!(e, MediaError::InvalidRequest { .. }), "{e:?}");
    let bad = dir.path().join("no/such/dir/x.mp4");
    let e = err(write_clip(&bad, &spec));
    assert!(matches!(e, MediaError::Io { .. }), "{e:?}");
    assert_names_file(&e, &bad);
}
