//! The CI gate: berth deploys a commit only when CI succeeded for that exact commit,
//! whatever triggered the deploy (workflow_run, push, manual dispatch, schedule).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

#[cfg(test)]
use crate::github::RepositoryRef;
use crate::github::{GithubApi, GithubError, WorkflowRun};
use crate::inputs::{GateSettings, GithubContext};
use crate::report::{CiRunRecord, Report};
use crate::workflow::Runner;

/// No run of a required workflow may take longer than this to appear.
pub const DISCOVERY_WINDOW: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("cannot read the event payload at {path}: {detail}. berth needs GITHUB_EVENT_PATH under `on: workflow_run`.")]
    Event { path: String, detail: String },
    #[error("the workflow_run event payload has no `workflow_run.head_sha`, so berth cannot tell which commit CI tested.")]
    NoHeadSha,
    #[error("no commit to deploy: the `sha` input, the workflow_run payload and GITHUB_SHA are all empty. Set `sha: ${{{{ github.sha }}}}`.")]
    NoSha,
    #[error("CI workflow `{workflow}` concluded `{conclusion}` for commit {sha} (run #{run_number}, attempt {attempt}): {url}. berth deploys only commits whose CI succeeded: fix CI and re-run it, or deploy a commit that passed.")]
    Failed {
        workflow: String,
        conclusion: String,
        sha: String,
        run_number: u64,
        attempt: u64,
        url: String,
    },
    #[error("no run of CI workflow `{workflow}` appeared for commit {sha} within {}{ignored}. Check that `ci-workflows` names the workflow exactly (its file, e.g. `ci.yml`, or its `name:`), and that CI is triggered for this commit (its `on:` events, branch and path filters).", crate::report::Rounded(*window))]
    NoRun {
        workflow: String,
        sha: String,
        window: Duration,
        /// Runs for the commit that do not count (a fork's, or a refused event), said.
        ignored: String,
    },
    #[error("timed out after {} (`ci-timeout`) waiting for CI workflow `{workflow}` on commit {sha}; it is still `{status}`: {url}. Raise `ci-timeout` if CI is slow, or re-run once CI has finished.", crate::report::Rounded(*waited))]
    TimedOut {
        workflow: String,
        sha: String,
        status: String,
        url: String,
        waited: Duration,
    },
    #[error("no workflow named `{name}` in this repository. Known workflows: {known}. Use a workflow file name (e.g. `ci.yml`) or its exact `name:`.")]
    UnknownWorkflow { name: String, known: String },
    #[error("`sha` is {sha}, but the workflow_run that triggered berth tested {tested}; its conclusion says nothing about {sha}. Leave `sha` empty to deploy the tested commit, or set `ci-workflows` so that berth checks CI for {sha} itself.")]
    ShaNotTested { sha: String, tested: String },
    #[error("berth cannot prove that commit {sha} is on branch `{branch}`: {source} Under workflow_run, `head_branch` is only a name, which a tag can carry too, so berth asks GitHub for the branch; the token needs `permissions: contents: read`.")]
    BranchUnproven {
        branch: String,
        sha: String,
        #[source]
        source: GithubError,
    },
    #[error(transparent)]
    Api(#[from] GithubError),
}

/// Whether GitHub shows a commit on a branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnBranch {
    Proven,
    /// Why not, for the refusal.
    No(String),
}

/// No proof that a commit is on a branch may take longer than this.
const BRANCH_PROOF_WINDOW: Duration = Duration::from_secs(60);

/// Whether `sha` is on `refs/heads/{branch}`: the branch's head, or in its history
/// (comparing the head with `sha` says `behind` or `identical`). The base of the
/// comparison is the head's sha, never the bare name, which a tag of that name would win.
pub async fn prove_on_branch(
    api: &GithubApi,
    branch: &str,
    sha: &str,
) -> Result<OnBranch, GateError> {
    let deadline = Instant::now() + BRANCH_PROOF_WINDOW;
    let unproven = |source| GateError::BranchUnproven {
        branch: branch.into(),
        sha: sha.into(),
        source,
    };
    let Some(head) = api.branch_head(branch, deadline).await.map_err(unproven)? else {
        return Ok(OnBranch::No(format!(
            "the repository has no branch `{branch}`"
        )));
    };
    if head.eq_ignore_ascii_case(sha) {
        return Ok(OnBranch::Proven);
    }
    Ok(
        match api
            .compare(&head, sha, deadline)
            .await
            .map_err(unproven)?
            .as_deref()
        {
            Some("identical" | "behind") => OnBranch::Proven,
            Some(status) => OnBranch::No(format!(
            "the branch's head is {head}, and comparing it with {sha} says `{status}`, not `behind`"
        )),
            None => OnBranch::No(format!(
                "the branch's head is {head}, and GitHub cannot compare it with {sha}"
            )),
        },
    )
}

/// The commit to deploy and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitChoice {
    pub sha: String,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateVerdict {
    Passed,
    /// The code may not deploy at all (a fork, an event or a branch that is not allowed).
    Refused {
        reason: String,
    },
    /// CI did not succeed under workflow_run: no deploy, but not a second red run.
    Skipped {
        notice: String,
    },
}

pub fn read_event(path: Option<&Path>) -> Result<Option<Value>, GateError> {
    let Some(path) = path else { return Ok(None) };
    let text = std::fs::read_to_string(path).map_err(|e| GateError::Event {
        path: path.display().to_string(),
        detail: e.to_string(),
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| GateError::Event {
            path: path.display().to_string(),
            detail: e.to_string(),
        })
}

/// `sha` input, else `workflow_run.head_sha` under workflow_run (GITHUB_SHA is the default
/// branch's head there, not the commit CI tested), else GITHUB_SHA.
pub fn choose_commit(
    input: Option<&str>,
    ctx: &GithubContext,
    event: Option<&Value>,
) -> Result<CommitChoice, GateError> {
    if let Some(sha) = input {
        return Ok(CommitChoice {
            sha: sha.into(),
            source: "from the `sha` input".into(),
        });
    }
    if ctx.event_name == "workflow_run" {
        let sha = event
            .and_then(|e| e["workflow_run"]["head_sha"].as_str())
            .filter(|s| !s.is_empty())
            .ok_or(GateError::NoHeadSha)?;
        return Ok(CommitChoice {
            sha: sha.into(),
            source: "from `workflow_run.head_sha`: under workflow_run, GITHUB_SHA is the default branch's head, not the commit CI tested".into(),
        });
    }
    if ctx.sha.is_empty() {
        return Err(GateError::NoSha);
    }
    Ok(CommitChoice {
        sha: ctx.sha.clone(),
        source: format!("from GITHUB_SHA ({} event)", or_local(&ctx.event_name)),
    })
}

fn or_local(event: &str) -> &str {
    if event.is_empty() {
        "local"
    } else {
        event
    }
}

/// Under workflow_run with no `ci-workflows`, the triggering run is the evidence.
pub fn verdict_from_workflow_run(event: &Value, sha: &str, report: &mut Report) -> GateVerdict {
    let run = &event["workflow_run"];
    let record = CiRunRecord {
        // Webhook payloads may leave `workflow_run.name` empty; `workflow.name` has it.
        workflow: [&run["name"], &event["workflow"]["name"], &run["path"]]
            .iter()
            .find_map(|v| v.as_str().filter(|s| !s.is_empty()))
            .unwrap_or("CI")
            .into(),
        run_number: run["run_number"].as_u64().unwrap_or(0),
        attempt: run["run_attempt"].as_u64().unwrap_or(1),
        status: run["status"].as_str().unwrap_or("completed").into(),
        conclusion: run["conclusion"].as_str().map(String::from),
        url: run["html_url"].as_str().unwrap_or("").into(),
    };
    report.ci.runs.push(record.clone());
    match record.conclusion.as_deref() {
        Some("success") => GateVerdict::Passed,
        other => GateVerdict::Skipped {
            notice: format!(
                "Not deploying {sha}: workflow `{}` run #{} concluded `{}`. Run: {}",
                record.workflow,
                record.run_number,
                other.unwrap_or("none"),
                record.url
            ),
        },
    }
}

fn record_of(workflow: &str, run: &WorkflowRun) -> CiRunRecord {
    CiRunRecord {
        workflow: workflow.into(),
        run_number: run.run_number,
        attempt: run.run_attempt,
        status: run.status.clone().unwrap_or_default(),
        conclusion: run.conclusion.clone(),
        url: run.html_url.clone(),
    }
}

/// The run that decides: the newest run (highest id) other than our own. The list API
/// shows each run's latest attempt, so a re-run that succeeded counts and a failed later
/// attempt fails.
pub fn deciding_run(runs: &[WorkflowRun], own_run_id: Option<u64>) -> Option<&WorkflowRun> {
    runs.iter()
        .filter(|r| Some(r.id) != own_run_id)
        .max_by_key(|r| (r.id, r.run_attempt))
}

/// Why a run for the commit does not count as evidence, if it does not: only runs of this
/// repository's own code, from an allowed event, prove anything. A pull request's run for
/// the same sha must not open the gate.
pub fn ignored_because(run: &WorkflowRun, events: &[String]) -> Option<String> {
    if !run.is_from_own_repository() {
        let head = run
            .head_repository
            .as_ref()
            .map_or("an unknown repository", |h| h.full_name.as_str());
        return Some(format!(
            "run #{} tested code from {head}, not this repository",
            run.run_number
        ));
    }
    if !events.iter().any(|e| e == &run.event) {
        return Some(format!(
            "run #{} is a `{}` run and `events` allows {}",
            run.run_number,
            run.event,
            events.join(", ")
        ));
    }
    None
}

struct Required {
    label: String,
    id: String,
    decided: bool,
}

/// Waits until every required workflow succeeded for `sha`, or fails naming the one that
/// did not. Records runs, wait time and request counts into the report.
pub async fn wait_for_ci(
    api: &GithubApi,
    gate: &GateSettings,
    ctx: &GithubContext,
    sha: &str,
    runner: &Runner,
    report: &mut Report,
) -> Result<(), GateError> {
    let started = Instant::now();
    let poll = Poll {
        api,
        gate,
        ctx,
        sha,
        runner,
        started,
        deadline: started + gate.ci_timeout,
        window: DISCOVERY_WINDOW.min(gate.ci_timeout),
        ignored: BTreeSet::new(),
    };
    let result = poll.run(report).await;
    let stats = api.stats();
    report.ci.waited = started.elapsed();
    report.ci.requests = stats.requests;
    report.ci.not_modified = stats.not_modified;
    result
}

/// One wait for CI: for which commit, and until when.
struct Poll<'a> {
    api: &'a GithubApi,
    gate: &'a GateSettings,
    ctx: &'a GithubContext,
    sha: &'a str,
    runner: &'a Runner,
    started: Instant,
    deadline: Instant,
    /// How long a required workflow may show no run for the commit.
    window: Duration,
    /// Why runs did not count, each said once.
    ignored: BTreeSet<String>,
}

impl Poll<'_> {
    async fn run(mut self, report: &mut Report) -> Result<(), GateError> {
        let _group = self.runner.group(&format!(
            "CI gate: {} on {}",
            self.gate.ci_workflows.join(", "),
            crate::short_sha(self.sha)
        ));
        let mut required = Vec::new();
        for name in &self.gate.ci_workflows {
            required.push(Required {
                label: name.clone(),
                id: resolve_workflow(self.api, name, self.deadline).await?,
                decided: false,
            });
        }
        loop {
            let elapsed = self.started.elapsed();
            for wf in required.iter_mut().filter(|w| !w.decided) {
                wf.decided = self.succeeded(wf, elapsed, report).await?;
            }
            if required.iter().all(|w| w.decided) {
                return Ok(());
            }
            if Instant::now() + self.gate.ci_poll_interval > self.deadline {
                let wf = required
                    .iter()
                    .find(|w| !w.decided)
                    .expect("one is undecided");
                return Err(self.gave_up_on(wf, report));
            }
            tokio::time::sleep(self.gate.ci_poll_interval).await;
        }
    }

    /// Whether the run that decides for `wf` completed successfully; an error when it
    /// concluded otherwise, or when no run appeared within the window.
    async fn succeeded(
        &mut self,
        wf: &Required,
        elapsed: Duration,
        report: &mut Report,
    ) -> Result<bool, GateError> {
        let mut runs = self
            .api
            .workflow_runs(&wf.id, self.sha, self.deadline)
            .await?;
        runs.retain(|r| match ignored_because(r, &self.gate.events) {
            Some(why) => {
                if self.ignored.insert(why.clone()) {
                    self.runner.line(&format!("{}: ignored: {why}", wf.label));
                }
                false
            }
            None => true,
        });
        let Some(run) = deciding_run(&runs, self.ctx.run_id) else {
            self.runner.line(&format!(
                "{}: no run for {} yet ({}s)",
                wf.label,
                crate::short_sha(self.sha),
                elapsed.as_secs()
            ));
            if elapsed >= self.window {
                return Err(GateError::NoRun {
                    workflow: wf.label.clone(),
                    sha: self.sha.into(),
                    window: self.window,
                    ignored: ignored_note(&self.ignored),
                });
            }
            return Ok(false);
        };
        let record = record_of(&wf.label, run);
        report.ci.runs.retain(|r| r.workflow != wf.label);
        report.ci.runs.push(record.clone());
        self.runner.line(&format!(
            "{}: {} (run #{}, attempt {}) {}s",
            wf.label,
            match &record.conclusion {
                Some(c) if record.status == "completed" => format!("completed, {c}"),
                _ => record.status.clone(),
            },
            record.run_number,
            record.attempt,
            elapsed.as_secs()
        ));
        if record.status != "completed" {
            return Ok(false);
        }
        match record.conclusion.as_deref() {
            Some("success") => Ok(true),
            other => Err(GateError::Failed {
                workflow: wf.label.clone(),
                conclusion: other.unwrap_or("none").into(),
                sha: self.sha.into(),
                run_number: record.run_number,
                attempt: record.attempt,
                url: record.url,
            }),
        }
    }

    /// The error at the deadline for `wf`: still running, or never seen.
    fn gave_up_on(&self, wf: &Required, report: &Report) -> GateError {
        match report.ci.runs.iter().find(|r| r.workflow == wf.label) {
            Some(r) => GateError::TimedOut {
                workflow: wf.label.clone(),
                sha: self.sha.into(),
                status: r.status.clone(),
                url: r.url.clone(),
                waited: self.started.elapsed(),
            },
            None => GateError::NoRun {
                workflow: wf.label.clone(),
                sha: self.sha.into(),
                window: self.started.elapsed(),
                ignored: ignored_note(&self.ignored),
            },
        }
    }
}

fn ignored_note(ignored: &BTreeSet<String>) -> String {
    if ignored.is_empty() {
        String::new()
    } else {
        format!(
            " that counts ({} ignored: {})",
            ignored.len(),
            ignored.iter().cloned().collect::<Vec<_>>().join("; ")
        )
    }
}

/// A file name (`ci.yml`) or numeric id is used as-is; a name (`CI`) is looked up.
async fn resolve_workflow(
    api: &GithubApi,
    name: &str,
    deadline: Instant,
) -> Result<String, GateError> {
    let is_file = name.ends_with(".yml") || name.ends_with(".yaml");
    if is_file || name.chars().all(|c| c.is_ascii_digit()) {
        return Ok(name.rsplit('/').next().unwrap_or(name).to_string());
    }
    let workflows = api.workflows(deadline).await?;
    let found = workflows
        .iter()
        .find(|w| w.name == name)
        .or_else(|| workflows.iter().find(|w| w.name.eq_ignore_ascii_case(name)));
    match found {
        Some(w) => Ok(w.id.to_string()),
        None => Err(GateError::UnknownWorkflow {
            name: name.into(),
            known: workflows
                .iter()
                .map(|w| format!("`{}` ({})", w.name, w.path))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: u64, attempt: u64, conclusion: &str) -> WorkflowRun {
        WorkflowRun {
            id,
            name: Some("CI".into()),
            run_number: id,
            run_attempt: attempt,
            head_sha: "x".into(),
            status: Some("completed".into()),
            conclusion: Some(conclusion.into()),
            html_url: format!("https://github.com/a/b/actions/runs/{id}"),
            event: "push".into(),
            workflow_id: 1,
            path: ".github/workflows/ci.yml".into(),
            head_repository: Some(RepositoryRef {
                full_name: "a/b".into(),
            }),
            repository: Some(RepositoryRef {
                full_name: "a/b".into(),
            }),
            head_branch: Some("main".into()),
        }
    }

    #[test]
    fn only_own_repository_runs_of_allowed_events_count() {
        let events = vec!["push".to_string(), "workflow_dispatch".to_string()];
        assert_eq!(ignored_because(&run(1, 1, "success"), &events), None);
        let mut fork = run(2, 1, "success");
        fork.head_repository = Some(RepositoryRef {
            full_name: "mallory/b".into(),
        });
        fork.event = "pull_request".into();
        let why = ignored_because(&fork, &events).unwrap();
        assert!(why.contains("mallory/b"), "{why}");
        let mut pr = run(3, 1, "success");
        pr.event = "pull_request".into();
        let why = ignored_because(&pr, &events).unwrap();
        assert!(why.contains("`pull_request`"), "{why}");
        let mut unnamed = run(4, 1, "success");
        unnamed.head_repository = None;
        assert!(ignored_because(&unnamed, &events).is_some());
    }

    #[test]
    fn the_newest_run_decides_and_our_own_run_is_ignored() {
        let runs = vec![
            run(10, 1, "failure"),
            run(12, 2, "success"),
            run(11, 1, "failure"),
        ];
        assert_eq!(deciding_run(&runs, None).unwrap().id, 12);
        assert_eq!(deciding_run(&runs, Some(12)).unwrap().id, 11);
        assert!(deciding_run(&[run(5, 1, "success")], Some(5)).is_none());
    }

    #[test]
    fn commit_choice_prefers_input_then_payload_then_github_sha() {
        let ctx = GithubContext {
            event_name: "workflow_run".into(),
            sha: "default-head".into(),
            ..Default::default()
        };
        let event = serde_json::json!({"workflow_run": {"head_sha": "tested"}});
        assert_eq!(
            choose_commit(Some("input"), &ctx, Some(&event))
                .unwrap()
                .sha,
            "input"
        );
        assert_eq!(
            choose_commit(None, &ctx, Some(&event)).unwrap().sha,
            "tested"
        );
        let push = GithubContext {
            event_name: "push".into(),
            sha: "pushed".into(),
            ..Default::default()
        };
        assert_eq!(choose_commit(None, &push, None).unwrap().sha, "pushed");
        assert!(matches!(
            choose_commit(None, &ctx, None),
            Err(GateError::NoHeadSha)
        ));
    }
}
