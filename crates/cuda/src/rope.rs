//! Rotary position embedding (GPT-NeoX rotate-half), one thread per rotated pair.

use super::buf::CudaBuf;
use super::compile::Family;
use super::launch::{self, launch};
use super::Inner;
use vlmix_engine::device::AttnShape;

pub const FAMILY: Family = Family { name: "rope", src: SRC, kernels: &["rope"] };

const SRC: &str = r#"
extern "C" __global__ void rope(float* x, const float* cos_sin, i64 rows, int seq, int heads, int hd, float sign) {
    int half = hd / 2;
    i64 n = rows * heads * half;
    GRID_STRIDE(i, n) {
        int j = (int)(i % half);
        i64 rh = i / half;
        int h = (int)(rh % heads);
        i64 row = rh / heads;
        int pos = (int)(row % seq);
        float c = cos_sin[pos * hd + j], s = sign * cos_sin[pos * hd + half + j];
        float* p = x + row * heads * hd + h * hd;
        float a = p[j], b = p[j + half];
        p[j] = a * c - b * s;
        p[j + half] = b * c + a * s;
    }
}
"#;

pub fn rope(dev: &Inner, x: &mut CudaBuf, cos_sin: &CudaBuf, shape: AttnShape, inverse: bool) {
    let hd = shape.head_dim;
    assert!(hd.is_multiple_of(2), "rope: head_dim {hd} must be even");
    assert_eq!(x.len(), shape.rows() * shape.width(), "rope: x is not [batch*seq, heads*head_dim] for {shape:?}");
    assert!(cos_sin.len() >= shape.seq * hd, "rope: table shorter than seq {}", shape.seq);
    let n = shape.rows() * shape.heads * hd / 2;
    if n == 0 {
        return;
    }
    let (xp, cs, rows, seq, heads, hd) =
        (x.addr(), cos_sin.addr(), shape.rows() as i64, shape.seq as i32, shape.heads as i32, hd as i32);
    let sign: f32 = if inverse { -1.0 } else { 1.0 };
    launch!(dev, FAMILY, "rope", launch::elementwise(n), xp, cs, rows, seq, heads, hd, sign);
}
