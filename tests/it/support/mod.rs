pub mod edge;
pub mod fake_github;
pub mod fleet;
pub mod rig;
pub mod runner_parser;
pub mod stage;
pub mod swarm;

use std::collections::BTreeMap;
use std::process::Command;

use tempfile::TempDir;

pub const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// A private-key-shaped text that is not a key; assembled so no key header is committed.
pub fn fake_private_key(body: &str) -> String {
    let kind = "OPENSSH PRIVATE KEY";
    format!("-----BEGIN {kind}-----\n{body}\n-----END {kind}-----\n")
}

/// One run of the berth binary, built fluently:
/// `Berth::new().input("hosts", "...").run()`.
pub struct Berth {
    dir: TempDir,
    env: BTreeMap<String, String>,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub output: String,
    pub summary: String,
}

impl Run {
    /// Everything berth printed or wrote for the runner.
    pub fn everything(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}",
            self.stdout, self.stderr, self.output, self.summary
        )
    }

    pub fn errors(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with("::error"))
            .collect()
    }

    /// The value of one output from the `GITHUB_OUTPUT` heredocs.
    pub fn output(&self, name: &str) -> Option<String> {
        let mut lines = self.output.lines();
        while let Some(line) = lines.next() {
            if let Some(delim) = line.strip_prefix(&format!("{name}<<")) {
                let mut value = Vec::new();
                for l in lines.by_ref() {
                    if l == delim {
                        return Some(value.join("\n"));
                    }
                    value.push(l);
                }
            }
        }
        None
    }
}

impl Berth {
    /// A push event with a valid compose file in the workspace and otherwise no inputs.
    pub fn new() -> Berth {
        let dir = tempfile::tempdir().expect("tempdir");
        let ws = dir.path().join("workspace");
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::write(
            ws.join("docker-compose.staging.yml"),
            "services:\n  web:\n    image: example/web\n",
        )
        .unwrap();
        // A checkout of SHA, as actions/checkout leaves it: berth builds only the gated commit.
        std::fs::create_dir_all(ws.join(".git")).unwrap();
        std::fs::write(ws.join(".git/HEAD"), format!("{SHA}\n")).unwrap();
        // The push event's payload, as the runner writes it.
        let event = dir.path().join("event.json");
        std::fs::write(&event, push_payload().to_string()).unwrap();
        let mut env = BTreeMap::new();
        let path = |p: &str| dir.path().join(p).to_string_lossy().to_string();
        env.insert("GITHUB_EVENT_PATH".into(), path("event.json"));
        env.insert("GITHUB_ACTIONS".into(), "true".into());
        env.insert("GITHUB_REPOSITORY".into(), "acme/shop".into());
        env.insert("GITHUB_WORKSPACE".into(), ws.to_string_lossy().to_string());
        env.insert("GITHUB_EVENT_NAME".into(), "push".into());
        env.insert("GITHUB_SHA".into(), SHA.into());
        env.insert("GITHUB_REF".into(), "refs/heads/main".into());
        env.insert("GITHUB_REF_NAME".into(), "main".into());
        env.insert("GITHUB_REF_TYPE".into(), "branch".into());
        env.insert("GITHUB_RUN_ID".into(), "4242".into());
        env.insert("GITHUB_RUN_NUMBER".into(), "17".into());
        env.insert("GITHUB_ACTOR".into(), "octocat".into());
        env.insert("GITHUB_OUTPUT".into(), path("output"));
        env.insert("GITHUB_STEP_SUMMARY".into(), path("summary"));
        // Nothing from GitHub is reachable in tests unless a test points here at a fake.
        env.insert("GITHUB_API_URL".into(), "http://127.0.0.1:9".into());
        Berth { dir, env }
    }

    /// A complete, valid set of deploy inputs (hosts unreachable unless overridden).
    pub fn valid() -> Berth {
        Berth::new()
            .input("hosts", "deploy@127.0.0.1:1")
            .input("ssh-key", &fake_private_key("AAAAnotarealkey"))
            .input(
                "host-fingerprints",
                "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU",
            )
            .input("health-url", "http://127.0.0.1:1/api/health")
            .input("ci-workflows", "ci.yml")
            .input("github-token", "ghs_testtoken")
    }

    /// Checks the workspace out at `sha` (a detached HEAD), as actions/checkout would.
    pub fn checkout(self, sha: &str) -> Berth {
        std::fs::write(self.workspace().join(".git/HEAD"), format!("{sha}\n")).unwrap();
        self
    }

    /// Writes `payload` as this run's event and names the event.
    pub fn event(self, name: &str, payload: &serde_json::Value) -> Berth {
        let path = self.dir.path().join("event.json");
        std::fs::write(&path, payload.to_string()).unwrap();
        self.env("GITHUB_EVENT_NAME", name)
            .env("GITHUB_EVENT_PATH", path.to_str().unwrap())
    }

    /// The run's ref, as the runner sets it: `GITHUB_REF`, and from it `GITHUB_REF_NAME`
    /// (the bare name, the same for a branch and a tag) and `GITHUB_REF_TYPE`.
    pub fn git_ref(self, git_ref: &str) -> Berth {
        let (kind, name) = match git_ref.strip_prefix("refs/tags/") {
            Some(tag) => ("tag", tag),
            None => ("branch", git_ref.trim_start_matches("refs/heads/")),
        };
        self.env("GITHUB_REF", git_ref)
            .env("GITHUB_REF_NAME", name)
            .env("GITHUB_REF_TYPE", kind)
    }

    pub fn input(mut self, name: &str, value: &str) -> Berth {
        self.env
            .insert(berth::inputs::env_name(name), value.to_string());
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Berth {
        self.env.insert(name.to_string(), value.to_string());
        self
    }

    /// The environment as `inputs::parse` sees it.
    pub fn env_map(&self) -> std::collections::HashMap<String, String> {
        self.env.clone().into_iter().collect()
    }

    pub fn workspace(&self) -> std::path::PathBuf {
        self.dir.path().join("workspace")
    }

    /// The berth command with this environment, for callers that stream its output.
    /// `BERTH_BIN` (set by scripts/bench to the release binary) overrides the test build.
    pub fn command(&self) -> Command {
        let bin =
            std::env::var("BERTH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_berth").to_string());
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&self.env);
        cmd
    }

    pub fn run(&self) -> Run {
        self.finished(self.command().output().expect("run berth"))
    }

    /// The run of a [`Berth::command`] that has ended, with its outputs and summary.
    pub fn finished(&self, out: std::process::Output) -> Run {
        let read = |p: &str| std::fs::read_to_string(self.dir.path().join(p)).unwrap_or_default();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
            output: read("output"),
            summary: read("summary"),
        }
    }
}

/// The parts of a push event's payload berth reads: the repository and its default branch.
pub fn push_payload() -> serde_json::Value {
    serde_json::json!({
        "ref": "refs/heads/main",
        "after": SHA,
        "repository": {"full_name": "acme/shop", "default_branch": "main"}
    })
}

/// GitHub's example workflow_run payload (a run of `octo-org/octo-repo`'s own code on its
/// default branch) for `sha`, concluded as given, from a `push` CI run.
pub fn workflow_run_payload(sha: &str, conclusion: &str) -> serde_json::Value {
    let mut event = fake_github::fixture("webhook-workflow_run.completed.json");
    event["workflow_run"]["head_sha"] = sha.into();
    event["workflow_run"]["conclusion"] = conclusion.into();
    // The example is a `repository_dispatch` run; berth deploys `push` runs by default.
    event["workflow_run"]["event"] = "push".into();
    event
}

/// A runner whose stdout is captured, for tests that call berth's library directly.
pub fn captured_runner() -> (berth::workflow::Runner, Captured) {
    let out = Captured::default();
    let runner = berth::workflow::Runner::start(
        Box::new(out.clone()),
        Box::new(out.clone()),
        berth::workflow::FileCommands::default(),
        &[],
    );
    (runner, out)
}

#[derive(Clone, Default)]
pub struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into()
    }
}
