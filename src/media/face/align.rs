//! Face crops: a square window around the face, rotated so the eyes are level, bilinearly sampled
//! to the size an encoder wants (pixels outside the frame are black).

use serde::Serialize;

use super::detection::Detection;

/// Where and how to cut one crop out of a frame, in frame pixels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CropWindow {
    pub center: [f32; 2],
    /// Side of the square window.
    pub side: f32,
    /// Rotation of the window (radians, image coordinates: positive turns x toward y), the angle of
    /// the line from the right eye to the left eye.
    pub angle: f32,
}

impl CropWindow {
    /// The window for a detection: its box centre, `max(width, height) × (1 + 2 margin)`, rotated by
    /// the eye line when `align` (keypoints 0 and 1: the subject's right and left eye).
    pub fn for_face(d: &Detection, margin: f32, align: bool) -> Self {
        let side = d.width().max(d.height()) * (1.0 + 2.0 * margin);
        let angle = match (align, d.keypoints.first(), d.keypoints.get(1)) {
            (true, Some(r), Some(l)) => (l[1] - r[1]).atan2(l[0] - r[0]),
            _ => 0.0,
        };
        Self { center: d.center(), side, angle }
    }

    /// The largest centred square of a `w × h` frame, unrotated (the `full_frame` fallback).
    pub fn full_frame(w: usize, h: usize) -> Self {
        Self { center: [w as f32 / 2.0, h as f32 / 2.0], side: w.min(h) as f32, angle: 0.0 }
    }
}

/// Samples `window` of an RGB frame (`w × h`) into an `out_w × out_h` RGB crop, bilinearly. With a
/// non-square output the window's height is `side × out_h / out_w`.
pub fn crop(rgb: &[u8], w: usize, h: usize, window: &CropWindow, out_w: usize, out_h: usize) -> Vec<u8> {
    let mut out = vec![0u8; out_w * out_h * 3];
    if rgb.len() != w * h * 3 || out_w == 0 || out_h == 0 {
        return out;
    }
    let (cos, sin) = (window.angle.cos(), window.angle.sin());
    let scale = window.side / out_w as f32;
    let at = |x: isize, y: isize| -> Option<usize> { (x >= 0 && y >= 0 && x < w as isize && y < h as isize).then(|| (y as usize * w + x as usize) * 3) };
    for (v, row) in out.chunks_exact_mut(out_w * 3).enumerate() {
        let dv = (v as f32 + 0.5 - out_h as f32 / 2.0) * scale;
        for (u, px) in row.chunks_exact_mut(3).enumerate() {
            // Offset from the window centre in frame pixels (unrotated), then rotated into the frame.
            let du = (u as f32 + 0.5 - out_w as f32 / 2.0) * scale;
            let sx = window.center[0] + du * cos - dv * sin - 0.5;
            let sy = window.center[1] + du * sin + dv * cos - 0.5;
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as isize, y0 as isize);
            // The four neighbours and their bilinear weights; outside the frame counts as black.
            let taps = [(at(x0, y0), (1.0 - fx) * (1.0 - fy)), (at(x0 + 1, y0), fx * (1.0 - fy)), (at(x0, y0 + 1), (1.0 - fx) * fy), (at(x0 + 1, y0 + 1), fx * fy)];
            let mut acc = [0f32; 3];
            for (idx, wt) in taps {
                if let Some(i) = idx {
                    for c in 0..3 {
                        acc[c] += f32::from(rgb[i + c]) * wt;
                    }
                }
            }
            for c in 0..3 {
                px[c] = (acc[c] + 0.5).clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(eyes: [[f32; 2]; 2]) -> Detection {
        Detection { bbox: [10.0, 20.0, 50.0, 60.0], keypoints: vec![eyes[0], eyes[1], [30.0, 40.0]], score: 0.9 }
    }

    #[test]
    fn window_follows_box_margin_and_eye_line() {
        let w = CropWindow::for_face(&face([[20.0, 30.0], [40.0, 30.0]]), 0.25, true);
        assert_eq!(w.center, [30.0, 40.0]);
        assert_eq!(w.side, 60.0);
        assert_eq!(w.angle, 0.0);
        let tilted = CropWindow::for_face(&face([[20.0, 30.0], [40.0, 50.0]]), 0.0, true);
        assert!((tilted.angle - std::f32::consts::FRAC_PI_4).abs() < 1e-6);
        assert_eq!(CropWindow::for_face(&face([[20.0, 30.0], [40.0, 50.0]]), 0.0, false).angle, 0.0);
    }

    #[test]
    fn identity_window_copies_pixels_and_rotation_levels_a_tilted_line() {
        // A 4x4 frame cut with a 4-pixel window at its centre gives the frame back.
        let rgb: Vec<u8> = (0..48).map(|i| (i * 5) as u8).collect();
        let out = crop(&rgb, 4, 4, &CropWindow { center: [2.0, 2.0], side: 4.0, angle: 0.0 }, 4, 4);
        assert_eq!(out, rgb);
        // A diagonal white line at 45° becomes a horizontal row once the window turns by 45°.
        let n = 41;
        let mut img = vec![0u8; n * n * 3];
        for i in 0..n {
            img[(i * n + i) * 3..][..3].copy_from_slice(&[255, 255, 255]);
        }
        let win = CropWindow { center: [20.5, 20.5], side: 20.0, angle: std::f32::consts::FRAC_PI_4 };
        let out = crop(&img, n, n, &win, 21, 21);
        let row_mean = |r: usize| (0..21).map(|u| f32::from(out[(r * 21 + u) * 3])).sum::<f32>() / 21.0;
        let brightest = (0..21).max_by(|&a, &b| row_mean(a).total_cmp(&row_mean(b))).unwrap_or(0);
        assert_eq!(brightest, 10, "the line should be the middle row");
        assert!(row_mean(10) > 100.0 && row_mean(3) < 10.0);
    }
}
