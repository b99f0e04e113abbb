//! Building and pushing through the Docker Engine API, on the real engine and registry.

use std::path::Path;
use std::process::Command;

use crate::support::rig::{busybox_image, sh, Registry, Sshd};
use crate::support::stage::{App, Stage};
use crate::support::Berth;

/// A real host for the build tests: berth connects and runs preflight before it builds or
/// pushes anything, so the host must pass those. Its deploy lock is held by another
/// deploy, so the run then stops at the lock (after a 1 s wait), right after the push,
/// and never pulls anything.
fn with_host(b: Berth, sshd: &Sshd) -> Berth {
    let deploy = b.workspace().with_file_name("deploy");
    let lock = deploy.join(".berth/lock");
    std::fs::create_dir_all(&lock).unwrap();
    std::fs::write(
        lock.join("holder.json"),
        r#"{"token":"t","run_url":"","actor":"another-deploy","sha":"0000000","started_at":"now"}"#,
    )
    .unwrap();
    std::fs::write(lock.join("heartbeat"), "").unwrap();
    b.input("lock-timeout", "1s")
        .input("hosts", &sshd.host())
        .input("ssh-key", &sshd.user_key.private_text())
        .input("host-fingerprints", &sshd.host_key.fingerprint())
        .input("deploy-dir", deploy.to_str().unwrap())
        .input(
            "project-name",
            &format!("berth-build-{}", crate::support::rig::free_port()),
        )
}

/// A build-only run: see [`with_host`].
fn build_run(
    registry: &Registry,
    images: &str,
    setup: impl FnOnce(&Path),
) -> (Berth, crate::support::Run) {
    build_run_on(registry, images, "", setup)
}

/// `build_run` with `DOCKER_BUILDKIT` set to `buildkit` (empty: berth chooses).
fn build_run_on(
    registry: &Registry,
    images: &str,
    buildkit: &str,
    setup: impl FnOnce(&Path),
) -> (Berth, crate::support::Run) {
    let sshd = Sshd::start();
    let b = with_host(Berth::valid(), &sshd)
        .env("DOCKER_BUILDKIT", buildkit)
        .input("allow-untested", "true")
        .input("ci-workflows", "")
        .input("create-deployment", "false")
        .input("registry", &registry.addr)
        .input("registry-username", &registry.user)
        .input("registry-password", &registry.password)
        .input("images", images)
        .input("build-args", "GREETING=from-build-arg");
    setup(&b.workspace());
    let run = b.run();
    (b, run)
}

fn write(ws: &Path, rel: &str, body: &str) {
    let p = ws.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
}

fn with_busybox(ws: &Path, dir: &str) {
    std::fs::create_dir_all(ws.join(dir)).unwrap();
    std::fs::copy("/bin/busybox", ws.join(dir).join("busybox")).unwrap();
}

const PREAMBLE: &str = "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n";

#[test]
fn frontend_and_backend_are_built_with_build_args_and_target_and_pushed_by_digest() {
    let registry = Registry::start();
    let (_, run) = build_run(
        &registry,
        "frontend=frontend/Dockerfile\nbackend=backend/Dockerfile,target=prod",
        |ws| {
            with_busybox(ws, "frontend");
            with_busybox(ws, "backend");
            write(
                ws,
                "frontend/Dockerfile",
                &format!("{PREAMBLE}ARG GREETING\nRUN echo \"$GREETING\" > /greeting\n"),
            );
            write(ws, "backend/Dockerfile", &format!("{PREAMBLE}FROM scratch AS prod\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo prod > /stage\"]\nFROM scratch AS debug\nCOPY busybox /bin/debug\n"));
        },
    );
    // The run goes on to the host, whose lock another deploy holds, and stops there.
    assert_eq!(run.code, 1);
    assert!(
        run.errors()[0].contains("deploy lock is held"),
        "{:?}",
        run.errors()
    );
    let images: serde_json::Value = serde_json::from_str(&run.output("images").unwrap()).unwrap();
    for svc in ["frontend", "backend"] {
        let pinned = images[svc]
            .as_str()
            .unwrap_or_else(|| panic!("no digest for {svc}: {}", run.stdout));
        let digest = pinned.split('@').nth(1).unwrap();
        let repo = format!("acme/shop-{svc}");
        let tag = format!("staging-{}", crate::support::SHA);
        assert_eq!(
            registry.digest_of(&repo, &tag).as_deref(),
            Some(digest),
            "{repo}:{tag}"
        );
        // A moving tag moves only once a deploy proved healthy; this one never ran.
        assert_eq!(registry.digest_of(&repo, "staging-latest"), None, "{repo}");
        let labels = sh(Command::new("docker").args([
            "image",
            "inspect",
            "-f",
            "{{json .Config.Labels}}",
            pinned,
        ]));
        let labels: serde_json::Value = serde_json::from_str(&labels).unwrap();
        assert_eq!(
            labels["org.opencontainers.image.revision"],
            crate::support::SHA
        );
        assert_eq!(
            labels["org.opencontainers.image.source"],
            "https://github.com/acme/shop"
        );
        assert!(labels["org.opencontainers.image.created"]
            .as_str()
            .is_some_and(|c| c.len() >= 20));
    }
    let greeting = sh(Command::new("docker").args([
        "run",
        "--rm",
        images["frontend"].as_str().unwrap(),
        "cat",
        "/greeting",
    ]));
    assert_eq!(greeting.trim(), "from-build-arg");
    let stage = sh(Command::new("docker").args([
        "run",
        "--rm",
        "--entrypoint",
        "/bin/busybox",
        images["backend"].as_str().unwrap(),
        "cat",
        "/stage",
    ]));
    assert_eq!(stage.trim(), "prod", "the `target` stage was not built");
    assert!(
        run.stdout.contains("::group::Build frontend")
            && run.stdout.contains("::group::Push backend")
    );
}

#[test]
fn dockerignore_keeps_a_file_out_of_the_context() {
    let registry = Registry::start();
    let (_, run) = build_run(&registry, "app=app/Dockerfile", |ws| {
        with_busybox(ws, "app");
        write(ws, "app/.dockerignore", "secret.txt\n");
        write(ws, "app/secret.txt", "do not ship");
        write(ws, "app/kept.txt", "ship");
        write(ws, "app/Dockerfile", &format!("{PREAMBLE}COPY . /ctx\nRUN test -f /ctx/kept.txt && test ! -e /ctx/secret.txt && echo context-ok\n"));
    });
    assert!(run.stdout.contains("context-ok"), "{}", run.stdout);
}

#[test]
fn a_dockerfile_syntax_error_is_annotated_on_the_file_and_nothing_is_pushed() {
    let registry = Registry::start();
    let (_, run) = build_run(&registry, "web=web/Dockerfile", |ws| {
        write(ws, "web/Dockerfile", "FROM scratch\nRUNN echo broken\n");
    });
    assert_eq!(run.code, 1);
    let err = run.errors()[0];
    assert!(
        err.starts_with("::error file=web/Dockerfile,line=2,title=berth%3A building web failed::"),
        "{err}"
    );
    assert!(err.to_lowercase().contains("unknown instruction"), "{err}");
    let (_, catalog) = registry.api("/v2/_catalog");
    assert!(!catalog.contains("shop-web"), "{catalog}");
}

#[test]
fn a_wrong_registry_password_fails_clearly_and_pushes_nothing() {
    let registry = Registry::start();
    let sshd = Sshd::start();
    let b = with_host(Berth::valid(), &sshd)
        .input("allow-untested", "true")
        .input("ci-workflows", "")
        .input("registry", &registry.addr)
        .input("registry-username", &registry.user)
        .input("registry-password", "wrong-password")
        .input("images", "app=app/Dockerfile");
    with_busybox(&b.workspace(), "app");
    write(&b.workspace(), "app/Dockerfile", PREAMBLE);
    let run = b.run();
    let err = run.errors()[0];
    assert!(
        err.contains("registry rejected the credentials") && err.contains("(401)"),
        "{err}"
    );
    let (_, catalog) = registry.api("/v2/_catalog");
    assert!(!catalog.contains("shop-app"), "{catalog}");
}

#[test]
fn a_registry_that_is_down_is_named_in_the_error() {
    let mut registry = Registry::start();
    registry.stop();
    let (_, run) = build_run(&registry, "app=app/Dockerfile", |ws| {
        with_busybox(ws, "app");
        write(ws, "app/Dockerfile", PREAMBLE);
    });
    let err = run.errors()[0];
    assert!(
        err.contains("registry unreachable") && err.contains(&registry.addr),
        "{err}"
    );
}

#[test]
fn an_unchanged_image_pushed_again_uploads_no_blob() {
    let registry = Registry::start();
    let local = busybox_image("berth-blob-count:latest", "CMD [\"true\"]", &[]);
    let repo = format!("{}/acme/blobs", registry.addr);
    let auth = berth::docker::RegistryAuth {
        server: registry.addr.clone(),
        username: registry.user.clone(),
        password: berth::secret::Secret::new(registry.password.clone()),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = rt
        .block_on(berth::docker::Engine::connect(Default::default()))
        .unwrap();
    rt.block_on(engine.tag(&local, &repo, "one")).unwrap();
    let first = rt
        .block_on(engine.push(&repo, "one", &auth, |_| {}))
        .unwrap();
    let after_first = registry.blob_uploads();
    assert!(
        after_first >= 2,
        "the first push uploaded {after_first} blobs"
    );
    rt.block_on(engine.tag(&local, &repo, "two")).unwrap();
    let second = rt
        .block_on(engine.push(&repo, "two", &auth, |_| {}))
        .unwrap();
    assert_eq!(first, second, "one image, one digest");
    assert_eq!(
        registry.blob_uploads(),
        after_first,
        "the second push uploaded blobs"
    );
}

#[test]
fn a_buildkit_only_dockerfile_builds_on_buildkit_and_the_classic_builder_says_why_not() {
    let registry = Registry::start();
    // No `# syntax=` line: that would pull docker/dockerfile from Docker Hub.
    let dockerfile = format!("{PREAMBLE}RUN --mount=type=cache,target=/cache,id=berth-test-cache echo cached > /cache/seen && cat /cache/seen && echo cache-mount-ok\n");
    let setup = |ws: &Path| {
        with_busybox(ws, "app");
        write(ws, "app/Dockerfile", &dockerfile);
    };

    // The rig's engine (20.10, API 1.41) has BuildKit, so berth uses it.
    let (_, run) = build_run(&registry, "app=app/Dockerfile", setup);
    assert!(
        run.stdout.contains("building with BuildKit"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with('#') && l.ends_with("cache-mount-ok")),
        "the RUN --mount step's output, streamed as BuildKit reports it:\n{}",
        run.stdout
    );
    let digest = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("app: {}/acme/shop-app@", registry.addr)))
        .unwrap_or_else(|| panic!("no pushed digest:\n{}", run.stdout))
        .to_string();
    let (status, _) = registry.api(&format!("/v2/acme/shop-app/manifests/{digest}"));
    assert_eq!(status, 200, "the pushed manifest {digest}");

    // DOCKER_BUILDKIT=0 forces the classic builder, which cannot build it.
    let (_, run) = build_run_on(&registry, "app=app/Dockerfile", "0", setup);
    assert!(
        run.stdout
            .contains("building with Classic (DOCKER_BUILDKIT=0"),
        "{}",
        run.stdout
    );
    assert_eq!(run.code, 1);
    let err = run.errors()[0];
    assert!(
        err.starts_with("::error file=app/Dockerfile,line=4,title=berth%3A building app failed::"),
        "{err}"
    );
    assert!(
        err.contains("needs BuildKit") && err.contains("DOCKER_BUILDKIT"),
        "{err}"
    );
}

#[test]
fn a_failing_run_step_is_annotated_on_its_line_by_either_builder() {
    let registry = Registry::start();
    for buildkit in ["1", "0"] {
        let (_, run) = build_run_on(&registry, "web=web/Dockerfile", buildkit, |ws| {
            with_busybox(ws, "web");
            write(
                ws,
                "web/Dockerfile",
                &format!("{PREAMBLE}RUN echo before-the-failure\nRUN echo about to fail && \\\n    exit 3\nRUN echo never\n"),
            );
        });
        assert_eq!(run.code, 1, "{}", run.stdout);
        let err = run.errors()[0];
        assert!(
            err.starts_with(
                "::error file=web/Dockerfile,line=5,title=berth%3A building web failed::"
            ),
            "DOCKER_BUILDKIT={buildkit}: {err}"
        );
        // BuildKit: `exit code: 3`; classic: `returned a non-zero code: 3`.
        assert!(
            err.contains("exit code: 3") || err.contains("non-zero code: 3"),
            "DOCKER_BUILDKIT={buildkit}: {err}"
        );
        assert!(
            err.contains("about to fail"),
            "the last lines of output: {err}"
        );
        let (_, catalog) = registry.api("/v2/_catalog");
        assert!(!catalog.contains("shop-web"), "{catalog}");
    }
}

#[test]
fn dry_run_builds_and_pushes_nothing() {
    let stage = Stage::new();
    let run = stage.berth(&App::new("v1")).input("dry-run", "true").run();
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(
        run.stdout
            .contains("would build backend from backend/Dockerfile"),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("::group::Build"),
        "a dry run built an image"
    );
}
