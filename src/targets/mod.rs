//! Where a release goes: the seam between the deploy engine and a kind of target.
//!
//! The engine (src/engine) decides: which hosts, in what order, when a release is
//! judged, when to roll back. A [`Target`] knows how: its steps as data
//! ([`Target::release_steps`]), how to run one, how to verify and watch what runs, how to
//! re-activate a release. Today's target is a compose project over SSH
//! ([`compose::ComposeHost`]); a Swarm stack is the next one.
//!
//! Every method blocks (ssh2): the engine calls a target only from the host's own thread.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::inputs::{HostSpec, PreDeploy};
use crate::remote::LockHolder;
use crate::report::Diagnostics;
use crate::secret::Secret;
use crate::ssh::{Credentials, HostSession, HostTrust, SshError};

pub mod compose;
mod step;
pub mod swarm;

pub use compose::lock::{random_token, release_held_locks, LastResort, LOCK_STALE_AFTER};
pub use step::{phase_summaries, Action, Body, Output, Step, Undo};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// One host of a target, driven by the engine.
pub trait Target: Send {
    /// What the engine and the report need to know of the host now.
    fn state(&self) -> HostState;
    /// A fresh connection (host key checked again), e.g. after a long build.
    fn reconnect(&mut self) -> Result<(), ReleaseError>;
    /// After a failure: connected again if the connection was lost, trying for a bounded
    /// time; an error when the host cannot be reached.
    fn ensure_connected(&mut self) -> Result<(), ReleaseError>;
    /// Whether the host can take a release, before anything is pushed; returns warnings.
    fn preflight(&mut self) -> Result<Vec<String>, ReleaseError>;
    /// Dry run: who holds the lock, without taking it.
    fn peek_lock(&mut self) -> Result<(), ReleaseError>;
    /// Takes the deploy lock; returns a warning if a stale one was taken over.
    fn lock(&mut self, spec: &ReleaseSpec) -> Result<Option<String>, ReleaseError>;
    fn unlock(&mut self) -> Result<(), ReleaseError>;
    /// Reads what runs now and the release records, before anything changes.
    fn snapshot(&mut self) -> Result<(), ReleaseError>;
    /// The release as data: executed by [`Target::run_step`], printed as the plan.
    fn release_steps(&self, spec: &ReleaseSpec) -> Vec<Step>;
    /// Dry run: what a deploy sends to this host up to the verdict, in order: the lock,
    /// the snapshot, then [`Target::release_steps`] as [`Step::plan_line`] prints them.
    fn plan(&self, spec: &ReleaseSpec) -> Vec<String>;
    fn run_step(&mut self, spec: &ReleaseSpec, step: &Step) -> Result<(), ReleaseError>;
    /// Whether what runs is exactly what was activated last (by digest).
    fn verify(&mut self) -> Result<(), ReleaseError>;
    /// One look for workloads failing since the snapshot (crash loops), described.
    fn watch(&mut self) -> Result<Vec<String>, ReleaseError>;
    /// Re-activates release `id` from its record.
    fn activate(&mut self, id: &str) -> Result<(), ReleaseError>;
    /// The command that re-activates release `id` by hand, when berth could not.
    fn recovery_command(&self, id: &str) -> String;
    /// Writes this run's release record with `outcome`.
    fn record(&mut self, spec: &ReleaseSpec, outcome: &str) -> Result<(), ReleaseError>;
    /// Removes releases and images past `keep-releases`; returns the releases removed.
    fn prune(&mut self, spec: &ReleaseSpec) -> Result<Vec<String>, ReleaseError>;
    fn diagnostics(&mut self, lines: usize) -> Diagnostics;
    /// `mode: rollback`: the release to restore (the one named, or the newest proven one
    /// other than current), and a warning when it never proved healthy.
    fn choose_rollback(
        &mut self,
        wanted: Option<&str>,
    ) -> Result<(String, Option<String>), ReleaseError>;
    /// After `mode: rollback` proved `restored` healthy: the records say so.
    fn record_manual_rollback(&mut self, restored: &str) -> Result<(), ReleaseError>;
    /// After a restore began `elapsed` ago and proved healthy: whether what it started
    /// stays up, with `outlast_stops` long enough that no stop already in flight (an `up`
    /// cut off half-way) can still take it down. `Some(why)` when it did not.
    fn steady(
        &mut self,
        _elapsed: Duration,
        _outlast_stops: bool,
    ) -> Result<Option<String>, ReleaseError> {
        Ok(None)
    }
    /// `mode: rollback` with `routes`: when release `id` was deployed through the edge, its
    /// pins become what `verify` checks and [`Target::release_steps`] become the switch to
    /// it (started beside what runs, proven, switched, drained) instead of a deploy's;
    /// `false` when it was not (then [`Target::activate`] restores it as before).
    fn switch_to(&mut self, _id: &str, _spec: &ReleaseSpec) -> Result<bool, ReleaseError> {
        Ok(false)
    }
    /// With `routes`, the first thing after a failure once the edge was switched: the
    /// edge routes back to the previous release's containers, which still run (one config
    /// load), before the diagnostics and the rest of the restore. `true` when it did.
    fn route_back(&mut self) -> Result<bool, ReleaseError> {
        Ok(false)
    }
    /// A cancelled run is leaving: the host finishes what berth cannot (see
    /// `remote::heal`).
    fn hand_over(&mut self) -> Result<(), ReleaseError> {
        Ok(())
    }
}

/// A host as the engine and the report see it.
#[derive(Clone, Debug)]
pub struct HostState {
    pub name: String,
    pub spec: HostSpec,
    pub fingerprint: String,
    /// The release `current` pointed at when the run began.
    pub previous: Option<String>,
    /// The release this run activated last.
    pub release: Option<String>,
    /// A step whose undo is [`Undo::Restore`] has started: the running containers may
    /// have changed.
    pub touched: bool,
    /// When the activation returned: the health deadline counts from here.
    pub activated_at: Option<Instant>,
    /// Where a rollback goes: the newest release proven healthy, as the records say.
    pub restore_target: Option<String>,
    pub slow_stops: Vec<String>,
    /// What the target found worth a warning in the report (e.g. a Swarm service that
    /// cannot update start-first).
    pub warnings: Vec<String>,
    /// Another deploy took the lock while this run was disconnected: berth leaves the
    /// host to it (no record, no restore).
    pub lock_lost: bool,
    /// The host's own self-heal took it: the host restores the previous release itself.
    pub lost_to_heal: bool,
    /// An earlier run was gone before its verdict, and the host restored a release by
    /// itself: what it did.
    pub healed: Option<crate::remote::HealedNote>,
    /// A cancelled run handed its restore over to the host, which finishes and proves it.
    pub handed_over: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("the deploy lock on {host} is held by {holder}; waited {} (`lock-timeout`). Wait for that deploy to finish, or raise `lock-timeout`. If it is dead, its lock goes stale after {} without a heartbeat and is taken over.", crate::report::Rounded(*waited), crate::report::Rounded(LOCK_STALE_AFTER))]
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
    #[error("the registry stopped sending: the pull on {host} made no progress for {secs} s (`pull-stall-timeout`) while pulling {}. It was stopped and nothing was switched; the previous release still runs. Check that the registry is up and answering, then deploy again.", if images.is_empty() { "the release's images".to_string() } else { images.join(", ") })]
    PullStalled {
        host: String,
        secs: u64,
        images: Vec<String>,
    },
    #[error("after `up`, {host} does not run the pinned images: {mismatches}. A pull may have failed silently or another process changed the containers.")]
    DigestMismatch { host: String, mismatches: String },
    #[error("the compose file uses {} on {host}, but {} set neither in `env-file` nor in the host's environment, so compose would use an empty string. Add {} to `env-file`, or write `${{NAME:-}}` in the compose file where empty is intended. No container was changed.", names.iter().map(|n| format!("${{{n}}}")).collect::<Vec<_>>().join(", "), if names.len() == 1 { "it is" } else { "they are" }, names.iter().map(|n| format!("`{n}=...`")).collect::<Vec<_>>().join(", "))]
    MissingVariables { host: String, names: Vec<String> },
    #[error("release {dir} already exists on {host}: another deploy of this commit started in the same second and ran first. Nothing was changed; run the deploy again.")]
    ReleaseExists { host: String, dir: String },
    #[error("{host} is not ready for a deploy: {problem} Nothing was pushed or changed.")]
    Preflight { host: String, problem: String },
    #[error("the deploy lock on {host} was taken by another deploy while berth's connection was down. The release berth was deploying may be half-done there; check the host and deploy again.")]
    LockLost { host: String },
    #[error("there is no earlier release on this host to restore. The failed release is left in place for diagnosis.")]
    NothingToRestore,
    #[error("no host in `hosts` is a reachable Swarm manager:\n{}\nName a manager node (`docker node ls` on the swarm shows them), or make one with `docker swarm init`.", tried.join("\n"))]
    NoManager { tried: Vec<String> },
    #[error("the release's compose file cannot become a Swarm stack on {host}: {problem}. Nothing was changed.")]
    StackFile { host: String, problem: String },
    #[error("the stack did not converge on {host}: {}", services.join("; "))]
    StackFailed { host: String, services: Vec<String> },
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
    pub pre_deploy_timeout: Duration,
    /// How long the pull may go without progress (`pull-stall-timeout`).
    pub pull_stall: Duration,
    /// Whether the host restores the previous release by itself when berth is gone
    /// before its verdict (not with `rollback: off`).
    pub self_heal: bool,
    pub registry: Option<RegistryLogin>,
    pub holder: LockHolder,
    pub lock_timeout: Duration,
    pub keep_releases: u32,
    pub image_prefix: String,
    /// How long a target may take to converge after its activation (`health-timeout`):
    /// a Swarm stack's update is waited for within it.
    pub converge_within: Duration,
    /// `routes`: the release is started beside the old one and switched through the
    /// host's edge (see `crate::edge`).
    pub edge: Option<EdgeRelease>,
}

/// What a routed release needs: the edge's settings and this run's candidate token (the
/// header value that sends a probe to the new containers only).
#[derive(Clone)]
pub struct EdgeRelease {
    pub settings: crate::edge::EdgeSettings,
    pub token: String,
}

#[derive(Clone)]
pub struct RegistryLogin {
    pub server: String,
    pub username: String,
    pub password: Secret,
}
