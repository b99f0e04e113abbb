//! The one fake: a local GitHub API that serves GitHub's own example bodies
//! (tests/fixtures/github-api, copied from ../shared) with ids, shas and statuses adjusted
//! per test, and real behaviour: ETag/304 (not counted against the rate limit), rate-limit
//! headers, pagination, scripted status transitions, injected 403/500 answers. It records every
//! request so tests can assert what berth sent.

use std::collections::{hash_map::DefaultHasher, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{json, Value};
use tiny_http::{Header, Response, Server};

pub const REPO: &str = "acme/shop";

/// GitHub's example bodies, as this repository carries them: a verbatim copy of
/// `../shared/fixtures/github-api` (MIT), kept identical by
/// `the_fixtures_carried_here_are_the_shared_ones`, so a clone anywhere runs the tests.
pub fn fixtures_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/github-api")
}

pub fn fixture(name: &str) -> Value {
    let path = fixtures_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

#[derive(Debug, Clone)]
pub struct FakeRun {
    pub id: u64,
    pub attempt: u64,
    pub head_sha: String,
    pub event: String,
    /// The repository whose code the run tested: a fork's pull request names the fork.
    pub head_repo: String,
    pub head_branch: String,
    /// (status, conclusion) per poll of this workflow's runs; the last one sticks.
    pub script: Vec<(&'static str, Option<&'static str>)>,
}

impl FakeRun {
    pub fn new(
        id: u64,
        head_sha: &str,
        script: &[(&'static str, Option<&'static str>)],
    ) -> FakeRun {
        FakeRun {
            id,
            attempt: 1,
            head_sha: head_sha.into(),
            event: "push".into(),
            head_repo: REPO.into(),
            head_branch: "main".into(),
            script: script.to_vec(),
        }
    }

    /// A pull request run for the same sha, from this repository's own branch.
    pub fn pull_request(mut self) -> FakeRun {
        self.event = "pull_request".into();
        self.head_branch = "feature".into();
        self
    }

    /// A pull request run from a fork: its code lives in `fork`.
    pub fn forked(mut self, fork: &str) -> FakeRun {
        self.event = "pull_request".into();
        self.head_repo = fork.into();
        self.head_branch = "main".into();
        self
    }

    pub fn attempt(mut self, n: u64) -> FakeRun {
        self.attempt = n;
        self
    }
}

pub const SUCCESS: (&str, Option<&str>) = ("completed", Some("success"));
pub const FAILURE: (&str, Option<&str>) = ("completed", Some("failure"));
pub const CANCELLED: (&str, Option<&str>) = ("completed", Some("cancelled"));
pub const IN_PROGRESS: (&str, Option<&str>) = ("in_progress", None);
pub const QUEUED: (&str, Option<&str>) = ("queued", None);

#[derive(Debug, Clone, Copy)]
pub enum Fault {
    SecondaryRateLimit {
        retry_after: u64,
    },
    /// The hourly limit used up: 403 with `x-ratelimit-remaining: 0`, resetting in
    /// `reset_in` seconds.
    PrimaryRateLimit {
        reset_in: u64,
    },
    ServerError,
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub url: String,
    pub status: u16,
    pub if_none_match: Option<String>,
    pub authorization: Option<String>,
    pub body: String,
    pub at: std::time::Instant,
}

struct Workflow {
    id: u64,
    name: String,
    file: String,
    runs: Vec<FakeRun>,
    polls: usize,
}

/// A branch (`refs/heads/<name>`): its head, and older commits in its history.
struct Branch {
    name: String,
    head: String,
    history: Vec<String>,
}

#[derive(Default)]
struct State {
    workflows: Vec<Workflow>,
    branches: Vec<Branch>,
    faults: VecDeque<Fault>,
    requests: Vec<Recorded>,
    remaining: u64,
    per_page_cap: Option<usize>,
    deployments_forbidden: bool,
    deployments_merged: bool,
    next_deployment: u64,
}

pub struct FakeGithub {
    pub url: String,
    state: Arc<Mutex<State>>,
    server: Arc<Server>,
    thread: Option<JoinHandle<()>>,
}

impl FakeGithub {
    pub fn start() -> FakeGithub {
        let server = Arc::new(Server::http("127.0.0.1:0").expect("bind fake GitHub"));
        let url = format!("http://{}", server.server_addr().to_ip().unwrap());
        let state = Arc::new(Mutex::new(State {
            remaining: 1000,
            ..Default::default()
        }));
        let (srv, st, base) = (server.clone(), state.clone(), url.clone());
        let thread = std::thread::spawn(move || {
            for mut req in srv.incoming_requests() {
                let mut body = String::new();
                let _ = req.as_reader().read_to_string(&mut body);
                let header = |name: &'static str| {
                    req.headers()
                        .iter()
                        .find(|h| h.field.equiv(name))
                        .map(|h| h.value.as_str().to_string())
                };
                let (if_none_match, authorization) =
                    (header("If-None-Match"), header("Authorization"));
                let (status, headers, text) = handle(
                    &mut st.lock().unwrap(),
                    &base,
                    req.method().as_str(),
                    req.url(),
                    if_none_match.as_deref(),
                    &body,
                );
                st.lock().unwrap().requests.push(Recorded {
                    method: req.method().to_string(),
                    url: req.url().to_string(),
                    status,
                    if_none_match,
                    authorization,
                    body,
                    at: std::time::Instant::now(),
                });
                let mut resp = Response::from_string(text).with_status_code(status);
                for (k, v) in headers {
                    resp.add_header(Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap());
                }
                let _ = req.respond(resp);
            }
        });
        FakeGithub {
            url,
            state,
            server,
            thread: Some(thread),
        }
    }

    pub fn workflow(&self, id: u64, name: &str, file: &str) -> &Self {
        self.state.lock().unwrap().workflows.push(Workflow {
            id,
            name: name.into(),
            file: file.into(),
            runs: vec![],
            polls: 0,
        });
        self
    }

    pub fn run(&self, file: &str, run: FakeRun) -> &Self {
        let mut st = self.state.lock().unwrap();
        let wf = st
            .workflows
            .iter_mut()
            .find(|w| w.file == file)
            .expect("declare the workflow first");
        wf.runs.push(run);
        self
    }

    /// A branch whose head is `head`, with `history` (older commits) behind it. Only
    /// branches declared here exist; a tag of the same name is none of them.
    pub fn branch(&self, name: &str, head: &str, history: &[&str]) -> &Self {
        self.state.lock().unwrap().branches.push(Branch {
            name: name.into(),
            head: head.into(),
            history: history.iter().map(|s| s.to_string()).collect(),
        });
        self
    }

    pub fn fault(&self, fault: Fault) -> &Self {
        self.state.lock().unwrap().faults.push_back(fault);
        self
    }

    pub fn per_page_cap(&self, n: usize) -> &Self {
        self.state.lock().unwrap().per_page_cap = Some(n);
        self
    }

    /// Answer deployment creation 202 with GitHub's "Auto-merged" example: no deployment.
    pub fn merge_instead_of_deploying(&self) -> &Self {
        self.state.lock().unwrap().deployments_merged = true;
        self
    }

    /// Answer deployment POSTs 403, as for a token without `deployments: write`.
    pub fn forbid_deployments(&self) -> &Self {
        self.state.lock().unwrap().deployments_forbidden = true;
        self
    }

    /// The (method, path, JSON body) of every deployment request, in order.
    pub fn deployment_requests(&self) -> Vec<(String, String, Value)> {
        self.requests()
            .into_iter()
            .filter(|r| r.url.contains("/deployments"))
            .map(|r| {
                (
                    r.method,
                    r.url,
                    serde_json::from_str(&r.body).unwrap_or(Value::Null),
                )
            })
            .collect()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Requests that counted against the rate limit: everything but 304s.
    pub fn counted(&self) -> usize {
        self.requests().iter().filter(|r| r.status != 304).count()
    }
}

impl Drop for FakeGithub {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Answer = (u16, Vec<(String, String)>, String);

fn query(url: &str) -> Vec<(String, String)> {
    url.split_once('?')
        .map(|(_, q)| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

fn rate_headers(st: &State) -> Vec<(String, String)> {
    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    vec![
        ("x-ratelimit-limit".into(), "1000".into()),
        ("x-ratelimit-remaining".into(), st.remaining.to_string()),
        ("x-ratelimit-used".into(), (1000 - st.remaining).to_string()),
        ("x-ratelimit-reset".into(), reset.to_string()),
        ("x-ratelimit-resource".into(), "core".into()),
        (
            "content-type".into(),
            "application/json; charset=utf-8".into(),
        ),
    ]
}

fn handle(
    st: &mut State,
    base: &str,
    method: &str,
    url: &str,
    if_none_match: Option<&str>,
    body: &str,
) -> Answer {
    // Any owner/repo is served as REPO: under act, GITHUB_REPOSITORY comes from the git remote.
    let raw_path = url.split('?').next().unwrap_or("");
    let canonical = match raw_path
        .strip_prefix("/repos/")
        .map(|r| r.splitn(3, '/').collect::<Vec<_>>())
    {
        Some(parts) if parts.len() == 3 => format!("/repos/{REPO}/{}", parts[2]),
        _ => raw_path.to_string(),
    };
    let path = canonical.as_str();
    let deployments = format!("/repos/{REPO}/deployments");
    if method == "POST" && path.starts_with(&deployments) {
        st.remaining = st.remaining.saturating_sub(1);
        if st.deployments_forbidden {
            let msg = json!({"message": "Resource not accessible by integration", "documentation_url": "https://docs.github.com/rest/deployments/deployments#create-a-deployment"});
            return (403, rate_headers(st), msg.to_string());
        }
        let req: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        if path == deployments && st.deployments_merged {
            let v = fixture("create-deployment.202.merged-branch.json");
            return (202, rate_headers(st), v.to_string());
        }
        if path == deployments {
            st.next_deployment += 1;
            let id = 1000 + st.next_deployment;
            let mut v = fixture("create-deployment.201.json");
            v["id"] = json!(id);
            v["sha"] = req["ref"].clone();
            v["ref"] = req["ref"].clone();
            v["environment"] = req["environment"].clone();
            v["description"] = req["description"].clone();
            v["url"] = json!(format!("{base}/repos/{REPO}/deployments/{id}"));
            return (201, rate_headers(st), v.to_string());
        }
        if path.ends_with("/statuses") {
            let mut v = fixture("create-deployment-status.201.json");
            v["state"] = req["state"].clone();
            v["description"] = req["description"].clone();
            v["environment_url"] = req["environment_url"].clone();
            v["log_url"] = req["log_url"].clone();
            return (201, rate_headers(st), v.to_string());
        }
    }
    let q = query(url);
    let param = |k: &str| q.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let runs_prefix = format!("/repos/{REPO}/actions/workflows/");
    if method == "GET" && path.starts_with(&runs_prefix) && path.ends_with("/runs") {
        if let Some(fault) = st.faults.pop_front() {
            return fault_answer(st, fault);
        }
        let key = &path[runs_prefix.len()..path.len() - "/runs".len()];
        let Some(wf) = st
            .workflows
            .iter_mut()
            .find(|w| w.file == key || w.id.to_string() == key)
        else {
            return (
                404,
                rate_headers(st),
                json!({"message": "Not Found"}).to_string(),
            );
        };
        let template =
            fixture("list-workflow-runs-for-workflow.200.json")["workflow_runs"][0].clone();
        let step = wf.polls;
        wf.polls += 1;
        let sha = param("head_sha");
        let mut runs: Vec<Value> = wf
            .runs
            .iter()
            .filter(|r| sha.as_deref().is_none_or(|s| s == r.head_sha))
            .map(|r| {
                let (status, conclusion) = r.script[step.min(r.script.len() - 1)];
                let mut v = template.clone();
                v["id"] = json!(r.id);
                v["name"] = json!(wf.name);
                v["run_number"] = json!(r.id);
                v["run_attempt"] = json!(r.attempt);
                v["head_sha"] = json!(r.head_sha);
                v["head_commit"]["id"] = json!(r.head_sha);
                v["status"] = json!(status);
                v["conclusion"] = json!(conclusion);
                v["event"] = json!(r.event);
                v["head_branch"] = json!(r.head_branch);
                v["repository"]["full_name"] = json!(REPO);
                v["head_repository"]["full_name"] = json!(r.head_repo);
                v["workflow_id"] = json!(wf.id);
                v["path"] = json!(format!(".github/workflows/{}", wf.file));
                v["html_url"] = json!(format!("https://github.com/{REPO}/actions/runs/{}", r.id));
                v["url"] = json!(format!("{base}/repos/{REPO}/actions/runs/{}", r.id));
                v
            })
            .collect();
        runs.sort_by_key(|r| std::cmp::Reverse(r["id"].as_u64()));
        let total = runs.len();
        let per_page: usize = param("per_page").and_then(|p| p.parse().ok()).unwrap_or(30);
        let per_page = st
            .per_page_cap
            .map_or(per_page, |cap| per_page.min(cap))
            .max(1);
        let page: usize = param("page")
            .and_then(|p| p.parse().ok())
            .unwrap_or(1)
            .max(1);
        let slice: Vec<Value> = runs
            .into_iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .collect();
        let body = json!({"total_count": total, "workflow_runs": slice}).to_string();
        let mut headers = rate_headers(st);
        if page * per_page < total {
            let mut next = url::Url::parse(&format!("{base}{url}")).unwrap();
            let kept: Vec<(String, String)> =
                q.iter().filter(|(k, _)| k != "page").cloned().collect();
            next.query_pairs_mut()
                .clear()
                .extend_pairs(kept)
                .append_pair("page", &(page + 1).to_string());
            headers.push(("link".into(), format!("<{next}>; rel=\"next\"")));
        }
        return conditional(st, headers, body, if_none_match);
    }
    if method == "GET" {
        if let Some(answer) = branch_answer(st, path, if_none_match) {
            return answer;
        }
    }
    if method == "GET" && path == format!("/repos/{REPO}/actions/workflows") {
        let workflows: Vec<Value> = st
            .workflows
            .iter()
            .map(|w| {
                json!({
                    "id": w.id, "node_id": format!("W_{}", w.id), "name": w.name,
                    "path": format!(".github/workflows/{}", w.file), "state": "active",
                    "created_at": "2020-01-08T23:48:37.000-08:00", "updated_at": "2020-01-08T23:50:21.000-08:00",
                    "url": format!("{base}/repos/{REPO}/actions/workflows/{}", w.id),
                    "html_url": format!("https://github.com/{REPO}/blob/main/.github/workflows/{}", w.file),
                    "badge_url": format!("https://github.com/{REPO}/workflows/{}/badge.svg", w.name)
                })
            })
            .collect();
        let body = json!({"total_count": workflows.len(), "workflows": workflows}).to_string();
        let headers = rate_headers(st);
        return conditional(st, headers, body, if_none_match);
    }
    (
        404,
        rate_headers(st),
        json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest"})
            .to_string(),
    )
}

/// `GET .../branches/{name}` and `GET .../compare/{base}...{head}`, from GitHub's example
/// bodies: a compare's `status` is `identical`, `behind` (the head is in the base's
/// history) or `diverged`.
fn branch_answer(st: &mut State, path: &str, if_none_match: Option<&str>) -> Option<Answer> {
    let not_found = |st: &State, message: &str| {
        let body = json!({"message": message, "documentation_url": "https://docs.github.com/rest"});
        (404, rate_headers(st), body.to_string())
    };
    if let Some(name) = path.strip_prefix(&format!("/repos/{REPO}/branches/")) {
        let Some(b) = st.branches.iter().find(|b| b.name == name) else {
            return Some(not_found(st, "Branch not found"));
        };
        let mut v = fixture("get-branch.200.json");
        v["name"] = json!(b.name);
        v["commit"]["sha"] = json!(b.head);
        v["protected"] = json!(true);
        let headers = rate_headers(st);
        return Some(conditional(st, headers, v.to_string(), if_none_match));
    }
    let basehead = path.strip_prefix(&format!("/repos/{REPO}/compare/"))?;
    let (base, head) = basehead.split_once("...")?;
    let Some(b) = st.branches.iter().find(|b| b.head == base) else {
        return Some(not_found(st, "Not Found"));
    };
    let (status, ahead, behind) = match b.history.iter().position(|c| c == head) {
        _ if head == base => ("identical", 0, 0),
        Some(i) => ("behind", 0, i + 1),
        None => ("diverged", 1, b.history.len() + 1),
    };
    let mut v = fixture("compare-commits.200.json");
    v["status"] = json!(status);
    v["ahead_by"] = json!(ahead);
    v["behind_by"] = json!(behind);
    v["base_commit"]["sha"] = json!(base);
    let headers = rate_headers(st);
    Some(conditional(st, headers, v.to_string(), if_none_match))
}

fn conditional(
    st: &mut State,
    mut headers: Vec<(String, String)>,
    body: String,
    if_none_match: Option<&str>,
) -> Answer {
    let mut h = DefaultHasher::new();
    body.hash(&mut h);
    let etag = format!("W/\"{:016x}\"", h.finish());
    headers.push(("etag".into(), etag.clone()));
    if if_none_match == Some(etag.as_str()) {
        // A 304 is free: it does not count against the rate limit.
        return (304, headers, String::new());
    }
    st.remaining = st.remaining.saturating_sub(1);
    let idx = headers
        .iter()
        .position(|(k, _)| k == "x-ratelimit-remaining")
        .unwrap();
    headers[idx].1 = st.remaining.to_string();
    (200, headers, body)
}

fn fault_answer(st: &mut State, fault: Fault) -> Answer {
    st.remaining = st.remaining.saturating_sub(1);
    match fault {
        Fault::SecondaryRateLimit { retry_after } => {
            let mut h = rate_headers(st);
            h.push(("retry-after".into(), retry_after.to_string()));
            let body = json!({"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.", "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"});
            (403, h, body.to_string())
        }
        Fault::PrimaryRateLimit { reset_in } => {
            let mut h = rate_headers(st);
            let reset = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + reset_in;
            for (k, v) in h.iter_mut() {
                match k.as_str() {
                    "x-ratelimit-remaining" => *v = "0".into(),
                    "x-ratelimit-used" => *v = "1000".into(),
                    "x-ratelimit-reset" => *v = reset.to_string(),
                    _ => {}
                }
            }
            let body = json!({"message": "API rate limit exceeded for installation ID 1.", "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"});
            (403, h, body.to_string())
        }
        Fault::ServerError => (
            500,
            rate_headers(st),
            json!({"message": "Server Error"}).to_string(),
        ),
    }
}
