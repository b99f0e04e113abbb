//! Section 8: the Swarm target against the hand-run limit, on a single-node swarm on an
//! engine of its own (the rig's `SwarmStage`).

use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::support::rig::sh;
use crate::support::swarm::SwarmStage;
use crate::{fmt, median, push_app, time_script, timed};

/// One service (the sample backend, ready at once), with a health check, published in
/// host mode (this rig has no IPVS for ingress ports).
fn stack_compose(image: &str, port: u16) -> String {
    format!(
        "services:\n  web:\n    image: {image}\n    init: true\n    stop_grace_period: 1s\n    env_file: .env\n    ports:\n      - target: 8080\n        published: {port}\n        mode: host\n    healthcheck:\n      test: [\"CMD\", \"wget\", \"-q\", \"-O\", \"/dev/null\", \"http://127.0.0.1:8080/cgi-bin/health\"]\n      interval: 250ms\n      timeout: 2s\n      retries: 2\n"
    )
}

/// `repo@sha256:...` of a pushed image.
fn digest_ref(image: &str) -> String {
    sh(Command::new("docker").args(["image", "inspect", "-f", "{{index .RepoDigests 0}}", image]))
        .trim()
        .to_string()
}

/// The hand-run limit: over ssh to the manager, `docker stack deploy` of a stack file with
/// the image pinned, then a watch loop of `docker service ps` until the new task runs and
/// the update is no longer under way; beside it, a 50 ms curl loop until the new version
/// answers healthy. Seconds until both are done.
fn limit(s: &SwarmStage, dir: &std::path::Path, image: &str, version: &str) -> f64 {
    let stack = format!(
        "services:\n  web:\n    image: {image}\n    init: true\n    stop_grace_period: 1s\n    ports:\n      - target: 8080\n        published: {port}\n        mode: host\n    healthcheck:\n      test: [\"CMD\", \"wget\", \"-q\", \"-O\", \"/dev/null\", \"http://127.0.0.1:8080/cgi-bin/health\"]\n      interval: 250ms\n      timeout: 2s\n      retries: 2\n    environment:\n      GREETING: hello\n",
        port = s.stage.port
    );
    std::fs::write(dir.join("stack.yml"), stack).unwrap();
    let svc = format!("{}_web", s.stage.project);
    let script = format!(
        "ssh -i {key} -p {port} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR root@127.0.0.1 \
         'docker stack deploy --detach=true --resolve-image never -c {dir}/stack.yml {stack} >/dev/null && \
          until [ \"$(docker service ps --filter desired-state=running --format \"{{{{.Image}}}} {{{{.CurrentState}}}}\" {svc} | grep -c \"^{image} Running\")\" = 1 ] \
            && [ \"$(docker service inspect --format \"{{{{if .UpdateStatus}}}}{{{{.UpdateStatus.State}}}}{{{{end}}}}\" {svc})\" != updating ]; do sleep 0.1; done' & \
         i=0; until curl -s {url} | grep -q '\"version\":\"{version}\"'; do i=$((i+1)); [ $i -gt 1200 ] && exit 1; sleep 0.05; done; wait $!",
        key = s.stage.sshd.user_key.private.display(),
        port = s.stage.sshd.port,
        dir = dir.display(),
        stack = s.stage.project,
        url = s.health_url(),
    );
    time_script(&script, "the swarm limit run failed")
}

fn berth_swarm(s: &SwarmStage, image: &str) -> crate::support::Berth {
    let b = s
        .berth(&crate::support::stage::App::new("bench"))
        .input("images", "")
        .input("health-timeout", "60s")
        .input("health-interval", "100ms");
    std::fs::write(
        b.workspace().join("docker-compose.staging.yml"),
        stack_compose(image, s.stage.port),
    )
    .unwrap();
    b
}

/// A berth run with the wall-clock time of each stdout line.
pub(crate) struct Lines {
    pub(crate) lines: Vec<(SystemTime, String)>,
    pub(crate) stdout: String,
    pub(crate) code: i32,
}

impl Lines {
    pub(crate) fn first(&self, text: &str) -> Option<SystemTime> {
        self.lines
            .iter()
            .find(|(_, l)| l.contains(text))
            .map(|(t, _)| *t)
    }
}

pub(crate) fn timed_lines(b: &crate::support::Berth) -> Lines {
    use std::io::BufRead;
    let mut child = b
        .command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    let mut stdout = String::new();
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        stdout.push_str(&line);
        stdout.push('\n');
        lines.push((SystemTime::now(), line));
    }
    let code = child.wait().unwrap().code().unwrap_or(-1);
    Lines {
        lines,
        stdout,
        code,
    }
}

/// When the first failed task of `image` in the stack failed, by the manager's clock
/// (this machine's).
fn first_failure(s: &SwarmStage, image: &str) -> Option<SystemTime> {
    let svc = format!("{}_web", s.stage.project);
    let ids = s.engine.ok(&["service", "ps", "-q", "--no-trunc", &svc]);
    let mut first: Option<SystemTime> = None;
    for id in ids.split_whitespace() {
        let line = s.engine.ok(&[
            "inspect",
            "--type",
            "task",
            "--format",
            "{{.Spec.ContainerSpec.Image}} {{.Status.State}} {{.Status.Timestamp.Format \"2006-01-02T15:04:05.999999999Z07:00\"}}",
            id,
        ]);
        let mut w = line.split_whitespace();
        let (Some(img), Some(state), Some(ts)) = (w.next(), w.next(), w.next()) else {
            continue;
        };
        if img != image || state != "failed" {
            continue;
        }
        let t =
            time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()?;
        let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(t.unix_timestamp_nanos() as u64);
        first = Some(first.map_or(t, |f| f.min(t)));
    }
    first
}

/// Section 8 and its goals: berth(swarm)/limit for a start-first-less update of one
/// service (host-mode port: stop-first), and the crash-loop verdict measured from the
/// failed task's own timestamp.
pub fn section(runs: usize, goals: &mut Vec<(String, bool, String)>) -> String {
    let s = SwarmStage::new();
    let v: Vec<String> = ["s1", "s2"]
        .iter()
        .map(|ver| digest_ref(&push_app(&s.stage, ver, "healthy", 0).0))
        .collect();
    let crash = digest_ref(&push_app(&s.stage, "s3", "crash", 0).0);
    let dir = tempfile::tempdir().unwrap();
    // The stack exists before the first timed run: each timed run is an update.
    let warm = timed(&berth_swarm(&s, &v[0]), || {});
    assert_eq!(warm.code, 0, "swarm bench warm-up failed:\n{}", warm.stdout);
    // berth always deploys the second image and the limit the first: every deploy, of
    // either, is an update of the one before it.
    let (mut b, mut l) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = timed(&berth_swarm(&s, &v[1]), || {});
        assert_eq!(t.code, 0, "swarm bench deploy failed:\n{}", t.stdout);
        assert!(
            t.stdout.contains("converging: "),
            "not an update:\n{}",
            t.stdout
        );
        b.push(t.verdict);
        l.push(limit(&s, dir.path(), &v[0], "s1"));
    }
    let (mb, ml) = (median(&b), median(&l));
    // Crash loops: from the task's failure to berth's verdict on it.
    let mut lat = Vec::new();
    for _ in 0..runs {
        let run = timed_lines(&berth_swarm(&s, &crash));
        assert_eq!(
            run.code, 1,
            "the crash release was not failed:\n{}",
            run.stdout
        );
        let seen = run
            .first("converging: failed")
            .expect("berth printed no failure line");
        let failed = first_failure(&s, &crash).expect("no failed task of the crash image");
        lat.push(seen.duration_since(failed).map_or(0.0, |d| d.as_secs_f64()));
    }
    let mlat = median(&lat);
    goals.push((
        "swarm: a crash loop reported within 5 s of the task's first failure".into(),
        mlat <= 5.0,
        format!("{mlat:.2} s"),
    ));
    format!(
        "\n## 8. Docker Swarm\n\nA single-node swarm on a Docker engine of its own (network namespace, vfs storage), reached over SSH like any manager. One service (the sample backend, ready at once), with a 250 ms health check and a 1 s stop grace period, published in `mode: host` (this kernel has no IPVS, so ingress ports do not route; the update is therefore stop-first). berth and the limit take turns, berth deploying one of two pre-pushed images and the limit the other, so every run is an update of the one before it. berth: from its start to its verdict (the probe and the stack's convergence). The limit: over ssh, `docker stack deploy` of the same pinned image, a watch loop of `docker service ps`/`inspect` every 100 ms until the new task runs and the update is done, and beside it a 50 ms curl loop until the new version answers.\n\n| figure | berth (median s) | limit (median s) | berth/limit | samples berth / limit |\n|---|---:|---:|---:|---|\n| update of one service | {mb:.2} | {ml:.2} | {:.2}x | {} / {} |\n\nCrash loop (the task exits 3 at start): seconds from the failed task's own timestamp to berth's line naming it: median {mlat:.2} s (samples {}). Each such release was then restored as a whole stack.\n",
        mb / ml,
        fmt(&b),
        fmt(&l),
        fmt(&lat)
    )
}
