//! A deployment's packet filter is defined twice: `tm_app_api::Filter`, what
//! a management app sends with `deploy` (the app API builds with Rust 1.63
//! and cannot use bus-schema), and `bus_schema::Filter`, what the manager
//! puts in the load request to the monitors. The manager copies one into the
//! other field by field; these tests hold the two to one wire format:
//! MessagePack with field names, as the app SDK encodes its requests
//! (`rmp_serde::to_vec_named`) and as the bus does (`bus_schema::encode`).

use std::collections::BTreeMap;

use bus_schema::{Filter as BusFilter, PortRange as BusPorts};
use serde::Serialize;
use tm_app_api::{Filter as AppFilter, PortRange as AppPorts};

/// One filter shape, written once and built as both types.
#[derive(Clone, Default)]
struct Shape {
    src: &'static [&'static str],
    dst: &'static [&'static str],
    src_ports: &'static [(u16, u16)],
    dst_ports: &'static [(u16, u16)],
    protocols: &'static [u8],
    bpf: Option<&'static str>,
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

impl Shape {
    fn app(&self) -> AppFilter {
        let ports = |v: &[(u16, u16)]| v.iter().map(|&(from, to)| AppPorts { from, to }).collect();
        AppFilter {
            src: strings(self.src),
            dst: strings(self.dst),
            src_ports: ports(self.src_ports),
            dst_ports: ports(self.dst_ports),
            protocols: self.protocols.to_vec(),
            bpf: self.bpf.map(str::to_owned),
        }
    }

    fn bus(&self) -> BusFilter {
        let ports = |v: &[(u16, u16)]| v.iter().map(|&(from, to)| BusPorts { from, to }).collect();
        BusFilter {
            src: strings(self.src),
            dst: strings(self.dst),
            src_ports: ports(self.src_ports),
            dst_ports: ports(self.dst_ports),
            protocols: self.protocols.to_vec(),
            bpf: self.bpf.map(str::to_owned),
        }
    }
}

/// Empty, each field alone, and everything at once.
fn shapes() -> Vec<(&'static str, Shape)> {
    vec![
        ("empty", Shape::default()),
        (
            "one source CIDR",
            Shape {
                src: &["10.0.0.0/8"],
                ..Shape::default()
            },
        ),
        (
            "several source CIDRs, v4 and v6",
            Shape {
                src: &["10.1.0.0/16", "192.168.7.1/32", "2001:db8::/32", "::/0"],
                ..Shape::default()
            },
        ),
        (
            "destination CIDRs",
            Shape {
                dst: &["172.16.0.0/12", "fe80::/10"],
                ..Shape::default()
            },
        ),
        (
            "one source port",
            Shape {
                src_ports: &[(53, 53)],
                ..Shape::default()
            },
        ),
        (
            "several source port ranges",
            Shape {
                src_ports: &[(0, 0), (1024, 65535), (80, 80)],
                ..Shape::default()
            },
        ),
        (
            "destination port ranges",
            Shape {
                dst_ports: &[(443, 443), (8000, 8999), (65535, 65535)],
                ..Shape::default()
            },
        ),
        (
            "one protocol",
            Shape {
                protocols: &[6],
                ..Shape::default()
            },
        ),
        (
            "several protocols",
            Shape {
                protocols: &[6, 17, 1, 58, 0, 255],
                ..Shape::default()
            },
        ),
        (
            "bpf",
            Shape {
                bpf: Some("tcp port 80 and not host 10.0.0.1"),
                ..Shape::default()
            },
        ),
        (
            "empty bpf",
            Shape {
                bpf: Some(""),
                ..Shape::default()
            },
        ),
        (
            "everything",
            Shape {
                src: &["10.1.0.0/16", "2001:db8:1::/48"],
                dst: &["10.3.0.0/16"],
                src_ports: &[(1024, 65535)],
                dst_ports: &[(80, 80), (443, 443), (8080, 8090)],
                protocols: &[6, 17],
                bpf: Some("vlan or ip"),
            },
        ),
    ]
}

/// What the app SDK sends (`tm_app_sdk::encode`).
fn app_encode<T: Serialize>(v: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(v).expect("app side encodes")
}

#[test]
fn both_filters_encode_to_the_same_bytes() {
    for (name, shape) in shapes() {
        let (app, bus) = (shape.app(), shape.bus());
        let from_app = app_encode(&app);
        let from_bus = bus_schema::encode(&bus).expect("bus side encodes");
        assert_eq!(from_app, from_bus, "{name}: the two encodings differ");
        // Field names on the wire, not positions.
        assert_eq!(from_app[0], 0x86, "{name}: not a map of six fields");
    }
}

#[test]
fn each_filter_decodes_into_the_other() {
    for (name, shape) in shapes() {
        let (app, bus) = (shape.app(), shape.bus());
        let decoded: BusFilter = bus_schema::decode(&app_encode(&app))
            .unwrap_or_else(|e| panic!("{name}: app filter as bus filter: {e}"));
        assert_eq!(decoded, bus, "{name}");
        let decoded: AppFilter = rmp_serde::from_slice(&bus_schema::encode(&bus).unwrap())
            .unwrap_or_else(|e| panic!("{name}: bus filter as app filter: {e}"));
        assert_eq!(decoded, app, "{name}");
    }
}

#[test]
fn port_ranges_encode_to_the_same_bytes() {
    for (from, to) in [(0, 0), (53, 53), (1024, 65535), (65535, 65535)] {
        let app = app_encode(&AppPorts { from, to });
        let bus = bus_schema::encode(&BusPorts { from, to }).unwrap();
        assert_eq!(app, bus, "{from}-{to}");
        let back: BusPorts = bus_schema::decode(&app).unwrap();
        assert_eq!((back.from, back.to), (from, to));
        let back: AppPorts = rmp_serde::from_slice(&bus).unwrap();
        assert_eq!((back.from, back.to), (from, to));
    }
}

/// A filter map that leaves fields out (an app that sets only what it
/// needs, or an older sender) means the same to both: absent lists are
/// empty, an absent `bpf` is none.
#[test]
fn absent_fields_default_alike() {
    let mut protocols_only = BTreeMap::new();
    protocols_only.insert("protocols", vec![6u8]);
    let mut bpf_only = BTreeMap::new();
    bpf_only.insert("bpf", "udp");
    let mut ports_only = BTreeMap::new();
    ports_only.insert("dst_ports", vec![AppPorts { from: 53, to: 53 }]);
    let cases: Vec<(&str, Vec<u8>, Shape)> = vec![
        ("empty map", vec![0x80], Shape::default()),
        (
            "protocols only",
            app_encode(&protocols_only),
            Shape {
                protocols: &[6],
                ..Shape::default()
            },
        ),
        (
            "bpf only",
            app_encode(&bpf_only),
            Shape {
                bpf: Some("udp"),
                ..Shape::default()
            },
        ),
        (
            "destination ports only",
            app_encode(&ports_only),
            Shape {
                dst_ports: &[(53, 53)],
                ..Shape::default()
            },
        ),
    ];
    for (name, bytes, shape) in cases {
        let app: AppFilter =
            rmp_serde::from_slice(&bytes).unwrap_or_else(|e| panic!("{name}: as app filter: {e}"));
        let bus: BusFilter =
            bus_schema::decode(&bytes).unwrap_or_else(|e| panic!("{name}: as bus filter: {e}"));
        assert_eq!(app, shape.app(), "{name}");
        assert_eq!(bus, shape.bus(), "{name}");
    }
}
