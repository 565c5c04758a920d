//! The lab itself: every host reaches every other along the topology's flow
//! paths (seen on the taps' veth counters), and its services answer.
//! Needs root and the lab's tools; skipped with a printed reason otherwise.

use harness::lab::{self, Lab};

/// Each ordered pair of hosts: 20 pings cross exactly the tapped directions
/// on the flow path and its way back, and no other tapped direction.
#[test]
fn pings_follow_the_flow_paths_and_services_answer() {
    if let Some(why) = lab::unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let mut lab = Lab::create().unwrap();
    // Directions on the path from router a to router b.
    let path = |a: u8, b: u8| -> Vec<(u8, u8)> {
        let mut hops = Vec::new();
        let mut at = a;
        while at != b {
            let next = lab::next_hop(at, b);
            hops.push((at, next));
            at = next;
        }
        hops
    };
    for from in 1..=4u8 {
        for to in (1..=4u8).filter(|&t| t != from) {
            let before: Vec<u64> = lab
                .taps
                .iter()
                .map(|t| lab.counters(t).unwrap().0)
                .collect();
            lab.ping(from, to, 20).unwrap();
            let crossed: Vec<(u8, u8)> = path(from, to).into_iter().chain(path(to, from)).collect();
            for (tap, before) in lab.taps.iter().zip(before) {
                let delta = lab.counters(tap).unwrap().0 - before;
                // 20 echo requests or replies; ARP may add a few on a first crossing.
                let expected = if crossed.contains(&(tap.from, tap.to)) {
                    20..=22
                } else {
                    0..=2
                };
                assert!(
                    expected.contains(&delta),
                    "H{from}->H{to}: tap {}→{} counted {delta} packets, expected {expected:?}",
                    tap.from,
                    tap.to
                );
            }
        }
    }
    lab.dns_server(3).unwrap();
    assert_eq!(lab.dns_queries(1, 3, 5).unwrap(), 5, "DNS answers");
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "lab\n").unwrap();
    lab.http_server(4, 8080, www.path()).unwrap();
    assert_eq!(
        lab.http_gets(2, 4, 8080, "index.html", 3).unwrap(),
        3,
        "HTTP 200s"
    );
    let out = lab.iperf(1, 3, 5201, &["-t", "1", "-b", "10M"]).unwrap();
    assert!(out.contains("receiver"), "{out}");
    let r1r2 = lab.tap_of(1, 2).unwrap().clone();
    let before = lab.counters(&r1r2).unwrap().0;
    lab.syn_flood(1, 3, 80, 500, 1000).unwrap();
    let after = lab.counters(&r1r2).unwrap().0;
    assert!(
        after - before >= 500,
        "flood crossed R1→R2: {}",
        after - before
    );
}
