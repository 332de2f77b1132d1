//! Command line. `sbc` alone runs the embedded demo on loopback; `sbc --config
//! FILE` runs a deployment; the subcommands are tools.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use media_core::codec::Codec;

use crate::tools::transcode::{TranscodeOptions, transcode_wav};

/// SIP/WebRTC session border controller. Without arguments it runs the embedded
/// demo configuration on loopback (open the printed URL).
#[derive(Parser, Debug)]
#[command(name = "sbc", version, about)]
pub struct Cli {
    /// Run with this configuration file (see sbc/sbc.example.toml).
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// On SIGTERM/SIGINT, let calls finish for this long before ending them.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, global = true)]
    drain: u64,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a config file and the files it names (token secret, TLS key and
    /// certificate) without starting anything.
    CheckConfig {
        /// The config file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print the SHA-256 of an API key, for `[[auth.api_keys]] sha256`.
    HashKey {
        /// The API key.
        key: String,
    },
    /// Media tools.
    Media {
        #[command(subcommand)]
        command: AudioTool,
    },
}

#[derive(Subcommand, Debug)]
// The `sbc media` tools: offline audio, not the bridge's per-call `MediaCommand`s.
enum AudioTool {
    /// Run a WAV file through encode -> (seeded random packet loss) -> decode with
    /// concealment -> WAV at the input's rate, to hear what the media chain does.
    Transcode {
        /// Input WAV: 16-bit PCM, mono, 8/16/24/48 kHz.
        #[arg(long = "in", value_name = "IN.wav")]
        input: PathBuf,
        /// Output WAV (same rate and length as the input).
        #[arg(long = "out", value_name = "OUT.wav")]
        output: PathBuf,
        /// Codec on the wire.
        #[arg(long, value_enum)]
        codec: CodecArg,
        /// Opus bitrate in bits/s (default 32000).
        #[arg(long, value_name = "BPS")]
        bitrate: Option<u32>,
        /// Random packet loss in percent (0-100).
        #[arg(long, value_name = "PERCENT", default_value_t = 0.0)]
        loss: f64,
        /// Seed of the loss pattern.
        #[arg(long, value_name = "N", default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CodecArg {
    Pcmu,
    Pcma,
    Opus,
}

impl From<CodecArg> for Codec {
    fn from(c: CodecArg) -> Codec {
        match c {
            CodecArg::Pcmu => Codec::Pcmu,
            CodecArg::Pcma => Codec::Pcma,
            CodecArg::Opus => Codec::Opus,
        }
    }
}

/// Parses `args` and runs the command.
pub fn run(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let command = match cli.command {
        None => {
            let cfg = match &cli.config {
                Some(path) => match crate::config::SbcConfig::load(path) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::from(2);
                    }
                },
                None => crate::config::SbcConfig::demo(),
            };
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("sbc: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            return match rt.block_on(crate::run::run(
                cfg,
                std::time::Duration::from_secs(cli.drain),
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sbc: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(c) => c,
    };
    match command {
        Command::CheckConfig { file } => match crate::config::check_config_file(&file) {
            Ok(cfg) => {
                for w in cfg.warnings() {
                    eprintln!("warning: {w}");
                }
                println!("ok: {}", cfg.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::HashKey { key } => {
            println!("{}", sip_bridge::token::hash_api_key(&key));
            ExitCode::SUCCESS
        }
        Command::Media {
            command:
                AudioTool::Transcode {
                    input,
                    output,
                    codec,
                    bitrate,
                    loss,
                    seed,
                },
        } => {
            let opts = TranscodeOptions {
                codec: codec.into(),
                bitrate,
                loss_percent: loss,
                seed,
            };
            match transcode_wav(&input, &output, &opts) {
                Ok(report) => {
                    println!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sbc media transcode: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
