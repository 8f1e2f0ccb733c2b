//! `proxy-rhai`: run, test, check and document proxy-rhai scripts on a laptop, with no proxy.
//!
//! Every subcommand runs the plugin's own code in the host emulator. Errors are one line on
//! stderr (exit status 2); `--help` explains each subcommand.

#[cfg(not(target_arch = "wasm32"))]
mod cli;

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

/// The command is native only: the wasm build is the plugin (`--lib`).
#[cfg(target_arch = "wasm32")]
fn main() {}
