//! Work splitting for the fused kernels: enough tasks to keep every core busy, each big enough to
//! amortise rayon's scheduling (a few microseconds) on small activations.

use std::ops::Range;

/// Minimum elements a task should touch before splitting pays off.
const MIN_TASK_ELEMENTS: usize = 16 * 1024;

/// Rows per task for a row-parallel loop over `rows` rows of `width` elements.
pub fn rows_per_task(rows: usize, width: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let min_rows = (MIN_TASK_ELEMENTS / width.max(1)).max(1);
    rows.div_ceil(threads * 4).max(min_rows).max(1)
}

/// Contiguous row ranges, one per thread (fewer for small inputs), for kernels that reduce over
/// rows into per-task partial sums.
pub fn row_blocks(rows: usize, width: usize) -> Vec<Range<usize>> {
    let threads = rayon::current_num_threads().max(1);
    let min_rows = (MIN_TASK_ELEMENTS / width.max(1)).max(1);
    let blocks = rows.div_ceil(min_rows).clamp(1, threads);
    let per = rows.div_ceil(blocks).max(1);
    (0..rows).step_by(per).map(|start| start..(start + per).min(rows)).collect()
}

/// A raw pointer that may cross threads; users guarantee that threads write disjoint elements.
#[derive(Clone, Copy)]
pub struct SendPtr(pub *mut f32);

impl SendPtr {
    /// Going through a method makes closures capture the whole (Send) wrapper, not the field.
    pub fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: only used to hand disjoint regions of one buffer to different threads.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
