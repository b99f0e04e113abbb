//! The CI gate against the fake GitHub API: every trigger is gated on CI for the exact
//! commit, with conditional requests and honest waiting.

use berth::ci_gate::{GateError, GateVerdict};
use berth::inputs::{self, GithubContext};
use berth::report::Report;

use crate::support::fake_github::*;
use crate::support::{captured_runner, workflow_run_payload, Berth, SHA};

const PAYLOAD_SHA: &str = "fedcba9876543210fedcba9876543210fedcba98";

fn push(fake: &FakeGithub) -> Berth {
    Berth::valid()
        .env("GITHUB_API_URL", &fake.url)
        .input("ci-poll-interval", "100ms")
        .input("ci-timeout", "20s")
}

/// Runs only the gate, through the library, and returns its verdict, report and log.
fn gate(b: &Berth) -> (Result<GateVerdict, GateError>, Report, String) {
    let env = b.env_map();
    let ctx = GithubContext::from_env(&env);
    let cfg = inputs::parse(&env, &ctx).expect("valid inputs");
    let (runner, out) = captured_runner();
    let mut report = Report::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let verdict = rt.block_on(berth::pipeline::ci_gate(&cfg, &ctx, &runner, &mut report));
    (verdict, report, out.text())
}

/// A workflow_run event file from GitHub's webhook example, for PAYLOAD_SHA.
fn workflow_run_event(b: Berth, conclusion: &str) -> Berth {
    b.event(
        "workflow_run",
        &workflow_run_payload(PAYLOAD_SHA, conclusion),
    )
    .checkout(PAYLOAD_SHA)
    .input("ci-workflows", "")
}

#[test]
fn workflow_run_success_passes_with_the_payload_sha_not_github_sha() {
    let fake = FakeGithub::start();
    fake.branch("master", PAYLOAD_SHA, &[]);
    let (verdict, report, log) = gate(&workflow_run_event(push(&fake), "success"));
    assert_eq!(verdict.unwrap(), GateVerdict::Passed);
    assert_eq!(report.sha.as_deref(), Some(PAYLOAD_SHA));
    assert_ne!(PAYLOAD_SHA, SHA);
    assert!(log.contains("workflow_run.head_sha"), "{log}");
    let asked: Vec<String> = fake.requests().into_iter().map(|r| r.url).collect();
    assert_eq!(
        asked,
        ["/repos/acme/shop/branches/master"],
        "the payload is the CI evidence; only the branch is asked"
    );
}

#[test]
fn workflow_run_failure_is_skipped_with_exit_0_and_a_notice() {
    let fake = FakeGithub::start();
    let run = workflow_run_event(push(&fake), "failure").run();
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.output("status").as_deref(), Some("skipped"));
    let notice = run
        .stdout
        .lines()
        .find(|l| l.starts_with("::notice"))
        .expect("a notice");
    assert!(
        notice.contains(PAYLOAD_SHA) && notice.contains("failure"),
        "{notice}"
    );
    assert!(
        notice.contains("https://github.com/octo-org/octo-repo/actions/runs/"),
        "{notice}"
    );
    assert!(run.errors().is_empty(), "{:?}", run.errors());
}

#[test]
fn push_waits_through_in_progress_polls_and_counts_304s() {
    let fake = FakeGithub::start();
    fake.workflow(1, "CI", "ci.yml").run(
        "ci.yml",
        FakeRun::new(900, SHA, &[IN_PROGRESS, IN_PROGRESS, SUCCESS]),
    );
    let (verdict, report, log) = gate(&push(&fake));
    assert_eq!(verdict.unwrap(), GateVerdict::Passed);
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 3);
    assert!(
        reqs[0].url.contains(&format!("head_sha={SHA}")),
        "{}",
        reqs[0].url
    );
    assert!(
        reqs[1].if_none_match.is_some(),
        "the second poll must be conditional"
    );
    assert_eq!(reqs[1].status, 304);
    assert_eq!((report.ci.requests, report.ci.not_modified), (3, 1));
    assert!(reqs
        .iter()
        .all(|r| r.authorization.as_deref() == Some("Bearer ghs_testtoken")));
    assert!(
        reqs.iter().all(|r| r.method == "GET" && r.body.is_empty()),
        "the gate is read-only"
    );
    assert_eq!(log.matches("ci.yml: in_progress").count(), 2, "{log}");
    assert!(
        log.starts_with("Commit ")
            && log.contains("::group::CI gate")
            && log.contains("::endgroup::")
    );
}

#[test]
fn push_whose_ci_failed_is_refused_with_the_run_url() {
    let fake = FakeGithub::start();
    fake.workflow(1, "CI", "ci.yml")
        .run("ci.yml", FakeRun::new(901, SHA, &[FAILURE]));
    let run = push(&fake).run();
    assert_eq!(run.code, 1);
    let err = run.errors().into_iter().next().expect("an error");
    assert!(
        err.contains("CI did not succeed") && err.contains("`failure`"),
        "{err}"
    );
    assert!(
        err.contains("https://github.com/acme/shop/actions/runs/901"),
        "{err}"
    );
    assert_eq!(run.output("status").as_deref(), Some("failed"));
}

#[test]
fn a_rerun_that_succeeded_counts_and_a_failed_later_attempt_fails() {
    let fake = FakeGithub::start();
    fake.workflow(1, "CI", "ci.yml")
        .run("ci.yml", FakeRun::new(700, SHA, &[FAILURE]))
        .run("ci.yml", FakeRun::new(701, SHA, &[SUCCESS]).attempt(2));
    let (verdict, report, _) = gate(&push(&fake));
    assert_eq!(verdict.unwrap(), GateVerdict::Passed);
    assert_eq!(report.ci.runs[0].attempt, 2);

    let fake = FakeGithub::start();
    fake.workflow(1, "CI", "ci.yml")
        .run("ci.yml", FakeRun::new(702, SHA, &[FAILURE]).attempt(2));
    match gate(&push(&fake)).0 {
        Err(GateError::Failed { attempt: 2, .. }) => {}
        other => panic!("a failed attempt 2 must fail: {other:?}"),
    }
}

#[test]
fn two_required_workflows_one_cancelled_fails_and_names_it() {
    let fake = FakeGithub::start();
    fake.workflow(1, "CI", "ci.yml")
        .workflow(2, "E2E", "e2e.yml")
        .run("ci.yml", FakeRun::new(800, SHA, &[SUCCESS]))
        .run("e2e.yml", FakeRun::new(801, SHA, &[IN_PROGRESS, CANCELLED]));
    let (verdict, _, _) = gate(&push(&fake).input("ci-workflows", "ci.yml, e2e.yml"));
    let err = verdict.unwrap_err();
    assert!(
        matches!(&err, GateError::Failed { workflow, conclusion, .. } if workflow == "e2e.yml" && conclusion == "cancelled"),
        "{err}"
    );
}

#[test]
fn no_run_ever_appearing_fails_after_the_discovery_window_with_guidance() {
    let fake = FakeGithub::start();
    fake.workflow(1, "CI", "ci.yml");
    let (verdict, _, _) = gate(&push(&fake).input("ci-timeout", "1s"));
    let err = verdict.unwrap_err();
    assert!(matches!(err, GateError::NoRun { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("ci.yml")
            && text.contains("names the workflow exactly")
            && text.contains("triggered"),
        "{text}"
    );
}

#[test]
fn ci_timeout_while_in_progress_says_it_timed_out() {
    let fake = FakeGithub::start();
    fake.workflow(1, "CI", "ci.yml")
        .run("ci.yml", FakeRun::new(902, SHA, &[QUEUED, IN_PROGRESS]));
    let (verdict, report, _) = gate(&push(&fake).input("ci-timeout", "1s"));
    let err = verdict.unwrap_err();
    assert!(
        matches!(&err, GateError::TimedOut { status, .. } if status == "in_progress"),
        "{err}"
    );
    assert!(err.to_string().contains("timed out") && err.to_string().contains("runs/902"));
    assert!(
        report.ci.not_modified > 0,
        "polls after the first state change are conditional"
    );
}

#[test]
fn the_current_run_is_ignored_even_on_a_later_page() {
    let fake = FakeGithub::start();
    // Our own run (GITHUB_RUN_ID 4242) is newest and never finishes; with one run a page,
    // the real CI run is only on page 2.
    fake.workflow(1, "CI", "ci.yml")
        .run("ci.yml", FakeRun::new(4242, SHA, &[IN_PROGRESS]))
        .run("ci.yml", FakeRun::new(4000, SHA, &[SUCCESS]))
        .per_page_cap(1);
    let (verdict, report, _) = gate(&push(&fake));
    assert_eq!(verdict.unwrap(), GateVerdict::Passed);
    assert_eq!(report.ci.runs[0].run_number, 4000);
    assert!(fake.requests().iter().any(|r| r.url.contains("page=2")));
}

#[test]
fn a_secondary_rate_limit_is_waited_out_then_the_gate_passes() {
    let fake = FakeGithub::start();
    fake.workflow(1, "CI", "ci.yml")
        .run("ci.yml", FakeRun::new(903, SHA, &[SUCCESS]));
    fake.fault(Fault::SecondaryRateLimit { retry_after: 2 });
    let (verdict, _, _) = gate(&push(&fake));
    assert_eq!(verdict.unwrap(), GateVerdict::Passed);
    let reqs = fake.requests();
    assert_eq!(
        reqs.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![403, 200]
    );
    let waited = reqs[1].at - reqs[0].at;
    assert!(
        waited.as_secs_f64() >= 2.0,
        "retry-after: 2 was not honoured: retried after {waited:?}"
    );
}

#[test]
fn an_exhausted_rate_limit_is_waited_out_only_if_it_resets_before_the_deadline() {
    // Resets in 1 s, well inside ci-timeout: waited out, then the gate passes.
    let fake = FakeGithub::start();
    fake.workflow(1, "CI", "ci.yml")
        .run("ci.yml", FakeRun::new(905, SHA, &[SUCCESS]));
    fake.fault(Fault::PrimaryRateLimit { reset_in: 1 });
    let (verdict, _, _) = gate(&push(&fake));
    assert_eq!(verdict.unwrap(), GateVerdict::Passed);
    assert_eq!(
        fake.requests().iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![403, 200]
    );

    // Resets in an hour, past ci-timeout (20 s): fail now, saying so, without waiting.
    let fake = FakeGithub::start();
    fake.workflow(1, "CI", "ci.yml")
        .run("ci.yml", FakeRun::new(906, SHA, &[SUCCESS]));
    fake.fault(Fault::PrimaryRateLimit { reset_in: 3600 });
    let (verdict, _, _) = gate(&push(&fake));
    let err = verdict.unwrap_err().to_string();
    assert!(
        err.contains("rate limit is exhausted") && err.contains("Re-run later"),
        "{err}"
    );
    assert_eq!(
        fake.requests().len(),
        1,
        "berth kept asking a rate-limited API"
    );
}

#[test]
fn a_server_error_is_retried_with_backoff() {
    let fake = FakeGithub::start();
    fake.workflow(1, "CI", "ci.yml")
        .run("ci.yml", FakeRun::new(904, SHA, &[SUCCESS]));
    fake.fault(Fault::ServerError);
    let (verdict, _, _) = gate(&push(&fake));
    assert_eq!(verdict.unwrap(), GateVerdict::Passed);
    assert_eq!(
        fake.requests().iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![500, 200]
    );
}

#[test]
fn a_workflow_given_by_name_is_resolved() {
    let fake = FakeGithub::start();
    fake.workflow(161335, "Continuous Integration", "ci.yml")
        .run("ci.yml", FakeRun::new(905, SHA, &[SUCCESS]));
    let (verdict, _, _) = gate(&push(&fake).input("ci-workflows", "Continuous Integration"));
    assert_eq!(verdict.unwrap(), GateVerdict::Passed);
    let reqs = fake.requests();
    assert!(
        reqs[0]
            .url
            .starts_with("/repos/acme/shop/actions/workflows?"),
        "{}",
        reqs[0].url
    );
    assert!(
        reqs[1]
            .url
            .starts_with("/repos/acme/shop/actions/workflows/161335/runs"),
        "{}",
        reqs[1].url
    );

    let fake = FakeGithub::start();
    fake.workflow(1, "CI", "ci.yml");
    let err = gate(&push(&fake).input("ci-workflows", "Tests"))
        .0
        .unwrap_err();
    assert!(
        err.to_string().contains("`CI` (.github/workflows/ci.yml)"),
        "{err}"
    );
}

#[test]
fn a_long_wait_costs_at_most_two_counted_requests() {
    // 13 polls, as in a 2-minute wait at a 10 s interval, scaled down in time: what is
    // measured is how many requests count against the rate limit, not how long it takes.
    let fake = FakeGithub::start();
    let mut script = vec![IN_PROGRESS; 12];
    script.push(SUCCESS);
    fake.workflow(1, "CI", "ci.yml")
        .run("ci.yml", FakeRun::new(906, SHA, &script));
    let (verdict, report, _) = gate(&push(&fake).input("ci-poll-interval", "50ms"));
    assert_eq!(verdict.unwrap(), GateVerdict::Passed);
    assert_eq!(report.ci.requests, 13);
    assert_eq!(
        fake.counted(),
        2,
        "{:?}",
        fake.requests().iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(report.ci.counted_requests(), 2);
}

#[test]
fn allow_untested_skips_the_gate_with_a_warning() {
    let fake = FakeGithub::start();
    let (verdict, report, _) = gate(
        &push(&fake)
            .input("ci-workflows", "")
            .input("allow-untested", "true"),
    );
    assert_eq!(verdict.unwrap(), GateVerdict::Passed);
    assert!(report
        .warnings
        .iter()
        .any(|w| w.message.contains("without checking CI")));
    assert!(fake.requests().is_empty());
}

#[test]
fn the_fixtures_carried_here_are_the_shared_ones() {
    let carried = fixtures_dir();
    for used in [
        "create-deployment-status.201.json",
        "create-deployment.201.json",
        "create-deployment.202.merged-branch.json",
        "list-workflow-runs-for-workflow.200.json",
        "webhook-workflow_run.completed.json",
    ] {
        let text = std::fs::read_to_string(carried.join(used)).expect(used);
        serde_json::from_str::<serde_json::Value>(&text).expect(used);
    }
    // Beside a checkout that has ../shared, the copy must be that, byte for byte.
    let shared =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/github-api");
    if let Ok(entries) = std::fs::read_dir(&shared) {
        for entry in entries {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap();
            assert_eq!(
                std::fs::read(&path).unwrap(),
                std::fs::read(carried.join(name)).unwrap_or_default(),
                "tests/fixtures/github-api/{} differs from ../shared; copy it again",
                name.to_string_lossy()
            );
        }
    }
}

#[test]
fn a_retry_after_too_large_for_the_clock_is_a_rate_limit_error_not_a_panic() {
    let fake = FakeGithub::start();
    fake.workflow(1, "CI", "ci.yml")
        .run("ci.yml", FakeRun::new(930, SHA, &[SUCCESS]));
    fake.fault(Fault::SecondaryRateLimit {
        retry_after: u64::MAX,
    });
    let run = push(&fake).run();
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let err = run.errors().into_iter().next().expect("an error");
    assert!(err.contains("rate limit"), "{err}");
    assert_eq!(run.output("status").as_deref(), Some("failed"));
}
