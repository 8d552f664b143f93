//! Work on many threads, results in order, memory bounded: for trees of millions of
//! files, where holding every path at once is what must not happen.

use std::collections::BTreeMap;
use std::sync::mpsc::{channel, sync_channel};
use std::sync::{Condvar, Mutex};

/// Runs `work` on `threads` threads over the items `produce` emits one by one, and hands
/// the results to `consume` on the calling thread in the order the items were produced.
/// At most `window` items (rounded up to whole batches of eight) are between the
/// producer and the consumer at any time (queued, in work, or waiting for an earlier one
/// to finish), so memory does not grow with the number of items.
pub fn ordered<T: Send, R: Send>(
    threads: usize,
    window: usize,
    produce: impl FnOnce(&mut dyn FnMut(T, u64)) + Send,
    work: impl Fn(T) -> R + Sync,
    mut consume: impl FnMut(R),
) {
    // Items travel in small batches: a channel operation, a wake-up and a reorder step
    // per file would cost about as much as hashing a small cached file. A batch closes
    // at eight items or at BATCH_WEIGHT of the weights the producer gives (bytes), so
    // that big files still go one per worker.
    const BATCH: usize = 8;
    const BATCH_WEIGHT: u64 = 1 << 20;
    let window = (window.max(1) as u64).div_ceil(BATCH as u64);
    let (task_tx, task_rx) = sync_channel::<(u64, Vec<T>)>(threads.max(1) * 2);
    let task_rx = Mutex::new(task_rx);
    // A worker's panic travels to the consumer, which re-raises it: otherwise the
    // consumer would wait forever for the lost batch and the producer for the window.
    type Done<R> = std::thread::Result<Vec<R>>;
    let (done_tx, done_rx) = channel::<(u64, Done<R>)>();
    // How many batches the consumer has taken (the producer waits on it), and whether
    // to stop producing (a worker panicked).
    let consumed = (Mutex::new((0u64, false)), Condvar::new());
    let mut panicked = None;
    std::thread::scope(|scope| {
        let consumed_ref = &consumed;
        scope.spawn(move || {
            let mut seq = 0u64;
            let mut batch = Vec::with_capacity(BATCH);
            let mut weight = 0u64;
            let send = |batch: Vec<T>, seq: &mut u64| {
                let (lock, cv) = consumed_ref;
                let mut state = lock.lock().expect("window lock");
                while !state.1 && *seq >= state.0 + window {
                    state = cv.wait(state).expect("window lock");
                }
                if state.1 {
                    return;
                }
                drop(state);
                // The workers outlive the producer; a send fails only if they panicked.
                let _ = task_tx.send((*seq, batch));
                *seq += 1;
            };
            produce(&mut |item, item_weight| {
                batch.push(item);
                weight = weight.saturating_add(item_weight);
                if batch.len() == BATCH || weight >= BATCH_WEIGHT {
                    send(
                        std::mem::replace(&mut batch, Vec::with_capacity(BATCH)),
                        &mut seq,
                    );
                    weight = 0;
                }
            });
            if !batch.is_empty() {
                send(batch, &mut seq);
            }
        });
        for _ in 0..threads.max(1) {
            let done_tx = done_tx.clone();
            let (task_rx, work) = (&task_rx, &work);
            scope.spawn(move || loop {
                let next = task_rx.lock().expect("task lock").recv();
                let Ok((seq, items)) = next else { break };
                let results = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    items.into_iter().map(work).collect()
                }));
                if done_tx.send((seq, results)).is_err() {
                    break;
                }
            });
        }
        drop(done_tx);
        let mut pending = BTreeMap::new();
        let mut next = 0u64;
        'receive: for (seq, results) in done_rx {
            pending.insert(seq, results);
            while let Some(results) = pending.remove(&next) {
                let (lock, cv) = &consumed;
                match results {
                    Ok(results) => results.into_iter().for_each(&mut consume),
                    Err(panic) => {
                        // Stop the producer; dropping the receiver stops the workers.
                        panicked = Some(panic);
                        lock.lock().expect("window lock").1 = true;
                        cv.notify_all();
                        break 'receive;
                    }
                }
                next += 1;
                lock.lock().expect("window lock").0 = next;
                cv.notify_all();
            }
        }
    });
    if let Some(panic) = panicked {
        std::panic::resume_unwind(panic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn results_come_in_order_and_the_window_holds() {
        let in_flight = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let mut out = Vec::new();
        ordered(
            4,
            64,
            |emit| {
                for i in 0..500u64 {
                    emit(i, 1);
                }
            },
            |i| {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                // Uneven work, so that results finish out of order.
                std::thread::sleep(std::time::Duration::from_micros((i % 7) * 100));
                in_flight.fetch_sub(1, Ordering::SeqCst);
                i * 2
            },
            |r| out.push(r),
        );
        assert_eq!(out, (0..500u64).map(|i| i * 2).collect::<Vec<_>>());
        assert!(peak.load(Ordering::SeqCst) <= 4);
        assert!(peak.load(Ordering::SeqCst) >= 2, "nothing ran in parallel");
    }

    #[test]
    fn heavy_items_go_one_per_worker() {
        let in_flight = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        ordered(
            4,
            4096,
            |emit| (0..4).for_each(|i| emit(i, 512 << 20)),
            |_: i32| {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(50));
                in_flight.fetch_sub(1, Ordering::SeqCst);
            },
            |()| {},
        );
        assert_eq!(
            peak.load(Ordering::SeqCst),
            4,
            "big items were batched together"
        );
    }

    #[test]
    fn a_panicking_worker_is_reported_not_waited_for() {
        let outcome = std::panic::catch_unwind(|| {
            ordered(
                2,
                16,
                |emit| (0..20).for_each(|i| emit(i, 1)),
                |i: i32| assert_ne!(i, 3, "item 3 fails"),
                |()| {},
            )
        });
        assert!(outcome.is_err(), "the panic was swallowed");
    }

    #[test]
    fn one_thread_and_a_window_of_one_still_finish() {
        let mut out = Vec::new();
        ordered(
            1,
            1,
            |emit| (0..20).for_each(|i| emit(i, 1)),
            |i: i32| -i,
            |r| out.push(r),
        );
        assert_eq!(out, (0..20).map(|i| -i).collect::<Vec<_>>());
    }
}
