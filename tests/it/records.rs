//! Release records are what rollback trusts: each names its own digests and outcome, and a
//! rollback goes to the newest release proven healthy, never to one that failed, was
//! rolled back or was interrupted.

use std::process::Command;
use std::time::Duration;

use crate::support::rig::sh;
use crate::support::stage::{App, Stage};

fn images_output(run: &crate::support::Run) -> serde_json::Value {
    serde_json::from_str(&run.output("images").expect("images output")).unwrap()
}

#[test]
fn a_rolled_back_release_records_its_own_digests_and_can_be_restored_by_name() {
    let stage = Stage::new();
    let v1 = stage.deploy_ok(&App::new("v1"));
    let r1 = v1.output("release").unwrap();
    let v2 = stage
        .berth(&App::new("v2").mode("500"))
        .input("health-timeout", "3s")
        .run();
    assert_eq!(
        v2.output("status").as_deref(),
        Some("rolled-back"),
        "{}",
        v2.stdout
    );
    let r2 = v2.output("release").unwrap();
    let record = stage.record(&r2);
    assert_eq!(record["outcome"], "rolled-back");
    assert_eq!(
        record["images"],
        images_output(&v2),
        "v2's record names v2's digests"
    );
    assert_ne!(record["images"], stage.record(&r1)["images"]);
    for hash in ["compose_sha256", "env_sha256"] {
        let h = record[hash].as_str().unwrap_or("");
        assert!(
            h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()),
            "{hash}: {h}"
        );
    }
    assert_eq!(stage.record(&r1)["outcome"], "deployed");
    std::thread::sleep(Duration::from_secs(1));

    // Named explicitly, the broken release is restored, with a warning, by its own images.
    let run = stage
        .berth(&App::new("v2"))
        .input("mode", "rollback")
        .input("release", &r2)
        .input("health-timeout", "2s")
        .run();
    let warning = run
        .stdout
        .lines()
        .find(|l| l.contains("never proved healthy"))
        .unwrap_or_else(|| panic!("no warning:\n{}", run.stdout));
    assert!(
        warning.contains(&r2) && warning.contains("`rolled-back`"),
        "{warning}"
    );
    assert!(
        run.stdout.contains("verified"),
        "verify passed: {}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("do not match"),
        "the restored release runs its own digests: {}",
        run.stdout
    );
    assert_eq!(stage.current().as_deref(), Some(r2.as_str()));
    let running: Vec<String> = stage.running().into_values().collect();
    for (svc, pinned) in record["images"].as_object().unwrap() {
        let id = Stage::image_id(pinned.as_str().unwrap());
        assert!(running.contains(&id), "{svc} does not run {pinned}");
    }
}

#[test]
fn rollback_goes_to_the_newest_proven_release_past_failed_and_interrupted_ones() {
    let stage = Stage::new();
    let r1 = stage.deploy_ok(&App::new("v1")).output("release").unwrap();
    let v2 = stage
        .berth(&App::new("v2").mode("500"))
        .input("health-timeout", "3s")
        .run();
    assert_eq!(v2.output("status").as_deref(), Some("rolled-back"));
    std::thread::sleep(Duration::from_secs(1));

    // v3 is broken too, and its run is cancelled (SIGTERM) while its health is probed:
    // the release was never proven, so the newest proven one serves again before berth
    // exits.
    let (child, log, r3, v3) = switched_in(&stage, "v3", &r1, &[]);
    sh(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    let run = v3.finished(child.wait_with_output().unwrap());
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(run.code, 1, "{text}");
    assert_eq!(
        run.output("status").as_deref(),
        Some("rolled-back"),
        "{text}"
    );
    assert_eq!(run.output("release").as_deref(), Some(r3.as_str()));
    assert!(run.summary.contains("cancelled"), "{}", run.summary);
    assert!(text.contains("title=berth%3A cancelled::"), "{text}");
    assert_eq!(stage.current().as_deref(), Some(r1.as_str()), "{text}");
    assert!(stage.health().1.contains("\"version\":\"v1\""));
    assert_eq!(stage.record(&r3)["outcome"], "rolled-back");
    std::thread::sleep(Duration::from_secs(1));

    // v3k is killed outright (SIGKILL) during health, with `rollback: off` (so the host
    // does not heal itself: it is left as it is). Its remote session ends with it: the
    // record says interrupted, and the lock is marked abandoned, so the next deploy takes
    // it at once (no 90 s wait for a stale heartbeat).
    let (mut child, _, r3k, _v3k) = switched_in(&stage, "v3k", &r1, &[("rollback", "off")]);
    sh(Command::new("kill").args(["-KILL", &child.id().to_string()]));
    let _ = child.wait();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stage.record(&r3k)["outcome"] != "interrupted" {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            stage.record(&r3k)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(stage.deploy_dir.join(".berth/lock/abandoned").exists());
    std::thread::sleep(Duration::from_secs(1));

    // A broken deploy now (current is the interrupted r3k) restores r1, the newest proven.
    let broken = stage
        .berth(&App::new("v3b").mode("500"))
        .input("health-timeout", "3s")
        .input("lock-timeout", "2s")
        .run();
    assert!(
        broken.stdout.contains("session ended without releasing it"),
        "{}",
        broken.stdout
    );
    assert_eq!(
        broken.output("status").as_deref(),
        Some("rolled-back"),
        "{}",
        broken.stdout
    );
    assert_eq!(stage.current().as_deref(), Some(r1.as_str()));
    assert!(stage.health().1.contains("\"version\":\"v1\""));
    std::thread::sleep(Duration::from_secs(1));

    let v4 = stage.deploy_ok(&App::new("v4"));
    let r4 = v4.output("release").unwrap();
    let run = stage.roll_back(None);
    assert_eq!(
        run.output("release").as_deref(),
        Some(r1.as_str()),
        "{}",
        run.stdout
    );
    assert_eq!(stage.current().as_deref(), Some(r1.as_str()));
    assert!(stage.health().1.contains("\"version\":\"v1\""));
    // The list it chose from, with each release's outcome.
    for (id, outcome) in [(&r1, "deployed"), (&r4, "deployed (current)")] {
        assert!(
            run.stdout.contains(&format!("release {id} {outcome}")),
            "{id} {outcome}:\n{}",
            run.stdout
        );
    }
    assert!(
        run.stdout.contains("rolled-back") && run.stdout.contains("interrupted"),
        "{}",
        run.stdout
    );
}

/// Starts a deploy of a broken `version` (health 500, a long health timeout) in the
/// background and waits until it has switched `current` away from `previous`: the run,
/// its log file and its release (and its workspace, which must outlive the run).
fn switched_in(
    stage: &Stage,
    version: &str,
    previous: &str,
    inputs: &[(&str, &str)],
) -> (
    std::process::Child,
    std::path::PathBuf,
    String,
    crate::support::Berth,
) {
    let log = stage.deploy_dir.with_file_name(format!("{version}.log"));
    let mut berth = stage
        .berth(&App::new(version).mode("500"))
        .input("health-timeout", "60s");
    for (name, value) in inputs {
        berth = berth.input(name, value);
    }
    let child = berth
        .command()
        // Unread, a pipe would fill and stall berth mid-build.
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while stage.current().is_none_or(|c| c == previous) {
        assert!(
            std::time::Instant::now() < deadline,
            "{version} was never switched in:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (child, log, stage.current().unwrap(), berth)
}

/// The digest a pinned `repo@sha256:...` names.
fn digest_in(images: &serde_json::Value, service: &str) -> String {
    images[service]
        .as_str()
        .and_then(|r| r.split_once('@'))
        .map(|(_, d)| d.to_string())
        .unwrap()
}

#[test]
fn a_moving_tag_always_names_what_serves() {
    let stage = Stage::new();
    let v1 = stage.deploy_ok(&App::new("v1"));
    let v1_digest = digest_in(&images_output(&v1), "backend");
    let latest = || {
        stage
            .registry
            .digest_of("acme/shop-backend", "staging-latest")
    };
    assert_eq!(latest().as_deref(), Some(v1_digest.as_str()));
    assert!(
        v1.stdout.contains("staging-latest -> sha256:"),
        "moved after health: {}",
        v1.stdout
    );

    let v2 = stage
        .berth(&App::new("v2").mode("500"))
        .input("health-timeout", "3s")
        .run();
    assert_eq!(v2.output("status").as_deref(), Some("rolled-back"));
    let v2_digest = digest_in(&images_output(&v2), "backend");
    assert_ne!(v2_digest, v1_digest);
    assert_eq!(
        latest().as_deref(),
        Some(v1_digest.as_str()),
        "staging-latest must still name the release that serves"
    );
}

#[test]
fn a_wrong_host_key_pushes_nothing() {
    let stage = Stage::new();
    stage.deploy_ok(&App::new("v1"));
    let tags = || {
        let (_, response) = stage.registry.api("/v2/acme/shop-backend/tags/list");
        response.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
    };
    let latest = stage
        .registry
        .digest_of("acme/shop-backend", "staging-latest");
    let before = tags();
    assert!(before.contains("staging-latest"), "{before}");
    let other = crate::support::rig::Sshd::start();
    let run = stage
        .berth(&App::new("v2"))
        .input("tags", "staging-{sha}-v2\nstaging-latest")
        .input("host-fingerprints", &other.host_key.fingerprint())
        .run();
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.errors()[0].contains("host key"), "{:?}", run.errors());
    assert!(
        !run.stdout.contains("Build backend"),
        "nothing is built either"
    );
    assert_eq!(tags(), before, "the registry's tags changed");
    assert_eq!(
        stage
            .registry
            .digest_of("acme/shop-backend", "staging-latest"),
        latest
    );
}

#[test]
fn a_host_without_room_fails_preflight_before_anything_is_pushed() {
    let stage = Stage::new();
    std::fs::create_dir_all(&stage.deploy_dir).unwrap();
    let tiny = crate::support::rig::Tmpfs::mount(&stage.deploy_dir, "16k");
    let run = stage.berth(&App::new("v1")).run();
    drop(tiny);
    assert_eq!(run.code, 1, "{}", run.stdout);
    let err = run.errors()[0];
    assert!(
        err.contains("failed preflight")
            && err.contains("free on")
            && err.contains("Nothing was pushed"),
        "{err}"
    );
    let (_, catalog) = stage.registry.api("/v2/_catalog");
    assert!(catalog.contains("\"repositories\":[]"), "{catalog}");
    // One `connect` row, which says it failed (not an ok row and a failed one).
    let rows: Vec<&str> = run
        .summary
        .lines()
        .filter(|l| l.starts_with("| connect |"))
        .collect();
    assert_eq!(rows.len(), 1, "{}", run.summary);
    assert!(rows[0].contains("❌"), "{}", rows[0]);
}

#[test]
fn a_full_disk_during_upload_says_so_names_the_file_and_switches_nothing() {
    let stage = Stage::new();
    std::fs::create_dir_all(&stage.deploy_dir).unwrap();
    let _disk = crate::support::rig::Tmpfs::mount(&stage.deploy_dir, "40m");
    let r1 = stage.deploy_ok(&App::new("v1")).output("release").unwrap();

    // A compose file larger than the space left: preflight passes (over 32 MiB free), and
    // the upload runs out of room half-way.
    let b = stage.berth(&App::new("v2"));
    let compose = b.workspace().join("docker-compose.staging.yml");
    let mut text = std::fs::read_to_string(&compose).unwrap();
    text.push_str(&format!("# {}\n", "x".repeat(45 << 20)));
    std::fs::write(&compose, text).unwrap();
    let run = b.run();
    assert_eq!(run.code, 1, "{}", run.stdout);
    let err = run.errors()[0];
    assert!(
        err.contains("no space left") && err.contains("compose.yml"),
        "{err}"
    );
    assert!(!err.contains("may have dropped"), "{err}");
    // The next step is about the disk, not the registry.
    let next = run
        .summary
        .split("**What to do next:** ")
        .nth(1)
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default();
    assert!(
        next.contains("free disk space") && !next.contains("registry"),
        "{next}"
    );
    assert_eq!(
        stage.current().as_deref(),
        Some(r1.as_str()),
        "nothing switched"
    );
    assert!(stage.health().1.contains("\"version\":\"v1\""));
    std::thread::sleep(Duration::from_secs(1));

    // The next deploy has room again (the half-written file was removed) and succeeds;
    // pruning keeps every proven release, however many unproven ones there are.
    let run = stage
        .berth(&App::new("v3"))
        .input("keep-releases", "2")
        .run();
    assert_eq!(run.code, 0, "{}", run.stdout);
    let releases = stage.releases();
    assert!(
        releases.contains(&r1),
        "a proven release was pruned: {releases:?}"
    );
    assert_eq!(stage.record(&r1)["outcome"], "deployed");
}

#[test]
fn a_service_that_ignores_sigterm_is_named_as_the_slow_stop() {
    let stage = Stage::new();
    let grace = |b: crate::support::Berth| {
        // A shorter grace period than Docker's 10 s keeps the test short; still over 5 s.
        let compose = b.workspace().join("docker-compose.staging.yml");
        let text = std::fs::read_to_string(&compose).unwrap().replace(
            "    image: shop/backend\n",
            "    image: shop/backend\n    stop_grace_period: 6s\n",
        );
        std::fs::write(&compose, text).unwrap();
        b
    };
    let v1 = grace(stage.berth(&App::new("v1").mode("ignoreterm"))).run();
    assert_eq!(v1.code, 0, "{}", v1.stdout);
    std::thread::sleep(Duration::from_secs(1));
    let v2 = grace(stage.berth(&App::new("v2"))).run();
    assert_eq!(v2.code, 0, "{}", v2.stdout);
    let hints: Vec<&str> = v2
        .stdout
        .lines()
        .filter(|l| l.contains("slow container stop"))
        .collect();
    assert_eq!(
        hints.len(),
        1,
        "one service was slow: {hints:#?}\n{}",
        v2.stdout
    );
    assert!(
        hints[0].contains("`backend`")
            && hints[0].contains("init: true")
            && hints[0].contains("stop_grace_period"),
        "{}",
        hints[0]
    );
}

#[test]
fn sessions_dropped_during_a_long_build_are_connected_afresh() {
    // An sshd that drops a client that does not answer its keepalives for ~4 s: during a
    // 12 s build berth makes no SSH call, so the sessions from preflight are gone.
    let sshd = crate::support::rig::Sshd::start_configured(
        "ed25519",
        "ed25519",
        "",
        "ClientAliveInterval 2\nClientAliveCountMax 1\n",
    );
    let stage = Stage::with_sshd(sshd);
    let b = stage.berth(&App::new("slow-build"));
    let dockerfile = b.workspace().join("backend/Dockerfile");
    let text = std::fs::read_to_string(&dockerfile).unwrap().replace(
        "COPY www /www\n",
        // A layer of its own each run: the build cache must not skip the sleep.
        &format!(
            "COPY www /www\nENV BUILD_ID={}\nRUN [\"/bin/sleep\", \"12\"]\n",
            berth::targets::random_token()
        ),
    );
    std::fs::write(&dockerfile, text).unwrap();
    let run = b.run();
    assert_eq!(run.code, 0, "{}", run.stdout);
    let accepted = stage.sshd.log_text().matches("Accepted publickey").count();
    assert!(accepted >= 2, "berth connected once only: {accepted}");
}
