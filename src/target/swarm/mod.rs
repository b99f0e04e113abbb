//! The Swarm target (issue 17), being built: so far its pure parts, the stack file made
//! from a release's compose model (`stack.rs`) and the judgement of a service's update
//! from what the manager reports (`status.rs`, unit-tested on a real swarm's output in
//! `tests/fixtures/swarm/`). The `Target` implementation, the `target: swarm` input and
//! its rig tests come next; until then nothing here is reachable from an input. The
//! upstream facts it relies on are in `docs/swarm-research.md`.

pub mod stack;
pub mod status;
