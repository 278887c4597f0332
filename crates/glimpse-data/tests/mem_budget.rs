//! The memory budget of bounded work (`glimpse_data::mem_budget`) under a
//! global allocator that reports to it, as the glimpse binary's does: work
//! over its budget ends in an error and the process goes on; a chat
//! template that doubles a string is refused, not an abort.

use std::alloc::{GlobalAlloc, Layout, System};

use glimpse_data::mem_budget::{self, run_bounded, BoundedError};
use glimpse_data::{ChatMessage, ChatTemplate, SpecialTokens, MAX_RENDER_BYTES};

/// The system allocator, reporting to `mem_budget` as glimpse-cli's does.
struct Reporting;

// SAFETY: forwards to `System` unchanged; `charge` / `refund` neither
// allocate nor unwind.
unsafe impl GlobalAlloc for Reporting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        mem_budget::charge(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        mem_budget::refund(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            mem_budget::charge(new_size - layout.size());
        } else {
            mem_budget::refund(layout.size() - new_size);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Reporting = Reporting;

#[test]
fn work_within_budget_returns_its_result() {
    mem_budget::install();
    // 10 MiB allocated and freed 20 times: what is freed is refunded
    let out = run_bounded(16 << 20, || {
        (0..20)
            .map(|i| vec![i as u8; 10 << 20].len())
            .sum::<usize>()
    });
    assert_eq!(out.unwrap(), 200 << 20);
}

#[test]
fn work_over_budget_is_an_error_and_the_process_goes_on() {
    mem_budget::install();
    // 64 GiB asked in one allocation: refused before it reaches the system
    let out = run_bounded(16 << 20, || vec![1u8; 64 << 30].len());
    match out {
        Err(BoundedError::OverBudget { limit }) => assert_eq!(limit, 16 << 20),
        other => panic!("expected OverBudget, got {other:?}"),
    }
    // growth by doubling trips at the first step past the budget
    let out = run_bounded(16 << 20, || {
        let mut s = String::from("ab");
        for _ in 0..40 {
            s = format!("{s}{s}");
        }
        s.len()
    });
    assert!(
        matches!(out, Err(BoundedError::OverBudget { .. })),
        "{out:?}"
    );
    assert_eq!(run_bounded(16 << 20, || 7).unwrap(), 7);
}

#[test]
fn a_panic_in_bounded_work_resumes_on_the_caller() {
    mem_budget::install();
    let caught =
        std::panic::catch_unwind(|| run_bounded(1 << 20, || -> usize { panic!("inside") }));
    let payload = caught.expect_err("the panic comes back");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"inside"));
}

#[test]
fn a_doubling_chat_template_is_refused_then_poisoned() {
    mem_budget::install();
    let bomb = "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}";
    let template = ChatTemplate::new(bomb, SpecialTokens::default()).unwrap();
    let messages = [ChatMessage::new("user", "hi")];
    let err = template.render(&messages, true).unwrap_err().to_string();
    assert!(
        err.contains("more than 128 MiB of memory") && !err.contains('\n'),
        "{err}"
    );
    // refused again at once, without another parked thread
    let again = std::time::Instant::now();
    let err2 = template.render(&messages, true).unwrap_err().to_string();
    assert_eq!(err, err2);
    assert!(again.elapsed().as_millis() < 100);

    // a shallow doubling (2^20 bytes) is fine, and so is an honest template
    let ok = "{% set ns = namespace(s='ab') %}{% for i in range(19) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}";
    let out = ChatTemplate::new(ok, SpecialTokens::default())
        .unwrap()
        .render(&messages, true)
        .unwrap();
    assert_eq!(out, (2usize << 19).to_string());
    let plain = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}";
    let out = ChatTemplate::new(plain, SpecialTokens::default())
        .unwrap()
        .render(&messages, false)
        .unwrap();
    assert_eq!(out, "<user>hi");
    // the output cap still speaks for output bombs (inside the memory budget)
    let wide = "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}";
    let err = ChatTemplate::new(wide, SpecialTokens::default())
        .unwrap()
        .render(&messages, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("exceeds {} MiB", MAX_RENDER_BYTES >> 20)),
        "{err}"
    );
}
