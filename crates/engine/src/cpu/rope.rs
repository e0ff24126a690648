//! Rotary position embedding, GPT-NeoX "rotate half" layout: within each head, element `i` pairs
//! with `i + head_dim/2` and both rotate by angle `pos * base^(-2i/head_dim)`.

use rayon::prelude::*;

use super::par::rows_per_task;
use super::simd::multiversion;
use crate::device::AttnShape;

pub fn rope(x: &mut [f32], cos_sin: &[f32], shape: AttnShape, inverse: bool) {
    let (width, hd) = (shape.width(), shape.head_dim);
    assert!(hd.is_multiple_of(2), "rope: head_dim {hd} must be even");
    assert_eq!(x.len(), shape.rows() * width, "rope: x is not [batch*seq, heads*head_dim] for {shape:?}");
    assert!(cos_sin.len() >= shape.seq * hd, "rope: table shorter than seq {}", shape.seq);
    let sign = if inverse { -1.0 } else { 1.0 };
    let per = rows_per_task(shape.rows(), width);
    x.par_chunks_mut(per * width)
        .enumerate()
        .for_each(|(block, rows)| rope_rows(rows, block * per, width, shape.seq, hd, cos_sin, sign));
}

multiversion! {
    /// Rotates whole rows of `width`, the first of which is row `first` of the batch.
    fn rope_rows(rows: &mut [f32], first: usize, width: usize, seq: usize, hd: usize, cos_sin: &[f32], sign: f32) {
        let half = hd / 2;
        for (i, row) in rows.chunks_exact_mut(width).enumerate() {
            let pos = (first + i) % seq;
            let cos = &cos_sin[pos * hd..pos * hd + half];
            let sin = &cos_sin[pos * hd + half..pos * hd + hd];
            for head in row.chunks_exact_mut(hd) {
                let (x1, x2) = head.split_at_mut(half);
                for j in 0..half {
                    let (a, b) = (x1[j], x2[j]);
                    let s = sign * sin[j];
                    x1[j] = a * cos[j] - b * s;
                    x2[j] = b * cos[j] + a * s;
                }
            }
        }
    }
}
