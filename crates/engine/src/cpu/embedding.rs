//! Token-embedding lookup and its scatter-add backward.

use rayon::prelude::*;

use super::par::{rows_per_task, SendPtr};

pub fn forward(ids: &[u32], table: &[f32], out: &mut [f32]) {
    let width = out.len() / ids.len().max(1);
    assert_eq!(out.len(), ids.len() * width, "embedding: output is not [ids, width]");
    let rows_per = rows_per_task(ids.len(), width);
    out.par_chunks_mut(rows_per * width).zip(ids.par_chunks(rows_per)).for_each(|(block, ids)| {
        for (row, &id) in block.chunks_exact_mut(width).zip(ids) {
            let start = id as usize * width;
            row.copy_from_slice(&table[start..start + width]);
        }
    });
}

/// Threads split the columns, so repeated ids never race.
pub fn backward(ids: &[u32], dout: &[f32], dtable: &mut [f32]) {
    let width = dout.len() / ids.len().max(1);
    assert_eq!(dout.len(), ids.len() * width, "embedding backward: dout is not [ids, width]");
    let threads = rayon::current_num_threads().max(1);
    let cols_per = width.div_ceil(threads).max(1);
    let table = SendPtr(dtable.as_mut_ptr());
    let table_len = dtable.len();
    (0..width).step_by(cols_per).collect::<Vec<_>>().into_par_iter().for_each(|c0| {
        let c1 = (c0 + cols_per).min(width);
        for (r, &id) in ids.iter().enumerate() {
            let base = id as usize * width;
            assert!(base + width <= table_len, "embedding backward: id {id} out of range");
            let src = &dout[r * width + c0..r * width + c1];
            // SAFETY: in bounds (checked); this task alone writes columns c0..c1.
            let dst = unsafe { std::slice::from_raw_parts_mut(table.get().add(base + c0), c1 - c0) };
            for (d, s) in dst.iter_mut().zip(src) {
                *d += s;
            }
        }
    });
}
