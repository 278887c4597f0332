//! A memory budget for work on untrusted input that nothing else bounds: a
//! model's chat template can double a string in a loop (`{% set ns.s =
//! ns.s ~ ns.s %}`), and minijinja has no byte budget for its `~` and `+`
//! operators, so forty operations ask for a terabyte. Stable Rust cannot
//! turn a refused allocation into an error (`set_alloc_error_hook` is
//! nightly) and a global allocator must not unwind, so the budget works the
//! only way left: [`run_bounded`] runs the work on a thread of its own, the
//! binary's global allocator reports that thread's allocations here
//! ([`charge`], [`refund`]), and the allocation that would pass the budget
//! never returns: it marks the budget tripped and parks its thread for good.
//! The caller, waiting on the thread, gets [`OverBudget`] and goes on; the
//! parked thread keeps what it held (at most the budget) until the process
//! ends, so callers refuse further work from the same source (a poisoned
//! template) rather than trip again.
//!
//! Without a reporting allocator ([`install`] not called: a library user's
//! binary), [`run_bounded`] runs the work inline with no budget.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// Set by [`install`]: the global allocator calls [`charge`] and [`refund`].
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// One bounded piece of work's account.
struct Account {
    /// Bytes the work's thread holds now (allocated minus freed there).
    used: AtomicUsize,
    limit: usize,
    tripped: AtomicBool,
}

thread_local! {
    /// The account of the bounded work this thread runs; null elsewhere.
    /// Const-initialised without destructor: reading it never allocates, so
    /// the allocator may.
    static CURRENT: Cell<*const Account> = const { Cell::new(std::ptr::null()) };
}

/// Why bounded work gave no result.
#[derive(Debug)]
pub enum BoundedError {
    /// It asked for more than `limit` bytes; its thread is parked for good.
    OverBudget { limit: usize },
    /// No thread could be started for it.
    Spawn(std::io::Error),
}

impl std::fmt::Display for BoundedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::OverBudget { limit } => {
                write!(f, "needs more than {} MiB of memory", limit >> 20)
            }
            Self::Spawn(e) => write!(f, "cannot start a thread: {e}"),
        }
    }
}

impl std::error::Error for BoundedError {}

/// Called once by a binary whose `#[global_allocator]` calls [`charge`]
/// before every allocation (and growth) and [`refund`] after every free
/// (and shrink).
pub fn install() {
    INSTALLED.store(true, Relaxed);
}

/// Whether [`run_bounded`] enforces its budget in this process.
pub fn installed() -> bool {
    INSTALLED.load(Relaxed)
}

/// For the global allocator: `bytes` are about to be allocated on this
/// thread. Over the budget of the bounded work this thread runs, this
/// never returns (see the module docs). Neither allocates nor unwinds.
pub fn charge(bytes: usize) {
    let Ok(account) = CURRENT.try_with(Cell::get) else {
        return;
    };
    // A panic's own reporting (hook, message, backtrace) is not the work's
    // and must not park: the thread would hold the panic machinery's locks.
    if account.is_null() || std::thread::panicking() {
        return;
    }
    // SAFETY: `run_bounded` keeps the account alive (an `Arc` clone owned by
    // this thread) for as long as CURRENT points at it.
    let account = unsafe { &*account };
    let used = account.used.load(Relaxed).saturating_add(bytes);
    if used <= account.limit {
        account.used.store(used, Relaxed);
        return;
    }
    account.tripped.store(true, Relaxed);
    // Never return: returning null would abort the process, unwinding from
    // an allocator is undefined behaviour. `sleep` is a plain syscall.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// For the global allocator: `bytes` were freed on this thread.
pub fn refund(bytes: usize) {
    if let Ok(account) = CURRENT.try_with(Cell::get) {
        if !account.is_null() {
            // SAFETY: as in `charge`.
            let account = unsafe { &*account };
            let used = account.used.load(Relaxed);
            account.used.store(used.saturating_sub(bytes), Relaxed);
        }
    }
}

/// Runs `work` with its allocations bounded by `limit` bytes (see the
/// module docs): its result, or [`BoundedError::OverBudget`] once it asked
/// for more. Inline and unbounded where no allocator reports
/// ([`installed`]). A panic in `work` resumes on the caller's thread.
pub fn run_bounded<T: Send + 'static>(
    limit: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BoundedError> {
    if !installed() {
        return Ok(work());
    }
    let account = Arc::new(Account {
        used: AtomicUsize::new(0),
        limit,
        tripped: AtomicBool::new(false),
    });
    let (tx, rx) = mpsc::channel();
    let theirs = Arc::clone(&account);
    let handle = std::thread::Builder::new()
        .name("glimpse-bounded".into())
        .spawn(move || {
            CURRENT.with(|c| c.set(Arc::as_ptr(&theirs)));
            let out = work();
            CURRENT.with(|c| c.set(std::ptr::null()));
            // the caller may have stopped waiting; nothing to do then
            let _ = tx.send(out);
            drop(theirs);
        })
        .map_err(BoundedError::Spawn)?;
    loop {
        match rx.recv_timeout(Duration::from_millis(10)) {
            Ok(out) => return Ok(out),
            Err(mpsc::RecvTimeoutError::Timeout) if account.tripped.load(Relaxed) => {
                // `handle` dropped: the parked thread is detached
                return Err(BoundedError::OverBudget { limit });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // the thread ended without sending: `work` panicked there
            Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
                Err(payload) => std::panic::resume_unwind(payload),
                Ok(()) => unreachable!("the bounded thread sends before it ends"),
            },
        }
    }
}
