//! The Swarm target (issue 17), being built: so far its pure parts, the stack file made
//! from a release's compose model (`stack.rs`), the judgement of a service's update
//! from what the manager reports (`status.rs`, unit-tested on a real swarm's output in
//! `tests/fixtures/swarm/`), and of the whole stack from one look at the manager
//! (`state.rs`, driven on a real swarm by `tests/it/swarm.rs`). The `Target` implementation, the `target: swarm` input and
//! its rig tests come next; until then nothing here is reachable from an input. The
//! upstream facts it relies on are in `docs/swarm-research.md`.

pub mod host;
pub mod stack;
pub mod state;
pub mod status;
