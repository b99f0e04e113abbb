use super::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);
impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

fn runner(files: FileCommands, secrets: &[&Secret]) -> (Runner, Captured, Captured) {
    let (out, err) = (Captured::default(), Captured::default());
    let r = Runner::start(Box::new(out.clone()), Box::new(err.clone()), files, secrets);
    (r, out, err)
}

#[test]
fn data_escaping_vectors() {
    assert_eq!(escape_data("100%"), "100%25");
    assert_eq!(escape_data("a\r\nb"), "a%0D%0Ab");
    // `%` goes first, so an already-escaped-looking value survives the round trip.
    assert_eq!(escape_data("%0A"), "%250A");
    assert_eq!(escape_data("a::b"), "a::b");
}

#[test]
fn property_escaping_vectors() {
    assert_eq!(escape_property("a:b,c"), "a%3Ab%2Cc");
    assert_eq!(escape_property("50%,\n"), "50%25%2C%0A");
}

#[test]
fn annotation_with_all_properties() {
    let a = Annotation::new(
        Level::Error,
        "berth: invalid input hosts",
        "bad\nhost: x, y",
    )
    .in_file("action.yml", Some(3));
    assert_eq!(
        a.to_command(),
        "::error file=action.yml,line=3,title=berth%3A invalid input hosts::bad%0Ahost: x, y"
    );
}

#[test]
fn annotation_message_is_cut_at_the_runner_limit() {
    let a = Annotation::new(Level::Warning, "t", "é".repeat(5000));
    let cmd = a.to_command();
    assert_eq!(cmd.matches('é').count(), MESSAGE_LIMIT);
}

#[test]
fn masks_come_before_any_other_output() {
    let key = Secret::new("-----BEGIN KEY-----\nAAAAsecretline\n-----END KEY-----");
    let token = Secret::new("ghp_tokenvalue");
    let (r, out, _) = runner(FileCommands::default(), &[&key, &token]);
    r.line("hello ghp_tokenvalue");
    let text = out.text();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[..lines.len() - 1]
        .iter()
        .all(|l| l.starts_with("::add-mask::")));
    assert!(lines.contains(&"::add-mask::AAAAsecretline"));
    assert!(lines.contains(&"::add-mask::ghp_tokenvalue"));
    assert_eq!(lines.last(), Some(&"hello ***"));
}

#[test]
fn a_logged_line_cannot_inject_a_command() {
    let (r, out, err) = runner(FileCommands::default(), &[]);
    r.line("::set-output name=x::y");
    r.line("  \t::warning::indented");
    r.line("err\r::notice::after a lone CR\r\n::error::after CRLF");
    r.line("text ##[error]legacy ##[warning]twice");
    r.debug_line("::stop-commands::t");
    assert_eq!(
        out.text(),
        "\u{200B}::set-output name=x::y\n  \t\u{200B}::warning::indented\nerr\n\u{200B}::notice::after a lone CR\n\u{200B}::error::after CRLF\ntext ##\u{200B}[error]legacy ##\u{200B}[warning]twice\n"
    );
    assert_eq!(err.text(), "\u{200B}::stop-commands::t\n");
}

#[test]
fn streamed_output_is_drained_in_runner_lines_and_bounded() {
    let mut pending = b"a\rb\r\nc\nd\r".to_vec();
    let mut lines = Vec::new();
    drain_lines(&mut pending, &[], &mut |l| {
        lines.push(String::from_utf8_lossy(l).to_string())
    });
    assert_eq!(lines, ["a", "b", "c"]);
    assert_eq!(pending, b"d\r", "a CR last may be the start of CR LF");
    let mut huge = vec![b'x'; PENDING_LINE_BYTES + 1];
    let mut n = 0;
    drain_lines(&mut huge, &[], &mut |_| n += 1);
    assert_eq!((n, huge.len()), (1, 0));
}

#[test]
fn runner_lines_split_like_dotnet_readline() {
    assert_eq!(runner_lines("a\rb\r\nc\nd"), ["a", "b", "c", "d"]);
    assert_eq!(runner_lines("a\n"), ["a"]);
    assert_eq!(runner_lines("a\n\nb"), ["a", "", "b"]);
    assert_eq!(runner_lines(""), [""]);
}

#[test]
fn annotations_past_the_cap_are_defused_too() {
    let (r, out, _) = runner(FileCommands::default(), &[]);
    for _ in 0..ANNOTATIONS_PER_LEVEL {
        r.annotate(&Annotation::new(Level::Error, "t", "fine"));
    }
    r.annotate(&Annotation::new(
        Level::Error,
        "t",
        "body\r::warning::forged ##[error]x",
    ));
    let text = out.text();
    let last: Vec<&str> = text.lines().rev().take(2).collect();
    assert_eq!(
        last,
        ["\u{200B}::warning::forged ##\u{200B}[error]x", "t: body"]
    );
}

#[test]
fn groups_close_on_drop() {
    let (r, out, _) = runner(FileCommands::default(), &[]);
    {
        let _g = r.group("Build backend");
        r.line("step");
    }
    assert_eq!(out.text(), "::group::Build backend\nstep\n::endgroup::\n");
}

#[test]
fn annotations_are_capped_per_level() {
    let (r, out, _) = runner(FileCommands::default(), &[]);
    for i in 0..12 {
        r.annotate(&Annotation::new(Level::Error, "t", format!("e{i}")));
    }
    r.warning("t", "w");
    let text = out.text();
    assert_eq!(text.matches("::error").count(), ANNOTATIONS_PER_LEVEL);
    assert!(text.contains("t: e11"));
    assert_eq!(text.matches("::warning").count(), 1);
}

#[test]
fn outputs_use_a_heredoc_whose_delimiter_is_absent_from_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("output");
    let files = FileCommands {
        output: Some(path.clone()),
        summary: None,
    };
    let (r, _, _) = runner(files, &[]);
    let value = "50% done\nline :: two\nghadelimiter_\nEOF";
    r.set_output("images", value);
    let text = std::fs::read_to_string(&path).unwrap();
    let first = text.lines().next().unwrap();
    let delim = first.strip_prefix("images<<").unwrap();
    assert!(delim.starts_with("ghadelimiter_") && delim.len() > 20);
    assert!(!value.contains(delim));
    assert_eq!(text, format!("images<<{delim}\n{value}\n{delim}\n"));
}

#[test]
fn outputs_and_summary_are_scrubbed() {
    let dir = tempfile::tempdir().unwrap();
    let files = FileCommands {
        output: Some(dir.path().join("o")),
        summary: Some(dir.path().join("s")),
    };
    let pw = Secret::new("registry-pw-123");
    let (r, _, _) = runner(files, &[&pw]);
    r.set_output("x", "value registry-pw-123");
    r.append_summary("# pw registry-pw-123");
    let o = std::fs::read_to_string(dir.path().join("o")).unwrap();
    let s = std::fs::read_to_string(dir.path().join("s")).unwrap();
    assert!(!o.contains("registry-pw-123") && o.contains("value ***"));
    assert_eq!(s, "# pw ***\n");
}

#[test]
fn without_file_commands_outputs_go_to_stderr() {
    let (r, out, err) = runner(FileCommands::default(), &[]);
    r.set_output("status", "deployed");
    r.append_summary("## Summary");
    assert_eq!(out.text(), "");
    assert_eq!(err.text(), "output status=deployed\n## Summary\n");
}

/// Issue 25: a line over 64 KiB was flushed with whatever the stream had, so a secret
/// (or a char) that straddled two reads was handed over in two halves, each scrubbed on
/// its own.
#[test]
fn a_secret_across_the_64_kib_flush_is_handed_over_whole() {
    let secret = "flush-edge-secret-6208";
    let masks = vec![secret.to_string()];
    let mut pieces: Vec<String> = Vec::new();
    let mut reads = [
        format!("{}{}", "x".repeat(PENDING_LINE_BYTES), &secret[..7]).into_bytes(),
        format!("{}\n", &secret[7..]).into_bytes(),
    ];
    let mut pending = Vec::new();
    for read in &mut reads {
        pending.append(read);
        drain_lines(&mut pending, &masks, &mut |l| {
            pieces.push(crate::secret::scrub(&masks, &String::from_utf8_lossy(l)))
        });
    }
    assert!(pieces.len() >= 2, "the long line is handed over in parts");
    assert_eq!(
        pieces.concat(),
        format!("{}***", "x".repeat(PENDING_LINE_BYTES))
    );
}

#[test]
fn a_char_across_the_64_kib_flush_is_handed_over_whole() {
    let e = "é".as_bytes();
    let mut pending = [vec![b'x'; PENDING_LINE_BYTES], vec![e[0]]].concat();
    let mut pieces: Vec<Vec<u8>> = Vec::new();
    drain_lines(&mut pending, &[], &mut |l| pieces.push(l.to_vec()));
    pending.extend_from_slice(&[e[1], b'\n']);
    drain_lines(&mut pending, &[], &mut |l| pieces.push(l.to_vec()));
    for piece in &pieces {
        assert!(
            std::str::from_utf8(piece).is_ok(),
            "a piece ends inside a char"
        );
    }
    assert_eq!(
        pieces.concat(),
        [vec![b'x'; PENDING_LINE_BYTES], e.to_vec()].concat()
    );
}
