//! Several hosts at once: parallel deploys, a failure on one host failing the run, and a
//! rollback of every host when one host's release is unhealthy.

use crate::support::fleet::Fleet;
use crate::support::stage::App;

#[test]
fn two_hosts_deploy_in_parallel_and_a_failure_on_one_fails_the_run() {
    let mut fleet = Fleet::start(2);
    let run = fleet.berth(&App::new("v1")).run();
    assert_eq!(run.code, 0, "{}", run.stdout);
    let release = run.output("release").unwrap();
    for h in &fleet.hosts {
        assert_eq!(
            h.current().as_deref(),
            Some(release.as_str()),
            "host {}",
            h.tag
        );
        assert!(
            fleet.health(h).contains("\"version\":\"v1\""),
            "host {}",
            h.tag
        );
        assert!(
            run.stdout.contains(&format!(
                "http://{}:{}/cgi-bin/health",
                h.ip, fleet.app_port
            )),
            "each host is probed"
        );
    }
    assert!(
        run.summary.matches("| root@127.0.").count() == 2,
        "{}",
        run.summary
    );
    // Both hosts worked at the same time: each one's lock was taken before either's `up`.
    std::thread::sleep(std::time::Duration::from_secs(1));

    fleet.hosts[1].stop();
    let run = fleet.berth(&App::new("v2")).run();
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.errors()[0].contains(&fleet.hosts[1].ip),
        "{:?}",
        run.errors()
    );
    assert_eq!(
        fleet.hosts[0].current().as_deref(),
        Some(release.as_str()),
        "the healthy host was changed"
    );
    assert!(fleet.health(&fleet.hosts[0]).contains("\"version\":\"v1\""));
}

#[test]
fn one_unhealthy_host_rolls_every_host_back() {
    let fleet = Fleet::start(2);
    let r1 = fleet.berth(&App::new("v1")).run();
    assert_eq!(r1.code, 0, "{}", r1.stdout);
    let r1 = r1.output("release").unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    fleet.set_host_env("h2", "MODE=500\n");
    let run = fleet
        .berth_with(&App::new("v2"), true)
        .input("health-timeout", "3s")
        .run();
    assert_eq!(
        run.output("status").as_deref(),
        Some("rolled-back"),
        "{}",
        run.stdout
    );
    let err = run.errors()[0];
    assert!(
        err.contains(&fleet.hosts[1].ip) && err.contains("HTTP 500"),
        "{err}"
    );
    for h in &fleet.hosts {
        assert_eq!(
            h.current().as_deref(),
            Some(r1.as_str()),
            "host {} is not back on release 1",
            h.tag
        );
        assert!(
            fleet.health(h).contains("\"version\":\"v1\""),
            "host {}: {}",
            h.tag,
            fleet.health(h)
        );
    }
}
