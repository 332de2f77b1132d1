//! The `sbc` binary: a thin shell over the `sbc` library.

use std::process::ExitCode;

fn main() -> ExitCode {
    sbc::cli::run(std::env::args_os())
}
