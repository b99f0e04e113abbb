//! The compose target's side of a proven restore and of a host that heals itself (see
//! `remote::heal`): the heal (armed by a release step, [`super::ARM_HEAL`]) disarmed at the
//! verdict, the hand-over of a cancelled run, and the steady window of a restore.

use std::time::Duration;

use super::{ComposeHost, QUICK};

use crate::targets::ReleaseError;

impl ComposeHost {
    /// berth has its verdict (and has recorded it): the host has nothing to heal.
    pub(super) fn disarm_heal(&mut self) -> Result<(), ReleaseError> {
        if !self.heal_armed {
            return Ok(());
        }
        self.step(
            "disarm the host's self-heal",
            &self.layout.disarm_heal(),
            None,
            QUICK,
        )?;
        self.heal_armed = false;
        Ok(())
    }

    /// A cancelled run is leaving: when its session ends, the host heals at once rather
    /// than first waiting to see whether berth connects again.
    pub(super) fn hand_over(&mut self) -> Result<(), ReleaseError> {
        if !self.heal_armed {
            return Ok(());
        }
        self.step(
            "hand the restore over to the host",
            &self.layout.hand_over(),
            None,
            QUICK,
        )?;
        super::lock::set_handed_over(&self.access, &self.token);
        self.handed_over = true;
        Ok(())
    }

    /// Whether the restored containers stay up: with `outlast_stops`, for the project's
    /// longest stop timeout plus a margin counted from when the restore began (`elapsed`
    /// ago); else for 2 s. Ok(None) when they did; Ok(Some(why)) when one did not.
    pub(super) fn steady(
        &mut self,
        elapsed: Duration,
        outlast_stops: bool,
    ) -> Result<Option<String>, ReleaseError> {
        let cmd = self.layout.steady(elapsed.as_secs(), outlast_stops);
        // Bounded by its own window (the longest stop timeout plus a margin), which may
        // pass QUICK: only a host that stops answering is cut off here.
        let out = self.quiet(&cmd, None, super::LONG, false)?;
        match out.status {
            0 => Ok(None),
            1 => Ok(Some(out.stdout.trim().to_string())),
            _ => self.exited_0("steady window", out).map(|_| None),
        }
    }
}
