//! What runs on a host, said apart from running it: every remote command is an argv built
//! by a pure function here. Only the SSH module quotes and executes them.
//!
//! Host layout under `deploy-dir`:
//! ```text
//! current -> .berth/releases/<id>        the release that is switched in
//! .berth/lock/                           held while deploying (atomic mkdir)
//!     holder.json                        who/what/when
//!     heartbeat                          touched while the holder is alive
//! .berth/releases/<id>/
//!     compose.yml                        the app's compose file, as uploaded
//!     berth.override.yml                 pins every service to an image digest
//!     .env                               the env file, mode 0600
//!     release.json                       sha, digests, time, actor, run URL, outcome
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

mod heal;
mod preflight;
mod records;
pub mod swarm;

pub use heal::{
    consume_healed_note, parse_healed_note, HealedNote, HANDOVER_FILE, HEALED_MARK, HEALED_NOTE,
    HEAL_FILE,
};
pub use preflight::{parse_preflight, Preflight};
use records::records_script;

use crate::argv::quote_argv;
pub use records::{
    current_release, is_release_id, newest_proven, parse_release_records, release_id,
    releases_to_prune, LockHolder, Outcome, ReleaseEntry, ReleaseRecord, RECORD_MARK,
    UNPROVEN_KEPT,
};

/// `up` (the rest of the arguments), then `current` (`$c`) switched to the release
/// (`$r`, relative to the deploy dir) by a new link renamed over the old one.
const SWITCH: &str = r#""$@" && ln -sfn "$r" "$c.berth-tmp" && mv -T "$c.berth-tmp" "$c""#;

pub use crate::argv::Cmd;

/// Paths of one deploy dir.
#[derive(Debug, Clone)]
pub struct Layout {
    pub deploy_dir: String,
    pub project: String,
}

impl Layout {
    pub fn berth_dir(&self) -> String {
        format!("{}/.berth", self.deploy_dir)
    }
    pub fn lock_dir(&self) -> String {
        format!("{}/.berth/lock", self.deploy_dir)
    }
    pub fn releases_dir(&self) -> String {
        format!("{}/.berth/releases", self.deploy_dir)
    }
    pub fn release_dir(&self, id: &str) -> String {
        format!("{}/.berth/releases/{id}", self.deploy_dir)
    }
    pub fn current(&self) -> String {
        format!("{}/current", self.deploy_dir)
    }

    /// `docker compose` for one release: its own files, its own env file, its dir as the
    /// project directory, so a release is self-contained and can be re-activated as is.
    pub fn compose(&self, release: &str, tail: &[&str]) -> Cmd {
        let dir = self.release_dir(release);
        let mut argv: Vec<String> = vec![
            "docker".into(),
            "compose".into(),
            "-p".into(),
            self.project.clone(),
            "--project-directory".into(),
            dir.clone(),
            "-f".into(),
            format!("{dir}/{COMPOSE_FILE}"),
            "-f".into(),
            format!("{dir}/{OVERRIDE_FILE}"),
            "--env-file".into(),
            format!("{dir}/{ENV_FILE}"),
        ];
        argv.extend(tail.iter().map(|s| s.to_string()));
        Cmd(argv)
    }

    /// Takes the lock in one round trip. `mkdir` of the lock dir is the atomic step; the
    /// taker writes its token and holder record into it. A held lock is taken over at
    /// once when its holder's remote session ended (it left `abandoned` in the lock), or
    /// when its heartbeat is older than `stale_after_secs` (a host that lost power): by
    /// one taker at a time (`mkdir` of `lock.takeover`), which checks again under it, so
    /// two takers can never both hold it. Prints `taken`, or `took-over <why>` and the
    /// old holder record; exits 0. Held: exits [`LOCK_HELD`] after printing the holder
    /// record, the heartbeat's mtime and the host's clock. Any other exit is an error.
    pub fn lock_acquire(&self, token: &str, holder: &str, stale_after_secs: u64) -> Cmd {
        Cmd::new([
            "sh".to_string(),
            "-c".to_string(),
            LOCK_SCRIPT.into(),
            "sh".into(),
            self.releases_dir(),
            self.lock_dir(),
            token.into(),
            holder.into(),
            stale_after_secs.to_string(),
        ])
    }

    /// After a reconnect: the lock is this run's again if nobody took it meanwhile. Under
    /// the takeover mutex: the new session becomes the lock's, its `abandoned` mark is
    /// withdrawn, and the session that held it before, if it still runs (a connection
    /// that died silently), is stopped, so it neither runs on beside this one nor marks
    /// the lock abandoned later. Exits 0 if the lock is ours, 3 if it is not.
    pub fn lock_reclaim(&self, token: &str) -> Cmd {
        Cmd::new([
            "sh".to_string(),
            "-c".to_string(),
            format!("{LOCK_MUTEX}{RECLAIM_SCRIPT}"),
            "sh".into(),
            self.lock_dir(),
            token.into(),
        ])
    }

    /// Dry run: the holder record, the heartbeat's mtime and the host's clock.
    pub fn lock_inspect(&self) -> Cmd {
        let lock = self.lock_dir();
        Cmd::new([
            "sh".to_string(),
            "-c".to_string(),
            r#"cat "$1/holder.json" 2>/dev/null; echo; stat -c %Y "$1/heartbeat" 2>/dev/null || stat -c %Y "$1"; date +%s"#.into(),
            "sh".into(),
            lock,
        ])
    }

    /// Before anything is pushed: is Compose there, can the deploy dir be written (or
    /// made), how much room is there, and who holds the lock. One round trip, no change;
    /// one docker CLI start: `docker info` names the Compose plugin's version too (asked
    /// directly only when it lists none, or the daemon did not answer).
    pub fn preflight(&self) -> Cmd {
        Cmd::new([
            "sh".to_string(),
            "-c".to_string(),
            r#"v=
# A CLI too old for `.ClientInfo` says so in a template error: then the plain format (a
# daemon that does not answer is asked once, not twice).
if out=$(docker info --format '{{.DockerRootDir}}|{{range .ClientInfo.Plugins}}{{if eq .Name "compose"}}{{.Version}}{{end}}{{end}}' 2>&1) || { case "$out" in *emplate*) out=$(docker info --format '{{.DockerRootDir}}|' 2>&1) ;; *) false ;; esac; }; then
  r=$(printf '%s\n' "$out" | grep '|' | tail -n 1); root=${r%%|*} v=${r#*|}
  echo "docker-root $root"; echo "docker-free-kb $(df -Pk "$root" 2>/dev/null | awk 'NR==2 {print $4}')"
else echo "docker-missing $(echo "$out" | head -n 1)"; fi
if [ -n "$v" ]; then echo "compose ${v#v}"
elif v=$(docker compose version --short 2>&1); then echo "compose $v"; else echo "compose-missing $(echo "$v" | head -n 1)"; fi
d="$1"; while [ ! -e "$d" ]; do d=$(dirname "$d"); done
if [ -d "$d" ] && [ -w "$d" ]; then echo "writable $d"; else echo "not-writable $d"; fi
for x in "$1/.berth" "$1/.berth/releases"; do if [ -e "$x" ] && [ ! -w "$x" ]; then echo "not-writable $x"; fi; done
echo "free-kb $(df -Pk "$d" | awk 'NR==2 {print $4}')"
if [ -d "$2" ]; then echo "lock-held $(cat "$2/holder.json" 2>/dev/null | head -c 2048 | tr -d '\n\r')"; fi"#
                .into(),
            "sh".into(),
            self.deploy_dir.clone(),
            self.lock_dir(),
        ])
    }

    /// Marks every `pending` release record `interrupted`. Run by a cancelled deploy
    /// while it still holds the lock, so that no deploy is in flight: a record left
    /// pending can only belong to a run that did not finish.
    pub fn mark_interrupted(&self, token: &str, now: &str) -> Cmd {
        Cmd::new([
            "sh".to_string(),
            "-c".to_string(),
            format!(
                r#"grep -q "\"token\":\"$3\"" "$2/holder.json" 2>/dev/null || exit 0
for f in "$1"/*/{RECORD_FILE}; do [ -f "$f" ] && grep -q '"outcome": "pending"' "$f" && sed -i -e 's/"outcome": "pending"/"outcome": "interrupted"/' -e "s/\"updated_at\": \"[^\"]*\"/\"updated_at\": \"$4\"/" "$f"; done; true"#
            ),
            "sh".into(),
            self.releases_dir(),
            self.lock_dir(),
            token.into(),
            now.into(),
        ])
    }

    /// Sets the outcome of release `id`'s record in place (for a release left by `mode:
    /// rollback`, whose record this run did not write).
    pub fn set_outcome(&self, id: &str, outcome: &str, now: &str) -> Cmd {
        Cmd::new([
            "sed".to_string(),
            "-i".into(),
            "-e".into(),
            format!(r#"s/"outcome": "[a-z-]*"/"outcome": "{outcome}"/"#),
            "-e".into(),
            format!(r#"s/"updated_at": "[^"]*"/"updated_at": "{now}"/"#),
            format!("{}/{RECORD_FILE}", self.release_dir(id)),
        ])
    }

    /// Releases the lock only if it still holds our token.
    pub fn lock_release(&self, token: &str) -> Cmd {
        Cmd::new([
            "sh".to_string(),
            "-c".to_string(),
            format!(
                r#"{LOCK_MUTEX}[ "$(cat "$l/token" 2>/dev/null)" = "$2" ] && rm -rf "$l"; true"#
            ),
            "sh".into(),
            self.lock_dir(),
            token.into(),
        ])
    }

    /// `up` of release `id`, then `current` switched to it (atomically: a new link renamed
    /// over the old one) once `up` succeeded, as one command.
    pub fn activate_and_switch(&self, id: &str) -> Cmd {
        let mut argv = vec![
            "sh".to_string(),
            "-c".to_string(),
            format!("c=$1 r=$2; shift 2; {SWITCH}"),
            "sh".into(),
            self.current(),
            format!(".berth/releases/{id}"),
        ];
        argv.extend(self.compose(id, &["up", "-d", "--remove-orphans"]).0);
        Cmd(argv)
    }

    pub fn list_releases(&self) -> Cmd {
        Cmd::new(["ls", "-1", &self.releases_dir()])
    }

    /// Every release dir with its record, in one round trip: for each, a line
    /// `RECORD_MARK id`, then its `release.json` (nothing when it has none).
    pub fn release_records(&self) -> Cmd {
        Cmd::new([
            "sh".to_string(),
            "-c".to_string(),
            format!("r=\"$1\"\n{}", records_script()),
            "sh".into(),
            self.releases_dir(),
        ])
    }

    pub fn read_release_record(&self, id: &str) -> Cmd {
        Cmd::new(["cat", &format!("{}/{RECORD_FILE}", self.release_dir(id))])
    }

    pub fn remove_release(&self, id: &str) -> Cmd {
        Cmd::new(["rm", "-rf", &self.release_dir(id)])
    }

    /// `docker inspect` (one JSON object per line) of every container of the project, in
    /// one round trip. A container removed between the list and the inspect is left out.
    pub fn project_containers(&self) -> Cmd {
        Cmd::new([
            "sh".to_string(),
            "-c".to_string(),
            CONTAINERS_SCRIPT.into(),
            "sh".into(),
            self.project.clone(),
        ])
    }

    /// `<service>\t<one-off>\t<image>\t<name>` of every container of the project, from
    /// one `docker ps`. `<image>` is what the container was created from, or its image id
    /// when that reference no longer names the image it runs (Docker's own rule).
    pub fn container_images(&self) -> Cmd {
        Cmd::new([
            "docker".to_string(),
            "ps".into(),
            "-a".into(),
            "--no-trunc".into(),
            "--filter".into(),
            format!("label=com.docker.compose.project={}", self.project),
            "--format".into(),
            r#"{{.Label "com.docker.compose.service"}}	{{.Label "com.docker.compose.oneoff"}}	{{.Image}}	{{.Names}}	{{.Label "berth.release"}}"#.into(),
        ])
    }

    /// What a deploy replaces, in one round trip: the release `current` points at (an empty
    /// first line when none), then [`Layout::project_containers`]' lines, then a line
    /// [`HEALED_MARK`] and the note a heal left (see [`heal`]), then
    /// [`Layout::release_records`]' blocks.
    pub fn snapshot(&self) -> Cmd {
        Cmd::new([
            "sh".to_string(),
            "-c".to_string(),
            format!(
                r#"l=$(readlink "$2" 2>/dev/null) && basename "$l" || echo
{CONTAINERS_SCRIPT}
echo {HEALED_MARK}; head -c 4096 "$4" 2>/dev/null; echo
r="$3"
{}"#,
                records_script()
            ),
            "sh".into(),
            self.project.clone(),
            self.current(),
            self.releases_dir(),
            format!("{}/{HEALED_NOTE}", self.berth_dir()),
        ])
    }
}

/// The services whose containers took at least `min` to stop, from `docker compose up`'s
/// own lines as they arrived (`Container NAME  Recreate` ... `Recreated`, or `Stopping`
/// ... `Stopped`), with how long each took. Docker's event log would say so too, but it
/// keeps only the last 256 events, which a busy host rolls over in seconds.
pub fn slow_stops(
    lines: &[(Duration, String)],
    project: &str,
    min: Duration,
) -> Vec<(String, Duration)> {
    let mut began: BTreeMap<String, Duration> = BTreeMap::new();
    let mut slow: Vec<(String, Duration)> = Vec::new();
    for (at, line) in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [.., "Container", name, state] = words.as_slice() else {
            continue;
        };
        match *state {
            "Recreate" | "Stopping" => {
                began.insert(name.to_string(), *at);
            }
            "Recreated" | "Stopped" => {
                let Some(start) = began.remove(*name) else {
                    continue;
                };
                let took = at.saturating_sub(start);
                let service = service_of(name, project);
                if took >= min && !slow.iter().any(|(s, _)| s == &service) {
                    slow.push((service, took));
                }
            }
            _ => {}
        }
    }
    slow
}

/// `shop-backend-1` of project `shop` is service `backend`.
fn service_of(container: &str, project: &str) -> String {
    let rest = container
        .strip_prefix(project)
        .and_then(|r| r.strip_prefix(['-', '_']))
        .unwrap_or(container);
    match rest.rsplit_once(['-', '_']) {
        Some((service, n)) if n.chars().all(|c| c.is_ascii_digit()) => service.to_string(),
        _ => rest.to_string(),
    }
}

/// `docker compose ps -a` of the project, by name alone, for diagnostics.
pub fn compose_ps(project: &str) -> Cmd {
    Cmd::new(["docker", "compose", "-p", project, "ps", "-a"])
}

/// The last `n` lines of a container's log (stderr included), each cut to `LOG_LINE_BYTES` on the host.
/// Docker's json-file driver stores a line over 16 KiB as several entries and `--tail`
/// counts entries, so one huge line would fill the whole tail: berth reads up to
/// `LOG_ENTRIES_PER_LINE` times more entries, cuts the lines, and keeps the last `n`.
/// What crosses the connection is bounded whatever the app printed.
pub fn container_logs(container: &str, n: usize) -> Cmd {
    log_tail("docker logs", container, n, n * LOG_ENTRIES_PER_LINE)
}

/// `<reader> --tail <entries> <name>` (stderr included), each line cut to
/// `LOG_LINE_BYTES` on the host, the last `n` lines kept: what crosses the connection is
/// bounded whatever the app printed. `reader` is one of berth's own docker commands.
pub(crate) fn log_tail(reader: &str, name: &str, n: usize, entries: usize) -> Cmd {
    Cmd::new([
        "sh".to_string(),
        "-c".into(),
        format!(
            r#"{reader} --tail "$3" "$1" 2>&1 | awk -v max="$4" '{{ if (length($0) > max) print substr($0, 1, max) "{LOG_CUT}" length($0) - max " more]"; else print }}' | tail -n "$2""#
        ),
        "sh".into(),
        name.into(),
        n.to_string(),
        entries.to_string(),
        LOG_LINE_BYTES.to_string(),
    ])
}

const LOG_ENTRIES_PER_LINE: usize = 20;
const LOG_LINE_BYTES: usize = 2000;
/// What [`log_tail`] puts where it cut a line on the host.
const LOG_CUT: &str = " … [line cut: ";

/// A log tail read by [`log_tail`] as berth keeps it: scrubbed, and where a line was cut
/// on the host, a start of a secret left before the cut masked (its rest never crossed,
/// so no mask matches it whole).
pub fn scrubbed_log(masks: &[String], log: &str) -> String {
    let log = crate::secret::scrub(masks, log);
    let mut out = String::with_capacity(log.len());
    for line in log.split_inclusive('\n') {
        match line.rfind(LOG_CUT) {
            Some(at) => {
                out.push_str(&crate::secret::mask_cut_end(masks, &line[..at]));
                out.push_str(&line[at..]);
            }
            None => out.push_str(line),
        }
    }
    out
}

pub const COMPOSE_FILE: &str = "compose.yml";
pub const OVERRIDE_FILE: &str = "berth.override.yml";
pub const ENV_FILE: &str = ".env";
pub const RECORD_FILE: &str = "release.json";
/// Every container of the project (`$1`) as `docker inspect` JSON, a line each.
const CONTAINERS_SCRIPT: &str = r#"ids=$(docker ps -aq --filter "label=com.docker.compose.project=$1") || exit
[ -z "$ids" ] || docker inspect --format '{{json .}}' $ids 2>/dev/null || true"#;
/// `lock_acquire`'s exit status when another deploy holds the lock.
pub const LOCK_HELD: i32 = 3;

/// The takeover mutex for a lock dir `$1`, held until the script exits: who changes a
/// held lock (reclaim, release, takeover) does so under it. A mark older than a minute
/// was left by a killed script and no longer counts. Waits up to 5 s, then exits 4.
const LOCK_MUTEX: &str = r#"l=$1 m="$1.takeover"
find "$m" -maxdepth 0 -mmin +1 -exec rmdir {} \; 2>/dev/null
i=0; until mkdir "$m" 2>/dev/null; do i=$((i+1)); [ $i -lt 100 ] || { echo "the lock's takeover mutex $m stays taken" >&2; exit 4; }; sleep 0.05; done
trap 'rmdir "$m"' EXIT
# dash and busybox skip the EXIT trap when a signal ends them: exit, so it runs.
trap 'exit 143' TERM INT HUP
"#;

/// See [`Layout::lock_reclaim`], after [`LOCK_MUTEX`]: $1 lock dir, $2 token.
const RECLAIM_SCRIPT: &str = r#"t=$(cat "$l/token" 2>/dev/null)
# Not ours: say whether the host's own self-heal holds it (see `heal`).
[ "$t" = "$2" ] || { case $t in heal-*) echo healing ;; esac; exit 3; }
old=$(cat "$l/session" 2>/dev/null)
printf '%s %s\n' "${BERTH_SESSION:-}" "${BERTH_AGENT:-}" > "$l/session" && rm -f "$l/abandoned" || exit 2
set -- $old
if [ -n "$2" ] && [ "$1" != "${BERTH_SESSION:-}" ] && tr '\0' ' ' < "/proc/$2/cmdline" 2>/dev/null | grep -q "berth-agent.* $1"; then
  kill -TERM "$2" 2>/dev/null
  # Gone, or a zombie (the state after the last ") " of its stat, as the agent reads it).
  gone() { kill -0 "$1" 2>/dev/null || return 0; st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; st=${st##*) }; [ "${st%% *}" = Z ]; }
  i=0; while ! gone "$2" && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
fi
exit 0"#;

/// See [`Layout::lock_acquire`]: $1 releases dir, $2 lock dir, $3 token, $4 holder
/// record, $5 stale after (seconds).
const LOCK_SCRIPT: &str = r#"l=$2 token=$3 holder=$4 stale=$5
mkdir -p -m 0700 "$1" || exit 2
take() { e=$(mkdir "$l" 2>&1) && printf '%s\n' "$token" > "$l/token" && printf '%s\n' "$holder" > "$l/holder.json" && printf '%s %s\n' "${BERTH_SESSION:-}" "${BERTH_AGENT:-}" > "$l/session" && touch "$l/heartbeat"; }
take && { echo taken; exit 0; }
# Not a dir: gone between the two looks (a takeover under way), or in the way (an error).
[ -d "$l" ] || { take && { echo taken; exit 0; }; [ -d "$l" ] || { echo "$e" >&2; exit 2; }; }
age() { b=$(stat -c %Y "$l/heartbeat" 2>/dev/null || stat -c %Y "$l" 2>/dev/null) && echo $(( $(date +%s) - b )); }
m="$l.takeover"
# A taker killed half-way leaves its mark; after a minute it no longer counts.
find "$m" -maxdepth 0 -mmin +1 -exec rmdir {} \; 2>/dev/null
if mkdir "$m" 2>/dev/null; then
  trap 'rmdir "$m"' EXIT
  trap 'exit 143' TERM INT HUP
  why=
  if [ -e "$l/abandoned" ]; then why=abandoned
  else a=$(age) && [ "$a" -gt "$stale" ] && why="stale $a"; fi
  if [ -n "$why" ]; then
    old=$(cat "$l/holder.json" 2>/dev/null)
    mv -T "$l" "$l.old-$token" && rm -rf "$l.old-$token"
    take && { echo "took-over $why"; echo "$old"; exit 0; }
  fi
fi
cat "$l/holder.json" 2>/dev/null; echo
stat -c %Y "$l/heartbeat" 2>/dev/null || stat -c %Y "$l" 2>/dev/null || echo
date +%s
exit 3"#;

/// The local image id of each reference, one per line (`-` when absent).
pub fn image_ids(refs: &[String]) -> Cmd {
    inspect_each("{{.Id}}", refs)
}

/// `<id> ["repo@sha256:...", ...]` of each local image, one line per image in order (`-`
/// when absent), for pinning what a compose file names by tag.
pub fn repo_digests(images: &[String]) -> Cmd {
    inspect_each("{{.Id}} {{json .RepoDigests}}", images)
}

/// `docker image inspect --format <format>` of each image in one exec, a line each (`-`
/// when absent). The format is the script's first argument, never part of its text. One
/// `docker` for all of them when all are there (a line each); one per image otherwise.
fn inspect_each(format: &str, images: &[String]) -> Cmd {
    let mut argv = vec![
        "sh".to_string(),
        "-c".into(),
        r#"f="$1"; shift
if [ $# -gt 0 ] && out=$(docker image inspect --format "$f" "$@" 2>/dev/null) && [ "$(printf '%s\n' "$out" | wc -l)" -eq $# ]; then printf '%s\n' "$out"; exit 0; fi
for r in "$@"; do docker image inspect --format "$f" "$r" 2>/dev/null || echo -; done"#.into(),
        "sh".into(),
        format.into(),
    ];
    argv.extend(images.iter().cloned());
    Cmd(argv)
}

/// The config a throwaway login starts from. docker/cli looks for a credential helper
/// on the host (secretservice, pass) only when the config holds no auth at all
/// (`ContainsAuth`, cli/config/config.go); with this entry, `docker login` writes to the
/// throwaway file, which berth removes, never to the host's keyring.
pub const LOGIN_CONFIG: &str = r#"{"auths":{"berth.invalid":{}}}"#;

/// A private client config dir for one run's registry login: random, so nobody can
/// prepare it in advance.
pub fn docker_config_dir(token: &str) -> String {
    format!("/tmp/berth-docker-config.{token}")
}

pub fn remove_docker_config(config_dir: &str) -> Cmd {
    Cmd::new(["rm", "-rf", config_dir])
}

/// What compose prints for a variable nothing sets (and then uses an empty string).
pub const UNSET_VARIABLE: &str = "variable is not set. Defaulting to a blank string";

/// Who the host's pull logs in as: registry, user, and the throwaway client config dir
/// (see [`docker_config_dir`]). The password comes on the command's stdin.
pub struct PullLogin<'a> {
    pub registry: &'a str,
    pub username: &'a str,
    pub config_dir: &'a str,
}

/// The pull's status when it was stopped for going `stall` seconds without progress (the
/// registry stopped sending).
pub const PULL_STALLED: i32 = 124;

/// `compose config` (the model) beside `compose pull`, in one command: the config's own
/// CLI start and parse take no time of their own. The config still decides: when it
/// fails or names a variable nothing sets ([`UNSET_VARIABLE`]), the pull is stopped.
/// With `login`, the command first logs in to the registry (password on stdin) in a
/// throwaway client config that it removes when it ends, however it ends: no credential
/// stays on the host if the command is cut off. A pull whose output stops growing for
/// `stall` seconds is stopped, with status [`PULL_STALLED`].
///
/// Everything goes to stdout, in order: the pull's output (its progress lines left out),
/// then a line `<end> <config status> <pull status>`, then the model (config exited 0
/// and warned of no unset variable) or what the config printed on stderr. After a model
/// and a pull that succeeded, a line `<end>-images` and `<image> <id> <repo digests>` of
/// each image the model names, when they are all there (what `repo_digests` would tell).
/// `<end>` is the last argument, added at run time: a random word that no output can
/// forge. Exits 0 once that line is out; a failed login exits with its status.
pub fn config_beside_pull(
    config: &Cmd,
    pull: &Cmd,
    login: Option<&PullLogin>,
    stall: std::time::Duration,
) -> Cmd {
    Cmd::new([
        "sh".to_string(),
        "-c".into(),
        CONFIG_BESIDE_PULL.into(),
        "sh".into(),
        quote_argv(&config.0),
        quote_argv(&pull.0),
        login.map(|l| l.config_dir).unwrap_or_default().into(),
        UNSET_VARIABLE.into(),
        login.map(|l| l.registry).unwrap_or_default().into(),
        login.map(|l| l.username).unwrap_or_default().into(),
        LOGIN_CONFIG.into(),
        stall.as_secs().max(1).to_string(),
    ])
}

const CONFIG_BESIDE_PULL: &str = r#"cfg=$1 pull=$2 dc=$3 pat=$4 reg=$5 user=$6 empty=$7 stall=$8 end=$9 t= p= made=
# The pull runs in a process group of its own (when setsid is there), which is stopped as
# a whole: `docker` runs compose as a child, and before Docker 25 the client neither
# stops on the first TERM nor passes it on.
stop_pull() { [ -z "$p" ] || kill -TERM "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null; }
trap '[ -z "$t" ] || rm -rf "$t"; [ -z "$made" ] || rm -rf "$dc"' EXIT
# dash and busybox skip the EXIT trap when a signal ends them: exit, so it runs.
trap 'stop_pull; exit 143' TERM INT HUP
if [ -n "$dc" ]; then
  # A fresh private client config (mkdir fails if anything is there), holding an auth
  # entry so that the CLI writes the login to it, never to a credential helper.
  mkdir -m 0700 "$dc" || exit 125
  made=1
  printf '%s' "$empty" > "$dc/config.json" || exit 125
  out=$(DOCKER_CONFIG="$dc" docker login --username "$user" --password-stdin "$reg" 2>&1) || {
    s=$?; echo "docker login to $reg failed:"; printf '%s\n' "$out"; exit $s
  }
  export DOCKER_CONFIG="$dc"
fi
t=$(mktemp -d) || exit 125
eval "$cfg" >"$t/model" 2>"$t/err" </dev/null &
c=$!
ss=; command -v setsid >/dev/null && ss=setsid
# exec: the pull's pid is the one started here, the leader of its group (a non-interactive
# shell's background job is no group leader, so setsid does not fork).
( exec >"$t/pull" 2>&1 </dev/null; eval "exec $ss $pull" ) &
p=$!
# The pull's progress is new lines of output; none for $stall seconds: the registry
# stopped sending. Stopped as a whole (KILL 5 s after TERM: an old client ignores TERM).
( n=0 idle=0
  while sleep 1; do
    # Distinct lines: an engine may repeat a download's progress line while no byte comes.
    m=$(sort -u "$t/pull" 2>/dev/null | wc -l) || exit 0
    if [ "$m" = "$n" ]; then idle=$((idle+1)); else idle=0 n=$m; fi
    [ "$idle" -lt "$stall" ] && continue
    : > "$t/stalled"; kill -TERM "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null
    sleep 5; kill -KILL "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null; exit 0
  done ) >/dev/null 2>&1 &
w=$!
wait "$c"; cs=$?
ok=1; { [ "$cs" -eq 0 ] && ! grep -qF "$pat" "$t/err"; } || { ok=; stop_pull; }
wait "$p"; ps=$?; p=
kill "$w" 2>/dev/null
[ -e "$t/stalled" ] && ps=124
# Progress lines say nothing once the pull is over; the rest (what was pulled, errors) is
# the pull's output.
grep -vE '^ *[0-9a-f]{12} (Pulling fs layer|Waiting|Downloading|Verifying Checksum|Download complete|Extracting|Pull complete|Already exists)' "$t/pull"
[ "$ps" -ne 124 ] || printf 'berth: no progress for %s s; still being pulled:%s\n' "$stall" "$(sed -n 's/^ *\([^ ]*\) Pulling *$/\1/p' "$t/pull" | while read -r s; do grep -qE "^ *$s (Pulled|Skipped)" "$t/pull" || printf ' %s' "$s"; done)"
printf '\n%s %s %s\n' "$end" "$cs" "$ps"
[ -n "$ok" ] || { cat "$t/err"; exit 0; }
cat "$t/model"
[ "$ps" -eq 0 ] || exit 0
# What each image the model names is, by one `docker` when all are there: berth pins by
# it. Compose writes a service's image at this indentation; if not, berth asks again.
set -f
set -- $(sed -n 's/^      "image": "\([^"]*\)",\{0,1\}$/\1/p' "$t/model")
[ $# -gt 0 ] && out=$(docker image inspect --format '{{.Id}} {{json .RepoDigests}}' "$@" 2>/dev/null) || exit 0
[ "$(printf '%s\n' "$out" | wc -l)" -eq $# ] || exit 0
# (compose ends its JSON without a newline)
printf '\n%s-images\n' "$end"
printf '%s\n' "$out" | while IFS= read -r l; do printf '%s %s\n' "$1" "$l"; shift; done"#;

/// Removes a container, running or not (a one-off whose client was stopped).
pub fn remove_container(name: &str) -> Cmd {
    Cmd::new(["docker", "rm", "-f", name])
}

/// Images of this project's repositories present on the host: `repo@digest id` lines.
pub fn project_images(image_prefix: &str) -> Cmd {
    Cmd::new([
        "docker",
        "image",
        "ls",
        "--digests",
        "--filter",
        &format!("reference={image_prefix}-*"),
        "--format",
        "{{.Repository}}@{{.Digest}} {{.ID}}",
    ])
}

/// Removes images by id, never their untagged parents: those may be another build's cache.
pub fn remove_images(ids: &[String]) -> Cmd {
    let mut argv = vec![
        "docker".to_string(),
        "image".into(),
        "rm".into(),
        "--no-prune".into(),
    ];
    argv.extend(ids.iter().cloned());
    Cmd(argv)
}

/// The override file pinning each service to its image: JSON, which is valid YAML.
pub fn override_file(images: &BTreeMap<String, String>) -> String {
    let services: serde_json::Map<String, serde_json::Value> = images
        .iter()
        .map(|(svc, img)| (svc.clone(), serde_json::json!({ "image": img })))
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({ "services": services })).expect("json") + "\n"
}

#[cfg(test)]
mod tests;
