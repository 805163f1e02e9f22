//! Request bodies to event items: JSON parsing (simd-json) and batch unwrapping.

use std::borrow::Cow;

use simd_json::borrowed::Object;
use simd_json::{BorrowedValue, StaticNode};

use crate::normalize::EventType;
use crate::{Limits, Reason, Rejection};

/// What a request body holds, fixed by the endpoint it was posted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/track`, `/v1/identify`, ...: one event, whose type the path sets.
    Single(EventType),
    /// `/v1/batch` and `/v1/import`: `{"batch": [...]}`, each item carrying its own `type`.
    Batch,
}

/// A parsed body: the write key found in it, its event items (not yet validated) and the
/// batch-level fields that apply to them.
#[derive(Debug)]
pub struct Parsed<'a> {
    /// The body's `writeKey`, when it has one (used when there is no Basic auth).
    pub write_key: Option<String>,
    /// The events, in request order, as sent (a single event without its `writeKey`).
    pub items: Vec<BorrowedValue<'a>>,
    /// Batch-level `context`, `integrations` and `sentAt`; empty for single events.
    pub shared: BatchFields<'a>,
}

/// Batch-level fields that apply to every item, the item's own keys winning. They are merged
/// when an event is serialised, never copied into each item.
#[derive(Debug, Default)]
pub struct BatchFields<'a> {
    pub(crate) context: Option<Object<'a>>,
    pub(crate) integrations: Option<Object<'a>>,
    pub(crate) sent_at: Option<Cow<'a, str>>,
}

/// Parses a request body. `body` is used as scratch space by simd-json and is left changed.
///
/// An `Err` rejects the whole body (not JSON, not an object, no `batch` array, too many
/// events); per-event problems are left to [`crate::normalize`].
pub fn parse_body<'a>(
    body: &'a mut [u8],
    endpoint: Endpoint,
    limits: &Limits,
) -> Result<Parsed<'a>, Rejection> {
    check_depth(body, limits.max_depth)?;
    let value = BUFFERS
        .with(|buffers| simd_json::to_borrowed_value_with_buffers(body, &mut buffers.borrow_mut()))
        .map_err(|e| Rejection::new(Reason::InvalidJson, "", format!("body is not valid JSON: {e}")))?;
    let BorrowedValue::Object(mut obj) = value else {
        return Err(Rejection::new(
            Reason::NotAnObject,
            "",
            "body must be a JSON object",
        ));
    };
    let write_key = match obj.remove("writeKey") {
        Some(BorrowedValue::String(s)) if !s.is_empty() => Some(s.into_owned()),
        _ => None,
    };
    match endpoint {
        Endpoint::Single(_) => Ok(Parsed {
            write_key,
            items: vec![BorrowedValue::Object(obj)],
            shared: BatchFields::default(),
        }),
        Endpoint::Batch => {
            let items = match obj.remove("batch") {
                None | Some(BorrowedValue::Static(StaticNode::Null)) => {
                    return Err(Rejection::new(
                        Reason::MissingField,
                        "/batch",
                        "a batch body needs a \"batch\" array",
                    ))
                }
                Some(BorrowedValue::Array(items)) => *items,
                Some(_) => {
                    return Err(Rejection::new(
                        Reason::InvalidType,
                        "/batch",
                        "\"batch\" must be an array",
                    ))
                }
            };
            if items.len() > limits.max_batch_events {
                return Err(Rejection::new(
                    Reason::TooLarge,
                    "/batch",
                    format!(
                        "{} events in one batch, the limit is {}",
                        items.len(),
                        limits.max_batch_events
                    ),
                ));
            }
            let shared = BatchFields::take(&mut obj)?;
            Ok(Parsed {
                write_key,
                items,
                shared,
            })
        }
    }
}

/// Parses one event object (a DLQ `raw_payload`, say) without endpoint rules: depth check,
/// JSON, object, `writeKey` removed.
pub fn parse_event<'a>(bytes: &'a mut [u8], limits: &Limits) -> Result<BorrowedValue<'a>, Rejection> {
    parse_body(bytes, Endpoint::Single(EventType::Track), limits).map(|mut parsed| parsed.items.remove(0))
}

/// The `messageId` of an item, if it has a usable one (for naming rejected events).
pub fn message_id_of<'v>(item: &'v BorrowedValue<'_>) -> Option<&'v str> {
    match item {
        BorrowedValue::Object(obj) => match obj.get("messageId") {
            Some(BorrowedValue::String(s)) if !s.is_empty() => Some(s),
            _ => None,
        },
        _ => None,
    }
}

impl<'a> BatchFields<'a> {
    fn take(obj: &mut Object<'a>) -> Result<Self, Rejection> {
        let mut object_field = |name: &str| match obj.remove(name) {
            None | Some(BorrowedValue::Static(StaticNode::Null)) => Ok(None),
            Some(BorrowedValue::Object(o)) => Ok(Some(*o)),
            Some(_) => Err(Rejection::new(
                Reason::InvalidType,
                format!("/{name}"),
                format!("\"{name}\" must be an object"),
            )),
        };
        let context = object_field("context")?;
        let integrations = object_field("integrations")?;
        let sent_at = match obj.remove("sentAt") {
            None | Some(BorrowedValue::Static(StaticNode::Null)) => None,
            Some(BorrowedValue::String(s)) => Some(s),
            Some(_) => {
                return Err(Rejection::new(
                    Reason::InvalidType,
                    "/sentAt",
                    "\"sentAt\" must be an ISO 8601 string",
                ))
            }
        };
        Ok(BatchFields {
            context,
            integrations,
            sent_at,
        })
    }
}

thread_local! {
    /// simd-json's scratch buffers, reused by every parse on this thread.
    static BUFFERS: std::cell::RefCell<simd_json::Buffers> = std::cell::RefCell::new(simd_json::Buffers::default());
}

/// Refuses JSON nested deeper than `max` before parsing, so that no later recursive walk
/// (serialisation, drop) can exhaust the stack. Strings are skipped with a SIMD search.
fn check_depth(bytes: &[u8], max: usize) -> Result<(), Rejection> {
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => {
                // Skip to the closing quote; an unterminated string is the parser's to report.
                i += 1;
                loop {
                    let rest = bytes.get(i..).unwrap_or_default();
                    match memchr::memchr2(b'"', b'\\', rest) {
                        None => return Ok(()),
                        Some(j) if rest[j] == b'\\' => i += j + 2,
                        Some(j) => {
                            i += j + 1;
                            break;
                        }
                    }
                }
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Err(Rejection::new(
                        Reason::TooDeep,
                        "",
                        format!("JSON nested deeper than {max} levels"),
                    ));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}
