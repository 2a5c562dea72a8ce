//! Giving freed memory back to the system. A node moves gigabytes through short-lived buffers (a
//! blob's 1 MiB chunks on their way to disk, a replay's tensors); glibc keeps what was freed in
//! its arenas for reuse, and with many threads allocating, a validator of a 86M-parameter job
//! held 1.7 GB it no longer used after fetching a check's blobs (`docs/benchmarks.md`, memory per
//! role). Trimming the arenas once a second hands those pages back; it frees nothing in use.

use std::time::Duration;

/// How often the arenas are trimmed.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// Starts a thread that trims glibc's arenas every [`TRIM_EVERY`] for the life of the process.
pub fn trim_freed_memory() {
    let spawned = std::thread::Builder::new().name("memory-trim".into()).spawn(|| loop {
        std::thread::sleep(TRIM_EVERY);
        // SAFETY: malloc_trim takes no pointers and only returns free pages of the allocator's
        // own arenas to the system.
        #[allow(unsafe_code)]
        unsafe {
            libc::malloc_trim(0);
        }
    });
    if let Err(error) = spawned {
        tracing::warn!(target: "node::memory", %error, "cannot start the memory trimmer; freed memory stays with the process");
    }
}
