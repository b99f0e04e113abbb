//! The deploy engine: from a gated commit to a verdict on every host of a target.
//!
//! Every host is reached (host key, auth) and checked before anything is pushed, since a
//! host that cannot take the release must not leave new tags in the registry; then build
//! and push (immutable tags), lock, the release's steps, the verdict (verify + health +
//! crash watch), and only after a healthy verdict the moving tags. The engine owns the
//! decision to roll back: once a host's containers may have changed, every failure goes
//! through [`Engine::fail_and_restore`], the one rollback path.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::failure::{Fault, HostStep};
use crate::images;
use crate::inputs::{Config, GithubContext, Mode, TargetKind};
use crate::remote::{self, Layout, LockHolder};
use crate::report::{HostReport, Outcome, Phase, PhaseResult, Report};
use crate::secret::Secret;
use crate::ssh::HostTrust;
use crate::targets::{
    self, compose::ComposeHost, phase_summaries, swarm::host::SwarmHost, Access, RegistryLogin,
    ReleaseError, ReleaseSpec, Target,
};
use crate::workflow::{Annotation, Level, Runner};

mod hosts;
mod rollback;
mod verdict;

use hosts::{on_all, states, Host};

/// A build longer than this is followed by fresh SSH connections (see [`deliver`]).
const IDLE_RECONNECT: Duration = Duration::from_secs(10);
/// Log lines of each failing container kept for the report.
const LOG_LINES: usize = 100;

/// Connect, preflight, build and push, lock, then deploy (or roll back, or plan), unlock.
pub async fn deliver(
    cfg: &Config,
    ctx: &GithubContext,
    sha: &str,
    runner: &Runner,
    report: &mut Report,
) -> Result<Outcome, Fault> {
    let mut engine = Engine::new(cfg, ctx, runner, sha);
    let hosts = engine.connect(report).await?;
    if cfg.mode == Mode::Deploy {
        engine.preflight(&hosts, report).await?;
        let building = Instant::now();
        let build = images::build_and_push(
            &cfg.build,
            cfg.dry_run,
            ctx,
            sha,
            runner,
            report,
            crate::failure::image_title,
        );
        let built = tokio::select! {
            built = build => built.map_err(Fault::Build)?,
            _ = crate::cancel::cancelled() => return Err(Fault::cancelled(Phase::Build)),
        };
        report.images = built.clone();
        engine.set_built(built);
        // The sessions sat idle through the build: libssh2 sends keepalives only while
        // berth is inside one of its calls, and an sshd (ClientAliveInterval) or a NAT may
        // have dropped them. Connect afresh (host keys checked again) after a long build.
        if building.elapsed() > IDLE_RECONNECT {
            engine.reconnect(&hosts, report).await?;
        }
    }
    engine.lock(&hosts, report).await?;
    let result = if cfg.dry_run {
        engine.plan(&hosts, report).await
    } else if cfg.mode == Mode::Rollback {
        engine.manual_rollback(&hosts, report).await
    } else {
        let result = engine.deploy(&hosts, report).await;
        // Still under the lock, so a later deploy's moving tags cannot land first. A run
        // cancelled after its verdict leaves the release (proven) and skips them.
        if matches!(result, Ok(Outcome::Deployed)) && !crate::cancel::is_cancelled() {
            images::push_moving_tags(&cfg.build, ctx, sha, runner, report).await;
        }
        result
    };
    engine.unlock(&hosts, report).await;
    for h in states(&hosts).await {
        for slow in &h.slow_stops {
            report.warn("berth: slow container stop", slow.clone());
        }
        for w in &h.warnings {
            report.warn("berth: swarm", w.clone());
        }
        report.hosts.push(HostReport {
            host: h.name,
            fingerprint: h.fingerprint,
            release: engine.restored.clone().or(h.release),
            previous: h.previous,
        });
    }
    result
}

/// One run's remote work across all hosts.
struct Engine<'a> {
    cfg: &'a Config,
    runner: &'a Runner,
    spec: Arc<ReleaseSpec>,
    /// The login for the host's pull, used only when berth pushed images there.
    registry: Option<RegistryLogin>,
    accesses: Vec<Access>,
    layout: Layout,
    /// `mode: rollback`: the release re-activated.
    restored: Option<String>,
    /// What users see while the release is switched, probed in the background.
    user_probe: std::sync::Mutex<Option<crate::health::UserProbe>>,
}

impl<'a> Engine<'a> {
    fn new(cfg: &'a Config, ctx: &'a GithubContext, runner: &'a Runner, sha: &str) -> Engine<'a> {
        let now = time::OffsetDateTime::now_utc();
        let trust = if cfg.target.insecure_skip_host_key_check {
            HostTrust::Insecure
        } else {
            HostTrust::Pinned {
                fingerprints: cfg.target.host_fingerprints.clone(),
                known_hosts: cfg.target.known_hosts.clone(),
            }
        };
        let accesses = cfg
            .target
            .hosts
            .iter()
            .map(|h| Access {
                spec: h.clone(),
                key: cfg.target.ssh_key.clone(),
                passphrase: cfg.target.ssh_key_passphrase.clone(),
                trust: trust.clone(),
            })
            .collect();
        let compose = std::fs::read_to_string(&cfg.target.compose_file).unwrap_or_default();
        let registry = (!cfg.build.registry_password.is_empty()).then(|| RegistryLogin {
            server: cfg.build.registry.clone(),
            username: cfg.build.registry_username.clone(),
            password: cfg.build.registry_password.clone(),
        });
        let spec = ReleaseSpec {
            id: remote::release_id(now, sha),
            sha: sha.into(),
            compose,
            env_file: cfg
                .target
                .env_file
                .clone()
                .unwrap_or_else(|| Secret::new("")),
            built: BTreeMap::new(),
            pre_deploy: cfg.target.pre_deploy.clone(),
            pre_deploy_timeout: cfg.target.pre_deploy_timeout,
            pull_stall: cfg.target.pull_stall_timeout,
            self_heal: cfg.rollback != crate::inputs::RollbackPolicy::Off,
            // Only log in when berth pushed images there; otherwise the host pulls as it can.
            registry: None,
            holder: LockHolder {
                token: targets::random_token(),
                run_url: ctx.run_url().unwrap_or_default(),
                actor: ctx.actor.clone(),
                sha: sha.into(),
                started_at: now
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
            },
            lock_timeout: cfg.target.lock_timeout,
            keep_releases: cfg.target.keep_releases,
            image_prefix: cfg.build.image_prefix.clone(),
            converge_within: cfg.health.timeout,
            edge: cfg.edge.clone().map(|settings| targets::EdgeRelease {
                settings,
                token: targets::random_token(),
            }),
        };
        Engine {
            cfg,
            runner,
            spec: Arc::new(spec),
            registry,
            accesses,
            layout: Layout {
                deploy_dir: cfg.target.deploy_dir.clone(),
                project: cfg.target.project_name.clone(),
            },
            restored: None,
            user_probe: Default::default(),
        }
    }

    /// The images this release deploys, once pushed. The host logs in to pull only when
    /// berth pushes images (a dry run plans that login too); otherwise it pulls as it can.
    fn set_built(&mut self, built: BTreeMap<String, String>) {
        let pushes = !self.cfg.build.images.is_empty();
        let spec = Arc::make_mut(&mut self.spec);
        spec.registry = self.registry.clone().filter(|_| pushes);
        spec.built = built;
    }

    /// Connects to every host, checking host keys before authenticating.
    async fn connect(&self, report: &mut Report) -> Result<Vec<Host>, Fault> {
        let started = Instant::now();
        let connected = match self.cfg.target.kind {
            TargetKind::Compose => {
                futures_util::future::join_all(self.accesses.iter().map(|a| {
                    let (access, layout, runner) =
                        (a.clone(), self.layout.clone(), self.runner.clone());
                    let token = self.spec.holder.token.clone();
                    Host::start(move || {
                        ComposeHost::connect(access, layout, runner, token)
                            .map(|h| Box::new(h) as Box<dyn Target>)
                    })
                }))
                .await
            }
            // One manager deploys the whole stack: the first that answers as one.
            TargetKind::Swarm => {
                let (accesses, layout, runner) = (
                    self.accesses.clone(),
                    self.layout.clone(),
                    self.runner.clone(),
                );
                let (token, within) = (self.spec.holder.token.clone(), self.spec.converge_within);
                vec![
                    Host::start(move || {
                        SwarmHost::connect_first(&accesses, layout, runner, token, within)
                            .map(|h| Box::new(h) as Box<dyn Target>)
                    })
                    .await,
                ]
            }
        };
        let hosts = connected
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(Fault::host(HostStep::Connect));
        let hosts = self.timed(report, Phase::Connect, started, hosts)?;
        report.record(
            Phase::Connect,
            started.elapsed(),
            PhaseResult::Ok(format!("{} host(s), host keys verified", hosts.len())),
        );
        Ok(hosts)
    }

    /// A failed phase gets its row in the phase table with its time; the fault goes on.
    fn timed<T>(
        &self,
        report: &mut Report,
        phase: Phase,
        started: Instant,
        result: Result<T, Fault>,
    ) -> Result<T, Fault> {
        if let Err(f) = &result {
            report.record(phase, started.elapsed(), PhaseResult::Failed(f.to_string()));
        }
        result
    }

    /// Connects every host afresh.
    async fn reconnect(&self, hosts: &[Host], report: &mut Report) -> Result<(), Fault> {
        let started = Instant::now();
        let result = first_error(on_all(hosts, |t| t.reconnect()).await)
            .map_err(Fault::host(HostStep::Connect));
        self.timed(report, Phase::Connect, started, result)
    }

    /// Preflight on every host: the first failure fails the run, the others warn.
    async fn preflight(&self, hosts: &[Host], report: &mut Report) -> Result<(), Fault> {
        let started = Instant::now();
        let mut failed = None;
        for r in on_all(hosts, |t| t.preflight()).await {
            match r {
                Ok(warnings) => {
                    for w in warnings {
                        report.warn("berth: little disk space on a host", w);
                    }
                }
                Err(e) if failed.is_none() => failed = Some(e),
                Err(e) => report.warn("berth: host failed preflight", e.to_string()),
            }
        }
        match failed {
            Some(e) => {
                let fault = Fault::host(HostStep::Preflight)(e);
                // Connect's row, which said the hosts were reached, now says they failed.
                report.amend(
                    Phase::Connect,
                    started.elapsed(),
                    PhaseResult::Failed(fault.to_string()),
                );
                Err(fault)
            }
            None => Ok(()),
        }
    }

    /// Takes each host's lock (dry run: only says who holds it). On any failure, releases
    /// what was taken.
    async fn lock(&self, hosts: &[Host], report: &mut Report) -> Result<(), Fault> {
        let started = Instant::now();
        let (spec, dry_run) = (self.spec.clone(), self.cfg.dry_run);
        let locked = on_all(hosts, move |t| {
            if dry_run {
                t.peek_lock().map(|_| None)
            } else {
                t.lock(&spec)
            }
        })
        .await;
        let mut failed = None;
        for r in locked {
            match r {
                Ok(Some(w)) => report.warn("berth: stale deploy lock taken over", w),
                Ok(None) => {}
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            self.unlock(hosts, report).await;
            return self.timed(
                report,
                Phase::Lock,
                started,
                Err(Fault::host(HostStep::Lock)(e)),
            );
        }
        let taken = if dry_run {
            "free (not taken: dry run)"
        } else {
            "taken"
        };
        report.record(
            Phase::Lock,
            started.elapsed(),
            PhaseResult::Ok(taken.into()),
        );
        Ok(())
    }

    async fn unlock(&self, hosts: &[Host], report: &mut Report) {
        let released = on_all(hosts, |t| {
            let name = t.state().name;
            t.unlock().map_err(|e| format!("{name}: {e}"))
        })
        .await;
        for e in released.into_iter().filter_map(Result::err) {
            report.warn(
                "berth: lock not released",
                format!(
                    "{e}. Remove `{}` on the host if no deploy is running.",
                    self.layout.lock_dir()
                ),
            );
        }
    }

    /// Dry run: every step a deploy would run, from the same list a deploy executes, with
    /// file contents and secrets left out. Changes nothing.
    async fn plan(&self, hosts: &[Host], report: &mut Report) -> Result<Outcome, Fault> {
        let spec = self.spec.clone();
        let plans = on_all(hosts, move |t| (t.state().name, t.plan(&spec))).await;
        for (host, steps) in plans {
            for step in steps {
                let line = format!("[{host}] {step}");
                self.runner.line(&format!("would run: {line}"));
                report.plan.push(line);
            }
        }
        report.notices.push(Annotation::new(
            Level::Notice,
            "berth: dry run",
            "Dry run: nothing was changed. The plan is in the job summary.",
        ));
        Ok(Outcome::Skipped)
    }

    /// Snapshot, the release's steps on every host, then the verdict; any failure once a
    /// host was touched restores the previous release. What users saw is measured from
    /// the first step that may change the running containers until the end (drain or
    /// restore included).
    async fn deploy(&self, hosts: &[Host], report: &mut Report) -> Result<Outcome, Fault> {
        let result = self.deploy_and_judge(hosts, report).await;
        self.finish_user_probe(report).await;
        result
    }

    async fn deploy_and_judge(
        &self,
        hosts: &[Host],
        report: &mut Report,
    ) -> Result<Outcome, Fault> {
        let snapshots = on_all(hosts, |t| t.snapshot()).await;
        first_error(snapshots).map_err(Fault::host(HostStep::Snapshot))?;
        report_heals(hosts, report).await;
        report.previous_release = hosts[0].state().await.previous;
        report.release = Some(self.spec.id.clone());
        report.routed = self.spec.edge.is_some();

        for batch in [Batch::Prepare, Batch::Activate] {
            if batch == Batch::Activate {
                self.start_user_probe(hosts).await;
            }
            if let Err((phase, e)) = self.run_release(hosts, report, batch).await {
                let fault = Fault::host(HostStep::Release(phase))(e);
                return Err(self.fail_and_restore(hosts, report, fault).await);
            }
        }
        if self.spec.edge.is_some() {
            if let Err(fault) = self.prove_and_switch(hosts, report).await {
                return Err(self.fail_and_restore(hosts, report, fault).await);
            }
        }
        // The health deadline counts from the moment the last host's activation returned:
        // counted from the first, a host whose `up` was slower got less than
        // `health-timeout`, or (seen on a loaded runner) no probe at all. Through the edge,
        // from the switch.
        let health_started = match self.spec.edge {
            Some(_) => Instant::now(),
            None => states(hosts)
                .await
                .iter()
                .filter_map(|h| h.activated_at)
                .max()
                .unwrap_or_else(Instant::now),
        };
        let judged = self.judge(hosts, report, health_started).await;
        match judged {
            Ok(record) => {
                report.health_seconds = record.healthy_after.map(|d| d.as_secs_f64());
                report.record(
                    Phase::Health,
                    health_started.elapsed(),
                    PhaseResult::Ok(format!(
                        "healthy after {} attempt(s)",
                        record.attempts.len()
                    )),
                );
                report.health = Some(record);
                self.mark(hosts, "deployed", report).await;
                // The old containers are kept until the verdict; only now do they go.
                self.drain(hosts, report).await;
                if crate::cancel::is_cancelled() {
                    report.warn("berth: cancelled after the release was proven", "The run was cancelled after the release proved healthy: it stays, recorded `deployed`; old releases were not pruned and moving tags were not pushed.");
                    return Ok(Outcome::Deployed);
                }
                let spec = self.spec.clone();
                for e in on_all(hosts, move |t| t.prune(&spec))
                    .await
                    .into_iter()
                    .filter_map(Result::err)
                {
                    report.warn(
                        "berth: cleanup failed",
                        format!("The release is deployed and healthy, but pruning failed: {e}"),
                    );
                }
                let url = report.environment_url.clone().unwrap_or_default();
                report.notices.push(Annotation::new(
                    Level::Notice,
                    "berth: deployed",
                    format!(
                        "Deployed {} ({}) to {} and it is healthy. {url}",
                        crate::short_sha(&self.spec.sha),
                        self.spec.id,
                        self.cfg.report.environment
                    ),
                ));
                Ok(Outcome::Deployed)
            }
            Err(fault) => {
                verdict::record_unproven(report, &fault, health_started);
                Err(self.fail_and_restore(hosts, report, fault).await)
            }
        }
    }

    /// With `routes`, once the new containers run beside the old: they are proven through
    /// the edge by the probe's header only (no user request reaches them before this
    /// passes), then the edge is switched to them. A failure of the proof is one users
    /// never saw.
    async fn prove_and_switch(&self, hosts: &[Host], report: &mut Report) -> Result<(), Fault> {
        let Some(edge) = &self.spec.edge else {
            return Ok(());
        };
        let started = Instant::now();
        let header = (crate::edge::CANDIDATE_HEADER, edge.token.as_str());
        if let Err(fault) = self
            .health_gate_with(hosts, report, started, false, Some(header))
            .await
        {
            verdict::record_unproven(report, &fault, started);
            report.users_unaffected = true;
            return Err(fault);
        }
        report.record(
            Phase::Health,
            started.elapsed(),
            PhaseResult::Ok(
                "the new containers answered healthy through the edge (probe header only)".into(),
            ),
        );
        self.run_release(hosts, report, Batch::Switch)
            .await
            .map_err(|(phase, e)| Fault::host(HostStep::Release(phase))(e))
    }

    /// The verdict: verify and health, and with `routes` the verdict window after them.
    async fn judge(
        &self,
        hosts: &[Host],
        report: &mut Report,
        health_started: Instant,
    ) -> Result<crate::health::HealthRecord, Fault> {
        // Through the edge, the new containers alone (their header-only routes stay until
        // the drain), never the old ones that back them up.
        let header = self
            .spec
            .edge
            .as_ref()
            .map(|e| (crate::edge::CANDIDATE_HEADER, e.token.as_str()));
        let record = self
            .verify_and_gate(hosts, report, health_started, header)
            .await?;
        if let (Some(edge), Some(header)) = (&self.spec.edge, header) {
            self.hold(hosts, edge.settings.verdict_window, header)
                .await?;
        }
        Ok(record)
    }

    /// With `routes`, after the verdict: the old containers drained and stopped.
    async fn drain(&self, hosts: &[Host], report: &mut Report) {
        if self.spec.edge.is_none() {
            return;
        }
        if let Err((_, e)) = self.run_release(hosts, report, Batch::Drain).await {
            report.warn(
                "berth: drain failed",
                format!("The release is healthy and serving through the edge, but stopping the old containers failed: {e}. They get no requests; remove them by hand or let the next deploy do it."),
            );
        }
    }

    /// Ends the background probe and puts what users saw into the report.
    async fn finish_user_probe(&self, report: &mut Report) {
        let probe = self.user_probe.lock().ok().and_then(|mut p| p.take());
        if let Some(probe) = probe {
            report.user_probes = Some(probe.stop().await);
        }
    }

    /// Runs the release's steps on every host (each host on its own thread, in parallel)
    /// and records each phase's time (the slowest host's), what it did, and the phase
    /// that failed.
    pub(super) async fn run_release(
        &self,
        hosts: &[Host],
        report: &mut Report,
        batch: Batch,
    ) -> Result<(), (Phase, ReleaseError)> {
        let spec = self.spec.clone();
        let ran = on_all(hosts, move |t| {
            let mut steps = t.release_steps(&spec);
            steps.retain(|s| batch.holds(s.phase));
            let mut timings: Vec<(Phase, Duration)> = Vec::new();
            let mut result = Ok(());
            for step in &steps {
                // A cancelled run starts no further step (not even one that cannot be
                // cancelled once sent).
                if crate::cancel::is_cancelled() {
                    let host = t.state().name;
                    let command = step.name.to_string();
                    let stopped = crate::ssh::SshError::Cancelled { host, command };
                    result = Err((step.phase, stopped.into()));
                    break;
                }
                let started = Instant::now();
                let r = t.run_step(&spec, step);
                match timings.last_mut() {
                    Some((p, d)) if *p == step.phase => *d += started.elapsed(),
                    _ => timings.push((step.phase, started.elapsed())),
                }
                if let Err(e) = r {
                    result = Err((step.phase, e));
                    break;
                }
            }
            (phase_summaries(&steps), timings, result)
        })
        .await;
        let summaries = ran.first().map(|r| r.0.clone()).unwrap_or_default();
        let failed = ran
            .iter()
            .find_map(|r| r.2.as_ref().err())
            .map(|(p, e)| (*p, e.to_string()));
        let mut slowest: Vec<(Phase, Duration)> = Vec::new();
        for (_, timings, _) in &ran {
            for (phase, d) in timings {
                match slowest.iter_mut().find(|(p, _)| p == phase) {
                    Some((_, max)) => *max = (*max).max(*d),
                    None => slowest.push((*phase, *d)),
                }
            }
        }
        for (phase, d) in slowest {
            let result = match &failed {
                Some((p, why)) if *p == phase => PhaseResult::Failed(why.clone()),
                _ => PhaseResult::Ok(
                    summaries
                        .iter()
                        .find(|(p, _)| *p == phase)
                        .map(|(_, s)| s.clone())
                        .unwrap_or_default(),
                ),
            };
            report.record(phase, d, result);
        }
        ran.into_iter()
            .map(|r| r.2)
            .collect::<Result<Vec<()>, _>>()
            .map(drop)
    }

    /// Writes this run's release record with `outcome` on `hosts`. A record is what a
    /// later rollback trusts, so one that cannot be written is said, never swallowed.
    async fn mark(&self, hosts: &[Host], outcome: &'static str, report: &mut Report) {
        let spec = self.spec.clone();
        let written = on_all(hosts, move |t| {
            let name = t.state().name;
            t.record(&spec, outcome).map_err(|e| format!("{name}: {e}"))
        })
        .await;
        for e in written.into_iter().filter_map(Result::err) {
            report.warn(
                "berth: release record not written",
                format!("Could not record this release as `{outcome}` on {e}. A later rollback reads these records to choose a release; check the host's deploy dir (disk space, permissions)."),
            );
        }
    }
}

/// Which of the release's steps a call of [`Engine::run_release`] runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Batch {
    /// Upload, pull, pre-deploy: nothing that runs has changed.
    Prepare,
    /// From the first step that may change what runs (`up`; with `routes`, the new
    /// containers beside the old and their header-only routes).
    Activate,
    /// With `routes`: the edge's switch.
    Switch,
    /// With `routes`, after the verdict: the old containers drained and stopped.
    Drain,
}

impl Batch {
    fn holds(self, phase: Phase) -> bool {
        match self {
            Batch::Prepare => matches!(phase, Phase::Upload | Phase::Pull | Phase::PreDeploy),
            Batch::Activate => !matches!(
                phase,
                Phase::Upload | Phase::Pull | Phase::PreDeploy | Phase::Switch | Phase::Drain
            ),
            Batch::Switch => phase == Phase::Switch,
            Batch::Drain => phase == Phase::Drain,
        }
    }
}

/// What a host did by itself after an earlier run was gone before its verdict.
async fn report_heals(hosts: &[Host], report: &mut Report) {
    for h in states(hosts).await {
        let Some(note) = h.healed else { continue };
        if note.restored.is_empty() {
            report.warn(
                "berth: the previous run was interrupted",
                format!(
                    "The previous run was interrupted before its verdict (berth killed, its runner gone, or its connection never came back), and {} had no release proven healthy to go back to ({}); what that run left is as it was. This run's release replaces it.",
                    h.name, note.at
                ),
            );
            continue;
        }
        let what = if note.proven {
            "proven: its containers ran the release's images and stayed up past any stop in flight"
        } else {
            "NOT proven"
        };
        let why = if note.why.is_empty() {
            String::new()
        } else {
            format!(" ({})", note.why)
        };
        report.warn(
            "berth: the previous run was interrupted",
            format!(
                "The previous run was interrupted before its verdict (berth killed, its runner gone, or its connection never came back). {} restored release {} by itself at {} (began {}), {what}{why}. No health probe ran from a runner then: this run's verdict is the first.",
                h.name, note.restored, note.at, note.began
            ),
        );
    }
}

/// The first error of per-host results, if any.
fn first_error<T>(results: Vec<Result<T, ReleaseError>>) -> Result<(), ReleaseError> {
    results
        .into_iter()
        .find_map(Result::err)
        .map_or(Ok(()), Err)
}
