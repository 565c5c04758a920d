//! Analysis on the capture thread: a deployment alone on a link is analysed
//! by the link's own thread through the deployment's engine, and falls back
//! to its queue whenever someone else holds the analyzer; either way every
//! packet is analysed once and in capture order, and a guest failure met on
//! the capture thread fails the deployment as on its own thread. Packets
//! fed from memory through a real link and tap into a real instance.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_schema::{DeploymentState, Filter, LinkState, LoadRequest, ResultWindow, Value};
use flume::{Receiver, Sender};
use monitor::config::{LinkConfig, Replay};
use monitor::deployment::{self, DeploymentInfo, Shared, Timers};
use monitor::engine::Engine;
use monitor::filter::CompiledFilter;
use monitor::guest::{Analyzer, InstanceConfig};
use monitor::inbox::DepMsg;
use monitor::link::LinkHandle;
use monitor::source::MemorySource;
use monitor::tap::{Tap, guest_batch_bytes};
use wasm_host::Sandbox;

const START_NS: u64 = 1_764_000_000_000_000_000;
const BATCH: u32 = 64;

/// An analyzer that traps if a packet's time is earlier than the last
/// one's (a batch analysed out of order or twice), and whose tick holds the
/// analyzer for a while (≈ 10⁵ loop rounds).
const IN_ORDER: &str = r#"(module
  (memory (export "memory") 16)
  (global $bump (mut i32) (i32.const 4096))
  (global $last (mut i64) (i64.const 0))
  (data (i32.const 16) "\c0")
  (func (export "tm_abi_version") (result i32) (i32.const 1))
  (func (export "tm_alloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump) (local.get $n)))
    (local.get $p))
  (func (export "tm_init") (param i32 i32) (result i32) (i32.const 0))
  (func (export "tm_on_packets") (param $ptr i32) (param $len i32) (param $count i32) (result i32)
    (local $p i32) (local $end i32) (local $ts i64)
    (local.set $p (local.get $ptr))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
      (local.set $ts (i64.load offset=8 (local.get $p)))
      (if (i64.lt_u (local.get $ts) (global.get $last)) (then unreachable))
      (global.set $last (local.get $ts))
      (local.set $p (i32.add (local.get $p) (i32.load (local.get $p))))
      (br $next)))
    (i32.const 0))
  (func (export "tm_tick") (param i64) (result i32) (local $i i32)
    (loop $spin
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $spin (i32.lt_u (local.get $i) (i32.const 100000))))
    (i32.const 0))
  (func (export "tm_configure") (param i32 i32) (result i32) (i32.const 0))
  (func (export "tm_collect") (result i64) (i64.const 0x0000001000000001))
  (func (export "tm_last_error") (result i64) (i64.const 0)))"#;

fn instance(sandbox: &Sandbox, bytes: &[u8]) -> Analyzer {
    let sha256 = wasm_host::sha256_hex(bytes);
    let module = sandbox.module(&sha256, bytes).unwrap();
    Analyzer::new(
        sandbox,
        &module,
        &InstanceConfig {
            memory_bytes: 64 << 20,
            call_timeout: Duration::from_secs(2),
            batch_bytes: guest_batch_bytes(65535),
            deployment: "d".into(),
        },
        &[0xc0],
        Box::new(|_| {}),
    )
    .unwrap()
}

/// A deployment whose engine runs `module`, alone on a lossless link of
/// `packets` packets that analyses on its capture thread; the deployment
/// thread is not started. `hold` holds the analyzer from before the link
/// starts.
struct Rig {
    engine: Arc<Engine>,
    shared: Arc<Shared>,
    tx: Sender<DepMsg>,
    rx: Option<Receiver<DepMsg>>,
    link: LinkHandle,
    packets: u64,
}

impl Rig {
    fn start(module: &[u8], packets: usize, hold: bool) -> (Self, Option<OwnedHold>) {
        Self::start_from(module, packets, hold, true)
    }

    /// As [`Rig::start`], the link lossless or not (a live link is not).
    fn start_from(
        module: &[u8],
        packets: usize,
        hold: bool,
        lossless: bool,
    ) -> (Self, Option<OwnedHold>) {
        let sandbox = Sandbox::new(&wasm_host::SandboxConfig::default()).unwrap();
        let engine = Engine::new(instance(&sandbox, module));
        let guard = hold.then(|| OwnedHold::new(engine.clone()));
        let request = LoadRequest {
            deployment: "d".into(),
            analyzer: bus_schema::BlobRef {
                name: "m".into(),
                sha256: String::new(),
            },
            params: Value::Nil,
            filter: Filter::default(),
            links: vec![0],
            owner: "test".into(),
            report_every_ms: None,
        };
        let shared = Shared::new(
            DeploymentInfo {
                monitor: "m".into(),
                deployment: "d".into(),
                links: vec![0],
                link_stats: vec![],
                started_unix_ms: 0,
                run: "r".into(),
            },
            request,
            monitor::outbox::Outbox::new(64 << 20, 1 << 20, None),
        );
        let (tx, rx) = flume::bounded(8);
        let frames: Vec<Vec<u8>> = pcapgen::flows(packets, 50, START_NS)
            .into_iter()
            .map(|f| f.data)
            .collect();
        let source = MemorySource::frames(1, START_NS, frames);
        let source = if lossless { source } else { source.lossy() };
        let config = LinkConfig::replay(0, Default::default(), Replay::Lossless, "a", "b");
        let link = LinkHandle::start_with(config, Box::new(source)).unwrap();
        let tap = Tap::new(
            "d".into(),
            Arc::new(CompiledFilter::new(&Filter::default()).unwrap()),
            None,
            tx.clone(),
            shared.counters.clone(),
            BATCH,
            128,
        )
        .analysing_on_capture_thread(engine.clone());
        let mut tap = Some(tap);
        link.attach(|| tap.take().expect("one capture thread"));
        let rig = Rig {
            engine,
            shared,
            tx,
            rx: Some(rx),
            link,
            packets: packets as u64,
        };
        (rig, guard)
    }

    /// Starts the deployment thread (ticking every millisecond).
    fn run_deployment(&mut self) -> std::thread::JoinHandle<()> {
        let (engine, rx, shared) = (
            self.engine.clone(),
            self.rx.take().unwrap(),
            self.shared.clone(),
        );
        let timers = Timers {
            tick: Duration::from_millis(1),
            report: None,
            snapshot: Duration::from_secs(3600),
        };
        std::thread::spawn(move || deployment::run_engine(&engine, rx, shared, timers))
    }

    fn finished(&self) {
        assert_eq!(
            self.link.shared.wait_stopped(Duration::from_secs(120)),
            LinkState::Finished
        );
    }

    fn unload(&self) -> ResultWindow {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx.send(DepMsg::Unload(reply)).unwrap();
        answer.blocking_recv().unwrap()
    }
}

/// Holds a deployment's analyzer until dropped (the test thread standing in
/// for a deployment thread busy with a command).
struct OwnedHold {
    release: Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OwnedHold {
    fn new(engine: Arc<Engine>) -> Self {
        let (release, wait) = flume::bounded::<()>(1);
        let (held, is_held) = flume::bounded::<()>(1);
        let thread = std::thread::spawn(move || {
            let _slot = engine.lock();
            held.send(()).unwrap();
            let _ = wait.recv();
        });
        is_held.recv().unwrap();
        OwnedHold {
            release,
            thread: Some(thread),
        }
    }
}

impl Drop for OwnedHold {
    fn drop(&mut self) {
        let _ = self.release.send(());
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// With nobody else holding the analyzer, the capture thread analyses
/// every batch itself: the whole replay is analysed before the deployment
/// thread even starts, and nothing went through its queue.
#[test]
fn alone_on_its_link_a_deployment_is_analysed_by_the_capture_thread() {
    let module = wat::parse_str(IN_ORDER).unwrap();
    let (mut rig, _) = Rig::start(&module, 20_000, false);
    rig.finished();
    let counters = &rig.shared.counters;
    assert_eq!(
        counters
            .packets_in
            .load(std::sync::atomic::Ordering::Relaxed),
        rig.packets
    );
    assert!(rig.rx.as_ref().unwrap().is_empty(), "a batch was queued");
    let thread = rig.run_deployment();
    let window = rig.unload();
    thread.join().unwrap();
    assert_eq!(window.stats.packets_in, rig.packets);
    assert_eq!(window.stats.dropped, 0);
    assert_eq!(rig.shared.state().0, DeploymentState::Running);
}

/// While the analyzer is held (a command, a tick), the capture thread
/// queues its batches instead; once they are drained it analyses the rest
/// itself. The guest traps on any packet out of order, and the deployment
/// thread, ticking every millisecond with a tick that takes a while, keeps
/// taking the analyzer back: every packet is still analysed once, in order.
#[test]
fn batches_queued_while_the_analyzer_is_held_keep_their_order() {
    let module = wat::parse_str(IN_ORDER).unwrap();
    let (mut rig, hold) = Rig::start(&module, 50_000, true);
    // The queue fills (a lossless link then waits for room); nothing is
    // analysed meanwhile.
    let rx = rig.rx.as_ref().unwrap().clone();
    wait_for("the queue to fill", || rx.is_full());
    drop(rx);
    assert_eq!(
        rig.shared
            .counters
            .packets_in
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    drop(hold);
    let thread = rig.run_deployment();
    rig.finished();
    let window = rig.unload();
    thread.join().unwrap();
    let (state, error) = rig.shared.state();
    assert_eq!(state, DeploymentState::Running, "{error:?}");
    assert_eq!(window.stats.packets_in, rig.packets);
    assert_eq!(window.stats.dropped, 0);
    assert!(window.last);
}

/// On a link that drops rather than waits (a live one), batches met with
/// the analyzer held stay with the capture thread, not in the queue, up to
/// the queue's budget (the rest dropped and counted), and are analysed
/// there, in order, once it is free; the link's end waits for them.
#[test]
fn a_live_link_holds_its_batches_back_while_the_analyzer_is_busy() {
    let module = wat::parse_str(IN_ORDER).unwrap();
    let (mut rig, hold) = Rig::start_from(&module, 20_000, true, false);
    let counters = rig.shared.counters.clone();
    let packets_in = || {
        counters
            .packets_in
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let dropped = || counters.dropped.load(std::sync::atomic::Ordering::Relaxed);
    // Every packet offered: 8 batches of 64 (the budget) held back, the
    // rest dropped; the link's end waits for the held ones.
    wait_for("the budget spent", || dropped() == rig.packets - 8 * 64);
    assert_eq!(
        rig.link.shared.wait_stopped(Duration::from_millis(200)),
        LinkState::Running
    );
    assert!(rig.rx.as_ref().unwrap().is_empty(), "a batch was queued");
    assert_eq!(packets_in(), 0);
    drop(hold);
    rig.finished();
    assert_eq!(packets_in(), 8 * 64);
    assert!(rig.rx.as_ref().unwrap().is_empty(), "a batch was queued");
    let thread = rig.run_deployment();
    let window = rig.unload();
    thread.join().unwrap();
    let (state, error) = rig.shared.state();
    assert_eq!(state, DeploymentState::Running, "{error:?}");
    assert_eq!(window.stats.packets_in + window.stats.dropped, rig.packets);
}

/// A guest that traps on the capture thread: the instance is closed, the
/// deployment thread is woken and fails the deployment with the guest's
/// error, commands get the last good results, and the link replays on.
#[test]
fn a_guest_failure_on_the_capture_thread_fails_the_deployment() {
    let module = common::wat_analyzer(1, "unreachable");
    let (mut rig, _) = Rig::start(&module, 5_000, false);
    rig.finished();
    // Met on the capture thread: only the wake-up is queued.
    let rx = rig.rx.as_ref().unwrap();
    assert_eq!(rx.len(), 1);
    assert_eq!(rig.shared.state().0, DeploymentState::Running);
    let (reply, collected) = tokio::sync::oneshot::channel();
    rig.tx.send(DepMsg::Collect(reply)).unwrap();
    let thread = rig.run_deployment();
    let window = collected.blocking_recv().unwrap().unwrap();
    assert_eq!(window.results, Value::Nil);
    assert_eq!(window.stats.packets_in, 0);
    let (state, error) = rig.shared.state();
    assert_eq!(state, DeploymentState::Failed);
    let error = error.unwrap();
    assert!(error.contains("tm_on_packets trapped"), "{error}");
    thread.join().unwrap();
    assert_eq!(rig.link.shared.status().packets, rig.packets);
}
