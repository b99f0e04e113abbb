//! The compose target: a compose project on a host over SSH. Its release is a dir of
//! files (compose file, digest pins, env file, record) activated with `docker compose up`
//! and pointed at by `current`. Blocking (ssh2): each host runs on its own thread.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use regex::Regex;
use serde_json::Value;

use crate::remote::{self, Cmd, Layout, ReleaseRecord};
use crate::ssh::{ExecOutput, HostSession, Supervision};
use crate::targets::{Access, Action, Body, Output, ReleaseError, ReleaseSpec, Step, Undo};
use crate::workflow::Runner;

mod heal;
pub(crate) mod lock;
mod pull;
mod records;
mod seam;
mod steps;
mod watch;

use steps::DEPLOY_UP;
pub use steps::{activation_step, release_steps, restore_step, ARM_HEAL, LONG, QUICK};
pub(crate) use steps::{pull_steps, upload_steps, PIN_BY_TAG};
pub use watch::{container_state, describe_failing, failing_containers};

/// The state of a container of the project, from `docker inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    pub id: String,
    pub service: String,
    pub name: String,
    pub image_id: String,
    /// The reference the container was created from (`Config.Image`).
    pub image_ref: String,
    pub status: String,
    pub exit_code: i64,
    pub restart_count: i64,
    pub restarting: bool,
    pub oom_killed: bool,
    pub restart_policy: String,
    pub one_off: bool,
    /// With `routes`: the release whose container this is (`berth.release`).
    pub release: Option<String>,
}

/// A host being deployed: its connection, its held lock and what was done so far.
pub struct ComposeHost {
    pub access: Access,
    pub layout: Layout,
    pub conn: HostSession,
    pub runner: Runner,
    pub previous: Option<String>,
    pub release: Option<String>,
    /// The running containers may have changed (a step whose undo is a restore started).
    pub touched: bool,
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
    /// The release's compose model as compose resolved it on the host.
    model: Option<Value>,
    /// This host's throwaway Docker client config for the registry login: random, so
    /// nobody prepares it in advance, and per host, as hosts may share a filesystem.
    docker_config: String,
    /// Slow stops seen in `up` or a restore: what the report should point at.
    pub slow_stops: Vec<String>,
    /// When `docker compose up` returned: the health deadline counts from here.
    pub up_done: Option<Instant>,
    /// When the edge switched to this release (the drain counts from here).
    pub switched_at: Option<Instant>,
    /// The release re-activated last (a restore, `mode: rollback`): `verify` proves its
    /// containers, not the failed release's.
    pub serving: Option<String>,
    /// An earlier deploy put the project's routes in an edge (`.berth/edge.env`).
    pub edge_joined: bool,
    /// `mode: rollback` through the edge: the release switched to.
    pub rollback_to: Option<String>,
    /// `drain-timeout`, for the drain step.
    drain: Duration,
    /// This run's lock token, which the remote session keeps alive.
    token: String,
    /// The undo of the release step running now, if one is: it can be cancelled.
    running: Option<Undo>,
    lock_token: Option<String>,
    /// A restore is running: its commands finish on the host even if berth is gone.
    restoring: bool,
    /// Another deploy took the lock while this run was disconnected: the host is its now.
    pub lock_lost: bool,
    /// The one that took it is the host's own self-heal (berth was gone too long).
    pub lost_to_heal: bool,
    /// What the host did by itself after an earlier run was gone before its verdict.
    pub healed: Option<remote::HealedNote>,
    /// The heal is armed: if the session ends before berth's verdict, the host restores
    /// this release by itself.
    pub(super) heal_armed: bool,
    /// A cancelled run handed the restore over to the host (see [`heal`]).
    pub(super) handed_over: bool,
}

impl ComposeHost {
    /// Connects (host key first) and starts the host's remote session, which keeps the
    /// lock taken with `token` alive for as long as it runs.
    pub fn connect(
        access: Access,
        layout: Layout,
        runner: Runner,
        token: String,
    ) -> Result<ComposeHost, ReleaseError> {
        let conn = access.connect()?;
        conn.start_agent(&layout.lock_dir(), &token)?;
        runner.line(&format!(
            "{}: connected; host key {} ({})",
            conn.name, conn.host_key.fingerprint, conn.host_key.key_type
        ));
        Ok(ComposeHost {
            access,
            layout,
            conn,
            runner,
            token,
            previous: None,
            release: None,
            touched: false,
            pins: BTreeMap::new(),
            own_pins: BTreeMap::new(),
            releases: Vec::new(),
            replaced: BTreeMap::new(),
            restarts_before: BTreeMap::new(),
            model: None,
            docker_config: remote::docker_config_dir(&lock::random_token()),
            slow_stops: Vec::new(),
            up_done: None,
            switched_at: None,
            drain: Duration::ZERO,
            rollback_to: None,
            edge_joined: false,
            serving: None,
            lock_token: None,
            running: None,
            restoring: false,
            lock_lost: false,
            lost_to_heal: false,
            healed: None,
            heal_armed: false,
            handed_over: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.conn.name
    }

    /// Runs a bookkeeping command quietly; a non-zero exit fails.
    pub(crate) fn step(
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

    pub(crate) fn quiet(
        &self,
        cmd: &Cmd,
        stdin: Option<&[u8]>,
        timeout: Duration,
        stream: bool,
    ) -> Result<ExecOutput, ReleaseError> {
        let prefix = format!("[{}]", self.conn.name);
        let runner = self.runner.clone();
        self.supervised(cmd, stdin, timeout, |line| {
            if stream {
                runner.line(&format!("{prefix} {line}"));
            }
        })
    }

    /// Runs a command; while a release step runs, the run's cancellation stops it, and
    /// the step's cleanup runs on the host if it is stopped or the session ends.
    fn supervised(
        &self,
        cmd: &Cmd,
        stdin: Option<&[u8]>,
        timeout: Duration,
        on_line: impl FnMut(&str),
    ) -> Result<ExecOutput, ReleaseError> {
        let (cleanup, cancel) = match &self.running {
            Some(Undo::Cleanup(c)) => (Some(c), Some(crate::cancel::flag())),
            Some(_) => (None, Some(crate::cancel::flag())),
            None => (None, None),
        };
        let how = Supervision {
            cleanup,
            cancel,
            keep: self.restoring,
        };
        Ok(self
            .conn
            .run_supervised(cmd, stdin, how, timeout, on_line)?)
    }

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
                crate::secret::excerpt(&crate::secret::registered(), h, 300)
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
        stdin: Option<&[u8]>,
        what: &str,
        bound: Duration,
    ) -> Result<(), ReleaseError> {
        let started = Instant::now();
        let prefix = format!("[{}]", self.conn.name);
        let runner = self.runner.clone();
        let mut seen: Vec<(Duration, String)> = Vec::new();
        let out = self.supervised(cmd, stdin, bound, |line| {
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

    /// Runs one step of a release (see [`release_steps`]) and keeps what it tells.
    pub(crate) fn execute(&mut self, spec: &ReleaseSpec, step: &Step) -> Result<(), ReleaseError> {
        if step.undo == Undo::Restore {
            self.touched = true;
        }
        self.running = Some(step.undo.clone());
        let result = match &step.action {
            Action::CreateDir { path, mode } => self.create_release_dir(spec, path, *mode),
            Action::Upload { path, body, mode } => {
                let bytes = match body {
                    Body::Text(_, text) => Ok(text.clone().into_bytes()),
                    Body::Secret(secret) => Ok(secret.expose().as_bytes().to_vec()),
                    Body::Pins => Ok(self.override_body(spec).into_bytes()),
                    Body::Record(outcome) => {
                        // The record names every pin before anything runs from them.
                        self.own_pins = self.pins.clone();
                        Ok(self.record_body(spec, outcome).into_bytes())
                    }
                    Body::Stack | Body::JobEnv(_) => Err(self.not_compose(step)),
                };
                bytes.and_then(|b| self.conn.upload(path, &b, *mode).map_err(Into::into))
            }
            Action::Run { cmd, stdin, output } => {
                let stdin = stdin.as_ref().map(|s| s.expose().as_bytes());
                {
                    self.drain = spec
                        .edge
                        .as_ref()
                        .map_or(Duration::ZERO, |e| e.settings.drain);
                    self.run_command(step, cmd, stdin, *output)
                }
            }
        };
        self.running = None;
        if result.is_ok() && step.name == steps::EDGE_ENSURE {
            self.edge_joined = true;
        }
        if let (Err(e), Undo::Cleanup(cleanup)) = (&result, &step.undo) {
            // A command that exited ran its own cleanup; one cut off (connection lost,
            // timeout) may not have.
            if !matches!(e, ReleaseError::Step { .. }) {
                let _ = self.quiet(cleanup, None, QUICK, false);
            }
        }
        result
    }

    /// The override of this release: its pins, and with `routes`, each routed service on
    /// the edge's network under its release's alias and labelled with the release (known
    /// once the model is: a service on compose's implicit `default` network keeps it).
    fn override_body(&self, spec: &ReleaseSpec) -> String {
        let (Some(edge), Some(model)) = (&spec.edge, &self.model) else {
            return remote::override_file(&self.pins);
        };
        let settings = &edge.settings;
        let network = settings.edge();
        let mut services = serde_json::Map::new();
        for (service, image) in &self.pins {
            services.insert(service.clone(), serde_json::json!({ "image": image }));
        }
        for service in settings.services() {
            let nets = &model["services"][service.as_str()]["networks"];
            let on_default = nets.is_null() || nets.get("default").is_some();
            let part = crate::edge::override_service(
                &self.layout.project,
                &service,
                &spec.id,
                on_default,
                &network,
            );
            let entry = services
                .entry(service)
                .or_insert_with(|| serde_json::json!({}));
            for (k, v) in part.as_object().into_iter().flatten() {
                entry[k] = v.clone();
            }
        }
        let net = network.network(&self.layout.project);
        let whole = serde_json::json!({
            "services": services,
            "networks": { net.clone(): { "external": true, "name": net } },
        });
        serde_json::to_string_pretty(&whole).expect("json") + "\n"
    }

    /// How many containers of `service` the release's model asks for (`deploy.replicas`,
    /// else `scale`, else 1); 1 before the model is known.
    pub(crate) fn replicas(&self, service: &str) -> u32 {
        let def = self.model.as_ref().map(|m| &m["services"][service]);
        def.and_then(|d| d["deploy"]["replicas"].as_u64().or(d["scale"].as_u64()))
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0)
            .unwrap_or(1)
    }

    /// The release's compose model, once `compose config` resolved it on the host.
    pub(crate) fn model(&self) -> Option<&Value> {
        self.model.as_ref()
    }

    /// The host's throwaway Docker client config dir for the registry login.
    pub(crate) fn docker_config(&self) -> &str {
        &self.docker_config
    }

    /// A Swarm step handed to the compose target: a bug, said as one.
    fn not_compose(&self, step: &Step) -> ReleaseError {
        ReleaseError::Unexpected {
            host: self.conn.name.clone(),
            doing: "running a release step",
            detail: format!("`{}` is a Swarm step, not a compose one", step.name),
        }
    }

    fn create_release_dir(
        &mut self,
        spec: &ReleaseSpec,
        dir: &str,
        mode: i32,
    ) -> Result<(), ReleaseError> {
        if let Err(e) = self.conn.mkdir(dir, mode) {
            return Err(match self.conn.exists(dir) {
                Ok(true) => ReleaseError::ReleaseExists {
                    host: self.conn.name.clone(),
                    dir: dir.into(),
                },
                _ => e.into(),
            });
        }
        self.release = Some(spec.id.clone());
        self.pins = spec.built.clone();
        self.own_pins = spec.built.clone();
        Ok(())
    }

    fn run_command(
        &mut self,
        step: &Step,
        cmd: &Cmd,
        stdin: Option<&[u8]>,
        output: Output,
    ) -> Result<(), ReleaseError> {
        match output {
            Output::Quiet => self.step(step.name, cmd, stdin, step.bound).map(drop),
            Output::Streamed => self.streamed(step.name, cmd, stdin, step.bound).map(drop),
            Output::ConfigBesidePull => self.config_beside_pull(step, cmd, stdin),
            Output::PinByTag => self.pin_by_tag(step, cmd),
            Output::SwarmJob => Err(self.not_compose(step)),
            Output::Switch => {
                self.streamed(step.name, cmd, stdin, step.bound)?;
                self.switched_at = Some(Instant::now());
                Ok(())
            }
            Output::Drain => {
                // What is left of `drain-timeout` since the switch.
                let mut cmd = cmd.clone();
                let drain = self.drain;
                let since = self.switched_at.map_or(Duration::ZERO, |t| t.elapsed());
                if let Some(wait) = cmd.0.get_mut(crate::edge::DRAIN_WAIT_ARG) {
                    *wait = format!("{:.1}", drain.saturating_sub(since).as_secs_f64());
                }
                self.streamed(step.name, &cmd, stdin, step.bound).map(drop)
            }
            Output::Activate => {
                let what = if step.name == DEPLOY_UP {
                    "up"
                } else {
                    "the restore"
                };
                self.compose_up(step.name, cmd, stdin, what, step.bound)?;
                self.up_done = Some(Instant::now());
                Ok(())
            }
        }
    }

    /// Pins services that berth did not build to what was just pulled, by digest, so the
    /// release can be restored exactly later. `cmd` is completed with their images.
    fn pin_by_tag(&mut self, step: &Step, cmd: &Cmd) -> Result<(), ReleaseError> {
        let unpinned = self.unpinned();
        if unpinned.is_empty() {
            return Ok(());
        }
        let mut cmd = cmd.clone();
        cmd.0.extend(unpinned.iter().map(|(_, i)| i.clone()));
        let out = self.step(step.name, &cmd, None, step.bound)?;
        for ((service, image), line) in unpinned.iter().zip(out.stdout.lines()) {
            // `-`: a buildable service without an image on the host; compose builds it.
            if let Some(pin) = choose_pin(image, line.trim()) {
                self.pins.insert(service.clone(), pin);
            }
        }
        Ok(())
    }

    /// The services of the model, with their image, that are not pinned yet: neither
    /// built by berth nor named by digest.
    fn unpinned(&self) -> Vec<(String, String)> {
        self.model
            .as_ref()
            .and_then(|m| m["services"].as_object())
            .into_iter()
            .flatten()
            .filter_map(|(service, def)| {
                Some((service.clone(), def["image"].as_str()?.to_string()))
            })
            .filter(|(service, image)| {
                !self.pins.contains_key(service) && !image.contains("@sha256:")
            })
            .collect()
    }

    /// The pins release `id`'s record names.
    pub(crate) fn release_pins(&self, id: &str) -> Result<BTreeMap<String, String>, ReleaseError> {
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
        Ok(record.images)
    }

    /// Re-activates a release: its compose file, its pins and its env file.
    /// Its pins (from its release.json) become what `verify` checks.
    fn reactivate(&mut self, id: &str) -> Result<(), ReleaseError> {
        let up = restore_step(&self.layout, id);
        self.reactivate_with(id, &up)
    }

    /// Re-activates release `id` with `up`, its activation step (the compose target's, or
    /// another target's that uses the same release dir and records).
    pub(crate) fn reactivate_with(&mut self, id: &str, up: &Step) -> Result<(), ReleaseError> {
        self.pins = self.release_pins(id)?;
        self.serving = Some(id.to_string());
        // One command, `up` then the switch of `current`, sent with `keep`: if berth is
        // gone before it ends (cancelled, killed), the host runs it to its end, and
        // `current` names the restored release only once `up` succeeded.
        if !lock::set_restoring(&self.access, &self.token, true) {
            return Err(crate::ssh::SshError::Cancelled {
                host: self.conn.name.clone(),
                command: "the restore (the cancelled run's time ran out)".into(),
            }
            .into());
        }
        self.restoring = true;
        let Action::Run { cmd, stdin, .. } = &up.action else {
            unreachable!("an activation runs a command")
        };
        let stdin = stdin.as_ref().map(|s| s.expose().as_bytes());
        let result = self.run_command(up, cmd, stdin, Output::Activate);
        self.restoring = false;
        lock::set_restoring(&self.access, &self.token, false);
        result
    }
}

/// How long a host whose connection was lost is tried again before the run gives up on
/// restoring it (and prints the command to do it by hand).
const RECONNECT_FOR: Duration = Duration::from_secs(20);

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
    static UNSET: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r#"The \\?"([A-Za-z_][A-Za-z0-9_]*)\\?" variable is not set\. Defaulting to a blank string"#)
            .expect("valid regex")
    });
    let mut names: Vec<String> = Vec::new();
    for c in UNSET.captures_iter(stderr) {
        if !names.iter().any(|n| n == &c[1]) {
            names.push(c[1].to_string());
        }
    }
    names
}

#[cfg(test)]
mod tests;
