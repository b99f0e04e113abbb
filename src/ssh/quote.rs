//! A command as a person types it on the host.

use crate::argv::{quote_argv, Cmd};
use crate::inputs::HostSpec;

/// `cmd` as a person runs it on `host` with the OpenSSH client: what to type to do by
/// hand what berth could not.
pub fn by_hand(host: &HostSpec, cmd: &Cmd) -> String {
    quote_argv(&[
        "ssh".into(),
        "-p".into(),
        host.port.to_string(),
        format!("{}@{}", host.user, host.host),
        quote_argv(&cmd.0),
    ])
}
