//! The CI gate as a step of the run: which commit, whether its origin may deploy, and
//! whether its CI succeeded. Read-only, so it runs in dry-run too.

use std::time::Instant;

use crate::ci_gate::{self, GateError, GateVerdict};
use crate::github::GithubApi;
use crate::inputs::{Config, GithubContext, Mode};
use crate::report::{Phase, PhaseResult, Report};
use crate::workflow::Runner;

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

    let (verdict, result) =
        match decide(cfg, ctx, event.as_ref(), &commit.sha, runner, report).await {
            Ok(decided) => decided,
            Err(e) => {
                report.record(
                    Phase::CiGate,
                    started.elapsed(),
                    PhaseResult::Failed(e.to_string()),
                );
                return Err(e);
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
    Ok(verdict)
}

/// The gate's verdict on `sha` and its row in the phase table.
async fn decide(
    cfg: &Config,
    ctx: &GithubContext,
    event: Option<&serde_json::Value>,
    sha: &str,
    runner: &Runner,
    report: &mut Report,
) -> Result<(GateVerdict, PhaseResult), GateError> {
    if cfg.mode == Mode::Rollback {
        let why = "rollback restores a release that already passed";
        return Ok((GateVerdict::Passed, PhaseResult::Skipped(why.into())));
    }
    if cfg.gate.allow_untested {
        report.warn(
            "berth: deploying untested code",
            format!("`allow-untested: true`: {sha} is deployed without checking CI."),
        );
        return Ok((
            GateVerdict::Passed,
            PhaseResult::Skipped("allow-untested".into()),
        ));
    }
    if ctx.event_name == "workflow_run" && cfg.gate.ci_workflows.is_empty() {
        return triggering_run(event.ok_or(GateError::NoHeadSha)?, sha, report);
    }
    let api = GithubApi::new(&ctx.api_url, &cfg.gate.github_token, &ctx.repository)?;
    ci_gate::wait_for_ci(&api, &cfg.gate, ctx, sha, runner, report).await?;
    let passed = format!("{} succeeded", cfg.gate.ci_workflows.join(", "));
    Ok((GateVerdict::Passed, PhaseResult::Ok(passed)))
}

/// Under `workflow_run` without `ci-workflows`: the triggering run decides, and it is
/// evidence only for the commit it tested.
fn triggering_run(
    event: &serde_json::Value,
    sha: &str,
    report: &mut Report,
) -> Result<(GateVerdict, PhaseResult), GateError> {
    let tested = event["workflow_run"]["head_sha"]
        .as_str()
        .unwrap_or_default();
    if !tested.eq_ignore_ascii_case(sha) {
        return Err(GateError::ShaNotTested {
            sha: sha.into(),
            tested: tested.into(),
        });
    }
    Ok(
        match ci_gate::verdict_from_workflow_run(event, sha, report) {
            GateVerdict::Passed => (
                GateVerdict::Passed,
                PhaseResult::Ok("the triggering workflow_run succeeded".into()),
            ),
            skipped => (
                skipped,
                PhaseResult::Skipped("the triggering workflow_run did not succeed".into()),
            ),
        },
    )
}
