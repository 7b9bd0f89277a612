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
