//! Integration tests of the synthetic dataset: text-only bound, generation, caching, decoding.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use emollama::data::synth::{self, CLASSES, SynthConfig, SynthItem};

/// Per-class F1 weighted by support (sklearn `average='weighted'`).
fn weighted_f1(truth: &[&str], pred: &[&str]) -> f64 {
    assert_eq!(truth.len(), pred.len());
    let n = truth.len() as f64;
    let mut classes: Vec<&str> = truth.to_vec();
    classes.sort_unstable();
    classes.dedup();
    let mut total = 0.0;
    for c in classes {
        let tp = truth.iter().zip(pred).filter(|(t, p)| **t == c && **p == c).count() as f64;
        let fp = truth.iter().zip(pred).filter(|(t, p)| **t != c && **p == c).count() as f64;
        let fneg = truth.iter().zip(pred).filter(|(t, p)| **t == c && **p != c).count() as f64;
        let support = tp + fneg;
        let precision = if tp + fp > 0.0 { tp / (tp + fp) } else { 0.0 };
        let recall = if support > 0.0 { tp / support } else { 0.0 };
        let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
        total += f1 * support / n;
    }
    total
}

/// Most frequent label (ties: first in CLASSES order) per key.
fn fit_majority<'a>(pairs: impl Iterator<Item = (String, &'a str)>) -> HashMap<String, &'a str> {
    let mut counts: HashMap<String, HashMap<&str, usize>> = HashMap::new();
    for (k, l) in pairs {
        *counts.entry(k).or_default().entry(l).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(k, m)| {
            let best = CLASSES
                .iter()
                .enumerate()
                .max_by_key(|(i, c)| (m.get(*c).copied().unwrap_or(0), std::cmp::Reverse(*i)))
                .map_or(CLASSES[0], |(_, c)| *c);
            (k, best)
        })
        .collect()
}

fn split<'a>(items: &'a [SynthItem], name: &str) -> Vec<&'a SynthItem> {
    items.iter().filter(|i| i.split == name).collect()
}

#[test]
fn weighted_f1_helper_matches_hand_computation() {
    assert!((weighted_f1(&["a", "b", "a"], &["a", "b", "a"]) - 1.0).abs() < 1e-12);
    // a: tp 1, fp 2, fn 1 -> p 1/3, r 1/2, f1 0.4 (support 2); b, c: f1 0 -> 0.4 * 2 / 4.
    let f = weighted_f1(&["a", "a", "b", "c"], &["a", "b", "a", "a"]);
    assert!((f - 0.2).abs() < 1e-12, "{f}");
}

#[test]
fn text_only_classifier_stays_below_bound_and_oracle_is_perfect() {
    for seed in 0..5u64 {
        let cfg = SynthConfig { seed, ..SynthConfig::default() };
        let items: Vec<SynthItem> = synth::plan_items(&cfg).expect("plan").into_iter().map(|p| p.item).collect();
        let (train, test) = (split(&items, "train"), split(&items, "test"));
        assert_eq!((train.len(), test.len()), (cfg.train, cfg.test));

        // Bayes-optimal text-only classifier: most frequent train label per distinct transcript.
        let by_text = fit_majority(train.iter().map(|i| (i.transcript.clone(), i.label.as_str())));
        let overall = fit_majority(train.iter().map(|i| (String::new(), i.label.as_str())))[""];
        let truth: Vec<&str> = test.iter().map(|i| i.label.as_str()).collect();
        let pred: Vec<&str> = test.iter().map(|i| by_text.get(&i.transcript).copied().unwrap_or(overall)).collect();
        let f1 = weighted_f1(&truth, &pred);
        println!("seed {seed}: text-only weighted F1 on test = {f1:.3}");
        assert!(f1 <= 0.6, "seed {seed}: text alone reaches weighted F1 {f1:.3} > 0.6");

        // Oracle on (valence, arousal) fitted the same way must be perfect.
        let by_affect = fit_majority(train.iter().map(|i| (format!("{}/{}", i.valence, i.arousal), i.label.as_str())));
        let pred: Vec<&str> = test
            .iter()
            .map(|i| by_affect.get(&format!("{}/{}", i.valence, i.arousal)).copied().unwrap_or(overall))
            .collect();
        let oracle = weighted_f1(&truth, &pred);
        assert!((oracle - 1.0).abs() < 1e-9, "seed {seed}: (valence, arousal) oracle F1 {oracle}, must be 1");
    }
}

fn mtime(p: &Path) -> std::time::SystemTime {
    fs::metadata(p).and_then(|m| m.modified()).expect("mtime")
}

fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt()
}

#[test]
fn generates_reuses_and_decodes_real_clips() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = SynthConfig { seed: 7, train: 12, val: 6, test: 6, ..SynthConfig::default() };
    let t0 = std::time::Instant::now();
    let ds = synth::generate(&cfg, root.path(), false).expect("generate");
    println!("generated {} clips in {:.2}s", ds.items.len(), t0.elapsed().as_secs_f64());
    assert_eq!(ds.dir, root.path().join(format!("synth-{}", cfg.fingerprint())));
    assert_eq!(ds.items.len(), 24);

    // Manifest: one item per line, matching the returned items.
    let manifest = ds.dir.join("manifest.jsonl");
    let text = fs::read_to_string(&manifest).expect("manifest");
    let parsed: Vec<SynthItem> = text.lines().map(|l| serde_json::from_str(l).expect("manifest line")).collect();
    assert_eq!(parsed.len(), 24);
    for (a, b) in parsed.iter().zip(&ds.items) {
        assert_eq!(a.id, b.id);
        assert_eq!(a.reasoning, b.reasoning);
    }
    for (name, n) in [("train", 12), ("val", 6), ("test", 6)] {
        let items = split(&ds.items, name);
        assert_eq!(items.len(), n, "{name}");
        for c in CLASSES {
            assert_eq!(items.iter().filter(|i| i.label == c).count(), n / 6, "{name} {c}");
        }
    }
    for item in &ds.items {
        let p = ds.dir.join(&item.file);
        assert!(p.is_file() && fs::metadata(&p).expect("meta").len() > 1000, "{}", p.display());
        assert!(item.reasoning.ends_with(&item.label));
    }
    // Only the dataset directory is left in the cache root (temporary directory renamed away).
    let entries: Vec<_> = fs::read_dir(root.path()).expect("read_dir").flatten().map(|e| e.file_name()).collect();
    assert_eq!(entries.len(), 1, "{entries:?}");

    // Second call reuses: nothing is rewritten.
    let first_clip = ds.dir.join(&ds.items[0].file);
    let (m_manifest, m_clip) = (mtime(&manifest), mtime(&first_clip));
    std::thread::sleep(std::time::Duration::from_millis(20));
    let again = synth::generate(&cfg, root.path(), false).expect("reuse");
    assert_eq!(again.items, ds.items);
    assert_eq!((mtime(&manifest), mtime(&first_clip)), (m_manifest, m_clip), "reuse must not rewrite");

    // A different seed goes to a different directory.
    let other_cfg = SynthConfig { seed: 8, ..cfg.clone() };
    assert_ne!(other_cfg.fingerprint(), cfg.fingerprint());
    let other = synth::generate(&other_cfg, root.path(), false).expect("generate other seed");
    assert_ne!(other.dir, ds.dir);

    // Same config elsewhere: byte-identical manifest.
    let root2 = tempfile::tempdir().expect("tempdir");
    let twin = synth::generate(&cfg, root2.path(), false).expect("generate twin");
    assert_eq!(fs::read(twin.dir.join("manifest.jsonl")).expect("read"), text.as_bytes());

    // Decode: frame count/size and audio present; calm vs aroused loudness survives AAC.
    let sampling = emollama::media::FrameSampling::Fps { fps: f64::from(cfg.fps), max_frames: None };
    let (mut calm, mut aroused) = (Vec::new(), Vec::new());
    for item in &ds.items {
        let clip = emollama::media::decode_clip(&ds.dir.join(&item.file), &sampling, cfg.width, cfg.height)
            .expect("decode clip");
        assert_eq!(clip.video.frames.len(), 16, "{}", item.id);
        assert!(clip.video.frames.iter().all(|f| f.len() == 64 * 64 * 3));
        assert!(!clip.audio.missing, "{}: audio missing", item.id);
        let secs = clip.audio.duration_s();
        assert!((secs - 2.0).abs() < 0.1, "{}: audio lasts {secs}s", item.id);
        match item.arousal.as_str() {
            "calm" => calm.push(rms(&clip.audio.samples)),
            _ => aroused.push(rms(&clip.audio.samples)),
        }
    }
    let max_calm = calm.iter().copied().fold(0.0f32, f32::max);
    let min_aroused = aroused.iter().copied().fold(f32::MAX, f32::min);
    println!("decoded audio rms: calm max {max_calm:.3}, aroused min {min_aroused:.3}");
    assert!(max_calm < min_aroused);
}

#[test]
fn interrupted_generation_is_redone() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = SynthConfig { seed: 3, train: 6, val: 0, test: 6, ..SynthConfig::default() };
    // A half-written dataset directory (clips but no manifest) and a stale temp dir of a dead process.
    let dir = root.path().join(format!("synth-{}", cfg.fingerprint()));
    fs::create_dir_all(dir.join("clips")).expect("mkdir");
    fs::write(dir.join("clips/synth_00000.mp4"), b"junk").expect("write");
    let stale = root.path().join(format!(".synth-{}.tmp-999999999-1", cfg.fingerprint()));
    fs::create_dir_all(&stale).expect("mkdir stale");

    let ds = synth::generate(&cfg, root.path(), false).expect("generate");
    assert_eq!(ds.dir, dir);
    assert_eq!(ds.items.len(), 12);
    assert!(fs::metadata(dir.join("clips/synth_00000.mp4")).expect("meta").len() > 1000, "junk clip replaced");
    assert!(dir.join("manifest.jsonl").is_file());
    assert!(!stale.exists(), "stale temporary directory removed");
}

#[test]
fn invalid_config_is_rejected_with_the_field_name() {
    let root = tempfile::tempdir().expect("tempdir");
    let cfg = SynthConfig { width: 65, ..SynthConfig::default() };
    let err = synth::generate(&cfg, root.path(), false).expect_err("odd width");
    assert!(err.to_string().contains("width"), "{err}");
    let cfg: Result<SynthConfig, _> = serde_json::from_str(r#"{"sed": 1}"#);
    assert!(cfg.is_err(), "unknown fields are rejected");
}

/// Generates `cfg` into two fresh cache roots and asserts byte-identical clips and manifests.
fn assert_reproducible(cfg: &SynthConfig) {
    let (r1, r2) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let a = synth::generate(cfg, r1.path(), false).expect("generate a");
    // Churn the heap between the runs so that any read of uninitialised memory shows up.
    let junk: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8 ^ 0x5a; 4096 + i * 97]).collect();
    drop(junk);
    let b = synth::generate(cfg, r2.path(), false).expect("generate b");
    assert_eq!(
        fs::read(a.dir.join("manifest.jsonl")).expect("read a"),
        fs::read(b.dir.join("manifest.jsonl")).expect("read b")
    );
    let differing: Vec<&str> = a
        .items
        .iter()
        .filter(|i| fs::read(a.dir.join(&i.file)).ok() != fs::read(b.dir.join(&i.file)).ok())
        .map(|i| i.id.as_str())
        .collect();
    assert!(differing.is_empty(), "{:?}: clips differ between two generations: {differing:?}", cfg.codec);
}

#[test]
fn same_config_gives_identical_clips_mpeg4() {
    let cfg = SynthConfig {
        seed: 11,
        train: 12,
        val: 0,
        test: 6,
        codec: emollama::media::VideoCodec::Mpeg4,
        ..SynthConfig::default()
    };
    assert_reproducible(&cfg);
}

#[test]
fn same_config_gives_identical_clips_h264() {
    let cfg = SynthConfig { seed: 11, train: 12, val: 0, test: 6, ..SynthConfig::default() };
    assert_reproducible(&cfg);
}
