//! The batch-level fields of a `/v1/batch` body (`context`, `integrations`, `sentAt`) that
//! apply to every item, and the notes of those dropped rather than refused.

use chrono::{DateTime, Utc};
use simd_json::borrowed::Object;
use simd_json::{BorrowedValue, StaticNode};

use crate::reject::Reason;
use crate::time;

/// Batch-level fields that apply to every item, the item's own keys winning. They are merged
/// when an event is serialised, never copied into each item.
///
/// A batch-level field that cannot be used does not refuse the body: `[]` (PHP's encoding of
/// an empty map) is read as `{}`; any other non-object `context` or `integrations`, and a
/// `sentAt` that is not a readable timestamp, is dropped, and every item's ingest value
/// records it in its `ignored` list (see the schema), so that nothing is lost silently.
#[derive(Debug, Default)]
pub struct BatchFields<'a> {
    pub(crate) context: Option<Object<'a>>,
    pub(crate) integrations: Option<Object<'a>>,
    pub(crate) sent_at: Option<DateTime<Utc>>,
    pub(crate) ignored: Vec<Ignored<'a>>,
}

/// A field dropped rather than refused: written in the ingest value's `ignored` list.
#[derive(Debug)]
pub(crate) struct Ignored<'a> {
    /// A JSON Pointer: into the request body for batch-level fields, into the event otherwise.
    pub(crate) field: &'static str,
    /// Whether `field` is the batch's or the event's own.
    pub(crate) scope: Scope,
    pub(crate) reason: Reason,
    /// The value as sent, or `None` when its JSON is over [`MAX_IGNORED_VALUE_BYTES`].
    pub(crate) value: Option<BorrowedValue<'a>>,
}

/// Where an ignored field was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The batch's own (top-level) field.
    Batch,
    /// The event's own field.
    Event,
}

/// Largest ignored value copied into the note: a note is in every item of its batch, and must
/// not push them over the event size limit.
pub(crate) const MAX_IGNORED_VALUE_BYTES: usize = 1024;

impl<'a> Ignored<'a> {
    pub(crate) fn new(field: &'static str, scope: Scope, reason: Reason, value: BorrowedValue<'a>) -> Self {
        let small = simd_json::to_vec(&value).is_ok_and(|json| json.len() <= MAX_IGNORED_VALUE_BYTES);
        Ignored {
            field,
            scope,
            reason,
            value: small.then_some(value),
        }
    }
}

impl<'a> BatchFields<'a> {
    /// Takes the batch-level fields out of the body's top level; never fails (see the type's
    /// documentation).
    pub(crate) fn take(obj: &mut Object<'a>) -> Self {
        let mut ignored = Vec::new();
        let mut object_field = |name: &'static str, pointer: &'static str| match obj.remove(name) {
            None | Some(BorrowedValue::Static(StaticNode::Null)) => None,
            Some(BorrowedValue::Object(o)) => Some(*o),
            Some(BorrowedValue::Array(a)) if a.is_empty() => Some(Object::default()),
            Some(other) => {
                ignored.push(Ignored::new(pointer, Scope::Batch, Reason::InvalidType, other));
                None
            }
        };
        let context = object_field("context", "/context");
        let integrations = object_field("integrations", "/integrations");
        let sent_at = match obj.remove("sentAt") {
            None | Some(BorrowedValue::Static(StaticNode::Null)) => None,
            Some(BorrowedValue::String(s)) => match time::parse(&s) {
                Some(t) => Some(t),
                None => {
                    ignored.push(Ignored::new(
                        "/sentAt",
                        Scope::Batch,
                        Reason::InvalidValue,
                        BorrowedValue::String(s),
                    ));
                    None
                }
            },
            Some(other) => {
                ignored.push(Ignored::new("/sentAt", Scope::Batch, Reason::InvalidType, other));
                None
            }
        };
        BatchFields {
            context,
            integrations,
            sent_at,
            ignored,
        }
    }
}
