//! One app instance, speaking the mgmt-app ABI (`tm-app-api`) from the
//! host's side: the store's data, the imports the app module gets (`log`,
//! `now`, `call`, `reply`) and the calls into its exports.
//!
//! Every call into the app runs under an epoch deadline and the store's
//! memory cap; a failure is returned as a [`Failure`] and the instance
//! must not be used again. `call` is async: the deadline is renewed when
//! it returns, so waiting on the bus is free and computing is bounded.

use std::collections::HashMap;
use std::sync::Arc;

use bus_schema::{ErrorBody, ErrorCode, Value};
use tm_app_api as api;
use tokio::sync::mpsc;
use wasm_host::{Failure, GuestMemory, Limits};
use wasmtime::{AsContextMut, Caller, Engine, Instance, Linker, Module, Store};

use super::{Msg, Shared, now_ns, ops, refuse};

/// Store data of one app.
pub(super) struct Ctx {
    pub(super) app: String,
    pub(super) shared: Arc<Shared>,
    limits: Limits,
    /// The last `call`'s reply, until the app fetches it with `reply`.
    reply: Vec<u8>,
    pub(super) timers: HashMap<u32, tokio::task::JoinHandle<()>>,
    pub(super) subscriptions: HashMap<String, tokio::task::JoinHandle<()>>,
    pub(super) inbox: mpsc::Sender<Msg>,
    pub(super) report_seq: u64,
    pub(super) deployed: u64,
}

impl AsRef<Limits> for Ctx {
    fn as_ref(&self) -> &Limits {
        &self.limits
    }
}

impl Ctx {
    fn cancel_all(&mut self) {
        for (_, t) in self.timers.drain() {
            t.abort();
        }
        for (_, s) in self.subscriptions.drain() {
            s.abort();
        }
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        self.cancel_all();
    }
}

/// The host functions every app module imports.
pub(super) fn linker(engine: &Engine) -> wasmtime::Result<Linker<Ctx>> {
    let mut linker = Linker::new(engine);
    linker.func_wrap(api::IMPORT_MODULE, api::import::LOG, log)?;
    linker.func_wrap(api::IMPORT_MODULE, api::import::NOW, || -> u64 { now_ns() })?;
    linker.func_wrap_async(
        api::IMPORT_MODULE,
        api::import::CALL,
        |mut caller: Caller<'_, Ctx>, (op_ptr, op_len, req_ptr, req_len): (u32, u32, u32, u32)| {
            Box::new(async move { call(&mut caller, (op_ptr, op_len), (req_ptr, req_len)).await })
        },
    )?;
    linker.func_wrap(api::IMPORT_MODULE, api::import::REPLY, reply)?;
    Ok(linker)
}

fn guest_memory(caller: &mut Caller<'_, Ctx>) -> wasmtime::Result<wasmtime::Memory> {
    caller
        .get_export(api::export::MEMORY)
        .and_then(wasmtime::Extern::into_memory)
        .ok_or_else(|| wasmtime::Error::msg("the app exports no memory"))
}

/// `log(level, ptr, len)`: a line in the manager's log under the app's name.
fn log(mut caller: Caller<'_, Ctx>, level: u32, ptr: u32, len: u32) -> wasmtime::Result<()> {
    let memory = guest_memory(&mut caller)?;
    let text = GuestMemory::slice(memory.data(&caller), ptr, len, 16 * 1024)
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .map_err(wasmtime::Error::msg)?;
    let app = &caller.data().app;
    match level {
        0 => tracing::error!(app = %app, "{text}"),
        1 => tracing::warn!(app = %app, "{text}"),
        2 => tracing::info!(app = %app, "{text}"),
        3 => tracing::debug!(app = %app, "{text}"),
        _ => tracing::trace!(app = %app, "{text}"),
    }
    Ok(())
}

/// `call(op, request)`: runs a host operation; returns the length of the
/// encoded reply, which `reply` then copies into the app's memory.
async fn call(
    caller: &mut Caller<'_, Ctx>,
    (op_ptr, op_len): (u32, u32),
    (req_ptr, req_len): (u32, u32),
) -> wasmtime::Result<u32> {
    let memory = guest_memory(caller)?;
    let max = caller.data().shared.limits.max_message;
    let (op, request) = {
        let data = memory.data(&*caller);
        let op = GuestMemory::slice(data, op_ptr, op_len, 64)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .map_err(wasmtime::Error::msg)?;
        let request = GuestMemory::slice(data, req_ptr, req_len, max)
            .map_err(wasmtime::Error::msg)?
            .to_vec();
        (op, request)
    };
    let reply = ops::dispatch(caller.data_mut(), &op, &request).await;
    let len = reply.len() as u32;
    caller.data_mut().reply = reply;
    // Waiting for the bus does not count against the deadline.
    let ticks = {
        let s = &caller.data().shared;
        s.sandbox.ticks(s.limits.call_timeout)
    };
    caller.as_context_mut().set_epoch_deadline(ticks);
    Ok(len)
}

/// `reply(ptr)`: copies the last `call`'s reply to `ptr`; returns its length.
fn reply(mut caller: Caller<'_, Ctx>, ptr: u32) -> wasmtime::Result<u32> {
    let memory = guest_memory(&mut caller)?;
    let reply = std::mem::take(&mut caller.data_mut().reply);
    memory
        .write(&mut caller, ptr as usize, &reply)
        .map_err(|_| {
            wasmtime::Error::msg(format!(
                "reply: range {ptr}+{} is outside guest memory",
                reply.len()
            ))
        })?;
    Ok(reply.len() as u32)
}

/// An instantiated app and the calls into it.
pub(super) struct Guest {
    store: Store<Ctx>,
    instance: Instance,
    ticks: u64,
    limit_ms: u64,
}

impl Guest {
    /// Instantiates `module` as app `app`, checks its ABI version and runs
    /// its `start` with `params`; timers and subscriptions send to `inbox`.
    ///
    /// # Errors
    /// `bad_module` (cannot instantiate), `abi_mismatch`, `bad_params`
    /// (the app's own message), `internal` (start failed) or `guest_trap`.
    pub(super) async fn start(
        shared: &Arc<Shared>,
        linker: &Linker<Ctx>,
        app: &str,
        module: &Module,
        params: &Value,
        inbox: mpsc::Sender<Msg>,
    ) -> Result<Guest, ErrorBody> {
        let mut store = Store::new(
            shared.sandbox.engine(),
            Ctx {
                app: app.to_owned(),
                shared: shared.clone(),
                limits: Limits::new(shared.limits.memory_bytes),
                reply: Vec::new(),
                timers: HashMap::new(),
                subscriptions: HashMap::new(),
                inbox,
                report_seq: 0,
                deployed: 0,
            },
        );
        store.limiter(|c| &mut c.limits);
        store.epoch_deadline_trap();
        let ticks = shared.sandbox.ticks(shared.limits.call_timeout);
        store.set_epoch_deadline(ticks);
        let instance = linker
            .instantiate_async(&mut store, module)
            .await
            .map_err(|e| {
                ErrorBody::new(ErrorCode::BadModule, format!("cannot instantiate: {e:#}"))
            })?;
        let mut guest = Guest {
            store,
            instance,
            ticks,
            limit_ms: shared.limits.call_timeout.as_millis() as u64,
        };
        let abi = guest
            .call::<(), u32>(api::export::ABI_VERSION, ())
            .await
            .map_err(|e| {
                ErrorBody::new(
                    ErrorCode::AbiMismatch,
                    format!("no usable {}: {e}", api::export::ABI_VERSION),
                )
            })?;
        if abi != api::ABI_VERSION {
            return refuse(
                ErrorCode::AbiMismatch,
                format!(
                    "the app speaks mgmt-app ABI {abi}; this manager speaks {}",
                    api::ABI_VERSION
                ),
            );
        }
        let params = bus_schema::encode(params)
            .map_err(|e| ErrorBody::new(ErrorCode::BadParams, e.to_string()))?;
        let raw = guest
            .call_with_bytes(api::export::START, &params)
            .await
            .map_err(|f| ErrorBody::new(ErrorCode::GuestTrap, f.to_string()))?;
        match api::Status::from_raw(raw) {
            api::Status::Ok => Ok(guest),
            api::Status::BadParams => refuse(ErrorCode::BadParams, guest.last_error().await),
            api::Status::Failed | api::Status::StateVersion => refuse(
                ErrorCode::Internal,
                format!("start failed: {}", guest.last_error().await),
            ),
        }
    }

    /// Delivers what the app's task was asked to do; the raw status.
    pub(super) async fn deliver(&mut self, msg: Msg) -> Result<u32, Failure> {
        match msg {
            Msg::Timer(id) => {
                self.call::<(u32, u64), u32>(api::export::TIMER, (id, now_ns()))
                    .await
            }
            Msg::Event(bytes) => self.call_with_bytes(api::export::EVENT, &bytes).await,
        }
    }

    /// Cancels the app's timers and subscriptions.
    pub(super) fn cancel_all(&mut self) {
        self.store.data_mut().cancel_all();
    }

    async fn call<P, R>(&mut self, name: &str, params: P) -> Result<R, Failure>
    where
        P: wasmtime::WasmParams + Sync,
        R: wasmtime::WasmResults + Sync,
    {
        let f = self
            .instance
            .get_typed_func::<P, R>(&mut self.store, name)
            .map_err(|e| Failure::Abi {
                call: name.into(),
                detail: format!("{e:#}"),
            })?;
        self.store.set_epoch_deadline(self.ticks);
        f.call_async(&mut self.store, params)
            .await
            .map_err(|e| Failure::classify(&self.store, name, self.limit_ms, &e))
    }

    fn memory(&mut self) -> Result<GuestMemory, Failure> {
        self.instance
            .get_memory(&mut self.store, api::export::MEMORY)
            .map(GuestMemory)
            .ok_or_else(|| Failure::Abi {
                call: "memory".into(),
                detail: "the app exports no memory".into(),
            })
    }

    /// Copies `bytes` into a guest buffer and calls `name(ptr, len)`.
    async fn call_with_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<u32, Failure> {
        let ptr = self
            .call::<u32, u32>(api::export::ALLOC, bytes.len() as u32)
            .await?;
        if ptr == 0 && !bytes.is_empty() {
            return Err(Failure::Abi {
                call: api::export::ALLOC.into(),
                detail: format!("could not allocate {} bytes", bytes.len()),
            });
        }
        let memory = self.memory()?;
        memory
            .write(&mut self.store, ptr, bytes)
            .map_err(|detail| Failure::Abi {
                call: name.into(),
                detail,
            })?;
        self.call::<(u32, u32), u32>(name, (ptr, bytes.len() as u32))
            .await
    }

    /// The app's own message for its last failed call.
    pub(super) async fn last_error(&mut self) -> String {
        let packed = match self.call::<(), u64>(api::export::LAST_ERROR, ()).await {
            Ok(p) => p,
            Err(e) => return format!("(no message: {e})"),
        };
        let (ptr, len) = api::unpack(packed);
        match self.memory() {
            Ok(m) => m
                .read(&self.store, ptr, len, 64 * 1024)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_else(|e| format!("(unreadable message: {e})")),
            Err(e) => format!("(no message: {e})"),
        }
    }

    /// Runs the app's `stop`, if it exports one.
    pub(super) async fn stop(&mut self) -> Result<(), String> {
        if self
            .instance
            .get_typed_func::<(), u32>(&mut self.store, api::export::STOP)
            .is_err()
        {
            return Ok(());
        }
        match self.call::<(), u32>(api::export::STOP, ()).await {
            Ok(raw) if api::Status::from_raw(raw) == api::Status::Ok => Ok(()),
            Ok(_) => Err(self.last_error().await),
            Err(f) => Err(f.to_string()),
        }
    }
}
