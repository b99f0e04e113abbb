//! The CI gate as a step of the run: which commit, whether its origin may deploy, and
//! whether its CI succeeded. Read-only, so it runs in dry-run too.

use std::time::Instant;

use crate::ci_gate::{self, GateError, GateVerdict, OnBranch};
use crate::github::GithubApi;
use crate::inputs::{Config, GithubContext, Mode};
use crate::report::{Phase, PhaseResult, Report};
use crate::trust::{Origin, Refusal};
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
    // nothing berth may act on. A local run (no event) has no origin to check, and its
    // `{branch}` is GITHUB_REF_NAME. On a runner there is always an event; without one,
    // fail closed there.
    let origin = if !ctx.event_name.is_empty() || ctx.on_runner {
        let origin = Origin::of(ctx, event.as_ref());
        if let Err(refusal) = origin.check(&cfg.gate.events, &cfg.gate.branches) {
            return Ok(refused(report, started, &commit.sha, refusal));
        }
        Some(origin)
    } else {
        None
    };

    let decided = decide(cfg, ctx, event.as_ref(), &commit.sha, runner, report).await;
    // Only a commit that would deploy costs the API calls that prove its branch.
    let proven = match (&decided, &origin) {
        (Ok((GateVerdict::Passed, _)), Some(origin)) => {
            on_its_branch(cfg, ctx, origin, &commit.sha).await
        }
        _ => Ok(Ok(())),
    };
    let (verdict, result) = match (decided, proven) {
        (Err(e), _) | (_, Err(e)) => {
            report.record(
                Phase::CiGate,
                started.elapsed(),
                PhaseResult::Failed(e.to_string()),
            );
            return Err(e);
        }
        (_, Ok(Err(refusal))) => return Ok(refused(report, started, &commit.sha, refusal)),
        (Ok(decided), Ok(Ok(()))) => decided,
    };
    report.branch = match origin {
        Some(o) => o.branch,
        None => Some(ctx.ref_name.clone()).filter(|b| !b.is_empty()),
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

/// A refused origin: the phase says why, and nothing deploys.
fn refused(report: &mut Report, started: Instant, sha: &str, refusal: Refusal) -> GateVerdict {
    report.record(
        Phase::CiGate,
        started.elapsed(),
        PhaseResult::Skipped(format!("refused: {refusal}")),
    );
    GateVerdict::Refused {
        reason: format!("Not deploying {sha}: {refusal}"),
    }
}

/// Under workflow_run, the branch `check` allowed is only `head_branch`, a name a tag can
/// carry too: GitHub must show `sha` on `refs/heads/<branch>`. A direct event's
/// `GITHUB_REF` already said `refs/heads/<branch>`.
async fn on_its_branch(
    cfg: &Config,
    ctx: &GithubContext,
    origin: &Origin,
    sha: &str,
) -> Result<Result<(), Refusal>, GateError> {
    let (true, Some(branch)) = (origin.via_workflow_run, &origin.branch) else {
        return Ok(Ok(()));
    };
    let api = GithubApi::new(&ctx.api_url, &cfg.gate.github_token, &ctx.repository)?;
    Ok(match ci_gate::prove_on_branch(&api, branch, sha).await? {
        OnBranch::Proven => Ok(()),
        OnBranch::No(why) => Err(Refusal::NotOnBranch {
            branch: branch.clone(),
            sha: sha.into(),
            why,
        }),
    })
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
