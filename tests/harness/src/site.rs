//! A remote site joined the way NATS joins sites: a leaf-node
//! `nats-server` (without JetStream of its own: its clients' JetStream
//! requests cross the leaf link to the hub's) connected to a hub server
//! through a TCP link the test can cut and restore, as a WAN link fails.
//!
//! [`Site::start`] gives the hub (JetStream, a leafnode port), the link and
//! the leaf; monitors of the remote site connect to [`Site::leaf`]'s URL,
//! everything else to the hub's. [`ClusterSite::start`] does the same with
//! a 3-node cluster as the hub. [`LeafLink::cut`] closes the link's
//! connections and refuses new ones until [`LeafLink::restore`]; the leaf
//! reconnects by itself a second later.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::{HarnessError, NatsServer, NodeSpec, STARTUP_TIMEOUT, free_port};

/// A TCP forwarder from a loopback port to the hub's leafnode port, run on
/// its own thread (it keeps forwarding while the test thread blocks).
pub struct LeafLink {
    port: u16,
    cut: Arc<AtomicBool>,
    /// Bumped at every cut: forwarding tasks of older generations close.
    generation: watch::Sender<u64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LeafLink {
    /// Forwards `127.0.0.1:<port>` to `127.0.0.1:<target>`.
    ///
    /// # Errors
    /// No loopback port could be bound.
    pub fn start(target: u16) -> Result<LeafLink, HarnessError> {
        Self::start_to(vec![target])
    }

    /// Forwards `127.0.0.1:<port>` to the first of `targets` (loopback
    /// ports, tried in order at each new connection) that accepts: a link
    /// to a cluster's leafnode ports, which survives one node's death.
    ///
    /// # Errors
    /// No loopback port could be bound.
    pub fn start_to(targets: Vec<u16>) -> Result<LeafLink, HarnessError> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let port = std_listener.local_addr()?.port();
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, generations) = watch::channel(0u64);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let cut_flag = cut.clone();
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(listener) = TcpListener::from_std(std_listener) else {
                    return;
                };
                let targets: Arc<Vec<SocketAddr>> = Arc::new(
                    targets
                        .into_iter()
                        .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
                        .collect(),
                );
                let accept = async {
                    loop {
                        let Ok((inbound, _)) = listener.accept().await else {
                            continue;
                        };
                        if cut_flag.load(Ordering::SeqCst) {
                            drop(inbound);
                            continue;
                        }
                        let mut generations = generations.clone();
                        let born = *generations.borrow_and_update();
                        let targets = targets.clone();
                        tokio::spawn(async move {
                            let mut outbound = None;
                            for to in targets.iter() {
                                if let Ok(s) = TcpStream::connect(to).await {
                                    outbound = Some(s);
                                    break;
                                }
                            }
                            let Some(outbound) = outbound else {
                                return;
                            };
                            // As nats-server's own connections: no Nagle
                            // delay on small messages (replies would wait
                            // for the peer's delayed ACK, 40 ms).
                            let _ = inbound.set_nodelay(true);
                            let _ = outbound.set_nodelay(true);
                            let (mut a, mut b) = (inbound, outbound);
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                                _ = async {
                                    while generations.changed().await.is_ok() {
                                        if *generations.borrow() != born {
                                            return;
                                        }
                                    }
                                } => {}
                            }
                        });
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stopped => {}
                }
            });
        });
        Ok(LeafLink {
            port,
            cut,
            generation,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The loopback port the leaf connects to.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes every connection over the link and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Lets connections over the link again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for LeafLink {
    fn drop(&mut self) {
        self.cut();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The hub's JetStream domain: what the remote site's clients name
/// (`jetstream_domain` in a monitor's config).
pub const DOMAIN: &str = "hub";

/// A hub with JetStream, a leaf node of a remote site, and the link
/// between them.
pub struct Site {
    /// The hub: JetStream, the streams and buckets; where managers connect.
    pub hub: NatsServer,
    /// The link the leaf reaches the hub over.
    pub link: LeafLink,
    /// The remote site's server: its monitors connect here.
    pub leaf: NatsServer,
}

impl Site {
    /// Starts the hub, the link and the leaf; returns once JetStream
    /// answers through the leaf.
    ///
    /// # Errors
    /// A server did not start or JetStream does not answer through the
    /// leaf in time.
    pub async fn start() -> Result<Site, HarnessError> {
        let leaf_port = free_port()?;
        // `no_advertise`: the hub would otherwise tell the leaf its own
        // leafnode URL, and the leaf, reconnecting after a cut, could pick
        // it and go around the link.
        let hub = NatsServer::start_with_conf(&format!(
            "jetstream {{ domain: {DOMAIN} }}\nleafnodes {{ listen: \"127.0.0.1:{leaf_port}\", no_advertise: true }}\n"
        ))
        .await?;
        let link = LeafLink::start(leaf_port)?;
        let leaf = start_leaf(&link).await?;
        Ok(Site { hub, link, leaf })
    }

    /// Waits until JetStream answers through the leaf again (after a
    /// [`LeafLink::restore`]), at most `within`.
    ///
    /// # Errors
    /// It did not in time.
    pub async fn wait_joined(&mut self, within: Duration) -> Result<(), HarnessError> {
        self.leaf.wait_ready(within).await
    }
}

/// A 3-node cluster as the hub (JetStream domain [`DOMAIN`], a leafnode
/// port on every node), a remote site's leaf server, and the link between
/// them (to the first node that accepts, so it survives a node's death).
pub struct ClusterSite {
    /// The hub's nodes; managers and the hub's monitors connect here.
    pub cluster: crate::NatsCluster,
    /// The link the leaf reaches the hub over.
    pub link: LeafLink,
    /// The remote site's server.
    pub leaf: NatsServer,
}

impl ClusterSite {
    /// Starts the cluster, the link and the leaf; returns once JetStream
    /// answers through the leaf.
    ///
    /// # Errors
    /// A server did not start or JetStream does not answer through the
    /// leaf in time.
    pub async fn start() -> Result<ClusterSite, HarnessError> {
        let cluster = crate::NatsCluster::start_hub().await?;
        let link = LeafLink::start_to(cluster.leafnode_ports.clone())?;
        let leaf = start_leaf(&link).await?;
        Ok(ClusterSite {
            cluster,
            link,
            leaf,
        })
    }

    /// Waits until JetStream answers through the leaf again, at most
    /// `within`.
    ///
    /// # Errors
    /// It did not in time.
    pub async fn wait_joined(&mut self, within: Duration) -> Result<(), HarnessError> {
        self.leaf.wait_ready(within).await
    }
}

/// A leaf server without JetStream whose remote is `link`; ready once
/// JetStream answers through it.
async fn start_leaf(link: &LeafLink) -> Result<NatsServer, HarnessError> {
    let spec = NodeSpec {
        name: "tm-leaf".into(),
        client_port: None,
        cluster: None,
        auth: None,
        extra_conf: Some(format!(
            "leafnodes {{\n  reconnect: 1\n  remotes = [ {{ url: \"nats-leaf://127.0.0.1:{}\" }} ]\n}}\n",
            link.port()
        )),
        jetstream: false,
        js_domain: Some(DOMAIN.into()),
    };
    let mut leaf = NatsServer::spawn(spec).await?;
    leaf.wait_ready(STARTUP_TIMEOUT).await?;
    Ok(leaf)
}
