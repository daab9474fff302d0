//! The run report over a synthetic run directory: two stages, validation points, a resumed stretch logged
//! twice, and a `metrics.json` with an evaluation.

use std::collections::HashSet;
use std::path::Path;

use emollama::report::{ReportError, parse_log, plot, write_report};

/// Two stages of 30 and 20 steps logged every 5 steps; validation every 10; steps 11–20 of stage one are
/// logged twice (a kill at step 20 resumed from the step-10 checkpoint), the second time with other values.
fn synthetic_log() -> String {
    let mut lines = Vec::new();
    let train = |stage: &str, k: usize, step: u64, global: u64, loss: f64, lr: f64| {
        format!(
            r#"{{"kind":"train","stage":"{stage}","stage_index":{k},"step":{step},"global_step":{global},"epoch":0.1,"loss":{loss},"lr":{lr},"grad_norm":0.8,"grad_norms":{{"llm":0.5}},"elapsed_s":1.0}}"#
        )
    };
    let val = |stage: &str, k: usize, step: u64, global: u64, value: f64, ckpt: &str| {
        format!(
            r#"{{"kind":"validation","stage":"{stage}","stage_index":{k},"step":{step},"global_step":{global},"metric":"weighted_f1","value":{value},"accuracy":{value},"n":60,"improved":true,"checkpoint":"{ckpt}"}}"#
        )
    };
    for step in (5..=20).step_by(5) {
        lines.push(train("coarse", 0, step, step, 3.0 / step as f64, 1e-3));
    }
    lines.push(val("coarse", 0, 10, 10, 0.3, "checkpoints/best-000010"));
    lines.push(val("coarse", 0, 20, 20, 0.35, "checkpoints/best-000020"));
    // Resumed from step 10: steps 15 and 20 again, with the values that count.
    for step in (15..=30).step_by(5) {
        lines.push(train("coarse", 0, step, step, 2.0 / step as f64, 9e-4));
    }
    lines.push(val("coarse", 0, 20, 20, 0.4, "checkpoints/best-000020"));
    lines.push(val("coarse", 0, 30, 30, 0.5, "checkpoints/best-000030"));
    for step in (5..=20).step_by(5) {
        lines.push(train("fine", 1, step, 30 + step, 0.5 / step as f64, 2e-4));
    }
    lines.push(val("fine", 1, 10, 40, 0.7, "checkpoints/best-000040"));
    lines.push(val("fine", 1, 20, 50, 0.6, "checkpoints/best-000040"));
    lines.join("\n") + "\n"
}

fn synthetic_metrics() -> serde_json::Value {
    serde_json::json!({
        "recipe": "recipes/quickstart.toml",
        "run_dir": "runs/x",
        "stages": [
            {"name": "coarse", "steps": 30, "first_loss": 0.6, "final_loss": 0.07, "seconds": 12.5, "checkpoint": "checkpoints/01-coarse.safetensors"},
            {"name": "fine", "steps": 20, "first_loss": 0.1, "final_loss": 0.025, "seconds": 8.0, "checkpoint": "checkpoints/02-fine.safetensors"}
        ],
        "eval": {
            "split": "test", "task": "reason", "unparsed": 2, "n": 24, "accuracy": 0.75, "weighted_f1": 0.7321,
            "macro_f1": 0.7, "weighted_precision": 0.8, "weighted_recall": 0.75,
            "labels": ["neutral", "<b>", "sad"],
            "confusion_matrix": [[7, 1, 0], [2, 5, 1], [0, 2, 6]],
            "per_class": [{"label": "neutral", "precision": 0.78, "recall": 0.875, "f1": 0.82, "support": 8}]
        },
        "best": {"stage": "fine", "stage_index": 1, "step": 10, "global_step": 40, "metric": "weighted_f1", "value": 0.7,
                 "checkpoint": "checkpoints/best-000040"},
        "timings": {"total_s": 30.0}
    })
}

fn run_dir(with_metrics: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("log.jsonl"), synthetic_log()).unwrap();
    if with_metrics {
        std::fs::write(dir.path().join("metrics.json"), serde_json::to_vec_pretty(&synthetic_metrics()).unwrap()).unwrap();
    }
    dir
}

/// Decodes a PNG, checks its size, and returns how many distinct colours it has.
fn distinct_colours(path: &Path) -> usize {
    distinct_colours_at(path, (plot::WIDTH, plot::HEIGHT))
}

fn distinct_colours_at(path: &Path, size: (u32, u32)) -> usize {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut reader = png::Decoder::new(file).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), size, "{}", path.display());
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf[..info.buffer_size()].chunks_exact(3).map(|p| (p[0], p[1], p[2])).collect::<HashSet<_>>().len()
}

#[test]
fn report_writes_plots_and_page() {
    let dir = run_dir(true);
    let files = write_report(dir.path()).unwrap();
    let report = dir.path().join("report");
    assert_eq!(files.loss.as_deref(), Some(report.join("loss.png").as_path()));
    assert_eq!(files.lr.as_deref(), Some(report.join("lr.png").as_path()));
    assert_eq!(files.validation.as_deref(), Some(report.join("validation.png").as_path()));
    assert_eq!(files.html, dir.path().join("report.html"));
    // The 3 x 3 confusion heat map: 72-pixel cells, shaded, with counts and labels.
    assert!(distinct_colours_at(&report.join("confusion.png"), (140 + 72 * 3 + 30, 60 + 72 * 3 + 110)) > 20);
    for name in ["loss.png", "lr.png", "validation.png"] {
        // Axes, text, lines in two stage colours and the legend: far more than a flat fill.
        let colours = distinct_colours(&report.join(name));
        assert!(colours > 20, "{name}: only {colours} colours");
    }
    // No temp file left behind by the atomic writes.
    let leftovers: Vec<_> = std::fs::read_dir(&report).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n.to_string_lossy().ends_with(".tmp")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let html = std::fs::read_to_string(&files.html).unwrap();
    for link in ["report/loss.png", "report/lr.png", "report/validation.png", "report/confusion.png"] {
        assert!(html.contains(&format!("src=\"{link}\"")), "{link} not linked");
    }
    assert!(html.contains("checkpoints/best-000040"), "best checkpoint missing");
    assert!(html.contains("&lt;b&gt;") && !html.contains("<th><b></th>"), "label not escaped");
    // Confusion-matrix cells, the largest count at full shade.
    assert!(html.contains("rgba(31,119,180,1.000);color:#fff\">7</td>"), "{html}");
    assert!(html.contains("\">5</td>") && html.contains("\">6</td>"));
    for metric in ["0.7321", "0.7500", "0.7000", ">24<", ">2<", "recipes/quickstart.toml", "coarse", "fine"] {
        assert!(html.contains(metric), "{metric} missing");
    }
    assert_eq!(files.paths().len(), 4);
}

#[test]
fn report_without_metrics_still_draws_the_curves() {
    let dir = run_dir(false);
    let files = write_report(dir.path()).unwrap();
    assert!(files.loss.is_some() && files.lr.is_some() && files.validation.is_some());
    assert!(distinct_colours(&dir.path().join("report/loss.png")) > 20);
    let html = std::fs::read_to_string(&files.html).unwrap();
    assert!(html.contains("No final evaluation yet"));
    // The best point then comes from the log.
    assert!(html.contains("checkpoints/best-000040"));
}

#[test]
fn report_without_validation_skips_its_plot() {
    let dir = tempfile::tempdir().unwrap();
    let log: String = synthetic_log().lines().filter(|l| !l.contains("\"validation\"")).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.path().join("log.jsonl"), log).unwrap();
    let files = write_report(dir.path()).unwrap();
    assert!(files.validation.is_none());
    assert!(!dir.path().join("report/validation.png").exists());
    let html = std::fs::read_to_string(&files.html).unwrap();
    assert!(!html.contains("validation.png"));
}

#[test]
fn report_missing_log_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let err = write_report(dir.path()).unwrap_err();
    assert!(matches!(err, ReportError::LogMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("log.jsonl"), "{err}");
}

#[test]
fn report_resumed_steps_keep_the_last_value() {
    let log = parse_log(&synthetic_log());
    let at = |g: u64| log.train.iter().filter(|p| p.global_step == g).collect::<Vec<_>>();
    assert_eq!(at(15).len(), 1);
    assert_eq!(at(15)[0].loss, Some(2.0 / 15.0));
    assert_eq!(at(20)[0].lr, Some(9e-4));
    let v20: Vec<_> = log.validation.iter().filter(|p| p.global_step == 20).collect();
    assert_eq!(v20.len(), 1);
    assert_eq!(v20[0].value, Some(0.4));
    let steps: Vec<u64> = log.train.iter().map(|p| p.global_step).collect();
    assert_eq!(steps, [5, 10, 15, 20, 25, 30, 35, 40, 45, 50]);
}

#[test]
fn report_cli_prints_the_paths_and_fails_clearly_without_a_log() {
    let dir = run_dir(true);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_emollama")).arg("report").arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    let expected: Vec<String> = ["report/loss.png", "report/lr.png", "report/validation.png", "report.html"]
        .iter()
        .map(|p| dir.path().join(p).display().to_string())
        .collect();
    assert_eq!(printed, expected);

    let empty = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_emollama")).arg("report").arg(empty.path()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("log.jsonl") && !err.contains("panicked"), "{err}");
}
