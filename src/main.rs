//! `gorgias-proxy`: serve, `--sandbox`, or `healthcheck`. Everything else lives in the library.

use clap::Parser;
use gorgias_proxy::app::{Application, shutdown_signal};
use gorgias_proxy::config::{Cli, Command};
use gorgias_proxy::{commands, sandbox, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // A missing .env is the normal case in containers.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    if let Some(Command::Healthcheck { url }) = &cli.command {
        std::process::exit(commands::healthcheck(url.clone(), cli.listen).await);
    }
    telemetry::init(
        telemetry::LogFormat::from_setting(cli.log_format.as_deref()),
        "info,gorgias_proxy=info",
    );
    let is_sandbox = cli.sandbox;
    let mut config = cli.into_config()?;
    let _sim = sandbox::attach_if(is_sandbox, &mut config).await?;
    let app = Application::build(config).await?;
    tracing::info!(addr = %app.local_addr()?, "gorgias-proxy listening");
    app.run_until_stopped(shutdown_signal()).await
}
