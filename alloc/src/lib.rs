//! pgcdc's memory allocator: mimalloc, with the settings pgcdc changes.
//!
//! mimalloc: decoding and journaling allocate many small values per change,
//! where glibc malloc costs 20-30% more CPU time (bench-stream, user time, 3
//! pairs; docs/benchmarks.md). What it has freed it gives back to the OS after
//! a *purge delay*. mimalloc's default (1 s) lets a fast stream's freed memory
//! pile up (bench-stream peaked at 97-110 MiB); 0 gives it back at once but
//! spends a quarter more CPU in `madvise` and page faults; 10 ms kept the peak
//! low but slowed the Kafka sink's batches (ratio 0.65 against 0.8); 100 ms
//! peaks at 78-89 MiB with the Kafka rate and the CPU time of the default.
//!
//! Transparent huge pages are off for the process. mimalloc asks the kernel for
//! them (`MADV_HUGEPAGE` on its arena), and with them every 2 MiB region it
//! touches is resident in full: a 1000-row run peaked at 52 MiB, a 450k-change
//! stream at 88-96 MiB and a 1M-row transaction at 84-95 MiB; without them
//! 28, 58-61 and 54-59 MiB, at the same CPU time (bench-stream, docs/benchmarks.md).
//!
//! Memory freed after a burst of wide rows goes back to the OS: blocks of 8 MiB
//! and more are the system `malloc`'s, mapped on their own and unmapped when
//! freed, and a thread going idle collects what mimalloc kept and trims glibc's
//! `malloc`, which the C libraries use ([`idle`]).
//!
//! This crate holds the global allocator so that the unsafe calls that set
//! these stay out of the crates that forbid unsafe code.

use std::alloc::{GlobalAlloc, Layout};
use std::os::raw::c_long;

use mimalloc::MiMalloc;

/// The process's allocator.
#[global_allocator]
static GLOBAL: Allocator = Allocator;

/// mimalloc for everything but wide blocks ([`WIDE_BYTES`] and over: a wide
/// row's message, value, record or line), which the system's `malloc` maps on
/// their own and unmaps when freed. mimalloc keeps a freed block resident for
/// its purge delay, and one freed by another thread (a row built by the reader
/// and dropped by the journal thread) until its owner collects: on a busy
/// machine each stage's copy of a 40 MB row was still resident when the next
/// stage made its own (4.8 times the row at peak, 3.4 on an idle one). A
/// mapped block goes back the moment it is freed, by any thread, and grows by
/// `mremap` without a copy.
struct Allocator;

/// Blocks at least this large are the system allocator's (mapped on their own:
/// [`SYSTEM_MALLOC_THRESHOLD`]).
pub const WIDE_BYTES: usize = SYSTEM_MALLOC_THRESHOLD as usize;

/// Whether a block of this layout is a wide one; `malloc` aligns to 16 bytes.
fn wide(layout: Layout) -> bool {
    layout.size() >= WIDE_BYTES && layout.align() <= 16
}

// SAFETY: every block is freed and resized by the allocator that made it:
// which one is a function of the layout, and Rust passes the block's layout to
// dealloc and realloc; a realloc that crosses WIDE_BYTES moves the block.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if wide(layout) {
            // SAFETY: malloc takes any size; its blocks are 16-byte aligned.
            unsafe { libc::malloc(layout.size()).cast() }
        } else {
            // SAFETY: the caller's contract (a non-zero size) passed on.
            unsafe { MiMalloc.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if wide(layout) {
            // SAFETY: as in alloc; a fresh mapping is zero without a memset.
            unsafe { libc::calloc(1, layout.size()).cast() }
        } else {
            // SAFETY: the caller's contract passed on.
            unsafe { MiMalloc.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if wide(layout) {
            // SAFETY: a block of this layout came from malloc or calloc.
            unsafe { libc::free(ptr.cast()) }
        } else {
            // SAFETY: a block of this layout came from mimalloc.
            unsafe { MiMalloc.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees new_size, rounded up to the alignment,
        // does not overflow isize.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (wide(layout), wide(new)) {
            // SAFETY: the block came from malloc (its layout is wide).
            (true, true) => unsafe { libc::realloc(ptr.cast(), new_size).cast() },
            // SAFETY: the block came from mimalloc; the caller's contract passed on.
            (false, false) => unsafe { MiMalloc.realloc(ptr, layout, new_size) },
            _ => {
                // SAFETY: new has a non-zero size (the caller's contract); the
                // old block is valid for its size, the new one for new_size, and
                // they do not overlap; the old one is freed by its own allocator.
                unsafe {
                    let moved = self.alloc(new);
                    if !moved.is_null() {
                        std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    moved
                }
            }
        }
    }
}

/// Purge delay pgcdc runs with unless `MIMALLOC_PURGE_DELAY` sets one.
pub const PURGE_DELAY_MS: c_long = 100;

/// `mi_option_purge_delay` in mimalloc v3's `mimalloc.h` (`mi_option_e`); the
/// Rust bindings do not name it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets the purge delay to [`PURGE_DELAY_MS`], unless the environment sets
/// `MIMALLOC_PURGE_DELAY` (mimalloc read that when the process started), and
/// turns transparent huge pages off, unless the environment sets
/// `MIMALLOC_ALLOW_THP` (mimalloc's own switch for them).
/// Call it first thing in `main`, before other threads start.
pub fn tune() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: `mi_option_set` takes a valid option id (the test below checks
        // that this one reads mimalloc's default purge delay) and any value;
        // mimalloc notes it is not thread safe, and `main` calls this before it
        // starts other threads.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        no_huge_pages();
    }
    system_malloc_thresholds();
}

/// Blocks at least this large that the C libraries ask glibc's `malloc` for
/// are mapped on their own (and unmapped when freed); a heap's free top over
/// this size is given back when a block is freed.
pub const SYSTEM_MALLOC_THRESHOLD: i32 = 8 << 20;

/// glibc raises its mmap threshold to the size of each mapped block freed (up
/// to 32 MiB) and its trim threshold to twice that: after wide rows SQLite's
/// copies of their values came from, and stayed in, its heaps. Fixed
/// thresholds bound what a heap's top keeps; [`trim_system_malloc`] gives back
/// the free pages inside the heaps. Unless the environment sets glibc's own
/// `MALLOC_MMAP_THRESHOLD_` or `MALLOC_TRIM_THRESHOLD_`.
#[cfg(target_env = "gnu")]
fn system_malloc_thresholds() {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some()
        || std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_some()
    {
        return;
    }
    // SAFETY: mallopt takes two integers and changes only malloc's parameters;
    // `main` calls this before it starts other threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, SYSTEM_MALLOC_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, SYSTEM_MALLOC_THRESHOLD);
    }
}

#[cfg(not(target_env = "gnu"))]
fn system_malloc_thresholds() {}

/// A thread going idle (a runtime worker parking, the journal thread with an
/// empty queue) gives back what mimalloc freed and kept (and what glibc's
/// `malloc` kept, see [`trim_system_malloc`]), at most once per
/// [`COLLECT_EVERY`] per thread. mimalloc purges lazily, when a thread frees or
/// collects pages: after a burst of wide rows, threads that go quiet held what
/// the burst freed (16 MB `bytea` rows, with a 1 MiB mmap threshold for glibc:
/// 145 MiB kept without this, 72 MiB with it; a cost of about 0.1% of the
/// stream's CPU samples).
pub fn idle() {
    thread_local! {
        static LAST: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
    }
    let now = std::time::Instant::now();
    if LAST
        .get()
        .is_none_or(|last| now.duration_since(last) >= COLLECT_EVERY)
    {
        LAST.set(Some(now));
        collect();
        trim_system_malloc(now);
    }
}

/// glibc's `malloc`, which the C libraries use (SQLite copies a wide value when
/// it reads it back), keeps what they free in its heaps: after 16 MB `bytea`
/// rows, 200 MiB stayed resident at idle. `malloc_trim` hands the free pages
/// of every heap back; it runs at most once per [`COLLECT_EVERY`] in the
/// process, when a thread goes idle. (A 1 MiB mmap threshold alone gave the
/// memory back too but mapped every wide value afresh: wide rows streamed
/// 12-20% slower.)
#[cfg(target_env = "gnu")]
fn trim_system_malloc(now: std::time::Instant) {
    static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    // Another thread trimming right now is as good.
    let Ok(mut last) = LAST.try_lock() else {
        return;
    };
    if last.is_none_or(|last| now.duration_since(last) >= COLLECT_EVERY) {
        *last = Some(now);
        // SAFETY: malloc_trim takes a size and only releases free memory of
        // glibc's own heaps; it takes their locks, so any thread may call it.
        unsafe { libc::malloc_trim(0) };
    }
}

#[cfg(not(target_env = "gnu"))]
fn trim_system_malloc(_now: std::time::Instant) {}

/// How often a thread going idle gives back what mimalloc freed.
pub const COLLECT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Frees this thread's empty pages and purges what the arenas hold past the
/// purge delay.
fn collect() {
    // SAFETY: mi_collect takes a flag and touches only mimalloc's own state
    // (this thread's heap and the process's arenas).
    unsafe { libmimalloc_sys::mi_collect(false) };
}

/// What mimalloc does at start with `MIMALLOC_ALLOW_THP=0`, which it reads too
/// early for `main` to set: the kernel then backs none of the process's memory
/// with huge pages, whatever madvise asked (mimalloc's arena is mapped already).
/// A kernel without the call leaves them on, which only costs memory.
fn no_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only (1: disable;
    // flags 0: for every mapping) and touches no memory of the caller.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

/// Whether transparent huge pages are on for this process.
pub fn huge_pages() -> bool {
    // SAFETY: PR_GET_THP_DISABLE takes no pointer; it returns 1 when they are
    // off, 0 when on, -1 on error (taken as on, the kernel's default).
    let disabled = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
    disabled != 1
}

/// The purge delay in effect (ms).
pub fn purge_delay_ms() -> c_long {
    // SAFETY: reads an option by a valid id.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's resident set (`VmRSS`), in bytes.
    fn resident() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    }

    /// A wide block made on one thread and dropped on another is given back to
    /// the OS at once: with mimalloc it stayed resident for the purge delay, or
    /// until the thread that made it collected its pages.
    #[test]
    fn a_wide_block_freed_by_another_thread_goes_back_at_once() {
        const BYTES: usize = 64 << 20;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
        let maker = std::thread::spawn(move || {
            // Written in full, so every page is resident.
            let _ = tx.send(vec![7u8; BYTES]);
            // The maker stays alive and quiet, as a runtime worker would.
            std::thread::sleep(std::time::Duration::from_millis(500));
        });
        let block = rx.recv().expect("the maker sends its block");
        let with = resident();
        std::thread::spawn(move || drop(block))
            .join()
            .expect("the dropper ends");
        let without = resident();
        let _ = maker.join();
        assert!(
            with.saturating_sub(without) >= BYTES as u64 * 9 / 10,
            "{} MiB resident with the block, {} MiB right after another thread freed it",
            with >> 20,
            without >> 20
        );
    }

    /// Blocks keep their bytes when they grow and shrink across the line
    /// between the two allocators, and wide ones keep them when they grow.
    #[test]
    fn resizing_across_the_wide_line_keeps_the_bytes() {
        let pattern = |n: usize| (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>();
        let mut v = pattern(WIDE_BYTES - 1);
        v.reserve_exact(2);
        v.push(250);
        assert!(v.capacity() >= WIDE_BYTES);
        assert_eq!(v[..WIDE_BYTES - 1], pattern(WIDE_BYTES - 1)[..]);
        v.resize(3 * WIDE_BYTES, 1);
        assert_eq!(v[..WIDE_BYTES - 1], pattern(WIDE_BYTES - 1)[..]);
        assert_eq!(v[WIDE_BYTES - 1], 250);
        v.truncate(1000);
        v.shrink_to_fit();
        assert!(v.capacity() < WIDE_BYTES);
        assert_eq!(v[..], pattern(1000)[..]);
        let zeroed = vec![0u64; WIDE_BYTES];
        assert!(zeroed.iter().all(|&x| x == 0));
        // An alignment malloc does not promise stays with mimalloc.
        #[repr(align(4096))]
        struct Page([u8; 4096]);
        let pages: Vec<Page> = (0..WIDE_BYTES / 4096 + 1)
            .map(|_| Page([3; 4096]))
            .collect();
        assert!((pages.as_ptr() as usize).is_multiple_of(4096));
        assert!(pages.iter().all(|p| p.0[4095] == 3));
    }

    #[test]
    fn huge_pages_are_turned_off() {
        no_huge_pages();
        assert!(!huge_pages());
    }

    #[test]
    fn the_option_id_is_the_purge_delay() {
        // mimalloc v3's default purge delay is 1000 ms and no other option of its
        // table defaults to 1000: the id reads the purge delay.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(purge_delay_ms(), 1000);
            tune();
            assert_eq!(purge_delay_ms(), PURGE_DELAY_MS);
        }
    }
}
