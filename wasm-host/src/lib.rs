//! wasmtime host code shared by `tm-monitor` (analyzers) and `tm-manager`
//! (management apps).
//!
//! * [`Sandbox`]: the engine, configured for untrusted guests, with an epoch
//!   ticker thread and a compiled-module cache keyed by SHA-256 (in memory,
//!   and optionally on disk so a restart does not compile again).
//! * [`Limits`]: per-store memory cap.
//! * [`GuestMemory`]: bounds-checked reads and writes of guest memory.
//! * [`Failure`]: what a failed guest call was (trap, timeout, memory limit).
//! * [`trust`]: signed blobs — the digest and ed25519 signature checks run
//!   before a blob is compiled, and the signing `tmctl` does.
//! * [`blob`]: a module (analyzer or app) fetched from the object store
//!   and verified before it is compiled.
//! * [`metrics`]: the Prometheus endpoint both hosts serve.

pub mod blob;
pub mod metrics;
pub mod trust;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, Memory, Module, ResourceLimiter, Store, Trap};

/// Settings of a [`Sandbox`].
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// How often the epoch advances; the granularity of call deadlines.
    pub epoch_tick: Duration,
    /// A directory for compiled modules (`<sha256>.cwasm`), so a module is
    /// compiled once per machine rather than once per process. What is in
    /// it runs as native code: it must be writable by this process's user
    /// only (it is created mode 0700). `None`: compile in every process.
    pub compiled_dir: Option<PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            epoch_tick: Duration::from_millis(10),
            compiled_dir: None,
        }
    }
}

impl SandboxConfig {
    /// Settings for guest calls with deadlines of `call_timeout`: the epoch
    /// advances every twentieth of it (1 to 50 ms), so a deadline passes
    /// within 5 % of the timeout (within a millisecond below 20 ms), while
    /// an idle engine wakes 20 times a second at the default timeout of
    /// 1 s, not 100.
    #[must_use]
    pub fn for_call_timeout(call_timeout: Duration) -> Self {
        SandboxConfig {
            epoch_tick: (call_timeout / 20)
                .clamp(Duration::from_millis(1), Duration::from_millis(50)),
            ..SandboxConfig::default()
        }
    }
}

/// Lower-case hex SHA-256 of `bytes`.
#[must_use]
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One digest's compilation, done once; a failure keeps its message.
type Compilation = Arc<OnceLock<Result<Module, String>>>;

/// A wasmtime engine for untrusted guests, its epoch ticker and a cache of
/// compiled modules. Cheap to clone.
#[derive(Clone)]
pub struct Sandbox {
    engine: Engine,
    epoch_tick: Duration,
    /// Per digest, the compilation: one at a time per digest, so many
    /// deployments loading the same module at once compile it once.
    cache: Arc<Mutex<HashMap<String, Compilation>>>,
    compiled_dir: Option<PathBuf>,
    /// Modules compiled / loaded from `compiled_dir`.
    compiled: Arc<AtomicU64>,
    loaded: Arc<AtomicU64>,
    _ticker: Arc<Ticker>,
}

struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A module could not be compiled.
#[derive(Debug, thiserror::Error)]
#[error("not a valid WebAssembly module: {0:#}")]
pub struct CompileError(pub wasmtime::Error);

impl Sandbox {
    /// Builds the engine and starts the epoch ticker.
    ///
    /// # Errors
    /// If wasmtime refuses the configuration.
    pub fn new(config: &SandboxConfig) -> anyhow::Result<Self> {
        let mut c = Config::new();
        // Deadlines on every guest call: a cheap check at loop heads and
        // function entries (about 6% measured on a guest's hot loop), unlike fuel.
        c.epoch_interruption(true);
        // Guests are untrusted: no relaxed-SIMD nondeterminism.
        c.wasm_relaxed_simd(false);
        // Keep virtual memory reservations modest: many deployments may run.
        c.memory_reservation(1 << 32);
        // `TM_WASM_PERFMAP=1`: name guest functions in /tmp/perf-PID.map so
        // `perf report` can attribute time inside guests.
        if std::env::var_os("TM_WASM_PERFMAP").is_some() {
            c.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&c)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let engine = engine.clone();
            let stop = stop.clone();
            let tick = config.epoch_tick;
            std::thread::Builder::new()
                .name("wasm-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })?
        };
        if let Some(dir) = &config.compiled_dir {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| anyhow::anyhow!("compiled_dir {}: {e}", dir.display()))?;
        }
        Ok(Sandbox {
            engine,
            epoch_tick: config.epoch_tick,
            cache: Arc::default(),
            compiled_dir: config.compiled_dir.clone(),
            compiled: Arc::default(),
            loaded: Arc::default(),
            _ticker: Arc::new(Ticker {
                stop,
                thread: Some(thread),
            }),
        })
    }

    /// The engine.
    #[must_use]
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Epoch ticks that make up `timeout`, rounded up (at least one): a
    /// deadline set now passes within one tick of `timeout`.
    #[must_use]
    pub fn ticks(&self, timeout: Duration) -> u64 {
        timeout
            .as_micros()
            .div_ceil(self.epoch_tick.as_micros().max(1))
            .max(1) as u64
    }

    /// The compiled module for `bytes`, whose digest the caller has verified
    /// to be `sha256`; compiled once per digest.
    ///
    /// # Errors
    /// If `bytes` is not a valid module.
    pub fn module(&self, sha256: &str, bytes: &[u8]) -> Result<Module, CompileError> {
        // Binary modules only: the text format's parser quotes the text
        // it fails on, and a module's bytes are never to be echoed.
        if !bytes.starts_with(b"\0asm") {
            return Err(CompileError(wasmtime::Error::msg(format!(
                "not a WebAssembly binary module ({} bytes, without the \\0asm header)",
                bytes.len()
            ))));
        }
        let cell = self
            .cache
            .lock()
            .expect("module cache")
            .entry(sha256.to_owned())
            .or_default()
            .clone();
        // Others asking for this digest meanwhile wait for this compilation.
        cell.get_or_init(|| self.compile(sha256, bytes).map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(|e| CompileError(wasmtime::Error::msg(e)))
    }

    /// Compiles `bytes`, or loads what an earlier compilation of the same
    /// digest left in `compiled_dir` (if this wasmtime and configuration
    /// made it; wasmtime checks both and refuses anything else).
    fn compile(&self, sha256: &str, bytes: &[u8]) -> wasmtime::Result<Module> {
        let file = self.compiled_dir.as_deref().and_then(|dir| {
            let digest = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit());
            digest.then(|| dir.join(format!("{sha256}.cwasm")))
        });
        // Read, not mapped: a file changed under a mapping would fault.
        if let Some(compiled) = file.as_deref().and_then(|f| std::fs::read(f).ok()) {
            // SAFETY: the directory holds only what this host's own
            // `serialize` wrote (it is the host's, mode 0700), and wasmtime
            // refuses artifacts of another version or configuration.
            match unsafe { Module::deserialize(&self.engine, &compiled) } {
                Ok(m) => {
                    self.loaded.fetch_add(1, Ordering::Relaxed);
                    return Ok(m);
                }
                Err(e) => {
                    tracing::info!(sha256, error = %e, "compiled module not usable; compiling again");
                }
            }
        }
        let module = Module::new(&self.engine, bytes)?;
        self.compiled.fetch_add(1, Ordering::Relaxed);
        if let Some(file) = &file
            && let Err(e) = module
                .serialize()
                .map_err(anyhow::Error::from)
                .and_then(|b| write_new(file, &b).map_err(anyhow::Error::from))
        {
            tracing::warn!(file = %file.display(), error = %e, "compiled module not kept");
        }
        Ok(module)
    }

    /// Modules compiled by this sandbox, and modules loaded compiled from
    /// `compiled_dir`.
    #[must_use]
    pub fn compilations(&self) -> (u64, u64) {
        (
            self.compiled.load(Ordering::Relaxed),
            self.loaded.load(Ordering::Relaxed),
        )
    }

    /// How many distinct modules are compiled and cached.
    #[must_use]
    pub fn cached_modules(&self) -> usize {
        self.cache
            .lock()
            .expect("module cache")
            .values()
            .filter(|c| c.get().is_some_and(Result::is_ok))
            .count()
    }
}

/// Writes `file` whole or not at all: a temporary beside it, then a rename.
fn write_new(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)
}

/// Per-store resource limits: a cap on linear memory, one memory, few tables.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest linear memory a guest may grow to, in bytes.
    pub memory_bytes: usize,
    /// Set when a growth was refused, so a later trap can be blamed on it.
    pub memory_refused: bool,
}

impl Limits {
    /// A cap of `memory_bytes`.
    #[must_use]
    pub fn new(memory_bytes: usize) -> Self {
        Limits {
            memory_bytes,
            memory_refused: false,
        }
    }
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.memory_refused = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        4
    }

    fn memories(&self) -> usize {
        1
    }
}

/// Why a guest call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The call ran past its epoch deadline.
    #[error("{call} ran longer than {limit_ms} ms and was interrupted")]
    Timeout {
        /// Export called.
        call: String,
        /// The deadline.
        limit_ms: u64,
    },
    /// The guest needed more memory than its cap.
    #[error("{call} hit the memory limit of {limit_bytes} bytes: {detail}")]
    Memory {
        /// Export called.
        call: String,
        /// The cap.
        limit_bytes: usize,
        /// The trap it ended in.
        detail: String,
    },
    /// The guest trapped (out-of-bounds access, unreachable, …).
    #[error("{call} trapped: {detail}")]
    Trap {
        /// Export called.
        call: String,
        /// The trap.
        detail: String,
    },
    /// The guest broke the ABI (bad pointer, malformed output).
    #[error("{call} broke the ABI: {detail}")]
    Abi {
        /// Export called.
        call: String,
        /// What was wrong.
        detail: String,
    },
}

impl Failure {
    /// True for the failures that are limit hits (time or memory).
    #[must_use]
    pub fn is_limit(&self) -> bool {
        matches!(self, Failure::Timeout { .. } | Failure::Memory { .. })
    }

    /// Classifies the error of a call to `call` on `store`.
    pub fn classify<T: AsRef<Limits>>(
        store: &Store<T>,
        call: &str,
        limit_ms: u64,
        err: &wasmtime::Error,
    ) -> Failure {
        let detail = format!("{err:#}");
        match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => Failure::Timeout {
                call: call.into(),
                limit_ms,
            },
            _ if store.data().as_ref().memory_refused => Failure::Memory {
                call: call.into(),
                limit_bytes: store.data().as_ref().memory_bytes,
                detail,
            },
            _ => Failure::Trap {
                call: call.into(),
                detail,
            },
        }
    }
}

/// Bounds-checked access to a guest's linear memory.
#[derive(Debug, Clone, Copy)]
pub struct GuestMemory(pub Memory);

impl GuestMemory {
    /// Copies `len` bytes at `ptr` out of the guest, refusing ranges outside
    /// its memory or longer than `max`.
    ///
    /// # Errors
    /// A message naming the range.
    pub fn read<T>(
        &self,
        store: &Store<T>,
        ptr: u32,
        len: u32,
        max: usize,
    ) -> Result<Vec<u8>, String> {
        Self::slice(self.0.data(store), ptr, len, max).map(<[u8]>::to_vec)
    }

    /// Borrows `len` bytes at `ptr` in a caller's view of memory.
    ///
    /// # Errors
    /// A message naming the range.
    pub fn slice(data: &[u8], ptr: u32, len: u32, max: usize) -> Result<&[u8], String> {
        if len as usize > max {
            return Err(format!("length {len} exceeds the limit of {max} bytes"));
        }
        let (start, end) = (ptr as usize, ptr as usize + len as usize);
        data.get(start..end).ok_or_else(|| {
            format!(
                "range {start}..{end} is outside guest memory of {} bytes",
                data.len()
            )
        })
    }

    /// Writes `bytes` at `ptr`.
    ///
    /// # Errors
    /// A message naming the range.
    pub fn write<T>(&self, store: &mut Store<T>, ptr: u32, bytes: &[u8]) -> Result<(), String> {
        self.0
            .write(store, ptr as usize, bytes)
            .map_err(|_| format!("range {ptr}+{} is outside guest memory", bytes.len()))
    }

    /// Current size in bytes.
    #[must_use]
    pub fn size<T>(&self, store: &Store<T>) -> usize {
        self.0.data_size(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{Instance, Store};

    struct State(Limits);
    impl AsRef<Limits> for State {
        fn as_ref(&self) -> &Limits {
            &self.0
        }
    }

    fn instance(sandbox: &Sandbox, wat: &str, memory: usize) -> (Store<State>, Instance) {
        let bytes = wat::parse_str(wat).unwrap();
        let module = sandbox.module(&sha256_hex(&bytes), &bytes).unwrap();
        let mut store = Store::new(sandbox.engine(), State(Limits::new(memory)));
        store.limiter(|s| &mut s.0);
        store.set_epoch_deadline(sandbox.ticks(Duration::from_millis(200)));
        let inst = Instance::new(&mut store, &module, &[]).unwrap();
        (store, inst)
    }

    #[test]
    fn compiled_modules_are_kept_on_disk_and_loaded_by_the_next_sandbox() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("compiled");
        let config = SandboxConfig {
            compiled_dir: Some(dir.clone()),
            ..SandboxConfig::default()
        };
        let wat = r#"(module (func (export "seven") (result i32) (i32.const 7)))"#;
        let digest = sha256_hex(&wat::parse_str(wat).unwrap());
        let file = dir.join(format!("{digest}.cwasm"));
        let seven = |sandbox: &Sandbox| {
            let (mut store, inst) = instance(sandbox, wat, 1 << 20);
            let f = inst.get_typed_func::<(), i32>(&mut store, "seven").unwrap();
            f.call(&mut store, ()).unwrap()
        };

        let first = Sandbox::new(&config).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(seven(&first), 7);
        assert_eq!(first.compilations(), (1, 0));
        assert!(file.exists());

        // A new process (here: a new sandbox) loads it instead of compiling.
        let second = Sandbox::new(&config).unwrap();
        assert_eq!(seven(&second), 7);
        assert_eq!(second.compilations(), (0, 1));

        // A damaged file is not used: the module is compiled and kept again.
        std::fs::write(&file, b"not a compiled module").unwrap();
        let third = Sandbox::new(&config).unwrap();
        assert_eq!(seven(&third), 7);
        assert_eq!(third.compilations(), (1, 0));
        assert_eq!(
            Sandbox::new(&config)
                .map(|s| (seven(&s), s.compilations()))
                .unwrap(),
            (7, (0, 1))
        );

        // Without a directory nothing is written.
        let plain = Sandbox::new(&SandboxConfig::default()).unwrap();
        assert_eq!(seven(&plain), 7);
        assert_eq!(plain.compilations(), (1, 0));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn only_binary_modules_compile_and_their_bytes_are_not_echoed() {
        let sandbox = Sandbox::new(&SandboxConfig::default()).unwrap();
        let text = b"root:$y$secret-hash:19000:0:99999:7:::\n";
        let e = sandbox
            .module(&sha256_hex(text), text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a WebAssembly binary module"), "{e}");
        assert!(!e.contains("secret"), "{e}");
        let wat = b"(module)";
        assert!(sandbox.module(&sha256_hex(wat), wat).is_err());
    }

    #[test]
    fn an_endless_loop_is_interrupted_at_its_deadline() {
        let sandbox = Sandbox::new(&SandboxConfig::default()).unwrap();
        let (mut store, inst) = instance(
            &sandbox,
            r#"(module (func (export "spin") (loop (br 0))))"#,
            1 << 20,
        );
        let f = inst.get_typed_func::<(), ()>(&mut store, "spin").unwrap();
        let started = std::time::Instant::now();
        let err = f.call(&mut store, ()).unwrap_err();
        assert_eq!(
            Failure::classify(&store, "spin", 200, &err),
            Failure::Timeout {
                call: "spin".into(),
                limit_ms: 200
            }
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// The epoch ticks a twentieth of the call timeout (1 to 50 ms), and
    /// a deadline is not early by more than a tick: a spin given 200 ms
    /// runs at least 95 % of it.
    #[test]
    fn the_epoch_follows_the_call_timeout() {
        let tick = |ms| SandboxConfig::for_call_timeout(Duration::from_millis(ms)).epoch_tick;
        assert_eq!(tick(1000), Duration::from_millis(50));
        assert_eq!(tick(200), Duration::from_millis(10));
        assert_eq!(tick(5), Duration::from_millis(1));
        assert_eq!(tick(600_000), Duration::from_millis(50));
        // Rounded up: within one tick of the timeout either side.
        let coarse =
            Sandbox::new(&SandboxConfig::for_call_timeout(Duration::from_secs(2))).unwrap();
        assert_eq!(coarse.ticks(Duration::from_millis(1049)), 21);
        assert_eq!(coarse.ticks(Duration::from_millis(1000)), 20);
        assert_eq!(coarse.ticks(Duration::from_micros(10)), 1);
        let timeout = Duration::from_millis(200);
        let sandbox = Sandbox::new(&SandboxConfig::for_call_timeout(timeout)).unwrap();
        assert_eq!(sandbox.ticks(timeout), 20);
        let (mut store, inst) = instance(
            &sandbox,
            r#"(module (func (export "spin") (loop (br 0))))"#,
            1 << 20,
        );
        let f = inst.get_typed_func::<(), ()>(&mut store, "spin").unwrap();
        store.set_epoch_deadline(sandbox.ticks(timeout));
        let started = std::time::Instant::now();
        let err = f.call(&mut store, ()).unwrap_err();
        assert!(matches!(
            Failure::classify(&store, "spin", 200, &err),
            Failure::Timeout { .. }
        ));
        let took = started.elapsed();
        assert!(took >= timeout * 19 / 20, "interrupted after {took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn memory_growth_past_the_cap_is_refused_and_blamed() {
        let sandbox = Sandbox::new(&SandboxConfig::default()).unwrap();
        let wat = r#"(module (memory 1)
            (func (export "grow") (result i32) (memory.grow (i32.const 100)))
            (func (export "grow_or_die") (if (i32.lt_s (memory.grow (i32.const 100)) (i32.const 0)) (then unreachable))))"#;
        let (mut store, inst) = instance(&sandbox, wat, 4 << 16);
        let grow = inst.get_typed_func::<(), i32>(&mut store, "grow").unwrap();
        assert_eq!(grow.call(&mut store, ()).unwrap(), -1);
        let die = inst
            .get_typed_func::<(), ()>(&mut store, "grow_or_die")
            .unwrap();
        let err = die.call(&mut store, ()).unwrap_err();
        assert!(matches!(
            Failure::classify(&store, "grow_or_die", 200, &err),
            Failure::Memory { .. }
        ));
    }

    #[test]
    fn modules_are_compiled_once_per_digest_and_garbage_is_refused() {
        let sandbox = Sandbox::new(&SandboxConfig::default()).unwrap();
        let bytes = wat::parse_str("(module)").unwrap();
        let digest = sha256_hex(&bytes);
        sandbox.module(&digest, &bytes).unwrap();
        sandbox.module(&digest, &bytes).unwrap();
        assert_eq!(sandbox.cached_modules(), 1);
        let err = sandbox.module("other", b"\0asm garbage").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("not a valid WebAssembly module"),
            "{err}"
        );
    }

    #[test]
    fn guest_memory_reads_are_bounds_checked() {
        let sandbox = Sandbox::new(&SandboxConfig::default()).unwrap();
        let (mut store, inst) = instance(
            &sandbox,
            r#"(module (memory (export "memory") 1))"#,
            1 << 20,
        );
        let mem = GuestMemory(inst.get_memory(&mut store, "memory").unwrap());
        mem.write(&mut store, 10, b"abc").unwrap();
        assert_eq!(mem.read(&store, 10, 3, 16).unwrap(), b"abc");
        assert!(mem.read(&store, 65534, 3, 16).is_err());
        assert!(mem.read(&store, u32::MAX, 3, 16).is_err());
        assert!(mem.read(&store, 0, 17, 16).is_err());
        assert!(mem.write(&mut store, 65535, b"ab").is_err());
    }
}
