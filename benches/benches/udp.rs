//! What the kernel charges for one RTP datagram on loopback: the floor under any
//! user-space media relay or transcoder that moves a call's packets with one
//! `sendto`/`recvfrom` each (the sbc, rtpengine's user-space mode, SIPp). On
//! loopback the sender's `sendto` also runs the receiver's UDP input (softirq in
//! the sender's context), so a process pays for delivering what it sends and for
//! reading what it receives. `cargo bench -p benches --bench udp`.
//!
//! - `send_recv`: one datagram sent and read back, no wake-up (the receiving
//!   socket is ours and nonblocking), at the sizes a PCMA<->Opus call moves.
//! - `recv_empty`: a read that finds nothing (`EAGAIN`), the price of draining a
//!   socket until it is empty.
//! - `ping_pong`: half a round trip between two threads blocked in `recv`: a
//!   datagram plus the wake-up and context switch that a packet arriving every
//!   20 ms costs in a real call.
//!
//! At the end it prints what the datagrams of one transcoded load-test call
//! (`tests/load/run.sh -m transcode`: 33 PCMA + 50 Opus datagrams a second in,
//! as many out) cost the sbc at these prices: each one it sends (with its
//! delivery) and each one it reads, with one empty read after each.

use std::net::UdpSocket;
use std::thread;

use benches::mean_ns;
use criterion::Criterion;

/// An RTP header and 30 ms of PCMA (the load test's capture), and an Opus
/// packet of 20 ms at 32 kbit/s.
const SIZES: [(&str, usize); 2] = [("pcma_30ms", 252), ("opus_32k", 92)];

fn pair() -> (UdpSocket, UdpSocket) {
    let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let b = UdpSocket::bind("127.0.0.1:0").expect("bind");
    (a, b)
}

fn send_recv(c: &mut Criterion) {
    let mut g = c.benchmark_group("udp/send_recv");
    for (name, len) in SIZES {
        let (a, b) = pair();
        b.set_nonblocking(true).expect("nonblocking");
        let to = b.local_addr().expect("addr");
        let out = vec![0x80u8; len];
        let mut buf = [0u8; 1500];
        g.bench_function(name, |bench| {
            bench.iter(|| {
                a.send_to(&out, to).expect("send");
                // Loopback delivered it inside send_to: it is already queued.
                b.recv_from(&mut buf).expect("queued").0
            })
        });
    }
    g.finish();
}

fn recv_empty(c: &mut Criterion) {
    let (_, b) = pair();
    b.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 1500];
    let mut g = c.benchmark_group("udp");
    g.bench_function("recv_empty", |bench| {
        bench.iter(|| b.recv_from(&mut buf).is_err())
    });
    g.finish();
}

fn ping_pong(c: &mut Criterion) {
    let (a, b) = pair();
    let b_addr = b.local_addr().expect("addr");
    // The echo thread ends when it reads a one-byte datagram.
    let echo = thread::spawn(move || {
        let mut buf = [0u8; 1500];
        loop {
            let (n, from) = b.recv_from(&mut buf).expect("recv");
            if n == 1 {
                return;
            }
            b.send_to(&buf[..n], from).expect("send");
        }
    });
    let out = vec![0x80u8; SIZES[0].1];
    let mut buf = [0u8; 1500];
    let mut g = c.benchmark_group("udp");
    g.bench_function("ping_pong_half", |bench| {
        bench.iter_custom(|iters| {
            #[allow(clippy::disallowed_methods)] // measuring is the point of a bench
            let start = std::time::Instant::now();
            for _ in 0..iters {
                a.send_to(&out, b_addr).expect("send");
                a.recv_from(&mut buf).expect("recv");
            }
            start.elapsed() / 2
        })
    });
    g.finish();
    a.send_to(&[0], b_addr).expect("send");
    echo.join().expect("echo thread");
}

fn summary() {
    let (Some(pcma), Some(opus), Some(empty)) = (
        mean_ns("udp_send_recv", "pcma_30ms"),
        mean_ns("udp_send_recv", "opus_32k"),
        mean_ns("udp", "recv_empty"),
    ) else {
        return;
    };
    // A send_recv is one send (with delivery) and one read: per second the sbc
    // sends 33 PCMA and 50 Opus datagrams and reads as many.
    let per_s_ns = 33.0 * pcma + 50.0 * opus + 83.0 * empty;
    println!(
        "one transcoded load-test call's datagrams, no wake-ups: {:.1} us a second = {:.4} % of a core",
        per_s_ns / 1e3,
        per_s_ns / 1e7
    );
}

fn main() {
    let mut c = Criterion::default()
        .output_directory(&benches::criterion_dir())
        .configure_from_args();
    send_recv(&mut c);
    recv_empty(&mut c);
    ping_pong(&mut c);
    c.final_summary();
    summary();
}
