//! The main face of a clip: the most prominent face (large and central) where it first appears, then
//! followed frame to frame by box overlap, so a second person entering does not steal the crop.

use super::detection::Detection;

/// Minimum IoU with the previous frame's face to count as the same face.
const SAME_FACE_IOU: f32 = 0.1;

/// Prominence of a face in a `w × h` frame: its area, weighted down the further its centre is from the
/// frame centre (half weight at a corner).
pub fn prominence(d: &Detection, w: f32, h: f32) -> f32 {
    let c = d.center();
    let dist = ((c[0] - w / 2.0).powi(2) + (c[1] - h / 2.0).powi(2)).sqrt();
    let half_diag = ((w / 2.0).powi(2) + (h / 2.0).powi(2)).sqrt().max(1.0);
    d.area() * (1.0 - 0.5 * (dist / half_diag).min(1.0))
}

/// For each frame, the index of the main face among its detections (None: no face in that frame).
pub fn main_faces(frames: &[Vec<Detection>], w: f32, h: f32) -> Vec<Option<usize>> {
    let mut prev: Option<&Detection> = None;
    frames
        .iter()
        .map(|dets| {
            let by_overlap = prev.and_then(|p| {
                dets.iter().enumerate().map(|(i, d)| (i, d.iou(p))).filter(|&(_, iou)| iou > SAME_FACE_IOU).max_by(|a, b| a.1.total_cmp(&b.1)).map(|(i, _)| i)
            });
            // Lost (or not yet found): take the most prominent face.
            let pick = by_overlap.or_else(|| dets.iter().enumerate().max_by(|a, b| prominence(a.1, w, h).total_cmp(&prominence(b.1, w, h))).map(|(i, _)| i));
            if let Some(i) = pick {
                prev = dets.get(i);
            }
            pick
        })
        .collect()
}

/// For each frame, the nearest frame (in sampling order, earlier first on ties) that has a face.
pub fn nearest_with_face(has_face: &[bool]) -> Vec<Option<usize>> {
    (0..has_face.len())
        .map(|i| {
            (0..has_face.len()).filter(|&j| has_face[j]).min_by_key(|&j| (i.abs_diff(j), j))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(x: f32, y: f32, side: f32) -> Detection {
        Detection { bbox: [x, y, x + side, y + side], keypoints: vec![], score: 0.9 }
    }

    #[test]
    fn the_main_face_is_followed_when_a_larger_one_appears() {
        let frames = vec![vec![det(40.0, 40.0, 20.0)], vec![det(0.0, 0.0, 30.0), det(42.0, 40.0, 20.0)], vec![], vec![det(70.0, 70.0, 20.0)]];
        assert_eq!(main_faces(&frames, 100.0, 100.0), vec![Some(0), Some(1), None, Some(0)]);
    }

    #[test]
    fn central_beats_slightly_larger_corner_face() {
        let frames = vec![vec![det(0.0, 0.0, 22.0), det(40.0, 40.0, 20.0)]];
        assert_eq!(main_faces(&frames, 100.0, 100.0), vec![Some(1)]);
    }

    #[test]
    fn nearest_prefers_earlier_on_ties() {
        assert_eq!(nearest_with_face(&[false, true, false, true, false]), vec![Some(1), Some(1), Some(1), Some(3), Some(3)]);
        assert_eq!(nearest_with_face(&[false, false]), vec![None, None]);
    }
}
