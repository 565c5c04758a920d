//! Control plane with many monitors: deploy one analyzer to all of them,
//! collect rounds from all of them, and one command's round trip, side by
//! side with a bare NATS request/reply round trip in the same run.
//!
//! ```text
//! cargo bench -p scale --bench control_plane            # 100 monitors
//! cargo bench -p scale --bench control_plane -- --monitors 20 --rounds 50
//! ```
//!
//! Monitors are in-process tasks, each its own `tm-monitor` (the real
//! library: service endpoints, heartbeat, publisher) with its own NATS
//! connection and one link replaying a small pcap. They share one wasmtime
//! engine and module cache, because 100 monitors on one 2-core machine
//! would otherwise compile the analyzer 100 times on the same two cores; on
//! real hosts each compiles on its own CPU. The first ("cold") deploy
//! includes the one compilation and is reported apart from the warm ones.
//! Writes `target/bench/control_plane.md`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_schema::store::{BlobKind, BlobMeta};
use bus_schema::{Filter, StatusRequest, Value, subject};
use futures::StreamExt;
use manager::control::{Control, DeploySpec, Targets};
use monitor::config::Config;
use monitor::service::Monitor;
use pcapgen::{linktype, write_pcap};

struct Args {
    monitors: usize,
    rounds: usize,
    analyzer: String,
}

fn args() -> Args {
    let mut a = Args {
        monitors: 100,
        rounds: 200,
        analyzer: "flow-stats".into(),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = || {
            argv.get(i + 1)
                .unwrap_or_else(|| panic!("{} needs a value", argv[i]))
                .clone()
        };
        match argv[i].as_str() {
            "--monitors" => a.monitors = value().parse().expect("--monitors N"),
            "--rounds" => a.rounds = value().parse().expect("--rounds N"),
            "--analyzer" => a.analyzer = value(),
            // cargo bench passes --bench; ignore what is not ours.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

struct Stats {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    Stats {
        p50: percentile(&v, 0.5),
        p99: percentile(&v, 0.99),
        max: *v.last().unwrap(),
    }
}

#[tokio::main]
async fn main() {
    let args = args();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let wasm_dir = std::env::var_os("TM_WASM_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target/wasm"));
    let module = std::fs::read(wasm_dir.join(format!("{}.wasm", args.analyzer)))
        .expect("build the guests first: cargo xtask guests");
    let nats = harness::NatsServer::start().await.expect("nats-server");
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("small.pcap");
    write_pcap(
        &pcap,
        linktype::ETHERNET,
        &pcapgen::flows(2000, 50, 1_764_000_000_000_000_000),
    )
    .unwrap();

    // The monitors.
    let sandbox = wasm_host::Sandbox::new(&wasm_host::SandboxConfig::default()).unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.monitors {
        let path = dir.path().join(format!("m{i}.toml"));
        std::fs::write(
            &path,
            format!(
                "id = \"m{i:03}\"\naddress = \"10.200.{}.{}\"\nnats_url = \"{}\"\n[[link]]\nid = 0\npcap = \"{}\"\nfrom_router = \"10.0.1.1\"\nto_router = \"10.0.2.1\"\n",
                i / 250,
                i % 250 + 1,
                nats.url(),
                pcap.display()
            ),
        )
        .unwrap();
        let config = Config::load(&path).unwrap();
        let client = nats.client().await;
        let js = async_nats::jetstream::new(client.clone());
        let (m, outbox) = Monitor::start_with(config, js.clone(), sandbox.clone())
            .await
            .unwrap();
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        tasks.push(tokio::spawn(monitor::outbox::publisher(js, outbox, stop)));
        tasks.push(tokio::spawn(m.clone().heartbeat()));
        tasks.push(tokio::spawn(async move {
            if let Err(e) = m.serve(client).await {
                eprintln!("monitor stopped serving: {e}");
            }
        }));
        std::mem::forget(_stop_tx);
    }
    let control = Control::connect(nats.client().await, "bench", 1)
        .await
        .unwrap();
    // Wait until every monitor is registered and answers.
    loop {
        if control.monitors().await.unwrap().len() == args.monitors {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let up = control.status(&[], Duration::from_secs(10)).await.unwrap();
    assert!(
        up.iter().all(|(_, s)| s.is_ok()),
        "a monitor does not answer"
    );
    eprintln!(
        "{} monitors up in {:.1} s",
        args.monitors,
        started.elapsed().as_secs_f64()
    );

    // The blob.
    let objects = bus_schema::nats::open_blobs(&async_nats::jetstream::new(nats.client().await), 1)
        .await
        .unwrap();
    let sha256 = wasm_host::sha256_hex(&module);
    objects
        .put(
            async_nats::jetstream::object_store::ObjectMetadata {
                name: args.analyzer.clone(),
                metadata: BlobMeta {
                    kind: BlobKind::Analyzer,
                    version: "bench".into(),
                    sha256: sha256.clone(),
                    abi_version: 1,
                    description: String::new(),
                }
                .to_map(),
                ..Default::default()
            },
            &mut &module[..],
        )
        .await
        .unwrap();

    // Bare NATS request/reply: an echo responder on its own connection.
    let echo_client = nats.client().await;
    let mut echo = echo_client.subscribe("bench.echo").await.unwrap();
    let responder = echo_client.clone();
    tokio::spawn(async move {
        while let Some(m) = echo.next().await {
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, m.payload).await;
            }
        }
    });
    let requester = nats.client().await;
    let status_q = bus_schema::encode(&StatusRequest::default()).unwrap();
    let mut bare = Vec::new();
    let mut command = Vec::new();
    for round in 0..args.rounds.max(100) + 20 {
        let t = Instant::now();
        requester
            .request("bench.echo", status_q.clone().into())
            .await
            .unwrap();
        let b = t.elapsed();
        let t = Instant::now();
        let _: bus_schema::MonitorStatus = control
            .request(
                subject::monitor_status("m000", "t"),
                &StatusRequest::default(),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        let c = t.elapsed();
        if round >= 20 {
            bare.push(b);
            command.push(c);
        }
    }

    // Deploy to all: cold (includes the one compilation), then warm.
    let spec = |n: usize| DeploySpec {
        deployment: format!("bench-{n}"),
        analyzer: args.analyzer.clone(),
        sha256: Some(sha256.clone()),
        params: Value::Nil,
        filter: Filter::default(),
        targets: Targets::All,
        report_every_ms: None,
    };
    let mut deploys = Vec::new();
    for n in 0..6 {
        let t = Instant::now();
        let d = control.deploy(&spec(n)).await.unwrap();
        let took = t.elapsed();
        assert_eq!(d.placed.len(), args.monitors, "{:?}", d.failed);
        deploys.push(took);
        if n < 5 {
            control.unload(&format!("bench-{n}"), false).await.unwrap();
        }
    }
    let cold = deploys[0];
    let warm = stats(deploys[1..].to_vec());

    // Collect rounds from all.
    let mut collects = Vec::new();
    for _ in 0..args.rounds {
        let t = Instant::now();
        let c = control
            .collect("bench-5", Duration::from_secs(2))
            .await
            .unwrap();
        collects.push(t.elapsed());
        assert_eq!(c.results.len(), args.monitors, "{:?}", c.missing);
    }
    let unload_t = Instant::now();
    control.unload("bench-5", false).await.unwrap();
    let unload = unload_t.elapsed();

    let bare = stats(bare);
    let command = stats(command);
    let collect = stats(collects);
    let ratio = command.p50.as_secs_f64() / bare.p50.as_secs_f64();
    let report = format!(
        "Control plane, {n} monitors (in-process, one NATS connection each), analyzer {a}, {r} rounds\n\n\
         | measure | p50 ms | p99 ms | max ms | target |\n|---|---|---|---|---|\n\
         | bare NATS request/reply (echo) | {} | {} | {} | — |\n\
         | one command round trip (`status` to one monitor) | {} | {} | {} | ≤ 2× bare p50: {ratio:.2}× |\n\
         | deploy to all {n}, warm (5 runs) | {} | {} | {} | < 1000 |\n\
         | deploy to all {n}, cold (1 run, includes the compile) | {} | | | |\n\
         | collect round from all {n} | {} | {} | {} | p99 < 250 |\n\
         | unload from all {n} (1 run) | {} | | | |\n",
        ms(bare.p50),
        ms(bare.p99),
        ms(bare.max),
        ms(command.p50),
        ms(command.p99),
        ms(command.max),
        ms(warm.p50),
        ms(warm.p99),
        ms(warm.max),
        ms(cold),
        ms(collect.p50),
        ms(collect.p99),
        ms(collect.max),
        ms(unload),
        n = args.monitors,
        a = args.analyzer,
        r = args.rounds,
    );
    println!("{report}");
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("control_plane.md"), &report).unwrap();
    let _ = Arc::new(tasks);
}
