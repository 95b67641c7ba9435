//! The pickle of a `torch.save` archive (`data.pkl`), read by a small stack machine that builds
//! values and never runs code. What a call or a persistent id builds is `rebuild`'s business
//! (tensors, storages, a few containers); any other global is refused there by name, so a
//! hostile pickle cannot do more than fail. The machine itself stays bounded on hostile input:
//! values are shared, not copied, when the memo hands them out again; nesting is capped; the memo
//! holds only the entries a pickle sets.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use super::rebuild::{call, storage, StorageRef, TensorRef};

/// A pickled list's or dict's items, shared: items added after an object is memoized must show
/// wherever the memo hands it out again.
pub type Shared<T> = Rc<RefCell<Vec<T>>>;

/// What the machine builds. Everything is cheap to clone (shared), so that fetching a large value
/// from the memo many times costs nothing.
#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Rc<[Value]>),
    List(Shared<Value>),
    Dict(Shared<(Value, Value)>),
    Global(Rc<str>, Rc<str>),
    Storage(StorageRef),
    Tensor(TensorRef),
}

impl Value {
    /// A short description for error messages: the kind of value and its size, never its
    /// contents (a hostile value may be huge, shared many times over, or hold itself).
    pub fn brief(&self) -> String {
        let text = |s: &str| {
            let shown: String = s.chars().take(60).collect();
            if shown.len() < s.len() {
                format!("{shown:?}…")
            } else {
                format!("{shown:?}")
            }
        };
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Str(s) => format!("the text {}", text(s)),
            Value::Bytes(b) => format!("{} bytes", b.len()),
            Value::Tuple(t) => format!("a tuple of {} items", t.len()),
            Value::List(l) => format!("a list of {} items", l.try_borrow().map_or(0, |l| l.len())),
            Value::Dict(d) => format!("a dict of {} items", d.try_borrow().map_or(0, |d| d.len())),
            Value::Global(m, n) => format!("`{}.{}`", text(m).trim_matches('"'), text(n).trim_matches('"')),
            Value::Storage(_) => "a storage".into(),
            Value::Tensor(t) => format!("a tensor of size {:?}", t.shape),
        }
    }
}

/// Dropping a value frees its containers one at a time: a list nested a million deep (which the
/// memo can build top-down, past `MAX_DEPTH`'s count) would otherwise recurse once per level.
impl Drop for Value {
    fn drop(&mut self) {
        let mut pending = Vec::new();
        take_children(self, &mut pending);
        while let Some(mut v) = pending.pop() {
            take_children(&mut v, &mut pending);
        }
    }
}

/// Moves the items of a container nothing else holds into `out`.
fn take_children(v: &mut Value, out: &mut Vec<Value>) {
    match v {
        Value::List(l) if Rc::strong_count(l) == 1 => out.append(&mut l.borrow_mut()),
        Value::Dict(d) if Rc::strong_count(d) == 1 => {
            for (k, v) in d.borrow_mut().drain(..) {
                out.push(k);
                out.push(v);
            }
        }
        Value::Tuple(t) => {
            if let Some(items) = Rc::get_mut(t) {
                out.extend(items.iter_mut().map(|x| std::mem::replace(x, Value::None)));
            }
        }
        _ => {}
    }
}

/// Containers nested deeper than this are refused: torch's own pickles nest a few levels, and
/// building (or dropping) a deeper value recurses once per level.
const MAX_DEPTH: usize = 200;

struct Machine<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Values and how deeply each nests containers.
    stack: Vec<(Value, usize)>,
    marks: Vec<usize>,
    memo: HashMap<u32, (Value, usize)>,
}

/// Runs the pickle in `bytes` and returns the object it builds. Errors say what is wrong in
/// words; the caller names the file.
pub fn load(bytes: &[u8]) -> Result<Value, String> {
    let mut m = Machine { bytes, at: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() };
    loop {
        let op = m.take(1)?[0];
        match op {
            0x80 => drop(m.take(1)?),            // PROTO
            0x95 => drop(m.take(8)?),            // FRAME (protocol 4): framing only
            b'.' => return Ok(m.pop()?.0),       // STOP
            b'(' => m.marks.push(m.stack.len()), // MARK
            b'N' => m.push(Value::None),
            0x88 => m.push(Value::Bool(true)),
            0x89 => m.push(Value::Bool(false)),
            b'K' => {
                let v = m.take(1)?[0] as i64;
                m.push(Value::Int(v))
            }
            b'M' => {
                let v = m.uint(2)? as i64;
                m.push(Value::Int(v))
            }
            b'J' => {
                let v = m.uint(4)? as u32 as i32 as i64;
                m.push(Value::Int(v))
            }
            0x8a => {
                let n = m.take(1)?[0] as usize;
                let v = long(m.take(n)?)?;
                m.push(Value::Int(v))
            }
            b'G' => {
                let v = f64::from_be_bytes(m.take(8)?.try_into().map_err(|_| "bad float")?);
                m.push(Value::Float(v))
            }
            b'X' | 0x8c | 0x8d | b'T' | b'U' => {
                let n = match op {
                    b'X' | b'T' => m.uint(4)?,
                    0x8c | b'U' => m.take(1)?[0] as u64,
                    _ => m.uint(8)?,
                };
                let n = usize::try_from(n).map_err(|_| "string too long")?;
                let s: Rc<str> = String::from_utf8_lossy(m.take(n)?).into();
                m.push(Value::Str(s))
            }
            b'B' | b'C' => {
                let n = if op == b'B' { m.uint(4)? } else { m.take(1)?[0] as u64 };
                let b: Rc<[u8]> = m.take(usize::try_from(n).map_err(|_| "bytes too long")?)?.into();
                m.push(Value::Bytes(b))
            }
            b')' => m.push(Value::Tuple(Rc::new([]))),
            b']' => m.push(Value::List(Rc::default())),
            b'}' => m.push(Value::Dict(Rc::default())),
            b't' => {
                let items = m.pop_mark()?;
                m.push_built(items, |v| Value::Tuple(v.into()))?
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let items = m.stack.split_off(m.stack.len().checked_sub(n).ok_or("stack underflow")?);
                m.push_built(items, |v| Value::Tuple(v.into()))?
            }
            b'l' => {
                let items = m.pop_mark()?;
                m.push_built(items, |v| Value::List(Rc::new(RefCell::new(v))))?
            }
            b'd' => {
                let items = m.pop_mark()?;
                let depth = m.depth_over(&items)?;
                let dict: Shared<(Value, Value)> = Rc::default();
                set_items(&dict, items.into_iter().map(|(v, _)| v).collect())?;
                m.stack.push((Value::Dict(dict), depth))
            }
            b'a' | b'e' => {
                let items = if op == b'a' { vec![m.pop()?] } else { m.pop_mark()? };
                let depth = m.depth_over(&items)?;
                let Some((Value::List(list), top_depth)) = m.stack.last_mut() else {
                    return Err("APPEND to something that is not a list".into());
                };
                *top_depth = (*top_depth).max(depth);
                list.borrow_mut().extend(items.into_iter().map(|(v, _)| v));
            }
            b's' | b'u' => {
                let items = if op == b's' {
                    let v = m.pop()?;
                    let k = m.pop()?;
                    vec![k, v]
                } else {
                    m.pop_mark()?
                };
                let depth = m.depth_over(&items)?;
                let Some((Value::Dict(dict), top_depth)) = m.stack.last_mut() else {
                    return Err("SETITEM to something that is not a dict".into());
                };
                *top_depth = (*top_depth).max(depth);
                set_items(dict, items.into_iter().map(|(v, _)| v).collect())?;
            }
            b'c' => {
                let module = m.line()?;
                let name = m.line()?;
                m.push(Value::Global(module, name))
            }
            0x93 => {
                let name = m.pop()?.0;
                let module = m.pop()?.0;
                match (&module, &name) {
                    (Value::Str(module), Value::Str(name)) => m.push(Value::Global(module.clone(), name.clone())),
                    _ => return Err("STACK_GLOBAL without a module and a name".into()),
                }
            }
            b'q' | b'r' | 0x94 => {
                let i = match op {
                    b'q' => m.take(1)?[0] as u32,
                    b'r' => m.uint(4)? as u32,
                    _ => m.memo.len() as u32, // MEMOIZE: the next index
                };
                let top = m.stack.last().cloned().ok_or("stack underflow")?;
                m.memo.insert(i, top);
            }
            b'h' | b'j' => {
                let i = if op == b'h' { m.take(1)?[0] as u32 } else { m.uint(4)? as u32 };
                let v = m.memo.get(&i).cloned().ok_or_else(|| format!("memo entry {i} used before it is set"))?;
                m.stack.push(v)
            }
            b'Q' => {
                let pid = m.pop()?.0;
                m.push(Value::Storage(storage(&pid)?))
            }
            b'R' | 0x81 => {
                let (args, depth) = m.pop()?;
                let callable = m.pop()?.0;
                m.stack.push((call(&callable, &args)?, depth))
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

/// Adds key-value pairs (a flat list) to a dict. A key given again is added again (cheap,
/// whatever the dict's size); the reader takes the last value of a name, as Python's dict does.
fn set_items(dict: &Shared<(Value, Value)>, items: Vec<Value>) -> Result<(), String> {
    if !items.len().is_multiple_of(2) {
        return Err("a dict's items are not key-value pairs".into());
    }
    let mut dict = dict.borrow_mut();
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        dict.push((k, v));
    }
    Ok(())
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

    fn line(&mut self) -> Result<Rc<str>, String> {
        let rest = &self.bytes[self.at..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or("GLOBAL without its newline")?;
        let s: Rc<str> = String::from_utf8_lossy(&rest[..end]).into();
        self.at += end + 1;
        Ok(s)
    }

    /// A value that holds no container.
    fn push(&mut self, v: Value) {
        self.stack.push((v, 0));
    }

    /// A container of `items`, one level deeper than the deepest of them.
    fn push_built(
        &mut self,
        items: Vec<(Value, usize)>,
        build: impl FnOnce(Vec<Value>) -> Value,
    ) -> Result<(), String> {
        let depth = self.depth_over(&items)?;
        self.stack.push((build(items.into_iter().map(|(v, _)| v).collect()), depth));
        Ok(())
    }

    fn depth_over(&self, items: &[(Value, usize)]) -> Result<usize, String> {
        let depth = 1 + items.iter().map(|(_, d)| *d).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(format!("containers nested more than {MAX_DEPTH} deep"));
        }
        Ok(depth)
    }

    fn pop(&mut self) -> Result<(Value, usize), String> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("a value is taken across a MARK".into());
        }
        self.stack.pop().ok_or_else(|| "stack underflow".into())
    }

    fn pop_mark(&mut self) -> Result<Vec<(Value, usize)>, String> {
        let mark = self.marks.pop().ok_or("no MARK to pop to")?;
        Ok(self.stack.split_off(mark.min(self.stack.len())))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> Result<Value, String> {
        load(bytes)
    }

    /// Integer and float opcodes as pickletools documents them: BININT1 and BININT2 unsigned,
    /// BININT signed, LONG1 two's complement, BINFLOAT big-endian.
    #[test]
    fn numbers_decode_as_python_writes_them() {
        let int = |b: &[u8]| match run(&[b, b"."].concat()) {
            Ok(Value::Int(v)) => v,
            other => panic!("{other:?}"),
        };
        assert_eq!(int(&[b'K', 0xFF]), 255);
        assert_eq!(int(&[b'M', 0x60, 0xEA]), 60000);
        assert_eq!(int(&[b'J', 0xFB, 0xFF, 0xFF, 0xFF]), -5);
        assert_eq!(int(&[0x8a, 6, 0, 0, 0, 0, 0, 0xFF]), -(1i64 << 40));
        assert_eq!(int(&[0x8a, 2, 0xFF, 0x00]), 255);
        let float = run(&[&[b'G'][..], &1e-4f64.to_be_bytes(), b"."].concat());
        assert!(matches!(float, Ok(Value::Float(f)) if f == 1e-4), "{float:?}");
    }

    /// A dict keeps its pairs in order (a repeated key too: the reader takes the last); a list
    /// grows by APPEND and APPENDS.
    #[test]
    fn containers_fill_as_python_builds_them() {
        // {'a': 1, 'a': 2} via SETITEMS, then SETITEM 'b': [3, 4, 5].
        let p = b"}(X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00aK\x02uX\x01\x00\x00\x00b]K\x03a(K\x04K\x05es.";
        let v = run(p).unwrap();
        let Value::Dict(d) = &v else { panic!("{v:?}") };
        let d = d.borrow();
        assert_eq!(d.len(), 3);
        assert!(matches!(&d[1], (Value::Str(k), Value::Int(2)) if &**k == "a"));
        let Value::List(l) = &d[2].1 else { panic!() };
        assert!(matches!(l.borrow().as_slice(), [Value::Int(3), Value::Int(4), Value::Int(5)]));
    }

    /// Hostile shapes fail quickly and cleanly: deep nesting, a sparse memo index, values
    /// fetched from the memo over and over (shared, not copied), an unknown global.
    #[test]
    fn hostile_pickles_fail_or_stay_cheap() {
        let deep: Vec<u8> = [&b")"[..], &vec![0x85u8; 50_000], b"."].concat();
        assert!(run(&deep).unwrap_err().contains("nested"));
        // LONG_BINPUT 2^24 sets one entry, not sixteen million.
        assert!(matches!(run(b"K\x01r\x00\x00\x00\x01."), Ok(Value::Int(1))));
        // Forty levels of (m, m, m) from the memo: 3^40 leaves if copied, shared here.
        let mut p = b"X\x04\x00\x00\x00leafq\x00".to_vec();
        for _ in 0..40 {
            p.extend(b"0h\x00h\x00h\x00\x87q\x00");
        }
        p.extend(b".");
        assert!(run(&p).is_ok());
        // Dicts nested 100,000 deep, built top-down through the memo (each level SETITEMs a new
        // dict into the last, then fetches it back): built and dropped without deep recursion.
        let level = b"K\x00}q\x00s0h\x00";
        let p = [&b"}2"[..], &level.repeat(100_000), b"0."].concat();
        drop(run(&p).unwrap());
        let err = run(b"cposix\nsystem\nX\x02\x00\x00\x00ls\x85R.").unwrap_err();
        assert!(err.contains("posix.system"), "{err}");
    }
}
