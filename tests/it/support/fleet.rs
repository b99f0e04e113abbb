//! Several staging hosts on one machine. Each host is an sshd on its own loopback address
//! (127.0.0.x), started in its own mount namespace so that the one `deploy-dir` path berth
//! is given is private to each host. The hosts share the Docker engine, so each sshd sets
//! (with `SetEnv`) a PATH whose `docker` suffixes the compose project with the host's tag,
//! and `BIND_IP`, which the sample compose file publishes the app on.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::rig::{free_port, sh, KeyPair, Registry};
use super::stage::App;
use super::Berth;

pub struct FleetHost {
    pub ip: String,
    pub tag: String,
    pub host_key: KeyPair,
    /// The host's private deploy dir, as seen from outside its namespace.
    pub deploy_dir: PathBuf,
    child: Option<Child>,
}

impl FleetHost {
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn current(&self) -> Option<String> {
        std::fs::read_link(self.deploy_dir.join("current"))
            .ok()
            .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
    }
}

impl Drop for FleetHost {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct Fleet {
    pub hosts: Vec<FleetHost>,
    pub registry: Registry,
    pub user_key: KeyPair,
    pub ssh_port: u16,
    pub app_port: u16,
    pub project: String,
    /// The deploy-dir path berth is given; each host binds its own dir there.
    pub shared_deploy_dir: PathBuf,
    pub dir: TempDir,
}

impl Fleet {
    pub fn start(n: usize) -> Fleet {
        super::rig::require_engine();
        let dir = tempfile::tempdir().unwrap();
        let ssh_port = free_port();
        let app_port = free_port();
        let project = format!("berth-fleet-{app_port}");
        let shared_deploy_dir = PathBuf::from(format!("/srv/berth-fleet-{app_port}"));
        std::fs::create_dir_all(&shared_deploy_dir).unwrap();
        let user_key = KeyPair::generate(dir.path(), "user", "ed25519", "");
        std::fs::write(dir.path().join("authorized_keys"), &user_key.public).unwrap();
        let real_docker = sh(Command::new("sh").args(["-c", "command -v docker"]))
            .trim()
            .to_string();
        let mut hosts = Vec::new();
        for i in 0..n {
            let tag = format!("h{}", i + 1);
            let ip = format!("127.0.{}.{}", (app_port % 200) + 1, i + 2);
            let home = dir.path().join(&tag);
            let bin = home.join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            let deploy_dir = home.join("deploy");
            std::fs::create_dir_all(&deploy_dir).unwrap();
            let wrapper = format!(
                "#!/bin/sh\n# This host's view of the shared engine: its compose project is suffixed with -{tag}.\n\
                 prev=\nfor a in \"$@\"; do\n  shift\n  case \"$prev\" in -p) a=\"$a-{tag}\" ;; esac\n\
                 case \"$a\" in label=com.docker.compose.project=*) a=\"$a-{tag}\" ;; esac\n\
                 set -- \"$@\" \"$a\"\n  prev=\"$a\"\ndone\nexec {real_docker} \"$@\"\n"
            );
            std::fs::write(bin.join("docker"), wrapper).unwrap();
            sh(Command::new("chmod").arg("+x").arg(bin.join("docker")));
            let host_key = KeyPair::generate(&home, "host_ed25519", "ed25519", "");
            let log = home.join("sshd.log");
            let cfg = format!(
                "Port {ssh_port}\nListenAddress {ip}\nHostKey {hk}\nPidFile {home}/sshd.pid\nAuthorizedKeysFile {ak}\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
                 StrictModes no\nUsePAM no\nLogLevel VERBOSE\nSubsystem sftp internal-sftp\n\
                 SetEnv PATH={bin}:/usr/local/bin:/usr/bin:/bin BIND_IP={ip} HOST_TAG={tag}\n",
                hk = host_key.private.display(),
                home = home.display(),
                ak = dir.path().join("authorized_keys").display(),
                bin = bin.display(),
            );
            std::fs::write(home.join("sshd_config"), cfg).unwrap();
            let child = Command::new("unshare")
                .args(["-m", "--propagation", "private", "sh", "-c"])
                .arg(format!(
                    "mount --bind {dd} {shared} && exec /usr/sbin/sshd -D -f {home}/sshd_config -E {log}",
                    dd = deploy_dir.display(),
                    shared = shared_deploy_dir.display(),
                    home = home.display(),
                    log = log.display()
                ))
                .spawn()
                .expect("unshare (util-linux)");
            let deadline = Instant::now() + Duration::from_secs(20);
            while !std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("Server listening")
            {
                assert!(
                    Instant::now() < deadline,
                    "fleet sshd {tag} did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            hosts.push(FleetHost {
                ip,
                tag,
                host_key,
                deploy_dir,
                child: Some(child),
            });
        }
        Fleet {
            hosts,
            registry: Registry::start(),
            user_key,
            ssh_port,
            app_port,
            project,
            shared_deploy_dir,
            dir,
        }
    }

    /// A deploy of `app` to every host, each checked at its own address.
    pub fn berth(&self, app: &App) -> Berth {
        self.berth_with(app, false)
    }

    /// Like [`Fleet::berth`], but this release's compose file also reads a per-host env
    /// file (see [`Fleet::set_host_env`]), so one host's release can differ.
    pub fn berth_with(&self, app: &App, per_host_env: bool) -> Berth {
        let hosts: Vec<String> = self
            .hosts
            .iter()
            .map(|h| format!("root@{}:{}", h.ip, self.ssh_port))
            .collect();
        let pins: Vec<String> = self
            .hosts
            .iter()
            .map(|h| h.host_key.fingerprint())
            .collect();
        let b = Berth::valid()
            .input("hosts", &hosts.join("\n"))
            .input("ssh-key", &self.user_key.private_text())
            .input("host-fingerprints", &pins.join("\n"))
            .input("registry", &self.registry.addr)
            .input("registry-username", &self.registry.user)
            .input("registry-password", &self.registry.password)
            .input("deploy-dir", self.shared_deploy_dir.to_str().unwrap())
            .input("project-name", &self.project)
            .input(
                "images",
                "backend=backend/Dockerfile\nfrontend=frontend/Dockerfile",
            )
            .input(
                "health-url",
                &format!("http://{{host}}:{}/cgi-bin/health", self.app_port),
            )
            .input("health-json", "/data/status=healthy")
            .input("health-timeout", "10s")
            .input("health-interval", "200ms")
            .input("ci-workflows", "")
            .input("allow-untested", "true")
            .input("create-deployment", "false")
            .input("env-file", "GREETING=hello\n");
        app.write(&b.workspace(), self.app_port);
        // Publish on this host's own address, and let a per-host file override the env.
        let extra = if per_host_env {
            format!(
                "      - path: {}/${{HOST_TAG}}.env\n        required: false\n",
                self.dir.path().display()
            )
        } else {
            String::new()
        };
        let compose = format!(
            "services:\n  backend:\n    image: shop/backend\n    init: true\n    env_file:\n      - .env\n{extra}    restart: unless-stopped\n    ports:\n      - \"${{BIND_IP}}:{}:8080\"\n  frontend:\n    image: shop/frontend\n    init: true\n    restart: unless-stopped\n",
            self.app_port
        );
        std::fs::write(b.workspace().join("docker-compose.staging.yml"), compose).unwrap();
        b
    }

    /// Makes one host's app misbehave from its next release on (its per-host env file).
    pub fn set_host_env(&self, tag: &str, env: &str) {
        std::fs::write(self.dir.path().join(format!("{tag}.env")), env).unwrap();
    }

    pub fn health(&self, host: &FleetHost) -> String {
        sh(Command::new("curl").args([
            "-s",
            "-m",
            "5",
            &format!("http://{}:{}/cgi-bin/health", host.ip, self.app_port),
        ]))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            h.stop();
        }
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "docker ps -aq --filter label=com.docker.compose.project | xargs -r docker inspect -f '{{{{.Id}}}} {{{{index .Config.Labels \"com.docker.compose.project\"}}}}' \
                 | grep ' {p}-h' | cut -d' ' -f1 | xargs -r docker rm -f >/dev/null 2>&1; \
                 docker network ls --format '{{{{.Name}}}}' | grep '^{p}-h' | xargs -r docker network rm >/dev/null 2>&1",
                p = self.project
            ))
            .status();
        let _ = std::fs::remove_dir(&self.shared_deploy_dir);
    }
}
