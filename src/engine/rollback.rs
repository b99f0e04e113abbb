//! Going back: the one rollback path of a failed deploy, and `mode: rollback`.

use std::time::{Duration, Instant};

use super::hosts::{on_all, states, Host};
use super::{Engine, LOG_LINES};
use crate::failure::{Fault, HostStep};
use crate::report::{Diagnostics, Outcome, Phase, PhaseResult, Report, RollbackReport};
use crate::targets::{HostState, ReleaseError};
use crate::workflow::{Annotation, Level};

impl Engine<'_> {
    /// The one rollback path: collect diagnostics (after the restore when the run was
    /// cancelled, as time is short), then restore the newest release proven healthy on
    /// every host whose containers may have changed, and prove it healthy.
    /// What happened goes into the report; the fault is handed back as the root cause.
    pub(super) async fn fail_and_restore(
        &self,
        hosts: &[Host],
        report: &mut Report,
        fault: Fault,
    ) -> Fault {
        // A lost connection is a failure like any other: connect again, then go on.
        let reconnected = on_all(hosts, |t| {
            let name = t.state().name;
            t.ensure_connected().map_err(|e| format!("{name}: {e}"))
        })
        .await;
        // A host whose lock another deploy took meanwhile is that deploy's now: nothing
        // of this run's is recorded or restored there.
        let all = states(hosts).await;
        for (r, s) in reconnected.into_iter().zip(&all) {
            if s.lock_lost && s.lost_to_heal {
                report.warn(
                    "berth: the host is restoring itself",
                    format!("berth's connection to {} was down longer than the host waits for it, so the host began restoring the newest proven release by itself (its self-heal) and holds the deploy lock for that; berth left the host to it. The next run reports what it did.", s.name),
                );
            } else if s.lock_lost {
                report.warn(
                    "berth: deploy lock taken while disconnected",
                    format!("Another deploy took the deploy lock on {} while berth's connection was down, so berth left that host to it: no restore and no record there. Check what runs on it.", s.name),
                );
            } else if let Err(e) = r {
                report.warn("berth: host unreachable after a lost connection", e);
            }
        }
        let (ours, our_states): (Vec<Host>, Vec<HostState>) = hosts
            .iter()
            .cloned()
            .zip(all)
            .filter(|(_, s)| !s.lock_lost)
            .unzip();
        let hosts = ours.as_slice();
        // Through an edge that was switched: users go back to the previous release at
        // once (one config load), before anything else (not with `rollback: off`, which
        // leaves the host as the failure left it).
        let route_back = self.cfg.rollback != crate::inputs::RollbackPolicy::Off;
        for (ok, name) in on_all(hosts, move |t| {
            let name = t.state().name;
            (
                if route_back {
                    t.route_back()
                } else {
                    Ok(false)
                },
                name,
            )
        })
        .await
        {
            match ok {
                Ok(true) => self
                    .runner
                    .line(&format!("{name}: the edge routes back to the previous release")),
                Ok(false) => {}
                Err(e) => report.warn(
                    "berth: switch back failed",
                    format!("Routing the edge on {name} back to the previous release failed ({e}); the restore below does it again."),
                ),
            }
        }
        // A cancelled run has seconds left: the restore goes first, the logs after it.
        let cancelled = crate::cancel::is_cancelled();
        if !cancelled {
            self.diagnose(hosts, report).await;
        }
        // The failed release says so at once, whatever the restore does next.
        self.mark(hosts, "failed", report).await;

        let (touched, touched_states): (Vec<Host>, Vec<HostState>) = hosts
            .iter()
            .cloned()
            .zip(our_states)
            .filter(|(_, s)| s.touched)
            .unzip();
        if let Some(why) = self.nothing_to_restore(&touched_states) {
            report.record(Phase::Rollback, Duration::ZERO, PhaseResult::Skipped(why));
            if cancelled {
                self.diagnose(hosts, report).await;
            }
            return fault;
        }
        if cancelled {
            // berth has seconds left: if it is gone before the restore is proven, the
            // host finishes and proves it at once, without waiting for a reconnect.
            for e in on_all(&touched, |t| t.hand_over())
                .await
                .into_iter()
                .filter_map(Result::err)
            {
                report.warn("berth: restore not handed over to the host", e.to_string());
            }
        }
        // An `up` cut off half-way (cancelled, connection lost) may have left Docker
        // stopping a container the restore wants: its proof outlasts any such stop.
        let cut_off_up = fault.phase() == Phase::Up;
        let rb = self
            .restore(&touched, &touched_states, report, cut_off_up)
            .await;
        if cancelled {
            self.diagnose(hosts, report).await;
        }
        if rb.healthy {
            self.mark(&touched, "rolled-back", report).await;
            report.record(
                Phase::Rollback,
                rb.duration,
                PhaseResult::Ok(rb.detail.clone()),
            );
        } else if rb.left_to_host {
            report.record(
                Phase::Rollback,
                rb.duration,
                PhaseResult::Skipped(rb.detail.clone()),
            );
        } else {
            report.record(
                Phase::Rollback,
                rb.duration,
                PhaseResult::Failed(rb.detail.clone()),
            );
            let commands = on_all(&touched, |t| {
                let target = t.state().restore_target.unwrap_or_default();
                t.recovery_command(&target)
            })
            .await;
            report.recovery = Some(commands.join("\n"));
        }
        report.rollback = Some(rb);
        fault
    }

    /// The failing containers' states and logs, for the report.
    async fn diagnose(&self, hosts: &[Host], report: &mut Report) {
        let diagnostics = on_all(hosts, |t| t.diagnostics(LOG_LINES)).await;
        report.excerpt = telling_lines(&diagnostics, 5);
        report.diagnostics = diagnostics;
    }

    /// Why nothing is restored, if so: no host was touched, `rollback: off`, or a touched
    /// host has no release proven healthy (its newest such release is where it goes back
    /// to, which may be older than `current` when current never proved itself).
    fn nothing_to_restore(&self, touched: &[HostState]) -> Option<String> {
        if touched.is_empty() {
            return Some("nothing was switched; the previous release still runs".into());
        }
        if self.cfg.rollback == crate::inputs::RollbackPolicy::Off {
            return Some("`rollback: off`: the host is left as it is".into());
        }
        let missing: Vec<&str> = touched
            .iter()
            .filter(|s| s.restore_target.is_none())
            .map(|s| s.name.as_str())
            .collect();
        if missing.is_empty() {
            return None;
        }
        let first_deploy = touched
            .iter()
            .all(|s| s.restore_target.is_some() || s.previous.is_none());
        let why = if first_deploy {
            format!("first deploy on {}", missing.join(", "))
        } else {
            format!(
                "no release was ever proven healthy on {} (`mode: rollback` with `release:` can still restore a named one)",
                missing.join(", ")
            )
        };
        Some(format!(
            "{why}: nothing to restore; the failed release is left in place for diagnosis"
        ))
    }

    /// Re-activates each touched host's restore target and proves it: healthy, running
    /// the release's digests, and steady past any stop Docker had in flight when the
    /// restore began. A restore whose containers went down in that window is done once
    /// more.
    async fn restore(
        &self,
        touched: &[Host],
        touched_states: &[HostState],
        report: &mut Report,
        cut_off_up: bool,
    ) -> RollbackReport {
        let started = Instant::now();
        let targets: Vec<Option<String>> = touched_states
            .iter()
            .map(|s| s.restore_target.clone())
            .collect();
        if targets.windows(2).any(|w| w[0] != w[1]) {
            report.warn(
                "berth: hosts restored to different releases",
                format!("The newest release proven healthy differs between hosts ({}), so each host went back to its own. A record write failed on some host earlier; check the hosts' release records.", targets.iter().map(|t| t.as_deref().unwrap_or("none")).collect::<Vec<_>>().join(", ")),
            );
        }
        let previous = targets.into_iter().next().flatten();
        let mut rb = RollbackReport {
            restored: previous.clone(),
            ..Default::default()
        };
        for attempt in 1..=RESTORE_ATTEMPTS {
            let began = Instant::now();
            if let Some(e) = reactivate(touched).await {
                rb.detail = format!("restoring the previous release failed: {e}");
                break;
            }
            // A second try is for a restore that went down: it outlasts stops in flight.
            let outlast = cut_off_up || attempt > 1;
            match self.prove_restore(touched, report, began, outlast).await {
                Ok(record) => {
                    rb.healthy = true;
                    rb.detail = format!(
                        "the previous release {} is serving and healthy",
                        previous.as_deref().unwrap_or("")
                    );
                    rb.health = Some(record);
                    break;
                }
                Err(Unproven::WentDown(why)) if attempt < RESTORE_ATTEMPTS => {
                    self.runner.line(&format!(
                        "the restored release went down after its restore ({why}); restoring it once more"
                    ));
                }
                Err(Unproven::WentDown(why)) => {
                    rb.detail = format!("the restored release did not stay up: {why}");
                }
                Err(Unproven::Fault(unproven)) => {
                    rb.detail = format!("the restored release is not healthy either: {unproven}");
                    rb.health = unproven.health_record();
                    break;
                }
                Err(Unproven::OutOfTime(what)) => {
                    rb.left_to_host = states(touched).await.iter().all(|s| s.handed_over);
                    rb.detail = if rb.left_to_host {
                        format!(
                            "the previous release {} was re-activated, but not yet proven when the cancelled run's time ran out ({what}): the host finishes proving it by itself, and the next run reports the result",
                            previous.as_deref().unwrap_or("")
                        )
                    } else {
                        format!("the restored release is not proven: {what}")
                    };
                    break;
                }
            }
        }
        rb.duration = started.elapsed();
        rb
    }

    /// The proof of a restore begun at `began`: the probe and the crash watch, the digests,
    /// then the steady window. A cancelled run has only the runner's grace period left.
    async fn prove_restore(
        &self,
        touched: &[Host],
        report: &mut Report,
        began: Instant,
        outlast_stops: bool,
    ) -> Result<crate::health::HealthRecord, Unproven> {
        let cancelled = crate::cancel::is_cancelled();
        let budget = crate::cancel::RESTORE_BUDGET;
        let bounded = |what: &'static str| {
            move |_| {
                Unproven::OutOfTime(format!(
                    "{what} within the {} s a cancelled run has left",
                    crate::cancel::RESTORE_BUDGET.as_secs()
                ))
            }
        };
        let proof = async {
            // A restored container that goes down during the probe is what the steady
            // window is for (a stop still in flight that `settle` could not see, e.g. its
            // event past the daemon's ring on a busy host): done once more, outlasting it.
            let record = self
                .health_gate(touched, report, Instant::now(), true)
                .await
                .map_err(|f| match f {
                    Fault::CrashLoop(why) => Unproven::WentDown(why),
                    other => Unproven::Fault(other),
                })?;
            let verified = on_all(touched, |t| t.verify()).await;
            if let Some(e) = verified.into_iter().find_map(Result::err) {
                return Err(Unproven::Fault(Fault::host(HostStep::Verify)(e)));
            }
            let elapsed = began.elapsed();
            let looks = on_all(touched, move |t| {
                (t.state().name, t.steady(elapsed, outlast_stops))
            })
            .await;
            for (name, look) in looks {
                match look {
                    Ok(None) => {}
                    Ok(Some(why)) => return Err(Unproven::WentDown(format!("{name}: {why}"))),
                    Err(e) => return Err(Unproven::Fault(Fault::host(HostStep::Watch)(e))),
                }
            }
            Ok(record)
        };
        if cancelled {
            tokio::time::timeout(budget, proof)
                .await
                .map_err(bounded("not proven healthy and steady"))?
        } else {
            proof.await
        }
    }

    /// `mode: rollback`: re-activate the newest release proven healthy other than current
    /// (or the one `release` names, with a warning when it never proved healthy), then
    /// prove it healthy.
    pub(super) async fn manual_rollback(
        &mut self,
        hosts: &[Host],
        report: &mut Report,
    ) -> Result<Outcome, Fault> {
        let wanted = self.cfg.release.clone();
        let started = Instant::now();
        let spec = self.spec.clone();
        let chosen = on_all(hosts, move |t| {
            let (target, unproven) = t.choose_rollback(wanted.as_deref())?;
            // Through the edge when the release was routed: started beside, proven,
            // switched, drained, as a routed deploy is; else `up` as before.
            let routed = t.switch_to(&target, &spec)?;
            if !routed {
                t.activate(&target)?;
            }
            Ok::<_, ReleaseError>((target, unproven, routed))
        })
        .await;
        let through_edge = chosen.iter().all(|r| matches!(r, Ok((_, _, true))));
        let mut chosen = chosen;
        if !through_edge {
            // Hosts disagree (one has the release routed, one not): `up` everywhere, as
            // without `routes`.
            let activated = on_all(hosts, |t| {
                let s = t.state();
                match (s.touched, s.release) {
                    (false, Some(r)) => t.activate(&r),
                    _ => Ok(()),
                }
            })
            .await;
            if let Some(e) = activated.into_iter().find_map(Result::err) {
                chosen.push(Err(e));
            }
        }
        super::report_heals(hosts, report).await;
        let mut targets = Vec::new();
        for r in chosen {
            match r {
                Ok((target, unproven, _)) => {
                    if let Some(w) = unproven {
                        report.warn("berth: restoring a release that never proved healthy", w);
                    }
                    targets.push(target);
                }
                Err(e) => {
                    let fault = Fault::host(HostStep::Rollback)(e);
                    report.record(
                        Phase::Rollback,
                        started.elapsed(),
                        PhaseResult::Failed(fault.to_string()),
                    );
                    return Err(fault);
                }
            }
        }
        self.restored = targets.first().cloned();
        report.release = targets.first().cloned();
        report.previous_release = hosts[0].state().await.previous;
        let judged = if through_edge {
            report.routed = true;
            self.start_user_probe(hosts).await;
            let switched = self.switch_through_edge(hosts, report).await;
            if switched.is_ok() {
                report.record(
                    Phase::Rollback,
                    started.elapsed(),
                    PhaseResult::Ok(format!(
                        "switched the edge to {} and held it through the verdict window",
                        targets.join(", ")
                    )),
                );
            }
            switched
        } else {
            report.record(
                Phase::Rollback,
                started.elapsed(),
                PhaseResult::Ok(format!("re-activated {}", targets.join(", "))),
            );
            self.verify_and_gate(hosts, report, Instant::now(), None)
                .await
        };
        let health_started = Instant::now();
        let result = match judged {
            Ok(record) => {
                report.health_seconds = record.healthy_after.map(|d| d.as_secs_f64());
                report.record(
                    Phase::Health,
                    health_started.elapsed(),
                    PhaseResult::Ok("healthy".into()),
                );
                report.health = Some(record);
                record_restored(hosts, &targets, report).await;
                self.drain(hosts, report).await;
                report.notices.push(Annotation::new(
                    Level::Notice,
                    "berth: rolled back",
                    format!(
                        "Release {} is serving again and healthy.",
                        targets.first().cloned().unwrap_or_default()
                    ),
                ));
                Ok(Outcome::RolledBack)
            }
            Err(fault) => {
                super::verdict::record_unproven(report, &fault, health_started);
                if through_edge {
                    // Users first: back to what served (one load), then the logs.
                    for r in on_all(hosts, |t| t.route_back()).await {
                        if let Err(e) = r {
                            report.warn("berth: switch back failed", format!("Routing the edge back failed ({e}); the restore below does it again."));
                        }
                    }
                }
                report.diagnostics = on_all(hosts, |t| t.diagnostics(LOG_LINES)).await;
                if through_edge {
                    // Back to what served: its containers still run, so this is one config
                    // load, and the release that failed goes.
                    for e in on_all(hosts, |t| match t.state().previous {
                        Some(previous) => t.activate(&previous),
                        None => Ok(()),
                    })
                    .await
                    .into_iter()
                    .filter_map(Result::err)
                    {
                        report.warn("berth: switch back failed", format!("The rollback failed and switching back to the release that served before failed too: {e}"));
                    }
                }
                Err(fault)
            }
        };
        self.finish_user_probe(report).await;
        result
    }

    /// `mode: rollback` through the edge: the release's containers started beside what
    /// runs, proven by the header, switched to, judged with the verdict window.
    async fn switch_through_edge(
        &self,
        hosts: &[Host],
        report: &mut Report,
    ) -> Result<crate::health::HealthRecord, Fault> {
        self.run_release(hosts, report, super::Batch::Activate)
            .await
            .map_err(|(phase, e)| Fault::host(HostStep::Release(phase))(e))?;
        self.prove_and_switch(hosts, report).await?;
        self.judge(hosts, report, Instant::now()).await
    }
}

/// A restore whose containers went down in the steady window is done again, once.
const RESTORE_ATTEMPTS: u32 = 2;

/// Why a restore is not proven.
enum Unproven {
    /// Unhealthy, the wrong digests, or the hosts could not be watched.
    Fault(Fault),
    /// A restored container went down within the steady window (a stop in flight).
    WentDown(String),
    /// A cancelled run's time ran out first.
    OutOfTime(String),
}

/// Re-activates every touched host's restore target; the first error, if any.
async fn reactivate(touched: &[Host]) -> Option<ReleaseError> {
    let restored = on_all(touched, |t| {
        let target = t
            .state()
            .restore_target
            .ok_or(ReleaseError::NothingToRestore)?;
        t.activate(&target).or_else(|e| {
            // The connection may have died with the deploy; one fresh try. Any other
            // failure is the restore's own: doing it again would not change it.
            if !matches!(e, ReleaseError::Ssh(_)) {
                return Err(e);
            }
            t.reconnect()?;
            t.activate(&target).map_err(|_| e)
        })
    })
    .await;
    restored.into_iter().find_map(Result::err)
}

/// Each host records what it restored (hosts may have chosen differently).
async fn record_restored(hosts: &[Host], targets: &[String], report: &mut Report) {
    for (host, restored) in hosts.iter().zip(targets.iter().cloned()) {
        let recorded = host
            .call(move |t| {
                let name = t.state().name;
                t.record_manual_rollback(&restored)
                    .map_err(|e| format!("{name}: {e}"))
            })
            .await;
        if let Err(e) = recorded {
            report.warn("berth: release record not written", e);
        }
    }
}

/// The most telling lines of the failing containers' logs: errors first, else the tail.
pub fn telling_lines(diagnostics: &[Diagnostics], n: usize) -> Vec<String> {
    let keywords = [
        "fatal",
        "error",
        "panic",
        "exception",
        "refused",
        "denied",
        "failed",
        "cannot",
        "killed",
    ];
    let mut telling = Vec::new();
    let mut tail = Vec::new();
    // Scrubbed before the cut: a cut first could leave half a secret no mask matches.
    let masks = crate::secret::registered();
    for d in diagnostics {
        for (container, log) in &d.logs {
            for line in log.lines().filter(|l| !l.trim().is_empty()) {
                // One huge line must not crowd the others out of the annotation.
                let tagged = format!(
                    "{container}: {}",
                    crate::markdown::cut_long_lines(
                        &crate::secret::scrub(&masks, line.trim()),
                        300
                    )
                );
                let lower = line.to_ascii_lowercase();
                if keywords.iter().any(|k| lower.contains(k)) {
                    telling.push(tagged.clone());
                }
                tail.push(tagged);
            }
        }
    }
    let pick = if telling.is_empty() { tail } else { telling };
    pick[pick.len().saturating_sub(n)..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 25: a log line was cut at 300 bytes before it was scrubbed.
    #[test]
    fn a_secret_across_the_telling_line_cut_is_scrubbed_whole() {
        let secret = "telling-line-secret-8042";
        crate::secret::register(&crate::secret::Secret::new(secret));
        let d = Diagnostics {
            host: "h".into(),
            ps: String::new(),
            logs: vec![(
                "web-1".into(),
                format!("error: {}{secret} and on", "c".repeat(285)),
            )],
        };
        let lines = telling_lines(&[d], 5);
        assert_eq!(lines.len(), 1);
        assert!(!lines[0].contains("telling-l"), "{}", lines[0]);
        assert!(lines[0].contains("***"), "{}", lines[0]);
    }
}
