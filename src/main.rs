//! `gorgias-proxy`: serve, `--sandbox`, `healthcheck`, `check` or `connections rekey`. Everything else lives in the
//! library.

use clap::Parser;
use gorgias_proxy::app::{Application, shutdown_signal};
use gorgias_proxy::config::{Cli, Command, ConnectionsCommand};
use gorgias_proxy::{commands, sandbox, telemetry, traces};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // A missing .env is the normal case in containers.
    let _ = dotenvy::dotenv();
    let mut cli = Cli::parse();
    if let Some(Command::Healthcheck { url }) = &cli.command {
        std::process::exit(commands::healthcheck(url.clone(), cli.listen).await);
    }
    if let Some(Command::Check { json }) = cli.command {
        // The preflight serves nothing, so the inbound-token rule (refuse to start without
        // API_TOKENS) does not apply to it; every Gorgias setting is read as the service would.
        // No telemetry: its report is its output, and nothing else may reach stdout.
        cli.allow_unauthenticated = true;
        let is_sandbox = cli.sandbox;
        let mut config = match cli.into_config() {
            Ok(c) => c,
            Err(e) => std::process::exit(commands::check_config_error(&e.to_string(), json)),
        };
        let _sim = match sandbox::attach_if(is_sandbox, &mut config).await {
            Ok(sim) => sim,
            Err(e) => std::process::exit(commands::check_config_error(&e.to_string(), json)),
        };
        std::process::exit(commands::check(&config, json).await);
    }
    if let Some(Command::Connections {
        action: ConnectionsCommand::Rekey,
    }) = cli.command
    {
        cli.allow_unauthenticated = true;
        let config = match cli.into_config() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("Error: {e}");
                std::process::exit(2);
            }
        };
        std::process::exit(commands::rekey(&config).await);
    }
    let traces = traces::from_env().map_err(anyhow::Error::msg)?;
    telemetry::init(
        telemetry::LogFormat::from_setting(cli.log_format.as_deref()),
        "info,gorgias_proxy=info",
        traces.as_ref(),
    );
    let is_sandbox = cli.sandbox;
    let mut config = cli.into_config()?;
    let _sim = sandbox::attach_if(is_sandbox, &mut config).await?;
    let app = Application::build(config).await?;
    tracing::info!(addr = %app.local_addr()?, "gorgias-proxy listening");
    let served = app.run_until_stopped(shutdown_signal()).await;
    if let Some(traces) = traces {
        // Bounded: a collector that hangs must not hold the exit.
        traces.shutdown(std::time::Duration::from_secs(2));
    }
    served
}
