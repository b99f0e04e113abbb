//! The compose target behind the engine's seam: each `Target` method in compose terms.

use std::time::{Duration, Instant};

use super::{lock, release_steps, ComposeHost, RECONNECT_FOR};
use crate::remote::Cmd;
use crate::report::Diagnostics;
use crate::targets::{HostState, ReleaseError, ReleaseSpec, Step, Target};

impl ComposeHost {
    /// Nothing changes a host whose lock another deploy took while this run was away.
    fn still_ours(&self) -> Result<(), ReleaseError> {
        if self.lock_lost {
            return Err(ReleaseError::LockLost {
                host: self.conn.name.clone(),
            });
        }
        Ok(())
    }
}

impl Target for ComposeHost {
    fn state(&self) -> HostState {
        HostState {
            name: self.conn.name.clone(),
            spec: self.access.spec.clone(),
            fingerprint: self.conn.host_key.fingerprint.clone(),
            previous: self.previous.clone(),
            release: self.release.clone(),
            touched: self.touched,
            activated_at: self.up_done,
            restore_target: self.restore_target(),
            slow_stops: self.slow_stops.clone(),
            warnings: Vec::new(),
            lock_lost: self.lock_lost,
            lost_to_heal: self.lost_to_heal,
            healed: self.healed.clone(),
            handed_over: self.handed_over && self.heal_armed,
        }
    }
    fn reconnect(&mut self) -> Result<(), ReleaseError> {
        let conn = self.access.connect()?;
        conn.start_agent(&self.layout.lock_dir(), &self.token)?;
        self.conn = conn;
        self.reclaim_lock()
    }
    fn ensure_connected(&mut self) -> Result<(), ReleaseError> {
        if self.conn.has_session() {
            return Ok(());
        }
        let started = Instant::now();
        loop {
            match Target::reconnect(self) {
                Ok(()) => {
                    self.runner.line(&format!(
                        "{}: connected again after the connection was lost",
                        self.conn.name
                    ));
                    return Ok(());
                }
                Err(e @ ReleaseError::LockLost { .. }) => return Err(e),
                Err(e) if started.elapsed() > RECONNECT_FOR => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_secs(1)),
            }
        }
    }
    fn preflight(&mut self) -> Result<Vec<String>, ReleaseError> {
        ComposeHost::preflight(self)
    }
    fn peek_lock(&mut self) -> Result<(), ReleaseError> {
        ComposeHost::peek_lock(self)
    }
    fn lock(&mut self, spec: &ReleaseSpec) -> Result<Option<String>, ReleaseError> {
        ComposeHost::lock(self, spec)
    }
    fn unlock(&mut self) -> Result<(), ReleaseError> {
        ComposeHost::unlock(self)
    }
    fn snapshot(&mut self) -> Result<(), ReleaseError> {
        ComposeHost::snapshot(self)?;
        // Whether the project's routes live in an edge (an earlier deploy with `routes`).
        let joined = format!(
            "{}/.berth/{}",
            self.layout.deploy_dir,
            crate::edge::EDGE_ENV
        );
        self.edge_joined = self.conn.exists(&joined)?;
        Ok(())
    }
    fn release_steps(&self, spec: &ReleaseSpec) -> Vec<Step> {
        if let (Some(id), Some(edge)) = (&self.rollback_to, &spec.edge) {
            return super::steps::switch_back_steps(
                &self.layout,
                id,
                edge,
                self.previous.as_deref(),
                &|s| self.replicas(s),
            );
        }
        release_steps(
            &self.layout,
            spec,
            &self.docker_config,
            self.previous.as_deref(),
            self.edge_joined,
            &|s| self.replicas(s),
        )
    }
    fn plan(&self, spec: &ReleaseSpec) -> Vec<String> {
        let quoted = |c: Cmd| crate::ssh::quote_argv(&c.0);
        let holder = serde_json::to_string(&spec.holder).expect("json");
        let stale = lock::LOCK_STALE_AFTER.as_secs();
        let mut lines = vec![
            quoted(self.layout.lock_acquire(&spec.holder.token, &holder, stale)),
            quoted(self.layout.snapshot()),
        ];
        lines.extend(self.release_steps(spec).iter().map(Step::plan_line));
        lines
    }
    fn run_step(&mut self, spec: &ReleaseSpec, step: &Step) -> Result<(), ReleaseError> {
        self.still_ours()?;
        self.execute(spec, step)?;
        if step.name == super::ARM_HEAL {
            self.heal_armed = true;
        }
        Ok(())
    }
    fn verify(&mut self) -> Result<(), ReleaseError> {
        ComposeHost::verify(self)
    }
    fn watch(&mut self) -> Result<Vec<String>, ReleaseError> {
        self.crash_watch()
    }
    fn activate(&mut self, id: &str) -> Result<(), ReleaseError> {
        self.still_ours()?;
        self.reactivate(id)
    }
    fn recovery_command(&self, id: &str) -> String {
        // Through an edge, the restore itself: it routes the edge back too.
        if self.edge_joined {
            return crate::ssh::by_hand(&self.access.spec, &self.layout.settle_and_activate(id));
        }
        let up = self.layout.compose(id, &["up", "-d", "--remove-orphans"]);
        crate::ssh::by_hand(&self.access.spec, &up)
    }
    fn record(&mut self, spec: &ReleaseSpec, outcome: &str) -> Result<(), ReleaseError> {
        self.still_ours()?;
        self.write_record(spec, outcome)?;
        // A verdict recorded: nothing is left for the host to heal. The record is written;
        // a heal left armed would restore this very release (the newest proven one), and
        // the lock's release removes it: a failure here is said, not the record's.
        if matches!(outcome, "deployed" | "rolled-back") {
            if let Err(e) = self.disarm_heal() {
                self.runner.line(&format!(
                    "{}: the host's self-heal stays armed until the lock is released ({e})",
                    self.conn.name
                ));
            }
        }
        Ok(())
    }
    fn prune(&mut self, spec: &ReleaseSpec) -> Result<Vec<String>, ReleaseError> {
        self.still_ours()?;
        ComposeHost::prune(self, spec)
    }
    fn diagnostics(&mut self, lines: usize) -> Diagnostics {
        ComposeHost::diagnostics(self, lines)
    }
    fn choose_rollback(
        &mut self,
        wanted: Option<&str>,
    ) -> Result<(String, Option<String>), ReleaseError> {
        ComposeHost::choose_rollback(self, wanted)
    }
    fn route_back(&mut self) -> Result<bool, ReleaseError> {
        // Back to what the switch had as its fallback: what served when the run began.
        let (Some(_), Some(back)) = (self.switched_at, self.previous.clone()) else {
            return Ok(false);
        };
        self.still_ours()?;
        let cmd = crate::edge::route_back(&self.layout.deploy_dir, &self.layout.project, &back);
        let out = self.step("route the edge back", &cmd, None, super::QUICK)?;
        self.switched_at = None;
        Ok(out.stdout.contains("routes back"))
    }
    fn switch_to(&mut self, id: &str, spec: &ReleaseSpec) -> Result<bool, ReleaseError> {
        if spec.edge.is_none() {
            return Ok(false);
        }
        // Its routes as deployed (none: it was not deployed with `routes`), in one look.
        let had = self.step(
            "read the release's routes",
            &crate::argv::Cmd::new([
                "sh".to_string(),
                "-c".into(),
                r#"cat "$1" 2>/dev/null || true"#.into(),
                "sh".into(),
                format!(
                    "{}/{}",
                    self.layout.release_dir(id),
                    crate::edge::ROUTES_FILE
                ),
            ]),
            None,
            super::QUICK,
        )?;
        if had.stdout.is_empty() {
            return Ok(false);
        }
        // They must be this run's `routes`: the switch is made from these, and the drain
        // installs the release's own.
        let edge = spec.edge.as_ref().expect("checked above");
        let want = crate::edge::routes_file(&self.layout.project, id, &edge.settings.routes, None);
        if had.stdout != want {
            return Err(ReleaseError::Preflight {
                host: self.conn.name.clone(),
                problem: format!("release {id} was deployed with other `routes` than this run's. Run `mode: rollback` with the `routes` that release was deployed with (its routes are in {}/{}).", self.layout.release_dir(id), crate::edge::ROUTES_FILE),
            });
        }
        // Its model, for the replicas of its routed services (no pull runs here).
        let config = self.step(
            "read the release's compose model",
            &self.layout.compose(id, &["config", "--format", "json"]),
            None,
            super::QUICK,
        )?;
        self.model = serde_json::from_str(&config.stdout).ok();
        self.pins = self.release_pins(id)?;
        self.release = Some(id.to_string());
        self.rollback_to = Some(id.to_string());
        self.serving = Some(id.to_string());
        Ok(true)
    }
    fn record_manual_rollback(&mut self, restored: &str) -> Result<(), ReleaseError> {
        self.still_ours()?;
        ComposeHost::record_manual_rollback(self, restored)
    }
    fn steady(
        &mut self,
        elapsed: Duration,
        outlast_stops: bool,
    ) -> Result<Option<String>, ReleaseError> {
        ComposeHost::steady(self, elapsed, outlast_stops)
    }
    fn hand_over(&mut self) -> Result<(), ReleaseError> {
        ComposeHost::hand_over(self)
    }
}
