//! `tm-export`: result windows out to the tools operators already run.
//!
//! [`run`] reads the windows of `flow-records` deployments from
//! `TM_RESULTS` through a durable pull consumer, turns each window's ended
//! flows into IPFIX messages ([`ipfix`]) and sends them over UDP to a
//! collector (nfcapd, nfacctd, ntopng, …), then acknowledges the window.
//! A window is acknowledged only once all its datagrams are sent, so an
//! exporter stopped and started again resumes at the first window it had
//! not finished; while the collector refuses (ICMP port unreachable) the
//! window is retried, not acknowledged. Each record carries its
//! deployment-wide `seq`: records already sent by this process are skipped
//! and a gap (records the monitor dropped) is counted.

pub mod ipfix;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use async_nats::jetstream::{self, consumer};
use bus_schema::{store, subject};
use futures::StreamExt;
use serde::Deserialize;
use tokio::net::UdpSocket;

/// The analyzer whose windows carry flow records.
pub const FLOW_RECORDS: &str = "flow-records";

/// Where a new consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Start {
    /// Every window the stream holds.
    All,
    /// Windows published from now on.
    New,
}

/// What [`run`] does.
#[derive(Debug, Clone)]
pub struct Config {
    /// The collector's UDP address.
    pub collector: SocketAddr,
    /// Deployment ids to export (empty: every `flow-records` deployment).
    pub deployments: Vec<String>,
    /// The durable consumer's name: the exporter's place in the stream.
    pub durable: String,
    /// Where a consumer that does not exist yet starts.
    pub start: Start,
    /// How often the templates are sent again.
    pub template_refresh: Duration,
    /// Largest datagram, bytes.
    pub max_datagram: usize,
    /// Stop once every window in the stream is exported.
    pub until_caught_up: bool,
}

/// What [`run`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Windows exported (acknowledged).
    pub windows: u64,
    /// Windows acknowledged without export (another analyzer's).
    pub skipped_windows: u64,
    /// Flow records sent.
    pub records: u64,
    /// Records already sent, skipped.
    pub duplicates: u64,
    /// Records missing between two windows of a deployment (dropped by
    /// the monitor at its `max_held`).
    pub gaps: u64,
    /// Datagrams sent.
    pub datagrams: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// Windows whose sending failed (the collector refused, the network
    /// was unreachable), each sent again a second later.
    pub refused: u64,
}

/// A record as `flow-records` publishes it.
#[derive(Debug, Deserialize)]
struct Record {
    seq: u64,
    src: String,
    dst: String,
    sport: u16,
    dport: u16,
    proto: u8,
    packets: u64,
    octets: u64,
    start_ns: u64,
    end_ns: u64,
    tcp_flags: u8,
    link: u32,
    reason: u8,
}

#[derive(Debug, Deserialize)]
struct Records {
    records: Vec<Record>,
}

/// What the exporter reads of any window (the rest is skipped unread).
#[derive(Debug, Deserialize)]
struct Head {
    monitor: String,
    deployment: String,
    analyzer: String,
}

/// What it reads of a `flow-records` window: the fields of a
/// [`bus_schema::ResultWindow`] it needs, the records decoded straight from
/// the message.
#[derive(Debug, Deserialize)]
struct FlowWindow {
    monitor: String,
    deployment: String,
    run: String,
    seq: u64,
    results: Records,
}

/// The flows of a window, with their `seq`.
fn flows_of(window: &FlowWindow) -> Result<Vec<(u64, ipfix::Flow)>> {
    window
        .results
        .records
        .iter()
        .map(|r| {
            let addr = |a: &str, field: &str| -> Result<IpAddr> {
                a.parse()
                    .with_context(|| format!("record {}: {field} = {a:?} is not an address", r.seq))
            };
            Ok((
                r.seq,
                ipfix::Flow {
                    src: addr(&r.src, "src")?,
                    dst: addr(&r.dst, "dst")?,
                    sport: r.sport,
                    dport: r.dport,
                    proto: r.proto,
                    tcp_flags: r.tcp_flags,
                    packets: r.packets,
                    octets: r.octets,
                    start_ms: r.start_ns / 1_000_000,
                    end_ms: r.end_ns / 1_000_000,
                    ingress: r.link,
                    reason: r.reason,
                },
            ))
        })
        .collect()
}

/// The exporter's state between windows.
struct Exporter {
    cfg: Config,
    socket: UdpSocket,
    domains: HashMap<String, ipfix::Domain>,
    /// Last record seq sent per (monitor, deployment, run).
    sent: HashMap<(String, String, String), u64>,
    counters: Counters,
}

impl Exporter {
    /// Sends a window's new records; `Ok(Err(_))` if a send failed or the
    /// collector refused (the window is to be sent again).
    async fn export(&mut self, window: &FlowWindow) -> Result<std::io::Result<()>> {
        let flows = flows_of(window)?;
        let key = (
            window.monitor.clone(),
            window.deployment.clone(),
            window.run.clone(),
        );
        // What came before is known if this process sent it, or if this is
        // the deployment's first window.
        let known = self
            .sent
            .get(&key)
            .copied()
            .or((window.seq == 1).then_some(0));
        let mut fresh = Vec::with_capacity(flows.len());
        let mut gaps = 0;
        let mut expected = known.map_or(0, |last| last + 1);
        for (seq, flow) in flows {
            if seq < expected {
                self.counters.duplicates += 1;
                continue;
            }
            if known.is_some() && fresh.is_empty() {
                gaps += seq - expected;
            }
            expected = seq + 1;
            fresh.push(flow);
        }
        let domain = self
            .domains
            .entry(window.monitor.clone())
            .or_insert_with(|| {
                let d = ipfix::Domain::new(ipfix::domain_of(&window.monitor));
                tracing::info!(monitor = %window.monitor, domain = d.id, "observation domain");
                d
            });
        let export_s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as u32);
        let before = domain.clone();
        let messages = domain.messages(
            &fresh,
            export_s,
            self.cfg.template_refresh,
            self.cfg.max_datagram,
        );
        let mut failed = None;
        for m in &messages {
            match self.socket.send(m).await {
                Ok(_) => {
                    self.counters.datagrams += 1;
                    self.counters.bytes += m.len() as u64;
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        // A port-unreachable that came back while the window was sent.
        if failed.is_none() {
            failed = self.socket.take_error().unwrap_or_else(Some);
        }
        if let Some(e) = failed {
            // Sent again from the same sequence number, with templates.
            *domain = ipfix::Domain::new(before.id);
            domain.seq = before.seq;
            self.counters.refused += 1;
            return Ok(Err(e));
        }
        if gaps > 0 {
            tracing::warn!(
                monitor = %window.monitor, deployment = %window.deployment, missing = gaps,
                "records missing before window {} (the monitor dropped them: raise max_held or publish more often)",
                window.seq
            );
        }
        self.counters.gaps += gaps;
        self.counters.records += fresh.len() as u64;
        if !fresh.is_empty() {
            self.sent.insert(key, expected - 1);
        }
        Ok(Ok(()))
    }
}

/// Exports until `stop` completes (or, with
/// [`Config::until_caught_up`], until the stream has no window left),
/// then returns what it did. The window being exported when `stop`
/// completes is finished and acknowledged first.
///
/// # Errors
/// The stream or consumer cannot be had, or the collector's address
/// cannot be sent to.
pub async fn run(
    js: &jetstream::Context,
    cfg: Config,
    stop: impl Future<Output = ()>,
    mut progress: impl FnMut(&Counters, u64),
) -> Result<Counters> {
    let filters: Vec<String> = if cfg.deployments.is_empty() {
        vec![subject::results("*", "*")]
    } else {
        cfg.deployments
            .iter()
            .map(|d| subject::results("*", d))
            .collect()
    };
    let stream = js
        .get_stream(store::RESULTS_STREAM)
        .await
        .with_context(|| format!("stream {}", store::RESULTS_STREAM))?;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &cfg.durable,
            consumer::pull::Config {
                durable_name: Some(cfg.durable.clone()),
                description: Some("tm-export: windows exported to a collector".into()),
                filter_subjects: filters,
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(60),
                deliver_policy: match cfg.start {
                    Start::All => consumer::DeliverPolicy::All,
                    Start::New => consumer::DeliverPolicy::New,
                },
                ..Default::default()
            },
        )
        .await
        .with_context(|| {
            format!(
                "durable consumer {:?} on {}",
                cfg.durable,
                store::RESULTS_STREAM
            )
        })?;
    let socket = UdpSocket::bind(if cfg.collector.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .await
    .context("binding a UDP socket")?;
    socket
        .connect(cfg.collector)
        .await
        .with_context(|| format!("collector {}", cfg.collector))?;
    let mut ex = Exporter {
        cfg,
        socket,
        domains: HashMap::new(),
        sent: HashMap::new(),
        counters: Counters::default(),
    };
    tokio::pin!(stop);
    let mut last_report = Instant::now();
    let mut warned = std::collections::HashSet::new();
    loop {
        let batch = consumer
            .fetch()
            .max_messages(64)
            .expires(Duration::from_millis(500))
            .messages();
        let fetched = tokio::select! {
            b = batch => b,
            () = &mut stop => return Ok(ex.counters),
        };
        // The bus away (a reconnect, a leader election): wait and ask again;
        // the consumer is where it was.
        let mut batch = match fetched {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch windows; trying again in a second");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = &mut stop => return Ok(ex.counters),
                }
            }
        };
        let mut got = 0;
        while let Some(msg) = batch.next().await {
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "fetching windows");
                    break;
                }
            };
            got += 1;
            let head: Head = match bus_schema::decode(&msg.payload) {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(subject = %msg.subject, error = %e, "undecodable window skipped");
                    ack(&msg).await;
                    ex.counters.skipped_windows += 1;
                    continue;
                }
            };
            let window = if head.analyzer == FLOW_RECORDS {
                bus_schema::decode::<FlowWindow>(&msg.payload).map_err(|e| {
                    format!(
                        "window of {} on {}: not flow-records' form: {e}",
                        head.deployment, head.monitor
                    )
                })
            } else {
                Err(format!(
                    "{} is a deployment of {}, not of {FLOW_RECORDS}: its windows are skipped",
                    head.deployment, head.analyzer
                ))
            };
            let window = match window {
                Ok(w) => w,
                Err(why) => {
                    // Once per deployment: the next ones are the same.
                    if (!ex.cfg.deployments.is_empty() || head.analyzer == FLOW_RECORDS)
                        && warned.insert(head.deployment.clone())
                    {
                        tracing::warn!("{why}");
                    }
                    ack(&msg).await;
                    ex.counters.skipped_windows += 1;
                    continue;
                }
            };
            loop {
                match ex.export(&window).await {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => {
                        if last_report.elapsed() >= Duration::from_secs(10)
                            || ex.counters.refused == 1
                        {
                            tracing::warn!(
                                collector = %ex.cfg.collector, error = %e,
                                "cannot send to the collector; the window is sent again every second"
                            );
                            last_report = Instant::now();
                        }
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                            () = &mut stop => return Ok(ex.counters),
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "window skipped");
                        ex.counters.skipped_windows += 1;
                        break;
                    }
                }
            }
            ack(&msg).await;
            ex.counters.windows += 1;
        }
        let pending = consumer.cached_info().num_pending;
        if last_report.elapsed() >= Duration::from_secs(10) {
            progress(&ex.counters, pending);
            last_report = Instant::now();
        }
        if got == 0 && ex.cfg.until_caught_up {
            let mut consumer = consumer.clone();
            let info = consumer.info().await.context("consumer info")?;
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                return Ok(ex.counters);
            }
        }
    }
}

/// Acknowledges `msg` and waits for the server to have it, so a stop right
/// after does not see the window again. If that fails (the bus away), the
/// server sends the window again after the consumer's ack wait, and this
/// process skips the records it already sent.
async fn ack(msg: &jetstream::Message) {
    if let Err(e) = msg.double_ack().await {
        tracing::warn!(subject = %msg.subject, error = %e, "acknowledgement not confirmed");
    }
}
