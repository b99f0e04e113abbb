//! A cancelled run. GitHub cancels a container action with SIGINT, sends SIGTERM about
//! 7.5 s later and kills it about 2.5 s after that. On the first signal berth stops what
//! runs on the hosts (the remote session stops the command and its one-off containers),
//! restores the previous release if the new one was never proven healthy, and reports.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;

/// How long a cancelled run has to restore and report: SIGTERM follows SIGINT after
/// about 7.5 s and the kill comes about 2.5 s later, so the report is out by then.
pub const GRACE: std::time::Duration = std::time::Duration::from_millis(8500);

/// The part of [`GRACE`] a restore's health check may use, leaving time to record, unlock
/// and report.
pub const RESTORE_BUDGET: std::time::Duration = std::time::Duration::from_secs(6);

static CANCELLED: AtomicBool = AtomicBool::new(false);
static SIGNAL: Mutex<Option<&'static str>> = Mutex::new(None);
static NOTIFY: Notify = Notify::const_new();

/// Marks the run cancelled by `signal`; every waiter wakes.
pub fn cancel(signal: &'static str) {
    SIGNAL
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert(signal);
    CANCELLED.store(true, Ordering::SeqCst);
    NOTIFY.notify_waiters();
}

/// The flag that a remote command's read loop checks.
pub fn flag() -> &'static AtomicBool {
    &CANCELLED
}

pub fn is_cancelled() -> bool {
    CANCELLED.load(Ordering::SeqCst)
}

/// The signal that cancelled the run, if any.
pub fn signal() -> Option<&'static str> {
    *SIGNAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Resolves once the run is cancelled.
pub async fn cancelled() {
    loop {
        let notified = NOTIFY.notified();
        if is_cancelled() {
            return;
        }
        notified.await;
    }
}
