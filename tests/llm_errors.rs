//! Bad LLM input gives errors that name the file (and tensor), never a panic: a corrupt or foreign GGUF,
//! a GGUF of an unknown architecture, a tokenizer that does not belong to the weights, an unknown name.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use emollama::model::chat::ChatModel;
use emollama::model::gguf::GgufFile;
use emollama::registry::Registry;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llm").join(name)
}

/// A project root with one LLM manifest.
fn registry_with(manifest: &str) -> anyhow::Result<(tempfile::TempDir, Registry)> {
    let root = tempfile::tempdir()?;
    std::fs::create_dir_all(root.path().join("plugins/llms"))?;
    std::fs::create_dir_all(root.path().join("datasets"))?;
    std::fs::write(root.path().join("plugins/llms/under-test.toml"), manifest)?;
    let reg = Registry::load(root.path())?;
    Ok((root, reg))
}

fn err_of(r: Result<ChatModel, emollama::model::llm_load::LlmError>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn corrupt_gguf_names_the_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let p = dir.path().join("broken.gguf");
    std::fs::write(&p, b"GGUF but not really")?;
    let e = GgufFile::open(&p).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("broken.gguf") && e.contains("GGUF"), "{e}");
    Ok(())
}

#[test]
fn gguf_of_an_unknown_architecture_is_rejected() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let p = dir.path().join("phi.gguf");
    let t = QTensor::quantize(&Tensor::zeros((4, 32), candle_core::DType::F32, &Device::Cpu)?, GgmlDType::F32)?;
    let meta = [("general.architecture", Value::String("phi2".into()))];
    let mut f = std::fs::File::create(&p)?;
    gguf_file::write(&mut f, &meta.iter().map(|(k, v)| (*k, v)).collect::<Vec<_>>(), &[("token_embd.weight", &t)])?;
    drop(f);
    let e = GgufFile::open(&p)?.config().err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("phi.gguf") && e.contains("phi2") && e.contains("llama"), "{e}");
    Ok(())
}

#[test]
fn tokenizer_that_does_not_match_the_model_is_rejected() -> anyhow::Result<()> {
    // A word-level tokenizer with more tokens than the tiny Qwen2's 96-entry embedding table.
    let words: Vec<String> = (0..200).map(|i| format!("w{i}")).collect();
    let tok = emollama::model::tokenizer::TextTokenizer::from_corpus(words.iter().map(String::as_str))?;
    let manifest = format!(
        "name = \"under-test\"\narchitecture = \"qwen2\"\ntemplate = \"chatml\"\n[tokenizer]\nkind = \"file\"\npath = \"tok.json\"\n[weights]\nsource = \"path\"\npath = \"{}\"\n",
        fixture("tiny-qwen2-hf").display()
    );
    let (root, reg) = registry_with(&manifest)?;
    tok.save(&root.path().join("plugins/llms/tok.json"))?;
    let e = err_of(ChatModel::load(&reg, "under-test", None, false));
    assert!(e.contains("under-test") && e.contains("vocab_size is 96") && e.contains("tokenizer"), "{e}");
    Ok(())
}

#[test]
fn missing_weights_and_unknown_names_are_explained() -> anyhow::Result<()> {
    let (_root, reg) = registry_with("name = \"under-test\"\narchitecture = \"llama\"\n[tokenizer]\nkind = \"pretrained\"\n[weights]\nsource = \"path\"\npath = \"/nonexistent/model\"\n")?;
    let e = err_of(ChatModel::load(&reg, "under-test", None, false));
    assert!(e.contains("/nonexistent/model") && e.contains("does not exist"), "{e}");
    let e = err_of(ChatModel::load(&reg, "under-tset", None, false));
    assert!(e.contains("unknown LLM plugin `under-tset`") && e.contains("did you mean `under-test`"), "{e}");
    Ok(())
}

/// A SentencePiece (LLaMA-2 type) tokenizer stored in GGUF metadata encodes and decodes as SentencePiece.
#[test]
fn sentencepiece_tokenizer_from_gguf_matches_sentencepiece() -> anyhow::Result<()> {
    let dir = fixture("sp-gguf");
    let tok = GgufFile::open(&dir.join("tokenizer-only.gguf"))?.tokenizer()?;
    let cases: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json"))?)?;
    for c in cases.as_array().into_iter().flatten() {
        let text = c["text"].as_str().unwrap_or_default();
        let want: Vec<u32> = c["ids"].as_array().into_iter().flatten().filter_map(|v| v.as_u64().map(|u| u as u32)).collect();
        let ids = tok.encode(text)?;
        assert_eq!(ids, want, "ids of {text:?}");
        assert_eq!(tok.decode(&ids)?, c["decoded"].as_str().unwrap_or_default(), "decoding {text:?}");
    }
    assert_eq!((tok.bos, tok.eos), (Some(1), 2));
    Ok(())
}
