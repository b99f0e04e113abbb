//! `routes`: the zero-downtime switch through the host's edge (Caddy), on the rig. A loop
//! of real requests through the edge counts what users saw during each deploy.

use std::net::TcpStream;
use std::time::Duration;

use crate::support::edge::{backends, get, get_for, routed, EdgeGuard, Users};
use crate::support::rig::caddy_image;
use crate::support::stage::{App, Stage};

#[test]
fn a_routed_deploy_is_switched_through_the_edge_and_users_see_no_failure() {
    let stage = Stage::new();
    let _edge = EdgeGuard(format!("berth-edge-{}", stage.port));
    let v1 = routed(&stage, &App::new("v1").routed()).run();
    assert_eq!(v1.code, 0, "{}", v1.stdout);
    assert!(v1.stdout.contains("started the edge"), "{}", v1.stdout);
    assert_eq!(get(stage.port), (200, "v1".into()));
    std::thread::sleep(Duration::from_secs(1));

    // An app that ignores SIGTERM and takes 3 s to listen: `up` would drop requests.
    let users = Users::start(stage.port);
    let app = App::new("v2").routed().mode("ignoreterm").start_delay(3);
    let v2 = routed(&stage, &app).run();
    std::thread::sleep(Duration::from_millis(500));
    let (seen, failed) = users.stop();
    assert_eq!(v2.code, 0, "{}", v2.stdout);
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        seen.len()
    );
    assert!(seen.len() > 50, "{}", seen.len());
    // Users saw v1, then v2, never back and forth.
    let versions: Vec<&str> = seen.iter().map(|(_, v)| v.as_str()).collect();
    let first_v2 = versions.iter().position(|v| *v == "v2").expect("v2 served");
    assert!(
        versions[first_v2..].iter().all(|v| *v == "v2"),
        "{versions:?}"
    );
    assert!(
        versions[..first_v2].iter().all(|v| *v == "v1"),
        "{versions:?}"
    );
    // berth measured the same: none failed, and says so.
    assert_eq!(
        v2.output("failed-probes").as_deref(),
        Some("0"),
        "{}",
        v2.summary
    );
    assert!(v2.summary.contains("What users saw"), "{}", v2.summary);
    // The old container was drained and stopped: one backend runs, v2's.
    assert_eq!(backends(&stage), 1, "{}", v2.stdout);

    // The admin API answers nowhere outside the edge's container.
    let ip = crate::support::rig::sh(std::process::Command::new("docker").args([
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
        &format!("berth-edge-{}", stage.port),
    ]));
    let mut addrs: Vec<String> = ip.split_whitespace().map(|i| format!("{i}:2019")).collect();
    assert!(!addrs.is_empty(), "the edge has no address");
    addrs.push("127.0.0.1:2019".into());
    for addr in addrs {
        assert!(
            TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)).is_err(),
            "the edge's admin API answers at {addr}"
        );
    }
}

#[test]
fn a_candidate_that_fails_its_check_never_gets_a_user_request() {
    let stage = Stage::new();
    let _edge = EdgeGuard(format!("berth-edge-{}", stage.port));
    let v1 = routed(&stage, &App::new("v1").routed()).run();
    assert_eq!(v1.code, 0, "{}", v1.stdout);
    std::thread::sleep(Duration::from_secs(1));
    for mode in ["500", "crash"] {
        let users = Users::start(stage.port);
        let bad = routed(&stage, &App::new("bad").routed().mode(mode))
            .input("health-timeout", "6s")
            .run();
        let (seen, failed) = users.stop();
        assert_eq!(bad.code, 1, "{}", bad.stdout);
        assert_eq!(bad.output("status").as_deref(), Some("rolled-back"));
        assert!(
            failed.is_empty(),
            "{mode}: {} of {} failed: {failed:?}",
            failed.len(),
            seen.len()
        );
        // Every answer came from v1: the candidate never served a user.
        assert!(seen.iter().all(|(_, v)| v == "v1"), "{mode}: {seen:?}");
        assert!(
            bad.summary.contains("users were not affected"),
            "{}",
            bad.summary
        );
        assert_eq!(
            bad.output("failed-probes").as_deref(),
            Some("0"),
            "{}",
            bad.summary
        );
        // The candidate is gone; v1 still runs as it did.
        assert_eq!(backends(&stage), 1);
        assert_eq!(get(stage.port), (200, "v1".into()));
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn a_routed_service_that_publishes_its_port_is_an_input_error_and_nothing_changes() {
    let stage = Stage::new();
    let run = routed(&stage, &App::new("v1")).run();
    assert_eq!(run.code, 1, "{}", run.stdout);
    let errors = run.errors().join("\n");
    assert!(
        errors.contains("routes") && errors.contains("`backend` publishes port 8080"),
        "{errors}"
    );
    assert!(!stage.deploy_dir.exists());
}

#[test]
fn a_release_that_crashes_after_the_switch_is_switched_back_and_users_see_no_failure() {
    let stage = Stage::new();
    let _edge = EdgeGuard(format!("berth-edge-{}", stage.port));
    let v1 = routed(&stage, &App::new("v1").routed()).run();
    assert_eq!(v1.code, 0, "{}", v1.stdout);
    let r1 = stage.current().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let users = Users::start(stage.port);
    let bad = routed(&stage, &App::new("v2").routed().mode("dieafter"))
        .input("verdict-window", "12s")
        .run();
    std::thread::sleep(Duration::from_millis(500));
    let (seen, failed) = users.stop();
    assert_eq!(bad.code, 1, "{}", bad.stdout);
    assert_eq!(bad.output("status").as_deref(), Some("rolled-back"));
    // It was switched to, then crashed inside the verdict window.
    assert!(
        bad.stdout.contains("the edge routes to release"),
        "{}",
        bad.stdout
    );
    assert!(bad.summary.contains("crash"), "{}", bad.summary);
    assert!(
        !bad.summary.contains("users were not affected"),
        "{}",
        bad.summary
    );
    // The old containers were the fallback until the switch back: no request failed.
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        seen.len()
    );
    assert!(seen.iter().any(|(_, v)| v == "v2"), "v2 never served");
    assert_eq!(seen.last().map(|(_, v)| v.as_str()), Some("v1"));
    assert_eq!(stage.current(), Some(r1));
    assert_eq!(backends(&stage), 1);
    assert_eq!(get(stage.port), (200, "v1".into()));
}

#[test]
fn two_projects_share_one_edge_and_a_deploy_of_one_never_drops_a_request_of_the_other() {
    let a = Stage::new();
    let b = Stage::new();
    let port = a.port;
    let _edge = EdgeGuard(format!("berth-edge-{port}"));
    let on_edge = |stage: &Stage, app: &App, host: &str| {
        routed(stage, app)
            .input("edge-ports", &port.to_string())
            .input("routes", &format!("backend:8080 {host}"))
            .input(
                "health-url",
                &format!("http://{host}:{port}/cgi-bin/health"),
            )
    };
    for (stage, host) in [(&a, "127.0.0.1"), (&b, "127.0.0.2")] {
        let run = on_edge(stage, &App::new("v1").routed(), host).run();
        assert_eq!(run.code, 0, "{}", run.stdout);
    }
    assert_eq!(get_for(port, "127.0.0.2"), (200, "v1".into()));
    std::thread::sleep(Duration::from_secs(1));
    let others = Users::start_for(port, "127.0.0.2");
    let good = on_edge(&a, &App::new("v2").routed(), "127.0.0.1").run();
    assert_eq!(good.code, 0, "{}", good.stdout);
    std::thread::sleep(Duration::from_secs(1));
    let bad = on_edge(&a, &App::new("v3").routed().mode("500"), "127.0.0.1")
        .input("health-timeout", "4s")
        .run();
    assert_eq!(bad.code, 1, "{}", bad.stdout);
    let (seen, failed) = others.stop();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        seen.len()
    );
    assert!(seen.iter().all(|(_, v)| v == "v1"), "{seen:?}");
    // Each project has its own routes file in the shared edge; A's deploys left B's as is.
    let dir = std::path::PathBuf::from(std::env::var("HOME").unwrap())
        .join(format!(".berth/edge-{port}/routes"));
    let b_routes = std::fs::read_to_string(dir.join(&b.project)).unwrap();
    assert!(
        b_routes.contains("127.0.0.2") && !b_routes.contains("127.0.0.1\""),
        "{b_routes}"
    );
    assert_eq!(get_for(port, "127.0.0.1"), (200, "v2".into()));
}

#[test]
fn an_edge_upgrade_starts_the_new_proxy_beside_the_old_and_drops_no_request() {
    let stage = Stage::new();
    let name = format!("berth-edge-{}", stage.port);
    let _edge = EdgeGuard(name.clone());
    let v1 = routed(&stage, &App::new("v1").routed()).run();
    assert_eq!(v1.code, 0, "{}", v1.stdout);
    let next = format!("{}-next", caddy_image());
    crate::support::rig::sh(std::process::Command::new("docker").args([
        "tag",
        &caddy_image(),
        &next,
    ]));
    std::thread::sleep(Duration::from_secs(1));
    let users = Users::start(stage.port);
    let v2 = routed(&stage, &App::new("v2").routed())
        .input("edge-image", &next)
        .run();
    std::thread::sleep(Duration::from_millis(500));
    let (seen, failed) = users.stop();
    assert_eq!(v2.code, 0, "{}", v2.stdout);
    assert!(v2.stdout.contains("upgraded the edge"), "{}", v2.stdout);
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        seen.len()
    );
    // One proxy runs, the new image's; the holder kept the ports.
    let proxies = crate::support::rig::sh(std::process::Command::new("docker").args([
        "ps",
        "-a",
        "--filter",
        &format!("label=berth.edge.proxy={name}"),
        "--format",
        "{{.Image}}",
    ]));
    assert_eq!(proxies.trim(), next, "{proxies}");
    assert_eq!(get(stage.port), (200, "v2".into()));
}

#[test]
fn a_rollback_through_the_edge_starts_the_old_release_beside_and_drops_no_request() {
    let stage = Stage::new();
    let _edge = EdgeGuard(format!("berth-edge-{}", stage.port));
    // v1 takes 3 s to listen and ignores SIGTERM: an `up` of it would drop requests.
    let v1 = routed(
        &stage,
        &App::new("v1").routed().mode("ignoreterm").start_delay(3),
    )
    .run();
    assert_eq!(v1.code, 0, "{}", v1.stdout);
    let r1 = stage.current().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let v2 = routed(&stage, &App::new("v2").routed()).run();
    assert_eq!(v2.code, 0, "{}", v2.stdout);
    std::thread::sleep(Duration::from_secs(1));
    let users = Users::start(stage.port);
    let back = routed(&stage, &App::new("rollback").routed())
        .input("mode", "rollback")
        .run();
    std::thread::sleep(Duration::from_millis(500));
    let (seen, failed) = users.stop();
    assert_eq!(back.code, 0, "{}", back.stdout);
    assert!(
        back.stdout.contains("berth: candidates:"),
        "{}",
        back.stdout
    );
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        seen.len()
    );
    let versions: Vec<&str> = seen.iter().map(|(_, v)| v.as_str()).collect();
    let first_v1 = versions.iter().position(|v| *v == "v1").expect("v1 served");
    assert!(
        versions[..first_v1].iter().all(|v| *v == "v2"),
        "{versions:?}"
    );
    assert!(
        versions[first_v1..].iter().all(|v| *v == "v1"),
        "{versions:?}"
    );
    assert_eq!(stage.current(), Some(r1.clone()));
    assert_eq!(stage.record(&r1)["outcome"], "deployed");
    assert_eq!(
        back.output("failed-probes").as_deref(),
        Some("0"),
        "{}",
        back.summary
    );
    assert_eq!(backends(&stage), 1);
}

#[test]
fn a_health_url_the_edge_does_not_route_is_an_input_error() {
    let stage = Stage::new();
    let run = routed(&stage, &App::new("v1").routed())
        .input("routes", "backend:8080 shop.example.com")
        .run();
    assert_eq!(run.code, 1, "{}", run.stdout);
    let errors = run.errors().join("\n");
    assert!(
        errors.contains("health-url")
            && errors.contains("which no line of `routes` sends to a service"),
        "{errors}"
    );
    assert!(!stage.deploy_dir.exists());
}

/// v1 routed, then a user loop while v2's deploy is interrupted at `trigger`: what users
/// saw, and the run.
fn interrupted_v2(
    stage: &Stage,
    trigger: &str,
    act: impl FnOnce(u32),
) -> (String, crate::support::Run, Users) {
    let v1 = routed(stage, &App::new("v1").routed()).run();
    assert_eq!(v1.code, 0, "{}", v1.stdout);
    let r1 = stage.current().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let users = Users::start(stage.port);
    let b = routed(stage, &App::new("v2").routed()).input("verdict-window", "8s");
    let run = crate::interrupt::run_acting_at(&b, trigger, Duration::from_millis(500), act);
    (r1, run, users)
}

/// After an interruption: the edge routes to v1 alone, v1's one backend runs, no user
/// request failed.
fn assert_back_on_v1(stage: &Stage, r1: &str, users: Users) {
    std::thread::sleep(Duration::from_secs(1));
    let (seen, failed) = users.stop();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        seen.len()
    );
    assert_eq!(seen.last().map(|(_, v)| v.as_str()), Some("v1"));
    assert_eq!(stage.current().as_deref(), Some(r1));
    assert_eq!(backends(stage), 1);
    for _ in 0..20 {
        assert_eq!(get(stage.port), (200, "v1".into()));
    }
}

#[test]
fn sigterm_while_the_candidates_are_proven_leaves_the_edge_on_v1() {
    let stage = Stage::new();
    let _edge = EdgeGuard(format!("berth-edge-{}", stage.port));
    let (r1, run, users) = interrupted_v2(&stage, "Health of the new containers", |pid| {
        crate::support::rig::sh(
            std::process::Command::new("kill").args(["-TERM", &pid.to_string()]),
        );
    });
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert!(run.summary.contains("cancelled"), "{}", run.summary);
    assert_back_on_v1(&stage, &r1, users);
}

#[test]
fn a_connection_lost_after_the_switch_switches_back_to_v1() {
    let stage = Stage::new();
    let _edge = EdgeGuard(format!("berth-edge-{}", stage.port));
    let sshd = stage.sshd.pid().to_string();
    let (r1, run, users) = interrupted_v2(&stage, "the edge routes to release", |_| {
        crate::support::rig::sh(std::process::Command::new("pkill").args(["-9", "-P", &sshd]));
    });
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(
        run.output("status").as_deref(),
        Some("rolled-back"),
        "{}",
        run.stdout
    );
    assert!(
        run.summary.contains("lost its connection"),
        "{}",
        run.summary
    );
    assert_back_on_v1(&stage, &r1, users);
}

#[test]
fn a_berth_killed_after_the_switch_leaves_a_host_that_switches_back_by_itself() {
    let stage = Stage::new();
    let _edge = EdgeGuard(format!("berth-edge-{}", stage.port));
    let (r1, run, users) = interrupted_v2(&stage, "the edge routes to release", |pid| {
        crate::support::rig::sh(
            std::process::Command::new("kill").args(["-KILL", &pid.to_string()]),
        );
    });
    assert_eq!(run.code, -1, "killed: {}", run.stdout);
    // The edge routed to v2, under proof when berth died; the host's heal, after its wait
    // for a reconnect, routes back to v1 (one load) and removes v2's containers.
    crate::interrupt::lock_gone_within(&stage, Duration::from_secs(150));
    crate::interrupt::assert_healed_to(&stage, &r1);
    assert_back_on_v1(&stage, &r1, users);
}

#[test]
fn sigterm_in_the_verdict_window_switches_back_to_v1() {
    let stage = Stage::new();
    let _edge = EdgeGuard(format!("berth-edge-{}", stage.port));
    let (r1, run, users) = interrupted_v2(&stage, "Verdict window", |pid| {
        crate::support::rig::sh(
            std::process::Command::new("kill").args(["-TERM", &pid.to_string()]),
        );
    });
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert!(run.summary.contains("cancelled"), "{}", run.summary);
    assert_back_on_v1(&stage, &r1, users);
}

#[test]
fn a_berth_killed_while_the_candidates_are_proven_leaves_the_edge_on_v1_and_the_host_cleans_up() {
    let stage = Stage::new();
    let _edge = EdgeGuard(format!("berth-edge-{}", stage.port));
    let (r1, run, users) = interrupted_v2(&stage, "Health of the new containers", |pid| {
        crate::support::rig::sh(
            std::process::Command::new("kill").args(["-KILL", &pid.to_string()]),
        );
    });
    assert_eq!(run.code, -1, "killed: {}", run.stdout);
    // The edge never left v1; the heal removes the candidates.
    crate::interrupt::lock_gone_within(&stage, Duration::from_secs(150));
    crate::interrupt::assert_healed_to(&stage, &r1);
    assert_back_on_v1(&stage, &r1, users);
}
