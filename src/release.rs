//! One host's release: lock, snapshot, upload, registry login, pull, pre-deploy, up,
//! switch, verify, and the one rollback path. Blocking (ssh2); the pipeline runs each
//! host's steps on a blocking thread and coordinates hosts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::inputs::{HostSpec, PreDeploy};
use crate::remote::{self, Cmd, Layout, LockHolder, ReleaseRecord};
use crate::report::Phase;
use crate::secret::Secret;
use crate::ssh::{Credentials, ExecOutput, HostSession, HostTrust, SshError};
use crate::workflow::Runner;

/// A lock whose heartbeat is older than this is presumed abandoned (its holder was killed
/// without cleanup) and is taken over with a warning. The holder touches it every
/// [`HEARTBEAT_EVERY`], so this is six missed beats.
pub const LOCK_STALE_AFTER: Duration = Duration::from_secs(90);
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
const QUICK: Duration = Duration::from_secs(60);
const LONG: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("the deploy lock on {host} is held by {holder}; waited {waited:?} (`lock-timeout`). Wait for that deploy to finish, or raise `lock-timeout`. If it is dead, its lock goes stale after {LOCK_STALE_AFTER:?} without a heartbeat and is taken over.")]
    LockHeld {
        host: String,
        holder: String,
        waited: Duration,
    },
    #[error("`{step}` failed on {host} (exit {status}):\n{tail}")]
    Step {
        host: String,
        step: &'static str,
        status: i32,
        tail: String,
    },
    #[error("cannot read the compose file {path}: {source}")]
    ComposeFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("after `up`, {host} does not run the pinned images: {mismatches}. A pull may have failed silently or another process changed the containers.")]
    DigestMismatch { host: String, mismatches: String },
    #[error("the compose file uses {} on {host}, but {} set neither in `env-file` nor in the host's environment, so compose would use an empty string. Add {} to `env-file`, or write `${{NAME:-}}` in the compose file where empty is intended. No container was changed.", names.iter().map(|n| format!("${{{n}}}")).collect::<Vec<_>>().join(", "), if names.len() == 1 { "it is" } else { "they are" }, names.iter().map(|n| format!("`{n}=...`")).collect::<Vec<_>>().join(", "))]
    MissingVariables { host: String, names: Vec<String> },
    #[error("release {dir} already exists on {host}: another deploy of this commit started in the same second and ran first. Nothing was changed; run the deploy again.")]
    ReleaseExists { host: String, dir: String },
    #[error("{host} is not ready for a deploy: {problem} Nothing was pushed or changed.")]
    Preflight { host: String, problem: String },
    #[error("there is no earlier release on this host to restore. The failed release is left in place for diagnosis.")]
    NothingToRestore,
    #[error("{host} answered something berth cannot read while {doing}: {detail}")]
    Unexpected {
        host: String,
        doing: &'static str,
        detail: String,
    },
}

/// Everything a host needs to connect.
#[derive(Clone)]
pub struct Access {
    pub spec: HostSpec,
    pub key: Secret,
    pub passphrase: Option<Secret>,
    pub trust: HostTrust,
}

impl Access {
    pub fn connect(&self) -> Result<HostSession, SshError> {
        let creds = Credentials {
            user: self.spec.user.clone(),
            key: self.key.clone(),
            passphrase: self.passphrase.clone(),
        };
        HostSession::connect(&self.spec, &creds, &self.trust, CONNECT_TIMEOUT)
    }
}

/// What one release consists of, the same for every host.
#[derive(Clone)]
pub struct ReleaseSpec {
    pub id: String,
    pub sha: String,
    pub compose: String,
    pub env_file: Secret,
    pub built: BTreeMap<String, String>,
    pub pre_deploy: Option<PreDeploy>,
    pub registry: Option<RegistryLogin>,
    pub holder: LockHolder,
    pub lock_timeout: Duration,
    pub keep_releases: u32,
    pub image_prefix: String,
}

#[derive(Clone)]
pub struct RegistryLogin {
    pub server: String,
    pub username: String,
    pub password: Secret,
}

/// The state of a container of the project, from `docker inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    pub id: String,
    pub service: String,
    pub name: String,
    pub image_id: String,
    pub status: String,
    pub exit_code: i64,
    pub restart_count: i64,
    pub restarting: bool,
    pub oom_killed: bool,
    pub restart_policy: String,
    pub one_off: bool,
}

/// A host being deployed: its connection, its held lock and what was done so far.
pub struct HostRelease {
    pub access: Access,
    pub layout: Layout,
    pub conn: HostSession,
    pub runner: Runner,
    pub previous: Option<String>,
    pub release: Option<String>,
    /// The running containers may have changed (`up` was started).
    pub touched: bool,
    /// `current` points at the new release.
    pub switched: bool,
    /// What `verify` checks: the pins of the release activated last.
    pub pins: BTreeMap<String, String>,
    /// This run's release's own pins, for its record: restoring another release changes
    /// `pins`, never these.
    pub own_pins: BTreeMap<String, String>,
    /// The releases on the host and their outcomes, newest first, as of the snapshot.
    pub releases: Vec<remote::ReleaseEntry>,
    pub replaced: BTreeMap<String, String>,
    /// Restart counts by container id before this run changed anything: containers that
    /// `up` recreates get new ids, so any restart of theirs counts.
    pub restarts_before: BTreeMap<String, i64>,
    pub timings: Vec<(Phase, Duration)>,
    /// The phase running now, or the one that failed.
    pub phase: Phase,
    /// Slow stops seen in `up` or a restore: what the report should point at.
    pub slow_stops: Vec<String>,
    /// When `docker compose up` returned: the health deadline counts from here.
    pub up_done: Option<Instant>,
    lock_token: Option<String>,
    heartbeat: Option<Heartbeat>,
}

struct Heartbeat {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl HostRelease {
    pub fn connect(
        access: Access,
        layout: Layout,
        runner: Runner,
    ) -> Result<HostRelease, ReleaseError> {
        let conn = access.connect()?;
        runner.line(&format!(
            "{}: connected; host key {} ({})",
            conn.name, conn.host_key.fingerprint, conn.host_key.key_type
        ));
        Ok(HostRelease {
            access,
            layout,
            conn,
            runner,
            previous: None,
            release: None,
            touched: false,
            switched: false,
            pins: BTreeMap::new(),
            own_pins: BTreeMap::new(),
            releases: Vec::new(),
            replaced: BTreeMap::new(),
            restarts_before: BTreeMap::new(),
            timings: Vec::new(),
            phase: Phase::Connect,
            slow_stops: Vec::new(),
            up_done: None,
            lock_token: None,
            heartbeat: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.conn.name
    }

    /// Runs a bookkeeping command quietly; a non-zero exit fails.
    fn step(
        &self,
        step: &'static str,
        cmd: &Cmd,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<ExecOutput, ReleaseError> {
        self.checked(step, cmd, stdin, timeout, false)
    }

    /// Runs a deploy step, streaming its output line by line with a host prefix.
    fn streamed(
        &self,
        step: &'static str,
        cmd: &Cmd,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<ExecOutput, ReleaseError> {
        self.checked(step, cmd, stdin, timeout, true)
    }

    fn checked(
        &self,
        step: &'static str,
        cmd: &Cmd,
        stdin: Option<&[u8]>,
        timeout: Duration,
        stream: bool,
    ) -> Result<ExecOutput, ReleaseError> {
        let out = self.quiet(cmd, stdin, timeout, stream)?;
        self.exited_0(step, out)
    }

    /// A command's output, or the step's failure with the tail of what it printed.
    fn exited_0(&self, step: &'static str, out: ExecOutput) -> Result<ExecOutput, ReleaseError> {
        if out.status != 0 {
            return Err(ReleaseError::Step {
                host: self.conn.name.clone(),
                step,
                status: out.status,
                tail: tail(&out, 30),
            });
        }
        Ok(out)
    }

    fn quiet(
        &self,
        cmd: &Cmd,
        stdin: Option<&[u8]>,
        timeout: Duration,
        stream: bool,
    ) -> Result<ExecOutput, ReleaseError> {
        let prefix = format!("[{}]", self.conn.name);
        let runner = self.runner.clone();
        Ok(self.conn.run(cmd, stdin, timeout, |line| {
            if stream {
                runner.line(&format!("{prefix} {line}"));
            }
        })?)
    }

    fn timed<T>(
        &mut self,
        phase: Phase,
        f: impl FnOnce(&mut Self) -> Result<T, ReleaseError>,
    ) -> Result<T, ReleaseError> {
        let started = Instant::now();
        self.phase = phase;
        let result = f(self);
        self.timings.push((phase, started.elapsed()));
        result
    }

    /// Takes the host's deploy lock, waiting up to `lock-timeout` for another holder and
    /// taking over a lock whose heartbeat went stale. Returns a warning if it took over.
    pub fn lock(&mut self, spec: &ReleaseSpec) -> Result<Option<String>, ReleaseError> {
        self.timed(Phase::Lock, |h| h.lock_inner(spec))
    }

    fn lock_inner(&mut self, spec: &ReleaseSpec) -> Result<Option<String>, ReleaseError> {
        let started = Instant::now();
        let mut warning = None;
        let mut last_holder = String::new();
        loop {
            let acquire = self.quiet(&self.layout.lock_acquire(), None, QUICK, false)?;
            match acquire.status {
                0 => break,
                remote::LOCK_HELD => {}
                status => {
                    return Err(ReleaseError::Step {
                        host: self.conn.name.clone(),
                        step: "mkdir .berth/lock",
                        status,
                        tail: tail(&acquire, 30),
                    })
                }
            }
            let inspect = self.quiet(&self.layout.lock_inspect(), None, QUICK, false)?;
            let (holder, age) = parse_lock_inspect(&inspect.stdout);
            let holder_text = holder
                .as_ref()
                .map(|h| h.to_string())
                .unwrap_or_else(|| "an unknown holder".into());
            if age.is_some_and(|a| a > LOCK_STALE_AFTER) {
                let token = random_token();
                if self
                    .quiet(&self.layout.lock_take_over(&token), None, QUICK, false)?
                    .status
                    == 0
                {
                    let w = format!(
                        "{}: took over a stale deploy lock held by {holder_text}: no heartbeat for {}s (stale after {}s).",
                        self.conn.name,
                        age.unwrap_or_default().as_secs(),
                        LOCK_STALE_AFTER.as_secs()
                    );
                    self.runner.line(&w);
                    warning = Some(w);
                }
                continue;
            }
            if holder_text != last_holder {
                self.runner.line(&format!(
                    "{}: waiting for the deploy lock, held by {holder_text}",
                    self.conn.name
                ));
                last_holder = holder_text.clone();
            }
            if started.elapsed() >= spec.lock_timeout {
                return Err(ReleaseError::LockHeld {
                    host: self.conn.name.clone(),
                    holder: holder_text,
                    waited: started.elapsed(),
                });
            }
            std::thread::sleep(Duration::from_secs(1).min(spec.lock_timeout));
        }
        let record = serde_json::to_vec(&spec.holder).expect("json");
        self.conn.upload(
            &format!("{}/holder.json", self.layout.lock_dir()),
            &record,
            0o600,
        )?;
        self.lock_token = Some(spec.holder.token.clone());
        held_locks().push((
            self.access.clone(),
            self.layout.clone(),
            spec.holder.token.clone(),
        ));
        self.start_heartbeat();
        Ok(warning)
    }

    /// Touches the heartbeat over a second connection, so a long `pull` on the first one
    /// cannot starve it.
    fn start_heartbeat(&mut self) {
        let stop = Arc::new(AtomicBool::new(false));
        let (access, layout, flag) = (self.access.clone(), self.layout.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let Ok(conn) = access.connect() else { return };
            let mut last = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if last.elapsed() >= HEARTBEAT_EVERY {
                    let _ = conn.run(&layout.lock_heartbeat(), None, QUICK, |_| {});
                    last = Instant::now();
                }
            }
        });
        self.heartbeat = Some(Heartbeat { stop, thread });
    }

    /// Releases the lock if we hold it. Reconnects if the connection died.
    pub fn unlock(&mut self) -> Result<(), ReleaseError> {
        if let Some(hb) = self.heartbeat.take() {
            hb.stop.store(true, Ordering::Relaxed);
            let _ = hb.thread.join();
        }
        let Some(token) = self.lock_token.clone() else {
            return Ok(());
        };
        let cmd = self.layout.lock_release(&token);
        if self.quiet(&cmd, None, QUICK, false).is_err() {
            self.reconnect()?;
            self.quiet(&cmd, None, QUICK, false)?;
        }
        self.lock_token = None;
        held_locks().retain(|(_, _, t)| t != &token);
        Ok(())
    }

    pub fn reconnect(&mut self) -> Result<(), ReleaseError> {
        self.conn = self.access.connect()?;
        Ok(())
    }

    /// Records what runs now, by image id, and which release `current` points at.
    pub fn snapshot(&mut self) -> Result<(), ReleaseError> {
        let out = self.step("snapshot", &self.layout.snapshot(), None, QUICK)?;
        let (current, rest) = out.stdout.split_once('\n').unwrap_or((&out.stdout, ""));
        // The records come last, each block opened by a marker line.
        let (rest, records) = match rest.find(remote::RECORD_MARK) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        self.releases = remote::parse_release_records(records);
        self.previous = Some(current.trim().to_string()).filter(|s| !s.is_empty());
        let containers = parse_containers(rest);
        self.restarts_before = containers
            .iter()
            .map(|c| (c.id.clone(), c.restart_count))
            .collect();
        self.replaced = containers
            .into_iter()
            .filter(|c| !c.one_off)
            .map(|c| (c.service, c.image_id))
            .collect();
        Ok(())
    }

    /// Checks, before anything is pushed or changed, that this host can take the release:
    /// Compose, a writable deploy dir, disk space, and who holds the lock. Returns the
    /// warnings (little space left).
    pub fn preflight(&mut self) -> Result<Vec<String>, ReleaseError> {
        let out = self.step("preflight", &self.layout.preflight(), None, QUICK)?;
        let p = remote::parse_preflight(&out.stdout);
        let fail = |problem: String| ReleaseError::Preflight {
            host: self.conn.name.clone(),
            problem,
        };
        let version = p.compose.map_err(|why| {
            fail(format!("`docker compose version` failed ({why}). Install Compose v2 (the `docker compose` plugin) on the host."))
        })?;
        let docker_root = p.docker_root.map_err(|why| {
            fail(format!("`docker info` failed ({why}): the SSH user cannot reach the Docker daemon. Add it to the `docker` group, or check that dockerd runs."))
        })?;
        if !p.writable {
            return Err(fail(format!(
                "`{}` cannot be written by the SSH user, so `deploy-dir` {} cannot be made or used. Give the user write access, or choose another `deploy-dir`.",
                p.dir, self.layout.deploy_dir
            )));
        }
        let mut warnings = Vec::new();
        // The release's files land in the deploy dir; the images it pulls, in Docker's
        // data root, often another filesystem.
        for (free, dir, what) in [
            (p.free_kb, p.dir.as_str(), "the release's files"),
            (p.docker_free_kb, docker_root.as_str(), "pulled images"),
        ] {
            match free {
                Some(kb) if kb < MIN_FREE_KB => {
                    return Err(fail(format!(
                        "only {} free on `{dir}`, where {what} go. Free space on the host (`docker image prune` for other projects' images, old logs).",
                        human_kb(kb)
                    )))
                }
                Some(kb) if kb < WARN_FREE_KB => warnings.push(format!(
                    "{}: only {} free on `{dir}`, where {what} go; the deploy may fail for want of space.",
                    self.conn.name,
                    human_kb(kb)
                )),
                _ => {}
            }
        }
        let lock = match &p.lock_holder {
            Some(h) => format!(
                "; the deploy lock is held ({}), berth will wait up to `lock-timeout`",
                h.chars().take(300).collect::<String>()
            ),
            None => String::new(),
        };
        let free = |kb: Option<u64>| kb.map(human_kb).unwrap_or_else(|| "unknown space".into());
        self.runner.line(&format!(
            "{}: preflight ok: compose {version}, `{}` writable with {} free, Docker root `{docker_root}` with {} free{lock}",
            self.conn.name,
            p.dir,
            free(p.free_kb),
            free(p.docker_free_kb)
        ));
        Ok(warnings)
    }

    /// `docker compose up`, streamed, noting which services were slow to stop: a service
    /// that ignores SIGTERM makes every `up` and every rollback wait out its
    /// stop_grace_period, and nobody sees why.
    fn compose_up(
        &mut self,
        step: &'static str,
        cmd: &Cmd,
        what: &str,
    ) -> Result<(), ReleaseError> {
        let started = Instant::now();
        let prefix = format!("[{}]", self.conn.name);
        let runner = self.runner.clone();
        let mut seen: Vec<(Duration, String)> = Vec::new();
        let out = self.conn.run(cmd, None, LONG, |line| {
            runner.line(&format!("{prefix} {line}"));
            seen.push((started.elapsed(), line.to_string()));
        })?;
        for (service, took) in remote::slow_stops(&seen, &self.layout.project, SLOW_STOP) {
            self.slow_stops.push(format!(
                "{}: {what} spent {:.0} s stopping service `{service}`: it most likely ignores SIGTERM, so Docker waited out its stop_grace_period and killed it. Add `init: true` to the service, make the app handle SIGTERM, or set a shorter `stop_grace_period`.",
                self.conn.name,
                took.as_secs_f64()
            ));
        }
        self.exited_0(step, out).map(|_| ())
    }

    /// Reads every release and its outcome afresh.
    pub fn list_releases(&mut self) -> Result<(), ReleaseError> {
        let out = self.step("list releases", &self.layout.release_records(), None, QUICK)?;
        self.releases = remote::parse_release_records(&out.stdout);
        Ok(())
    }

    /// Where a rollback goes, as of the last listing: the newest release proven healthy.
    /// Not "the one before current": that may be a release that failed, was rolled back,
    /// or was interrupted.
    pub fn restore_target(&self) -> Option<String> {
        remote::newest_proven(&self.releases, &[]).map(|e| e.id.clone())
    }

    /// Every container of the project, with its state.
    pub fn containers(&self) -> Result<Vec<ContainerState>, ReleaseError> {
        let out = self.step(
            "list containers",
            &self.layout.project_containers(),
            None,
            QUICK,
        )?;
        Ok(parse_containers(&out.stdout))
    }

    /// Uploads the release, pulls, runs pre-deploy, then `up` and the switch of `current`.
    /// The caller verifies the running digests (alongside the health probe).
    pub fn deploy(&mut self, spec: &ReleaseSpec) -> Result<(), ReleaseError> {
        let id = spec.id.clone();
        let config = self.timed(Phase::Upload, |h| {
            // Exclusive, unlike `mkdir -p`: a deploy must never write into a release that
            // exists, which may be the one `current` points at.
            let dir = h.layout.release_dir(&id);
            if let Err(e) = h.conn.mkdir(&dir, 0o700) {
                return Err(match h.conn.exists(&dir) {
                    Ok(true) => ReleaseError::ReleaseExists {
                        host: h.conn.name.clone(),
                        dir,
                    },
                    _ => e.into(),
                });
            }
            h.release = Some(id.clone());
            h.pins = spec.built.clone();
            h.own_pins = spec.built.clone();
            h.conn.upload(
                &format!("{dir}/{}", remote::COMPOSE_FILE),
                spec.compose.as_bytes(),
                0o644,
            )?;
            h.conn.upload(
                &format!("{dir}/{}", remote::OVERRIDE_FILE),
                remote::override_file(&h.pins).as_bytes(),
                0o644,
            )?;
            h.conn.upload(
                &format!("{dir}/{}", remote::ENV_FILE),
                spec.env_file.expose().as_bytes(),
                0o600,
            )?;
            h.write_record(spec, "pending")?;
            h.resolved_config(&id)
        })?;

        let config_dir = match &spec.registry {
            Some(login) => Some(self.login(login)?),
            None => None,
        };
        self.timed(Phase::Pull, |h| {
            let pull = h
                .layout
                .compose(&id, &["pull", "--quiet", "--ignore-buildable"]);
            // The pull removes the login config when it ends; if the command never ran to
            // its end (connection lost, timeout), try again: the credential must not stay.
            let pulled = h.streamed(
                "docker compose pull",
                &remote::with_docker_config(pull, config_dir.as_deref()),
                None,
                LONG,
            );
            if let (Some(dir), Err(e)) = (&config_dir, &pulled) {
                if !matches!(e, ReleaseError::Step { .. }) {
                    let _ = h.quiet(&remote::remove_docker_config(dir), None, QUICK, false);
                }
            }
            pulled?;
            h.pin_unbuilt(spec, &config)?;
            h.own_pins = h.pins.clone();
            // The record names every pin now, before anything runs from them.
            h.write_record(spec, "pending")
        })?;

        if let Some(pd) = &spec.pre_deploy {
            self.timed(Phase::PreDeploy, |h| {
                let mut tail = vec!["run", "--rm", "-T", pd.service.as_str()];
                tail.extend(pd.argv.iter().map(String::as_str));
                h.streamed("pre-deploy", &h.layout.compose(&id, &tail), None, LONG)
                    .map(|_| ())
            })?;
        }

        self.timed(Phase::Up, |h| {
            h.touched = true;
            h.compose_up(
                "docker compose up",
                &h.layout.compose(&id, &["up", "-d", "--remove-orphans"]),
                "up",
            )?;
            h.step("switch current", &h.layout.switch_current(&id), None, QUICK)?;
            h.switched = true;
            Ok(())
        })
    }

    /// `docker login --password-stdin` into a fresh private config dir, which it returns.
    fn login(&mut self, login: &RegistryLogin) -> Result<String, ReleaseError> {
        let out = self.step(
            "docker login",
            &remote::registry_login(&login.server, &login.username),
            Some(login.password.expose().as_bytes()),
            QUICK,
        )?;
        let dir = out.stdout.lines().last().unwrap_or("").trim().to_string();
        if !dir.starts_with("/tmp/berth-docker-config.") {
            return Err(ReleaseError::Unexpected {
                host: self.conn.name.clone(),
                doing: "reading the login config dir",
                detail: out.stdout,
            });
        }
        Ok(dir)
    }

    /// The release's compose model as compose resolves it on the host (its files, its env
    /// file, the host's environment), before anything is pulled or run. A variable the
    /// compose file uses that nothing sets fails the deploy here (field notes A.5, C).
    fn resolved_config(&mut self, id: &str) -> Result<Value, ReleaseError> {
        let out = self.step(
            "docker compose config",
            &self.layout.compose(id, &["config", "--format", "json"]),
            None,
            QUICK,
        )?;
        let names = unset_variables(&out.stderr);
        if !names.is_empty() {
            return Err(ReleaseError::MissingVariables {
                host: self.conn.name.clone(),
                names,
            });
        }
        serde_json::from_str(&out.stdout).map_err(|e| ReleaseError::Unexpected {
            host: self.conn.name.clone(),
            doing: "reading `compose config`",
            detail: e.to_string(),
        })
    }

    /// Pins services that berth did not build to what was just pulled, by digest, so the
    /// release can be restored exactly later.
    fn pin_unbuilt(&mut self, spec: &ReleaseSpec, config: &Value) -> Result<(), ReleaseError> {
        let id = spec.id.clone();
        let unpinned: Vec<(String, String)> = config["services"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(service, def)| {
                Some((service.clone(), def["image"].as_str()?.to_string()))
            })
            .filter(|(service, image)| {
                !self.pins.contains_key(service) && !image.contains("@sha256:")
            })
            .collect();
        if unpinned.is_empty() {
            return Ok(());
        }
        let images: Vec<String> = unpinned.iter().map(|(_, i)| i.clone()).collect();
        let out = self.step(
            "inspect images",
            &remote::repo_digests(&images),
            None,
            QUICK,
        )?;
        let mut changed = false;
        for ((service, image), line) in unpinned.iter().zip(out.stdout.lines()) {
            // `-`: a buildable service without an image on the host; compose builds it.
            if let Some(pin) = choose_pin(image, line.trim()) {
                self.pins.insert(service.clone(), pin);
                changed = true;
            }
        }
        if changed {
            let path = format!("{}/{}", self.layout.release_dir(&id), remote::OVERRIDE_FILE);
            self.conn
                .upload(&path, remote::override_file(&self.pins).as_bytes(), 0o644)?;
        }
        Ok(())
    }

    /// Each running container must use exactly the pinned image (field notes A.4).
    pub fn verify(&mut self) -> Result<(), ReleaseError> {
        let refs: Vec<String> = self.pins.values().cloned().collect();
        let ids = self.step("resolve pins", &remote::image_ids(&refs), None, QUICK)?;
        let expected: BTreeMap<String, String> = self
            .pins
            .keys()
            .cloned()
            .zip(ids.stdout.lines().map(|l| l.trim().to_string()))
            .collect();
        let mut mismatches = Vec::new();
        let containers = self.containers()?;
        for c in containers.iter().filter(|c| !c.one_off) {
            if let Some(want) = expected.get(&c.service) {
                if want != &c.image_id {
                    mismatches.push(format!(
                        "{} runs {} but {} is {}",
                        c.name,
                        short_id(&c.image_id),
                        self.pins[&c.service],
                        short_id(want)
                    ));
                }
            }
        }
        if mismatches.is_empty() {
            self.runner.line(&format!(
                "{}: verified {} container(s) run the pinned digests",
                self.conn.name,
                containers.len()
            ));
            Ok(())
        } else {
            Err(ReleaseError::DigestMismatch {
                host: self.conn.name.clone(),
                mismatches: mismatches.join("; "),
            })
        }
    }

    pub fn write_record(&self, spec: &ReleaseSpec, outcome: &str) -> Result<(), ReleaseError> {
        let Some(id) = &self.release else {
            return Ok(());
        };
        let record = ReleaseRecord {
            id: id.clone(),
            sha: spec.sha.clone(),
            created_at: spec.holder.started_at.clone(),
            updated_at: now_rfc3339(),
            compose_sha256: sha256_hex(spec.compose.as_bytes()),
            env_sha256: sha256_hex(spec.env_file.expose().as_bytes()),
            actor: spec.holder.actor.clone(),
            run_url: spec.holder.run_url.clone(),
            images: self.own_pins.clone(),
            replaced: self.replaced.clone(),
            previous_release: self.previous.clone(),
            outcome: outcome.into(),
        };
        let body = serde_json::to_string_pretty(&record).expect("json") + "\n";
        self.conn.upload(
            &format!("{}/{}", self.layout.release_dir(id), remote::RECORD_FILE),
            body.as_bytes(),
            0o644,
        )?;
        Ok(())
    }

    /// Re-activates a release: its compose file, its pins and its env file.
    /// Its pins (from its release.json) become what `verify` checks.
    pub fn activate(&mut self, id: &str) -> Result<(), ReleaseError> {
        let record = self.step(
            "read release record",
            &self.layout.read_release_record(id),
            None,
            QUICK,
        )?;
        let record: ReleaseRecord =
            serde_json::from_str(&record.stdout).map_err(|e| ReleaseError::Unexpected {
                host: self.conn.name.clone(),
                doing: "reading the release record to restore",
                detail: e.to_string(),
            })?;
        self.pins = record.images;
        self.compose_up(
            "docker compose up (restore)",
            &self.layout.compose(id, &["up", "-d", "--remove-orphans"]),
            "the restore",
        )?;
        self.step(
            "switch current",
            &self.layout.switch_current(id),
            None,
            QUICK,
        )?;
        Ok(())
    }

    /// Keeps the newest `keep-releases` dirs and prunes only this project's images that
    /// no kept release references. Never `docker system prune`.
    pub fn prune(&mut self, spec: &ReleaseSpec) -> Result<Vec<String>, ReleaseError> {
        let current = self.release.clone().unwrap_or_default();
        self.list_releases()?;
        let doomed =
            remote::releases_to_prune(&self.releases, spec.keep_releases as usize, &current, None);
        for id in &doomed {
            self.step(
                "remove release",
                &self.layout.remove_release(id),
                None,
                QUICK,
            )?;
        }
        if spec.image_prefix.is_empty() {
            return Ok(doomed);
        }
        let referenced: std::collections::BTreeSet<String> = self
            .releases
            .iter()
            .filter(|e| !doomed.contains(&e.id))
            .filter_map(|e| e.record.as_ref())
            .flat_map(|r| r.images.values().cloned())
            .collect();
        let images = self.step(
            "list project images",
            &remote::project_images(&spec.image_prefix),
            None,
            QUICK,
        )?;
        let unused: Vec<String> = images
            .stdout
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(reference, _)| !referenced.contains(*reference))
            .map(|(_, id)| id.to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if !unused.is_empty() {
            // An image still used by a container is refused by the engine; that is fine.
            let _ = self.quiet(&remote::remove_images(&unused), None, QUICK, true);
        }
        Ok(doomed)
    }
}

impl Drop for HostRelease {
    fn drop(&mut self) {
        if let Some(hb) = self.heartbeat.take() {
            hb.stop.store(true, Ordering::Relaxed);
        }
    }
}

type HeldLock = (Access, Layout, String);

static HELD_LOCKS: std::sync::Mutex<Vec<HeldLock>> = std::sync::Mutex::new(Vec::new());

fn held_locks() -> std::sync::MutexGuard<'static, Vec<HeldLock>> {
    HELD_LOCKS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Releases every lock this process holds, over fresh connections. For a cancelled run
/// (SIGTERM/SIGINT), whose deploy threads cannot be interrupted.
pub fn release_held_locks() -> usize {
    let locks: Vec<HeldLock> = held_locks().drain(..).collect();
    let mut released = 0;
    for (access, layout, token) in locks {
        if let Ok(conn) = access.connect() {
            // Still under our lock: what this run left pending was interrupted.
            let _ = conn.run(
                &layout.mark_interrupted(&token, &now_rfc3339()),
                None,
                QUICK,
                |_| {},
            );
            if conn
                .run(&layout.lock_release(&token), None, QUICK, |_| {})
                .is_ok()
            {
                released += 1;
            }
        }
    }
    released
}

/// Containers that fail a release at once: exited non-zero, restarting, OOM-killed, or
/// restarted since the watch began. One-shot containers that exited 0 are fine.
pub fn failing_containers<'a>(
    states: &'a [ContainerState],
    baseline: &BTreeMap<String, i64>,
) -> Vec<&'a ContainerState> {
    states
        .iter()
        .filter(|c| !c.one_off)
        .filter(|c| {
            c.oom_killed
                || c.restarting
                || c.status == "restarting"
                || (c.status == "exited" && c.exit_code != 0)
                || c.status == "dead"
                || c.restart_count > baseline.get(&c.id).copied().unwrap_or(0)
        })
        .collect()
}

pub fn describe_failing(c: &ContainerState) -> String {
    let exit = if c.exit_code == 0 && !c.oom_killed {
        "exit code unknown (it restarted before berth could read it)".to_string()
    } else {
        format!("exit code {}", c.exit_code)
    };
    format!(
        "service `{}` ({}) is {}: {exit}, restarted {} time(s), OOM-killed: {}",
        c.service,
        c.name,
        if c.restarting || c.status == "restarting" || c.restart_count > 0 {
            "crash-looping"
        } else {
            "down"
        },
        c.restart_count,
        if c.oom_killed { "yes" } else { "no" }
    )
}

impl HostRelease {
    /// A crash-looping container reads exit code 0 while it is briefly running again;
    /// look again for up to 2 s to report the code it really exited with.
    pub fn settle_exit_codes(&self, mut failing: Vec<ContainerState>) -> Vec<ContainerState> {
        for _ in 0..20 {
            if failing.iter().all(|c| c.exit_code != 0 || c.oom_killed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            let now = self.containers().unwrap_or_default();
            for c in failing.iter_mut().filter(|c| c.exit_code == 0) {
                if let Some(n) = now.iter().find(|n| n.id == c.id && n.exit_code != 0) {
                    c.exit_code = n.exit_code;
                    c.restart_count = n.restart_count;
                }
            }
        }
        failing
    }

    /// `docker compose ps -a` and the log tails of failing containers (or of every
    /// container when none is clearly failing, e.g. a health check answering 500).
    pub fn diagnostics(&self, lines: usize) -> crate::report::Diagnostics {
        let mut d = crate::report::Diagnostics {
            host: self.conn.name.clone(),
            ..Default::default()
        };
        if let Ok(out) = self.quiet(
            &remote::compose_ps(&self.layout.project),
            None,
            QUICK,
            false,
        ) {
            d.ps = format!("{}{}", out.stdout, out.stderr);
        }
        let states = self.containers().unwrap_or_default();
        let failing = failing_containers(&states, &BTreeMap::new());
        let pick: Vec<&ContainerState> = if failing.is_empty() {
            states.iter().filter(|c| !c.one_off).collect()
        } else {
            failing
        };
        for c in pick {
            if let Ok(out) = self.quiet(&remote::container_logs(&c.name, lines), None, QUICK, false)
            {
                d.logs.push((c.name.clone(), out.stdout));
            }
        }
        d
    }
}

impl HostRelease {
    /// Dry run: says whether the lock is free, without taking it.
    pub fn peek_lock(&mut self) -> Result<(), ReleaseError> {
        let inspect = self.quiet(&self.layout.lock_inspect(), None, QUICK, false)?;
        let (holder, _) = parse_lock_inspect(&inspect.stdout);
        match holder {
            Some(h) => self.runner.line(&format!(
                "{}: the deploy lock is held by {h}; a real run would wait for it",
                self.conn.name
            )),
            None => self
                .runner
                .line(&format!("{}: the deploy lock is free", self.conn.name)),
        }
        Ok(())
    }

    /// Dry run: the commands a deploy would run here, quoted as they would be sent.
    /// File contents and the registry password are not shown.
    pub fn plan(&mut self, spec: &ReleaseSpec) -> (String, Vec<String>) {
        let q = |c: &Cmd| crate::ssh::quote_argv(&c.0);
        let id = &spec.id;
        let dir = self.layout.release_dir(id);
        let mut steps = vec![
            q(&self.layout.lock_acquire()),
            format!("sftp mkdir {dir} (mode 0700; fails if it exists)"),
            format!(
                "sftp put {dir}/{} (compose file, {} bytes)",
                remote::COMPOSE_FILE,
                spec.compose.len()
            ),
            format!(
                "sftp put {dir}/{} (pins: {})",
                remote::OVERRIDE_FILE,
                spec.built
                    .iter()
                    .map(|(s, i)| format!("{s}={i}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            format!(
                "sftp put {dir}/{} (mode 0600, {} bytes, redacted)",
                remote::ENV_FILE,
                spec.env_file.expose().len()
            ),
            format!(
                "{} (fails on a variable nothing sets)",
                q(&self.layout.compose(id, &["config", "--format", "json"]))
            ),
        ];
        if let Some(login) = &spec.registry {
            steps.push(format!(
                "{} <<< (password on stdin, redacted)",
                q(&remote::registry_login(&login.server, &login.username))
            ));
        }
        steps.push(q(&self
            .layout
            .compose(id, &["pull", "--quiet", "--ignore-buildable"])));
        if let Some(pd) = &spec.pre_deploy {
            let mut tail = vec!["run", "--rm", "-T", pd.service.as_str()];
            tail.extend(pd.argv.iter().map(String::as_str));
            steps.push(q(&self.layout.compose(id, &tail)));
        }
        steps.push(q(&self
            .layout
            .compose(id, &["up", "-d", "--remove-orphans"])));
        steps.push(q(&self.layout.switch_current(id)));
        (self.conn.name.clone(), steps)
    }

    /// For `mode: rollback` without `release`: the newest release proven healthy other
    /// than the one `current` points at.
    /// The listing is the snapshot's.
    pub fn proven_other_than_current(&self) -> Result<String, ReleaseError> {
        let current = self.previous.clone().unwrap_or_default();
        remote::newest_proven(&self.releases, &[current.as_str()])
            .map(|e| e.id.clone())
            .ok_or_else(|| ReleaseError::Unexpected {
                host: self.conn.name.clone(),
                doing: "choosing a release to restore",
                detail: format!(
                    "no release other than `{current}` was ever proven healthy here. Name one with `release:` (the list above shows each release's outcome)."
                ),
            })
    }

    /// After `mode: rollback` proved `restored` healthy: the release it left is recorded
    /// `rolled-back` (so neither a later rollback nor a failed deploy's restore goes back
    /// to it) and `restored` is recorded `deployed` (proven now, if it was not before).
    pub fn record_manual_rollback(&mut self, restored: &str) -> Result<(), ReleaseError> {
        let now = now_rfc3339();
        if let Some(left) = self.previous.clone().filter(|l| l != restored) {
            self.step(
                "record the release left",
                &self.layout.set_outcome(&left, "rolled-back", &now),
                None,
                QUICK,
            )?;
        }
        self.step(
            "record the restored release",
            &self.layout.set_outcome(restored, "deployed", &now),
            None,
            QUICK,
        )?;
        Ok(())
    }

    /// The outcome of release `id` as its record says, if the host has it.
    pub fn outcome_of(&self, id: &str) -> Option<remote::Outcome> {
        self.releases
            .iter()
            .find(|e| e.id == id)
            .map(|e| e.outcome())
    }
}

/// A container that takes this long to stop is named as a slow stop.
const SLOW_STOP: Duration = Duration::from_secs(5);

/// Below this, a host cannot take a release: preflight fails.
const MIN_FREE_KB: u64 = 32 * 1024;
/// Below this, preflight warns.
const WARN_FREE_KB: u64 = 2 * 1024 * 1024;

fn human_kb(kb: u64) -> String {
    if kb >= 1024 * 1024 {
        format!("{:.1} GiB", kb as f64 / (1024.0 * 1024.0))
    } else {
        format!("{:.1} MiB", kb as f64 / 1024.0)
    }
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn short_id(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

/// The last `n` lines of a command's output, stderr after stdout.
pub fn tail(out: &ExecOutput, n: usize) -> String {
    let all: Vec<&str> = out.stdout.lines().chain(out.stderr.lines()).collect();
    all[all.len().saturating_sub(n)..].join("\n")
}

/// `sha256:<id> ["repo@sha256:..."]` -> the digest reference for the image's repository,
/// or the image id when the image was never pushed.
pub fn choose_pin(image: &str, inspect: &str) -> Option<String> {
    let (id, digests) = inspect.split_once(' ')?;
    let digests: Vec<String> = serde_json::from_str(digests).unwrap_or_default();
    let repo = strip_tag(image);
    digests
        .iter()
        .find(|d| d.split('@').next() == Some(repo))
        .or_else(|| digests.first())
        .cloned()
        .or_else(|| Some(id.to_string()))
}

fn strip_tag(image: &str) -> &str {
    let name_start = image.rfind('/').map_or(0, |i| i + 1);
    match image[name_start..].find(':') {
        Some(i) => &image[..name_start + i],
        None => image,
    }
}

/// The variables compose warned it defaulted to a blank string, in order, once each. The
/// warning is logfmt without a terminal (`msg="The \"X\" variable ..."`), plain with one.
fn unset_variables(stderr: &str) -> Vec<String> {
    // Compiled once; clippy's `invalid_regex` lint checks the literal.
    static UNSET_WARNING: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r#"The \\?"([A-Za-z_][A-Za-z0-9_]*)\\?" variable is not set\. Defaulting to a blank string"#,
        )
        .expect("built-in regex")
    });
    let mut names: Vec<String> = Vec::new();
    for c in UNSET_WARNING.captures_iter(stderr) {
        if !names.iter().any(|n| n == &c[1]) {
            names.push(c[1].to_string());
        }
    }
    names
}

/// `docker inspect` JSON lines, as container states; anything else is skipped.
fn parse_containers(lines: &str) -> Vec<ContainerState> {
    lines
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| container_state(&v))
        .collect()
}

pub fn container_state(v: &Value) -> ContainerState {
    let labels = &v["Config"]["Labels"];
    ContainerState {
        id: v["Id"].as_str().unwrap_or("").into(),
        service: labels["com.docker.compose.service"]
            .as_str()
            .unwrap_or("")
            .into(),
        name: v["Name"]
            .as_str()
            .unwrap_or("")
            .trim_start_matches('/')
            .into(),
        image_id: v["Image"].as_str().unwrap_or("").into(),
        status: v["State"]["Status"].as_str().unwrap_or("").into(),
        exit_code: v["State"]["ExitCode"].as_i64().unwrap_or(0),
        restart_count: v["RestartCount"].as_i64().unwrap_or(0),
        restarting: v["State"]["Restarting"].as_bool().unwrap_or(false),
        oom_killed: v["State"]["OOMKilled"].as_bool().unwrap_or(false),
        restart_policy: v["HostConfig"]["RestartPolicy"]["Name"]
            .as_str()
            .unwrap_or("")
            .into(),
        one_off: labels["com.docker.compose.oneoff"].as_str() == Some("True"),
    }
}

/// Holder record, heartbeat mtime and host clock, as printed by `Layout::lock_inspect`.
pub fn parse_lock_inspect(out: &str) -> (Option<LockHolder>, Option<Duration>) {
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    let holder = lines
        .iter()
        .find_map(|l| serde_json::from_str::<LockHolder>(l).ok());
    let nums: Vec<u64> = lines
        .iter()
        .rev()
        .take(2)
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let age = match nums.as_slice() {
        [now, beat] => Some(Duration::from_secs(now.saturating_sub(*beat))),
        _ => None,
    };
    (holder, age)
}

pub fn random_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_variables_are_read_from_compose_warnings_either_way_it_prints_them() {
        // Without a terminal (over SSH), as compose v2.40 prints it, then with one.
        let stderr = "time=\"2026-11-24T10:49:59Z\" level=warning msg=\"The \\\"JWT_SECRET\\\" variable is not set. Defaulting to a blank string.\"\n\
                      WARN[0000] The \"SECRET_KEY\" variable is not set. Defaulting to a blank string.\n\
                      WARN[0000] The \"JWT_SECRET\" variable is not set. Defaulting to a blank string.\n\
                      WARN[0000] /x/compose.yml: the attribute `version` is obsolete\n";
        assert_eq!(unset_variables(stderr), ["JWT_SECRET", "SECRET_KEY"]);
        assert!(unset_variables("WARN[0000] the attribute `version` is obsolete").is_empty());
        let err = ReleaseError::MissingVariables {
            host: "deploy@staging:22".into(),
            names: vec!["JWT_SECRET".into(), "SECRET_KEY".into()],
        };
        assert_eq!(
            err.to_string(),
            "the compose file uses ${JWT_SECRET}, ${SECRET_KEY} on deploy@staging:22, but they are \
             set neither in `env-file` nor in the host's environment, so compose would use an empty \
             string. Add `JWT_SECRET=...`, `SECRET_KEY=...` to `env-file`, or write `${NAME:-}` in \
             the compose file where empty is intended. No container was changed."
        );
    }

    #[test]
    fn pins_prefer_the_image_repository_digest() {
        let inspect = r#"sha256:aaa ["other/x@sha256:111","reg:5000/acme/db@sha256:222"]"#;
        assert_eq!(
            choose_pin("reg:5000/acme/db:16", inspect).as_deref(),
            Some("reg:5000/acme/db@sha256:222")
        );
        assert_eq!(
            choose_pin("local/db:1", "sha256:aaa []").as_deref(),
            Some("sha256:aaa")
        );
    }

    #[test]
    fn lock_inspect_output_gives_holder_and_age() {
        let h = LockHolder {
            token: "t".into(),
            run_url: "u".into(),
            actor: "octocat".into(),
            sha: "abcdef0".into(),
            started_at: "now".into(),
        };
        let out = format!("{}\n\n1000\n1100\n", serde_json::to_string(&h).unwrap());
        let (holder, age) = parse_lock_inspect(&out);
        assert_eq!(holder, Some(h));
        assert_eq!(age, Some(Duration::from_secs(100)));
        assert_eq!(
            parse_lock_inspect("\n1000\n1010\n").1,
            Some(Duration::from_secs(10))
        );
    }
}
