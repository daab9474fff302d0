//! The contact sheet of `emollama probe --faces`: per sampled frame, the frame with every detected box
//! (the main face green, others yellow), keypoints and scores, the crop the encoders see, its
//! expression and how it was made; the peak frame outlined in red.

use plotters::backend::RGBPixel;
use plotters::prelude::*;

use crate::media::face::{ClipFaces, CropSource};
use crate::media::VideoFrames;
use crate::media::resize::{Filter, resize_rgb};
use crate::report::ReportError;
use crate::report::plot::{encode_png, ensure_font};

const TILE_W: u32 = 320;
const CROP: u32 = 128;
const COLUMNS: usize = 4;
const FAMILY: &str = "sans-serif";

/// PNG bytes of the sheet for `clip` (from [`super::FaceFrontEnd::process`] on `video`).
pub fn contact_sheet(video: &VideoFrames, clip: &ClipFaces, title: &str) -> Result<Vec<u8>, ReportError> {
    ensure_font()?;
    let (fw, fh) = (clip.frame_w.max(1), clip.frame_h.max(1));
    let thumb_h = ((TILE_W as usize * fh) / fw).max(1) as u32;
    let tile_h = thumb_h + CROP + 50;
    let n = clip.frames.len().max(1);
    let cols = n.min(COLUMNS);
    let rows = n.div_ceil(cols);
    let (w, h) = (cols as u32 * (TILE_W + 10) + 10, rows as u32 * (tile_h + 10) + 50);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    let draw_err = |e: String| ReportError::Plot { path: "faces.png".into(), message: e };
    // Paste the thumbnails and crops first, then draw on top.
    let paste = |buf: &mut [u8], img: &[u8], iw: usize, ih: usize, x0: usize, y0: usize| {
        for y in 0..ih {
            let dst = ((y0 + y) * w as usize + x0) * 3;
            if dst + iw * 3 <= buf.len() {
                buf[dst..dst + iw * 3].copy_from_slice(&img[y * iw * 3..(y + 1) * iw * 3]);
            }
        }
    };
    let origin = |i: usize| -> (u32, u32) { (10 + (i % cols) as u32 * (TILE_W + 10), 50 + (i / cols) as u32 * (tile_h + 10)) };
    for (i, frame) in video.frames.iter().enumerate().take(clip.frames.len()) {
        let (x0, y0) = origin(i);
        let thumb = resize_rgb(frame, fw, fh, TILE_W as usize, thumb_h as usize, Filter::Bilinear).map_err(|e| draw_err(e.to_string()))?;
        paste(&mut buf, &thumb, TILE_W as usize, thumb_h as usize, x0 as usize, y0 as usize);
        if let Some(crop) = clip.crops.get(i) {
            let shown = resize_rgb(crop, clip.crop_w, clip.crop_h, CROP as usize, CROP as usize, Filter::Bilinear).map_err(|e| draw_err(e.to_string()))?;
            paste(&mut buf, &shown, CROP as usize, CROP as usize, x0 as usize, (y0 + thumb_h + 4) as usize);
        }
    }
    {
        let root = BitMapBackend::<RGBPixel>::with_buffer_and_format(&mut buf, (w, h)).map_err(|e| draw_err(e.to_string()))?.into_drawing_area();
        let text = |size: u32| TextStyle::from((FAMILY, size).into_font()).color(&BLACK);
        root.draw(&Text::new(title.to_string(), (10, 14), text(18))).map_err(|e| draw_err(e.to_string()))?;
        let s = TILE_W as f32 / fw as f32;
        for (i, f) in clip.frames.iter().enumerate() {
            let (x0, y0) = origin(i);
            let (x0, y0) = (x0 as i32, y0 as i32);
            let at = |p: [f32; 2]| (x0 + (p[0] * s) as i32, y0 + (p[1] * s) as i32);
            for (k, d) in f.detections.iter().enumerate() {
                let color = if f.main == Some(k) { RGBColor(40, 220, 60) } else { RGBColor(250, 210, 0) };
                root.draw(&Rectangle::new([at([d.bbox[0], d.bbox[1]]), at([d.bbox[2], d.bbox[3]])], color.stroke_width(2))).map_err(|e| draw_err(e.to_string()))?;
                for kp in &d.keypoints {
                    root.draw(&Circle::new(at(*kp), 2, RGBColor(230, 30, 30).filled())).map_err(|e| draw_err(e.to_string()))?;
                }
                let (bx, by) = at([d.bbox[0], d.bbox[1]]);
                root.draw(&Text::new(format!("{:.3}", d.score), (bx, (by - 14).max(y0)), text(12).color(&color))).map_err(|e| draw_err(e.to_string()))?;
            }
            if clip.peak == Some(i) {
                root.draw(&Rectangle::new([(x0 - 4, y0 - 4), (x0 + TILE_W as i32 + 4, y0 + tile_h as i32 - 6)], RGBColor(220, 0, 0).stroke_width(3))).map_err(|e| draw_err(e.to_string()))?;
            }
            let tx = x0 + CROP as i32 + 8;
            let ty = y0 + thumb_h as i32 + 8;
            let source = match f.crop {
                CropSource::Face => "face".to_string(),
                CropSource::Nearest(j) => format!("no face: window of #{j}"),
                CropSource::FullFrame => "no face: full frame".to_string(),
                CropSource::Dropped(j) => format!("dropped: repeats #{j}"),
            };
            let mut lines = vec![format!("#{i}  t = {:.2} s", f.timestamp_s), source];
            if let Some(p) = &f.expression {
                let (best, v) = crate::media::face::expression::top(p);
                lines.push(format!("{best} {v:.2}"));
                lines.push(format!("non-neutral {:.2}", 1.0 - p[crate::media::face::expression::NEUTRAL]));
            }
            if clip.peak == Some(i) {
                lines.push("PEAK".to_string());
            }
            for (k, line) in lines.iter().enumerate() {
                root.draw(&Text::new(line.clone(), (tx, ty + 16 * k as i32), text(13))).map_err(|e| draw_err(e.to_string()))?;
            }
        }
        root.present().map_err(|e| draw_err(e.to_string()))?;
    }
    encode_png(&buf, w, h).map_err(|e| draw_err(e.to_string()))
}
