//! A Docker engine of its own in swarm mode, for the Swarm target's tests: a second
//! `dockerd` in a network namespace of its own (reached over a veth pair), so the rig's
//! engine never enters swarm mode and the compose tests beside it are undisturbed
//! (../shared/RIG.md). Torn down on drop: the swarm left, the daemon stopped, its
//! namespace mounts, veth and namespace removed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::rig::{free_port, sh, Sshd};
use super::stage::{App, Stage};
use super::Berth;

pub struct SwarmEngine {
    pub dir: TempDir,
    /// The number that names its namespace, links and addresses.
    number: u16,
    /// `unix://...` of the engine's socket.
    pub host: String,
    /// The node's address inside its namespace (what the swarm advertises).
    pub addr: String,
    netns: String,
    veth: String,
    exec_root: PathBuf,
    daemon: Option<std::process::Child>,
}

impl SwarmEngine {
    /// Starts the engine and makes it a single-node swarm's manager.
    pub fn start() -> SwarmEngine {
        let engine = SwarmEngine::boot("berth-manager");
        let init = engine.docker(&["swarm", "init", "--advertise-addr", &engine.addr.clone()]);
        assert!(
            init.status.success(),
            "swarm init: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        engine
    }

    /// Starts another engine and joins it to `manager`'s swarm as a worker, over a link
    /// of their own between the two namespaces (the rig's namespace does not route).
    pub fn start_worker(manager: &SwarmEngine) -> SwarmEngine {
        let worker = SwarmEngine::boot("berth-worker");
        let n = worker.number;
        let (a, b) = (format!("bswp{n}a"), format!("bswp{n}b"));
        let (ma, wa) = (format!("10.235.{n}.1"), format!("10.235.{n}.2"));
        let net = manager.addr.rsplit_once('.').unwrap().0.to_string() + ".0/30";
        for cmd in [
            format!("ip link add {a} type veth peer name {b}"),
            format!("ip link set {a} netns {}", manager.netns),
            format!("ip link set {b} netns {}", worker.netns),
            format!(
                "ip netns exec {} ip addr add {ma}/30 dev {a}",
                manager.netns
            ),
            format!("ip netns exec {} ip link set {a} up", manager.netns),
            format!("ip netns exec {} ip addr add {wa}/30 dev {b}", worker.netns),
            format!("ip netns exec {} ip link set {b} up", worker.netns),
            format!("ip netns exec {} ip route add {net} via {ma}", worker.netns),
        ] {
            sh(Command::new("sh").arg("-c").arg(&cmd));
        }
        let token = manager.ok(&["swarm", "join-token", "-q", "worker"]);
        let join = worker.docker(&[
            "swarm",
            "join",
            "--token",
            token.trim(),
            "--advertise-addr",
            &wa,
            &format!("{}:2377", manager.addr),
        ]);
        assert!(
            join.status.success(),
            "swarm join: {}",
            String::from_utf8_lossy(&join.stderr)
        );
        worker
    }

    /// Freezes the engine (SIGSTOP): the node stops answering, as a hung machine does.
    /// Thawed when dropped.
    pub fn freeze(&self) {
        if let Some(d) = &self.daemon {
            sh(Command::new("kill").args(["-STOP", &d.id().to_string()]));
        }
    }

    /// A dockerd in a network namespace of its own, named `hostname` (its own UTS
    /// namespace: the swarm tells nodes apart by it).
    fn boot(hostname: &str) -> SwarmEngine {
        // The exec root's dir claims the number: what a parallel test (or a run killed
        // before its teardown) holds is never taken, nor torn down by this one.
        let n = loop {
            let n = free_port() % 250 + 1;
            if std::fs::create_dir(format!("/tmp/bsw{n}x")).is_ok() {
                break n;
            }
        };
        let netns = format!("berth-sw{n}");
        let veth = format!("bsw{n}h");
        let (host_ip, addr) = (format!("10.233.{n}.1"), format!("10.233.{n}.2"));
        let dir = tempfile::tempdir().unwrap();
        // Short: unix socket paths under the exec root must stay within 108 bytes.
        let exec_root = PathBuf::from(format!("/tmp/bsw{n}x"));
        let sock = dir.path().join("docker.sock");
        // Made first, so that a failure below still tears down what was made.
        let mut engine = SwarmEngine {
            number: n,
            host: format!("unix://{}", sock.display()),
            addr: addr.clone(),
            netns: netns.clone(),
            veth: veth.clone(),
            exec_root: exec_root.clone(),
            daemon: None,
            dir,
        };
        let dir = engine.dir.path().to_path_buf();
        for cmd in [
            format!("ip netns add {netns}"),
            format!("ip link add {veth} type veth peer name bsw{n}n"),
            format!("ip link set bsw{n}n netns {netns}"),
            format!("ip addr add {host_ip}/30 dev {veth}"),
            format!("ip link set {veth} up"),
            format!("ip netns exec {netns} ip addr add {addr}/30 dev bsw{n}n"),
            format!("ip netns exec {netns} ip link set bsw{n}n up"),
            format!("ip netns exec {netns} ip link set lo up"),
        ] {
            sh(Command::new("sh").arg("-c").arg(&cmd));
        }
        std::fs::write(dir.join("daemon.json"), "{}").unwrap();
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        // nsenter, not `ip netns exec`, which remounts /sys and hides the cgroup mount.
        let child = Command::new("unshare")
            .args(["--uts", "sh", "-c", "hostname \"$0\" && exec \"$@\""])
            .arg(format!("{hostname}-{n}"))
            .arg("nsenter")
            .arg(format!("--net=/var/run/netns/{netns}"))
            .arg("dockerd")
            .arg("--config-file")
            .arg(dir.join("daemon.json"))
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(&exec_root)
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .args(["--storage-driver", "vfs"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("nsenter dockerd");
        engine.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !engine.docker(&["info"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "the swarm engine never answered: {}",
                std::fs::read_to_string(engine.dir.path().join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        engine
    }

    /// Makes `127.0.0.1:port` inside the engine's namespace reach `127.0.0.1:port` outside
    /// it, so the engine pulls from the rig's registry by the address berth pushed to.
    /// The listener is made by a thread that enters the namespace (a namespace is per
    /// thread), and each connection goes out from the rig's namespace.
    pub fn forward_loopback(&self, port: u16) {
        use std::os::fd::AsRawFd;
        let netns = format!("/var/run/netns/{}", self.netns);
        let (ready, bound) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let enter = |ns: &std::fs::File| {
                // SAFETY: setns on a valid namespace fd changes this thread only.
                assert_eq!(
                    unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                    0
                );
            };
            let home = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
            enter(&std::fs::File::open(&netns).unwrap());
            let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
            enter(&home);
            ready.send(()).unwrap();
            for conn in listener.incoming() {
                let Ok(inside) = conn else { break };
                std::thread::spawn(move || {
                    let Ok(outside) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                        return;
                    };
                    let (mut a, mut b) =
                        (inside.try_clone().unwrap(), outside.try_clone().unwrap());
                    let up = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut a, &mut b);
                        let _ = b.shutdown(std::net::Shutdown::Write);
                    });
                    let (mut inside, mut outside) = (inside, outside);
                    let _ = std::io::copy(&mut outside, &mut inside);
                    let _ = inside.shutdown(std::net::Shutdown::Write);
                    let _ = up.join();
                });
            }
        });
        bound.recv().unwrap();
    }

    /// `docker -H <this engine> <args>`.
    pub fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .args(["-H", &self.host])
            .args(args)
            .output()
            .unwrap()
    }

    /// `docker -H <this engine> <args>`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for SwarmEngine {
    fn drop(&mut self) {
        if let Some(d) = &self.daemon {
            let _ = Command::new("kill")
                .args(["-CONT", &d.id().to_string()])
                .status();
        }
        let _ = self.docker(&["swarm", "leave", "--force"]);
        if let Some(mut daemon) = self.daemon.take() {
            let _ = Command::new("kill").arg(daemon.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while daemon.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        // The daemon's network sandboxes stay mounted under its exec root.
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let root = self.exec_root.display().to_string();
        for m in mounts.lines().filter_map(|l| l.split(' ').nth(1)) {
            if m.starts_with(&root) {
                let _ = Command::new("umount").args(["-l", m]).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.exec_root);
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// A staging swarm for berth's Swarm target: a single-node swarm on an engine of its own,
/// an sshd whose sessions talk to that engine (`DOCKER_HOST`), the rig's registry reachable
/// from the engine, and the sample app published on the node in `mode: host` (this rig's
/// kernel has no IPVS, so ingress ports do not route: docs/swarm-research.md §5a).
pub struct SwarmStage {
    pub stage: Stage,
    pub engine: SwarmEngine,
}

impl SwarmStage {
    pub fn new() -> SwarmStage {
        SwarmStage::on(SwarmEngine::start())
    }

    /// The stage with `engine` as its manager.
    pub fn on(engine: SwarmEngine) -> SwarmStage {
        let sshd = Sshd::start_configured(
            "ed25519",
            "ed25519",
            "",
            &format!("SetEnv DOCKER_HOST={}\n", engine.host),
        );
        let stage = Stage::with_sshd(sshd);
        let s = SwarmStage { stage, engine };
        s.engine.forward_loopback(s.registry_port());
        s
    }

    /// A worker joined to this stage's swarm, able to pull from its registry.
    pub fn add_worker(&self) -> SwarmEngine {
        let worker = SwarmEngine::start_worker(&self.engine);
        worker.forward_loopback(self.registry_port());
        worker
    }

    fn registry_port(&self) -> u16 {
        let port = self.stage.registry.addr.rsplit(':').next().unwrap();
        port.parse().unwrap()
    }

    /// A deploy of `app` as a stack: the stage's inputs, `target: swarm`, and a compose
    /// file with health checks (start-first needs them) and the backend's port in host mode.
    pub fn berth(&self, app: &App) -> Berth {
        self.berth_with(
            app,
            &format!(
                r#"services:
  backend:
    image: shop/backend
    init: true
    env_file: .env
    ports:
      - target: 8080
        published: {port}
        mode: host
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/cgi-bin/health"]
      interval: 1s
      timeout: 2s
      retries: 2
  frontend:
    image: shop/frontend
    init: true
"#,
                port = self.stage.port
            ),
        )
    }

    /// A deploy of `app` as a stack with the stage's inputs, `target: swarm`, and
    /// `compose` as its compose file.
    pub fn berth_with(&self, app: &App, compose: &str) -> Berth {
        let b = self
            .stage
            .berth(app)
            .input("target", "swarm")
            .input("health-url", &self.health_url())
            .input("health-timeout", "60s");
        std::fs::write(b.workspace().join("docker-compose.staging.yml"), compose).unwrap();
        b
    }

    /// `mode: rollback` of the stack (to `release`, else the release berth chooses).
    pub fn roll_back(&self, release: Option<&str>) -> super::Run {
        let mut b = self.berth(&App::new("rollback")).input("mode", "rollback");
        if let Some(r) = release {
            b = b.input("release", r);
        }
        b.run()
    }

    pub fn health_url(&self) -> String {
        format!(
            "http://{}:{}/cgi-bin/health",
            self.engine.addr, self.stage.port
        )
    }

    /// Compose service -> the image its Swarm service runs (the spec's).
    pub fn service_images(&self) -> BTreeMap<String, String> {
        let out = self.engine.ok(&[
            "service",
            "ls",
            "--filter",
            &format!("label=com.docker.stack.namespace={}", self.stage.project),
            "--format",
            "{{.Name}} {{.Image}}",
        ]);
        let prefix = format!("{}_", self.stage.project);
        out.lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(n, i)| (n.trim_start_matches(&prefix).to_string(), i.to_string()))
            .collect()
    }
}
