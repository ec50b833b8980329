//! `gorgias-sim`: the Gorgias simulator as a program, for scripts, compose and benchmarks.

use std::io::Write as _;

use clap::Parser;
use gorgias_sim::{Simulator, cli::Args};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listen = args.listen;
    let config = args.config().map_err(anyhow::Error::msg)?;
    let sim = Simulator::spawn(config, listen).await?;
    println!("listening on http://{}", sim.addr());
    std::io::stdout().flush()?;
    stopped().await;
    Ok(())
}

/// Ctrl-C or SIGTERM (how compose and scripts stop it).
async fn stopped() {
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
