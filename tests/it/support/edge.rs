//! The edge (`routes`) on the rig: a stage's edge, removed when dropped; deploys routed
//! through it; a loop of real requests through it, as users send them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::rig::caddy_image;
use super::stage::{App, Stage};
use super::Berth;
/// The edge of one stage, removed (container, network, volumes, state) when dropped.
pub struct EdgeGuard(pub String);

impl Drop for EdgeGuard {
    fn drop(&mut self) {
        let name = &self.0;
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("docker ps -aq --filter name={name} | xargs -r docker rm -f; docker ps -aq --filter label=berth.release | xargs -r docker inspect -f '{{{{.Id}}}} {{{{range $k, $v := .NetworkSettings.Networks}}}}{{{{$k}}}} {{{{end}}}}' | awk '/ {name}/{{print $1}}' | xargs -r docker rm -f; docker network ls -q --filter name={name} | xargs -r docker network rm; docker volume rm {name}-data {name}-config; rm -rf $HOME/.berth/edge-{port}", port = name.trim_start_matches("berth-edge-")))
            .output();
    }
}

/// A deploy of `app` routed through the stage's edge (on the stage's port).
pub fn routed(stage: &Stage, app: &App) -> Berth {
    stage
        .berth(app)
        .input("routes", "backend:8080 127.0.0.1")
        .input("edge-image", &caddy_image())
        .input("edge-ports", &stage.port.to_string())
        .input("drain-timeout", "2s")
        .input("verdict-window", "3s")
}

/// Requests through the edge every 20 ms until stopped (at most 5 min): each answer's
/// status and the version it came from.
pub struct Users {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(u16, String)>>>,
    at: Arc<Mutex<Vec<SystemTime>>>,
    thread: Option<JoinHandle<()>>,
}

impl Users {
    pub fn start(port: u16) -> Users {
        Users::start_for(port, "127.0.0.1")
    }

    /// Requests for `host` (the Host header) through the edge on `port`.
    pub fn start_for(port: u16, host: &'static str) -> Users {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let at = Arc::new(Mutex::new(Vec::new()));
        let (s, v, a) = (stop.clone(), seen.clone(), at.clone());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            while !s.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(300) {
                let sent = SystemTime::now();
                let answer = get_for(port, host);
                v.lock().unwrap().push(answer);
                a.lock().unwrap().push(sent);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Users {
            stop,
            seen,
            at,
            thread: Some(thread),
        }
    }

    /// Stops the loop: (requests, failed ones as `status body`).
    pub fn stop(self) -> (Vec<(u16, String)>, Vec<String>) {
        let (seen, failed, _) = self.stop_timed();
        (seen, failed)
    }

    /// [`Users::stop`], with when each request was sent.
    pub fn stop_timed(mut self) -> (Vec<(u16, String)>, Vec<String>, Vec<SystemTime>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        let seen = self.seen.lock().unwrap().clone();
        let at = self.at.lock().unwrap().clone();
        let failed = seen
            .iter()
            .filter(|(s, _)| *s != 200)
            .map(|(s, b)| format!("{s} {b}"))
            .collect();
        (seen, failed, at)
    }
}

/// How many containers of the backend exist (running or not).
pub fn backends(stage: &Stage) -> usize {
    super::rig::sh(std::process::Command::new("docker").args([
        "ps",
        "-aq",
        "--filter",
        &format!("label=com.docker.compose.project={}", stage.project),
        "--filter",
        "label=com.docker.compose.service=backend",
    ]))
    .split_whitespace()
    .count()
}

/// One GET of the health URL through the edge on a new connection: (status, version).
pub fn get(port: u16) -> (u16, String) {
    get_for(port, "127.0.0.1")
}

pub fn get_for(port: u16, host: &str) -> (u16, String) {
    let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, "refused".into());
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!("GET /cgi-bin/health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if c.write_all(req.as_bytes()).is_err() {
        return (0, "write failed".into());
    }
    let mut text = String::new();
    let _ = c.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let version = text
        .split("\"version\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("")
        .to_string();
    (status, version)
}

#[allow(dead_code)] // The bench's; the rig tests assert that nothing failed at all.
/// The longest run of failed requests, from its first to the next good answer, in ms.
pub fn longest_gap(seen: &[(u16, String)], at: &[SystemTime]) -> f64 {
    let mut longest: f64 = 0.0;
    let mut since: Option<SystemTime> = None;
    for ((status, _), t) in seen.iter().zip(at) {
        match (*status, since) {
            (200, Some(s)) => {
                longest = longest.max(t.duration_since(s).unwrap_or_default().as_secs_f64() * 1e3);
                since = None;
            }
            (200, None) => {}
            (_, None) => since = Some(*t),
            _ => {}
        }
    }
    if let (Some(s), Some(end)) = (since, at.last()) {
        longest = longest.max(end.duration_since(s).unwrap_or_default().as_secs_f64() * 1e3);
    }
    longest
}
