//! Cutting images into non-overlapping square patches, the input of ViT-style encoders.

/// `[batch, channels, size, size]` pixels -> `[batch * grid^2, channels * patch^2]` rows, patches in
/// row-major grid order and each flattened in (channel, row, column) order, which matches a
/// PyTorch `Conv2d(kernel = stride = patch)` weight `[out, channels, patch, patch]`. Pixels past the
/// last whole patch are dropped, as that convolution does.
pub fn patchify(pixels: &[f32], batch: usize, channels: usize, size: usize, patch: usize) -> Vec<f32> {
    let grid = size / patch;
    let tokens = grid * grid;
    let dim = channels * patch * patch;
    assert_eq!(pixels.len(), batch * channels * size * size, "patchify: pixels are not [batch, channels, size, size]");
    let mut rows = vec![0.0f32; batch * tokens * dim];
    for (t, row) in rows.chunks_exact_mut(dim).enumerate() {
        let (b, cell) = (t / tokens, t % tokens);
        let (py, px) = (cell / grid, cell % grid);
        for ch in 0..channels {
            for y in 0..patch {
                let src = ((b * channels + ch) * size + py * patch + y) * size + px * patch;
                row[(ch * patch + y) * patch..(ch * patch + y + 1) * patch].copy_from_slice(&pixels[src..src + patch]);
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_follow_conv_weight_order() {
        // One 2-channel 4x4 image, value = channel * 100 + row * 10 + column.
        let pixels: Vec<f32> =
            (0..2).flat_map(|c| (0..4).flat_map(move |y| (0..4).map(move |x| (c * 100 + y * 10 + x) as f32))).collect();
        let rows = patchify(&pixels, 1, 2, 4, 2);
        assert_eq!(rows.len(), 4 * 8);
        // Patch 1 is the top-right one: rows 0-1, columns 2-3.
        assert_eq!(&rows[8..16], &[2.0, 3.0, 12.0, 13.0, 102.0, 103.0, 112.0, 113.0]);
    }
}
