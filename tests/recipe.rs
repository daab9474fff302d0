//! Recipe loading: extends, overrides and actionable errors.

use std::path::{Path, PathBuf};

use emollama::media::FrameSampling;
use emollama::recipe::error::KeyError;
use emollama::recipe::load::{find_key_line, load_recipe_with_env, validation_error};
use emollama::recipe::{LrSchedule, RecipeError};

fn write(dir: &Path, rel: &str, text: &str) -> PathBuf {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn sets(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn key_errors(e: RecipeError) -> Vec<KeyError> {
    match e {
        RecipeError::Invalid { errors } => errors,
        other => panic!("expected RecipeError::Invalid, got {other:?}: {other}"),
    }
}

fn load_err(path: &Path, args: &[&str], vars: &[(&str, &str)]) -> RecipeError {
    match load_recipe_with_env(path, &sets(args), &env(vars)) {
        Ok(r) => panic!("expected an error, loaded {:?}", r.recipe),
        Err(e) => e,
    }
}

#[test]
fn extends_env_and_set_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = write(
        d,
        "base/root.toml",
        r#"name = "root"
seed = 1
[runtime]
threads = 1
device = "cpu"
[model]
llm = "root-llm"
[data]
audio_seconds = 0.5
[[stage]]
name = "base-stage"
lr = 0.5
"#,
    );
    let mid = write(
        d,
        "base/mid.toml",
        r#"extends = ["root.toml"]
seed = 2
[runtime]
threads = 2
[data]
width = 32
"#,
    );
    let top = write(
        d,
        "exp/top.toml",
        r#"extends = ["../base/mid.toml"]
name = "top"
[runtime]
threads = 3

[[stage]]
name = "s1"
lr = 1e-3

[[stage]]
name = "s2"
lr_schedule = "linear"
"#,
    );
    let loaded = load_recipe_with_env(
        &top,
        &sets(&["runtime.threads=5", "name=cli-run", "runtime.progress=false"]),
        &env(&[
            ("EMOLLAMA_RUNTIME__THREADS", "4"),
            ("EMOLLAMA_DATA__AUDIO_SECONDS", "0.25"),
            ("EMOLLAMA_RUNTIME__PROGRESS", "true"),
            ("EMOLLAMA_CACHE", "/somewhere"), // not a recipe key: ignored
            ("HOME", "/root"),
        ]),
    )
    .unwrap();
    let r = &loaded.recipe;
    assert_eq!(r.runtime.threads, 5, "--set beats env, files and bases");
    assert!(!r.runtime.progress, "--set beats env");
    assert_eq!(r.data.audio_seconds, 0.25, "env beats base");
    assert_eq!(r.name, "cli-run", "--set with a bare string");
    assert_eq!(r.seed, 2, "file beats its base");
    assert_eq!(r.model.llm, "root-llm", "base beats default");
    assert_eq!(r.data.width, 32);
    assert_eq!(r.data.height, 64, "default");
    assert_eq!(r.runtime.device, "cpu");
    assert!(r.extends.is_empty());
    // [[stage]] arrays are replaced, not merged element-wise.
    let names: Vec<&str> = r.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["s1", "s2"]);
    assert_eq!(r.stages[0].lr, 1e-3);
    assert_eq!(r.stages[1].lr, 1e-3, "stage default");
    assert_eq!(r.stages[1].lr_schedule, LrSchedule::Linear);
    assert_eq!(loaded.files, vec![root.clone(), mid.clone(), top.clone()]);
    assert_eq!(loaded.path, top);

    // Without overrides the files decide.
    let plain = load_recipe_with_env(&top, &[], &[]).unwrap().recipe;
    assert_eq!((plain.runtime.threads, plain.name.as_str(), plain.data.audio_seconds), (3, "top", 0.5));
}

#[test]
fn diamond_extends_merges_each_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = write(d, "d.toml", "seed = 1\n[runtime]\nthreads = 1\n");
    let b = write(d, "b.toml", "extends = [\"d.toml\"]\n[runtime]\nthreads = 2\n");
    let c = write(d, "c.toml", "extends = [\"d.toml\"]\nname = \"c\"\n");
    let a = write(d, "a.toml", "extends = [\"b.toml\", \"c.toml\"]\n");
    let loaded = load_recipe_with_env(&a, &[], &[]).unwrap();
    assert_eq!(loaded.files, vec![base, b, c, a]);
    // d is not merged again after b, so b's override stands.
    assert_eq!(loaded.recipe.runtime.threads, 2);
    assert_eq!(loaded.recipe.name, "c");
}

#[test]
fn unknown_keys_top_level_and_in_stage() {
    let dir = tempfile::tempdir().unwrap();
    let top = write(
        dir.path(),
        "exp/typo.toml",
        r#"name = "x"
sed = 3

[[stage]]
name = "warmup"

[[stage]]
name = "main"
lr_shedule = "cosine"
"#,
    );
    let err = load_err(&top, &[], &[]);
    let text = err.to_string();
    let errors = key_errors(err);
    assert_eq!(errors.len(), 2, "both errors are reported: {text}");
    let file = top.display().to_string();

    let e = &errors[0];
    assert_eq!(e.file.as_deref(), Some(top.as_path()));
    assert_eq!(e.line, Some(2));
    assert_eq!(e.key_path, "sed");
    assert_eq!(e.suggestion.as_deref(), Some("seed"));
    assert!(e.to_string().starts_with(&format!("{file}:2: sed: unknown key `sed`, did you mean `seed`? (valid keys: ")), "{e}");

    let e = &errors[1];
    assert_eq!(e.line, Some(9));
    assert_eq!(e.key_path, "stage[1].lr_shedule");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("{file}:9: stage[1].lr_shedule: unknown key `lr_shedule`, did you mean `lr_schedule`?")),
        "{msg}"
    );
    assert!(msg.contains("valid keys: name, init, data, tasks, steps"), "{msg}");
    assert!(text.starts_with("2 errors in recipe:"), "{text}");
}

#[test]
fn wrong_type_names_key_file_line_and_expectation() {
    let dir = tempfile::tempdir().unwrap();
    let top = write(dir.path(), "r.toml", "name = \"x\"\n\n[[stage]]\nname = \"a\"\nlr = \"fast\"\n");
    let errors = key_errors(load_err(&top, &[], &[]));
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].to_string(),
        format!("{}:5: stage[0].lr: expected a floating point number, found string \"fast\"", top.display())
    );
}

#[test]
fn enum_typos_suggest_variants() {
    let dir = tempfile::tempdir().unwrap();
    let top = write(
        dir.path(),
        "r.toml",
        "[data]\nframes = { mode = \"frist\" }\n\n[[stage]]\nlr_schedule = \"cosin\"\n",
    );
    let errors = key_errors(load_err(&top, &[], &[]));
    assert_eq!(errors.len(), 2, "{errors:?}");
    let file = top.display();
    assert_eq!(
        errors[0].to_string(),
        format!("{file}:2: data.frames.mode: unknown value `frist`, did you mean `first`? (expected one of: uniform, first, fps, segments, midpoints)")
    );
    assert_eq!(
        errors[1].to_string(),
        format!("{file}:5: stage[0].lr_schedule: unknown value `cosin`, did you mean `cosine`? (expected one of: constant, cosine, linear, reference_cosine)")
    );
}

#[test]
fn missing_extends_file() {
    let dir = tempfile::tempdir().unwrap();
    let top = write(dir.path(), "exp/r.toml", "name = \"x\"\nextends = [\"../base/nope.toml\"]\n");
    let err = load_err(&top, &[], &[]);
    let missing = dir.path().join("base/nope.toml");
    match &err {
        RecipeError::ExtendsMissing { from, line, missing: m } => {
            assert_eq!(from, &top);
            assert_eq!(*line, Some(2));
            assert_eq!(m, &missing);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!("{}:2: `extends` names a file that does not exist: {}", top.display(), missing.display())
    );
}

#[test]
fn extends_cycle_names_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.toml", "extends = [\"b.toml\"]\n");
    let b = write(dir.path(), "b.toml", "extends = [\"./a.toml\"]\n");
    let err = load_err(&a, &[], &[]);
    assert!(matches!(&err, RecipeError::ExtendsCycle { chain } if chain == &[a.clone(), b.clone(), a.clone()]), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("`extends` cycle: {} → {} → {}", a.display(), b.display(), a.display())
    );
}

#[test]
fn toml_syntax_error_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let base = write(dir.path(), "base.toml", "name = \"x\"\n\n[runtime]\nthreads = = 2\n");
    let top = write(dir.path(), "top.toml", "extends = [\"base.toml\"]\n");
    let err = load_err(&top, &[], &[]);
    match &err {
        RecipeError::Syntax { path, line, col, .. } => {
            assert_eq!(path, &base);
            assert_eq!(*line, 4);
            assert!(*col >= 10, "col {col}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().starts_with(&format!("{}:4:", base.display())), "{err}");
}

#[test]
fn bad_set_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let top = write(dir.path(), "r.toml", "name = \"x\"\n");
    for (arg, reason) in [
        ("runtime.threads", "missing `=`"),
        ("=3", "empty key"),
        ("runtime..threads=2", "empty key segment"),
        ("stage[0].lr=1", "array elements cannot be set"),
        ("extends=[\"x.toml\"]", "only be set inside a recipe file"),
    ] {
        let err = load_err(&top, &[arg], &[]);
        assert!(matches!(&err, RecipeError::BadSet { arg: a, .. } if a == arg), "{err:?}");
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("invalid --set argument `{arg}`: ")), "{msg}");
        assert!(msg.contains(reason), "{msg}");
    }
}

#[test]
fn set_parses_toml_values_or_takes_strings() {
    let dir = tempfile::tempdir().unwrap();
    let top = write(
        dir.path(),
        "r.toml",
        "[data]\nframes = { mode = \"fps\", fps = 2.0 }\n[[stage]]\nname = \"a\"\n",
    );
    let loaded = load_recipe_with_env(
        &top,
        &sets(&[
            "data.audio_seconds=15e-1",
            "eval.metrics=[\"accuracy\", \"macro_f1\"]",
            "data.frames={mode=\"first\"}",
            "runtime.device=cuda:0",
            "name=\"quoted name\"",
            "eval.enabled = false",
            "prompt.template=chatml",
        ]),
        &[],
    )
    .unwrap();
    let r = &loaded.recipe;
    assert_eq!(r.data.audio_seconds, 1.5);
    assert_eq!(r.eval.metrics, ["accuracy", "macro_f1"]);
    // A table choosing a variant (`mode`) replaces the file's table instead of merging into it.
    assert_eq!(r.data.frames, FrameSampling::First);
    assert_eq!(r.runtime.device, "cuda:0");
    assert_eq!(r.name, "quoted name");
    assert!(!r.eval.enabled);
    assert_eq!(r.prompt.template, emollama::recipe::PromptTemplate::Chatml);
    assert_eq!(r.stages.len(), 1);
}

#[test]
fn override_errors_name_the_variable_or_argument() {
    let dir = tempfile::tempdir().unwrap();
    let top = write(dir.path(), "r.toml", "[[stage]]\nname = \"a\"\n");
    let errors = key_errors(load_err(
        &top,
        &["model.lmm=tiny", "name=true", "stage.lr=1"],
        &[("EMOLLAMA_RUNTIME__THREADS", "many"), ("EMOLLAMA_RUNTIM__DEVICE", "cpu")],
    ));
    let msgs: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(errors.len(), 5, "{msgs:#?}");
    assert!(msgs.contains(&"environment variable EMOLLAMA_RUNTIME__THREADS: runtime.threads: expected a non-negative integer, found string \"many\"".to_string()), "{msgs:#?}");
    assert!(msgs.iter().any(|m| m.starts_with("environment variable EMOLLAMA_RUNTIM__DEVICE: runtim: unknown key `runtim`, did you mean `runtime`?")), "{msgs:#?}");
    assert!(msgs.iter().any(|m| m.starts_with("--set model.lmm=tiny: model.lmm: unknown key `lmm`, did you mean `llm`?")), "{msgs:#?}");
    assert!(msgs.contains(&"--set name=true: name: expected a string, found boolean `true` (to pass a string, quote it: --set 'name=\"true\"')".to_string()), "{msgs:#?}");
    assert!(msgs.iter().any(|m| m.starts_with("--set stage.lr=1: stage: expected an array, found a table (`stage` is an array")), "{msgs:#?}");
    // Environment errors come before --set errors.
    assert!(errors[0].origin.starts_with("environment variable"));
    assert!(errors[4].origin.starts_with("--set"));
}

#[test]
fn to_toml_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let base = write(
        dir.path(),
        "base.toml",
        "seed = 7\n[data]\nframes = { mode = \"fps\", fps = 2.5, max_frames = 4 }\n[prompt.instructions]\nemotion = [\"Which emotion?\"]\n",
    );
    let top = write(
        dir.path(),
        "top.toml",
        "extends = [\"base.toml\"]\nname = \"rt\"\n[[stage]]\nname = \"a\"\nlr = 2e-4\ntrainable = [\"projector.*\"]\n[[stage]]\nname = \"b\"\nlr_schedule = \"constant\"\n[eval]\nlimit = 5\n",
    );
    let loaded = load_recipe_with_env(&top, &sets(&["model.use_av=false"]), &[]).unwrap();
    assert_eq!(loaded.files, vec![base, top]);
    let text = loaded.to_toml().unwrap();
    assert!(!text.contains("extends"), "{text}");
    let again_path = write(dir.path(), "resolved.toml", &text);
    let again = load_recipe_with_env(&again_path, &[], &[]).unwrap();
    assert_eq!(again.recipe, loaded.recipe, "{text}");
    assert_eq!(again.files, vec![again_path]);
}

#[test]
fn validation_errors_point_at_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let base = write(dir.path(), "base.toml", "# base\n[model]\nllm = \"tiny-lama\"\n");
    let top = write(dir.path(), "top.toml", "extends = [\"base.toml\"]\n[model]\nprojector = \"mlp\"\n");
    let loaded = load_recipe_with_env(&top, &[], &[]).unwrap();
    let err = validation_error(&loaded, "model.llm", "unknown LLM `tiny-lama`, did you mean `tiny-llama`?".into());
    assert!(matches!(&err, RecipeError::Validation { file, line: Some(3), .. } if file == &base), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("{}:3: model.llm: unknown LLM `tiny-lama`, did you mean `tiny-llama`?", base.display())
    );
    // A default names the top file.
    let err = validation_error(&loaded, "model.audio_encoder", "bad".into());
    assert!(matches!(&err, RecipeError::Validation { file, line: None, .. } if file == &top), "{err:?}");

    let loaded = load_recipe_with_env(&top, &sets(&["model.llm=tiny-lama"]), &[]).unwrap();
    let err = validation_error(&loaded, "model.llm", "unknown LLM `tiny-lama`".into());
    assert_eq!(err.to_string(), "--set model.llm=tiny-lama: model.llm: unknown LLM `tiny-lama`");
}

#[test]
fn find_key_line_in_text() {
    let text = "name = \"x\"\n[[stage]]\nlr = 1\n[[stage]]\nlr = 2\n";
    assert_eq!(find_key_line(text, "stage[1].lr"), Some(5));
    assert_eq!(find_key_line(text, "stage[0].lr"), Some(3));
    assert_eq!(find_key_line(text, "name"), Some(1));
    assert_eq!(find_key_line(text, "seed"), None);
}

#[test]
fn missing_top_file_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let err = load_err(&path, &[], &[]);
    assert!(matches!(&err, RecipeError::Io { path: p, .. } if p == &path), "{err:?}");
    assert!(err.to_string().starts_with(&format!("cannot read recipe file {}: ", path.display())));
}

#[test]
fn odd_inputs_give_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        "",
        "[[stage]]\n[[stage]]\n",
        "stage = 3",
        "stage = [1, 2]",
        "data = 1",
        "[data]\nframes = 3",
        "[data.frames]\nmode = 1",
        "[data]\nframes = {}",
        "[data]\nframes = { mode = \"first\", n = 3 }",
        "[data]\nframes = { mode = \"uniform\", n = \"x\" }",
        "seed = -1",
        "seed = 1.5",
        "[prompt.instructions]\n\"a.b\" = [1]",
        "extends = 3",
        "extends = \"x.toml\"",
        "extends = [1]",
        "name = 1979-05-27",
        "[[stage]]\ntasks = [\"a\", 3]\nlr = \"x\"\n[[stage]]\nsteps = -3",
        "[[stage]]\n[stage.x]\ny = 1",
        "[eval]\nlabel_extraction = 3\n[runtime]\nthreads = true\nbogus = 1",
        "\u{feff}name = \"bom\"",
        "name = \"\"\"\nmulti\n\"\"\"\nnope = 1",
    ];
    let set_lists: [&[&str]; 4] = [&[], &["seed="], &["x.y.z=1", "name=="], &["data.frames={mode=\"fps\"}"]];
    let envs: [&[(&str, &str)]; 2] = [
        &[],
        &[("EMOLLAMA_", "1"), ("EMOLLAMA___", "x"), ("emollama_seed", "3"), ("EMOLLAMA_A____B", "1"), ("EMOLLAMA_STAGE", "1")],
    ];
    for (i, text) in files.iter().enumerate() {
        let path = write(dir.path(), &format!("f{i}.toml"), text);
        for s in set_lists {
            for e in envs {
                match load_recipe_with_env(&path, &sets(s), &env(e)) {
                    Ok(loaded) => {
                        loaded.to_toml().unwrap();
                    }
                    Err(err) => {
                        let msg = err.to_string();
                        assert!(!msg.is_empty());
                        for k in err.key_errors() {
                            assert!(!k.message.is_empty(), "{k:?}");
                        }
                    }
                }
            }
        }
    }
}

/// Recipes are shared between teams: a base that is a device or a huge file is refused at once (a bounded
/// read of regular files only), with the file named, instead of being read until memory runs out.
#[test]
fn extends_of_a_device_or_a_huge_file_is_refused_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(dir.path(), "zero.toml", "extends = [\"/dev/zero\"]\nseed = 1\n");
    let e = load_recipe_with_env(&p, &[], &[]).expect_err("/dev/zero").to_string();
    assert!(e.contains("/dev/zero") && e.contains("not a regular file"), "{e}");
    let huge = dir.path().join("huge.toml");
    std::fs::File::create(&huge).and_then(|f| f.set_len(100 << 20)).expect("sparse 100 MB file");
    let e = load_recipe_with_env(&huge, &[], &[]).expect_err("100 MB").to_string();
    assert!(e.contains("huge.toml") && e.contains("larger than 1 MiB"), "{e}");
    let p = write(dir.path(), "via.toml", "extends = [\"huge.toml\"]\n");
    let e = load_recipe_with_env(&p, &[], &[]).expect_err("100 MB base").to_string();
    assert!(e.contains("huge.toml") && e.contains("larger than 1 MiB"), "{e}");
}

/// Closed sets are enums in the schema: an unknown value gets the standard error, with the file and line,
/// the closest value and every valid one (no silent fallback to a default).
#[test]
fn unknown_values_of_closed_sets_name_file_line_and_the_choices() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(dir.path(), "r.toml", "name = \"x\"\n\n[model]\nglobal_frame = \"peek\"\n");
    let e = load_recipe_with_env(&p, &[], &[]).expect_err("unknown global frame").to_string();
    assert!(e.contains("r.toml:4") && e.contains("unknown value `peek`") && e.contains("did you mean `peak`") && e.contains("first, middle, peak"), "{e}");
    let p = write(dir.path(), "t.toml", "name = \"x\"\n\n[prompt]\ntemplate = \"chatm\"\n");
    let e = load_recipe_with_env(&p, &[], &[]).expect_err("unknown template").to_string();
    assert!(e.contains("t.toml:4") && e.contains("did you mean `chatml`") && e.contains("auto, llama2, chatml"), "{e}");
    // Every other closed set of the schema, each on its own line.
    let cases = [
        ("[runtime]\ndtype = \"bf61\"\n", "bf16", "auto, f32, bf16, f16"),
        ("[runtime]\ninference_precision = \"bf61\"\n", "bf16", "auto, f32, bf16"),
        ("[model]\nprojector = \"linaer\"\n", "linear", "linear, mlp"),
        ("[prompt]\ninstruction_set = \"emotion-llama\"\n", "emotion_llama", "emollama, emotion_llama"),
        ("[prompt]\neval_layout = \"refrence\"\n", "reference", "training, reference"),
        ("[data]\non_error = \"skp\"\n", "skip", "skip, fail"),
        ("[eval]\nlabel_extraction = \"nearest-end\"\n", "nearest_end", "reference, nearest_end, scores"),
        ("[eval]\ntask = \"reasoning\"\n", "reason", "emotion, description, reason, reason_v2"),
        ("[validation]\nmetric = \"weighted-f1\"\n", "weighted_f1", "weighted_f1, accuracy, macro_f1"),
        ("[validation]\ntask = \"reasonn\"\n", "reason", "emotion, description, reason, reason_v2"),
        ("[[stage]]\nname = \"s\"\nmodalities = [\"vidoe\"]\n", "video", "video, audio"),
    ];
    for (i, (table, suggestion, choices)) in cases.iter().enumerate() {
        let p = write(dir.path(), &format!("c{i}.toml"), &format!("name = \"x\"\n\n{table}"));
        let e = load_recipe_with_env(&p, &[], &[]).expect_err("unknown value").to_string();
        let line = if table.starts_with("[[stage]]") { 5 } else { 4 };
        assert!(e.contains(&format!("c{i}.toml:{line}")) && e.contains(&format!("did you mean `{suggestion}`")) && e.contains(choices), "{table}: {e}");
    }
    // Earlier runs' resolved recipes wrote `validation.task = ""` for "the eval task".
    let p = write(dir.path(), "empty.toml", "name = \"x\"\n\n[validation]\ntask = \"\"\n");
    let r = load_recipe_with_env(&p, &[], &[]).expect("empty validation task").recipe;
    assert_eq!((r.validation.task, r.validation_task()), (None, r.eval.task));
}
