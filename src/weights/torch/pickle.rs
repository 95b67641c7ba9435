//! The pickle of a `torch.save` archive (`data.pkl`), read by a small stack machine that builds
//! values and never runs code: besides plain containers and numbers it knows only what tensors
//! are made of: the persistent id of a storage (`('storage', torch.FloatStorage, key, location,
//! numel)`), `torch._utils._rebuild_tensor_v2` (and `_rebuild_tensor`, `_rebuild_parameter`)
//! and `collections.OrderedDict`. Any other global is refused by name, so a hostile pickle cannot
//! do more than fail.

use std::cell::RefCell;
use std::rc::Rc;

/// An element type of a torch storage, named by its storage class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TorchDType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl TorchDType {
    fn from_storage_class(name: &str) -> Option<Self> {
        Some(match name {
            "DoubleStorage" => TorchDType::F64,
            "FloatStorage" => TorchDType::F32,
            "HalfStorage" => TorchDType::F16,
            "BFloat16Storage" => TorchDType::BF16,
            "LongStorage" => TorchDType::I64,
            "IntStorage" => TorchDType::I32,
            "ShortStorage" => TorchDType::I16,
            "CharStorage" => TorchDType::I8,
            "ByteStorage" => TorchDType::U8,
            "BoolStorage" => TorchDType::Bool,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            TorchDType::F64 | TorchDType::I64 => 8,
            TorchDType::F32 | TorchDType::I32 => 4,
            TorchDType::F16 | TorchDType::BF16 | TorchDType::I16 => 2,
            TorchDType::I8 | TorchDType::U8 | TorchDType::Bool => 1,
        }
    }
}

/// A storage the pickle refers to: record `data/{key}` of the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageRef {
    pub dtype: TorchDType,
    pub key: String,
    pub numel: usize,
}

/// A tensor: a strided view of a storage (offset and strides in elements).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

/// A pickled list's or dict's items, shared (see `Value`).
pub type Shared<T> = Rc<RefCell<Vec<T>>>;

/// What the machine builds. Lists and dicts are shared (`Rc`), as the pickle's memo shares them:
/// items added after an object is memoized must show wherever it is fetched again.
#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Shared<Value>),
    Dict(Shared<(Value, Value)>),
    Global(String, String),
    Storage(StorageRef),
    Tensor(TensorRef),
}

struct Machine<'a> {
    bytes: &'a [u8],
    at: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: Vec<Option<Value>>,
}

/// Runs the pickle in `bytes` and returns the object it builds. Errors say what is wrong in
/// words; the caller names the file.
pub fn load(bytes: &[u8]) -> Result<Value, String> {
    let mut m = Machine { bytes, at: 0, stack: Vec::new(), marks: Vec::new(), memo: Vec::new() };
    loop {
        let op = m.take(1)?[0];
        match op {
            0x80 => drop(m.take(1)?),            // PROTO
            0x95 => drop(m.take(8)?),            // FRAME (protocol 4): framing only
            b'.' => return m.pop(),              // STOP
            b'(' => m.marks.push(m.stack.len()), // MARK
            b'N' => m.stack.push(Value::None),
            0x88 => m.stack.push(Value::Bool(true)),
            0x89 => m.stack.push(Value::Bool(false)),
            b'K' => {
                let v = m.take(1)?[0] as i64;
                m.stack.push(Value::Int(v))
            }
            b'M' => {
                let v = m.uint(2)? as i64;
                m.stack.push(Value::Int(v))
            }
            b'J' => {
                let v = m.uint(4)? as u32 as i32 as i64;
                m.stack.push(Value::Int(v))
            }
            0x8a => {
                let n = m.take(1)?[0] as usize;
                let v = long(m.take(n)?)?;
                m.stack.push(Value::Int(v))
            }
            b'G' => {
                let v = f64::from_be_bytes(m.take(8)?.try_into().map_err(|_| "bad float")?);
                m.stack.push(Value::Float(v))
            }
            b'X' | 0x8c | 0x8d | b'T' | b'U' => {
                let n = match op {
                    b'X' | b'T' => m.uint(4)?,
                    0x8c | b'U' => m.take(1)?[0] as u64,
                    _ => m.uint(8)?,
                };
                let n = usize::try_from(n).map_err(|_| "string too long")?;
                let s = String::from_utf8_lossy(m.take(n)?).into_owned();
                m.stack.push(Value::Str(s))
            }
            b'B' | b'C' => {
                let n = if op == b'B' { m.uint(4)? } else { m.take(1)?[0] as u64 };
                let b = m.take(usize::try_from(n).map_err(|_| "bytes too long")?)?.to_vec();
                m.stack.push(Value::Bytes(b))
            }
            b')' => m.stack.push(Value::Tuple(Vec::new())),
            b']' => m.stack.push(Value::List(Rc::new(RefCell::new(Vec::new())))),
            b'}' => m.stack.push(Value::Dict(Rc::new(RefCell::new(Vec::new())))),
            b't' => {
                let items = m.pop_mark()?;
                m.stack.push(Value::Tuple(items))
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let items = m.stack.split_off(m.stack.len().checked_sub(n).ok_or("stack underflow")?);
                m.stack.push(Value::Tuple(items))
            }
            b'l' => {
                let items = m.pop_mark()?;
                m.stack.push(Value::List(Rc::new(RefCell::new(items))))
            }
            b'd' => {
                let items = m.pop_mark()?;
                m.stack.push(Value::Dict(Rc::new(RefCell::new(pairs(items)?))))
            }
            b'a' => {
                let v = m.pop()?;
                m.list_top()?.borrow_mut().push(v)
            }
            b'e' => {
                let items = m.pop_mark()?;
                m.list_top()?.borrow_mut().extend(items)
            }
            b's' => {
                let v = m.pop()?;
                let k = m.pop()?;
                m.dict_top()?.borrow_mut().push((k, v))
            }
            b'u' => {
                let items = m.pop_mark()?;
                m.dict_top()?.borrow_mut().extend(pairs(items)?)
            }
            b'c' => {
                let module = m.line()?;
                let name = m.line()?;
                m.stack.push(Value::Global(module, name))
            }
            0x93 => {
                let name = m.pop()?;
                let module = m.pop()?;
                match (module, name) {
                    (Value::Str(module), Value::Str(name)) => m.stack.push(Value::Global(module, name)),
                    _ => return Err("STACK_GLOBAL without a module and a name".into()),
                }
            }
            b'q' | b'r' => {
                let i = if op == b'q' { m.take(1)?[0] as u64 } else { m.uint(4)? };
                m.put(i as usize)?
            }
            0x94 => {
                let i = m.memo.len();
                m.put(i)?
            }
            b'h' | b'j' => {
                let i = if op == b'h' { m.take(1)?[0] as u64 } else { m.uint(4)? } as usize;
                let v =
                    m.memo.get(i).cloned().flatten().ok_or_else(|| format!("memo entry {i} used before it is set"))?;
                m.stack.push(v)
            }
            b'Q' => {
                let pid = m.pop()?;
                m.stack.push(Value::Storage(storage(pid)?))
            }
            b'R' | 0x81 => {
                let args = m.pop()?;
                let callable = m.pop()?;
                m.stack.push(call(callable, args)?)
            }
            b'b' => drop(m.pop()?), // BUILD: an object's state (a state dict's _metadata) is not needed
            b'0' => drop(m.pop()?),
            b'1' => drop(m.pop_mark()?),
            b'2' => {
                let top = m.stack.last().cloned().ok_or("stack underflow")?;
                m.stack.push(top)
            }
            other => return Err(format!("pickle opcode 0x{other:02x} at byte {} is not supported", m.at - 1)),
        }
    }
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or("the pickle is cut short")?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn uint(&mut self, n: usize) -> Result<u64, String> {
        Ok(self.take(n)?.iter().rev().fold(0u64, |v, &b| (v << 8) | b as u64))
    }

    fn line(&mut self) -> Result<String, String> {
        let rest = &self.bytes[self.at..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or("GLOBAL without its newline")?;
        let s = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.at += end + 1;
        Ok(s)
    }

    fn pop(&mut self) -> Result<Value, String> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("a value is taken across a MARK".into());
        }
        self.stack.pop().ok_or_else(|| "stack underflow".into())
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self.marks.pop().ok_or("no MARK to pop to")?;
        Ok(self.stack.split_off(mark.min(self.stack.len())))
    }

    fn put(&mut self, i: usize) -> Result<(), String> {
        let top = self.stack.last().cloned().ok_or("stack underflow")?;
        if i >= self.memo.len() {
            if i > 1 << 24 {
                return Err(format!("memo index {i} is out of range"));
            }
            self.memo.resize(i + 1, None);
        }
        self.memo[i] = Some(top);
        Ok(())
    }

    fn list_top(&self) -> Result<Shared<Value>, String> {
        match self.stack.last() {
            Some(Value::List(l)) => Ok(l.clone()),
            _ => Err("APPEND to something that is not a list".into()),
        }
    }

    fn dict_top(&self) -> Result<Shared<(Value, Value)>, String> {
        match self.stack.last() {
            Some(Value::Dict(d)) => Ok(d.clone()),
            _ => Err("SETITEM to something that is not a dict".into()),
        }
    }
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err("a dict's items are not key-value pairs".into());
    }
    let mut it = items.into_iter();
    Ok(std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect())
}

/// A little-endian two's-complement integer of up to 8 bytes (LONG1).
fn long(bytes: &[u8]) -> Result<i64, String> {
    if bytes.len() > 8 {
        return Err("an integer wider than 64 bits".into());
    }
    if bytes.is_empty() {
        return Ok(0);
    }
    let negative = bytes[bytes.len() - 1] & 0x80 != 0;
    let mut buf = [if negative { 0xFF } else { 0 }; 8];
    buf[..bytes.len()].copy_from_slice(bytes);
    Ok(i64::from_le_bytes(buf))
}

fn as_usize(v: &Value, what: &str) -> Result<usize, String> {
    match v {
        Value::Int(i) => usize::try_from(*i).map_err(|_| format!("{what} {i} is negative")),
        other => Err(format!("{what} is not an integer: {other:?}")),
    }
}

fn as_usizes(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    match v {
        Value::Tuple(items) => items.iter().map(|x| as_usize(x, what)).collect(),
        Value::List(items) => items.borrow().iter().map(|x| as_usize(x, what)).collect(),
        other => Err(format!("{what} is not a tuple: {other:?}")),
    }
}

/// `('storage', torch.XStorage, key, location, numel)`: what `torch.save` writes for a storage.
fn storage(pid: Value) -> Result<StorageRef, String> {
    let Value::Tuple(items) = pid else { return Err(format!("a persistent id that is not a tuple: {pid:?}")) };
    match items.as_slice() {
        [Value::Str(tag), Value::Global(module, class), Value::Str(key), _location, numel] if tag == "storage" => {
            let dtype = TorchDType::from_storage_class(class)
                .filter(|_| module == "torch")
                .ok_or_else(|| format!("storage class `{module}.{class}` is not one this reader knows"))?;
            Ok(StorageRef { dtype, key: key.clone(), numel: as_usize(numel, "a storage's size")? })
        }
        _ => Err(format!("a persistent id that is not a storage: {items:?}")),
    }
}

fn call(callable: Value, args: Value) -> Result<Value, String> {
    let Value::Global(module, name) = &callable else {
        return Err(format!("a call of something that is not a global: {callable:?}"));
    };
    let Value::Tuple(args) = args else { return Err(format!("`{module}.{name}` called without an argument tuple")) };
    match (module.as_str(), name.as_str()) {
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") if args.len() >= 4 => {
            let Value::Storage(storage) = &args[0] else {
                return Err(format!("`{name}` of something that is not a storage: {:?}", args[0]));
            };
            let (shape, stride) = (as_usizes(&args[2], "a tensor's size")?, as_usizes(&args[3], "a tensor's stride")?);
            if shape.len() != stride.len() {
                return Err(format!("a tensor of size {shape:?} with strides {stride:?}"));
            }
            Ok(Value::Tensor(TensorRef {
                storage: storage.clone(),
                offset: as_usize(&args[1], "a tensor's storage offset")?,
                shape,
                stride,
            }))
        }
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") if !args.is_empty() => {
            Ok(args[0].clone())
        }
        ("collections", "OrderedDict") => {
            let items = match args.first() {
                None => Vec::new(),
                Some(Value::List(l)) => l
                    .borrow()
                    .iter()
                    .map(|p| match p {
                        Value::Tuple(kv) if kv.len() == 2 => Ok((kv[0].clone(), kv[1].clone())),
                        _ => Err("an OrderedDict item that is not a pair".to_string()),
                    })
                    .collect::<Result<_, _>>()?,
                Some(other) => return Err(format!("OrderedDict of {other:?}")),
            };
            Ok(Value::Dict(Rc::new(RefCell::new(items))))
        }
        _ => Err(format!(
            "the pickle calls `{module}.{name}`: this reader builds tensors, storages and plain containers only"
        )),
    }
}
