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
