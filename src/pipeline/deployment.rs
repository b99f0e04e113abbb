//! The GitHub Deployment of a run: created before the deploy, its status posted after.
//! Reporting only: its failures warn and never stop the deploy.

use crate::github::GithubApi;
use crate::inputs::{Config, GithubContext, Mode};
use crate::report::{Outcome, Phase, Report};

/// The GitHub Deployment of this run: reporting only, so its failures warn and never stop
/// the deploy.
pub(super) struct GithubDeployment {
    api: GithubApi,
    id: u64,
    environment: String,
    environment_url: Option<String>,
    log_url: Option<String>,
}

impl GithubDeployment {
    pub(super) async fn create(
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

    pub(super) async fn post(&self, state: &str, description: &str, report: &mut Report) {
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
pub(super) fn deployment_state(report: &Report) -> (&'static str, String) {
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
