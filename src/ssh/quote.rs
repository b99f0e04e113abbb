//! The one place an argv becomes a shell command line.

use crate::inputs::HostSpec;

/// `cmd` as a person runs it on `host` with the OpenSSH client: what to type to do by
/// hand what berth could not.
pub fn by_hand(host: &HostSpec, cmd: &crate::remote::Cmd) -> String {
    quote_argv(&[
        "ssh".into(),
        "-p".into(),
        host.port.to_string(),
        format!("{}@{}", host.user, host.host),
        quote_argv(&cmd.0),
    ])
}

/// Every word in single quotes, with embedded single quotes closed, escaped and
/// reopened.
pub fn quote_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|a| quote_word(a))
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote_word(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+%^".contains(c))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}
