//! The GitHub REST API, through octocrab. Nothing outside this module imports octocrab.
//!
//! GETs are conditional (`If-None-Match` with the last ETag): a 304 does not count against
//! the 1,000 requests/hour of `GITHUB_TOKEN`. GETs honour `retry-after`, an exhausted
//! `x-ratelimit-remaining` and back off on 5xx; POSTs are never re-sent.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::header::{HeaderMap, HeaderValue};
use octocrab::Octocrab;
use serde::Deserialize;

use crate::secret::Secret;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
const SERVER_ERROR_RETRIES: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    #[error("cannot set up the GitHub client for {api_url}: {detail}")]
    Client { api_url: String, detail: String },
    #[error("GET {path} failed: {detail}. Check GITHUB_API_URL and the runner's network.")]
    Request { path: String, detail: String },
    #[error("GET {path} got no answer within {REQUEST_TIMEOUT:?}.")]
    Timeout { path: String },
    #[error("GitHub rejected the token (401) for {path}. Pass a valid `github-token` (the default `${{{{ github.token }}}}` works).")]
    Unauthorized { path: String },
    #[error("GitHub refused {path} (403): {message}. The token lacks a permission: add `permissions: actions: read` (CI gate) or `deployments: write` to the job.")]
    Forbidden { path: String, message: String },
    #[error("GitHub has no {path} (404). Check the workflow name or file and that the token can see this repository.")]
    NotFound { path: String },
    #[error("GitHub's rate limit is exhausted until {} from now, past berth's deadline. Re-run later, or lower `ci-poll-interval` traffic by gating on fewer workflows.", crate::report::Rounded(*reset_in))]
    RateLimited { reset_in: Duration },
    #[error("GitHub answered {status} for {path} after {SERVER_ERROR_RETRIES} retries.")]
    Server { path: String, status: u16 },
    #[error("GitHub answered {path} with a body berth cannot read: {detail}")]
    Decode { path: String, detail: String },
}

/// Request counts, for the report: requests sent and how many were answered 304.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApiStats {
    pub requests: u32,
    pub not_modified: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct WorkflowRun {
    pub id: u64,
    pub name: Option<String>,
    pub run_number: u64,
    #[serde(default = "one")]
    pub run_attempt: u64,
    pub head_sha: String,
    pub status: Option<String>,
    pub conclusion: Option<String>,
    pub html_url: String,
    pub event: String,
    pub workflow_id: u64,
    #[serde(default)]
    pub path: String,
    /// Where the tested code lives: a fork's pull request names the fork here.
    #[serde(default)]
    pub head_repository: Option<RepositoryRef>,
    /// The repository the run ran in.
    #[serde(default)]
    pub repository: Option<RepositoryRef>,
    #[serde(default)]
    pub head_branch: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct RepositoryRef {
    pub full_name: String,
}

impl WorkflowRun {
    /// Whether the run tested code of the repository it ran in (not a fork's).
    pub fn is_from_own_repository(&self) -> bool {
        match (&self.head_repository, &self.repository) {
            (Some(head), Some(base)) => {
                !head.full_name.is_empty() && head.full_name.eq_ignore_ascii_case(&base.full_name)
            }
            _ => false,
        }
    }
}

fn one() -> u64 {
    1
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Workflow {
    pub id: u64,
    pub name: String,
    pub path: String,
}

pub struct GithubApi {
    client: Octocrab,
    repository: String,
    api_url: String,
    cache: Mutex<HashMap<String, (String, String)>>,
    stats: Mutex<ApiStats>,
}

impl GithubApi {
    pub fn new(api_url: &str, token: &Secret, repository: &str) -> Result<GithubApi, GithubError> {
        let client_err = |detail: String| GithubError::Client {
            api_url: api_url.into(),
            detail,
        };
        let mut builder = Octocrab::builder()
            .base_uri(api_url)
            .map_err(|e| client_err(e.to_string()))?
            .set_connect_timeout(Some(Duration::from_secs(10)))
            .set_read_timeout(Some(REQUEST_TIMEOUT));
        if !token.is_empty() {
            builder = builder.personal_token(token.expose().to_string());
        }
        let client = builder.build().map_err(|e| client_err(e.to_string()))?;
        Ok(GithubApi {
            client,
            repository: repository.into(),
            api_url: api_url.trim_end_matches('/').into(),
            cache: Mutex::new(HashMap::new()),
            stats: Mutex::new(ApiStats::default()),
        })
    }

    pub fn stats(&self) -> ApiStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, not_modified: bool) {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        s.requests += 1;
        if not_modified {
            s.not_modified += 1;
        }
    }

    /// A conditional GET of `path` (relative to the API root), retried on rate limits and
    /// 5xx until `deadline`. Returns the body and the `rel="next"` path, if any.
    async fn get(
        &self,
        path: &str,
        deadline: Instant,
    ) -> Result<(String, Option<String>), GithubError> {
        let mut server_errors = 0;
        loop {
            let cached = self.cached(path);
            let headers = conditional_headers(cached.as_ref().map(|(etag, _)| etag.as_str()));
            let sent = tokio::time::timeout(
                REQUEST_TIMEOUT,
                self.client._get_with_headers(path, Some(headers)),
            )
            .await;
            let response = match sent {
                Err(_) => {
                    self.count(false);
                    return Err(GithubError::Timeout { path: path.into() });
                }
                Ok(Err(e)) => {
                    self.count(false);
                    return Err(request_error(path, &e));
                }
                Ok(Ok(r)) => r,
            };
            let status = response.status().as_u16();
            self.count(status == 304);
            tracing::debug!(path, status, "GitHub API");
            let head = response.headers().clone();
            let next = next_link(&head).map(|u| self.relative(&u));
            if status == 304 {
                if let Some((_, body)) = cached {
                    return Ok((body, next));
                }
            }
            let body = self
                .client
                .body_to_string(response)
                .await
                .map_err(|e| request_error(path, &e))?;
            if (200..=299).contains(&status) {
                self.remember(path, &head, &body);
                return Ok((body, next));
            }
            wait_to_retry(path, status, &head, &body, deadline, &mut server_errors).await?;
        }
    }

    /// The ETag and body of the last 2xx answer for `path`.
    fn cached(&self, path: &str) -> Option<(String, String)> {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            .cloned()
    }

    fn remember(&self, path: &str, head: &HeaderMap, body: &str) {
        if let Some(etag) = head.get("etag").and_then(|v| v.to_str().ok()) {
            self.cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(path.into(), (etag.into(), body.into()));
        }
    }

    /// An absolute `Link` URL as a path relative to the API root, so the token is sent.
    fn relative(&self, url: &str) -> String {
        match url.strip_prefix(&self.api_url) {
            Some(rest) => rest.to_string(),
            None => url::Url::parse(url)
                .map(|u| {
                    format!(
                        "{}{}",
                        u.path(),
                        u.query().map(|q| format!("?{q}")).unwrap_or_default()
                    )
                })
                .unwrap_or_else(|_| url.to_string()),
        }
    }

    /// Every run of one workflow (file name or id) for `head_sha`, across all pages.
    pub async fn workflow_runs(
        &self,
        workflow: &str,
        head_sha: &str,
        deadline: Instant,
    ) -> Result<Vec<WorkflowRun>, GithubError> {
        #[derive(Deserialize)]
        struct Page {
            workflow_runs: Vec<WorkflowRun>,
        }
        let mut path = Some(format!(
            "/repos/{}/actions/workflows/{}/runs?head_sha={head_sha}&per_page=100",
            self.repository,
            urlencode(workflow)
        ));
        let mut runs = Vec::new();
        while let Some(p) = path.take() {
            let (body, next) = self.get(&p, deadline).await?;
            let page: Page = decode(&p, &body)?;
            runs.extend(page.workflow_runs);
            path = next;
        }
        Ok(runs)
    }

    /// The repository's workflows, across all pages.
    pub async fn workflows(&self, deadline: Instant) -> Result<Vec<Workflow>, GithubError> {
        #[derive(Deserialize)]
        struct Page {
            workflows: Vec<Workflow>,
        }
        let mut path = Some(format!(
            "/repos/{}/actions/workflows?per_page=100",
            self.repository
        ));
        let mut out = Vec::new();
        while let Some(p) = path.take() {
            let (body, next) = self.get(&p, deadline).await?;
            let page: Page = decode(&p, &body)?;
            out.extend(page.workflows);
            path = next;
        }
        Ok(out)
    }
}

impl GithubApi {
    /// The commit at the head of the branch `refs/heads/{branch}`, or `None` when the
    /// repository has no such branch. Asks for the branch, never a bare name a tag could
    /// answer to.
    pub async fn branch_head(
        &self,
        branch: &str,
        deadline: Instant,
    ) -> Result<Option<String>, GithubError> {
        #[derive(Deserialize)]
        struct Branch {
            commit: Commit,
        }
        #[derive(Deserialize)]
        struct Commit {
            sha: String,
        }
        let path = format!(
            "/repos/{}/branches/{}",
            self.repository,
            // A branch name's `/` stays a separator, as GitHub's own links have it.
            branch
                .split('/')
                .map(urlencode)
                .collect::<Vec<_>>()
                .join("/")
        );
        let Some(body) = self.get_found(&path, deadline).await? else {
            return Ok(None);
        };
        let branch: Branch = decode(&path, &body)?;
        Ok(Some(branch.commit.sha))
    }

    /// How `head` compares with `base` (two commit shas): `identical`, `behind` (`head` is
    /// in `base`'s history), `ahead` or `diverged`; `None` when GitHub knows no such commit.
    pub async fn compare(
        &self,
        base: &str,
        head: &str,
        deadline: Instant,
    ) -> Result<Option<String>, GithubError> {
        #[derive(Deserialize)]
        struct Comparison {
            status: String,
        }
        let path = format!(
            "/repos/{}/compare/{}...{}?per_page=1",
            self.repository,
            urlencode(base),
            urlencode(head)
        );
        let Some(body) = self.get_found(&path, deadline).await? else {
            return Ok(None);
        };
        let comparison: Comparison = decode(&path, &body)?;
        Ok(Some(comparison.status))
    }

    /// A GET whose 404 is an answer (`None`), not an error.
    async fn get_found(
        &self,
        path: &str,
        deadline: Instant,
    ) -> Result<Option<String>, GithubError> {
        match self.get(path, deadline).await {
            Ok((body, _)) => Ok(Some(body)),
            Err(GithubError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(path: &str, body: &str) -> Result<T, GithubError> {
    serde_json::from_str(body).map_err(|e| GithubError::Decode {
        path: path.into(),
        detail: e.to_string(),
    })
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DeploymentRequest {
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub environment: String,
    pub description: String,
    pub auto_merge: bool,
    pub required_contexts: Vec<String>,
    pub transient_environment: bool,
    pub production_environment: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DeploymentStatus {
    pub state: String,
    pub description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_url: Option<String>,
    pub environment: String,
}

/// What creating a deployment gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeploymentCreated {
    Created(u64),
    /// 202: GitHub merged the default branch instead and made no deployment.
    NotCreated(String),
}

impl GithubApi {
    /// One POST, never re-sent: a retried POST could create a second deployment.
    async fn post(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<(u16, String), GithubError> {
        let sent = tokio::time::timeout(REQUEST_TIMEOUT, self.client._post(path, Some(body))).await;
        self.count(false);
        let response = match sent {
            Err(_) => return Err(GithubError::Timeout { path: path.into() }),
            Ok(Err(e)) => {
                return Err(GithubError::Request {
                    path: path.into(),
                    detail: crate::error_chain(&e),
                })
            }
            Ok(Ok(r)) => r,
        };
        let status = response.status().as_u16();
        let text =
            self.client
                .body_to_string(response)
                .await
                .map_err(|e| GithubError::Request {
                    path: path.into(),
                    detail: crate::error_chain(&e),
                })?;
        match status {
            200..=299 => Ok((status, text)),
            _ => Err(status_error(path, status, &text)),
        }
    }

    pub async fn create_deployment(
        &self,
        req: &DeploymentRequest,
    ) -> Result<DeploymentCreated, GithubError> {
        let path = format!("/repos/{}/deployments", self.repository);
        let (status, body) = self.post(&path, req).await?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| GithubError::Decode {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        if status == 202 {
            return Ok(DeploymentCreated::NotCreated(api_message(&body)));
        }
        v["id"]
            .as_u64()
            .map(DeploymentCreated::Created)
            .ok_or(GithubError::Decode {
                path,
                detail: "no `id` in the answer".into(),
            })
    }

    pub async fn create_deployment_status(
        &self,
        id: u64,
        status: &DeploymentStatus,
    ) -> Result<(), GithubError> {
        let path = format!("/repos/{}/deployments/{id}/statuses", self.repository);
        self.post(&path, status).await.map(|_| ())
    }
}

/// The headers of every GET; with the ETag of a cached answer, GitHub answers 304 when
/// nothing changed, and a 304 does not count against the rate limit.
fn conditional_headers(etag: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        "accept",
        HeaderValue::from_static("application/vnd.github+json"),
    );
    headers.insert(
        "x-github-api-version",
        HeaderValue::from_static("2022-11-28"),
    );
    if let Some(v) = etag.and_then(|etag| HeaderValue::from_str(etag).ok()) {
        headers.insert("if-none-match", v);
    }
    headers
}

/// Waits before a GET is sent again, when GitHub's non-2xx answer says a retry can
/// succeed before `deadline`: after a rate limit resets, or a backoff after a 5xx (at most
/// [`SERVER_ERROR_RETRIES`] times). Otherwise the error the answer means.
async fn wait_to_retry(
    path: &str,
    status: u16,
    head: &HeaderMap,
    body: &str,
    deadline: Instant,
    server_errors: &mut u32,
) -> Result<(), GithubError> {
    match status {
        403 | 429 => match rate_limit_wait(head) {
            Some(wait) if wait <= deadline.saturating_duration_since(Instant::now()) => {
                tracing::info!("GitHub rate limit on {path}: waiting {wait:?}");
                tokio::time::sleep(wait).await;
                Ok(())
            }
            Some(wait) => Err(GithubError::RateLimited { reset_in: wait }),
            None => Err(status_error(path, status, body)),
        },
        500..=599 if *server_errors < SERVER_ERROR_RETRIES => {
            *server_errors += 1;
            let backoff = Duration::from_millis(500 * 2u64.pow(*server_errors - 1));
            if Instant::now() + backoff > deadline {
                return Err(status_error(path, status, body));
            }
            tokio::time::sleep(backoff).await;
            Ok(())
        }
        _ => Err(status_error(path, status, body)),
    }
}

fn request_error(path: &str, e: &dyn std::error::Error) -> GithubError {
    GithubError::Request {
        path: path.into(),
        detail: crate::error_chain(e),
    }
}

/// The error for a non-2xx answer that is not retried.
fn status_error(path: &str, status: u16, body: &str) -> GithubError {
    let path = path.to_string();
    match status {
        401 => GithubError::Unauthorized { path },
        404 => GithubError::NotFound { path },
        403 => GithubError::Forbidden {
            path,
            message: api_message(body),
        },
        500..=599 => GithubError::Server { path, status },
        _ => GithubError::Forbidden {
            path,
            message: format!("HTTP {status}: {}", api_message(body)),
        },
    }
}

/// How long GitHub asks us to wait: `retry-after` (secondary limits), or until
/// `x-ratelimit-reset` when `x-ratelimit-remaining` is 0. `None` for a plain 403.
pub fn rate_limit_wait(headers: &HeaderMap) -> Option<Duration> {
    let num = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    if let Some(secs) = num("retry-after") {
        return Some(Duration::from_secs(secs));
    }
    if num("x-ratelimit-remaining") == Some(0) {
        let reset = num("x-ratelimit-reset")?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs();
        return Some(Duration::from_secs(reset.saturating_sub(now) + 1));
    }
    None
}

/// The `rel="next"` target of a `Link` header.
pub fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = headers.get("link")?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| {
                url.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
    })
}

fn api_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(String::from))
        .unwrap_or_else(|| crate::secret::excerpt(&crate::secret::registered(), body, 200))
}

/// Encoded for a path segment or a query value: `/`, `#`, `?`, `%` cannot change the
/// request (git allows no space in a ref name, which this would make `+`).
fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_link_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            "link",
            HeaderValue::from_static("<https://api.github.com/x?page=1>; rel=\"prev\", <https://api.github.com/x?page=3>; rel=\"next\""),
        );
        assert_eq!(
            next_link(&h).as_deref(),
            Some("https://api.github.com/x?page=3")
        );
    }

    #[test]
    fn retry_after_wins_and_plain_403_does_not_wait() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(rate_limit_wait(&h), Some(Duration::from_secs(2)));
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("10"));
        assert_eq!(rate_limit_wait(&h), None);
    }
}
