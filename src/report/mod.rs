//! What happened, as data. Phases record into one [`Report`]; annotations, outputs and the
//! job summary are rendered from it at the end, on success and on failure alike.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::health::HealthRecord;
use crate::markdown::Md;
use crate::workflow::{Annotation, Level, Runner, ANNOTATIONS_PER_LEVEL};

mod summary;

pub use summary::{secs, truncate_bytes, truncate_lines, Rounded, SUMMARY_BUDGET};

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
    Lock,
    Upload,
    Pull,
    PreDeploy,
    Up,
    Switch,
    Verify,
    Health,
    Drain,
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
            Phase::Lock => "lock",
            Phase::Upload => "upload",
            Phase::Pull => "pull",
            Phase::PreDeploy => "pre-deploy",
            Phase::Up => "up",
            Phase::Switch => "switch",
            Phase::Verify => "verify",
            Phase::Health => "health",
            Phase::Drain => "drain",
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
    /// What really went wrong, whatever the phase: the headline and the next step follow
    /// it, not only the phase (a connection lost during health is no failed health check).
    pub cause: Cause,
    pub title: String,
    pub message: String,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// The kind of a failure, as the headline and the next step tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cause {
    #[default]
    Other,
    Unhealthy,
    CrashLoop,
    ConnectionLost,
    Cancelled,
    DiskFull,
    RegistryStalled,
}

/// One host's part in the run.
#[derive(Debug, Clone, Default)]
pub struct HostReport {
    pub host: String,
    pub fingerprint: String,
    pub release: Option<String>,
    pub previous: Option<String>,
}

/// The state of the services and the log tails of the failing ones, from one host.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics {
    pub host: String,
    pub ps: String,
    /// container -> last lines of its log
    pub logs: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default)]
pub struct RollbackReport {
    pub restored: Option<String>,
    pub healthy: bool,
    /// Not proven before a cancelled run's time ran out: the host finishes and proves it
    /// by itself (its self-heal), and the next run reports the result.
    pub left_to_host: bool,
    pub detail: String,
    pub health: Option<HealthRecord>,
    pub duration: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub outcome: Option<Outcome>,
    pub sha: Option<String>,
    pub sha_source: Option<String>,
    /// The branch the gate proved the commit is on, which `{branch}` in tags names: under
    /// workflow_run that is `head_branch`, not GITHUB_REF_NAME (the default branch there).
    /// A local run (no event) has GITHUB_REF_NAME.
    pub branch: Option<String>,
    pub environment: String,
    pub phases: Vec<PhaseRecord>,
    pub ci: CiReport,
    pub images: BTreeMap<String, String>,
    /// The tags pushed for every image.
    pub image_tags: Vec<String>,
    pub release: Option<String>,
    pub previous_release: Option<String>,
    pub health_seconds: Option<f64>,
    /// What users saw while the release was switched (see `health::UserProbe`).
    pub user_probes: Option<crate::health::Tally>,
    /// Whether `routes` switched this release through the edge.
    pub routed: bool,
    /// A routed release failed before the switch: no user request reached it.
    pub users_unaffected: bool,
    pub deployment_id: Option<u64>,
    pub environment_url: Option<String>,
    pub failure: Option<Failure>,
    /// Errors beyond the root cause (e.g. every invalid input), in order of importance.
    pub errors: Vec<Annotation>,
    pub warnings: Vec<Annotation>,
    pub notices: Vec<Annotation>,
    pub plan: Vec<String>,
    pub elapsed: Duration,
    pub hosts: Vec<HostReport>,
    pub health: Option<HealthRecord>,
    pub diagnostics: Vec<Diagnostics>,
    pub rollback: Option<RollbackReport>,
    /// The most telling log lines of a failure, for the error annotation.
    pub excerpt: Vec<String>,
    /// The exact command to recover by hand, when berth could not.
    pub recovery: Option<String>,
    /// Whether this run was `mode: rollback` (a successful one exits 0).
    pub manual_rollback: bool,
}

impl Report {
    pub fn record(&mut self, phase: Phase, duration: Duration, result: PhaseResult) {
        self.phases.push(PhaseRecord {
            phase,
            duration,
            result,
        });
    }

    /// A phase recorded as done that then failed (preflight after connect): its one row
    /// says so, with both times.
    pub fn amend(&mut self, phase: Phase, more: Duration, result: PhaseResult) {
        match self.phases.iter_mut().rev().find(|p| p.phase == phase) {
            Some(p) => {
                p.duration += more;
                p.result = result;
            }
            None => self.record(phase, more, result),
        }
    }

    pub fn warn(&mut self, title: &str, message: impl Into<String>) {
        self.warnings
            .push(Annotation::new(Level::Warning, title, message));
    }

    /// A rolled-back deploy failed (exit 1); a successful `mode: rollback` did its job.
    pub fn exit_code(&self) -> i32 {
        match self.outcome() {
            Outcome::RolledBack if self.manual_rollback => 0,
            other => other.exit_code(),
        }
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
            .map(|s| crate::short_sha(s).to_string())
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
            Outcome::RolledBack if self.manual_rollback => format!(
                "Rolled back {env} to `{}`; it is serving and healthy",
                self.release.as_deref().unwrap_or("the requested release")
            ),
            Outcome::RolledBack => format!(
                "Rolled back: `{sha}` {}; `{}` is serving and healthy{}",
                match self.failure.as_ref().map(|f| (f.cause, f.phase)) {
                    Some((Cause::Unhealthy, _)) => "failed its health check".to_string(),
                    Some((Cause::CrashLoop, _)) => "crash-looped".to_string(),
                    Some((Cause::ConnectionLost, p)) => {
                        format!("lost its connection to the host during {}", p.label())
                    }
                    Some((Cause::Cancelled, p)) => format!("was cancelled during {}", p.label()),
                    Some((Cause::DiskFull, p)) => {
                        format!("ran out of disk space on the host at {}", p.label())
                    }
                    Some((_, Phase::Health)) => "failed its health check".to_string(),
                    Some((_, p)) => format!("failed at {}", p.label()),
                    None => "failed to deploy".to_string(),
                },
                self.rollback
                    .as_ref()
                    .and_then(|r| r.restored.as_deref())
                    .or(self.previous_release.as_deref())
                    .unwrap_or("the previous release"),
                if self.users_unaffected {
                    "; users were not affected"
                } else {
                    ""
                }
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
        fold_past_the_cap(out)
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
                "failed-probes",
                self.user_probes
                    .as_ref()
                    .map(|t| t.failed.to_string())
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

    /// Writes annotations, outputs and the summary through the runner.
    pub fn render(&self, runner: &Runner) {
        for a in self.annotations() {
            runner.annotate(&a);
        }
        for (name, value) in self.outputs() {
            runner.set_output(name, &value);
        }
        let scrub = |s: &str| runner.scrub(s);
        runner.append_summary(&self.summary_with(&Md::new(&scrub)));
    }
}

/// The runner records at most [`ANNOTATIONS_PER_LEVEL`] annotations of a level per step;
/// the rest would only reach the log. So the last one a level may have carries all the
/// others too, and every problem (say, every invalid input) stays an annotation.
fn fold_past_the_cap(annotations: Vec<Annotation>) -> Vec<Annotation> {
    let mut out: Vec<Annotation> = Vec::with_capacity(annotations.len());
    for level in [Level::Error, Level::Warning, Level::Notice] {
        let of_level: Vec<Annotation> = annotations
            .iter()
            .filter(|a| a.level == level)
            .cloned()
            .collect();
        if of_level.len() <= ANNOTATIONS_PER_LEVEL {
            out.extend(of_level);
            continue;
        }
        let (kept, rest) = of_level.split_at(ANNOTATIONS_PER_LEVEL - 1);
        out.extend(kept.iter().cloned());
        let folded = rest
            .iter()
            .map(|a| format!("{}: {}", a.title.as_deref().unwrap_or("berth"), a.message))
            .collect::<Vec<_>>()
            .join("\n");
        out.push(Annotation::new(
            level,
            format!("berth: {} more", rest.len()),
            folded,
        ));
    }
    out
}

#[cfg(test)]
mod tests;
