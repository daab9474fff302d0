//! Every metric against scikit-learn 1.5.2 (and the MER reference formulas written out in Python) to 1e-9,
//! on random predictions and the edge cases: all one class (truth or prediction), a class never seen,
//! missing predictions. Fixtures: `tools/fixtures/make_metric_fixtures.py` → `tests/fixtures/metrics/`.

use std::path::PathBuf;
use std::process::Command;

use emollama::eval::metrics::{classification_report, mer2023_overall, valence_mse};
use emollama::eval::openset::{Exact, ov_scores};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metrics")
}

fn cases() -> Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("cases.json")).expect("cases.json")).expect("json")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().expect("array").iter().map(|x| x.as_str().expect("string").to_string()).collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

fn close(name: &str, metric: &str, got: f64, want: &Value) {
    let want = want.as_f64().unwrap_or_else(|| panic!("{name}: expected {metric}"));
    assert!((got - want).abs() <= 1e-9, "{name} {metric}: {got} vs sklearn {want}");
}

#[test]
fn discrete_metrics_match_sklearn() {
    let all = cases();
    let list = all["discrete"].as_array().expect("cases");
    assert_eq!(list.len(), 6);
    for c in list {
        let name = c["name"].as_str().expect("name");
        let labels = strings(&c["labels"]);
        let order: Vec<&str> = labels.iter().map(String::as_str).collect();
        let r = classification_report(&strings(&c["truth"]), &strings(&c["pred"]), &order);
        let e = &c["expected"];
        for (metric, got) in [
            ("accuracy", r.accuracy),
            ("weighted_f1", r.weighted_f1),
            ("macro_f1", r.macro_f1),
            ("weighted_precision", r.weighted_precision),
            ("weighted_recall", r.weighted_recall),
            ("uar", r.uar),
            ("war", r.war),
        ] {
            close(name, metric, got, &e[metric]);
        }
        if !c["valence_true"].is_null() {
            let mse = valence_mse(&floats(&c["valence_true"]), &floats(&c["valence_pred"]));
            close(name, "valence_mse", mse, &e["valence_mse"]);
            close(name, "mer2023_overall", mer2023_overall(r.weighted_f1, mse), &e["mer2023_overall"]);
        }
    }
}

#[test]
fn open_vocabulary_scores_match_the_reference_formula() {
    let c = &cases()["ov"];
    let sets = |v: &Value| -> Vec<Vec<String>> { v.as_array().expect("sets").iter().map(strings).collect() };
    let s = ov_scores(&sets(&c["gt"]), &sets(&c["pred"]), &Exact);
    for (metric, got) in [("ov_accuracy", s.ov_accuracy), ("ov_recall", s.ov_recall), ("ov_average", s.ov_average)] {
        close("ov_sets", metric, got, &c["expected"][metric]);
    }
}

#[test]
fn score_command_prints_one_json_object_keyed_by_metric() {
    let (labels, preds) = (fixtures().join("labels.csv"), fixtures().join("predictions.csv"));
    let o = Command::new(env!("CARGO_BIN_EXE_emollama"))
        .args(["score", "--predictions", preds.to_str().expect("utf8"), "--labels", labels.to_str().expect("utf8"), "--json"])
        .output()
        .expect("spawn");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    let all = cases();
    let e = &all["discrete"][0]["expected"];
    for m in ["accuracy", "weighted_f1", "macro_f1", "weighted_precision", "weighted_recall", "uar", "war", "valence_mse", "mer2023_overall"] {
        close("score", m, v[m].as_f64().unwrap_or(f64::NAN), &e[m]);
    }
    assert_eq!((v["n"].as_u64(), v["missing"].as_u64()), (Some(500), Some(0)));
    assert_eq!(v["labels"][0], "neutral", "MER's class order");

    // A chosen subset; a prediction file missing rows; an unknown metric; a malformed row.
    let tmp = tempfile::tempdir().expect("tempdir");
    let text = std::fs::read_to_string(&preds).expect("preds");
    let short: String = text.lines().take(400).map(|l| format!("{l}\n")).collect();
    let p2 = tmp.path().join("short.csv");
    std::fs::write(&p2, short).expect("write");
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_emollama")).args(args).output().expect("spawn");
    let o = run(&["score", "--predictions", p2.to_str().expect("utf8"), "--labels", labels.to_str().expect("utf8"), "--json", "--metrics", "accuracy,uar"]);
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["missing"].as_u64(), Some(101));
    assert!(v.get("weighted_f1").is_none() && v["accuracy"].is_f64() && v["uar"].is_f64(), "{v}");
    let o = run(&["score", "--predictions", p2.to_str().expect("utf8"), "--labels", labels.to_str().expect("utf8"), "--metrics", "f2"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("unknown metric `f2`"));
    let bad = tmp.path().join("bad.csv");
    std::fs::write(&bad, "name,discrete,valence\nsample_00000000,happy,high\n").expect("write");
    let o = run(&["score", "--predictions", bad.to_str().expect("utf8"), "--labels", labels.to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("bad.csv line 2") && err.contains("valence `high`"), "{err}");
}

#[test]
fn emotion_wheel_f1_reproduces_the_reference_on_word_lists() {
    let w: Value = serde_json::from_slice(&std::fs::read(fixtures().join("wheel.json")).expect("wheel.json")).expect("json");
    let sets = |v: &Value| -> Vec<Vec<String>> { v.as_array().expect("sets").iter().map(strings).collect() };
    let wheel = emollama::eval::wheel::EmotionWheel::builtin().expect("vocabulary");
    let s = wheel.scores(&sets(&w["gt"]), &sets(&w["pred"]));
    for (level, got) in [("level1", s.level1), ("level2", s.level2)] {
        for (i, (name, v)) in [("f1", got.f1), ("precision", got.precision), ("recall", got.recall)].into_iter().enumerate() {
            close("wheel", &format!("{level} {name}"), v, &w[level][i]);
        }
    }
    close("wheel", "ew_f1", s.ew_f1, &w["ew_f1"]);
    assert!(s.ew_f1 > 0.2, "the fixture shares words between truth and prediction: {}", s.ew_f1);
}

#[test]
fn score_command_on_open_vocabulary_csvs() {
    let w: Value = serde_json::from_slice(&std::fs::read(fixtures().join("wheel.json")).expect("wheel.json")).expect("json");
    let tmp = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, sets: &Value| -> PathBuf {
        let mut text = String::from("name,openset\n");
        for (i, s) in sets.as_array().expect("sets").iter().enumerate() {
            let words: Vec<String> = strings(s).iter().map(|w| format!("'{w}'")).collect();
            text.push_str(&format!("sample_{i:08},\"[{}]\"\n", words.join(", ")));
        }
        let p = tmp.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let (labels, preds) = (write("gt.csv", &w["gt"]), write("pred.csv", &w["pred"]));
    let o = Command::new(env!("CARGO_BIN_EXE_emollama"))
        .args(["score", "--predictions", preds.to_str().expect("utf8"), "--labels", labels.to_str().expect("utf8"), "--json"])
        .output()
        .expect("spawn");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    // The CSV lower-cases and trims words as the reference's string_to_list + strip does.
    close("score", "ew_f1", v["ew_f1"].as_f64().unwrap_or(f64::NAN), &w["ew_f1"]);
    assert!(v["ov_accuracy"].is_f64() && v["ov_recall"].is_f64() && v["ov_average"].is_f64() && v.get("weighted_f1").is_none(), "{v}");
}

#[test]
fn score_report_writes_metrics_confusion_png_per_class_and_html() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("report");
    let o = Command::new(env!("CARGO_BIN_EXE_emollama"))
        .args(["score", "--predictions", fixtures().join("predictions.csv").to_str().expect("utf8"), "--labels", fixtures().join("labels.csv").to_str().expect("utf8"), "--report", dir.to_str().expect("utf8")])
        .output()
        .expect("spawn");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("weighted_f1") && !text.contains("[["), "scalars only in the table:\n{text}");
    let m: Value = serde_json::from_slice(&std::fs::read(dir.join("metrics.json")).expect("metrics.json")).expect("json");
    close("report", "weighted_f1", m["weighted_f1"].as_f64().unwrap_or(f64::NAN), &cases()["discrete"][0]["expected"]["weighted_f1"]);
    let per_class = std::fs::read_to_string(dir.join("per_class.csv")).expect("per_class.csv");
    assert_eq!(per_class.lines().next(), Some("label,precision,recall,f1,support"));
    assert!(per_class.lines().nth(1).is_some_and(|l| l.starts_with("neutral,")), "{per_class}");
    // The PNG decodes, at the size of a 7 x 7 matrix (6 classes + the `confused` answers).
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(dir.join("confusion.png")).expect("png")));
    let reader = decoder.read_info().expect("png header");
    let info = reader.info();
    assert_eq!((info.width, info.height), (140 + 72 * 7 + 30, 60 + 72 * 7 + 110));
    let html = std::fs::read_to_string(dir.join("index.html")).expect("html");
    assert!(html.contains("confusion.png") && html.contains("<td>worried</td>") && html.contains("weighted_f1"));
}
