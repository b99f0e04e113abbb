use super::*;

#[test]
fn digest_from_the_final_push_status() {
    let d = "sha256:".to_string() + &"ab".repeat(32);
    assert_eq!(
        parse_push_digest(&format!("staging-1: digest: {d} size: 528")),
        Some(d)
    );
    assert_eq!(parse_push_digest("Pushed"), None);
    assert_eq!(parse_push_digest("x: digest: sha256:short size: 1"), None);
}

#[test]
fn only_the_cache_lookup_race_is_built_again() {
    let id = "c5c56e9a52eebd0ac1d35f2c2a47847d0b1c8b75a447baf04b318ba89a3a7ba3";
    assert!(is_classic_cache_race(&format!(
        "unable to find image \"sha256:{id}\""
    )));
    // The same words about a base image the Dockerfile names are the user's to fix.
    assert!(!is_classic_cache_race(
        "pull access denied for nosuch, repository does not exist: unable to find image \"nosuch\""
    ));
    assert!(!is_classic_cache_race("unable to find image \"alpine:3\""));
    assert!(!is_classic_cache_race(
        "The command '/bin/sh -c exit 3' returned a non-zero code: 3"
    ));
}

#[test]
fn build_errors_say_what_to_do() {
    let hint = |m: &str| match build_error("t", m, None) {
        DockerError::Build { message, line, .. } => (message, line),
        other => panic!("{other}"),
    };
    let (m, line) = hint("dockerfile parse error line 2: unknown instruction: RUNN");
    assert_eq!(line, Some(2), "{m}");
    let (m, _) = hint("the --mount option requires BuildKit");
    assert!(
        m.contains("DOCKER_BUILDKIT") && m.contains("classic builder"),
        "{m}"
    );
    let (m, _) = hint("buildkit not supported by daemon");
    assert!(m.contains("DOCKER_BUILDKIT: 0"), "{m}");
    let (m, _) = hint("failed to solve with frontend dockerfile.v0: failed to solve with frontend gateway.v0: failed to resolve docker.io/docker/dockerfile:1");
    assert!(m.contains("# syntax="), "{m}");
    let (m, line) = hint("executor failed running [/bin/sh -c exit 3]: exit code: 3");
    assert_eq!(line, None);
    assert!(!m.contains("BuildKit"), "{m}");
}

#[test]
fn buildkit_status_renders_like_plain_progress() {
    use bollard::moby::buildkit::v1::{Vertex, VertexLog};
    let mut progress = BuildkitProgress::default();
    let mut lines = Vec::new();
    let mut on = |l: &str| lines.push(l.to_string());
    let mut copy = Vertex {
        digest: "sha256:copy".into(),
        name: "[1/3] COPY busybox /bin/busybox".into(),
        cached: true,
        ..Default::default()
    };
    let mut run = Vertex {
        digest: "sha256:run".into(),
        name: "[stage-1 2/3] RUN make".into(),
        ..Default::default()
    };
    let at = |s: i64, n: i32| {
        let mut t = Vertex::default().started.unwrap_or_default();
        t.seconds = s;
        t.nanos = n;
        Some(t)
    };
    let (t1, t2) = (at(10, 0), at(11, 500_000_000));
    run.started = t1;
    let status = |vertexes: Vec<Vertex>, logs: Vec<VertexLog>| StatusResponse {
        vertexes,
        logs,
        ..Default::default()
    };
    progress.push(&status(vec![copy.clone(), run.clone()], vec![]), &mut on);
    let log = |msg: &[u8]| VertexLog {
        vertex: "sha256:run".into(),
        msg: msg.to_vec(),
        ..Default::default()
    };
    progress.push(
        &status(vec![], vec![log(b"compiling\npar"), log(b"t 2\n")]),
        &mut on,
    );
    progress.push(&status(vec![], vec![log(b"no newline yet")]), &mut on);
    run.completed = t2;
    run.error = "exit code: 2".into();
    copy.started = t1;
    progress.push(&status(vec![copy, run], vec![]), &mut on);
    assert_eq!(
        lines,
        [
            "#1 [1/3] COPY busybox /bin/busybox",
            "#1 CACHED",
            "#2 [stage-1 2/3] RUN make",
            "#2 compiling",
            "#2 part 2",
            "#2 no newline yet",
            "#2 ERROR: exit code: 2",
        ]
    );
    assert_eq!(progress.failed_step.as_deref(), Some("RUN make"));

    let mut lines = Vec::new();
    let mut done = BuildkitProgress::default();
    let mut v = Vertex {
        digest: "d".into(),
        name: "[2/2] RUN true".into(),
        ..Default::default()
    };
    v.started = at(1, 0);
    v.completed = at(2, 500_000_000);
    done.push(&status(vec![v], vec![]), &mut |l: &str| {
        lines.push(l.to_string())
    });
    assert_eq!(lines, ["#1 [2/2] RUN true", "#1 DONE 1.5s"]);
}

#[test]
fn api_versions_compare_numerically() {
    assert!(api_at_least(Some("1.41"), 1, 39));
    assert!(api_at_least(Some("1.39"), 1, 39));
    assert!(!api_at_least(Some("1.38"), 1, 39));
    assert!(api_at_least(Some("2.0"), 1, 39));
    assert!(!api_at_least(Some("1.9"), 1, 39));
    assert!(!api_at_least(None, 1, 39));
}

#[test]
fn push_errors_are_told_apart() {
    let c = |d: &str| classify_push_error("r:5000", "r:5000/a", "r:5000/a:t", d);
    assert!(matches!(
        c("unauthorized: authentication required"),
        DockerError::Unauthorized { .. }
    ));
    assert!(matches!(
        c("denied: requested access to the resource is denied"),
        DockerError::Denied { .. }
    ));
    assert!(matches!(
        c("Get \"http://r:5000/v2/\": dial tcp 127.0.0.1:5000: connect: connection refused"),
        DockerError::RegistryUnreachable { .. }
    ));
    assert!(matches!(
        c("name unknown: repository name not known to registry"),
        DockerError::NoRepository { .. }
    ));
}

#[test]
fn an_engine_error_is_worded_by_its_status_not_as_an_unreachable_engine() {
    let refused = engine_error(bollard::errors::Error::DockerResponseServerError {
        status_code: 404,
        message: "No such image: shop/web:1".into(),
    });
    assert_eq!(
        refused.to_string(),
        "the Docker engine answered 404 (no such image or container): No such image: shop/web:1"
    );
    let title = crate::failure::image_title(&crate::images::ImageError::Engine(refused));
    assert_eq!(title, "berth: no such image");
    let conflict = engine_error(bollard::errors::Error::DockerResponseServerError {
        status_code: 409,
        message: "in use".into(),
    });
    assert!(conflict.to_string().contains("409 (conflict"), "{conflict}");
    // Only an engine that did not answer is one that cannot be reached.
    let unreachable = engine_error(bollard::errors::Error::RequestTimeoutError);
    assert!(unreachable
        .to_string()
        .starts_with("cannot reach the Docker engine"));
}
