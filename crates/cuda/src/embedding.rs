//! Token-embedding lookup and its scatter-add backward (atomics: repeated ids add up).

use super::buf::CudaBuf;
use super::compile::Family;
use super::elementwise::width_of;
use super::launch::{self, launch};
use super::Inner;

pub const FAMILY: Family =
    Family { name: "embedding", src: SRC, kernels: &["embedding_forward", "embedding_backward"] };

const SRC: &str = r#"
extern "C" __global__ void embedding_forward(const u32* ids, const float* table, float* out, i64 n, int width) {
    GRID_STRIDE(i, n) out[i] = table[(i64)ids[i / width] * width + i % width];
}

extern "C" __global__ void embedding_backward(const u32* ids, const float* dout, float* dtable, i64 n, int width) {
    GRID_STRIDE(i, n) atomicAdd(dtable + (i64)ids[i / width] * width + i % width, dout[i]);
}
"#;

/// Checks every id against the table (an out-of-range id would read or write outside it on the
/// device) and uploads them.
fn ids_on_device<'a>(dev: &'a Inner, what: &str, ids: &[u32], table_len: usize, width: usize) -> super::Temp<'a> {
    let vocab = table_len / width.max(1);
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
        panic!("{what}: id {bad} out of range for a table of {vocab} rows");
    }
    dev.upload_temp(ids)
}

pub fn forward(dev: &Inner, ids: &[u32], table: &CudaBuf, out: &mut CudaBuf) {
    let width = width_of("embedding: output", out.len(), ids.len());
    if width == 0 || ids.is_empty() {
        return;
    }
    let idx = ids_on_device(dev, "embedding", ids, table.len(), width);
    let (i, t, o, n, w) = (idx.addr, table.addr(), out.addr(), out.len() as i64, width as i32);
    launch!(dev, FAMILY, "embedding_forward", launch::elementwise(n as usize), i, t, o, n, w);
}

pub fn backward(dev: &Inner, ids: &[u32], dout: &CudaBuf, dtable: &mut CudaBuf) {
    let width = width_of("embedding backward: dout", dout.len(), ids.len());
    if width == 0 || ids.is_empty() {
        return;
    }
    let idx = ids_on_device(dev, "embedding backward", ids, dtable.len(), width);
    let (i, d, t, n, w) = (idx.addr, dout.addr(), dtable.addr(), dout.len() as i64, width as i32);
    launch!(dev, FAMILY, "embedding_backward", launch::elementwise(n as usize), i, d, t, n, w);
}
