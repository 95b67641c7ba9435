//! What `torch.save`'s pickle is made of besides plain values: the persistent id of a storage
//! (`('storage', torch.FloatStorage, key, location, numel)`), the tensors rebuilt from storages
//! (`torch._utils._rebuild_tensor_v2`, `_rebuild_tensor`, `_rebuild_parameter`), and the few
//! harmless callables a state dict or a training dump pickles (`collections.OrderedDict`, `set`,
//! `_codecs.encode` for bytes). Anything else is refused by name: nothing is ever run.

use std::cell::RefCell;
use std::rc::Rc;

use super::pickle::Value;

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
    pub fn from_storage_class(name: &str) -> Option<Self> {
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

    pub fn is_float(self) -> bool {
        matches!(self, TorchDType::F64 | TorchDType::F32 | TorchDType::F16 | TorchDType::BF16)
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

fn as_usize(v: &Value, what: &str) -> Result<usize, String> {
    match v {
        Value::Int(i) => usize::try_from(*i).map_err(|_| format!("{what} {i} is negative")),
        other => Err(format!("{what} is not an integer: {}", other.brief())),
    }
}

fn as_usizes(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    match v {
        Value::Tuple(items) => items.iter().map(|x| as_usize(x, what)).collect(),
        Value::List(items) => items.borrow().iter().map(|x| as_usize(x, what)).collect(),
        other => Err(format!("{what} is not a tuple: {}", other.brief())),
    }
}

/// `('storage', torch.XStorage, key, location, numel)`: what `torch.save` writes for a storage.
pub fn storage(pid: &Value) -> Result<StorageRef, String> {
    let Value::Tuple(items) = pid else { return Err(format!("a persistent id that is not a tuple: {}", pid.brief())) };
    match &items[..] {
        [Value::Str(tag), Value::Global(module, class), Value::Str(key), _location, numel] if &**tag == "storage" => {
            let dtype = TorchDType::from_storage_class(class)
                .filter(|_| &**module == "torch")
                .ok_or_else(|| format!("storage class `{module}.{class}` is not one this reader knows"))?;
            Ok(StorageRef { dtype, key: key.to_string(), numel: as_usize(numel, "a storage's size")? })
        }
        _ => Err(format!("a persistent id that is not a storage: {}", pid.brief())),
    }
}

pub fn call(callable: &Value, args: &Value) -> Result<Value, String> {
    let Value::Global(module, name) = callable else {
        return Err(format!("a call of something that is not a global: {}", callable.brief()));
    };
    let Value::Tuple(args) = args else { return Err(format!("`{module}.{name}` called without an argument tuple")) };
    match (&**module, &**name) {
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") if args.len() >= 4 => {
            let Value::Storage(storage) = &args[0] else {
                return Err(format!("`{name}` of something that is not a storage: {}", args[0].brief()));
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
                Some(other) => return Err(format!("OrderedDict of {}", other.brief())),
            };
            Ok(Value::Dict(Rc::new(RefCell::new(items))))
        }
        // Protocol 2 spells builtins `__builtin__`; a set in a training dump is a list here.
        ("__builtin__" | "builtins", "set" | "frozenset") => {
            Ok(Value::List(Rc::new(RefCell::new(match args.first() {
                Some(Value::List(l)) => l.borrow().clone(),
                _ => Vec::new(),
            }))))
        }
        // Protocol 2 writes bytes as `_codecs.encode(text, 'latin1')`.
        ("_codecs", "encode") => match args.first() {
            Some(Value::Str(s)) => Ok(Value::Bytes(s.chars().map(|c| c as u32 as u8).collect::<Vec<u8>>().into())),
            _ => Err("`_codecs.encode` of something that is not text".into()),
        },
        _ => Err(format!(
            "the pickle calls `{module}.{name}`: this reader builds tensors, storages and plain containers only"
        )),
    }
}
