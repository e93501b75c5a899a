//! How Ops names map to NATS subjects, stream and consumer names.

use crate::{Error, Result};

/// Stream names: letters, digits, `-` and `_` (no `.`, wildcards, spaces or path
/// separators, which the server rejects or turns into file names).
pub(crate) fn validate_stream_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 255 {
        return Err(Error::invalid(
            "nats stream name",
            name,
            "must be 1 to 255 characters",
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_')))
    {
        return Err(Error::invalid(
            "nats stream name",
            name,
            format!("character {c:?} is not allowed (use letters, digits, '-', '_')"),
        ));
    }
    Ok(())
}

/// Subject prefixes: dot-separated tokens of letters, digits, `-` and `_`.
pub(crate) fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        return Err(Error::invalid(
            "nats subject prefix",
            prefix,
            "must not be empty",
        ));
    }
    for token in prefix.split('.') {
        if token.is_empty() {
            return Err(Error::invalid(
                "nats subject prefix",
                prefix,
                "has an empty token (leading, trailing or double '.')",
            ));
        }
        if let Some(c) = token
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_')))
        {
            return Err(Error::invalid(
                "nats subject prefix",
                prefix,
                format!("character {c:?} is not allowed (use letters, digits, '-', '_', '.')"),
            ));
        }
    }
    Ok(())
}

/// `<prefix>.<event type>`, each token of the type kept to characters that are safe in
/// a subject (others become `_`; empty tokens become `_`).
pub(crate) fn event_subject(prefix: &str, event_type: &str) -> String {
    let mut subject = String::with_capacity(prefix.len() + 1 + event_type.len());
    subject.push_str(prefix);
    for token in event_type.split('.') {
        subject.push('.');
        if token.is_empty() {
            subject.push('_');
            continue;
        }
        subject.extend(token.chars().map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '+' | '=' | '@') {
                c
            } else {
                '_'
            }
        }));
    }
    subject
}

/// The durable consumer name of a subscription. Subscription names may contain `.`,
/// which NATS names may not: `_` is written `__` and `.` is written `_-`, so that
/// distinct subscriptions never share a consumer.
pub(crate) fn consumer_name(subscription: &str) -> String {
    let mut out = String::with_capacity(subscription.len() + 4);
    for c in subscription.chars() {
        match c {
            '_' => out.push_str("__"),
            '.' => out.push_str("_-"),
            c => out.push(c),
        }
    }
    out
}

/// What the server says about one delivery, read from its ack subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AckInfo {
    /// Position in the stream (the delivery tag).
    pub stream_sequence: u64,
    /// Deliveries of this message to the consumer, this one included.
    pub delivered: u64,
}

/// Parses `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>` (and
/// the newer form with domain and account hash before the stream).
pub(crate) fn parse_ack_subject(reply: &str) -> Option<AckInfo> {
    let tokens: Vec<&str> = reply.split('.').collect();
    if tokens.len() < 9 || tokens[0] != "$JS" || tokens[1] != "ACK" {
        return None;
    }
    let base = if tokens.len() == 9 { 2 } else { 4 };
    let delivered = tokens.get(base + 2)?.parse().ok()?;
    let stream_sequence = tokens.get(base + 3)?.parse().ok()?;
    Some(AckInfo {
        stream_sequence,
        delivered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_become_subjects() {
        assert_eq!(
            event_subject("ops.events", "ops.task.succeeded"),
            "ops.events.ops.task.succeeded"
        );
        assert_eq!(
            event_subject("p", "com.example.order placed.*.>..x"),
            "p.com.example.order_placed._._._.x"
        );
        assert_eq!(event_subject("p", ""), "p._");
        assert_eq!(event_subject("p", "ü"), "p._");
    }

    #[test]
    fn consumer_names_are_distinct_and_dot_free() {
        let names = ["a.b", "a_b", "a_.b", "a._b", "a-b", "a__b", "a_-b"];
        let mapped: std::collections::HashSet<String> =
            names.iter().map(|n| consumer_name(n)).collect();
        assert_eq!(mapped.len(), names.len());
        assert!(mapped.iter().all(|m| !m.contains('.')));
        assert_eq!(consumer_name("billing.meter"), "billing_-meter");
    }

    #[test]
    fn ack_subjects_parse() {
        assert_eq!(
            parse_ack_subject("$JS.ACK.S.c.3.42.40.1700000000000000000.5"),
            Some(AckInfo {
                stream_sequence: 42,
                delivered: 3
            })
        );
        assert_eq!(
            parse_ack_subject("$JS.ACK.dom.hash.S.c.1.7.7.1700000000000000000.0.xyz"),
            Some(AckInfo {
                stream_sequence: 7,
                delivered: 1
            })
        );
        assert_eq!(parse_ack_subject("_INBOX.x"), None);
        assert_eq!(parse_ack_subject("$JS.ACK.S.c.x.42.40.1.5"), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_stream_name("OPS_EVENTS-1").is_ok());
        assert!(validate_stream_name("a b").is_err());
        assert!(validate_prefix("ops.events").is_ok());
        assert!(validate_prefix("ops.>").is_err());
        assert!(validate_prefix(".ops").is_err());
    }
}
