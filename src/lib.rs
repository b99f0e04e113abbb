//! berth ships a docker-compose application to staging hosts over SSH, safely.
//!
//! The deploy reads as one story (see `pipeline`, then `engine`):
//! inputs -> CI gate -> images -> remote release -> health -> (rollback) -> report.
//! ARCHITECTURE.md is the map.

pub mod argv;
mod cancel;
pub mod ci_gate;
pub mod docker;
pub mod edge;
mod engine;
mod failure;
mod github;
pub mod health;
pub mod images;
pub mod inputs;
mod markdown;
pub mod pipeline;
pub mod remote;
pub mod report;
pub mod secret;
pub mod ssh;
pub mod targets;
mod trust;
pub mod workflow;

use std::collections::HashMap;

use inputs::{Env, INPUTS, OUTPUTS};
use workflow::{FileCommands, Runner};

/// The first seven characters of a commit sha, for people. Cut on a character boundary:
/// a "sha" read from a host's files or an event payload may be any text.
pub fn short_sha(sha: &str) -> &str {
    match sha.char_indices().nth(7) {
        Some((i, _)) => &sha[..i],
        None => sha,
    }
}

/// An error and its sources, each said once: a source whose text its parent already
/// includes is not repeated.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_COMMIT: &str = env!("BERTH_GIT_COMMIT");

/// The binary's whole life: arguments in, exit code out.
pub fn main_with_args(args: Vec<String>) -> i32 {
    match args.first().map(String::as_str) {
        None => {}
        Some("--version" | "-V") => {
            println!("berth {VERSION} ({GIT_COMMIT})");
            return 0;
        }
        Some("--help" | "-h") => {
            print!("{}", help_text());
            return 0;
        }
        Some(other) => {
            eprintln!("berth: unknown argument `{other}`. berth reads its inputs from INPUT_* variables; see `berth --help`.");
            return 2;
        }
    }
    let env: Env = std::env::vars().collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("::error title=berth: internal error::cannot start the async runtime: {e}");
            return 1;
        }
    };
    let code = runtime.block_on(run(env));
    // Do not wait for blocking deploy threads: after a cancellation one may still be in a
    // remote step, and waiting would let it go on (without its lock) after berth said it
    // stopped. Exiting ends it; the host keeps the release that was switched in.
    runtime.shutdown_background();
    code
}

/// Runs one deploy from an environment, printing through the workflow protocol.
pub async fn run(env: HashMap<String, String>) -> i32 {
    let raw_secrets = inputs::raw_secrets(&env);
    let runner = Runner::stdio(
        FileCommands::from_env(&env),
        &raw_secrets.iter().collect::<Vec<_>>(),
    );
    init_debug_log(&env, &runner);
    let run = pipeline::run(&env, &runner);
    tokio::pin!(run);
    let report = tokio::select! {
        report = &mut run => report,
        signal = shutdown_signal() => {
            // The run stops what runs on the hosts, restores an unproven release and
            // reports, within the time the runner gives (see `cancel`). Past that, only
            // the locks are released.
            cancel::cancel(signal);
            match tokio::time::timeout(cancel::GRACE, &mut run).await {
                Ok(report) => report,
                Err(_) => cancelled(signal).await,
            }
        }
    };
    report.render(&runner);
    report.exit_code()
}

/// With step debug logging on (`RUNNER_DEBUG=1`, or `RUST_LOG`), library diagnostics go
/// to stderr, through the runner's secret scrubber like everything else.
fn init_debug_log(env: &HashMap<String, String>, runner: &Runner) {
    let filter = match (
        env.get("RUST_LOG"),
        env.get("RUNNER_DEBUG").map(String::as_str),
    ) {
        (Some(f), _) => f.clone(),
        (None, Some("1")) => "berth=debug,info".to_string(),
        _ => return,
    };
    let runner = runner.clone();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(false)
        .with_writer(move || ScrubbedStderr(runner.clone()))
        .try_init();
}

struct ScrubbedStderr(Runner);

impl std::io::Write for ScrubbedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.debug_line(String::from_utf8_lossy(buf).trim_end());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// SIGTERM or SIGINT: how a runner cancels a step.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// A cancelled run releases its deploy locks before it exits.
async fn cancelled(signal: &'static str) -> report::Report {
    let released = tokio::task::spawn_blocking(targets::release_held_locks)
        .await
        .unwrap_or_default();
    let mut report = report::Report::default();
    pipeline::conclude(
        &mut report,
        Err(failure::Fault::Cancelled {
            signal,
            phase: None,
            released,
        }),
    );
    report
}

pub fn help_text() -> String {
    let mut s = format!(
        "berth {VERSION} ({GIT_COMMIT})\n\
         Ships a docker-compose application to staging hosts over SSH, safely.\n\n\
         USAGE: berth [--help | --version]\n\n\
         berth takes no arguments. Like any GitHub container action it reads its inputs from\n\
         environment variables named INPUT_<NAME>, upper-cased with hyphens kept\n\
         (input `ssh-key` is INPUT_SSH-KEY), so a local run is driven exactly as GitHub drives it:\n\n\
         \x20 env 'INPUT_HOSTS=deploy@127.0.0.1:2222' 'INPUT_SSH-KEY=...' ... berth\n\n\
         It also reads GITHUB_* variables (GITHUB_REPOSITORY, GITHUB_SHA, GITHUB_EVENT_NAME,\n\
         GITHUB_EVENT_PATH, GITHUB_API_URL, GITHUB_OUTPUT, GITHUB_STEP_SUMMARY, ...).\n\nINPUTS:\n"
    );
    for i in INPUTS {
        let default = if i.default.is_empty() {
            String::new()
        } else {
            format!(" [default: {}]", i.default.replace('\n', ", "))
        };
        let secret = if i.secret { " (secret)" } else { "" };
        s.push_str(&format!(
            "  {:<30} {}{secret}{default}\n",
            i.name, i.description
        ));
    }
    s.push_str("\nOUTPUTS:\n");
    for o in OUTPUTS {
        s.push_str(&format!("  {:<30} {}\n", o.name, o.description));
    }
    s
}
