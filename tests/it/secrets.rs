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

/// The lines of everything berth printed or wrote that show `secret`. `::add-mask::`
/// lines are the one place a secret is meant to appear: the runner consumes them.
fn shown<'a>(everything: &'a str, secret: &str) -> Vec<&'a str> {
    everything
        .lines()
        .filter(|l| l.contains(secret) && !l.starts_with("::add-mask::"))
        .collect()
}

/// The masks berth registered before its first other line.
fn leading_masks(run: &Run) -> Vec<&str> {
    run.stdout
        .lines()
        .take_while(|l| l.starts_with("::add-mask::"))
        .collect()
}

fn assert_clean(run: &Run) {
    let all = run.everything();
    for s in SECRETS {
        let leaked = shown(&all, s);
        assert!(leaked.is_empty(), "secret {s} leaked in: {leaked:#?}");
    }
    let masks = leading_masks(run);
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

/// Env files written by hand, one or more per form Compose reads, with the issues'
/// leaks among them. Each is given to berth and to `docker compose config`.
const HAND_WRITTEN: &[&str] = &[
    DOTENV_FORMS,
    // Issue 25's three leaks.
    "GREETING=hello world\nDB_PASSWORD=\"s3cret-pw\" # rotated\n",
    "MOTD=Don't panic\nDB_PASSWORD=s3cr3t-pw\nSIGNATURE=Bob's\n",
    "DB_PASSWORD: s3cr3t-pw\n",
    // Unquoted values with spaces and apostrophes.
    "NAME=Jane Q. Public\nQUOTE=it's a 'test'\nTRAIL=spaces after   \n",
    "A=don't\nB=won't stop\nC='closed'\n",
    // `#` with and without a space before it.
    "A=a#b\nB=a #b\nC=a\t#b\nD=#start\nE= #only-comment\n",
    "# comment\n  # indented comment\nA=1 # one\n#B=2\nC='x # y'\nD=\"x # y\" # z\n",
    // YAML style.
    "A: yaml value\nB : spaced\nexport C: exported yaml\nD:\"quoted yaml\"\n",
    "URL: http://host:8080/path\nE:\n",
    // Multi-line double-quoted values.
    "CERT=\"-----BEGIN-----\nline-one\nline-two\n-----END-----\"\nAFTER=after-value\n",
    "A=\"l1\n  l2 indented\n\"\nB='single\nquoted lines'\n",
    // Escapes and `export`.
    "A=\"\\n\\t\\\"q\\\" \\$HOME \\0101\\0777 \\a\\c \\\\\"\nB='no \\n escapes, it\\'s'\n",
    "export A=1\nexport  B=\"two\"\nexport\tC='three'\nexportD=4\n",
    "A=\"x\\\\\"\nB=\"\\0\\01\\012\\0123\\0189\"\nC=\"\\$\\{not}\"\n",
    // Empty values.
    "A=\nB=\"\"\nC=''\nD= \nE=   # comment\n",
    // `${VAR}` and `${VAR:-default}`, and the other operators.
    "HOST=db\nPORT=5432\nURL=postgres://${HOST}:$PORT/x\nQ=\"${HOST}-${PORT}\"\nS='${HOST}'\n",
    "A=1\nB=${A}2$A-${X:-def}${A:+alt}${X-u}|${A:-${X:-n}}\n",
    "A=\nB=${A:-d}${A-d}${A+s}${A:+n}$$A\nC=${UNSET}x\nD=\"${B}\"\n",
    "A=1\nA=${A}${A}\nB=${A:-{braces}}\nC=${A:-x} and ${A}\n",
    "PRICE=$5 and $$6\nT=${A-}${A+}\n",
    // CRLF line ends.
    "A=1\r\nB=\"q\"\r\nC=x #c\r\nD: yaml\r\nE=\r\nALONE\r\n",
    "CERT=\"l1\r\nl2\"\r\nexport X='y'\r\n",
    // A key alone, the quirks of quotes, and a byte order mark.
    "SET=1\nSET\nUNSET_IN_FILE\nD=\"x\"junk\nE=\"y\" F=z\n",
    "\u{feff}BOM=after-mark\n",
    "A=1\nFOO",
    "=no-key-value\nB=2\n",
    "K.dot-dash[0]=v\nünïcode=ok\n_U=1\n9LEAD=digit\n",
    // Go folds `(?i)[a-z]` to the Kelvin sign too; a tab inside a key is kept.
    "\u{212a}=kelvin\nA=${\u{212a}}-$\u{212a}\nT\tAB=tabbed key\n",
    // Files Compose refuses: berth must refuse them too.
    "A B=x\n",
    "A=1\nDB_PASSWORD s3cret!\n",
    "A=\"unterminated\nB=2\n",
    "A=x${\n",
    "A=${X:?boom}\n",
    "A=${X?}\n",
    "A=1\nexport   ",
];

/// A small deterministic generator of env files that combine the forms at random: each
/// line a form, each value drawn from words with spaces, apostrophes, `#`, `$` and
/// quotes, with `\n` or `\r\n` line ends.
fn generated_env_files(count: usize) -> Vec<String> {
    let mut seed: u64 = 0x5eed_2025;
    let mut next = move |n: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) as usize) % n
    };
    const WORDS: &[&str] = &[
        "s3cret-pw",
        "hello world",
        "Don't panic",
        "Bob's",
        "a#b",
        "a #b",
        "x\\ny",
        "$$lit",
        "tab\there",
        "",
        "p@ss:word",
        "'q'",
        "\\\"esc\\\"",
        "${K0}",
        "${K1:-fallback}",
        "$K0-suffix",
        "${NOPE-dflt}",
        "${K0:+alt}",
        "end \\",
        "ünï",
    ];
    (0..count)
        .map(|_| {
            let eol = if next(3) == 0 { "\r\n" } else { "\n" };
            let mut body = String::new();
            for i in 0..2 + next(6) {
                let key = format!("K{i}");
                let word = WORDS[next(WORDS.len())];
                let other = WORDS[next(WORDS.len())];
                let line = match next(10) {
                    0 => format!("{key}={word}"),
                    1 => format!("{key}=\"{word}\""),
                    2 => format!("{key}='{word}'"),
                    3 => format!("export {key}={word}"),
                    4 => format!("{key}: {word}"),
                    5 => format!("{key}=\"{word}{eol}{other}\""),
                    6 => format!("{key}={word} # note {other}"),
                    7 => format!("# {key}={word}"),
                    8 => format!("{key}="),
                    _ => format!("{key}=${{K{}:-{word}}}", next(3)),
                };
                body.push_str(&line);
                body.push_str(eol);
            }
            body
        })
        .collect()
}

/// Every name Compose could have read from `body`, found without berth's parser: each
/// run of key characters, each line's text before its `=` or `:`, and the empty name.
fn candidate_keys(body: &str, ours: &berth::inputs::EnvFile) -> std::collections::BTreeSet<String> {
    let runs = regex::Regex::new(r"[\p{L}\p{N}_.\-\[\]]+").unwrap();
    let mut keys: std::collections::BTreeSet<String> = runs
        .find_iter(body)
        .map(|m| m.as_str().to_string())
        .collect();
    for line in body.lines() {
        let before = line.split([':', '=']).next().unwrap_or_default();
        keys.insert(
            before
                .trim()
                .trim_start_matches("export")
                .trim()
                .to_string(),
        );
    }
    keys.insert(String::new());
    keys.extend(ours.assignments.iter().map(|a| a.key.clone()));
    keys
}

/// What `docker compose config` resolves for `keys` with `body` as `--env-file`: each
/// key's value (`None` when unset), or Compose's error. Compose runs with an empty
/// environment, as berth reads the file with none.
fn compose_resolves(
    dir: &std::path::Path,
    body: &str,
    keys: &std::collections::BTreeSet<String>,
) -> Result<std::collections::BTreeMap<String, Option<String>>, String> {
    std::fs::write(dir.join("berth.env"), body).unwrap();
    let environment: String = keys
        .iter()
        // A JSON string is a YAML string; `$$` keeps Compose from interpolating the name.
        .map(|k| {
            format!(
                "      - {}\n",
                serde_json::to_string(k).unwrap().replace('$', "$$")
            )
        })
        .collect();
    std::fs::write(
        dir.join("compose.yml"),
        format!("services:\n  app:\n    image: busybox\n    environment:\n{environment}"),
    )
    .unwrap();
    let out = std::process::Command::new(docker())
        .env_clear()
        .current_dir(dir)
        .args(["compose", "-f", "compose.yml", "--env-file", "berth.env"])
        .args(["config", "--format", "json"])
        .output()
        .expect("run docker compose");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into());
    }
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let env = config["services"]["app"]["environment"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    Ok(keys
        .iter()
        .map(|k| {
            // `compose config` writes a literal `$` as `$$`.
            let value = env
                .get(k)
                .and_then(|v| v.as_str())
                .map(|v| v.replace("$$", "$"));
            (k.clone(), value)
        })
        .collect())
}

/// The `docker` on `PATH`, found before the environment is cleared.
fn docker() -> std::path::PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("docker"))
        .find(|p| p.is_file())
        .expect("docker on PATH. Run scripts/test, which installs the rig.")
}

/// Issue 25: berth masks what it reads, so it must read an env file exactly as Compose
/// does. Compose itself is the oracle: every value it resolves is berth's value for that
/// key, berth reads no key Compose does not, and a file Compose refuses, berth refuses.
#[test]
fn env_file_values_are_read_exactly_as_compose_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let generated = generated_env_files(40);
    let corpus: Vec<&str> = HAND_WRITTEN
        .iter()
        .copied()
        .chain(generated.iter().map(String::as_str))
        .collect();
    assert!(corpus.len() >= 30);
    let (mut read, mut refused) = (0, 0);
    for body in corpus {
        let ours = berth::inputs::read_env_file(body);
        let keys = candidate_keys(body, &ours);
        match (compose_resolves(dir.path(), body, &keys), ours.resolved()) {
            (Ok(theirs), Some(resolved)) => {
                read += 1;
                for (key, value) in &theirs {
                    assert_eq!(
                        resolved.get(key),
                        value.as_ref(),
                        "{key:?} in {body:?}: berth reads {:?}, Compose {value:?}",
                        resolved.get(key)
                    );
                }
            }
            (Err(_), None) => refused += 1,
            (Ok(theirs), None) => {
                panic!(
                    "berth refuses {body:?} ({:?}); Compose reads {theirs:?}",
                    ours.error
                )
            }
            (Err(why), Some(resolved)) => {
                panic!("Compose refuses {body:?} ({why}); berth reads {resolved:?}")
            }
        }
    }
    // Both outcomes are tested, many times each.
    assert!(read >= 40 && refused >= 8, "read {read}, refused {refused}");
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

/// Issue 25's three leaks, each in a file of its own: the value the app gets is masked,
/// exactly, before anything else is printed.
#[test]
fn env_file_values_that_dotenvy_misread_are_masked_as_compose_reads_them() {
    for (body, secret) in [
        // Valid for Compose, an error for dotenvy, whose fallback masked the comment too.
        (
            "GREETING=hello world\nDB_PASSWORD=\"s3cret-pw-2501\" # rotated\n",
            "s3cret-pw-2501",
        ),
        // dotenvy joined the three lines into one single-quoted value.
        (
            "MOTD=Don't panic\nDB_PASSWORD=s3cr3t-pw-2502\nSIGNATURE=Bob's\n",
            "s3cr3t-pw-2502",
        ),
        // YAML style, which dotenvy did not read at all.
        ("DB_PASSWORD: s3cr3t-pw-2503\n", "s3cr3t-pw-2503"),
    ] {
        assert_masked_exactly(&Berth::valid().input("env-file", body).run(), secret);
    }
}

/// A run with `body` as `env-file`, which must fail on an input error naming the input
/// and `line`.
fn refused_env_file(body: &str, line: usize) -> Run {
    let run = Berth::valid().input("env-file", body).run();
    assert_eq!(run.code, 1, "{}", run.stdout);
    let errors = run.errors();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("env-file") && e.contains(&format!("line {line}:"))),
        "{errors:#?}"
    );
    run
}

fn assert_masked_exactly(run: &Run, secret: &str) {
    assert!(
        leading_masks(run).contains(&format!("::add-mask::{secret}").as_str()),
        "{secret} is not masked exactly, before the first output line:\n{}",
        run.stdout
    );
}

/// Issue 24: an env-file line with no key is an input error that names the line; the
/// value is never shown.
#[test]
fn an_env_file_line_with_no_key_is_an_input_error_naming_the_line() {
    let run = refused_env_file("PORT=3000\n\n=keyless-secret-2404\n", 3);
    let all = run.everything();
    let lines = shown(&all, "keyless-secret-2404");
    assert!(lines.is_empty(), "the value is shown: {lines:#?}");
}

/// A file Compose refuses is an input error naming the line; every line's would-be value
/// is masked, so nothing leaks even then.
#[test]
fn an_env_file_compose_refuses_is_an_input_error_and_still_masked() {
    let run = refused_env_file(
        "API_TOKEN=token-secret-2405\nDB_PASSWORD=\"unclosed-secret-2406\nSMTP_PASSWORD s3cret!-2407\n",
        2,
    );
    let all = run.everything();
    for secret in ["token-secret-2405", "unclosed-secret-2406", "s3cret!-2407"] {
        let lines = shown(&all, secret);
        assert!(lines.is_empty(), "{secret} is shown: {lines:#?}");
        assert_masked_exactly(&run, secret);
    }
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
