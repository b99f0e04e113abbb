use super::*;

impl Report {
    fn fail(&mut self, phase: Phase, title: &str, message: impl Into<String>) {
        self.failure = Some(Failure {
            phase,
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
