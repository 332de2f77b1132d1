//! Heap per browser leg (`WebRtcLeg` on str0m), with a counting global allocator.
//!
//! `cargo run --release -p benches --bin webrtc-mem`
//!
//! * idle: right after `accept_offer` (answer sent, browser not yet connected);
//! * active: after connecting and 30 s (then 120 s) of virtual-time Opus both ways
//!   with a browser-like str0m peer, which is dropped before measuring so only the
//!   leg's own heap remains;
//! * then the leg is dropped and the heap must return to where it started.
//!
//! The shared DTLS identity and str0m's process-wide lazies are made before the
//! first measurement: they are paid once per process, not per leg. Only Rust heap
//! is seen: the C libraries (AWS-LC, libopus) allocate with their own malloc.
#![allow(unsafe_code)] // GlobalAlloc is an unsafe trait.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::Duration;

use media_core::Instant;
use media_core::analysis::sine;
use media_core::codec::{OpusEncoder, OpusEncoderConfig};
use media_core::rtp::{PayloadType, RtpTimestamp, RtpWriter, SeqNo, Ssrc};
use sip_bridge::webrtc::{DtlsIdentity, WebRtcConfig, WebRtcEvent, WebRtcLeg};
use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
/// Allocations made while `COUNTING` is set (around the leg's calls only).
static ALLOCS: AtomicIsize = AtomicIsize::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

// SAFETY: forwards to the system allocator; only counts live bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// glibc's `struct mallinfo2` (glibc >= 2.33).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[repr(C)]
struct MallInfo2 {
    arena: usize,
    ordblks: usize,
    smblks: usize,
    hblks: usize,
    hblkhd: usize,
    usmblks: usize,
    fsmblks: usize,
    uordblks: usize,
    fordblks: usize,
    keepcost: usize,
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe extern "C" {
    fn mallinfo2() -> MallInfo2;
}

/// Bytes in use from malloc: Rust's heap (the system allocator is malloc) plus
/// what C code allocates (AWS-LC's DTLS/SRTP state), which `live()` cannot see.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn malloc_in_use() -> Option<isize> {
    // SAFETY: a plain glibc call that only reads allocator statistics.
    let m = unsafe { mallinfo2() };
    Some((m.uordblks + m.hblkhd) as isize)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn malloc_in_use() -> Option<isize> {
    None
}

/// Both heap measures at once.
#[derive(Clone, Copy)]
struct Heap {
    rust: isize,
    malloc: Option<isize>,
}

impl Heap {
    fn now() -> Heap {
        Heap {
            rust: live(),
            malloc: malloc_in_use(),
        }
    }

    /// "X KiB Rust heap (Y KiB all malloc)" per `n` since `self`.
    fn since(self, n: usize) -> String {
        let now = Heap::now();
        let rust = kb((now.rust - self.rust) / n as isize);
        match (now.malloc, self.malloc) {
            (Some(a), Some(b)) => {
                format!(
                    "{rust:.1} KiB Rust heap, {:.1} KiB all malloc incl. AWS-LC",
                    kb((a - b) / n as isize)
                )
            }
            _ => format!("{rust:.1} KiB Rust heap"),
        }
    }
}

/// Runs `f` with allocation counting on.
fn counted<T>(f: impl FnOnce() -> T) -> T {
    COUNTING.store(true, Ordering::Relaxed);
    let r = f();
    COUNTING.store(false, Ordering::Relaxed);
    r
}

fn kb(bytes: isize) -> f64 {
    bytes as f64 / 1024.0
}

const SERVER: &str = "192.0.2.10:3478";
const BROWSER: &str = "198.51.100.7:50000";
const FRAME: Duration = Duration::from_millis(20);
const SAMPLES: usize = 960;

fn config(epoch: std::time::Instant, identity: &DtlsIdentity) -> WebRtcConfig {
    let mut cfg = WebRtcConfig::new(SERVER.parse().unwrap(), identity.clone(), epoch);
    cfg.idle_timeout = Duration::from_secs(3600);
    cfg
}

/// A browser-like peer and the leg it talks to, on virtual time, zero latency.
struct Pair {
    epoch: std::time::Instant,
    now: Instant,
    leg: WebRtcLeg,
    browser: Rtc,
    mid: Mid,
    browser_deadline: Instant,
    to_server: Vec<(SocketAddr, Vec<u8>)>,
    to_browser: Vec<Vec<u8>>,
    frame: u64,
    opus: Vec<Vec<u8>>,
}

impl Pair {
    fn new(epoch: std::time::Instant, cfg: &WebRtcConfig, opus: Vec<Vec<u8>>) -> Pair {
        let mut browser = Rtc::builder()
            .clear_codecs()
            .enable_opus(true, false)
            .build(epoch);
        browser.add_local_candidate(Candidate::host(BROWSER.parse().unwrap(), "udp").unwrap());
        let mut change = browser.sdp_api();
        let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, pending) = change.apply().unwrap();
        let (leg, answer) =
            WebRtcLeg::accept_offer(Instant::ZERO, &offer.to_sdp_string(), cfg).unwrap();
        browser
            .sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
            .unwrap();
        Pair {
            epoch,
            now: Instant::ZERO,
            leg,
            browser,
            mid,
            browser_deadline: Instant::ZERO,
            to_server: Vec::new(),
            to_browser: Vec::new(),
            frame: 0,
            opus,
        }
    }

    /// Keeps only the leg: the browser, its queues and the frames are freed.
    fn into_leg(self) -> WebRtcLeg {
        self.leg
    }

    fn std(&self) -> std::time::Instant {
        self.epoch + Duration::from_micros(self.now.as_micros())
    }

    fn drain_browser(&mut self) {
        loop {
            match self.browser.poll_output().unwrap() {
                Output::Timeout(t) => {
                    let d = t.saturating_duration_since(self.epoch).as_micros();
                    self.browser_deadline = Instant::from_micros(d.min(u64::MAX as u128) as u64);
                    return;
                }
                Output::Transmit(t) => self.to_server.push((t.source, t.contents.into())),
                Output::Event(Event::MediaData(_)) | Output::Event(_) => {}
            }
        }
    }

    fn opus_pt(&mut self) -> Pt {
        let writer = self.browser.writer(self.mid).unwrap();
        let mut params = writer.payload_params();
        params.find(|p| p.spec().codec == Codec::Opus).unwrap().pt()
    }

    /// One 20 ms frame: timers, an Opus packet each way once connected, and every
    /// datagram until both sides are quiet.
    fn tick(&mut self) {
        self.now += FRAME;
        let now = self.now;
        if self.leg.poll_timeout().is_some_and(|t| t <= now) {
            counted(|| self.leg.handle_timeout(now));
        }
        if self.browser_deadline <= now {
            let t = self.std();
            self.browser.handle_input(Input::Timeout(t)).unwrap();
        }
        self.drain_browser();
        let k = (self.frame % self.opus.len() as u64) as usize;
        if self.browser.is_connected() {
            let ts = MediaTime::new(self.frame * SAMPLES as u64, Frequency::FORTY_EIGHT_KHZ);
            let (pt, wallclock, payload) = (self.opus_pt(), self.std(), self.opus[k].clone());
            let writer = self.browser.writer(self.mid).unwrap();
            writer.write(pt, wallclock, ts, payload).unwrap();
            self.drain_browser();
        }
        if self.leg.is_connected() {
            let pt = PayloadType::new(self.leg.payload_types().opus).unwrap();
            let w = RtpWriter::new(
                pt,
                SeqNo(self.frame as u16),
                RtpTimestamp((self.frame * SAMPLES as u64) as u32),
                Ssrc(0x1234_5678),
            );
            let mut buf = [0u8; 1500];
            let n = w.write_packet(&self.opus[k], &mut buf).unwrap();
            counted(|| self.leg.send_rtp(now, &buf[..n])).unwrap();
        }
        let server: SocketAddr = SERVER.parse().unwrap();
        loop {
            while let Some(t) = counted(|| self.leg.poll_transmit()) {
                self.to_browser.push(t.bytes.to_vec());
            }
            while let Some(e) = counted(|| self.leg.poll_event()) {
                if let WebRtcEvent::Rtp(b) = e {
                    std::hint::black_box(b.len());
                }
            }
            if self.to_server.is_empty() && self.to_browser.is_empty() {
                break;
            }
            for (from, d) in std::mem::take(&mut self.to_server) {
                let _ = counted(|| self.leg.handle_input(now, from, server, &d));
            }
            for d in std::mem::take(&mut self.to_browser) {
                let t = self.std();
                let r = Receive::new(Protocol::Udp, server, BROWSER.parse().unwrap(), &d).unwrap();
                let input = Input::Receive(t, r);
                if self.browser.accepts(&input) {
                    self.browser.handle_input(input).unwrap();
                }
                self.drain_browser();
            }
        }
        self.frame += 1;
    }
}

fn opus_frames() -> Vec<Vec<u8>> {
    let pcm = sine(48_000, 440.0, 8000.0, 50 * SAMPLES);
    let mut enc = OpusEncoder::new(OpusEncoderConfig::default()).unwrap();
    let mut buf = [0u8; 1500];
    pcm.chunks(SAMPLES)
        .map(|f| {
            let n = enc.encode(f, &mut buf).unwrap();
            buf[..n].to_vec()
        })
        .collect()
}

fn main() {
    #[allow(clippy::disallowed_methods)] // the epoch of virtual time
    let epoch = std::time::Instant::now();
    let identity = DtlsIdentity::generate().unwrap();
    let cfg = config(epoch, &identity);
    let opus = opus_frames();

    // Warm-up: process-wide lazies (crypto provider, str0m's clock anchor).
    drop(Pair::new(epoch, &cfg, opus.clone()));
    let offer = {
        let mut b = Rtc::builder().build(epoch);
        b.add_local_candidate(Candidate::host(BROWSER.parse().unwrap(), "udp").unwrap());
        let mut change = b.sdp_api();
        change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        change.apply().unwrap().0.to_sdp_string()
    };

    println!(
        "inline size_of::<WebRtcLeg>() = {} B",
        size_of::<WebRtcLeg>()
    );

    // Idle legs.
    const N: usize = 100;
    let mut legs = Vec::with_capacity(N);
    let base = live();
    let heap = Heap::now();
    for _ in 0..N {
        let (leg, answer) = WebRtcLeg::accept_offer(Instant::ZERO, &offer, &cfg).unwrap();
        drop(answer);
        legs.push(leg);
    }
    println!(
        "idle leg (after accept_offer, before connect): {} (mean of {N})",
        heap.since(N)
    );
    legs.clear(); // keeps the Vec's buffer, which was there before `base`
    println!("  after dropping them: {:+} B vs. before", live() - base);

    // Active legs.
    for seconds in [30u64, 120] {
        let base = live();
        let heap = Heap::now();
        let mut pair = Pair::new(epoch, &cfg, opus.clone());
        let frames = seconds * 1000 / FRAME.as_millis() as u64;
        for _ in 0..frames - 500 {
            pair.tick();
        }
        // Steady state: allocations inside the leg's calls over the last 10 s.
        ALLOCS.store(0, Ordering::Relaxed);
        for _ in 0..500 {
            pair.tick();
        }
        let per_frame = ALLOCS.load(Ordering::Relaxed) as f64 / 500.0;
        assert!(pair.leg.is_connected());
        let stats = pair.leg.stats();
        let leg = pair.into_leg();
        println!(
            "active leg after {seconds} s of Opus both ways ({} in, {} out): {}",
            stats.packets_in,
            stats.packets_out,
            heap.since(1)
        );
        println!(
            "  allocations in the leg's calls: {per_frame:.1} per 20 ms frame (one packet each way)"
        );
        drop(leg);
        println!("  after dropping it: {:+} B vs. before", live() - base);
    }
}
