//! CTranslate2 `model.bin` files (binary format version 6, as `ctranslate2.converters` writes them):
//!
//! ```text
//! u32 version | string spec name | u32 spec revision | u32 n
//! n x (string name | u8 rank | rank x u32 dim | u8 dtype | u32 byte count | bytes)
//! u32 m | m x (string alias | string variable name)
//! ```
//!
//! Strings are a u16 byte count (NUL included) then the bytes, everything little-endian. Every read is
//! bounds-checked, so a truncated or foreign file is an [`AsrError::Format`] naming the path and the
//! byte offset, never a panic. [`whisper_tensors`] renames a `WhisperSpec` to Hugging Face's Whisper names.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::AsrError;

/// The only binary format version this reader knows (CTranslate2 3.x and 4.x write it).
pub const FORMAT_VERSION: u32 = 6;

/// Element types of CTranslate2's `DataType` enum, by their on-disk id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ct2DType {
    F32,
    I8,
    I16,
    I32,
    F16,
    BF16,
}

impl Ct2DType {
    fn from_id(id: u8) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::I8,
            2 => Self::I16,
            3 => Self::I32,
            4 => Self::F16,
            5 => Self::BF16,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            Self::I8 => 1,
            Self::I16 | Self::F16 | Self::BF16 => 2,
            Self::F32 | Self::I32 => 4,
        }
    }
}

/// One stored variable: where its bytes are in the file.
#[derive(Debug, Clone)]
pub struct Ct2Variable {
    pub dtype: Ct2DType,
    pub shape: Vec<usize>,
    bytes: Range<usize>,
}

/// A parsed `model.bin`, holding the file's bytes.
pub struct Ct2Model {
    path: PathBuf,
    pub spec: String,
    pub revision: u32,
    vars: BTreeMap<String, Ct2Variable>,
    aliases: BTreeMap<String, String>,
    data: Vec<u8>,
}

impl std::fmt::Debug for Ct2Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ct2Model({}, {} rev {}, {} variables)", self.path.display(), self.spec, self.revision, self.vars.len())
    }
}

/// A bounds-checked little-endian cursor; `what` names the field in error messages.
struct Cursor<'a> {
    path: &'a Path,
    data: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize, what: &str) -> Result<Range<usize>, AsrError> {
        match self.pos.checked_add(n).filter(|&end| end <= self.data.len()) {
            Some(end) => {
                let r = self.pos..end;
                self.pos = end;
                Ok(r)
            }
            None => Err(format_err(
                self.path,
                format!("truncated: {what} needs {n} bytes at offset {}, the file has {}", self.pos, self.data.len()),
            )),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], AsrError> {
        let r = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.data[r]);
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> Result<u8, AsrError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, AsrError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32, AsrError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, AsrError> {
        let n = self.u16(what)? as usize;
        let start = self.pos;
        let r = self.take(n, what)?;
        let bytes = &self.data[r];
        let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
        String::from_utf8(bytes.to_vec()).map_err(|_| format_err(self.path, format!("{what} at offset {start} is not UTF-8")))
    }
}

fn format_err(path: &Path, detail: impl Into<String>) -> AsrError {
    AsrError::Format { path: path.to_path_buf(), detail: detail.into() }
}

impl Ct2Model {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<Self, AsrError> {
        let data = std::fs::read(path).map_err(|source| AsrError::Io { path: path.to_path_buf(), source })?;
        Self::parse(path, data)
    }

    /// Parses the bytes of a `model.bin` (`path` only names it in errors).
    pub fn parse(path: &Path, data: Vec<u8>) -> Result<Self, AsrError> {
        let mut c = Cursor { path, data: &data, pos: 0 };
        let version = c.u32("the format version")?;
        if version != FORMAT_VERSION {
            return Err(format_err(
                path,
                format!("not a CTranslate2 model of binary format version {FORMAT_VERSION} (its first 4 bytes read {version})"),
            ));
        }
        let spec = c.string("the spec name")?;
        let revision = c.u32("the spec revision")?;
        let n = c.u32("the variable count")?;
        let mut vars = BTreeMap::new();
        for i in 0..n {
            let name = c.string(&format!("the name of variable {i}"))?;
            let rank = c.u8(&format!("the rank of `{name}`"))?;
            let mut shape = Vec::with_capacity(rank as usize);
            for _ in 0..rank {
                shape.push(c.u32(&format!("the shape of `{name}`"))? as usize);
            }
            let id = c.u8(&format!("the dtype of `{name}`"))?;
            let dtype = Ct2DType::from_id(id).ok_or_else(|| format_err(path, format!("`{name}` has unknown dtype id {id}")))?;
            let nbytes = c.u32(&format!("the byte count of `{name}`"))? as usize;
            let expected = shape.iter().try_fold(dtype.size(), |acc, &d| acc.checked_mul(d));
            if expected != Some(nbytes) {
                return Err(format_err(path, format!("`{name}`: {nbytes} bytes do not hold a {dtype:?} tensor of shape {shape:?}")));
            }
            let bytes = c.take(nbytes, &format!("the data of `{name}`"))?;
            vars.insert(name, Ct2Variable { dtype, shape, bytes });
        }
        let m = c.u32("the alias count")?;
        let mut aliases = BTreeMap::new();
        for i in 0..m {
            let alias = c.string(&format!("alias {i}"))?;
            let target = c.string(&format!("the target of alias `{alias}`"))?;
            aliases.insert(alias, target);
        }
        if c.pos != data.len() {
            tracing::warn!(path = %path.display(), trailing = data.len() - c.pos, "CTranslate2 model: bytes after the last alias ignored");
        }
        Ok(Self { path: path.to_path_buf(), spec, revision, vars, aliases, data })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The variable `name`, following an alias.
    pub fn get(&self, name: &str) -> Option<&Ct2Variable> {
        self.vars.get(name).or_else(|| self.aliases.get(name).and_then(|t| self.vars.get(t)))
    }

    /// Every stored variable name (aliases not included), sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars.keys().map(String::as_str)
    }

    fn require(&self, name: &str) -> Result<&Ct2Variable, AsrError> {
        self.get(name).ok_or_else(|| format_err(&self.path, format!("{} has no variable `{name}`", self.spec)))
    }

    /// A floating-point variable as a tensor of its stored dtype, on `device`.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Tensor, AsrError> {
        let v = self.require(name)?;
        let dtype = match v.dtype {
            Ct2DType::F32 => DType::F32,
            Ct2DType::F16 => DType::F16,
            Ct2DType::BF16 => DType::BF16,
            other => return Err(format_err(&self.path, format!("`{name}` is {other:?}, not a float tensor (quantized models are not supported)"))),
        };
        Ok(Tensor::from_raw_buffer(&self.data[v.bytes.clone()], dtype, &v.shape, device)?)
    }

    /// An integer scalar (the spec's settings, e.g. `encoder/num_heads`).
    pub fn scalar(&self, name: &str) -> Result<i64, AsrError> {
        let v = self.require(name)?;
        let b = &self.data[v.bytes.clone()];
        let value = match (v.dtype, b) {
            (Ct2DType::I8, [x]) => i64::from(*x as i8),
            (Ct2DType::I16, [a, b]) => i64::from(i16::from_le_bytes([*a, *b])),
            (Ct2DType::I32, [a, b, c, d]) => i64::from(i32::from_le_bytes([*a, *b, *c, *d])),
            _ => return Err(format_err(&self.path, format!("`{name}` is not an integer scalar ({:?} {:?})", v.dtype, v.shape))),
        };
        Ok(value)
    }

    /// The leading dimensions of a variable.
    pub fn shape(&self, name: &str) -> Result<&[usize], AsrError> {
        Ok(&self.require(name)?.shape)
    }

    /// How many `{prefix}layer_{i}/` blocks there are (numbered from 0 without gaps).
    pub fn layer_count(&self, prefix: &str) -> usize {
        (0..).take_while(|i| self.vars.range(format!("{prefix}layer_{i}/")..).next().is_some_and(|(k, _)| k.starts_with(&format!("{prefix}layer_{i}/")))).count()
    }
}

/// The sizes of a CTranslate2 `WhisperSpec`, read from its tensors.
pub fn whisper_config(m: &Ct2Model) -> Result<candle_transformers::models::whisper::Config, AsrError> {
    if m.spec != "WhisperSpec" {
        return Err(format_err(m.path(), format!("holds a `{}`, not a Whisper model (`WhisperSpec`)", m.spec)));
    }
    let dims2 = |name: &str| -> Result<(usize, usize), AsrError> {
        match m.shape(name)? {
            [a, b, ..] => Ok((*a, *b)),
            s => Err(format_err(m.path(), format!("`{name}` has shape {s:?}, expected at least 2 dimensions"))),
        }
    };
    let heads = |name: &str| -> Result<usize, AsrError> {
        usize::try_from(m.scalar(name)?).ok().filter(|&h| h > 0).ok_or_else(|| format_err(m.path(), format!("`{name}` is not a positive head count")))
    };
    // CTranslate2 activation 3 is exact GELU, the only one Whisper uses; pre-norm blocks likewise.
    for (name, want) in [("decoder/activation", 3), ("decoder/pre_norm", 1)] {
        if m.get(name).is_some() && m.scalar(name)? != want {
            return Err(format_err(m.path(), format!("`{name}` = {} is not Whisper's ({want})", m.scalar(name)?)));
        }
    }
    let (d_model, num_mel_bins) = dims2("encoder/conv1/weight")?;
    let (max_source_positions, _) = dims2("encoder/position_encodings/encodings")?;
    let (vocab_size, _) = dims2("decoder/embeddings/weight")?;
    let (max_target_positions, _) = dims2("decoder/position_encodings/encodings")?;
    let cfg = candle_transformers::models::whisper::Config {
        num_mel_bins,
        max_source_positions,
        d_model,
        encoder_attention_heads: heads("encoder/num_heads")?,
        encoder_layers: m.layer_count("encoder/"),
        vocab_size,
        max_target_positions,
        decoder_attention_heads: heads("decoder/num_heads")?,
        decoder_layers: m.layer_count("decoder/"),
        suppress_tokens: Vec::new(),
    };
    if cfg.encoder_layers == 0 || cfg.decoder_layers == 0 || !d_model.is_multiple_of(cfg.encoder_attention_heads) || !d_model.is_multiple_of(cfg.decoder_attention_heads) {
        return Err(format_err(m.path(), format!("inconsistent Whisper sizes: {cfg:?}")));
    }
    Ok(cfg)
}

/// Every weight of a `WhisperSpec` under Hugging Face's `WhisperForConditionalGeneration` names, in `dtype`
/// on `device`: fused QKV / KV projections split, `gamma`/`beta` renamed `weight`/`bias`. The key
/// projections' biases (zeros in every Whisper checkpoint) are dropped: HF has none, and a key bias only
/// adds the same amount to every score of a query row, which softmax cancels.
pub fn whisper_tensors(m: &Ct2Model, cfg: &candle_transformers::models::whisper::Config, dtype: DType, device: &Device) -> Result<HashMap<String, Tensor>, AsrError> {
    let d = cfg.d_model;
    let mut out = HashMap::new();
    let mut put = |name: String, t: Tensor| -> Result<(), AsrError> {
        out.insert(name, t.to_dtype(dtype)?);
        Ok(())
    };
    let get = |name: &str| m.tensor(name, device);
    // CTranslate2 `linear_k` / `layer_norm` scopes to HF modules.
    let linear = |put: &mut dyn FnMut(String, Tensor) -> Result<(), AsrError>, ct: &str, hf: &str| -> Result<(), AsrError> {
        put(format!("{hf}.weight"), get(&format!("{ct}/weight"))?)?;
        put(format!("{hf}.bias"), get(&format!("{ct}/bias"))?)
    };
    let norm = |put: &mut dyn FnMut(String, Tensor) -> Result<(), AsrError>, ct: &str, hf: &str| -> Result<(), AsrError> {
        put(format!("{hf}.weight"), get(&format!("{ct}/gamma"))?)?;
        put(format!("{hf}.bias"), get(&format!("{ct}/beta"))?)
    };
    // A fused projection split into HF's (name, has bias) parts of `d` rows each.
    let split = |put: &mut dyn FnMut(String, Tensor) -> Result<(), AsrError>, ct: &str, hf: &str, parts: &[(&str, bool)]| -> Result<(), AsrError> {
        let w = get(&format!("{ct}/weight"))?;
        let b = get(&format!("{ct}/bias"))?;
        if w.dims().first() != Some(&(d * parts.len())) {
            return Err(format_err(m.path(), format!("`{ct}/weight` has shape {:?}, expected {} rows", w.dims(), d * parts.len())));
        }
        for (i, (name, bias)) in parts.iter().enumerate() {
            put(format!("{hf}.{name}.weight"), w.narrow(0, i * d, d)?)?;
            if *bias {
                put(format!("{hf}.{name}.bias"), b.narrow(0, i * d, d)?)?;
            }
        }
        Ok(())
    };
    let qkv = [("q_proj", true), ("k_proj", false), ("v_proj", true)];
    let kv = [("k_proj", false), ("v_proj", true)];

    let e = "model.encoder";
    linear(&mut put, "encoder/conv1", &format!("{e}.conv1"))?;
    linear(&mut put, "encoder/conv2", &format!("{e}.conv2"))?;
    // Unused by candle (it recomputes the sinusoids, see `check_encoder_positions`), kept for completeness.
    put(format!("{e}.embed_positions.weight"), get("encoder/position_encodings/encodings")?)?;
    for i in 0..cfg.encoder_layers {
        let (ct, hf) = (format!("encoder/layer_{i}"), format!("{e}.layers.{i}"));
        split(&mut put, &format!("{ct}/self_attention/linear_0"), &format!("{hf}.self_attn"), &qkv)?;
        linear(&mut put, &format!("{ct}/self_attention/linear_1"), &format!("{hf}.self_attn.out_proj"))?;
        norm(&mut put, &format!("{ct}/self_attention/layer_norm"), &format!("{hf}.self_attn_layer_norm"))?;
        linear(&mut put, &format!("{ct}/ffn/linear_0"), &format!("{hf}.fc1"))?;
        linear(&mut put, &format!("{ct}/ffn/linear_1"), &format!("{hf}.fc2"))?;
        norm(&mut put, &format!("{ct}/ffn/layer_norm"), &format!("{hf}.final_layer_norm"))?;
    }
    norm(&mut put, "encoder/layer_norm", &format!("{e}.layer_norm"))?;

    let dd = "model.decoder";
    put(format!("{dd}.embed_tokens.weight"), get("decoder/embeddings/weight")?)?;
    put(format!("{dd}.embed_positions.weight"), get("decoder/position_encodings/encodings")?)?;
    for i in 0..cfg.decoder_layers {
        let (ct, hf) = (format!("decoder/layer_{i}"), format!("{dd}.layers.{i}"));
        split(&mut put, &format!("{ct}/self_attention/linear_0"), &format!("{hf}.self_attn"), &qkv)?;
        linear(&mut put, &format!("{ct}/self_attention/linear_1"), &format!("{hf}.self_attn.out_proj"))?;
        norm(&mut put, &format!("{ct}/self_attention/layer_norm"), &format!("{hf}.self_attn_layer_norm"))?;
        linear(&mut put, &format!("{ct}/attention/linear_0"), &format!("{hf}.encoder_attn.q_proj"))?;
        split(&mut put, &format!("{ct}/attention/linear_1"), &format!("{hf}.encoder_attn"), &kv)?;
        linear(&mut put, &format!("{ct}/attention/linear_2"), &format!("{hf}.encoder_attn.out_proj"))?;
        norm(&mut put, &format!("{ct}/attention/layer_norm"), &format!("{hf}.encoder_attn_layer_norm"))?;
        linear(&mut put, &format!("{ct}/ffn/linear_0"), &format!("{hf}.fc1"))?;
        linear(&mut put, &format!("{ct}/ffn/linear_1"), &format!("{hf}.fc2"))?;
        norm(&mut put, &format!("{ct}/ffn/layer_norm"), &format!("{hf}.final_layer_norm"))?;
    }
    norm(&mut put, "decoder/layer_norm", &format!("{dd}.layer_norm"))?;
    Ok(out)
}

/// candle's Whisper encoder recomputes its positional embedding as Whisper's sinusoids instead of
/// loading it: refuse a model whose stored encodings differ (a fine-tune that trained them).
pub fn check_encoder_positions(m: &Ct2Model) -> Result<(), AsrError> {
    let stored = m.tensor("encoder/position_encodings/encodings", &Device::Cpu)?.to_dtype(DType::F32)?;
    let (len, channels) = stored.dims2()?;
    let half = channels / 2;
    if half < 2 {
        return Err(format_err(m.path(), format!("encoder positions of shape {:?}", stored.dims())));
    }
    let step = (10_000f64).ln() / (half - 1) as f64;
    let mut max_diff = 0f32;
    let rows = stored.to_vec2::<f32>()?;
    for (t, row) in rows.iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            let angle = t as f64 * (-((c % half) as f64) * step).exp();
            let want = if c < half { angle.sin() } else { angle.cos() };
            max_diff = max_diff.max((v - want as f32).abs());
        }
    }
    // fp16 storage rounds values in [-1, 1] by at most 2^-11.
    if max_diff > 1e-3 {
        return Err(format_err(m.path(), format!("the encoder's {len} stored positions differ from Whisper's sinusoids by up to {max_diff}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend(u16::try_from(s.len() + 1).expect("short").to_le_bytes());
        out.extend(s.as_bytes());
        out.push(0);
    }

    /// A small format-6 file: a 2x3 f16 matrix, an i16 scalar, and an alias of the matrix.
    fn sample() -> Vec<u8> {
        let mut b = 6u32.to_le_bytes().to_vec();
        string(&mut b, "WhisperSpec");
        b.extend(3u32.to_le_bytes());
        b.extend(2u32.to_le_bytes());
        string(&mut b, "m/weight");
        b.push(2);
        b.extend(2u32.to_le_bytes());
        b.extend(3u32.to_le_bytes());
        b.push(4);
        b.extend(12u32.to_le_bytes());
        for v in [1.0f32, -2.0, 0.5, 0.0, 3.0, 65504.0] {
            b.extend(half::f16::from_f32(v).to_le_bytes());
        }
        string(&mut b, "m/num_heads");
        b.push(0);
        b.push(2);
        b.extend(2u32.to_le_bytes());
        b.extend((-6i16).to_le_bytes());
        b.extend(1u32.to_le_bytes());
        string(&mut b, "tied/weight");
        string(&mut b, "m/weight");
        b
    }

    #[test]
    fn reads_tensors_scalars_and_aliases() {
        let m = Ct2Model::parse(Path::new("x.bin"), sample()).expect("parse");
        assert_eq!((m.spec.as_str(), m.revision), ("WhisperSpec", 3));
        assert_eq!(m.names().collect::<Vec<_>>(), ["m/num_heads", "m/weight"]);
        let t = m.tensor("tied/weight", &Device::Cpu).expect("alias").to_dtype(DType::F32).expect("f32");
        assert_eq!(t.to_vec2::<f32>().expect("2d"), [[1.0, -2.0, 0.5], [0.0, 3.0, 65504.0]]);
        assert_eq!(m.scalar("m/num_heads").expect("scalar"), -6);
        assert!(m.scalar("m/weight").is_err() && m.tensor("m/num_heads", &Device::Cpu).is_err());
        assert!(m.tensor("nope", &Device::Cpu).expect_err("missing").to_string().contains("no variable `nope`"));
    }

    #[test]
    fn every_truncation_is_an_error_naming_the_file_never_a_panic() {
        let b = sample();
        for cut in 0..b.len() {
            let err = Ct2Model::parse(Path::new("/m/model.bin"), b[..cut].to_vec()).expect_err("truncated");
            let msg = err.to_string();
            assert!(msg.starts_with("`/m/model.bin`") && msg.contains("truncated"), "cut {cut}: {msg}");
        }
    }

    #[test]
    fn inconsistent_sizes_and_unknown_dtypes_are_refused() {
        let mut b = sample();
        // The matrix's byte count (after version, spec, revision, count, name, rank, dims, dtype).
        let at = 4 + 2 + 12 + 4 + 4 + 2 + 9 + 1 + 8 + 1;
        b[at..at + 4].copy_from_slice(&10u32.to_le_bytes());
        let msg = Ct2Model::parse(Path::new("m.bin"), b).expect_err("size").to_string();
        assert!(msg.contains("do not hold a F16 tensor of shape [2, 3]"), "{msg}");
        let mut b = sample();
        b[at - 1] = 9;
        let msg = Ct2Model::parse(Path::new("m.bin"), b).expect_err("dtype").to_string();
        assert!(msg.contains("unknown dtype id 9"), "{msg}");
    }
}
