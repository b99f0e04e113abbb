//! The health gate, crash-loop watch, automatic rollback and diagnostics, on the rig.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use berth::health::{HealthProbe, ProbeOutcome};
use berth::inputs::{self, GithubContext};

use crate::support::rig::{free_port, sh};
use crate::support::stage::{App, Stage};
use crate::support::Berth;

#[test]
fn a_slow_start_is_waited_for_without_a_fixed_sleep() {
    let stage = Stage::new();
    let run = stage.berth(&App::new("v1").start_delay(3)).run();
    assert_eq!(run.code, 0, "{}", run.stdout);
    let secs: f64 = run.output("health-seconds").unwrap().parse().unwrap();
    // The app sleeps 3 s after its container starts; `up` returns once it has started.
    assert!(
        (2.0..20.0).contains(&secs),
        "health-seconds {secs}:\n{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("connection refused") || run.stdout.contains("HTTP"),
        "no failed probe was logged before healthy:\n{}",
        run.stdout
    );
}

#[test]
fn a_release_answering_500_is_rolled_back_with_its_env_file() {
    let stage = Stage::new();
    let v1 = stage.deploy_ok(&App::new("v1"));
    let r1 = v1.output("release").unwrap();
    let run = stage
        .berth(&App::new("v2").mode("500"))
        .input("env-file", "GREETING=changed\n")
        .input("health-timeout", "3s")
        .run();
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(run.output("status").as_deref(), Some("rolled-back"));
    let err = run.errors()[0];
    assert!(
        err.contains("health check failed")
            && err.contains("HTTP 500")
            && err.contains("database unavailable"),
        "{err}"
    );
    assert!(err.contains("is serving and healthy"), "{err}");
    let (status, body) = stage.health();
    assert_eq!(status, 200);
    assert!(body.contains("\"version\":\"v1\""), "{body}");
    assert!(
        body.contains("\"greeting\":\"hello\""),
        "the old env file was not restored: {body}"
    );
    assert_eq!(stage.current().as_deref(), Some(r1.as_str()));
    let failed = stage.releases().last().cloned().unwrap();
    assert_eq!(stage.record(&failed)["outcome"], "rolled-back");
    assert!(
        run.summary.contains("<details>") || run.summary.contains("Diagnostics"),
        "{}",
        run.summary
    );
}

#[test]
fn a_degraded_json_body_is_rolled_back_showing_expected_and_actual() {
    let stage = Stage::new();
    stage.deploy_ok(&App::new("v1"));
    let run = stage
        .berth(&App::new("v2").mode("degraded"))
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
        err.contains("JSON mismatch at /data/status: expected \"healthy\", got \"degraded\""),
        "{err}"
    );
}

#[test]
fn a_crash_looping_service_fails_before_the_deadline_with_its_log_line() {
    let stage = Stage::new();
    stage.deploy_ok(&App::new("v1"));
    let started = std::time::Instant::now();
    let run = stage
        .berth(&App::new("v2").mode("crash"))
        .input("health-timeout", "60s")
        .run();
    let took = started.elapsed();
    assert_eq!(
        run.output("status").as_deref(),
        Some("rolled-back"),
        "{}",
        run.stdout
    );
    let err = run.errors()[0];
    assert!(
        err.contains("crash-looping"),
        "the verdict came from the deadline, not the crash watch: {err}"
    );
    assert!(
        err.contains("exit code 3") && err.contains("OOM-killed: no"),
        "{err}"
    );
    assert!(
        err.contains("fatal: cannot connect to database"),
        "the excerpt lacks the log line: {err}"
    );
    assert!(
        run.summary.contains("fatal: cannot connect to database"),
        "diagnostics lack the log line"
    );
    eprintln!("crash-loop deploy+verdict+rollback took {took:?} (health-timeout 60 s)");
}

#[test]
fn a_failing_pre_deploy_needs_no_rollback() {
    let stage = Stage::new();
    stage.deploy_ok(&App::new("v1"));
    let run = stage
        .berth(&App::new("v2"))
        .input("pre-deploy", "backend: sh /migrate.sh")
        .input("env-file", "MIGRATE=fail\n")
        .run();
    assert_eq!(run.output("status").as_deref(), Some("failed"));
    assert!(
        run.summary.contains("nothing was switched"),
        "{}",
        run.summary
    );
    assert!(!run.stdout.contains("docker compose up (restore)"));
}

#[test]
fn when_the_previous_release_cannot_start_either_the_report_says_how_to_recover() {
    let stage = Stage::new();
    let v1 = stage.deploy_ok(&App::new("v1"));
    let images: serde_json::Value = serde_json::from_str(&v1.output("images").unwrap()).unwrap();
    let backend = images["backend"].as_str().unwrap();
    // Make release 1's backend image unobtainable: gone from the engine and the registry.
    let (repo, digest) = backend.split_once('@').unwrap();
    let path = repo.split_once('/').unwrap().1;
    let status = sh(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "DELETE",
        "-u",
        &format!("{}:{}", stage.registry.user, stage.registry.password),
        &format!(
            "http://{}/v2/{path}/manifests/{digest}",
            stage.registry.addr
        ),
    ]));
    assert_eq!(status.trim(), "202");
    // A running container keeps its image alive, so stop the app first (as if the host had
    // been restarted), then remove the image itself, by id.
    let id = Stage::image_id(backend);
    sh(Command::new("sh").arg("-c").arg(format!(
        "docker ps -aq --filter label=com.docker.compose.project={} | xargs -r docker rm -f",
        stage.project
    )));
    sh(Command::new("docker").args(["image", "rm", "-f", "--no-prune", &id]));
    let run = stage
        .berth(&App::new("v2").mode("500"))
        .input("health-timeout", "3s")
        .run();
    assert_eq!(run.code, 1);
    assert_eq!(
        run.output("status").as_deref(),
        Some("failed"),
        "{}",
        run.stdout
    );
    let err = run.errors()[0];
    assert!(err.contains("DEPLOY FAILED AND ROLLBACK FAILED"), "{err}");
    assert!(
        err.contains("Recover by hand")
            && err.contains("ssh -p")
            && err.contains("up -d --remove-orphans"),
        "{err}"
    );
}

#[test]
fn mode_rollback_restores_the_release_before_current_or_a_named_one() {
    let stage = Stage::new();
    let r1 = stage.deploy_ok(&App::new("v1")).output("release").unwrap();
    let r2 = stage.deploy_ok(&App::new("v2")).output("release").unwrap();
    stage.deploy_ok(&App::new("v3"));
    let run = stage.roll_back(None);
    assert_eq!(run.output("status").as_deref(), Some("rolled-back"));
    assert_eq!(run.output("release").as_deref(), Some(r2.as_str()));
    assert_eq!(stage.current().as_deref(), Some(r2.as_str()));
    assert!(stage.health().1.contains("\"version\":\"v2\""));
    assert!(
        !run.stdout.contains("Build backend"),
        "mode: rollback must not build"
    );

    // Again: it walks further back (the release it left is recorded rolled-back), it
    // does not flip back to v3.
    let run = stage.roll_back(None);
    assert_eq!(
        run.output("release").as_deref(),
        Some(r1.as_str()),
        "{}",
        run.stdout
    );
    assert_eq!(stage.record(&r2)["outcome"], "rolled-back");

    stage.roll_back(Some(&r2));
    assert_eq!(stage.current().as_deref(), Some(r2.as_str()));
    assert!(stage.health().1.contains("\"version\":\"v2\""));
    assert_eq!(stage.record(&r2)["outcome"], "deployed", "proven again");
}

/// A probe built from inputs, as the pipeline builds it.
fn probe(url: &str, extra: &[(&str, &str)]) -> HealthProbe {
    let mut b = Berth::valid().input("health-url", url);
    for (k, v) in extra {
        b = b.input(k, v);
    }
    let env = b.env_map();
    let cfg = inputs::parse(&env, &GithubContext::from_env(&env)).expect("valid inputs");
    HealthProbe::from_config(&cfg.health, cfg.health.url.as_ref().unwrap()).unwrap()
}

fn once(p: &HealthProbe) -> ProbeOutcome {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(p.probe(Duration::from_secs(2)))
}

struct TlsServer {
    port: u16,
    ca: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl TlsServer {
    /// `openssl s_server` with a certificate for 127.0.0.1 signed by a fresh CA.
    fn start() -> TlsServer {
        TlsServer::serving(&[])
    }

    /// With `files`, `s_server -HTTP` answers `GET /name` with the file `name` as the whole
    /// raw HTTP response (status line and headers included); without, `-www` status pages.
    fn serving(files: &[(&str, &str)]) -> TlsServer {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let run = |args: &str| {
            sh(Command::new("sh")
                .arg("-c")
                .arg(format!("cd {} && {args}", d.display())))
        };
        run("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=berth-test-ca 2>/dev/null");
        run("openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj /CN=127.0.0.1 2>/dev/null");
        std::fs::write(d.join("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        run("openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 1 -extfile ext 2>/dev/null");
        for (name, body) in files {
            std::fs::write(d.join(name), body).unwrap();
        }
        let port = free_port();
        let child = Command::new("openssl")
            .args([
                "s_server",
                "-quiet",
                if files.is_empty() { "-www" } else { "-HTTP" },
                "-accept",
                &format!("127.0.0.1:{port}"),
                "-cert",
                "srv.pem",
                "-key",
                "srv.key",
            ])
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsServer {
            port,
            ca: std::fs::read_to_string(d.join("ca.pem")).unwrap(),
            child,
            _dir: dir,
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn https_with_a_custom_ca_passes_and_without_it_fails_with_a_tls_reason() {
    let tls = TlsServer::start();
    let url = format!("https://127.0.0.1:{}/", tls.port);
    assert_eq!(
        once(&probe(&url, &[("health-ca-cert", &tls.ca)])),
        ProbeOutcome::Healthy { status: 200 }
    );
    match once(&probe(&url, &[])) {
        ProbeOutcome::Tls(reason) => {
            assert!(reason.to_lowercase().contains("certificate"), "{reason}")
        }
        other => panic!("expected a TLS error, got {other:?}"),
    }
    assert_eq!(
        once(&probe(&url, &[("health-insecure-tls", "true")])),
        ProbeOutcome::Healthy { status: 200 }
    );
}

#[test]
fn refused_dns_and_timeout_each_have_their_own_reason() {
    let port = free_port();
    assert!(matches!(
        once(&probe(&format!("http://127.0.0.1:{port}/health"), &[])),
        ProbeOutcome::Refused(_)
    ));
    assert!(matches!(
        once(&probe("http://berth-no-such-host.invalid/health", &[])),
        ProbeOutcome::Dns(_)
    ));
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/health", silent.local_addr().unwrap());
    assert_eq!(once(&probe(&url, &[])), ProbeOutcome::Timeout);
    drop(silent);
}

#[test]
fn a_health_wait_never_overruns_its_deadline_and_reports_counts() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/health", silent.local_addr().unwrap());
    let p = probe(
        &url,
        &[("health-timeout", "1s"), ("health-interval", "100ms")],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let record = rt.block_on(p.wait(started, |_| {}));
    assert!(record.healthy_after.is_none());
    assert!(
        record
            .attempts
            .iter()
            .all(|a| a.outcome == ProbeOutcome::Timeout),
        "{:?}",
        record.attempts
    );
    let summary = record.failure_summary();
    assert!(
        summary.contains("last: timeout") && summary.contains("timeout"),
        "{summary}"
    );
    // Each probe was cut at the deadline: the last attempt began before it.
    assert!(record.attempts.last().unwrap().offset <= Duration::from_millis(1500));
}

#[test]
fn a_container_not_running_the_pinned_digest_fails_verification() {
    let stage = Stage::new();
    let v1 = stage.deploy_ok(&App::new("v1"));
    let v2 = stage.deploy_ok(&App::new("v2"));
    let r1 = v1.output("release").unwrap();
    let v2_images: serde_json::Value = serde_json::from_str(&v2.output("images").unwrap()).unwrap();
    // Release 1's record now claims v2's backend, while its compose override still runs
    // v1's: what runs is not what the record says.
    let path = stage
        .deploy_dir
        .join(format!(".berth/releases/{r1}/release.json"));
    let mut record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    record["images"]["backend"] = v2_images["backend"].clone();
    std::fs::write(&path, record.to_string()).unwrap();
    let run = stage
        .berth(&App::new("v2"))
        .input("mode", "rollback")
        .input("release", &r1)
        .run();
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(run.output("status").as_deref(), Some("failed"));
    let err = run.errors()[0];
    assert!(
        err.contains("running images do not match") && err.contains("backend"),
        "{err}"
    );
}

/// The request headers a [`Recorder`] saw, one list per request.
type SeenHeaders = std::sync::Arc<std::sync::Mutex<Vec<Vec<(String, String)>>>>;

/// A plain HTTP server on loopback that answers every request with `answer` and records
/// the headers it got, so a test can see what reached it.
struct Recorder {
    url: String,
    seen: SeenHeaders,
    server: std::sync::Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recorder {
    fn start(answer: impl Fn(&str) -> (u16, Option<String>) + Send + 'static) -> Recorder {
        let server = std::sync::Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let url = format!("http://{}", server.server_addr().to_ip().unwrap());
        let seen: SeenHeaders = Default::default();
        let (srv, log) = (server.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            for req in srv.incoming_requests() {
                let headers = req
                    .headers()
                    .iter()
                    .map(|h| (h.field.to_string(), h.value.to_string()))
                    .collect();
                log.lock().unwrap().push(headers);
                let (status, location) = answer(req.url());
                let mut resp = tiny_http::Response::from_string("{}").with_status_code(status);
                if let Some(l) = location {
                    resp.add_header(tiny_http::Header::from_bytes("Location", l).unwrap());
                }
                let _ = req.respond(resp);
            }
        });
        Recorder {
            url,
            seen,
            server,
            thread: Some(thread),
        }
    }

    fn saw_header(&self, value: &str) -> bool {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .any(|(_, v)| v.contains(value))
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn health_headers_never_follow_a_redirect_to_another_origin() {
    let elsewhere = Recorder::start(|_| (200, None));
    let target = format!("{}/health", elsewhere.url);
    let app = Recorder::start(move |_| (302, Some(target.clone())));
    let p = probe(
        &format!("{}/health", app.url),
        &[("health-headers", "X-Api-Key: key-secret-7781")],
    );
    match once(&p) {
        ProbeOutcome::Redirect(why) => assert!(
            why.contains(&elsewhere.url) && why.contains("only within the health URL's origin"),
            "{why}"
        ),
        other => panic!("a cross-origin redirect must be refused: {other:?}"),
    }
    assert!(
        app.saw_header("key-secret-7781"),
        "the app itself gets the header"
    );
    assert!(
        !elsewhere.saw_header("key-secret-7781") && elsewhere.seen.lock().unwrap().is_empty(),
        "the other origin was contacted"
    );
}

#[test]
fn a_same_origin_redirect_is_followed_with_its_headers() {
    let app = Recorder::start(|path| match path {
        "/health" => (301, Some("/health/ready".into())),
        _ => (200, None),
    });
    let p = probe(
        &format!("{}/health", app.url),
        &[("health-headers", "X-Api-Key: key-secret-7782")],
    );
    assert_eq!(once(&p), ProbeOutcome::Healthy { status: 200 });
    let seen = app.seen.lock().unwrap().len();
    assert_eq!(seen, 2, "the redirect and the final URL");
    assert!(app.saw_header("key-secret-7782"));
}

#[test]
fn an_https_probe_is_never_downgraded_to_http() {
    let plain = Recorder::start(|_| (200, None));
    let redirect = format!(
        "HTTP/1.0 302 Found\r\nLocation: {}/health\r\nContent-Length: 0\r\n\r\n",
        plain.url
    );
    let tls = TlsServer::serving(&[("health", &redirect)]);
    let p = probe(
        &format!("https://127.0.0.1:{}/health", tls.port),
        &[
            ("health-ca-cert", &tls.ca),
            ("health-headers", "X-Api-Key: key-secret-7784"),
        ],
    );
    match once(&p) {
        ProbeOutcome::Redirect(why) => assert!(why.contains(&plain.url), "{why}"),
        other => panic!("an https -> http redirect must be refused: {other:?}"),
    }
    assert!(
        plain.seen.lock().unwrap().is_empty(),
        "the probe went on over http"
    );
}

#[test]
fn credentials_in_the_health_url_are_sent_but_never_printed() {
    let app = Recorder::start(|_| (500, None));
    let url = app
        .url
        .replace("http://", "http://probe:urlpw-secret-7783@")
        + "/health";
    let p = probe(&url, &[]);
    assert!(
        !p.shown_url().contains("urlpw-secret-7783"),
        "{}",
        p.shown_url()
    );
    assert!(matches!(once(&p), ProbeOutcome::Http { status: 500, .. }));
    assert!(app.saw_header("Basic "), "the credentials are used");
    let run = Berth::valid().input("health-url", &url).run();
    assert!(
        run.stdout.contains("::add-mask::urlpw-secret-7783"),
        "the password is masked"
    );
    let everything = run.everything();
    let leaked: Vec<&str> = everything
        .lines()
        .filter(|l| l.contains("urlpw-secret-7783") && !l.starts_with("::add-mask::"))
        .collect();
    assert!(leaked.is_empty(), "{leaked:#?}");
}

/// An endpoint that answers 200 and then streams its body without end, in chunks.
fn endless_body_server() -> (String, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    let thread = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut request = [0u8; 4096];
        let _ = conn.read(&mut request);
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
        let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
        if conn.write_all(head.as_bytes()).is_err() || conn.write_all(b"2\r\n[\"\r\n").is_err() {
            return;
        }
        // Until berth hangs up: never past the cap, if berth stops where it should.
        while conn.write_all(chunk.as_bytes()).is_ok() {}
    });
    (url, thread)
}

#[test]
fn a_health_body_that_streams_without_end_fails_the_probe_at_the_cap_not_the_timeout() {
    let (url, server) = endless_body_server();
    let started = std::time::Instant::now();
    let outcome = once(&probe(&url, &[("health-json", "/status=ok")]));
    assert_eq!(outcome, ProbeOutcome::BodyTooLarge, "{outcome}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "ended by the cap, not by the probe's 2 s limit: {:?}",
        started.elapsed()
    );
    assert!(
        outcome.to_string().contains("the body passed 1 MiB"),
        "{outcome}"
    );
    server.join().unwrap();
}
