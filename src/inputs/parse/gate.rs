//! The CI gate's inputs: `github-token`, `ci-*`, `sha`, `branches`, `events`.

use std::sync::LazyLock;

use regex::Regex;

use super::Parser;
use crate::inputs::context::GithubContext;
use crate::inputs::grammar::list_items;
use crate::inputs::settings::{GateSettings, Mode};
use crate::secret::Secret;

// Patterns are compiled once, on first use; clippy's `invalid_regex` lint checks each
// literal, so the `expect`s cannot fire.
static FULL_SHA: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[0-9a-f]{40}$").expect("built-in regex"));

static EVENT_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z_]+$").expect("built-in regex"));

pub(super) fn parse_gate(p: &mut Parser, ctx: &GithubContext, mode: Mode) -> GateSettings {
    let github_token = Secret::new(p.text("github-token"));
    let ci_workflows = list_items(&p.raw("ci-workflows"));
    let allow_untested = p.bool("allow-untested");
    let ci_timeout = p.duration("ci-timeout", "30m");
    let ci_poll_interval = p.duration("ci-poll-interval", "10s");
    let gate = GateSettings {
        github_token,
        ci_workflows,
        allow_untested,
        ci_timeout,
        ci_poll_interval,
        sha: read_sha(p),
        branches: read_branches(p),
        events: read_events(p),
    };
    check_ci_is_proven(p, ctx, mode, &gate);
    gate
}

fn read_sha(p: &mut Parser) -> Option<String> {
    let sha = Some(p.text("sha")).filter(|s| !s.is_empty());
    if let Some(s) = &sha {
        if !FULL_SHA.is_match(s) {
            p.fail("sha", format!("`{s}` is not a full 40-character commit sha, e.g. `sha: ${{{{ github.sha }}}}`."));
        }
    }
    sha
}

fn read_branches(p: &mut Parser) -> Vec<String> {
    let branches = list_items(&p.raw("branches"));
    for b in &branches {
        if b.starts_with('!') {
            p.fail(
                "branches",
                format!("`{b}`: berth has no exclusion patterns; list the branches that may deploy, e.g. `main, release/*`."),
            );
        } else if let Err(e) = globset::Glob::new(b) {
            p.fail(
                "branches",
                format!("`{b}` is not a glob pattern ({e}). Use branch names or patterns, e.g. `main, release/*`."),
            );
        }
    }
    branches
}

fn read_events(p: &mut Parser) -> Vec<String> {
    let events = list_items(&p.raw("events"));
    if events.is_empty() {
        p.fail(
            "events",
            "is empty, so no event could deploy. Use e.g. `events: push, workflow_dispatch`.",
        );
    }
    for e in &events {
        if !EVENT_NAME.is_match(e) {
            p.fail(
                "events",
                format!("`{e}` is not a GitHub event name, e.g. `push`, `workflow_dispatch` or `schedule`."),
            );
        }
    }
    events
}

/// A deploy needs a CI gate (or `allow-untested`), and the gate needs a token.
fn check_ci_is_proven(p: &mut Parser, ctx: &GithubContext, mode: Mode, gate: &GateSettings) {
    if mode == Mode::Deploy
        && gate.ci_workflows.is_empty()
        && !gate.allow_untested
        && ctx.event_name != "workflow_run"
    {
        p.fail(
            "ci-workflows",
            format!(
                "is empty, so nothing proves this commit passed CI on a `{}` event. Name the CI workflow, \
                 e.g. `ci-workflows: ci.yml`, or trigger berth `on: workflow_run`. To deploy untested code \
                 on purpose, set `allow-untested: true`.",
                if ctx.event_name.is_empty() { "local" } else { &ctx.event_name }
            ),
        );
    }
    if mode == Mode::Deploy
        && !gate.allow_untested
        && gate.github_token.is_empty()
        && !gate.ci_workflows.is_empty()
    {
        p.fail("github-token", "is empty, so the CI gate cannot read workflow runs. Use the default `${{ github.token }}` with `permissions: actions: read`.");
    }
}
