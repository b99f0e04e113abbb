//! The job summary: the run as Markdown, every outside text escaped, within GitHub's
//! size limit.

use std::fmt::Write as _;
use std::time::Duration;

use super::{Cause, Diagnostics, Outcome, Phase, PhaseResult, Report};
use crate::health::HealthRecord;
use crate::markdown::{self, Blocks, Md};

impl Report {
    /// The job summary. Every piece of text berth did not write itself goes through
    /// [`markdown`]'s escaping, and the whole stays under GitHub's 1 MiB limit.
    pub fn summary_markdown(&self) -> String {
        self.summary_with(&Md::new(&|s: &str| s.to_string()))
    }

    /// The job summary, with `w` scrubbing every outside text before it is escaped.
    pub fn summary_with(&self, w: &Md) -> String {
        let mut blocks = Blocks::default();
        let icon = match self.outcome() {
            Outcome::Deployed => "✅",
            Outcome::RolledBack => "↩️",
            Outcome::Failed => "❌",
            Outcome::Skipped => "⏭️",
        };
        blocks.push(format!("## {icon} berth: {}\n\n", w.text(&self.headline())));
        if let Some(f) = &self.failure {
            blocks.push(format!(
                "**{}**\n\n{}\n**What to do next:** {}\n\n",
                w.text(&f.title),
                w.fence("", &tail_of(&truncate_lines(&w.scrub(&f.message), 40))),
                if self.users_unaffected && self.outcome() == Outcome::RolledBack {
                    "users were not affected: the new containers failed their check through the edge before any user request reached them, and the previous release kept serving. Read the log tails below, fix, and deploy again."
                } else {
                    next_step(f.cause, f.phase, self.outcome(), self.recovery.is_some())
                }
            ));
        }
        blocks.push(self.annotation_lines(w));
        if let Some(src) = &self.sha_source {
            blocks.push(format!(
                "Commit {} ({}).\n\n",
                w.code(self.sha.as_deref().unwrap_or("?")),
                w.text(src)
            ));
        }
        blocks.push(self.phase_table(w));
        blocks.push(self.image_table(w));
        blocks.push(self.host_table(w));
        if let Some(h) = &self.health {
            blocks.push(format!("### Health\n\n{}\n\n", health_line(h, w)));
        }
        if let Some(t) = &self.user_probes {
            blocks.push(self.users_block(t, w));
        }
        if let Some(rb) = &self.rollback {
            let mut md = format!(
                "### Rollback\n\n{} Restored {} in {}: {}.\n",
                match (rb.healthy, rb.left_to_host) {
                    (true, _) => "✅",
                    (false, true) => "⏳",
                    (false, false) => "❌",
                },
                w.code(rb.restored.as_deref().unwrap_or("?")),
                secs(rb.duration),
                w.text(&rb.detail)
            );
            if let Some(h) = &rb.health {
                let _ = writeln!(md, "\n{}", health_line(h, w));
            }
            md.push('\n');
            blocks.push(md);
        }
        if let Some(cmd) = &self.recovery {
            blocks.push(format!("### Recover by hand\n\n{}\n", w.fence("sh", cmd)));
        }
        blocks.push(self.ci_table(w));
        if !self.plan.is_empty() {
            blocks.push(format!(
                "### Plan (dry run)\n\n{}\n",
                w.fence("", &self.plan.join("\n"))
            ));
        }
        for d in &self.diagnostics {
            blocks.push(diagnostics_block(d, w));
        }
        blocks.finish(SUMMARY_BUDGET)
    }

    fn annotation_lines(&self, w: &Md) -> String {
        let mut md = String::new();
        for e in &self.errors {
            let _ = writeln!(
                md,
                "- **{}**: {}",
                w.text(e.title.as_deref().unwrap_or("error")),
                w.text(&e.message)
            );
        }
        if !self.errors.is_empty() {
            md.push('\n');
        }
        for warning in &self.warnings {
            let _ = writeln!(
                md,
                "> ⚠️ **{}**: {}",
                w.text(warning.title.as_deref().unwrap_or("warning")),
                w.text(&warning.message)
            );
        }
        if !self.warnings.is_empty() {
            md.push('\n');
        }
        md
    }

    fn phase_table(&self, w: &Md) -> String {
        if self.phases.is_empty() {
            return String::new();
        }
        let mut md = String::from("### Phases\n\n| phase | time | result |\n|---|---:|---|\n");
        for p in &self.phases {
            let (icon, text) = match &p.result {
                PhaseResult::Ok(t) => ("✅", t),
                PhaseResult::Failed(t) => ("❌", t),
                PhaseResult::Skipped(t) => ("⏭️", t),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {icon} {} |",
                p.phase.label(),
                secs(p.duration),
                w.cell(text, 300)
            );
        }
        md.push('\n');
        md
    }

    fn image_table(&self, w: &Md) -> String {
        if self.images.is_empty() {
            return String::new();
        }
        let mut md =
            String::from("### Images\n\n| service | tags | deployed by digest |\n|---|---|---|\n");
        let tags = self
            .image_tags
            .iter()
            .map(|t| w.code(t))
            .collect::<Vec<_>>()
            .join(" ");
        for (svc, img) in &self.images {
            let _ = writeln!(md, "| {} | {tags} | {} |", w.cell(svc, 100), w.code(img));
        }
        md.push('\n');
        md
    }

    fn host_table(&self, w: &Md) -> String {
        if self.hosts.is_empty() {
            return String::new();
        }
        let mut md = String::from(
            "### Hosts\n\n| host | host key | release | previous |\n|---|---|---|---|\n",
        );
        for h in &self.hosts {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                w.cell(&h.host, 200),
                w.code(&h.fingerprint),
                h.release
                    .as_deref()
                    .map(|r| w.code(r))
                    .unwrap_or("–".into()),
                h.previous
                    .as_deref()
                    .map(|r| w.code(r))
                    .unwrap_or("none (first deploy)".into())
            );
        }
        md.push('\n');
        md
    }

    fn ci_table(&self, w: &Md) -> String {
        if self.ci.runs.is_empty() {
            return String::new();
        }
        let mut md = String::from(
            "### CI runs checked\n\n| workflow | run | status | conclusion |\n|---|---|---|---|\n",
        );
        for r in &self.ci.runs {
            let run = format!("#{} attempt {}", r.run_number, r.attempt);
            let run = match link_target(&r.url) {
                Some(url) => format!("[{run}]({url})"),
                None => run,
            };
            let _ = writeln!(
                md,
                "| {} | {run} | {} | {} |",
                w.cell(&r.workflow, 100),
                w.cell(&r.status, 40),
                w.cell(r.conclusion.as_deref().unwrap_or("–"), 40)
            );
        }
        if self.ci.requests == 0 {
            md.push('\n');
        } else {
            let _ = writeln!(
                md,
                "\nWaited {} for CI; {} API requests, {} answered 304 (not counted against the rate limit).\n",
                secs(self.ci.waited),
                self.ci.requests,
                self.ci.not_modified
            );
        }
        md
    }
}

/// The summary's budget: under GitHub's 1 MiB with room for the runner's masking.
pub const SUMMARY_BUDGET: usize = crate::workflow::SUMMARY_LIMIT - 64 * 1024;
/// One container's log tail in the summary.
const LOG_BYTES: usize = 64 * 1024;

fn health_line(h: &HealthRecord, w: &Md) -> String {
    let counts = h
        .counts()
        .into_iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ");
    let first_ok = h
        .healthy_after
        .map(|d| format!("healthy after {}", secs(d)))
        .unwrap_or_else(|| "never healthy".into());
    let last = h
        .last_failure()
        .map(|a| {
            format!(
                "; last failure at {}: {}",
                secs(a.offset),
                w.cell(&a.outcome.to_string(), 300)
            )
        })
        .unwrap_or_default();
    format!(
        "{}: {} attempt(s) ({counts}); {first_ok}{last}.",
        w.code(&h.url),
        h.attempts.len()
    )
}

impl Report {
    /// What users saw while the release was switched, from the background probe.
    fn users_block(&self, t: &crate::health::Tally, w: &Md) -> String {
        let icon = if t.failed == 0 { "✅" } else { "⚠️" };
        let mut md = format!(
            "### What users saw\n\n{icon} {} during the switch ({} measured, from the first new container to the end of the drain).\n",
            w.text(&t.headline()),
            secs(t.measured)
        );
        for f in &t.failures {
            md.push_str(&format!("- {}\n", w.text(f)));
        }
        if self.users_unaffected && self.outcome() == Outcome::RolledBack {
            md.push_str("\nThe release failed before the switch: no user request reached its routed services, and the previous release never stopped serving them (services no route names were updated, then restored, as without `routes`).\n");
        }
        if !self.routed && t.failed > 0 {
            md.push_str("\n`docker compose up` stops the old containers before the new ones listen. Set `routes` to start the new ones beside the old, prove them through the host's edge, and switch in one config load (README: Zero-downtime switch).\n");
        }
        md.push('\n');
        md
    }
}

/// The advice line for the common failures.
fn next_step(cause: Cause, phase: Phase, outcome: Outcome, recovery: bool) -> &'static str {
    let before_switch = matches!(phase, Phase::Upload | Phase::Pull | Phase::PreDeploy);
    match cause {
        Cause::Cancelled if before_switch => {
            return "the run was cancelled before anything was switched; the previous release still runs. Deploy again when you are ready."
        }
        Cause::Cancelled if outcome == Outcome::RolledBack => {
            return "the run was cancelled; the previous release is serving again. Deploy again when you are ready."
        }
        Cause::Cancelled => {
            return "the run was cancelled: read the rollback section (a restore handed to the host is finished and proven there, and the next run reports it), then deploy again."
        }
        Cause::ConnectionLost if recovery => {
            return "check the network path from the runner to the host (sshd up, firewall, NAT or load-balancer idle timeouts, the host's load), then run the recovery command below."
        }
        Cause::ConnectionLost => {
            return "check the network path from the runner to the host (sshd up, firewall, NAT or load-balancer idle timeouts, the host's load), then deploy again."
        }
        Cause::DiskFull => {
            return "free disk space on the host (`docker image prune` for other projects' images, old logs, `keep-releases`), then deploy again."
        }
        Cause::RegistryStalled => {
            return "check that the registry is up and answering from the host, then deploy again; nothing was switched."
        }
        _ => {}
    }
    match phase {
        Phase::Inputs => "fix the inputs named above; nothing was changed on any host.",
        Phase::CiGate => "fix CI for this commit (or wait for it) and re-run; berth deploys only commits whose CI succeeded.",
        Phase::Build => "fix the Dockerfile at the line shown; nothing was pushed or deployed.",
        Phase::Push => "check `registry`, `registry-username` and `registry-password` (for ghcr.io: `permissions: packages: write`).",
        Phase::Connect => "check `hosts`, the host key pin and that the runner can reach sshd; nothing was changed.",
        Phase::Lock => "wait for the other deploy named above to finish, or raise `lock-timeout`.",
        Phase::Upload | Phase::Pull => "check that the host can reach the registry and the images exist; the previous release still runs.",
        Phase::PreDeploy => "fix the pre-deploy command (its output is above); nothing was switched.",
        Phase::Up | Phase::Switch | Phase::Verify | Phase::Health | Phase::Drain if outcome == Outcome::RolledBack => {
            "the previous release is serving again. Read the log tails below, fix, and deploy again."
        }
        Phase::Up | Phase::Switch | Phase::Verify | Phase::Health | Phase::Drain if recovery => "run the recovery command below to restore service, then read the log tails.",
        Phase::Up | Phase::Switch | Phase::Verify | Phase::Health | Phase::Drain => {
            "read the log tails below, fix, and deploy again; with no earlier release (or `rollback: off`) the failed release is left in place."
        }
        Phase::Rollback => "run the recovery command below, then read the log tails.",
    }
}

/// One host's services and the log tails of its failing containers, folded.
fn diagnostics_block(d: &Diagnostics, w: &Md) -> String {
    let mut md = format!(
        "<details><summary>Diagnostics from {}: services and log tails</summary>\n\n{}\n",
        w.html(&d.host),
        w.fence("", &truncate_lines(d.ps.trim_end(), 60))
    );
    for (container, log) in &d.logs {
        if log.trim().is_empty() {
            let _ = writeln!(md, "**{}**: no log output\n", w.text(container));
            continue;
        }
        let _ = writeln!(
            md,
            "**{}** (last lines of its log)\n\n{}",
            w.text(container),
            w.fence("", &tail_of(&w.scrub(log.trim_end())))
        );
    }
    md.push_str("</details>\n\n");
    md
}

/// The end of a log for the summary: long lines cut first, so that one huge line cannot
/// push every line before it out of the tail, then the last [`LOG_BYTES`]. The log must
/// be scrubbed already ([`Md::scrub`]): a cut can split a secret.
fn tail_of(log: &str) -> String {
    truncate_bytes(
        &markdown::cut_long_lines(log, markdown::LINE_BYTES),
        LOG_BYTES,
    )
}

/// A URL berth may render as a link target: http(s), with nothing that could end the
/// Markdown link early.
fn link_target(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    matches!(parsed.scheme(), "https" | "http").then(|| {
        parsed
            .as_str()
            .replace('(', "%28")
            .replace(')', "%29")
            .replace('<', "%3C")
            .replace('>', "%3E")
    })
}

/// The last `n` lines, saying how many were dropped.
pub fn truncate_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    if lines.len() <= n {
        return s.to_string();
    }
    format!(
        "[{} earlier lines not shown]\n{}",
        lines.len() - n,
        lines[lines.len() - n..].join("\n")
    )
}

/// The last `max` bytes (on a char boundary), saying that it was cut.
pub fn truncate_bytes(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!(
        "[truncated: {} earlier bytes not shown]\n{}",
        start,
        crate::secret::mask_cut_start(&crate::secret::registered(), &s[start..])
    )
}

/// A duration as people read it: `5.1 s`, `42 s`.
pub struct Rounded(pub Duration);

impl std::fmt::Display for Rounded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&secs(self.0))
    }
}

pub fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.1} s")
    } else {
        format!("{} s", s.round() as u64)
    }
}
