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
    assert!(
        run.stdout.contains("never proved healthy") && run.stdout.contains("rolled-back"),
        "{}",
        run.stdout
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

    // v3 is broken too, and its run is cancelled while its health is being probed.
    let v3 = stage
        .berth(&App::new("v3").mode("500"))
        .input("health-timeout", "60s");
    let child = v3
        .command()
        // Unread, a pipe would fill and stall berth mid-build.
        .stdout(std::fs::File::create(stage.deploy_dir.with_file_name("v3.log")).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while stage.current().is_none_or(|c| c == r1) {
        assert!(
            std::time::Instant::now() < deadline,
            "v3 was never switched in:\n{}",
            std::fs::read_to_string(stage.deploy_dir.with_file_name("v3.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r3 = stage.current().unwrap();
    sh(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    let mut child = child;
    let _ = child.wait();
    assert_ne!(stage.record(&r3)["outcome"], "deployed");
    std::thread::sleep(Duration::from_secs(1));

    let v4 = stage.deploy_ok(&App::new("v4"));
    let r4 = v4.output("release").unwrap();
    let run = stage.berth(&App::new("v4")).input("mode", "rollback").run();
    assert_eq!(run.code, 0, "{}", run.stdout);
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
        run.stdout.contains("rolled-back") && run.stdout.contains("pending"),
        "{}",
        run.stdout
    );
}
