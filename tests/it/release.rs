//! The remote release over SSH, against a real sshd, engine, registry and compose v2.

use crate::support::stage::{App, Stage};
use crate::support::SHA;

#[test]
fn first_and_second_deploy_create_releases_pinned_by_digest() {
    let stage = Stage::new();
    let run = stage.berth(&App::new("v1")).run();
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert_eq!(run.output("status").as_deref(), Some("deployed"));
    let warnings: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("::warning") && !l.contains("untested"))
        .collect();
    assert!(warnings.is_empty(), "{warnings:#?}");
    let images: serde_json::Value = serde_json::from_str(&run.output("images").unwrap()).unwrap();
    let releases = stage.releases();
    assert_eq!(releases.len(), 1);
    let r1 = releases[0].clone();
    assert_eq!(stage.current().as_deref(), Some(r1.as_str()));
    assert_eq!(run.output("release").as_deref(), Some(r1.as_str()));
    // Both services run exactly the pushed digests, and the record says so.
    let running = stage.running();
    for svc in ["backend", "frontend"] {
        let pinned = images[svc].as_str().unwrap();
        assert!(pinned.contains("@sha256:"), "{pinned}");
        assert_eq!(running[svc], Stage::image_id(pinned), "{svc}");
        assert_eq!(stage.record(&r1)["images"][svc], pinned);
    }
    assert_eq!(stage.record(&r1)["outcome"], "deployed");
    let (status, body) = stage.health();
    assert_eq!(status, 200);
    assert!(
        body.contains("\"version\":\"v1\"") && body.contains("\"greeting\":\"hello\""),
        "{body}"
    );

    std::thread::sleep(std::time::Duration::from_secs(1)); // release ids have one-second resolution
    let run = stage.berth(&App::new("v2")).run();
    assert_eq!(run.code, 0, "{}", run.stdout);
    let releases = stage.releases();
    assert_eq!(releases.len(), 2, "{releases:?}");
    assert_eq!(releases[0], r1, "release 1 is kept");
    assert_eq!(stage.current().as_deref(), Some(releases[1].as_str()));
    assert_eq!(run.output("previous-release").as_deref(), Some(r1.as_str()));
    assert!(stage.health().1.contains("\"version\":\"v2\""));
}

use std::process::Command;
use std::time::Duration;

use crate::support::rig::{sh, Sshd};

#[test]
fn a_host_key_mismatch_is_refused_and_nothing_runs_on_the_host() {
    let stage = Stage::new();
    let other = Sshd::start();
    let run = stage
        .berth(&App::new("v1"))
        .input("host-fingerprints", &other.host_key.fingerprint())
        .run();
    assert_eq!(run.code, 1);
    let err = run.errors()[0];
    assert!(
        err.contains("host key mismatch") && err.contains("MISMATCH"),
        "{err}"
    );
    assert!(
        err.contains(&stage.sshd.host_key.fingerprint())
            && err.contains(&other.host_key.fingerprint()),
        "{err}"
    );
    assert!(!stage.deploy_dir.exists(), "berth touched the host");
    assert!(
        !stage.sshd.log_text().contains("Accepted publickey"),
        "berth authenticated to a host it did not trust"
    );
}

#[test]
fn a_host_without_a_pin_is_refused_and_the_error_shows_its_real_fingerprint() {
    let stage = Stage::new();
    let other = Sshd::start();
    let line = format!("staging.example.com {}", other.host_key.public.trim());
    let run = stage
        .berth(&App::new("v1"))
        .input("host-fingerprints", "")
        .input("known-hosts", &line)
        .run();
    assert_eq!(run.code, 1);
    let err = run.errors()[0];
    assert!(err.contains("not pinned"), "{err}");
    assert!(
        err.contains(&format!(
            "host-fingerprints: {}",
            stage.sshd.host_key.fingerprint()
        )),
        "{err}"
    );
    assert!(!stage.deploy_dir.exists());
}

#[test]
fn ecdsa_rsa_and_passphrase_protected_keys_each_deploy() {
    for (host_kind, user_kind, passphrase) in [
        ("ecdsa", "ecdsa", ""),
        ("rsa", "rsa", ""),
        ("ed25519", "ed25519", "correct horse"),
    ] {
        let stage = Stage::with_sshd(Sshd::start_with(host_kind, user_kind, passphrase));
        let mut b = stage.berth(&App::new("v1"));
        if !passphrase.is_empty() {
            b = b.input("ssh-key-passphrase", passphrase);
        }
        let run = b.run();
        assert_eq!(
            run.code,
            0,
            "{user_kind} key (passphrase: {}):\n{}",
            !passphrase.is_empty(),
            run.stdout
        );
        assert_eq!(stage.health().0, 200);
        if user_kind == "rsa" {
            // OpenSSH 9 refuses ssh-rsa (SHA-1) signatures; authenticating proves rsa-sha2.
            assert!(
                stage
                    .sshd
                    .log_text()
                    .contains("Accepted publickey for root"),
                "{}",
                stage.sshd.log_text()
            );
        }
    }
}

#[test]
fn a_failing_pre_deploy_changes_no_container() {
    let stage = Stage::new();
    stage.deploy_ok(&App::new("v1"));
    let before = stage.state();
    let run = stage
        .berth(&App::new("v2"))
        .input("pre-deploy", "backend: sh /migrate.sh")
        .input("env-file", "GREETING=changed\nMIGRATE=fail\n")
        .run();
    assert_eq!(run.code, 1);
    assert_eq!(run.output("status").as_deref(), Some("failed"));
    let err = run.errors()[0];
    assert!(
        err.contains("pre-deploy command failed") && err.contains("migration 0042 failed"),
        "{err}"
    );
    stage.assert_unchanged(&before, "v1");
    let failed = stage.releases().last().cloned().unwrap();
    assert_eq!(stage.record(&failed)["outcome"], "failed");
}

#[test]
fn a_variable_the_compose_file_needs_and_nothing_sets_fails_before_any_container_changes() {
    let stage = Stage::new();
    stage.deploy_ok(&App::new("v1"));
    let before = stage.state();
    let b = stage
        .berth(&App::new("v2"))
        .input("env-file", "GREETING=hi\nSECRET_KEY=k-in-the-env-file\n");
    // SECRET_KEY comes from env-file, HOME from the host, OPTIONAL has a default, and
    // a commented-out reference is no reference: only JWT_SECRET is missing.
    let compose = b.workspace().join("docker-compose.staging.yml");
    let text = std::fs::read_to_string(&compose).unwrap().replacen(
        "    env_file: .env\n",
        "    env_file: .env\n    environment:\n      JWT_SECRET: ${JWT_SECRET}\n      SECRET_KEY: ${SECRET_KEY}\n      \
         DATA: ${HOME}/data\n      OPTIONAL: ${OPTIONAL:-}\n      # OLD: ${OLD_SECRET}\n",
        1,
    );
    std::fs::write(&compose, text).unwrap();
    let run = b.run();
    assert_eq!(run.code, 1, "{}", run.stdout);
    let err = run.errors()[0];
    assert!(
        err.contains("uses ${JWT_SECRET} on") && err.contains("`JWT_SECRET=...` to `env-file`"),
        "{err}"
    );
    for other in ["SECRET_KEY", "HOME", "OPTIONAL", "OLD_SECRET"] {
        assert!(!err.contains(other), "{other} named: {err}");
    }
    assert_eq!(run.output("status").as_deref(), Some("failed"));
    stage.assert_unchanged(&before, "v1");
}

#[test]
fn a_release_dir_that_exists_is_never_written_into() {
    let stage = Stage::new();
    stage.deploy_ok(&App::new("v1"));
    let before = stage.state();
    // Release ids are `<UTC second>-<sha7>`: a deploy of the same commit that started in the
    // same second would pick the same one. Occupy every id of the next half minute.
    let now = time::OffsetDateTime::now_utc();
    let taken: Vec<std::path::PathBuf> = (0..30)
        .map(|s| {
            let id = berth::remote::release_id(now + time::Duration::seconds(s), SHA);
            let dir = stage.deploy_dir.join(".berth/releases").join(id);
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("compose.yml"), "# the other deploy's\n").unwrap();
            dir
        })
        .collect();
    let run = stage.berth(&App::new("v2")).run();
    assert_eq!(run.code, 1, "{}", run.stdout);
    let err = run.errors()[0];
    assert!(
        err.contains("already exists") && err.contains("run the deploy again"),
        "{err}"
    );
    for dir in &taken {
        let files: Vec<_> = std::fs::read_dir(dir).unwrap().collect();
        assert_eq!(files.len(), 1, "{} was written into", dir.display());
        assert_eq!(
            std::fs::read_to_string(dir.join("compose.yml")).unwrap(),
            "# the other deploy's\n"
        );
    }
    stage.assert_unchanged(&before, "v1");
    // Nothing ran on the host, so there is nothing to roll back.
    assert_eq!(run.output("status").as_deref(), Some("failed"));
}

#[test]
fn a_pre_deploy_runs_once_with_the_new_image_before_the_switch() {
    let stage = Stage::new();
    let run = stage
        .berth(&App::new("v7"))
        .input("pre-deploy", "backend: sh /migrate.sh")
        .run();
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(
        run.stdout.matches("migrating schema to v7").count(),
        1,
        "{}",
        run.stdout
    );
    let pre = run.stdout.find("migrated").unwrap();
    let up = run.stdout.rfind("Container").unwrap_or(usize::MAX);
    assert!(pre < up || up == usize::MAX);
}

#[test]
fn a_pull_of_a_missing_digest_fails_and_the_old_containers_keep_running() {
    let stage = Stage::new();
    stage.deploy_ok(&App::new("v1"));
    let before = stage.state();
    let b = stage.berth(&App::new("v2")).input("images", "");
    let missing = format!(
        "{}/acme/shop-backend@sha256:{}",
        stage.registry.addr,
        "0".repeat(64)
    );
    std::fs::write(
        b.workspace().join("docker-compose.staging.yml"),
        format!("services:\n  backend:\n    image: {missing}\n    ports:\n      - \"127.0.0.1:{}:8080\"\n", stage.port),
    )
    .unwrap();
    let run = b.run();
    assert_eq!(run.code, 1, "{}", run.stdout);
    let err = run.errors()[0];
    assert!(err.contains("pull failed"), "{err}");
    stage.assert_unchanged(&before, "v1");
}

fn hold_lock(stage: &Stage, actor: &str, heartbeat_age: &str) {
    let lock = stage.deploy_dir.join(".berth/lock");
    std::fs::create_dir_all(&lock).unwrap();
    let holder = serde_json::json!({
        "token": "other-token", "run_url": "https://github.com/acme/shop/actions/runs/99",
        "actor": actor, "sha": "feedfacefeedfacefeedfacefeedfacefeedface", "started_at": "2026-11-24T09:00:00Z"
    });
    std::fs::write(lock.join("holder.json"), holder.to_string()).unwrap();
    sh(Command::new("touch")
        .args(["-d", heartbeat_age])
        .arg(lock.join("heartbeat")));
}

#[test]
fn a_held_lock_is_waited_for_and_a_lock_held_too_long_fails_naming_the_holder() {
    let stage = Stage::new();
    hold_lock(&stage, "alice", "now");
    let run = stage
        .berth(&App::new("v1"))
        .input("lock-timeout", "2s")
        .run();
    assert_eq!(run.code, 1);
    let err = run.errors()[0];
    assert!(
        err.contains("deploy lock is held")
            && err.contains("alice")
            && err.contains("actions/runs/99"),
        "{err}"
    );
    assert!(
        stage.releases().is_empty(),
        "nothing may change while another deploy holds the lock"
    );
    assert!(
        stage.deploy_dir.join(".berth/lock/holder.json").exists(),
        "someone else's lock was removed"
    );

    // Release the lock only once berth is connected and waiting for it (builds come first).
    let lock = stage.deploy_dir.join(".berth/lock");
    let accepted_before = stage.sshd.log_text().matches("Accepted publickey").count();
    let sshd_log = stage.sshd.log.clone();
    let (user, password) = (stage.registry.user.clone(), stage.registry.password.clone());
    let manifest = format!(
        "http://{}/v2/acme/shop-backend/manifests/staging-{}-second",
        stage.registry.addr,
        crate::support::SHA
    );
    let registry_digest = move || {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-u"])
            .arg(format!("{user}:{password}"))
            .args(["-H", "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"])
            .arg(&manifest)
            .output()
            .ok()?;
        (String::from_utf8_lossy(&out.stdout) == "200").then_some(())
    };
    let releaser = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while std::fs::read_to_string(&sshd_log)
            .unwrap_or_default()
            .matches("Accepted publickey")
            .count()
            <= accepted_before
        {
            assert!(
                std::time::Instant::now() < deadline,
                "berth never connected"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // berth connects, preflights, builds and pushes before it waits for the lock:
        // release it once the push is done (and berth had time to say who holds it),
        // atomically (as a rename), so berth sees it whole or not at all.
        while registry_digest().is_none() {
            assert!(std::time::Instant::now() < deadline, "berth never pushed");
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(3));
        let gone = lock.with_file_name("lock.gone");
        std::fs::rename(&lock, &gone).unwrap();
        std::fs::remove_dir_all(gone).unwrap();
    });
    let run = stage
        .berth(&App::new("v1"))
        .input("lock-timeout", "60s")
        .input("tags", "staging-{sha}-second\nstaging-latest")
        .run();
    releaser.join().unwrap();
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(
        run.stdout
            .contains("waiting for the deploy lock, held by alice"),
        "{}",
        run.stdout
    );
    assert!(
        !stage.deploy_dir.join(".berth/lock").exists(),
        "berth left its lock behind"
    );
}

#[test]
fn a_stale_lock_is_taken_over_with_a_warning() {
    let stage = Stage::new();
    hold_lock(&stage, "bob", "10 minutes ago");
    let run = stage.berth(&App::new("v1")).run();
    assert_eq!(run.code, 0, "{}", run.stdout);
    let warning = run
        .stdout
        .lines()
        .find(|l| l.starts_with("::warning") && l.contains("stale"))
        .expect("a stale-lock warning");
    assert!(warning.contains("bob"), "{warning}");
}

#[test]
fn two_concurrent_deploys_run_one_after_the_other() {
    let stage = Stage::new();
    // The first holds the lock for a few seconds at least: its app is ready only 4 s
    // after it starts.
    let first = stage
        .berth(&App::new("v1").start_delay(4))
        .input("health-timeout", "60s");
    let second = stage.berth(&App::new("v2"));
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| (first.run(), std::time::Instant::now()));
        std::thread::sleep(Duration::from_millis(1500));
        let b = s.spawn(|| (second.run(), std::time::Instant::now()));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(
        (a.0.code, b.0.code),
        (0, 0),
        "{}\n-----\n{}",
        a.0.stdout,
        b.0.stdout
    );
    assert!(
        b.0.stdout.contains("waiting for the deploy lock"),
        "the second deploy did not wait:\n{}",
        b.0.stdout
    );
    assert!(b.1 > a.1);
    assert_eq!(stage.releases().len(), 2);
    assert_eq!(
        stage.current().as_deref(),
        b.0.output("release").as_deref(),
        "the later deploy wins"
    );
    assert!(stage.health().1.contains("\"version\":\"v2\""));
}

#[test]
fn env_values_arrive_byte_for_byte_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let stage = Stage::new();
    let env = "DATABASE_URL=postgresql://app:p!@#$'\"\\`x@db:5432/shop\nGREETING=hello world\nCERT=\"-----BEGIN CERT-----\nline two\n-----END CERT-----\"\n";
    let run = stage.berth(&App::new("v1")).input("env-file", env).run();
    assert_eq!(run.code, 0, "{}", run.stdout);
    let path = stage.deploy_dir.join("current/.env");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), env);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Only the deploy user can enter the release dirs at all.
    for dir in [
        stage.deploy_dir.join(".berth/releases"),
        stage.deploy_dir.join("current/."),
    ] {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
    }
    assert!(stage.health().1.contains("\"greeting\":\"hello world\""));
}

#[test]
fn the_registry_password_never_appears_in_the_hosts_process_list() {
    let stage = Stage::new();
    let password = stage.registry.password.clone();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (run, snapshots) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut snaps = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                snaps.push(sh(Command::new("ps").args(["-eo", "args"])));
                std::thread::sleep(Duration::from_millis(20));
            }
            snaps
        });
        let run = stage.berth(&App::new("v1")).run();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (run, sampler.join().unwrap())
    });
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(
        snapshots.len() > 20,
        "too few process snapshots ({}) to prove anything",
        snapshots.len()
    );
    assert!(
        snapshots.iter().any(|p| p.contains("docker compose")),
        "no snapshot caught berth's remote commands"
    );
    for p in &snapshots {
        assert!(
            !p.contains(&password),
            "the registry password is on a command line:\n{p}"
        );
    }
    // This run's throwaway login configs (found in its own sampled command lines: other
    // tests deploy in parallel) are gone afterwards.
    let dir_re = regex::Regex::new(r"/tmp/berth-docker-config\.[A-Za-z0-9]+").unwrap();
    let ours: std::collections::BTreeSet<String> = snapshots
        .iter()
        .flat_map(|p| p.lines())
        .filter(|l| l.contains(&stage.registry.addr) || l.contains(&stage.project))
        .flat_map(|l| dir_re.find_iter(l).map(|m| m.as_str().to_string()))
        .filter(|d| !d.ends_with(".XXXXXXXX")) // mktemp's template, in the login script
        .collect();
    assert!(
        !ours.is_empty(),
        "no snapshot caught the login or pull of this run"
    );
    for dir in ours {
        assert!(
            !std::path::Path::new(&dir).exists(),
            "registry credentials left on disk: {dir}"
        );
    }
}

#[test]
fn keep_releases_prunes_old_releases_and_touches_no_other_project() {
    let stage = Stage::new();
    let bystander = format!("bystander-{}", stage.port);
    let image = crate::support::rig::busybox_image(
        &format!("{bystander}:1"),
        "CMD [\"sleep\", \"600\"]",
        &[],
    );
    sh(Command::new("docker").args([
        "run",
        "-d",
        "--name",
        &bystander,
        "--label",
        &format!("com.docker.compose.project={bystander}"),
        &image,
    ]));
    // Each version's backend differs, so each release pins a new digest.
    let mut runs = Vec::new();
    for v in ["v1", "v2", "v3", "v4"] {
        let run = stage.berth(&App::new(v)).input("keep-releases", "2").run();
        assert_eq!(run.code, 0, "{}", run.stdout);
        runs.push(run.output("images").unwrap());
        std::thread::sleep(Duration::from_secs(1));
    }
    let releases = stage.releases();
    assert_eq!(releases.len(), 2, "{releases:?}");
    let alive =
        sh(Command::new("docker").args(["inspect", "-f", "{{.State.Running}}", &bystander]));
    assert_eq!(
        alive.trim(),
        "true",
        "another project's container was touched"
    );
    sh(Command::new("docker").args(["image", "inspect", &image]));
    // Images of pruned releases are gone; the kept releases' images remain.
    let first: serde_json::Value = serde_json::from_str(&runs[0]).unwrap();
    let last: serde_json::Value = serde_json::from_str(&runs[3]).unwrap();
    let exists = |r: &str| {
        Command::new("docker")
            .args(["image", "inspect", r])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(
        !exists(first["backend"].as_str().unwrap()),
        "a pruned release's image was kept"
    );
    assert!(exists(last["backend"].as_str().unwrap()));
    let _ = Command::new("docker")
        .args(["rm", "-f", &bystander])
        .output();
    let _ = Command::new("docker")
        .args(["image", "rm", "-f", "--no-prune", &image])
        .output();
}

#[test]
fn a_dropped_ssh_connection_fails_clearly_and_leaves_no_lock_behind() {
    let stage = Stage::new();
    stage.deploy_ok(&App::new("v1"));
    let b = stage
        .berth(&App::new("v2"))
        .input("pre-deploy", "backend: sleep 8");
    // Once the pre-deploy runs, kill that session's sshd processes.
    let run = run_cutting_the_session_when(&stage, b, || {
        let ps = sh(Command::new("ps").args(["-eo", "args"]));
        ps.lines().any(|l| l.contains("backend sleep 8"))
    });
    assert_eq!(run.code, 1, "{}", run.stdout);
    let err = run.errors()[0];
    assert!(
        err.contains("connection") || err.contains("dropped"),
        "{err}"
    );
    // The next deploy is not blocked by a lock.
    let next = stage
        .berth(&App::new("v3"))
        .input("lock-timeout", "5s")
        .run();
    assert_eq!(next.code, 0, "{}", next.stdout);
}

#[test]
fn a_cancelled_run_releases_its_lock() {
    let stage = Stage::new();
    stage.deploy_ok(&App::new("v1"));
    let b = stage
        .berth(&App::new("v2"))
        .input("pre-deploy", "backend: sleep 30");
    let child = b
        .command()
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lock = stage.deploy_dir.join(".berth/lock/holder.json");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    // Cancel once berth holds the lock and runs the pre-deploy, as a cancelled workflow would.
    loop {
        let ps = sh(Command::new("ps").args(["-eo", "args"]));
        if lock.exists() && ps.contains("backend sleep 30") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pre-deploy never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    sh(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("title=berth%3A cancelled::") && stdout.contains("SIGTERM"),
        "{stdout}"
    );
    assert!(!lock.exists(), "a cancelled run left its lock behind");
    assert!(
        stage.health().1.contains("\"version\":\"v1\""),
        "the old release must still serve: {:?}",
        stage.health()
    );
    // The migration does not outlive the run: its container is gone within 2 s, so the
    // next deploy can never race it.
    std::thread::sleep(Duration::from_secs(2));
    let left = pre_deploy_containers(&stage);
    assert!(
        left.trim().is_empty(),
        "a pre-deploy container survived: {left}"
    );
    let next = stage
        .berth(&App::new("v3"))
        .input("lock-timeout", "1s")
        .run();
    assert_eq!(next.code, 0, "{}", next.stdout);
}

#[test]
fn a_pre_deploy_past_its_timeout_is_stopped_and_nothing_is_switched() {
    let stage = Stage::new();
    let r1 = stage.deploy_ok(&App::new("v1")).output("release").unwrap();
    let run = stage
        .berth(&App::new("v2"))
        .input("pre-deploy", "backend: sleep 60")
        .input("pre-deploy-timeout", "2s")
        .run();
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout.contains("title=berth%3A pre-deploy timed out::"),
        "{}",
        run.stdout
    );
    assert_eq!(stage.current().as_deref(), Some(r1.as_str()));
    let left = pre_deploy_containers(&stage);
    assert!(
        left.trim().is_empty(),
        "the timed-out pre-deploy survived: {left}"
    );
}

#[test]
fn a_session_killed_during_health_rolls_back_as_a_lost_connection() {
    let stage = Stage::new();
    let r1 = stage.deploy_ok(&App::new("v1")).output("release").unwrap();
    let b = stage
        .berth(&App::new("v2").mode("500"))
        .input("health-timeout", "60s");
    // Once v2 is switched in (health is being probed), cut berth's session.
    let run = run_cutting_the_session_when(&stage, b, || {
        let switched = stage.current().is_some_and(|c| c != r1);
        if switched {
            std::thread::sleep(Duration::from_millis(500));
        }
        switched
    });
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
    assert_eq!(stage.current().as_deref(), Some(r1.as_str()));
    assert!(stage.health().1.contains("\"version\":\"v1\""));
    assert!(!stage.deploy_dir.join(".berth/lock").exists());
}

/// Runs `b`, and kills berth's SSH session (the sshd processes serving it) as soon as
/// `ready` says so; fails the test if that moment never comes.
fn run_cutting_the_session_when(
    stage: &Stage,
    b: crate::support::Berth,
    ready: impl Fn() -> bool + Sync,
) -> crate::support::Run {
    let sshd_pid = stage.sshd.pid();
    std::thread::scope(|s| {
        let killer = s.spawn(|| {
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while std::time::Instant::now() < deadline {
                if ready() {
                    sh(Command::new("pkill").args(["-9", "-P", &sshd_pid.to_string()]));
                    return true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            false
        });
        let run = b.run();
        assert!(
            killer.join().unwrap(),
            "the moment to cut the session never came"
        );
        run
    })
}

/// The ids of the project's pre-deploy containers, running or not.
fn pre_deploy_containers(stage: &Stage) -> String {
    sh(Command::new("docker").args([
        "ps",
        "-aq",
        "--filter",
        &format!("name={}-pre-deploy", stage.project),
    ]))
}

#[test]
fn a_lock_taken_while_berth_was_disconnected_leaves_that_host_to_its_new_holder() {
    let stage = Stage::new();
    let r1 = stage.deploy_ok(&App::new("v1")).output("release").unwrap();
    // With `rollback: off` no self-heal is armed, so the session that ends marks the lock
    // abandoned at once and another deploy may take it (the heal's case is below).
    let b = stage
        .berth(&App::new("v2").mode("500"))
        .input("health-timeout", "60s")
        .input("rollback", "off");
    let lock = stage.deploy_dir.join(".berth/lock");
    let sshd = stage.sshd.pid().to_string();
    let taken = std::thread::scope(|s| {
        let other = s.spawn(|| {
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while stage.current().is_none_or(|c| c == r1) {
                assert!(std::time::Instant::now() < deadline, "v2 never switched in");
                std::thread::sleep(Duration::from_millis(100));
            }
            std::thread::sleep(Duration::from_millis(500));
            // Cut berth's session, and hold its reconnect off (sshd stopped) until
            // another deploy has taken the lock the session abandoned.
            sh(Command::new("kill").args(["-STOP", &sshd]));
            sh(Command::new("pkill").args(["-9", "-P", &sshd]));
            // The session marks it under the takeover mutex; a taker that finds the mutex
            // taken reports the lock held (berth's own wait would try again).
            let mutex = stage.deploy_dir.join(".berth/lock.takeover");
            while !lock.join("abandoned").exists() || mutex.exists() {
                assert!(std::time::Instant::now() < deadline, "never abandoned");
                std::thread::sleep(Duration::from_millis(20));
            }
            let layout = berth::remote::Layout {
                deploy_dir: stage.deploy_dir.display().to_string(),
                project: stage.project.clone(),
            };
            let holder = r#"{"token":"other-deploy","actor":"someone-else"}"#;
            let take = layout.lock_acquire("other-deploy", holder, 90);
            let out = Command::new("sh")
                .arg("-c")
                .arg(berth::ssh::quote_argv(&take.0))
                .output()
                .unwrap();
            sh(Command::new("kill").args(["-CONT", &sshd]));
            String::from_utf8_lossy(&out.stdout).into_owned()
        });
        let run = b.run();
        (run, other.join().unwrap())
    });
    let (run, took) = taken;
    assert!(took.starts_with("took-over abandoned"), "{took}");
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout
            .contains("title=berth%3A deploy lock taken while disconnected::"),
        "{}",
        run.stdout
    );
    // The host is the other deploy's: its lock stands, and berth restored nothing there.
    assert_eq!(
        std::fs::read_to_string(lock.join("token")).unwrap().trim(),
        "other-deploy"
    );
    assert!(!run.stdout.contains("(restore)"), "{}", run.stdout);
    assert_ne!(stage.current().as_deref(), Some(r1.as_str()));
    let v2 = stage.current().unwrap();
    assert_eq!(stage.record(&v2)["outcome"], "interrupted");
}

/// The sshd processes serving the connections of the sshd whose master is `master`
/// (not the master, not what the sessions run).
fn sshd_connection_processes(master: u32) -> Vec<String> {
    let ps = sh(Command::new("ps").args(["-eo", "pid=,ppid=,comm="]));
    let procs: Vec<(String, String, String)> = ps
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.into(), w.next()?.into(), w.next()?.into()))
        })
        .collect();
    let mut found: Vec<String> = vec![master.to_string()];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i].clone();
        for (pid, ppid, comm) in &procs {
            if *ppid == parent && comm == "sshd" && !found.contains(pid) {
                found.push(pid.clone());
            }
        }
        i += 1;
    }
    found.split_off(1)
}

#[test]
fn a_connection_that_goes_silent_during_a_quiet_pre_deploy_is_found_and_its_session_stopped() {
    let stage = Stage::new();
    let r1 = stage.deploy_ok(&App::new("v1")).output("release").unwrap();
    let b = stage
        .berth(&App::new("v2"))
        .input("pre-deploy", "backend: sleep 120");
    let mut frozen = Vec::new();
    let run = std::thread::scope(|s| {
        let freezer = s.spawn(|| {
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while pre_deploy_containers(&stage).trim().is_empty() {
                assert!(std::time::Instant::now() < deadline, "no pre-deploy ran");
                std::thread::sleep(Duration::from_millis(200));
            }
            // The connection goes silent: its sshd processes stop, TCP stays open, and
            // the host's side of berth's session (the agent, the pre-deploy) runs on.
            let pids = sshd_connection_processes(stage.sshd.pid());
            assert!(!pids.is_empty());
            for p in &pids {
                sh(Command::new("kill").args(["-STOP", p]));
            }
            pids
        });
        let run = b.run();
        frozen = freezer.join().unwrap();
        run
    });
    for p in &frozen {
        let _ = Command::new("kill").args(["-CONT", p]).status();
    }
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout
            .contains("title=berth%3A connection to the host lost::")
            && run.stdout.contains("went silent"),
        "{}",
        run.stdout
    );
    // The session berth could no longer reach was stopped on the host, its pre-deploy
    // container with it; nothing was switched, and the lock is free.
    let left = pre_deploy_containers(&stage);
    assert!(left.trim().is_empty(), "the pre-deploy survived: {left}");
    assert_eq!(stage.current().as_deref(), Some(r1.as_str()));
    assert!(!stage.deploy_dir.join(".berth/lock").exists());
}

#[test]
fn a_lock_the_hosts_self_heal_took_while_berth_was_disconnected_is_left_to_the_heal() {
    let stage = Stage::new();
    let r1 = stage.deploy_ok(&App::new("v1")).output("release").unwrap();
    let b = stage
        .berth(&App::new("v2").mode("500"))
        .input("health-timeout", "60s");
    let lock = stage.deploy_dir.join(".berth/lock");
    let sshd = stage.sshd.pid().to_string();
    let run = std::thread::scope(|s| {
        let cutter = s.spawn(|| {
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while stage.current().is_none_or(|c| c == r1) {
                assert!(std::time::Instant::now() < deadline, "v2 never switched in");
                std::thread::sleep(Duration::from_millis(100));
            }
            std::thread::sleep(Duration::from_millis(500));
            // As a cancelled run does, hand over (so the host heals without its 30 s wait),
            // then cut berth's session and hold its reconnect off until the heal holds the
            // lock.
            std::fs::write(lock.join("handover"), "").unwrap();
            sh(Command::new("kill").args(["-STOP", &sshd]));
            sh(Command::new("pkill").args(["-9", "-P", &sshd]));
            while !std::fs::read_to_string(lock.join("token"))
                .unwrap_or_default()
                .starts_with("heal-")
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the heal never took the lock"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            sh(Command::new("kill").args(["-CONT", &sshd]));
        });
        let run = b.run();
        cutter.join().unwrap();
        run
    });
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout
            .contains("title=berth%3A the host is restoring itself::"),
        "{}",
        run.stdout
    );
    // berth restored nothing itself: the heal did, proved it and freed the lock.
    assert!(!run.stdout.contains("(restore)"), "{}", run.stdout);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while lock.exists() {
        assert!(std::time::Instant::now() < deadline, "the heal never ended");
        std::thread::sleep(Duration::from_millis(200));
    }
    let note: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(stage.deploy_dir.join(".berth/healed.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(note["restored"], r1.as_str(), "{note}");
    assert_eq!(note["proven"], true, "{note}");
    assert_eq!(stage.current().as_deref(), Some(r1.as_str()));
    assert!(stage.health().1.contains("\"version\":\"v1\""));
}
