//! Cartoon face rendering: the valence cue (mouth curve, brows).

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::voice::syllable_envelope;
use super::{SynthConfig, Valence};

/// Parameters of one synthetic face clip. Lengths are relative: horizontal ones to the face
/// half-width, vertical ones to the face half-height, positions to the frame size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaceParams {
    pub valence: Valence,
    /// Face centre as a fraction of (width, height).
    pub center: (f32, f32),
    /// Face size multiplier around 1.0.
    pub scale: f32,
    pub skin: [u8; 3],
    pub bg_top: [u8; 3],
    pub bg_bottom: [u8; 3],
    /// Colour of eyes and brows.
    pub feature: [u8; 3],
    pub lips: [u8; 3],
    /// Mouth curvature (corner-to-centre height): > 0 smile, < 0 frown.
    pub mouth_curve: f32,
    pub mouth_width: f32,
    /// Maximum mouth opening while speaking.
    pub mouth_open: f32,
    /// Extra brow height (> 0 raised).
    pub brow_raise: f32,
    /// Brow slant: inner end lower than the outer end by this much (> 0 frown-like).
    pub brow_slant: f32,
    /// Eye height multiplier.
    pub eye_open: f32,
    /// Syllable train shared with the voice (drives the mouth opening).
    pub syllable_rate: f32,
    pub syllable_phase: f32,
    pub syllable_duty: f32,
    /// Head motion amplitude as a fraction of the frame size, frequency in Hz and phases.
    pub motion_amp: f32,
    pub motion_hz: f32,
    pub motion_phase: (f32, f32),
    /// Uniform pixel noise amplitude in 8-bit levels.
    pub noise: f32,
    pub noise_seed: u64,
}

/// Class-specific expression means within a valence group; see [`FaceParams::sample`].
#[derive(Debug, Clone, Copy)]
pub struct Expression {
    pub valence: Valence,
    pub mouth_curve: f32,
    pub brow_raise: f32,
    pub brow_slant: f32,
    pub eye_open: f32,
}

/// Expression means per class index (order of [`super::CLASSES`]). Classes of one valence group
/// differ only slightly, by less than the per-clip jitter.
pub fn expression(class: usize) -> Expression {
    let (valence, _) = super::class_affect(class);
    let (mouth_curve, brow_raise, brow_slant, eye_open) = match class {
        0 => (0.0, 0.0, 0.0, 1.0),       // neutral
        1 => (-0.24, -0.02, 0.22, 1.0),  // angry
        2 => (0.24, 0.0, 0.0, 0.95),     // happy
        3 => (-0.24, 0.02, 0.18, 1.0),   // sad
        4 => (-0.01, 0.04, -0.03, 1.05), // worried
        _ => (0.24, 0.04, -0.02, 1.1),   // surprise
    };
    Expression { valence, mouth_curve, brow_raise, brow_slant, eye_open }
}

const SKINS: [[f32; 3]; 5] =
    [[236.0, 200.0, 170.0], [214.0, 170.0, 130.0], [180.0, 130.0, 95.0], [140.0, 95.0, 65.0], [245.0, 215.0, 190.0]];

fn jitter_color<R: Rng + ?Sized>(rng: &mut R, base: [f32; 3], amount: f32) -> [u8; 3] {
    base.map(|c| (c + rng.random_range(-amount..amount)).round().clamp(0.0, 255.0) as u8)
}

impl FaceParams {
    /// Draws jittered face parameters for class `class` (index into [`super::CLASSES`]).
    /// The syllable train is supplied so that the mouth moves with the voice.
    pub fn sample<R: Rng + ?Sized>(class: usize, syllable: (f32, f32, f32), rng: &mut R) -> Self {
        let e = expression(class);
        // Nuisance variation (skin, background, position) is kept moderate so the expression dominates
        // a frame's appearance: the quick start trains its visual encoder from scratch in minutes, and a
        // cue buried under background variety is not picked up by an LLM trained at the same time.
        let skin_base = SKINS[rng.random_range(0..2)];
        let skin = jitter_color(rng, skin_base, 10.0);
        let bg_top = jitter_color(rng, [70.0, 90.0, 120.0], 12.0);
        let bg_bottom = bg_top;
        let (rate, phase, duty) = syllable;
        FaceParams {
            valence: e.valence,
            center: (0.5 + rng.random_range(-0.05..0.05), 0.5 + rng.random_range(-0.05..0.05)),
            scale: rng.random_range(0.95..1.05),
            skin,
            bg_top,
            bg_bottom,
            feature: jitter_color(rng, [40.0, 30.0, 25.0], 15.0),
            lips: jitter_color(rng, [120.0, 35.0, 40.0], 20.0),
            mouth_curve: e.mouth_curve + rng.random_range(-0.04..0.04),
            mouth_width: rng.random_range(0.42..0.52),
            mouth_open: rng.random_range(0.06..0.12),
            brow_raise: e.brow_raise + rng.random_range(-0.05..0.05),
            brow_slant: e.brow_slant + rng.random_range(-0.05..0.05),
            eye_open: e.eye_open + rng.random_range(-0.1..0.1),
            syllable_rate: rate,
            syllable_phase: phase,
            syllable_duty: duty,
            motion_amp: rng.random_range(0.005..0.025),
            motion_hz: rng.random_range(0.2..0.8),
            motion_phase: (rng.random_range(0.0..std::f32::consts::TAU), rng.random_range(0.0..std::f32::consts::TAU)),
            noise: rng.random_range(1.0..3.0),
            noise_seed: rng.random(),
        }
    }
}

/// Number of video frames of a clip.
pub fn frame_count(cfg: &SynthConfig) -> usize {
    (cfg.duration_s * cfg.fps as f32).round().max(1.0) as usize
}

/// Pixel geometry of the face in one frame.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub cx: f32,
    pub cy: f32,
    pub rx: f32,
    pub ry: f32,
}

pub(crate) fn geometry(p: &FaceParams, cfg: &SynthConfig, t: f32) -> Geometry {
    let (w, h) = (cfg.width as f32, cfg.height as f32);
    let s = w.min(h);
    let arg = std::f32::consts::TAU * p.motion_hz * t;
    let dx = p.motion_amp * s * (arg + p.motion_phase.0).sin();
    let dy = p.motion_amp * s * (arg * 0.7 + p.motion_phase.1).sin();
    Geometry { cx: p.center.0 * w + dx, cy: p.center.1 * h + dy, rx: 0.30 * s * p.scale, ry: 0.38 * s * p.scale }
}

/// Mouth centre-line height at relative horizontal position `u` in [-1, 1] (image y grows down).
pub(crate) fn mouth_y(g: &Geometry, p: &FaceParams, u: f32) -> f32 {
    let my = g.cy + 0.48 * g.ry;
    let c = p.mouth_curve * g.ry;
    my - 0.5 * c + c * (1.0 - u * u)
}

#[inline]
fn blend(px: &mut [f32; 3], c: [u8; 3], alpha: f32) {
    if alpha <= 0.0 {
        return;
    }
    let a = alpha.min(1.0);
    for k in 0..3 {
        px[k] += (f32::from(c[k]) - px[k]) * a;
    }
}

/// Distance from point (x, y) to segment (a, b).
#[inline]
fn seg_dist(x: f32, y: f32, a: (f32, f32), b: (f32, f32)) -> f32 {
    let (vx, vy) = (b.0 - a.0, b.1 - a.1);
    let len2 = vx * vx + vy * vy;
    let t = if len2 > 0.0 { (((x - a.0) * vx + (y - a.1) * vy) / len2).clamp(0.0, 1.0) } else { 0.0 };
    let (px, py) = (a.0 + t * vx - x, a.1 + t * vy - y);
    (px * px + py * py).sqrt()
}

/// Renders one RGB24 frame at time `t` seconds.
pub fn render_frame(p: &FaceParams, cfg: &SynthConfig, t: f32, frame_index: u64) -> Vec<u8> {
    let (w, h) = (cfg.width as usize, cfg.height as usize);
    let g = geometry(p, cfg, t);
    let frame_seed = super::derive_seed(p.noise_seed, 0x006E_6F69_7365, frame_index);
    let open = p.mouth_open * g.ry * syllable_envelope(t, p.syllable_rate, p.syllable_phase, p.syllable_duty);
    // Eyes.
    let eye_y = g.cy - 0.12 * g.ry;
    let eye_dx = 0.36 * g.rx;
    let (erx, ery) = ((0.13 * g.rx).max(0.8), (0.11 * g.ry * p.eye_open).max(0.6));
    // Brows: outer and inner end per side.
    let brow_base = g.cy - (0.38 + p.brow_raise) * g.ry;
    let brow_th = (0.075 * g.ry).max(1.1);
    let brows: [((f32, f32), (f32, f32)); 2] = [-1.0f32, 1.0].map(|side| {
        let outer = (g.cx + side * 0.58 * g.rx, brow_base - 0.5 * p.brow_slant * g.ry);
        let inner = (g.cx + side * 0.14 * g.rx, brow_base + 0.5 * p.brow_slant * g.ry);
        (outer, inner)
    });
    let brow_top = brows.iter().map(|(a, b)| a.1.min(b.1)).fold(f32::MAX, f32::min) - brow_th - 1.0;
    let brow_bot = brows.iter().map(|(a, b)| a.1.max(b.1)).fold(f32::MIN, f32::max) + brow_th + 1.0;
    // Mouth.
    let mw = p.mouth_width * g.rx;
    let lip_th = (0.08 * g.ry).max(1.1);
    let mouth_top = mouth_y(&g, p, 0.0).min(mouth_y(&g, p, 1.0)) - 2.0 * lip_th;
    let mouth_bot = mouth_y(&g, p, 0.0).max(mouth_y(&g, p, 1.0)) + open + 2.0 * lip_th;
    let inside = [p.lips[0] / 3, p.lips[1] / 3, p.lips[2] / 3];

    let mut out = Vec::with_capacity(w * h * 3);
    for yi in 0..h {
        let y = yi as f32 + 0.5;
        let v = if h > 1 { yi as f32 / (h - 1) as f32 } else { 0.0 };
        let bg = [0, 1, 2].map(|k| f32::from(p.bg_top[k]) * (1.0 - v) + f32::from(p.bg_bottom[k]) * v);
        for xi in 0..w {
            let x = xi as f32 + 0.5;
            let mut px = bg;
            // Face ellipse.
            let (dx, dy) = ((x - g.cx) / g.rx, (y - g.cy) / g.ry);
            let q = (dx * dx + dy * dy).sqrt();
            let face_alpha = (0.5 - (q - 1.0) * g.rx.min(g.ry)).clamp(0.0, 1.0);
            blend(&mut px, p.skin, face_alpha);
            if face_alpha > 0.0 {
                // Eyes.
                let near_eyes = (y - eye_y).abs() <= ery + 1.0;
                for side in [-1.0f32, 1.0].into_iter().filter(|_| near_eyes) {
                    let (ex, ey) = ((x - (g.cx + side * eye_dx)) / erx, (y - eye_y) / ery);
                    let d = ((ex * ex + ey * ey).sqrt() - 1.0) * erx.min(ery);
                    blend(&mut px, p.feature, (0.5 - d).clamp(0.0, 1.0));
                }
                // Brows.
                for (a, b) in brows.into_iter().filter(|_| y >= brow_top && y <= brow_bot) {
                    let d = seg_dist(x, y, a, b);
                    blend(&mut px, p.feature, (0.5 * brow_th + 0.5 - d).clamp(0.0, 1.0));
                }
                // Mouth: a curved band between the upper lip line and the lower lip line.
                if y >= mouth_top && y <= mouth_bot {
                    let u = (x - g.cx) / mw;
                    let ax = (1.0 - u.abs()) * mw + 0.5; // horizontal coverage at the corners
                    if ax > 0.0 {
                        let uc = u.clamp(-1.0, 1.0);
                        let yc = mouth_y(&g, p, uc);
                        let slope = 2.0 * p.mouth_curve * g.ry * uc / mw;
                        let half = 0.5 * lip_th * (1.0 + slope * slope).sqrt();
                        let o = open * (1.0 - uc * uc);
                        let top = yc - half;
                        let bot = yc + o + half;
                        let cov = (y - top + 0.5).min(bot - y + 0.5).clamp(0.0, 1.0) * ax.min(1.0);
                        blend(&mut px, p.lips, cov);
                        if o > 0.5 {
                            let cov_in =
                                (y - (yc + half) + 0.5).min(yc + o - half - y + 0.5).clamp(0.0, 1.0) * ax.min(1.0);
                            blend(&mut px, inside, cov_in);
                        }
                    }
                }
            }
            // Pixel noise: three uniform values in [-1, 1) from one hash of (frame, pixel).
            let bits = super::derive_seed(frame_seed, 0, (yi * w + xi) as u64);
            for (k, c) in px.into_iter().enumerate() {
                let u = ((bits >> (k * 21)) & 0x1F_FFFF) as f32 / 1_048_576.0 - 1.0;
                out.push((c + u * p.noise).round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    out
}

/// Renders all frames of a clip (`round(duration_s * fps)` RGB24 frames of `width x height`).
pub fn render_face_frames(params: &FaceParams, cfg: &SynthConfig) -> Vec<Vec<u8>> {
    let fps = cfg.fps.max(1) as f32;
    (0..frame_count(cfg)).map(|i| render_frame(params, cfg, i as f32 / fps, i as u64)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synth::class_affect;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn luma(f: &[u8], w: usize, x: usize, y: usize) -> f32 {
        let i = (y * w + x) * 3;
        0.299 * f32::from(f[i]) + 0.587 * f32::from(f[i + 1]) + 0.114 * f32::from(f[i + 2])
    }

    /// Curvature estimate from pixels: darkest row near the mouth centre minus darkest row near the
    /// corners (> 0 smile, < 0 frown), using the known face geometry of frame 0.
    fn measured_curve(p: &FaceParams, cfg: &SynthConfig, frame: &[u8]) -> f32 {
        let w = cfg.width as usize;
        let g = geometry(p, cfg, 0.0);
        let mw = p.mouth_width * g.rx;
        let my = g.cy + 0.48 * g.ry;
        let y0 = (my - 0.35 * g.ry).floor().max(0.0) as usize;
        let y1 = ((my + 0.35 * g.ry).ceil() as usize).min(cfg.height as usize - 1);
        let dark_row = |xf: f32| -> f32 {
            let x = (xf.round().max(0.0) as usize).min(w - 1);
            // Luma-weighted centroid of darkness relative to the skin.
            let skin = 0.299 * f32::from(p.skin[0]) + 0.587 * f32::from(p.skin[1]) + 0.114 * f32::from(p.skin[2]);
            let (mut s, mut sw) = (0.0, 0.0);
            for y in y0..=y1 {
                let d = (skin - luma(frame, w, x, y) - 20.0).max(0.0);
                s += d * y as f32;
                sw += d;
            }
            if sw > 0.0 { s / sw } else { my }
        };
        let centre = (dark_row(g.cx - 0.5) + dark_row(g.cx + 0.5)) / 2.0;
        let corners = (dark_row(g.cx - 0.85 * mw) + dark_row(g.cx + 0.85 * mw)) / 2.0;
        centre - corners
    }

    #[test]
    fn frames_have_expected_shape_and_are_deterministic() {
        let cfg = SynthConfig::default();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let p = FaceParams::sample(2, (2.5, 0.1, 0.7), &mut rng);
        let frames = render_face_frames(&p, &cfg);
        assert_eq!(frames.len(), 16);
        assert!(frames.iter().all(|f| f.len() == 64 * 64 * 3));
        assert_eq!(frames, render_face_frames(&p, &cfg));
        assert_ne!(frames[0], frames[5], "frames should animate");
    }

    #[test]
    fn mouth_curvature_separates_valence_groups() {
        let cfg = SynthConfig::default();
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for class in 0..6 {
            let (v, _) = class_affect(class);
            for _ in 0..30 {
                // Closed mouth (duty ~0 -> envelope 0 at t = 0 when phase is in the gap).
                let p = FaceParams::sample(class, (2.5, 0.95, 0.5), &mut rng);
                let f = render_frame(&p, &cfg, 0.0, 0);
                let c = measured_curve(&p, &cfg, &f);
                match v {
                    Valence::Up => assert!(c > 2.0, "class {class}: smile curvature {c}"),
                    Valence::Down => assert!(c < -2.0, "class {class}: frown curvature {c}"),
                    Valence::Flat => assert!(c.abs() < 1.5, "class {class}: flat curvature {c}"),
                }
            }
        }
    }

    #[test]
    fn mouth_region_differs_between_valence_groups() {
        // Same jitter, different expression: the mouth box must differ clearly.
        let cfg = SynthConfig::default();
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        let base = FaceParams::sample(0, (2.5, 0.95, 0.5), &mut rng);
        let render = |curve: f32| {
            let p = FaceParams { mouth_curve: curve, noise: 0.0, ..base.clone() };
            render_frame(&p, &cfg, 0.0, 0)
        };
        let (flat, up, down) = (render(0.0), render(0.24), render(-0.24));
        let g = geometry(&base, &cfg, 0.0);
        let (x0, x1) = ((g.cx - 0.6 * g.rx) as usize, (g.cx + 0.6 * g.rx) as usize);
        let (y0, y1) = ((g.cy + 0.2 * g.ry) as usize, (g.cy + 0.8 * g.ry) as usize);
        let diff = |a: &[u8], b: &[u8]| {
            let mut s = 0.0;
            let mut n = 0.0;
            for y in y0..y1 {
                for x in x0..x1 {
                    s += (luma(a, 64, x, y) - luma(b, 64, x, y)).abs();
                    n += 1.0;
                }
            }
            s / n
        };
        let (fu, fd, ud) = (diff(&flat, &up), diff(&flat, &down), diff(&up, &down));
        eprintln!("mean mouth-box luma diff: flat/up {fu:.1} flat/down {fd:.1} up/down {ud:.1}");
        assert!(fu > 8.0 && fd > 8.0 && ud > 12.0);
    }

    #[test]
    fn within_group_classes_overlap() {
        // The brow height ranges of the two classes of a group must overlap.
        for (a, b) in [(0, 4), (2, 5), (1, 3)] {
            let (ea, eb) = (expression(a), expression(b));
            assert_eq!(ea.valence, eb.valence);
            assert!((ea.brow_raise - eb.brow_raise).abs() < 0.1, "brow ranges must overlap");
            assert!((ea.brow_slant - eb.brow_slant).abs() < 0.1, "slant ranges must overlap");
            assert!((ea.mouth_curve - eb.mouth_curve).abs() < 0.08, "curve ranges must overlap");
        }
    }
}
