//! One run, top-down: inputs -> CI gate -> the workspace is the gated commit -> GitHub
//! Deployment -> the engine (connect, build and push, lock, release, verdict, rollback)
//! -> the run's result concluded into the report, once, at the end.

use std::time::Instant;

use crate::engine;
use crate::failure::Fault;
use crate::inputs::{self, Config, Env, GithubContext, InputErrors, Mode};
use crate::report::{Outcome, Phase, PhaseResult, Report};
use crate::workflow::{Annotation, Level, Runner};

mod deployment;
mod gate;

pub use gate::ci_gate;

use crate::ci_gate::GateVerdict;
use deployment::{deployment_state, GithubDeployment};

pub async fn run(env: &Env, runner: &Runner) -> Report {
    let started = Instant::now();
    let mut report = Report::default();
    let ctx = GithubContext::from_env(env);
    let mut tracker = None;
    let result = match inputs::parse(env, &ctx) {
        Ok(config) => gate_and_deliver(&config, &ctx, runner, &mut report, &mut tracker).await,
        Err(errors) => Err(invalid_inputs(errors, &mut report, started)),
    };
    report.elapsed = started.elapsed();
    conclude(&mut report, result);
    if let Some(t) = &tracker {
        let (state, description) = deployment_state(&report);
        t.post(state, &description, &mut report).await;
    }
    report
}

/// Every invalid input is its own annotation; nothing else ran.
fn invalid_inputs(errors: InputErrors, report: &mut Report, started: Instant) -> Fault {
    report.record(
        Phase::Inputs,
        started.elapsed(),
        PhaseResult::Failed(errors.to_string()),
    );
    for e in &errors.0 {
        report.errors.push(Annotation::new(
            Level::Error,
            format!("berth: invalid input {}", e.input),
            format!("Input `{}` {}", e.input, e.message),
        ));
    }
    Fault::Inputs(errors)
}

async fn gate_and_deliver(
    config: &Config,
    ctx: &GithubContext,
    runner: &Runner,
    report: &mut Report,
    tracker: &mut Option<GithubDeployment>,
) -> Result<Outcome, Fault> {
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
        Default::default(),
        PhaseResult::Ok("all inputs valid".into()),
    );
    if config.health.insecure_tls {
        report.warn("berth: insecure TLS", "`health-insecure-tls: true`: the health check does not verify the server's certificate.");
    }

    match ci_gate(config, ctx, runner, report).await? {
        GateVerdict::Passed => {}
        GateVerdict::Refused { reason } => {
            report.warn("berth: deploy refused", reason);
            return Ok(Outcome::Skipped);
        }
        GateVerdict::Skipped { notice } => {
            report.notices.push(Annotation::new(
                Level::Notice,
                "berth: deploy skipped",
                notice,
            ));
            return Ok(Outcome::Skipped);
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
        crate::trust::check_checkouts(&ctx.workspace, &read_from, &sha)?;
    }

    *tracker = GithubDeployment::create(config, ctx, &sha, report).await;
    if let Some(t) = tracker {
        let what = format!(
            "berth is deploying {} to {}",
            crate::short_sha(&sha),
            config.report.environment
        );
        t.post("in_progress", &what, report).await;
    }
    engine::deliver(config, ctx, &sha, runner, report).await
}

/// The run's result becomes the report's outcome and root cause, here and only here.
/// A failed release that was rolled back healthy is `rolled-back`; one whose rollback
/// failed says so in its title, with the command to recover by hand.
pub fn conclude(report: &mut Report, result: Result<Outcome, Fault>) {
    let fault = match result {
        Ok(outcome) => {
            report.outcome = Some(outcome);
            return;
        }
        // Each invalid input is already its own annotation.
        Err(Fault::Inputs(_)) => {
            report.outcome = Some(Outcome::Failed);
            return;
        }
        Err(fault) => fault,
    };
    let mut failure = fault.to_failure();
    let original = failure.message.clone();
    if !report.excerpt.is_empty() {
        failure.message.push_str("\nLog excerpt:\n");
        failure.message.push_str(&report.excerpt.join("\n"));
    }
    let outcome = match &report.rollback {
        Some(rb) if rb.healthy => {
            failure
                .message
                .push_str(&format!("\nRolled back: {}.", rb.detail));
            Outcome::RolledBack
        }
        Some(rb) if rb.left_to_host => {
            failure
                .message
                .push_str(&format!("\nRollback not proven yet: {}.", rb.detail));
            Outcome::Failed
        }
        Some(rb) => {
            failure.title = "berth: deploy failed AND rollback failed".into();
            failure.message = format!(
                "DEPLOY FAILED AND ROLLBACK FAILED. Deploy: {original}\nRollback: {}\nRecover by hand:\n{}",
                rb.detail,
                report.recovery.as_deref().unwrap_or("")
            );
            Outcome::Failed
        }
        None => Outcome::Failed,
    };
    report.failure = Some(failure);
    report.outcome = Some(outcome);
}
