//! The real size on this machine (`just bench-real-size`): the model of `recipes/mer2024_finetune.toml`
//! (LLaMA-2-7B-chat shapes + LoRA r 64, EVA ViT-g, ViT-MAE-L, VideoMAE-L, Chinese-HuBERT-L, the five
//! projectors) with seeded random weights, in bf16, through the run's own code, phase by phase on a real
//! clip: decode, the face front end, the four encoders (then released), the 7B LLM, training steps of
//! the stage-2 task (`reason_v2`) with the real prompt, and 16 greedy tokens. Prints each phase's
//! seconds and peak RSS, the gradient census, and the dry-run's memory estimate for the same sequence,
//! as the BENCHMARKS.md section.
//!     cargo run --release --example real_size_bench -- [recipe] [training steps]

use std::time::Instant;

use anyhow::{Context, ensure};
use candle_core::Device;
use candle_nn::VarMap;
use emollama::data::Sample;
use emollama::data::loader::{DecodeSpec, decode_one};
use emollama::feed::batch;
use emollama::model::build::{assemble_emotion_llama, emotion_llama_encoders};
use emollama::model::generate::{GenerateOptions, generate_one};
use emollama::model::llm_load::LlmSpec;
use emollama::plan::memory::{self, StageLoad};
use emollama::recipe::{Task, load_recipe};
use emollama::registry::Registry;
use emollama::train::optim::{self, GroupedAdamW};

const CLIP: &str = "WolfgangLanger_Pexels.mp4";
/// What the person says (the clip's speech is not transcribed: a sentence of typical length).
const TRANSCRIPT: &str = "I honestly did not expect this at all, and now I do not know what to say to all of you";
/// A stage-2 target in MERR-fine's style and length.
const REASONING: &str = "In the video, the man's brows are slightly raised and the corners of his mouth turn up while he \
speaks; his eyes stay on the camera and he nods as he talks. His voice is bright and steady, with a rising tone at the end \
of the sentence. In the text, he says he did not expect this and does not know what to say, which expresses surprise and \
gratitude. Taken together, the raised brows, the smile and the warm tone suggest that his emotional state is happy.";
const NEW_TOKENS: usize = 16;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Resident and peak resident memory of this process, from /proc/self/status.
fn rss() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| status.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (kib("VmRSS:") * 1024.0, kib("VmHWM:") * 1024.0)
}

/// Starts a new peak: the kernel resets VmHWM to the current RSS.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

struct Phase {
    name: String,
    seconds: f64,
    rss_after: f64,
    peak: f64,
}

#[derive(Default)]
struct Phases(Vec<Phase>);

impl Phases {
    fn run<T>(&mut self, name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
        eprintln!("[real-size] {name} ...");
        reset_peak();
        let t = Instant::now();
        let out = f().with_context(|| format!("phase `{name}`"))?;
        let seconds = t.elapsed().as_secs_f64();
        let (rss_after, peak) = rss();
        eprintln!("[real-size] {name}: {seconds:.1} s, peak RSS {:.2} GiB, after {:.2} GiB", peak / GIB, rss_after / GIB);
        self.0.push(Phase { name: name.into(), seconds, rss_after, peak });
        Ok(out)
    }

    fn peak_of(&self, names: &[&str]) -> f64 {
        self.0.iter().filter(|p| names.contains(&p.name.as_str())).map(|p| p.peak).fold(0.0, f64::max)
    }
}

fn main() -> anyhow::Result<()> {
    emollama::accel::init_process();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let recipe_path = args.first().map(String::as_str).unwrap_or("recipes/bench/real_size.toml");
    let steps: usize = args.get(1).map(|s| s.parse()).transpose().context("training steps: a number")?.unwrap_or(2);
    let loaded = load_recipe(std::path::Path::new(recipe_path), &[])?;
    let r = &loaded.recipe;
    let registry = Registry::discover(std::path::Path::new("."))?;
    let stage = r.stages.last().context("the recipe has no stage")?;
    let task = Task::ReasonV2;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    emollama::accel::set_inference(r.runtime.resolved_inference_precision(), threads);
    let dev = Device::Cpu;
    let clip = emollama::storage::cache_root("").join("media").join(CLIP);
    ensure!(clip.is_file(), "{} is missing: run `just fetch-media`", clip.display());
    let mut phases = Phases::default();
    let (base_rss, _) = rss();

    // The encoders and projectors first: their features are computed and the encoders released before
    // the 7B LLM exists.
    let llm = LlmSpec::resolve(&registry, &r.model.llm)?;
    let tokenizer = llm.tokenizer()?.context("the LLM has no tokenizer")?;
    let varmap = VarMap::new();
    let mut encoders = phases.run("build the 4 encoders (seeded; weight matrices bf16) + projectors", || Ok(emotion_llama_encoders(r, &registry, llm.config.hidden_size, &varmap, r.seed, &dev)?))?;
    let sample = Sample {
        id: CLIP.into(),
        split: "train".into(),
        media: emollama::storage::Location::parse(clip.to_str().context("utf-8 path")?)?,
        transcript: Some(TRANSCRIPT.into()),
        label: Some("happy".into()),
        description: None,
        reasoning: Some(REASONING.into()),
        valence: None,
        openset: Vec::new(),
        cues: None,
    };
    let cache = emollama::storage::cache_root(&r.runtime.cache_dir);
    let face_opts = r.front_end.face.as_ref().context("the recipe has no [front_end.face]")?;
    let mut spec = DecodeSpec {
        sampling: r.data.frames.clone(),
        width: r.data.width,
        height: r.data.height,
        views: encoders.views(),
        audio_len: (r.data.audio_seconds * emollama::media::AUDIO_SAMPLE_RATE as f32).round() as usize,
        on_error: r.data.on_error,
        threads,
        show_progress: false,
        storage: emollama::storage::Storage::new(r.storage.clone(), &cache)?,
        face: None,
        global_frame: r.model.global_frame,
    };
    phases.run("decode (frames per view + audio)", || Ok(decode_one(&sample, &spec)?))?;
    spec.face = Some(std::sync::Arc::new(emollama::media::face::FaceFrontEnd::new(face_opts)?));
    let decoded = phases.run("decode + face front end", || Ok(decode_one(&sample, &spec)?))?;
    let faces = decoded.faces.as_ref().context("the front end gave no face summary")?;
    let media = batch::media_batch(&[&decoded], &spec.views, &dev)?;
    let features = phases.run("encoders: EVA ViT-g, ViT-MAE-L x frames, VideoMAE-L, HuBERT-L", || Ok(encoders.features(&media, true, true)?))?;
    drop(media);
    for (name, t) in features.sample(0)? {
        let v = t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        ensure!(v.iter().all(|x| x.is_finite()), "encoder feature `{name}` is not finite");
    }
    phases.run("release the encoders", || {
        encoders.release_encoders();
        Ok(())
    })?;

    let built = phases.run("build the 7B LLM (seeded, bf16) + LoRA", || Ok(assemble_emotion_llama(r, &llm, &tokenizer, encoders, &varmap, r.seed, &dev)?))?;
    let model = &built.model;
    let template = llm.chat_template(emollama::model::prompt::Template::chosen(r.prompt.template, llm.template));
    let instruction = r.prompt.instructions_for(task).first().context("no reason_v2 instruction")?.clone();
    let text = batch::prompt_text(&sample, task, &instruction, &template, r.prompt.transcript.included());
    let answer = batch::answer_for(&sample, task);
    let prompt = batch::tokenize(&tokenizer, &text, answer.as_deref())?;
    let vars = optim::select(&varmap, &stage.trainable);
    let trainable: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
    let all: Vec<(String, candle_core::Var)> = optim::select(&varmap, &["*".to_string()]);
    let mut opt = GroupedAdamW::new(&vars, stage.lr, stage.weight_decay, &stage.lr_scale)?;
    let mut census = Vec::new();
    let mut seq_len = 0;
    for step in 1..=steps {
        let (loss, inputs_len, with_grad, nonzero, outside) = phases.run(&format!("training step {step} (forward, backward, AdamW)"), || {
            let mm = model.project_features(&features, 1, true, true)?;
            let inputs = model.build_inputs(std::slice::from_ref(&prompt), mm.as_ref(), true)?;
            model.llm.reseed_dropout(emollama::train::sampler::mix(&[r.seed, step as u64, 0]));
            let loss = model.loss(&inputs, stage.loss)?;
            let grads = model.llm.backward(&loss)?;
            let (mut with_grad, mut nonzero, mut outside) = (0usize, 0usize, 0usize);
            let mut zeros: Vec<(usize, String)> = Vec::new();
            for (name, v) in &all {
                let Some(g) = grads.get(v.as_tensor()) else { continue };
                let n = g.ne(0f32)?.to_dtype(candle_core::DType::F32)?.sum_all()?.to_scalar::<f32>()? as usize;
                if vars.iter().any(|(t, _)| t == name) {
                    with_grad += v.elem_count();
                    nonzero += n;
                    if n < v.elem_count() && !name.contains("lora_A") {
                        zeros.push((v.elem_count() - n, name.clone()));
                    }
                } else {
                    outside += v.elem_count();
                }
            }
            zeros.sort_by(|a, b| b.cmp(a));
            eprintln!("[real-size] step {step}: exact-zero gradient entries outside LoRA A, largest first: {:?}", zeros.iter().take(8).collect::<Vec<_>>());
            opt.step(&grads, stage.grad_clip)?;
            Ok((loss.to_scalar::<f32>()?, inputs.embeds.dim(1)?, with_grad, nonzero, outside))
        })?;
        seq_len = inputs_len;
        ensure!(loss.is_finite(), "step {step}: loss {loss}");
        census.push((step, loss, with_grad, nonzero, outside));
    }

    let eval_prompt = batch::tokenize(&tokenizer, &text, None)?;
    let generated = phases.run(&format!("{NEW_TOKENS} greedy tokens (prompt prefill + KV-cached decode)"), || {
        let mm = model.project_features(&features, 1, true, true)?;
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
        Ok(generate_one(model, &eval_prompt, mm.as_ref(), &GenerateOptions::greedy(NEW_TOKENS), &mut rng)?)
    })?;

    // The dry run's estimate for this stage at this sequence length (LLM weights, trainable state and
    // activations, with the recipe's checkpointing), against the peak of the LLM phases.
    let shapes = emollama::plan::model::shapes(r, &registry)?;
    let frozen_llm: u64 = shapes.params.iter().filter(|(n, _)| n.starts_with("llm.") && !n.contains(".lora_")).map(|(_, d)| d.iter().product::<usize>() as u64).sum();
    let load = StageLoad { stage: &stage.name, trainable: trainable as u64, frozen: frozen_llm, frozen_f32: 0, batch_size: 1, seq_len, checkpointing: r.runtime.activation_checkpointing };
    let est = memory::estimate(&shapes.llm.config, &load, "bf16");
    let llm_names: Vec<String> = phases.0.iter().filter(|p| p.name.starts_with("training") || p.name.contains("greedy")).map(|p| p.name.clone()).collect();
    let llm_peak = phases.peak_of(&llm_names.iter().map(String::as_str).collect::<Vec<_>>());
    let predicted = est.total as f64 + base_rss;

    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())).unwrap_or_default();
    println!("## Real size: Emotion-LLaMA (LLaMA-2-7B + four encoders) in bf16 on this CPU\n");
    println!(
        "`just bench-real-size` (examples/real_size_bench.rs, recipe `{recipe_path}`): the model of `mer2024_finetune.toml` at its real size with seeded random weights made in memory (nothing downloaded), through the run's own code on the real clip `{CLIP}` (640x360, 19.7 s, with audio). {} ({threads} threads), {}. Encoders with their weight matrices in bf16 and f32 activations (CPU matmuls at `inference_precision` {}), the LLM in bf16 with activation checkpointing {}; one process, one clip, batch 1.\n",
        cpu,
        chrono::Utc::now().format("%Y-%m-%d"),
        r.runtime.resolved_inference_precision().name(),
        if r.runtime.activation_checkpointing { "on" } else { "off" },
    );
    println!("| phase | seconds | peak RSS (GiB) | RSS after (GiB) |\n|---|---|---|---|");
    for p in &phases.0 {
        println!("| {} | {:.1} | {:.2} | {:.2} |", p.name, p.seconds, p.peak / GIB, p.rss_after / GIB);
    }
    let (_, whole_peak) = rss();
    println!("\nProcess start: {:.2} GiB resident. Face front end: {} of {} sampled frames with the face, peak frame {:?}.", base_rss / GIB, faces.frames_with_face, decoded.num_frames, faces.peak);
    println!("\nPrompt: the `reason_v2` task with the reference instruction `{instruction}`, the transcript and a {}-token MERR-fine-style answer: **{seq_len} positions** (256 `<VideoHere>` + 4 `<FeatureHere>` tokens + the text).\n", prompt_answer_len(&prompt));
    println!("| step | loss | parameters with a gradient | of which non-zero | gradients outside the trainable set |\n|---|---|---|---|---|");
    for (step, loss, with_grad, nonzero, outside) in &census {
        println!("| {step} | {loss:.4} | {with_grad} | {nonzero} | {outside} |");
    }
    let lora_a: usize = vars.iter().filter(|(n, _)| n.contains("lora_A")).map(|(_, v)| v.elem_count()).sum();
    let last = census.last().map(|c| c.3).unwrap_or(0);
    println!(
        "\nTrainable (`{}`): **{trainable}** parameters, and exactly these get a gradient. At step 1 LoRA's B is zero (PEFT's initialisation), so the gradient of every A ({lora_a} parameters) is exactly zero; at step {} {} of the {trainable} gradient entries are exactly zero (the stderr log lists the tensors holding them).",
        stage.trainable.join("`, `"),
        census.len(),
        trainable - last,
    );
    println!("\nGenerated {} tokens: {:?} (random weights: the text is meaningless).", generated.len(), tokenizer.decode(&generated).unwrap_or_default());
    println!(
        "\nMemory: peak RSS of the LLM phases **{:.2} GiB**; the dry-run estimate for this stage at {seq_len} tokens is {:.2} GiB (LLM weights {:.2} + trainable state {:.2} + activations {:.2}) plus the {:.2} GiB the process held at start = **{:.2} GiB**, {:+.1}% from the measurement. Peak of the whole run: {:.2} GiB.",
        llm_peak / GIB,
        est.total as f64 / GIB,
        est.frozen_weights as f64 / GIB,
        est.trainable_state as f64 / GIB,
        est.activations as f64 / GIB,
        base_rss / GIB,
        predicted / GIB,
        (predicted / llm_peak - 1.0) * 100.0,
        whole_peak / GIB,
    );
    ensure!(trainable == 74_993_664, "trainable parameters: {trainable}, expected 74,993,664");
    ensure!(census.iter().all(|c| c.2 == trainable && c.4 == 0), "gradients must reach exactly the trainable parameters");
    ensure!(generated.len() == NEW_TOKENS, "generated {} tokens", generated.len());
    Ok(())
}

fn prompt_answer_len(p: &emollama::model::multimodal::TokenizedPrompt) -> usize {
    p.answer.len()
}
