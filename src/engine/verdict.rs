//! The verdict on a release: the running digests verified while the health probe already
//! runs, and a crash watch alongside the probe. All three run at once; the first failure
//! decides.

use std::time::{Duration, Instant};

use super::hosts::{on_all, Host};
use super::Engine;
use crate::failure::{Fault, HostStep};
use crate::health::{HealthProbe, HealthRecord};
use crate::report::{Phase, PhaseResult, Report};

/// How often the crash-loop watch looks at the workloads while health is probed.
pub const CRASH_WATCH_EVERY: Duration = Duration::from_secs(1);

impl Engine<'_> {
    /// Verifies the running digests while the health probe already runs: the verdict
    /// needs both, and neither waits for the other.
    pub(super) async fn verify_and_gate(
        &self,
        hosts: &[Host],
        report: &mut Report,
        started: Instant,
        header: Option<(&str, &str)>,
    ) -> Result<HealthRecord, Fault> {
        let verify_started = Instant::now();
        let verify = async {
            let results = on_all(hosts, |t| t.verify()).await;
            (
                results.into_iter().find_map(Result::err),
                verify_started.elapsed(),
            )
        };
        let ((verify_error, verify_time), health) = tokio::join!(
            verify,
            self.health_gate_with(hosts, report, started, false, header)
        );
        if let Some(e) = verify_error {
            report.record(
                Phase::Verify,
                verify_time,
                PhaseResult::Failed(e.to_string()),
            );
            return Err(Fault::host(HostStep::Verify)(e));
        }
        report.record(
            Phase::Verify,
            verify_time,
            PhaseResult::Ok("running containers match the pinned digests".into()),
        );
        health
    }

    /// Probes `health-url` until healthy, while watching every host for crash loops. A
    /// release's verdict ends when the run is cancelled; a restore's (`restoring`) does
    /// not, the caller bounds it.
    pub(super) async fn health_gate(
        &self,
        hosts: &[Host],
        report: &mut Report,
        started: Instant,
        restoring: bool,
    ) -> Result<HealthRecord, Fault> {
        self.health_gate_with(hosts, report, started, restoring, None)
            .await
    }

    /// [`Engine::health_gate`], each probe carrying `header` (the edge's candidate header:
    /// the probe reaches the new containers only).
    pub(super) async fn health_gate_with(
        &self,
        hosts: &[Host],
        report: &mut Report,
        started: Instant,
        restoring: bool,
        header: Option<(&str, &str)>,
    ) -> Result<HealthRecord, Fault> {
        // Not from the hosts' threads: one may be busy verifying, and the probe must not
        // wait for it.
        let specs: Vec<_> = hosts.iter().map(|h| h.spec.clone()).collect();
        let urls = self.cfg.health.urls(&specs);
        if urls.is_empty() {
            return Ok(HealthRecord {
                healthy_after: Some(Duration::ZERO),
                ..Default::default()
            });
        }
        let probes = urls
            .iter()
            .map(|url| {
                HealthProbe::from_config(&self.cfg.health, url).map(|p| match header {
                    Some((k, v)) => p.with_header(k, v),
                    None => p,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Fault::Probe(e.to_string()))?;
        let names: Vec<String> = urls.iter().map(crate::inputs::redact_url).collect();
        let what = if header.is_some() {
            "Health of the new containers, through the edge (probe header only)"
        } else {
            "Health"
        };
        let _group = self.runner.group(&format!("{what}: {}", names.join(", ")));
        let probe = self.probe_all(&probes, started);
        let watch = crash_watch(hosts, started);
        let cancel = async {
            if !restoring {
                crate::cancel::cancelled().await
            } else {
                std::future::pending().await
            }
        };
        // All polled together: a watch waiting on a host never stalls the probe.
        tokio::select! {
            r = probe => r,
            fault = watch => {
                if let Fault::CrashLoop(msg) = &fault {
                    report.warn("berth: crash loop", msg.clone());
                }
                Err(fault)
            }
            _ = cancel => Err(Fault::cancelled(Phase::Health)),
        }
    }

    /// Every URL must pass; the slowest decides when the release counts as healthy.
    async fn probe_all(
        &self,
        probes: &[HealthProbe],
        started: Instant,
    ) -> Result<HealthRecord, Fault> {
        let several = probes.len() > 1;
        let records = futures_util::future::join_all(probes.iter().map(|p| {
            let runner = self.runner.clone();
            let prefix = if several {
                format!("{} ", p.shown_url())
            } else {
                String::new()
            };
            p.wait(started, move |a| {
                runner.line(&format!(
                    "{prefix}{:>6.1}s {}",
                    a.offset.as_secs_f64(),
                    a.outcome
                ))
            })
        }))
        .await;
        match records.iter().find(|r| r.healthy_after.is_none()) {
            Some(unhealthy) => {
                let msg = format!(
                    "{} was not healthy within {} (`health-timeout`); {}",
                    unhealthy.url,
                    crate::report::Rounded(probes[0].timeout),
                    unhealthy.failure_summary()
                );
                Err(Fault::Unhealthy {
                    message: msg,
                    record: Box::new(unhealthy.clone()),
                })
            }
            None => Ok(records
                .into_iter()
                .max_by_key(|r| r.healthy_after)
                .unwrap_or_default()),
        }
    }
}

impl Engine<'_> {
    /// Starts measuring what users see (the first `health-url`, as a user reaches it).
    pub(super) async fn start_user_probe(&self, hosts: &[Host]) {
        let specs: Vec<_> = hosts.iter().map(|h| h.spec.clone()).collect();
        let Some(url) = self.cfg.health.urls(&specs).into_iter().next() else {
            return;
        };
        let Ok(probe) = HealthProbe::fresh_connections(&self.cfg.health, &url) else {
            return;
        };
        if let Ok(mut slot) = self.user_probe.lock() {
            *slot = Some(crate::health::UserProbe::start(probe));
        }
    }

    /// After the edge's switch: the new containers must stay healthy for `window`, every
    /// probe passing and nothing crash-looping. The old ones are kept meanwhile, so a
    /// failure here switches back in one config load.
    pub(super) async fn hold(
        &self,
        hosts: &[Host],
        window: Duration,
        header: (&str, &str),
    ) -> Result<(), Fault> {
        let specs: Vec<_> = hosts.iter().map(|h| h.spec.clone()).collect();
        let probes = self
            .cfg
            .health
            .urls(&specs)
            .iter()
            // A config load closes idle connections: the window judges the app, not that.
            // The header reaches the new containers alone, never the fallback.
            .map(|url| {
                HealthProbe::fresh_connections(&self.cfg.health, url)
                    .map(|p| p.with_header(header.0, header.1))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Fault::Probe(e.to_string()))?;
        let started = Instant::now();
        let _group = self.runner.group(&format!(
            "Verdict window: {} after the switch",
            crate::report::Rounded(window)
        ));
        let probe = async {
            let interval = self.cfg.health.interval.min(Duration::from_secs(1));
            while started.elapsed() < window {
                for p in &probes {
                    let outcome = p.probe(crate::health::PROBE_TIMEOUT).await;
                    if !matches!(outcome, crate::health::ProbeOutcome::Healthy { .. }) {
                        let msg = format!(
                            "{} failed {:.1}s after the switch, inside the verdict window: {outcome}",
                            p.shown_url(),
                            started.elapsed().as_secs_f64()
                        );
                        self.runner.line(&msg);
                        return Err(Fault::Unhealthy {
                            message: msg,
                            record: Box::default(),
                        });
                    }
                }
                tokio::time::sleep(interval).await;
            }
            self.runner.line(&format!(
                "healthy through the verdict window ({})",
                crate::report::Rounded(window)
            ));
            Ok(())
        };
        tokio::select! {
            r = probe => r,
            fault = crash_watch(hosts, started) => Err(fault),
            _ = crate::cancel::cancelled() => Err(Fault::cancelled(Phase::Health)),
        }
    }
}

/// A verdict that failed: a health failure gets its row in the phase table, and the
/// health record (if a probe ran) goes into the report.
pub(super) fn record_unproven(report: &mut Report, fault: &Fault, health_started: Instant) {
    if fault.phase() == Phase::Health {
        report.record(
            Phase::Health,
            health_started.elapsed(),
            PhaseResult::Failed(fault.to_string()),
        );
    }
    report.health = fault.health_record();
}

/// Looks at every host each [`CRASH_WATCH_EVERY`] until one has a failing workload (a
/// crash loop) or cannot be asked; never returns otherwise.
async fn crash_watch(hosts: &[Host], started: Instant) -> Fault {
    loop {
        tokio::time::sleep(CRASH_WATCH_EVERY).await;
        let looks = on_all(hosts, |t| (t.state().name, t.watch())).await;
        for (name, look) in looks {
            match look {
                Ok(failing) if failing.is_empty() => {}
                Ok(failing) => {
                    return Fault::CrashLoop(format!(
                        "{name} after {:.1}s, before the health deadline: {}",
                        started.elapsed().as_secs_f64(),
                        failing.join("; ")
                    ))
                }
                // A watch that cannot see must not pass for one that saw nothing.
                Err(e) => return Fault::host(HostStep::Watch)(e),
            }
        }
    }
}
