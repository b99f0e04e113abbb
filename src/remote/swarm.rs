//! The Swarm target's remote commands, as argv (see the module above for the rules).

use super::Cmd;

/// Marks the `docker service inspect` part of [`stack_state`]'s output.
pub const SERVICES_MARK: &str = "==berth-services==";
/// Marks the `docker inspect --type task` part of [`stack_state`]'s output.
pub const TASKS_MARK: &str = "==berth-tasks==";

/// What stack `project` runs, in one round trip: [`SERVICES_MARK`] and `docker service
/// inspect` of each of its services, then [`TASKS_MARK`] and `docker inspect --type
/// task` of their tasks, the kept history included (failed tasks are how a crash loop
/// shows). Prints nothing when the stack has no service. A service or task removed while
/// it is read is left out.
pub fn stack_state(project: &str) -> Cmd {
    Cmd::new(["sh", "-c", STACK_STATE, "sh", project])
}

const STACK_STATE: &str = r#"ids=$(docker service ls -q --filter "label=com.docker.stack.namespace=$1") || exit
[ -n "$ids" ] || exit 0
echo ==berth-services==
docker service inspect $ids 2>/dev/null
tids=$(docker service ps -q --no-trunc $ids 2>/dev/null)
echo ==berth-tasks==
if [ -n "$tids" ]; then docker inspect --type task $tids 2>/dev/null; else echo '[]'; fi
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
    for n in networks {
        words.extend(["--network".into(), n.clone()]);
    }
    words.extend(["--".into(), image.into()]);
    words.extend(argv.iter().cloned());
    Cmd(words)
}

const PRE_DEPLOY_JOB: &str = r#"name=$1; shift
docker service create --detach --quiet --name "$name" --mode replicated-job \
  --restart-condition none --no-healthcheck --with-registry-auth "$@" >/dev/null || exit
trap 'docker service rm "$name" >/dev/null 2>&1' EXIT
trap 'exit 143' TERM INT HUP
while :; do
  t=$(docker service ps -q --no-trunc "$name" 2>/dev/null | head -n 1)
  if [ -n "$t" ]; then
    st=$(docker inspect --type task --format '{{.Status.State}}|{{with .Status.ContainerStatus}}{{.ExitCode}}{{end}}|{{.Status.Err}}' "$t" 2>/dev/null)
    case ${st%%|*} in
      complete|failed|rejected|shutdown|orphaned) break ;;
    esac
  fi
  sleep 0.5
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
