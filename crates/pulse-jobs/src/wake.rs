//! When an idle worker should ask the queue again: at once when a job was enqueued (in this
//! process, or — on PostgreSQL — in another, through `LISTEN`/`NOTIFY`), at the time of the
//! earliest job it knows to be due later (a delayed enqueue, a retry it scheduled), and otherwise
//! after an idle backoff that doubles from `jobs.worker.poll_interval_ms` to
//! `jobs.worker.idle_poll_max_ms`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// See the module docs. Shared by the control plane and the worker of one process.
#[derive(Debug)]
pub struct Wakeup {
    now: Notify,
    /// The earliest known `run_at` still ahead, Unix ms (`i64::MAX`: none).
    next_due_ms: AtomicI64,
}

impl Default for Wakeup {
    fn default() -> Self {
        Self {
            now: Notify::new(),
            next_due_ms: AtomicI64::new(i64::MAX),
        }
    }
}

impl Wakeup {
    /// Jobs are ready now: wake the waiting worker.
    pub fn ready_now(&self) {
        self.now.notify_waiters();
    }

    /// A job becomes ready at `run_at_ms`: the worker asks again then at the latest.
    pub fn due_at(&self, run_at_ms: i64) {
        self.next_due_ms.fetch_min(run_at_ms, Ordering::AcqRel);
        // A waiting worker recomputes its deadline.
        self.now.notify_waiters();
    }

    /// How long to wait at most from `now_ms`, given the idle backoff `idle`; forgets a due time
    /// that has come (the lease about to run takes its job).
    pub fn wait_for(&self, now_ms: i64, idle: Duration) -> Duration {
        let due = self.next_due_ms.load(Ordering::Acquire);
        if due == i64::MAX {
            return idle;
        }
        if due <= now_ms {
            // Only forget the time this worker read: a sooner one set meanwhile stays.
            let _ = self.next_due_ms.compare_exchange(
                due,
                i64::MAX,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            return Duration::ZERO;
        }
        idle.min(Duration::from_millis((due - now_ms) as u64))
    }

    /// A future that completes at the next [`Wakeup::ready_now`] or [`Wakeup::due_at`];
    /// create it before looking at the queue, so a wakeup meanwhile is not missed.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.now.notified()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_is_the_idle_backoff_or_the_next_due_time_whichever_comes_first() {
        let wake = Wakeup::default();
        let idle = Duration::from_millis(800);
        assert_eq!(wake.wait_for(1_000, idle), idle);
        wake.due_at(1_300);
        wake.due_at(1_900);
        assert_eq!(wake.wait_for(1_000, idle), Duration::from_millis(300));
        assert_eq!(wake.wait_for(1_300, idle), Duration::ZERO, "due now");
        assert_eq!(wake.wait_for(1_301, idle), idle, "a due time is used once");
    }
}
