//! A staging host for deploy tests: a real sshd, a registry with auth, its own deploy dir,
//! compose project and app port, on the shared Docker engine. And the sample app: a
//! `backend` (busybox httpd, JSON health under /cgi-bin/health) and a `frontend`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use super::rig::{free_port, require_engine, sh, Registry, Sshd};
use super::Berth;

pub struct Stage {
    pub sshd: Sshd,
    pub registry: Registry,
    pub deploy_dir: PathBuf,
    pub project: String,
    pub port: u16,
    _dir: TempDir,
}

/// How the sample backend behaves.
#[derive(Debug, Clone)]
pub struct App {
    pub version: String,
    /// healthy | 500 | degraded | crash | inject500 | injectcrash (these two print text
    /// that a careless tool would hand to the runner as workflow commands) | ignoreterm
    /// (healthy, but ignores SIGTERM) | dieafter (healthy for 4 s, then exits) | failafter (healthy for 6 s, then
    /// answers 500)
    pub mode: &'static str,
    pub start_delay: u32,
    /// Reached through the edge (`routes`): the backend publishes no port.
    pub routed: bool,
}

impl App {
    pub fn new(version: &str) -> App {
        App {
            version: version.into(),
            mode: "healthy",
            start_delay: 0,
            routed: false,
        }
    }

    pub fn mode(mut self, mode: &'static str) -> App {
        self.mode = mode;
        self
    }

    pub fn routed(mut self) -> App {
        self.routed = true;
        self
    }

    pub fn start_delay(mut self, secs: u32) -> App {
        self.start_delay = secs;
        self
    }

    /// Writes backend/ and frontend/ build contexts and the compose file into `ws`.
    pub fn write(&self, ws: &Path, port: u16) {
        let busybox = |dir: &Path| {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::copy("/bin/busybox", dir.join("busybox"))
                .expect("/bin/busybox (busybox-static); run scripts/test");
        };
        let backend = ws.join("backend");
        busybox(&backend);
        std::fs::create_dir_all(backend.join("www/cgi-bin")).unwrap();
        write_exec(
            &backend.join("www/cgi-bin/health"),
            r#"#!/bin/sh
# failafter: healthy for 6 s after the start, then 500.
if [ "$MODE" = failafter ] && [ $(( $(date +%s) - $(cat /started 2>/dev/null || echo 0) )) -ge 6 ]; then MODE=500; fi
case "$MODE" in
  500) printf 'HTTP/1.0 500 Internal Server Error\r\nContent-Type: application/json\r\n\r\n{"success":false,"error":"database unavailable"}' ;;
  degraded) printf 'Content-Type: application/json\r\n\r\n{"success":true,"data":{"status":"degraded"}}' ;;
  inject500) printf 'HTTP/1.0 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\nerr\r::warning::FORGED-HEALTH\r\n##[error]FORGED-HEALTH-LEGACY ```\n# FORGED-HEADING [click](https://evil.example)' ;;
  *) printf 'Content-Type: application/json\r\n\r\n{"success":true,"data":{"status":"healthy","version":"%s","greeting":"%s","timestamp":"%s"}}' "$VERSION" "$GREETING" "$(date -u +%FT%TZ)" ;;
esac
"#,
        );
        write_exec(
            &backend.join("start.sh"),
            r#"#!/bin/sh
if [ "$MODE" = crash ]; then echo "fatal: cannot connect to database" >&2; exit 3; fi
if [ "$MODE" = injectcrash ]; then
  printf '::stop-commands::t\n##[error]FORGED-LOG\nok\r::notice::FORGED-NOTICE\n  ::warning::FORGED-INDENT\n```\n# FORGED-LOG-HEADING\n'
  echo "fatal: ##[error]FORGED-STDERR" >&2
  head -c 2097152 /dev/zero | tr '\0' x
  echo
  exit 3
fi
sleep "$START_DELAY"
date +%s > /started
# Healthy for 4 s, then the listener goes (requests in flight finish) and the app exits.
if [ "$MODE" = dieafter ]; then httpd -p 8080 -h /www; sleep 4; killall httpd; sleep 1; exit 3; fi
# SIG_IGN survives exec: httpd then ignores the SIGTERM that `docker stop` sends.
if [ "$MODE" = ignoreterm ]; then trap '' TERM; fi
exec httpd -f -p 8080 -h /www
"#,
        );
        write_exec(
            &backend.join("migrate.sh"),
            "#!/bin/sh\necho \"migrating schema to $VERSION\"\n[ -n \"$MIGRATE_SAY\" ] && printf \"$MIGRATE_SAY\"\nif [ \"$MIGRATE\" = fail ]; then echo 'error: migration 0042 failed: relation \"users\" already exists' >&2; exit 4; fi\necho migrated\n",
        );
        std::fs::write(
            backend.join("Dockerfile"),
            format!(
                "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
                 COPY www /www\nCOPY start.sh migrate.sh /\nENV MODE={} VERSION={} START_DELAY={}\nCMD [\"/bin/sh\", \"/start.sh\"]\n",
                self.mode, self.version, self.start_delay
            ),
        )
        .unwrap();
        let frontend = ws.join("frontend");
        busybox(&frontend);
        std::fs::create_dir_all(frontend.join("www")).unwrap();
        std::fs::write(
            frontend.join("www/index.html"),
            format!("<h1>shop {}</h1>\n", self.version),
        )
        .unwrap();
        std::fs::write(
            frontend.join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCOPY www /www\nCMD [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/www\"]\n",
        )
        .unwrap();
        let ports = if self.routed {
            String::new()
        } else {
            format!("    ports:\n      - \"127.0.0.1:{port}:8080\"\n")
        };
        std::fs::write(
            ws.join("docker-compose.staging.yml"),
            format!(
                "services:\n  backend:\n    image: shop/backend\n    init: true\n    env_file: .env\n    restart: unless-stopped\n{ports}  frontend:\n    image: shop/frontend\n    init: true\n    restart: unless-stopped\n"
            ),
        )
        .unwrap();
    }
}

/// GET `url`: (status, body), or (0, error) if nothing answers.
pub fn http_get(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn write_exec(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

impl Stage {
    pub fn new() -> Stage {
        Stage::with_sshd(Sshd::start())
    }

    pub fn with_sshd(sshd: Sshd) -> Stage {
        require_engine();
        let dir = tempfile::tempdir().unwrap();
        let deploy_dir = dir.path().join("deploy");
        let port = free_port();
        Stage {
            project: format!("berth-test-{port}"),
            sshd,
            registry: Registry::start(),
            deploy_dir,
            port,
            _dir: dir,
        }
    }

    /// A deploy of `app` with every input pointed at this stage; CI is not gated here.
    pub fn berth(&self, app: &App) -> Berth {
        let b = Berth::valid()
            .input("hosts", &self.sshd.host())
            .input("ssh-key", &self.sshd.user_key.private_text())
            .input("host-fingerprints", &self.sshd.host_key.fingerprint())
            .input("registry", &self.registry.addr)
            .input("registry-username", &self.registry.user)
            .input("registry-password", &self.registry.password)
            .input("deploy-dir", self.deploy_dir.to_str().unwrap())
            .input("project-name", &self.project)
            .input(
                "images",
                "backend=backend/Dockerfile\nfrontend=frontend/Dockerfile",
            )
            .input("health-url", &self.health_url())
            .input("health-json", "/data/status=healthy")
            .input("health-timeout", "20s")
            .input("health-interval", "200ms")
            .input("ci-workflows", "")
            .input("allow-untested", "true")
            .input("create-deployment", "false")
            .input("env-file", "GREETING=hello\n");
        app.write(&b.workspace(), self.port);
        b
    }

    /// Deploys `app` and fails the test unless it was deployed. Waits a second after, as
    /// release ids have one-second resolution.
    pub fn deploy_ok(&self, app: &App) -> super::Run {
        let run = self.berth(app).run();
        assert_eq!(
            run.code, 0,
            "deploy of {} failed:\n{}",
            app.version, run.stdout
        );
        std::thread::sleep(std::time::Duration::from_secs(1));
        run
    }

    /// `mode: rollback` to `release` (else the release berth chooses); fails the test
    /// unless berth exited 0, and returns the run.
    pub fn roll_back(&self, release: Option<&str>) -> super::Run {
        let mut b = self.berth(&App::new("rollback")).input("mode", "rollback");
        if let Some(r) = release {
            b = b.input("release", r);
        }
        let run = b.run();
        assert_eq!(run.code, 0, "{}", run.stdout);
        run
    }

    pub fn health_url(&self) -> String {
        format!("http://127.0.0.1:{}/cgi-bin/health", self.port)
    }

    /// GET the app's health endpoint: (status, body), or (0, error) if nothing answers.
    pub fn health(&self) -> (u16, String) {
        http_get(&self.health_url())
    }

    pub fn current(&self) -> Option<String> {
        std::fs::read_link(self.deploy_dir.join("current"))
            .ok()
            .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
    }

    pub fn releases(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.deploy_dir.join(".berth/releases"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }

    pub fn record(&self, id: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(
            self.deploy_dir
                .join(format!(".berth/releases/{id}/release.json")),
        )
        .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// service -> image id of the project's running (non one-off) containers.
    pub fn running(&self) -> BTreeMap<String, String> {
        let ids = sh(Command::new("docker").args([
            "ps",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--filter",
            "label=com.docker.compose.oneoff=False",
            "-q",
        ]));
        let mut out = BTreeMap::new();
        for id in ids.split_whitespace() {
            let line = sh(Command::new("docker").args([
                "inspect",
                "-f",
                "{{index .Config.Labels \"com.docker.compose.service\"}} {{.Image}}",
                id,
            ]));
            let (svc, image) = line.trim().split_once(' ').unwrap();
            out.insert(svc.to_string(), image.to_string());
        }
        out
    }

    /// What runs and which release `current` names, for [`Stage::assert_unchanged`].
    pub fn state(&self) -> (BTreeMap<String, String>, Option<String>) {
        (self.running(), self.current())
    }

    /// A deploy that failed before `up` changed nothing: the same containers run the same
    /// images, `current` is where it was, and `version` still answers healthy.
    pub fn assert_unchanged(
        &self,
        before: &(BTreeMap<String, String>, Option<String>),
        version: &str,
    ) {
        assert_eq!(self.running(), before.0, "a container changed");
        assert_eq!(self.current(), before.1, "`current` moved");
        let (_, body) = self.health();
        assert!(
            body.contains(&format!("\"version\":\"{version}\"")),
            "{body}"
        );
    }

    /// The local image id of a reference such as `repo@sha256:...`.
    pub fn image_id(reference: &str) -> String {
        sh(Command::new("docker").args(["image", "inspect", "-f", "{{.Id}}", reference]))
            .trim()
            .to_string()
    }
}

/// Untags this stage's images with `--no-prune`: tests build in parallel on one engine, and
/// removing an image by id (or pruning its parents) would pull the build cache from under
/// another test's build.
impl Drop for Stage {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "docker ps -aq --filter label=com.docker.compose.project={p} | xargs -r docker rm -f >/dev/null 2>&1; \
                 docker network ls -q --filter label=com.docker.compose.project={p} | xargs -r docker network rm >/dev/null 2>&1; \
                 docker image ls --digests --format '{{{{.Repository}}}}:{{{{.Tag}}}} {{{{.Repository}}}}@{{{{.Digest}}}}' --filter reference='{r}/*/*' \
                 | tr ' ' '\\n' | grep -v -e ':<none>$' -e '@<none>$' | sort -u | xargs -r docker image rm --no-prune >/dev/null 2>&1",
                p = self.project,
                r = self.registry.addr
            ))
            .status();
    }
}
