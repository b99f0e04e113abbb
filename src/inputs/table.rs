//! The table of `action.yml`'s inputs and outputs: the single source of their names,
//! defaults and descriptions. `action.yml`, `berth --help` and the README are checked
//! against it by the integration tests.

/// One input of `action.yml`.
pub struct InputSpec {
    pub name: &'static str,
    pub default: &'static str,
    pub secret: bool,
    pub description: &'static str,
}

const fn input(name: &'static str, default: &'static str, description: &'static str) -> InputSpec {
    InputSpec {
        name,
        default,
        secret: false,
        description,
    }
}

const fn secret(name: &'static str, default: &'static str, description: &'static str) -> InputSpec {
    InputSpec {
        name,
        default,
        secret: true,
        description,
    }
}

pub const INPUTS: &[InputSpec] = &[
    input("mode", "deploy", "`deploy`, or `rollback` (re-activate a previous release)"),
    input("release", "", "With `mode: rollback`: the release id to restore (default: the newest release proven healthy, other than current)"),
    input("dry-run", "false", "Print the plan and touch nothing"),
    secret("github-token", "${{ github.token }}", "Token for the CI gate and Deployments"),
    input("ci-workflows", "", "Workflow files or names (comma or newline list) that must have succeeded for `sha`"),
    input("allow-untested", "false", "Deploy without any CI gate (prints a warning)"),
    input("ci-timeout", "30m", "Longest wait for CI"),
    input("ci-poll-interval", "10s", "Interval between CI polls"),
    input("sha", "", "Commit to deploy. Default: `workflow_run.head_sha` under workflow_run, else GITHUB_SHA"),
    input("branches", "", "Branches that may deploy: glob patterns (`main`, `release/*`), comma or newline list. Default: the repository's default branch"),
    input("events", "push, workflow_dispatch", "Events whose code may deploy (under workflow_run: the event of the CI run). Code from a fork is always refused"),
    input("images", "", "One line per service: `service=path/to/Dockerfile[,context=dir][,target=stage]`. Empty builds nothing"),
    input("build-args", "", "`KEY=VALUE` lines passed to every build"),
    input("registry", "ghcr.io", "Registry host[:port] to push to and pull from"),
    input("registry-username", "${{ github.actor }}", "Registry user"),
    secret("registry-password", "${{ github.token }}", "Registry password or token"),
    input("image-prefix", "", "Default `<registry>/<owner>/<repo>` lower-cased; a service's image is `<image-prefix>-<service>`"),
    input("tags", "staging-{sha}\nstaging-latest", "Tag templates, one a line; placeholders {sha} {short_sha} {branch} {run_number}. Tags naming the commit or run are pushed before the deploy; the others (moving) only after it proved healthy"),
    input("target", "compose", "`compose` (a compose project on each host) or `swarm` (a Docker Swarm stack, deployed through the first host that is a reachable manager)"),
    input("hosts", "", "Required. `[user@]host[:port]`, comma or newline list. With `target: swarm`, manager nodes, tried in order"),
    input("ssh-user", "deploy", "SSH user for hosts that name none"),
    input("ssh-port", "22", "SSH port for hosts that name none"),
    secret("ssh-key", "", "Required. Private key, OpenSSH or PEM format"),
    secret("ssh-key-passphrase", "", "Passphrase of `ssh-key`"),
    input("known-hosts", "", "known_hosts lines, as printed by `ssh-keyscan`"),
    input("host-fingerprints", "", "`SHA256:...` host key fingerprints, comma or newline list"),
    input("insecure-skip-host-key-check", "false", "Accept any host key (not recommended; refused together with `host-fingerprints` or `known-hosts`)"),
    input("deploy-dir", "", "Absolute path on the host. Default `/opt/<repo>`"),
    input("project-name", "", "Compose project name (the stack name with `target: swarm`). Default `<repo>`"),
    input("compose-file", "docker-compose.staging.yml", "Compose file, path in the workspace"),
    secret("env-file", "", "Contents of the app's `.env`, written with mode 0600"),
    input("pre-deploy", "", "`service: command`, run once with the new images before the switch"),
    input("pre-deploy-timeout", "10m", "Longest the pre-deploy may run; at the bound it is stopped (its container removed) and nothing is switched"),
    input("pull-stall-timeout", "60s", "Longest the host's pull may go without progress (a registry that stopped sending); then the deploy fails naming the image, and nothing is switched"),
    input("keep-releases", "3", "Proven releases (and their images) kept on each host; the newest 2 unproven ones are kept too, for diagnosis"),
    input("lock-timeout", "10m", "Longest wait for another deploy's lock"),
    input("health-url", "", "Required with `mode: deploy`. URL polled until healthy"),
    input("health-timeout", "30s", "Hard deadline for the health check, from `up`"),
    input("health-interval", "1s", "Interval between health probes"),
    input("health-status", "200", "Accepted codes, e.g. `200,204` or `2xx`"),
    input("health-json", "", "`pointer=value` lines (RFC 6901), e.g. `/data/status=healthy`"),
    input("health-headers", "", "`Name: value` lines sent with each probe; values are treated as secrets"),
    input("health-ca-cert", "", "PEM of a CA to trust for the health URL"),
    input("health-insecure-tls", "false", "Skip TLS verification of the health URL (prints a warning)"),
    input("rollback", "auto", "`auto` or `off`"),
    input("routes", "", "Zero-downtime switch through the host's edge proxy: lines `service:port host[/path]`, e.g. `web:8080 staging.example.com`. A routed service's new containers start beside the old ones, are proven through the edge, then get the traffic in one config load. Empty: `docker compose up` as before"),
    input("edge-image", "caddy:2.8.4", "With `routes`: the edge proxy's image (Caddy 2), created on each host if missing"),
    input("edge-ports", "80,443", "With `routes`: the host ports the edge listens on (443 gets Caddy's automatic HTTPS); one edge per host and first port, shared by every project routed through it"),
    input("drain-timeout", "30s", "With `routes`: from the switch until the old containers are stopped, so requests in flight on them finish"),
    input("verdict-window", "10s", "With `routes`: after the switch, how long the new containers must stay healthy (probed, crash-watched) before the old ones are let go; a failure in it switches back"),
    input("environment", "staging", "GitHub environment name"),
    input("environment-url", "", "URL shown on the GitHub Deployment. Default: the origin of `health-url`"),
    input("create-deployment", "true", "Create a GitHub Deployment and its statuses"),
];

/// One output of `action.yml`.
pub struct OutputSpec {
    pub name: &'static str,
    pub description: &'static str,
}

pub const OUTPUTS: &[OutputSpec] = &[
    OutputSpec {
        name: "status",
        description: "`deployed`, `rolled-back`, `failed` or `skipped`",
    },
    OutputSpec {
        name: "sha",
        description: "The commit that was deployed (or refused)",
    },
    OutputSpec {
        name: "release",
        description: "The release id created or restored",
    },
    OutputSpec {
        name: "previous-release",
        description: "The release that was current before this run",
    },
    OutputSpec {
        name: "images",
        description: "JSON object mapping each service to `repo@sha256:...`",
    },
    OutputSpec {
        name: "health-seconds",
        description: "Seconds from `up` to healthy",
    },
    OutputSpec {
        name: "failed-probes",
        description: "Requests to `health-url` that failed while the release was switched (from the first new container to the end of the drain); empty when nothing was measured",
    },
    OutputSpec {
        name: "deployment-id",
        description: "Id of the GitHub Deployment",
    },
];

/// `ssh-key` arrives as `INPUT_SSH-KEY`: upper-cased, spaces to `_`, hyphens kept.
pub fn env_name(input: &str) -> String {
    format!("INPUT_{}", input.to_uppercase().replace(' ', "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_keep_hyphens() {
        assert_eq!(env_name("ssh-key"), "INPUT_SSH-KEY");
        assert_eq!(env_name("health url"), "INPUT_HEALTH_URL");
    }
}
