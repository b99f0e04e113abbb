//! The Swarm target (`target: swarm`): a stack deployed through one manager over SSH
//! (`host.rs`), the stack file made from a release's compose model (`stack.rs`), the
//! judgement of a service's update from what the manager reports (`status.rs`, unit-tested
//! on a real swarm's output in `tests/fixtures/swarm/`), and of the whole stack from one
//! look at the manager (`state.rs`). The upstream facts it relies on are in
//! `docs/swarm-research.md`.

pub mod host;
pub mod stack;
pub mod state;
pub mod status;
