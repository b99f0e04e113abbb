//! Reporting: golden job summaries and annotations for the four outcomes, the GitHub
//! Deployment sequence, and secret hygiene end to end.

use std::process::Command;
use std::time::Duration;

use regex::Regex;

use crate::support::fake_github::FakeGithub;
use crate::support::rig::sh;
use crate::support::stage::{App, Stage};
use crate::support::{fake_private_key, Berth, Run};

/// Replaces what differs between runs (digests, ids, ports, paths, times, counts).
fn normalise(text: &str) -> String {
    let mut t = text.to_string();
    for (re, with) in [
        (
            r"<details>[\s\S]*?</details>",
            "<details>DIAGNOSTICS</details>",
        ),
        // What the background probe met depends on timing (how long `up` left nothing
        // listening).
        (
            r"(?s)### What users saw\n.*?(\n### |\n<details>|\z)",
            "### What users saw\n\nMEASURED\n$1",
        ),
        (r"sha256:[0-9a-f]{64}", "sha256:DIGEST"),
        (r"SHA256:[A-Za-z0-9+/]{43}", "SHA256:FINGERPRINT"),
        (r"\d{8}T\d{6}Z-[0-9a-f]{7}", "RELEASE"),
        (r"127\.0\.0\.1:\d+", "LOCALHOST:PORT"),
        (r"/tmp/\.tmp[A-Za-z0-9]+", "/TMP"),
        (r"berth-test-\d+", "berth-test-N"),
        (r"\b\d+(\.\d+)?\b", "N"),
        // What the attempts before the first answer met depends on how fast the app's
        // container started listening (a refused connection or two on a busy machine).
        (r"attempt\(s\) \([^)]*\)", "attempt(s) (REASONS)"),
        (r"(healthy after N s); last failure at N s: [^\n]*", "$1."),
        (
            r"attempt\(s\) in N\.\d+s: N [A-Za-z ]+(, N [A-Za-z ]+)*",
            "attempt(s) in N.Ns: REASONS",
        ),
    ] {
        t = Regex::new(re).unwrap().replace_all(&t, with).to_string();
    }
    t
}

fn annotations(run: &Run) -> String {
    run.stdout
        .lines()
        .filter(|l| {
            l.starts_with("::error") || l.starts_with("::warning") || l.starts_with("::notice")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Compares with tests/golden/<name>; `BERTH_BLESS=1` rewrites the file.
fn golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let actual = normalise(actual);
    if std::env::var("BERTH_BLESS").is_ok() {
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing; run with BERTH_BLESS=1", path.display()));
    assert_eq!(
        actual, expected,
        "{name} differs from its golden file (BERTH_BLESS=1 rewrites it)"
    );
}

#[test]
fn golden_summaries_and_annotations_for_each_outcome() {
    let stage = Stage::new();
    let first_failure = stage
        .berth(&App::new("v0").mode("500"))
        .input("health-timeout", "2s")
        .run();
    assert_eq!(first_failure.output("status").as_deref(), Some("failed"));
    assert!(
        first_failure.summary.contains("first deploy"),
        "{}",
        first_failure.summary
    );
    golden("failed-first-deploy.summary.md", &first_failure.summary);
    golden(
        "failed-first-deploy.annotations.txt",
        &annotations(&first_failure),
    );
    std::thread::sleep(Duration::from_secs(1));

    let deployed = stage.berth(&App::new("v1")).run();
    assert_eq!(
        deployed.output("status").as_deref(),
        Some("deployed"),
        "{}",
        deployed.stdout
    );
    golden("deployed.summary.md", &deployed.summary);
    golden("deployed.annotations.txt", &annotations(&deployed));
    std::thread::sleep(Duration::from_secs(1));

    let rolled = stage
        .berth(&App::new("v2").mode("500"))
        .input("health-timeout", "2s")
        .run();
    assert_eq!(rolled.output("status").as_deref(), Some("rolled-back"));
    assert!(
        rolled.summary.contains("<details>") && rolled.summary.contains("database unavailable")
            || rolled.summary.contains("<details>")
    );
    golden("rolled-back.summary.md", &rolled.summary);
    golden("rolled-back.annotations.txt", &annotations(&rolled));

    let payload =
        crate::support::workflow_run_payload("3484a3fb816e0859fd6e1cea078d76385ff50625", "failure");
    let skipped = Berth::valid()
        .input("ci-workflows", "")
        .event("workflow_run", &payload)
        .run();
    assert_eq!(skipped.output("status").as_deref(), Some("skipped"));
    golden("skipped.summary.md", &skipped.summary);
    golden("skipped.annotations.txt", &annotations(&skipped));
}

fn with_github(stage: &Stage, app: &App, fake: &FakeGithub) -> Berth {
    stage
        .berth(app)
        .input("create-deployment", "true")
        .env("GITHUB_API_URL", &fake.url)
}

fn states(fake: &FakeGithub) -> Vec<String> {
    fake.deployment_requests()
        .iter()
        .map(|(m, path, body)| {
            if path.ends_with("/statuses") {
                body["state"].as_str().unwrap_or("?").to_string()
            } else {
                format!("{m} deployment")
            }
        })
        .collect()
}

#[test]
fn deployment_status_sequences_for_deployed_rolled_back_and_internal_error() {
    let stage = Stage::new();
    let fake = FakeGithub::start();
    let run = with_github(&stage, &App::new("v1"), &fake).run();
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(
        states(&fake),
        vec!["POST deployment", "in_progress", "success"]
    );
    let reqs = fake.deployment_requests();
    let create = &reqs[0].2;
    assert_eq!(create["ref"], crate::support::SHA);
    assert_eq!(create["auto_merge"], false);
    assert_eq!(create["required_contexts"], serde_json::json!([]));
    assert_eq!(create["environment"], "staging");
    assert!(reqs[0].1.ends_with("/repos/acme/shop/deployments"));
    assert_eq!(
        reqs[2].2["environment_url"],
        format!("http://127.0.0.1:{}/", stage.port)
    );
    assert_eq!(
        reqs[2].2["log_url"],
        "https://github.com/acme/shop/actions/runs/4242"
    );
    assert!(reqs.iter().all(|r| r.2["description"]
        .as_str()
        .is_none_or(|d| d.chars().count() <= 140)));
    assert_eq!(run.output("deployment-id").as_deref(), Some("1001"));
    std::thread::sleep(Duration::from_secs(1));

    let fake = FakeGithub::start();
    let run = with_github(&stage, &App::new("v2").mode("500"), &fake)
        .input("health-timeout", "2s")
        .run();
    assert_eq!(run.output("status").as_deref(), Some("rolled-back"));
    assert_eq!(
        states(&fake),
        vec!["POST deployment", "in_progress", "failure"]
    );

    let fake = FakeGithub::start();
    let other = crate::support::rig::Sshd::start();
    let run = with_github(&stage, &App::new("v3"), &fake)
        .input("host-fingerprints", &other.host_key.fingerprint())
        .run();
    assert_eq!(run.code, 1);
    assert_eq!(
        states(&fake),
        vec!["POST deployment", "in_progress", "error"]
    );
}

#[test]
fn a_deployment_answered_202_auto_merged_warns_and_deploys() {
    let stage = Stage::new();
    let fake = FakeGithub::start();
    fake.merge_instead_of_deploying();
    let run = with_github(&stage, &App::new("v1"), &fake).run();
    assert_eq!(run.code, 0, "{}", run.stdout);
    let w = run
        .stdout
        .lines()
        .find(|l| l.contains("GitHub Deployment not created"))
        .expect("a warning");
    assert!(
        w.starts_with("::warning") && w.contains("Auto-merged"),
        "{w}"
    );
    let posts = fake.deployment_requests();
    assert_eq!(
        posts.len(),
        1,
        "no status is posted for a deployment that does not exist: {posts:?}"
    );
    assert_eq!(run.output("deployment-id").as_deref(), Some(""));
    assert_eq!(run.output("status").as_deref(), Some("deployed"));
}

#[test]
fn without_deployments_permission_berth_warns_and_deploys() {
    let stage = Stage::new();
    let fake = FakeGithub::start();
    fake.forbid_deployments();
    let run = with_github(&stage, &App::new("v1"), &fake).run();
    assert_eq!(run.code, 0, "{}", run.stdout);
    let w = run
        .stdout
        .lines()
        .find(|l| l.contains("Deployments not permitted"))
        .expect("a warning");
    assert!(
        w.starts_with("::warning") && w.contains("deployments: write"),
        "{w}"
    );
    assert_eq!(
        fake.deployment_requests().len(),
        1,
        "a refused deployment must not be retried"
    );
    assert_eq!(run.output("deployment-id").as_deref(), Some(""));
}

#[test]
fn dry_run_creates_nothing_and_changes_nothing() {
    let stage = Stage::new();
    let fake = FakeGithub::start();
    let run = with_github(&stage, &App::new("v1"), &fake)
        .input("dry-run", "true")
        .input("pre-deploy", "backend: sh /migrate.sh")
        .run();
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.output("status").as_deref(), Some("skipped"));
    assert!(fake.deployment_requests().is_empty());
    assert!(
        run.stdout.contains("would run: [root@127.0.0.1:")
            && run.stdout.contains("backend sh /migrate.sh"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("would build backend"), "{}", run.stdout);
    assert!(run.stdout.contains("redacted"));
    assert!(!stage.deploy_dir.join(".berth/releases").exists() || stage.releases().is_empty());
    assert!(!stage.deploy_dir.join(".berth/lock").exists());
    let (_, catalog) = stage.registry.api("/v2/_catalog");
    assert!(
        !catalog.contains("shop-backend"),
        "a dry run pushed: {catalog}"
    );
}

const SECRETS: [&str; 6] = [
    "SshKeyBodyMarker",
    "passphrase-marker-5521",
    "ghs_githubtoken_marker_9913",
    "envvalue-marker-4417",
    "header-marker-6630",
    "REGPW",
];

#[test]
fn secrets_never_leak_in_deployed_rolled_back_or_invalid_runs() {
    let stage = Stage::with_sshd(crate::support::rig::Sshd::start_with(
        "ed25519",
        "ed25519",
        "passphrase-marker-5521",
    ));
    let fake = FakeGithub::start();
    let registry_pw = stage.registry.password.clone();
    let secrets: Vec<String> = SECRETS
        .iter()
        .map(|s| {
            if *s == "REGPW" {
                registry_pw.clone()
            } else {
                s.to_string()
            }
        })
        .collect();
    let configure = |b: Berth| {
        b.input("ssh-key-passphrase", "passphrase-marker-5521")
            .input("github-token", "ghs_githubtoken_marker_9913")
            .input(
                "env-file",
                "DATABASE_URL=postgresql://app:envvalue-marker-4417@db/shop\nGREETING=hello\n",
            )
            .input("health-headers", "Authorization: Bearer header-marker-6630")
            .input("create-deployment", "true")
            .env("GITHUB_API_URL", &fake.url)
    };
    let done = std::sync::atomic::AtomicBool::new(false);
    let (runs, snapshots) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut snaps = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                snaps.push(sh(Command::new("ps").args(["-eo", "args"])));
                std::thread::sleep(Duration::from_millis(25));
            }
            snaps
        });
        let ok = configure(stage.berth(&App::new("v1"))).run();
        std::thread::sleep(Duration::from_secs(1));
        let rolled = configure(stage.berth(&App::new("v2").mode("500")))
            .input("health-timeout", "2s")
            .run();
        let invalid = configure(stage.berth(&App::new("v3")))
            .input("ssh-key", &fake_private_key("SshKeyBodyMarker"))
            .input("hosts", "deploy@:22")
            .run();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (vec![ok, rolled, invalid], sampler.join().unwrap())
    });
    assert_eq!(
        runs[0].output("status").as_deref(),
        Some("deployed"),
        "{}",
        runs[0].stdout
    );
    assert_eq!(runs[1].output("status").as_deref(), Some("rolled-back"));
    assert_eq!(runs[2].code, 1);
    let key_text = stage.sshd.user_key.private_text();
    let key_lines: Vec<&str> = key_text
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 20)
        .collect();
    let mut places: Vec<(String, String)> = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let printed: String = run
            .everything()
            .lines()
            .filter(|l| !l.starts_with("::add-mask::"))
            .collect::<Vec<_>>()
            .join("\n");
        places.push((format!("run {i} output"), printed));
    }
    for id in stage.releases() {
        places.push((
            format!("release.json {id}"),
            std::fs::read_to_string(
                stage
                    .deploy_dir
                    .join(format!(".berth/releases/{id}/release.json")),
            )
            .unwrap(),
        ));
    }
    places.push(("ps snapshots".into(), snapshots.join("\n")));
    places.push((
        "bodies sent to GitHub".into(),
        fake.requests()
            .iter()
            .map(|r| r.body.clone())
            .collect::<Vec<_>>()
            .join("\n"),
    ));
    for (place, text) in &places {
        for secret in secrets
            .iter()
            .map(String::as_str)
            .chain(key_lines.iter().copied())
        {
            assert!(
                !text.contains(secret),
                "secret `{secret}` leaked into {place}"
            );
        }
    }
    assert!(snapshots.len() > 20);
    use std::os::unix::fs::PermissionsExt;
    for id in stage.releases() {
        let mode = std::fs::metadata(stage.deploy_dir.join(format!(".berth/releases/{id}/.env")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{id}/.env");
    }
}
