//! The rig works end to end with berth's own Docker and SSH modules.

use std::process::Command;
use std::time::Duration;

use berth::docker::{Engine, RegistryAuth};
use berth::inputs::{parse_host, parse_known_host};
use berth::secret::Secret;
use berth::ssh::{HostSession, HostTrust, SshError};

use crate::support::rig::{busybox_image, sh, Registry, Sshd};
use crate::support::Berth;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn pinned(fp: &str) -> HostTrust {
    HostTrust::Pinned {
        fingerprints: vec![fp.to_string()],
        known_hosts: vec![],
    }
}

#[test]
fn push_through_bollard_with_auth_and_read_back_through_the_v2_api() {
    let registry = Registry::start();
    let local = busybox_image("berth-rig-smoke:latest", "CMD [\"true\"]", &[]);
    let repo = format!("{}/rig/smoke", registry.addr);
    let auth = RegistryAuth {
        server: registry.addr.clone(),
        username: registry.user.clone(),
        password: Secret::new(registry.password.clone()),
    };
    let mut lines = Vec::new();
    let digest = runtime().block_on(async {
        let engine = Engine::connect(Default::default()).await.expect("engine");
        engine.tag(&local, &repo, "t1").await.expect("tag");
        engine
            .push(&repo, "t1", &auth, |l| lines.push(l.to_string()))
            .await
            .expect("push")
    });
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    assert!(!lines.is_empty(), "push streamed no progress");
    assert_eq!(
        registry.digest_of("rig/smoke", "t1").as_deref(),
        Some(digest.as_str())
    );
    let (status, _) = registry.api("/v2/_catalog");
    assert_eq!(status, 200);
}

#[test]
fn a_wrong_registry_password_is_a_401_error_and_nothing_is_pushed() {
    let registry = Registry::start();
    let local = busybox_image("berth-rig-smoke:latest", "CMD [\"true\"]", &[]);
    let repo = format!("{}/rig/denied", registry.addr);
    let auth = RegistryAuth {
        server: registry.addr.clone(),
        username: registry.user.clone(),
        password: Secret::new("wrong"),
    };
    let err = runtime().block_on(async {
        let engine = Engine::connect(Default::default()).await.unwrap();
        engine.tag(&local, &repo, "t1").await.unwrap();
        engine.push(&repo, "t1", &auth, |_| {}).await.unwrap_err()
    });
    assert!(
        err.to_string().contains("rejected the credentials (401)"),
        "{err}"
    );
    let (_, catalog) = registry.api("/v2/_catalog");
    assert!(!catalog.contains("rig/denied"), "{catalog}");
}

#[test]
fn ssh_verifies_the_generated_host_key_and_runs_docker_compose() {
    let sshd = Sshd::start();
    let session = sshd.session();
    assert_eq!(session.host_key.fingerprint, sshd.host_key.fingerprint());
    let mut streamed = Vec::new();
    let out = session
        .exec(
            "docker compose version",
            None,
            Duration::from_secs(30),
            |l| streamed.push(l.to_string()),
        )
        .unwrap();
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("Docker Compose version v2"),
        "{}",
        out.stdout
    );
    assert_eq!(streamed.join("\n"), out.stdout.trim_end());
}

#[test]
fn ssh_exit_status_and_stdin_are_passed_through() {
    let sshd = Sshd::start();
    let session = sshd.session();
    let out = session
        .exec(
            "cat; echo err >&2; exit 7",
            Some(b"from stdin\n"),
            Duration::from_secs(10),
            |_| {},
        )
        .unwrap();
    assert_eq!(
        (out.status, out.stdout.as_str(), out.stderr.as_str()),
        (7, "from stdin\n", "err\n")
    );
}

#[test]
fn known_hosts_lines_from_ssh_keyscan_pin_the_host() {
    let sshd = Sshd::start();
    let host = parse_host(&sshd.host(), "deploy", 22).unwrap();
    let line = format!("[127.0.0.1]:{} {}", sshd.port, sshd.host_key.public.trim());
    let trust = HostTrust::Pinned {
        fingerprints: vec![],
        known_hosts: vec![parse_known_host(&line).unwrap()],
    };
    assert!(
        HostSession::connect(&host, &sshd.credentials(), &trust, Duration::from_secs(10)).is_ok()
    );

    // The same line hashed by `ssh-keygen -H` (as many known_hosts files are) pins it too.
    let file = sshd.dir().join("known_hosts");
    std::fs::write(&file, format!("{line}\n")).unwrap();
    sh(Command::new("ssh-keygen").arg("-H").arg("-f").arg(&file));
    let hashed = std::fs::read_to_string(&file).unwrap();
    assert!(hashed.starts_with("|1|"), "{hashed}");
    let trust = HostTrust::Pinned {
        fingerprints: vec![],
        known_hosts: vec![parse_known_host(hashed.trim()).unwrap()],
    };
    assert!(
        HostSession::connect(&host, &sshd.credentials(), &trust, Duration::from_secs(10)).is_ok()
    );

    // A line naming another host vouches for nothing here, even with this host's key.
    let elsewhere = format!(
        "[127.0.0.1]:{} {}",
        sshd.port + 1,
        sshd.host_key.public.trim()
    );
    let trust = HostTrust::Pinned {
        fingerprints: vec![],
        known_hosts: vec![parse_known_host(&elsewhere).unwrap()],
    };
    match HostSession::connect(&host, &sshd.credentials(), &trust, Duration::from_secs(10)) {
        Err(SshError::HostKeyNotPinned { .. }) => {}
        Err(e) => panic!("expected an unpinned-host error, got {e}"),
        Ok(_) => panic!("a known_hosts line for another host let the connection through"),
    }
}

#[test]
fn a_wrong_host_key_is_refused_before_authenticating() {
    let sshd = Sshd::start();
    let host = parse_host(&sshd.host(), "deploy", 22).unwrap();
    let wrong = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";
    let err = match HostSession::connect(
        &host,
        &sshd.credentials(),
        &pinned(wrong),
        Duration::from_secs(10),
    ) {
        Err(e) => e,
        Ok(_) => panic!("connected despite a wrong host key"),
    };
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(wrong) && text.contains(&sshd.host_key.fingerprint()),
        "{text}"
    );
    // The key was never offered: sshd logged no authentication attempt.
    std::thread::sleep(Duration::from_millis(200));
    let log = sshd.log_text();
    assert!(
        !log.contains("Accepted publickey") && !log.contains("Failed publickey"),
        "{log}"
    );
}

#[test]
fn bad_input_changes_nothing_on_the_host() {
    let sshd = Sshd::start();
    let deploy_dir = sshd.dir().join("app");
    let run = Berth::valid()
        .input("hosts", &sshd.host())
        .input("host-fingerprints", &sshd.host_key.fingerprint())
        .input("ssh-key", &sshd.user_key.private_text())
        .input("deploy-dir", deploy_dir.to_str().unwrap())
        .input("keep-releases", "0")
        .run();
    assert_eq!(run.code, 1);
    assert_eq!(run.errors().len(), 1, "{:#?}", run.errors());
    assert!(!deploy_dir.exists());
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !sshd.log_text().contains("Connection from"),
        "berth connected despite invalid input"
    );
}
