//! `emollama import FORMAT PATH --out DIR` on checkpoints shaped like the releases at the tiny
//! Emotion-LLaMA size (`tests/fixtures/import/`, written by `tools/fixtures/make_import_fixtures.py`):
//! every tensor comes out equal under this model's names, the imported model predicts exactly what the
//! same values written by our own checkpoint writer predict, pickles with foreign globals are refused
//! without running anything, and wrong ranks and unknown names are clear errors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Tensor};
use emollama::model::pth::{Checkpoint, PthError};
use sha2::Digest;

mod common;

use common::{load_tensors, max_diff, repo};

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures/import").join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// Runs `emollama` in `cwd` with its cache under `cache`.
fn emollama(cwd: &Path, cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_emollama")).args(args).current_dir(cwd).env("XDG_CACHE_HOME", cache).env("NO_COLOR", "1").output().expect("spawn emollama")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// The tiny Emotion-LLaMA recipe with the fixtures' LoRA (r 4, alpha 8 on q_proj, v_proj), a small
/// synthetic dataset and short answers; `lora = false` leaves the LoRA out.
fn recipe(dir: &Path, lora: bool) -> PathBuf {
    recipe_with(dir, if lora { "tiny.toml" } else { "tiny_no_lora.toml" }, lora, "")
}

/// [`recipe`] at `dir/file` with `extra` appended (e.g. its own `[[stage]]`, replacing the base's).
fn recipe_with(dir: &Path, file: &str, lora: bool, extra: &str) -> PathBuf {
    let path = dir.join(file);
    let lora_table = if lora { "[model.lora]\nr = 4\nlora_alpha = 8.0\nlora_dropout = 0.0\ntarget_modules = [\"q_proj\", \"v_proj\"]\n" } else { "" };
    let body = format!(
        r#"extends = [{base:?}]
name = "imp"

[runtime]
runs_dir = {runs:?}
threads = 2

[data.synth]
seed = 8
train = 12
val = 4
test = 6

[validation]
enabled = false

{lora_table}
[eval]
task = "emotion"
max_new_tokens = 6
{extra}
"#,
        base = s(&repo().join("recipes/quickstart_emotion_llama_tiny.toml")),
        runs = s(&dir.join("runs")),
    );
    std::fs::write(&path, body).expect("recipe");
    path
}

/// The mapping of the reference names to ours, written out independently of `src/model/import.rs`.
fn ours(reference: &str) -> Option<String> {
    if reference.starts_with("attention.") {
        return None;
    }
    let lora = reference.strip_prefix("llama_model.base_model.model.").map(|rest| format!("llm.{rest}"));
    Some(lora.unwrap_or_else(|| format!("projector.{reference}")))
}

/// `expected.safetensors` entries of one fixture (`emotion_llama/` or `minigpt_v2/`), by reference name.
fn expected(prefix: &str) -> HashMap<String, Tensor> {
    load_tensors(&fixture("expected.safetensors")).into_iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v))).collect()
}

fn import(cwd: &Path, format: &str, pth: &Path, recipe: &Path, out: &Path) -> Output {
    emollama(cwd, &cwd.join("cache"), &["import", format, s(pth), "--recipe", s(recipe), "--out", s(out), "--no-progress"])
}

/// Every imported tensor equals the fixture's under the mapping, in f32; `attention.*` is not imported.
fn assert_round_trip(out: &Path, prefix: &str) -> usize {
    let got = load_tensors(&out.join("params.safetensors"));
    let want = expected(prefix);
    let mut n = 0;
    for (reference, value) in &want {
        match ours(reference) {
            None => assert!(!got.keys().any(|k| k.contains("attention")), "`{reference}` must be skipped"),
            Some(name) => {
                let t = got.get(&name).unwrap_or_else(|| panic!("`{reference}` not imported as `{name}`; got {:?}", got.keys()));
                assert_eq!(t.dtype(), DType::F32, "{name}");
                assert_eq!(max_diff(t, value), 0.0, "{reference} -> {name} differs");
                n += 1;
            }
        }
    }
    assert_eq!(got.len(), n, "nothing but the mapped tensors: {:?}", got.keys());
    n
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).expect("json")
}

fn sha256(path: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(path).expect("read")))
}

/// The run directory under `runs` whose name starts with `prefix`.
fn run_dir(runs: &Path, prefix: &str) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(runs).expect("runs dir").flatten().map(|e| e.path()).filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix))).collect();
    assert_eq!(dirs.len(), 1, "one run `{prefix}*` in {}: {dirs:?}", runs.display());
    dirs[0].clone()
}

fn predictions(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("predictions.jsonl")).expect("predictions.jsonl")
}

#[test]
fn emotion_llama_import_equals_the_pth_and_predicts_like_our_own_checkpoint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let recipe = recipe(tmp.path(), true);
    let out = tmp.path().join("imported");
    let o = import(tmp.path(), "emotion-llama", &fixture("emotion_llama.pth"), &recipe, &out);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("attention") && err.contains("skipped"), "the attention module is skipped with a log: {err}");
    // 2 + 3 x 2 + 2 projector tensors and 2 layers x 2 modules x 2 LoRA tensors.
    assert_eq!(assert_round_trip(&out, "emotion_llama/"), 18);
    emollama::train::checkpoint::verify(&out).expect("a checkpoint directory of ours");

    let report = json(&out.join("import.json"));
    assert_eq!(report["format"], "emotion-llama");
    assert_eq!(report["sha256"], sha256(&fixture("emotion_llama.pth")));
    assert_eq!(report["tensors"]["imported"], 18);
    assert_eq!(report["tensors"]["skipped"], 4);
    assert_eq!(report["tensors"]["in_file"], 22);
    assert_eq!(report["epoch"], 3);
    assert_eq!(report["checkpoint_config_lora"]["lora_r"], 4);
    assert!(report["skipped"].as_array().expect("skipped").iter().all(|n| n.as_str().is_some_and(|n| n.starts_with("attention."))));

    // The written recipe evaluates DIR (no training stages), with the LoRA the tensors have.
    let written = emollama::recipe::load_recipe(&out.join("recipe.toml"), &[]).expect("written recipe loads");
    assert_eq!(Path::new(&written.recipe.eval.checkpoint), std::fs::canonicalize(&out).expect("canonical"));
    assert!(written.recipe.stages.is_empty());
    assert_eq!(written.recipe.model.lora.as_ref().map(|l| (l.r, l.lora_alpha)), Some((4, 8.0)));

    // The same values, renamed by this test's own table and written by the trainer's checkpoint writer.
    let mine: HashMap<String, Tensor> = expected("emotion_llama/").into_iter().filter_map(|(k, v)| ours(&k).map(|n| (n, v))).collect();
    let ours_dir = emollama::train::checkpoint::write(tmp.path(), "ours", &mine, None, &emollama::train::checkpoint::TrainState::new("test".into())).expect("write");

    let runs = tmp.path().join("runs");
    let cache = tmp.path().join("cache");
    let o = emollama(tmp.path(), &cache, &["eval", s(&out.join("recipe.toml")), "--no-progress"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("evaluating checkpoint"), "{}", stderr(&o));
    let o = emollama(tmp.path(), &cache, &["eval", s(&recipe), "--checkpoint", s(&ours_dir), "--no-progress"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let imported = predictions(&run_dir(&runs, "imp-imported-eval-"));
    let written_by_us = predictions(&run_dir(&runs, "imp-eval-"));
    assert_eq!(imported.lines().count(), 6, "{imported}");
    assert_eq!(imported, written_by_us, "the imported model predicts exactly what our own checkpoint of the same values does");

    // `emollama predict --model DIR` (the imported directory) answers as the same values written by us.
    let synth = std::fs::read_dir(cache.join("emollama")).expect("cache").flatten().map(|e| e.path()).find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("synth-"))).expect("synthetic dataset");
    let clips: Vec<String> = std::fs::read_to_string(synth.join("manifest.jsonl")).expect("manifest").lines().filter(|l| l.contains("\"split\":\"test\"")).take(2).map(str::to_string).collect();
    let manifest = tmp.path().join("clips.jsonl");
    std::fs::write(&manifest, clips.iter().map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).expect("json");
        format!("{}\n", serde_json::json!({"id": v["id"], "path": synth.join(v["file"].as_str().expect("file")), "transcript": v["transcript"]}))
    }).collect::<String>()).expect("manifest");
    let predict = |model: &Path, extra: &[&str]| -> Vec<serde_json::Value> {
        let mut args = vec!["predict", "--model", s(model), "--input", s(&manifest), "--no-progress"];
        args.extend_from_slice(extra);
        let o = emollama(tmp.path(), &cache, &args);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).expect("line")).collect()
    };
    let by_import = predict(&out, &[]);
    let set = format!("eval.checkpoint={}", s(&ours_dir));
    let by_ours = predict(&recipe, &["--set", &set]);
    assert_eq!(by_import.len(), 2);
    for (a, b) in by_import.iter().zip(&by_ours) {
        assert_eq!(a["ok"], true, "{a}");
        for k in ["label", "scores", "reasoning", "emotion_prompt_scores"] {
            assert_eq!(a[k], b[k], "{k}: {a} vs {b}");
        }
    }

    // The import took effect: the model as the recipe builds it (fresh projectors and LoRA) answers otherwise.
    std::fs::remove_dir_all(run_dir(&runs, "imp-eval-")).expect("rm");
    let o = emollama(tmp.path(), &cache, &["eval", s(&recipe), "--no-progress"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(predictions(&run_dir(&runs, "imp-eval-")), imported, "zero-shot predictions equal the imported ones: the import changed nothing");

    // An existing, non-empty --out is refused.
    let o = import(tmp.path(), "emotion-llama", &fixture("emotion_llama.pth"), &recipe, &out);
    assert!(!o.status.success() && stderr(&o).contains("not empty"), "{}", stderr(&o));
}

#[test]
fn minigpt_v2_fp16_import_is_where_stage_one_starts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // One training stage at a learning rate too small to move an f32 weight: what it exports is where it started.
    let stage = r#"
[[stage]]
name = "from-minigpt"
tasks = ["emotion"]
steps = 1
batch_size = 2
lr = 1e-30
min_lr = 1e-30
warmup_steps = 0
weight_decay = 0.0
grad_clip = 0.0
trainable = ["llm.*.lora_*", "projector.*"]
"#;
    let recipe = recipe_with(tmp.path(), "stage.toml", true, stage);
    let out = tmp.path().join("minigpt");
    let o = import(tmp.path(), "minigpt-v2", &fixture("minigpt_v2.pth"), &recipe, &out);
    assert!(o.status.success(), "{}", stderr(&o));
    // llama_proj's 2 tensors and the 8 LoRA tensors, f16 in the file, f32 here (exact: f16 widens losslessly).
    assert_eq!(assert_round_trip(&out, "minigpt_v2/"), 10);
    let report = json(&out.join("import.json"));
    assert_eq!(report["format"], "minigpt-v2");
    assert_eq!(report["tensors"]["skipped"], 0);
    assert!(report["mapping"].as_array().expect("mapping").iter().all(|m| m["source_dtype"] == "F16"), "{report}");

    let written = emollama::recipe::load_recipe(&out.join("recipe.toml"), &[]).expect("written recipe loads");
    assert_eq!(Path::new(&written.recipe.stages[0].init), std::fs::canonicalize(&out).expect("canonical"));
    assert!(written.recipe.eval.checkpoint.is_empty());
    let o = emollama(tmp.path(), &tmp.path().join("cache"), &["recipe", "check", s(&out.join("recipe.toml"))]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Stage 1 of the written recipe starts from the imported llama_proj and LoRA.
    let o = emollama(tmp.path(), &tmp.path().join("cache"), &["run", s(&out.join("recipe.toml")), "--no-progress", "--set", "eval.enabled=false"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("init from checkpoint") && err.contains("params=10"), "{err}");
    let run = run_dir(&tmp.path().join("runs"), "imp-from-minigpt-v2-");
    let exported = load_tensors(&run.join("checkpoints/01-from-minigpt.safetensors"));
    let imported = load_tensors(&out.join("params.safetensors"));
    for (name, t) in &imported {
        assert_eq!(max_diff(&exported[name], t), 0.0, "{name}: stage 1 did not start from the import");
    }
    assert!(exported.keys().any(|k| k.starts_with("projector.feats_llama_proj1.")), "the new projectors train too");

    // Emotion-LLaMA's format needs the three feature projectors and the CLS one, which MiniGPT-v2 lacks...
    let o = import(tmp.path(), "emotion-llama", &fixture("minigpt_v2.pth"), &recipe, &tmp.path().join("x"));
    let err = stderr(&o);
    assert!(!o.status.success() && err.contains("missing") && err.contains("projector.cls_tk_llama_proj.weight"), "{err}");
    // ...and MiniGPT-v2's format has no such tensors.
    let o = import(tmp.path(), "minigpt-v2", &fixture("emotion_llama.pth"), &recipe, &tmp.path().join("y"));
    let err = stderr(&o);
    assert!(!o.status.success() && err.contains("`feats_llama_proj1.weight`") && err.contains("another format"), "{err}");
    assert!(!tmp.path().join("x").exists() && !tmp.path().join("y").exists(), "nothing written on an error");
}

#[test]
fn pickles_with_foreign_globals_are_refused_by_name_and_never_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let recipe = recipe(tmp.path(), true);
    let payload = "touch emollama_import_pwned";
    // The fixture really carries the payload: `posix.system` with the command, in its pickle.
    let raw = std::fs::read(fixture("malicious.pth")).expect("read");
    let has = |needle: &[u8]| raw.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"cposix\nsystem\n") && has(payload.as_bytes()));

    for (file, global) in [("malicious.pth", "posix.system"), ("foreign_global.pth", "omegaconf.dictconfig.DictConfig")] {
        let out = tmp.path().join(file);
        let o = import(tmp.path(), "emotion-llama", &fixture(file), &recipe, &out);
        let err = stderr(&o);
        assert!(!o.status.success(), "{err}");
        assert!(err.contains(&format!("`{global}`")) && err.contains(file) && err.contains("nothing was executed"), "{err}");
        assert!(!out.exists());
        match Checkpoint::open(&fixture(file)) {
            Err(PthError::ForbiddenGlobal { global: g, path }) => {
                assert_eq!(g, global);
                assert!(path.ends_with(file));
            }
            other => panic!("{file}: expected a refusal, got {other:?}"),
        }
    }
    assert!(!tmp.path().join("emollama_import_pwned").exists(), "the payload ran");
    assert!(!repo().join("emollama_import_pwned").exists(), "the payload ran");

    let o = import(tmp.path(), "emotion-llama", &fixture("legacy.pth"), &recipe, &tmp.path().join("legacy"));
    assert!(!o.status.success() && stderr(&o).contains("legacy (pre-1.6, non-zip)"), "{}", stderr(&o));
    let o = import(tmp.path(), "emotion-llama", &fixture("expected.safetensors"), &recipe, &tmp.path().join("st"));
    assert!(!o.status.success() && stderr(&o).contains("not a PyTorch checkpoint"), "{}", stderr(&o));
    // A bare pickle (what `pickle.dump` writes) is not torch.save's format either, and is not run.
    let bare = tmp.path().join("bare.pkl");
    std::fs::write(&bare, b"\x80\x02cposix\nsystem\nX\x1b\x00\x00\x00touch emollama_import_pwned\x85R.").expect("write");
    let o = import(tmp.path(), "emotion-llama", &bare, &recipe, &tmp.path().join("bare"));
    assert!(!o.status.success() && stderr(&o).contains("a bare pickle"), "{}", stderr(&o));
    assert!(!tmp.path().join("emollama_import_pwned").exists(), "the payload ran");
}

#[test]
fn wrong_rank_unknown_names_and_a_recipe_without_lora_are_clear_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let recipe = recipe(tmp.path(), true);
    let o = import(tmp.path(), "emotion-llama", &fixture("wrong_rank.pth"), &recipe, &tmp.path().join("a"));
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("has rank 8") && err.contains("LoRA r = 4") && err.contains("model.lora.r = 8") && err.contains("wrong_rank.pth"), "{err}");

    let o = import(tmp.path(), "emotion-llama", &fixture("unknown_key.pth"), &recipe, &tmp.path().join("b"));
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("2 tensor(s)") && err.contains("`emotion_head.weight`") && err.contains("`llama_model.base_model.model.model.embed_tokens.weight`"), "{err}");

    // The same r but another alpha in the recipe than the checkpoint's config says.
    let o = emollama(
        tmp.path(),
        &tmp.path().join("cache"),
        &["import", "emotion-llama", s(&fixture("emotion_llama.pth")), "--recipe", s(&recipe), "--set", "model.lora.lora_alpha=16.0", "--out", s(&tmp.path().join("c"))],
    );
    let err = stderr(&o);
    assert!(!o.status.success() && err.contains("LoRA alpha = 8") && err.contains("lora_alpha"), "{err}");

    // The default recipes are the full-size ones (planned from the manifests, no weights needed): the
    // tiny fixtures do not fit them.
    for (format, file) in [("emotion-llama", "emotion_llama.pth"), ("minigpt-v2", "minigpt_v2.pth")] {
        let out = tmp.path().join(format);
        let o = emollama(tmp.path(), &tmp.path().join("cache"), &["import", format, s(&fixture(file)), "--out", s(&out), "--no-progress"]);
        let err = stderr(&o);
        assert!(!o.status.success() && err.contains("`llama_proj.weight` has shape [128, 128]") && err.contains("`projector.llama_proj.weight` [4096, 5632]"), "{err}");
    }

    let plain = self::recipe(tmp.path(), false);
    let o = import(tmp.path(), "emotion-llama", &fixture("emotion_llama.pth"), &plain, &tmp.path().join("d"));
    let err = stderr(&o);
    assert!(!o.status.success() && err.contains("has no LoRA") && err.contains("lora_A.weight"), "{err}");
}
