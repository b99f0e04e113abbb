//! The trust boundary: only this repository's own code, from an allowed event and branch,
//! and exactly the commit whose CI was checked, reaches a host. The fake GitHub serves
//! payloads for a fork's pull request, a same-repository pull request, a push on another
//! branch and a dispatch; refusals are checked against the real registry and sshd.

use berth::ci_gate::{GateError, GateVerdict};
use berth::inputs::{self, GithubContext};
use berth::report::Report;

use crate::support::fake_github::*;
use crate::support::stage::{App, Stage};
use crate::support::{captured_runner, workflow_run_payload, Berth, Run, SHA};

/// Runs only the gate, through the library.
fn gate(b: &Berth) -> Result<GateVerdict, GateError> {
    gate_report(b, &mut Report::default())
}

/// The gate, recording into `report`.
fn gate_report(b: &Berth, report: &mut Report) -> Result<GateVerdict, GateError> {
    let env = b.env_map();
    let ctx = GithubContext::from_env(&env);
    let cfg = inputs::parse(&env, &ctx).expect("valid inputs");
    let (runner, _) = captured_runner();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(berth::pipeline::ci_gate(&cfg, &ctx, &runner, report))
}

fn fork_payload() -> serde_json::Value {
    let mut event = workflow_run_payload(SHA, "success");
    event["workflow_run"]["event"] = "pull_request".into();
    event["workflow_run"]["head_repository"]["full_name"] = "mallory/octo-repo".into();
    // The fork's own `master`: a branch name says nothing about whose code it is.
    event["workflow_run"]["head_branch"] = "master".into();
    event
}

/// The one warning of a refused run, after checking it ended `skipped` with exit 0.
fn refusal(run: &Run) -> String {
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.output("status").as_deref(), Some("skipped"));
    assert!(run.errors().is_empty(), "{:?}", run.errors());
    let warnings: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("::warning"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("title=berth%3A deploy refused"),
        "{}",
        warnings[0]
    );
    warnings[0].to_string()
}

/// Nothing was built or pushed, no host was contacted, nothing on it exists.
fn assert_untouched(stage: &Stage) {
    let (_, catalog) = stage.registry.api("/v2/_catalog");
    assert!(
        catalog.contains("\"repositories\":[]"),
        "something was pushed: {catalog}"
    );
    assert!(!stage.deploy_dir.exists(), "the deploy dir was created");
    let log = stage.sshd.log_text();
    assert!(
        !log.contains("Connection from") && !log.contains("Accepted"),
        "the host was contacted:\n{log}"
    );
}

#[test]
fn a_forks_pull_request_under_workflow_run_is_refused_and_nothing_happens() {
    let stage = Stage::new();
    for (events, branches) in [("", ""), ("push, pull_request", "**")] {
        let mut b = stage
            .berth(&App::new("fork"))
            .event("workflow_run", &fork_payload())
            .input("allow-untested", "false")
            .input("sha", "")
            .input("images", "backend=backend/Dockerfile");
        if !events.is_empty() {
            b = b.input("events", events).input("branches", branches);
        }
        let run = b.run();
        let warning = refusal(&run);
        assert!(
            warning.contains("mallory/octo-repo")
                && warning.contains("never deploys code from another repository"),
            "{warning}"
        );
        assert!(
            run.summary.contains("deploy refused") && run.summary.contains("mallory/octo-repo"),
            "the summary says why:\n{}",
            run.summary
        );
        assert!(run.summary.contains("refused"), "{}", run.summary);
        assert_untouched(&stage);
    }
}

#[test]
fn a_same_repository_pull_request_is_refused_by_default_and_allowed_by_events() {
    let fake = FakeGithub::start();
    let mut event = workflow_run_payload(SHA, "success");
    event["workflow_run"]["event"] = "pull_request".into();
    fake.branch("master", SHA, &[]);
    let b = Berth::valid()
        .env("GITHUB_API_URL", &fake.url)
        .event("workflow_run", &event)
        .input("ci-workflows", "");
    let run = b.run();
    let warning = refusal(&run);
    assert!(
        warning.contains("`pull_request` event")
            && warning.contains("events: push, workflow_dispatch, pull_request"),
        "{warning}"
    );
    assert!(
        fake.requests().is_empty(),
        "a refused run asks GitHub nothing"
    );
    let allowed = b.input("events", "push, workflow_dispatch, pull_request");
    assert_eq!(gate(&allowed).unwrap(), GateVerdict::Passed);
}

#[test]
fn a_push_on_another_branch_is_refused_and_branches_allows_it() {
    let fake = FakeGithub::start();
    fake.workflow(1, "CI", "ci.yml")
        .run("ci.yml", FakeRun::new(800, SHA, &[SUCCESS]));
    let b = Berth::valid()
        .env("GITHUB_API_URL", &fake.url)
        .git_ref("refs/heads/feature/login")
        .input("ci-poll-interval", "100ms");
    let warning = refusal(&b.run());
    assert!(
        warning.contains("branch `feature/login` may not deploy")
            && warning.contains("`main` (the default branch)")
            && warning.contains("branches: main, feature/login"),
        "{warning}"
    );
    assert!(
        fake.requests().is_empty(),
        "refused before the CI gate asks"
    );
    assert_eq!(
        gate(&b.input("branches", "main\nfeature/*")).unwrap(),
        GateVerdict::Passed
    );
}

#[test]
fn a_dispatch_deploys_from_the_default_branch_only() {
    let fake = FakeGithub::start();
    fake.workflow(1, "CI", "ci.yml")
        .run("ci.yml", FakeRun::new(801, SHA, &[SUCCESS]));
    let payload = serde_json::json!({
        "inputs": {}, "ref": "refs/heads/main",
        "repository": {"full_name": "acme/shop", "default_branch": "main"}
    });
    let b = Berth::valid()
        .env("GITHUB_API_URL", &fake.url)
        .event("workflow_dispatch", &payload)
        .input("ci-poll-interval", "100ms");
    assert_eq!(gate(&b).unwrap(), GateVerdict::Passed);
    let warning = refusal(&b.git_ref("refs/heads/hotfix").run());
    assert!(
        warning.contains("branch `hotfix` may not deploy"),
        "{warning}"
    );
}

#[test]
fn pull_request_runs_for_the_same_sha_do_not_open_the_gate() {
    let fake = FakeGithub::start();
    fake.workflow(1, "CI", "ci.yml")
        .run("ci.yml", FakeRun::new(905, SHA, &[FAILURE]))
        .run(
            "ci.yml",
            FakeRun::new(910, SHA, &[SUCCESS]).forked("mallory/shop"),
        )
        .run("ci.yml", FakeRun::new(911, SHA, &[SUCCESS]).pull_request());
    let b = Berth::valid()
        .env("GITHUB_API_URL", &fake.url)
        .input("ci-poll-interval", "100ms");
    match gate(&b) {
        Err(GateError::Failed { run_number, .. }) => assert_eq!(run_number, 905),
        other => panic!("the push run (failed) must decide, not a PR's: {other:?}"),
    }

    let only_prs = FakeGithub::start();
    only_prs
        .workflow(1, "CI", "ci.yml")
        .run(
            "ci.yml",
            FakeRun::new(910, SHA, &[SUCCESS]).forked("mallory/shop"),
        )
        .run("ci.yml", FakeRun::new(911, SHA, &[SUCCESS]).pull_request());
    let run = Berth::valid()
        .env("GITHUB_API_URL", &only_prs.url)
        .input("ci-poll-interval", "100ms")
        .input("ci-timeout", "1s")
        .run();
    assert_eq!(run.code, 1, "{}", run.stdout);
    let err = run.errors()[0];
    assert!(
        err.contains("no CI run found") && err.contains("2 ignored"),
        "{err}"
    );
    assert!(
        err.contains("mallory/shop, not this repository") && err.contains("`pull_request` run"),
        "{err}"
    );
}

#[test]
fn the_workspace_must_be_the_gated_commit() {
    let stage = Stage::new();
    let other = "1111111111111111111111111111111111111111";
    let run = stage.berth(&App::new("ws")).checkout(other).run();
    assert_eq!(run.code, 1, "{}", run.stdout);
    let err = run.errors()[0];
    assert!(
        err.contains("workspace is not the gated commit")
            && err.contains(other)
            && err.contains(SHA),
        "{err}"
    );
    assert!(
        err.contains("ref: ${{ github.event.workflow_run.head_sha"),
        "the fix is named: {err}"
    );
    assert_untouched(&stage);

    let b = stage.berth(&App::new("ws"));
    std::fs::remove_dir_all(b.workspace().join(".git")).unwrap();
    let run = b.run();
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.errors()[0].contains("has no `.git`") && run.errors()[0].contains("actions/checkout"),
        "{}",
        run.errors()[0]
    );
    assert_untouched(&stage);
}

#[test]
fn a_symlink_out_of_the_workspace_is_refused_as_an_input_error() {
    let b = Berth::valid().input("images", "web=web/Dockerfile,context=ctx");
    let ws = b.workspace();
    std::fs::remove_file(ws.join("docker-compose.staging.yml")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", ws.join("docker-compose.staging.yml")).unwrap();
    std::fs::create_dir_all(ws.join("web")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", ws.join("web/Dockerfile")).unwrap();
    std::os::unix::fs::symlink("/etc", ws.join("ctx")).unwrap();
    let run = b.run();
    assert_eq!(run.code, 1);
    let errors = run.errors().join("\n");
    assert!(
        errors.contains("invalid input compose-file") && errors.contains("outside the workspace"),
        "{errors}"
    );
    assert!(
        errors.contains("the Dockerfile of `web`") && errors.contains("the build context of `web`"),
        "{errors}"
    );
}

#[test]
fn under_workflow_run_an_explicit_sha_must_be_the_tested_one() {
    let other = "2222222222222222222222222222222222222222";
    let run = Berth::valid()
        .event("workflow_run", &workflow_run_payload(SHA, "success"))
        .input("ci-workflows", "")
        .input("sha", other)
        .checkout(other)
        .run();
    assert_eq!(run.code, 1, "{}", run.stdout);
    let err = run.errors()[0];
    assert!(
        err.contains("not the one CI tested") && err.contains(other) && err.contains(SHA),
        "{err}"
    );
}

#[test]
fn a_tag_named_like_an_allowed_branch_is_not_that_branch() {
    // `git tag main <sha>; git push origin refs/tags/main`: GITHUB_REF_NAME is `main`.
    let fake = FakeGithub::start();
    fake.workflow(1, "CI", "ci.yml")
        .run("ci.yml", FakeRun::new(802, SHA, &[SUCCESS]));
    let tag = || {
        Berth::valid()
            .env("GITHUB_API_URL", &fake.url)
            .git_ref("refs/tags/main")
            .input("ci-poll-interval", "100ms")
    };
    for b in [
        tag(),
        // No glob lets a tag through: `branches` names branches.
        tag().input("branches", "**"),
        // A dispatch on a tag names the tag's ref too.
        tag().event(
            "workflow_dispatch",
            &serde_json::json!({"ref": "refs/tags/main", "inputs": {},
                "repository": {"full_name": "acme/shop", "default_branch": "main"}}),
        ),
    ] {
        let warning = refusal(&b.run());
        assert!(
            warning.contains("`refs/tags/main` is not a branch")
                && warning.contains("a tag `main` is not the branch `main`"),
            "{warning}"
        );
    }
    // A pull request's merge ref is no branch either.
    let pr = tag()
        .git_ref("refs/pull/7/merge")
        .input("events", "push, pull_request")
        .env("GITHUB_EVENT_NAME", "pull_request");
    assert!(refusal(&pr.run()).contains("`refs/pull/7/merge` is not a branch"));
    assert!(
        fake.requests().is_empty(),
        "refused before the CI gate asks"
    );
}

/// A workflow_run whose CI run tested `sha` on something named `head_branch`.
fn workflow_run_on(b: Berth, head_branch: &str) -> Berth {
    let mut event = workflow_run_payload(SHA, "success");
    event["workflow_run"]["head_branch"] = head_branch.into();
    event["repository"]["default_branch"] = "main".into();
    b.event("workflow_run", &event).input("ci-workflows", "")
}

#[test]
fn under_workflow_run_head_sha_must_be_on_the_branch_head_branch_names() {
    let main_head = "3333333333333333333333333333333333333333";
    let older = "4444444444444444444444444444444444444444";
    let fake = FakeGithub::start();
    fake.branch("main", main_head, &[older]);
    let b = workflow_run_on(Berth::valid().env("GITHUB_API_URL", &fake.url), "main");

    // A tag `main` at unreviewed code: the CI run's head_branch says `main` as well.
    let warning = refusal(&b.run());
    assert!(
        warning.contains(&format!("commit {SHA} is not on branch `main`"))
            && warning.contains(main_head)
            && warning.contains("`diverged`"),
        "{warning}"
    );
    let asked: Vec<String> = fake.requests().into_iter().map(|r| r.url).collect();
    assert_eq!(
        asked,
        [
            "/repos/acme/shop/branches/main".to_string(),
            format!("/repos/acme/shop/compare/{main_head}...{SHA}?per_page=1"),
        ],
        "the compare's base is the branch's head sha, never the name a tag can answer to"
    );

    // The branch's head, or a commit the branch has moved past, is on it.
    let at_head = FakeGithub::start();
    at_head.branch("main", SHA, &[]);
    let b = workflow_run_on(Berth::valid().env("GITHUB_API_URL", &at_head.url), "main");
    assert_eq!(gate(&b).unwrap(), GateVerdict::Passed);
    let behind = FakeGithub::start();
    behind.branch("main", main_head, &[older, SHA]);
    let b = workflow_run_on(Berth::valid().env("GITHUB_API_URL", &behind.url), "main");
    assert_eq!(gate(&b).unwrap(), GateVerdict::Passed);

    // No such branch at all (only a tag has the name).
    let none = FakeGithub::start();
    let b = workflow_run_on(Berth::valid().env("GITHUB_API_URL", &none.url), "main");
    assert!(refusal(&b.run()).contains("the repository has no branch `main`"));

    // GitHub unreachable: it cannot be proven, so nothing deploys, naming both.
    let run = workflow_run_on(Berth::valid(), "main").run();
    assert_eq!(run.code, 1, "{}", run.stdout);
    let err = run.errors()[0];
    assert!(
        err.contains(&format!(
            "cannot prove that commit {SHA} is on branch `main`"
        )),
        "{err}"
    );
}

#[test]
fn branch_in_tags_under_workflow_run_is_the_proven_head_branch_not_github_ref_name() {
    let fake = FakeGithub::start();
    fake.branch("release/1.2", SHA, &[]);
    let b = workflow_run_on(
        Berth::valid().env("GITHUB_API_URL", &fake.url),
        "release/1.2",
    )
    .input("branches", "release/*")
    .input("tags", "{branch}-{short_sha}\n{branch}-latest")
    // Under workflow_run the runner's ref is the default branch's.
    .git_ref("refs/heads/main");
    let mut report = Report::default();
    assert_eq!(gate_report(&b, &mut report).unwrap(), GateVerdict::Passed);
    let env = b.env_map();
    let ctx = GithubContext::from_env(&env);
    let cfg = inputs::parse(&env, &ctx).expect("valid inputs");
    assert_eq!(report.branch.as_deref(), Some("release/1.2"));
    let short = &SHA[..7];
    for (immutable, want) in [
        (true, format!("release-1.2-{short}")),
        (false, "release-1.2-latest".to_string()),
    ] {
        let tags = berth::images::expand_tags(&cfg.build, &ctx, SHA, immutable, &mut report);
        assert_eq!(tags, [want], "never `main`");
    }
}

#[test]
fn under_act_push_without_a_default_branch_the_warning_names_both_ways_through() {
    // act's own push payload: a ref, but no `repository.default_branch`.
    let run = Berth::valid()
        .event("push", &serde_json::json!({"ref": "refs/heads/main"}))
        .run();
    let warning = refusal(&run);
    assert!(
        warning.contains("branches: main") && warning.contains("act push -e event.json"),
        "{warning}"
    );
    assert!(warning.contains("repository.default_branch"), "{warning}");
}
