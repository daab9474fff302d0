//! A real S3-compatible server for tests: moto's `moto_server` (PyPI `moto[server]`, installed by
//! `just setup`) on 127.0.0.1, started and stopped by PID.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Moto {
    child: Option<Child>,
    pub port: u16,
}

/// The server binary: `EMOLLAMA_MOTO_SERVER`, else the one `tools/install_moto.sh` installed, else
/// `moto_server` on PATH.
fn binary() -> String {
    if let Ok(b) = std::env::var("EMOLLAMA_MOTO_SERVER") {
        return b;
    }
    let cache = std::env::var("EMOLLAMA_CACHE").map(std::path::PathBuf::from).unwrap_or_else(|_| {
        let base = std::env::var("XDG_CACHE_HOME").map(std::path::PathBuf::from).unwrap_or_else(|_| std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache"));
        base.join("emollama")
    });
    let venv = cache.join("moto-venv/bin/moto_server");
    if venv.is_file() { venv.display().to_string() } else { "moto_server".into() }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("no free local port")
}

impl Moto {
    /// Starts a server on a free port. `free_port` can hand two tests running in parallel the same port;
    /// the server that loses it exits at once, so another port is tried.
    pub fn start() -> Moto {
        for _ in 0..8 {
            if let Some(m) = Moto::try_start_on(free_port()) {
                return m;
            }
        }
        panic!("moto_server could not get a free local port in 8 tries");
    }

    /// Starts a server on `port` and waits until it accepts connections.
    pub fn start_on(port: u16) -> Moto {
        Moto::try_start_on(port).unwrap_or_else(|| panic!("moto_server exited at start on 127.0.0.1:{port}: is the port taken?"))
    }

    /// A server on `port` once it listens; `None` when it exited (the port was taken).
    fn try_start_on(port: u16) -> Option<Moto> {
        let mut child = Command::new(binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{} -H 127.0.0.1 -p {port}` ({e}): run `just setup`, which installs moto[server] from PyPI", binary()));
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return None;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "moto_server did not listen on 127.0.0.1:{port} within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        // Something listens: make sure it is this server, not another test's on the same port.
        std::thread::sleep(Duration::from_millis(300));
        if matches!(child.try_wait(), Ok(Some(_))) {
            return None;
        }
        Some(Moto { child: Some(child), port })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the server process: requests hang meanwhile, and it keeps
    /// its objects (moto keeps them only in memory, so a killed server comes back empty).
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().map(|c| c.id()).expect("server running");
        let ok = Command::new("kill").args([sig, &pid.to_string()]).status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// Kills the server (by PID) and waits until the port is closed.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The endpoint of the server `.ci/run` started (`EMOLLAMA_TEST_S3_ENDPOINT`), else a server of the
/// test's own (kept alive by the returned guard).
pub fn shared() -> (Option<Moto>, String) {
    match std::env::var("EMOLLAMA_TEST_S3_ENDPOINT") {
        Ok(e) if !e.is_empty() => (None, e),
        _ => {
            let m = Moto::start();
            let e = m.endpoint();
            (Some(m), e)
        }
    }
}

/// Creates a bucket (moto accepts unsigned requests).
pub fn create_bucket(endpoint: &str, bucket: &str) {
    let url = format!("{endpoint}/{bucket}");
    match ureq::put(&url).send_bytes(&[]) {
        Ok(_) => {}
        Err(ureq::Error::Status(409, _)) => {}
        Err(e) => panic!("creating bucket {url}: {e}"),
    }
}

/// A bucket name unique to this test process and `tag` (S3 names: 3-63 lower-case characters).
pub fn bucket_name(tag: &str) -> String {
    format!("emollama-{tag}-{}", std::process::id())
}
