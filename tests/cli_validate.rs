//! `pagerelay validate` prints one verdict per job and exits 0 only when every job is valid, 1
//! when some job is invalid, and 2 when the input cannot be read. Runs the real binary, with no
//! settings file, on files and on standard input.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const GOOD: &str = r#"{"page_id":"104857600000001","job_id":"order-17","recipient":{"id":"6543210987654321"},"messaging_type":"UPDATE","message":{"text":"Your order has shipped."}}"#;
const NO_ID: &str =
    r#"{"page_id":"104857600000001","recipient":{"user_ref":"ref-1"},"sender_action":"typing_on"}"#;
const LONG_TEXT: &str = r#"{"page_id":"104857600000001","job_id":"long","recipient":{"id":"1"},"messaging_type":"UPDATE","message":{"text":"TEXT"}}"#;

fn pagerelay(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pagerelay"))
        .args(args)
        // Settings come from built-in defaults only; the test must not depend on the caller's.
        .env_remove("PAGERELAY_CONFIG")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the pagerelay binary runs");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    child.wait_with_output().expect("pagerelay finishes")
}

fn stdout(output: &Output) -> &str {
    std::str::from_utf8(&output.stdout).expect("verdicts are UTF-8")
}

#[test]
fn a_file_with_good_and_bad_lines_exits_1_with_a_verdict_per_job() {
    let long = LONG_TEXT.replace("TEXT", &"x".repeat(2001));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.jsonl");
    let content = format!(
        "{GOOD}\n{NO_ID}\n\n{long}\n[1,2]\n{}\n",
        GOOD.replace("UPDATE", "MESSAGE_TAG")
    );
    std::fs::write(&path, content).unwrap();

    let output = pagerelay(&["validate", path.to_str().unwrap()], None);

    assert_eq!(
        stdout(&output),
        "ok order-17\n\
         ok -\n\
         invalid 4: message.text: 2001 characters, limit is 1999\n\
         invalid 5: body: must be a JSON object, found an array\n\
         invalid 6: tag: required when messaging_type is MESSAGE_TAG\n"
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("2 valid, 3 invalid"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn all_valid_standard_input_exits_0() {
    let input = format!("{GOOD}\r\n{NO_ID}\r\n");
    for args in [&["validate"][..], &["validate", "-"][..]] {
        let output = pagerelay(args, Some(input.as_bytes()));
        assert_eq!(stdout(&output), "ok order-17\nok -\n", "{args:?}");
        assert_eq!(output.status.code(), Some(0), "{args:?}");
    }
}

#[test]
fn an_unreadable_input_exits_2_without_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.jsonl");
    let output = pagerelay(&["validate", missing.to_str().unwrap()], None);
    assert_eq!(stdout(&output), "");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read"));

    // A directory opens on Unix but fails on the first read.
    let output = pagerelay(&["validate", dir.path().to_str().unwrap()], None);
    assert_eq!(stdout(&output), "");
    assert_eq!(output.status.code(), Some(2));
}
