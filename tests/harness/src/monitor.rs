//! `tm-monitor` processes for tests, each with its own config and log in a
//! temporary directory, killed on drop.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bus_schema::{MonitorStatus, Reply, StatusRequest, subject};

use crate::NatsServer;

/// The `tm-monitor` binary of this build: next to the test executable's
/// directory (`target/<profile>/`), or `$TM_MONITOR_BIN`.
#[must_use]
pub fn monitor_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TM_MONITOR_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("deps dir");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("profile dir")
    } else {
        dir
    };
    let bin = dir.join("tm-monitor");
    assert!(
        bin.is_file(),
        "{}: build it first (`cargo build -p monitor`, or run the whole workspace's tests)",
        bin.display()
    );
    bin
}

/// A tm-monitor process, killed on drop.
pub struct MonitorProc {
    pub id: String,
    pub child: Child,
    pub dir: tempfile::TempDir,
    /// The requester the harness's status requests are sent as (the
    /// last token of the subject): the client's own identity.
    pub requester: String,
}

impl MonitorProc {
    /// Writes `config` (TOML, with `nats_url` added) and starts the monitor;
    /// returns once it answers `status`.
    pub async fn start(
        nats: &NatsServer,
        client: &async_nats::Client,
        id: &str,
        config: &str,
    ) -> MonitorProc {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(nats, client, id, config, dir).await
    }

    pub async fn start_in(
        nats: &NatsServer,
        client: &async_nats::Client,
        id: &str,
        config: &str,
        dir: tempfile::TempDir,
    ) -> MonitorProc {
        Self::start_as(&nats.url(), &nats.requester(), client, id, config, dir).await
    }

    /// [`MonitorProc::start_in`] against NATS at `urls` (comma-separated:
    /// a cluster's nodes).
    pub async fn start_at(
        urls: &str,
        client: &async_nats::Client,
        id: &str,
        config: &str,
        dir: tempfile::TempDir,
    ) -> MonitorProc {
        Self::start_as(urls, crate::LAB_REQUESTER, client, id, config, dir).await
    }

    /// [`MonitorProc::start_at`] with the harness's status requests sent
    /// as `requester`.
    pub async fn start_as(
        urls: &str,
        requester: &str,
        client: &async_nats::Client,
        id: &str,
        config: &str,
        dir: tempfile::TempDir,
    ) -> MonitorProc {
        let path = dir.path().join("monitor.toml");
        std::fs::write(
            &path,
            format!("id = \"{id}\"\nnats_url = \"{urls}\"\n{config}"),
        )
        .unwrap();
        let child = Self::spawn(dir.path());
        let mut m = MonitorProc {
            id: id.into(),
            child,
            dir,
            requester: requester.into(),
        };
        m.wait_ready(client).await;
        m
    }

    fn spawn(dir: &Path) -> Child {
        // Appends, so a restarted monitor's log follows the first one's.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("monitor.log"))
            .unwrap();
        Command::new(monitor_bin())
            .arg("--config")
            .arg(dir.join("monitor.toml"))
            .args(["--log", "info,monitor=debug"])
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// Kills the monitor with SIGKILL (a crash) and starts it again with the
    /// same configuration.
    pub async fn crash_and_restart(&mut self, client: &async_nats::Client) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = Self::spawn(self.dir.path());
        self.wait_ready(client).await;
    }

    /// Starts the monitor again with the same configuration after it
    /// stopped by itself (SIGTERM), and waits until it answers.
    pub async fn start_again(&mut self, client: &async_nats::Client) {
        let _ = self.child.wait();
        self.child = Self::spawn(self.dir.path());
        self.wait_ready(client).await;
    }

    async fn wait_ready(&mut self, client: &async_nats::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tm-monitor exited with {status}:\n{}", self.log());
            }
            let q = bus_schema::encode(&StatusRequest::default()).unwrap();
            if let Ok(Ok(msg)) = tokio::time::timeout(
                Duration::from_millis(500),
                client.request(subject::monitor_status(&self.id, &self.requester), q.into()),
            )
            .await
                && bus_schema::decode::<Reply<MonitorStatus>>(&msg.payload).is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "tm-monitor {} did not answer status in 30 s:\n{}",
            self.id,
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("monitor.log")).unwrap_or_default()
    }

    pub async fn status(&self, client: &async_nats::Client) -> MonitorStatus {
        let q = bus_schema::encode(&StatusRequest::default()).unwrap();
        let msg = tokio::time::timeout(
            Duration::from_secs(30),
            client.request(subject::monitor_status(&self.id, &self.requester), q.into()),
        )
        .await
        .unwrap_or_else(|_| panic!("monitor {} did not answer status in 30 s", self.id))
        .unwrap();
        bus_schema::decode::<Reply<MonitorStatus>>(&msg.payload)
            .unwrap()
            .into_result()
            .unwrap()
    }

    /// Waits until `check` holds on the status (bounded).
    pub async fn wait_status(
        &self,
        client: &async_nats::Client,
        what: &str,
        check: impl Fn(&MonitorStatus) -> bool,
    ) -> MonitorStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.status(client).await;
            if check(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; last status {s:#?}\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
    }
}

impl Drop for MonitorProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
