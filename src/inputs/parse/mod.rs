//! `parse`: every input read, checked and defaulted into a [`Config`], with every problem
//! collected so that all are reported at once, before anything has a side effect.
//!
//! One `parse_<area>` function per settings struct, in its own file; `read_<input>`
//! helpers take one input (or a few that are checked together). The grammar of single
//! values is in `grammar`. The order of the calls is the order of the error messages.

mod build;
mod edge;
mod gate;
mod health;
mod target;

use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;
use url::Url;

use self::build::{parse_build, parse_builder};
use self::gate::parse_gate;
use self::health::parse_health;
use self::target::parse_target;
use super::context::GithubContext;
use super::grammar::{parse_duration, MAX_DURATION};
use super::settings::{Mode, ReportSettings, RollbackPolicy};
use super::table::{env_name, INPUTS};
use super::urls::check_http_url;
use super::{Config, Env, InputError, InputErrors};

// Patterns are compiled once, on first use; clippy's `invalid_regex` lint checks each
// literal, so the `expect`s cannot fire.
static RELEASE_ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$").expect("built-in regex"));

/// Reads every input from `env`, defaulting from `ctx`. Either every input is valid, or
/// every problem comes back, one [`InputError`] each.
pub fn parse(env: &Env, ctx: &GithubContext) -> Result<Config, InputErrors> {
    let mut p = Parser {
        env,
        errors: Vec::new(),
    };
    let mode = parse_mode(&mut p);
    let release = parse_release(&mut p, mode);
    let dry_run = p.bool("dry-run");
    // `DOCKER_BUILDKIT` belongs to the build, but is read here so that its error keeps
    // its place among the others.
    let builder = parse_builder(&mut p);
    let gate = parse_gate(&mut p, ctx, mode);
    let build = parse_build(&mut p, ctx, builder, &gate.github_token);
    let target = parse_target(&mut p, ctx, mode, &build.images);
    let health = parse_health(&mut p, mode, &target.hosts);
    let rollback = parse_rollback(&mut p);
    let edge = edge::parse_edge(&mut p, target.kind, &target.compose_file, &health);
    let report = parse_report(&mut p, health.url.as_ref());

    if !p.errors.is_empty() {
        return Err(InputErrors(p.errors));
    }
    Ok(Config {
        mode,
        release,
        dry_run,
        rollback,
        gate,
        build,
        target,
        health,
        report,
        edge,
    })
}

/// Collects the problems of one parse, so all are reported together.
struct Parser<'a> {
    env: &'a Env,
    errors: Vec<InputError>,
}

impl<'a> Parser<'a> {
    /// The raw value, or the contract's default when the variable is absent or blank.
    /// Defaults that are `${{ ... }}` expressions exist only on a runner, so they read as empty.
    fn raw(&self, name: &'static str) -> String {
        match self.env.get(&env_name(name)) {
            Some(v) if !v.trim().is_empty() => v.clone(),
            _ => {
                let spec = INPUTS.iter().find(|s| s.name == name).expect("known input");
                if spec.default.starts_with("${{") {
                    String::new()
                } else {
                    spec.default.to_string()
                }
            }
        }
    }

    fn text(&self, name: &'static str) -> String {
        self.raw(name).trim().to_string()
    }

    fn fail(&mut self, input: &'static str, message: impl Into<String>) {
        self.errors.push(InputError {
            input,
            message: message.into(),
        });
    }

    fn bool(&mut self, name: &'static str) -> bool {
        let v = self.text(name);
        match v.to_ascii_lowercase().as_str() {
            "true" => true,
            "false" => false,
            _ => {
                self.fail(
                    name,
                    format!("`{v}` is not a boolean. Use `true` or `false`, e.g. `{name}: false`."),
                );
                false
            }
        }
    }

    fn duration(&mut self, name: &'static str, example: &str) -> Duration {
        let v = self.text(name);
        match parse_duration(&v) {
            Ok(d) if d.is_zero() => {
                self.fail(
                    name,
                    format!("`{v}` is zero; it must be positive, e.g. `{name}: {example}`."),
                );
                Duration::from_secs(1)
            }
            // Deadlines are `now + duration`; a job never runs longer than days anyway.
            Ok(d) if d > MAX_DURATION => {
                self.fail(
                    name,
                    format!("`{v}` is longer than 7 days, longer than any job may run; use e.g. `{name}: {example}`."),
                );
                Duration::from_secs(1)
            }
            Ok(d) => d,
            Err(why) => {
                self.fail(name, format!("`{v}` {why}, e.g. `{name}: {example}`."));
                Duration::from_secs(1)
            }
        }
    }
}

fn parse_mode(p: &mut Parser) -> Mode {
    match p.text("mode").as_str() {
        "deploy" => Mode::Deploy,
        "rollback" => Mode::Rollback,
        other => {
            p.fail(
                "mode",
                format!("`{other}` is not a mode. Use `deploy` or `rollback`."),
            );
            Mode::Deploy
        }
    }
}

fn parse_release(p: &mut Parser, mode: Mode) -> Option<String> {
    let release = Some(p.text("release")).filter(|r| !r.is_empty());
    if let Some(r) = &release {
        if !RELEASE_ID.is_match(r) {
            p.fail(
                "release",
                format!(
                    "`{r}` is not a release id. Release ids look like `20261124T101500Z-abc1234`."
                ),
            );
        } else if mode != Mode::Rollback {
            p.fail(
                "release",
                "`release` only applies with `mode: rollback`. Remove it, or set `mode: rollback`.",
            );
        }
    }
    release
}

fn parse_rollback(p: &mut Parser) -> RollbackPolicy {
    match p.text("rollback").as_str() {
        "auto" => RollbackPolicy::Auto,
        "off" => RollbackPolicy::Off,
        other => {
            p.fail(
                "rollback",
                format!("`{other}` is not a rollback policy. Use `auto` or `off`."),
            );
            RollbackPolicy::Auto
        }
    }
}

/// `environment-url` defaults to the origin of `health-url`.
fn parse_report(p: &mut Parser, health_url: Option<&Url>) -> ReportSettings {
    let environment = p.text("environment");
    if environment.is_empty() {
        p.fail("environment", "is empty, e.g. `environment: staging`.");
    }
    let environment_url = match p.text("environment-url") {
        v if v.is_empty() => {
            health_url.and_then(|u| Url::parse(&u.origin().ascii_serialization()).ok())
        }
        v => match check_http_url(&v) {
            Ok(u) => Some(u),
            Err(why) => {
                p.fail(
                    "environment-url",
                    format!("{why}, e.g. `environment-url: https://staging.example.com`."),
                );
                None
            }
        },
    };
    let create_deployment = p.bool("create-deployment");
    ReportSettings {
        environment,
        environment_url,
        create_deployment,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_too_long_for_a_u64_is_an_input_error_not_a_wrap() {
        for v in ["99999999999999999999h", "18446744073709551615h"] {
            let env: Env = [(env_name("ci-timeout"), v.to_string())].into();
            let mut p = Parser {
                env: &env,
                errors: Vec::new(),
            };
            assert_eq!(p.duration("ci-timeout", "30m"), Duration::from_secs(1));
            assert_eq!(
                p.errors,
                [InputError {
                    input: "ci-timeout",
                    message: format!(
                        "`{v}` is longer than berth can wait, e.g. `ci-timeout: 30m`."
                    ),
                }]
            );
        }
    }
}
