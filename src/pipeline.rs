//! The deploy state machine:
//! inputs -> CI gate -> images -> remote release (lock, upload, pull, pre-deploy, up,
//! verify) -> health -> (rollback) -> report.
//!
//! The pipeline owns the decision to roll back: once any host's containers may have
//! changed, every failure goes through [`Deploy::fail_and_restore`], the one rollback path.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::ci_gate::{self, GateError, GateVerdict};
use crate::github::GithubApi;
use crate::health::{HealthProbe, HealthRecord};
use crate::images;
use crate::inputs::{self, Config, Env, GithubContext, Mode, RollbackPolicy};
use crate::release::{self, Access, HostRelease, RegistryLogin, ReleaseError, ReleaseSpec};
use crate::remote::{Layout, LockHolder};
use crate::report::{HostReport, Outcome, Phase, PhaseResult, Report, RollbackReport};
use crate::secret::Secret;
use crate::ssh::HostTrust;
use crate::workflow::{Annotation, Level, Runner};

/// A build longer than this is followed by fresh SSH connections (see `deliver`).
const IDLE_RECONNECT: Duration = Duration::from_secs(10);

/// At most this many hosts are worked on at once.
pub const MAX_PARALLEL_HOSTS: usize = 8;
/// How often the crash-loop watch looks at the containers while health is probed.
pub const CRASH_WATCH_EVERY: Duration = Duration::from_secs(1);
const LOG_LINES: usize = 100;

pub async fn run(env: &Env, runner: &Runner) -> Report {
    let started = Instant::now();
    let mut report = Report::default();
    let ctx = GithubContext::from_env(env);

    let config = match inputs::parse(env, &ctx) {
        Ok(c) => c,
        Err(errors) => {
            report.outcome = Some(Outcome::Failed);
            report.record(
                Phase::Inputs,
                started.elapsed(),
                PhaseResult::Failed(errors.to_string()),
            );
            for e in errors.0 {
                report.errors.push(Annotation::new(
                    Level::Error,
                    format!("berth: invalid input {}", e.input),
                    format!("Input `{}` {}", e.input, e.message),
                ));
            }
            report.elapsed = started.elapsed();
            return report;
        }
    };
    for s in config.secrets() {
        runner.add_mask(s);
    }
    report.environment = config.report.environment.clone();
    report.environment_url = config
        .report
        .environment_url
        .as_ref()
        .map(|u| u.to_string());
    report.manual_rollback = config.mode == Mode::Rollback;
    report.record(
        Phase::Inputs,
        started.elapsed(),
        PhaseResult::Ok("all inputs valid".into()),
    );
    if config.health.insecure_tls {
        report.warn("berth: insecure TLS", "`health-insecure-tls: true`: the health check does not verify the server's certificate.");
    }

    match ci_gate(&config, &ctx, runner, &mut report).await {
        Ok(GateVerdict::Passed) => {}
        Ok(GateVerdict::Refused { reason }) => {
            report.outcome = Some(Outcome::Skipped);
            report.warn("berth: deploy refused", reason);
            report.elapsed = started.elapsed();
            return report;
        }
        Ok(GateVerdict::Skipped { notice }) => {
            report.outcome = Some(Outcome::Skipped);
            report.notices.push(Annotation::new(
                Level::Notice,
                "berth: deploy skipped",
                notice,
            ));
            report.elapsed = started.elapsed();
            return report;
        }
        Err(e) => {
            report.fail(Phase::CiGate, gate_title(&e), e.to_string());
            report.elapsed = started.elapsed();
            return report;
        }
    }
    let sha = report.sha.clone().unwrap_or_default();
    if config.mode == Mode::Deploy {
        // The files berth builds and uploads must be the commit it gated: the checkout
        // holding the compose file, and each holding a Dockerfile or build context.
        let mut read_from = vec![config.target.compose_file.clone()];
        for img in &config.build.images {
            read_from.push(ctx.workspace.join(&img.dockerfile));
            read_from.push(ctx.workspace.join(&img.context));
        }
        if let Err(e) = crate::trust::check_checkouts(&ctx.workspace, &read_from, &sha) {
            report.fail(
                Phase::CiGate,
                "berth: the workspace is not the gated commit",
                e.to_string(),
            );
            report.elapsed = started.elapsed();
            return report;
        }
    }

    let tracker = GithubDeployment::create(&config, &ctx, &sha, &mut report).await;
    if let Some(t) = &tracker {
        t.post(
            "in_progress",
            &format!(
                "berth is deploying {} to {}",
                crate::short_sha(&sha),
                config.report.environment
            ),
            &mut report,
        )
        .await;
    }
    deliver(&config, &ctx, &sha, runner, &mut report).await;
    report.elapsed = started.elapsed();
    if let Some(t) = &tracker {
        let (state, description) = deployment_state(&report);
        t.post(state, &description, &mut report).await;
    }
    report
}

/// From a gated commit to a verdict: every host is reached (host key, auth) and checked
/// before anything is pushed, since a host that cannot take the release must not leave
/// new tags in the registry; then build and push (immutable tags), lock, deploy, health,
/// and only after a healthy deploy the moving tags.
async fn deliver(
    config: &Config,
    ctx: &GithubContext,
    sha: &str,
    runner: &Runner,
    report: &mut Report,
) {
    let mut deploy = Deploy::new(config, ctx, runner, sha);
    let Some(hosts) = deploy.connect(report).await else {
        return;
    };
    if config.mode == Mode::Deploy {
        if !deploy.preflight(&hosts, report).await {
            return;
        }
        let building = Instant::now();
        match images::build_and_push(&config.build, config.dry_run, ctx, sha, runner, report).await
        {
            Ok(built) => {
                report.images = built.clone();
                deploy.set_built(built);
            }
            Err(failure) => {
                report.failure = Some(failure);
                return;
            }
        }
        // The sessions sat idle through the build: libssh2 sends keepalives only while
        // berth is inside one of its calls, and an sshd (ClientAliveInterval) or a NAT may
        // have dropped them. Connect afresh (host keys checked again) after a long build.
        if building.elapsed() > IDLE_RECONNECT && !deploy.reconnect(&hosts, report).await {
            return;
        }
    }
    deploy.run(&hosts, report).await;
}

/// The GitHub Deployment of this run: reporting only, so its failures warn and never stop
/// the deploy.
struct GithubDeployment {
    api: GithubApi,
    id: u64,
    environment: String,
    environment_url: Option<String>,
    log_url: Option<String>,
}

impl GithubDeployment {
    async fn create(
        cfg: &Config,
        ctx: &GithubContext,
        sha: &str,
        report: &mut Report,
    ) -> Option<GithubDeployment> {
        if !cfg.report.create_deployment || cfg.dry_run || cfg.mode != Mode::Deploy {
            return None;
        }
        let api = match GithubApi::new(&ctx.api_url, &cfg.gate.github_token, &ctx.repository) {
            Ok(api) => api,
            Err(e) => {
                report.warn("berth: GitHub Deployment not created", e.to_string());
                return None;
            }
        };
        let req = crate::github::DeploymentRequest {
            git_ref: sha.into(),
            environment: cfg.report.environment.clone(),
            description: clip(
                &format!(
                    "berth: {} to {}",
                    crate::short_sha(sha),
                    cfg.report.environment
                ),
                140,
            ),
            auto_merge: false,
            required_contexts: vec![],
            transient_environment: false,
            production_environment: false,
        };
        match api.create_deployment(&req).await {
            Ok(crate::github::DeploymentCreated::Created(id)) => {
                report.deployment_id = Some(id);
                Some(GithubDeployment {
                    api,
                    id,
                    environment: cfg.report.environment.clone(),
                    environment_url: cfg.report.environment_url.as_ref().map(|u| u.to_string()),
                    log_url: ctx.run_url(),
                })
            }
            Ok(crate::github::DeploymentCreated::NotCreated(why)) => {
                report.warn(
                    "berth: GitHub Deployment not created",
                    format!("GitHub answered 202 and created no deployment: {why}"),
                );
                None
            }
            Err(crate::github::GithubError::Forbidden { message, .. }) => {
                report.warn(
                    "berth: Deployments not permitted",
                    format!("GitHub refused to create a Deployment ({message}). Add `permissions: deployments: write` to the job; the deploy goes on without one."),
                );
                None
            }
            Err(e) => {
                report.warn(
                    "berth: GitHub Deployment not created",
                    format!("{e} The deploy goes on without one."),
                );
                None
            }
        }
    }

    async fn post(&self, state: &str, description: &str, report: &mut Report) {
        let status = crate::github::DeploymentStatus {
            state: state.into(),
            description: clip(description, 140),
            environment_url: self
                .environment_url
                .clone()
                .filter(|_| state == "success" || state == "in_progress"),
            log_url: self.log_url.clone(),
            environment: self.environment.clone(),
        };
        if let Err(e) = self.api.create_deployment_status(self.id, &status).await {
            report.warn(
                "berth: Deployment status not posted",
                format!("Posting `{state}` to deployment {} failed: {e}", self.id),
            );
        }
    }
}

/// `success`, `failure` for a release that failed (rolled back or not), `error` when
/// berth or the infrastructure failed before the release could be judged.
fn deployment_state(report: &Report) -> (&'static str, String) {
    let headline = report.headline().replace('`', "");
    match report.outcome() {
        Outcome::Deployed => ("success", headline),
        Outcome::Skipped => ("inactive", headline),
        Outcome::RolledBack => ("failure", headline),
        Outcome::Failed => match report.failure.as_ref().map(|f| f.phase) {
            Some(Phase::Connect | Phase::Lock | Phase::Upload | Phase::Inputs | Phase::CiGate)
            | None => ("error", headline),
            Some(_) => ("failure", headline),
        },
    }
}

fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_string(),
        None => s.to_string(),
    }
}

fn gate_title(e: &GateError) -> &'static str {
    match e {
        GateError::Failed { .. } => "berth: CI did not succeed for this commit",
        GateError::TimedOut { .. } => "berth: CI gate timed out",
        GateError::NoRun { .. } => "berth: no CI run found for this commit",
        GateError::UnknownWorkflow { .. } => "berth: unknown CI workflow",
        GateError::Api(_) => "berth: GitHub API error in the CI gate",
        GateError::ShaNotTested { .. } => "berth: the commit to deploy is not the one CI tested",
        GateError::Event { .. } | GateError::NoHeadSha | GateError::NoSha => {
            "berth: cannot tell which commit to deploy"
        }
    }
}

/// Chooses the commit and proves CI succeeded for it. Read-only, so it runs in dry-run too.
pub async fn ci_gate(
    cfg: &Config,
    ctx: &GithubContext,
    runner: &Runner,
    report: &mut Report,
) -> Result<GateVerdict, GateError> {
    let started = Instant::now();
    let event = ci_gate::read_event(ctx.event_path.as_deref())?;
    let commit = ci_gate::choose_commit(cfg.gate.sha.as_deref(), ctx, event.as_ref())?;
    runner.line(&format!("Commit {} ({})", commit.sha, commit.source));
    report.sha = Some(commit.sha.clone());
    report.sha_source = Some(commit.source.clone());

    // Whose code this is comes before whether its CI passed: a fork's green CI proves
    // nothing berth may act on. A local run (no event at all) has no origin to check.
    // On a runner there is always an event; without one, fail closed there.
    if !ctx.event_name.is_empty() || ctx.on_runner {
        let origin = crate::trust::Origin::of(ctx, event.as_ref());
        if let Err(refusal) = origin.check(&cfg.gate.events, &cfg.gate.branches) {
            let reason = format!("Not deploying {}: {refusal}", commit.sha);
            report.record(
                Phase::CiGate,
                started.elapsed(),
                PhaseResult::Skipped(format!("refused: {refusal}")),
            );
            return Ok(GateVerdict::Refused { reason });
        }
    }

    let (verdict, result) = if cfg.mode == Mode::Rollback {
        (
            Ok(GateVerdict::Passed),
            PhaseResult::Skipped("rollback restores a release that already passed".into()),
        )
    } else if cfg.gate.allow_untested {
        report.warn(
            "berth: deploying untested code",
            format!(
                "`allow-untested: true`: {} is deployed without checking CI.",
                commit.sha
            ),
        );
        (
            Ok(GateVerdict::Passed),
            PhaseResult::Skipped("allow-untested".into()),
        )
    } else if ctx.event_name == "workflow_run" && cfg.gate.ci_workflows.is_empty() {
        let event = event.as_ref().ok_or(GateError::NoHeadSha)?;
        // The triggering run is evidence only for the commit it tested.
        let tested = event["workflow_run"]["head_sha"]
            .as_str()
            .unwrap_or_default();
        if !tested.eq_ignore_ascii_case(&commit.sha) {
            let e = GateError::ShaNotTested {
                sha: commit.sha.clone(),
                tested: tested.into(),
            };
            report.record(
                Phase::CiGate,
                started.elapsed(),
                PhaseResult::Failed(e.to_string()),
            );
            return Err(e);
        }
        match ci_gate::verdict_from_workflow_run(event, &commit.sha, report) {
            GateVerdict::Passed => (
                Ok(GateVerdict::Passed),
                PhaseResult::Ok("the triggering workflow_run succeeded".into()),
            ),
            skipped => (
                Ok(skipped),
                PhaseResult::Skipped("the triggering workflow_run did not succeed".into()),
            ),
        }
    } else {
        let api = GithubApi::new(&ctx.api_url, &cfg.gate.github_token, &ctx.repository)?;
        match ci_gate::wait_for_ci(&api, &cfg.gate, ctx, &commit.sha, runner, report).await {
            Ok(()) => (
                Ok(GateVerdict::Passed),
                PhaseResult::Ok(format!("{} succeeded", cfg.gate.ci_workflows.join(", "))),
            ),
            Err(e) => {
                report.record(
                    Phase::CiGate,
                    started.elapsed(),
                    PhaseResult::Failed(e.to_string()),
                );
                return Err(e);
            }
        }
    };
    report.ci.verdict = Some(match &result {
        PhaseResult::Ok(t) | PhaseResult::Skipped(t) | PhaseResult::Failed(t) => t.clone(),
    });
    if cfg.dry_run {
        runner.line(&format!(
            "Dry run: CI gate verdict for {}: {}",
            commit.sha,
            report.ci.verdict.as_deref().unwrap_or("")
        ));
    }
    report.record(Phase::CiGate, started.elapsed(), result);
    verdict
}

type Host = Arc<Mutex<HostRelease>>;

/// Why a release was not proven healthy: the phase, the annotation title, the message and
/// the health record, when there is one.
type GateFailure = (Phase, &'static str, String, Option<HealthRecord>);

/// Runs `f` on each item on a blocking thread (ssh2 blocks), at most
/// [`MAX_PARALLEL_HOSTS`] at once, and returns the results in item order.
async fn blocking_all<I, T, F>(items: Vec<I>, f: F) -> Vec<T>
where
    I: Send + 'static,
    T: Send + 'static,
    F: Fn(I) -> T + Send + Sync + 'static,
{
    let f = Arc::new(f);
    futures_util::stream::iter(items.into_iter().map(|item| {
        let f = f.clone();
        tokio::task::spawn_blocking(move || f(item))
    }))
    .buffered(MAX_PARALLEL_HOSTS)
    .map(|r| r.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())))
    .collect()
    .await
}

/// Runs `f` on every host, in parallel (bounded), results in host order.
async fn on_hosts<T, F>(hosts: &[Host], f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(&mut HostRelease) -> T + Send + Sync + 'static,
{
    blocking_all(hosts.to_vec(), move |h: Host| {
        f(&mut h.lock().unwrap_or_else(|e| e.into_inner()))
    })
    .await
}

/// One run's remote work across all hosts.
struct Deploy<'a> {
    cfg: &'a Config,
    ctx: &'a GithubContext,
    runner: &'a Runner,
    spec: ReleaseSpec,
    /// The login for the host's pull, used only when berth pushed images there.
    registry: Option<RegistryLogin>,
    accesses: Vec<Access>,
    layout: Layout,
}

impl<'a> Deploy<'a> {
    fn new(cfg: &'a Config, ctx: &'a GithubContext, runner: &'a Runner, sha: &str) -> Deploy<'a> {
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
            id: crate::remote::release_id(now, sha),
            sha: sha.into(),
            compose,
            env_file: cfg
                .target
                .env_file
                .clone()
                .unwrap_or_else(|| Secret::new("")),
            built: BTreeMap::new(),
            pre_deploy: cfg.target.pre_deploy.clone(),
            // Only log in when berth pushed images there; otherwise the host pulls as it can.
            registry: None,
            holder: LockHolder {
                token: release::random_token(),
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
        };
        Deploy {
            cfg,
            ctx,
            runner,
            spec,
            registry,
            accesses,
            layout: Layout {
                deploy_dir: cfg.target.deploy_dir.clone(),
                project: cfg.target.project_name.clone(),
            },
        }
    }

    /// The images this release deploys, once pushed; the host logs in to pull only then.
    fn set_built(&mut self, built: BTreeMap<String, String>) {
        self.spec.registry = if built.is_empty() {
            None
        } else {
            self.registry.clone()
        };
        self.spec.built = built;
    }

    async fn run(&self, hosts: &[Host], report: &mut Report) {
        if !self.lock(hosts, report).await {
            return;
        }
        if self.cfg.dry_run {
            self.plan(hosts, report).await;
        } else if self.cfg.mode == Mode::Rollback {
            self.manual_rollback(hosts, report).await;
        } else {
            self.deploy(hosts, report).await;
            // Still under the lock, so a later deploy's moving tags cannot land first.
            if report.outcome == Some(Outcome::Deployed) {
                images::push_moving_tags(
                    &self.cfg.build,
                    self.ctx,
                    &self.spec.sha,
                    self.runner,
                    report,
                )
                .await;
            }
        }
        self.unlock(hosts, report).await;
        for h in hosts {
            let h = h.lock().unwrap_or_else(|e| e.into_inner());
            for slow in &h.slow_stops {
                report.warn("berth: slow container stop", slow.clone());
            }
            report.hosts.push(HostReport {
                host: h.name().to_string(),
                fingerprint: h.conn.host_key.fingerprint.clone(),
                release: h.release.clone(),
                previous: h.previous.clone(),
                result: report.outcome().as_str().to_string(),
            });
        }
    }

    /// Connects to every host, checking host keys before authenticating.
    async fn connect(&self, report: &mut Report) -> Option<Vec<Host>> {
        let started = Instant::now();
        let (layout, runner) = (self.layout.clone(), self.runner.clone());
        let connected = blocking_all(self.accesses.clone(), move |a| {
            HostRelease::connect(a, layout.clone(), runner.clone())
        })
        .await;
        let mut hosts = Vec::new();
        let mut first_error = None;
        for c in connected {
            match c {
                Ok(h) => hosts.push(Arc::new(Mutex::new(h))),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            report.fail_at(
                Phase::Connect,
                started.elapsed(),
                connect_title(&e),
                e.to_string(),
            );
            return None;
        }
        report.record(
            Phase::Connect,
            started.elapsed(),
            PhaseResult::Ok(format!("{} host(s), host keys verified", hosts.len())),
        );
        Some(hosts)
    }

    /// Connects every host afresh; false (and the failure reported) when one fails.
    async fn reconnect(&self, hosts: &[Host], report: &mut Report) -> bool {
        let started = Instant::now();
        let results = on_hosts(hosts, |h| h.reconnect()).await;
        match results.into_iter().find_map(Result::err) {
            Some(e) => {
                report.fail_at(
                    Phase::Connect,
                    started.elapsed(),
                    connect_title(&e),
                    e.to_string(),
                );
                false
            }
            None => true,
        }
    }

    /// Preflight on every host (see [`HostRelease::preflight`]); false when one fails.
    async fn preflight(&self, hosts: &[Host], report: &mut Report) -> bool {
        let started = Instant::now();
        let checked = on_hosts(hosts, |h| h.preflight()).await;
        let mut ok = true;
        for r in checked {
            match r {
                Ok(warnings) => {
                    for w in warnings {
                        report.warn("berth: little disk space on a host", w);
                    }
                }
                Err(e) if ok => {
                    ok = false;
                    report.fail_at(
                        Phase::Connect,
                        started.elapsed(),
                        "berth: host failed preflight",
                        e.to_string(),
                    );
                }
                Err(e) => report.warn("berth: host failed preflight", e.to_string()),
            }
        }
        ok
    }

    /// Takes each host's lock (dry run: only says who holds it). On any failure, releases
    /// what was taken and reports it.
    async fn lock(&self, hosts: &[Host], report: &mut Report) -> bool {
        let started = Instant::now();
        let spec = self.spec.clone();
        let dry_run = self.cfg.dry_run;
        let locked = on_hosts(hosts, move |h| {
            if dry_run {
                h.peek_lock().map(|_| None)
            } else {
                h.lock(&spec)
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
            report.fail_at(
                Phase::Lock,
                started.elapsed(),
                lock_title(&e),
                e.to_string(),
            );
            self.unlock(hosts, report).await;
            return false;
        }
        report.record(
            Phase::Lock,
            started.elapsed(),
            PhaseResult::Ok(
                if dry_run {
                    "free (not taken: dry run)"
                } else {
                    "taken"
                }
                .into(),
            ),
        );
        true
    }

    async fn unlock(&self, hosts: &[Host], report: &mut Report) {
        for r in on_hosts(hosts, |h| {
            h.unlock().map_err(|e| format!("{}: {e}", h.name()))
        })
        .await
        {
            if let Err(e) = r {
                report.warn(
                    "berth: lock not released",
                    format!(
                        "{e}. Remove `{}` on the host if no deploy is running.",
                        self.layout.lock_dir()
                    ),
                );
            }
        }
    }

    /// Dry run: every remote command that would run, with secrets redacted. Changes nothing.
    async fn plan(&self, hosts: &[Host], report: &mut Report) {
        let spec = self.spec.clone();
        let plans = on_hosts(hosts, move |h| h.plan(&spec)).await;
        for (host, steps) in plans {
            for step in steps {
                let line = format!("[{host}] {step}");
                self.runner.line(&format!("would run: {line}"));
                report.plan.push(line);
            }
        }
        report.outcome = Some(Outcome::Skipped);
        report.notices.push(Annotation::new(
            Level::Notice,
            "berth: dry run",
            "Dry run: nothing was changed. The plan is in the job summary.",
        ));
    }

    async fn deploy(&self, hosts: &[Host], report: &mut Report) {
        let snapshots = on_hosts(hosts, |h| h.snapshot()).await;
        if let Some(e) = snapshots.into_iter().find_map(Result::err) {
            report.fail(
                Phase::Upload,
                "berth: cannot read the host's current release",
                e.to_string(),
            );
            return;
        }
        report.previous_release = hosts[0]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .previous
            .clone();
        report.release = Some(self.spec.id.clone());

        let spec = self.spec.clone();
        let results = on_hosts(hosts, move |h| h.deploy(&spec).map_err(|e| (h.phase, e))).await;
        let failed = results.into_iter().find_map(Result::err);
        self.record_host_timings(
            hosts,
            report,
            failed.as_ref().map(|(p, e)| (*p, e.to_string())),
        );
        if let Some((phase, e)) = failed {
            let title = match phase {
                Phase::Upload => "berth: upload failed",
                Phase::Pull => "berth: pull failed",
                Phase::PreDeploy => "berth: pre-deploy command failed",
                Phase::Up => "berth: docker compose up failed",
                Phase::Verify => "berth: running images do not match the deploy",
                _ => "berth: remote release failed",
            };
            self.fail_and_restore(hosts, report, phase, title, e.to_string())
                .await;
            return;
        }

        // The health deadline counts from the moment the last host's `up` returned: counted
        // from the first, a host whose `up` was slower got less than `health-timeout`, or
        // (seen on a loaded runner) no probe at all before the deadline.
        let health_started = hosts
            .iter()
            .filter_map(|h| h.lock().unwrap_or_else(|e| e.into_inner()).up_done)
            .max()
            .unwrap_or_else(Instant::now);
        match self.verify_and_gate(hosts, report, health_started).await {
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
                let spec = self.spec.clone();
                let finals = on_hosts(hosts, move |h| h.prune(&spec)).await;
                for r in finals {
                    if let Err(e) = r {
                        report.warn(
                            "berth: cleanup failed",
                            format!("The release is deployed and healthy, but pruning failed: {e}"),
                        );
                    }
                }
                report.outcome = Some(Outcome::Deployed);
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
            }
            Err((phase, title, message, record)) => {
                if phase == Phase::Health {
                    report.record(
                        Phase::Health,
                        health_started.elapsed(),
                        PhaseResult::Failed(message.clone()),
                    );
                }
                report.health = record;
                self.fail_and_restore(hosts, report, phase, title, message)
                    .await;
            }
        }
    }

    /// Verifies the running digests while the health probe already runs: the verdict
    /// needs both, and neither waits for the other.
    async fn verify_and_gate(
        &self,
        hosts: &[Host],
        report: &mut Report,
        started: Instant,
    ) -> Result<HealthRecord, GateFailure> {
        let verify_started = Instant::now();
        let verify = async {
            let results = on_hosts(hosts, |h| h.verify()).await;
            (
                results.into_iter().find_map(Result::err),
                verify_started.elapsed(),
            )
        };
        let ((verify_error, verify_time), health) =
            tokio::join!(verify, self.health_gate(hosts, report, started));
        if let Some(e) = verify_error {
            report.record(
                Phase::Verify,
                verify_time,
                PhaseResult::Failed(e.to_string()),
            );
            return Err((
                Phase::Verify,
                "berth: running images do not match the deploy",
                e.to_string(),
                None,
            ));
        }
        report.record(
            Phase::Verify,
            verify_time,
            PhaseResult::Ok("running containers match the pinned digests".into()),
        );
        health
    }

    /// Probes `health-url` until healthy, while watching every host for crash loops.
    async fn health_gate(
        &self,
        hosts: &[Host],
        report: &mut Report,
        started: Instant,
    ) -> Result<HealthRecord, GateFailure> {
        let specs: Vec<crate::inputs::HostSpec> = hosts
            .iter()
            .map(|h| {
                h.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .access
                    .spec
                    .clone()
            })
            .collect();
        let urls = self.cfg.health.urls(&specs);
        if urls.is_empty() {
            return Ok(HealthRecord {
                healthy_after: Some(Duration::ZERO),
                ..Default::default()
            });
        }
        let mut probes = Vec::new();
        for url in &urls {
            probes.push(
                HealthProbe::from_config(&self.cfg.health, url).map_err(|e| {
                    (
                        Phase::Health,
                        "berth: health check failed",
                        e.to_string(),
                        None,
                    )
                })?,
            );
        }
        let timeout = probes[0].timeout;
        let names: Vec<String> = urls.iter().map(crate::inputs::redact_url).collect();
        let _group = self.runner.group(&format!("Health: {}", names.join(", ")));
        let several = probes.len() > 1;
        let wait = futures_util::future::join_all(probes.iter().map(|p| {
            let runner = self.runner.clone();
            let prefix = if several {
                format!("{} ", p.shown_url())
            } else {
                String::new()
            };
            p.wait(started, move |a| {
                runner.line(&format!(
                    "{prefix}{:>6.1}s {}",
                    a.offset.as_secs_f64(),
                    a.outcome
                ))
            })
        }));
        // Every URL must pass; the slowest decides when the release counts as healthy.
        let wait = async move {
            let records = wait.await;
            match records.iter().find(|r| r.healthy_after.is_none()) {
                Some(unhealthy) => Err(unhealthy.clone()),
                None => Ok(records
                    .into_iter()
                    .max_by_key(|r| r.healthy_after)
                    .unwrap_or_default()),
            }
        };
        tokio::pin!(wait);
        let baseline: Vec<BTreeMap<String, i64>> = hosts
            .iter()
            .map(|h| {
                h.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .restarts_before
                    .clone()
            })
            .collect();
        loop {
            tokio::select! {
                result = &mut wait => {
                    return result.map_err(|record| {
                        let msg = format!("{} was not healthy within {:?} (`health-timeout`); {}", record.url, timeout, record.failure_summary());
                        (Phase::Health, "berth: health check failed", msg, Some(record))
                    });
                }
                _ = tokio::time::sleep(CRASH_WATCH_EVERY) => {
                    let states = on_hosts(hosts, |h| h.containers().unwrap_or_default()).await;
                    for (i, s) in states.iter().enumerate() {
                        let failing: Vec<release::ContainerState> =
                            release::failing_containers(s, &baseline[i]).into_iter().cloned().collect();
                        if !failing.is_empty() {
                            let failing = on_hosts(&hosts[i..=i], move |h| h.settle_exit_codes(failing.clone()))
                                .await
                                .remove(0);
                            let msg = format!(
                                "{} after {:.1}s, before the health deadline: {}",
                                hosts[i].lock().unwrap_or_else(|e| e.into_inner()).name(),
                                started.elapsed().as_secs_f64(),
                                failing.iter().map(release::describe_failing).collect::<Vec<_>>().join("; ")
                            );
                            report.warn("berth: crash loop", msg.clone());
                            return Err((Phase::Health, "berth: service crash-looping", msg, None));
                        }
                    }
                }
            }
        }
    }

    /// Writes this run's release record with `outcome` on `hosts`. A record is what a
    /// later rollback trusts, so one that cannot be written is said, never swallowed.
    async fn mark(&self, hosts: &[Host], outcome: &'static str, report: &mut Report) {
        let spec = self.spec.clone();
        let written = on_hosts(hosts, move |h| {
            h.write_record(&spec, outcome)
                .map_err(|e| format!("{}: {e}", h.name()))
        })
        .await;
        for e in written.into_iter().filter_map(Result::err) {
            report.warn(
                "berth: release record not written",
                format!("Could not record this release as `{outcome}` on {e}. A later rollback reads these records to choose a release; check the host's deploy dir (disk space, permissions)."),
            );
        }
    }

    /// The one rollback path: collect diagnostics, then restore the previous release on
    /// every host whose containers may have changed, and prove it healthy.
    async fn fail_and_restore(
        &self,
        hosts: &[Host],
        report: &mut Report,
        phase: Phase,
        title: &str,
        message: String,
    ) {
        report.fail(phase, title, message.clone());
        let diagnostics = on_hosts(hosts, |h| h.diagnostics(LOG_LINES)).await;
        report.excerpt = telling_lines(&diagnostics, 5);
        if !report.excerpt.is_empty() {
            if let Some(f) = report.failure.as_mut() {
                f.message.push_str("\nLog excerpt:\n");
                f.message.push_str(&report.excerpt.join("\n"));
            }
        }
        report.diagnostics = diagnostics;

        let touched: Vec<Host> = hosts
            .iter()
            .filter(|h| h.lock().unwrap_or_else(|e| e.into_inner()).touched)
            .cloned()
            .collect();
        // The failed release says so at once, whatever the restore does next.
        self.mark(hosts, "failed", report).await;
        if touched.is_empty() {
            report.record(
                Phase::Rollback,
                Duration::ZERO,
                PhaseResult::Skipped(
                    "nothing was switched; the previous release still runs".into(),
                ),
            );
            return;
        }
        if self.cfg.rollback == RollbackPolicy::Off {
            report.record(
                Phase::Rollback,
                Duration::ZERO,
                PhaseResult::Skipped("`rollback: off`: the host is left as it is".into()),
            );
            return;
        }
        // Where each host goes back to: its newest release proven healthy, which may be
        // older than `current` when current was a release that never proved itself.
        let missing: Vec<String> = touched
            .iter()
            .filter_map(|h| {
                let h = h.lock().unwrap_or_else(|e| e.into_inner());
                h.restore_target().is_none().then(|| h.name().to_string())
            })
            .collect();
        if !missing.is_empty() {
            let first_deploy = touched.iter().all(|h| {
                let h = h.lock().unwrap_or_else(|e| e.into_inner());
                h.restore_target().is_some() || h.previous.is_none()
            });
            let why = if first_deploy {
                format!("first deploy on {}", missing.join(", "))
            } else {
                format!(
                    "no release was ever proven healthy on {} (`mode: rollback` with `release:` can still restore a named one)",
                    missing.join(", ")
                )
            };
            report.record(
                Phase::Rollback,
                Duration::ZERO,
                PhaseResult::Skipped(format!(
                    "{why}: nothing to restore; the failed release is left in place for diagnosis"
                )),
            );
            return;
        }
        let started = Instant::now();
        let restored = on_hosts(&touched, |h| {
            let Some(target) = h.restore_target() else {
                return Err(ReleaseError::NothingToRestore);
            };
            h.activate(&target).or_else(|e| {
                // The connection may have died with the deploy; one fresh try.
                h.reconnect()?;
                h.activate(&target).map_err(|_| e)
            })
        })
        .await;
        let targets: Vec<Option<String>> = touched
            .iter()
            .map(|h| h.lock().unwrap_or_else(|e| e.into_inner()).restore_target())
            .collect();
        if targets.windows(2).any(|w| w[0] != w[1]) {
            report.warn(
                "berth: hosts restored to different releases",
                format!("The newest release proven healthy differs between hosts ({}), so each host went back to its own. A record write failed on some host earlier; check the hosts' release records.", targets.iter().map(|t| t.as_deref().unwrap_or("none")).collect::<Vec<_>>().join(", ")),
            );
        }
        let previous = targets.into_iter().next().flatten();
        let mut rb = RollbackReport {
            restored: previous.clone(),
            ..Default::default()
        };
        if let Some(e) = restored.into_iter().find_map(Result::err) {
            rb.detail = format!("restoring the previous release failed: {e}");
        } else {
            match self.health_gate(&touched, report, Instant::now()).await {
                Ok(record) => {
                    rb.healthy = true;
                    rb.detail = format!(
                        "the previous release {} is serving and healthy",
                        previous.as_deref().unwrap_or("")
                    );
                    rb.health = Some(record);
                }
                Err((_, _, msg, record)) => {
                    rb.detail = format!("the restored release is not healthy either: {msg}");
                    rb.health = record;
                }
            }
        }
        rb.duration = started.elapsed();
        if rb.healthy {
            self.mark(&touched, "rolled-back", report).await;
            report.outcome = Some(Outcome::RolledBack);
            report.record(
                Phase::Rollback,
                rb.duration,
                PhaseResult::Ok(rb.detail.clone()),
            );
            if let Some(f) = report.failure.as_mut() {
                f.message
                    .push_str(&format!("\nRolled back: {}.", rb.detail));
            }
        } else {
            report.record(
                Phase::Rollback,
                rb.duration,
                PhaseResult::Failed(rb.detail.clone()),
            );
            let cmds: Vec<String> = touched
                .iter()
                .map(|h| {
                    let h = h.lock().unwrap_or_else(|e| e.into_inner());
                    let prev = h.restore_target().unwrap_or_default();
                    let up = crate::ssh::quote_argv(
                        &h.layout.compose(&prev, &["up", "-d", "--remove-orphans"]).0,
                    );
                    format!(
                        "ssh -p {} {}@{} {}",
                        h.access.spec.port,
                        h.access.spec.user,
                        h.access.spec.host,
                        crate::ssh::quote_argv(&[up])
                    )
                })
                .collect();
            report.recovery = Some(cmds.join("\n"));
            if let Some(f) = report.failure.as_mut() {
                f.title = "berth: deploy failed AND rollback failed".into();
                f.message = format!(
                    "DEPLOY FAILED AND ROLLBACK FAILED. Deploy: {message}\nRollback: {}\nRecover by hand:\n{}",
                    rb.detail,
                    cmds.join("\n")
                );
            }
        }
        report.rollback = Some(rb);
    }

    /// `mode: rollback`: re-activate the newest release proven healthy other than current
    /// (or the one `release` names, with a warning when it never proved healthy), then
    /// prove it healthy.
    async fn manual_rollback(&self, hosts: &[Host], report: &mut Report) {
        let wanted = self.cfg.release.clone();
        let started = Instant::now();
        let runner = self.runner.clone();
        let results = on_hosts(hosts, move |h| {
            h.snapshot()?;
            // What there is to choose from, as each record says.
            for e in &h.releases {
                runner.line(&format!(
                    "{}: release {} {}{}",
                    h.name(),
                    e.id,
                    e.outcome().as_str(),
                    if Some(&e.id) == h.previous.as_ref() { " (current)" } else { "" }
                ));
            }
            let target = match &wanted {
                Some(id) => id.clone(),
                None => h.proven_other_than_current()?,
            };
            let unproven = match h.outcome_of(&target) {
                Some(crate::remote::Outcome::Deployed) => None,
                Some(o) => Some(format!("release {target} on {} never proved healthy (its record says `{}`); restoring it because it was named", h.name(), o.as_str())),
                None => None,
            };
            h.activate(&target)?;
            h.release = Some(target.clone());
            Ok::<(String, Option<String>), ReleaseError>((target, unproven))
        })
        .await;
        let results: Vec<Result<String, ReleaseError>> = results
            .into_iter()
            .map(|r| {
                r.map(|(target, unproven)| {
                    if let Some(w) = unproven {
                        report.warn("berth: restoring a release that never proved healthy", w);
                    }
                    target
                })
            })
            .collect();
        let targets: Vec<String> = match results.into_iter().collect::<Result<Vec<_>, _>>() {
            Ok(t) => t,
            Err(e) => {
                report.fail_at(
                    Phase::Rollback,
                    started.elapsed(),
                    "berth: rollback failed",
                    e.to_string(),
                );
                return;
            }
        };
        report.release = targets.first().cloned();
        report.previous_release = hosts[0]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .previous
            .clone();
        report.record(
            Phase::Rollback,
            started.elapsed(),
            PhaseResult::Ok(format!("re-activated {}", targets.join(", "))),
        );
        let health_started = Instant::now();
        match self.verify_and_gate(hosts, report, health_started).await {
            Ok(record) => {
                report.health_seconds = record.healthy_after.map(|d| d.as_secs_f64());
                report.record(
                    Phase::Health,
                    health_started.elapsed(),
                    PhaseResult::Ok("healthy".into()),
                );
                report.health = Some(record);
                report.outcome = Some(Outcome::RolledBack);
                // Each host records what it restored (hosts may have chosen differently).
                let recorded = on_hosts(hosts, |h| {
                    let restored = h.release.clone().unwrap_or_default();
                    h.record_manual_rollback(&restored)
                        .map_err(|e| format!("{}: {e}", h.name()))
                })
                .await;
                for e in recorded.into_iter().filter_map(Result::err) {
                    report.warn("berth: release record not written", e);
                }
                report.notices.push(Annotation::new(
                    Level::Notice,
                    "berth: rolled back",
                    format!(
                        "Release {} is serving again and healthy.",
                        targets.first().cloned().unwrap_or_default()
                    ),
                ));
            }
            Err((phase, title, message, record)) => {
                if phase == Phase::Health {
                    report.record(
                        Phase::Health,
                        health_started.elapsed(),
                        PhaseResult::Failed(message.clone()),
                    );
                }
                report.health = record;
                report.fail(phase, title, message);
                report.diagnostics = on_hosts(hosts, |h| h.diagnostics(LOG_LINES)).await;
            }
        }
    }

    /// Records each phase's time (the slowest host's) and marks the failed phase.
    fn record_host_timings(
        &self,
        hosts: &[Host],
        report: &mut Report,
        failed: Option<(Phase, String)>,
    ) {
        let mut per_phase: Vec<(Phase, Duration)> = Vec::new();
        for h in hosts {
            let h = h.lock().unwrap_or_else(|e| e.into_inner());
            for (phase, d) in &h.timings {
                match per_phase.iter_mut().find(|(p, _)| p == phase) {
                    Some((_, max)) => *max = (*max).max(*d),
                    None => per_phase.push((*phase, *d)),
                }
            }
        }
        for (phase, d) in per_phase.into_iter().filter(|(p, _)| *p != Phase::Lock) {
            let result = match &failed {
                Some((p, why)) if *p == phase => PhaseResult::Failed(why.clone()),
                _ => PhaseResult::Ok(
                    match phase {
                        Phase::Upload => {
                            "compose file, digest pins, env file (0600), release record"
                        }
                        Phase::Pull => "images pulled by digest",
                        Phase::PreDeploy => "pre-deploy command succeeded",
                        Phase::Up => "containers up; `current` switched",
                        Phase::Verify => "running containers match the pinned digests",
                        _ => "",
                    }
                    .into(),
                ),
            };
            report.record(phase, d, result);
        }
    }
}

fn lock_title(e: &ReleaseError) -> &'static str {
    match e {
        ReleaseError::LockHeld { .. } => "berth: deploy lock is held",
        _ => "berth: cannot take the deploy lock",
    }
}

fn connect_title(e: &ReleaseError) -> &'static str {
    match e {
        ReleaseError::Ssh(crate::ssh::SshError::HostKeyMismatch { .. }) => {
            "berth: host key mismatch"
        }
        ReleaseError::Ssh(crate::ssh::SshError::HostKeyNotPinned { .. }) => {
            "berth: host key not pinned"
        }
        ReleaseError::Ssh(crate::ssh::SshError::Auth { .. }) => "berth: SSH authentication failed",
        _ => "berth: cannot connect to the host",
    }
}

/// The most telling lines of the failing containers' logs: errors first, else the tail.
pub fn telling_lines(diagnostics: &[crate::report::Diagnostics], n: usize) -> Vec<String> {
    let keywords = [
        "fatal",
        "error",
        "panic",
        "exception",
        "refused",
        "denied",
        "failed",
        "cannot",
        "killed",
    ];
    let mut telling = Vec::new();
    let mut tail = Vec::new();
    for d in diagnostics {
        for (container, log) in &d.logs {
            for line in log.lines().filter(|l| !l.trim().is_empty()) {
                // One huge line must not crowd the others out of the annotation.
                let tagged = format!(
                    "{container}: {}",
                    crate::markdown::cut_long_lines(line.trim(), 300)
                );
                let lower = line.to_ascii_lowercase();
                if keywords.iter().any(|k| lower.contains(k)) {
                    telling.push(tagged.clone());
                }
                tail.push(tagged);
            }
        }
    }
    let pick = if telling.is_empty() { tail } else { telling };
    pick[pick.len().saturating_sub(n)..].to_vec()
}
