//! Process-wide settings that make the engine faster, for binaries to apply at startup.
//!
//! A library should not change its host's allocator or environment behind its back, so nothing
//! here runs by itself: the `tarflow` CLI and the benchmarks call [`tune_process`] first thing;
//! a game embedding the engine may do the same (or its own equivalent).

/// Apply both settings below; returns what was done, one line each, for logs.
///
/// ```
/// // First thing in `main`:
/// // SAFETY: no other thread exists yet.
/// let done = unsafe { tarflow::runtime::tune_process() };
/// # let _ = done;
/// ```
///
/// Calling it without `unsafe` does not compile:
///
/// ```compile_fail
/// let _ = tarflow::runtime::tune_process();
/// ```
///
/// # Safety
/// No other thread may exist (or read or write the environment) while it runs: it may set an
/// environment variable, which is not thread-safe (see [`std::env::set_var`]).
pub unsafe fn tune_process() -> Vec<String> {
    let mut done = Vec::new();
    // SAFETY: the caller guarantees no other thread exists.
    if let Some(n) = unsafe { set_thread_count() } {
        done.push(format!("RAYON_NUM_THREADS={n}"));
    }
    if keep_freed_memory() {
        done.push("malloc keeps freed memory below 32 MiB blocks for reuse".into());
    }
    done
}

/// Set `RAYON_NUM_THREADS` to the machine's parallelism when it is unset, and return it.
///
/// candle sizes its CPU thread pools from it and, when it is unset, reads /proc/cpuinfo again on
/// every matmul (about 30 us each, about 100 ms per sampled texture).
///
/// # Safety
/// No other thread may exist while it runs: setting the environment is not thread-safe.
pub unsafe fn set_thread_count() -> Option<usize> {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return None;
    }
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // SAFETY: the caller guarantees no other thread exists.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    Some(n)
}

/// Make glibc's malloc keep freed blocks of up to 32 MiB in the heap instead of returning them to
/// the kernel. Tensors are allocated and freed by the thousand per training step; by default
/// every block above 128 KiB is a fresh `mmap`, whose pages the kernel must fault in and zero
/// again each time: 16% of a training step's time on the S16 workload. Returns whether the
/// setting was applied (glibc on Linux only).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; valid constants and values.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
