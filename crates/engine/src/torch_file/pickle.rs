//! A minimal reader for Python pickles (protocols 0-2), enough for PyTorch's legacy checkpoints.
//!
//! Why not a general unpickler: a checkpoint only needs plain values (ints, strings, tuples, dicts),
//! references to globals (`collections.OrderedDict`, `torch.FloatStorage`,
//! `torch._utils._rebuild_tensor_v2`), calls of those globals (`REDUCE`) and persistent ids (the
//! storages). Nothing is ever executed: a call is kept as data and interpreted by the caller, so a
//! malicious file can at worst fail to parse.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;

/// A value built by the pickle machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    /// Any integer; `LONG1` values up to 16 bytes (PyTorch's magic number needs 10).
    Int(i128),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Dict entries in insertion order (OrderedDict semantics, which is what state dicts use).
    Dict(Vec<(Value, Value)>),
    /// `module.name`, referenced but not resolved.
    Global {
        module: String,
        name: String,
    },
    /// `callable(*args)`, recorded rather than performed.
    Call {
        callable: Box<Value>,
        args: Box<Value>,
    },
    /// The argument of a persistent id (`BINPERSID`); PyTorch uses it for storages.
    Persistent(Box<Value>),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i128> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i128),
            _ => None,
        }
    }

    /// Elements of a tuple or list.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(v) | Value::List(v) => Some(v),
            _ => None,
        }
    }

    pub fn is_global(&self, module: &str, name: &str) -> bool {
        matches!(self, Value::Global { module: m, name: n } if m == module && n == name)
    }
}

/// Deepest nesting accepted (a state dict nests about six deep). Every value on the machine's stack
/// stays within it, so the recursive walks, clones and drops of a value cannot overflow the stack.
const MAX_DEPTH: usize = 100;

/// Levels of nesting in `v` (1 for a plain value); bounded by `MAX_DEPTH` for any value built here.
fn depth(v: &Value) -> usize {
    1 + match v {
        Value::Tuple(items) | Value::List(items) => items.iter().map(depth).max().unwrap_or(0),
        Value::Dict(entries) => entries.iter().map(|(k, v)| depth(k).max(depth(v))).max().unwrap_or(0),
        Value::Call { callable, args } => depth(callable).max(depth(args)),
        Value::Persistent(id) => depth(id),
        _ => 0,
    }
}

/// Reads one pickle starting at `bytes[*pos]`, advancing `pos` past its `STOP` opcode.
pub fn read(bytes: &[u8], pos: &mut usize) -> Result<Value> {
    let start = *pos;
    // Copies may total this many values: far above what a checkpoint's pickle needs, far below
    // what doubling a value with DUP or memo gets repeatedly gives (2^n values from n bytes).
    let budget = bytes.len().saturating_mul(64).saturating_add(1 << 16);
    let mut machine = Machine { bytes, pos, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new(), budget };
    machine.run().with_context(|| format!("pickle starting at byte {start}"))
}

struct Machine<'a, 'p> {
    bytes: &'a [u8],
    pos: &'p mut usize,
    stack: Vec<Value>,
    /// Stack heights at each `MARK`.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// Values still allowed to be copied (`charge`).
    budget: usize,
}

/// How many values `v` is made of.
fn nodes(v: &Value) -> usize {
    1 + match v {
        Value::Tuple(items) | Value::List(items) => items.iter().map(nodes).sum(),
        Value::Dict(entries) => entries.iter().map(|(k, v)| nodes(k) + nodes(v)).sum(),
        Value::Call { callable, args } => nodes(callable) + nodes(args),
        Value::Persistent(id) => nodes(id),
        _ => 0,
    }
}

impl Machine<'_, '_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let start = *self.pos;
        let end = start.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else { bail!("truncated: needs {n} bytes at byte {start}, file has {}", self.bytes.len()) };
        *self.pos = end;
        Ok(&self.bytes[start..end])
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    /// A newline-terminated line (text opcodes such as `GLOBAL`).
    fn line(&mut self) -> Result<String> {
        let start = *self.pos;
        let rest = &self.bytes[start..];
        let len =
            rest.iter().position(|&b| b == b'\n').with_context(|| format!("unterminated line at byte {start}"))?;
        let text =
            String::from_utf8(rest[..len].to_vec()).with_context(|| format!("non-UTF-8 line at byte {start}"))?;
        *self.pos = start + len + 1;
        Ok(text)
    }

    /// Refuses to put `items` inside a container when that would nest deeper than `MAX_DEPTH`.
    fn check_nesting<'v>(&self, items: impl IntoIterator<Item = &'v Value>) -> Result<()> {
        if items.into_iter().any(|v| depth(v) >= MAX_DEPTH) {
            bail!("values nested deeper than {MAX_DEPTH} levels at byte {}", *self.pos);
        }
        Ok(())
    }

    fn pop(&mut self) -> Result<Value> {
        self.stack.pop().context("stack underflow")
    }

    /// Everything above the most recent `MARK`, removing the mark.
    fn pop_to_mark(&mut self) -> Result<Vec<Value>> {
        let height = self.marks.pop().context("no MARK on the stack")?;
        if height > self.stack.len() {
            bail!("MARK above the top of the stack");
        }
        Ok(self.stack.split_off(height))
    }

    fn top_mut(&mut self) -> Result<&mut Value> {
        self.stack.last_mut().context("stack underflow")
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            bail!("SETITEMS with an odd number of values");
        }
        self.check_nesting(&items)?;
        let Value::Dict(entries) = self.top_mut()? else { bail!("SETITEM(S) on a value that is not a dict") };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            match entries.iter_mut().find(|(key, _)| *key == k) {
                Some(entry) => entry.1 = v,
                None => entries.push((k, v)),
            }
        }
        Ok(())
    }

    fn append(&mut self, items: Vec<Value>) -> Result<()> {
        self.check_nesting(&items)?;
        let Value::List(list) = self.top_mut()? else { bail!("APPEND(S) on a value that is not a list") };
        list.extend(items);
        Ok(())
    }

    fn tuple_of(&mut self, n: usize) -> Result<()> {
        if n > self.stack.len() {
            bail!("stack underflow building a {n}-tuple");
        }
        let items = self.stack.split_off(self.stack.len() - n);
        self.check_nesting(&items)?;
        self.stack.push(Value::Tuple(items));
        Ok(())
    }

    /// A copy of `value`, charged against the budget.
    fn copy(&mut self, value: &Value) -> Result<Value> {
        let size = nodes(value);
        self.budget = self.budget.checked_sub(size).with_context(|| {
            format!("copying a value of {size} parts at byte {} exceeds what the pickle's size allows", *self.pos)
        })?;
        Ok(value.clone())
    }

    fn memo_get(&mut self, key: u32) -> Result<()> {
        let value = self.memo.get(&key).with_context(|| format!("memo key {key} was never stored"))?.clone();
        let value = self.copy(&value)?;
        self.stack.push(value);
        Ok(())
    }

    fn memo_put(&mut self, key: u32) -> Result<()> {
        let top = self.stack.last().context("PUT on an empty stack")?.clone();
        let value = self.copy(&top)?;
        self.memo.insert(key, value);
        Ok(())
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            let at = *self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let protocol = self.u8()?;
                    if protocol > 2 {
                        bail!(
                            "pickle protocol {protocol} is not supported (only 0-2, as PyTorch's legacy format uses)"
                        );
                    }
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().unwrap());
                    self.stack.push(Value::Int(v as i128));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i128));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v as i128));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    if n > 16 {
                        bail!("LONG1 of {n} bytes at byte {at} is larger than vlmix supports");
                    }
                    let raw = self.take(n)?;
                    let mut buf = if raw.last().is_some_and(|&b| b & 0x80 != 0) { [0xffu8; 16] } else { [0u8; 16] };
                    buf[..n].copy_from_slice(raw);
                    self.stack.push(Value::Int(i128::from_le_bytes(buf)));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                    self.stack.push(Value::Float(v));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let raw = self.take(n)?.to_vec();
                    let s = String::from_utf8(raw).with_context(|| format!("BINUNICODE at byte {at} is not UTF-8"))?;
                    self.stack.push(Value::Str(s));
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    let raw = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(raw));
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let raw = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(raw));
                }
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b't' => {
                    let items = self.pop_to_mark()?;
                    self.check_nesting(&items)?;
                    self.stack.push(Value::Tuple(items));
                }
                b'l' => {
                    let items = self.pop_to_mark()?;
                    self.check_nesting(&items)?;
                    self.stack.push(Value::List(items));
                }
                b'd' => {
                    let items = self.pop_to_mark()?;
                    self.stack.push(Value::Dict(Vec::new()));
                    self.set_items(items)?;
                }
                0x85 => self.tuple_of(1)?,
                0x86 => self.tuple_of(2)?,
                0x87 => self.tuple_of(3)?,
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_to_mark()?;
                    self.set_items(items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_to_mark()?;
                    self.append(items)?;
                }
                b'q' => {
                    let key = self.u8()? as u32;
                    self.memo_put(key)?;
                }
                b'r' => {
                    let key = self.u32()?;
                    self.memo_put(key)?;
                }
                b'h' => {
                    let key = self.u8()? as u32;
                    self.memo_get(key)?;
                }
                b'j' => {
                    let key = self.u32()?;
                    self.memo_get(key)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global { module, name });
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.check_nesting([&callable, &args])?;
                    self.stack.push(call(callable, args));
                }
                b'b' => {
                    // BUILD sets object state. The only objects a state dict builds are OrderedDicts
                    // carrying `_metadata` (module version numbers), which tensors do not depend on.
                    let _state = self.pop()?;
                    if self.stack.is_empty() {
                        bail!("BUILD on an empty stack at byte {at}");
                    }
                }
                b'Q' => {
                    let id = self.pop()?;
                    self.check_nesting([&id])?;
                    self.stack.push(Value::Persistent(Box::new(id)));
                }
                b'0' => {
                    self.pop()?;
                }
                b'2' => {
                    let top = self.stack.last().context("DUP on an empty stack")?.clone();
                    let top = self.copy(&top)?;
                    self.stack.push(top);
                }
                other => bail!("unsupported pickle opcode 0x{other:02x} at byte {at}"),
            }
        }
    }
}

/// `OrderedDict()` becomes an empty dict so `SETITEMS` can fill it; other calls stay as data.
fn call(callable: Value, args: Value) -> Value {
    let empty_args = matches!(&args, Value::Tuple(a) if a.is_empty());
    if callable.is_global("collections", "OrderedDict") && empty_args {
        return Value::Dict(Vec::new());
    }
    Value::Call { callable: Box::new(callable), args: Box::new(args) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nested_protocol2_values() {
        // pickle.dumps({"a": (1, 300, -2, 70000), "b": [True, None, 1.5]}, protocol=2)
        let bytes: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01(K\x01M,\x01J\xfe\xff\xff\xffJp\x11\x01\x00tq\x02X\x01\x00\x00\x00bq\x03]q\x04(\x88NG?\xf8\x00\x00\x00\x00\x00\x00eu.";
        let mut pos = 0;
        let v = read(bytes, &mut pos).unwrap();
        assert_eq!(pos, bytes.len());
        let want = Value::Dict(vec![
            (
                Value::Str("a".into()),
                Value::Tuple(vec![Value::Int(1), Value::Int(300), Value::Int(-2), Value::Int(70000)]),
            ),
            (Value::Str("b".into()), Value::List(vec![Value::Bool(true), Value::None, Value::Float(1.5)])),
        ]);
        assert_eq!(v, want);
    }

    #[test]
    fn reads_long1_magic_number() {
        // pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2)
        let bytes: &[u8] = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.";
        let mut pos = 0;
        assert_eq!(read(bytes, &mut pos).unwrap(), Value::Int(0x1950a86a20f9469cfc6c));
        let negative: &[u8] = b"\x80\x02\x8a\x01\xff.";
        let mut pos = 0;
        assert_eq!(read(negative, &mut pos).unwrap(), Value::Int(-1));
    }

    #[test]
    fn truncated_and_unknown_input_are_errors() {
        let mut pos = 0;
        let err = read(b"\x80\x02X\x05\x00\x00\x00ab", &mut pos).unwrap_err();
        assert!(format!("{err:#}").contains("truncated"), "{err:#}");
        let mut pos = 0;
        let err = read(b"\x80\x02\x95", &mut pos).unwrap_err();
        assert!(format!("{err:#}").contains("0x95"), "{err:#}");
        let mut pos = 0;
        let err = read(b"\x80\x04K\x01.", &mut pos).unwrap_err();
        assert!(format!("{err:#}").contains("protocol 4"), "{err:#}");
    }

    /// Issue 26: a million nested 1-tuples (one byte each) would overflow the stack when the value
    /// is dropped; the depth limit refuses the nesting as it is built.
    #[test]
    fn deep_nesting_is_refused() {
        for wrap in [&b"\x85"[..], b"N\x86", b"NR", b"Q"] {
            let mut bytes = b"\x80\x02N".to_vec();
            for _ in 0..1_000_000 {
                bytes.extend(wrap);
            }
            bytes.push(b'.');
            let mut pos = 0;
            let err = read(&bytes, &mut pos).unwrap_err();
            assert!(format!("{err:#}").contains("nested deeper than 100 levels"), "{wrap:?}: {err:#}");
        }
        let mut lists = b"\x80\x02".to_vec();
        lists.extend(std::iter::repeat_n(b']', 1_000_000));
        lists.extend(std::iter::repeat_n(b'a', 999_999));
        lists.push(b'.');
        let mut pos = 0;
        assert!(format!("{:#}", read(&lists, &mut pos).unwrap_err()).contains("nested deeper"));
    }

    /// Issue 26: 64 doublings would build 2^64 values; the copy budget refuses them early.
    #[test]
    fn exponential_copies_are_refused() {
        let mut bytes = b"\x80\x02K\x01".to_vec();
        for _ in 0..64 {
            bytes.extend(b"2\x86");
        }
        bytes.push(b'.');
        let mut pos = 0;
        let err = read(&bytes, &mut pos).unwrap_err();
        assert!(format!("{err:#}").contains("exceeds what the pickle's size allows"), "{err:#}");
        let mut memo = b"\x80\x02K\x01".to_vec();
        for _ in 0..64 {
            memo.extend(b"q\x00h\x00\x86");
        }
        memo.push(b'.');
        let mut pos = 0;
        assert!(read(&memo, &mut pos).is_err());
    }
}
