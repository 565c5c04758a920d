//! The archive on an S3-compatible server (moto's, on loopback), in a build
//! with `--features s3`:
//!
//! ```sh
//! pip install 'moto[server]'
//! cargo test -p manager --features s3 --test archive_s3
//! ```
//!
//! Without `moto_server` on PATH the test prints why it did not run.
#![cfg(feature = "s3")]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bus_schema::{DeploymentStats, ResultWindow, Value};
use manager::archive::Archive;
use manager::control::MonitorResults;

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[tokio::test]
async fn results_are_archived_to_s3() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let Ok(child) = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        eprintln!("SKIPPED: moto_server not found (pip install 'moto[server]')");
        return;
    };
    let _moto = Moto(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let created = http(
        port,
        "PUT /tm-archive HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert!(created.starts_with("HTTP/1.1 200"), "{created}");
    // SAFETY: set before any thread of this test process reads the environment for AWS settings.
    unsafe {
        std::env::set_var("AWS_ENDPOINT", format!("http://127.0.0.1:{port}"));
        std::env::set_var("AWS_ALLOW_HTTP", "true");
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        std::env::set_var("AWS_REGION", "us-east-1");
    }
    let archive = Archive::open("s3://tm-archive/lab").unwrap();
    let window = ResultWindow {
        monitor: "mon-a".into(),
        deployment: "d1".into(),
        analyzer: "flow-stats".into(),
        sha256: String::new(),
        seq: 1,
        start_unix_ms: 1_764_115_200_000,
        end_unix_ms: 1_764_115_201_000,
        last: false,
        stats: DeploymentStats::default(),
        capture: vec![],
        results: Value::Map(vec![(Value::from("packets"), Value::from(7))]),
    };
    let paths = archive
        .results(
            "d1",
            &[MonitorResults {
                address: "10.9.0.1".into(),
                window,
            }],
        )
        .await
        .unwrap();
    assert_eq!(paths.len(), 1);
    assert!(
        paths[0].starts_with("lab/date=2025-11-26/deployment=d1/monitor=mon-a/"),
        "{}",
        paths[0]
    );
    // Read it back with a signed request, as any S3 client would.
    let s3 = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name("tm-archive")
        .build()
        .unwrap();
    let bytes =
        object_store::ObjectStoreExt::get(&s3, &object_store::path::Path::from(paths[0].as_str()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(text.ends_with('\n') && text.lines().count() == 1, "{text}");
    let line: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(line["results"]["packets"], 7);
    assert_eq!(line["monitor"], "mon-a");
}
