//! Named weights read from a safetensors file, checked against the shapes a model expects.
//!
//! Every lookup states the shape it needs, so a wrong or missing tensor is reported with the file,
//! the tensor name and both shapes instead of surfacing later as an index panic.

use anyhow::{bail, Result};
use std::collections::HashSet;
use std::path::Path;
use vlmix_engine::safetensors_io::SafetensorsFile;

pub struct Weights {
    file: SafetensorsFile,
    names: HashSet<String>,
}

impl Weights {
    pub fn open(path: &Path) -> Result<Self> {
        let file = SafetensorsFile::open(path)?;
        let names = file.names().into_iter().collect();
        Ok(Self { file, names })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Every tensor name in the file, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// The tensor `name` as f32, which must have exactly `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        if !self.contains(name) {
            bail!("{}: missing tensor {name} (expected shape {shape:?})", self.path().display());
        }
        let tensor = self.file.f32(name)?;
        if tensor.shape != shape {
            bail!("{}: tensor {name} has shape {:?}, expected {shape:?}", self.path().display(), tensor.shape);
        }
        Ok(tensor.data)
    }
}
