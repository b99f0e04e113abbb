//! The Swarm target's remote commands, as argv (see the module above for the rules).

use super::Cmd;

/// Marks the `docker service inspect` part of [`stack_state`]'s output.
pub const SERVICES_MARK: &str = "==berth-services==";
/// Marks the `docker inspect --type task` part of [`stack_state`]'s output.
pub const TASKS_MARK: &str = "==berth-tasks==";
/// Marks the nodes part of [`stack_state`]'s output: `<id> <status> <availability>
/// <hostname>` a line each.
pub const NODES_MARK: &str = "==berth-nodes==";

/// What stack `project` runs, in one round trip: [`SERVICES_MARK`] and `docker service
/// inspect` of each of its services, then [`TASKS_MARK`] and `docker inspect --type
/// task` of their tasks, the kept history included (failed tasks are how a crash loop
/// shows), then [`NODES_MARK`] and the swarm's nodes with their state. Prints nothing when the stack has no service. A service or task removed while
/// it is read is left out.
pub fn stack_state(project: &str) -> Cmd {
    Cmd::new(["sh", "-c", STACK_STATE, "sh", project])
}

const STACK_STATE: &str = r#"ids=$(docker service ls -q --filter "label=com.docker.stack.namespace=$1") || exit
[ -n "$ids" ] || exit 0
echo ==berth-services==
svc=$(docker service inspect $ids 2>/dev/null)
# A service removed after the list leaves the others; none at all is a failed read.
[ -n "$svc" ] || { echo "docker service inspect printed nothing" >&2; exit 1; }
printf '%s\n' "$svc"
tids=$(docker service ps -q --no-trunc $ids 2>/dev/null)
echo ==berth-tasks==
if [ -n "$tids" ]; then docker inspect --type task $tids 2>/dev/null; else echo '[]'; fi
echo ==berth-nodes==
docker node ls --format '{{.ID}} {{.Status}} {{.Availability}} {{.Hostname}}' 2>/dev/null
true"#;

/// The name of release `release`'s pre-deploy job in stack `project`. It carries no stack
/// label: `docker stack deploy --prune` must not remove it while it runs.
pub fn job_name(project: &str, release: &str) -> String {
    format!("{project}_pre-deploy-{release}")
}

/// The pre-deploy one-shot as a Swarm replicated job, in one command: created from
/// `image` on `networks`, with the environment in `env_file` (a file on the manager,
/// never the command line), restart `none`, without the image's health check (a one-shot
/// serves nothing); then waited for; then its output, and the
/// job removed. Exits with the job's exit code (1 when its task failed without one, e.g.
/// rejected, with Swarm's error). The command's bound and its cleanup ([`remove_service`])
/// stop it (`pre-deploy-timeout`, a cancelled run).
pub fn pre_deploy_job(
    name: &str,
    image: &str,
    networks: &[String],
    env_file: &str,
    node: Option<&str>,
    argv: &[String],
) -> Cmd {
    let mut words = vec![
        "sh".to_string(),
        "-c".into(),
        PRE_DEPLOY_JOB.into(),
        "sh".into(),
        name.into(),
        "--env-file".into(),
        env_file.into(),
    ];
    // On the manager, which pulled the image: no other node needs the registry login.
    if let Some(node) = node {
        words.extend(["--constraint".into(), format!("node.id=={node}")]);
    }
    for n in networks {
        words.extend(["--network".into(), n.clone()]);
    }
    words.extend(["--".into(), image.into()]);
    words.extend(argv.iter().cloned());
    Cmd(words)
}

const PRE_DEPLOY_JOB: &str = r#"name=$1; shift
# The stack's networks, made as `docker stack deploy` makes them (overlay, labelled with
# the stack) when the stack does not exist yet: the stack then takes them as its own.
ns=${name%%_pre-deploy-*} prev=
for a in "$@"; do
  [ "$a" = -- ] && break
  if [ "$prev" = --network ] && ! docker network inspect "$a" >/dev/null 2>&1; then
    docker network create --driver overlay --label "com.docker.stack.namespace=$ns" "$a" >/dev/null || exit
  fi
  prev=$a
done
docker service create --detach --quiet --name "$name" --mode replicated-job \
  --restart-condition none --no-healthcheck --with-registry-auth "$@" >/dev/null || exit
trap 'docker service rm "$name" >/dev/null 2>&1' EXIT
trap 'exit 143' TERM INT HUP
# Every task of the job: Swarm may start another after a failed one, and the first that
# failed decides, however the next one ends.
done= st=
while [ -z "$done" ]; do
  for t in $(docker service ps -q --no-trunc "$name" 2>/dev/null); do
    s=$(docker inspect --type task --format '{{.Status.State}}|{{with .Status.ContainerStatus}}{{.ExitCode}}{{end}}|{{.Status.Err}}' "$t" 2>/dev/null)
    case ${s%%|*} in
      failed|rejected|shutdown|orphaned) st=$s done=1; break ;;
      complete) st=$s done=1 ;;
    esac
  done
  [ -n "$done" ] || sleep 0.5
done
docker service logs --raw "$name" 2>&1
state=${st%%|*} rest=${st#*|}; code=${rest%%|*} err=${rest#*|}
[ "$state" = complete ] && exit 0
echo "the pre-deploy job's task ended $state${err:+: $err}" >&2
[ -n "$code" ] && [ "$code" != 0 ] && exit "$code"
exit 1"#;

/// Removes a service (a pre-deploy job whose command was stopped).
pub fn remove_service(name: &str) -> Cmd {
    Cmd::new(["docker", "service", "rm", name])
}

/// What the host's engine says of its place in a swarm: `<LocalNodeState> <ControlAvailable>
/// <NodeID> <node name>`, e.g. `active true k3x… manager-1`.
pub fn node_role() -> Cmd {
    Cmd::new([
        "docker",
        "info",
        "--format",
        "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}} {{.Swarm.NodeID}} {{.Name}}",
    ])
}

/// The stack file of a release, next to its compose file.
pub const STACK_FILE: &str = "stack.yml";
/// The pre-deploy job's environment (the service's, as compose resolved it), 0600.
pub const JOB_ENV_FILE: &str = "pre-deploy.env";

/// `docker stack deploy` of release `id`'s stack file, then `current` switched to it once
/// the deploy was accepted, in one command. berth waits for the stack itself, so the CLI
/// does not (`--detach=true` where the CLI knows the flag; it waits by default from
/// Docker 26 on, and exits 0 after Swarm rolled a service back: docker/cli#6752). Images
/// are pinned by digest, so the registry is never asked to resolve a tag (`--resolve-image
/// never`); services no longer in the file are removed (`--prune`). With `login`
/// (`(registry, username, config dir)`), the password is read from stdin into a throwaway
/// client config, sent to the nodes with the service spec (`--with-registry-auth`), and
/// the config removed when the command ends, however it ends.
pub fn stack_deploy_and_switch(
    layout: &super::Layout,
    id: &str,
    login: Option<(&str, &str, &str)>,
) -> Cmd {
    let (registry, username, config) = login.unwrap_or(("", "", ""));
    Cmd::new([
        "sh".to_string(),
        "-c".into(),
        STACK_DEPLOY.into(),
        "sh".into(),
        layout.current(),
        format!(".berth/releases/{id}"),
        format!("{}/{STACK_FILE}", layout.release_dir(id)),
        layout.project.clone(),
        registry.into(),
        username.into(),
        config.into(),
        super::LOGIN_CONFIG.into(),
    ])
}

const STACK_DEPLOY: &str = r#"c=$1 r=$2 file=$3 stack=$4 registry=$5 user=$6 cfg=$7
auth=
if [ -n "$registry" ]; then
  trap 'exit 143' TERM INT HUP
  # Never a dir made in advance (by another user, say); once made, removed however the
  # command ends.
  mkdir -m 0700 "$cfg" || exit
  trap 'rm -rf "$cfg"' EXIT
  printf '%s' "$8" > "$cfg/config.json" || exit
  export DOCKER_CONFIG="$cfg"
  out=$(docker login --username "$user" --password-stdin "$registry" 2>&1) || { s=$?; echo "$out" >&2; exit $s; }
  auth=--with-registry-auth
fi
detach=
docker stack deploy --help 2>/dev/null | grep -q -- '--detach' && detach=--detach=true
docker stack deploy $detach --resolve-image never --prune $auth -c "$file" "$stack" || exit
ln -sfn "$r" "$c.berth-tmp" && mv -T "$c.berth-tmp" "$c""#;

/// Where the stack stands, for a person: the swarm's nodes, its services with their
/// replicas, then every task of the stack with its state, error and node (`docker stack
/// ps --no-trunc`).
pub fn stack_ps(project: &str) -> Cmd {
    Cmd::new([
        "sh",
        "-c",
        r#"docker node ls 2>&1; echo; docker stack services "$1" 2>&1; echo; docker stack ps --no-trunc --format 'table {{.Name}}\t{{.Image}}\t{{.Node}}\t{{.DesiredState}}\t{{.CurrentState}}\t{{.Error}}' "$1" 2>&1 | head -n 60"#,
        "sh",
        project,
    ])
}

/// The last `n` lines of a service's log, each cut to the same bound as a container's.
pub fn service_logs(service: &str, n: usize) -> Cmd {
    super::log_tail("docker service logs --no-trunc", service, n, n)
}

/// For each image, a line `<image> yes|no`: whether it defines a health check.
pub fn image_healthchecks(images: &[String]) -> Cmd {
    let mut argv = vec![
        "sh".to_string(),
        "-c".into(),
        r#"for i in "$@"; do printf '%s %s\n' "$i" "$(docker image inspect --format '{{if .Config.Healthcheck}}{{if eq (index .Config.Healthcheck.Test 0) "NONE"}}no{{else}}yes{{end}}{{else}}no{{end}}' "$i" 2>/dev/null || echo unknown)"; done"#.into(),
        "sh".into(),
    ];
    argv.extend(images.iter().cloned());
    Cmd(argv)
}
