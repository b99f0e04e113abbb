//! A restore that is proven, not assumed, and a host that restores itself when berth is
//! gone before a verdict.
//!
//! Docker finishes a stop it was asked for even when the client that asked is gone: an
//! `up` interrupted while it recreates a container leaves the daemon stopping the old one
//! (10 s for an app that ignores SIGTERM). An `up` of the proven release started then
//! finds that container still running, leaves it be, and the daemon kills it a moment
//! later. So every restore first waits until no container of the project is being
//! stopped or removed (`settle` in [`FUNCTIONS`]), and counts as restored only once its containers stayed
//! up for the project's longest stop timeout plus a margin (`steady`): any stop already
//! in flight when it began is over by then.
//!
//! The heal script is written into the lock (`heal`) before the first step that may
//! change the running containers, and removed once berth has a verdict. The host's agent
//! runs it when its session ends with the script still there and the lock still its own
//! (see `ssh::agent`): berth killed, its runner gone, or a connection that never came
//! back.

use super::{Cmd, Layout};
use crate::argv::quote_argv;

/// The heal script's file in the lock dir; its presence arms the heal.
pub const HEAL_FILE: &str = "heal";
/// In the lock dir: berth is leaving (a cancelled run), so the agent heals at once when
/// the session ends instead of first waiting for a reconnect.
pub const HANDOVER_FILE: &str = "handover";
/// In `.berth/`: what the last heal did, for the next run to report.
pub const HEALED_NOTE: &str = "healed.json";
/// Marks the heal note in the snapshot's output.
pub const HEALED_MARK: &str = "berth-healed-note";
/// Added to the project's longest stop timeout for the steady window.
pub const STEADY_MARGIN_SECS: u64 = 5;

/// Shell functions shared by a restore and the heal. `settle P`: waits until no container
/// of project P is being removed, or being stopped (a `kill` event with no `die` after it,
/// and still running), for at most the project's longest stop timeout plus the margin.
/// `window P`: that bound in seconds. `steady P S`: fails, naming the container, if within
/// S seconds any container of P (one-offs aside) is not running (a clean exit 0 aside),
/// restarts, is replaced, or is unhealthy. Both touch `$beat` (a heartbeat file) if set.
pub const FUNCTIONS: &str = r#"window() {
  # A newer CLI templates inspect's raw JSON, where an unset StopTimeout is a missing key.
  w=$(docker ps -aq --filter "label=com.docker.compose.project=$1" | xargs -r docker inspect -f '{{json .Config}}' 2>/dev/null | awk '{ n = 10; if (match($0, /"StopTimeout":[0-9]+/)) n = substr($0, RSTART + 14, RLENGTH - 14) + 0; print n }' | sort -n | tail -n 1)
  echo $(( ${w:-10} + MARGIN ))
}
settle() {
  f="label=com.docker.compose.project=$1" end=$(( $(date +%s) + $(window "$1") )) said=
  while :; do
    busy=$(docker ps -a --filter "$f" --filter status=removing --format '{{.Names}}')
    if [ -z "$busy" ]; then
      # Best effort: the daemon keeps its last 256 events (the steady window covers what
      # they miss). A health check's exec and status events come between a stop's kill
      # and its die: they say nothing of the stop.
      for i in $(docker events --since 15m --until "$(date +%s)" --filter "$f" --filter type=container --format '{{.Actor.ID}} {{.Action}}' 2>/dev/null | awk '$2 ~ /^(exec_|health_status)/ { next } { a[$1] = $2 } END { for (i in a) if (a[i] == "kill") print i }'); do
        busy="$busy$(docker inspect -f '{{if .State.Running}} {{.Name}}{{end}}' "$i" 2>/dev/null)"
      done
    fi
    [ -n "$busy" ] || return 0
    [ -n "$said" ] || { said=1; echo "berth: waiting for Docker to finish stopping or removing: $(echo $busy | sed 's#/##g')"; }
    [ "$(date +%s)" -lt "$end" ] || { echo "berth: still being stopped after $(window "$1") s: $(echo $busy | sed 's#/##g')"; return 0; }
    [ -z "$beat" ] || touch "$beat" 2>/dev/null
    sleep 0.5
  done
}
looks() {
  # Health from the state's JSON: a missing key would fail a newer CLI's template.
  docker ps -aq --filter "label=com.docker.compose.project=$1" --filter label=com.docker.compose.oneoff=False | xargs -r docker inspect -f '{{.Id}} {{.Name}} {{.State.Status}} {{.State.ExitCode}} {{.RestartCount}} {{json .State}}' 2>/dev/null | awk '{ h = "none"; if (index($0, "\"Health\":{\"Status\":\"unhealthy\"")) h = "unhealthy"; print $1, $2, $3, $4, $5, h }' | sort
}
steady() {
  first=$(looks "$1") end=$(( $(date +%s) + $2 ))
  [ -n "$first" ] || { echo "no container of project $1 runs"; return 1; }
  while :; do
    now=$(looks "$1")
    bad=$(printf '%s\n' "$now" | awk '$3 != "running" && !($3 == "exited" && $4 == 0) { sub("^/", "", $2); print $2 " is " $3 " (exit " $4 ")" } $6 == "unhealthy" { sub("^/", "", $2); print $2 " is unhealthy" }' | head -n 3)
    [ -z "$bad" ] || { echo $bad; return 1; }
    [ "$(printf '%s\n' "$now" | awk '{ print $1, $5 }')" = "$(printf '%s\n' "$first" | awk '{ print $1, $5 }')" ] || { echo "a container of project $1 restarted or was replaced"; return 1; }
    [ "$(date +%s)" -lt "$end" ] || return 0
    [ -z "$beat" ] || touch "$beat" 2>/dev/null
    sleep 0.5
  done
}
"#;

/// With an edge (`routes`), before a restore's `up`: when the restored release's routed
/// containers still run (a failed switch, a failed candidate), the edge routes to them
/// again at once (one config load) and the other release's containers go.
const EDGE_BEFORE: &str = r#"(cd "${c%/*}" && edge_before_up "$P" "$id")"#;
/// After it: the restored release's routes installed, whatever else of a routed service
/// removed.
const EDGE_AFTER: &str = r#"(cd "${c%/*}" && edge_after_up "$P" "$id")"#;

/// The functions with the margin filled in.
fn functions() -> String {
    format!(
        "MARGIN={STEADY_MARGIN_SECS}\n{FUNCTIONS}{}",
        crate::edge::FUNCTIONS
    )
}

impl Layout {
    /// A restore of release `id`: `settle` (see [`FUNCTIONS`]) first, then `up` and the switch of `current`
    /// as [`Layout::activate_and_switch`] does them.
    pub fn settle_and_activate(&self, id: &str) -> Cmd {
        let mut argv = vec![
            "sh".to_string(),
            "-c".into(),
            format!(
                "{}beat=\nP=$1 c=$2 r=$3; shift 3\nid=${{r##*/}}\n{EDGE_BEFORE}\nsettle \"$P\"\n{}",
                functions(),
                super::SWITCH.replace("\"$@\" && ", &format!("\"$@\" && {EDGE_AFTER} && "))
            ),
            "sh".into(),
            self.project.clone(),
            self.current(),
            format!(".berth/releases/{id}"),
        ];
        argv.extend(self.compose(id, &["up", "-d", "--remove-orphans"]).0);
        Cmd(argv)
    }

    /// Whether the project's containers stay up: with `outlast_stops`, for its longest
    /// stop timeout plus the margin, less `elapsed` seconds already waited since the
    /// restore began; at least 2 s. Exits 1 with the reason when they do not.
    pub fn steady(&self, elapsed_secs: u64, outlast_stops: bool) -> Cmd {
        Cmd::new([
            "sh".to_string(),
            "-c".into(),
            format!(
                "{}beat=\nw=2; [ \"$3\" = full ] && w=$(( $(window \"$1\") - $2 )); [ \"$w\" -ge 2 ] || w=2\nsteady \"$1\" \"$w\"",
                functions()
            ),
            "sh".into(),
            self.project.clone(),
            elapsed_secs.to_string(),
            if outlast_stops { "full" } else { "short" }.into(),
        ])
    }

    /// Arms the heal: writes the script that restores the newest release proven healthy
    /// (chosen when it runs) into the lock, for the agent to run if the session ends with
    /// no verdict.
    pub fn arm_heal(&self) -> Cmd {
        Cmd::new([
            "sh".to_string(),
            "-c".into(),
            r#"[ -d "$1" ] || exit 3; printf '%s\n' "$2" > "$1/heal.tmp" && chmod 0600 "$1/heal.tmp" && mv -f "$1/heal.tmp" "$1/heal""#.into(),
            "sh".into(),
            self.lock_dir(),
            self.heal_script(),
        ])
    }

    /// Disarms it: berth has its verdict.
    pub fn disarm_heal(&self) -> Cmd {
        Cmd::new([
            "rm".to_string(),
            "-f".into(),
            format!("{}/{HEAL_FILE}", self.lock_dir()),
            format!("{}/{HANDOVER_FILE}", self.lock_dir()),
        ])
    }

    /// Berth is leaving (cancelled): the agent heals as soon as the session ends.
    pub fn hand_over(&self) -> Cmd {
        Cmd::new(["touch", &format!("{}/{HANDOVER_FILE}", self.lock_dir())])
    }

    /// The heal: settle, restore the newest release proven healthy (up, switch
    /// `current`), prove it steady (a second try after a failed one), mark what was left
    /// pending `interrupted`, write the note the next run reports, release the lock. Run by
    /// `sh` with the lock dir as `$1` and the token the agent took the lock under as `$2`.
    fn heal_script(&self) -> String {
        let vars = quote_argv(&[
            self.project.clone(),
            self.current(),
            format!("{}/{HEALED_NOTE}", self.berth_dir()),
            self.releases_dir(),
            super::COMPOSE_FILE.to_string(),
            super::OVERRIDE_FILE.to_string(),
            super::ENV_FILE.to_string(),
            super::RECORD_FILE.to_string(),
        ]);
        format!("{}set -- \"$1\" \"$2\" {vars}\n{HEAL_BODY}", functions())
    }
}

/// See [`Layout::heal_script`]: `$1` lock dir, `$2` token, `$3` project, `$4` current,
/// `$5` the note, `$6` the releases dir, then the names of a release's compose file,
/// override, env file and record. `compose` is [`Layout::compose`] for release `$id` (a
/// test keeps the two in step).
const HEAL_BODY: &str = r#"l=$1 token=$2 p=$3 c=$4 note=$5 rels=$6 cf=$7 of=$8 ef=$9; shift 9; rf=$1
beat="$l/heartbeat"
compose() { d="$rels/$id"; docker compose -p "$p" --project-directory "$d" -f "$d/$cf" -f "$d/$of" --env-file "$d/$ef" "$@"; }
# The newest release proven healthy (`deployed`), as a rollback chooses: the interrupted run
# left its own `pending`; one recorded `deployed` just before berth was gone is kept.
id=$(ls -1 "$rels" 2>/dev/null | sort -r | while read -r d; do grep -q '"outcome": "deployed"' "$rels/$d/$rf" 2>/dev/null && { echo "$d"; break; }; done)
r=".berth/releases/$id"
started=$(date -u +%FT%TZ) proven= why=
# The lock stays alive for as long as the heal runs (an `up` may take long), and the heal
# goes on only while the lock is still its own.
( while :; do touch "$beat" 2>/dev/null; sleep 10; done ) >/dev/null 2>&1 &
hb=$!
trap 'kill $hb 2>/dev/null' EXIT
mine() { [ "$(cat "$l/token" 2>/dev/null)" = "$token" ]; }
# A stop that the agent cut off goes on in Docker: its window passes before the first `up`.
if [ -n "$BERTH_STOPPED_AT" ]; then
  w=$(window "$p"); while [ "$(date +%s)" -lt $((BERTH_STOPPED_AT + w)) ]; do sleep 0.5; done
fi
[ -n "$id" ] || why="no release on this host was ever proven healthy: nothing to restore"
[ -z "$id" ] || for attempt in 1 2; do
  mine || { why="the lock was taken from the heal"; break; }
  t0=$(date +%s)
  (cd "${c%/*}" && edge_before_up "$p" "$id") >/dev/null 2>&1
  settle "$p" >/dev/null
  if ! out=$(compose up -d --remove-orphans 2>&1); then why="up failed: $(printf '%s' "$out" | tail -n 2 | tr '\n' ' ')"; continue; fi
  (cd "${c%/*}" && edge_after_up "$p" "$id") >/dev/null 2>&1 || { why="the edge did not take the release's routes"; continue; }
  ln -sfn "$r" "$c.berth-tmp" && mv -T "$c.berth-tmp" "$c" || { why="current could not be switched"; continue; }
  w=$(( $(window "$p") - $(date +%s) + t0 )); [ "$w" -ge 2 ] || w=2
  if ! why=$(steady "$p" "$w"); then continue; fi
  # By image id: what the release pins, against what the containers run.
  want=$(compose config --images 2>/dev/null | xargs -r docker image inspect -f '{{.Id}}' 2>/dev/null | sort -u) odd=
  have=$(docker ps -q --filter "label=com.docker.compose.project=$p" --filter label=com.docker.compose.oneoff=False | xargs -r docker inspect -f '{{.Image}}' 2>/dev/null | sort -u)
  [ -n "$want" ] || { why="the release's images could not be read (compose config --images)"; continue; }
  odd=$(printf '%s\n' "$have" | grep -vxF "$want")
  if [ -n "$odd" ]; then why="containers run images the release does not pin: $(echo $odd)"; continue; fi
  proven=1 why=; break
done
now=$(date -u +%FT%TZ)
mine || exit 1
for f in "$rels"/*/"$rf"; do
  [ -f "$f" ] && grep -q '"outcome": "pending"' "$f" && sed -i -e 's/"outcome": "pending"/"outcome": "interrupted"/' -e "s/\"updated_at\": \"[^\"]*\"/\"updated_at\": \"$now\"/" "$f"
done
why=$(printf '%s' "$why" | tr -c 'A-Za-z0-9 .,:;()=+/_@-' ' ' | cut -c1-400)
printf '{"at": "%s", "began": "%s", "restored": "%s", "proven": %s, "why": "%s"}\n' "$now" "$started" "$id" "$( [ -n "$proven" ] && echo true || echo false )" "$why" > "$note.tmp" && mv -f "$note.tmp" "$note"
# The lock goes, if it is still the heal's.
m="$l.takeover" i=0
find "$m" -maxdepth 0 -mmin +1 -exec rmdir {} \; 2>/dev/null
until mkdir "$m" 2>/dev/null; do i=$((i+1)); [ $i -lt 100 ] || break; sleep 0.05; done
if [ $i -lt 100 ]; then mine && rm -rf "$l"; rmdir "$m"; fi
[ -n "$proven" ]"#;

/// What the last heal did, as the next run reads it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct HealedNote {
    pub at: String,
    pub began: String,
    pub restored: String,
    pub proven: bool,
    #[serde(default)]
    pub why: String,
}

/// The note from the snapshot's section after [`HEALED_MARK`], if a heal left one.
/// Its text is the host's, which the report then quotes: what is not a timestamp or the
/// heal's own words is dropped.
pub fn parse_healed_note(section: &str) -> Option<HealedNote> {
    let keep = |s: &str, extra: &str| -> String {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric() || extra.contains(*c))
            .take(400)
            .collect()
    };
    section
        .lines()
        .find_map(|l| serde_json::from_str::<HealedNote>(l.trim()).ok())
        .filter(|n| n.restored.is_empty() || super::is_release_id(&n.restored))
        .map(|n| HealedNote {
            at: keep(&n.at, ":-.+"),
            began: keep(&n.began, ":-.+"),
            why: keep(&n.why, " .,:;()=+/_@-"),
            ..n
        })
}

/// Moves the note aside once read, so it is reported once.
pub fn consume_healed_note(layout: &Layout) -> Cmd {
    let note = format!("{}/{HEALED_NOTE}", layout.berth_dir());
    Cmd::new([
        "mv".to_string(),
        "-f".into(),
        note.clone(),
        format!("{note}.seen"),
    ])
}
