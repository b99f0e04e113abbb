//! A remote command as an argv, and the one place an argv becomes a shell command line.
//! Below both `remote` (which builds commands) and `ssh` (which sends them).

/// One argv, executed as a single remote command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd(pub Vec<String>);

impl Cmd {
    pub fn new<I, S>(words: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Cmd(words.into_iter().map(Into::into).collect())
    }
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
