//! The global allocator: mimalloc, called so that its fast path is taken.
//!
//! The `mimalloc` crate passes every allocation to `mi_malloc_aligned`,
//! whose fast path only succeeds while the size class's current page has a
//! free block at hand. When it has none (after every block was handed out
//! and the frees went to the page's local list, i.e. the alloc/free
//! ping-pong of a request), `mi_malloc_aligned` gives up on any size that
//! is not a power of two and over-allocates from a larger size class,
//! marking the page as holding interior pointers. Under callgrind that was
//! five slow-path allocations per proxied HTTP/1.1 request, about 2 000
//! instructions of 29 000 (docs/benchmarks.md).
//!
//! Every block mimalloc hands out from plain `mi_malloc` is aligned to
//! `MI_MAX_ALIGN_SIZE` (16) or, when smaller, to the largest power of two
//! dividing its size class, so a layout whose alignment is at most 16 and
//! at most its size is served by `mi_malloc`, exactly as Rust's `System`
//! allocator uses `malloc` under the same condition. Other layouts still
//! go to the aligned entry points.
//!
//! This is the crate's only `unsafe` code (the workspace denies it
//! elsewhere): `GlobalAlloc` is an unsafe trait, and [`trim_if_due`] calls
//! mimalloc's `mi_collect`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::ffi::c_void;
use std::time::{Duration, Instant};

use libmimalloc_sys as mi;

/// The largest alignment `mi_malloc` guarantees (`MI_MAX_ALIGN_SIZE`).
const MIN_ALIGN: usize = 16;

/// mimalloc as Rust's global allocator (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct Mimalloc;

#[inline]
fn plain(layout: Layout) -> bool {
    layout.align() <= MIN_ALIGN && layout.align() <= layout.size()
}

// SAFETY: every method forwards to mimalloc, which returns null on failure
// and otherwise a block of at least `size` bytes; `plain` only routes a
// layout to the unaligned entry points when mimalloc's guaranteed alignment
// covers it (see the module docs). Blocks from either family are freed and
// reallocated by the same mimalloc heap.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl comment.
        unsafe {
            if plain(layout) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl comment.
        unsafe {
            if plain(layout) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (the caller's contract).
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout` (the
        // caller's contract); the new layout keeps the alignment.
        unsafe {
            if layout.align() <= MIN_ALIGN && layout.align() <= new_size {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every layout comes back aligned, writable, and survives a realloc.
    #[test]
    fn blocks_are_aligned_for_every_layout() {
        let a = Mimalloc;
        for align in [1usize, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1usize, 3, 7, 8, 12, 24, 40, 100, 1000, 5000, 70_000] {
                let layout = Layout::from_size_align(size, align).expect("layout");
                // SAFETY: a non-zero-sized layout; the block is written
                // within its size and freed once.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xa5, size);
                    let q = a.realloc(p, layout, size * 3);
                    assert!(!q.is_null());
                    assert_eq!(q as usize % align, 0, "realloc size {size} align {align}");
                    assert_eq!(*q.add(size - 1), 0xa5);
                    a.dealloc(q, Layout::from_size_align(size * 3, align).expect("layout"));
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}

/// How often, at most, a runtime thread hands its heap's free memory back
/// to the OS.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(1);

thread_local! {
    static LAST_TRIM: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Returns the calling thread's free heap memory to the OS (mimalloc's
/// `mi_collect`), unless it did so less than [`TRIM_INTERVAL`] ago.
///
/// mimalloc keeps the pages of freed blocks for reuse, and purges them
/// only when it is called again later: after a config push (the decoded
/// responses, the previous state) or a burst of connections (their
/// buffers), an idle proxy would keep them resident for good. The binary
/// calls this when a runtime thread is about to park (idle) and from a
/// ticker that wakes the runtime once per interval (see `keel-proxy.rs`).
/// Under load it runs at most once per interval per thread; the
/// instructions per request do not change.
pub fn trim_if_due() {
    let now = Instant::now();
    LAST_TRIM.with(|last| {
        if last
            .get()
            .is_some_and(|t| now.saturating_duration_since(t) < TRIM_INTERVAL)
        {
            return;
        }
        last.set(Some(now));
        // SAFETY: `mi_collect` has no preconditions; it only touches the
        // calling thread's heap and mimalloc's own shared state.
        unsafe { mi::mi_collect(true) }
    });
}
