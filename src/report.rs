//! What happened, as data. Phases record into one [`Report`]; annotations, outputs and the
//! job summary are rendered from it at the end, on success and on failure alike.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::workflow::{Annotation, Level, Runner};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Deployed,
    RolledBack,
    Failed,
    Skipped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Deployed => "deployed",
            Outcome::RolledBack => "rolled-back",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
        }
    }

    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Deployed | Outcome::Skipped => 0,
            Outcome::RolledBack | Outcome::Failed => 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Inputs,
    CiGate,
    Build,
    Push,
    Connect,
    Upload,
    Pull,
    PreDeploy,
    Up,
    Verify,
    Health,
    Rollback,
}

impl Phase {
    pub fn label(self) -> &'static str {
        match self {
            Phase::Inputs => "inputs",
            Phase::CiGate => "CI gate",
            Phase::Build => "build",
            Phase::Push => "push",
            Phase::Connect => "connect",
            Phase::Upload => "upload",
            Phase::Pull => "pull",
            Phase::PreDeploy => "pre-deploy",
            Phase::Up => "up",
            Phase::Verify => "verify",
            Phase::Health => "health",
            Phase::Rollback => "rollback",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhaseResult {
    Ok(String),
    Failed(String),
    Skipped(String),
}

#[derive(Debug, Clone)]
pub struct PhaseRecord {
    pub phase: Phase,
    pub duration: Duration,
    pub result: PhaseResult,
}

/// One workflow run the CI gate looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CiRunRecord {
    pub workflow: String,
    pub run_number: u64,
    pub attempt: u64,
    pub status: String,
    pub conclusion: Option<String>,
    pub url: String,
}

#[derive(Debug, Clone, Default)]
pub struct CiReport {
    pub runs: Vec<CiRunRecord>,
    pub waited: Duration,
    pub requests: u32,
    pub not_modified: u32,
    pub verdict: Option<String>,
}

impl CiReport {
    /// Requests that count against the rate limit: a 304 does not.
    pub fn counted_requests(&self) -> u32 {
        self.requests - self.not_modified
    }
}

/// The root cause of a failed run, written as one error annotation.
#[derive(Debug, Clone)]
pub struct Failure {
    pub phase: Phase,
    pub title: String,
    pub message: String,
    pub file: Option<String>,
    pub line: Option<u32>,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub outcome: Option<Outcome>,
    pub sha: Option<String>,
    pub sha_source: Option<String>,
    pub environment: String,
    pub phases: Vec<PhaseRecord>,
    pub ci: CiReport,
    pub images: BTreeMap<String, String>,
    pub release: Option<String>,
    pub previous_release: Option<String>,
    pub health_seconds: Option<f64>,
    pub deployment_id: Option<u64>,
    pub environment_url: Option<String>,
    pub failure: Option<Failure>,
    /// Errors beyond the root cause (e.g. every invalid input), in order of importance.
    pub errors: Vec<Annotation>,
    pub warnings: Vec<Annotation>,
    pub notices: Vec<Annotation>,
    pub plan: Vec<String>,
    pub elapsed: Duration,
}

impl Report {
    pub fn record(&mut self, phase: Phase, duration: Duration, result: PhaseResult) {
        self.phases.push(PhaseRecord {
            phase,
            duration,
            result,
        });
    }

    pub fn warn(&mut self, title: &str, message: impl Into<String>) {
        self.warnings
            .push(Annotation::new(Level::Warning, title, message));
    }

    pub fn fail(&mut self, phase: Phase, title: impl Into<String>, message: impl Into<String>) {
        self.failure = Some(Failure {
            phase,
            title: title.into(),
            message: message.into(),
            file: None,
            line: None,
        });
    }

    pub fn outcome(&self) -> Outcome {
        self.outcome.unwrap_or(if self.failure.is_some() {
            Outcome::Failed
        } else {
            Outcome::Deployed
        })
    }

    fn short_sha(&self) -> String {
        self.sha
            .as_deref()
            .map(|s| s[..s.len().min(7)].to_string())
            .unwrap_or_else(|| "unknown".into())
    }

    pub fn headline(&self) -> String {
        let sha = self.short_sha();
        let env = if self.environment.is_empty() {
            "staging"
        } else {
            &self.environment
        };
        match self.outcome() {
            Outcome::Deployed => format!("Deployed `{sha}` to {env} in {}", secs(self.elapsed)),
            Outcome::Skipped => format!("Skipped: `{sha}` was not deployed to {env}"),
            Outcome::RolledBack => format!(
                "Rolled back: `{sha}` failed at {}; `{}` is serving",
                self.failure
                    .as_ref()
                    .map(|f| f.phase.label())
                    .unwrap_or("an unknown phase"),
                self.previous_release
                    .as_deref()
                    .unwrap_or("the previous release")
            ),
            Outcome::Failed => format!(
                "Failed: `{sha}` was not deployed to {env} ({})",
                self.failure
                    .as_ref()
                    .map(|f| f.title.as_str())
                    .unwrap_or("see the log")
            ),
        }
    }

    /// Annotations, most important first: the root cause, then other errors, warnings, notices.
    pub fn annotations(&self) -> Vec<Annotation> {
        let mut out = Vec::new();
        if let Some(f) = &self.failure {
            let mut a = Annotation::new(Level::Error, &f.title, &f.message);
            if let Some(file) = &f.file {
                a = a.in_file(file, f.line);
            }
            out.push(a);
        }
        out.extend(self.errors.iter().cloned());
        out.extend(self.warnings.iter().cloned());
        out.extend(self.notices.iter().cloned());
        out
    }

    pub fn outputs(&self) -> Vec<(&'static str, String)> {
        let images = serde_json::to_string(&self.images).unwrap_or_else(|_| "{}".into());
        vec![
            ("status", self.outcome().as_str().to_string()),
            ("sha", self.sha.clone().unwrap_or_default()),
            ("release", self.release.clone().unwrap_or_default()),
            (
                "previous-release",
                self.previous_release.clone().unwrap_or_default(),
            ),
            ("images", images),
            (
                "health-seconds",
                self.health_seconds
                    .map(|s| format!("{s:.1}"))
                    .unwrap_or_default(),
            ),
            (
                "deployment-id",
                self.deployment_id
                    .map(|d| d.to_string())
                    .unwrap_or_default(),
            ),
        ]
    }

    pub fn summary_markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "## berth: {}\n", self.headline());
        if let Some(f) = &self.failure {
            let _ = writeln!(md, "**{}**\n\n{}\n", f.title, f.message);
        }
        for e in &self.errors {
            let _ = writeln!(
                md,
                "- **{}**: {}",
                e.title.as_deref().unwrap_or("error"),
                e.message
            );
        }
        if !self.errors.is_empty() {
            md.push('\n');
        }
        if let Some(src) = &self.sha_source {
            let _ = writeln!(
                md,
                "Commit `{}` ({src}).\n",
                self.sha.as_deref().unwrap_or("?")
            );
        }
        if !self.phases.is_empty() {
            md.push_str("| phase | time | result |\n|---|---:|---|\n");
            for p in &self.phases {
                let (icon, text) = match &p.result {
                    PhaseResult::Ok(t) => ("✅", t),
                    PhaseResult::Failed(t) => ("❌", t),
                    PhaseResult::Skipped(t) => ("⏭️", t),
                };
                let _ = writeln!(
                    md,
                    "| {} | {} | {icon} {} |",
                    p.phase.label(),
                    secs(p.duration),
                    one_line(text)
                );
            }
            md.push('\n');
        }
        if !self.ci.runs.is_empty() || self.ci.requests > 0 {
            md.push_str("### CI runs checked\n\n| workflow | run | status | conclusion |\n|---|---|---|---|\n");
            for r in &self.ci.runs {
                let _ = writeln!(
                    md,
                    "| {} | [#{} attempt {}]({}) | {} | {} |",
                    r.workflow,
                    r.run_number,
                    r.attempt,
                    r.url,
                    r.status,
                    r.conclusion.as_deref().unwrap_or("–")
                );
            }
            let _ = writeln!(
                md,
                "\nWaited {} for CI; {} API requests, {} answered 304 (not counted against the rate limit).\n",
                secs(self.ci.waited),
                self.ci.requests,
                self.ci.not_modified
            );
        }
        if !self.images.is_empty() {
            md.push_str("### Images\n\n| service | image |\n|---|---|\n");
            for (svc, img) in &self.images {
                let _ = writeln!(md, "| {svc} | `{img}` |");
            }
            md.push('\n');
        }
        if !self.plan.is_empty() {
            md.push_str("### Plan (dry run)\n\n```\n");
            for step in &self.plan {
                let _ = writeln!(md, "{step}");
            }
            md.push_str("```\n");
        }
        md
    }

    /// Writes annotations, outputs and the summary through the runner.
    pub fn render(&self, runner: &Runner) {
        for a in self.annotations() {
            runner.annotate(&a);
        }
        for (name, value) in self.outputs() {
            runner.set_output(name, &value);
        }
        runner.append_summary(&self.summary_markdown());
    }
}

fn one_line(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

pub fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.1} s")
    } else {
        format!("{} s", s.round() as u64)
    }
}
