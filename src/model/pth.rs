//! A safe reader of PyTorch checkpoints (`torch.save`'s zip format: `<archive>/data.pkl` plus one
//! `<archive>/data/<key>` file per storage).
//!
//! The pickle is run by a small stack machine of its own that knows tensors and plain containers only
//! (dict / `OrderedDict`, list, tuple, str, bytes, int, float, bool, None). The only globals it accepts are
//! the ones `torch.save` of a state dict emits ([`ALLOWED_GLOBALS`] and the `torch.*Storage` types); any
//! other global (`posix.system`, `builtins.eval`, an OmegaConf class, ...) refuses the whole file the moment
//! its opcode is read, wherever it sits in the pickle. Nothing is ever called: `_rebuild_tensor_v2` only
//! records where a tensor's elements are, and [`TensorRef::load`] reads them (views with an offset or
//! strides included). The legacy (pre-1.6, non-zip) format is refused.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use candle_core::{DType, Device, Tensor};

/// The globals accepted besides the `torch.<Kind>Storage` types (see [`Elem`]).
pub const ALLOWED_GLOBALS: [&str; 3] = ["torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter", "collections.OrderedDict"];

/// How a legacy (pre-1.6) `torch.save` file starts: protocol 2, then the pickled magic number
/// 0x1950a86a20f9469cfc6c.
const LEGACY_MAGIC: [u8; 14] = *b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";

/// The largest `data.pkl` read (a state dict's pickle is kilobytes to a few megabytes).
const MAX_PICKLE_BYTES: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum PthError {
    #[error("`{path}`: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(
        "`{path}` is a legacy (pre-1.6, non-zip) PyTorch checkpoint, which this reader does not support: re-save it with a current PyTorch \
         (`torch.save(torch.load(f, weights_only=True), f2)`) and import that"
    )]
    Legacy { path: String },
    #[error("`{path}` is not a PyTorch checkpoint (expected the zip format written by torch.save): {detail}")]
    NotCheckpoint { path: String, detail: String },
    #[error(
        "`{path}`: refusing the pickle global `{global}` (nothing was executed): only tensors and plain containers are read. \
         A checkpoint that needs it is not a plain state dict; if you trust the file, re-save its tensors with `torch.save(state_dict)`"
    )]
    ForbiddenGlobal { path: String, global: String },
    #[error("`{path}`: malformed or unsupported pickle at byte {offset}: {detail}")]
    Pickle { path: String, offset: usize, detail: String },
    #[error("`{path}`: tensor `{name}`: {detail}")]
    Tensor { path: String, name: String, detail: String },
}

/// Element type of a storage, from its `torch.<Kind>Storage` global.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl Elem {
    fn from_storage(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::F32,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "DoubleStorage" => Self::F64,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }

    /// The candle dtype holding these elements as they are (None: candle has no such dtype).
    pub fn dtype(self) -> Option<DType> {
        match self {
            Self::F32 => Some(DType::F32),
            Self::F16 => Some(DType::F16),
            Self::BF16 => Some(DType::BF16),
            Self::F64 => Some(DType::F64),
            Self::I64 => Some(DType::I64),
            Self::U8 => Some(DType::U8),
            _ => None,
        }
    }
}

/// A global the reader accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    RebuildTensorV2,
    RebuildParameter,
    OrderedDict,
    Storage(Elem),
}

impl Global {
    /// `module.name` if allowed; `None` refuses it.
    fn parse(module: &str, name: &str) -> Option<Self> {
        match (module, name) {
            ("torch._utils", "_rebuild_tensor_v2") => Some(Self::RebuildTensorV2),
            ("torch._utils", "_rebuild_parameter") => Some(Self::RebuildParameter),
            ("collections", "OrderedDict") => Some(Self::OrderedDict),
            ("torch", s) => Elem::from_storage(s).map(Self::Storage),
            _ => None,
        }
    }
}

/// One storage named by a persistent id: `data/<key>` in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRef {
    pub key: String,
    pub elem: Elem,
    /// Elements in the storage.
    pub numel: usize,
}

/// Where a tensor's elements are; [`TensorRef::load`] reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    pub storage: StorageRef,
    /// In elements.
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

impl TensorRef {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The bytes the tensor's elements take.
    pub fn nbytes(&self) -> u64 {
        (self.numel() * self.storage.elem.size()) as u64
    }
}

/// A pickled value: tensors and plain containers only.
#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Rc<Items>),
    List(Rc<RefCell<Items>>),
    Dict(Rc<RefCell<Pairs>>),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

/// The items of a tuple or list. Containers are dropped without recursion ([`dismantle`]), so a pickle
/// nested a million deep cannot overflow the stack.
#[derive(Debug, Default)]
pub struct Items(pub Vec<Value>);

/// The entries of a dict, in insertion order.
#[derive(Debug, Default)]
pub struct Pairs(pub Vec<(Value, Value)>);

impl std::ops::Deref for Items {
    type Target = Vec<Value>;
    fn deref(&self) -> &Vec<Value> {
        &self.0
    }
}

impl std::ops::DerefMut for Items {
    fn deref_mut(&mut self) -> &mut Vec<Value> {
        &mut self.0
    }
}

impl std::ops::Deref for Pairs {
    type Target = Vec<(Value, Value)>;
    fn deref(&self) -> &Vec<(Value, Value)> {
        &self.0
    }
}

impl std::ops::DerefMut for Pairs {
    fn deref_mut(&mut self) -> &mut Vec<(Value, Value)> {
        &mut self.0
    }
}

impl Drop for Items {
    fn drop(&mut self) {
        dismantle(std::mem::take(&mut self.0));
    }
}

impl Drop for Pairs {
    fn drop(&mut self) {
        dismantle(std::mem::take(&mut self.0).into_iter().flat_map(|(k, v)| [k, v]).collect());
    }
}

/// Drops values iteratively: a container this is the last owner of gives up its items to the work list
/// before it is dropped (empty), so nesting depth never becomes recursion depth.
fn dismantle(mut work: Vec<Value>) {
    while let Some(v) = work.pop() {
        match v {
            Value::Tuple(rc) => {
                if let Ok(mut items) = Rc::try_unwrap(rc) {
                    work.append(&mut items.0);
                }
            }
            Value::List(rc) => {
                if let Ok(cell) = Rc::try_unwrap(rc) {
                    work.append(&mut cell.into_inner().0);
                }
            }
            Value::Dict(rc) => {
                if let Ok(cell) = Rc::try_unwrap(rc) {
                    work.extend(std::mem::take(&mut cell.into_inner().0).into_iter().flat_map(|(k, v)| [k, v]));
                }
            }
            _ => {}
        }
    }
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The entry of a dict under the string key `key`.
    pub fn get(&self, key: &str) -> Option<Value> {
        match self {
            Self::Dict(d) => d.borrow().iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v.clone()),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Self::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Int(i) => Some(*i as f64),
            Self::Float(f) => Some(*f),
            _ => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::None => "None",
            Self::Bool(_) => "bool",
            Self::Int(_) => "int",
            Self::Float(_) => "float",
            Self::Str(_) => "str",
            Self::Bytes(_) => "bytes",
            Self::Tuple(_) => "tuple",
            Self::List(_) => "list",
            Self::Dict(_) => "dict",
            Self::Global(_) => "global",
            Self::Storage(_) => "storage",
            Self::Tensor(_) => "tensor",
        }
    }
}

/// Runs a pickle with the allow-list; `path` names the file in errors.
pub fn unpickle(bytes: &[u8], path: &str) -> Result<Value, PthError> {
    Machine { bytes, pos: 0, path, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() }.run()
}

struct Machine<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a str,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl Machine<'_> {
    fn err(&self, detail: impl Into<String>) -> PthError {
        PthError::Pickle { path: self.path.to_string(), offset: self.pos, detail: detail.into() }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], PthError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| self.err("truncated"))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, PthError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, PthError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, PthError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, PthError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn len(&mut self, n: u64) -> Result<usize, PthError> {
        usize::try_from(n).ok().filter(|&n| n <= self.bytes.len() - self.pos).ok_or_else(|| self.err(format!("length {n} past the end of the pickle")))
    }

    fn string(&mut self, n: usize) -> Result<String, PthError> {
        let b = self.take(n)?.to_vec();
        String::from_utf8(b).map_err(|_| self.err("a string that is not UTF-8"))
    }

    fn line(&mut self) -> Result<String, PthError> {
        let rest = &self.bytes[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or_else(|| self.err("unterminated line"))?;
        let s = self.string(end)?;
        self.pos += 1;
        Ok(s)
    }

    fn pop(&mut self) -> Result<Value, PthError> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(self.err("pop across a mark"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn top(&mut self) -> Result<&mut Value, PthError> {
        let e = self.err("stack underflow");
        self.stack.last_mut().ok_or(e)
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PthError> {
        let m = self.marks.pop().ok_or_else(|| self.err("no mark"))?;
        if m > self.stack.len() {
            return Err(self.err("mark past the stack"));
        }
        Ok(self.stack.split_off(m))
    }

    fn global(&self, module: &str, name: &str) -> Result<Value, PthError> {
        Global::parse(module, name)
            .map(Value::Global)
            .ok_or_else(|| PthError::ForbiddenGlobal { path: self.path.to_string(), global: format!("{module}.{name}") })
    }

    fn put(&mut self, id: u32) -> Result<(), PthError> {
        let v = self.stack.last().cloned().ok_or_else(|| self.err("memo of an empty stack"))?;
        self.memo.insert(id, v);
        Ok(())
    }

    fn get(&mut self, id: u32) -> Result<(), PthError> {
        let v = self.memo.get(&id).cloned().ok_or_else(|| self.err(format!("memo {id} unset")))?;
        self.stack.push(v);
        Ok(())
    }

    fn set_items(&mut self, target: &Value, items: Vec<Value>) -> Result<(), PthError> {
        let Value::Dict(d) = target else { return Err(self.err(format!("SETITEM(S) on a {}", target.kind()))) };
        if !items.len().is_multiple_of(2) {
            return Err(self.err("SETITEMS with an odd number of items"));
        }
        let mut d = d.borrow_mut();
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            // A repeated key replaces the earlier value, as in Python.
            match d.iter_mut().find(|(old, _)| same_key(old, &k)) {
                Some(slot) => slot.1 = v,
                None => d.push((k, v)),
            }
        }
        Ok(())
    }

    fn append(&mut self, target: &Value, items: Vec<Value>) -> Result<(), PthError> {
        match target {
            Value::List(l) => {
                l.borrow_mut().extend(items);
                Ok(())
            }
            other => Err(self.err(format!("APPEND(S) on a {}", other.kind()))),
        }
    }

    fn reduce(&self, callable: Value, args: Value) -> Result<Value, PthError> {
        let Value::Tuple(args) = args else { return Err(self.err("REDUCE arguments are not a tuple")) };
        let Value::Global(g) = callable else { return Err(self.err(format!("REDUCE of a {}", callable.kind()))) };
        match g {
            Global::OrderedDict => {
                let d = Rc::new(RefCell::new(Pairs::default()));
                if let Some(items) = args.first() {
                    let Value::List(items) = items else { return Err(self.err("OrderedDict(...) of something but a list of pairs")) };
                    for pair in items.borrow().iter() {
                        match pair {
                            Value::Tuple(kv) if kv.len() == 2 => d.borrow_mut().push((kv[0].clone(), kv[1].clone())),
                            _ => return Err(self.err("OrderedDict(...) item is not a pair")),
                        }
                    }
                }
                Ok(Value::Dict(d))
            }
            Global::RebuildParameter => match args.first() {
                Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                _ => Err(self.err("_rebuild_parameter without a tensor")),
            },
            Global::RebuildTensorV2 => {
                if args.len() < 4 {
                    return Err(self.err(format!("_rebuild_tensor_v2 with {} arguments", args.len())));
                }
                let Value::Storage(storage) = &args[0] else { return Err(self.err("_rebuild_tensor_v2 without a storage")) };
                let offset = self.index(&args[1], "storage offset")?;
                let shape = self.ints(&args[2], "size")?;
                let stride = self.ints(&args[3], "stride")?;
                if shape.len() != stride.len() {
                    return Err(self.err(format!("size {shape:?} and stride {stride:?} differ in rank")));
                }
                Ok(Value::Tensor(Rc::new(TensorRef { storage: (**storage).clone(), offset, shape, stride })))
            }
            Global::Storage(_) => Err(self.err("a storage type called directly (not through a persistent id)")),
        }
    }

    fn index(&self, v: &Value, what: &str) -> Result<usize, PthError> {
        v.as_int().and_then(|i| usize::try_from(i).ok()).ok_or_else(|| self.err(format!("{what} is not a non-negative int")))
    }

    fn ints(&self, v: &Value, what: &str) -> Result<Vec<usize>, PthError> {
        let Value::Tuple(t) = v else { return Err(self.err(format!("{what} is not a tuple"))) };
        t.iter().map(|x| self.index(x, what)).collect()
    }

    fn persistent(&self, pid: Value) -> Result<Value, PthError> {
        let Value::Tuple(t) = pid else { return Err(self.err("persistent id is not a tuple")) };
        match t.as_slice() {
            [Value::Str(tag), Value::Global(Global::Storage(elem)), key, _location, numel] if tag == "storage" => {
                let key = match key {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    _ => return Err(self.err("storage key is not a string")),
                };
                if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(self.err(format!("storage key {key:?} is not a plain name")));
                }
                Ok(Value::Storage(Rc::new(StorageRef { key, elem: *elem, numel: self.index(numel, "storage size")? })))
            }
            _ => Err(self.err("persistent id is not ('storage', torch.<Kind>Storage, key, location, numel)")),
        }
    }

    fn run(mut self) -> Result<Value, PthError> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(self.err(format!("pickle protocol {proto}")));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint
                }
                b'.' => return self.pop(),
                b'}' => self.stack.push(Value::Dict(Rc::default())),
                b']' => self.stack.push(Value::List(Rc::default())),
                b')' => self.stack.push(Value::Tuple(Rc::default())),
                b'(' => self.marks.push(self.stack.len()),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v.into()));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v.into()));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v.into()));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { u64::from(self.u8()?) } else { u64::from(self.u32()?) };
                    let n = self.len(n)?;
                    if n > 8 {
                        return Err(self.err(format!("an integer of {n} bytes")));
                    }
                    let b = self.take(n)?;
                    let mut a = if b.last().is_some_and(|&x| x & 0x80 != 0) { [0xffu8; 8] } else { [0u8; 8] };
                    a[..n].copy_from_slice(b);
                    self.stack.push(Value::Int(i64::from_le_bytes(a)));
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.stack.push(Value::Float(f64::from_be_bytes(a)));
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        0x8c => u64::from(self.u8()?),
                        b'X' => u64::from(self.u32()?),
                        _ => self.u64()?,
                    };
                    let n = self.len(n)?;
                    let s = self.string(n)?;
                    self.stack.push(Value::Str(s));
                }
                b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'C' => u64::from(self.u8()?),
                        b'B' => u64::from(self.u32()?),
                        _ => self.u64()?,
                    };
                    let n = self.len(n)?;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b));
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(&module, &name)?;
                    self.stack.push(g);
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => {
                            let g = self.global(&m, &n)?;
                            self.stack.push(g);
                        }
                        _ => return Err(self.err("STACK_GLOBAL of non-strings")),
                    }
                }
                b'i' => {
                    // INST: a protocol-0 instance creation; its class is refused like any global.
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(&module, &name)?;
                    return Err(self.err(format!("INST of `{module}.{name}`")));
                }
                b'q' => {
                    let id = self.u8()?.into();
                    self.put(id)?;
                }
                b'r' => {
                    let id = self.u32()?;
                    self.put(id)?;
                }
                0x94 => {
                    let id = u32::try_from(self.memo.len()).map_err(|_| self.err("memo overflow"))?;
                    self.put(id)?;
                }
                b'h' => {
                    let id = self.u8()?.into();
                    self.get(id)?;
                }
                b'j' => {
                    let id = self.u32()?;
                    self.get(id)?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(Rc::new(Items(items))));
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < n || self.marks.last().is_some_and(|&m| m > self.stack.len() - n) {
                        return Err(self.err("TUPLE with too few items"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(Rc::new(Items(items))));
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let target = self.top()?.clone();
                    self.set_items(&target, vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let target = self.top()?.clone();
                    self.set_items(&target, items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    let target = self.top()?.clone();
                    self.append(&target, vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let target = self.top()?.clone();
                    self.append(&target, items)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.stack.push(v);
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.stack.push(v);
                }
                b'b' => {
                    // BUILD: the state of an OrderedDict (a state dict's `_metadata`) or of a tensor; it
                    // sets attributes this reader has no use for.
                    let _state = self.pop()?;
                    match self.top()? {
                        Value::Dict(_) | Value::Tensor(_) => {}
                        other => {
                            let k = other.kind();
                            return Err(self.err(format!("BUILD on a {k}")));
                        }
                    }
                }
                other => {
                    self.pos = at;
                    return Err(self.err(format!("opcode 0x{other:02x} is not supported")));
                }
            }
        }
    }
}

fn same_key(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Str(x), Value::Str(y)) => x == y,
        (Value::Int(x), Value::Int(y)) => x == y,
        _ => false,
    }
}

/// An opened checkpoint: the archive, its pickled object, and where its storages are.
pub struct Checkpoint {
    path: PathBuf,
    archive: zip::ZipArchive<std::fs::File>,
    /// `<archive>/` (the folder that holds `data.pkl`).
    prefix: String,
    pub root: Value,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint").field("path", &self.path).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl Checkpoint {
    /// Opens `path` and runs its pickle through the allow-list (no tensor data is read yet).
    pub fn open(path: &Path) -> Result<Self, PthError> {
        let p = path.display().to_string();
        let io = |source| PthError::Io { path: p.clone(), source };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mut magic = [0u8; LEGACY_MAGIC.len()];
        let mut n = 0;
        while n < magic.len() {
            match file.read(&mut magic[n..]).map_err(io)? {
                0 => break,
                k => n += k,
            }
        }
        if magic.starts_with(b"PK\x03\x04") {
            // The zip format.
        } else if n == magic.len() && magic == LEGACY_MAGIC {
            return Err(PthError::Legacy { path: p });
        } else if n > 0 && magic[0] == 0x80 {
            return Err(PthError::NotCheckpoint { path: p, detail: "a bare pickle, not torch.save's zip archive".into() });
        } else {
            return Err(PthError::NotCheckpoint { path: p, detail: "it is not a zip archive".into() });
        }
        let file = std::fs::File::open(path).map_err(io)?;
        let mut archive = zip::ZipArchive::new(file).map_err(|e| PthError::NotCheckpoint { path: p.clone(), detail: e.to_string() })?;
        let pickles: Vec<String> =
            archive.file_names().filter_map(|n| n.ok()).map(|n| n.to_string()).filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1).collect();
        let [pkl] = pickles.as_slice() else {
            return Err(PthError::NotCheckpoint { path: p, detail: format!("expected one `<archive>/data.pkl`, found {}", pickles.len()) });
        };
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        if let Ok(mut order) = archive.by_name(&format!("{prefix}byteorder")) {
            let mut s = String::new();
            order.read_to_string(&mut s).map_err(io)?;
            if s.trim() != "little" {
                return Err(PthError::NotCheckpoint { path: p, detail: format!("byte order `{}` (only little-endian checkpoints are read)", s.trim()) });
            }
        }
        let mut entry = archive.by_name(pkl).map_err(|e| PthError::NotCheckpoint { path: p.clone(), detail: e.to_string() })?;
        if entry.size() > MAX_PICKLE_BYTES {
            return Err(PthError::NotCheckpoint { path: p, detail: format!("`{pkl}` is {} bytes, more than a state dict's pickle", entry.size()) });
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).map_err(io)?;
        drop(entry);
        let root = unpickle(&bytes, &p)?;
        Ok(Self { path: path.to_path_buf(), archive, prefix, root })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state dict: `checkpoint["model"]` when the root is a checkpoint dict holding one, else the root
    /// itself when it is a dict of tensors. Entries in file order; a non-tensor value in it is an error.
    pub fn state_dict(&self) -> Result<Vec<(String, TensorRef)>, PthError> {
        let p = self.path.display().to_string();
        let bad = |detail: String| PthError::NotCheckpoint { path: p.clone(), detail };
        let dict = match self.root.get("model") {
            Some(m @ Value::Dict(_)) => m,
            Some(other) => return Err(bad(format!("`model` is a {}, not a state dict", other.kind()))),
            None => self.root.clone(),
        };
        let Value::Dict(d) = &dict else { return Err(bad(format!("the pickled object is a {}, not a dict", dict.kind()))) };
        let mut out = Vec::new();
        for (k, v) in d.borrow().iter() {
            let Value::Str(name) = k else { return Err(bad(format!("a state-dict key that is a {}, not a string", k.kind()))) };
            match v {
                Value::Tensor(t) => out.push((name.clone(), (**t).clone())),
                other => return Err(bad(format!("state-dict entry `{name}` is a {}, not a tensor (a checkpoint dict without `model`?)", other.kind()))),
            }
        }
        Ok(out)
    }

    /// Reads tensor `name`'s elements (as stored: its view's offset and strides applied) onto the CPU in
    /// its own dtype.
    pub fn load(&mut self, name: &str, t: &TensorRef) -> Result<Tensor, PthError> {
        let p = self.path.display().to_string();
        let terr = |detail: String| PthError::Tensor { path: p.clone(), name: name.to_string(), detail };
        let dtype = t.storage.elem.dtype().ok_or_else(|| terr(format!("element type {:?} is not supported", t.storage.elem)))?;
        let es = t.storage.elem.size();
        let entry_name = format!("{}data/{}", self.prefix, t.storage.key);
        let mut entry = self.archive.by_name(&entry_name).map_err(|e| terr(format!("storage `{entry_name}`: {e}")))?;
        let want = (t.storage.numel as u64).checked_mul(es as u64).ok_or_else(|| terr("storage size overflows".into()))?;
        // torch.save stores storages uncompressed; a compressed one could inflate past what the file holds.
        if entry.compression() != zip::CompressionMethod::Stored {
            return Err(terr(format!("storage `{entry_name}` is compressed ({:?}); torch.save stores them uncompressed", entry.compression())));
        }
        if entry.size() != want {
            return Err(terr(format!("storage `{entry_name}` holds {} bytes, its pickle says {want}", entry.size())));
        }
        let mut raw = Vec::with_capacity(want as usize);
        entry.read_to_end(&mut raw).map_err(|e| terr(format!("reading storage `{entry_name}`: {e}")))?;
        let bytes = strided_copy(&raw, es, t).map_err(terr)?;
        Tensor::from_raw_buffer(&bytes, dtype, &t.shape, &Device::Cpu).map_err(|e| terr(e.to_string()))
    }
}

/// The tensor's elements, contiguous, from its storage's bytes (`es` bytes per element).
fn strided_copy(raw: &[u8], es: usize, t: &TensorRef) -> Result<Vec<u8>, String> {
    let numel = t.numel();
    let storage = raw.len() / es;
    if numel == 0 {
        return Ok(Vec::new());
    }
    // The last element the view reaches must lie inside the storage.
    let mut last = t.offset;
    for (&n, &s) in t.shape.iter().zip(&t.stride) {
        last = (n - 1).checked_mul(s).and_then(|x| x.checked_add(last)).ok_or("view overflows")?;
    }
    if last >= storage {
        return Err(format!("view (offset {}, size {:?}, stride {:?}) reaches element {last} of a storage of {storage}", t.offset, t.shape, t.stride));
    }
    let mut out = Vec::with_capacity(numel * es);
    let mut contiguous = true;
    let mut expect = 1;
    for (&n, &s) in t.shape.iter().zip(&t.stride).rev() {
        if n != 1 && s != expect {
            contiguous = false;
        }
        expect *= n;
    }
    if contiguous {
        out.extend_from_slice(&raw[t.offset * es..(t.offset + numel) * es]);
        return Ok(out);
    }
    let mut idx = vec![0usize; t.shape.len()];
    for _ in 0..numel {
        let at = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(&raw[at * es..(at + 1) * es]);
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < t.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refuse(pickle: &[u8]) -> String {
        match unpickle(pickle, "x.pkl") {
            Err(PthError::ForbiddenGlobal { global, .. }) => global,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn globals_outside_the_allow_list_are_refused_by_name() {
        // pickle.dumps of os.system("true") via __reduce__, protocol 2 and 4.
        assert_eq!(refuse(b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03."), "posix.system");
        assert_eq!(refuse(b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x011\x85R."), "builtins.eval");
        assert_eq!(refuse(b"\x80\x02cposix\nsystem\n."), "posix.system");
    }

    #[test]
    fn deep_nesting_neither_recurses_nor_overflows() {
        let n = 1_000_000;
        // A tuple nested n deep (TUPLE1 over and over), and a list nested n deep (n lists, n - 1 APPENDs).
        let mut tuple = b"\x80\x02)".to_vec();
        tuple.extend(std::iter::repeat_n(0x85u8, n));
        tuple.push(b'.');
        let mut list = b"\x80\x02".to_vec();
        list.extend(std::iter::repeat_n(b']', n));
        list.extend(std::iter::repeat_n(b'a', n - 1));
        list.push(b'.');
        for bytes in [tuple, list] {
            let v = unpickle(&bytes, "deep").expect("parses");
            assert!(matches!(v, Value::Tuple(_) | Value::List(_)));
            drop(v);
        }
    }

    #[test]
    fn plain_containers_and_views() {
        // {"a": [1, 2.5, None, True], "b": (u"x",)} at protocol 2.
        let v = unpickle(b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01G@\x04\x00\x00\x00\x00\x00\x00N\x88eX\x01\x00\x00\x00bq\x03X\x01\x00\x00\x00xq\x04\x85q\x05u.", "t").unwrap();
        let Some(Value::List(l)) = v.get("a") else { panic!("{v:?}") };
        assert_eq!(l.borrow().len(), 4);
        assert_eq!(l.borrow()[1].as_f64(), Some(2.5));
        // A transposed 2x3 view at offset 1 of a 7-element storage.
        let raw: Vec<u8> = (0u8..7).collect();
        let t = TensorRef { storage: StorageRef { key: "0".into(), elem: Elem::U8, numel: 7 }, offset: 1, shape: vec![3, 2], stride: vec![1, 3] };
        assert_eq!(strided_copy(&raw, 1, &t).unwrap(), vec![1, 4, 2, 5, 3, 6]);
        let far = TensorRef { offset: 2, ..t };
        assert!(strided_copy(&raw, 1, &far).unwrap_err().contains("reaches element 7"));
    }
}
