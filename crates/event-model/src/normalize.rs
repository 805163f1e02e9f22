//! Validation and enrichment of one event item into the ingest-topic record.

use std::borrow::Cow;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use simd_json::borrowed::Object;
use simd_json::{BorrowedValue, StaticNode};

use crate::batch::{BatchFields, Ignored, Scope};
use crate::event_type::EventType;
use crate::limits::{Limits, RECORD_ALLOWANCE};
use crate::parse::Item;
use crate::reject::{Reason, Rejection};
use crate::time;

/// What the server knows about the request an event arrived in.
#[derive(Debug, Clone)]
pub struct Received {
    /// Server time at receipt.
    pub at: DateTime<Utc>,
    /// The authenticated source's workspace.
    pub workspace_id: String,
    /// The authenticated source.
    pub source_id: String,
    /// The client's address, set as `context.ip` unless the event has one.
    pub client_ip: Option<IpAddr>,
}

/// A valid, enriched event, ready to produce to the ingest topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The event's `messageId`, or a generated UUID.
    pub message_id: String,
    /// The event type (the `type` header).
    pub event_type: EventType,
    /// The record key: `anonymous_id`, falling back to `user_id`.
    pub key: String,
    /// The record value: the normalised event as JSON.
    pub value: Vec<u8>,
}

/// Bytes reserved for an event's ingest value before it is written (it grows past that).
const VALUE_CAPACITY: usize = 4096;

/// Longest accepted `messageId`.
const MAX_MESSAGE_ID_CHARS: usize = 256;

/// Validates one event item and enriches it into the ingest-topic record.
///
/// `fixed_type` is the type set by a single-event endpoint's path; batch items carry their own.
/// `shared` holds the batch-level fields ([`crate::Parsed::shared`]).
///
/// Size: an item over [`Limits::max_event_bytes`] as sent ([`Item::sent_bytes`]) is refused
/// first, as [`Reason::TooLarge`]; so is one whose record comes out over
/// [`Limits::max_record_bytes`] (possible only through its batch's `context` and
/// `integrations`, merged into it: see [`RECORD_ALLOWANCE`]).
pub fn normalize(
    item: &Item<'_>,
    fixed_type: Option<EventType>,
    shared: &BatchFields<'_>,
    received: &Received,
    limits: &Limits,
) -> Result<Accepted, Rejection> {
    if item.sent_bytes > limits.max_event_bytes {
        return Err(Rejection::new(
            Reason::TooLarge,
            "",
            format!(
                "event is {} bytes as sent, the limit is {}",
                item.sent_bytes, limits.max_event_bytes
            ),
        ));
    }
    let item = &item.value;
    check_object_keys(item, limits.max_object_keys)?;
    let BorrowedValue::Object(obj) = item else {
        return Err(Rejection::new(
            Reason::NotAnObject,
            "",
            "an event must be a JSON object",
        ));
    };
    let event_type = match fixed_type {
        Some(t) => t,
        None => {
            let name = required_str(obj, "type")?;
            EventType::from_name(name).ok_or_else(|| {
                Rejection::new(
                    Reason::UnknownType,
                    "/type",
                    format!("unknown event type {name:?}"),
                )
            })?
        }
    };
    let message_id = match optional_str(obj, "messageId")? {
        Some("") => {
            return Err(Rejection::new(
                Reason::InvalidValue,
                "/messageId",
                "messageId is empty",
            ))
        }
        Some(id) if id.chars().count() > MAX_MESSAGE_ID_CHARS => {
            return Err(Rejection::new(
                Reason::InvalidValue,
                "/messageId",
                format!("messageId is longer than {MAX_MESSAGE_ID_CHARS} characters"),
            ))
        }
        Some(id) => Cow::Borrowed(id),
        None => Cow::Owned(uuid::Uuid::new_v4().to_string()),
    };

    let anonymous_id = optional_id(obj, "anonymousId")?;
    let user_id = optional_id(obj, "userId")?;
    if anonymous_id.is_none() && user_id.is_none() {
        return Err(Rejection::new(
            Reason::MissingIdentity,
            "/anonymousId",
            "an event needs a userId or an anonymousId",
        ));
    }

    // Read in this order, so that an event with several faults is refused for the same one.
    let name = optional_str(obj, "name")?;
    let properties = optional_object(obj, "properties")?;
    let traits = optional_object(obj, "traits")?;
    let own_context = optional_object(obj, "context")?;
    let own_integrations = optional_object(obj, "integrations")?;
    let own = match event_type {
        EventType::Track => track(obj)?,
        EventType::Identify => identify(obj)?,
        EventType::Page => page(obj)?,
        EventType::Screen => screen(obj)?,
        EventType::Group => group(obj)?,
        EventType::Alias => alias(obj, user_id.is_some())?,
    };

    let mut out = Normalized {
        message_id: &message_id,
        event_type: event_type.as_str(),
        workspace_id: &received.workspace_id,
        source_id: &received.source_id,
        anonymous_id: anonymous_id.as_deref(),
        user_id: user_id.as_deref(),
        event: own.event,
        name,
        category: own.category,
        group_id: own.group_id.as_deref(),
        previous_id: own.previous_id.as_deref(),
        properties,
        traits,
        context: Merged {
            own: own_context,
            batch: shared.context.as_ref(),
            ip: None,
        },
        integrations: Merged {
            own: own_integrations,
            batch: shared.integrations.as_ref(),
            ip: None,
        },
        timestamp: String::new(),
        original_timestamp: None,
        sent_at: None,
        received_at: time::format(received.at),
        ignored: Notes(&[]),
    };

    let event_ip = [out.context.own, out.context.batch]
        .into_iter()
        .flatten()
        .find_map(|c| present_in(c, "ip"));
    // `context.ip` is a string (the JSON Schema); another value is noted and ignored, and
    // the client's address stands in, as when none is sent.
    let ip_note;
    let mut ignored: Vec<&Ignored<'_>> = shared.ignored.iter().collect();
    out.context.ip = match event_ip {
        Some(ip @ BorrowedValue::String(_)) => Some(Ip::Event(ip)),
        Some(other) => {
            ip_note = Ignored::new(
                "/context/ip",
                Scope::Event,
                Reason::InvalidType,
                other.clone().into_static(),
            );
            ignored.push(&ip_note);
            received.client_ip.map(Ip::Peer)
        }
        None => received.client_ip.map(Ip::Peer),
    };

    // sentAt is transport metadata: an unreadable one is noted and ignored, not refused.
    let own_sent_at_note;
    let mut own_sent_at = None;
    if let Some(value) = present(obj, "sentAt") {
        let (parsed, reason) = match value {
            BorrowedValue::String(s) => (time::parse(s), Reason::InvalidValue),
            _ => (None, Reason::InvalidType),
        };
        match parsed {
            Some(t) => own_sent_at = Some(t),
            None => {
                own_sent_at_note = Ignored::new("/sentAt", Scope::Event, reason, value.clone());
                ignored.push(&own_sent_at_note);
            }
        }
    }
    let sent_at = own_sent_at.or(shared.sent_at);
    let original = match optional_time(obj, "timestamp")? {
        Some(t) => Some(t),
        None => optional_time(obj, "originalTimestamp")?,
    };
    let timestamp = time::corrected(received.at, sent_at, original).ok_or_else(|| {
        Rejection::new(
            Reason::InvalidValue,
            "/sentAt",
            "sentAt and timestamp are too far apart to correct",
        )
    })?;
    out.timestamp = time::format(timestamp);
    out.original_timestamp = original.map(time::format);
    out.sent_at = sent_at.map(time::format);
    out.ignored = Notes(&ignored);

    // Sized for a typical event up front, so that it is written without growing: the bench's
    // corpus events (analytics.js-like, 2.2 KiB on average) come out about 250 bytes longer,
    // and with room for 2 KiB most of them were reallocated and copied once. The buffer lives
    // only until the producer copies the record.
    let mut value = Vec::with_capacity(VALUE_CAPACITY);
    simd_json::to_writer(&mut value, &out)
        .map_err(|e| Rejection::new(Reason::InvalidValue, "", format!("cannot serialise event: {e}")))?;
    if value.len() > limits.max_record_bytes() {
        return Err(Rejection::new(
            Reason::TooLarge,
            "",
            format!(
                "event is {} bytes as normalised (its batch's context and integrations merged in), \
                 over the record limit of {} ({} plus {RECORD_ALLOWANCE} for what ingest adds)",
                value.len(),
                limits.max_record_bytes(),
                limits.max_event_bytes
            ),
        ));
    }
    let key = anonymous_id.or(user_id).unwrap_or_default().into_owned();
    Ok(Accepted {
        message_id: message_id.into_owned(),
        event_type,
        key,
        value,
    })
}

/// The fields only some event types have, read and checked by the type's own function.
#[derive(Default)]
struct OwnFields<'a> {
    /// `track`'s `event`.
    event: Option<&'a str>,
    /// `page`'s `category`.
    category: Option<&'a str>,
    /// `group`'s `groupId`.
    group_id: Option<Cow<'a, str>>,
    /// `alias`'s `previousId`.
    previous_id: Option<Cow<'a, str>>,
}

/// `track`: a non-empty `event` name is required.
fn track<'a>(obj: &'a Object<'a>) -> Result<OwnFields<'a>, Rejection> {
    let event = required_str(obj, "event")?;
    if event.is_empty() {
        return Err(Rejection::new(
            Reason::InvalidValue,
            "/event",
            "event name is empty",
        ));
    }
    Ok(OwnFields {
        event: Some(event),
        ..OwnFields::default()
    })
}

/// `identify`: no fields of its own (`traits` is read for every type).
fn identify<'a>(_obj: &'a Object<'a>) -> Result<OwnFields<'a>, Rejection> {
    Ok(OwnFields::default())
}

/// `page`: an optional string `category`.
fn page<'a>(obj: &'a Object<'a>) -> Result<OwnFields<'a>, Rejection> {
    Ok(OwnFields {
        category: optional_str(obj, "category")?,
        ..OwnFields::default()
    })
}

/// `screen`: no fields of its own (`name` is read for every type).
fn screen<'a>(_obj: &'a Object<'a>) -> Result<OwnFields<'a>, Rejection> {
    Ok(OwnFields::default())
}

/// `group`: a `groupId` (a string or a number) is required.
fn group<'a>(obj: &'a Object<'a>) -> Result<OwnFields<'a>, Rejection> {
    Ok(OwnFields {
        group_id: Some(required_id(obj, "groupId")?),
        ..OwnFields::default()
    })
}

/// `alias`: a `userId` (`has_user_id`) and a `previousId` are required, in that order.
fn alias<'a>(obj: &'a Object<'a>, has_user_id: bool) -> Result<OwnFields<'a>, Rejection> {
    if !has_user_id {
        return Err(Rejection::new(
            Reason::MissingField,
            "/userId",
            "alias needs a userId",
        ));
    }
    Ok(OwnFields {
        previous_id: Some(required_id(obj, "previousId")?),
        ..OwnFields::default()
    })
}

/// The ingest-topic value. Field names and presence rules are in `schema/ingest-event.schema.json`.
#[derive(Serialize)]
struct Normalized<'a> {
    message_id: &'a str,
    #[serde(rename = "type")]
    event_type: &'static str,
    workspace_id: &'a str,
    source_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    anonymous_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    category: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    properties: Option<&'a Object<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traits: Option<&'a Object<'a>>,
    #[serde(skip_serializing_if = "Merged::is_empty")]
    context: Merged<'a>,
    #[serde(skip_serializing_if = "Merged::is_empty")]
    integrations: Merged<'a>,
    timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    original_timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sent_at: Option<String>,
    received_at: String,
    #[serde(skip_serializing_if = "Notes::is_empty")]
    ignored: Notes<'a>,
}

/// The `ignored` list: fields dropped rather than refused (see [`BatchFields`]).
struct Notes<'a>(&'a [&'a Ignored<'a>]);

impl Notes<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Notes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|note| Note(note)))
    }
}

/// One `ignored` entry: `{"field", "scope", "reason", "value"}`, or `"truncated": true` in
/// place of a value over [`crate::batch::MAX_IGNORED_VALUE_BYTES`].
struct Note<'a>(&'a Ignored<'a>);

impl Serialize for Note<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let note = self.0;
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("field", note.field)?;
        map.serialize_entry(
            "scope",
            match note.scope {
                Scope::Batch => "batch",
                Scope::Event => "event",
            },
        )?;
        map.serialize_entry("reason", note.reason.as_str())?;
        match &note.value {
            Some(value) => map.serialize_entry("value", value)?,
            None => map.serialize_entry("truncated", &true)?,
        }
        map.end()
    }
}

/// An object merged at serialisation time, without copying: the event's own keys, then the
/// batch-level keys it does not have, and for `context` the effective `ip`.
struct Merged<'a> {
    own: Option<&'a Object<'a>>,
    batch: Option<&'a Object<'a>>,
    ip: Option<Ip<'a>>,
}

/// The `context.ip` written: the event's (or its batch's), else the client's address.
#[derive(Clone, Copy)]
enum Ip<'a> {
    Event(&'a BorrowedValue<'a>),
    Peer(IpAddr),
}

impl Merged<'_> {
    fn is_empty(&self) -> bool {
        self.own.is_none() && self.batch.is_none() && self.ip.is_none()
    }
}

impl Serialize for Merged<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let with_ip = self.ip.is_some();
        let own = self.own.into_iter().flat_map(|o| o.iter());
        let batch = self.batch.into_iter().flat_map(|b| b.iter());
        let batch = batch.filter(|(k, _)| !self.own.is_some_and(|o| o.contains_key(&**k)));
        let mut map = serializer.serialize_map(None)?;
        for (k, v) in own.chain(batch) {
            if !(with_ip && k == "ip") {
                map.serialize_entry(k, v)?;
            }
        }
        match self.ip {
            Some(Ip::Event(ip)) => map.serialize_entry("ip", ip)?,
            Some(Ip::Peer(ip)) => with_ip_text(ip, |text| map.serialize_entry("ip", text))?,
            None => {}
        }
        map.end()
    }
}

/// Calls `f` with `ip`'s text form (`Display`: dotted quad, or RFC 5952 for IPv6), written on
/// the stack: the client's address is written into every event, and formatting it into a
/// `String` cost an allocation and two regrowths per event.
fn with_ip_text<R>(ip: IpAddr, f: impl FnOnce(&str) -> R) -> R {
    use std::io::Write;
    // The longest form: eight groups, the last two as a dotted quad (RFC 4291 section 2.2).
    let mut buf = [0u8; 45];
    let left = {
        let mut rest = &mut buf[..];
        write!(rest, "{ip}").ok().map(|()| rest.len())
    };
    let len = left.map(|left| buf.len() - left);
    match len.and_then(|len| std::str::from_utf8(&buf[..len]).ok()) {
        Some(text) => f(text),
        None => f(&ip.to_string()),
    }
}

/// A non-null value of `obj`.
fn present_in<'a>(obj: &'a Object<'a>, name: &str) -> Option<&'a BorrowedValue<'a>> {
    obj.get(name)
        .filter(|v| !matches!(v, BorrowedValue::Static(StaticNode::Null)))
}

/// Refuses an object with more than `max` keys anywhere in `value`, naming it by JSON Pointer.
/// Iterative: the depth was bounded before parsing, but a walk needs no stack anyway. The
/// pointer is built only for a refusal: the first walk carries no paths.
fn check_object_keys(value: &BorrowedValue<'_>, max: usize) -> Result<(), Rejection> {
    let is_container = |v: &&BorrowedValue| matches!(v, BorrowedValue::Object(_) | BorrowedValue::Array(_));
    // Room for a typical event's pending objects and arrays, so that the walk does not regrow
    // its stack for every event.
    let mut stack = Vec::with_capacity(32);
    stack.push(value);
    let mut too_many = false;
    while let Some(value) = stack.pop() {
        match value {
            BorrowedValue::Object(obj) if obj.len() > max => {
                too_many = true;
                break;
            }
            BorrowedValue::Object(obj) => stack.extend(obj.values().filter(is_container)),
            BorrowedValue::Array(items) => stack.extend(items.iter().filter(is_container)),
            _ => {}
        }
    }
    if !too_many {
        return Ok(());
    }
    let mut stack: Vec<(&BorrowedValue<'_>, String)> = vec![(value, String::new())];
    while let Some((value, path)) = stack.pop() {
        match value {
            BorrowedValue::Object(obj) => {
                if obj.len() > max {
                    return Err(Rejection::new(
                        Reason::TooManyKeys,
                        path,
                        format!("{} keys in one object, the limit is {max}", obj.len()),
                    ));
                }
                for (k, v) in obj.iter() {
                    if matches!(v, BorrowedValue::Object(_) | BorrowedValue::Array(_)) {
                        stack.push((v, format!("{path}/{}", k.replace('~', "~0").replace('/', "~1"))));
                    }
                }
            }
            BorrowedValue::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    if matches!(v, BorrowedValue::Object(_) | BorrowedValue::Array(_)) {
                        stack.push((v, format!("{path}/{i}")));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn pointer(name: &str) -> String {
    format!("/{name}")
}

fn present<'a>(obj: &'a Object<'a>, name: &str) -> Option<&'a BorrowedValue<'a>> {
    present_in(obj, name)
}

fn optional_str<'a>(obj: &'a Object<'a>, name: &str) -> Result<Option<&'a str>, Rejection> {
    match present(obj, name) {
        None => Ok(None),
        Some(BorrowedValue::String(s)) => Ok(Some(s)),
        Some(_) => Err(Rejection::new(
            Reason::InvalidType,
            pointer(name),
            format!("{name} must be a string"),
        )),
    }
}

fn required_str<'a>(obj: &'a Object<'a>, name: &str) -> Result<&'a str, Rejection> {
    optional_str(obj, name)?
        .ok_or_else(|| Rejection::new(Reason::MissingField, pointer(name), format!("{name} is required")))
}

/// An identifier: a string, or a number (stringified). Empty strings count as absent.
fn optional_id<'a>(obj: &'a Object<'a>, name: &str) -> Result<Option<Cow<'a, str>>, Rejection> {
    match present(obj, name) {
        None => Ok(None),
        Some(BorrowedValue::String(s)) if s.is_empty() => Ok(None),
        Some(BorrowedValue::String(s)) => Ok(Some(Cow::Borrowed(s))),
        Some(BorrowedValue::Static(StaticNode::I64(n))) => Ok(Some(Cow::Owned(n.to_string()))),
        Some(BorrowedValue::Static(StaticNode::U64(n))) => Ok(Some(Cow::Owned(n.to_string()))),
        Some(BorrowedValue::Static(StaticNode::I128(n))) => Ok(Some(Cow::Owned(n.to_string()))),
        Some(BorrowedValue::Static(StaticNode::U128(n))) => Ok(Some(Cow::Owned(n.to_string()))),
        Some(BorrowedValue::Static(StaticNode::F64(n))) if n.is_finite() => {
            Ok(Some(Cow::Owned(n.to_string())))
        }
        Some(_) => Err(Rejection::new(
            Reason::InvalidType,
            pointer(name),
            format!("{name} must be a string or a number"),
        )),
    }
}

fn required_id<'a>(obj: &'a Object<'a>, name: &str) -> Result<Cow<'a, str>, Rejection> {
    optional_id(obj, name)?
        .ok_or_else(|| Rejection::new(Reason::MissingField, pointer(name), format!("{name} is required")))
}

/// An object field. `[]` is read as `{}`: PHP's `json_encode` writes an empty array (its
/// empty map) so.
fn optional_object<'a>(obj: &'a Object<'a>, name: &str) -> Result<Option<&'a Object<'a>>, Rejection> {
    match present(obj, name) {
        None => Ok(None),
        Some(BorrowedValue::Object(o)) => Ok(Some(o)),
        Some(BorrowedValue::Array(a)) if a.is_empty() => Ok(Some(empty_object())),
        Some(_) => Err(Rejection::new(
            Reason::InvalidType,
            pointer(name),
            format!("{name} must be an object"),
        )),
    }
}

/// A shared empty object, for `[]` read as `{}`.
fn empty_object() -> &'static Object<'static> {
    static EMPTY: std::sync::OnceLock<Object<'static>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(Object::default)
}

fn optional_time(obj: &Object<'_>, name: &str) -> Result<Option<DateTime<Utc>>, Rejection> {
    match optional_str(obj, name)? {
        None => Ok(None),
        Some(s) => time::parse(s).map(Some).ok_or_else(|| {
            Rejection::new(
                Reason::InvalidValue,
                pointer(name),
                format!("{name} is not an ISO 8601 timestamp: {s:?}"),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use proptest::prelude::*;

    use super::with_ip_text;

    #[test]
    fn an_address_is_written_as_display_writes_it() {
        for ip in [
            "203.0.113.7",
            "0.0.0.0",
            "255.255.255.255",
            "2001:db8::1",
            "::1",
            "::ffff:192.0.2.1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "fe80::1:2:3:4",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(with_ip_text(ip, str::to_string), ip.to_string());
        }
    }

    proptest! {
        #[test]
        fn every_address_is_written_as_display_writes_it(ip in any::<IpAddr>()) {
            prop_assert_eq!(with_ip_text(ip, str::to_string), ip.to_string());
        }
    }
}
