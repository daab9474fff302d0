//! The emotion peak frame (Emotion-LLaMA's global view): where expression intensity is highest.
//!
//! * `expression`: the scorer's probability mass off `neutral`.
//! * `motion`: how far the face's keypoints are from their median configuration over the clip, in the
//!   face's own frame (centred on the box, scaled by its size, unrotated by the eye line), so head
//!   translation and zoom do not count, only a change of the face's shape.

use serde::{Deserialize, Serialize};

use super::detection::Detection;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PeakBy {
    #[default]
    Expression,
    Motion,
}

/// Index of the highest value among frames with a face (`None` entries); the earliest on ties; `None`
/// when no frame has a value.
pub fn argmax(values: &[Option<f32>]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, v) in values.iter().enumerate() {
        if let Some(v) = *v
            && best.is_none_or(|(_, b)| v > b)
        {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

/// Keypoints in the face's frame: centred on the box, divided by its larger side, rotated so the eye
/// line is level.
fn normalised_keypoints(d: &Detection) -> Vec<[f32; 2]> {
    let c = d.center();
    let side = d.width().max(d.height()).max(1e-6);
    let angle = match (d.keypoints.first(), d.keypoints.get(1)) {
        (Some(r), Some(l)) => (l[1] - r[1]).atan2(l[0] - r[0]),
        _ => 0.0,
    };
    let (cos, sin) = (angle.cos(), angle.sin());
    d.keypoints
        .iter()
        .map(|k| {
            let (x, y) = ((k[0] - c[0]) / side, (k[1] - c[1]) / side);
            [x * cos + y * sin, -x * sin + y * cos]
        })
        .collect()
}

/// Facial-motion energy per frame: squared distance of the normalised keypoints from their per-point
/// median over the frames with a face.
pub fn motion_energy(faces: &[Option<&Detection>]) -> Vec<Option<f32>> {
    let norm: Vec<Option<Vec<[f32; 2]>>> = faces.iter().map(|f| f.map(normalised_keypoints)).collect();
    let present: Vec<&Vec<[f32; 2]>> = norm.iter().flatten().collect();
    let Some(first) = present.first() else { return vec![None; faces.len()] };
    let median = |k: usize, axis: usize| -> f32 {
        let mut v: Vec<f32> = present.iter().filter_map(|p| p.get(k).map(|q| q[axis])).collect();
        v.sort_by(f32::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let reference: Vec<[f32; 2]> = (0..first.len()).map(|k| [median(k, 0), median(k, 1)]).collect();
    norm.iter()
        .map(|p| p.as_ref().map(|p| p.iter().zip(&reference).map(|(a, b)| (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sum()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(x: f32, mouth_y: f32) -> Detection {
        Detection { bbox: [x, 0.0, x + 10.0, 10.0], keypoints: vec![[x + 3.0, 3.0], [x + 7.0, 3.0], [x + 5.0, 5.0], [x + 5.0, mouth_y]], score: 0.9 }
    }

    #[test]
    fn argmax_skips_missing_and_prefers_earliest() {
        assert_eq!(argmax(&[None, Some(0.2), Some(0.7), Some(0.7)]), Some(2));
        assert_eq!(argmax(&[None, None]), None);
    }

    #[test]
    fn motion_ignores_translation_and_finds_the_open_mouth() {
        // The face moves right every frame; only frame 2 opens its mouth.
        let faces = [face(0.0, 7.0), face(5.0, 7.0), face(10.0, 9.5), face(15.0, 7.0)];
        let refs: Vec<Option<&Detection>> = vec![Some(&faces[0]), Some(&faces[1]), None, Some(&faces[3])];
        let e = motion_energy(&refs);
        assert_eq!(e[2], None);
        assert!(e.iter().flatten().all(|&v| v < 1e-9), "{e:?}");
        let refs: Vec<Option<&Detection>> = faces.iter().map(Some).collect();
        assert_eq!(argmax(&motion_energy(&refs)), Some(2));
    }
}
