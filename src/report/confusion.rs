//! The confusion matrix as a PNG heat map: rows the true label, columns the prediction, each cell shaded by
//! its share of the row (recall) and labelled with its count.

use plotters::backend::RGBPixel;
use plotters::prelude::*;

use super::ReportError;
use super::plot::{encode_png, ensure_font};

const FAMILY: &str = "sans-serif";

/// PNG bytes of the matrix (`labels` order for rows and columns).
pub fn confusion_png(labels: &[String], matrix: &[Vec<usize>], title: &str) -> Result<Vec<u8>, ReportError> {
    ensure_font()?;
    let k = labels.len().max(1);
    let cell = 72u32;
    let (left, top, bottom) = (140u32, 60u32, 110u32);
    let (w, h) = (left + cell * k as u32 + 30, top + cell * k as u32 + bottom);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    let draw_err = |e: String| ReportError::Plot { path: "confusion.png".into(), message: e };
    {
        let root = BitMapBackend::<RGBPixel>::with_buffer_and_format(&mut buf, (w, h)).map_err(|e| draw_err(e.to_string()))?.into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_err(e.to_string()))?;
        let text = |size: u32| TextStyle::from((FAMILY, size).into_font()).color(&BLACK).pos(plotters::style::text_anchor::Pos::new(plotters::style::text_anchor::HPos::Center, plotters::style::text_anchor::VPos::Center));
        root.draw(&Text::new(title.to_string(), ((w / 2) as i32, 24), text(20))).map_err(|e| draw_err(e.to_string()))?;
        for (i, row) in matrix.iter().enumerate().take(k) {
            let total: usize = row.iter().sum();
            for (j, &n) in row.iter().enumerate().take(k) {
                let share = if total > 0 { n as f64 / total as f64 } else { 0.0 };
                // White to a deep blue by the row share.
                let c = |lo: f64, hi: f64| (lo + (hi - lo) * share).round() as u8;
                let color = RGBColor(c(255.0, 31.0), c(255.0, 80.0), c(255.0, 160.0));
                let (x0, y0) = ((left + cell * j as u32) as i32, (top + cell * i as u32) as i32);
                root.draw(&Rectangle::new([(x0, y0), (x0 + cell as i32, y0 + cell as i32)], color.filled())).map_err(|e| draw_err(e.to_string()))?;
                root.draw(&Rectangle::new([(x0, y0), (x0 + cell as i32, y0 + cell as i32)], RGBColor(200, 200, 200).stroke_width(1))).map_err(|e| draw_err(e.to_string()))?;
                let ink = if share > 0.5 { WHITE } else { BLACK };
                let style = text(16).color(&ink);
                root.draw(&Text::new(n.to_string(), (x0 + cell as i32 / 2, y0 + cell as i32 / 2), style)).map_err(|e| draw_err(e.to_string()))?;
            }
        }
        for (i, l) in labels.iter().enumerate().take(k) {
            let y = (top + cell * i as u32 + cell / 2) as i32;
            root.draw(&Text::new(l.clone(), ((left / 2) as i32, y), text(14))).map_err(|e| draw_err(e.to_string()))?;
            let x = (left + cell * i as u32 + cell / 2) as i32;
            root.draw(&Text::new(l.clone(), (x, (top + cell * k as u32 + 18) as i32), text(13))).map_err(|e| draw_err(e.to_string()))?;
        }
        root.draw(&Text::new("predicted".to_string(), ((left + cell * k as u32 / 2) as i32, (h - 40) as i32), text(16))).map_err(|e| draw_err(e.to_string()))?;
        root.draw(&Text::new("true".to_string(), (30, (top - 20) as i32), text(16))).map_err(|e| draw_err(e.to_string()))?;
        root.present().map_err(|e| draw_err(e.to_string()))?;
    }
    encode_png(&buf, w, h).map_err(|e| draw_err(e.to_string()))
}
