//! The sink's errors, split the way an operator needs them: what failed,
//! why, and what to do.
//!
//! - [`LinkError`]: the broker link failed (connection refused, lost, stalled,
//!   channel closed, topology refused). [`LinkError::is_permanent`] says
//!   whether waiting and retrying can help or an operator must act; the
//!   reconnect loop retries both (an operator may fix the broker while the
//!   relay waits) but logs permanent ones louder.
//! - [`ConfigError`]: the configuration cannot work; nothing was attempted.
//! - [`MessageError`]: one message cannot be published as it is (a name over
//!   255 bytes, a body over the size limit); the caller dead-letters it.
//! - [`PublishError`]: why [`crate::Publisher::publish`] refused a message.
//! - [`SinkError`]: why [`crate::Publisher::connect`] or
//!   [`crate::Publisher::close`] failed.
//!
//! No error here ever holds a broker password: broker addresses appear only
//! in their redacted form (see [`crate::BrokerUrl`]).

use std::time::Duration;

/// The broker link failed. Cloneable: one link failure fails every message
/// that was in flight on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// No TCP/TLS connection to the broker (refused, unresolvable, TLS
    /// handshake failed).
    #[error(
        "cannot connect to the broker at {broker}: {cause}; check that RabbitMQ is running \
         there and that the URL's host, port and scheme (amqp/amqps) are right"
    )]
    Unreachable {
        /// The broker, redacted.
        broker: String,
        /// The cause.
        cause: String,
    },
    /// Connecting took longer than the configured connect timeout.
    #[error(
        "connecting to the broker at {broker} took longer than {timeout:?}; check the network \
         path to it, or raise the connect timeout"
    )]
    ConnectTimeout {
        /// The broker, redacted.
        broker: String,
        /// The configured connect timeout.
        timeout: Duration,
    },
    /// The broker refused the login or the virtual host.
    #[error(
        "the broker at {broker} refused user '{user}' ({reply}); check the user name, password \
         and virtual host in the broker URL and the user's permissions"
    )]
    AccessRefused {
        /// The broker, redacted.
        broker: String,
        /// The user name (never the password).
        user: String,
        /// What the broker said.
        reply: String,
    },
    /// An established connection failed (reset, closed by the broker).
    #[error(
        "lost the connection to the broker at {broker}: {cause}; unconfirmed messages are not \
         known to be delivered"
    )]
    ConnectionLost {
        /// The broker, redacted.
        broker: String,
        /// The cause.
        cause: String,
    },
    /// Heartbeats stopped arriving: the link stalled.
    #[error(
        "no heartbeat from the broker at {broker} within {timeout:?}: the link stalled (network \
         path down or broker hung); unconfirmed messages are not known to be delivered"
    )]
    HeartbeatTimeout {
        /// The broker, redacted.
        broker: String,
        /// The configured heartbeat timeout.
        timeout: Duration,
    },
    /// A message named an exchange the broker does not have; the broker
    /// closed the publishing channel, failing everything in flight on it.
    #[error(
        "exchange '{exchange}' does not exist on the broker ({reply_text}); the broker closed \
         the publishing channel: declare the exchange or fix the messages' exchange"
    )]
    ExchangeNotFound {
        /// The missing exchange.
        exchange: String,
        /// What the broker said.
        reply_text: String,
    },
    /// The broker closed the publishing channel for another reason.
    #[error("the broker closed the publishing channel: {reply_code} {reply_text}")]
    ChannelClosed {
        /// The AMQP reply code.
        reply_code: u16,
        /// What the broker said.
        reply_text: String,
    },
    /// The broker closed the whole connection over something the relay
    /// sent (a frame or method it refused: FRAME_ERROR, SYNTAX_ERROR,
    /// COMMAND_INVALID, UNEXPECTED_FRAME), as opposed to a shutdown or a
    /// network failure.
    #[error("the broker closed the connection over what was sent: {reply_code} {reply_text}")]
    Rejected {
        /// The AMQP reply code.
        reply_code: u16,
        /// What the broker said.
        reply_text: String,
    },
    /// Declaring or checking the exchange, dead-letter exchange or queue
    /// failed.
    #[error("{what} was refused by the broker ({reply}); {fix}")]
    Topology {
        /// What was being declared or checked.
        what: String,
        /// What the broker said.
        reply: String,
        /// What the operator can do.
        fix: &'static str,
    },
    /// The broker returned a message that matches nothing in flight: the
    /// sink can no longer tell which messages were delivered, so it treats
    /// the channel as lost.
    #[error(
        "the broker returned a message (exchange '{exchange}', routing key '{routing_key}') that \
         matches no message in flight; the channel was reset and its unconfirmed messages count \
         as not delivered"
    )]
    UnmatchedReturn {
        /// The returned message's exchange.
        exchange: String,
        /// The returned message's routing key.
        routing_key: String,
    },
    /// Any other client-side failure of the link.
    #[error("the link to the broker at {broker} failed: {cause}")]
    Other {
        /// The broker, redacted.
        broker: String,
        /// The cause.
        cause: String,
    },
    /// The broker nacked message `seq` (a queue refused it): publishing
    /// halts until the caller rewinds, and what was sent after it fails
    /// with this cause.
    #[error(
        "the broker nacked message {seq} (a queue refused it); what was sent after it is held \
         back until the caller sends it again"
    )]
    Nacked {
        /// The refused message.
        seq: u64,
    },
    /// The sink was closed before the message was confirmed.
    #[error("the sink was closed before the broker confirmed the message")]
    Closed,
}

impl LinkError {
    /// True when retrying cannot help until an operator changes something
    /// (credentials, permissions, topology, configuration).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            LinkError::AccessRefused { .. }
                | LinkError::Topology { .. }
                | LinkError::ExchangeNotFound { .. }
        )
    }

    /// True when the broker ended the channel or connection because of a
    /// message it was sent (an exchange that does not exist, a property it
    /// refuses, a frame it cannot take), not because the link or the broker
    /// failed. Publishing the same message again fails the same way: the
    /// caller should find the message and set it aside after a bounded
    /// number of attempts, not retry forever.
    pub fn caused_by_message(&self) -> bool {
        match self {
            LinkError::ExchangeNotFound { .. } | LinkError::Rejected { .. } => true,
            // 403 ACCESS_REFUSED (no write permission on that exchange),
            // 404 NOT_FOUND, 406 PRECONDITION_FAILED (a property or size the
            // broker refuses).
            LinkError::ChannelClosed { reply_code, .. } => matches!(reply_code, 403 | 404 | 406),
            _ => false,
        }
    }

    /// Classifies a lapin error from an established link (`broker` is the
    /// redacted address).
    pub(crate) fn from_lapin(broker: &str, error: &lapin::Error, heartbeat: Duration) -> Self {
        use lapin::ErrorKind as K;
        match error.kind() {
            K::MissingHeartbeatError => LinkError::HeartbeatTimeout {
                broker: broker.to_string(),
                timeout: heartbeat,
            },
            K::ProtocolError(amqp) if error.is_amqp_soft_error() => {
                let reply_text = amqp.get_message().to_string();
                let reply_code = amqp.get_id();
                match missing_exchange(reply_code, &reply_text) {
                    Some(exchange) => LinkError::ExchangeNotFound {
                        exchange,
                        reply_text,
                    },
                    None => LinkError::ChannelClosed {
                        reply_code,
                        reply_text,
                    },
                }
            }
            // Hard errors the broker raises over what it was sent.
            K::ProtocolError(amqp) if matches!(amqp.get_id(), 501 | 502 | 503 | 505) => {
                LinkError::Rejected {
                    reply_code: amqp.get_id(),
                    reply_text: amqp.get_message().to_string(),
                }
            }
            _ => LinkError::ConnectionLost {
                broker: broker.to_string(),
                cause: error.to_string(),
            },
        }
    }

    /// Classifies a lapin error from a connection attempt.
    pub(crate) fn from_connect(broker: &str, user: &str, error: &lapin::Error) -> Self {
        use lapin::ErrorKind as K;
        match error.kind() {
            K::ProtocolError(amqp) => {
                let reply = amqp.get_message().to_string();
                // 403 ACCESS_REFUSED, 530 NOT_ALLOWED (vhost), and the login
                // refusal RabbitMQ reports with authentication_failure_close.
                if matches!(amqp.get_id(), 403 | 530) || reply.contains("ACCESS_REFUSED") {
                    LinkError::AccessRefused {
                        broker: broker.to_string(),
                        user: user.to_string(),
                        reply,
                    }
                } else {
                    LinkError::ConnectionLost {
                        broker: broker.to_string(),
                        cause: reply,
                    }
                }
            }
            _ => LinkError::Unreachable {
                broker: broker.to_string(),
                cause: error.to_string(),
            },
        }
    }
}

/// The exchange named by a NOT_FOUND channel close such as
/// `NOT_FOUND - no exchange 'orders' in vhost '/'`.
pub(crate) fn missing_exchange(reply_code: u16, reply_text: &str) -> Option<String> {
    if reply_code != 404 {
        return None;
    }
    let rest = reply_text.split_once("no exchange '")?.1;
    let (name, _) = rest.split_once("' in vhost")?;
    Some(name.to_string())
}

/// The configuration cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A broker URL does not parse. The URL is shown without its password.
    #[error(
        "'{url}' is not a usable broker URL ({reason}); expected \
         amqp[s]://user:password@host:port/vhost"
    )]
    BadUrl {
        /// The URL, redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No broker URL was given.
    #[error("no broker URL configured; give at least one amqp:// or amqps:// URL")]
    NoBroker,
    /// A setting is out of range.
    #[error("{setting} = {value} is out of range: {expected}")]
    OutOfRange {
        /// The setting.
        setting: &'static str,
        /// Its value.
        value: String,
        /// What it must be.
        expected: &'static str,
    },
    /// A name in the configuration cannot be used.
    #[error("{setting} '{value}' cannot be used: {reason}")]
    BadName {
        /// The setting.
        setting: &'static str,
        /// Its value (truncated when long).
        value: String,
        /// Why.
        reason: &'static str,
    },
}

/// One message cannot be published as it is; nothing was sent and no
/// sequence number was used. Dead-letter it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// A field AMQP limits to 255 bytes (exchange, routing key, message id,
    /// type, content type, correlation id, header name) is longer.
    #[error("the {field} is {len} bytes long; AMQP allows at most 255 (starts with '{start}')")]
    TooLong {
        /// Which field ("routing key", "header name", ...).
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// Its first characters, for the dead-letter reason.
        start: String,
    },
    /// The properties and headers do not fit one frame of the negotiated
    /// frame_max (the broker would close the whole connection).
    #[error(
        "the message's properties and headers take {len} bytes; one AMQP frame holds at most {max}"
    )]
    PropertiesTooLarge {
        /// Their encoded size.
        len: usize,
        /// What fits.
        max: usize,
    },
    /// The body exceeds the configured maximum message size.
    #[error("the body is {len} bytes; the configured maximum is {max}")]
    TooLarge {
        /// The body size.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
}

/// Why [`crate::Publisher::publish`] refused a message. None of these used a
/// sequence number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The message itself cannot be published; dead-letter it.
    #[error("message cannot be published: {0}")]
    Invalid(#[from] MessageError),
    /// The link failed with messages in flight, or the broker nacked one;
    /// nothing more is published until the caller has seen their outcomes,
    /// rewound, and called [`crate::Publisher::resume`]. This keeps publish
    /// order intact.
    #[error(
        "publishing is halted after a link failure or a nack ({cause}); rewind to the last \
         confirmed message and call resume()"
    )]
    Halted {
        /// The link failure.
        cause: LinkError,
    },
    /// The broker has stayed unreachable for the configured number of
    /// attempts (the circuit breaker is open); publishing fails fast until
    /// a connection succeeds again.
    #[error("the broker is unavailable (circuit breaker open): {cause}")]
    Unavailable {
        /// The last connection failure.
        cause: LinkError,
    },
    /// The in-flight window is full ([`crate::Publisher::try_publish`]
    /// only): publish again once an outcome has been received.
    #[error("the in-flight window is full")]
    Full,
    /// The sink has been closed.
    #[error("the sink is closed")]
    Closed,
}

/// Why connecting or closing the sink failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The configuration cannot work.
    #[error("invalid sink configuration: {0}")]
    Config(#[from] ConfigError),
    /// No broker could be reached; one error per broker URL tried, in order.
    #[error("{}", describe_attempts(.0))]
    Connect(Vec<LinkError>),
    /// Closing did not finish cleanly; every message still has an outcome.
    #[error("the sink did not close cleanly: {0}")]
    Close(String),
}

fn describe_attempts(errors: &[LinkError]) -> String {
    let mut text = String::from("no broker could be reached");
    for error in errors {
        text.push_str("; ");
        text.push_str(&error.to_string());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_not_found_close_names_the_missing_exchange() {
        assert_eq!(
            missing_exchange(404, "NOT_FOUND - no exchange 'orders.v2' in vhost '/'"),
            Some("orders.v2".to_string())
        );
        assert_eq!(
            missing_exchange(404, "NOT_FOUND - no queue 'q' in vhost '/'"),
            None
        );
        assert_eq!(missing_exchange(406, "no exchange 'x' in vhost '/'"), None);
    }

    #[test]
    fn permanent_errors_are_the_ones_an_operator_must_fix() {
        let refused = LinkError::AccessRefused {
            broker: "amqp://u@h:5672/%2f".into(),
            user: "u".into(),
            reply: "ACCESS_REFUSED".into(),
        };
        assert!(refused.is_permanent());
        let lost = LinkError::ConnectionLost {
            broker: "amqp://u@h:5672/%2f".into(),
            cause: "reset".into(),
        };
        assert!(!lost.is_permanent());
    }

    #[test]
    fn faults_of_a_message_are_told_apart_from_faults_of_the_link() {
        let no_exchange = LinkError::ExchangeNotFound {
            exchange: "orders".into(),
            reply_text: "NOT_FOUND - no exchange 'orders' in vhost '/'".into(),
        };
        let refused = LinkError::ChannelClosed {
            reply_code: 406,
            reply_text: "PRECONDITION_FAILED - message size 20000000 is larger than max size"
                .into(),
        };
        let frame = LinkError::Rejected {
            reply_code: 501,
            reply_text: "FRAME_ERROR - type 1, all octets = <<>>: frame_too_large".into(),
        };
        for e in [&no_exchange, &refused, &frame] {
            assert!(e.caused_by_message(), "{e}");
        }
        let forced = LinkError::ChannelClosed {
            reply_code: 320,
            reply_text: "CONNECTION_FORCED - broker forced connection closure".into(),
        };
        let lost = LinkError::ConnectionLost {
            broker: "amqp://u@h:5672/%2f".into(),
            cause: "reset".into(),
        };
        let stalled = LinkError::HeartbeatTimeout {
            broker: "amqp://u@h:5672/%2f".into(),
            timeout: Duration::from_secs(3),
        };
        for e in [&forced, &lost, &stalled, &LinkError::Closed] {
            assert!(!e.caused_by_message(), "{e}");
        }
    }
}
