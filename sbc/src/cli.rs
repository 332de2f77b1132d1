//! Command line: `sbc media transcode ...` (more commands come with the SBC).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use media_core::codec::Codec;

use crate::media::transcode::{TranscodeOptions, transcode_wav};

/// SIP/WebRTC session border controller.
#[derive(Parser, Debug)]
#[command(
    name = "sbc",
    version,
    about,
    subcommand_required = true,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Media tools.
    Media {
        #[command(subcommand)]
        command: MediaCommand,
    },
}

#[derive(Subcommand, Debug)]
enum MediaCommand {
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
    match cli.command {
        Command::Media {
            command:
                MediaCommand::Transcode {
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
