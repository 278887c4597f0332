//! A counting global allocator with a per-case budget.
//!
//! The test binary installs [`CountingAlloc`] as its `#[global_allocator]`.
//! While a case runs (between [`arm`] and [`disarm`]) every allocation that
//! would take the live heap more than the budget above where it stood at
//! [`arm`] is refused: the allocator prints a marker and a backtrace to
//! stderr and returns null. Code that asked with `try_reserve` gets an
//! error back and goes on; everything else reaches `handle_alloc_error`,
//! which aborts the process. Stable Rust cannot turn that abort into a
//! panic (`set_alloc_error_hook` and `-Zoom=panic` are nightly), which is
//! why cases run in a child process (see [`crate::harness`]): the parent
//! sees the abort and reads the backtrace. Refusing at the budget also
//! means a case asking for 10¹² bytes never touches the machine's memory.
//!
//! Sizes are also reported to `glimpse_data::mem_budget`, as the glimpse
//! binary's allocator does, so bounded work (chat-template renders) meets
//! its own budget here as it does there.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

/// Marker of the refusal report on stderr; the harness looks for it.
pub const OOM_MARK: &str = "@@glimpse-fuzz OOM";

/// Bytes currently allocated through the global allocator.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Highest `LIVE` since the last [`arm`].
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// `LIVE` when the case started.
static BASE: AtomicUsize = AtomicUsize::new(0);
/// Absolute `LIVE` above which allocations are refused; 0 = no limit.
static LIMIT: AtomicUsize = AtomicUsize::new(0);
/// Only the first refusal of a case is reported (later ones are its echo).
static REPORTED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Set while this thread writes a refusal report, whose own allocations
    /// (the backtrace) must not be refused in turn.
    static REPORTING: Cell<bool> = const { Cell::new(false) };
}

/// The global allocator of the fuzz test binary: the system allocator,
/// counted, with the per-case budget described in the module docs.
pub struct CountingAlloc;

fn admit(size: usize) -> bool {
    let limit = LIMIT.load(Relaxed);
    if limit == 0 {
        return true;
    }
    let live = LIVE.load(Relaxed);
    if live.saturating_add(size) <= limit {
        return true;
    }
    if REPORTING.try_with(Cell::get).unwrap_or(true) {
        return true;
    }
    report_refusal(size, live);
    false
}

fn report_refusal(size: usize, live: usize) {
    if REPORTED.swap(true, Relaxed) {
        return;
    }
    let _ = REPORTING.try_with(|r| r.set(true));
    tell_parent_reporting();
    let base = BASE.load(Relaxed);
    let budget = LIMIT.load(Relaxed).saturating_sub(base);
    let backtrace = std::backtrace::Backtrace::force_capture();
    let text = format!(
        "{OOM_MARK} size={size} live={} budget={budget}\n{backtrace}\n{OOM_MARK} end\n",
        live.saturating_sub(base)
    );
    let _ = std::io::stderr().write_all(text.as_bytes());
    let _ = REPORTING.try_with(|r| r.set(false));
}

/// Set by the first allocation through [`CountingAlloc`]: nothing else
/// writes it, so it says whether the allocator is installed whatever other
/// test threads allocate or free meanwhile.
static SEEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn grew(size: usize) {
    SEEN.store(true, Relaxed);
    let live = LIVE.fetch_add(size, Relaxed) + size;
    PEAK.fetch_max(live, Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's layout and
// pointer unchanged; the bookkeeping only reads and writes atomics and a
// const-initialised thread-local without destructor (here and in
// `mem_budget`), so it neither
// allocates (except in the refusal report, guarded by REPORTING) nor unwinds.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        glimpse_data::mem_budget::charge(layout.size());
        if !admit(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        glimpse_data::mem_budget::charge(layout.size());
        if !admit(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
        glimpse_data::mem_budget::refund(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old {
            glimpse_data::mem_budget::charge(new_size - old);
        }
        if new_size > old && !admit(new_size - old) {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= old {
                grew(new_size - old);
            } else {
                LIVE.fetch_sub(old - new_size, Relaxed);
                glimpse_data::mem_budget::refund(old - new_size);
            }
        }
        p
    }
}

/// Starts a case: from now on the live heap may grow by at most `budget`
/// bytes.
pub fn arm(budget: usize) {
    let live = LIVE.load(Relaxed);
    BASE.store(live, Relaxed);
    PEAK.store(live, Relaxed);
    REPORTED.store(false, Relaxed);
    LIMIT.store(live.saturating_add(budget).max(1), Relaxed);
}

/// Ends a case; returns its peak growth of the live heap in bytes.
pub fn disarm() -> usize {
    LIMIT.store(0, Relaxed);
    PEAK.load(Relaxed).saturating_sub(BASE.load(Relaxed))
}

/// Whether [`CountingAlloc`] is this binary's global allocator (the memory
/// property is void without it).
pub fn installed() -> bool {
    // (comparing LIVE before and after a probe allocation was flaky: other
    // test threads free more than the probe meanwhile)
    drop(std::hint::black_box(vec![0u8; 64]));
    SEEN.load(Relaxed)
}

/// Tells the parent process that the case has stopped and a backtrace is
/// being written (which may take longer than the case's time limit). A raw
/// write to fd 1: no lock that the failing thread might hold, no buffer.
pub fn tell_parent_reporting() {
    let line = crate::harness::REPORTING_LINE;
    // SAFETY: writes a static buffer to stdout; the result is ignored (a
    // parent that does not listen only loses the time extension).
    unsafe {
        libc::write(1, line.as_ptr().cast(), line.len());
    }
}

/// Runs `f` with this thread's allocations outside the budget: for the
/// panic hook, whose backtrace (the first one loads the binary's line
/// tables) must not be refused, and whose refusal report would wait on the
/// backtrace lock the hook holds.
///
/// What `f` leaves allocated (std keeps the symbolised line tables, about
/// 100 MiB) is added to the case's allowance, so that the case is not
/// refused its next allocation for the report's sake.
pub fn unbudgeted<T>(f: impl FnOnce() -> T) -> T {
    let was = REPORTING.try_with(|r| r.replace(true)).unwrap_or(false);
    let before = LIVE.load(Relaxed);
    let out = f();
    let grown = LIVE.load(Relaxed).saturating_sub(before);
    if LIMIT.load(Relaxed) != 0 {
        LIMIT.fetch_add(grown, Relaxed);
        BASE.fetch_add(grown, Relaxed);
    }
    let _ = REPORTING.try_with(|r| r.set(was));
    out
}
