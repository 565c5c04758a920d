//! The shipped analyzers run by the real monitor on generated captures:
//! exact expected figures, configure taking effect at once, and corrupted
//! captures analyzed without a trap.

mod common;

use std::time::Duration;

use bus_schema::{ConfigureReply, ConfigureRequest, DeploymentState, Value, subject};
use common::{collect, field, request, run, u};
use pcapgen::{count, mixed};

/// flow-stats gives each flow of the mix exactly, ranks by bytes, and a
/// configure of top_n shows in the very next collect.
#[tokio::test]
async fn flow_stats_gives_exact_flows_and_configure_changes_top_n() {
    let frames = mixed(400, 1_764_000_000_000_000_000);
    let params = Value::Map(vec![("top_n".into(), 2.into())]);
    let r = run(&frames, &[("flow-stats", params)]).await;
    let res = collect(&r, "flow-stats").await;
    let (all, all_bytes) = count(&frames, |_| true);
    assert_eq!((u(&res, "packets"), u(&res, "bytes")), (all, all_bytes));
    assert_eq!((u(&res, "active_flows"), u(&res, "non_ip_packets")), (3, 0));
    let top = field(&res, "top").as_array().unwrap();
    assert_eq!(top.len(), 2);
    let tcp = &top[0];
    assert_eq!(
        (
            field(tcp, "src").as_str(),
            field(tcp, "dst").as_str(),
            u(tcp, "sport"),
            u(tcp, "dport"),
            u(tcp, "proto")
        ),
        (Some("10.0.0.1"), Some("10.0.0.2"), 40000, 80, 6)
    );
    assert_eq!(
        (u(tcp, "packets"), u(tcp, "bytes"), u(tcp, "tcp_flags")),
        (400, 400 * 154, 0x18)
    );
    assert_eq!(u(tcp, "first_ns"), frames[0].ts_ns);
    let udp = &top[1];
    assert_eq!(
        (u(udp, "dport"), u(udp, "packets"), u(udp, "bytes")),
        (53, 400, 400 * 82)
    );
    let links = field(&res, "links").as_map().unwrap();
    assert_eq!(links.len(), 1);
    assert_eq!(u(&links[0].1, "packets"), all);

    let _: ConfigureReply = request(
        &r.client,
        subject::monitor_configure("a"),
        &ConfigureRequest {
            deployment: "flow-stats".into(),
            requester: "t".into(),
            params: Value::Map(vec![("top_n".into(), 3.into())]),
            force: false,
        },
    )
    .await
    .into_result()
    .unwrap();
    let res = collect(&r, "flow-stats").await;
    let top = field(&res, "top").as_array().unwrap();
    assert_eq!(top.len(), 3);
    assert_eq!(
        (
            u(&top[2], "proto"),
            u(&top[2], "packets"),
            u(&top[2], "bytes")
        ),
        (1, 100, 100 * 98)
    );
    assert_eq!(u(&res, "packets"), all, "configure must not reset state");
}

/// A capture with random byte errors and truncated packets is analyzed to
/// the last packet by every analyzer, without a trap.
#[tokio::test]
async fn corrupted_captures_are_analyzed_without_a_trap() {
    let mut frames = mixed(300, 1_764_000_000_000_000_000);
    let mut x: u32 = 0xdead_beef;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    for f in frames.iter_mut() {
        match next() % 4 {
            // Flip a few bytes anywhere in the frame.
            0 => {
                for _ in 0..4 {
                    let at = next() as usize % f.data.len();
                    f.data[at] ^= next() as u8 | 1;
                }
            }
            // Cut it, as a short snap length would.
            1 => {
                let keep = next() as usize % f.data.len();
                f.wire_len = Some(f.data.len() as u32);
                f.data.truncate(keep);
            }
            _ => {}
        }
    }
    let r = run(
        &frames,
        &[("flow-stats", Value::Nil), ("packet-count", Value::Nil)],
    )
    .await;
    let st = r.monitor.status(&r.client).await;
    for d in &st.deployments {
        assert_eq!(
            d.state,
            DeploymentState::Running,
            "{} failed: {:?}",
            d.deployment,
            d.last_error
        );
    }
    let total = frames.len() as u64;
    for name in ["flow-stats", "packet-count"] {
        assert_eq!(u(&collect(&r, name).await, "packets"), total, "{name}");
    }
    assert!(
        st.links[0].parse_errors > 0,
        "the corruption produced no parse errors"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
}
