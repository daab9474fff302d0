//! The self-contained HTML page of a run: inline CSS, the charts linked by relative path, the stages, the
//! final metrics, the best checkpoint and the confusion matrix. Every piece of text from the run directory
//! is escaped.

use std::fmt::Write as _;

use super::log::{RunLog, StageSpan};
use super::metrics::{BestMetrics, EvalMetrics, RunMetrics, StageMetrics};

/// What the page shows.
pub struct Page<'a> {
    pub run_name: &'a str,
    /// The recipe path from `metrics.json`, or the recipe's `name`.
    pub recipe: Option<&'a str>,
    pub log: &'a RunLog,
    /// `None` while the run has not written `metrics.json`.
    pub metrics: Option<&'a RunMetrics>,
    pub best: Option<BestMetrics>,
    /// (caption, path relative to the page) of each chart written.
    pub images: Vec<(&'static str, String)>,
    pub generated: String,
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:'DejaVu Sans',Helvetica,Arial,sans-serif;margin:2em auto;max-width:1000px;color:#222;padding:0 1em}\
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}\
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}\
th{background:#f4f4f4}td.l,th.l{text-align:left}.meta{color:#666}img{max-width:100%;border:1px solid #eee}\
figure{margin:1em 0}.cm td{min-width:3em;text-align:center}";

/// Renders the page.
pub fn render(page: &Page) -> String {
    let mut h = String::new();
    let title = format!("Run report: {}", page.run_name);
    let _ = write!(h, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n", escape(&title));
    let _ = write!(h, "<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n", escape(&title));
    header(&mut h, page);
    images(&mut h, page);
    stages(&mut h, page);
    final_metrics(&mut h, page);
    best(&mut h, page);
    if let Some(eval) = page.metrics.and_then(|m| m.eval.as_ref()) {
        confusion_matrix(&mut h, eval);
        per_class(&mut h, eval);
    }
    h.push_str("</body>\n</html>\n");
    h
}

fn header(h: &mut String, page: &Page) {
    h.push_str("<p class=\"meta\">");
    if let Some(r) = page.recipe {
        let _ = write!(h, "Recipe <code>{}</code>. ", escape(r));
    }
    let last = page.log.train.last().map_or(0, |p| p.global_step);
    let _ = write!(h, "{last} steps logged. Report written {}.", escape(&page.generated));
    if page.metrics.is_none() {
        h.push_str(" No <code>metrics.json</code> yet: the run is still going or was interrupted.");
    }
    if page.log.skipped_lines > 0 {
        let _ = write!(h, " {} unreadable line(s) of <code>log.jsonl</code> skipped.", page.log.skipped_lines);
    }
    h.push_str("</p>\n");
}

fn images(h: &mut String, page: &Page) {
    h.push_str("<h2>Curves</h2>\n");
    if page.images.is_empty() {
        h.push_str("<p>No training steps logged yet.</p>\n");
    }
    for (caption, path) in &page.images {
        let (c, p) = (escape(caption), escape(path));
        // The chart carries its own title, so no caption.
        let _ = writeln!(h, "<figure><a href=\"{p}\"><img src=\"{p}\" alt=\"{c}\"></a></figure>");
    }
}

/// One row per stage: the log's view merged with `metrics.json`'s by position.
fn stages(h: &mut String, page: &Page) {
    let spans = page.log.stages();
    let reports: &[StageMetrics] = page.metrics.map_or(&[], |m| m.stages.as_slice());
    let n = spans.iter().map(|s| s.stage_index + 1).max().unwrap_or(0).max(reports.len());
    if n == 0 {
        return;
    }
    h.push_str("<h2>Stages</h2>\n<table>\n<tr><th>#</th><th class=\"l\">stage</th><th>steps</th><th>global steps</th>");
    h.push_str("<th>first loss</th><th>final loss</th><th>time (s)</th><th class=\"l\">checkpoint</th></tr>\n");
    for i in 0..n {
        stage_row(h, i, spans.iter().find(|s| s.stage_index == i), reports.get(i));
    }
    h.push_str("</table>\n");
}

fn stage_row(h: &mut String, i: usize, span: Option<&StageSpan>, report: Option<&StageMetrics>) {
    let name = report.map(|r| r.name.as_str()).or(span.map(|s| s.stage.as_str())).unwrap_or("");
    let steps = report.and_then(|r| r.steps).or(span.map(|s| s.last_step));
    let range = span.map_or("—".into(), |s| format!("{}–{}", s.first_global_step, s.last_global_step));
    let first = report.and_then(|r| r.first_loss).or(span.and_then(|s| s.first_loss));
    let last = report.and_then(|r| r.final_loss).or(span.and_then(|s| s.final_loss));
    let early = if report.is_some_and(|r| r.stopped_early) { " (stopped early)" } else { "" };
    let _ = writeln!(
        h,
        "<tr><td>{}</td><td class=\"l\">{}{early}</td><td>{}</td><td>{range}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"l\">{}</td></tr>",
        i + 1,
        escape(name),
        steps.map_or("—".into(), |s| s.to_string()),
        num(first, 4),
        num(last, 4),
        num(report.and_then(|r| r.seconds), 1),
        escape(report.and_then(|r| r.checkpoint.as_deref()).unwrap_or("—")),
    );
}

fn final_metrics(h: &mut String, page: &Page) {
    h.push_str("<h2>Final evaluation</h2>\n");
    let Some(e) = page.metrics.and_then(|m| m.eval.as_ref()) else {
        h.push_str("<p>No final evaluation yet.</p>\n");
        return;
    };
    let split = e.split.as_deref().unwrap_or("?");
    let task = e.task.as_deref().unwrap_or("?");
    let _ = writeln!(h, "<p class=\"meta\">Split <code>{}</code>, task <code>{}</code>.</p>", escape(split), escape(task));
    h.push_str("<table>\n");
    let count = |v: Option<u64>| v.map_or("—".into(), |v| v.to_string());
    for (name, value) in [
        ("weighted F1", num(e.weighted_f1, 4)),
        ("accuracy", num(e.accuracy, 4)),
        ("macro F1", num(e.macro_f1, 4)),
        ("weighted precision", num(e.weighted_precision, 4)),
        ("weighted recall", num(e.weighted_recall, 4)),
        ("n", count(e.n)),
        ("unparsed", count(e.unparsed)),
    ] {
        let _ = writeln!(h, "<tr><th class=\"l\">{name}</th><td>{value}</td></tr>");
    }
    h.push_str("</table>\n");
}

fn best(h: &mut String, page: &Page) {
    let Some(b) = &page.best else { return };
    h.push_str("<h2>Best checkpoint</h2>\n<p>");
    let _ = write!(h, "<code>{}</code>", escape(b.checkpoint.as_deref().unwrap_or("(not saved)")));
    let metric = b.metric.as_deref().unwrap_or("metric");
    let _ = write!(h, ": {} {}", escape(metric), num(b.value, 4));
    if let Some(stage) = &b.stage {
        let _ = write!(h, " in stage <code>{}</code>", escape(stage));
    }
    if let Some(s) = b.step {
        let _ = write!(h, " at step {s}");
    }
    if let Some(g) = b.global_step {
        let _ = write!(h, " (global step {g})");
    }
    h.push_str(".</p>\n");
}

/// The matrix with each cell shaded by its share of the largest count.
fn confusion_matrix(h: &mut String, e: &EvalMetrics) {
    if e.confusion_matrix.is_empty() {
        return;
    }
    let label = |i: usize| e.labels.get(i).map_or_else(|| format!("#{i}"), |l| l.clone());
    let max = e.confusion_matrix.iter().flatten().copied().max().unwrap_or(0).max(1) as f64;
    let cols = e.confusion_matrix.iter().map(Vec::len).max().unwrap_or(0);
    h.push_str("<h2>Confusion matrix</h2>\n<p class=\"meta\">Rows: true label; columns: predicted label.</p>\n");
    h.push_str("<table class=\"cm\">\n<tr><th class=\"l\">true \\ predicted</th>");
    for j in 0..cols {
        let _ = write!(h, "<th>{}</th>", escape(&label(j)));
    }
    h.push_str("</tr>\n");
    for (i, row) in e.confusion_matrix.iter().enumerate() {
        let _ = write!(h, "<tr><th class=\"l\">{}</th>", escape(&label(i)));
        for &count in row {
            let share = count as f64 / max;
            let ink = if share > 0.55 { "#fff" } else { "#222" };
            let _ = write!(h, "<td style=\"background:rgba(31,119,180,{share:.3});color:{ink}\">{count}</td>");
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
}

fn per_class(h: &mut String, e: &EvalMetrics) {
    if e.per_class.is_empty() {
        return;
    }
    h.push_str("<h2>Per class</h2>\n<table>\n<tr><th class=\"l\">label</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>\n");
    for c in &e.per_class {
        let support = c.support.map_or("—".into(), |s| s.to_string());
        let _ = writeln!(
            h,
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{support}</td></tr>",
            escape(&c.label),
            num(c.precision, 4),
            num(c.recall, 4),
            num(c.f1, 4)
        );
    }
    h.push_str("</table>\n");
}

/// A number with `digits` decimals, or a dash when absent or not finite.
fn num(v: Option<f64>, digits: usize) -> String {
    match v.filter(|v| v.is_finite()) {
        Some(v) => format!("{v:.digits$}"),
        None => "—".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::log::parse_log;

    #[test]
    fn report_html_escapes_text() {
        assert_eq!(escape(r#"<b>"x" & 'y'</b>"#), "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;");
    }

    #[test]
    fn report_html_without_metrics_says_so_and_lists_stages_from_the_log() {
        let log = parse_log(r#"{"kind":"train","stage":"<s>","stage_index":0,"step":1,"global_step":1,"loss":2.0}"#);
        let page = Page {
            run_name: "r",
            recipe: None,
            log: &log,
            metrics: None,
            best: None,
            images: vec![("Training loss", "report/loss.png".into())],
            generated: "now".into(),
        };
        let html = render(&page);
        assert!(html.contains("No final evaluation yet"));
        assert!(html.contains("&lt;s&gt;") && !html.contains("<s>"));
        assert!(html.contains("<img src=\"report/loss.png\""));
    }

    #[test]
    fn report_html_confusion_matrix_shades_by_count() {
        let e = EvalMetrics {
            labels: vec!["a".into(), "b".into()],
            confusion_matrix: vec![vec![4, 0], vec![1, 3]],
            ..Default::default()
        };
        let mut h = String::new();
        confusion_matrix(&mut h, &e);
        assert!(h.contains("rgba(31,119,180,1.000);color:#fff\">4</td>"), "{h}");
        assert!(h.contains("rgba(31,119,180,0.000);color:#222\">0</td>"), "{h}");
        assert!(h.contains("rgba(31,119,180,0.250);color:#222\">1</td>"), "{h}");
    }
}
