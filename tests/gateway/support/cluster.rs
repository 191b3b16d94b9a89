//! A PostgreSQL server of a test's own, for what must not touch the one
//! the test command shares: stopping it mid-load, or turning TLS on (and
//! for the replicas bench, which includes this file). Made with the
//! binaries the test command found (`MESSENGER_GATEWAY_TEST_PG_BIN`) or
//! Debian's, in a temporary directory, as an unprivileged user when run as
//! root.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    /// Who runs the server when the tests run as root.
    owner: Option<(String, u32, u32)>,
}

impl Cluster {
    /// A new server with `conf` lines added to its configuration, after
    /// `files` are written beside it (`{dir}` in a line is where);
    /// `None` without PostgreSQL binaries
    /// (CI always has them: there, their absence fails the test).
    pub fn start(files: &[(&str, &[u8])], conf: &[String]) -> Option<Self> {
        let Some(bin) = binaries() else {
            if std::env::var_os("CI").is_some() {
                panic!("CI must run the PostgreSQL tests: scripts/test finds the server")
            }
            eprintln!("no PostgreSQL binaries (apt-get install postgresql): skipped");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let owner = running_as_root().then(|| {
            let user = ["postgres", "nobody"]
                .into_iter()
                .find(|u| id(u, "-u").is_some())
                .expect("an unprivileged user");
            let (uid, gid) = (id(user, "-u").unwrap(), id(user, "-g").unwrap());
            (user.to_owned(), uid, gid)
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Self {
            dir,
            bin,
            port,
            owner,
        };
        cluster.chown(cluster.dir.path());
        cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.data(),
                "-U",
                "gateway",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
        );
        let mut extra = String::new();
        for (name, bytes) in files {
            let path = cluster.dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            cluster.chown(&path);
        }
        for line in conf {
            extra.push_str(&line.replace("{dir}", &cluster.dir.path().display().to_string()));
            extra.push('\n');
        }
        let conf_file = Path::new(&cluster.data()).join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_file).unwrap();
        text.push_str(&extra);
        std::fs::write(&conf_file, text).unwrap();
        cluster.start_again();
        Some(cluster)
    }

    pub fn url(&self) -> String {
        format!("postgres://gateway@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server as an operator would (`pg_ctl stop -m fast`):
    /// connections are closed, and nothing committed is lost.
    pub fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    pub fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log.display().to_string(),
                "-w",
                "-o",
                &options,
                "start",
            ],
        );
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn chown(&self, path: &Path) {
        if let Some((_, uid, gid)) = &self.owner {
            std::os::unix::fs::chown(path, Some(*uid), Some(*gid)).unwrap();
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program);
        let mut command = match &self.owner {
            Some((user, _, _)) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        let out = command.args(args).output().unwrap();
        if !out.status.success() {
            let log =
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            panic!(
                "{} failed: {}{}\n{log}",
                program.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let program = self.bin.join("pg_ctl");
        let data = self.data();
        let args = ["-D", data.as_str(), "-m", "immediate", "stop"];
        let _ = match &self.owner {
            Some((user, _, _)) => Command::new("runuser")
                .args(["-u", user, "--"])
                .arg(&program)
                .args(args)
                .output(),
            None => Command::new(&program).args(args).output(),
        };
    }
}

/// The binaries the test command found, or Debian's.
fn binaries() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("MESSENGER_GATEWAY_TEST_PG_BIN") {
        return Some(PathBuf::from(bin));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort();
    found.pop()
}

fn running_as_root() -> bool {
    id_of_self() == Some(0)
}

fn id_of_self() -> Option<u32> {
    let out = Command::new("id").arg("-u").output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn id(user: &str, flag: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, user]).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .flatten()
}
