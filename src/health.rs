//! The HTTP health probe, through reqwest (rustls). Nothing outside this module imports
//! reqwest.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use url::Url;

use crate::inputs::{redact_url, HealthSettings, JsonExpectation, StatusMatcher};

/// No single probe waits longer than this, and never past the deadline.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const BODY_EXCERPT: usize = 512;
/// The most of a health answer's body berth reads. A health endpoint that streams without
/// end (a bug, or a compromised app) would otherwise fill memory after `current` was
/// switched, where an OOM kill leaves no one to roll back.
pub const BODY_CAP: usize = 1 << 20;
/// Same-origin redirects followed before a probe counts as failed.
pub const MAX_REDIRECTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("`health-ca-cert` is not a usable PEM certificate: {0}")]
    BadCa(String),
    #[error("cannot build the HTTP client for the health check: {0}")]
    Client(String),
}

/// What one probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    Healthy {
        status: u16,
    },
    Dns(String),
    Refused(String),
    Tls(String),
    Timeout,
    /// The body passed [`BODY_CAP`]; reading stopped there.
    BodyTooLarge,
    /// The app redirected to another origin; berth does not follow (see `from_config`).
    Redirect(String),
    Http {
        status: u16,
        body: String,
    },
    JsonMismatch {
        pointer: String,
        expected: String,
        actual: String,
    },
    Other(String),
}

impl ProbeOutcome {
    pub fn kind(&self) -> &'static str {
        match self {
            ProbeOutcome::Healthy { .. } => "healthy",
            ProbeOutcome::Dns(_) => "DNS failure",
            ProbeOutcome::Refused(_) => "connection refused",
            ProbeOutcome::Tls(_) => "TLS error",
            ProbeOutcome::Timeout => "timeout",
            ProbeOutcome::BodyTooLarge => "body too large",
            ProbeOutcome::Redirect(_) => "redirect refused",
            ProbeOutcome::Http { .. } => "HTTP status",
            ProbeOutcome::JsonMismatch { .. } => "JSON mismatch",
            ProbeOutcome::Other(_) => "other error",
        }
    }
}

impl std::fmt::Display for ProbeOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeOutcome::Healthy { status } => write!(f, "healthy (HTTP {status})"),
            ProbeOutcome::Dns(d) => write!(f, "DNS failure: {d}"),
            ProbeOutcome::Refused(d) => write!(f, "connection refused: {d}"),
            ProbeOutcome::Tls(d) => write!(f, "TLS error: {d}"),
            ProbeOutcome::Timeout => write!(f, "timeout: no answer within the probe timeout"),
            ProbeOutcome::BodyTooLarge => write!(
                f,
                "the body passed {} MiB, where berth stops reading; a health endpoint should answer briefly",
                BODY_CAP >> 20
            ),
            ProbeOutcome::Redirect(d) => write!(f, "redirect refused: {d}"),
            ProbeOutcome::Http { status, body } => write!(f, "HTTP {status}, body: {body}"),
            ProbeOutcome::JsonMismatch {
                pointer,
                expected,
                actual,
            } => {
                write!(
                    f,
                    "JSON mismatch at {pointer}: expected {expected}, got {actual}"
                )
            }
            ProbeOutcome::Other(d) => write!(f, "{d}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub offset: Duration,
    pub outcome: ProbeOutcome,
}

/// The record of one health wait.
#[derive(Debug, Clone, Default)]
pub struct HealthRecord {
    pub url: String,
    pub attempts: Vec<Attempt>,
    pub healthy_after: Option<Duration>,
    pub deadline: Duration,
}

impl HealthRecord {
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for a in &self.attempts {
            *m.entry(a.outcome.kind()).or_insert(0) += 1;
        }
        m
    }

    pub fn last_failure(&self) -> Option<&Attempt> {
        self.attempts
            .iter()
            .rev()
            .find(|a| !matches!(a.outcome, ProbeOutcome::Healthy { .. }))
    }

    /// "last: HTTP 500 ...; 12 attempts: 3 connection refused, 9 HTTP status".
    pub fn failure_summary(&self) -> String {
        let counts = self
            .counts()
            .into_iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ");
        let last = self
            .last_failure()
            .map(|a| a.outcome.to_string())
            .unwrap_or_else(|| "the deadline passed before the first probe".into());
        format!(
            "last: {last}; {} attempt(s) in {:.1}s: {counts}",
            self.attempts.len(),
            self.deadline.as_secs_f64()
        )
    }
}

pub struct HealthProbe {
    client: reqwest::Client,
    url: Url,
    status: StatusMatcher,
    json: Vec<JsonExpectation>,
    headers: Vec<(String, String)>,
    pub interval: Duration,
    pub timeout: Duration,
}

impl HealthProbe {
    /// Redirects are followed only within the health URL's origin (scheme, host and port),
    /// at most [`MAX_REDIRECTS`] times. `health-headers` carry secrets, and reqwest strips
    /// only `Authorization` and `Cookie` on a cross-host redirect: an app (or anyone who
    /// can make it redirect) must not receive an `X-Api-Key` at another host, nor see an
    /// https probe go on over http.
    pub fn from_config(settings: &HealthSettings, url: &Url) -> Result<HealthProbe, HealthError> {
        HealthProbe::build(settings, url, true)
    }

    /// A probe that opens a new connection for every request, as a new visitor does (see
    /// [`UserProbe`]).
    pub fn fresh_connections(
        settings: &HealthSettings,
        url: &Url,
    ) -> Result<HealthProbe, HealthError> {
        HealthProbe::build(settings, url, false)
    }

    fn build(settings: &HealthSettings, url: &Url, pool: bool) -> Result<HealthProbe, HealthError> {
        let origin = url.origin();
        let shown_origin = origin.ascii_serialization();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            if attempt.url().origin() != origin {
                let to = redact_url(attempt.url());
                return attempt.error(format!(
                    "the app redirected to {to}, outside {shown_origin}; berth follows redirects only within the health URL's origin, so that `health-headers` go nowhere else. Point `health-url` at the final URL"
                ));
            }
            attempt.follow()
        });
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(PROBE_TIMEOUT)
            .redirect(policy)
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")));
        if !pool {
            builder = builder.pool_max_idle_per_host(0);
        }
        if let Some(pem) = &settings.ca_cert {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| HealthError::BadCa(e.to_string()))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if settings.insecure_tls {
            builder = builder.danger_accept_invalid_certs(true);
        }
        Ok(HealthProbe {
            client: builder
                .build()
                .map_err(|e| HealthError::Client(e.to_string()))?,
            url: url.clone(),
            status: settings.status.clone(),
            json: settings.json.clone(),
            headers: settings
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_string()))
                .collect(),
            interval: settings.interval,
            timeout: settings.timeout,
        })
    }

    /// The URL as it may be printed: without the password of `https://user:pw@host`.
    pub fn shown_url(&self) -> String {
        redact_url(&self.url)
    }

    /// One GET, bounded by `limit`.
    pub async fn probe(&self, limit: Duration) -> ProbeOutcome {
        let mut req = self.client.get(self.url.clone()).timeout(limit);
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return classify(&e.without_url()),
        };
        let status = resp.status().as_u16();
        let body = match tokio::time::timeout(limit, read_capped(resp)).await {
            Ok(Ok(Some(b))) => b,
            Ok(Ok(None)) => return ProbeOutcome::BodyTooLarge,
            Ok(Err(e)) => return classify(&e.without_url()),
            Err(_) => return ProbeOutcome::Timeout,
        };
        judge(status, &body, &self.status, &self.json)
    }

    /// Probes until healthy or the deadline. Each probe is bounded by the time left, so the
    /// wait never overruns; the first passing answer ends it.
    pub async fn wait(
        &self,
        started: Instant,
        mut on_attempt: impl FnMut(&Attempt),
    ) -> HealthRecord {
        let deadline = started + self.timeout;
        let mut record = HealthRecord {
            url: self.shown_url(),
            deadline: self.timeout,
            ..Default::default()
        };
        loop {
            let now = Instant::now();
            if now >= deadline {
                return record;
            }
            let limit = (deadline - now).min(PROBE_TIMEOUT);
            let outcome = self.probe(limit).await;
            // A probe that only timed out because the deadline cut it short says nothing new;
            // keep the last real reason (say, HTTP 500) as the verdict's.
            if outcome == ProbeOutcome::Timeout
                && limit < PROBE_TIMEOUT
                && !record.attempts.is_empty()
            {
                return record;
            }
            let attempt = Attempt {
                offset: started.elapsed(),
                outcome,
            };
            on_attempt(&attempt);
            let healthy = matches!(attempt.outcome, ProbeOutcome::Healthy { .. });
            record.attempts.push(attempt);
            if healthy {
                record.healthy_after = Some(started.elapsed());
                return record;
            }
            let next = Instant::now() + self.interval;
            if next >= deadline {
                tokio::time::sleep_until(deadline.into()).await;
                return record;
            }
            tokio::time::sleep_until(next.into()).await;
        }
    }
}

/// The body in chunks, or `None` once it passes [`BODY_CAP`].
async fn read_capped(mut resp: reqwest::Response) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if resp.content_length().is_some_and(|n| n > BODY_CAP as u64) {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > BODY_CAP {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// Status, then each JSON pointer, against the expectations.
pub fn judge(
    status: u16,
    body: &[u8],
    matcher: &StatusMatcher,
    json: &[JsonExpectation],
) -> ProbeOutcome {
    // Scrubbed whole before the cut: a cut first could leave half a secret no mask matches.
    let excerpt = || {
        let whole = String::from_utf8_lossy(body).replace('\n', " ");
        crate::secret::excerpt(&crate::secret::registered(), &whole, BODY_EXCERPT)
    };
    if !matcher.accepts(status) {
        return ProbeOutcome::Http {
            status,
            body: excerpt(),
        };
    }
    if !json.is_empty() {
        let doc: serde_json::Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) => {
                return ProbeOutcome::JsonMismatch {
                    pointer: json[0].pointer.clone(),
                    expected: format!("{:?}", json[0].value),
                    actual: format!("a body that is not JSON: {}", excerpt()),
                }
            }
        };
        for exp in json {
            let actual = doc.pointer(&exp.pointer);
            let matches = match actual {
                Some(serde_json::Value::String(s)) => s == &exp.value,
                // `true`, `200`, `null`: compare as JSON, not as text.
                Some(other) => {
                    serde_json::from_str::<serde_json::Value>(&exp.value)
                        .ok()
                        .as_ref()
                        == Some(other)
                }
                None => false,
            };
            if !matches {
                return ProbeOutcome::JsonMismatch {
                    pointer: exp.pointer.clone(),
                    expected: format!("{:?}", exp.value),
                    actual: actual
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "nothing (the pointer is absent)".into()),
                };
            }
        }
    }
    ProbeOutcome::Healthy { status }
}

fn classify(e: &reqwest::Error) -> ProbeOutcome {
    let chain = crate::error_chain(e);
    let lower = chain.to_ascii_lowercase();
    if e.is_timeout() {
        ProbeOutcome::Timeout
    } else if e.is_redirect() {
        ProbeOutcome::Redirect(redirect_reason(e))
    } else if lower.contains("dns error")
        || lower.contains("failed to lookup address")
        || lower.contains("name or service not known")
    {
        ProbeOutcome::Dns(chain)
    } else if lower.contains("connection refused") {
        ProbeOutcome::Refused(chain)
    } else if lower.contains("certificate")
        || lower.contains("tls")
        || lower.contains("handshake")
        || lower.contains("invalid peer")
    {
        ProbeOutcome::Tls(chain)
    } else {
        ProbeOutcome::Other(chain)
    }
}

/// The policy's own words, without reqwest's wrapping (which would print the URL again).
fn redirect_reason(e: &reqwest::Error) -> String {
    let mut source = std::error::Error::source(e);
    let mut last = e.to_string();
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::StatusRule;

    fn ok200() -> StatusMatcher {
        StatusMatcher(vec![StatusRule::Code(200)])
    }

    #[test]
    fn status_and_json_are_judged() {
        let exp = vec![JsonExpectation {
            pointer: "/data/status".into(),
            value: "healthy".into(),
        }];
        let good = br#"{"success":true,"data":{"status":"healthy"}}"#;
        assert_eq!(
            judge(200, good, &ok200(), &exp),
            ProbeOutcome::Healthy { status: 200 }
        );
        let degraded = br#"{"data":{"status":"degraded"}}"#;
        assert_eq!(
            judge(200, degraded, &ok200(), &exp),
            ProbeOutcome::JsonMismatch {
                pointer: "/data/status".into(),
                expected: "\"healthy\"".into(),
                actual: "\"degraded\"".into()
            }
        );
        assert!(
            matches!(judge(500, b"boom", &ok200(), &exp), ProbeOutcome::Http { status: 500, ref body } if body == "boom")
        );
        let big = vec![b'x'; 2000];
        assert!(
            matches!(judge(503, &big, &ok200(), &[]), ProbeOutcome::Http { ref body, .. } if body.len() == BODY_EXCERPT)
        );
    }

    #[test]
    fn a_secret_across_the_body_excerpt_cut_is_masked_not_halved() {
        let secret = "health-body-secret-7719";
        crate::secret::register(&crate::secret::Secret::new(secret));
        // Whole in the body, but across byte 512: a cut first left `health-body-secr`.
        let body = format!("{}{secret} and more", "a".repeat(BODY_EXCERPT - 8));
        let ProbeOutcome::Http { body: shown, .. } = judge(503, body.as_bytes(), &ok200(), &[])
        else {
            panic!("a 503 is an HTTP failure");
        };
        assert!(shown.len() <= BODY_EXCERPT, "{}", shown.len());
        assert!(
            shown.starts_with(&format!("{}***", "a".repeat(BODY_EXCERPT - 8))),
            "{shown}"
        );
        assert!(!shown.contains("health-b"), "{shown}");
        // A start of the secret at the cut edge, whatever follows it, is masked too.
        let cut = format!("{}health-body-seXXX", "b".repeat(BODY_EXCERPT - 14));
        let ProbeOutcome::Http { body: shown, .. } = judge(503, cut.as_bytes(), &ok200(), &[])
        else {
            panic!("a 503 is an HTTP failure");
        };
        assert!(!shown.contains("health-b"), "{shown}");
    }

    #[test]
    fn non_string_json_values_compare_by_their_text() {
        let exp = vec![JsonExpectation {
            pointer: "/success".into(),
            value: "true".into(),
        }];
        assert_eq!(
            judge(200, br#"{"success":true}"#, &ok200(), &exp),
            ProbeOutcome::Healthy { status: 200 }
        );
    }
}

/// What users saw while a release was switched: the public URL probed in the background,
/// about 20 times a second, from the first new container to the end of the drain. Each
/// probe opens its own connection: a proxy closes idle keep-alive connections when it loads
/// a config (Caddy does on every load), which clients retry (browsers, RFC 9112 9.3.1), so
/// a reused connection would measure the client's retry policy, not the switch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    pub url: String,
    pub total: u64,
    pub failed: u64,
    /// The longest run of failures, from the first failed probe to the next good one (or
    /// to the end of the measurement).
    pub longest_gap: Duration,
    /// The first failures, each with its offset from the start.
    pub failures: Vec<String>,
    pub measured: Duration,
}

impl Tally {
    /// "0 of 412 probes failed (longest gap 0 ms)".
    pub fn headline(&self) -> String {
        format!(
            "{} of {} probes of {} failed (longest gap {} ms)",
            self.failed,
            self.total,
            self.url,
            self.longest_gap.as_millis()
        )
    }
}

/// How often the background probe asks: at most about 20 a second.
pub const USER_PROBE_EVERY: Duration = Duration::from_millis(50);
/// Failures kept by name in the tally.
const FAILURES_KEPT: usize = 5;

/// The background probe; [`UserProbe::stop`] ends it and returns the tally.
pub struct UserProbe {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Tally>,
}

impl UserProbe {
    /// Starts probing `probe`'s URL as a user reaches it (no candidate header).
    pub fn start(probe: HealthProbe) -> UserProbe {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut tally = Tally {
                url: probe.shown_url(),
                ..Default::default()
            };
            let mut failing_since: Option<Instant> = None;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let at = Instant::now();
                let outcome = probe.probe(Duration::from_secs(2)).await;
                tally.total += 1;
                match outcome {
                    ProbeOutcome::Healthy { .. } => {
                        if let Some(since) = failing_since.take() {
                            tally.longest_gap = tally.longest_gap.max(since.elapsed());
                        }
                    }
                    other => {
                        tally.failed += 1;
                        failing_since.get_or_insert(at);
                        if tally.failures.len() < FAILURES_KEPT {
                            tally.failures.push(format!(
                                "{:.2}s: {other}",
                                at.duration_since(started).as_secs_f64()
                            ));
                        }
                    }
                }
                tokio::time::sleep(USER_PROBE_EVERY.saturating_sub(at.elapsed())).await;
            }
            if let Some(since) = failing_since {
                tally.longest_gap = tally.longest_gap.max(since.elapsed());
            }
            tally.measured = started.elapsed();
            tally
        });
        UserProbe { stop, task }
    }

    pub async fn stop(self) -> Tally {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

impl HealthProbe {
    /// The same probe with one more request header (the edge's candidate header).
    pub fn with_header(&self, name: &str, value: &str) -> HealthProbe {
        let mut headers = self.headers.clone();
        headers.push((name.to_string(), value.to_string()));
        HealthProbe {
            client: self.client.clone(),
            url: self.url.clone(),
            status: self.status.clone(),
            json: self.json.clone(),
            headers,
            interval: self.interval,
            timeout: self.timeout,
        }
    }
}
