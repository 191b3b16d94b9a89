//! What the binary does before anyone configures it carefully: it stays on
//! loopback without keys, refuses half-set credentials, and says which mode
//! it is in.

use std::time::Duration;

use crate::support::*;

/// Runs the binary expecting it to stop by itself (within 10 s).
fn stderr_of(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = KillOnDrop(gateway(args, env).spawn().unwrap());
    let status = wait_with_timeout(&mut child, Duration::from_secs(10));
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    (status.code(), stderr)
}

#[test]
fn without_keys_the_gateway_serves_loopback_only_and_says_so() {
    let mut child = KillOnDrop(gateway(&["serve"], &[]).spawn().unwrap());
    let (addr, banner) = listening_addr(&mut child);
    assert_eq!(addr, "127.0.0.1:50051");
    assert!(
        banner.iter().any(|l| l.contains("no authentication")),
        "{banner:?}"
    );
    sigterm(&child);
    let status = wait_with_timeout(&mut child, Duration::from_secs(10));
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{status:?} {stderr}");
}

#[test]
fn any_other_address_without_keys_is_refused_with_how_to_add_one() {
    let (code, stderr) = stderr_of(&["serve", "--listen", "0.0.0.0:0"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("keys new"), "{stderr}");
    let mut child = KillOnDrop(
        gateway(
            &["serve", "--listen", "0.0.0.0:0", "--allow-unauthenticated"],
            &[],
        )
        .spawn()
        .unwrap(),
    );
    listening_addr(&mut child);
}

#[test]
fn half_set_or_unsafe_real_settings_never_fall_back_to_the_sandbox() {
    let (code, stderr) = stderr_of(
        &["serve"],
        &[
            ("INSTAGRAM_APP_SECRET", "s"),
            ("INSTAGRAM_VERIFY_TOKEN", "v"),
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no account"), "{stderr}");
    let (code, stderr) = stderr_of(
        &["serve"],
        &[
            ("INSTAGRAM_GRAPH_API_URL", "http://graph.example.com/v25.0"),
            ("INSTAGRAM_USER_ID", "1"),
            ("INSTAGRAM_ACCESS_TOKEN", "t"),
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("https://"), "{stderr}");
}

#[test]
fn keys_new_prints_a_secret_once_and_a_block_that_loads() {
    let out = gateway(
        &[
            "keys",
            "new",
            "--id",
            "billing-service",
            "--allow",
            "send,subscribe",
        ],
        &[],
    )
    .output()
    .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let secret = stdout.lines().next().unwrap();
    assert!(
        secret.starts_with("mgw_") && secret.len() >= 4 + 43,
        "{secret}"
    );
    let block = &stdout[stdout.find("[[key]]").unwrap()..];
    assert!(!block.contains(secret));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    std::fs::write(&file, block).unwrap();
    let mut child = KillOnDrop(
        gateway(
            &[
                "serve",
                "--api-keys",
                file.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ],
            &[],
        )
        .spawn()
        .unwrap(),
    );
    let (_, banner) = listening_addr(&mut child);
    assert!(
        banner.iter().any(|l| l.contains("API keys required")),
        "{banner:?}"
    );
}

#[test]
fn a_bad_keys_file_stops_the_start_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    std::fs::write(
        &file,
        "[[key]]\nid = \"a\"\nsha256 = \"00\"\naccounts = [\"*\"]\nallow = [\"send\"]\n",
    )
    .unwrap();
    let (code, stderr) = stderr_of(&["serve", "--api-keys", file.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:3:", file.display())),
        "{stderr}"
    );
    assert!(stderr.contains("sha256"), "{stderr}");
}

#[test]
fn an_empty_keys_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    std::fs::write(&file, "").unwrap();
    let (code, stderr) = stderr_of(&["serve", "--api-keys", file.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no [[key]]"), "{stderr}");
}

#[test]
fn the_sandbox_never_listens_beyond_loopback() {
    let (code, stderr) = stderr_of(&["serve", "--sandbox-listen", "0.0.0.0:0"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("loopback"), "{stderr}");
}
