//! The stop signals operators send, as a future to pass to
//! [`StatefulConsumer::run`](crate::StatefulConsumer::run).

/// Resolves when the process is asked to stop: SIGINT (Ctrl-C) or SIGTERM (what
/// Kubernetes, systemd and `docker stop` send before they kill). Passed to
/// [`run`](crate::StatefulConsumer::run), it makes a routine deploy a graceful shutdown:
/// in-flight records finish, state is flushed, offsets are committed, and a static member
/// keeps its partitions for its restart, which then restores nothing.
///
/// Keep the orchestrator's grace period (Kubernetes' `terminationGracePeriodSeconds`,
/// 30 s by default) above `revoke_timeout + flush_timeout`.
///
/// ```no_run
/// # async fn demo(consumer: kafka_stateful::StatefulConsumer<kafka_stateful::codec::Utf8, kafka_stateful::codec::Utf8, impl kafka_stateful::Handler<String, String>>) -> kafka_stateful::Result<()> {
/// consumer.run(kafka_stateful::shutdown_signal()).await
/// # }
/// ```
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
                tracing::info!("stop signal received: shutting down gracefully");
                return;
            }
            Err(error) => tracing::warn!(%error, "cannot listen for SIGTERM; Ctrl-C only"),
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("stop signal received: shutting down gracefully");
}
