//! One gate for tests that need a service (the SLURM test cluster, root): a test whose
//! service is missing FAILS, saying how to start it, so that a green run proves the
//! service was there. The only way round is an explicit opt-out, never set by
//! `scripts/test`:
//!
//! ```sh
//! HPCSTAGE_TEST_SKIP=cluster,root cargo test
//! ```
//!
//! Under an opt-out each skipped test says so as it is skipped, and each test binary
//! ends with the count (`N tests skipped under HPCSTAGE_TEST_SKIP=...`). The lines go
//! straight to stderr, past the test harness's capture.
//!
//! Shared with `slurm/tests/` by `#[path]`.
//!
//! See docs/ARCHITECTURE.md#tests.
#![allow(dead_code)]

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

static SKIPPED: AtomicUsize = AtomicUsize::new(0);
static AT_EXIT: Once = Once::new();

/// True when the service `name` is `available`. Otherwise the test fails with `how` (how
/// to start the service), unless `HPCSTAGE_TEST_SKIP` names the service: then the skip is
/// printed and counted, and the caller returns.
#[track_caller]
pub(crate) fn service(name: &str, available: bool, how: &str) -> bool {
    if available {
        return true;
    }
    let opted_out = std::env::var("HPCSTAGE_TEST_SKIP")
        .is_ok_and(|v| v.split(',').any(|s| s.trim() == name || s.trim() == "all"));
    assert!(
        opted_out,
        "this test needs {name}, which is not available here: {how} \
         (or opt out explicitly with HPCSTAGE_TEST_SKIP={name})"
    );
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: needs {name} (HPCSTAGE_TEST_SKIP)"
    );
    SKIPPED.fetch_add(1, Ordering::SeqCst);
    AT_EXIT.call_once(|| {
        // SAFETY: registering a plain function with no captured state.
        unsafe { libc::atexit(report_skips) };
    });
    false
}

extern "C" fn report_skips() {
    let n = SKIPPED.load(Ordering::SeqCst);
    let skip = std::env::var("HPCSTAGE_TEST_SKIP").unwrap_or_default();
    let _ = writeln!(
        std::io::stderr(),
        "{n} test{} skipped under HPCSTAGE_TEST_SKIP={skip}: this run proves nothing about them",
        if n == 1 { "" } else { "s" }
    );
}

/// Whether this process runs as root.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
