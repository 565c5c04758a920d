//! header-sampler run by the real monitor: the pcap in its results opens in
//! `tcpdump -r` and shows exactly the sampled packets still in the ring;
//! `every`, ring overwrites, non-IP skips and configure are exact; bad
//! params are refused with the field named.

mod common;

use std::process::Command;

use bus_schema::{
    BlobRef, ConfigureReply, ConfigureRequest, ErrorCode, Filter, LoadReply, LoadRequest, Reply,
    Value, subject,
};
use common::{Run, collect, field, put_blob, request, run, u, wasm};
use pcapgen::{Frame, mixed};

const START_NS: u64 = 1_764_000_000_000_000_000;
const SNAP: usize = 64;
const RING: usize = 8;
const EVERY: usize = 5;

fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

/// An Ethernet ARP request: not IP.
fn arp(ts_ns: u64) -> Frame {
    let mut data = vec![0xff; 6];
    data.extend_from_slice(&[0x02, 0, 10, 0, 0, 9, 0x08, 0x06]);
    data.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    data.extend_from_slice(&[0x02, 0, 10, 0, 0, 9, 10, 0, 0, 9]);
    data.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 0, 1]);
    Frame {
        ts_ns,
        data,
        wire_len: None,
    }
}

/// The mix of TCP, UDP and ICMP with three ARP frames among it.
fn frames() -> Vec<Frame> {
    let mut out = Vec::new();
    for (i, f) in mixed(40, START_NS).into_iter().enumerate() {
        let ts = f.ts_ns;
        out.push(f);
        if i % 30 == 5 {
            out.push(arp(ts + 1));
        }
    }
    out
}

fn is_ipv4(f: &Frame) -> bool {
    f.data[12..14] == [0x08, 0x00]
}

/// What tcpdump prints for an Ethernet/IPv4 frame of the mix, after the
/// timestamp: `IP a.b.c.d.port > e.f.g.h.port:` or, for ICMP, `IP a.b.c.d
/// > e.f.g.h: ICMP echo request`.
fn tcpdump_line(f: &Frame) -> String {
    let d = &f.data;
    let ip = |at: usize| format!("{}.{}.{}.{}", d[at], d[at + 1], d[at + 2], d[at + 3]);
    let port = |at: usize| u16::from_be_bytes([d[at], d[at + 1]]);
    match d[23] {
        6 | 17 => format!("IP {}.{} > {}.{}:", ip(26), port(34), ip(30), port(36)),
        1 => format!("IP {} > {}: ICMP echo request", ip(26), ip(30)),
        p => panic!("protocol {p} is not in the mix"),
    }
}

/// Runs `tcpdump -n -tt --nano -r` on `pcap`; returns its stdout lines
/// and stderr after checking it exited 0.
fn tcpdump(pcap: &[u8]) -> (Vec<String>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sampled.pcap");
    std::fs::write(&path, pcap).unwrap();
    let out = match Command::new("tcpdump")
        .args(["-n", "-tt", "--nano", "-r"])
        .arg(&path)
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("tcpdump is missing: install it (xtask/setup.sh does)")
        }
        Err(e) => panic!("cannot run tcpdump: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "tcpdump exited with {}:\n{stderr}\n{stdout}",
        out.status
    );
    (stdout.lines().map(str::to_string).collect(), stderr)
}

/// Checks tcpdump's lines against the frames expected, in order.
fn check_lines(lines: &[String], expected: &[&Frame]) {
    assert_eq!(
        lines.len(),
        expected.len(),
        "one line per kept packet:\n{}",
        lines.join("\n")
    );
    for (line, f) in lines.iter().zip(expected) {
        let ts = format!(
            "{}.{:09} ",
            f.ts_ns / 1_000_000_000,
            f.ts_ns % 1_000_000_000
        );
        let want = format!("{ts}{}", tcpdump_line(f));
        assert!(
            line.starts_with(&want),
            "expected {want:?}, tcpdump printed {line:?}"
        );
    }
}

/// The pcap's records as (incl_len, orig_len).
fn record_lengths(pcap: &[u8]) -> Vec<(usize, usize)> {
    let le = |at: usize| u32::from_le_bytes(pcap[at..at + 4].try_into().unwrap()) as usize;
    let mut out = Vec::new();
    let mut at = 24;
    while at < pcap.len() {
        let (incl, orig) = (le(at + 8), le(at + 12));
        out.push((incl, orig));
        at += 16 + incl;
    }
    assert_eq!(at, pcap.len(), "records end with the file");
    out
}

fn pcap_of(res: &Value) -> Vec<u8> {
    field(res, "pcap")
        .as_slice()
        .unwrap_or_else(|| panic!("pcap is not binary in {res}"))
        .to_vec()
}

async fn configure(r: &Run, params: Value) -> Reply<ConfigureReply> {
    request(
        &r.client,
        subject::monitor_configure("a", "t"),
        &ConfigureRequest {
            deployment: "header-sampler".into(),
            requester: "t".into(),
            params,
            force: false,
        },
    )
    .await
}

#[tokio::test]
async fn header_sampler_pcap_opens_in_tcpdump_with_the_kept_packets() {
    let frames = frames();
    let params = map(vec![
        ("snap_bytes", SNAP.into()),
        ("ring", RING.into()),
        ("every", EVERY.into()),
    ]);
    let r = run(&frames, &[("header-sampler", params)]).await;
    let res = collect(&r, "header-sampler").await;

    // Ground truth from the frames: every 5th IP frame, the last 8 kept
    // (TCP, UDP and ICMP among them).
    let ip: Vec<&Frame> = frames.iter().filter(|f| is_ipv4(f)).collect();
    let sampled: Vec<&Frame> = ip.iter().copied().step_by(EVERY).collect();
    let non_ip = (frames.len() - ip.len()) as u64;
    assert_eq!((ip.len(), non_ip, sampled.len()), (90, 3, 18));
    assert_eq!(
        (
            u(&res, "seen"),
            u(&res, "sampled"),
            u(&res, "kept"),
            u(&res, "overwritten"),
            u(&res, "skipped_non_ip"),
            u(&res, "snap_bytes"),
        ),
        (
            frames.len() as u64,
            sampled.len() as u64,
            RING as u64,
            (sampled.len() - RING) as u64,
            non_ip,
            SNAP as u64
        )
    );
    let pcap = pcap_of(&res);
    let kept = &sampled[sampled.len() - RING..];
    for proto in [1, 6, 17] {
        assert!(
            kept.iter().any(|f| f.data[23] == proto),
            "protocol {proto} kept"
        );
    }
    let lengths: Vec<(usize, usize)> = kept
        .iter()
        .map(|f| (SNAP.min(f.data.len() - 14), f.data.len() - 14))
        .collect();
    assert_eq!(record_lengths(&pcap), lengths, "(incl_len, orig_len)");

    let (lines, stderr) = tcpdump(&pcap);
    assert!(
        stderr.contains("link-type RAW") && stderr.contains("snapshot length 64"),
        "{stderr}"
    );
    check_lines(&lines, kept);
    eprintln!(
        "tcpdump -n -tt --nano -r (ring {RING}):\n{}",
        lines.join("\n")
    );

    // A smaller ring drops the oldest at once; counts are kept.
    let _: ConfigureReply = configure(
        &r,
        map(vec![
            ("snap_bytes", SNAP.into()),
            ("ring", 4.into()),
            ("every", EVERY.into()),
        ]),
    )
    .await
    .into_result()
    .unwrap();
    let res = collect(&r, "header-sampler").await;
    assert_eq!(
        (u(&res, "sampled"), u(&res, "kept"), u(&res, "overwritten")),
        (sampled.len() as u64, 4, sampled.len() as u64 - 4)
    );
    let (lines, _) = tcpdump(&pcap_of(&res));
    check_lines(&lines, &sampled[sampled.len() - 4..]);

    // Bad params: a configure is refused and changes nothing; loads are refused.
    let e = configure(&r, map(vec![("every", 0.into())]))
        .await
        .into_result()
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadParams);
    assert!(e.message.contains("every = 0"), "{e:?}");
    assert_eq!(u(&collect(&r, "header-sampler").await, "kept"), 4);
    let js = async_nats::jetstream::new(r.client.clone());
    let sha = put_blob(&js, "header-sampler", &wasm("header-sampler")).await;
    for (params, needle) in [
        (map(vec![("snap_bytes", 10.into())]), "snap_bytes = 10"),
        (map(vec![("ring", 0.into())]), "ring = 0"),
        (
            map(vec![("ring", 100_000.into())]),
            "ring = 100000 with snap_bytes = 128",
        ),
        (map(vec![("snaplen", 64.into())]), "unknown field `snaplen`"),
    ] {
        let e = request::<_, LoadReply>(
            &r.client,
            subject::monitor_load("a", "t"),
            &LoadRequest {
                deployment: "sampler-bad".into(),
                analyzer: BlobRef {
                    name: "header-sampler".into(),
                    sha256: sha.clone(),
                },
                params,
                filter: Filter::default(),
                links: vec![0],
                owner: "t".into(),
                report_every_ms: None,
            },
        )
        .await
        .into_result()
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::BadParams, "{e:?}");
        assert!(e.message.contains(needle), "expected {needle:?} in {e:?}");
    }
}
