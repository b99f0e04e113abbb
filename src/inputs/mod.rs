//! The input contract: every `INPUT_*` variable parsed into one typed [`Config`], with every
//! problem reported at once before anything has a side effect.
//!
//! `table` lists the inputs, `parse` reads them into the per-area settings of `settings`,
//! and `secrets` finds what to mask before any of that can fail. `dotenv` reads `env-file`
//! with Compose's own grammar.

mod context;
mod dotenv;
mod grammar;
mod parse;
mod secrets;
mod settings;
mod table;
mod urls;

use std::collections::HashMap;

pub use context::GithubContext;
pub use dotenv::{parse as read_env_file, Assignment, DotenvError, EnvFile};
pub use grammar::{parse_host, parse_known_host};
pub use parse::parse;
pub(crate) use secrets::raw_secrets;
pub(crate) use settings::{is_valid_tag, TagValues};
pub use settings::{
    BuildSettings, BuilderChoice, GateSettings, HealthSettings, HostSettings, HostSpec, ImageSpec,
    JsonExpectation, KnownHost, Mode, PreDeploy, ReportSettings, RollbackPolicy, StatusMatcher,
    StatusRule, TagTemplate, TargetKind,
};
pub use table::{env_name, InputSpec, OutputSpec, INPUTS, OUTPUTS};
pub(crate) use urls::redact_url;

use crate::secret::Secret;

/// The environment as a map, so parsing is a pure function of it.
pub type Env = HashMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    pub input: &'static str,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{} input(s) are invalid: {}", .0.len(), .0.iter().map(|e| e.input).collect::<Vec<_>>().join(", "))]
pub struct InputErrors(pub Vec<InputError>);

/// Every input, parsed: the run's mode, then one struct per area, each taken by the module
/// that does that part of the deploy.
#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    pub release: Option<String>,
    pub dry_run: bool,
    pub rollback: RollbackPolicy,
    pub gate: GateSettings,
    pub build: BuildSettings,
    pub target: HostSettings,
    pub health: HealthSettings,
    pub report: ReportSettings,
    /// `routes` and the edge's inputs; `None` without `routes`.
    pub edge: Option<crate::edge::EdgeSettings>,
}

impl Config {
    /// Every secret this run holds, for masking before the first line is printed.
    pub fn secrets(&self) -> Vec<&Secret> {
        let mut out = vec![
            &self.gate.github_token,
            &self.build.registry_password,
            &self.target.ssh_key,
        ];
        out.extend(self.target.ssh_key_passphrase.as_ref());
        out.extend(self.target.env_file.as_ref());
        out.extend(self.health.headers.iter().map(|(_, v)| v));
        out.extend(self.health.url_password.as_ref());
        out
    }
}
