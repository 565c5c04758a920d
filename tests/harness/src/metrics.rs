//! Scraping a host's Prometheus endpoint in tests: the text is fetched with
//! curl and parsed by the reference OpenMetrics parser (Python's
//! `prometheus_client`, installed by `xtask/setup.sh`), so a test checks
//! what a Prometheus server would read, not what our own code thinks it
//! wrote.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};

/// One sample: metric name (with its `_total`, `_count`, … suffix),
/// labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({"name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;

/// A loopback address with a port nobody listens on right now.
#[must_use]
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr")
}

/// `GET http://{addr}{path}`: (HTTP status, body).
pub fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", "-w", "\n%{http_code}"])
        .arg(format!("http://{addr}{path}"))
        .output()
        .map_err(|e| format!("curl: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').ok_or("no status from curl")?;
    let code = code
        .trim()
        .parse()
        .map_err(|e| format!("status {code:?}: {e}"))?;
    Ok((code, body.to_owned()))
}

/// Scrapes `/metrics` and parses it with the OpenMetrics parser; an error
/// if the endpoint fails or the text does not parse.
pub fn scrape(addr: SocketAddr) -> Result<Vec<Sample>, String> {
    let (code, body) = get(addr, "/metrics")?;
    if code != 200 {
        return Err(format!("GET /metrics: HTTP {code}: {body}"));
    }
    let mut child = Command::new("python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("python3: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(body.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "the OpenMetrics parser refused the text: {}\n{body}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let parsed: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok(parsed
        .into_iter()
        .map(|s| Sample {
            name: s["name"].as_str().unwrap_or_default().to_owned(),
            labels: s["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
            value: s["value"].as_f64().unwrap_or(f64::NAN),
        })
        .collect())
}

/// The value of `name` with exactly these labels, if scraped.
#[must_use]
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}
