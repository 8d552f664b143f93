//! Ctrl-C (SIGINT) and SIGTERM during a copy: stop cleanly instead of dying mid-file.
//!
//! Killed by the default action, a copy leaves `.hpcstage-tmp.*` files of the files in
//! flight (a big one can be gigabytes) and says nothing. While a copy is [`watch`]ed, the
//! first signal is only noted: the copiers stop taking files and stop reading, the files
//! in flight drop their temporaries, the ones already written are read back and verified
//! as usual, and the copy returns [`Error::Interrupted`](crate::Error::Interrupted) with
//! the count. A second signal, or one that arrives while nothing is watched, takes the
//! default action at once (the next run sweeps what it leaves).
//!
//! The handler only touches atomics and calls `signal_hook`'s async-signal-safe
//! `emulate_default_handler`.
//!
//! See docs/ARCHITECTURE.md#incremental-and-resumable-runs.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::Once;

use signal_hook::consts::{SIGINT, SIGTERM};

/// How many [`Watch`] guards are alive.
static WATCHING: AtomicUsize = AtomicUsize::new(0);
/// The signal received while watched; 0 for none.
static RECEIVED: AtomicI32 = AtomicI32::new(0);
static INSTALL: Once = Once::new();

/// Installs the handlers for SIGINT and SIGTERM (once per process). Until a copy is
/// watched they behave as the defaults do.
pub fn install() {
    INSTALL.call_once(|| {
        for signal in [SIGINT, SIGTERM] {
            // SAFETY: the action only uses atomics and an async-signal-safe function.
            let registered =
                unsafe { signal_hook::low_level::register(signal, move || on_signal(signal)) };
            // Without the handler the signal keeps its default action: nothing is lost
            // but the clean stop.
            drop(registered);
        }
    });
}

fn on_signal(signal: i32) {
    let first = WATCHING.load(Ordering::SeqCst) > 0
        && RECEIVED
            .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
    if !first {
        let _ = signal_hook::low_level::emulate_default_handler(signal);
    }
}

/// While alive, SIGINT and SIGTERM are noted (see [`received`]) instead of ending the
/// process, when [`install`] was called.
#[must_use = "the signals are only noted while the guard lives"]
pub struct Watch(());

/// Starts watching for SIGINT and SIGTERM.
pub fn watch() -> Watch {
    WATCHING.fetch_add(1, Ordering::SeqCst);
    Watch(())
}

impl Drop for Watch {
    fn drop(&mut self) {
        WATCHING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The signal that asked this process to stop, if one did while a copy was watched.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::Relaxed) {
        0 => None,
        signal => Some(signal),
    }
}

/// The name of a signal for messages (`SIGINT`).
pub fn name(signal: i32) -> &'static str {
    signal_hook::low_level::signal_name(signal).unwrap_or("a signal")
}

/// An I/O error that ends a read because the run was asked to stop.
pub(crate) fn stopped() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::Interrupted,
        "stopped: the run was interrupted",
    )
}
