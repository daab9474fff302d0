//! `emollama doctor` on the CPU: every check is computed and passes, and the JSON and the table say so.

mod common;

use common::emollama;

#[test]
fn doctor_passes_on_the_cpu_with_every_check_measured() {
    let o = emollama(&["doctor", "--json"], &[("RUST_LOG", "warn")]);
    assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["passed"], true, "{v}");
    assert_eq!(v["device"], "cpu");
    assert!(v["environment"]["dtypes"].as_array().expect("dtypes").iter().any(|d| d == "bf16"), "{v}");
    let checks = v["checks"].as_array().expect("checks");
    let names: Vec<String> = checks.iter().map(|c| format!("{} {}", c["name"].as_str().unwrap_or(""), c["dtype"].as_str().unwrap_or(""))).collect();
    for want in ["encoder hubert f32", "encoder vit_mae f32", "encoder videomae f32", "encoder eva_vit f32", "llm+lora forward+backward f32", "llm+lora forward bf16", "llm+lora backward bf16", "train tiny quick-start model f32", "train tiny quick-start model bf16"] {
        assert!(names.iter().any(|n| n == want), "no check `{want}` in {names:?}");
    }
    for c in checks {
        let (value, limit) = (c["value"].as_f64().expect("value"), c["limit"].as_f64().expect("limit"));
        match c["metric"].as_str() {
            Some("min_cosine") => assert!(value >= limit && value <= 1.0 + 1e-6, "{c}"),
            Some("max_abs_diff") => assert!((0.0..=limit).contains(&value), "{c}"),
            Some("loss_ratio") => assert!(value > 0.0 && value <= limit, "{c}"),
            other => panic!("unexpected metric {other:?} in {c}"),
        }
    }
}

#[test]
fn doctor_table_and_bad_device_are_clear() {
    let o = emollama(&["doctor", "--steps", "4"], &[("RUST_LOG", "warn")]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("dtypes that multiply on cpu") && out.contains("encoder eva_vit") && out.contains("checks"), "{out}");
    let o = emollama(&["doctor", "--device", "tpu"], &[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--device `tpu`: expected `cpu`, `cuda` or `cuda:N`"));
    let dir = tempfile::tempdir().expect("tempdir");
    let o = emollama(&["doctor", "--fixtures", dir.path().to_str().expect("utf8"), "--json"], &[("RUST_LOG", "warn")]);
    assert!(!o.status.success(), "missing fixtures must fail");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["passed"], false);
}
