//! A host's release records: what runs now (the snapshot), what each release was and how
//! it ended (`release.json`), and what is kept (pruning). A rollback trusts these.

use super::watch::parse_containers;
use super::{now_rfc3339, sha256_hex, ComposeHost, QUICK};
use crate::remote::{self, ReleaseRecord};
use crate::targets::{ReleaseError, ReleaseSpec};

impl ComposeHost {
    /// Records what runs now, by image id, and which release `current` points at.
    pub fn snapshot(&mut self) -> Result<(), ReleaseError> {
        let out = self.step("snapshot", &self.layout.snapshot(), None, QUICK)?;
        let (current, rest) = out.stdout.split_once('\n').unwrap_or((&out.stdout, ""));
        // The records come last, each block opened by a marker line.
        let (rest, records) = match rest.find(remote::RECORD_MARK) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        self.releases = remote::parse_release_records(records);
        self.previous = remote::current_release(current);
        let (rest, note) = rest.split_once(remote::HEALED_MARK).unwrap_or((rest, ""));
        self.healed = remote::parse_healed_note(note);
        if self.healed.is_some() {
            // Reported once: by this run.
            let _ = self.step(
                "heal note",
                &remote::consume_healed_note(&self.layout),
                None,
                QUICK,
            );
        }
        let containers = parse_containers(rest);
        self.restarts_before = containers
            .iter()
            .map(|c| (c.id.clone(), c.restart_count))
            .collect();
        self.replaced = containers
            .into_iter()
            .filter(|c| !c.one_off)
            .map(|c| (c.service, c.image_id))
            .collect();
        Ok(())
    }

    /// Reads every release and its outcome afresh.
    pub fn list_releases(&mut self) -> Result<(), ReleaseError> {
        let out = self.step("list releases", &self.layout.release_records(), None, QUICK)?;
        self.releases = remote::parse_release_records(&out.stdout);
        Ok(())
    }

    /// Where a rollback goes, as of the last listing: the newest release proven healthy.
    /// Not "the one before current": that may be a release that failed, was rolled back,
    /// or was interrupted.
    pub fn restore_target(&self) -> Option<String> {
        remote::newest_proven(&self.releases, &[]).map(|e| e.id.clone())
    }

    /// This run's release record with `outcome`. A record is what a later rollback
    /// trusts, so it is written at every turn: pending, then how the release ended.
    pub fn write_record(&self, spec: &ReleaseSpec, outcome: &str) -> Result<(), ReleaseError> {
        let Some(id) = &self.release else {
            return Ok(());
        };
        self.conn.upload(
            &format!("{}/{}", self.layout.release_dir(id), remote::RECORD_FILE),
            self.record_body(spec, outcome).as_bytes(),
            0o644,
        )?;
        Ok(())
    }

    pub(super) fn record_body(&self, spec: &ReleaseSpec, outcome: &str) -> String {
        let record = ReleaseRecord {
            id: self.release.clone().unwrap_or_else(|| spec.id.clone()),
            sha: spec.sha.clone(),
            created_at: spec.holder.started_at.clone(),
            updated_at: now_rfc3339(),
            compose_sha256: sha256_hex(spec.compose.as_bytes()),
            env_sha256: sha256_hex(spec.env_file.expose().as_bytes()),
            actor: spec.holder.actor.clone(),
            run_url: spec.holder.run_url.clone(),
            images: self.own_pins.clone(),
            replaced: self.replaced.clone(),
            previous_release: self.previous.clone(),
            outcome: outcome.into(),
        };
        serde_json::to_string_pretty(&record).expect("json") + "\n"
    }

    /// Keeps the newest `keep-releases` dirs and prunes only this project's images that
    /// no kept release references. Never `docker system prune`.
    pub fn prune(&mut self, spec: &ReleaseSpec) -> Result<Vec<String>, ReleaseError> {
        let current = self.release.clone().unwrap_or_default();
        self.list_releases()?;
        let doomed =
            remote::releases_to_prune(&self.releases, spec.keep_releases as usize, &current, None);
        for id in &doomed {
            self.step(
                "remove release",
                &self.layout.remove_release(id),
                None,
                QUICK,
            )?;
        }
        if spec.image_prefix.is_empty() {
            return Ok(doomed);
        }
        let referenced: std::collections::BTreeSet<String> = self
            .releases
            .iter()
            .filter(|e| !doomed.contains(&e.id))
            .filter_map(|e| e.record.as_ref())
            .flat_map(|r| r.images.values().cloned())
            .collect();
        let images = self.step(
            "list project images",
            &remote::project_images(&spec.image_prefix),
            None,
            QUICK,
        )?;
        let unused: Vec<String> = images
            .stdout
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(reference, _)| !referenced.contains(*reference))
            .map(|(_, id)| id.to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if !unused.is_empty() {
            // An image still used by a container is refused by the engine; that is fine.
            let _ = self.quiet(&remote::remove_images(&unused), None, QUICK, true);
        }
        Ok(doomed)
    }

    /// `mode: rollback`: the release named, or the newest proven one other than current;
    /// and a warning when the one named never proved healthy. Lists what there is to
    /// choose from, as each record says.
    pub fn choose_rollback(
        &mut self,
        wanted: Option<&str>,
    ) -> Result<(String, Option<String>), ReleaseError> {
        self.snapshot()?;
        for e in &self.releases {
            self.runner.line(&format!(
                "{}: release {} {}{}",
                self.conn.name,
                e.id,
                e.outcome().as_str(),
                if Some(&e.id) == self.previous.as_ref() {
                    " (current)"
                } else {
                    ""
                }
            ));
        }
        let target = match wanted {
            Some(id) => id.to_string(),
            None => self.proven_other_than_current()?,
        };
        let unproven = match self.outcome_of(&target) {
            Some(remote::Outcome::Deployed) | None => None,
            Some(o) => Some(format!("release {target} on {} never proved healthy (its record says `{}`); restoring it because it was named", self.conn.name, o.as_str())),
        };
        Ok((target, unproven))
    }

    /// For `mode: rollback` without `release`: the newest release proven healthy other
    /// than the one `current` points at.
    /// The listing is the snapshot's.
    pub fn proven_other_than_current(&self) -> Result<String, ReleaseError> {
        let current = self.previous.clone().unwrap_or_default();
        remote::newest_proven(&self.releases, &[current.as_str()])
            .map(|e| e.id.clone())
            .ok_or_else(|| ReleaseError::Unexpected {
                host: self.conn.name.clone(),
                doing: "choosing a release to restore",
                detail: format!(
                    "no release other than `{current}` was ever proven healthy here. Name one with `release:` (the list above shows each release's outcome)."
                ),
            })
    }

    /// After `mode: rollback` proved `restored` healthy: the release it left is recorded
    /// `rolled-back` (so neither a later rollback nor a failed deploy's restore goes back
    /// to it) and `restored` is recorded `deployed` (proven now, if it was not before).
    pub fn record_manual_rollback(&mut self, restored: &str) -> Result<(), ReleaseError> {
        let now = now_rfc3339();
        if let Some(left) = self.previous.clone().filter(|l| l != restored) {
            self.step(
                "record the release left",
                &self.layout.set_outcome(&left, "rolled-back", &now),
                None,
                QUICK,
            )?;
        }
        self.step(
            "record the restored release",
            &self.layout.set_outcome(restored, "deployed", &now),
            None,
            QUICK,
        )?;
        Ok(())
    }

    /// The outcome of release `id` as its record says, if the host has it.
    pub fn outcome_of(&self, id: &str) -> Option<remote::Outcome> {
        self.releases
            .iter()
            .find(|e| e.id == id)
            .map(|e| e.outcome())
    }
}
