//! The `outbox-relay` binary: parses the command line and hands off to the
//! library. Errors reach the user through anyhow, one line each.

use clap::Parser;
use outbox_relay::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { .. } => anyhow::bail!(
            "`outbox-relay run` is not available in this build yet: the pipeline has not landed \
             (see the README's status section)"
        ),
    }
}
