//! The deploy lock on a host: an atomic `mkdir`, a holder record, a heartbeat while it is
//! held, takeover of a stale one, and release, also by a cancelled run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{now_rfc3339, tail, ComposeHost, QUICK};
use crate::remote::{self, Layout, LockHolder};
use crate::target::{Access, ReleaseError, ReleaseSpec};

/// A lock whose heartbeat is older than this is presumed abandoned (its holder was killed
/// without cleanup) and is taken over with a warning. The holder touches it every
/// [`HEARTBEAT_EVERY`], so this is six missed beats.
pub const LOCK_STALE_AFTER: Duration = Duration::from_secs(90);
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(15);

pub struct Heartbeat {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl ComposeHost {
    /// Takes the host's deploy lock, waiting up to `lock-timeout` for another holder and
    /// taking over a lock whose heartbeat went stale. Returns a warning if it took over.
    pub fn lock(&mut self, spec: &ReleaseSpec) -> Result<Option<String>, ReleaseError> {
        let started = Instant::now();
        let mut warning = None;
        let mut last_holder = String::new();
        loop {
            let acquire = self.quiet(&self.layout.lock_acquire(), None, QUICK, false)?;
            match acquire.status {
                0 => break,
                remote::LOCK_HELD => {}
                status => {
                    return Err(ReleaseError::Step {
                        host: self.conn.name.clone(),
                        step: "mkdir .berth/lock",
                        status,
                        tail: tail(&acquire, 30),
                    })
                }
            }
            let inspect = self.quiet(&self.layout.lock_inspect(), None, QUICK, false)?;
            let (holder, age) = parse_lock_inspect(&inspect.stdout);
            let holder_text = holder
                .as_ref()
                .map(|h| h.to_string())
                .unwrap_or_else(|| "an unknown holder".into());
            if age.is_some_and(|a| a > LOCK_STALE_AFTER) {
                let token = random_token();
                if self
                    .quiet(&self.layout.lock_take_over(&token), None, QUICK, false)?
                    .status
                    == 0
                {
                    let w = format!(
                        "{}: took over a stale deploy lock held by {holder_text}: no heartbeat for {}s (stale after {}s).",
                        self.conn.name,
                        age.unwrap_or_default().as_secs(),
                        LOCK_STALE_AFTER.as_secs()
                    );
                    self.runner.line(&w);
                    warning = Some(w);
                }
                continue;
            }
            if holder_text != last_holder {
                self.runner.line(&format!(
                    "{}: waiting for the deploy lock, held by {holder_text}",
                    self.conn.name
                ));
                last_holder = holder_text.clone();
            }
            if started.elapsed() >= spec.lock_timeout {
                return Err(ReleaseError::LockHeld {
                    host: self.conn.name.clone(),
                    holder: holder_text,
                    waited: started.elapsed(),
                });
            }
            std::thread::sleep(Duration::from_secs(1).min(spec.lock_timeout));
        }
        let record = serde_json::to_vec(&spec.holder).expect("json");
        self.conn.upload(
            &format!("{}/holder.json", self.layout.lock_dir()),
            &record,
            0o600,
        )?;
        self.lock_token = Some(spec.holder.token.clone());
        held_locks().push((
            self.access.clone(),
            self.layout.clone(),
            spec.holder.token.clone(),
        ));
        self.start_heartbeat();
        Ok(warning)
    }

    /// Touches the heartbeat over a second connection, so a long `pull` on the first one
    /// cannot starve it.
    fn start_heartbeat(&mut self) {
        let stop = Arc::new(AtomicBool::new(false));
        let (access, layout, flag) = (self.access.clone(), self.layout.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let Ok(conn) = access.connect() else { return };
            let mut last = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if last.elapsed() >= HEARTBEAT_EVERY {
                    let _ = conn.run(&layout.lock_heartbeat(), None, QUICK, |_| {});
                    last = Instant::now();
                }
            }
        });
        self.heartbeat = Some(Heartbeat { stop, thread });
    }

    /// Releases the lock if we hold it. Reconnects if the connection died.
    pub fn unlock(&mut self) -> Result<(), ReleaseError> {
        if let Some(hb) = self.heartbeat.take() {
            hb.stop.store(true, Ordering::Relaxed);
            let _ = hb.thread.join();
        }
        let Some(token) = self.lock_token.clone() else {
            return Ok(());
        };
        let cmd = self.layout.lock_release(&token);
        if self.quiet(&cmd, None, QUICK, false).is_err() {
            crate::target::Target::reconnect(self)?;
            self.quiet(&cmd, None, QUICK, false)?;
        }
        self.lock_token = None;
        held_locks().retain(|(_, _, t)| t != &token);
        Ok(())
    }

    /// Dry run: says whether the lock is free, without taking it.
    pub fn peek_lock(&mut self) -> Result<(), ReleaseError> {
        let inspect = self.quiet(&self.layout.lock_inspect(), None, QUICK, false)?;
        let (holder, _) = parse_lock_inspect(&inspect.stdout);
        match holder {
            Some(h) => self.runner.line(&format!(
                "{}: the deploy lock is held by {h}; a real run would wait for it",
                self.conn.name
            )),
            None => self
                .runner
                .line(&format!("{}: the deploy lock is free", self.conn.name)),
        }
        Ok(())
    }
}

impl Drop for ComposeHost {
    fn drop(&mut self) {
        if let Some(hb) = self.heartbeat.take() {
            hb.stop.store(true, Ordering::Relaxed);
        }
    }
}

type HeldLock = (Access, Layout, String);

static HELD_LOCKS: std::sync::Mutex<Vec<HeldLock>> = std::sync::Mutex::new(Vec::new());

fn held_locks() -> std::sync::MutexGuard<'static, Vec<HeldLock>> {
    HELD_LOCKS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Releases every lock this process holds, over fresh connections. For a cancelled run
/// (SIGTERM/SIGINT), whose deploy threads cannot be interrupted.
pub fn release_held_locks() -> usize {
    let locks: Vec<HeldLock> = held_locks().drain(..).collect();
    let mut released = 0;
    for (access, layout, token) in locks {
        if let Ok(conn) = access.connect() {
            // Still under our lock: what this run left pending was interrupted.
            let _ = conn.run(
                &layout.mark_interrupted(&token, &now_rfc3339()),
                None,
                QUICK,
                |_| {},
            );
            if conn
                .run(&layout.lock_release(&token), None, QUICK, |_| {})
                .is_ok()
            {
                released += 1;
            }
        }
    }
    released
}

/// Holder record, heartbeat mtime and host clock, as printed by `Layout::lock_inspect`.
pub fn parse_lock_inspect(out: &str) -> (Option<LockHolder>, Option<Duration>) {
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    let holder = lines
        .iter()
        .find_map(|l| serde_json::from_str::<LockHolder>(l).ok());
    let nums: Vec<u64> = lines
        .iter()
        .rev()
        .take(2)
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let age = match nums.as_slice() {
        [now, beat] => Some(Duration::from_secs(now.saturating_sub(*beat))),
        _ => None,
    };
    (holder, age)
}

pub fn random_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}
