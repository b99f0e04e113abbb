//! Text from the deployed app never becomes a workflow command, and never reshapes the job
//! summary: a real container's health body, its crash log and its migration output, each
//! carrying command syntax, are checked with a parser that reads berth's output the way the
//! runner does (support::runner_parser).

use crate::support::runner_parser::{assert_only_berths_commands, commands};
use crate::support::stage::{App, Stage};
use crate::support::Run;

/// What a person reading the log sees: berth's zero-width breaks are invisible.
fn as_read(text: &str) -> String {
    text.replace('\u{200B}', "")
}

fn assert_defused(run: &Run) {
    assert_only_berths_commands(&run.stdout);
    assert_only_berths_commands(&run.stderr);
    let all = format!("{}\n{}", run.stdout, run.stderr);
    assert!(
        commands(&all).iter().all(|c| c.name != "stop-commands"),
        "app text stopped command processing"
    );
    assert!(
        all.lines().any(|l| l.starts_with("::error title=berth")),
        "berth's own error annotation must still be processed"
    );
}

/// Outside a code block, the summary has only berth's headings and no app-made links.
fn assert_summary_shape(md: &str) {
    assert!(md.len() < 1024 * 1024, "summary of {} bytes", md.len());
    let mut open_fence: Option<usize> = None;
    for line in md.lines() {
        let ticks = line.len() - line.trim_start_matches('`').len();
        if let Some(n) = open_fence {
            if ticks >= n && line.trim_end_matches('`').is_empty() {
                open_fence = None;
            }
            continue;
        }
        if ticks >= 3 {
            open_fence = Some(ticks);
            continue;
        }
        assert!(
            !line.contains("FORGED-HEADING") || !line.starts_with('#'),
            "{line}"
        );
        assert!(!line.contains("](https://evil"), "an app-made link: {line}");
    }
    assert_eq!(open_fence, None, "a code block was left open");
}

#[test]
fn app_output_never_becomes_a_workflow_command() {
    let stage = Stage::new();
    stage.deploy_ok(&App::new("v1"));

    // A 500 whose body carries a lone CR and commands, after a migration that prints some.
    let health = stage
        .berth(&App::new("v2").mode("inject500"))
        .input("pre-deploy", "backend: sh /migrate.sh")
        .input(
            "env-file",
            "GREETING=hello\nMIGRATE_SAY='step\\r::warning::FORGED-MIGRATE\\n##[error]FORGED-MIGRATE-LEGACY\\n'\n",
        )
        .input("health-timeout", "3s")
        .run();
    assert_eq!(
        health.output("status").as_deref(),
        Some("rolled-back"),
        "{}",
        health.stdout
    );
    assert_defused(&health);
    let read = as_read(&health.stdout);
    assert!(
        read.contains("::warning::FORGED-HEALTH") && read.contains("##[error]FORGED-HEALTH-LEGACY"),
        "the health body is still readable:\n{}",
        health.stdout
    );
    assert!(
        read.contains("::warning::FORGED-MIGRATE"),
        "{}",
        health.stdout
    );
    assert_summary_shape(&health.summary);
    std::thread::sleep(std::time::Duration::from_secs(1));

    // A crash loop whose log stops commands, forges annotations and has a 2 MiB line.
    let crash = stage
        .berth(&App::new("v3").mode("injectcrash"))
        .input("health-timeout", "20s")
        .run();
    assert_eq!(
        crash.output("status").as_deref(),
        Some("rolled-back"),
        "{}",
        crash.stdout
    );
    assert_defused(&crash);
    assert_summary_shape(&crash.summary);
    let summary = as_read(&crash.summary);
    assert!(
        summary.contains("::stop-commands::t") && summary.contains("##[error]FORGED-LOG"),
        "the crash log is still readable in the summary:\n{}",
        &crash.summary[..crash.summary.len().min(4000)]
    );
    assert!(
        summary.contains("[line cut:"),
        "the 2 MiB line is cut and says so"
    );
    let (status, body) = stage.health();
    assert_eq!(status, 200);
    assert!(body.contains("\"version\":\"v1\""), "{body}");
}
