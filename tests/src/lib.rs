//! crm-e2e: black-box tests that start the real binaries (`crm`, the service binaries)
//! and talk to them over gRPC. The tests live in `tests/e2e/`; this library only holds
//! what they share.
#![allow(clippy::expect_used)]

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The built binary `name` from the same target directory as this test.
pub fn binary(name: &str) -> PathBuf {
    if let Ok(path) = std::env::var(format!("CRM_E2E_{}_BIN", name.to_uppercase().replace('-', "_"))) {
        return PathBuf::from(path);
    }
    // Test executables live in target/<profile>/deps; binaries one level up.
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build it first (`cargo build --workspace --bins`, which the README's test command does)",
        path.display()
    );
    path
}

// Servers in these tests listen on port 0 and say which port they got: a port found
// free and bound later may be taken in between by anything else running.

/// The log message of a service binary that has bound its gRPC listener.
pub const GRPC_LISTENING: &str = "gRPC server listening";
/// The log message of a service binary that has bound its metrics listener.
pub const METRICS_LISTENING: &str = "Prometheus metrics at /metrics";

/// The `addr` field of a JSON log line whose message is `message`.
fn logged_addr(line: &str, message: &str) -> Option<String> {
    if !line.contains(&format!("\"message\":\"{message}\"")) {
        return None;
    }
    let (_, rest) = line.split_once("\"addr\":\"")?;
    rest.split_once('"').map(|(addr, _)| addr.to_owned())
}

/// A running child process, killed on drop.
pub struct Running {
    pub child: Child,
    pub stdout_lines: std::sync::mpsc::Receiver<String>,
}

impl Running {
    /// Starts `cmd` with piped stdout (what the binary prints, and its logs);
    /// stderr goes to the test output.
    pub fn start(mut cmd: Command) -> Self {
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn binary");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, stdout_lines: rx }
    }

    /// Waits for a stdout line containing `needle` and returns it.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout_lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no line containing {needle:?} within {timeout:?}"),
            }
        }
    }

    /// The addresses a service binary logged (`CRM__LOG__FORMAT=json`) with each of
    /// `messages`, e.g. [`GRPC_LISTENING`], in that order.
    pub fn bound<const N: usize>(&self, messages: [&str; N]) -> [String; N] {
        let timeout = Duration::from_secs(60);
        let deadline = Instant::now() + timeout;
        let mut found: [Option<String>; N] = std::array::from_fn(|_| None);
        while found.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.stdout_lines.recv_timeout(left) else {
                panic!("no log lines {messages:?} with an address within {timeout:?}");
            };
            for (slot, message) in found.iter_mut().zip(messages) {
                if let Some(addr) = logged_addr(&line, message) {
                    *slot = Some(addr);
                }
            }
        }
        found.map(Option::unwrap_or_default)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "process did not exit within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `crm serve` on a loopback port of its choosing with its SQLite files under
/// `data_dir` (no external database or cache), ready; returns it and its `http://`
/// address.
pub fn serve_crm(data_dir: &std::path::Path) -> (Running, String) {
    serve_crm_with(data_dir, &[])
}

/// [`serve_crm`] with extra environment (`CRM__SECTION__KEY` overrides).
pub fn serve_crm_with(data_dir: &std::path::Path, env: &[(&str, &str)]) -> (Running, String) {
    let mut serve = Command::new(binary("crm"));
    serve
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("CRM__DATABASE__DATA_DIR", data_dir)
        .env_remove("CRM__DATABASE__URL")
        .env_remove("CRM__REDIS__URL")
        // Many suites run side by side: the tracking endpoint on a free port too.
        .env("CRM__SEGMENTATION__TRACKING__LISTEN", "127.0.0.1:0")
        .envs(env.iter().copied());
    let server = Running::start(serve);
    let addr = serving_addr(&server);
    (server, format!("http://{addr}"))
}

/// The address `crm serve` says it serves on (`crm: serving … on 127.0.0.1:port`).
pub fn serving_addr(server: &Running) -> String {
    let line = server.wait_for_line("serving", Duration::from_secs(60));
    line.rsplit(' ').next().unwrap_or_default().trim().to_owned()
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn addresses_are_read_from_json_log_lines() {
        let line = r#"{"timestamp":"…","level":"INFO","fields":{"message":"gRPC server listening","addr":"127.0.0.1:40123","tls":false}}"#;
        assert_eq!(
            super::logged_addr(line, super::GRPC_LISTENING).as_deref(),
            Some("127.0.0.1:40123")
        );
        assert_eq!(super::logged_addr(line, super::METRICS_LISTENING), None);
    }
}
