//! Named model parameters with their gradients: the single owner of every trainable tensor.
//!
//! Layers address parameters by `ParamId`; values and gradients live in separate vectors so a
//! backward pass can read weights while writing (several) gradients at once. Names follow
//! ARCHITECTURE.md, which makes the store 1:1 with safetensors checkpoints and PyTorch's
//! `state_dict`. Values and gradients are device buffers; the host sees them only when a
//! checkpoint is saved or loaded.

use crate::safetensors_io::{write_f32_tensors, F32View, SafetensorsFile};
use crate::{Cpu, Device};
use anyhow::{bail, Context, Result};
use safetensors::Dtype;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// Index of a parameter in its `ParamStore`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(pub usize);

/// What the optimizer may do with a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamFlags {
    /// Frozen parameters (e.g. a pretrained vision encoder) get no optimizer updates.
    pub trainable: bool,
    /// Decoupled weight decay applies (set by the model's rule, e.g. the LM's `weight_decay_rule`).
    pub weight_decay: bool,
}

impl ParamFlags {
    /// A weight matrix of a linear layer: trained and decayed.
    pub const MATRIX: Self = Self { trainable: true, weight_decay: true };
    /// Trained, never decayed (e.g. embeddings, norm gains and biases under the `matrices` rule).
    pub const NO_DECAY: Self = Self { trainable: true, weight_decay: false };
    /// Not trained at all.
    pub const FROZEN: Self = Self { trainable: false, weight_decay: false };
}

#[derive(Debug, Clone)]
pub struct ParamInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub flags: ParamFlags,
}

impl ParamInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Every parameter of a model on device `D`: values, gradients, names, shapes and flags.
pub struct ParamStore<D: Device = Cpu> {
    dev: D,
    infos: Vec<ParamInfo>,
    values: Vec<D::Owned>,
    grads: Vec<D::Owned>,
    by_name: HashMap<String, ParamId>,
}

/// Read access to all parameter values, borrowed alongside `Grads`.
pub struct Values<'a, D: Device = Cpu>(&'a [D::Owned]);

impl<D: Device> Clone for Values<'_, D> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<D: Device> Copy for Values<'_, D> {}

impl<'a, D: Device> Values<'a, D> {
    pub fn get(&self, id: ParamId) -> &'a D::Buf {
        &self.0[id.0]
    }
}

/// Write access to all gradients, borrowed alongside `Values`.
pub struct Grads<'a, D: Device = Cpu>(&'a mut [D::Owned]);

impl<D: Device> Grads<'_, D> {
    pub fn get_mut(&mut self, id: ParamId) -> &mut D::Buf {
        &mut self.0[id.0]
    }

    /// Several distinct gradients at once (e.g. a norm gain and a projection in one backward).
    ///
    /// Panics if an id repeats: that is a bug in the caller's layer wiring, not bad input.
    pub fn get_many_mut<const N: usize>(&mut self, ids: [ParamId; N]) -> [&mut D::Buf; N] {
        let mut slots: Vec<Option<&mut D::Owned>> = self.0.iter_mut().map(Some).collect();
        ids.map(|id| {
            &mut **slots
                .get_mut(id.0)
                .and_then(Option::take)
                .unwrap_or_else(|| panic!("gradient ids {ids:?} overlap or are out of range"))
        })
    }
}

impl<D: Device> ParamStore<D> {
    /// An empty store whose tensors will live on `dev`.
    pub fn new(dev: D) -> Self {
        Self { dev, infos: Vec::new(), values: Vec::new(), grads: Vec::new(), by_name: HashMap::new() }
    }

    /// The device holding the tensors (models built on this store compute there).
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// Registers a parameter with its initial value (moved to the device). Names must be unique.
    pub fn add(&mut self, name: &str, shape: &[usize], value: Vec<f32>, flags: ParamFlags) -> Result<ParamId> {
        let numel: usize = shape.iter().product();
        if value.len() != numel {
            bail!("parameter {name}: shape {shape:?} needs {numel} values, got {}", value.len());
        }
        if self.by_name.contains_key(name) {
            bail!("parameter {name} registered twice");
        }
        let id = ParamId(self.infos.len());
        self.infos.push(ParamInfo { name: name.to_owned(), shape: shape.to_vec(), flags });
        self.values.push(self.dev.upload_vec(value));
        self.grads.push(self.dev.zeros(numel));
        self.by_name.insert(name.to_owned(), id);
        Ok(id)
    }

    pub fn len(&self) -> usize {
        self.infos.len()
    }

    pub fn is_empty(&self) -> bool {
        self.infos.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = ParamId> {
        (0..self.infos.len()).map(ParamId)
    }

    pub fn id(&self, name: &str) -> Option<ParamId> {
        self.by_name.get(name).copied()
    }

    pub fn info(&self, id: ParamId) -> &ParamInfo {
        &self.infos[id.0]
    }

    pub fn value(&self, id: ParamId) -> &D::Buf {
        &self.values[id.0]
    }

    pub fn value_mut(&mut self, id: ParamId) -> &mut D::Buf {
        &mut self.values[id.0]
    }

    pub fn grad(&self, id: ParamId) -> &D::Buf {
        &self.grads[id.0]
    }

    pub fn grad_mut(&mut self, id: ParamId) -> &mut D::Buf {
        &mut self.grads[id.0]
    }

    /// Read access to every value (what a forward pass needs).
    pub fn values(&self) -> Values<'_, D> {
        Values(&self.values)
    }

    /// Values (read) and gradients (write) at the same time, for backward passes.
    pub fn split(&mut self) -> (Values<'_, D>, Grads<'_, D>) {
        (Values(&self.values), Grads(&mut self.grads))
    }

    /// The device, values (write) and gradients (read) at the same time, for optimizers.
    pub fn values_mut_and_grads(&mut self) -> (&D, &mut [D::Owned], &[D::Owned]) {
        (&self.dev, &mut self.values, &self.grads)
    }

    pub fn set_trainable(&mut self, id: ParamId, trainable: bool) {
        self.infos[id.0].flags.trainable = trainable;
    }

    pub fn zero_grad(&mut self) {
        for g in &mut self.grads {
            self.dev.fill(g, 0.0);
        }
    }

    /// Total number of scalars, optionally only trainable ones.
    pub fn numel(&self, trainable_only: bool) -> usize {
        self.infos.iter().filter(|i| i.flags.trainable || !trainable_only).map(ParamInfo::numel).sum()
    }

    /// Writes every parameter value, by name, atomically.
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        let host: Vec<_> = self.values.iter().map(|v| self.dev.to_host(v)).collect();
        let views = self
            .infos
            .iter()
            .zip(&host)
            .map(|(info, v)| (info.name.clone(), F32View { shape: info.shape.clone(), data: v }));
        write_f32_tensors(path, views, None)
    }

    /// Loads every parameter from a file that must hold exactly this store's names and shapes.
    pub fn load_safetensors(&mut self, path: &Path) -> Result<()> {
        let file = SafetensorsFile::open(path)?;
        self.load_from(&file, true)
    }

    /// Checks that `file` holds float tensors of this store's shapes (with `exact`, exactly this
    /// store's names), without loading anything.
    pub fn check_file(&self, file: &SafetensorsFile, exact: bool) -> Result<()> {
        let in_file: BTreeSet<String> = file.names().into_iter().collect();
        if exact {
            let ours: BTreeSet<String> = self.infos.iter().map(|i| i.name.clone()).collect();
            let missing: Vec<&String> = ours.difference(&in_file).collect();
            let unexpected: Vec<&String> = in_file.difference(&ours).collect();
            if !missing.is_empty() || !unexpected.is_empty() {
                bail!(
                    "{}: parameters do not match the model: missing {missing:?}, unexpected {unexpected:?}",
                    file.path().display()
                );
            }
        }
        for info in self.infos.iter().filter(|i| in_file.contains(&i.name)) {
            let (dtype, shape) = file.dtype_and_shape(&info.name)?;
            if shape != info.shape {
                bail!(
                    "{}: tensor {} has shape {:?} in the file but the model expects {:?}",
                    file.path().display(),
                    info.name,
                    shape,
                    info.shape
                );
            }
            if !matches!(dtype, Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::BF16) {
                bail!("{}: tensor {} has dtype {dtype:?}, expected a float type", file.path().display(), info.name);
            }
        }
        Ok(())
    }

    /// Loads the parameters present in `file`; with `exact`, missing or extra tensors are errors.
    ///
    /// Everything is checked before any value changes, so a failed load leaves the store intact.
    pub fn load_from(&mut self, file: &SafetensorsFile, exact: bool) -> Result<()> {
        self.check_file(file, exact)?;
        let in_file: BTreeSet<String> = file.names().into_iter().collect();
        for (info, value) in self.infos.iter().zip(&mut self.values) {
            if in_file.contains(&info.name) {
                *value = self.dev.upload_vec(file.f32(&info.name)?.data);
            }
        }
        Ok(())
    }

    /// Loads `path` into this store, naming the file on any failure.
    pub fn load_partial_safetensors(&mut self, path: &Path) -> Result<()> {
        let file = SafetensorsFile::open(path)?;
        self.load_from(&file, false).with_context(|| format!("loading parameters from {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch_dir;

    fn store() -> ParamStore {
        let mut s = ParamStore::new(Cpu::new().unwrap());
        s.add("w", &[2, 3], (0..6).map(|i| i as f32).collect(), ParamFlags::MATRIX).unwrap();
        s.add("g", &[3], vec![1.0; 3], ParamFlags::NO_DECAY).unwrap();
        s
    }

    #[test]
    fn split_borrows_and_zero_grad() {
        let mut s = store();
        let (w, g) = (s.id("w").unwrap(), s.id("g").unwrap());
        {
            let (values, mut grads) = s.split();
            let [dw, dg] = grads.get_many_mut([w, g]);
            dw.copy_from_slice(values.get(w));
            dg.copy_from_slice(values.get(g));
        }
        assert_eq!(s.grad(w), s.value(w));
        s.zero_grad();
        assert!(s.grad(w).iter().chain(s.grad(g)).all(|&x| x == 0.0));
        assert_eq!(s.numel(false), 9);
        s.set_trainable(w, false);
        assert_eq!(s.numel(true), 3);
    }

    #[test]
    fn duplicate_and_wrong_length_are_errors() {
        let mut s = store();
        assert!(s.add("w", &[1], vec![0.0], ParamFlags::MATRIX).unwrap_err().to_string().contains("twice"));
        assert!(s.add("x", &[2, 2], vec![0.0], ParamFlags::MATRIX).unwrap_err().to_string().contains("[2, 2]"));
    }

    #[test]
    fn save_load_round_trip() {
        let dir = scratch_dir("params");
        let path = dir.join("p.safetensors");
        let s = store();
        s.save_safetensors(&path).unwrap();
        let mut t = store();
        t.value_mut(ParamId(0)).fill(-1.0);
        t.load_safetensors(&path).unwrap();
        assert_eq!(t.value(ParamId(0)), s.value(ParamId(0)));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn shape_mismatch_names_tensor_and_both_shapes() {
        let dir = scratch_dir("params-shape");
        let path = dir.join("p.safetensors");
        let mut other = ParamStore::new(Cpu::new().unwrap());
        other.add("w", &[3, 2], vec![0.0; 6], ParamFlags::MATRIX).unwrap();
        other.add("g", &[3], vec![0.0; 3], ParamFlags::NO_DECAY).unwrap();
        other.save_safetensors(&path).unwrap();
        let mut s = store();
        let before = s.value(ParamId(1)).to_vec();
        let err = s.load_safetensors(&path).unwrap_err().to_string();
        assert!(err.contains("tensor w") && err.contains("[3, 2]") && err.contains("[2, 3]"), "{err}");
        assert_eq!(s.value(ParamId(1)), before, "a failed load must not change anything");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_and_unexpected_are_named() {
        let dir = scratch_dir("params-names");
        let path = dir.join("p.safetensors");
        let mut other = ParamStore::new(Cpu::new().unwrap());
        other.add("w", &[2, 3], vec![0.0; 6], ParamFlags::MATRIX).unwrap();
        other.add("extra", &[1], vec![0.0], ParamFlags::MATRIX).unwrap();
        other.save_safetensors(&path).unwrap();
        let err = store().load_safetensors(&path).unwrap_err().to_string();
        assert!(err.contains("missing [\"g\"]") && err.contains("unexpected [\"extra\"]"), "{err}");
        let mut s = store();
        s.load_partial_safetensors(&path).unwrap();
        assert_eq!(s.value(ParamId(0)), &[0.0; 6]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
