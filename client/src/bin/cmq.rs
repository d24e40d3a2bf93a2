//! `cmq`: command-line client for the cmq broker. `cmq --help` lists the
//! subcommands; every flag and its default is documented in the help.

// The binary's root is `src/bin/cmq.rs` (so Cargo finds it by name); its
// modules live in `src/bin/cmq/`.
#[path = "cmq/args.rs"]
mod args;
#[path = "cmq/batch.rs"]
mod batch;
#[path = "cmq/body.rs"]
mod body;
#[path = "cmq/cluster.rs"]
mod cluster;
#[path = "cmq/commands.rs"]
mod commands;
#[path = "cmq/keys.rs"]
mod keys;
#[path = "cmq/render.rs"]
mod render;
#[path = "cmq/time.rs"]
mod time;
#[path = "cmq/tls.rs"]
mod tls;
#[path = "cmq/top.rs"]
mod top;

use std::io::Write;
use std::process::ExitCode;

use cmq_client::ClientError;

use crate::render::{client_error_name, ErrorJson};

fn main() -> ExitCode {
    let cli = args::parse();
    match commands::run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            report(&err, cli.json);
            ExitCode::FAILURE
        }
    }
}

/// stderr always gets `error: ...`; with --json stdout also gets the error
/// as an object, so a script reading stdout alone still learns what failed.
fn report(err: &anyhow::Error, json: bool) {
    eprintln!("error: {err:#}");
    if !json {
        return;
    }
    let body = match err.downcast_ref::<ClientError>() {
        Some(ClientError::Server { code, message }) => {
            ErrorJson { code: Some(code.0), name: code.name(), message: message.clone() }
        }
        Some(e) => ErrorJson { code: e.code().map(|c| c.0), name: client_error_name(e), message: format!("{err:#}") },
        None if err.downcast_ref::<std::io::Error>().is_some() => {
            ErrorJson { code: None, name: "IO_ERROR", message: format!("{err:#}") }
        }
        None => ErrorJson { code: None, name: "CLIENT_ERROR", message: format!("{err:#}") },
    };
    let mut stdout = std::io::stdout().lock();
    // Nothing sensible is left to do if stdout itself is gone.
    let _ = serde_json::to_writer(&mut stdout, &body);
    let _ = writeln!(stdout);
}
