//! The deploy lock on a host: an atomic `mkdir` with the taker's token and holder record,
//! kept alive by the host's remote session (its heartbeat; `abandoned` when the session
//! ends without releasing it), taken over at once when abandoned or when stale, and
//! released, also by a cancelled run.

use std::time::{Duration, Instant};

use super::{now_rfc3339, tail, ComposeHost, QUICK};
use crate::remote::{self, Layout, LockHolder};
use crate::targets::{Access, ReleaseError, ReleaseSpec};

/// A lock whose heartbeat is older than this is presumed dead (its host lost power, so
/// no session could mark it abandoned) and is taken over with a warning. A live holder's
/// remote session touches it every 15 s, so this is six missed beats.
pub const LOCK_STALE_AFTER: Duration = Duration::from_secs(90);

impl ComposeHost {
    /// Takes the host's deploy lock, waiting up to `lock-timeout` for another holder and
    /// taking over one whose session ended or whose heartbeat went stale. Returns a
    /// warning if it took over.
    pub fn lock(&mut self, spec: &ReleaseSpec) -> Result<Option<String>, ReleaseError> {
        let started = Instant::now();
        let mut last_holder = String::new();
        let holder = serde_json::to_string(&spec.holder).expect("json");
        let acquire =
            self.layout
                .lock_acquire(&spec.holder.token, &holder, LOCK_STALE_AFTER.as_secs());
        loop {
            let out = self.quiet(&acquire, None, QUICK, false)?;
            match out.status {
                0 => {
                    self.lock_token = Some(spec.holder.token.clone());
                    held_locks().push(HeldLock {
                        access: self.access.clone(),
                        layout: self.layout.clone(),
                        token: spec.holder.token.clone(),
                        restoring: false,
                        handed_over: false,
                    });
                    return Ok(self.took_over(&out.stdout));
                }
                remote::LOCK_HELD => {}
                status => {
                    return Err(ReleaseError::Step {
                        host: self.conn.name.clone(),
                        step: "mkdir .berth/lock",
                        status,
                        tail: tail(&out, 30),
                    })
                }
            }
            let (holder, _) = parse_lock_inspect(&out.stdout);
            let holder_text = holder
                .as_ref()
                .map(|h| h.to_string())
                .unwrap_or_else(|| "an unknown holder".into());
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
            if crate::cancel::is_cancelled() {
                return Err(crate::ssh::SshError::Cancelled {
                    host: self.conn.name.clone(),
                    command: "waiting for the deploy lock".into(),
                }
                .into());
            }
            std::thread::sleep(Duration::from_secs(1).min(spec.lock_timeout));
        }
    }

    /// The warning for a lock taken over (`took-over <why>`, then the old holder record).
    fn took_over(&self, out: &str) -> Option<String> {
        let mut lines = out.lines();
        let why = lines.next()?.strip_prefix("took-over ")?;
        let holder = lines
            .find_map(|l| serde_json::from_str::<LockHolder>(l).ok())
            .map(|h| h.to_string())
            .unwrap_or_else(|| "an unknown holder".into());
        let how = match why.strip_prefix("stale ") {
            Some(secs) => format!(
                "its heartbeat stopped {secs}s ago (stale after {}s; its host may have lost power)",
                LOCK_STALE_AFTER.as_secs()
            ),
            None => "its remote session ended without releasing it (the run was killed or lost its connection)".into(),
        };
        let w = format!(
            "{}: took over the deploy lock held by {holder}: {how}.",
            self.conn.name
        );
        self.runner.line(&w);
        Some(w)
    }

    /// Releases the lock if we hold it. Reconnects if the connection died.
    pub fn unlock(&mut self) -> Result<(), ReleaseError> {
        let Some(token) = self.lock_token.clone() else {
            return Ok(());
        };
        if self.handed_over && self.heal_armed {
            // A cancelled run whose restore is not proven: the host finishes and proves it
            // when this session ends, under this lock, and releases it then.
            self.runner.line(&format!(
                "{}: the deploy lock is left to the host, which finishes and proves the restore by itself",
                self.conn.name
            ));
            return Ok(());
        }
        let cmd = self.layout.lock_release(&token);
        let step = "release the deploy lock";
        if let Err(e) = self.step(step, &cmd, None, QUICK) {
            if !matches!(e, ReleaseError::Ssh(_)) {
                return Err(e);
            }
            crate::targets::Target::reconnect(self)?;
            self.step(step, &cmd, None, QUICK)?;
        }
        self.lock_token = None;
        forget(&self.access, &token);
        Ok(())
    }

    /// After a reconnect: whether the lock this run took is still its own (the session
    /// that ended marked it abandoned; nobody may have taken it since).
    pub(super) fn reclaim_lock(&mut self) -> Result<(), ReleaseError> {
        let Some(token) = self.lock_token.clone() else {
            return Ok(());
        };
        let out = self.quiet(&self.layout.lock_reclaim(&token), None, QUICK, false)?;
        // Only "not ours" means lost; any other failure (the mutex stays taken, a full
        // disk) is an error of the reconnect, which is tried again.
        if out.status != remote::LOCK_HELD {
            self.exited_0("reclaim the deploy lock", out)?;
            return Ok(());
        }
        self.lock_token = None;
        self.lock_lost = true;
        self.lost_to_heal = out.stdout.trim() == "healing";
        forget(&self.access, &token);
        Err(ReleaseError::LockLost {
            host: self.conn.name.clone(),
        })
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

/// A lock this process holds on a host, for the cancelled run's last resort.
struct HeldLock {
    access: Access,
    layout: Layout,
    token: String,
    /// A restore runs on the host: it finishes there even if berth is gone, so its lock
    /// must not be released under it.
    restoring: bool,
    /// The host heals itself once berth is gone: its lock is the heal's.
    handed_over: bool,
}

static HELD_LOCKS: std::sync::Mutex<Vec<HeldLock>> = std::sync::Mutex::new(Vec::new());

fn held_locks() -> std::sync::MutexGuard<'static, Vec<HeldLock>> {
    HELD_LOCKS.lock().unwrap_or_else(|e| e.into_inner())
}

fn forget(access: &Access, token: &str) {
    held_locks().retain(|h| !(h.token == token && h.access.spec == access.spec));
}

/// Set once the cancelled run's last resort took the held locks: no restore starts after.
static LAST_RESORT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Marks whether a restore runs on the host of `access` under the lock `token`. A restore
/// may not start once the last resort released the locks (false).
pub(super) fn set_restoring(access: &Access, token: &str, restoring: bool) -> bool {
    let mut held = held_locks();
    if restoring && LAST_RESORT.load(std::sync::atomic::Ordering::SeqCst) {
        return false;
    }
    for h in held.iter_mut() {
        if h.token == token && h.access.spec == access.spec {
            h.restoring = restoring;
        }
    }
    true
}

/// What the cancelled run's last resort did: locks released, and hosts where a restore
/// still runs (left to finish; its session then marks the lock abandoned).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LastResort {
    pub released: usize,
    pub restoring: Vec<String>,
}

/// Marks the host of `access` as handed over: the host heals itself when the session
/// ends (see `remote::heal`), so the last resort leaves its lock to it.
pub(super) fn set_handed_over(access: &Access, token: &str) {
    for h in held_locks().iter_mut() {
        if h.token == token && h.access.spec == access.spec {
            h.handed_over = true;
        }
    }
}

/// Releases every lock this process holds, over fresh connections, except where a
/// restore still runs or was handed over to the host. For a cancelled run
/// (SIGTERM/SIGINT) whose grace ran out.
pub fn release_held_locks() -> LastResort {
    let locks: Vec<HeldLock> = {
        let mut held = held_locks();
        LAST_RESORT.store(true, std::sync::atomic::Ordering::SeqCst);
        held.drain(..).collect()
    };
    let mut done = LastResort::default();
    for h in locks {
        if h.restoring || h.handed_over {
            done.restoring.push(h.access.spec.to_string());
            continue;
        }
        if let Ok(conn) = h.access.connect() {
            // Still under our lock: what this run left pending was interrupted.
            let _ = conn.run(
                &h.layout.mark_interrupted(&h.token, &now_rfc3339()),
                None,
                QUICK,
                |_| {},
            );
            if conn
                .run(&h.layout.lock_release(&h.token), None, QUICK, |_| {})
                .is_ok_and(|o| o.status == 0)
            {
                done.released += 1;
            }
        }
    }
    done
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
