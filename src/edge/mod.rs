//! The edge: one proxy container per host (per set of `edge-ports`), shared by every
//! project deployed there, through which a routed release is started beside the old one,
//! proven, and switched to in one config load. This module hides the proxy (Caddy) as
//! `docker/` hides bollard: nothing outside it knows Caddy's config or its admin API.
//!
//! On the host, the edge's state is a directory (`$HOME/.berth/edge-<port>`, mounted
//! read-only into the container as [`CONFIG_DIR`]):
//! - `routes/<project>`: each project's routes, one Caddy route per line behind a sort
//!   key (longer paths first, a candidate's header-only route before the route it
//!   shadows). A project writes only its own file.
//! - `caddy.json`: the whole config, assembled under a mutex from `head.json`, every
//!   project's routes sorted, and `foot.json` (a catch-all 404), then loaded with
//!   `caddy reload` through the admin API, which listens on the container's own loopback:
//!   nothing outside the container reaches it.
//!
//! A release's routes are files of its release dir ([`ROUTES_FILE`], [`CANDIDATE_FILE`]),
//! so a restore installs the routes of the release it restores (see [`FUNCTIONS`]).

use std::time::Duration;

use serde_json::json;

use crate::argv::Cmd;

/// The request header that sends a probe to the candidates only; its value is random per
/// run, so no user request carries it.
pub const CANDIDATE_HEADER: &str = "X-Berth-Candidate";
/// The container label naming the release a routed service's container belongs to.
pub const RELEASE_LABEL: &str = "berth.release";
/// In a release dir: the release's routes, as installed when it serves.
pub const ROUTES_FILE: &str = "edge.routes";
/// In a release dir: the header-only routes to the release's candidates.
pub const CANDIDATE_FILE: &str = "edge.candidate";
/// In a release dir: its routes from the switch until the drain, with the old release's
/// containers as the fallback.
pub const SWITCH_FILE: &str = "edge.switch";
/// In `.berth/`: which edge the project's routes live in (`name=... dir=...`).
pub const EDGE_ENV: &str = "edge.env";
/// Where the edge's state dir is mounted in the container.
pub const CONFIG_DIR: &str = "/etc/berth-edge";
/// Each proxy's admin API: a unix socket in its own container.
const ADMIN: &str = "unix//tmp/berth-edge-admin.sock";
/// How long the edge retries a connection an upstream refused (a container that is
/// being replaced), so that a moment without a listener is latency, not an error.
const TRY_DURATION: &str = "2s";

/// One `routes` line: `service:port host[/path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub service: String,
    pub port: u16,
    pub host: String,
    /// Without the trailing `*`; `None` for the whole host.
    pub path: Option<String>,
}

/// The edge inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeSettings {
    pub routes: Vec<Route>,
    pub image: String,
    pub ports: Vec<u16>,
    /// From the switch until the old containers are stopped (`drain-timeout`).
    pub drain: Duration,
    /// After the switch: how long the new containers are probed and watched before the
    /// old ones are let go (`verdict-window`).
    pub verdict_window: Duration,
}

impl EdgeSettings {
    /// The routed services, each once, in the order first named.
    pub fn services(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in &self.routes {
            if !out.contains(&r.service) {
                out.push(r.service.clone())
            }
        }
        out
    }

    /// The edge these settings name on a host: one per set of ports, named by the lowest.
    pub fn edge(&self) -> Edge {
        Edge::for_port(self.ports.iter().copied().min().unwrap_or(80))
    }
}

/// One edge on a host: its container (and network) name and its state dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub name: String,
    /// Relative to the SSH user's home; expanded by the host's shell.
    pub dir: String,
}

impl Edge {
    pub fn for_port(port: u16) -> Edge {
        Edge {
            name: format!("berth-edge-{port}"),
            dir: format!("$HOME/.berth/edge-{port}"),
        }
    }

    /// The network between the edge and one project's routed containers: a network per
    /// project, so that one project's containers never reach another's (compose gives
    /// each container its service name as an alias on every network it joins).
    pub fn network(&self, project: &str) -> String {
        format!("{}-{project}", self.name)
    }
}

/// `line` as a route, or why not.
pub fn parse_route(line: &str) -> Result<Route, String> {
    let mut words = line.split_whitespace();
    let (Some(target), Some(address), None) = (words.next(), words.next(), words.next()) else {
        return Err(format!(
            "`{line}` is not `service:port host[/path]`, e.g. `web:8080 staging.example.com`"
        ));
    };
    let Some((service, port)) = target.split_once(':') else {
        return Err(format!(
            "`{target}` names no port: write `service:port`, e.g. `web:8080`"
        ));
    };
    if service.is_empty()
        || !service
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!("`{service}` is not a compose service name"));
    }
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => return Err(format!("`{port}` is not a port (1-65535)")),
    };
    let (host, path) = match address.find('/') {
        Some(i) => (&address[..i], Some(&address[i..])),
        None => (address, None),
    };
    let host = host.to_ascii_lowercase();
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if !host_ok || address.contains("://") {
        return Err(format!(
            "`{address}` is not a host name with an optional path, e.g. `staging.example.com` or `example.com/api` (no scheme, no port)"
        ));
    }
    let path = match path.map(|p| p.trim_end_matches(['/', '*'])) {
        None | Some("") => None,
        Some(p)
            if p.starts_with('/')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/_.~%-".contains(c)) =>
        {
            Some(p.to_string())
        }
        Some(p) => return Err(format!("`{p}` is not a plain URL path")),
    };
    Ok(Route {
        service: service.to_string(),
        port,
        host,
        path,
    })
}

/// The edge network name and DNS alias of release `release`'s containers of `service`:
/// the old and the new release of one service answer to different names.
pub fn alias(project: &str, service: &str, release: &str) -> String {
    format!("{service}.{}.{project}", release.to_ascii_lowercase())
}

/// One route as a line of a project's routes file: the sort key, then Caddy's JSON.
/// `upstreams` in order of preference: with a second one (the old release, during the
/// verdict window), a request the first refuses goes to the next, and an upstream that
/// refused is left alone for a while (Caddy's passive health check).
fn route_line(route: &Route, upstreams: &[String], candidate: Option<&str>) -> String {
    let mut matcher = json!({ "host": [route.host] });
    if let Some(p) = &route.path {
        matcher["path"] = json!([p, format!("{p}/*")]);
    }
    if let Some(token) = candidate {
        matcher["header"] = json!({ CANDIDATE_HEADER: [token] });
    }
    let dials: Vec<serde_json::Value> = upstreams
        .iter()
        .map(|u| json!({ "dial": format!("{u}:{}", route.port) }))
        .collect();
    let mut handler = json!({
        "handler": "reverse_proxy",
        "upstreams": dials,
        "load_balancing": {
            "selection_policy": { "policy": "first" },
            "try_duration": TRY_DURATION,
            "try_interval": "100ms",
        },
    });
    if upstreams.len() > 1 {
        // A connection the first refuses takes it out for 10 s: the requests after it go
        // to the old release, before berth has even switched back. Only refusals: a 5xx
        // of one path may be the old release's too, and counting it would take both out.
        handler["health_checks"] = json!({ "passive": { "fail_duration": "10s", "max_fails": 1 } });
    }
    let route_json = json!({ "match": [matcher], "handle": [handler], "terminal": true });
    let key = route.path.as_deref().map_or(0, str::len);
    format!(
        "{:05}{} {}{} {}",
        key,
        u8::from(candidate.is_some()),
        route.host,
        route.path.as_deref().unwrap_or("/"),
        route_json
    )
}

/// Release `release`'s routes for project `project`: to its containers, or (with a
/// `candidate` token) only for requests that carry that token.
pub fn routes_file(
    project: &str,
    release: &str,
    routes: &[Route],
    candidate: Option<&str>,
) -> String {
    routes
        .iter()
        .map(|r| route_line(r, &[alias(project, &r.service, release)], candidate) + "\n")
        .collect()
}

/// The routes from the switch to the verdict: to `release`'s containers, and to
/// `fallback`'s (the old release, kept running until the verdict) for a request the new
/// ones refuse (one that crashed, say).
pub fn switch_file(project: &str, release: &str, fallback: &str, routes: &[Route]) -> String {
    routes
        .iter()
        .map(|r| {
            let ups = [
                alias(project, &r.service, release),
                alias(project, &r.service, fallback),
            ];
            route_line(r, &ups, None) + "\n"
        })
        .collect()
}

/// The config before the routes: the admin API on a unix socket in the proxy's own
/// container; with 443, Caddy's automatic HTTPS there and port 80 redirecting to it; every
/// other port plain HTTP. A config load waits at most 30 s for requests in flight (Caddy's
/// default is to wait forever, which would hold the edge's lock for as long).
pub fn head_json(ports: &[u16]) -> String {
    let tls = ports.contains(&443);
    let plain: Vec<String> = ports
        .iter()
        .filter(|p| **p != 443 && !(tls && **p == 80))
        .map(|p| format!(":{p}"))
        .collect();
    let mut servers = serde_json::Map::new();
    if !plain.is_empty() {
        servers.insert(
            "berth".into(),
            json!({ "listen": plain, "automatic_https": { "disable": true }, "routes": "ROUTES" }),
        );
    }
    if tls {
        // Caddy's automatic HTTPS adds the :80 redirect (and the ACME challenges) itself.
        servers.insert(
            "berth-tls".into(),
            json!({ "listen": [":443"], "routes": "ROUTES" }),
        );
    }
    let whole = json!({
        "admin": { "listen": ADMIN },
        "apps": { "http": { "grace_period": "30s", "servers": servers } },
    })
    .to_string();
    // Each server gets the same routes: the assembly puts them where the marker is.
    whole.replace("\"ROUTES\"", "[@ROUTES@]")
}

/// The route after every project's: a request no route matched is answered 404 by the
/// edge (Caddy's own default would be an empty 200). Its sort key is empty: it sorts after
/// every route.
pub fn fallback_route() -> String {
    " ~ ".to_string()
        + &json!({ "handle": [{ "handler": "static_response", "status_code": 404, "body": "berth-edge: no route for this host" }] })
        .to_string()
}

/// Shell functions for the host, shared by the release's steps, a restore and the heal.
/// `E` the edge's state dir, `N` its container.
/// - `edge_load P FILE...`: project P's routes become the FILEs (none: P has no routes),
///   the config is assembled under the edge's mutex and loaded in one `caddy reload`; a
///   load that fails puts P's previous routes back.
/// - `edge_before_up P ID`: when release ID's routed containers run, its routes are
///   installed (the switch back: one load) and every other release's routed containers
///   of P removed, before the restore's `up`.
/// - `edge_after_up P ID`: after it, ID's routes installed and the others removed.
pub const FUNCTIONS: &str = r#"edge_env() { E= N=; [ -f .berth/edge.env ] || return 1; . ./.berth/edge.env; E=$dir N=$name; [ -n "$E" ] && [ -n "$N" ]; }
edge_lock() {
  # flock: the kernel frees the lock when its holder dies, however it dies.
  command -v flock >/dev/null 2>&1 || { echo "berth: the edge needs flock (util-linux) on the host"; return 1; }
  exec 8>>"$E/lock" || return 1
  flock -w 150 8 || { echo "berth: another deploy held the edge's config lock ($E/lock) for 150 s"; exec 8>&-; return 1; }
}
edge_unlock() { exec 8>&-; }
edge_assemble() {
  # Every project's routes, sorted (longer paths first, a candidate's header route first),
  # spliced into the head by awk from a file (no argument grows with the routes).
  cat "$E"/routes/* "$E/foot.json" 2>/dev/null | LC_ALL=C sort -r | cut -d' ' -f3- > "$E/.routes.json" || return 1
  awk -v f="$E/.routes.json" 'BEGIN { while ((getline l < f) > 0) r = r (n++ ? "," : "") l }
    { s = $0; o = ""; while ((i = index(s, "[@ROUTES@]")) > 0) { o = o substr(s, 1, i - 1) "[" r "]"; s = substr(s, i + 10) } print o s }' "$E/head.json" > "$E/caddy.json.new" && mv -f "$E/caddy.json.new" "$E/caddy.json"
}
edge_reload() {
  # Every running proxy of the edge, each through its own socket (under the lock, so no
  # upgrade is half-way).
  ps=$(docker ps -q --filter "label=berth.edge.proxy=$N" --filter status=running | grep -vxF -f "$E/retiring" 2>/dev/null || docker ps -q --filter "label=berth.edge.proxy=$N" --filter status=running)
  [ -n "$ps" ] || { echo "error: no proxy of the edge $N runs"; return 0; }
  for x in $ps; do docker exec "$x" caddy reload --config /etc/berth-edge/caddy.json --force 2>&1 | tail -n 3; done
}
edge_claimed() {
  # A host/path this project's new routes claim that overlaps one another project's
  # routes serve: the same host, and one path the other's or under it ("/" is the whole
  # host).
  for f in "$E"/routes/*; do
    [ -f "$f" ] && [ "$f" != "$E/routes/$1" ] || continue
    awk -v other="${f##*/}" 'FNR == NR { if ($1 !~ /1$/) theirs[$2] = 1; next }
      $1 !~ /1$/ { for (t in theirs) {
        h1 = substr($2, 1, index($2, "/") - 1); p1 = substr($2, index($2, "/"))
        h2 = substr(t, 1, index(t, "/") - 1); p2 = substr(t, index(t, "/"))
        if (h1 == h2 && (p1 == "/" || p2 == "/" || p1 == p2 || index(p1, p2 "/") == 1 || index(p2, p1 "/") == 1)) { print $2 " (project " other " routes " t ")"; exit }
      } }' "$f" "$E/.new.$1"
  done | head -n 1
}
edge_load() {
  P=$1; shift
  edge_lock || return 1
  if [ $# -gt 0 ]; then
    cat "$@" > "$E/.new.$P" || { echo "berth: could not write the routes of $P"; rm -f "$E/.new.$P"; edge_unlock; return 1; }
    taken=$(edge_claimed "$P")
    if [ -n "$taken" ]; then echo "berth: the edge already routes $taken; a host and path belong to one project"; rm -f "$E/.new.$P"; edge_unlock; return 1; fi
  fi
  cp -p "$E/routes/$P" "$E/.prev.$P" 2>/dev/null || rm -f "$E/.prev.$P"
  if [ $# -gt 0 ]; then mv -f "$E/.new.$P" "$E/routes/$P"; else rm -f "$E/routes/$P"; fi
  if edge_assemble && out=$(edge_reload) && ! printf '%s' "$out" | grep -qi 'error'; then rc=0; else
    echo "berth: the edge refused the new config: $out"
    if [ -f "$E/.prev.$P" ]; then mv -f "$E/.prev.$P" "$E/routes/$P"; else rm -f "$E/routes/$P"; fi
    edge_assemble; edge_reload >/dev/null; rc=1
  fi
  rm -f "$E/.prev.$P"; edge_unlock
  return $rc
}
edge_others() {
  # Every container not of release $2 that is of a service $2 routes (it has one
  # labelled so) or labelled by another release: the old release's, a pre-edge one's, a
  # failed candidate's.
  docker ps -aq --filter "label=com.docker.compose.project=$1" | xargs -r docker inspect -f '{{.Id}} {{index .Config.Labels "com.docker.compose.service"}} {{index .Config.Labels "berth.release"}}' 2>/dev/null | awk -v r="$2" '{ s[$1] = $2; l[$1] = $3; if ($3 == r) routed[$2] = 1 } END { for (i in s) if (l[i] != r && (routed[s[i]] || (l[i] != "<no value>" && l[i] != ""))) print i }'
}
edge_ours_run() {
  # Release $2 runs a container of every routed service that runs at all.
  docker ps -q --filter "label=com.docker.compose.project=$1" --filter label=berth.release | xargs -r docker inspect -f '{{index .Config.Labels "com.docker.compose.service"}} {{index .Config.Labels "berth.release"}}' 2>/dev/null | awk -v r="$2" '{ any[$1] = 1; if ($2 == r) ours[$1] = 1 } END { n = 0; for (s in any) { n++; if (!(s in ours)) exit 1 } exit (n == 0) }'
}
edge_install() {
  if [ -f ".berth/releases/$2/edge.routes" ]; then edge_load "$1" ".berth/releases/$2/edge.routes"; else edge_load "$1"; fi
}
edge_before_up() {
  edge_env || return 0
  others=$(edge_others "$1" "$2")
  [ -n "$others" ] || return 0
  # A release from before `routes` has no containers the edge could route to: the
  # candidates go, and its own published ports serve as they did. The others go only
  # once the edge no longer routes to them.
  if edge_ours_run "$1" "$2" || [ ! -f ".berth/releases/$2/edge.routes" ]; then
    edge_install "$1" "$2" && echo "berth: the edge routes to release $2 again" && docker rm -f $others >/dev/null 2>&1
  fi
  return 0
}
edge_after_up() {
  edge_env || return 0
  edge_install "$1" "$2" || return 1
  others=$(edge_others "$1" "$2")
  [ -z "$others" ] || docker rm -f $others >/dev/null 2>&1
  return 0
}
edge_forget() {
  # A deploy without `routes` after one with: the project leaves the edge.
  edge_env || return 0
  edge_load "$1" && rm -f .berth/edge.env
}
"#;

/// Creates the edge if it is missing, upgrades its proxy without dropping a connection
/// when `edge-image` changed, and records in the deploy dir which edge the project's
/// routes live in.
///
/// The edge is two kinds of container. The holder (`berth-edge-<port>`) owns the network
/// namespace, the published ports and the place on the edge network; it only sleeps and is
/// never replaced. The proxy (`berth-edge-<port>-<time>`, Caddy) runs inside the holder's
/// namespace. An upgrade starts the new proxy beside the old one: both listen on the same
/// ports (Caddy sets SO_REUSEPORT), the new one gets the same config, then the old one is
/// stopped gracefully (it finishes what is in flight; with `tcp_migrate_req` the kernel
/// hands the connections still queued on its socket to the new one). Each proxy's admin API
/// is a unix socket in its own container: nothing else reaches it, and two proxies never
/// answer for each other. Other ports than the holder publishes are not changed (said as
/// `berth-edge-differs`): that needs a new holder, which would drop connections.
pub fn ensure(settings: &EdgeSettings, deploy_dir: &str, project: &str) -> Cmd {
    let edge = settings.edge();
    let mut ports = settings.ports.clone();
    ports.sort_unstable();
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let script = format!(
        r#"{FUNCTIONS}D=$1 N=$2 E=$3 IMG=$4 HEAD=$5 FOOT=$6 NET=$7; shift 7
cd "$D" || exit 1
E=$(eval echo "$E")
mkdir -p "$E/routes" || exit 1
# The whole of it under the edge's lock: two projects' deploys never create, upgrade or
# load the edge at once.
edge_lock || exit 1
run() {{
want=$(echo "$@")
hold=$(docker inspect -f '{{{{.State.Running}}}} {{{{index .Config.Labels "berth.edge.dir"}}}} {{{{index .Config.Labels "berth.edge.ports"}}}}' "$N" 2>/dev/null)
if [ -n "$hold" ]; then
  set -- $hold
  [ "$2" = "$E" ] || {{ echo "berth: the edge $N on this host belongs to another deploy user (its routes live in $2, not $E): deploy with that SSH user, or choose other \`edge-ports\`"; return 1; }}
  [ "$(echo "$3" | tr , ' ')" = "$want" ] || {{ echo "berth: the edge $N on this host listens on port(s) $(echo "$3" | tr , ' '), but \`edge-ports\` says $want. Projects that share an edge must name the same ports; changing them needs a new edge, which drops connections (remove $N by hand in a quiet moment)"; return 1; }}
  state=$1
fi
printf '%s' "$HEAD" > "$E/head.json" || return 1
printf '%s' "$FOOT" > "$E/foot.json" || return 1
docker network inspect "$N" >/dev/null 2>&1 || docker network create "$N" >/dev/null || return 1
[ -f "$E/caddy.json" ] || edge_assemble || return 1
renew=
case "$state" in
  "") publish=; for p in $want; do publish="$publish -p $p:$p"; done
      holder() {{ docker run -d --name "$N" --restart unless-stopped --network "$N" $publish --label berth.edge=holder --label "berth.edge.dir=$E" --label "berth.edge.ports=$(echo $want | tr ' ' ,)" "$@" --entrypoint sleep "$IMG" 2147483647 >/dev/null; }}
      holder --sysctl net.ipv4.tcp_migrate_req=1 2>/dev/null || holder || return 1
      renew=1 ;;
  false) docker start "$N" >/dev/null || return 1; renew=1 ;;
esac
# This project's own network to the edge.
docker network inspect "$NET" >/dev/null 2>&1 || docker network create "$NET" >/dev/null || return 1
docker network inspect -f '{{{{range .Containers}}}}{{{{.Name}}}} {{{{end}}}}' "$NET" | tr ' ' '\n' | grep -qx "$N" || docker network connect "$NET" "$N" || return 1
old=$(docker ps -aq --filter "label=berth.edge.proxy=$N")
same=
# A proxy is kept only when it runs this image in the holder's namespace as it is now.
[ -n "$renew" ] || same=$(for c in $(docker ps -q --filter "label=berth.edge.proxy=$N" --filter status=running); do [ "$(docker inspect -f '{{{{.Config.Image}}}}' "$c")" = "$IMG" ] && echo "$c"; done | head -n 1)
if [ -n "$same" ]; then
  old=$(echo $old | tr ' ' '\n' | grep -vx "$same" | grep -v "^$(echo "$same" | cut -c1-12)")
else
  new="$N-$(date +%s%N | cut -c1-13)"
  docker run -d --name "$new" --restart unless-stopped --network "container:$N" \
    -v "$E:{CONFIG_DIR}:ro" -v "$N-data:/data" -v "$N-config:/config" \
    -e XDG_DATA_HOME=/data -e XDG_CONFIG_HOME=/config --label "berth.edge.proxy=$N" \
    "$IMG" caddy run --config {CONFIG_DIR}/caddy.json >/dev/null || return 1
  n=0; until docker exec "$new" caddy reload --config {CONFIG_DIR}/caddy.json --force >/dev/null 2>&1; do
    n=$((n + 1)); [ "$n" -lt 100 ] || {{ echo "berth: the edge's proxy $new did not answer on its admin socket within 20 s"; docker logs --tail 5 "$new" 2>&1; docker rm -f "$new" >/dev/null; return 1; }}
    sleep 0.2
  done
  if [ -n "$old" ]; then echo "berth: upgraded the edge $N to $IMG beside the old proxy"; else echo "berth: started the edge $N ($IMG) on port(s) $want"; fi
fi
# The old proxies are retiring: no load goes to them any more; they stop after the lock.
for c in $old; do echo "$c" >> "$E/retiring"; done
edge_assemble && edge_reload >/dev/null || return 1
mkdir -p .berth && printf "name='%s'\ndir='%s'\n" "$N" "$E" > .berth/{EDGE_ENV}
}}
run "$@"; rc=$?
edge_unlock
# The old proxies finish what they serve, then go (Caddy's graceful stop on SIGTERM).
for c in $(cat "$E/retiring" 2>/dev/null); do docker stop -t 40 "$c" >/dev/null 2>&1; docker rm -f "$c" >/dev/null 2>&1; done
[ -z "$old" ] || {{ edge_lock && : > "$E/retiring"; edge_unlock; }}
exit $rc
"#
    );
    let mut argv = vec![
        "sh".to_string(),
        "-c".into(),
        script,
        "sh".into(),
        deploy_dir.to_string(),
        edge.name.clone(),
        edge.dir.clone(),
        settings.image.clone(),
        head_json(&settings.ports),
        fallback_route(),
        edge.network(project),
    ];
    argv.extend(ports);
    Cmd(argv)
}

/// Project `project`'s routes become `files` (paths relative to the deploy dir), in one
/// config load; e.g. a release's candidate routes plus the routes that serve now.
pub fn load(deploy_dir: &str, project: &str, files: &[String]) -> Cmd {
    let mut argv = vec![
        "sh".to_string(),
        "-c".into(),
        format!(
            "{FUNCTIONS}cd \"$1\" || exit 1; P=$2; shift 2\nedge_env || {{ echo 'berth: no edge recorded in .berth/{EDGE_ENV}'; exit 1; }}\nedge_load \"$P\" \"$@\""
        ),
        "sh".into(),
        deploy_dir.to_string(),
        project.to_string(),
    ];
    argv.extend(files.iter().cloned());
    Cmd(argv)
}

/// After a failure past the switch: the edge routes to release `back` again (one config
/// load) when its containers still run; nothing is removed yet (the diagnostics read the
/// failed containers first).
pub fn route_back(deploy_dir: &str, project: &str, back: &str) -> Cmd {
    let script = format!(
        "{FUNCTIONS}cd \"$1\" || exit 1; P=$2 R=$3\nedge_env || exit 0\nedge_ours_run \"$P\" \"$R\" || exit 0\nedge_install \"$P\" \"$R\" && echo \"berth: the edge routes back to release $R\""
    );
    Cmd::new(["sh", "-c", &script, "sh", deploy_dir, project, back])
}

/// A deploy without `routes` after one with: the project's routes leave the edge.
pub fn forget(deploy_dir: &str, project: &str) -> Cmd {
    let script = format!("{FUNCTIONS}cd \"$1\" || exit 1\nedge_forget \"$2\"");
    Cmd::new(["sh", "-c", &script, "sh", deploy_dir, project])
}

/// The candidates' routes beside what serves now: `release`'s header-only routes plus the
/// project's routes as installed (none on a project's first routed deploy).
pub fn load_candidates(deploy_dir: &str, project: &str, release: &str) -> Cmd {
    let script = format!(
        "{FUNCTIONS}cd \"$1\" || exit 1; P=$2 R=$3\nedge_env || {{ echo 'berth: no edge recorded in .berth/{EDGE_ENV}'; exit 1; }}\ncp -p \"$E/routes/$P\" \".berth/releases/$R/edge.serving\" 2>/dev/null || : > \".berth/releases/$R/edge.serving\"\nedge_load \"$P\" \".berth/releases/$R/{CANDIDATE_FILE}\" \".berth/releases/$R/edge.serving\""
    );
    Cmd::new(["sh", "-c", &script, "sh", deploy_dir, project, release])
}

/// The routed services' containers of `release` started beside the running ones: per
/// service, `up --no-deps --no-recreate --scale` to the running count plus the release's
/// own (its `deploy.replicas` or `scale`, else 1): compose keeps the old containers as they
/// are and creates the new ones from this release's config. Stopped containers of those
/// services are removed first (a scale would start them as they are). `compose` is the
/// release's compose argv; `services` pairs each routed service with its replicas. Prints
/// the candidates' names.
pub fn start_beside(
    compose: &Cmd,
    project: &str,
    release: &str,
    services: &[(String, u32)],
) -> Cmd {
    let script = r#"P=$1 R=$2 S=$3; shift 3
names=
for sc in $S; do
  s=${sc%=*}; names="$names $s"
  docker ps -aq --filter "label=com.docker.compose.project=$P" --filter "label=com.docker.compose.service=$s" --filter status=exited --filter status=created --filter status=dead | xargs -r docker rm -f >/dev/null
done
set -- "$@" up -d --no-deps --no-recreate
for sc in $S; do
  s=${sc%=*} n=${sc#*=}
  old=$(docker ps -q --filter "label=com.docker.compose.project=$P" --filter "label=com.docker.compose.service=$s" --filter label=com.docker.compose.oneoff=False | wc -l)
  set -- "$@" --scale "$s=$((old + n))"
done
"$@" $names || exit 1
echo "berth: candidates: $(docker ps --filter "label=com.docker.compose.project=$P" --filter "label=berth.release=$R" --format '{{.Names}}' | tr '\n' ' ')"
"#;
    let pairs: Vec<String> = services.iter().map(|(s, n)| format!("{s}={n}")).collect();
    let mut argv = vec![
        "sh".to_string(),
        "-c".into(),
        script.into(),
        "sh".into(),
        project.to_string(),
        release.to_string(),
        pairs.join(" "),
    ];
    argv.extend(compose.0.iter().cloned());
    Cmd(argv)
}

/// `up` of the services no route names (workers, databases), as a deploy without routes
/// does it: compose recreates only what changed. Orphans go at the drain, once the edge no
/// longer routes to any of them.
pub fn up_others(compose: &Cmd, routed: &[String]) -> Cmd {
    let script = r#"S=" $1 "; shift
others=
all=$("$@" config --services) || exit 1
for s in $all; do case "$S" in *" $s "*) ;; *) others="$others $s" ;; esac; done
[ -n "$others" ] || { echo "berth: every service is routed; nothing else to start"; exit 0; }
"$@" up -d --no-deps $others
"#;
    let mut argv = vec![
        "sh".to_string(),
        "-c".into(),
        script.into(),
        "sh".into(),
        routed.join(" "),
    ];
    argv.extend(compose.0.iter().cloned());
    Cmd(argv)
}

/// The switch: project `project`'s routes become release `release`'s (one config load),
/// with the old release's containers as the fallback when it was routed too
/// ([`SWITCH_FILE`], until the drain), then `current` points at it. The candidates'
/// header-only routes stay until the drain: the verdict window probes the new containers
/// alone, never the fallback.
pub fn switch(deploy_dir: &str, project: &str, release: &str, previous: Option<&str>) -> Cmd {
    let script = format!(
        "{FUNCTIONS}cd \"$1\" || exit 1; P=$2 R=$3 O=$4\nedge_env || {{ echo 'berth: no edge recorded in .berth/{EDGE_ENV}'; exit 1; }}\nf=.berth/releases/$R/{SWITCH_FILE}\n# The fallback only to an old release that was routed (its containers have its alias).\n[ -n \"$O\" ] && [ -f \".berth/releases/$O/{ROUTES_FILE}\" ] && edge_ours_run \"$P\" \"$O\" && [ -s \"$f\" ] || f=.berth/releases/$R/{ROUTES_FILE}\nedge_load \"$P\" \".berth/releases/$R/{CANDIDATE_FILE}\" \"$f\" || exit 1\nln -sfn \".berth/releases/$R\" current.berth-tmp && mv -T current.berth-tmp current\necho \"berth: the edge routes to release $R\""
    );
    Cmd::new([
        "sh",
        "-c",
        &script,
        "sh",
        deploy_dir,
        project,
        release,
        previous.unwrap_or(""),
    ])
}

/// After the verdict: the release's own routes (no fallback: one config load), then a
/// wait until `wait` has passed since the switch (requests in flight on the old
/// containers finish), then the routed containers of every release but `release` are
/// stopped (each with its own stop timeout) and removed. Prints what it stopped.
pub fn drain(deploy_dir: &str, project: &str, release: &str, wait: Duration, compose: &Cmd) -> Cmd {
    let script = format!(
        r#"{FUNCTIONS}cd "$1" || exit 1; P=$2 R=$3 W=$4; shift 4
edge_env && edge_load "$P" ".berth/releases/$R/{ROUTES_FILE}" || exit 1
sleep "$W"
others=$(edge_others "$P" "$R")
if [ -n "$others" ]; then
  docker stop $others >/dev/null && docker rm $others >/dev/null || exit 1
  echo "berth: drained and stopped $(echo $others | wc -w) old container(s)"
fi
# Services the release no longer has (a routed service renamed, say) go only now, once
# the edge routes to the release alone.
svc=$("$@" config --services) && [ -n "$svc" ] || exit 1
all=" $(echo $svc) "
gone=$(docker ps -aq --filter "label=com.docker.compose.project=$P" --filter label=com.docker.compose.oneoff=False | xargs -r docker inspect -f '{{{{.Id}}}} {{{{index .Config.Labels "com.docker.compose.service"}}}}' | while read -r id s; do case "$all" in *" $s "*) ;; *) echo "$id" ;; esac; done)
[ -z "$gone" ] || {{ docker rm -f $gone >/dev/null && echo "berth: removed $(echo $gone | wc -w) container(s) of services the release no longer has"; }}
exit 0"#
    );
    let mut argv = vec![
        "sh".to_string(),
        "-c".into(),
        script,
        "sh".into(),
        deploy_dir.to_string(),
        project.to_string(),
        release.to_string(),
        format!("{:.1}", wait.as_secs_f64()),
    ];
    argv.extend(compose.0.iter().cloned());
    Cmd(argv)
}

/// Where [`drain`] has its wait: filled in when it runs, from the time of the switch.
pub const DRAIN_WAIT_ARG: usize = 7;

/// The compose override's part for a routed service: the edge network with the
/// release's alias, the release label, and the networks the service is on already (an
/// override that names networks replaces compose's implicit `default`).
pub fn override_service(
    project: &str,
    service: &str,
    release: &str,
    on_default: bool,
    edge: &Edge,
) -> serde_json::Value {
    let mut networks = serde_json::Map::new();
    networks.insert(
        edge.network(project),
        json!({ "aliases": [alias(project, service, release)] }),
    );
    if on_default {
        networks.insert("default".into(), json!({}));
    }
    json!({ "labels": { RELEASE_LABEL: release }, "networks": networks })
}

#[cfg(test)]
mod tests;
