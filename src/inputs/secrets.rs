//! Secrets straight from the environment, for masking before anything is printed, even
//! when the inputs do not validate.

use std::sync::LazyLock;

use regex::Regex;
use url::Url;

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
    }
    if let Some(h) = env.get(&env_name("health-headers")) {
        for line in list_lines(h) {
            match line.split_once(':') {
                Some((_, value)) if !value.trim().is_empty() => out.push(Secret::new(value.trim())),
                // A line that is not `Name: value` may be a bare secret: mask all of it.
                _ => out.push(Secret::new(line)),
            }
        }
    }
    out
}

/// The values of a `.env` body, unquoted, so each is masked on its own. A value is masked
/// when it has at least 8 characters, or at least 3 under a secret-looking key. Shorter
/// values (`3000`, `true`, `fail`) are not secrets, and masking them would garble every log
/// line, output and summary that contains the word (and make GitHub drop job outputs).
///
/// The body is read the way Compose reads a `.env` file (quotes, escapes, `export `,
/// inline `# comments`), through `dotenvy`, so the mask is the value the app really gets.
/// Should a line not parse, the rest is read line by line as `KEY=value`, unquoted, so
/// nothing goes unmasked for want of a parse.
fn env_file_values(body: &str) -> Vec<String> {
    let mut out: Vec<String> = env_file_pairs(body)
        .into_iter()
        .filter(|(k, v)| v.len() >= 8 || (v.len() >= 3 && SECRET_LOOKING_KEY.is_match(k)))
        .map(|(_, v)| v)
        .collect();
    out.dedup();
    out
}

/// The `KEY`/value pairs of a `.env` body as Compose reads them. Should a line not
/// parse, the rest is read line by line as `KEY=value`, unquoted, so that nothing goes
/// unmasked for want of a parse.
pub fn env_file_pairs(body: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for item in dotenvy::from_read_iter(body.as_bytes()) {
        match item {
            Ok(pair) => pairs.push(pair),
            Err(_) => {
                pairs.extend(
                    body.lines()
                        .filter(|l| !l.trim_start().starts_with('#'))
                        .filter_map(|l| {
                            let (k, v) = l.split_once('=')?;
                            let k = k.trim().trim_start_matches("export ").trim();
                            Some((
                                k.to_string(),
                                v.trim().trim_matches(['"', '\'']).to_string(),
                            ))
                        }),
                );
                break;
            }
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_are_masked_unless_short_and_plain() {
        let v = env_file_values("PORT=3000\nMIGRATE=fail\nDB_PASS=abc\nNODE_ENV=production\n# X=commented-out-secret\nJWT=\"long-enough-secret\"\n");
        assert_eq!(v, vec!["abc", "production", "long-enough-secret"]);
    }
}
