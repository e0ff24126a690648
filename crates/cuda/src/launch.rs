//! Launch shapes of the kernel families, and the `launch!` macro that pushes arguments.

use cudarc::driver::LaunchConfig;

/// Threads per block of elementwise (grid-stride) kernels.
pub const ELEMENTWISE_THREADS: u32 = 256;
/// Grid cap of grid-stride kernels: enough blocks to fill an H200 many times over.
pub const MAX_GRID: u64 = 1 << 16;
/// Column blocks are (32 columns, 8 row lanes); the prelude's `column_accumulate` assumes this.
pub const COLUMN_BLOCK: (u32, u32) = (32, 8);
/// Grid rows of column kernels: each thread sums `rows / (8 * this)` rows before one atomic.
const COLUMN_GRID_ROWS: u64 = 128;

/// A grid-stride kernel over `n` elements.
pub fn elementwise(n: usize) -> LaunchConfig {
    let blocks = (n as u64).div_ceil(ELEMENTWISE_THREADS as u64).clamp(1, MAX_GRID) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (ELEMENTWISE_THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// One block per row of `width` elements: a power of two from 32 to 1024 threads, about four
/// elements per thread.
pub fn rows(rows: usize, width: usize) -> LaunchConfig {
    assert!(rows <= i32::MAX as usize, "cuda: {rows} rows exceed one grid dimension");
    let threads = width.div_ceil(4).next_power_of_two().clamp(32, 1024) as u32;
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// Column sums of a `[rows, width]` matrix (see the prelude's `COLUMN_ROWS`).
pub fn columns(rows: usize, width: usize) -> LaunchConfig {
    let (bx, by) = COLUMN_BLOCK;
    let gx = (width as u64).div_ceil(bx as u64).max(1) as u32;
    let gy = (rows as u64).div_ceil(by as u64).clamp(1, COLUMN_GRID_ROWS) as u32;
    LaunchConfig { grid_dim: (gx, gy, 1), block_dim: (bx, by, 1), shared_mem_bytes: 0 }
}

/// `launch!(dev, family, "kernel", config, arg, ...)`: every argument is a local (a pointer as
/// `u64`, or a scalar of the kernel's C type), pushed by reference so it outlives the launch.
macro_rules! launch {
    ($dev:expr, $family:expr, $name:literal, $cfg:expr, $($arg:ident),* $(,)?) => {{
        let f = $dev.function(&$family, $name);
        let mut b = $dev.stream.launch_builder(&f);
        $( cudarc::driver::PushKernelArg::arg(&mut b, &$arg); )*
        // SAFETY: the arguments match the kernel's C signature (one call site per kernel), and
        // every pointer comes from a buffer whose length the caller checked against the shape.
        unsafe { b.launch($cfg) }.unwrap_or_else(|e| panic!("cuda: launching {}: {e:?}", $name));
        $dev.after_launch($name);
    }};
}
pub(crate) use launch;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elementwise_grids_cover_small_and_cap_large() {
        assert_eq!(elementwise(0).grid_dim.0, 1);
        assert_eq!(elementwise(1000).grid_dim.0, 4);
        let huge = elementwise(1 << 34);
        assert_eq!(huge.grid_dim.0 as u64, MAX_GRID, "the grid-stride loop covers the rest");
    }

    #[test]
    fn row_blocks_are_whole_warps_within_limits() {
        for width in [1, 31, 64, 512, 2048, 50_304] {
            let t = rows(7, width).block_dim.0;
            assert!(t.is_multiple_of(32) && (32..=1024).contains(&t), "width {width}: {t} threads");
        }
        assert_eq!(rows(7, 2048).block_dim.0, 512);
        assert_eq!(rows(7, 2048).grid_dim.0, 7);
    }

    #[test]
    fn column_grids_cover_every_column() {
        let c = columns(16_384, 2049);
        assert_eq!(c.block_dim, (32, 8, 1));
        assert!(c.grid_dim.0 * 32 >= 2049 && (c.grid_dim.0 - 1) * 32 < 2049);
        assert_eq!(c.grid_dim.1 as u64, COLUMN_GRID_ROWS);
        assert_eq!(columns(3, 10).grid_dim, (1, 1, 1));
    }
}
