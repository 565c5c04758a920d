//! One analyzer instance: a wasmtime store speaking ABI v1 (`tm-abi`).
//!
//! Every call runs under an epoch deadline and the store's memory cap; a
//! failure is returned as a [`Failure`] and the instance must not be used
//! again.

use std::time::{Duration, Instant};

use bus_schema::{ErrorCode, Packed};
use tm_abi::{ABI_VERSION, Status, export, import};
use wasm_host::{Failure, GuestMemory, Limits, Sandbox};
use wasmtime::{Caller, Extern, ExternType, Linker, Module, Store, TypedFunc, ValType};

/// Largest results, error message, log line or alert a guest may hand over.
pub const MAX_GUEST_OUTPUT: usize = 16 << 20;
/// Alerts a deployment may emit per second; more are counted and dropped.
pub const EMITS_PER_SECOND: u32 = 100;
/// Exactly one MessagePack value, nothing after it: the one rule for
/// everything a guest hands over (results and alerts decoded here; state
/// checked by [`Packed::from_bytes`] and kept as bytes).
pub(crate) fn one_value(bytes: &[u8]) -> Result<bus_schema::Value, String> {
    let mut slice = bytes;
    let value = bus_schema::rmpv::decode::read_value(&mut slice)
        .map_err(|e| format!("not MessagePack: {e}"))?;
    if !slice.is_empty() {
        return Err(format!("{} bytes follow the value", slice.len()));
    }
    Ok(value)
}

/// Log lines a deployment may write per second.
pub const LOGS_PER_SECOND: u32 = 20;

/// Where an analyzer's alerts go.
pub type EmitSink = Box<dyn FnMut(bus_schema::Value) + Send>;

/// State held by the store.
pub struct GuestState {
    limits: Limits,
    deployment: String,
    emit: EmitSink,
    window_start: Instant,
    emits: u32,
    logs: u32,
    /// Alerts refused by the rate limit.
    pub emits_dropped: u64,
}

impl AsRef<Limits> for GuestState {
    fn as_ref(&self) -> &Limits {
        &self.limits
    }
}

impl GuestState {
    fn budget(&mut self) {
        if self.window_start.elapsed() >= Duration::from_secs(1) {
            self.window_start = Instant::now();
            self.emits = 0;
            self.logs = 0;
        }
    }
}

/// A load failed; the code and message go into the error reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LoadError {
    /// Reply code.
    pub code: ErrorCode,
    /// What went wrong.
    pub message: String,
}

fn load_err(code: ErrorCode, message: impl Into<String>) -> LoadError {
    LoadError {
        code,
        message: message.into(),
    }
}

/// A configure failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigureError {
    /// The analyzer refused the parameters and keeps the old ones.
    BadParams(String),
    /// The call failed; the instance is dead.
    Failed(Failure),
}

/// Why [`Analyzer::restore`] did not take a state.
#[derive(Debug)]
pub enum RestoreError {
    /// The analyzer refused it (its reason); the instance is still good.
    Refused(String),
    /// The state's version is one the module does not take.
    StateVersion(String),
    /// The call failed; the instance is dead.
    Failed(Failure),
}

/// A running analyzer.
pub struct Analyzer {
    store: Store<GuestState>,
    memory: GuestMemory,
    alloc: TypedFunc<i32, i32>,
    init: TypedFunc<(i32, i32), i32>,
    on_packets: TypedFunc<(i32, i32, i32), i32>,
    tick: TypedFunc<i64, i32>,
    configure: TypedFunc<(i32, i32), i32>,
    collect: TypedFunc<(), i64>,
    last_error: TypedFunc<(), i64>,
    snapshot: Option<TypedFunc<(), i64>>,
    restore: Option<TypedFunc<(i32, i32), i32>>,
    published: Option<TypedFunc<(), i32>>,
    finish: Option<TypedFunc<(), i32>>,
    batch_ptr: u32,
    batch_cap: usize,
    deadline_ticks: u64,
    timeout_ms: u64,
    /// Calls into the guest.
    pub calls: u64,
    /// Time spent in the guest.
    pub guest_time: Duration,
    /// Captured bytes per packet the guest reads (`tm_snap_len`; all if
    /// it does not say).
    snap_len: usize,
}

/// Settings of one instance.
pub struct InstanceConfig {
    /// Linear-memory cap.
    pub memory_bytes: usize,
    /// Deadline of each call.
    pub call_timeout: Duration,
    /// Size of the batch buffer in guest memory.
    pub batch_bytes: usize,
    /// Deployment id, for logs.
    pub deployment: String,
}

/// Checks that the module speaks ABI v1: the required exports with the right
/// signatures, and imports only what the host provides.
///
/// # Errors
/// A `bad_module` error naming the export or import at fault.
pub fn check_module(module: &Module) -> Result<(), LoadError> {
    use ValType::{I32, I64};
    let required: [(&str, &[ValType], &[ValType]); 9] = [
        (export::ABI_VERSION, &[], &[I32]),
        (export::ALLOC, &[I32], &[I32]),
        (export::INIT, &[I32, I32], &[I32]),
        (export::ON_PACKETS, &[I32, I32, I32], &[I32]),
        (export::TICK, &[I64], &[I32]),
        (export::CONFIGURE, &[I32, I32], &[I32]),
        (export::COLLECT, &[], &[I64]),
        (export::LAST_ERROR, &[], &[I64]),
        (export::MEMORY, &[], &[]),
    ];
    for (name, params, results) in required {
        let Some(ty) = module.get_export(name) else {
            return Err(load_err(
                ErrorCode::BadModule,
                format!("module lacks the export {name} required by ABI v{ABI_VERSION}"),
            ));
        };
        let ok = match (&ty, name) {
            (ExternType::Memory(_), export::MEMORY) => true,
            (ExternType::Func(f), _) if name != export::MEMORY => {
                f.params()
                    .map(|p| p.to_string())
                    .eq(params.iter().map(ToString::to_string))
                    && f.results()
                        .map(|p| p.to_string())
                        .eq(results.iter().map(ToString::to_string))
            }
            _ => false,
        };
        if !ok {
            return Err(load_err(
                ErrorCode::BadModule,
                format!("export {name} has the wrong type {ty:?} for ABI v{ABI_VERSION}"),
            ));
        }
    }
    let optional: [(&str, &[ValType], &[ValType]); 3] = [
        (export::SNAPSHOT, &[], &[I64]),
        (export::RESTORE, &[I32, I32], &[I32]),
        (export::SNAP_LEN, &[], &[I32]),
    ];
    for (name, params, results) in optional {
        if let Some(ExternType::Func(f)) = module.get_export(name) {
            let ok = f
                .params()
                .map(|p| p.to_string())
                .eq(params.iter().map(ToString::to_string))
                && f.results()
                    .map(|p| p.to_string())
                    .eq(results.iter().map(ToString::to_string));
            if !ok {
                return Err(load_err(
                    ErrorCode::BadModule,
                    format!("export {name} has the wrong type {f:?} for ABI v{ABI_VERSION}"),
                ));
            }
        }
    }
    for imp in module.imports() {
        let known = imp.module() == tm_abi::IMPORT_MODULE
            && [import::LOG, import::NOW, import::EMIT].contains(&imp.name());
        if !known {
            return Err(load_err(
                ErrorCode::BadModule,
                format!(
                    "module imports {}.{}, which the host does not provide (only tm.log, tm.now, tm.emit)",
                    imp.module(),
                    imp.name()
                ),
            ));
        }
    }
    Ok(())
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn linker(sandbox: &Sandbox) -> Result<Linker<GuestState>, LoadError> {
    let mut linker = Linker::new(sandbox.engine());
    let internal =
        |e: wasmtime::Error| load_err(ErrorCode::Internal, format!("host imports: {e:#}"));
    linker
        .func_wrap(
            tm_abi::IMPORT_MODULE,
            import::LOG,
            |mut caller: Caller<'_, GuestState>, level: i32, ptr: i32, len: i32| {
                caller.data_mut().budget();
                if caller.data().logs >= LOGS_PER_SECOND {
                    return;
                }
                caller.data_mut().logs += 1;
                let Some(Extern::Memory(mem)) = caller.get_export(export::MEMORY) else {
                    return;
                };
                let text = match GuestMemory::slice(mem.data(&caller), ptr as u32, len as u32, 4096)
                {
                    Ok(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                    Err(e) => format!("<bad log call: {e}>"),
                };
                let dep = &caller.data().deployment;
                match level {
                    0 => tracing::error!(deployment = %dep, "guest: {text}"),
                    1 => tracing::warn!(deployment = %dep, "guest: {text}"),
                    2 => tracing::info!(deployment = %dep, "guest: {text}"),
                    3 => tracing::debug!(deployment = %dep, "guest: {text}"),
                    _ => tracing::trace!(deployment = %dep, "guest: {text}"),
                }
            },
        )
        .map_err(internal)?;
    linker
        .func_wrap(tm_abi::IMPORT_MODULE, import::NOW, || unix_ns() as i64)
        .map_err(internal)?;
    linker
        .func_wrap(
            tm_abi::IMPORT_MODULE,
            import::EMIT,
            |mut caller: Caller<'_, GuestState>, ptr: i32, len: i32| -> i32 {
                caller.data_mut().budget();
                if caller.data().emits >= EMITS_PER_SECOND {
                    caller.data_mut().emits_dropped += 1;
                    return 1;
                }
                let Some(Extern::Memory(mem)) = caller.get_export(export::MEMORY) else {
                    return 2;
                };
                let value =
                    match GuestMemory::slice(mem.data(&caller), ptr as u32, len as u32, 1 << 20) {
                        Ok(bytes) => one_value(bytes).ok(),
                        Err(_) => None,
                    };
                let Some(value) = value else { return 2 };
                let state = caller.data_mut();
                state.emits += 1;
                (state.emit)(value);
                0
            },
        )
        .map_err(internal)?;
    Ok(linker)
}

impl Analyzer {
    /// Instantiates a checked module, verifies its ABI version, allocates
    /// the batch buffer and calls `init(params)`.
    ///
    /// # Errors
    /// `abi_mismatch`, `bad_module`, `bad_params`, `guest_trap` or
    /// `resource_limit`, with a message naming the cause.
    pub fn new(
        sandbox: &Sandbox,
        module: &Module,
        cfg: &InstanceConfig,
        params: &[u8],
        emit: EmitSink,
    ) -> Result<Self, LoadError> {
        check_module(module)?;
        let state = GuestState {
            limits: Limits::new(cfg.memory_bytes),
            deployment: cfg.deployment.clone(),
            emit,
            window_start: Instant::now(),
            emits: 0,
            logs: 0,
            emits_dropped: 0,
        };
        let mut store = Store::new(sandbox.engine(), state);
        store.limiter(|s| &mut s.limits);
        let deadline_ticks = sandbox.ticks(cfg.call_timeout);
        store.set_epoch_deadline(deadline_ticks);
        let trap = |store: &Store<GuestState>, call: &str, e: wasmtime::Error| {
            let f = Failure::classify(store, call, cfg.call_timeout.as_millis() as u64, &e);
            let code = if f.is_limit() {
                ErrorCode::ResourceLimit
            } else {
                ErrorCode::GuestTrap
            };
            load_err(code, f.to_string())
        };
        let instance = linker(sandbox)?
            .instantiate(&mut store, module)
            .map_err(|e| trap(&store, "instantiate", e))?;
        let memory = GuestMemory(
            instance
                .get_memory(&mut store, export::MEMORY)
                .expect("checked"),
        );
        macro_rules! func {
            ($name:expr) => {
                instance.get_typed_func(&mut store, $name).map_err(|e| {
                    load_err(ErrorCode::BadModule, format!("export {}: {e:#}", $name))
                })?
            };
        }
        let abi_version: TypedFunc<(), i32> = func!(export::ABI_VERSION);
        let version = abi_version
            .call(&mut store, ())
            .map_err(|e| trap(&store, export::ABI_VERSION, e))? as u32;
        if version != ABI_VERSION {
            return Err(load_err(
                ErrorCode::AbiMismatch,
                format!("module speaks ABI v{version}; this monitor speaks ABI v{ABI_VERSION}"),
            ));
        }
        let mut a = Analyzer {
            alloc: func!(export::ALLOC),
            init: func!(export::INIT),
            on_packets: func!(export::ON_PACKETS),
            tick: func!(export::TICK),
            configure: func!(export::CONFIGURE),
            collect: func!(export::COLLECT),
            last_error: func!(export::LAST_ERROR),
            snapshot: instance.get_typed_func(&mut store, export::SNAPSHOT).ok(),
            restore: instance.get_typed_func(&mut store, export::RESTORE).ok(),
            published: instance.get_typed_func(&mut store, export::PUBLISHED).ok(),
            finish: instance.get_typed_func(&mut store, export::FINISH).ok(),
            store,
            memory,
            batch_ptr: 0,
            batch_cap: cfg.batch_bytes,
            deadline_ticks,
            timeout_ms: cfg.call_timeout.as_millis() as u64,
            calls: 0,
            guest_time: Duration::ZERO,
            snap_len: usize::MAX,
        };
        let to_load = |f: Failure| {
            let code = if f.is_limit() {
                ErrorCode::ResourceLimit
            } else {
                ErrorCode::GuestTrap
            };
            load_err(code, f.to_string())
        };
        a.batch_ptr = a
            .alloc_buffer(export::ALLOC, cfg.batch_bytes)
            .map_err(to_load)?;
        match a.call_with_buffer(export::INIT, params).map_err(to_load)? {
            Status::Ok => {
                if let Ok(f) = instance.get_typed_func::<(), i32>(&mut a.store, export::SNAP_LEN) {
                    let len = a
                        .call(export::SNAP_LEN, |s| f.call(s, ()))
                        .map_err(to_load)?;
                    a.snap_len = len as u32 as usize;
                }
                Ok(a)
            }
            Status::BadParams => Err(load_err(ErrorCode::BadParams, a.guest_error())),
            Status::Failed | Status::StateVersion => Err(load_err(
                ErrorCode::BadParams,
                format!("init failed: {}", a.guest_error()),
            )),
        }
    }

    /// Runs a guest call with a fresh deadline, timing it.
    fn call<R>(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Store<GuestState>) -> wasmtime::Result<R>,
    ) -> Result<R, Failure> {
        self.store.set_epoch_deadline(self.deadline_ticks);
        let started = Instant::now();
        let result = f(&mut self.store);
        self.guest_time += started.elapsed();
        self.calls += 1;
        result.map_err(|e| Failure::classify(&self.store, name, self.timeout_ms, &e))
    }

    fn abi(name: &str, detail: impl Into<String>) -> Failure {
        Failure::Abi {
            call: name.into(),
            detail: detail.into(),
        }
    }

    fn alloc_buffer(&mut self, call: &str, len: usize) -> Result<u32, Failure> {
        let alloc = self.alloc.clone();
        let ptr = self.call(export::ALLOC, |s| alloc.call(s, len as i32))? as u32;
        if ptr == 0 {
            return Err(Self::abi(call, format!("tm_alloc({len}) returned 0")));
        }
        let size = self.memory.size(&self.store);
        if ptr as usize + len > size {
            return Err(Self::abi(
                call,
                format!("tm_alloc({len}) returned {ptr}, outside memory of {size} bytes"),
            ));
        }
        Ok(ptr)
    }

    /// Copies `bytes` into a fresh guest buffer and calls `name(ptr, len)`.
    fn call_with_buffer(&mut self, name: &str, bytes: &[u8]) -> Result<Status, Failure> {
        let ptr = self.alloc_buffer(name, bytes.len())?;
        self.memory
            .write(&mut self.store, ptr, bytes)
            .map_err(|e| Self::abi(name, e))?;
        let f = match name {
            export::INIT => self.init.clone(),
            export::RESTORE => self
                .restore
                .clone()
                .ok_or_else(|| Self::abi(name, "not exported"))?,
            _ => self.configure.clone(),
        };
        let raw = self.call(name, |s| f.call(s, (ptr as i32, bytes.len() as i32)))?;
        Ok(Status::from_raw(raw as u32))
    }

    /// The guest's message for its last non-OK status.
    fn guest_error(&mut self) -> String {
        let f = self.last_error.clone();
        match self.call(export::LAST_ERROR, |s| f.call(s, ())) {
            Ok(packed) => {
                let (ptr, len) = tm_abi::unpack(packed as u64);
                match self.memory.read(&self.store, ptr, len, 4096) {
                    Ok(bytes) if !bytes.is_empty() => String::from_utf8_lossy(&bytes).into_owned(),
                    _ => "the analyzer gave no reason".into(),
                }
            }
            Err(f) => format!("and tm_last_error failed: {f}"),
        }
    }

    /// Delivers a batch of `count` records.
    ///
    /// # Errors
    /// The failure; the instance is dead afterwards.
    pub fn on_packets(&mut self, batch: &[u8], count: u32) -> Result<(), Failure> {
        if batch.len() > self.batch_cap {
            return Err(Self::abi(
                export::ON_PACKETS,
                format!("batch of {} bytes exceeds the buffer", batch.len()),
            ));
        }
        self.memory
            .write(&mut self.store, self.batch_ptr, batch)
            .map_err(|e| Self::abi(export::ON_PACKETS, e))?;
        let (f, ptr) = (self.on_packets.clone(), self.batch_ptr as i32);
        let status = self.call(export::ON_PACKETS, |s| {
            f.call(s, (ptr, batch.len() as i32, count as i32))
        })?;
        self.check_status(export::ON_PACKETS, status)
    }

    fn check_status(&mut self, name: &str, status: i32) -> Result<(), Failure> {
        match Status::from_raw(status as u32) {
            Status::Ok => Ok(()),
            _ => {
                let why = self.guest_error();
                Err(Self::abi(name, format!("returned status {status}: {why}")))
            }
        }
    }

    /// Runs the periodic timer.
    ///
    /// # Errors
    /// The failure; the instance is dead afterwards.
    pub fn tick(&mut self, now_ns: u64) -> Result<(), Failure> {
        let f = self.tick.clone();
        let status = self.call(export::TICK, |s| f.call(s, now_ns as i64))?;
        self.check_status(export::TICK, status)
    }

    /// Tells the analyzer that its last results went out in a published
    /// window (nothing if it does not export `tm_published`).
    ///
    /// # Errors
    /// The failure; the instance is dead afterwards.
    pub fn published(&mut self) -> Result<(), Failure> {
        let Some(f) = self.published.clone() else {
            return Ok(());
        };
        let status = self.call(export::PUBLISHED, |s| f.call(s, ()))?;
        self.check_status(export::PUBLISHED, status)
    }

    /// Tells the analyzer that it is being unloaded, before the final
    /// collect (nothing if it does not export `tm_finish`).
    ///
    /// # Errors
    /// The failure; the instance is dead afterwards.
    pub fn finish(&mut self) -> Result<(), Failure> {
        let Some(f) = self.finish.clone() else {
            return Ok(());
        };
        let status = self.call(export::FINISH, |s| f.call(s, ()))?;
        self.check_status(export::FINISH, status)
    }

    /// Applies new parameters.
    ///
    /// # Errors
    /// Refused parameters (instance still good) or a failure (instance dead).
    pub fn configure(&mut self, params: &[u8]) -> Result<(), ConfigureError> {
        match self
            .call_with_buffer(export::CONFIGURE, params)
            .map_err(ConfigureError::Failed)?
        {
            Status::Ok => Ok(()),
            Status::BadParams | Status::Failed | Status::StateVersion => {
                Err(ConfigureError::BadParams(self.guest_error()))
            }
        }
    }

    /// The analyzer's current results, decoded as a MessagePack value.
    ///
    /// # Errors
    /// The failure; the instance is dead afterwards.
    pub fn collect(&mut self) -> Result<bus_schema::Value, Failure> {
        self.collect_raw().map(|(_, results)| results)
    }

    /// The results as the guest gave them (one MessagePack value), with
    /// their decoded form.
    ///
    /// # Errors
    /// As [`Analyzer::collect`].
    pub fn collect_raw(&mut self) -> Result<(Vec<u8>, bus_schema::Value), Failure> {
        let f = self.collect.clone();
        let packed = self.call(export::COLLECT, |s| f.call(s, ()))?;
        let (ptr, len) = tm_abi::unpack(packed as u64);
        if ptr == 0 && len == 0 {
            let why = self.guest_error();
            return Err(Self::abi(
                export::COLLECT,
                format!("returned no results: {why}"),
            ));
        }
        let bytes = self
            .memory
            .read(&self.store, ptr, len, MAX_GUEST_OUTPUT)
            .map_err(|e| Self::abi(export::COLLECT, e))?;
        let results =
            one_value(&bytes).map_err(|e| Self::abi(export::COLLECT, format!("results: {e}")))?;
        Ok((bytes, results))
    }

    /// The analyzer's state for a restart, as the guest encoded it (nil
    /// if it keeps none). The bytes are checked to be one value, not
    /// decoded: the snapshot carries them as they are.
    ///
    /// # Errors
    /// The guest trapped or gave something other than one value; the
    /// instance is dead afterwards.
    pub fn snapshot(&mut self) -> Result<Packed, Failure> {
        let Some(f) = self.snapshot.clone() else {
            return Ok(Packed::nil());
        };
        let packed = self.call(export::SNAPSHOT, |s| f.call(s, ()))?;
        if packed == 0 {
            return Ok(Packed::nil());
        }
        let (ptr, len) = tm_abi::unpack(packed as u64);
        let bytes = self
            .memory
            .read(&self.store, ptr, len, MAX_GUEST_OUTPUT)
            .map_err(|e| Self::abi(export::SNAPSHOT, e))?;
        Packed::from_bytes(bytes).map_err(|e| Self::abi(export::SNAPSHOT, format!("state: {e}")))
    }

    /// Gives back saved state, the bytes as [`Analyzer::snapshot`] took
    /// them from a guest.
    ///
    /// # Errors
    /// Refused state (instance still good) or a failure (instance dead).
    pub fn restore(&mut self, state: &Packed) -> Result<(), RestoreError> {
        if self.restore.is_none() {
            return Err(RestoreError::Refused(
                "the analyzer does not export tm_restore".into(),
            ));
        }
        match self
            .call_with_buffer(export::RESTORE, state.as_bytes())
            .map_err(RestoreError::Failed)?
        {
            Status::Ok => Ok(()),
            Status::StateVersion => Err(RestoreError::StateVersion(self.guest_error())),
            Status::BadParams | Status::Failed => Err(RestoreError::Refused(self.guest_error())),
        }
    }

    /// The most captured bytes per packet the guest reads: its
    /// `tm_snap_len` answer after `init`, or `usize::MAX`.
    #[must_use]
    pub fn snap_len(&self) -> usize {
        self.snap_len
    }

    /// Current size of the guest's linear memory.
    #[must_use]
    pub fn memory_bytes(&self) -> u64 {
        self.memory.size(&self.store) as u64
    }

    /// Alerts dropped by the rate limit.
    #[must_use]
    pub fn emits_dropped(&self) -> u64 {
        self.store.data().emits_dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ABI v1 analyzer with `extra` exports.
    fn module(sandbox: &Sandbox, extra: &str) -> Result<Module, String> {
        let wasm = wat::parse_str(format!(
            r#"(module
              (memory (export "memory") 4)
              (global $bump (mut i32) (i32.const 4096))
              (func (export "tm_abi_version") (result i32) (i32.const 1))
              (func (export "tm_alloc") (param $n i32) (result i32) (local $p i32)
                (local.set $p (global.get $bump))
                (global.set $bump (i32.add (global.get $bump) (local.get $n)))
                (local.get $p))
              (func (export "tm_init") (param i32 i32) (result i32) (i32.const 0))
              (func (export "tm_on_packets") (param i32 i32 i32) (result i32) (i32.const 0))
              (func (export "tm_tick") (param i64) (result i32) (i32.const 0))
              (func (export "tm_configure") (param i32 i32) (result i32) (i32.const 0))
              (func (export "tm_collect") (result i64) (i64.const 0))
              (func (export "tm_last_error") (result i64) (i64.const 0))
              {extra})"#
        ))
        .unwrap();
        sandbox
            .module(&wasm_host::sha256_hex(&wasm), &wasm)
            .map_err(|e| e.to_string())
    }

    fn load(extra: &str) -> Result<Analyzer, LoadError> {
        let sandbox = Sandbox::new(&wasm_host::SandboxConfig::default()).unwrap();
        let module = module(&sandbox, extra).unwrap();
        Analyzer::new(
            &sandbox,
            &module,
            &InstanceConfig {
                memory_bytes: 1 << 20,
                call_timeout: Duration::from_secs(1),
                batch_bytes: 4096,
                deployment: "t".into(),
            },
            &[0xc0],
            Box::new(|_| {}),
        )
    }

    #[test]
    fn the_snap_length_is_the_guests_answer_or_everything() {
        assert_eq!(load("").unwrap().snap_len(), usize::MAX);
        let declared = r#"(func (export "tm_snap_len") (result i32) (i32.const 96))"#;
        assert_eq!(load(declared).unwrap().snap_len(), 96);
        let zero = r#"(func (export "tm_snap_len") (result i32) (i32.const 0))"#;
        assert_eq!(load(zero).unwrap().snap_len(), 0);
        // Read as unsigned: -1 is "every byte".
        let all = r#"(func (export "tm_snap_len") (result i32) (i32.const -1))"#;
        assert_eq!(load(all).unwrap().snap_len(), u32::MAX as usize);

        let wrong = r#"(func (export "tm_snap_len") (param i32) (result i32) (i32.const 0))"#;
        let e = load(wrong).err().expect("refused");
        assert_eq!(e.code, ErrorCode::BadModule);
        assert!(e.message.contains("tm_snap_len"), "{}", e.message);
        let traps = r#"(func (export "tm_snap_len") (result i32) unreachable)"#;
        let e = load(traps).err().expect("refused");
        assert_eq!(e.code, ErrorCode::GuestTrap);
        assert!(e.message.contains("tm_snap_len"), "{}", e.message);
    }
}
