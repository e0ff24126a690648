//! Test-only: the heap bytes each thread holds, so a test measures exactly what a constructor or a
//! step keeps (memory plans are checked against it) while other tests allocate on their threads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    /// Heap bytes this thread holds (allocated minus freed here).
    static HELD: Cell<i64> = const { Cell::new(0) };
}

/// Counts each thread's heap bytes, so a test measures exactly what a constructor keeps while
/// other tests allocate on their own threads.
struct Counting;

fn count(bytes: i64) {
    // During thread teardown the counter may be gone; those frees are no test's.
    let _ = HELD.try_with(|h| h.set(h.get() + bytes));
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counting touches only
// a const-initialised thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as i64);
        // SAFETY: the caller's contract for `alloc` is `System.alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as i64);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as i64));
        // SAFETY: `ptr` came from `System` with `layout` (every allocation above is System's).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as i64 - layout.size() as i64);
        // SAFETY: as for `dealloc`; the caller's contract for `realloc` is `System.realloc`'s.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Heap bytes this thread holds now.
pub(crate) fn held() -> i64 {
    HELD.with(Cell::get)
}

/// Runs `f` on a one-thread rayon pool of its own. The engine's kernels then run on the thread
/// that counts, and no other test's jobs pass through it: on the global pool, rayon's job queue
/// allocates a block on whichever thread pushes and frees it on whichever thread pops, so a count
/// made beside other tests can be off by one such block.
pub(crate) fn on_own_pool<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("a one-thread pool").install(f)
}
