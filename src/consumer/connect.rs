//! The first contact with the cluster, before anything else is set up: a TLS handshake that
//! fails (unknown CA, expired or mismatched certificate) or a refused SASL login would
//! otherwise be retried by every client forever, and the first lookup would time out
//! saying nothing about why.
//!
//! librdkafka says why only in the text of its error events and log lines (facility
//! `FAIL`); the error a request returns is a timeout. So the probe's client — a producer-type
//! client, whose `poll` hands error events with their text to the context — keeps the last
//! such failure, and the probe ends with it.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openssl::ssl::{HandshakeError, SslConnector, SslMethod};
use openssl::x509::X509VerifyResult;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

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
    let mut settings = config.admin();
    // Asking about one topic (not every topic of the cluster, which takes seconds on a
    // cluster with thousands) must not create it.
    settings
        .set("allow.auto.create.topics", "false")
        .set_log_level(RDKafkaLogLevel::Warning);
    let client: BaseProducer<FailureLog> = settings.create_with_context(FailureLog::default())?;
    let topic = config.topics.first().map(String::as_str);
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        let reached = client.client().fetch_metadata(topic, ATTEMPT).is_ok();
        // Error events reach the context's `error` only while the client is polled.
        client.poll(Duration::ZERO);
        if let Some(error) = client.context().refused() {
            return Err(explained(config, error));
        }
        if reached || Instant::now() >= deadline {
            return Ok(());
        }
    }
}

/// librdkafka says only "certificate verify failed": the same handshake made here, with the
/// same CA file, tells why (expired, not yet valid, unknown issuer, wrong host…).
fn explained(config: &ConsumerConfig, error: Error) -> Error {
    match error {
        Error::Connection { code, reason } if reason.contains("certificate verify failed") => {
            let reason = match verify_failure(config) {
                Some(why) => format!("{reason} [the broker's certificate: {why}]"),
                None => reason,
            };
            Error::Connection { code, reason }
        }
        other => other,
    }
}

/// Why the first bootstrap server's certificate fails verification, if it does.
fn verify_failure(config: &ConsumerConfig) -> Option<String> {
    let server = config.bootstrap_servers.split(',').next()?.trim();
    let server = server.rsplit("://").next()?;
    let (host, _) = server.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let address = server.to_socket_addrs().ok()?.next()?;
    let mut builder = SslConnector::builder(SslMethod::tls_client()).ok()?;
    match config.client_property("ssl.ca.location") {
        Some(ca) => builder.set_ca_file(ca).ok()?,
        None => builder.set_default_verify_paths().ok()?,
    }
    let stream = TcpStream::connect_timeout(&address, ATTEMPT).ok()?;
    stream.set_read_timeout(Some(ATTEMPT)).ok()?;
    match builder.build().connect(host, stream) {
        Err(HandshakeError::Failure(handshake)) => {
            let result = handshake.ssl().verify_result();
            (result != X509VerifyResult::OK).then(|| result.error_string().to_string())
        }
        _ => None,
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
        let last = self
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
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

impl FailureLog {
    fn keep(&self, failure: &str) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(failure.to_string());
    }
}

impl ClientContext for FailureLog {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if fac == "FAIL" && is_problem(level) {
            self.keep(log_message);
        }
        tracing::debug!(target: "librdkafka", fac, "{log_message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::SSL | RDKafkaErrorCode::Authentication) => {
                self.keep(&format!("{error}: {reason}"))
            }
            _ => tracing::debug!(target: "librdkafka", %error, "{reason}"),
        }
    }
}

impl ProducerContext for FailureLog {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

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
