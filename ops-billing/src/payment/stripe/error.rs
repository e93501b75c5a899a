//! async-stripe's errors as ops-billing's.

use std::time::Duration;

use ::stripe::{ApiErrors, ApiErrorsCode, ApiErrorsType, StripeError};

use super::NAME;
use crate::payment::PaymentOutcome;
use crate::{Error, Result};

/// What async-stripe says when an error answer is not Stripe's JSON (a proxy's HTML
/// page): the status is lost, and Stripe itself always answers JSON, so it is taken
/// for an unavailable service.
const UNREADABLE_ERROR: &str = "error deserializing Stripe error";

fn message(api: &ApiErrors) -> String {
    api.message
        .clone()
        .unwrap_or_else(|| "no message".to_owned())
}

/// Maps an async-stripe error of `call`.
pub(super) fn map(call: &'static str, e: StripeError, timeout: Duration) -> Error {
    match e {
        StripeError::Stripe(api, status) => {
            let code = api.code.as_ref().map(|c| c.as_str().to_owned());
            match (status, &api.type_) {
                (_, ApiErrorsType::CardError) | (402, _) => Error::PaymentDeclined {
                    provider: NAME,
                    call,
                    code,
                    decline_code: api.decline_code.clone(),
                    message: message(&api),
                },
                (401 | 403, _) => Error::PaymentAuth {
                    provider: NAME,
                    call,
                    status,
                    message: message(&api),
                },
                // Stripe's transient answers (see its retry guidance): rate limits,
                // its own failures, and a lock on the object held by another request.
                (409, _) if matches!(api.code, Some(ApiErrorsCode::LockTimeout)) => {
                    Error::PaymentUnavailable {
                        provider: NAME,
                        call,
                        status: Some(status),
                        message: message(&api),
                    }
                }
                (429 | 500..=599, _) | (_, ApiErrorsType::ApiError) => Error::PaymentUnavailable {
                    provider: NAME,
                    call,
                    status: Some(status),
                    message: message(&api),
                },
                _ => Error::PaymentRejected {
                    provider: NAME,
                    call,
                    status,
                    param: api.param.clone(),
                    code,
                    message: message(&api),
                },
            }
        }
        StripeError::Timeout => Error::PaymentTimeout {
            provider: NAME,
            call,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        },
        StripeError::ClientError(message) => Error::PaymentUnavailable {
            provider: NAME,
            call,
            status: None,
            message,
        },
        StripeError::JSONDeserialize(reason) if reason == UNREADABLE_ERROR => {
            Error::PaymentUnavailable {
                provider: NAME,
                call,
                status: None,
                message: "an error answer that is not Stripe's JSON".to_owned(),
            }
        }
        StripeError::JSONDeserialize(reason) => Error::PaymentResponse {
            provider: NAME,
            call,
            reason,
        },
        StripeError::ConfigError(reason) => Error::PaymentConfig {
            provider: NAME,
            reason,
        },
    }
}

/// A payment call's error as an outcome where it is one: a decline is `Failed`, a
/// payment needing the customer is `RequiresAction`; anything else stays an error.
pub(super) fn outcome_of(e: Error) -> Result<PaymentOutcome> {
    match e {
        Error::PaymentDeclined {
            code: Some(ref code),
            ..
        } if code == ApiErrorsCode::InvoicePaymentIntentRequiresAction.as_str() => {
            Ok(PaymentOutcome::RequiresAction {
                reason: e.to_string(),
            })
        }
        Error::PaymentDeclined {
            code: Some(ref code),
            ..
        } if code == ApiErrorsCode::AuthenticationRequired.as_str() => {
            Ok(PaymentOutcome::RequiresAction {
                reason: e.to_string(),
            })
        }
        Error::PaymentDeclined { .. } => Ok(PaymentOutcome::Failed {
            reason: e.to_string(),
        }),
        Error::PaymentRejected {
            code: Some(ref code),
            ..
        } if code == ApiErrorsCode::InvoicePaymentIntentRequiresAction.as_str() => {
            Ok(PaymentOutcome::RequiresAction {
                reason: e.to_string(),
            })
        }
        e => Err(e),
    }
}
