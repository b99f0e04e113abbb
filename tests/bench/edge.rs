//! Section 9: what users see during a deploy, with and without `routes`: a loop of real
//! requests through the app's public port, counted; the switch time and the switch-back
//! RTO through the edge.

use std::time::{Duration, SystemTime};

use crate::support::edge::{longest_gap, routed, EdgeGuard, Users};
use crate::support::stage::{App, Stage};
use crate::swarm::timed_lines;
use crate::{fmt, median};

/// One deploy of `next` after `first`, with a user loop through the stage's port: (failed
/// requests, requests, longest gap in ms), and berth's timed lines and the loop's answers.
struct Seen {
    failed: f64,
    total: f64,
    gap: f64,
    lines: crate::swarm::Lines,
    answers: Vec<(u16, String)>,
    at: Vec<SystemTime>,
}

fn watch(stage: &Stage, deploy: crate::support::Berth) -> Seen {
    let users = Users::start(stage.port);
    let lines = timed_lines(&deploy);
    std::thread::sleep(Duration::from_millis(500));
    let (answers, failed, at) = users.stop_timed();
    Seen {
        failed: failed.len() as f64,
        total: answers.len() as f64,
        gap: longest_gap(&answers, &at),
        lines,
        answers,
        at,
    }
}

/// The first answer from `version` sent at or after `after`.
fn first_answer(seen: &Seen, version: &str, after: SystemTime) -> Option<SystemTime> {
    seen.answers
        .iter()
        .zip(&seen.at)
        .find(|((s, v), t)| *s == 200 && v == version && **t >= after)
        .map(|(_, t)| *t)
}

fn ms(from: SystemTime, to: SystemTime) -> f64 {
    to.duration_since(from)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// Section 9 and its goals.
pub fn section(runs: usize, goals: &mut Vec<(String, bool, String)>) -> String {
    // The app ignores SIGTERM and takes 3 s to listen: what `up` costs users at its worst.
    let app = |v: &str| App::new(v).mode("ignoreterm").start_delay(3);
    let mut rows = String::new();
    let mut routed_failed = Vec::new();
    let mut switch_ms = Vec::new();
    for with_routes in [false, true] {
        let stage = Stage::new();
        let _edge = EdgeGuard(format!("berth-edge-{}", stage.port));
        let deploy = |a: &App| {
            let b = if with_routes {
                routed(&stage, &a.clone().routed())
            } else {
                stage.berth(a)
            };
            b.input("health-timeout", "20s")
        };
        let first = deploy(&app("v0")).run();
        assert_eq!(
            first.code, 0,
            "edge bench: first deploy failed:\n{}",
            first.stdout
        );
        for broken in [false, true] {
            let (mut f, mut n, mut g) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..runs {
                std::thread::sleep(Duration::from_secs(1));
                let next = if broken {
                    deploy(&App::new("bad").mode("500")).input("health-timeout", "6s")
                } else {
                    deploy(&app(&format!("v{}", i + 1)))
                };
                let seen = watch(&stage, next);
                assert_eq!(
                    seen.lines.code,
                    if broken { 1 } else { 0 },
                    "edge bench deploy:\n{}",
                    seen.lines.stdout
                );
                if with_routes && !broken {
                    // Candidates proven (berth's first healthy answer through the header),
                    // then the first user request the new release answered.
                    let proven = seen
                        .lines
                        .lines
                        .iter()
                        .skip_while(|(_, l)| !l.contains("Health of the new containers"))
                        .find(|(_, l)| l.contains("healthy (HTTP"))
                        .map(|(t, _)| *t);
                    if let Some(p) = proven {
                        if let Some(served) = first_answer(&seen, &format!("v{}", i + 1), p) {
                            switch_ms.push(ms(p, served));
                        }
                    }
                }
                f.push(seen.failed);
                n.push(seen.total);
                g.push(seen.gap);
            }
            if with_routes {
                routed_failed.extend(f.iter().copied());
            }
            rows.push_str(&format!(
                "| {} | {} | {:.0} | {:.0} | {:.0} | {} / {} |\n",
                if broken {
                    "broken (health answers 500)"
                } else {
                    "healthy"
                },
                if with_routes { "yes" } else { "no" },
                median(&f),
                median(&n),
                median(&g),
                fmt(&f),
                fmt(&g)
            ));
        }
    }
    // The switch back: a release healthy through its proof that answers 500 six seconds
    // after its start, inside the verdict window. From berth's failing probe to the first
    // user request the old release answers.
    let stage = Stage::new();
    let _edge = EdgeGuard(format!("berth-edge-{}", stage.port));
    let first = routed(&stage, &App::new("v0").routed()).run();
    assert_eq!(first.code, 0, "{}", first.stdout);
    let mut rto = Vec::new();
    let mut back_failed = Vec::new();
    let mut loads = Vec::new();
    for _ in 0..runs {
        std::thread::sleep(Duration::from_secs(1));
        let next = routed(&stage, &App::new("late").routed().mode("failafter"))
            .input("verdict-window", "15s");
        let seen = watch(&stage, next);
        assert_eq!(seen.lines.code, 1, "{}", seen.lines.stdout);
        let verdict = seen
            .lines
            .first("inside the verdict window")
            .expect("no failing probe inside the verdict window");
        let back = first_answer(&seen, "v0", verdict).expect("v0 never answered again");
        rto.push(ms(verdict, back));
        if let Some(load) = seen
            .lines
            .first("the edge routes back to the previous release")
        {
            loads.push(ms(verdict, load));
        }
        back_failed.push(seen.failed);
    }
    let (mf, ms_switch, mrto) = (median(&routed_failed), median(&switch_ms), median(&rto));
    goals.push((
        "0 failed requests with `routes` (healthy and broken deploys)".into(),
        routed_failed.iter().all(|f| *f == 0.0),
        format!("median {mf:.0}, samples {}", fmt(&routed_failed)),
    ));
    goals.push((
        "switch-back RTO at most 100 ms (from berth's failing probe to the old release serving)"
            .into(),
        mrto <= 100.0,
        format!("median {mrto:.0} ms"),
    ));
    format!(
        "\n## 9. What users see during a deploy\n\nA loop of requests through the app's public port, one every 20 ms, each on a new connection (as new visitors), from just before the deploy to 0.5 s after berth exits. The app ignores SIGTERM and takes 3 s to listen. Without `routes`: the port is published and `docker compose up` replaces the container. With `routes`: through the host's edge (Caddy), the new container started beside the old, proven by the header, switched in one config load, drained. Broken: the new release's health answers 500 (`health-timeout: 6s`), then berth rolls back.\n\n| deploy | routes | failed requests (median) | requests (median) | longest gap ms (median) | samples failed / gap |\n|---|---|---:|---:|---:|---|\n{rows}\nSwitch time (with `routes`): from berth's first healthy answer from the new containers through the edge (header only) to the first user request the new release answered: median {ms_switch:.0} ms (samples {}). It includes the switch step's SSH round trip and the config load.\n\nSwitch-back RTO (with `routes`): a release that passes its proof and answers 500 six seconds after it starts, inside a 15 s verdict window. From berth's failing probe to the first user request the old release answered: median {mrto:.0} ms (samples {}). berth's own switch back, from that probe to its config load's end: median {:.0} ms (samples {}). Requests that failed in that run (the 500s the new release answered from turning bad until the switch back, at most one probe interval, 200 ms here, plus the RTO): samples {}.\n",
        fmt(&switch_ms),
        fmt(&rto),
        median(&loads),
        fmt(&loads),
        fmt(&back_failed)
    )
}
