//! The real binary (or a bench's own role process) as a child: started
//! with a clean environment and private directories, its banner read, its
//! output drained, killed when dropped. Benches include this file by path,
//! so it imports nothing from the tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_messenger-gateway");

/// The banner line that names the gateway's gRPC address.
pub const GATEWAY_BANNER: &str = "messenger-gateway listening on ";

/// The gateway binary's command line with a clean environment: no
/// `INSTAGRAM_*` or `RUST_LOG` of the caller, a private data directory and
/// loopback ports the system picks; then `env`. stdout and stderr piped.
pub fn gateway(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for name in messenger_gateway::accounts::env::VARIABLES {
        cmd.env_remove(name);
    }
    for name in ["INSTAGRAM_APP_SECRET", "INSTAGRAM_VERIFY_TOKEN"] {
        cmd.env_remove(name);
    }
    for name in ["RUST_LOG", "MESSENGER_GATEWAY_STORE", "DATABASE_URL"] {
        cmd.env_remove(name);
    }
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

/// Reads `child`'s stdout on a thread of its own, so the pipe never fills,
/// until a line starts with `marker` (at most `limit`): answers the lines
/// up to it, and, when `keep`, a channel of every later line (else they
/// are read and dropped).
fn read_banner(
    child: &mut Child,
    marker: &'static str,
    limit: Duration,
    keep: bool,
) -> (Vec<String>, Option<mpsc::Receiver<String>>) {
    let stdout = child.stdout.take().expect("stdout piped");
    let (banner_tx, banner_rx) = mpsc::channel();
    let (later_tx, later_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut banner_tx = Some(banner_tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            match banner_tx.take() {
                Some(tx) => {
                    let found = line.starts_with(marker);
                    seen.push(line);
                    if found {
                        let _ = tx.send(std::mem::take(&mut seen));
                    } else {
                        banner_tx = Some(tx);
                    }
                }
                None if keep => {
                    let _ = later_tx.send(line);
                }
                None => {}
            }
        }
    });
    let Ok(seen) = banner_rx.recv_timeout(limit) else {
        let _ = child.kill();
        panic!("no line starting {marker:?} within {limit:?}");
    };
    (seen, keep.then_some(later_rx))
}

/// The word after `marker` on the banner's last line.
fn word_after(banner: &[String], marker: &str) -> String {
    banner.last().unwrap()[marker.len()..]
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// A process started and past its banner; killed when dropped, and its
/// data directory (if any) removed.
pub struct Launched {
    pub child: Child,
    /// The address its banner named (`host:port`).
    pub addr: String,
    /// From the banner's `webhooks at` line; empty without a webhook port.
    pub webhook_url: String,
    /// Its stdout up to and including the banner line.
    pub banner: Vec<String>,
    /// From the spawn to the banner line.
    pub started_in: Duration,
    later: Option<std::sync::Mutex<mpsc::Receiver<String>>>,
    _data: Option<tempfile::TempDir>,
}

impl Drop for Launched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Launched {
    /// Spawns `cmd` (stdout piped here) and waits for the gateway's banner.
    pub fn start(cmd: &mut Command, data: impl Into<Option<tempfile::TempDir>>) -> Self {
        Self::start_until(cmd, data, GATEWAY_BANNER, false)
    }

    /// Spawns `cmd` and waits (at most a minute) for a stdout line starting
    /// with `marker`; with `keep`, what it prints next is kept for
    /// [`Launched::next_line`].
    pub fn start_until(
        cmd: &mut Command,
        data: impl Into<Option<tempfile::TempDir>>,
        marker: &'static str,
        keep: bool,
    ) -> Self {
        cmd.stdout(Stdio::piped());
        let spawned = Instant::now();
        let mut child = cmd.spawn().expect("the process starts");
        let (banner, later) = read_banner(&mut child, marker, Duration::from_secs(60), keep);
        Self {
            child,
            addr: word_after(&banner, marker),
            webhook_url: banner
                .iter()
                .find_map(|l| l.strip_prefix("webhooks at "))
                .map(|u| u.trim().to_owned())
                .unwrap_or_default(),
            started_in: spawned.elapsed(),
            banner,
            later: later.map(std::sync::Mutex::new),
            _data: data.into(),
        }
    }

    /// The next line it printed after its banner (kept by `start_until`).
    pub fn next_line(&self) -> Option<String> {
        self.later.as_ref()?.lock().unwrap().recv().ok()
    }

    /// SIGTERM, as an operator would stop it (a wrapper such as valgrind
    /// then writes its report); SIGKILL if it is still there after `limit`.
    pub fn terminate(&mut self, limit: Duration) {
        // SAFETY: a plain signal to our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its CPU time, user and system.
    pub fn cpu(&self) -> Duration {
        cpu_of(self.child.id())
    }

    /// A `/proc/PID/status` figure (`VmRSS:` in KiB, `Threads:`…); 0 once
    /// the process is gone.
    pub fn status_figure(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Resident memory, KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_figure("VmRSS:")
    }
}

/// Process `pid`'s CPU time, user and system, as the scheduler counts it
/// to the nanosecond: `/proc/PID/stat`'s utime and stime are sampled at
/// each clock tick, a few per cent of noise over a round by themselves.
pub fn cpu_of(pid: u32) -> Duration {
    let mut clock: libc::clockid_t = 0;
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: both pointers are to live locals of the right types.
    unsafe {
        assert_eq!(libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock), 0);
        assert_eq!(libc::clock_gettime(clock, &mut now), 0);
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Waits (at most 30 s) for the gateway's banner: its gRPC address and its
/// stdout up to it.
pub fn listening_addr(child: &mut Child) -> (String, Vec<String>) {
    let (seen, _) = read_banner(child, GATEWAY_BANNER, Duration::from_secs(30), false);
    (word_after(&seen, GATEWAY_BANNER), seen)
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
