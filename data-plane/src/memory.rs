//! Handing memory back after a compile. Compiling 10,000 routes allocates tens of MiB of scratch
//! (parsed JSON, the previous config once it is freed) on a blocking thread; mimalloc keeps a
//! thread's freed pages for reuse until that thread allocates again or exits, so without this
//! the data plane's resident memory stays at the compile's peak (measured in
//! bench/control_plane.sh: about 15 MiB more at 10,000 routes).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Returns the calling thread's free mimalloc pages to the OS. Call it off the request path,
/// after a compile or after freeing a config. Does nothing useful (and no harm) where mimalloc
/// is not the global allocator (tests).
pub fn release_free_memory() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// A change that built at least this many routes anew always returns its garbage.
const BIG_CHANGE_ROUTES: usize = 64;
/// Smaller changes return it at most this often.
const SMALL_CHANGE_COLLECT_MS: u64 = 1_000;

/// [`release_free_memory`] after a config change that built `rebuilt_routes` routes anew (or
/// failed: `usize::MAX`), on the thread that compiled it. A forced collect unmaps pages that the
/// proxy's workers then fault back in: after a big change it returns megabytes, after a
/// one-route change almost nothing, and at 50 Admin API writes a second collecting after each
/// cost the proxy ≈ 3 % more CPU per request (bench/results/2026-12-01-session13.md). So big
/// changes collect always, small ones at most once a second; what a skipped collect leaves is
/// one small change's garbage, reused by the next compile.
pub fn release_after_change(rebuilt_routes: usize) {
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    let now = since_start_ms();
    if should_collect(rebuilt_routes, now, LAST_MS.load(Ordering::Relaxed)) {
        LAST_MS.store(now, Ordering::Relaxed);
        release_free_memory();
    }
}

fn should_collect(rebuilt_routes: usize, now_ms: u64, last_ms: u64) -> bool {
    rebuilt_routes >= BIG_CHANGE_ROUTES
        || last_ms == 0
        || now_ms.saturating_sub(last_ms) >= SMALL_CHANGE_COLLECT_MS
}

/// Milliseconds since the first call (never 0, so 0 can mean "never").
fn since_start_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Opts this process out of transparent huge pages. mimalloc reserves its arena (1 GiB of
/// address space) with `MADV_HUGEPAGE`, so wherever THP is on (`always`, or Debian's
/// `madvise`), each 2 MiB of the arena that is touched at all becomes resident whole: measured
/// with 10,000 routes, 64 MiB resident with THP and 42 MiB without, at the same CPU per request
/// (bench/results/2026-11-30-session7.md). What `MIMALLOC_ALLOW_THP=0` does, without the
/// environment variable. Call it first thing in `main`; it covers mappings made before too.
pub fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and changes only this process' flags.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// The data plane's global allocator: mimalloc, asked the way its C API is fastest. The
/// `mimalloc` crate's `MiMalloc` calls `mi_malloc_aligned` for every allocation, and for a block
/// over 1 KiB (a request's header map) that takes mimalloc's generic aligned path, which
/// over-allocates and searches: counted at ~470 instructions per proxied request
/// (bench/instructions.sh). Every block `mi_malloc` returns is aligned to 16 bytes
/// (`MI_MAX_ALIGN_SIZE`), so a layout asking no more goes to the plain calls.
pub struct Allocator;

/// What `mi_malloc` guarantees for any size (mimalloc's `MI_MAX_ALIGN_SIZE` on 64-bit targets).
const MI_MAX_ALIGN: usize = 16;

// SAFETY: every call hands mimalloc a pointer it returned (or null/size rules it documents), and
// a block from the plain calls is aligned to MI_MAX_ALIGN, which covers the layouts sent there.
unsafe impl std::alloc::GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= MI_MAX_ALIGN {
                libmimalloc_sys::mi_malloc(layout.size()) as *mut u8
            } else {
                libmimalloc_sys::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= MI_MAX_ALIGN {
                libmimalloc_sys::mi_zalloc(layout.size()) as *mut u8
            } else {
                libmimalloc_sys::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        // SAFETY: see the impl.
        unsafe { libmimalloc_sys::mi_free(ptr as *mut std::ffi::c_void) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            let ptr = ptr as *mut std::ffi::c_void;
            if layout.align() <= MI_MAX_ALIGN {
                libmimalloc_sys::mi_realloc(ptr, new_size) as *mut u8
            } else {
                libmimalloc_sys::mi_realloc_aligned(ptr, new_size, layout.align()) as *mut u8
            }
        }
    }
}

/// Asks the CPU to start loading the cache lines of `value`'s `Arc` allocation (its counts and
/// the value) without waiting for them. With requests spread over thousands of routes, a
/// route's series and upstream are cold: each first read stalls on memory (and, behind a
/// hypervisor, on a two-level page walk). Asked for together as soon as the route is known,
/// their misses overlap instead of following one another. A hint: never faults, changes nothing.
pub fn prefetch_arc<T>(value: &std::sync::Arc<T>) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // The counts (two words) sit just before the value in the allocation.
        let start = (std::sync::Arc::as_ptr(value) as *const i8).wrapping_sub(16);
        let len = (16 + std::mem::size_of::<T>()).min(1024);
        for offset in (0..len).step_by(64) {
            // SAFETY: a prefetch reads nothing the program sees and never faults, whatever
            // the address; SSE is part of x86_64.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

#[cfg(test)]
mod tests {
    use super::{Allocator, should_collect};
    use std::alloc::{GlobalAlloc, Layout};

    #[test]
    fn big_changes_collect_always_small_ones_once_a_second() {
        // The first change collects whatever its size.
        assert!(should_collect(1, 5, 0));
        // Small changes within a second of the last collect do not…
        assert!(!should_collect(1, 1_500, 1_000));
        assert!(!should_collect(63, 1_999, 1_000));
        // …a big one does, and a small one a second on.
        assert!(should_collect(64, 1_001, 1_000));
        assert!(should_collect(usize::MAX, 1_001, 1_000));
        assert!(should_collect(1, 2_000, 1_000));
    }

    #[test]
    fn blocks_have_the_alignment_and_size_asked_for() {
        // Not the test binary's allocator: called directly, every path once.
        for (size, align) in [
            (1, 1),
            (24, 8),
            (1500, 8),
            (3000, 16),
            (100, 64),
            (5000, 4096),
        ] {
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: non-zero sizes; each block is written within its size and freed once.
            unsafe {
                let p = Allocator.alloc(layout);
                assert!(
                    !p.is_null() && (p as usize).is_multiple_of(align),
                    "{size}/{align}"
                );
                std::ptr::write_bytes(p, 0xab, size);
                let p = Allocator.realloc(p, layout, size * 3);
                assert!(
                    !p.is_null() && (p as usize).is_multiple_of(align),
                    "{size}/{align} grown"
                );
                assert_eq!(*p.add(size - 1), 0xab, "{size}/{align}: contents kept");
                Allocator.dealloc(p, Layout::from_size_align(size * 3, align).unwrap());
                let z = Allocator.alloc_zeroed(layout);
                assert!(
                    (z as usize).is_multiple_of(align) && *z.add(size - 1) == 0,
                    "{size}/{align} zeroed"
                );
                Allocator.dealloc(z, layout);
            }
        }
    }
}
