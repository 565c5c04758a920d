//! `tm-console`: a live web view of the network, its monitors and their
//! results — one more outside client of the bus.
//!
//! * [`feed`] follows the bus (KV watches, ordered consumers) into a
//!   [`view::View`] and a broadcast of [`view::Update`]s.
//! * This module serves the page (assets embedded from `manager/console/`)
//!   and its API: `GET /api/view` (the whole view), `GET /api/updates`
//!   (server-sent events: the whole view, then each change), and the
//!   actions, `POST /api/deploy`, `/api/unload`, `/api/configure`,
//!   `/api/apps/load`, `/api/apps/unload`, sent through
//!   [`crate::control::Control`] as the console's identity — the same
//!   contract `tmctl` uses, so NATS permissions decide what a console may
//!   do: with a subscriber's credentials every action is refused by NATS
//!   and the page shows the refusal.

pub mod feed;
pub mod view;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bus_schema::{
    AppLoadRequest, AppSource, AppStatus, AppUnloadRequest, BlobRef, ErrorBody, ErrorCode, Filter,
    Value, subject,
};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use tokio::sync::{OnceCell, RwLock, broadcast};

use crate::control::{Control, DeploySpec, Targets};
use feed::Sink;
use view::View;

/// The refusals the NATS server sent this connection (`Permissions
/// Violation for Publish to …`), newest last: an action that fails after
/// one is reported as refused by NATS, naming the subject. The connection's
/// event callback records them ([`Refusals::record`]).
#[derive(Debug, Clone, Default)]
pub struct Refusals(Arc<std::sync::Mutex<Vec<(std::time::Instant, String)>>>);

impl Refusals {
    /// Keeps a server error that refused something.
    pub fn record(&self, error: &str) {
        if error.to_lowercase().contains("violation") {
            let mut v = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            v.push((std::time::Instant::now(), error.to_owned()));
            let len = v.len();
            if len > 16 {
                v.drain(..len - 16);
            }
        }
    }

    /// The last refusal since `since`, if any.
    fn since(&self, since: std::time::Instant) -> Option<String> {
        let v = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        v.iter()
            .rev()
            .find(|(at, _)| *at >= since)
            .map(|(_, e)| e.clone())
    }
}

/// How the console acts on the bus.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The id actions are sent as (owner of what it deploys).
    pub id: String,
    /// The connection has credentials: identities are enforced.
    pub enforced: bool,
    /// The credentials are a viewer's (or a subscriber's): the page says
    /// it is read-only (NATS refuses every action anyway).
    pub read_only: bool,
    /// What the server refused this connection.
    pub refusals: Refusals,
}

/// The console's shared state.
struct Console {
    client: async_nats::Client,
    identity: Identity,
    sink: Sink,
    control: OnceCell<Control>,
}

/// Serves the console on `listen` until the process ends: follows the bus
/// through `client` and acts as `identity`. Returns the bound address
/// through `bound` as soon as it listens.
///
/// # Errors
/// If `listen` cannot be bound.
pub async fn serve(
    client: async_nats::Client,
    identity: Identity,
    listen: SocketAddr,
    bound: impl FnOnce(SocketAddr),
) -> Result<()> {
    let sink = Sink {
        view: Arc::new(RwLock::new(View::default())),
        pages: broadcast::channel(4096).0,
    };
    tokio::spawn(feed::follow(
        async_nats::jetstream::new(client.clone()),
        sink.clone(),
    ));
    let console = Arc::new(Console {
        client,
        identity,
        sink,
        control: OnceCell::new(),
    });
    let app = Router::new()
        .route("/", get(|| asset("index.html")))
        .route("/app.js", get(|| asset("app.js")))
        .route("/style.css", get(|| asset("style.css")))
        .route("/vendor/{file}", get(vendor))
        .route("/api/whoami", get(whoami))
        .route("/api/view", get(whole_view))
        .route("/api/updates", get(updates))
        .route("/api/deploy", post(deploy))
        .route("/api/unload", post(unload))
        .route("/api/configure", post(configure))
        .route("/api/apps/load", post(app_load))
        .route("/api/apps/unload", post(app_unload))
        .with_state(console);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("--listen {listen}"))?;
    bound(listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

/// The page's files, embedded at build time.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../console/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../console/style.css"),
    ),
    (
        "cytoscape.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/vendor/cytoscape.min.js"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/vendor/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../console/vendor/uPlot.min.css"),
    ),
];

async fn asset(name: &str) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, mime, bytes)) => ([(header::CONTENT_TYPE, *mime)], *bytes).into_response(),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

async fn vendor(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    asset(&file).await
}

async fn whoami(State(c): State<Arc<Console>>) -> axum::Json<Json> {
    axum::Json(json!({
        "id": c.identity.id,
        "enforced": c.identity.enforced,
        "read_only": c.identity.read_only,
    }))
}

async fn whole_view(State(c): State<Arc<Console>>) -> axum::Json<Json> {
    axum::Json(c.sink.view.read().await.to_json())
}

/// The whole view as the first event (`view`), then one `update` event
/// per change; a page that falls too far behind gets the whole view again.
async fn updates(
    State(c): State<Arc<Console>>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    // Subscribed before the view is read: no change falls between.
    let rx = c.sink.pages.subscribe();
    let first = c.sink.view.read().await.to_json();
    let view = c.sink.view.clone();
    let first = futures::stream::once(async move {
        Ok(SseEvent::default().event("view").data(first.to_string()))
    });
    let rest = futures::stream::unfold((rx, view), |(mut rx, view)| async move {
        let event = match rx.recv().await {
            Ok(update) => SseEvent::default()
                .event("update")
                .data(serde_json::to_string(&update).unwrap_or_default()),
            Err(broadcast::error::RecvError::Lagged(_)) => SseEvent::default()
                .event("view")
                .data(view.read().await.to_json().to_string()),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), (rx, view)))
    });
    Sse::new(first.chain(rest)).keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
}

/// An action's failure: the error body the page shows, with the code as
/// HTTP status (400 for the request, 403 refused, 502 the bus).
struct Refusal(ErrorBody);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = match self.0.code {
            ErrorCode::BadRequest | ErrorCode::BadParams | ErrorCode::BadFilter => {
                StatusCode::BAD_REQUEST
            }
            ErrorCode::NotOwner | ErrorCode::Unauthorized => StatusCode::FORBIDDEN,
            ErrorCode::UnknownDeployment | ErrorCode::UnknownApp | ErrorCode::BlobNotFound => {
                StatusCode::NOT_FOUND
            }
            _ => StatusCode::BAD_GATEWAY,
        };
        (
            status,
            axum::Json(json!({"error": {"code": self.0.code, "message": self.0.message}})),
        )
            .into_response()
    }
}

impl From<ErrorBody> for Refusal {
    fn from(e: ErrorBody) -> Self {
        Refusal(e)
    }
}

type Answer = Result<axum::Json<Json>, Refusal>;

fn bad(field: &str, e: impl std::fmt::Display) -> Refusal {
    Refusal(ErrorBody::new(
        ErrorCode::BadRequest,
        format!("{field}: {e}"),
    ))
}

impl Console {
    /// Runs an action; a failure after which the server refused this
    /// connection something is reported as that refusal: NATS permissions
    /// decide what a console may do.
    async fn act(&self, action: impl std::future::Future<Output = Answer>) -> Answer {
        let began = std::time::Instant::now();
        match action.await {
            Err(Refusal(e)) => match self.identity.refusals.since(began) {
                Some(violation) => Err(Refusal(ErrorBody::new(
                    ErrorCode::Unauthorized,
                    format!(
                        "refused by NATS for identity {:?}: {violation} ({}: {})",
                        self.identity.id,
                        e.code.as_str(),
                        e.message
                    ),
                ))),
                None => Err(Refusal(e)),
            },
            ok => ok,
        }
    }

    /// The control plane as the console's identity, opened at the first
    /// action (a console that never acts needs no more than a
    /// subscriber's rights).
    async fn control(&self) -> Result<&Control, Refusal> {
        self.control
            .get_or_try_init(|| {
                Control::connect_with(
                    self.client.clone(),
                    &self.identity.id,
                    1,
                    self.identity.enforced,
                )
            })
            .await
            .map_err(Refusal)
    }
}

/// A JSON body's value as a bus value (params).
fn params_of(field: &str, v: Option<Json>) -> Result<Value, Refusal> {
    match v {
        None | Some(Json::Null) => Ok(Value::Nil),
        Some(j) => rmp_serde::to_vec_named(&j)
            .map_err(|e| bad(field, e))
            .and_then(|bytes| rmp_serde::from_slice(&bytes).map_err(|e| bad(field, e))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    deployment: String,
    analyzer: String,
    #[serde(default)]
    params: Option<Json>,
    /// Monitor ids; none: every monitor that is up.
    #[serde(default)]
    monitors: Vec<String>,
    #[serde(default)]
    report_every_ms: Option<u64>,
}

async fn deploy(State(c): State<Arc<Console>>, body: axum::body::Bytes) -> Answer {
    c.act(async {
        let q: DeployBody = serde_json::from_slice(&body).map_err(|e| bad("body", e))?;
        bus_schema::validate_token("deployment", &q.deployment).map_err(|e| bad("deployment", e))?;
        let spec = DeploySpec {
            deployment: q.deployment,
            analyzer: q.analyzer,
            sha256: None,
            params: params_of("params", q.params)?,
            filter: Filter::default(),
            targets: if q.monitors.is_empty() {
                Targets::All
            } else {
                Targets::Monitors(q.monitors)
            },
            report_every_ms: q.report_every_ms,
        };
        let d = c.control().await?.deploy(&spec).await?;
        Ok(axum::Json(json!({
            "deployment": d.record.deployment,
            "placed": d.placed.iter().map(|p| &p.monitor).collect::<Vec<_>>(),
            "failed": d.failed.iter().map(|f| json!({"monitor": f.monitor, "code": f.error.code, "message": f.error.message})).collect::<Vec<_>>(),
        })))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentBody {
    deployment: String,
    #[serde(default)]
    params: Option<Json>,
}

async fn unload(State(c): State<Arc<Console>>, body: axum::body::Bytes) -> Answer {
    c.act(async {
        let q: DeploymentBody = serde_json::from_slice(&body).map_err(|e| bad("body", e))?;
        let done = c.control().await?.unload(&q.deployment, false).await?;
        Ok(axum::Json(json!({
            "deployment": q.deployment,
            "unloaded": done.results.iter().map(|r| &r.window.monitor).collect::<Vec<_>>(),
        })))
    })
    .await
}

async fn configure(State(c): State<Arc<Console>>, body: axum::body::Bytes) -> Answer {
    c.act(async {
        let q: DeploymentBody = serde_json::from_slice(&body).map_err(|e| bad("body", e))?;
        let params = params_of("params", q.params)?;
        let done = c
            .control()
            .await?
            .configure(&q.deployment, params, false)
            .await?;
        Ok(axum::Json(json!({
            "deployment": q.deployment,
            "done": done.done.iter().map(|(m, r)| json!({"monitor": m, "config_revision": r})).collect::<Vec<_>>(),
            "failed": done.failed.iter().map(|f| json!({"monitor": f.monitor, "code": f.error.code, "message": f.error.message})).collect::<Vec<_>>(),
        })))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppBody {
    manager: String,
    app: String,
    /// A blob in `tm_blobs` (load only).
    #[serde(default)]
    blob: Option<String>,
    #[serde(default)]
    params: Option<Json>,
}

/// How long an app's start may take (it may deploy to many monitors).
const APP_TIMEOUT: Duration = Duration::from_secs(30);

async fn app_load(State(c): State<Arc<Console>>, body: axum::body::Bytes) -> Answer {
    c.act(async {
        let q: AppBody = serde_json::from_slice(&body).map_err(|e| bad("body", e))?;
        bus_schema::validate_token("manager", &q.manager).map_err(|e| bad("manager", e))?;
        let Some(blob) = q.blob else {
            return Err(bad("blob", "give the app's blob name"));
        };
        let request = AppLoadRequest {
            app: q.app,
            source: AppSource::Object(BlobRef {
                name: blob,
                sha256: String::new(),
            }),
            params: params_of("params", q.params)?,
        };
        let status: AppStatus = c
            .control()
            .await?
            .request(
                subject::manager_apps_load(&q.manager),
                &request,
                APP_TIMEOUT,
            )
            .await?;
        Ok(axum::Json(
            serde_json::to_value(&status).unwrap_or(Json::Null),
        ))
    })
    .await
}

async fn app_unload(State(c): State<Arc<Console>>, body: axum::body::Bytes) -> Answer {
    c.act(async {
        let q: AppBody = serde_json::from_slice(&body).map_err(|e| bad("body", e))?;
        bus_schema::validate_token("manager", &q.manager).map_err(|e| bad("manager", e))?;
        let status: AppStatus = c
            .control()
            .await?
            .request(
                subject::manager_apps_unload(&q.manager),
                &AppUnloadRequest { app: q.app },
                APP_TIMEOUT,
            )
            .await?;
        Ok(axum::Json(
            serde_json::to_value(&status).unwrap_or(Json::Null),
        ))
    })
    .await
}
