//! The deploy state machine: inputs -> CI gate -> images -> remote release -> health ->
//! (rollback) -> report. Every phase records into the [`Report`].

use std::time::Instant;

use crate::ci_gate::{self, GateError, GateVerdict};
use crate::github::GithubApi;
use crate::inputs::{self, Config, Env, GithubContext, Mode};
use crate::report::{Outcome, Phase, PhaseResult, Report};
use crate::workflow::{Annotation, Level, Runner};

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
    report.environment = config.environment.clone();
    report.record(
        Phase::Inputs,
        started.elapsed(),
        PhaseResult::Ok("all inputs valid".into()),
    );

    match ci_gate(&config, &ctx, runner, &mut report).await {
        Ok(GateVerdict::Passed) => {}
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
            report.outcome = Some(Outcome::Failed);
            report.elapsed = started.elapsed();
            return report;
        }
    }

    report.fail(
        Phase::Build,
        "berth: not implemented",
        "This build of berth stops after the CI gate; the image and remote-release phases are not built yet.",
    );
    report.outcome = Some(Outcome::Failed);
    report.elapsed = started.elapsed();
    report
}

fn gate_title(e: &GateError) -> &'static str {
    match e {
        GateError::Failed { .. } => "berth: CI did not succeed for this commit",
        GateError::TimedOut { .. } => "berth: CI gate timed out",
        GateError::NoRun { .. } => "berth: no CI run found for this commit",
        GateError::UnknownWorkflow { .. } => "berth: unknown CI workflow",
        GateError::Api(_) => "berth: GitHub API error in the CI gate",
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
    let commit = ci_gate::choose_commit(cfg.sha.as_deref(), ctx, event.as_ref())?;
    runner.line(&format!("Commit {} ({})", commit.sha, commit.source));
    report.sha = Some(commit.sha.clone());
    report.sha_source = Some(commit.source.clone());

    let (verdict, result) = if cfg.mode == Mode::Rollback {
        (
            Ok(GateVerdict::Passed),
            PhaseResult::Skipped("rollback restores a release that already passed".into()),
        )
    } else if cfg.allow_untested {
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
    } else if ctx.event_name == "workflow_run" && cfg.ci_workflows.is_empty() {
        let event = event.as_ref().ok_or(GateError::NoHeadSha)?;
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
        let api = GithubApi::new(&ctx.api_url, &cfg.github_token, &ctx.repository)?;
        match ci_gate::wait_for_ci(&api, cfg, ctx, &commit.sha, runner, report).await {
            Ok(()) => (
                Ok(GateVerdict::Passed),
                PhaseResult::Ok(format!("{} succeeded", cfg.ci_workflows.join(", "))),
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
