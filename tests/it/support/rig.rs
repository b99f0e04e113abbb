//! Real infrastructure for tests (RIG.md): a registry with htpasswd auth and an sshd with
//! fresh keys, each on its own loopback port, plus FROM-scratch busybox images on the
//! shared Docker engine. Anything missing fails the test loudly; nothing is skipped.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A port for a test service to listen on. Taken below Linux's ephemeral range
/// (32768-60999): a port the kernel hands out for `bind(0)` can be taken by any outgoing
/// connection before the service binds it, which made `docker compose up` fail with
/// "address already in use". Each test process starts at its own offset.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() * 997) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN);
}

fn wait_for_port(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{what} did not listen on 127.0.0.1:{port} within 20 s. Its log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Runs a setup command and panics with its output if it fails.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e}. Run scripts/test, which installs the rig.")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into()
}

pub fn require_engine() {
    let ok = Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        matches!(ok, Ok(s) if s.success()),
        "no Docker engine answers `docker info`. Run scripts/test, which installs and starts dockerd."
    );
}

/// The CNCF registry with real htpasswd auth.
pub struct Registry {
    pub addr: String,
    pub user: String,
    pub password: String,
    pub log: PathBuf,
    child: Option<Child>,
    dir: TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        // Unique per registry, and given to htpasswd on stdin: tests sample `ps` for it.
        let (user, password) = (
            "berth".to_string(),
            format!("reg-pw-{port}-{:08x}", rand::random::<u32>()),
        );
        let htpasswd = {
            use std::io::Write;
            let mut child = Command::new("htpasswd")
                .args(["-iBn", &user])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("htpasswd (apache2-utils); run scripts/test");
            child
                .stdin
                .take()
                .unwrap()
                .write_all(password.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "htpasswd failed");
            String::from_utf8(out.stdout).unwrap()
        };
        std::fs::write(dir.path().join("htpasswd"), htpasswd).unwrap();
        let cfg = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: rig-secret\nauth:\n  htpasswd:\n    realm: berth-rig\n    path: {htp}\n",
            root = dir.path().join("data").display(),
            htp = dir.path().join("htpasswd").display(),
        );
        std::fs::write(dir.path().join("config.yml"), cfg).unwrap();
        let log = dir.path().join("registry.log");
        let mut reg = Registry {
            addr: format!("127.0.0.1:{port}"),
            user,
            password,
            log,
            child: None,
            dir,
        };
        reg.spawn(port);
        reg
    }

    fn spawn(&mut self, port: u16) {
        let logf = std::fs::File::create(&self.log).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("docker-registry is not installed; run scripts/test");
        self.child = Some(child);
        wait_for_port(port, "the registry", &self.log);
    }

    /// The registry's process (a test freezes it with SIGSTOP).
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(|c| c.id())
            .expect("the registry is running")
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `curl` against the registry's v2 API with auth; returns (status, headers+body).
    pub fn api(&self, path: &str) -> (u16, String) {
        let out = sh(Command::new("curl").args([
            "-s",
            "-i",
            "-u",
            &format!("{}:{}", self.user, self.password),
            "-H",
            "Accept: application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
            &format!("http://{}{path}", self.addr),
        ]));
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, out)
    }

    /// How many blob uploads the registry completed (`PUT .../blobs/uploads/...` 201).
    pub fn blob_uploads(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.contains("\"PUT /v2/") && l.contains("/blobs/uploads/") && l.contains("\" 201 ")
            })
            .count()
    }

    /// The manifest digest a tag resolves to, from `Docker-Content-Digest`.
    pub fn digest_of(&self, repo: &str, tag: &str) -> Option<String> {
        let (status, text) = self.api(&format!("/v2/{repo}/manifests/{tag}"));
        if status != 200 {
            return None;
        }
        text.lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("docker-content-digest:")
                    .map(|_| l.to_string())
            })
            .map(|l| l.split_once(':').unwrap().1.trim().to_string())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct KeyPair {
    pub private: PathBuf,
    pub public: String,
}

impl KeyPair {
    pub fn generate(dir: &Path, name: &str, kind: &str, passphrase: &str) -> KeyPair {
        let private = dir.join(name);
        let mut cmd = Command::new("ssh-keygen");
        cmd.args(["-q", "-t", kind, "-N", passphrase, "-C", name, "-f"])
            .arg(&private);
        if kind == "rsa" {
            cmd.args(["-b", "3072"]);
        }
        sh(&mut cmd);
        let public = std::fs::read_to_string(private.with_extension("pub")).unwrap();
        KeyPair { private, public }
    }

    pub fn private_text(&self) -> String {
        std::fs::read_to_string(&self.private).unwrap()
    }

    /// `SHA256:...` as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        let out = sh(Command::new("ssh-keygen")
            .args(["-l", "-E", "sha256", "-f"])
            .arg(self.private.with_extension("pub")));
        out.split_whitespace().nth(1).unwrap().to_string()
    }
}

/// A real OpenSSH server on a free loopback port, with fresh host and user keys.
pub struct Sshd {
    pub port: u16,
    pub host_key: KeyPair,
    pub user_key: KeyPair,
    pub log: PathBuf,
    child: Option<Child>,
    dir: TempDir,
}

impl Sshd {
    pub fn start() -> Sshd {
        Sshd::start_with("ed25519", "ed25519", "")
    }

    pub fn start_with(host_kind: &str, user_kind: &str, passphrase: &str) -> Sshd {
        Sshd::start_configured(host_kind, user_kind, passphrase, "")
    }

    /// An sshd with `extra` lines in its config (e.g. `ClientAliveInterval 2`).
    pub fn start_configured(
        host_kind: &str,
        user_kind: &str,
        passphrase: &str,
        extra: &str,
    ) -> Sshd {
        std::fs::create_dir_all("/run/sshd").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let host_key = KeyPair::generate(dir.path(), &format!("host_{host_kind}"), host_kind, "");
        let user_key = KeyPair::generate(dir.path(), "user", user_kind, passphrase);
        std::fs::write(dir.path().join("authorized_keys"), &user_key.public).unwrap();
        let port = free_port();
        let cfg = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {pid}\nAuthorizedKeysFile {ak}\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
             StrictModes no\nUsePAM no\nLogLevel VERBOSE\nSubsystem sftp internal-sftp\n{extra}",
            hk = host_key.private.display(),
            pid = dir.path().join("sshd.pid").display(),
            ak = dir.path().join("authorized_keys").display(),
        );
        std::fs::write(dir.path().join("sshd_config"), cfg).unwrap();
        let log = dir.path().join("sshd.log");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-f"])
            .arg(dir.path().join("sshd_config"))
            .arg("-E")
            .arg(&log)
            .spawn()
            .expect("/usr/sbin/sshd is not installed; run scripts/test");
        // Wait on sshd's own log rather than a probe connection, so the log records only
        // connections that berth made.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("Server listening on 127.0.0.1")
        {
            assert!(
                Instant::now() < deadline,
                "sshd did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Sshd {
            port,
            host_key,
            user_key,
            log,
            child: Some(child),
            dir,
        }
    }

    pub fn host(&self) -> String {
        format!("root@127.0.0.1:{}", self.port)
    }

    /// berth's login to this sshd: root with the generated user key.
    pub fn credentials(&self) -> berth::ssh::Credentials {
        berth::ssh::Credentials {
            user: "root".into(),
            key: berth::secret::Secret::new(self.user_key.private_text()),
            passphrase: None,
        }
    }

    /// A berth SSH session to this sshd, its host key pinned.
    pub fn session(&self) -> berth::ssh::HostSession {
        let host = berth::inputs::parse_host(&self.host(), "root", 22).unwrap();
        let trust = berth::ssh::HostTrust::Pinned {
            fingerprints: vec![self.host_key.fingerprint()],
            known_hosts: vec![],
        };
        berth::ssh::HostSession::connect(
            &host,
            &self.credentials(),
            &trust,
            Duration::from_secs(10),
        )
        .expect("connect to the rig's sshd")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(|c| c.id())
            .expect("sshd is running")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Builds a FROM-scratch image with busybox installed, plus `extra` Dockerfile lines and
/// files, and returns its tag.
pub fn busybox_image(tag: &str, extra: &str, files: &[(&str, &str)]) -> String {
    require_engine();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::copy("/bin/busybox", ctx.path().join("busybox"))
        .expect("/bin/busybox is missing; run scripts/test (busybox-static)");
    for (name, body) in files {
        let p = ctx.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    let dockerfile = format!(
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n{extra}\n"
    );
    std::fs::write(ctx.path().join("Dockerfile"), dockerfile).unwrap();
    // `--no-cache`: the classic builder's cache lookup for a `FROM scratch` step fails if
    // any parentless image on the engine is removed while it reads them, and other tests
    // remove theirs all the time.
    sh(Command::new("docker")
        .args(["build", "-q", "--no-cache", "-t", tag])
        .arg(ctx.path()));
    tag.to_string()
}

/// A small tmpfs mounted over `dir` (as root), to fill a host's disk for real; unmounted
/// on drop.
pub struct Tmpfs {
    dir: std::path::PathBuf,
}

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        sh(Command::new("mount").args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0755"),
            "tmpfs",
            dir.to_str().unwrap(),
        ]));
        Tmpfs {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// The edge's proxy as a local image: Debian's Caddy 2 (and the libraries it links) in a
/// FROM-scratch image with busybox, since no image can be pulled here. Built once per
/// test process.
pub fn caddy_image() -> String {
    static BUILT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let tag = "berth-test/caddy:debian";
            let ctx = tempfile::tempdir().unwrap();
            let mut copies = String::new();
            for (i, src) in [
                "/usr/bin/caddy",
                "/lib/x86_64-linux-gnu/libzstd.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2",
            ]
            .iter()
            .enumerate()
            {
                let real = std::fs::canonicalize(src)
                    .unwrap_or_else(|e| panic!("{src}: {e}; run scripts/test (Debian's caddy)"));
                std::fs::copy(&real, ctx.path().join(format!("f{i}"))).unwrap();
                copies.push_str(&format!("COPY f{i} {src}\n"));
            }
            std::fs::copy("/bin/busybox", ctx.path().join("busybox")).unwrap();
            std::fs::write(
                ctx.path().join("Dockerfile"),
                format!("FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n{copies}RUN mkdir -p /tmp /data /config && chmod 1777 /tmp\n"),
            )
            .unwrap();
            sh(Command::new("docker")
                .args(["build", "-q", "--no-cache", "-t", tag])
                .arg(ctx.path()));
            tag.to_string()
        })
        .clone()
}
