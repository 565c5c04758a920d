//! How a packet updates the analyzer's tables: the per-flow table (which
//! application each flow is, found by inspecting its first payload
//! packets; idle flows expired) and the HTTP host and TLS server name
//! tables.

use tm_sdk::{FlowKey as Key, Packet};

use crate::detect::{
    app, detect, http_host, http_request_method, http_response, tls_hello, tls_version_index, Hello,
};
use crate::{Flow, HostCount, ProtoId};

impl ProtoId {
    /// Counts what an HTTP or TLS payload says.
    pub(crate) fn inspect_app(&mut self, app_id: u8, payload: &[u8]) {
        match app_id {
            app::HTTP => {
                if let Some(m) = http_request_method(payload) {
                    self.c.http_requests += 1;
                    self.c.http_methods[m] += 1;
                    if let Some(host) = http_host(payload) {
                        let full = self.hosts.len() >= self.params.max_names as usize;
                        match self.hosts.get_mut(&host) {
                            Some(h) => {
                                h.requests += 1;
                                h.methods[m] += 1;
                            }
                            None if full => self.c.http_untracked += 1,
                            None => {
                                let mut h = HostCount {
                                    requests: 1,
                                    ..HostCount::default()
                                };
                                h.methods[m] = 1;
                                self.hosts.insert(host, h);
                            }
                        }
                    }
                } else if http_response(payload) {
                    self.c.http_responses += 1;
                }
            }
            app::TLS => match tls_hello(payload) {
                Some(Hello::Client(sni, version)) => {
                    self.c.tls_client_hellos += 1;
                    let sni = match sni {
                        Some(s) => s,
                        None => {
                            self.c.tls_no_sni += 1;
                            return;
                        }
                    };
                    let key = (sni, tls_version_index(version) as u8);
                    let full = self.snis.len() >= self.params.max_names as usize;
                    match self.snis.get_mut(&key) {
                        Some(n) => *n += 1,
                        None if full => self.c.tls_untracked += 1,
                        None => {
                            self.snis.insert(key, 1);
                        }
                    }
                }
                Some(Hello::Server(version)) => {
                    self.c.tls_server_hellos += 1;
                    self.c.tls_versions[tls_version_index(version)] += 1;
                }
                None => {}
            },
            _ => {}
        }
    }

    /// The application of a packet with payload (or an ICMP packet), from
    /// its flow; `None` if the flow was refused at `max_flows`.
    pub(crate) fn classify(&mut self, p: &Packet, key: Key, fixed: Option<u8>) -> Option<u8> {
        let h = &p.header;
        let payload = p.payload();
        let inspect = self.params.inspect_packets;
        let full = self.flows.len() >= self.params.max_flows as usize;
        let app_counts = &mut self.c.app;
        match self.flows.get_mut(&key) {
            Some(f) => {
                f.last_ns = f.last_ns.max(h.ts_ns);
                if f.app == app::UNKNOWN && u32::from(f.tries) < inspect && !payload.is_empty() {
                    f.tries += 1;
                    if let Some(a) = detect(h.ip_proto, h.src_port, h.dst_port, payload) {
                        f.app = a;
                        let unknown = &mut app_counts[app::UNKNOWN as usize].flows;
                        *unknown = unknown.saturating_sub(1);
                        app_counts[a as usize].flows += 1;
                    }
                }
                Some(f.app)
            }
            None if full => None,
            None => {
                let mut f = Flow {
                    app: app::UNKNOWN,
                    tries: 0,
                    last_ns: h.ts_ns,
                };
                match fixed {
                    Some(a) => f.app = a,
                    None if !payload.is_empty() => {
                        f.tries = 1;
                        if let Some(a) = detect(h.ip_proto, h.src_port, h.dst_port, payload) {
                            f.app = a;
                        }
                    }
                    None => {}
                }
                app_counts[f.app as usize].flows += 1;
                self.flows.insert(key, f);
                Some(f.app)
            }
        }
    }

    pub(crate) fn expire(&mut self) {
        if self.params.idle_timeout_s == 0 {
            return;
        }
        let limit = self.params.idle_timeout_s * 1_000_000_000;
        let now = self.c.latest_ns;
        let before = self.flows.len();
        self.flows
            .retain(|_, f| now.saturating_sub(f.last_ns) < limit);
        self.c.expired_flows += (before - self.flows.len()) as u64;
    }
}
