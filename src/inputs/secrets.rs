//! Secrets straight from the environment, for masking before anything is printed, even
//! when the inputs do not validate.

use std::sync::LazyLock;

use base64::engine::general_purpose::{STANDARD as BASE64, STANDARD_NO_PAD as BASE64_NO_PAD};
use base64::Engine as _;
use regex::Regex;
use url::Url;

use super::dotenv;
use super::grammar::list_lines;
use super::table::{env_name, INPUTS};
use super::urls::url_password;
use super::Env;
use crate::secret::Secret;

/// Keys whose values are masked from 3 characters on (`DB_PASS=abc`).
static SECRET_LOOKING_KEY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(pass|secret|token|key|dsn|url|auth|cred|private|salt|cert)")
        .expect("built-in regex")
});

/// Secrets straight from the environment, for masking even when validation fails.
pub(crate) fn raw_secrets(env: &Env) -> Vec<Secret> {
    let mut out = Vec::new();
    for spec in INPUTS.iter().filter(|s| s.secret) {
        if let Some(v) = env
            .get(&env_name(spec.name))
            .filter(|v| !v.trim().is_empty())
        {
            out.push(Secret::new(v.clone()));
            if spec.name == "env-file" {
                out.extend(env_file_values(v).into_iter().map(Secret::new));
            }
        }
    }
    if let Some(u) = env
        .get(&env_name("health-url"))
        .and_then(|u| Url::parse(u.trim()).ok())
    {
        out.extend(url_password(&u).into_iter().map(Secret::new));
        if !u.password().unwrap_or("").is_empty() {
            // reqwest sends the userinfo as `Authorization: Basic base64(user:password)`.
            let pair = format!("{}:{}", u.username(), u.password().unwrap_or(""));
            out.push(Secret::new(BASE64.encode(&pair)));
            out.push(Secret::new(pair));
        }
    }
    if let Some(h) = env.get(&env_name("health-headers")) {
        for line in list_lines(h) {
            match line.split_once(':') {
                Some((_, value)) if !value.trim().is_empty() => {
                    out.push(Secret::new(value.trim()));
                    out.extend(credential_parts(value.trim()).into_iter().map(Secret::new));
                }
                // A line that is not `Name: value` may be a bare secret: mask all of it.
                _ => out.push(Secret::new(line)),
            }
        }
    }
    out
}

/// The credentials inside an HTTP authorization value, each masked on its own: an app that
/// logs its request may print the token of `Bearer <token>` without the scheme, or the
/// `user:password` of `Basic <base64>` decoded (an app's auth middleware does).
fn credential_parts(value: &str) -> Vec<String> {
    let Some((scheme, token)) = value.split_once(char::is_whitespace) else {
        return Vec::new();
    };
    let token = token.trim();
    // Other values with a space (`Accept: text/html, */*`) are no credentials: masking
    // their words would garble logs.
    let scheme = scheme.to_ascii_lowercase();
    if token.is_empty() || !matches!(scheme.as_str(), "bearer" | "basic" | "token") {
        return Vec::new();
    }
    let mut out = vec![token.to_string()];
    if scheme == "basic" {
        let decoded = BASE64
            .decode(token)
            .or_else(|_| BASE64_NO_PAD.decode(token.trim_end_matches('=')))
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        if let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) {
            out.push(format!("{user}:{password}"));
            out.extend(Some(password).filter(|p| !p.is_empty()).map(String::from));
            // A short user name (`admin`) is no secret; see `url_password`.
            out.extend(Some(user).filter(|u| u.len() >= 8).map(String::from));
        }
    }
    out
}

/// The values of a `.env` body as Compose resolves them, so each is masked on its own. A
/// value is masked when it has at least 8 characters, or at least 3 under a
/// secret-looking key. Shorter values (`3000`, `true`, `fail`) are not secrets, and
/// masking them would garble every log line, output and summary that contains the word
/// (and make GitHub drop job outputs).
///
/// The body is read with Compose's own grammar (`dotenv`), so the mask is the value the
/// app really gets. Should Compose refuse the file (an input error then stops the run),
/// every line's would-be value is masked as well, so nothing goes unmasked for want of
/// a parse.
fn env_file_values(body: &str) -> Vec<String> {
    let file = dotenv::parse(body);
    let mut pairs: Vec<(String, String)> = file
        .assignments
        .into_iter()
        .map(|a| (a.key, a.value))
        .collect();
    if file.error.is_some() {
        pairs.extend(would_be_values(body));
    }
    let mut out: Vec<String> = Vec::new();
    for (k, v) in pairs {
        let masked = v.len() >= 8 || (v.len() >= 3 && SECRET_LOOKING_KEY.is_match(&k));
        if masked && !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// Each line's would-be value, read the naive way, for a body Compose refuses: the text
/// after the first `=` or `:` (as it is, and unquoted, less a ` #` comment), or, when
/// it has neither, the whole line (it may be a line of a multi-line value) and what
/// follows its first word (`KEY value`).
fn would_be_values(body: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in body.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(at) = line.find(['=', ':']) else {
            out.push((String::new(), line.to_string()));
            if let Some((key, value)) = line.split_once(char::is_whitespace) {
                out.push((key.to_string(), value.trim().to_string()));
            }
            continue;
        };
        let key = line[..at].trim().trim_start_matches("export").trim();
        let raw = line[at + 1..].trim();
        let uncommented = raw.split_once(" #").map_or(raw, |(v, _)| v).trim_end();
        for value in [
            raw,
            uncommented,
            raw.trim_matches(['"', '\'']),
            uncommented.trim_matches(['"', '\'']),
        ] {
            out.push((key.to_string(), value.to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_are_masked_unless_short_and_plain() {
        let v = env_file_values("PORT=3000\nMIGRATE=fail\nDB_PASS=abc\nNODE_ENV=production\n# X=commented-out-secret\nJWT=\"long-enough-secret\"\n");
        assert_eq!(v, vec!["abc", "production", "long-enough-secret"]);
    }

    fn masked_for(inputs: &[(&str, &str)]) -> Vec<String> {
        let env: Env = inputs
            .iter()
            .map(|(k, v)| (env_name(k), v.to_string()))
            .collect();
        raw_secrets(&env)
            .iter()
            .flat_map(|s| s.fragments().into_iter().map(String::from))
            .collect()
    }

    #[test]
    fn a_bearer_token_is_masked_without_its_scheme() {
        let masks = masked_for(&[("health-headers", "Authorization: Bearer tok-3391-secret")]);
        assert!(
            masks.contains(&"Bearer tok-3391-secret".to_string()),
            "{masks:?}"
        );
        assert!(masks.contains(&"tok-3391-secret".to_string()), "{masks:?}");
    }

    #[test]
    fn basic_auth_is_masked_encoded_decoded_and_by_its_password() {
        // base64("deployer-bot:pw-5521-secret")
        let b64 = BASE64.encode("deployer-bot:pw-5521-secret");
        let masks = masked_for(&[("health-headers", &format!("Authorization: Basic {b64}"))]);
        for m in [
            b64.as_str(),
            "deployer-bot:pw-5521-secret",
            "pw-5521-secret",
            "deployer-bot",
        ] {
            assert!(masks.iter().any(|x| x == m), "{m} not in {masks:?}");
        }
        // A short user name is no secret: masking `admin` would garble every log line.
        let short = BASE64.encode("admin:pw-7781-secret");
        let masks = masked_for(&[("health-headers", &format!("X-Auth: basic {short}"))]);
        assert!(masks.iter().any(|x| x == "pw-7781-secret"), "{masks:?}");
        assert!(!masks.iter().any(|x| x == "admin"), "{masks:?}");
    }

    #[test]
    fn a_health_url_with_a_password_is_masked_as_the_basic_auth_reqwest_sends() {
        let masks = masked_for(&[(
            "health-url",
            "https://probe:pw-6613-secret@app.example/health",
        )]);
        let sent = BASE64.encode("probe:pw-6613-secret");
        for m in [sent.as_str(), "probe:pw-6613-secret", "pw-6613-secret"] {
            assert!(masks.iter().any(|x| x == m), "{m} not in {masks:?}");
        }
    }

    #[test]
    fn env_values_are_the_values_compose_resolves() {
        let v = env_file_values(
            "GREETING=hello world\nDB_PASSWORD=\"s3cret-pw\" # rotated\nMOTD=Don't panic\nAPI_KEY: ${DB_PASSWORD}-2\n",
        );
        assert_eq!(
            v,
            vec!["hello world", "s3cret-pw", "Don't panic", "s3cret-pw-2"]
        );
    }

    #[test]
    fn a_file_compose_refuses_masks_every_lines_would_be_value() {
        let v =
            env_file_values("PW=\"unclosed-secret\nAPI_TOKEN tok-secret\nURL: http://u:p@h # c\n");
        for value in ["unclosed-secret", "tok-secret", "http://u:p@h"] {
            assert!(v.iter().any(|m| m == value), "{value} not in {v:?}");
        }
    }
}
