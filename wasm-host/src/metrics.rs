//! The Prometheus endpoint `tm-monitor` and `tm-manager` both serve:
//! `GET /metrics` in the OpenMetrics text format (`prometheus-client`),
//! over HTTP/1.1 (`hyper`).
//!
//! Each host registers its own metrics and collectors (which read the same
//! snapshot its `status` command answers with, so the two agree) in a
//! [`Registry`]; this module adds what both have — command latency
//! histograms and NATS reconnects — and serves the registry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a command histogram: `[("command", name)]`.
pub type CommandLabels = Vec<(&'static str, String)>;

/// Latency of the commands a host answers (or sends), by command name.
#[derive(Clone)]
pub struct CommandTimes {
    family: Family<CommandLabels, Histogram>,
}

impl Default for CommandTimes {
    fn default() -> Self {
        CommandTimes {
            // 100 µs to ~26 s in ×2 steps.
            family: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 2.0, 19))
            }),
        }
    }
}

impl std::fmt::Debug for CommandTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommandTimes")
    }
}

impl CommandTimes {
    /// Records one command's duration.
    pub fn observe(&self, command: &str, took: Duration) {
        self.family
            .get_or_create(&vec![("command", command.to_owned())])
            .observe(took.as_secs_f64());
    }

    /// Registers the histogram as `{name}` (e.g.
    /// `tm_monitor_command_duration_seconds`).
    pub fn register(&self, registry: &mut Registry, name: &str, help: &str) {
        registry.register(name, help, self.family.clone());
    }
}

/// Reconnects of a host's NATS client, read at scrape time through a
/// closure returning the client's connect count (e.g. `move ||
/// stats.connects.load(Relaxed)` with `async_nats::Client::statistics()`),
/// so this module needs no NATS client.
#[derive(Clone)]
pub struct NatsConnects(Arc<dyn Fn() -> u64 + Send + Sync>);

impl NatsConnects {
    /// Reads the connect count with `connects`.
    pub fn new(connects: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        NatsConnects(Arc::new(connects))
    }
}

impl std::fmt::Debug for NatsConnects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NatsConnects")
    }
}

impl Collector for NatsConnects {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new((self.0)().saturating_sub(1));
        let m = encoder.encode_descriptor(
            "tm_nats_reconnects",
            "Times the NATS connection was re-established after the first connect",
            None,
            counter.metric_type(),
        )?;
        counter.encode(m)
    }
}

/// The registry as OpenMetrics text.
///
/// # Errors
/// A collector failed to encode.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text)
}

/// Serves `GET /metrics` on `listen` until the task is dropped; returns the
/// bound address (port 0 picks a free one) and the server task.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(
    listen: SocketAddr,
    registry: Arc<Registry>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: back off, do not spin.
                    tracing::warn!(error = %e, "metrics endpoint cannot accept");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                }
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let registry = registry.clone();
                    async move { Ok::<_, std::convert::Infallible>(respond(&req, &registry)) }
                });
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(error = %e, "metrics connection ended");
                }
            });
        }
    });
    Ok((bound, task))
}

fn respond(req: &Request<hyper::body::Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    if req.method() != Method::GET || req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "only GET /metrics is served here\n".into(),
        );
    }
    match render(registry) {
        Ok(text) => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            text,
        ),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("cannot encode metrics: {e}\n"),
        ),
    }
}

/// Encodes one counter or gauge sample per label set under one descriptor:
/// the helper host collectors use for figures read from a status snapshot.
///
/// # Errors
/// Encoding failed.
pub fn encode_family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Vec<(&'static str, String)>, M)>,
) -> Result<(), std::fmt::Error> {
    let mut samples = samples.into_iter().peekable();
    let Some((_, first)) = samples.peek() else {
        return Ok(());
    };
    let mut family = encoder.encode_descriptor(name, help, None, first.metric_type())?;
    for (labels, metric) in samples {
        let m = family.encode_family(&labels)?;
        metric.encode(m)?;
    }
    Ok(())
}
