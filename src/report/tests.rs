use super::*;

impl Report {
    fn fail(&mut self, phase: Phase, title: &str, message: impl Into<String>) {
        self.failure = Some(Failure {
            phase,
            cause: Cause::Other,
            title: title.into(),
            message: message.into(),
            file: None,
            line: None,
        });
    }
}

#[test]
fn an_oversized_log_tail_is_truncated_and_the_summary_stays_under_1_mib() {
    let mut r = Report::default();
    r.fail(Phase::Health, "berth: health check failed", "HTTP 500");
    r.diagnostics = (0..20)
        .map(|i| Diagnostics {
            host: format!("host{i}"),
            ps: "NAME STATUS".into(),
            logs: vec![(
                "backend-1".into(),
                format!("{}\nLAST LINE {i}", "x\n".repeat(100_000)),
            )],
        })
        .collect();
    let md = r.summary_markdown();
    assert!(md.len() <= SUMMARY_BUDGET, "{} bytes", md.len());
    assert!(md.contains("[truncated:"), "a cut log says so");
    assert!(
        md.contains("under GitHub's 1 MiB limit"),
        "a cut summary says so"
    );
    assert!(md.contains("LAST LINE 0"), "tails keep their end");
    assert!(
        md.starts_with("## ❌ berth: Failed"),
        "the headline comes first"
    );
    assert!(
        md.contains("**berth: health check failed**"),
        "the root cause stays"
    );
}

#[test]
fn a_single_huge_log_line_is_cut_and_the_summary_stays_bounded() {
    let mut r = Report::default();
    r.fail(
        Phase::Health,
        "berth: health check failed",
        "y".repeat(3 << 20),
    );
    r.diagnostics = vec![Diagnostics {
        host: "h".into(),
        ps: "p".repeat(2 << 20),
        logs: vec![("web-1".into(), "z".repeat(2 << 20))],
    }];
    let md = r.summary_markdown();
    assert!(md.len() < 200 * 1024, "{} bytes", md.len());
    assert_eq!(md.matches("[line cut:").count(), 3, "each cut line says so");
}

#[test]
fn app_text_cannot_close_a_fence_or_add_markup() {
    let mut r = Report::default();
    r.fail(
        Phase::Health,
        "berth: health check failed",
        "body: ```\n# Forged heading\n[click](https://evil.example)",
    );
    r.warn(
        "berth: crash loop",
        "web | exit 3 | # not a heading [x](https://e.example)",
    );
    r.record(
        Phase::Up,
        Duration::from_secs(1),
        PhaseResult::Failed("a | b\n# c".into()),
    );
    r.diagnostics = vec![Diagnostics {
        host: "h".into(),
        ps: "NAME".into(),
        logs: vec![(
            "web-1".into(),
            "````\n## Injected\n<script>x</script>".into(),
        )],
    }];
    let md = r.summary_markdown();
    // Outside a code block, no line is a heading but berth's own, and no text links.
    let mut fence: Option<String> = None;
    for line in md.lines() {
        let ticks: String = line.chars().take_while(|c| *c == '`').collect();
        match &fence {
            Some(open) if ticks.len() >= open.len() && line.trim_end() == ticks => fence = None,
            Some(_) => {}
            None if ticks.len() >= 3 => fence = Some(ticks),
            None => {
                if line.starts_with('#') {
                    assert!(
                        line.starts_with("## ❌ berth") || line.starts_with("### "),
                        "{line}"
                    );
                }
                assert!(!line.contains("](https://e"), "{line}");
                assert!(!line.contains("<script>"), "{line}");
                if line.starts_with('|') && line.contains("a \\| b") {
                    let unescaped =
                        line.len() - line.replace('|', "").len() - line.matches("\\|").count();
                    assert_eq!(unescaped, 4, "three columns: {line}");
                }
            }
        }
    }
    assert!(fence.is_none(), "every fence closes");
    assert!(
        md.contains("# Forged heading") && md.contains("## Injected"),
        "still readable"
    );
}

#[test]
fn every_error_stays_an_annotation_past_the_runners_cap() {
    let mut r = Report::default();
    for i in 0..14 {
        r.errors.push(Annotation::new(
            Level::Error,
            format!("berth: invalid input in{i}"),
            format!("problem {i}"),
        ));
    }
    r.warn("berth: w", "a warning");
    let a = r.annotations();
    let errors: Vec<&Annotation> = a.iter().filter(|a| a.level == Level::Error).collect();
    assert_eq!(errors.len(), ANNOTATIONS_PER_LEVEL);
    let last = errors.last().unwrap();
    assert_eq!(last.title.as_deref(), Some("berth: 5 more"));
    for i in 9..14 {
        assert!(
            last.message.contains(&format!("in{i}: problem {i}")),
            "{}",
            last.message
        );
    }
    assert_eq!(a.iter().filter(|a| a.level == Level::Warning).count(), 1);
}

#[test]
fn line_truncation_keeps_the_last_lines() {
    let text = (1..=50)
        .map(|i| format!("line {i}"))
        .collect::<Vec<_>>()
        .join("\n");
    let cut = truncate_lines(&text, 5);
    assert!(cut.starts_with("[45 earlier lines not shown]") && cut.ends_with("line 50"));
}

fn failed_with(cause: Cause, phase: Phase, outcome_rolled_back: bool) -> Report {
    let mut r = Report::default();
    r.fail(phase, "berth: x", "why");
    if let Some(f) = r.failure.as_mut() {
        f.cause = cause;
    }
    if outcome_rolled_back {
        r.outcome = Some(Outcome::RolledBack);
        r.rollback = Some(RollbackReport {
            restored: Some("20261201T000000Z-abcdef0".into()),
            healthy: true,
            ..Default::default()
        });
    }
    r
}

#[test]
fn the_headline_names_the_real_cause_not_the_phase() {
    let cases = [
        (
            Cause::ConnectionLost,
            Phase::Health,
            "lost its connection to the host during health",
        ),
        (Cause::Cancelled, Phase::Up, "was cancelled during"),
        (Cause::Unhealthy, Phase::Health, "failed its health check"),
        (Cause::CrashLoop, Phase::Health, "crash-looped"),
        (Cause::DiskFull, Phase::Up, "ran out of disk space"),
    ];
    for (cause, phase, says) in cases {
        let r = failed_with(cause, phase, true);
        assert_eq!(r.outcome(), Outcome::RolledBack);
        let h = r.headline();
        assert!(h.contains(says), "{cause:?}: {h}");
        if cause != Cause::Unhealthy {
            assert!(!h.contains("health check"), "{cause:?}: {h}");
        }
    }
}

#[test]
fn what_to_do_next_follows_the_fault_not_the_phase() {
    let next = |r: &Report| {
        let md = r.summary_markdown();
        md.split("**What to do next:** ")
            .nth(1)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .to_string()
    };
    // A cancel during pre-deploy: no "fix the pre-deploy command".
    let n = next(&failed_with(Cause::Cancelled, Phase::PreDeploy, false));
    assert!(
        n.contains("cancelled") && !n.contains("fix the pre-deploy"),
        "{n}"
    );
    // A full disk or a lost connection during upload or pull: no registry advice.
    for cause in [Cause::DiskFull, Cause::ConnectionLost] {
        for phase in [Phase::Upload, Phase::Pull] {
            let n = next(&failed_with(cause, phase, false));
            assert!(!n.contains("registry"), "{cause:?} {phase:?}: {n}");
        }
    }
    assert!(next(&failed_with(Cause::DiskFull, Phase::Pull, false)).contains("free disk space"));
    // Without a telling cause, the phase decides as before.
    assert!(
        next(&failed_with(Cause::Other, Phase::PreDeploy, false)).contains("fix the pre-deploy")
    );
}

#[test]
fn a_phase_that_fails_after_it_was_recorded_keeps_one_row() {
    let mut r = Report::default();
    r.record(
        Phase::Connect,
        Duration::from_millis(300),
        PhaseResult::Ok("1 host(s)".into()),
    );
    r.amend(
        Phase::Connect,
        Duration::from_millis(200),
        PhaseResult::Failed("preflight".into()),
    );
    let rows: Vec<_> = r
        .phases
        .iter()
        .filter(|p| p.phase == Phase::Connect)
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].duration, Duration::from_millis(500));
    assert!(matches!(rows[0].result, PhaseResult::Failed(_)));
}

#[test]
fn durations_in_messages_are_rounded() {
    assert_eq!(Rounded(Duration::from_millis(5_123)).to_string(), "5.1 s");
    assert_eq!(Rounded(Duration::from_secs(600)).to_string(), "600 s");
}

/// Issue 25: a log tail was cut (lines at 2,000 bytes, the tail at 64 KiB) before it was
/// scrubbed, so a secret across a cut was left in halves that no mask matched.
#[test]
fn a_secret_across_a_log_tail_cut_is_scrubbed_whole() {
    let secret = "summary-tail-secret-5147";
    let masks = vec![secret.to_string()];
    let scrub = |s: &str| crate::secret::scrub(&masks, s);
    let mut r = Report::default();
    // Across the 2,000-byte line cut, and across the 64 KiB tail's front edge.
    let long_line = format!("{}{secret} after", "a".repeat(1990));
    let tail_edge = format!("{secret}{}", "b\n".repeat(32 * 1024 - 4));
    r.fail(
        Phase::Health,
        "berth: health check failed",
        long_line.clone(),
    );
    r.diagnostics = vec![Diagnostics {
        host: "h".into(),
        ps: "p".into(),
        logs: vec![
            ("web-1".into(), long_line),
            ("worker-1".into(), format!("start\n{tail_edge}")),
        ],
    }];
    let md = r.summary_with(&crate::markdown::Md::new(&scrub));
    for part in [&secret[..8], &secret[secret.len() - 8..]] {
        assert!(
            !md.contains(part),
            "{part} of the secret is left in the summary"
        );
    }
}
