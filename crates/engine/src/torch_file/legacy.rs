//! The legacy (pre-1.6, non-zip) container: five pickles, then the raw storages in key-list order.

use super::pickle::{self, Value};
use super::{gather_all, kind, tensor_refs, RawTensor};
use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;

const MAGIC_NUMBER: i128 = 0x1950a86a20f9469cfc6c;
const PROTOCOL_VERSION: i128 = 1001;

pub(super) fn parse(bytes: &[u8]) -> Result<Vec<(String, RawTensor)>> {
    let mut pos = 0;
    let magic = pickle::read(bytes, &mut pos).context("magic number")?;
    if magic.as_int() != Some(MAGIC_NUMBER) {
        bail!("wrong magic number {magic:?} (not a PyTorch file)");
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
    let refs = tensor_refs(object)?;

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
        let data = storage
            .bytes()
            .and_then(|len| bytes.get(pos..pos.checked_add(len)?))
            .with_context(|| format!("storage {key} is truncated"))?;
        let len = data.len();
        pos += len;
        storages.insert(key.to_string(), data);
    }
    if pos != bytes.len() {
        bail!("{} unexpected bytes after the last storage", bytes.len() - pos);
    }
    gather_all(refs, |key| storages.get(key).copied())
}

fn check_little_endian(sys_info: &Value) -> Result<()> {
    let Value::Dict(entries) = sys_info else { bail!("sys_info is {}, not a dict", kind(sys_info)) };
    let little = entries.iter().find(|(k, _)| k.as_str() == Some("little_endian")).map(|(_, v)| v);
    match little {
        Some(Value::Bool(true)) | None => Ok(()),
        Some(other) => bail!("checkpoint was written big-endian (little_endian = {other:?}); not supported"),
    }
}

fn read_i64(bytes: &[u8], pos: &mut usize) -> Result<i64> {
    let raw = bytes.get(*pos..pos.saturating_add(8)).context("truncated")?;
    *pos += 8;
    Ok(i64::from_le_bytes(raw.try_into().unwrap()))
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
        let tensors = parse(&tiny_checkpoint(b"")).unwrap();
        assert_eq!(tensors.len(), 1);
        let (name, t) = &tensors[0];
        assert_eq!(name, "w");
        assert_eq!(t.shape, vec![2, 3]);
        let values: Vec<f32> = t.data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!(values, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    }

    #[test]
    fn trailing_or_missing_bytes_are_errors() {
        let err = parse(&tiny_checkpoint(b"xx")).unwrap_err();
        assert!(format!("{err:#}").contains("2 unexpected bytes"), "{err:#}");
        let mut short = tiny_checkpoint(b"");
        short.truncate(short.len() - 3);
        let err = parse(&short).unwrap_err();
        assert!(format!("{err:#}").contains("storage 7 is truncated"), "{err:#}");
    }

    #[test]
    fn other_files_are_rejected_with_a_reason() {
        let err = parse(b"\x80\x02K\x01.rest").unwrap_err();
        assert!(format!("{err:#}").contains("magic"), "{err:#}");
    }
}
