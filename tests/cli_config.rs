//! `pagerelay check-config` accepts the shipped defaults, prints them with secrets redacted, and
//! rejects bad settings with one line naming the key and exit status 2.

use std::process::Command;

const TOKEN: &str = "EAAB-cli-secret-token-value";

fn pagerelay() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pagerelay"));
    cmd.env_remove("PAGERELAY_CONFIG").env_remove("RUST_LOG");
    cmd
}

#[test]
fn accepts_the_shipped_defaults() {
    let out = pagerelay()
        .args(["check-config", "--config"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("prefetch = 1000"), "{stdout}");
    assert!(
        stdout.contains("url = \"amqp://guest:***@127.0.0.1:5672/%2f\""),
        "{stdout}"
    );
    // The printed settings are themselves valid TOML.
    stdout
        .parse::<toml::Table>()
        .expect("check-config prints TOML");
}

#[test]
fn rejects_bad_settings_with_one_line_and_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[amqp]\nprefetch = 0\n",
            "amqp.prefetch = 0: must be between 1 and 65535",
        ),
        (
            "[graph]\nbatch_size = 51\n",
            "graph.batch_size = 51: must be between 1 and 50",
        ),
        ("[amqp]\nprefech = 5\n", "unknown field `prefech`"),
        ("[amqp\n", "invalid TOML at line 1"),
        ("[[pages]]\nid = \"42\"\n", "pages[0].token_env = (missing)"),
        (
            "[[pages]]\nid = \"42\"\ntoken_env = \"T\"\n[[pages]]\nid = \"42\"\ntoken_env = \"T\"\n",
            "pages[1].id = \"42\": duplicate Page id",
        ),
    ];
    for (text, expected) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = pagerelay()
            .arg("check-config")
            .arg("--config")
            .arg(&path)
            .env("T", TOKEN)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "for {text:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "one line for {text:?}: {stderr}");
        assert!(stderr.contains(expected), "for {text:?}: {stderr}");
        assert!(!stderr.contains(TOKEN));
    }
    let out = pagerelay()
        .args(["check-config", "--config", "/nonexistent/pagerelay.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/pagerelay.toml")
    );
}

#[test]
fn never_prints_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pagerelay.toml");
    std::fs::write(
        &path,
        "[graph]\napp_secret_env = \"APP_SECRET\"\n[[pages]]\nid = \"42\"\ntoken_env = \"T\"\naudience = 7\n",
    )
    .unwrap();
    let out = pagerelay()
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .env("T", TOKEN)
        .env("APP_SECRET", "app-secret-value-xyz")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains(TOKEN), "{all}");
    assert!(!all.contains("app-secret-value-xyz"), "{all}");
    assert!(all.contains("token_env = \"T\""), "{all}");
}
