//! Headless Chromium for tests of the console: Debian's `chromium` driven
//! through `chromedriver` (WebDriver) with fantoccini.
//!
//! [`Browser::start`] runs `chromedriver` on a free loopback port and opens
//! a session on a fresh profile, with the flags that keep Chromium from
//! reaching for the network by itself (no background networking, component
//! updates, sync or QUIC). [`Browser::close`] ends the session; dropping a
//! `Browser` kills the driver and the browser with it.
//!
//! The binaries are `$CHROMEDRIVER` / `$CHROMIUM` if set, else
//! `/usr/bin/chromedriver` and `/usr/bin/chromium` (`xtask/setup.sh`
//! installs both).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Why the browser could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    /// A binary is missing.
    #[error("{0} not found: run xtask/setup.sh (Debian's chromium and chromium-driver)")]
    NotFound(String),
    /// The driver or the session did not start.
    #[error("chromedriver: {0}")]
    Start(String),
    /// A WebDriver command failed.
    #[error("webdriver: {0}")]
    Command(String),
    /// Local I/O.
    #[error("browser I/O: {0}")]
    Io(#[from] std::io::Error),
}

fn binary(var: &str, default: &str) -> Result<PathBuf, BrowserError> {
    let path = std::env::var_os(var)
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from(default), PathBuf::from);
    if path.is_file() {
        Ok(path)
    } else {
        Err(BrowserError::NotFound(path.display().to_string()))
    }
}

/// The driver process and the browser it started (known by its profile
/// directory), killed when dropped — also when a test panics before
/// [`Browser::close`], or the session never started.
struct Processes {
    driver: Child,
    profile: tempfile::TempDir,
}

impl Drop for Processes {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // Chromium outlives a killed chromedriver: end it by its profile.
        let _ = Command::new("pkill")
            .args(["-KILL", "-f"])
            .arg(format!("user-data-dir={}", self.profile.path().display()))
            .status();
    }
}

/// A headless Chromium session.
pub struct Browser {
    /// The WebDriver session.
    pub client: fantoccini::Client,
    _processes: Processes,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session with a
    /// `width`×`height` window.
    ///
    /// # Errors
    /// A binary missing, or the driver or session not starting in 20 s.
    pub async fn start(width: u32, height: u32) -> Result<Browser, BrowserError> {
        let driver_bin = binary("CHROMEDRIVER", "/usr/bin/chromedriver")?;
        let chromium = binary("CHROMIUM", "/usr/bin/chromium")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| BrowserError::Start(format!("{}: {e}", driver_bin.display())))?;
        let processes = Processes {
            driver,
            profile: tempfile::tempdir()?,
        };
        let profile = &processes.profile;
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"binary": chromium, "args": args}),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            // Plain HTTP to the driver on loopback: no TLS.
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            let attempt = fantoccini::ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await;
            match attempt {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => {
                    return Err(BrowserError::Start(e.to_string()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        Ok(Browser {
            client,
            _processes: processes,
        })
    }

    /// Opens `url`.
    ///
    /// # Errors
    /// The page could not be opened.
    pub async fn open(&self, url: &str) -> Result<(), BrowserError> {
        self.client
            .goto(url)
            .await
            .map_err(|e| BrowserError::Command(format!("goto {url}: {e}")))
    }

    /// Runs `script` (a function body; `return` gives its value) in the
    /// page.
    ///
    /// # Errors
    /// The script threw or the session is gone.
    pub async fn js(&self, script: &str) -> Result<Value, BrowserError> {
        self.client
            .execute(script, vec![])
            .await
            .map_err(|e| BrowserError::Command(format!("{e}: in {script}")))
    }

    /// Runs `script` until `done` holds for its value, at most `within`;
    /// returns the value (or the last one, with `Err`).
    ///
    /// # Errors
    /// `done` never held: the last value, for the test's message.
    pub async fn until(
        &self,
        script: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value, Value> {
        let deadline = Instant::now() + within;
        loop {
            let v = self
                .js(script)
                .await
                .unwrap_or_else(|e| json!(e.to_string()));
            if done(&v) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                return Err(v);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Saves a PNG of the viewport to `path`.
    ///
    /// # Errors
    /// The screenshot failed or could not be written.
    pub async fn screenshot(&self, path: &Path) -> Result<(), BrowserError> {
        let png = self
            .client
            .screenshot()
            .await
            .map_err(|e| BrowserError::Command(format!("screenshot: {e}")))?;
        std::fs::write(path, png)?;
        Ok(())
    }

    /// Ends the session (the browser quits).
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}
