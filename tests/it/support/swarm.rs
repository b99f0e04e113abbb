//! A Docker engine of its own in swarm mode, for the Swarm target's tests: a second
//! `dockerd` in a network namespace of its own (reached over a veth pair), so the rig's
//! engine never enters swarm mode and the compose tests beside it are undisturbed
//! (../shared/RIG.md). Torn down on drop: the swarm left, the daemon stopped, its
//! namespace mounts, veth and namespace removed.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::rig::{free_port, sh};

pub struct SwarmEngine {
    pub dir: TempDir,
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
        let child = Command::new("nsenter")
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
        let init = engine.docker(&["swarm", "init", "--advertise-addr", &engine.addr.clone()]);
        assert!(
            init.status.success(),
            "swarm init: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        engine
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
