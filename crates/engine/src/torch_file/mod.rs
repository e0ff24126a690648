//! PyTorch checkpoints (`torch.save` files) read without Python: both container formats.
//!
//! - zip (PyTorch >= 1.6, `zip.rs`): `<archive>/data.pkl` is the object pickle, each storage is the
//!   entry `<archive>/data/<key>`.
//! - legacy (`legacy.rs`, torch/serialization.py `_legacy_load`): five pickles back to back (magic
//!   number, protocol version 1001, sys_info, the object, the storage key list), then each storage's
//!   raw bytes in key-list order, each preceded by its element count as a little-endian i64.
//!
//! In both, the object's tensors are `_rebuild_tensor_v2(storage, offset, size, stride, ...)` calls
//! whose storages are persistent ids `("storage", torch.FloatStorage, key, location, numel[, view])`.
//! The object is a state dict, or a training checkpoint holding one under `state_dict` (open_lm's
//! `epoch_N.pt`). Tensors may be stored with any strides (the EfficientNet file keeps TensorFlow's
//! HWIO order), so each is gathered into a contiguous row-major copy.

mod legacy;
pub mod pickle;
mod zip;

use pickle::Value;

use anyhow::{bail, ensure, Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;

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

impl StorageRef {
    /// Size in bytes; `None` when the declared element count overflows.
    fn bytes(&self) -> Option<usize> {
        self.numel.checked_mul(self.dtype.bitsize() / 8)
    }
}

/// A tensor as the object pickle describes it, before the storages are read.
struct TensorRef {
    storage: StorageRef,
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

/// Reads every tensor of a checkpoint's state dict (zip or legacy format), in file order.
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, RawTensor)>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: the mapping is read-only and dropped before returning; a checkpoint being rewritten
    // underneath would at worst fail to parse.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
    let parsed = if bytes.starts_with(zip::LOCAL_HEADER) { zip::parse(&bytes) } else { legacy::parse(&bytes) };
    parsed.with_context(|| format!("{}: not a readable PyTorch checkpoint", path.display()))
}

/// Converts a checkpoint to a safetensors file (written atomically), keeping names and shapes.
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
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| anyhow::anyhow!("serialising {}: {e}", out.display()))?;
    vlmix_atomic_file::write_atomic(out, &bytes)
}

/// The state dict's tensors described by the object pickle: the object itself, or its `state_dict`
/// entry (training checkpoints also hold the epoch, name, loss, ...).
fn tensor_refs(object: Value) -> Result<Vec<(String, TensorRef)>> {
    let Value::Dict(mut entries) = object else { bail!("the checkpoint holds {}, not a state dict", kind(&object)) };
    if let Some(i) = entries.iter().position(|(k, _)| k.as_str() == Some("state_dict")) {
        match entries.swap_remove(i).1 {
            Value::Dict(inner) => entries = inner,
            other => bail!("`state_dict` is {}, not a dict", kind(&other)),
        }
    }
    let mut refs = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let name = key.as_str().with_context(|| format!("state dict key {key:?} is not a string"))?.to_string();
        let tensor = tensor_ref(&value).with_context(|| format!("tensor {name}"))?;
        refs.push((name, tensor));
    }
    Ok(refs)
}

/// Gathers every tensor from its storage's bytes (`storage(key)`).
fn gather_all<'a>(
    refs: Vec<(String, TensorRef)>,
    storage: impl Fn(&str) -> Option<&'a [u8]>,
) -> Result<Vec<(String, RawTensor)>> {
    refs.into_iter()
        .map(|(name, t)| {
            let data = storage(&t.storage.key)
                .with_context(|| format!("tensor {name}: storage {} is missing", t.storage.key))?;
            let bytes = t.storage.bytes().with_context(|| format!("tensor {name}: storage numel overflows"))?;
            ensure!(
                data.len() >= bytes,
                "tensor {name}: storage {} holds {} bytes, the pickle says {bytes}",
                t.storage.key,
                data.len()
            );
            let raw = gather(&t, data).with_context(|| format!("tensor {name}"))?;
            Ok((name, raw))
        })
        .collect()
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

fn usize_of(v: &Value, what: &str) -> Result<usize> {
    let i = v.as_int().with_context(|| format!("{what} is {}, not an int", kind(v)))?;
    usize::try_from(i).with_context(|| format!("{what} = {i} is negative or too large"))
}

fn usize_seq(v: &Value, what: &str) -> Result<Vec<usize>> {
    v.as_seq()
        .with_context(|| format!("{what} is {}, not a tuple", kind(v)))?
        .iter()
        .map(|x| usize_of(x, what))
        .collect()
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

/// Interprets the persistent id `("storage", torch.XStorage, key, location, numel[, view_metadata])`.
fn storage_ref(value: &Value) -> Result<StorageRef> {
    let Value::Persistent(id) = value else { bail!("storage is {}, not a persistent id", kind(value)) };
    let fields = id.as_seq().context("persistent id is not a tuple")?;
    ensure!(
        (5..=6).contains(&fields.len()) && fields[0].as_str() == Some("storage"),
        "persistent id {id:?} is not a storage"
    );
    if fields.get(5).is_some_and(|view| !matches!(view, Value::None)) {
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
    let view = || format!("view (offset {}, size {:?}, stride {:?})", t.offset, t.shape, t.strides);
    let numel =
        t.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).with_context(|| format!("{} overflows", view()))?;
    // A view never holds more elements than its storage (no stride-0 expansion), which also caps
    // the copy below by the storage's size, i.e. by the file.
    ensure!(numel <= t.storage.numel, "{} has {numel} elements, its storage {}", view(), t.storage.numel);
    if numel > 0 {
        let last = t
            .shape
            .iter()
            .zip(&t.strides)
            .try_fold(t.offset, |at, (&n, &s)| at.checked_add((n - 1).checked_mul(s)?))
            .with_context(|| format!("{} overflows", view()))?;
        ensure!(last < t.storage.numel, "{} reaches element {last} of a storage with {}", view(), t.storage.numel);
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

    fn view(numel: usize, shape: Vec<usize>, strides: Vec<usize>) -> TensorRef {
        TensorRef { storage: StorageRef { key: "0".into(), dtype: Dtype::F32, numel }, offset: 0, shape, strides }
    }

    /// A declared size is checked against the storage before anything is allocated (issue 26).
    #[test]
    fn oversized_or_overflowing_views_are_refused() {
        let err = gather(&view(1, vec![1 << 40], vec![0]), &[0; 4]).unwrap_err().to_string();
        assert!(err.contains("1099511627776 elements"), "{err}");
        let err = gather(&view(usize::MAX, vec![usize::MAX, 2], vec![1, 1]), &[0; 4]).unwrap_err().to_string();
        assert!(err.contains("overflows"), "{err}");
        let err = gather(&view(usize::MAX, vec![2, 2], vec![usize::MAX, 1]), &[0; 4]).unwrap_err().to_string();
        assert!(err.contains("overflows"), "{err}");
    }
}
