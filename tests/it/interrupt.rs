//! A deploy interrupted at any instant leaves the proven release serving, and berth says
//! "serving and healthy" only when it is: a cancel (SIGTERM, SIGINT), a dropped connection
//! and SIGKILL, delivered while `up` recreates a container whose app ignores SIGTERM (so
//! Docker is still stopping it), and during health. After each, a loop of requests finds
//! the proven release serving, and still serving 30 s later. When berth was killed, the
//! host restored itself.

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::rig::sh;
use crate::support::stage::{http_get, App, Stage};
use crate::support::{Berth, Run};

/// Runs `b`; once a line of its output contains `trigger`, waits `delay`, then sends
/// `signal` to berth. Fails the test if the line never comes.
pub(crate) fn run_interrupting(b: &Berth, trigger: &str, delay: Duration, signal: &str) -> Run {
    run_acting_at(b, trigger, delay, |berth| {
        sh(Command::new("kill").args([&format!("-{signal}"), &berth.to_string()]));
    })
}

/// Runs `b`; once a line of its output contains `trigger`, waits `delay`, then does `act`
/// (given berth's pid). Fails the test if the line never comes.
pub(crate) fn run_acting_at(
    b: &Berth,
    trigger: &str,
    delay: Duration,
    act: impl FnOnce(u32),
) -> Run {
    let mut child = b
        .command()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (seen_tx, seen) = mpsc::channel();
    let wanted = trigger.to_string();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut said = false;
        for line in std::io::BufReader::new(stdout).split(b'\n') {
            let line = line.unwrap_or_default();
            if !said && String::from_utf8_lossy(&line).contains(&wanted) {
                said = true;
                let _ = seen_tx.send(());
            }
            all.extend_from_slice(&line);
            all.push(b'\n');
        }
        all
    });
    let came = seen.recv_timeout(Duration::from_secs(180)).is_ok();
    if came {
        std::thread::sleep(delay);
        act(child.id());
    } else {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    let mut stderr = Vec::new();
    std::io::Read::read_to_end(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let stdout = reader.join().unwrap();
    let run = b.finished(std::process::Output {
        status,
        stdout,
        stderr,
    });
    assert!(came, "`{trigger}` never came:\n{}", run.stdout);
    run
}

/// Runs `b` and sends it `signal` as soon as `ready` says so; fails the test if that
/// moment never comes.
fn signalled_when(b: &Berth, signal: &str, ready: impl Fn() -> bool) -> Run {
    let child = b
        .command()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "the moment to send {signal} never came"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    sh(Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]));
    b.finished(child.wait_with_output().unwrap())
}

/// Waits (bounded) until the host's deploy lock is gone: berth's, or its heal's.
pub(crate) fn lock_gone_within(stage: &Stage, bound: Duration) -> Duration {
    let started = Instant::now();
    let lock = stage.deploy_dir.join(".berth/lock");
    while lock.exists() {
        assert!(
            started.elapsed() < bound,
            "the host still holds its lock after {bound:?}: {:?}",
            std::fs::read_to_string(lock.join("holder.json"))
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    started.elapsed()
}

/// A loop of real requests for `secs` (one every 250 ms): every answer must be `version`'s
/// healthy one. Returns how many there were.
fn serves_for(stage: &Stage, version: &str, secs: u64) -> usize {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut n = 0;
    let mut failed = Vec::new();
    while Instant::now() < end {
        let (code, body) = http_get(&stage.health_url());
        n += 1;
        if code != 200 || !body.contains(&format!("\"version\":\"{version}\"")) {
            failed.push(format!(
                "{code} {}",
                body.chars().take(80).collect::<String>()
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        failed.is_empty(),
        "{} of {n} requests did not get {version}: {failed:?}",
        failed.len()
    );
    n
}

/// The note the host's self-heal left, if any.
pub(crate) fn healed_note(stage: &Stage) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(stage.deploy_dir.join(".berth/healed.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// The note, which must say the heal proved `release` (the log of the heal otherwise).
pub(crate) fn assert_healed_to(stage: &Stage, release: &str) {
    let note = healed_note(stage).expect("the heal left no note");
    let log = std::fs::read_to_string(stage.deploy_dir.join(".berth/heal.log")).unwrap_or_default();
    assert_eq!(note["restored"], release, "{note}\n{log}");
    assert_eq!(note["proven"], true, "{note}\n{log}");
}

/// v1 deployed (an app that ignores SIGTERM: each `up` spends 10 s stopping it), and
/// the deploy of v2 that will be interrupted.
fn v1_then_v2(stage: &Stage, mode: &'static str) -> (String, Berth) {
    let r1 = stage
        .deploy_ok(&App::new("v1").mode(mode))
        .output("release")
        .unwrap();
    let b = stage
        .berth(&App::new("v2").mode(mode))
        .input("health-timeout", "60s");
    (r1, b)
}

#[test]
fn sigterm_mid_stop_of_an_app_that_ignores_sigterm_leaves_v1_serving_and_claims_nothing_false() {
    cancelled_in_up_leaves_v1_serving("Recreate", Duration::from_secs(2), "TERM");
}

#[test]
fn sigint_just_after_started_leaves_v1_serving_and_claims_nothing_false() {
    cancelled_in_up_leaves_v1_serving("Started", Duration::ZERO, "INT");
}

fn cancelled_in_up_leaves_v1_serving(at: &str, delay: Duration, signal: &str) {
    let stage = Stage::new();
    let (r1, b) = v1_then_v2(&stage, "ignoreterm");
    let run = run_interrupting(&b, at, delay, signal);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout.contains("title=berth%3A cancelled::"),
        "{}",
        run.stdout
    );
    // berth cannot have proven the restore in the runner's grace while Docker still
    // stopped v1's container: it must not say it is serving.
    if !run.stdout.contains("is serving and healthy") {
        assert_ne!(run.output("status").as_deref(), Some("rolled-back"));
    }
    lock_gone_within(&stage, Duration::from_secs(150));
    assert_eq!(stage.current().as_deref(), Some(r1.as_str()));
    serves_for(&stage, "v1", 30);
}

#[test]
fn sigkill_mid_stop_leaves_a_host_that_restores_itself_and_the_next_run_says_so() {
    let stage = Stage::new();
    let (r1, b) = v1_then_v2(&stage, "ignoreterm");
    let run = run_interrupting(&b, "Recreate", Duration::from_secs(3), "KILL");
    assert_eq!(run.code, -1, "killed: {}", run.stdout);
    let r2 = run.output("release");
    // Within the bound the README names: the reconnect wait, then settle, up, steady.
    let took = lock_gone_within(&stage, Duration::from_secs(150));
    assert_healed_to(&stage, &r1);
    assert_eq!(stage.current().as_deref(), Some(r1.as_str()));
    serves_for(&stage, "v1", 30);
    eprintln!("the host healed itself {took:?} after the lock was first seen");
    // What v2 left pending is `interrupted`, never proven.
    let v2 = stage
        .releases()
        .into_iter()
        .find(|r| *r != r1)
        .expect("v2's release dir");
    assert!(r2.is_none() || r2.as_deref() == Some(v2.as_str()));
    assert_eq!(stage.record(&v2)["outcome"], "interrupted");
    // The next run reports what the host did, once.
    let next = stage.berth(&App::new("v3").mode("ignoreterm")).run();
    assert_eq!(next.code, 0, "{}", next.stdout);
    assert!(
        next.stdout
            .contains("title=berth%3A the previous run was interrupted::")
            && next
                .stdout
                .contains(&format!("restored release {r1} by itself")),
        "{}",
        next.stdout
    );
    assert!(next.summary.contains("the previous run was interrupted"));
    assert!(healed_note(&stage).is_none());
}

#[test]
fn a_connection_dropped_mid_stop_reconnects_and_proves_v1_serving_before_saying_so() {
    let stage = Stage::new();
    let (r1, b) = v1_then_v2(&stage, "ignoreterm");
    let sshd_pid = stage.sshd.pid().to_string();
    // The sshd processes serving berth go 2 s after `Recreate`.
    let run = run_acting_at(&b, "Recreate", Duration::from_secs(2), |_| {
        sh(Command::new("pkill").args(["-9", "-P", &sshd_pid]));
    });
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(
        run.output("status").as_deref(),
        Some("rolled-back"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("title=berth%3A connection to the host lost::"),
        "{}",
        run.stdout
    );
    // Not "failed its health check": the cause is the connection.
    assert!(
        run.summary.contains("lost its connection to the host"),
        "{}",
        run.summary
    );
    assert!(!stage.deploy_dir.join(".berth/lock").exists());
    assert_eq!(stage.current().as_deref(), Some(r1.as_str()));
    serves_for(&stage, "v1", 30);
}

#[test]
fn sigkill_during_health_of_an_app_that_stops_at_once_heals_the_host() {
    let stage = Stage::new();
    let r1 = stage.deploy_ok(&App::new("v1")).output("release").unwrap();
    let b = stage
        .berth(&App::new("v2").mode("500"))
        .input("health-timeout", "60s");
    let run = run_interrupting(&b, "HTTP 500", Duration::from_millis(500), "KILL");
    assert_eq!(run.code, -1, "{}", run.stdout);
    // v2 was switched in and unproven; the host goes back to v1 by itself.
    lock_gone_within(&stage, Duration::from_secs(150));
    assert_healed_to(&stage, &r1);
    assert_eq!(stage.current().as_deref(), Some(r1.as_str()));
    serves_for(&stage, "v1", 30);
}

#[test]
fn a_registry_that_stops_sending_mid_pull_fails_with_its_cause_and_frees_the_lock() {
    let stage = Stage::new();
    let r1 = stage.deploy_ok(&App::new("v1")).output("release").unwrap();
    let before = stage.state();
    let b = stage
        .berth(&App::new("v2"))
        .input("pull-stall-timeout", "5s");
    let registry = stage.registry.pid().to_string();
    let lock = stage.deploy_dir.join(".berth/lock");
    let (run, froze) = std::thread::scope(|s| {
        // The host's login is the first request to the registry once berth holds the lock
        // (the push is over by then): freeze it right after that, so the login works and
        // the pull gets nothing.
        let freezer = s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(120);
            let logins = || {
                std::fs::read_to_string(&stage.registry.log)
                    .unwrap_or_default()
                    .matches("\"GET /v2/ HTTP/1.1\" 200")
                    .count()
            };
            while !lock.exists() {
                if Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let before = logins();
            while logins() == before {
                if Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            sh(Command::new("kill").args(["-STOP", &registry]));
            true
        });
        let run = b.run();
        (run, freezer.join().unwrap())
    });
    sh(Command::new("kill").args(["-CONT", &registry]));
    assert!(froze, "berth never took the lock:\n{}", run.stdout);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout
            .contains("title=berth%3A the registry stopped sending::"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("no progress for 5 s"), "{}", run.stdout);
    assert!(run.stdout.contains("`backend`"), "{}", run.stdout);
    assert!(
        !run.summary.contains("fix the pre-deploy"),
        "{}",
        run.summary
    );
    assert!(!lock.exists());
    stage.assert_unchanged(&before, "v1");
    assert_eq!(stage.current().as_deref(), Some(r1.as_str()));
}

/// The throwaway registry logins (`/tmp/berth-docker-config.*`) on the host.
fn registry_logins() -> Vec<String> {
    std::fs::read_dir("/tmp")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("berth-docker-config."))
        .collect()
}

#[test]
fn a_run_cancelled_or_killed_while_the_host_pulls_leaves_no_registry_credential() {
    let stage = Stage::new();
    stage.deploy_ok(&App::new("v1"));
    let before = registry_logins();
    let registry = stage.registry.pid().to_string();
    for signal in ["TERM", "KILL"] {
        let b = stage.berth(&App::new(&format!("v2-{signal}")));
        let lock = stage.deploy_dir.join(".berth/lock");
        // Freeze the registry once the push is over (berth holds the lock), so the host
        // sits in its pull, logged in, when berth is stopped.
        let freezer = std::thread::spawn({
            let lock = lock.clone();
            let registry = registry.clone();
            move || {
                let deadline = Instant::now() + Duration::from_secs(120);
                while !lock.exists() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                sh(Command::new("kill").args(["-STOP", &registry]));
            }
        });
        let run = signalled_when(&b, signal, || {
            sh(Command::new("ps").args(["-eo", "args"])).contains(" pull --ignore-buildable")
        });
        freezer.join().unwrap();
        // What it left is for the host's session to clean up: give it its bound.
        let deadline = Instant::now() + Duration::from_secs(40);
        let mut left = registry_logins();
        left.retain(|l| !before.contains(l));
        while !left.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            left = registry_logins();
            left.retain(|l| !before.contains(l));
        }
        sh(Command::new("kill").args(["-CONT", &registry]));
        assert!(
            left.is_empty(),
            "{signal}: a registry login stayed on the host: {left:?}\n{}",
            run.stdout
        );
        // A cancelled run releases its lock; a killed one's session marks it abandoned
        // (nothing had changed, so there is nothing to heal), and the next deploy takes it.
        let deadline = Instant::now() + Duration::from_secs(60);
        while lock.exists() && !lock.join("abandoned").exists() {
            assert!(
                Instant::now() < deadline,
                "{signal}: the lock was neither released nor abandoned"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // Nothing was switched: v1 serves.
        serves_for(&stage, "v1", 2);
    }
}
