//! The names of a checkpoint's tensors: a walk over the pickle's containers joining dict keys
//! (and list or tuple positions) with `.`, as a state dict names its entries.

use std::collections::HashMap;

use super::pickle::Value;
use super::rebuild::TensorRef;

/// Every tensor reachable from `root`, named, in file order.
pub fn named_tensors(root: &Value) -> Result<Vec<(String, TensorRef)>, String> {
    let mut walk = Collector { path: Vec::new(), out: Vec::new(), visits: 0 };
    walk.visit(root)?;
    Ok(walk.out)
}

/// Nested dicts, lists and tuples deeper than this are refused when collecting (a dict can hold
/// itself; the machine caps how deeply values nest, not cycles).
const MAX_NAME_DEPTH: usize = 64;
/// Containers visited when collecting, at most: the memo can make a small pickle a graph with
/// exponentially many paths (tuples of the same tuple), each of which a walk would visit.
const MAX_VISITS: usize = 1_000_000;

/// A walk over the containers, naming tensors by the keys and positions on the way.
struct Collector {
    path: Vec<String>,
    out: Vec<(String, TensorRef)>,
    visits: usize,
}

impl Collector {
    fn visit(&mut self, v: &Value) -> std::result::Result<(), String> {
        let children: Vec<(String, Value)> = match v {
            Value::Tensor(t) => {
                self.out.push((self.path.join("."), t.clone()));
                return Ok(());
            }
            Value::Dict(items) => {
                // Python keeps a dict's last value of a key: so do the names here.
                let items = items.borrow();
                let mut named: Vec<(String, Value)> = Vec::with_capacity(items.len());
                let mut slot: HashMap<String, usize> = HashMap::new();
                for (k, v) in items.iter() {
                    let key = match k {
                        Value::Str(s) => s.to_string(),
                        Value::Int(i) => i.to_string(),
                        // Keys of other kinds (tuples, in some training dumps) name nothing here.
                        _ if !self.holds_tensor(v, 0) => continue,
                        other => {
                            return Err(format!("a tensor under a dict key that is not a name: {}", other.brief()))
                        }
                    };
                    match slot.get(&key) {
                        Some(&i) => named[i].1 = v.clone(),
                        None => {
                            slot.insert(key.clone(), named.len());
                            named.push((key, v.clone()));
                        }
                    }
                }
                named
            }
            // Tensors in a list or tuple (an EMA copy, a list of layers) are named by position.
            Value::List(items) => items.borrow().iter().cloned().enumerate().map(|(i, v)| (i.to_string(), v)).collect(),
            Value::Tuple(items) => items.iter().cloned().enumerate().map(|(i, v)| (i.to_string(), v)).collect(),
            // Numbers, strings and other leaves (an epoch counter beside a state dict) hold no tensor.
            _ => return Ok(()),
        };
        self.count()?;
        if self.path.len() >= MAX_NAME_DEPTH {
            return Err(format!("tensors nested more than {MAX_NAME_DEPTH} containers deep"));
        }
        for (key, child) in children {
            self.path.push(key);
            self.visit(&child)?;
            self.path.pop();
        }
        Ok(())
    }

    fn count(&mut self) -> std::result::Result<(), String> {
        self.visits += 1;
        if self.visits > MAX_VISITS {
            return Err(format!("more than {MAX_VISITS} containers to walk: not a checkpoint's shape"));
        }
        Ok(())
    }

    /// Whether a tensor is reachable from `v` (within the depth and visit limits; past them, yes,
    /// so that the caller's error names the key).
    fn holds_tensor(&mut self, v: &Value, depth: usize) -> bool {
        match v {
            Value::Tensor(_) => true,
            Value::Dict(_) | Value::List(_) | Value::Tuple(_) if depth >= MAX_NAME_DEPTH || self.count().is_err() => {
                true
            }
            Value::Dict(items) => items.borrow().iter().any(|(_, v)| self.holds_tensor(v, depth + 1)),
            Value::List(items) => items.borrow().iter().any(|v| self.holds_tensor(v, depth + 1)),
            Value::Tuple(items) => items.iter().any(|v| self.holds_tensor(v, depth + 1)),
            _ => false,
        }
    }
}
