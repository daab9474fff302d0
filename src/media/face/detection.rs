//! SSD anchors, box decoding and weighted non-maximum suppression, as MediaPipe's
//! `SsdAnchorsCalculator`, `TensorsToDetectionsCalculator` and `NonMaxSuppressionCalculator`
//! (WEIGHTED, IoU) do for BlazeFace.

use serde::{Deserialize, Serialize};

/// An anchor centre in [0, 1] (BlazeFace uses fixed-size anchors: width = height = 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Anchor {
    pub x: f32,
    pub y: f32,
}

/// `SsdAnchorsCalculatorOptions` (the parts BlazeFace uses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnchorOptions {
    pub input_size: usize,
    pub strides: Vec<usize>,
    pub anchor_offset: f32,
    /// 1.0 adds an interpolated-scale anchor per cell and layer (two anchors per layer).
    pub interpolated_scale_aspect_ratio: f32,
}

impl AnchorOptions {
    pub fn short_range() -> Self {
        Self { input_size: 128, strides: vec![8, 16, 16, 16], anchor_offset: 0.5, interpolated_scale_aspect_ratio: 1.0 }
    }

    /// Anchors in the network's output order: per run of equal strides, rows, columns, then the
    /// anchors of a cell (2 per layer of that stride).
    pub fn generate(&self) -> Vec<Anchor> {
        let mut anchors = Vec::new();
        let mut layer = 0;
        while layer < self.strides.len() {
            let stride = self.strides[layer];
            let mut repeats = 0;
            let mut last = layer;
            while last < self.strides.len() && self.strides[last] == stride {
                repeats += if self.interpolated_scale_aspect_ratio == 1.0 { 2 } else { 1 };
                last += 1;
            }
            let cells = self.input_size / stride;
            for y in 0..cells {
                let cy = (y as f32 + self.anchor_offset) / cells as f32;
                for x in 0..cells {
                    let cx = (x as f32 + self.anchor_offset) / cells as f32;
                    anchors.extend(std::iter::repeat_n(Anchor { x: cx, y: cy }, repeats));
                }
            }
            layer = last;
        }
        anchors
    }
}

/// A detected face: box corners and keypoints (in [0, 1] of the network input, or pixels after
/// [`Detection::scaled`]), and the face probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// `[xmin, ymin, xmax, ymax]`.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// MediaPipe order: right eye, left eye, nose tip, mouth centre, right ear tragion, left ear
    /// tragion ("right" = the subject's right, on the image's left).
    pub keypoints: Vec<[f32; 2]>,
    pub score: f32,
}

impl Detection {
    pub fn width(&self) -> f32 {
        self.bbox[2] - self.bbox[0]
    }
    pub fn height(&self) -> f32 {
        self.bbox[3] - self.bbox[1]
    }
    pub fn area(&self) -> f32 {
        self.width().max(0.0) * self.height().max(0.0)
    }
    pub fn center(&self) -> [f32; 2] {
        [(self.bbox[0] + self.bbox[2]) / 2.0, (self.bbox[1] + self.bbox[3]) / 2.0]
    }

    /// Intersection over union of the two boxes (0 when they do not overlap).
    pub fn iou(&self, other: &Detection) -> f32 {
        let x0 = self.bbox[0].max(other.bbox[0]);
        let y0 = self.bbox[1].max(other.bbox[1]);
        let x1 = self.bbox[2].min(other.bbox[2]);
        let y1 = self.bbox[3].min(other.bbox[3]);
        if x1 <= x0 || y1 <= y0 {
            return 0.0;
        }
        let inter = (x1 - x0) * (y1 - y0);
        let union = self.area() + other.area() - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }

    /// Undo the letterbox: `(p - pad) / (1 - 2 pad)` per axis.
    pub fn remove_letterbox(mut self, pad_x: f32, pad_y: f32) -> Self {
        let (sx, sy) = (1.0 - 2.0 * pad_x, 1.0 - 2.0 * pad_y);
        for i in 0..2 {
            self.bbox[2 * i] = (self.bbox[2 * i] - pad_x) / sx;
            self.bbox[2 * i + 1] = (self.bbox[2 * i + 1] - pad_y) / sy;
        }
        for k in &mut self.keypoints {
            k[0] = (k[0] - pad_x) / sx;
            k[1] = (k[1] - pad_y) / sy;
        }
        self
    }

    /// From [0, 1] to pixels of a `w × h` frame.
    pub fn scaled(mut self, w: f32, h: f32) -> Self {
        for i in 0..2 {
            self.bbox[2 * i] *= w;
            self.bbox[2 * i + 1] *= h;
        }
        for k in &mut self.keypoints {
            k[0] *= w;
            k[1] *= h;
        }
        self
    }
}

/// Decodes one image's raw outputs: `regressors[a]` = (dx, dy, w, h, kx0, ky0, ...) in input pixels
/// relative to anchor `a`; `logits[a]` the face logit. Keeps detections with sigmoid(clipped logit)
/// above `min_score` and a positive size, in anchor order.
pub fn decode_boxes(regressors: &[Vec<f32>], logits: &[f32], anchors: &[Anchor], input_size: f32, limit: f32, min_score: f32) -> Vec<Detection> {
    let mut out = Vec::new();
    for ((reg, &logit), a) in regressors.iter().zip(logits).zip(anchors) {
        let score = 1.0 / (1.0 + (-logit.clamp(-limit, limit)).exp());
        if score <= min_score {
            continue;
        }
        let cx = reg[0] / input_size + a.x;
        let cy = reg[1] / input_size + a.y;
        let (hw, hh) = (reg[2] / input_size / 2.0, reg[3] / input_size / 2.0);
        let bbox = [cx - hw, cy - hh, cx + hw, cy + hh];
        if bbox[2] <= bbox[0] || bbox[3] <= bbox[1] {
            continue;
        }
        let keypoints = reg[4..].chunks_exact(2).map(|p| [p[0] / input_size + a.x, p[1] / input_size + a.y]).collect();
        out.push(Detection { bbox, keypoints, score });
    }
    out
}

/// Weighted non-maximum suppression: take the best remaining detection, average it with every
/// remaining detection overlapping it by IoU > `threshold` (weights = scores; box and keypoints), keep
/// the best one's score, repeat. Stable order for equal scores (the earlier anchor first).
pub fn weighted_nms(mut detections: Vec<Detection>, threshold: f32, min_score: f32) -> Vec<Detection> {
    let mut order: Vec<usize> = (0..detections.len()).collect();
    order.sort_by(|&a, &b| detections[b].score.total_cmp(&detections[a].score));
    let mut remaining = order;
    let mut out = Vec::new();
    while let Some(&first) = remaining.first() {
        let best = detections[first].clone();
        if best.score < min_score {
            break;
        }
        let (candidates, rest): (Vec<usize>, Vec<usize>) = remaining.iter().partition(|&&i| detections[i].iou(&best) > threshold);
        let mut merged = best.clone();
        if !candidates.is_empty() {
            let total: f32 = candidates.iter().map(|&i| detections[i].score).sum();
            merged.bbox = [0.0; 4];
            merged.keypoints.iter_mut().for_each(|k| *k = [0.0, 0.0]);
            for &i in &candidates {
                let d = &detections[i];
                for (m, v) in merged.bbox.iter_mut().zip(d.bbox) {
                    *m += v * d.score;
                }
                for (m, v) in merged.keypoints.iter_mut().zip(&d.keypoints) {
                    m[0] += v[0] * d.score;
                    m[1] += v[1] * d.score;
                }
            }
            merged.bbox.iter_mut().for_each(|v| *v /= total);
            merged.keypoints.iter_mut().for_each(|k| {
                k[0] /= total;
                k[1] /= total;
            });
        }
        out.push(merged);
        if rest.len() == remaining.len() {
            break;
        }
        remaining = rest;
    }
    detections.clear();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(b: [f32; 4], score: f32) -> Detection {
        Detection { bbox: b, keypoints: vec![[b[0], b[1]]], score }
    }

    #[test]
    fn short_range_has_896_anchors_in_output_order() {
        let a = AnchorOptions::short_range().generate();
        assert_eq!(a.len(), 896);
        // 16x16 cells x 2, then 8x8 cells x 6.
        assert_eq!(a[0], Anchor { x: 0.5 / 16.0, y: 0.5 / 16.0 });
        assert_eq!(a[1], a[0]);
        assert_eq!(a[2], Anchor { x: 1.5 / 16.0, y: 0.5 / 16.0 });
        assert_eq!(a[512], Anchor { x: 0.5 / 8.0, y: 0.5 / 8.0 });
        assert_eq!(a[517], a[512]);
        assert_eq!(a[518], Anchor { x: 1.5 / 8.0, y: 0.5 / 8.0 });
    }

    #[test]
    fn weighted_nms_merges_overlaps_and_keeps_the_best_score() {
        let d = vec![det([0.0, 0.0, 1.0, 1.0], 0.9), det([0.1, 0.0, 1.1, 1.0], 0.6), det([5.0, 5.0, 6.0, 6.0], 0.7)];
        let out = weighted_nms(d, 0.3, 0.5);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].score, 0.9);
        // Box x-min: (0 * 0.9 + 0.1 * 0.6) / 1.5.
        assert!((out[0].bbox[0] - 0.04).abs() < 1e-6, "{:?}", out[0].bbox);
        assert_eq!(out[1].bbox, [5.0, 5.0, 6.0, 6.0]);
        assert!(weighted_nms(Vec::new(), 0.3, 0.5).is_empty());
    }

    #[test]
    fn decode_drops_low_scores_and_empty_boxes() {
        let anchors = [Anchor { x: 0.5, y: 0.5 }, Anchor { x: 0.5, y: 0.5 }];
        let mut good = vec![0.0; 6];
        good[2] = 64.0;
        good[3] = 32.0;
        let mut empty = good.clone();
        empty[2] = -1.0;
        let out = decode_boxes(&[good.clone(), empty], &[3.0, 3.0], &anchors, 128.0, 80.0, 0.5);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].bbox, [0.25, 0.375, 0.75, 0.625]);
        assert_eq!(out[0].keypoints, vec![[0.5, 0.5]]);
        assert!(decode_boxes(&[good], &[-3.0], &anchors, 128.0, 80.0, 0.5).is_empty());
    }
}
