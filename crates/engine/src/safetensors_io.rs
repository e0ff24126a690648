//! Reading and writing named tensors in the safetensors format (PyTorch/HF exchange format).
//!
//! Values are f32 in memory; files may also hold i64/i32 (token ids in test fixtures) and
//! f16/bf16/f64 weights, which are converted on read. Writes are atomic (see `vlmix_atomic_file`).

use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView, View};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use vlmix_atomic_file::write_atomic_with;

#[cfg(target_endian = "big")]
compile_error!("safetensors stores little-endian data; vlmix reinterprets f32 slices as bytes");

/// One tensor read from a file: its shape and row-major values.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor<T> {
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

/// A safetensors file mapped into memory, with tensors converted on demand.
pub struct SafetensorsFile {
    path: PathBuf,
    bytes: memmap2::Mmap,
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: vlmix replaces files by rename (`vlmix_atomic_file`), never rewrites them in place, so
        // the mapped bytes do not change while mapped.
        let bytes = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
        SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file: {e}", path.display()))?;
        Ok(Self { path: path.to_path_buf(), bytes })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn parsed(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("validated in open")
    }

    /// Tensor names in sorted order.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.parsed().names().into_iter().map(str::to_owned).collect();
        names.sort();
        names
    }

    /// The string metadata of the header (`__metadata__`), empty when absent.
    pub fn metadata(&self) -> Result<HashMap<String, String>> {
        let (_, meta) =
            SafeTensors::read_metadata(&self.bytes).map_err(|e| anyhow::anyhow!("{}: {e}", self.path.display()))?;
        Ok(meta.metadata().clone().unwrap_or_default())
    }

    fn view(&self, name: &str) -> Result<TensorView<'_>> {
        self.parsed().tensor(name).map_err(|_| anyhow::anyhow!("{}: no tensor named {name:?}", self.path.display()))
    }

    /// Dtype and shape of a tensor, without reading its data.
    pub fn dtype_and_shape(&self, name: &str) -> Result<(Dtype, Vec<usize>)> {
        let view = self.view(name)?;
        Ok((view.dtype(), view.shape().to_vec()))
    }

    /// A floating-point tensor as f32.
    pub fn f32(&self, name: &str) -> Result<Tensor<f32>> {
        let view = self.view(name)?;
        let data = float_bytes_to_f32(view.dtype(), view.data())
            .with_context(|| format!("{}: tensor {name:?}", self.path.display()))?;
        Ok(Tensor { shape: view.shape().to_vec(), data })
    }

    /// An integer tensor (i64, i32 or u8) as i64.
    pub fn i64(&self, name: &str) -> Result<Tensor<i64>> {
        let view = self.view(name)?;
        let bytes = view.data();
        let data: Vec<i64> = match view.dtype() {
            Dtype::I64 => bytes.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect(),
            Dtype::I32 => bytes.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64).collect(),
            Dtype::U8 => bytes.iter().map(|&b| b as i64).collect(),
            other => bail!("{}: tensor {name:?} has dtype {other:?}, expected an integer type", self.path.display()),
        };
        Ok(Tensor { shape: view.shape().to_vec(), data })
    }
}

/// Little-endian float data of `dtype` (f32, f64, f16, bf16) as f32 (exactly, but for f64).
pub fn float_bytes_to_f32(dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
        Dtype::F64 => bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect(),
        Dtype::BF16 => {
            bytes.chunks_exact(2).map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)).collect()
        }
        other => bail!("dtype {other:?} is not a float type"),
    })
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: renormalise the mantissa.
            let shift = mant.leading_zeros() - 21;
            sign | ((127 - 15 + 1 - shift) << 23) | ((mant << shift) & 0x3ff) << 13
        }
        (0x1f, _) => sign | 0x7f80_0000 | (mant << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

/// A borrowed f32 tensor to be written.
pub struct F32View<'a> {
    pub shape: Vec<usize>,
    pub data: &'a [f32],
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        // SAFETY: f32 has no padding and any byte pattern is a valid u8; little-endian is enforced
        // at compile time above, matching the file format.
        Cow::Borrowed(unsafe {
            std::slice::from_raw_parts(self.data.as_ptr().cast::<u8>(), std::mem::size_of_val(self.data))
        })
    }
    fn data_len(&self) -> usize {
        std::mem::size_of_val(self.data)
    }
}

/// Atomically writes named f32 tensors (streamed, no second copy in memory) plus string metadata.
pub fn write_f32_tensors<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (String, F32View<'a>)>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let tensors: Vec<(String, F32View<'a>)> = tensors.into_iter().collect();
    for (name, view) in &tensors {
        let want: usize = view.shape.iter().product();
        if want != view.data.len() {
            bail!("tensor {name:?}: shape {:?} needs {want} values, got {}", view.shape, view.data.len());
        }
    }
    write_atomic_with(path, |temp| {
        safetensors::tensor::serialize_to_file(tensors, metadata, temp).map_err(|e| anyhow::anyhow!("serialize: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch_dir;

    #[test]
    fn f32_round_trip_with_metadata() {
        let dir = scratch_dir("st");
        let path = dir.join("t.safetensors");
        let a = [1.0f32, -2.5, 3.25, 0.0, 7.0, 1e-20];
        let b = [42.0f32];
        let meta = HashMap::from([("step".to_string(), "7".to_string())]);
        write_f32_tensors(
            &path,
            [
                ("a".to_string(), F32View { shape: vec![2, 3], data: &a }),
                ("b".to_string(), F32View { shape: vec![], data: &b }),
            ],
            Some(meta.clone()),
        )
        .unwrap();
        let file = SafetensorsFile::open(&path).unwrap();
        assert_eq!(file.names(), vec!["a", "b"]);
        assert_eq!(file.f32("a").unwrap(), Tensor { shape: vec![2, 3], data: a.to_vec() });
        assert_eq!(file.f32("b").unwrap().shape, Vec::<usize>::new());
        assert_eq!(file.metadata().unwrap(), meta);
        let err = file.f32("c").unwrap_err().to_string();
        assert!(err.contains("\"c\"") && err.contains("t.safetensors"), "{err}");
        let err = file.i64("a").unwrap_err().to_string();
        assert!(err.contains("F32"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn shape_data_mismatch_is_an_error() {
        let dir = scratch_dir("st-bad");
        let err = write_f32_tensors(
            &dir.join("x.safetensors"),
            [("w".to_string(), F32View { shape: vec![2, 2], data: &[1.0; 3] })],
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("\"w\"") && err.contains("[2, 2]"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn corrupt_file_is_an_error_naming_it() {
        let dir = scratch_dir("st-corrupt");
        let path = dir.join("broken.safetensors");
        std::fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json").unwrap();
        let err = SafetensorsFile::open(&path).err().unwrap().to_string();
        assert!(err.contains("broken.safetensors"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn half_precision_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert!(f16_to_f32(0x7c00).is_infinite());
    }
}
