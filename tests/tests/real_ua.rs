//! SIP interop with real user agents from Debian, not SIPp: **baresip** (the
//! carrier's caller) and **linphonec** (the far end) call each other through the
//! real `sbc` binary on loopback. baresip calls number +15550100 on the carrier
//! trunk from 127.0.0.2; the number's plan rings linphonec at 127.0.0.3 as a
//! `sip:` target; the SBC (127.0.0.1) bridges the two legs as a B2BUA.
//!
//! Each UA plays a WAV of its own sine (caller 440 Hz, far end 1000 Hz) and
//! records what it receives; a Goertzel filter over the recordings tells which
//! tone arrived. [`baresip_and_linphone_talk_through_the_sbc`] proves, with two
//! calls:
//!
//! 1. audio both ways: each side's recording holds the other side's tone (and
//!    not its own: no media looped back);
//! 2. hold and resume: baresip's re-INVITEs (`a=sendonly`, then `a=sendrecv`)
//!    reach linphone through the SBC (it goes to `PausedByRemote` and back to
//!    `StreamsRunning`), the call survives, and after the resume the caller's
//!    tone reaches linphone again and RTP reaches baresip again (nothing flows
//!    while held);
//! 3. DTMF (RFC 4733 telephone-events) both ways: the digits baresip sends are
//!    the digits linphone reports, and linphone's digit reaches baresip;
//! 4. codecs: an Opus caller with a G.711 far end is transcoded
//!    (`sbc_calls_media_total{path="transcoded"}`), G.711 on both sides is
//!    relayed (`path="relayed"`);
//! 5. RTCP: the UAs' reports reach the SBC (`sbc_rtcp_packets_total{direction="in"}`).
//!
//! [`dtmf_from_an_opus_caller_reaches_the_far_end`]: the digits of an Opus
//! caller whose events run at 8 kHz reach a G.711 far end.
//!
//! [`baresip_registered_as_an_operators_phone_takes_a_carrier_call_from_linphone`]:
//! baresip registers as an operator's desk phone and takes linphonec's call.
//!
//! [`a_carrier_call_rings_a_browser_and_two_phones_and_the_first_phone_to_answer_talks`]:
//! SIPp's call rings a headless browser operator, baresip and a registered
//! linphonec at once; baresip answers, the others hear "completed elsewhere".
//!
//! [`a_registered_phone_dials_out_with_its_operators_number_holds_and_sends_dtmf`]:
//! baresip, registered, dials out through the trunk (407, then its operator's
//! number as caller ID), holds, resumes and sends DTMF to linphonec.
//!
//! [`baresip_as_the_far_end_blind_transfers_the_call_with_refer`]: a second
//! baresip (127.0.0.5) is the far end, on a trunk whose REFERs are followed;
//! it blind-transfers the call (its `transfer` command: REFER) to linphonec,
//! and the caller ends up talking to linphonec.
//!
//! Needs `target/debug/sbc` (`cargo build -p sbc`) and the Debian packages
//! `baresip` and `linphone-cli` (tests/ci.sh installs them); without them the
//! tests fail and say so. The UAs' configs are the templates in `tests/realua/`;
//! everything they write goes to temporary directories. Outcomes never depend on
//! timing: every wait polls for what it needs with a generous timeout.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::sbc_process::{
    Sbc, SbcSpec, TempDir, free_port, free_tcp_port, lo, rtp, serial, tail_file, wait_until,
};
use serde_json::Value;

/// The caller's tone (baresip).
const CALLER_HZ: f64 = 440.0;
/// The far end's tone (linphonec; the transfer target in the transfer test).
const CALLEE_HZ: f64 = 1000.0;
/// The far end's tone in the transfer test (the second baresip).
const FAR_END_HZ: f64 = 700.0;
/// How much of a tone a recording must hold to count as "heard".
const HEARD_MS: u32 = 1000;
/// How long the tone files last: longer than any call here (baresip ends the
/// call when its source file runs out).
const TONE_SECS: u32 = 90;
/// The format linphonec records calls in (PCMU decoded: 8 kHz mono), for
/// reading its recording before the header is written.
const LINPHONE_REC: Option<(u32, usize)> = Some((8_000, 1));
/// How long a UA may take to start, a call to connect, a tone or a digit to arrive.
const WAIT: Duration = Duration::from_secs(30);
/// How long the SBC may take to let go of everything after the calls.
const IDLE: Duration = Duration::from_secs(40);

/// The carrier trunk (calls from 127.0.0.2; it takes Opus and PCMU) and number
/// +15550100 ringing the far end `callee` as a SIP URI (directly, not through
/// the trunk: our offer to it lists PCMU, PCMA and Opus, the caller's first).
fn config(callee: SocketAddr) -> String {
    format!(
        "[[trunks]]\nname = \"carrier\"\nhost = \"carrier.test\"\npeers = [\"{callee}\"]\n\
         inbound = [\"127.0.0.2/32\"]\ncodecs = [\"opus\", \"PCMU\"]\n\n\
         [[numbers]]\nid = \"service\"\ne164 = \"+15550100\"\n\
         dial = [ {{ ring = [\"sip:service@{callee}\"], timeout = \"20s\" }} ]\n"
    )
}

/// Fails, saying how to install it, when a UA is missing.
fn require_user_agents() {
    let runs = |bin: &str, arg: &str| Command::new(bin).arg(arg).output().is_ok();
    assert!(
        runs("baresip", "-h") && Path::new("/usr/lib/baresip/modules/aufile.so").is_file(),
        "baresip is missing: `apt-get install -y --no-install-recommends baresip` \
         (tests/ci.sh installs it)"
    );
    assert!(
        runs("linphonec", "-v"),
        "linphonec is missing: `apt-get install -y --no-install-recommends linphone-cli` \
         (tests/ci.sh installs it)"
    );
}

/// A config template of `tests/realua/` with its `@KEY@` placeholders filled in.
fn template(name: &str, values: &[(&str, String)]) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("realua")
        .join(name);
    let mut text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    for (key, value) in values {
        text = text.replace(&format!("@{key}@"), value);
    }
    let parts: Vec<&str> = text.split('@').collect();
    let unfilled = parts[1..parts.len().saturating_sub(1).max(1)]
        .iter()
        .find(|key| !key.is_empty() && key.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
    assert!(
        unfilled.is_none(),
        "{name}: @{unfilled:?}@ is not filled in"
    );
    text
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn stop(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

// ----- WAV files and tones -----

/// Writes `secs` seconds of a sine at `hz`, half of full scale, as a 16-bit mono
/// PCM WAV at `rate`.
fn write_tone(path: &Path, rate: u32, hz: f64, secs: u32) {
    let frames = rate * secs;
    let data_len = frames * 2;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    let w = 2.0 * std::f64::consts::PI * hz / f64::from(rate);
    for n in 0..frames {
        let s = (0.5 * 32767.0 * (w * f64::from(n)).sin()).round() as i16;
        out.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, out).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The first channel of a 16-bit PCM WAV file, as samples in -1..1.
#[derive(Debug, Default)]
struct Wav {
    rate: u32,
    samples: Vec<f64>,
}

impl Wav {
    /// Reads a WAV file that its writer may still be appending to: the data
    /// chunk runs to the end of the file, whatever its header says (a recorder
    /// writes the size when it closes the file, and linphone reopens the file
    /// and appends when a call resumes). Empty when the file is missing or has
    /// no data yet.
    ///
    /// linphone's recorder writes the 44-byte header only when it closes the
    /// file (zeros until then): `pending` is the (rate, channels) of such a
    /// file, 16-bit PCM.
    fn read(path: &Path, pending: Option<(u32, usize)>) -> Wav {
        let Ok(bytes) = std::fs::read(path) else {
            return Wav::default();
        };
        if let Some((rate, channels)) = pending
            && bytes.len() >= 44
            && bytes[..44].iter().all(|&b| b == 0)
        {
            return Wav::pcm16(&bytes[44..], rate, channels);
        }
        if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
            return Wav::default();
        }
        let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
        let u32_at =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let (mut channels, mut rate, mut bits) = (0usize, 0u32, 0u16);
        let mut pos = 12;
        while pos + 8 <= bytes.len() {
            let id = &bytes[pos..pos + 4];
            let size = u32_at(pos + 4) as usize;
            let body = pos + 8;
            if id == b"fmt " && body + 16 <= bytes.len() {
                channels = usize::from(u16_at(body + 2));
                rate = u32_at(body + 4);
                bits = u16_at(body + 14);
            } else if id == b"data" {
                assert!(
                    bits == 16 && channels > 0,
                    "{}: {bits}-bit, {channels} channels: only 16-bit PCM is read",
                    path.display()
                );
                return Wav::pcm16(&bytes[body..], rate, channels);
            }
            pos = body + size + (size & 1);
        }
        Wav::default()
    }

    /// The first channel of interleaved 16-bit little-endian samples.
    fn pcm16(data: &[u8], rate: u32, channels: usize) -> Wav {
        let samples = data
            .chunks_exact(2 * channels)
            .map(|frame| f64::from(i16::from_le_bytes([frame[0], frame[1]])) / 32768.0)
            .collect();
        Wav { rate, samples }
    }

    /// How many milliseconds from sample `from` on carry a tone of `hz`: 40 ms
    /// blocks that are not silent and whose energy is mostly (over half) at `hz`
    /// (a Goertzel filter; 25 Hz wide, so 440 and 1000 Hz never mix up).
    fn tone_ms(&self, from: usize, hz: f64) -> u32 {
        if self.rate == 0 {
            return 0;
        }
        let n = (self.rate / 25) as usize;
        let coeff = 2.0 * (2.0 * std::f64::consts::PI * hz / f64::from(self.rate)).cos();
        let blocks = self.samples.get(from..).unwrap_or_default().chunks_exact(n);
        let tonal = blocks
            .filter(|block| {
                let (mut s1, mut s2, mut energy) = (0.0, 0.0, 0.0);
                for &x in *block {
                    let s0 = x + coeff * s1 - s2;
                    s2 = s1;
                    s1 = s0;
                    energy += x * x;
                }
                let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
                let rms = (energy / n as f64).sqrt();
                rms > 0.01 && 2.0 * power / (n as f64 * energy) > 0.5
            })
            .count();
        tonal as u32 * 40
    }
}

/// Waits until the recording at `path` holds [`HEARD_MS`] of a tone of `hz`
/// after sample `from`; returns how much it held at the end.
fn wait_tone(path: &Path, pending: Option<(u32, usize)>, from: usize, hz: f64) -> u32 {
    let mut heard = 0;
    wait_until(WAIT, || {
        heard = Wav::read(path, pending).tone_ms(from, hz);
        heard >= HEARD_MS
    });
    heard
}

// ----- baresip -----

/// baresip, driven over its ctrl_tcp socket.
#[derive(Debug)]
/// Where a baresip runs: in the host's network or namespace `netns`, its
/// SIP and control addresses, and the address it names in SDP.
struct Ua {
    netns: Option<String>,
    sip: SocketAddr,
    ctrl: SocketAddr,
    net: String,
}

struct Baresip {
    child: Child,
    dir: PathBuf,
    ctrl: TcpStream,
    /// Every message it sent on ctrl_tcp: responses and call events.
    messages: Arc<Mutex<Vec<Value>>>,
    next_token: u32,
}

impl Baresip {
    /// Starts baresip in `dir` with SIP on 127.0.0.2, offering `codec` (as baresip
    /// names it: `opus/48000/2`, `PCMU/8000/1`) and playing the WAV `tone`;
    /// `rtcp_mux`: it offers `a=rtcp-mux` (RFC 5761).
    fn start(dir: &Path, codec: &str, tone: &Path, rtcp_mux: bool) -> Baresip {
        let sip = SocketAddr::new(lo(2), free_port(lo(2)));
        let account = format!("<sip:carrier@{}>;regint=0;audio_codecs={codec}", sip.ip());
        Baresip::start_at(dir, sip, "40000-40099", &account, tone, rtcp_mux)
    }

    /// Starts baresip in `dir` with SIP on `sip`, RTP on `rtp_ports` (a range of
    /// its own: baresip binds RTP to 0.0.0.0), the `accounts` line `account`
    /// (`<sip:user@host>;params`), playing the WAV `tone`.
    fn start_at(
        dir: &Path,
        sip: SocketAddr,
        rtp_ports: &str,
        account: &str,
        tone: &Path,
        rtcp_mux: bool,
    ) -> Baresip {
        let ctrl_addr = SocketAddr::new(sip.ip(), free_tcp_port(sip.ip()));
        let ua = Ua {
            netns: None,
            sip,
            ctrl: ctrl_addr,
            net: "127.0.0.1".into(),
        };
        Baresip::launch(dir, &ua, rtp_ports, account, tone, rtcp_mux)
    }

    /// Starts baresip as `ua` says (its network namespace, SIP and control
    /// addresses); the rest as [`Baresip::start_at`].
    fn launch(
        dir: &Path,
        ua: &Ua,
        rtp_ports: &str,
        account: &str,
        tone: &Path,
        rtcp_mux: bool,
    ) -> Baresip {
        std::fs::create_dir_all(dir.join("rec")).expect("create the baresip dirs");
        let (sip, ctrl_addr) = (ua.sip, ua.ctrl);
        let config = template(
            "baresip.conf",
            &[
                ("SIP", sip.to_string()),
                ("CTRL", ctrl_addr.to_string()),
                ("TONE", tone.display().to_string()),
                ("RTP_PORTS", rtp_ports.into()),
                ("REC", dir.join("rec").display().to_string()),
                ("RTCP_MUX", if rtcp_mux { "yes" } else { "no" }.into()),
                ("NET", ua.net.clone()),
            ],
        );
        std::fs::write(dir.join("config"), config).expect("write the baresip config");
        std::fs::write(dir.join("accounts"), format!("{account}\n"))
            .expect("write the baresip accounts");
        let log = File::create(dir.join("baresip.log")).expect("create baresip.log");
        let mut cmd = match &ua.netns {
            // nsenter, not `ip netns exec`: it enters the network namespace
            // only, so it also runs where / is no mount point (a chroot).
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg("baresip");
                c
            }
            None => Command::new("baresip"),
        };
        let child = cmd
            .arg("-v") // what it does with the media
            .arg("-s") // SIP trace
            .arg("-f")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run baresip: {e}"));
        let mut child = Some(child);
        let mut ctrl = None;
        wait_until(WAIT, || {
            ctrl = TcpStream::connect(ctrl_addr).ok();
            ctrl.is_some()
                || child
                    .as_mut()
                    .is_some_and(|c| c.try_wait().ok().flatten().is_some())
        });
        let mut child = child.take().expect("the child");
        let Some(ctrl) = ctrl else {
            stop(&mut child);
            panic!(
                "baresip did not open its control socket {ctrl_addr}:\n{}",
                tail_file(&dir.join("baresip.log"), 40)
            );
        };
        let messages = Arc::new(Mutex::new(Vec::new()));
        let reader = ctrl.try_clone().expect("clone the control socket");
        let sink = Arc::clone(&messages);
        std::thread::spawn(move || read_netstrings(reader, &sink));
        Baresip {
            child,
            dir: dir.to_path_buf(),
            ctrl,
            messages,
            next_token: 0,
        }
    }

    /// Runs a command (a menu command: `dial`, `hold`, `resume`, `sndcode`,
    /// `hangup`, `audio_debug`) and returns its successful response.
    fn command(&mut self, command: &str, params: &str) -> Value {
        self.next_token += 1;
        let token = format!("t{}", self.next_token);
        let body =
            serde_json::json!({ "command": command, "params": params, "token": token }).to_string();
        write!(self.ctrl, "{}:{body},", body.len()).expect("write to baresip's control socket");
        let mut response = None;
        wait_until(WAIT, || {
            response = self.find(|m| m["response"] == true && m["token"] == token.as_str());
            response.is_some()
        });
        let response = response.unwrap_or_else(|| {
            panic!(
                "baresip did not answer `{command} {params}`\n{}",
                self.logs()
            )
        });
        assert_eq!(
            response["ok"],
            true,
            "baresip `{command} {params}`: {response}\n{}",
            self.logs()
        );
        response
    }

    /// How many RTP packets it received in the call (`audio_debug`: `rcvd=N`
    /// for each source).
    fn rtp_received(&mut self) -> u64 {
        let response = self.command("audio_debug", "");
        let text = response["data"].as_str().unwrap_or_default();
        text.split("rcvd=")
            .skip(1)
            .filter_map(|rest| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse::<u64>().ok()
            })
            .sum()
    }

    fn find(&self, want: impl Fn(&Value) -> bool) -> Option<Value> {
        let messages = self.messages.lock().unwrap_or_else(|e| e.into_inner());
        messages.iter().find(|m| want(m)).cloned()
    }

    /// How many call events of `kind` (`CALL_ESTABLISHED`, ...) it reported.
    fn events(&self, kind: &str) -> Vec<Value> {
        let messages = self.messages.lock().unwrap_or_else(|e| e.into_inner());
        messages
            .iter()
            .filter(|m| m["event"] == true && m["type"] == kind)
            .cloned()
            .collect()
    }

    /// Waits until it reported `count` events of `kind`.
    fn wait_events(&self, kind: &str, count: usize) -> Vec<Value> {
        wait_until(WAIT, || self.events(kind).len() >= count);
        let got = self.events(kind);
        assert!(
            got.len() >= count,
            "baresip reported {} {kind} events, not {count}\n{}",
            got.len(),
            self.logs()
        );
        got
    }

    /// What it received in the call, as sndfile dumps it (`dump-*-dec.wav`).
    fn received_wav(&self) -> PathBuf {
        std::fs::read_dir(self.dir.join("rec"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
            .unwrap_or_else(|| self.dir.join("rec/no-dump-yet-dec.wav"))
    }

    fn logs(&self) -> String {
        format!(
            "--- baresip ({}) ---\n{}",
            self.dir.display(),
            tail_file(&self.dir.join("baresip.log"), 80)
        )
    }
}

/// Reads ctrl_tcp's netstrings (`LEN:JSON,`) into `sink` until the socket closes.
fn read_netstrings(mut socket: TcpStream, sink: &Mutex<Vec<Value>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = socket.read(&mut chunk) {
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(colon) = buf.iter().position(|&b| b == b':') {
            let Some(len) = std::str::from_utf8(&buf[..colon])
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
            else {
                return; // not a netstring: stop reading
            };
            if buf.len() < colon + 1 + len + 1 {
                break;
            }
            if let Ok(v) = serde_json::from_slice::<Value>(&buf[colon + 1..colon + 1 + len]) {
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(v);
            }
            buf.drain(..colon + 1 + len + 1);
        }
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        stop(&mut self.child);
    }
}

// ----- linphonec -----

/// linphonec, auto-answering, driven on its stdin; its console and log output
/// (`-d 6`: every SIP message and call state) go to one file.
#[derive(Debug)]
struct Linphone {
    child: Child,
    stdin: ChildStdin,
    dir: PathBuf,
    /// Its SIP address (127.0.0.3).
    sip: SocketAddr,
}

impl Linphone {
    /// Starts linphonec in `dir` on `sip`, playing the WAV `tone` into calls and
    /// recording what it receives to `dir/received.wav`.
    fn start(dir: &Path, sip: SocketAddr, tone: &Path) -> Linphone {
        Linphone::start_with_rtp(dir, sip, "40100-40199", tone)
    }

    /// [`Linphone::start`] with its RTP on `rtp_ports`.
    fn start_with_rtp(dir: &Path, sip: SocketAddr, rtp_ports: &str, tone: &Path) -> Linphone {
        Linphone::launch(dir, sip, rtp_ports, tone, true)
    }

    /// Starts linphonec; `auto_answer`: it answers every call (`-a`), else
    /// it only rings.
    fn launch(
        dir: &Path,
        sip: SocketAddr,
        rtp_ports: &str,
        tone: &Path,
        auto_answer: bool,
    ) -> Linphone {
        let home = dir.join("home");
        // liblinphone stays in its startup state when it cannot create its
        // database here.
        std::fs::create_dir_all(home.join(".local/share/linphone"))
            .expect("create linphone's home");
        let rc = dir.join("linphonerc");
        let config = template(
            "linphonerc",
            &[
                ("BIND", sip.ip().to_string()),
                ("SIP_PORT", sip.port().to_string()),
                ("RTP_PORTS", rtp_ports.into()),
            ],
        );
        std::fs::write(&rc, config).expect("write the linphonerc");
        let log = File::create(dir.join("linphonec.log")).expect("create linphonec.log");
        let mut cmd = Command::new("linphonec");
        cmd.arg("-c").arg(&rc);
        if auto_answer {
            cmd.arg("-a"); // answer every call
        }
        let child = cmd
            .arg("-d")
            .arg("6")
            .env("HOME", &home)
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run linphonec: {e}"));
        let mut child = child;
        let stdin = child.stdin.take().expect("linphonec's stdin");
        let mut linphone = Linphone {
            child,
            stdin,
            dir: dir.to_path_buf(),
            sip,
        };
        linphone.type_line(&format!("play {}", tone.display()));
        linphone.type_line(&format!("record {}", linphone.received_wav().display()));
        linphone.type_line("soundcard use files");
        linphone.wait_log("start (SIP listening, files for sound)", |log| {
            log.contains("Creating listening point")
                && log.contains("Using wav files instead of soundcard.")
        });
        linphone
    }

    /// Registers at the SBC `registrar` as `user` with `password` (its
    /// `register` command: digest on the 401) and waits for the 200.
    fn register(&mut self, registrar: SocketAddr, user: &str, password: &str) {
        self.type_line(&format!(
            "register sip:{user}@{registrar} sip:{registrar} {password}"
        ));
        self.wait_log("registration", |log| {
            log.contains("to [LinphoneRegistrationOk]")
        });
    }

    /// Types a line on its console.
    fn type_line(&mut self, line: &str) {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .unwrap_or_else(|e| panic!("linphonec's stdin: {e}\n{}", self.logs()));
    }

    fn log(&self) -> String {
        read_lossy(&self.dir.join("linphonec.log"))
    }

    /// Waits until its output satisfies `ready`; panics naming `what` if not.
    fn wait_log(&self, what: &str, ready: impl Fn(&str) -> bool) {
        let ok = wait_until(WAIT, || ready(&self.log()));
        assert!(ok, "linphonec: no {what}\n{}", self.logs());
    }

    /// Waits until its calls moved from `from` to `to` `count` times.
    fn wait_transitions(&self, from: &str, to: &str, count: usize) {
        self.wait_log(&format!("call state {from} -> {to} (x{count})"), |log| {
            log.matches(&format!(
                "moving from state LinphoneCall{from} to LinphoneCall{to}"
            ))
            .count()
                >= count
        });
    }

    /// The DTMF digits it reported receiving, in order.
    fn digits_received(&self) -> String {
        self.log()
            .lines()
            .filter_map(|l| l.strip_prefix("Receiving tone "))
            .filter_map(|rest| rest.chars().next())
            .collect()
    }

    fn received_wav(&self) -> PathBuf {
        self.dir.join("received.wav")
    }

    fn logs(&self) -> String {
        let log = self.log();
        // The console lines and the SIP messages, without the media chatter.
        let interesting: Vec<&str> = log
            .lines()
            .filter(|l| {
                !l.starts_with("20") || l.contains("moving from state") || l.contains("-error-")
            })
            .collect();
        let start = interesting.len().saturating_sub(120);
        format!(
            "--- linphonec on {} ({}) ---\n{}",
            self.sip,
            self.dir.display(),
            interesting[start..].join("\n")
        )
    }
}

impl Drop for Linphone {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let quit = wait_until(Duration::from_secs(5), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !quit {
            stop(&mut self.child);
        }
    }
}

// ----- the tests -----

/// Both UAs of one call, the far end answering and baresip connected to it.
fn connect(
    work: &TempDir,
    name: &str,
    sbc: &Sbc,
    callee_sip: SocketAddr,
    caller_codec: &str,
    rtcp_mux: bool,
) -> (Baresip, Linphone) {
    let caller_tone = work.join("caller-440.wav");
    let callee_tone = work.join("callee-1000.wav");
    if !caller_tone.is_file() {
        // baresip takes its source at ausrc_srate; linphone resamples.
        write_tone(&caller_tone, 48_000, CALLER_HZ, TONE_SECS);
        write_tone(&callee_tone, 8_000, CALLEE_HZ, TONE_SECS);
    }
    let linphone = Linphone::start(
        &work.join(&format!("{name}-linphonec")),
        callee_sip,
        &callee_tone,
    );
    let mut baresip = Baresip::start(
        &work.join(&format!("{name}-baresip")),
        caller_codec,
        &caller_tone,
        rtcp_mux,
    );
    baresip.command("dial", &format!("sip:+15550100@{}", sbc.sip));
    baresip.wait_events("CALL_ESTABLISHED", 1);
    linphone.wait_transitions("Connected", "StreamsRunning", 1);
    (baresip, linphone)
}

/// Waits until each side's recording holds the other side's tone, and checks
/// that neither holds its own.
fn assert_audio_both_ways(baresip: &Baresip, linphone: &Linphone, when: &str) {
    let at_caller = wait_tone(&baresip.received_wav(), None, 0, CALLEE_HZ);
    let at_callee = wait_tone(&linphone.received_wav(), LINPHONE_REC, 0, CALLER_HZ);
    let logs = || format!("{}\n{}", baresip.logs(), linphone.logs());
    assert!(
        at_caller >= HEARD_MS,
        "{when}: baresip heard {at_caller} ms of the far end's {CALLEE_HZ} Hz, not {HEARD_MS}\n{}",
        logs()
    );
    assert!(
        at_callee >= HEARD_MS,
        "{when}: linphonec heard {at_callee} ms of the caller's {CALLER_HZ} Hz, not {HEARD_MS}\n{}",
        logs()
    );
    let echo_at_caller = Wav::read(&baresip.received_wav(), None).tone_ms(0, CALLER_HZ);
    let echo_at_callee = Wav::read(&linphone.received_wav(), LINPHONE_REC).tone_ms(0, CALLEE_HZ);
    assert_eq!(
        (echo_at_caller, echo_at_callee),
        (0, 0),
        "{when}: a UA got its own tone back (ms at baresip, at linphonec)"
    );
}

/// Hangs up from baresip and waits until both UAs saw the call end.
fn hang_up(baresip: &mut Baresip, linphone: &Linphone) {
    baresip.command("hangup", "");
    baresip.wait_events("CALL_CLOSED", 1);
    linphone.wait_transitions("StreamsRunning", "End", 1);
}

#[test]
fn baresip_and_linphone_talk_through_the_sbc() {
    let _serial = serial();
    require_user_agents();
    let work = TempDir::new("real-ua");
    let callee_sip = SocketAddr::new(lo(3), free_port(lo(3)));
    let sbc = Sbc::start(&SbcSpec::new("real-ua", rtp(30), config(callee_sip)));
    let media = |path: &str| sbc.metric("sbc_calls_media_total", &[&format!("path=\"{path}\"")]);

    // Call 1: baresip offers Opus only, linphonec takes PCMU only: transcoded.
    {
        let (mut baresip, linphone) =
            connect(&work, "opus", &sbc, callee_sip, "opus/48000/2", false);
        assert_audio_both_ways(&baresip, &linphone, "Opus <-> PCMU");

        // RTCP from real peers reaches the SBC (both UAs send reports every
        // few seconds).
        let rtcp_in = sbc.wait_metric("sbc_rtcp_packets_total", &["direction=\"in\""], WAIT, |v| {
            v > 0.0
        });
        assert!(rtcp_in > 0.0, "no RTCP reached the SBC\n{}", sbc.logs());

        // Hold: baresip's re-INVITE (sendonly) goes through the SBC to
        // linphonec, which is paused by it; then the resume.
        baresip.command("hold", "");
        linphone.wait_transitions("StreamsRunning", "PausedByRemote", 1);
        let log = linphone.log();
        assert!(
            log.contains("\na=sendonly") || log.contains("\na=inactive"),
            "linphonec got no a=sendonly (or inactive) offer\n{}",
            linphone.logs()
        );
        // On hold neither side sends (baresip 1.0 stops sending when it holds,
        // linphonec answered recvonly): what arrives from now on came after the
        // resume.
        let callee_heard = Wav::read(&linphone.received_wav(), LINPHONE_REC)
            .samples
            .len();
        let caller_rtp = baresip.rtp_received();
        baresip.command("resume", "");
        linphone.wait_transitions("PausedByRemote", "StreamsRunning", 1);
        let heard = wait_tone(
            &linphone.received_wav(),
            LINPHONE_REC,
            callee_heard,
            CALLER_HZ,
        );
        assert!(
            heard >= HEARD_MS,
            "after the resume linphonec heard {heard} ms of the caller's {CALLER_HZ} Hz\n{}\n{}",
            baresip.logs(),
            linphone.logs()
        );
        // baresip rebuilds its receive pipeline on the hold without the sndfile
        // recorder, so what it gets after the resume is counted in RTP packets
        // (50 a second): 2 s worth.
        let mut rtp = caller_rtp;
        wait_until(WAIT, || {
            rtp = baresip.rtp_received();
            rtp >= caller_rtp + 100
        });
        assert!(
            rtp >= caller_rtp + 100,
            "after the resume baresip received {} RTP packets, not 100\n{}",
            rtp - caller_rtp,
            baresip.logs()
        );
        assert_eq!(
            baresip.events("CALL_CLOSED").len(),
            0,
            "the call survived the hold"
        );

        hang_up(&mut baresip, &linphone);
    }
    let transcoded = sbc.wait_metric(
        "sbc_calls_media_total",
        &["path=\"transcoded\""],
        WAIT,
        |v| v >= 1.0,
    );
    assert_eq!(
        (transcoded, media("relayed"), media("mixed")),
        (1.0, 0.0, 0.0),
        "the Opus <-> PCMU call is counted transcoded\n{}",
        sbc.logs()
    );

    // Call 2: PCMU on both sides: relayed as it comes. DTMF both ways.
    {
        let (mut baresip, mut linphone) =
            connect(&work, "pcmu", &sbc, callee_sip, "PCMU/8000/1", false);
        assert_audio_both_ways(&baresip, &linphone, "PCMU <-> PCMU");

        // baresip -> linphonec, one digit at a time (each waits for the last to
        // arrive, so that no digit cuts another short).
        let sent = "4#";
        for (i, digit) in sent.chars().enumerate() {
            baresip.command("sndcode", &digit.to_string());
            linphone.wait_log(&format!("DTMF digit {digit}"), |_| {
                linphone.digits_received().len() > i
            });
        }
        assert_eq!(
            linphone.digits_received(),
            sent,
            "the digits linphonec received"
        );
        // linphonec -> baresip: a digit typed alone on its console is sent as DTMF.
        linphone.type_line("7");
        let dtmf = baresip.wait_events("CALL_DTMF_START", 1);
        assert_eq!(
            dtmf[0]["param"], "7",
            "the digit baresip received: {dtmf:?}"
        );

        hang_up(&mut baresip, &linphone);
    }
    let relayed = sbc.wait_metric("sbc_calls_media_total", &["path=\"relayed\""], WAIT, |v| {
        v >= 1.0
    });
    assert_eq!(
        (media("transcoded"), relayed, media("mixed")),
        (1.0, 1.0, 0.0),
        "the PCMU call is counted relayed\n{}",
        sbc.logs()
    );
    let m = sbc.metrics();
    assert_eq!(
        m.value("sbc_calls_answered_total", &[]),
        2.0,
        "{:?}",
        m.samples
    );
    assert_eq!(
        m.value("sbc_calls_ended_total", &["status=\"completed\""]),
        2.0,
        "{:?}",
        m.samples
    );
    sbc.assert_idle(IDLE);
}

/// DTMF from an Opus caller. baresip 1.0 offers `opus/48000/2` with
/// `telephone-event/8000` (a clock rate other than the codec's, which RFC 4733
/// section 2.1 discourages but UAs do): the SBC takes it (`sdp::answer_audio`
/// falls back to 8 kHz events), so the caller's digits reach the G.711 far end
/// through the transcoded call. baresip also muxes RTCP on its RTP port here
/// (`a=rtcp-mux`, RFC 5761), which the SBC reads as RTCP.
#[test]
fn dtmf_from_an_opus_caller_reaches_the_far_end() {
    let _serial = serial();
    require_user_agents();
    let work = TempDir::new("real-ua-opus-dtmf");
    let callee_sip = SocketAddr::new(lo(3), free_port(lo(3)));
    let sbc = Sbc::start(&SbcSpec::new(
        "real-ua-opus-dtmf",
        rtp(31),
        config(callee_sip),
    ));
    let (mut baresip, linphone) = connect(&work, "opus", &sbc, callee_sip, "opus/48000/2", true);
    baresip.command("sndcode", "5");
    let arrived = wait_until(Duration::from_secs(10), || {
        linphone.digits_received() == "5"
    });
    let answer = BufReader::new(File::open(baresip.dir.join("baresip.log")).expect("baresip.log"))
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.starts_with("m=audio") || l.starts_with("a=rtpmap"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        arrived,
        "linphonec received digits {:?}, not \"5\"; the SDP lines baresip saw \
         (its offer, then our answer):\n{answer}",
        linphone.digits_received()
    );
    // baresip offered a=rtcp-mux (RFC 5761) and we took it: its RTCP comes
    // on our RTP port and is read as RTCP, ours goes back on its RTP port.
    let sdp = read_lossy(&baresip.dir.join("baresip.log"));
    assert_eq!(
        sdp.matches("a=rtcp-mux").count(),
        2,
        "offered and answered:\n{answer}"
    );
    // Reports with a block on our stream from both peers (every ~5 s each):
    // three of them include at least one of baresip's.
    let reports = sbc.wait_metric(
        "sbc_rtcp_jitter_seconds_count",
        &[],
        Duration::from_secs(40),
        |v| v >= 3.0,
    );
    assert!(reports >= 3.0, "{reports} RTCP reports read");
    hang_up(&mut baresip, &linphone);
    // The CDR's RTCP figures name the caller's party (p-0, baresip's muxed
    // reports), not only linphone's (port + 1).
    let mut cdr = String::new();
    wait_until(Duration::from_secs(20), || {
        cdr = sbc
            .logs()
            .lines()
            .find(|l| l.contains("cdr call="))
            .unwrap_or_default()
            .to_string();
        !cdr.is_empty()
    });
    let rtcp = cdr.split(" rtcp=\"").nth(1).unwrap_or_default();
    assert!(rtcp.starts_with("p-0:") || rtcp.contains(",p-0:"), "{cdr}");
}

/// The SIP messages of baresip's trace (`-s`) in its `log`: (whether it
/// received it, i.e. it went to `me`; the message text).
fn sip_trace(log: &str, me: SocketAddr) -> Vec<(bool, String)> {
    log.split("\u{1b}[36;1m#\n")
        .skip(1)
        .filter_map(|block| {
            let block = block.split("\u{1b}[;m").next().unwrap_or_default();
            let (route, message) = block.split_once('\n')?;
            let to_us = route.trim_end().ends_with(&format!("-> {me}"));
            Some((to_us, message.trim_end().to_string()))
        })
        .collect()
}

/// The CDR line the SBC logged for its (only) call, once it is there.
fn cdr_line(sbc: &Sbc) -> String {
    let mut cdr = String::new();
    wait_until(Duration::from_secs(20), || {
        cdr = sbc
            .logs()
            .lines()
            .find(|l| l.contains("cdr call="))
            .unwrap_or_default()
            .to_string();
        !cdr.is_empty()
    });
    cdr
}

/// A blind transfer (RFC 3515 REFER, RFC 5589) by a real UA: the carrier's
/// caller (baresip at 127.0.0.2) calls +15550100, whose plan rings
/// `pstn:+15550199` through the trunk "pbx" (`accept_refer = true`) whose peer
/// is a second baresip (127.0.0.5, answering by itself): the far end. It
/// transfers the call with its `transfer` command to linphonec (127.0.0.3),
/// a plain `sip:` URI the SBC calls directly. The SBC answers the REFER 202,
/// tells baresip how it goes in NOTIFYs (sipfrag 100, then 200), connects the
/// caller to linphonec (each hears the other's tone) and releases baresip, the
/// referrer (`transferred` in the CDR).
#[test]
fn baresip_as_the_far_end_blind_transfers_the_call_with_refer() {
    let _serial = serial();
    require_user_agents();
    let work = TempDir::new("real-ua-refer");
    let far_sip = SocketAddr::new(lo(5), free_port(lo(5)));
    let target_sip = SocketAddr::new(lo(3), free_port(lo(3)));
    let toml = format!(
        "[[trunks]]\nname = \"carrier\"\nhost = \"carrier.test\"\npeers = [\"127.0.0.2:5060\"]\n\
         inbound = [\"127.0.0.2/32\"]\ncodecs = [\"PCMU\"]\n\n\
         [[trunks]]\nname = \"pbx\"\nhost = \"pbx.test\"\npeers = [\"{far_sip}\"]\n\
         codecs = [\"PCMU\"]\naccept_refer = true\n\n\
         [[numbers]]\nid = \"service\"\ne164 = \"+15550100\"\n\
         dial = [ {{ ring = [\"pstn:+15550199@pbx\"], timeout = \"20s\" }} ]\n"
    );
    let sbc = Sbc::start(&SbcSpec::new("real-ua-refer", rtp(32), toml));

    let caller_tone = work.join("caller-440.wav");
    let far_tone = work.join("far-700.wav");
    let target_tone = work.join("target-1000.wav");
    write_tone(&caller_tone, 48_000, CALLER_HZ, TONE_SECS);
    write_tone(&far_tone, 48_000, FAR_END_HZ, TONE_SECS);
    write_tone(&target_tone, 8_000, CALLEE_HZ, TONE_SECS);

    // C, the transfer target: linphonec, answering every call.
    let target = Linphone::start_with_rtp(
        &work.join("target-linphonec"),
        target_sip,
        "40400-40499",
        &target_tone,
    );
    // B, the far end: baresip answering by itself (answermode=auto).
    let mut far = Baresip::start_at(
        &work.join("far-baresip"),
        far_sip,
        "40300-40399",
        // baresip takes calls to its account's user only.
        &format!(
            "<sip:+15550199@{}>;regint=0;audio_codecs=PCMU/8000/1;answermode=auto",
            far_sip.ip()
        ),
        &far_tone,
        false,
    );
    // A, the carrier's caller.
    let caller_sip = SocketAddr::new(lo(2), free_port(lo(2)));
    let mut caller = Baresip::start_at(
        &work.join("caller-baresip"),
        caller_sip,
        "40200-40299",
        &format!(
            "<sip:carrier@{}>;regint=0;audio_codecs=PCMU/8000/1",
            caller_sip.ip()
        ),
        &caller_tone,
        false,
    );

    // A calls B through the SBC; they hear each other.
    caller.command("dial", &format!("sip:+15550100@{}", sbc.sip));
    caller.wait_events("CALL_ESTABLISHED", 1);
    far.wait_events("CALL_ESTABLISHED", 1);
    let heard = wait_tone(&caller.received_wav(), None, 0, FAR_END_HZ);
    assert!(
        heard >= HEARD_MS,
        "before the transfer the caller heard {heard} ms of the far end's {FAR_END_HZ} Hz\n{}\n{}",
        caller.logs(),
        far.logs()
    );
    let heard = wait_tone(&far.received_wav(), None, 0, CALLER_HZ);
    assert!(
        heard >= HEARD_MS,
        "before the transfer the far end heard {heard} ms of the caller's {CALLER_HZ} Hz\n{}\n{}",
        caller.logs(),
        far.logs()
    );
    let caller_heard = Wav::read(&caller.received_wav(), None).samples.len();

    // B transfers the call to C (blind: REFER, Refer-To the target's URI).
    let refer_to = format!("sip:transfer-target@{target_sip}");
    far.command("transfer", &refer_to);

    // C is called by the SBC and answers; A stays in its call.
    target.wait_transitions("Connected", "StreamsRunning", 1);
    let invite_line = format!("INVITE {refer_to} SIP/2.0");
    assert!(
        target.log().contains(&invite_line),
        "linphonec got no `{invite_line}`\n{}",
        target.logs()
    );
    // B's call ends (baresip closes it on the NOTIFY of 200, see below).
    let closed = far.wait_events("CALL_CLOSED", 1);
    let completed = sbc.wait_metric("sbc_transfers_total", &["state=\"completed\""], WAIT, |v| {
        v >= 1.0
    });
    let transfers: Vec<String> = sbc
        .metrics()
        .samples
        .into_iter()
        .filter(|(n, _, _)| n == "sbc_transfers_total")
        .map(|(n, l, v)| format!("{n}{{{l}}} {v}"))
        .collect();
    assert_eq!(completed, 1.0, "{transfers:?}\n{}", sbc.logs());

    // What baresip saw of its REFER (its SIP trace, `-s`): the 202, then
    // NOTIFYs of the `refer` event with message/sipfrag bodies, 100 Trying
    // (subscription active) and 200 OK (terminated).
    let trace = sip_trace(&read_lossy(&far.dir.join("baresip.log")), far_sip);
    let dump = || {
        trace
            .iter()
            .map(|(to_us, m)| format!("{}\n{m}", if *to_us { "<<<" } else { ">>>" }))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let header = |m: &str, name: &str| {
        m.lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let refer = trace
        .iter()
        .find(|(to_us, m)| !to_us && m.starts_with("REFER "))
        .unwrap_or_else(|| panic!("baresip sent no REFER:\n{}", dump()));
    assert_eq!(header(&refer.1, "Refer-To"), refer_to, "{}", refer.1);
    let refer_cseq = header(&refer.1, "CSeq");
    assert!(
        trace.iter().any(|(to_us, m)| *to_us
            && m.starts_with("SIP/2.0 202 ")
            && header(m, "CSeq") == refer_cseq),
        "no 202 for the REFER:\n{}",
        dump()
    );
    let notifies: Vec<&String> = trace
        .iter()
        .filter(|(to_us, m)| *to_us && m.starts_with("NOTIFY "))
        .map(|(_, m)| m)
        .collect();
    let frags: Vec<(String, String)> = notifies
        .iter()
        .map(|m| {
            assert!(header(m, "Event").starts_with("refer"), "{m}");
            assert!(
                header(m, "Content-Type").starts_with("message/sipfrag"),
                "{m}"
            );
            let body = m.split_once("\r\n\r\n").or_else(|| m.split_once("\n\n"));
            let frag = body.map_or("", |(_, b)| b.lines().next().unwrap_or_default());
            (frag.trim().to_string(), header(m, "Subscription-State"))
        })
        .collect();
    assert!(
        frags.len() >= 2
            && frags[0].0 == "SIP/2.0 100 Trying"
            && frags[0].1.starts_with("active")
            && frags
                .last()
                .is_some_and(|(f, s)| f == "SIP/2.0 200 OK" && s.starts_with("terminated")),
        "the NOTIFYs' sipfrags and Subscription-States: {frags:?}\n{}",
        dump()
    );
    // baresip closes the call itself on the sipfrag 200 (and sends BYE; the
    // SBC's BYE to it crosses that one).
    assert_eq!(closed[0]["param"], "Call transfered", "{closed:?}");

    // A and C hear each other; A's call was never closed.
    let heard = wait_tone(&caller.received_wav(), None, caller_heard, CALLEE_HZ);
    assert!(
        heard >= HEARD_MS,
        "after the transfer the caller heard {heard} ms of the target's {CALLEE_HZ} Hz\n{}\n{}",
        caller.logs(),
        target.logs()
    );
    let heard = wait_tone(&target.received_wav(), LINPHONE_REC, 0, CALLER_HZ);
    assert!(
        heard >= HEARD_MS,
        "the target heard {heard} ms of the caller's {CALLER_HZ} Hz\n{}\n{}",
        caller.logs(),
        target.logs()
    );
    assert_eq!(caller.events("CALL_CLOSED").len(), 0, "{}", caller.logs());

    hang_up(&mut caller, &target);
    let cdr = cdr_line(&sbc);
    eprintln!("{cdr}");
    let parties = cdr.split(" parties=\"").nth(1).unwrap_or_default();
    let parties: Vec<&str> = parties
        .split('"')
        .next()
        .unwrap_or_default()
        .split(',')
        .collect();
    let transferred: Vec<&&str> = parties
        .iter()
        .filter(|p| p.ends_with(":transferred"))
        .collect();
    assert!(
        transferred.len() == 1 && transferred[0].contains(":pstn:+15550199@pbx:"),
        "the far end (only) left transferred: {cdr}"
    );
    assert!(
        parties.iter().any(|p| p.contains(&format!(":{refer_to}:"))),
        "the target is a party: {cdr}"
    );
    let m = sbc.metrics();
    assert_eq!(
        (
            m.value("sbc_transfers_total", &["state=\"started\""]),
            m.value("sbc_transfers_total", &[]),
            m.value("sbc_calls_ended_total", &["status=\"completed\""]),
        ),
        (1.0, 2.0, 1.0),
        "one transfer started and completed, nothing else; the call completed: {:?}",
        m.samples
    );
    sbc.assert_idle(IDLE);
}

/// **A phone as an operator**: baresip registers to the SBC as alice's desk
/// phone (digest, `answermode=auto`); linphonec, now the carrier's caller at
/// 127.0.0.3, calls +15550100, whose `operators` step rings alice, who has no
/// browser: her phone answers and both hear each other. (It found that
/// baresip 1.0 refuses a 401 that offers SHA-256 besides MD5.)
#[test]
fn baresip_registered_as_an_operators_phone_takes_a_carrier_call_from_linphone() {
    let _serial = serial();
    require_user_agents();
    let work = TempDir::new("real-ua-phone");
    let a = sip_bridge::registrar::PhoneAccount::new("alice-desk", "alice", "sbc", "s3cret");
    let toml = format!(
        "[[trunks]]\nname = \"carrier\"\nhost = \"carrier.test\"\npeers = [\"127.0.0.9:5060\"]\n\
         inbound = [\"127.0.0.3/32\"]\ncodecs = [\"PCMU\"]\n\n\
         [[phones]]\nusername = \"alice-desk\"\noperator = \"alice\"\nnumbers = [\"service\"]\n\
         ha1_md5 = \"{}\"\nha1_sha256 = \"{}\"\n\n\
         [[numbers]]\nid = \"service\"\ne164 = \"+15550100\"\n\
         dial = [ {{ ring = [\"operators\"], timeout = \"20s\" }} ]\n",
        a.ha1_md5, a.ha1_sha256
    );
    let sbc = Sbc::start(&SbcSpec::new("real-ua-phone", rtp(63), toml));
    let caller_tone = work.join("caller-440.wav");
    let phone_tone = work.join("phone-1000.wav");
    write_tone(&caller_tone, 8_000, CALLER_HZ, TONE_SECS);
    write_tone(&phone_tone, 48_000, CALLEE_HZ, TONE_SECS);
    // The phone: SIP on 127.0.0.5, registering at the SBC.
    let (baresip, _) = desk_phone(&work, &sbc, &phone_tone);
    let registered = sbc.wait_metric("sbc_registrations_active", &[], WAIT, |v| v >= 1.0);
    assert_eq!(
        registered,
        1.0,
        "baresip did not register\n{}",
        baresip.logs()
    );
    // The carrier's caller: linphonec calls the number.
    let callee_sip = SocketAddr::new(lo(3), free_port(lo(3)));
    let mut linphone = Linphone::start(&work.join("caller"), callee_sip, &caller_tone);
    linphone.type_line(&format!("call sip:+15550100@{}", sbc.sip));
    baresip.wait_events("CALL_ESTABLISHED", 1);
    linphone.wait_transitions("Connected", "StreamsRunning", 1);
    let at_phone = wait_tone(&baresip.received_wav(), None, 0, CALLER_HZ);
    let at_caller = wait_tone(&linphone.received_wav(), LINPHONE_REC, 0, CALLEE_HZ);
    assert!(
        at_phone >= HEARD_MS && at_caller >= HEARD_MS,
        "the phone heard {at_phone} ms of the caller, the caller {at_caller} ms of the phone\n{}\n{}",
        baresip.logs(),
        linphone.logs()
    );
    // Still registered while it talks.
    assert_eq!(sbc.metric("sbc_registrations_active", &[]), 1.0);
    linphone.type_line("terminate");
    baresip.wait_events("CALL_CLOSED", 1);
}

/// Two phone accounts (alice's desk phone, bob's softphone) on number
/// `service`, whose `operators` step rings everyone online on it, and a trunk
/// whose inbound calls come from 127.0.0.2 and whose peer is `peer`.
fn phones_config(peer: SocketAddr) -> String {
    let desk = sip_bridge::registrar::PhoneAccount::new("alice-desk", "alice", "sbc", "s3cret");
    let soft = sip_bridge::registrar::PhoneAccount::new("bob-soft", "bob", "sbc", "s3cret2");
    let mut toml = format!(
        "[[trunks]]\nname = \"carrier\"\nhost = \"carrier.test\"\npeers = [\"{peer}\"]\n\
         inbound = [\"127.0.0.2/32\"]\ncodecs = [\"PCMU\"]\n\n\
         [[numbers]]\nid = \"service\"\ne164 = \"+15550100\"\n\
         dial = [ {{ ring = [\"operators\"], timeout = \"20s\" }} ]\n\n"
    );
    for a in [desk, soft] {
        toml += &format!(
            "[[phones]]\nusername = \"{}\"\noperator = \"{}\"\nnumbers = [\"service\"]\n\
             ha1_md5 = \"{}\"\nha1_sha256 = \"{}\"\n\n",
            a.username, a.operator, a.ha1_md5, a.ha1_sha256
        );
    }
    toml
}

/// baresip's account line for alice's desk phone (password `s3cret`),
/// answering by itself, PCMU.
fn desk_account(sbc: &Sbc) -> String {
    format!(
        "<sip:alice-desk@{}>;auth_pass=s3cret;regint=300;answermode=auto;audio_codecs=PCMU/8000/1",
        sbc.sip
    )
}

/// baresip as alice's desk phone (127.0.0.5), answering by itself, playing
/// `tone`, registered at the SBC.
fn desk_phone(work: &TempDir, sbc: &Sbc, tone: &Path) -> (Baresip, SocketAddr) {
    let sip = SocketAddr::new(lo(5), free_port(lo(5)));
    let account = desk_account(sbc);
    let phone = Baresip::start_at(
        &work.join("desk"),
        sip,
        "40200-40299",
        &account,
        tone,
        false,
    );
    (phone, sip)
}

/// Issue 22's race: a carrier's call (SIPp, 127.0.0.2) to `service` rings
/// alice in a browser (a headless operator on the SDK's WebSocket) and on her
/// desk phone (baresip), and bob on his softphone (linphonec, which only
/// rings). baresip answers first: the browser is told `taken_by_other`,
/// linphonec gets a CANCEL saying `Reason: SIP ;cause=200 ;text="Call
/// completed elsewhere"` (RFC 3326), so it shows "answered elsewhere", not a
/// missed call. Audio both ways: SIPp mirrors every RTP packet it gets
/// (`-rtp_echo`), so baresip's 1 kHz comes back to it through the carrier.
#[test]
fn a_carrier_call_rings_a_browser_and_two_phones_and_the_first_phone_to_answer_talks() {
    use integration_tests::operator::HeadlessOperator;
    let _serial = serial();
    require_user_agents();
    let work = TempDir::new("real-ua-race");
    let sbc = Sbc::start(&SbcSpec::new(
        "real-ua-race",
        rtp(66),
        phones_config("127.0.0.9:5060".parse().unwrap()),
    ));
    let phone_tone = work.join("phone-1000.wav");
    let soft_tone = work.join("soft-440.wav");
    write_tone(&phone_tone, 48_000, CALLEE_HZ, TONE_SECS);
    write_tone(&soft_tone, 8_000, CALLER_HZ, TONE_SECS);

    let browser = HeadlessOperator::online(sbc.http, "alice", &["service"]);
    let (mut desk, _) = desk_phone(&work, &sbc, &phone_tone);
    let soft_sip = SocketAddr::new(lo(3), free_port(lo(3)));
    let mut soft = Linphone::launch(
        &work.join("soft"),
        soft_sip,
        "40300-40399",
        &soft_tone,
        false,
    );
    soft.register(sbc.sip, "bob-soft", "s3cret2");
    let registered = sbc.wait_metric("sbc_registrations_active", &[], WAIT, |v| v >= 2.0);
    assert_eq!(registered, 2.0, "both phones registered\n{}", desk.logs());

    let mut carrier = echo_caller("race-caller", &sbc);
    desk.wait_events("CALL_ESTABLISHED", 1);
    // The browser rang and was told another took it.
    let rang = browser.wait("incoming", |m| m["type"] == "incoming");
    let ended = browser.wait("ended", |m| m["type"] == "ended");
    assert_eq!(ended["callId"], rang["callId"]);
    assert_eq!(ended["reason"], "taken_by_other", "{ended}");
    // The softphone rang and was cancelled as answered elsewhere.
    soft.wait_log("its CANCEL, completed elsewhere", |log| {
        log.contains("LinphoneCallIncomingReceived") && log.contains("Call completed elsewhere")
    });
    soft.wait_log("the cancelled call's end", |log| {
        log.contains("to LinphoneCallEnd") || log.contains("to LinphoneCallReleased")
    });
    assert!(
        !soft.log().contains("to LinphoneCallStreamsRunning"),
        "the softphone never talked\n{}",
        soft.logs()
    );
    // baresip's tone went to the carrier and came back.
    let heard = wait_tone(&desk.received_wav(), None, 0, CALLEE_HZ);
    assert!(
        heard >= HEARD_MS,
        "the desk phone heard {heard} ms of its own {CALLEE_HZ} Hz back from the carrier\n{}",
        desk.logs()
    );
    desk.command("hangup", "");
    desk.wait_events("CALL_CLOSED", 1);
    carrier.assert_success(WAIT);
    let cdr = cdr_line(&sbc);
    assert!(cdr.contains("answered_by=operator:alice"), "{cdr}");
}

/// SIPp at 127.0.0.2 calling +15550100 and sending back every RTP packet
/// it gets (`tests/sipp/caller_echo.xml` with `-rtp_echo`).
fn echo_caller(name: &str, sbc: &Sbc) -> integration_tests::sbc_process::Sipp {
    integration_tests::sbc_process::SippCmd::new(name, "caller_echo.xml", lo(2))
        .remote(sbc.sip)
        .service("+15550100")
        .calls(1)
        .timeout_secs(120)
        .flag("-rtp_echo")
        .spawn()
}

/// A registered phone places a call (issue 22): baresip, alice's desk phone,
/// dials +15557770; its INVITE is challenged (407) and, authenticated, goes
/// out through the trunk to its peer, linphonec at 127.0.0.3 (answering by
/// itself), showing alice's number +15550100, not the phone's name. Audio
/// both ways, then hold and resume (baresip's re-INVITEs reach linphonec) and
/// DTMF (RFC 4733) from the phone to the far end.
#[test]
fn a_registered_phone_dials_out_with_its_operators_number_holds_and_sends_dtmf() {
    let _serial = serial();
    require_user_agents();
    let work = TempDir::new("real-ua-dial-out");
    let far_sip = SocketAddr::new(lo(3), free_port(lo(3)));
    let sbc = Sbc::start(&SbcSpec::new(
        "real-ua-dial-out",
        rtp(67),
        phones_config(far_sip),
    ));
    let phone_tone = work.join("phone-440.wav");
    let far_tone = work.join("far-1000.wav");
    write_tone(&phone_tone, 48_000, CALLER_HZ, TONE_SECS);
    write_tone(&far_tone, 8_000, CALLEE_HZ, TONE_SECS);
    let far = Linphone::start(&work.join("far"), far_sip, &far_tone);
    let (mut desk, desk_sip) = desk_phone(&work, &sbc, &phone_tone);
    let registered = sbc.wait_metric("sbc_registrations_active", &[], WAIT, |v| v >= 1.0);
    assert_eq!(registered, 1.0, "baresip registered\n{}", desk.logs());

    desk.command("dial", &format!("sip:+15557770@{}", sbc.sip));
    desk.wait_events("CALL_ESTABLISHED", 1);
    far.wait_transitions("Connected", "StreamsRunning", 1);
    // Challenged, then through: the far end sees alice's number.
    let trace = sip_trace(&read_lossy(&desk.dir.join("baresip.log")), desk_sip);
    assert!(
        trace
            .iter()
            .any(|(to_us, m)| *to_us && m.starts_with("SIP/2.0 407")),
        "no 407 challenge\n{}",
        desk.logs()
    );
    let log = far.log();
    assert!(
        log.lines()
            .any(|l| l.starts_with("From:") && l.contains("sip:+15550100@")),
        "the far end did not see alice's number\n{}",
        far.logs()
    );
    assert_audio_both_ways(&desk, &far, "phone -> trunk");
    // Hold and resume from the phone reach the far end.
    desk.command("hold", "");
    far.wait_transitions("StreamsRunning", "PausedByRemote", 1);
    desk.command("resume", "");
    far.wait_transitions("PausedByRemote", "StreamsRunning", 1);
    // DTMF (RFC 4733) from the phone.
    desk.command("sndcode", "4");
    desk.command("sndcode", "2");
    let ok = wait_until(WAIT, || far.digits_received().contains("42"));
    assert!(
        ok,
        "the far end got digits {:?}, not 42\n{}",
        far.digits_received(),
        far.logs()
    );
    hang_up(&mut desk, &far);
    let cdr = cdr_line(&sbc);
    assert!(cdr.contains("from=\"+15550100\""), "{cdr}");
    assert!(cdr.contains("direction=outbound"), "{cdr}");
}

/// A phone's network behind NAT, for one test: namespace `nat<pid>` holding
/// the phone at `198.18.N.2` (a public-looking address, not a private one)
/// whose packets leave SNATed to `198.19.N.7`, as a home router's do; the
/// host is `198.18.N.1`. A stateful filter drops what was not asked for, so
/// nothing reaches the phone at the address it writes in its SIP and SDP:
/// only replies to what it sent come in. Gone (namespace, veth, route) when
/// dropped.
struct Nat {
    ns: String,
    host: std::net::IpAddr,
    inside: std::net::IpAddr,
    outside: std::net::IpAddr,
}

impl Nat {
    /// The phone's control port (baresip's ctrl_tcp), the only thing the
    /// host may open toward it.
    const CTRL: u16 = 4444;

    fn create() -> Nat {
        let id = std::process::id();
        let n = 20 + id % 200;
        let ns = format!("nat{id}");
        let (vh, vn) = (format!("nh{id}"), format!("nn{id}"));
        let host: std::net::IpAddr = format!("198.18.{n}.1").parse().unwrap();
        let inside: std::net::IpAddr = format!("198.18.{n}.2").parse().unwrap();
        let outside: std::net::IpAddr = format!("198.19.{n}.7").parse().unwrap();
        let run = |args: &[&str]| {
            let out = Command::new(args[0]).args(&args[1..]).output();
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => panic!(
                    "{}: {} (the NAT test needs root, iproute2 and nftables: tests/ci.sh \
                     installs them)",
                    args.join(" "),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => panic!("{}: {e}", args[0]),
            }
        };
        let nat = Nat {
            ns: ns.clone(),
            host,
            inside,
            outside,
        };
        run(&["ip", "netns", "add", &ns]);
        run(&[
            "ip", "link", "add", &vh, "type", "veth", "peer", "name", &vn,
        ]);
        run(&["ip", "link", "set", &vn, "netns", &ns]);
        run(&["ip", "addr", "add", &format!("{host}/24"), "dev", &vh]);
        run(&["ip", "link", "set", &vh, "up"]);
        let netns = format!("--net=/run/netns/{ns}");
        let inns = |args: &[&str]| {
            let mut all = vec!["nsenter", netns.as_str()];
            all.extend_from_slice(args);
            run(&all);
        };
        inns(&["ip", "addr", "add", &format!("{inside}/24"), "dev", &vn]);
        inns(&["ip", "link", "set", &vn, "up"]);
        inns(&["ip", "link", "set", "lo", "up"]);
        inns(&["ip", "route", "add", "default", "via", &host.to_string()]);
        // Replies to the NAT's outside address go back into the namespace.
        run(&[
            "ip",
            "route",
            "add",
            &format!("{outside}/32"),
            "via",
            &inside.to_string(),
        ]);
        let rules = format!(
            "table ip nat {{\n chain post {{\n  type nat hook postrouting priority 100;\n  \
             oifname \"{vn}\" snat to {outside}\n }}\n}}\n\
             table ip filter {{\n chain input {{\n  type filter hook input priority 0; policy drop;\n  \
             ct state established,related accept\n  iifname \"lo\" accept\n  \
             tcp dport {} accept\n }}\n}}\n",
            Nat::CTRL
        );
        let rules_file = std::env::temp_dir().join(format!("nat{id}.nft"));
        std::fs::write(&rules_file, rules).expect("write the nft rules");
        inns(&["nft", "-f", &rules_file.display().to_string()]);
        let _ = std::fs::remove_file(&rules_file);
        nat
    }
}

impl Drop for Nat {
    fn drop(&mut self) {
        // The veth pair and the route through it go with the namespace.
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip")
            .args(["route", "del", &format!("{}/32", self.outside)])
            .output();
    }
}

/// A phone behind NAT (issue 22): baresip registers from inside a network
/// namespace whose packets leave SNATed (198.18.N.2 -> 198.19.N.7); it writes
/// its inside address in its Contact and SDP, an address the SBC cannot reach
/// and that is not where its packets come from. The SBC keeps the address
/// the REGISTER came from (rport, RFC 3581) and rings the phone there; the
/// phone answers; its RTP latches by its SIP address (strict latching, a
/// carrier's rule, would drop it: it is neither the SDP's address nor a
/// private one) and the SBC's RTP goes back through the NAT. Audio both
/// ways: SIPp mirrors it (`-rtp_echo`), so baresip hears its own tone.
#[test]
fn a_phone_behind_nat_registers_is_rung_and_talks_both_ways() {
    let _serial = serial();
    require_user_agents();
    let nat = Nat::create();
    let work = TempDir::new("real-ua-nat");
    let mut spec = SbcSpec::new(
        "real-ua-nat",
        rtp(68),
        phones_config("127.0.0.9:5060".parse().unwrap()),
    );
    spec.ip = nat.host;
    let sbc = Sbc::start(&spec);
    let tone = work.join("phone-1000.wav");
    write_tone(&tone, 48_000, CALLEE_HZ, TONE_SECS);
    let ua = Ua {
        netns: Some(nat.ns.clone()),
        sip: SocketAddr::new(nat.inside, 5060),
        ctrl: SocketAddr::new(nat.inside, Nat::CTRL),
        net: nat.inside.to_string(),
    };
    let account = desk_account(&sbc);
    let mut phone = Baresip::launch(
        &work.join("phone"),
        &ua,
        "40000-40099",
        &account,
        &tone,
        false,
    );
    let registered = sbc.wait_metric("sbc_registrations_active", &[], WAIT, |v| v >= 1.0);
    assert_eq!(registered, 1.0, "the phone registered\n{}", phone.logs());
    // What it wrote is its inside address; where it came from, the NAT's.
    let log = read_lossy(&phone.dir.join("baresip.log"));
    assert!(
        log.contains(&format!("@{}:5060", nat.inside)),
        "its Contact names its inside address\n{}",
        phone.logs()
    );
    let mut carrier = echo_caller("nat-caller", &sbc);
    phone.wait_events("CALL_ESTABLISHED", 1);
    let heard = wait_tone(&phone.received_wav(), None, 0, CALLEE_HZ);
    assert!(
        heard >= HEARD_MS,
        "the phone behind NAT heard {heard} ms of its own {CALLEE_HZ} Hz back through the \
         carrier\n{}\n{}",
        phone.logs(),
        sbc.logs()
    );
    // Its INVITE went to the NAT's address, not the Contact's.
    let trace = sip_trace(&read_lossy(&phone.dir.join("baresip.log")), ua.sip);
    assert!(
        trace
            .iter()
            .any(|(to_us, m)| *to_us && m.starts_with("INVITE ")),
        "the INVITE reached the phone through the NAT\n{}",
        phone.logs()
    );
    phone.command("hangup", "");
    phone.wait_events("CALL_CLOSED", 1);
    carrier.assert_success(WAIT);
    let cdr = cdr_line(&sbc);
    assert!(cdr.contains("answered_by=operator:alice"), "{cdr}");
}

/// Issue 21 with a real carrier stack: linphonec calls node a, whose fork
/// bob answers on node b; a is killed; b adopts a's dialog with linphone
/// and re-INVITEs it (same Call-ID and tags, CSeq 100 higher, b's media
/// address). linphone takes it as an update of its call (a stack that saw
/// a stranger's request would answer 481), moves its audio to b, and later
/// ends the call on b's BYE.
#[test]
fn linphone_as_the_carrier_takes_the_survivors_re_invite_when_the_calls_owner_dies() {
    let _serial = serial();
    require_user_agents();
    let work = TempDir::new("real-ua-takeover");
    let redis = integration_tests::front::Redis::start(free_tcp_port(lo(1)));
    let node = |name: &str, n: u8, range: u16| SbcSpec {
        ip: lo(n),
        admin: true,
        ..SbcSpec::new(
            name,
            rtp(range),
            format!(
                "[cluster]\nnode = \"{name}\"\nredis_url = \"{}\"\n\
                 heartbeat = \"200ms\"\nlease = \"600ms\"\nredis_timeout = \"100ms\"\n\n\
                 [[trunks]]\nname = \"carrier\"\nhost = \"carrier.test\"\npeers = [\"127.0.0.9:5060\"]\n\
                 inbound = [\"127.0.0.3/32\"]\ncodecs = [\"PCMU\"]\n\n\
                 [[numbers]]\nid = \"service\"\ne164 = \"+15550100\"\n\
                 dial = [ {{ ring = [\"operators\"], timeout = \"20s\" }} ]\n",
                redis.url()
            ),
        )
    };
    let mut a = Sbc::start(&node("a", 37, 90));
    let b = Sbc::start(&node("b", 38, 91));
    let bob = integration_tests::operator::HeadlessOperator::online(b.http, "bob", &["service"]);
    let b_ready = wait_until(WAIT, || {
        integration_tests::sbc_process::http_get_at(a.admin.unwrap(), "/cluster")
            .is_ok_and(|v| v.contains("\"ready\":[\"service\"]"))
    });
    assert!(b_ready, "a never saw bob ready on b\n{}", a.logs());
    let caller_tone = work.join("caller-440.wav");
    write_tone(&caller_tone, 8_000, CALLER_HZ, TONE_SECS);
    let caller_sip = SocketAddr::new(lo(3), free_port(lo(3)));
    let mut linphone = Linphone::start(&work.join("caller"), caller_sip, &caller_tone);
    linphone.type_line(&format!("call sip:+15550100@{}", a.sip));
    let rung = bob.wait("incoming", |m| m["type"] == "incoming");
    let call = rung["callId"].as_str().unwrap().to_string();
    bob.accept(&call);
    linphone.wait_transitions("Connected", "StreamsRunning", 1);
    let anchored = wait_until(WAIT, || redis.cli(&["HLEN", "sbc:anchor:b"]).trim() == "1");
    assert!(anchored, "a left no anchor for b\n{}", a.logs());

    a.kill();
    linphone.wait_transitions("StreamsRunning", "UpdatedByRemote", 1);
    linphone.wait_log("its audio moved to b", |log| {
        log.contains(&format!("Change audio stream destination: RTP={}:", lo(38)))
    });
    linphone.wait_transitions("UpdatedByRemote", "StreamsRunning", 1);
    assert_eq!(
        b.wait_metric("sbc_cluster_calls_reanchored_total", &[], WAIT, |v| v
            >= 1.0),
        1.0
    );
    // bob hangs up on b: linphone gets b's BYE in the same dialog.
    bob.send(serde_json::json!({"type": "hangup", "callId": call}));
    linphone.wait_transitions("StreamsRunning", "End", 1);
    b.assert_idle(IDLE);
}
