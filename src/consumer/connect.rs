//! The first contact with the cluster, before anything else is set up: a TLS handshake that
//! fails (unknown CA, expired or mismatched certificate) or a refused SASL login would
//! otherwise be retried by every client forever, and the first lookup would time out
//! saying nothing about why.
//!
//! librdkafka says why only in its log (facility `FAIL`); the error a request returns is
//! a timeout. So the probe's client keeps the last such line, and a lookup that fails after
//! one names it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};

use crate::config::ConsumerConfig;
use crate::error::Error;

/// How long to keep trying to reach the cluster (a broker restarting answers within it).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// One metadata request; short, so a handshake failure is noticed soon after it is logged.
const ATTEMPT: Duration = Duration::from_secs(1);

/// Reaches the cluster once with the consumer's client settings. `Err(Error::Connection)`
/// when a TLS handshake or an authentication failed; other failures (a broker not up yet)
/// are left to the lookups that follow, which report them as they do today.
pub(crate) fn check_connection(config: &ConsumerConfig) -> Result<(), Error> {
    let client: BaseConsumer<FailureLog> =
        config.admin().create_with_context(FailureLog::default())?;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        let reached = client.fetch_metadata(None, ATTEMPT).is_ok();
        if let Some(error) = client.context().refused() {
            return Err(error);
        }
        if reached || Instant::now() >= deadline {
            return Ok(());
        }
    }
}

/// A client context that logs like the default one and keeps the last connection failure.
#[derive(Default)]
struct FailureLog {
    last: Mutex<Option<String>>,
}

impl FailureLog {
    /// The failure, when it is one a retry cannot heal.
    fn refused(&self) -> Option<Error> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
        refusal(&last)
    }
}

/// A log level that reports a problem (warning or worse).
pub(crate) fn is_problem(level: RDKafkaLogLevel) -> bool {
    !matches!(
        level,
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info | RDKafkaLogLevel::Debug
    )
}

/// Judges a librdkafka `FAIL` log line: TLS and SASL failures end the consumer.
pub(crate) fn refusal(line: &str) -> Option<Error> {
    let code = if line.contains("SSL") || line.contains("certificate") {
        "Ssl"
    } else if line.contains("SASL") || line.contains("uthentication") {
        "Authentication"
    } else {
        return None;
    };
    Some(Error::Connection {
        code: code.to_string(),
        reason: line.to_string(),
    })
}

impl ClientContext for FailureLog {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if fac == "FAIL" && is_problem(level) {
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(log_message.to_string());
        }
        tracing::debug!(target: "librdkafka", fac, "{log_message}");
    }
}

impl ConsumerContext for FailureLog {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_and_sasl_failures_are_refusals_and_a_refused_connection_is_not() {
        let tls = "ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: error:0A000086:SSL \
                   routines::certificate verify failed: broker certificate could not be verified";
        assert!(matches!(refusal(tls), Some(Error::Connection { code, .. }) if code == "Ssl"));
        let sasl = "sasl_ssl://127.0.0.1:9094/bootstrap: SASL authentication error: \
                    Authentication failed during authentication due to invalid credentials";
        assert!(
            matches!(refusal(sasl), Some(Error::Connection { code, .. }) if code == "Authentication")
        );
        let refused = "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: \
                       Connection refused (after 0ms in state CONNECT)";
        assert!(refusal(refused).is_none());
    }
}
