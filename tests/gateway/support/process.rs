//! The real binary as a child process: started with a clean environment
//! and private directories, its banner read, its log drained, killed if
//! the test fails.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_messenger-gateway");

pub fn gateway(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for name in messenger_gateway::accounts::env::VARIABLES {
        cmd.env_remove(name);
    }
    for name in ["INSTAGRAM_APP_SECRET", "INSTAGRAM_VERIFY_TOKEN"] {
        cmd.env_remove(name);
    }
    cmd.env_remove("RUST_LOG");
    // Never the defaults (./data, port 8080): tests run side by side.
    let data = tempfile::tempdir().unwrap().keep();
    cmd.env("MESSENGER_GATEWAY_DATA_DIR", data);
    cmd.env("MESSENGER_GATEWAY_ADMIN_LISTEN", "127.0.0.1:0");
    cmd.env("MESSENGER_GATEWAY_WEBHOOK_LISTEN", "127.0.0.1:0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Waits (at most 30 s) for the banner line that names the gRPC address.
pub fn listening_addr(child: &mut Child) -> (String, Vec<String>) {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            seen.push(line.clone());
            if !sent && line.starts_with("messenger-gateway listening on ") {
                let _ = tx.send(seen.clone());
                sent = true;
            }
        }
    });
    let Ok(seen) = rx.recv_timeout(Duration::from_secs(30)) else {
        let _ = child.kill();
        panic!("the gateway printed no banner");
    };
    let last = seen.last().unwrap();
    let addr = last["messenger-gateway listening on ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    (addr, seen)
}

/// The address (or URL) after `prefix` on a banner line.
pub fn banner_value(banner: &[String], prefix: &str) -> String {
    banner
        .iter()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in {banner:?}"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Reads the gateway's log (stderr) as it comes, so the pipe never fills;
/// joined, it answers the whole log.
pub fn drain_log(child: &mut Child) -> std::thread::JoinHandle<String> {
    let mut stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut logs = Vec::new();
        stderr.read_to_end(&mut logs).unwrap();
        String::from_utf8_lossy(&logs).into_owned()
    })
}

/// Kills the gateway if a test fails before it exits, so no process outlives
/// the test run.
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

pub fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("the gateway did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
