//! Token embedding: `out[r] = table[ids[r]]`; backward scatter-adds into the table gradient.

use anyhow::{bail, Result};

use crate::Device;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Embedding {
    pub vocab: usize,
    pub width: usize,
}

impl Embedding {
    /// Fails (naming the position) when an id is outside the vocabulary: ids come from data files.
    pub fn check_ids(&self, ids: &[u32]) -> Result<()> {
        if let Some((pos, id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= self.vocab) {
            bail!("token id {id} at position {pos} is outside the vocabulary of {}", self.vocab);
        }
        Ok(())
    }

    /// `table` is `[vocab, width]`, `out` is `[ids.len(), width]`.
    pub fn forward<D: Device>(&self, dev: &D, table: &D::Buf, ids: &[u32], out: &mut D::Buf) -> Result<()> {
        self.check_ids(ids)?;
        assert_eq!(dev.len(table), self.vocab * self.width, "embedding: table is not [vocab, width]");
        assert_eq!(dev.len(out), ids.len() * self.width, "embedding: out is not [ids, width]");
        dev.embedding_forward(ids, table, out);
        Ok(())
    }

    /// Accumulates into `dtable`; `ids` were validated by `forward`.
    pub fn backward<D: Device>(&self, dev: &D, ids: &[u32], dout: &D::Buf, dtable: &mut D::Buf) {
        assert_eq!(dev.len(dtable), self.vocab * self.width, "embedding backward: dtable is not [vocab, width]");
        assert_eq!(dev.len(dout), ids.len() * self.width, "embedding backward: dout is not [ids, width]");
        dev.embedding_backward(ids, dout, dtable);
    }
}
