//! berth's one integration-test binary. Tests drive the real binary through `INPUT_*`
//! variables against real pieces (Docker engine, registry, sshd) from `support::rig`.

mod support;

mod act;
mod ci_gate;
mod edge;
mod fleet;
mod health;
mod image;
mod images;
mod injection;
mod inputs;
mod interrupt;
mod plan;
mod records;
mod release;
mod report;
mod rig_smoke;
mod secrets;
mod swarm;
mod trust;
mod upload;
