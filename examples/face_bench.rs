//! Times the face front end per sampled frame on real clips (`just bench-faces`, part of `just bench`):
//! what decoding costs without it (frames scaled to the encoders' 224x224), with it (frames decoded at
//! the detection size, then detection, tracking, eye-aligned 224x224 crops, expression scoring and the
//! peak frame), and each stage alone. Median of several runs; prints the BENCHMARKS.md section.
//!     cargo run --release --example face_bench -- [repeats]

use std::path::PathBuf;
use std::time::Instant;

use emollama::media::face::{CropWindow, FaceFrontEnd, FaceOptions, align, blazeface::BlazeFace, expression::MiniXception};
use emollama::media::{self, FrameSampling};

const FRAMES: usize = 16;
const CROP: usize = 224;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time<T>(repeats: usize, mut f: impl FnMut() -> T) -> f64 {
    f(); // warm-up
    median((0..repeats).map(|_| {
        let t = Instant::now();
        std::hint::black_box(f());
        t.elapsed().as_secs_f64() * 1e3
    }).collect())
}

fn main() -> anyhow::Result<()> {
    let repeats: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(7);
    let media_dir = emollama::storage::cache_root("").join("media");
    let clips: Vec<PathBuf> = ["WolfgangLanger_Pexels.mp4", "carphone_pristine.mp4"].iter().map(|c| media_dir.join(c)).collect();
    for c in &clips {
        anyhow::ensure!(c.is_file(), "{} is missing: run `just fetch-media`", c.display());
    }
    let fe = FaceFrontEnd::new(&FaceOptions::default())?;
    let dev = candle_core::Device::Cpu;
    let detector = BlazeFace::short_range(&dev)?;
    let scorer = MiniXception::fer(&dev)?;
    let sampling = FrameSampling::Uniform { n: FRAMES };
    let threads = rayon::current_num_threads();
    let mut rows = Vec::new();
    for clip in &clips {
        let name = clip.file_name().and_then(|n| n.to_str()).unwrap_or("?").to_string();
        let info = media::probe(clip)?;
        let v = info.video().ok_or_else(|| anyhow::anyhow!("no video"))?;
        let (dw, dh) = fe.detect_size(v.width.unwrap_or(0), v.height.unwrap_or(0));
        let plain = time(repeats, || media::decode_video(clip, &sampling, CROP as u32, CROP as u32));
        let with_faces = time(repeats, || {
            let video = media::decode_video(clip, &sampling, dw, dh).expect("decode");
            fe.process(&video, CROP, CROP).expect("front end")
        });
        let video = media::decode_video(clip, &sampling, dw, dh)?;
        let frames: Vec<&[u8]> = video.frames.iter().map(|f| f.as_slice()).collect();
        let (w, h) = (dw as usize, dh as usize);
        let detect = time(repeats, || detector.detect(&frames, w, h).expect("detect"));
        let found = detector.detect(&frames, w, h)?;
        let windows: Vec<CropWindow> = found.iter().map(|d| d.first().map(|d| CropWindow::for_face(d, 0.25, true)).unwrap_or(CropWindow::full_frame(w, h))).collect();
        let crops = time(repeats, || frames.iter().zip(&windows).map(|(f, win)| align::crop(f, w, h, win, CROP, CROP)).collect::<Vec<_>>());
        let faces: Vec<Vec<u8>> = frames.iter().zip(&windows).map(|(f, win)| align::crop(f, w, h, win, 64, 64)).collect();
        let refs: Vec<&[u8]> = faces.iter().map(|f| f.as_slice()).collect();
        let score = time(repeats, || scorer.score_rgb(&refs, 64, 64).expect("score"));
        let n = FRAMES as f64;
        rows.push(format!(
            "| {name} ({}x{} → {dw}x{dh}) | {:.1} | {:.1} | **{:.1}** | {:.1} | {:.2} | {:.2} |",
            v.width.unwrap_or(0),
            v.height.unwrap_or(0),
            plain / n,
            with_faces / n,
            (with_faces - plain) / n,
            detect / n,
            crops / n,
            score / n
        ));
    }
    println!("## Face front end (per sampled frame), CPU\n");
    println!(
        "`cargo run --release --example face_bench` (`just bench-faces`): {FRAMES} frames sampled uniformly per clip, median of {repeats} runs, {threads} threads. \
         *Without*: decode + scale to {CROP}x{CROP} (what the encoders get with no front end). *With*: decode at the detection size (longer side ≤ 640) + BlazeFace short range \
         + main-face tracking + eye-aligned {CROP}x{CROP} crops + FER mini-Xception + peak frame. *Added* = with − without. Milliseconds per sampled frame.\n"
    );
    println!("| clip | without | with | added | detection | crops | expression |\n|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
