//! The health check's inputs: `health-*`.

use url::Url;

use super::Parser;
use crate::inputs::grammar::{list_lines, parse_status_matcher};
use crate::inputs::settings::{
    HealthSettings, HostSpec, JsonExpectation, Mode, StatusMatcher, StatusRule,
};
use crate::inputs::urls::{check_http_url, expand_host, url_password};
use crate::secret::Secret;

pub(super) fn parse_health(p: &mut Parser, mode: Mode, hosts: &[HostSpec]) -> HealthSettings {
    let (url, url_template) = read_health_url(p, mode, hosts);
    let password = url
        .as_ref()
        .map(url_password)
        .filter(|parts| !parts.is_empty())
        .map(|parts| Secret::new(parts.join("\n")));
    let timeout = p.duration("health-timeout", "30s");
    let interval = p.duration("health-interval", "1s");
    if interval > timeout {
        p.fail("health-interval", "is longer than `health-timeout`, so at most one probe could run. Use e.g. `health-interval: 1s`.");
    }
    HealthSettings {
        url,
        url_template,
        url_password: password,
        timeout,
        interval,
        status: read_health_status(p),
        json: read_health_json(p),
        headers: read_health_headers(p),
        ca_cert: read_health_ca_cert(p),
        insecure_tls: p.bool("health-insecure-tls"),
    }
}

/// `health-url`, and when it has `{host}`, the template: every host must expand it to a
/// URL that can be probed.
fn read_health_url(
    p: &mut Parser,
    mode: Mode,
    hosts: &[HostSpec],
) -> (Option<Url>, Option<String>) {
    let url = match p.text("health-url") {
        v if v.is_empty() => {
            if mode == Mode::Deploy {
                p.fail("health-url", "is required with `mode: deploy`, e.g. `health-url: https://staging.example.com/api/health`.");
            }
            None
        }
        v => match check_http_url(&expand_host(
            &v,
            hosts.first().map_or("localhost", |h| h.host.as_str()),
        )) {
            Ok(u) => Some(u),
            Err(why) => {
                p.fail(
                    "health-url",
                    format!("{why}, e.g. `health-url: https://staging.example.com/api/health`."),
                );
                None
            }
        },
    };
    let template = Some(p.text("health-url")).filter(|u| u.contains("{host}"));
    if let (Some(t), Some(_)) = (&template, &url) {
        // Every host must give a URL that can be probed; none is skipped in silence.
        for h in hosts.iter().skip(1) {
            if let Err(why) = check_http_url(&expand_host(t, &h.host)) {
                p.fail(
                    "health-url",
                    format!("with `{{host}}` = `{}`: {why}. Every host in `hosts` must give a URL berth can probe.", h.host),
                );
            }
        }
    }
    (url, template)
}

fn read_health_status(p: &mut Parser) -> StatusMatcher {
    match parse_status_matcher(&p.text("health-status")) {
        Ok(m) => m,
        Err(why) => {
            p.fail(
                "health-status",
                format!("{why}. Use codes or classes, e.g. `200,204` or `2xx`."),
            );
            StatusMatcher(vec![StatusRule::Code(200)])
        }
    }
}

fn read_health_json(p: &mut Parser) -> Vec<JsonExpectation> {
    let mut json = Vec::new();
    for line in list_lines(&p.raw("health-json")) {
        match line.split_once('=') {
            Some((ptr, val)) if ptr.trim().is_empty() || ptr.trim().starts_with('/') => json.push(JsonExpectation {
                pointer: ptr.trim().to_string(),
                value: val.trim().to_string(),
            }),
            Some(_) => p.fail("health-json", format!("`{line}`: the pointer must start with `/` (RFC 6901), e.g. `/data/status=healthy`.")),
            None => p.fail("health-json", format!("`{line}` has no `=`. Use `pointer=value`, e.g. `/data/status=healthy`.")),
        }
    }
    json
}

fn read_health_headers(p: &mut Parser) -> Vec<(String, Secret)> {
    let mut headers = Vec::new();
    for (n, line) in list_lines(&p.raw("health-headers")).iter().enumerate() {
        match line.split_once(':') {
            Some((name, value))
                if http::HeaderName::from_bytes(name.trim().as_bytes()).is_ok()
                    && !value.trim().is_empty() =>
            {
                headers.push((name.trim().to_string(), Secret::new(value.trim())))
            }
            // A malformed line may be all secret, so the error names it by number only.
            _ => p.fail(
                "health-headers",
                format!(
                    "line {} is not `Name: value`, e.g. `Authorization: Basic dXNlcjpwYXNz`.",
                    n + 1
                ),
            ),
        }
    }
    headers
}

fn read_health_ca_cert(p: &mut Parser) -> Option<String> {
    let ca_cert = Some(p.raw("health-ca-cert")).filter(|c| !c.trim().is_empty());
    if let Some(pem) = &ca_cert {
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            p.fail(
                "health-ca-cert",
                "is not a PEM certificate; it must contain `-----BEGIN CERTIFICATE-----`.",
            );
        }
    }
    ca_cert
}
