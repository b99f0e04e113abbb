//! What the GitHub Actions runner would act on in berth's output, decided the way the
//! runner decides it (actions/runner `ProcessInvoker`, `ActionCommand`,
//! `ActionCommandManager`):
//! - lines end at `\n`, `\r\n` or a lone `\r` (.NET `ReadLine`);
//! - the v2 parser trims leading whitespace, then wants `::name ...::data`;
//! - the legacy parser finds `##[name ...]data` anywhere in a line;
//! - both accept only registered command names;
//! - after `stop-commands::TOKEN`, nothing is a command until one whose *name* is TOKEN
//!   (either parser, any case) resumes processing.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub name: String,
    pub props: String,
    pub data: String,
}

const REGISTERED: &[&str] = &[
    "add-mask",
    "add-matcher",
    "add-path",
    "debug",
    "echo",
    "endgroup",
    "error",
    "group",
    "notice",
    "remove-matcher",
    "save-state",
    "set-env",
    "set-output",
    "stop-commands",
    "warning",
];

/// Every command the runner would process in `output`, in order.
pub fn commands(output: &str) -> Vec<Command> {
    let mut out = Vec::new();
    let mut stop_token: Option<String> = None;
    for line in berth::workflow::runner_lines(output) {
        let registered = |name: &str| {
            REGISTERED.contains(&name)
                || stop_token
                    .as_deref()
                    .is_some_and(|t| t.eq_ignore_ascii_case(name))
        };
        let Some(cmd) = v2(line, &registered).or_else(|| legacy(line, &registered)) else {
            continue;
        };
        if let Some(token) = &stop_token {
            if cmd.name.eq_ignore_ascii_case(token) {
                stop_token = None;
            }
            continue;
        }
        if cmd.name == "stop-commands" {
            stop_token = Some(cmd.data.clone());
        }
        out.push(cmd);
    }
    out
}

fn v2(line: &str, registered: &dyn Fn(&str) -> bool) -> Option<Command> {
    // .NET `TrimStart()` trims `Char.IsWhiteSpace`, the Unicode White_Space set.
    let m = line.trim_start();
    let rest = m.strip_prefix("::")?;
    let end = rest.find("::")?;
    let info = &rest[..end];
    let (name, props) = info.split_once(' ').unwrap_or((info, ""));
    registered(name).then(|| Command {
        name: name.into(),
        props: props.into(),
        data: rest[end + 2..].into(),
    })
}

fn legacy(line: &str, registered: &dyn Fn(&str) -> bool) -> Option<Command> {
    let start = line.find("##[")? + 3;
    let close = line[start..].find(']')? + start;
    let info = &line[start..close];
    let (name, props) = info.split_once(' ').unwrap_or((info, ""));
    registered(name).then(|| Command {
        name: name.into(),
        props: props.into(),
        data: line[close + 1..].into(),
    })
}

/// Fails unless every command in `output` is one berth meant: masks, groups, and
/// annotations titled by berth. App text that became a command shows up here.
pub fn assert_only_berths_commands(output: &str) {
    for c in commands(output) {
        match c.name.as_str() {
            "add-mask" | "group" | "endgroup" => {}
            "error" | "warning" | "notice" => assert!(
                c.props.contains("title=berth"),
                "a forged `{}` annotation reached the runner: {c:?}",
                c.name
            ),
            other => panic!("berth never issues `{other}`, yet the runner would act on: {c:?}"),
        }
    }
}

#[test]
fn the_parser_finds_what_the_runner_would() {
    let cmds = commands(
        "plain\n  ::warning::a\nx\r::notice title=t::b\ntext ##[error]c\n::stop-commands::tok\n::error::hidden\n##[TOK]\n::error::shown\n",
    );
    let names: Vec<&str> = cmds.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["warning", "notice", "error", "stop-commands", "error"]
    );
    assert_eq!(cmds[4].data, "shown");
    assert!(commands("\u{200B}::warning::x\n##\u{200B}[error]y").is_empty());
}
