//! Secret hygiene: distinctive values in every secret input never reach anything berth
//! prints or writes, whether it fails on bad input or later.

use crate::support::{fake_private_key, Berth, Run};

const KEY_BODY: &str = "AAAAsshkeysecretbody7731";
const SECRETS: &[&str] = &[
    KEY_BODY,
    "passphrase-secret-5521",
    "registry-pw-secret-8812",
    "ghs_githubtokensecret9913",
    "envvalue-secret-4417",
    "multi-line-env-secret-2290",
    "header-secret-6630",
];

fn with_secrets(b: Berth) -> Berth {
    // Step debug logging on: its output is scanned too.
    b.env("RUNNER_DEBUG", "1")
        .input("ssh-key", &fake_private_key(KEY_BODY))
        .input("ssh-key-passphrase", "passphrase-secret-5521")
        .input("registry-password", "registry-pw-secret-8812")
        .input("github-token", "ghs_githubtokensecret9913")
        .input(
            "env-file",
            "DATABASE_URL=envvalue-secret-4417\nCERT=\"line1\nmulti-line-env-secret-2290\"\n",
        )
        .input("health-headers", "Authorization: Bearer header-secret-6630")
}

fn assert_clean(run: &Run) {
    let all = run.everything();
    for s in SECRETS {
        // add-mask lines are the one place a secret is meant to appear: the runner consumes them.
        let leaked: Vec<&str> = all
            .lines()
            .filter(|l| l.contains(s) && !l.starts_with("::add-mask::"))
            .collect();
        assert!(leaked.is_empty(), "secret {s} leaked in: {leaked:#?}");
    }
    let masks: Vec<&str> = run
        .stdout
        .lines()
        .take_while(|l| l.starts_with("::add-mask::"))
        .collect();
    for s in SECRETS {
        assert!(
            masks.iter().any(|m| m.contains(s)),
            "{s} was not masked before the first output line"
        );
    }
}

#[test]
fn secrets_never_leak_when_inputs_are_invalid() {
    let run = with_secrets(Berth::valid())
        .input("hosts", "deploy@:22")
        .input(
            "health-headers",
            "Authorization: Bearer header-secret-6630\nbroken line header-secret-6630",
        )
        .run();
    assert_eq!(run.code, 1);
    assert!(!run.errors().is_empty());
    assert_clean(&run);
}

#[test]
fn secrets_never_leak_when_a_valid_deploy_fails() {
    let run = with_secrets(Berth::valid()).run();
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(run.output("status").as_deref(), Some("failed"));
    assert_clean(&run);
}

/// An env file in every form Compose accepts: quoted with a comment after, `export`ed,
/// unquoted with an inline comment, single-quoted with a `#` inside, escaped quotes.
const DOTENV_FORMS: &str = "QUOTED_PASSWORD=\"quoted-secret-3301\" # rotated monthly\n\
export EXPORTED_TOKEN=exported-secret-3302\n\
COMMENTED_KEY=commented-secret-3303 # trailing note\n\
SINGLE_SECRET='single # not-a-comment-3305'\n\
ESCAPED_SECRET=\"esc\\\"aped-secret-3306\"\n\
# a comment line\n\
PLAIN=plain-value-3307\n";

#[test]
fn env_file_values_are_read_exactly_as_compose_reads_them() {
    crate::support::rig::require_engine();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("berth.env"), DOTENV_FORMS).unwrap();
    let ours = berth::inputs::env_file_pairs(DOTENV_FORMS);
    let environment: Vec<String> = ours
        .iter()
        .map(|(k, _)| format!("      {k}: ${{{k}}}\n"))
        .collect();
    std::fs::write(
        dir.path().join("compose.yml"),
        format!(
            "services:\n  app:\n    image: busybox\n    environment:\n{}",
            environment.concat()
        ),
    )
    .unwrap();
    let json = crate::support::rig::sh(
        std::process::Command::new("docker")
            .current_dir(dir.path())
            .args(["compose", "-f", "compose.yml", "--env-file", "berth.env"])
            .args(["config", "--format", "json"]),
    );
    let config: serde_json::Value = serde_json::from_str(&json).unwrap();
    let theirs = &config["services"]["app"]["environment"];
    assert_eq!(ours.len(), 6, "{ours:?}");
    for (key, value) in &ours {
        assert_eq!(
            theirs[key].as_str(),
            Some(value.as_str()),
            "{key}: berth reads {value:?}, compose {:?}",
            theirs[key]
        );
    }
}

#[test]
fn every_dotenv_form_is_masked_as_its_real_value() {
    let run = with_secrets(Berth::valid())
        .input("env-file", DOTENV_FORMS)
        .run();
    for value in [
        "quoted-secret-3301",
        "exported-secret-3302",
        "commented-secret-3303",
        "single # not-a-comment-3305",
        "esc\"aped-secret-3306",
    ] {
        let mask = format!("::add-mask::{value}");
        assert!(
            run.stdout.lines().any(|l| l == mask),
            "no mask of exactly {value:?}:\n{}",
            run.stdout
        );
    }
    assert!(
        !run.stdout.contains("::add-mask::quoted-secret-3301\" #"),
        "the comment is not part of the value"
    );
}

#[test]
fn a_secret_printed_by_the_app_is_scrubbed_before_the_summary_escapes_it() {
    let stage = crate::support::stage::Stage::new();
    let url = "postgres://shop:pw_secret-3399@db:5432/shop";
    let run = stage
        .berth(&crate::support::stage::App::new("leaky"))
        .input("pre-deploy", "backend: sh /migrate.sh")
        .input(
            "env-file",
            &format!("DATABASE_URL={url}\nMIGRATE_SAY='connecting to {url}\\n'\nMIGRATE=fail\n"),
        )
        .run();
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.summary.contains("pre-deploy"), "{}", run.summary);
    for form in ["pw_secret-3399", "pw\\_secret-3399", "shop:pw"] {
        assert!(
            !run.summary.contains(form) && !run.output.contains(form),
            "{form} leaked into the summary:\n{}",
            run.summary
        );
    }
    assert!(
        !run.stdout
            .lines()
            .any(|l| l.contains("pw_secret-3399") && !l.starts_with("::add-mask::")),
        "{}",
        run.stdout
    );
}

/// Issue 25: an app that logs its requests may print the token of `Bearer <token>`
/// without its scheme, or Basic auth decoded; each is masked on its own, before any
/// other output.
#[test]
fn bearer_and_basic_credentials_are_masked_on_their_own() {
    // base64 of `probe-account:basic-pw-4471`.
    let basic = "cHJvYmUtYWNjb3VudDpiYXNpYy1wdy00NDcx";
    let run = Berth::valid()
        .input("hosts", "deploy@:22")
        .input(
            "health-headers",
            &format!("Authorization: Bearer bearer-token-7730\nProxy-Authorization: Basic {basic}"),
        )
        .run();
    let masks: Vec<&str> = run
        .stdout
        .lines()
        .take_while(|l| l.starts_with("::add-mask::"))
        .map(|l| &l["::add-mask::".len()..])
        .collect();
    for m in [
        "bearer-token-7730",
        basic,
        "probe-account:basic-pw-4471",
        "basic-pw-4471",
    ] {
        assert!(
            masks.contains(&m),
            "{m} is not masked on its own: {masks:#?}"
        );
    }
}
