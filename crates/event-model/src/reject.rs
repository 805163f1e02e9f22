//! Why an event was rejected, and where.

use std::fmt;

/// The closed set of reasons for rejecting an event. The names are stable: they appear in
/// the DLQ envelope, the DLQ record header, the HTTP 400 body and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The body is not valid JSON (or not UTF-8).
    InvalidJson,
    /// The event (or body) is valid JSON but not an object.
    NotAnObject,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong JSON type.
    InvalidType,
    /// A field has the right type but an unusable value (bad timestamp, empty name).
    InvalidValue,
    /// Neither `userId` nor `anonymousId` is set.
    MissingIdentity,
    /// The event or the batch is over its size or count limit.
    TooLarge,
    /// JSON nested deeper than the limit.
    TooDeep,
    /// An object with more keys than the limit.
    TooManyKeys,
    /// `type` is not one of track, identify, page, screen, group, alias.
    UnknownType,
}

impl Reason {
    /// Every reason, for metric pre-registration and exhaustive tests.
    pub const ALL: [Reason; 10] = [
        Reason::InvalidJson,
        Reason::NotAnObject,
        Reason::MissingField,
        Reason::InvalidType,
        Reason::InvalidValue,
        Reason::MissingIdentity,
        Reason::TooLarge,
        Reason::TooDeep,
        Reason::TooManyKeys,
        Reason::UnknownType,
    ];

    /// The stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidJson => "invalid_json",
            Reason::NotAnObject => "not_an_object",
            Reason::MissingField => "missing_field",
            Reason::InvalidType => "invalid_type",
            Reason::InvalidValue => "invalid_value",
            Reason::MissingIdentity => "missing_identity",
            Reason::TooLarge => "too_large",
            Reason::TooDeep => "too_deep",
            Reason::TooManyKeys => "too_many_keys",
            Reason::UnknownType => "unknown_type",
        }
    }

    /// Parses a stable name back into a reason.
    pub fn from_name(name: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected event: the reason, the offending field as a JSON Pointer into the event
/// (`""` for the whole event), and a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} at '{field}': {detail}")]
pub struct Rejection {
    /// Why.
    pub reason: Reason,
    /// Where: a JSON Pointer (RFC 6901) into the event, e.g. `/properties`.
    pub field: String,
    /// A short explanation for humans.
    pub detail: String,
}

impl Rejection {
    /// Builds a rejection.
    pub fn new(reason: Reason, field: impl Into<String>, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            field: field.into(),
            detail: detail.into(),
        }
    }
}
