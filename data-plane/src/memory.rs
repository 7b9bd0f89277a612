//! Handing memory back after a compile. Compiling 10,000 routes allocates tens of MiB of scratch
//! (parsed JSON, the previous config once it is freed) on a blocking thread; mimalloc keeps a
//! thread's freed pages for reuse until that thread allocates again or exits, so without this
//! the data plane's resident memory stays at the compile's peak (measured in
//! bench/control_plane.sh: about 15 MiB more at 10,000 routes).

/// Returns the calling thread's free mimalloc pages to the OS. Call it off the request path,
/// after a compile or after freeing a config. Does nothing useful (and no harm) where mimalloc
/// is not the global allocator (tests).
pub fn release_free_memory() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
