//! berth against the hand-written pipeline and against the physical limit, on the rig.
//! `scripts/bench` runs this with `--full` (5 samples each) and writes BENCHMARKS.md;
//! plain `cargo test` runs it once in quick mode, which asserts no timings.

mod edge;
#[allow(dead_code)]
#[path = "../it/support/mod.rs"]
mod support;
mod swarm;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::fake_github::{FakeGithub, FakeRun, IN_PROGRESS, SUCCESS};
use support::fleet::Fleet;
use support::rig::sh;
use support::stage::{App, Stage};
use support::{Berth, SHA};

/// What the measured figures mean, kept with the generator so every run carries it.
const ANALYSIS: &str = r#"
## Where the time goes

- **berth vs the limit.** berth adds a roughly constant overhead ({overhead} in this run,
  berth minus limit in table 1), so the ratio is worst when the deploy itself is shortest
  (D=0). The limit runs one SSH command (`pull && up`); before its verdict berth also
  connects and checks the host key, starts its remote session (one `sh` per host on one
  channel, through which every command runs: no login shell per command; the {exec_cost}
  below is what a separate exec costs on this rig, whose root shell rc starts pyenv), runs
  preflight (one `docker info`, which also names the Compose plugin's version, so a host that cannot
  take the release is found before anything is pushed), takes the lock, snapshots `current`,
  the containers and the records, makes the release dir and uploads four files over one SFTP
  channel, asks compose for its config (it fails on a variable nothing sets before anything
  is pulled), pins what compose names by tag, writes the pins and the record, switches
  `current`, and verifies the running digests (beside the first probes, from the
  containers' own image references, resolving a pin only when they differ). Each docker CLI
  start costs some 30 to 80 ms here; `scripts/bench --profile` prints one deploy line by line
  with every remote command's time.
- **The verdict** here is the later of the first passing probe and the digest verification
  (`verified ...`), which run side by side: a release is judged only when both are in.
- **Ready to verdict.** The "berth minus limit" figure is that same fixed overhead: it is
  not probe latency (probes run every 100 ms here and stop at the first passing answer).
- **Several hosts.** The "hosts" here are sshd instances in mount namespaces on one Docker
  engine with 2 CPU cores, so 4 concurrent `compose pull`/`up` runs share one daemon and two
  cores and mostly run one after another. berth connects to and deploys all hosts in parallel
  (up to 8 at once); what this rig cannot show is separate machines. Table 5's berth/limit(N)
  compares berth with the same N-host limit run in parallel on the same engine.
- **A release answering 500** gets its verdict only at `health-timeout` (30 s by default),
  because a 500 can turn healthy; berth then reports the status and body. Lower
  `health-timeout` for faster verdicts. A crash-looping service is caught in seconds.

## Earlier runs (for comparison; figures from those runs, not this one)

| when | remote commands per deploy (D=0) | berth/limit at D=0 | overhead (berth minus limit) |
|---|---|---:|---:|
| before the remote session: each command an exec with a login shell, plus a heartbeat connection | about 15 execs, 7 SFTP writes | 2.43x | 1.33 s |
| remote session (one `sh` per host), 2026-11-25 05:34 UTC | 14 commands, 7 SFTP writes, 1 SFTP dir | 1.43x | 0.50 s (D=0), 0.58 s worst |
| renames through the session, one `docker info`, the probe beside verification, 2026-11-25 09:15 UTC | 16 commands, 7 SFTP writes, 1 SFTP dir | 1.27x | 0.24 s (D=0) |
| this run | see table 1 | see table 1 | {overhead} |

The change from the second row to the third: a file uploaded over an existing one was renamed
with a separate exec (a login shell, about 86 ms, three times per deploy) and now goes
through the session; preflight's docker CLI starts ran side by side (one `docker info` since); the probe no longer
waits for the digest verification (which asked the host's thread for the health URLs while it
was busy verifying); and verification resolves a pin only when a container's image reference
differs from it.

The change from the third row to this run: `compose config` runs beside the pull in one
command (its CLI start and parse, about 70 ms, hide behind the pull), and the same command
tells what each image the model names is (no separate pin command); `up` and the switch of
`current` are one command; verification is one `docker ps` when every container was made
from its pin (two CLI starts before); and `docker image inspect` of several images is one
CLI start.
"#;

struct Opts {
    full: bool,
    runs: usize,
    out: Option<String>,
}

fn opts() -> Opts {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--full");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1).cloned());
    Opts {
        full,
        runs: if full { 5 } else { 1 },
        out,
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if s.is_empty() {
        return f64::NAN;
    }
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

fn fmt(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a timed berth run saw: seconds from start to the health verdict, to exit, and
/// the run itself.
struct Timed {
    verdict: f64,
    total: f64,
    stdout: String,
    code: i32,
}

/// Runs berth, timestamping each stdout line: the verdict is the end of the first
/// `Health` group (healthy, unhealthy or crash-looping), or the digest verification
/// (`verified ...`), which runs beside the probe, if that came later.
fn timed(b: &Berth, mut on_verdict: impl FnMut()) -> Timed {
    let mut child = b
        .command()
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut verdict = None;
    let mut verified = None;
    let mut in_health = false;
    let mut stdout = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.starts_with("::group::Health") && verdict.is_none() {
            in_health = true;
        } else if in_health && line == "::endgroup::" {
            in_health = false;
            verdict = Some(started.elapsed().as_secs_f64());
            on_verdict();
        }
        // The first verification is the deploy's (a restore verifies again later).
        if (line.contains(" run the pinned digests") || line.contains(": converged: every service"))
            && verified.is_none()
        {
            verified = Some(started.elapsed().as_secs_f64());
        }
        stdout.push_str(&line);
        stdout.push('\n');
    }
    let code = child.wait().unwrap().code().unwrap_or(-1);
    let total = started.elapsed().as_secs_f64();
    let verdict = match (verdict, verified) {
        (Some(h), Some(v)) => Some(h.max(v)),
        (h, _) => h,
    };
    Timed {
        verdict: verdict.unwrap_or(f64::NAN),
        total,
        stdout,
        code,
    }
}

/// Pre-built images for each start delay, pushed once; deploys then only pull and start.
fn push_app(stage: &Stage, version: &str, mode: &'static str, delay: u32) -> (String, String) {
    let ws = tempfile::tempdir().unwrap();
    App::new(version)
        .mode(mode)
        .start_delay(delay)
        .write(ws.path(), stage.port);
    let reg = &stage.registry;
    sh(Command::new("sh").arg("-c").arg(format!(
        "printf %s '{}' | docker login -u {} --password-stdin {} >/dev/null 2>&1",
        reg.password, reg.user, reg.addr
    )));
    let mut refs = Vec::new();
    for svc in ["backend", "frontend"] {
        let r = format!("{}/bench/{svc}:{version}", reg.addr);
        sh(Command::new("docker")
            .args(["build", "-q", "-t", &r])
            .arg(ws.path().join(svc)));
        sh(Command::new("docker").args(["push", "-q", &r]));
        refs.push(r);
    }
    (refs[0].clone(), refs[1].clone())
}

fn compose(backend: &str, frontend: &str, port: u16) -> String {
    format!(
        "services:\n  backend:\n    image: {backend}\n    init: true\n    env_file: .env\n    restart: unless-stopped\n    ports:\n      - \"127.0.0.1:{port}:8080\"\n  frontend:\n    image: {frontend}\n    init: true\n    restart: unless-stopped\n"
    )
}

/// A berth deploy of pre-pushed images (`images` empty: berth pins the pulled digests).
fn berth_deploy(stage: &Stage, refs: &(String, String), timeout: &str) -> Berth {
    let b = stage
        .berth(&App::new("bench"))
        .input("images", "")
        .input("health-timeout", timeout)
        .input("health-interval", "100ms");
    std::fs::write(
        b.workspace().join("docker-compose.staging.yml"),
        compose(&refs.0, &refs.1, stage.port),
    )
    .unwrap();
    b
}

fn reset(project: &str) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!("docker ps -aq --filter label=com.docker.compose.project={project} | xargs -r docker rm -f >/dev/null 2>&1"))
        .status();
}

/// The field notes' pipeline, as a script: pull, up, prune over ssh; sleep 30; curl -f.
/// Quick mode swaps `docker system prune -f` for a no-op prune so it cannot disturb tests
/// running beside it on the shared engine.
fn hand_written(stage: &Stage, dir: &std::path::Path, full: bool, sleep: u32) -> (f64, bool) {
    let prune = if full {
        "docker system prune -f"
    } else {
        "docker image prune -f --filter label=berth-bench-nothing"
    };
    let script = format!(
        "ssh -i {key} -p {port} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR root@127.0.0.1 \
         'cd {dir} && docker compose pull -q && docker compose up -d --remove-orphans && {prune}' >/dev/null 2>&1 \
         && sleep {sleep} && curl -sf -o /dev/null {url}",
        key = stage.sshd.user_key.private.display(),
        port = stage.sshd.port,
        dir = dir.display(),
        url = stage.health_url()
    );
    let started = Instant::now();
    let ok = Command::new("sh")
        .arg("-c")
        .arg(script)
        .status()
        .unwrap()
        .success();
    (started.elapsed().as_secs_f64(), ok)
}

/// The same ssh + pull + up, then a tight 50 ms curl loop until healthy: the limit.
fn limit(stage: &Stage, dir: &std::path::Path) -> f64 {
    let script = format!(
        "ssh -i {key} -p {port} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR root@127.0.0.1 \
         'cd {dir} && docker compose pull -q && docker compose up -d --remove-orphans' >/dev/null 2>&1; \
         i=0; until curl -s {url} | grep -q '\"status\":\"healthy\"'; do i=$((i+1)); [ $i -gt 1200 ] && exit 1; sleep 0.05; done",
        key = stage.sshd.user_key.private.display(),
        port = stage.sshd.port,
        dir = dir.display(),
        url = stage.health_url()
    );
    time_script(&script, "the limit run never became healthy")
}

/// Seconds a shell script takes; it must succeed (`what` says what failed otherwise).
fn time_script(script: &str, what: &str) -> f64 {
    let started = Instant::now();
    assert!(
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .status()
            .unwrap()
            .success(),
        "{what}"
    );
    started.elapsed().as_secs_f64()
}

/// The limit for a fleet: on every host at once, one `ssh host 'pull && up'` of `compose`
/// (berth's containers removed first: they hold the app port), then a 50 ms curl loop on
/// that host until healthy. Seconds until every host is.
fn fleet_limit(fleet: &Fleet, compose: &str) -> f64 {
    for h in &fleet.hosts {
        let dir = h.deploy_dir.join("limit");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("docker-compose.yml"), compose).unwrap();
        std::fs::write(dir.join(".env"), "GREETING=hello\n").unwrap();
        for project in [
            format!("{}-{}", fleet.project, h.tag),
            format!("limit-{}", h.tag),
        ] {
            reset(&project);
        }
    }
    let inside = fleet.shared_deploy_dir.join("limit");
    let started = Instant::now();
    std::thread::scope(|s| {
        for h in &fleet.hosts {
            let script = format!(
                "ssh -i {key} -p {port} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR root@{ip} \
                 'cd {dir} && docker compose -p limit pull -q && docker compose -p limit up -d --remove-orphans' >/dev/null 2>&1; \
                 i=0; until curl -s http://{ip}:{app}/cgi-bin/health | grep -q '\"status\":\"healthy\"'; do i=$((i+1)); [ $i -gt 1200 ] && exit 1; sleep 0.05; done",
                key = fleet.user_key.private.display(),
                port = fleet.ssh_port,
                ip = h.ip,
                dir = inside.display(),
                app = fleet.app_port,
            );
            s.spawn(move || {
                let ok = Command::new("sh")
                    .arg("-c")
                    .arg(script)
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "the fleet limit run never became healthy");
            });
        }
    });
    let took = started.elapsed().as_secs_f64();
    for h in &fleet.hosts {
        reset(&format!("limit-{}", h.tag));
    }
    took
}

/// What one deploy sends to its host, counted from berth's debug log: SSH connections
/// made, remote commands (each one round trip on the open session) and SFTP writes.
fn round_trips(b: Berth) -> String {
    let out = b.env("RUNNER_DEBUG", "1").command().output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let log = String::from_utf8_lossy(&out.stderr);
    let count = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    format!(
        "{} remote commands and {} SFTP writes (plus {} SFTP dirs)",
        count(" ran "),
        count(" uploaded "),
        count(" made dir ")
    )
}

/// The cost of one remote command on an open SSH session, median ms: `true`, which is
/// only the host's login shell, and a docker CLI start, which most of berth's commands are.
fn remote_command_cost(stage: &Stage, runs: usize) -> String {
    let session = stage.sshd.session();
    let median_ms = |line: &str| {
        let samples: Vec<f64> = (0..runs)
            .map(|_| {
                let started = Instant::now();
                let out = session
                    .exec(line, None, Duration::from_secs(30), |_| {})
                    .unwrap();
                assert_eq!(out.status, 0, "{line}: {}", out.stderr);
                started.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        median(&samples)
    };
    format!(
        "{:.0} ms for `true`, {:.0} ms for `docker version`",
        median_ms("true"),
        median_ms("docker version --format '{{.Client.Version}}'")
    )
}

fn main() {
    if std::env::args().any(|a| a == "--profile") {
        return profile();
    }
    let o = opts();
    let mut md = String::new();
    let mut goals: Vec<(String, bool, String)> = Vec::new();
    if std::env::args().any(|a| a == "--swarm-only") {
        return swarm_only(&o);
    }
    if std::env::args().any(|a| a == "--edge-only") {
        return edge_only(&o);
    }
    let machine = format!(
        "{} cores, {}; {}; Docker engine {}",
        sh(&mut Command::new("nproc")).trim(),
        sh(Command::new("sh").args(["-c", "free -h | awk '/Mem/ {print $2}'"])).trim(),
        sh(Command::new("uname").args(["-sr"])).trim(),
        sh(Command::new("docker").args(["version", "-f", "{{.Server.Version}}"])).trim()
    );
    println!(
        "bench: {} mode, {} run(s) per figure",
        if o.full { "full" } else { "quick" },
        o.runs
    );

    // 1. Time to a healthy verdict.
    let stage = Stage::new();
    let delays: Vec<u32> = if o.full { vec![0, 2, 10] } else { vec![0] };
    md.push_str("## 1. Time to a healthy verdict\n\nFrom the start of the deploy to the verdict, seconds. The app is ready D s after its container starts. All three pull the same pre-pushed images and start the same containers.\n\n| D | berth (median) | limit (median) | hand-written (median) | berth/limit | berth/hand-written | samples berth / limit / hand-written |\n|---|---:|---:|---:|---:|---:|---|\n");
    let hand_dir = stage.sshd.dir().join("handwritten");
    std::fs::create_dir_all(&hand_dir).unwrap();
    let mut worst_limit_ratio: f64 = 0.0;
    let mut ready_to_verdict = Vec::new();
    for d in &delays {
        let refs = push_app(&stage, &format!("d{d}"), "healthy", *d);
        std::fs::write(
            hand_dir.join("docker-compose.yml"),
            compose(&refs.0, &refs.1, stage.port),
        )
        .unwrap();
        std::fs::write(hand_dir.join(".env"), "GREETING=hello\n").unwrap();
        let (mut b, mut l, mut h) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..o.runs {
            reset(&stage.project);
            reset("handwritten");
            let t = timed(&berth_deploy(&stage, &refs, "60s"), || {});
            assert_eq!(t.code, 0, "berth bench deploy failed:\n{}", t.stdout);
            b.push(t.verdict);
            reset(&stage.project);
            l.push(limit(&stage, &hand_dir));
            reset("handwritten");
            let (secs, ok) = hand_written(&stage, &hand_dir, o.full, if o.full { 30 } else { 1 });
            assert!(ok, "the hand-written pipeline failed");
            h.push(secs);
            reset("handwritten");
        }
        let (mb, ml, mh) = (median(&b), median(&l), median(&h));
        worst_limit_ratio = worst_limit_ratio.max(mb / ml);
        ready_to_verdict.push(mb - ml);
        md.push_str(&format!(
            "| {d} | {mb:.2} | {ml:.2} | {mh:.2} | {:.2}x | {:.2}x | {} / {} / {} |\n",
            mb / ml,
            mb / mh,
            fmt(&b),
            fmt(&l),
            fmt(&h)
        ));
    }
    goals.push((
        "berth at most 1.2x the limit".into(),
        worst_limit_ratio <= 1.2,
        format!("worst {worst_limit_ratio:.2}x"),
    ));
    let refs0 = push_app(&stage, "d0", "healthy", 0);
    reset(&stage.project);
    let trips = round_trips(berth_deploy(&stage, &refs0, "60s"));
    md.push_str(&format!(
        "\nRound trips of one deploy (the D=0 case above), from `RUNNER_DEBUG=1`: {trips}. The limit makes one (`ssh host 'pull && up'`).\n"
    ));
    let extra = ready_to_verdict.iter().cloned().fold(f64::MIN, f64::max);
    let overhead = ready_to_verdict
        .iter()
        .zip(&delays)
        .map(|(o, d)| format!("{o:.2} s at D={d}"))
        .collect::<Vec<_>>()
        .join(", ");
    let exec_cost = remote_command_cost(&stage, if o.full { 20 } else { 3 });
    goals.push((
        "at most 1 s from ready to verdict (berth minus limit)".into(),
        extra <= 1.0,
        format!("worst {extra:.2} s"),
    ));

    // 2 & 3. Failure verdicts and rollback RTO.
    md.push_str("\n## 2. Failure verdict and 3. rollback RTO\n\nBerth: seconds from the start of the deploy to its verdict (health-timeout 30 s, its default). Hand-written: the script's end (sleep 30, then curl -f fails). RTO: from berth's verdict until a 50 ms poller sees the previous release healthy again.\n\n| failure | berth verdict (median) | hand-written verdict (median) | ratio | RTO (median) | samples verdict / RTO / hand |\n|---|---:|---:|---:|---:|---|\n");
    let good = push_app(&stage, "good", "healthy", 0);
    let mut worst_rto: f64 = 0.0;
    for (label, mode) in [("answers 500", "500"), ("crash-loops", "crash")] {
        let bad = push_app(&stage, &format!("bad-{mode}"), mode, 0);
        let timeout = if o.full { "30s" } else { "3s" };
        let (mut v, mut r, mut h) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..o.runs {
            reset(&stage.project);
            let ok = timed(&berth_deploy(&stage, &good, "30s"), || {});
            assert_eq!(ok.code, 0, "{}", ok.stdout);
            std::thread::sleep(Duration::from_secs(1));
            let url = stage.health_url();
            let verdict_at = std::sync::Arc::new(std::sync::Mutex::new(None::<Instant>));
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let (va, st) = (verdict_at.clone(), stop.clone());
            let poller = std::thread::spawn(move || {
                // After the verdict, the first healthy answer from the good release.
                while !st.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Some(t0) = *va.lock().unwrap() {
                        let out = Command::new("curl")
                            .args(["-s", "-m", "1", &url])
                            .output()
                            .unwrap();
                        if String::from_utf8_lossy(&out.stdout).contains("\"version\":\"good\"") {
                            return Some(t0.elapsed().as_secs_f64());
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                None
            });
            let va2 = verdict_at.clone();
            let t = timed(&berth_deploy(&stage, &bad, timeout), move || {
                *va2.lock().unwrap() = Some(Instant::now())
            });
            assert!(
                t.stdout.contains("is serving and healthy"),
                "no rollback:\n{}",
                t.stdout
            );
            std::thread::sleep(Duration::from_millis(500));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            v.push(t.verdict);
            r.push(poller.join().unwrap().unwrap_or(f64::NAN));
            std::fs::write(
                hand_dir.join("docker-compose.yml"),
                compose(&bad.0, &bad.1, stage.port),
            )
            .unwrap();
            reset("handwritten");
            reset(&stage.project);
            let (secs, ok) = hand_written(&stage, &hand_dir, o.full, if o.full { 30 } else { 1 });
            assert!(!ok, "the hand-written pipeline passed a broken release");
            h.push(secs);
            reset("handwritten");
            std::thread::sleep(Duration::from_secs(1));
        }
        let (mv, mr, mh) = (median(&v), median(&r), median(&h));
        worst_rto = worst_rto.max(mr);
        if mode == "crash" {
            goals.push((
                "a crash-loop verdict within 5 s".into(),
                mv <= 5.0,
                format!("{mv:.2} s from deploy start (includes pull and up)"),
            ));
        }
        md.push_str(&format!(
            "| {label} | {mv:.2} | {mh:.2} | {:.2}x | {mr:.2} | {} / {} / {} |\n",
            mv / mh,
            fmt(&v),
            fmt(&r),
            fmt(&h)
        ));
    }
    goals.push((
        "a rollback RTO within 10 s".into(),
        worst_rto <= 10.0,
        format!("worst {worst_rto:.2} s"),
    ));
    drop(stage);

    // 4. No-change re-deploy.
    md.push_str("\n## 4. No-change re-deploy\n\nThe same commit deployed again with `images` set (berth builds and pushes): total seconds, and blob uploads the registry completed during the re-deploy.\n\n| figure | median | samples |\n|---|---:|---|\n");
    let stage = Stage::new();
    let event = stage.deploy_dir.with_file_name("push.json");
    std::fs::write(
        &event,
        serde_json::json!({
            "head_commit": {"timestamp": "2026-11-24T10:00:00Z"},
            "repository": {"full_name": "acme/shop", "default_branch": "main"}
        })
        .to_string(),
    )
    .unwrap();
    let first = stage
        .berth(&App::new("same"))
        .env("GITHUB_EVENT_PATH", event.to_str().unwrap())
        .run();
    assert_eq!(first.code, 0, "{}", first.stdout);
    let (mut secs, mut blobs) = (Vec::new(), Vec::new());
    for _ in 0..o.runs {
        std::thread::sleep(Duration::from_secs(1));
        let before = stage.registry.blob_uploads();
        let t = timed(
            &stage
                .berth(&App::new("same"))
                .env("GITHUB_EVENT_PATH", event.to_str().unwrap()),
            || {},
        );
        assert_eq!(t.code, 0, "{}", t.stdout);
        secs.push(t.total);
        blobs.push((stage.registry.blob_uploads() - before) as f64);
    }
    md.push_str(&format!(
        "| total seconds | {:.2} | {} |\n| blobs uploaded | {} | {} |\n",
        median(&secs),
        fmt(&secs),
        median(&blobs),
        fmt(&blobs)
    ));
    goals.push((
        "0 blobs on re-deploy".into(),
        blobs.iter().all(|b| *b == 0.0),
        fmt(&blobs),
    ));
    drop(stage);

    // 5. Several hosts.
    md.push_str("\n## 5. Several hosts\n\nWall time of one deploy (pre-pushed images, pull + up + health on every host) to N hosts, each an sshd in its own namespace on the shared engine; and the limit for N hosts: one `ssh host 'compose pull && compose up -d'` per host, all in parallel, each followed by a 50 ms curl loop on that host, until every host is healthy. berth/limit(N) separates berth's own serialisation from the shared engine's.\n\n| hosts | berth median s | ratio to 1 host | limit(N) median s | berth/limit(N) | samples berth / limit |\n|---|---:|---:|---:|---:|---|\n");
    let counts: Vec<usize> = if o.full { vec![1, 2, 4] } else { vec![1, 2] };
    let mut one = f64::NAN;
    let mut worst_hosts: f64 = 0.0;
    for n in counts {
        let fleet = Fleet::start(n);
        let reg_stage_refs = {
            let ws = tempfile::tempdir().unwrap();
            App::new("fleet").write(ws.path(), fleet.app_port);
            let reg = &fleet.registry;
            sh(Command::new("sh").arg("-c").arg(format!(
                "printf %s '{}' | docker login -u {} --password-stdin {} >/dev/null 2>&1",
                reg.password, reg.user, reg.addr
            )));
            let mut refs = Vec::new();
            for svc in ["backend", "frontend"] {
                let r = format!("{}/bench/{svc}:fleet", reg.addr);
                sh(Command::new("docker")
                    .args(["build", "-q", "-t", &r])
                    .arg(ws.path().join(svc)));
                sh(Command::new("docker").args(["push", "-q", &r]));
                refs.push(r);
            }
            refs
        };
        let mut s = Vec::new();
        let mut limit_compose = String::new();
        for _ in 0..o.runs {
            let b = fleet.berth(&App::new("fleet")).input("images", "");
            let c =
                std::fs::read_to_string(b.workspace().join("docker-compose.staging.yml")).unwrap();
            let c = c
                .replace(
                    "image: shop/backend",
                    &format!("image: {}", reg_stage_refs[0]),
                )
                .replace(
                    "image: shop/frontend",
                    &format!("image: {}", reg_stage_refs[1]),
                );
            std::fs::write(b.workspace().join("docker-compose.staging.yml"), &c).unwrap();
            let t = timed(&b, || {});
            assert_eq!(t.code, 0, "{}", t.stdout);
            s.push(t.total);
            std::thread::sleep(Duration::from_secs(1));
            if limit_compose.is_empty() {
                limit_compose = c;
            }
        }
        let mut l = Vec::new();
        for _ in 0..o.runs {
            l.push(fleet_limit(&fleet, &limit_compose));
        }
        let (m, ml) = (median(&s), median(&l));
        if n == 1 {
            one = m;
        }
        worst_hosts = worst_hosts.max(m / one);
        md.push_str(&format!(
            "| {n} | {m:.2} | {:.2}x | {ml:.2} | {:.2}x | {} / {} |\n",
            m / one,
            m / ml,
            fmt(&s),
            fmt(&l)
        ));
    }
    goals.push((
        "4 hosts at most 1.5x of 1 host".into(),
        worst_hosts <= 1.5,
        format!("worst {worst_hosts:.2}x"),
    ));

    // 6. CI wait cost.
    let fake = FakeGithub::start();
    let mut script = vec![IN_PROGRESS; 12];
    script.push(SUCCESS);
    fake.workflow(1, "CI", "ci.yml")
        .run("ci.yml", FakeRun::new(1, SHA, &script));
    let interval = if o.full { "10s" } else { "50ms" };
    let started = Instant::now();
    let run = Berth::valid()
        .env("GITHUB_API_URL", &fake.url)
        .input("ci-poll-interval", interval)
        .input("ci-timeout", "5m")
        .run();
    let waited = started.elapsed().as_secs_f64();
    assert!(
        run.stdout.contains("ci.yml: completed, success"),
        "{}",
        run.stdout
    );
    // The gate's requests only: the run goes on to create a Deployment and fail at connect.
    let reqs: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.url.contains("/actions/"))
        .collect();
    let counted = reqs.iter().filter(|r| r.status != 304).count();
    let not_modified = reqs.len() - counted;
    md.push_str(&format!("\n## 6. CI wait cost\n\nA run in progress for 12 polls then successful, polled every {interval} ({waited:.0} s in all; the 2-minute wait at 10 s in full mode), against the fake GitHub API.\n\n| requests | counted against the rate limit | answered 304 |\n|---:|---:|---:|\n| {} | {counted} | {not_modified} |\n", reqs.len()));
    goals.push((
        "at most 2 counted API requests per 2-minute wait".into(),
        counted <= 2,
        format!("{counted}"),
    ));

    // 7. Action start-up.
    let root = env!("CARGO_MANIFEST_DIR");
    let floor_ctx = tempfile::tempdir().unwrap();
    std::fs::copy("/bin/busybox", floor_ctx.path().join("busybox")).unwrap();
    std::fs::write(
        floor_ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/true\nENTRYPOINT [\"/bin/true\"]\n",
    )
    .unwrap();
    let (mut act_s, mut floor_s) = (Vec::new(), Vec::new());
    for _ in 0..o.runs {
        let _ = Command::new("docker")
            .args([
                "image",
                "rm",
                "-f",
                "berth-bench-action",
                "berth-bench-floor",
            ])
            .output();
        let t = Instant::now();
        sh(Command::new("docker").args(["build", "-q", "-t", "berth-bench-action", root]));
        sh(Command::new("docker").args(["run", "--rm", "berth-bench-action", "--version"]));
        act_s.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        sh(Command::new("docker")
            .args(["build", "-q", "-t", "berth-bench-floor"])
            .arg(floor_ctx.path()));
        sh(Command::new("docker").args(["run", "--rm", "berth-bench-floor"]));
        floor_s.push(t.elapsed().as_secs_f64());
    }
    let size: f64 = sh(Command::new("docker").args([
        "image",
        "inspect",
        "-f",
        "{{.Size}}",
        "berth-bench-action",
    ]))
    .trim()
    .parse()
    .unwrap();
    let floor_size: f64 = sh(Command::new("docker").args([
        "image",
        "inspect",
        "-f",
        "{{.Size}}",
        "berth-bench-floor",
    ]))
    .trim()
    .parse()
    .unwrap();
    let (ma, mf) = (median(&act_s), median(&floor_s));
    md.push_str(&format!("\n## 7. Action start-up\n\n`docker build` of the action image plus `docker run <image> --version`, from an empty cache for the image (the runner builds it per job), against a FROM-scratch busybox `true` image built the same way.\n\n| image | size | build + run (median s) | samples |\n|---|---:|---:|---|\n| berth | {:.1} MB | {ma:.2} | {} |\n| floor (busybox `true`) | {:.1} MB | {mf:.2} | {} |\n\nRatio berth/floor: {:.2}x.\n", size / 1e6, fmt(&act_s), floor_size / 1e6, fmt(&floor_s), ma / mf));
    goals.push((
        "start-up within 1.5 s".into(),
        ma <= 1.5,
        format!("{ma:.2} s"),
    ));

    md.push_str(&swarm::section(o.runs, &mut goals));
    md.push_str(&edge::section(o.runs, &mut goals));

    let mut head = format!(
        "# Benchmarks\n\nMeasured by `scripts/bench` ({} mode) on {} ({machine}). Every figure is the median of {} run(s), and every comparison is a ratio taken in the same invocation. Reproduce with `scripts/bench` (it writes this file).\n\n## Goals\n\n| goal | met | measured |\n|---|---|---|\n",
        if o.full { "full" } else { "quick" },
        sh(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])).trim(),
        o.runs
    );
    for (g, ok, m) in &goals {
        head.push_str(&format!(
            "| {g} | {} | {m} |\n",
            if *ok { "yes" } else { "**no**" }
        ));
    }
    head.push('\n');
    let report = head
        + &md
        + &ANALYSIS
            .replace("{overhead}", &overhead)
            .replace("{exec_cost}", &exec_cost);
    match &o.out {
        Some(path) => std::fs::write(path, &report).unwrap(),
        None => println!("{report}"),
    }
    println!("bench: done ({} figures)", goals.len());
}

/// `--swarm-only`: section 8 alone, put in place of the one in `--out` (or printed), with
/// its goal row; the other sections keep the figures of their own run.
fn swarm_only(o: &Opts) {
    let mut goals = Vec::new();
    let section = swarm::section(o.runs, &mut goals);
    section_only(o, "## 8. Docker Swarm", "--swarm", &section, &goals);
}

/// `--edge-only`: section 9 alone, the same way.
fn edge_only(o: &Opts) {
    let mut goals = Vec::new();
    let section = edge::section(o.runs, &mut goals);
    section_only(
        o,
        "## 9. What users see during a deploy",
        "--edge",
        &section,
        &goals,
    );
}

/// Puts `section` (headed `heading`) in place of its earlier run in `--out` (or prints
/// it), with its goal rows, and says which `scripts/bench` flag measured it when.
fn section_only(
    o: &Opts,
    heading: &str,
    flag: &str,
    section: &str,
    goals: &[(String, bool, String)],
) {
    let Some(path) = &o.out else {
        println!("{section}");
        return;
    };
    let mut text = std::fs::read_to_string(path).unwrap();
    let marker = format!("\n{heading}");
    if let Some(start) = text.find(&marker) {
        let end = text[start + 1..]
            .find("\n## ")
            .map_or(text.len(), |i| start + 1 + i);
        text.replace_range(start..end, "");
    }
    let at = text.find("\n## Where the time goes").unwrap_or(text.len());
    text.insert_str(at, section);
    for (g, ok, m) in goals {
        let row = format!("| {g} | {} | {m} |", if *ok { "yes" } else { "**no**" });
        match text.lines().find(|l| l.starts_with(&format!("| {g} |"))) {
            Some(old) => text = text.replace(old, &row),
            None => {
                let at = text.find("\n\n## 1.").unwrap_or(0);
                text.insert_str(at, &format!("\n{row}"));
            }
        }
    }
    let when = sh(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]));
    text = text.replacen(
        &format!("{marker}\n"),
        &format!(
            "{marker}\n\nMeasured by `scripts/bench {flag}` on {} ({} run(s) per figure).\n",
            when.trim(),
            o.runs
        ),
        1,
    );
    std::fs::write(path, text).unwrap();
}

/// `--profile`: one deploy of the D=0 case with `RUNNER_DEBUG=1`, every line of stdout and
/// stderr printed with the seconds since berth started, then the limit: where the time goes.
fn profile() {
    let stage = Stage::new();
    let refs = push_app(&stage, "d0", "healthy", 0);
    let hand_dir = stage.sshd.dir().join("handwritten");
    std::fs::create_dir_all(&hand_dir).unwrap();
    std::fs::write(
        hand_dir.join("docker-compose.yml"),
        compose(&refs.0, &refs.1, stage.port),
    )
    .unwrap();
    std::fs::write(hand_dir.join(".env"), "GREETING=hello\n").unwrap();
    // `BERTH_PROFILE_RUNS=n` for more deploys; the medians end the output.
    let runs: usize = std::env::var("BERTH_PROFILE_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let (mut verdicts, mut limits) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        reset(&stage.project);
        let b = berth_deploy(&stage, &refs, "60s").env("RUNNER_DEBUG", "1");
        let mut child = b
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let err = child.stderr.take().unwrap();
        let errs = std::thread::spawn(move || {
            BufReader::new(err)
                .lines()
                .map_while(Result::ok)
                .map(|l| (started.elapsed().as_secs_f64(), l))
                .collect::<Vec<_>>()
        });
        let mut lines: Vec<(f64, String)> = BufReader::new(child.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok)
            .map(|l| (started.elapsed().as_secs_f64(), l))
            .collect();
        child.wait().unwrap();
        lines.extend(
            errs.join()
                .unwrap()
                .into_iter()
                .map(|(t, l)| (t, format!("E {l}"))),
        );
        lines.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        // As `timed` reads it: the end of the Health group, or the verification if later.
        let at = |f: &dyn Fn(&str) -> bool| lines.iter().find(|(_, l)| f(l)).map(|(t, _)| *t);
        let health = lines
            .iter()
            .skip_while(|(_, l)| !l.starts_with("::group::Health"))
            .find(|(_, l)| l == "::endgroup::")
            .map_or(f64::NAN, |(t, _)| *t);
        let verified = at(&|l| l.contains(" run the pinned digests")).unwrap_or(0.0);
        verdicts.push(health.max(verified));
        for (t, l) in lines {
            println!("{t:7.3} {}", l.chars().take(220).collect::<String>());
        }
        reset(&stage.project);
        let l = limit(&stage, &hand_dir);
        println!("verdict: {:.3}  limit: {l:.3}", verdicts.last().unwrap());
        limits.push(l);
        reset("handwritten");
    }
    let (b, l) = (median(&verdicts), median(&limits));
    println!(
        "median of {runs}: berth {b:.3} s, limit {l:.3} s, berth/limit {:.2}x",
        b / l
    );
}
