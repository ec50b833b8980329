//! `--sandbox`: the simulator started inside the service (feature `sandbox`, default on).

use crate::config::Config;

/// What keeps the sandbox's simulator running; drop it to stop it.
#[cfg(feature = "sandbox")]
pub type Guard = gorgias_sim::Simulator;
/// Without the `sandbox` feature there is no simulator to keep.
#[cfg(not(feature = "sandbox"))]
pub type Guard = ();

/// Starts the simulator and points `config` at it when `sandbox` is set. Without the feature,
/// `--sandbox` was already refused by the config, so this does nothing.
///
/// # Errors
/// When no loopback port can be bound.
pub async fn attach_if(sandbox: bool, config: &mut Config) -> std::io::Result<Option<Guard>> {
    #[cfg(feature = "sandbox")]
    if sandbox {
        return attach_simulator(config).await.map(Some);
    }
    let _ = (sandbox, config);
    Ok(None)
}

/// Starts an in-process simulator on a free loopback port and points `config` at it.
///
/// # Errors
/// When no loopback port can be bound.
#[cfg(feature = "sandbox")]
pub async fn attach_simulator(config: &mut Config) -> std::io::Result<Guard> {
    let sim = gorgias_sim::Simulator::spawn(
        gorgias_sim::SimConfig {
            // The sandbox is for trying the service, not for meeting Gorgias's rate limit.
            rate_limit: None,
            ..gorgias_sim::SimConfig::default()
        },
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await?;
    config.gorgias.base_url = sim.url();
    config.gorgias.rate_limit = None;
    config.allow_unauthenticated = true;
    tracing::warn!(
        simulator = %sim.url(),
        "SANDBOX MODE: tickets go to an in-memory Gorgias simulator, not to Gorgias; inbound auth is off"
    );
    Ok(sim)
}
