//! PyTorch's legacy (pre-1.6, non-zip) checkpoint format, converted to safetensors.
//!
//! Layout (torch/serialization.py `_legacy_load`), five parts back to back:
//! 1. pickle: magic number `0x1950a86a20f9469cfc6c`;
//! 2. pickle: protocol version 1001;
//! 3. pickle: sys_info dict (endianness, type sizes);
//! 4. pickle: the object (a state dict) whose tensors are
//!    `_rebuild_tensor_v2(storage, offset, size, stride, ...)` calls and whose storages are persistent
//!    ids `("storage", torch.FloatStorage, key, location, numel, view)`;
//! 5. pickle: the list of storage keys, then each storage's raw bytes in that order, each preceded
//!    by its element count as a little-endian i64.
//!
//! Tensors may be stored with any strides (this EfficientNet file keeps TensorFlow's HWIO order),
//! so each tensor is gathered into a contiguous row-major copy.

use super::pickle::{self, Value};
use anyhow::{bail, ensure, Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;

const MAGIC_NUMBER: i128 = 0x1950a86a20f9469cfc6c;
const PROTOCOL_VERSION: i128 = 1001;

/// One tensor of a checkpoint, contiguous, little-endian.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// A storage referenced by the object pickle.
struct StorageRef {
    key: String,
    dtype: Dtype,
    numel: usize,
}

/// A tensor as the object pickle describes it, before the storages are read.
struct TensorRef {
    storage: StorageRef,
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

/// Reads every tensor of a legacy state-dict checkpoint, in file order.
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, RawTensor)>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_state_dict(&bytes).with_context(|| format!("{}: not a readable legacy PyTorch checkpoint", path.display()))
}

/// Converts a legacy checkpoint to a safetensors file (written atomically), keeping names and shapes.
pub fn convert_to_safetensors(checkpoint: &Path, out: &Path) -> Result<()> {
    let tensors = read_state_dict(checkpoint)?;
    let views = tensors
        .iter()
        .map(|(name, t)| {
            TensorView::new(t.dtype, t.shape.clone(), &t.data)
                .map(|v| (name.clone(), v))
                .map_err(|e| anyhow::anyhow!("tensor {name}: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut metadata = HashMap::new();
    metadata.insert("converted_from".to_string(), checkpoint.display().to_string());
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| anyhow::anyhow!("serialising {}: {e}", out.display()))?;
    vlmix_engine::atomic_file::write_atomic(out, &bytes)
}

fn parse_state_dict(bytes: &[u8]) -> Result<Vec<(String, RawTensor)>> {
    let mut pos = 0;
    let magic = pickle::read(bytes, &mut pos).context("magic number")?;
    if magic.as_int() != Some(MAGIC_NUMBER) {
        bail!("wrong magic number {magic:?} (a zip-format checkpoint, or not a PyTorch file)");
    }
    let protocol = pickle::read(bytes, &mut pos).context("protocol version")?;
    if protocol.as_int() != Some(PROTOCOL_VERSION) {
        bail!("unsupported protocol version {protocol:?}, expected {PROTOCOL_VERSION}");
    }
    let sys_info = pickle::read(bytes, &mut pos).context("sys_info")?;
    check_little_endian(&sys_info)?;
    let object = pickle::read(bytes, &mut pos).context("state dict")?;
    let keys = pickle::read(bytes, &mut pos).context("storage key list")?;
    let keys = keys.as_seq().context("storage key list is not a list")?;

    let Value::Dict(entries) = object else { bail!("the checkpoint holds {}, not a state dict", kind(&object)) };
    let mut refs = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let name = key.as_str().with_context(|| format!("state dict key {key:?} is not a string"))?.to_string();
        let tensor = tensor_ref(&value).with_context(|| format!("tensor {name}"))?;
        refs.push((name, tensor));
    }

    let mut storages: HashMap<String, &[u8]> = HashMap::new();
    for key in keys {
        let key = key.as_str().with_context(|| format!("storage key {key:?} is not a string"))?;
        let storage = refs
            .iter()
            .map(|(_, t)| &t.storage)
            .find(|s| s.key == key)
            .with_context(|| format!("storage {key} is listed but no tensor uses it"))?;
        let count = read_i64(bytes, &mut pos).with_context(|| format!("length of storage {key}"))?;
        ensure!(
            count == storage.numel as i64,
            "storage {key} holds {count} elements on disk but the pickle says {}",
            storage.numel
        );
        let len = storage.numel * storage.dtype.bitsize() / 8;
        let data = bytes.get(pos..pos + len).with_context(|| format!("storage {key} is truncated"))?;
        pos += len;
        storages.insert(key.to_string(), data);
    }
    if pos != bytes.len() {
        bail!("{} unexpected bytes after the last storage", bytes.len() - pos);
    }

    refs.into_iter()
        .map(|(name, t)| {
            let data = storages.get(&t.storage.key).with_context(|| format!("tensor {name}: storage {} is missing", t.storage.key))?;
            let raw = gather(&t, data).with_context(|| format!("tensor {name}"))?;
            Ok((name, raw))
        })
        .collect()
}

fn check_little_endian(sys_info: &Value) -> Result<()> {
    let Value::Dict(entries) = sys_info else { bail!("sys_info is {}, not a dict", kind(sys_info)) };
    let little = entries.iter().find(|(k, _)| k.as_str() == Some("little_endian")).map(|(_, v)| v);
    match little {
        Some(Value::Bool(true)) | None => Ok(()),
        Some(other) => bail!("checkpoint was written big-endian (little_endian = {other:?}); not supported"),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "a bool",
        Value::Int(_) => "an int",
        Value::Float(_) => "a float",
        Value::Str(_) | Value::Bytes(_) => "a string",
        Value::Tuple(_) => "a tuple",
        Value::List(_) => "a list",
        Value::Dict(_) => "a dict",
        Value::Global { .. } => "a global reference",
        Value::Call { .. } => "an object",
        Value::Persistent(_) => "a persistent id",
    }
}

fn read_i64(bytes: &[u8], pos: &mut usize) -> Result<i64> {
    let raw = bytes.get(*pos..*pos + 8).context("truncated")?;
    *pos += 8;
    Ok(i64::from_le_bytes(raw.try_into().unwrap()))
}

fn usize_of(v: &Value, what: &str) -> Result<usize> {
    let i = v.as_int().with_context(|| format!("{what} is {}, not an int", kind(v)))?;
    usize::try_from(i).with_context(|| format!("{what} = {i} is negative or too large"))
}

fn usize_seq(v: &Value, what: &str) -> Result<Vec<usize>> {
    v.as_seq().with_context(|| format!("{what} is {}, not a tuple", kind(v)))?.iter().map(|x| usize_of(x, what)).collect()
}

/// Interprets `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks[, metadata])`.
fn tensor_ref(value: &Value) -> Result<TensorRef> {
    let Value::Call { callable, args } = value else { bail!("value is {}, not a tensor", kind(value)) };
    if !callable.is_global("torch._utils", "_rebuild_tensor_v2") {
        bail!("built by {callable:?}, expected torch._utils._rebuild_tensor_v2");
    }
    let args = args.as_seq().context("tensor arguments are not a tuple")?;
    ensure!(args.len() >= 4, "_rebuild_tensor_v2 has {} arguments, expected at least 4", args.len());
    let storage = storage_ref(&args[0])?;
    let offset = usize_of(&args[1], "storage offset")?;
    let shape = usize_seq(&args[2], "size")?;
    let strides = usize_seq(&args[3], "stride")?;
    ensure!(shape.len() == strides.len(), "size has {} dims but stride has {}", shape.len(), strides.len());
    Ok(TensorRef { storage, offset, shape, strides })
}

/// Interprets the persistent id `("storage", torch.XStorage, key, location, numel, view_metadata)`.
fn storage_ref(value: &Value) -> Result<StorageRef> {
    let Value::Persistent(id) = value else { bail!("storage is {}, not a persistent id", kind(value)) };
    let fields = id.as_seq().context("persistent id is not a tuple")?;
    ensure!(fields.len() == 6 && fields[0].as_str() == Some("storage"), "persistent id {id:?} is not a storage");
    if !matches!(fields[5], Value::None) {
        bail!("storage views (view_metadata {:?}) are not supported", fields[5]);
    }
    let Value::Global { module, name } = &fields[1] else { bail!("storage type {:?} is not a global", fields[1]) };
    ensure!(module == "torch", "storage type {module}.{name} is not a torch storage");
    let dtype = match name.as_str() {
        "FloatStorage" => Dtype::F32,
        "DoubleStorage" => Dtype::F64,
        "HalfStorage" => Dtype::F16,
        "BFloat16Storage" => Dtype::BF16,
        "LongStorage" => Dtype::I64,
        "IntStorage" => Dtype::I32,
        "ShortStorage" => Dtype::I16,
        "CharStorage" => Dtype::I8,
        "ByteStorage" => Dtype::U8,
        "BoolStorage" => Dtype::BOOL,
        other => bail!("storage type torch.{other} is not supported"),
    };
    let key = fields[2].as_str().context("storage key is not a string")?.to_string();
    let numel = usize_of(&fields[4], "storage numel")?;
    Ok(StorageRef { key, dtype, numel })
}

/// Copies a strided view out of its storage into contiguous row-major order.
fn gather(t: &TensorRef, storage: &[u8]) -> Result<RawTensor> {
    let elem = t.storage.dtype.bitsize() / 8;
    let numel: usize = t.shape.iter().product();
    if numel > 0 {
        let last = t.offset + t.shape.iter().zip(&t.strides).map(|(&n, &s)| (n - 1) * s).sum::<usize>();
        ensure!(
            last < t.storage.numel,
            "view (offset {}, size {:?}, stride {:?}) reaches element {last} of a storage with {}",
            t.offset,
            t.shape,
            t.strides,
            t.storage.numel
        );
    }
    let mut data = Vec::with_capacity(numel * elem);
    let mut index = vec![0usize; t.shape.len()];
    for _ in 0..numel {
        let at = t.offset + index.iter().zip(&t.strides).map(|(i, s)| i * s).sum::<usize>();
        data.extend_from_slice(&storage[at * elem..(at + 1) * elem]);
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < t.shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(RawTensor { dtype: t.storage.dtype, shape: t.shape.clone(), data })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pickle_bytes(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// A hand-assembled legacy file: {"w": tensor of shape (2, 3) stored transposed (stride (1, 2))}.
    fn tiny_checkpoint(extra_tail: &[u8]) -> Vec<u8> {
        let magic: &[u8] = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.";
        let protocol: &[u8] = b"\x80\x02M\xe9\x03.";
        let sys_info: &[u8] = b"\x80\x02}q\x00X\x0d\x00\x00\x00little_endianq\x01\x88s.";
        let object: &[u8] = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00wq\x02ctorch._utils\n_rebuild_tensor_v2\nq\x03((X\x07\x00\x00\x00storageq\x04ctorch\nFloatStorage\nq\x05X\x01\x00\x00\x007q\x06X\x03\x00\x00\x00cpuq\x07K\x06NtQK\x00K\x02K\x03\x86K\x01K\x02\x86\x89ccollections\nOrderedDict\n)Rtq\x08Rq\x09s.";
        let keys: &[u8] = b"\x80\x02]q\x00X\x01\x00\x00\x007q\x01a.";
        let mut storage = 6i64.to_le_bytes().to_vec();
        // Storage order is column-major for the (2, 3) view: w[i][j] = storage[i + 2 j].
        for v in [0.0f32, 3.0, 1.0, 4.0, 2.0, 5.0] {
            storage.extend_from_slice(&v.to_le_bytes());
        }
        pickle_bytes(&[magic, protocol, sys_info, object, keys, &storage, extra_tail])
    }

    #[test]
    fn gathers_strided_tensor_into_row_major() {
        let tensors = parse_state_dict(&tiny_checkpoint(b"")).unwrap();
        assert_eq!(tensors.len(), 1);
        let (name, t) = &tensors[0];
        assert_eq!(name, "w");
        assert_eq!(t.shape, vec![2, 3]);
        let values: Vec<f32> = t.data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!(values, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    }

    #[test]
    fn trailing_or_missing_bytes_are_errors() {
        let err = parse_state_dict(&tiny_checkpoint(b"xx")).unwrap_err();
        assert!(format!("{err:#}").contains("2 unexpected bytes"), "{err:#}");
        let mut short = tiny_checkpoint(b"");
        short.truncate(short.len() - 3);
        let err = parse_state_dict(&short).unwrap_err();
        assert!(format!("{err:#}").contains("storage 7 is truncated"), "{err:#}");
    }

    #[test]
    fn zip_checkpoints_are_rejected_with_a_reason() {
        let err = parse_state_dict(b"PK\x03\x04rest").unwrap_err();
        assert!(format!("{err:#}").contains("magic"), "{err:#}");
    }
}
