//! Request bodies to event items: JSON parsing (simd-json) and batch unwrapping.
//!
//! JSON is read as Segment's and RudderStack's servers (Go's `encoding/json`) and browsers'
//! `JSON.parse` read it, so that every SDK's events arrive as they were meant:
//!
//! - the body is decoded as UTF-8 the WHATWG way (Encoding Standard, "UTF-8 decode"): a leading
//!   byte order mark is ignored and each invalid sequence becomes U+FFFD, as `TextDecoder` and
//!   Go (which replaces invalid UTF-8 in strings) do;
//! - a `\u` escape of a lone UTF-16 surrogate (RFC 8259 section 8.2 allows them, without saying
//!   what they mean) becomes U+FFFD, as Go's `encoding/json` does and as a browser's `JSON.parse`
//!   string becomes when encoded to UTF-8;
//! - a repeated object key keeps its last value (RFC 8259 section 4 leaves it open; Go's
//!   `encoding/json` and ECMA-262 `JSON.parse` both keep the last), at the key's first place;
//! - numbers (RFC 8259 section 6): integers within ±2^128 are kept exactly; larger ones and
//!   fractions are read as the nearest IEEE-754 double, as `JSON.parse` and Go's `interface{}`
//!   decoding do. A number that underflows (`1e-400`) reads as 0, as in both. A number beyond
//!   the largest double (`1e400`, or an integer of 310 digits) refuses the body as
//!   [`Reason::InvalidJson`]: Go's `encoding/json` refuses it too (an `UnmarshalTypeError`),
//!   and `JSON.parse`'s `Infinity` has no JSON form to write to the ingest topic.

use simd_json::borrowed::Object;
use simd_json::{BorrowedValue, StaticNode};

use crate::batch::BatchFields;
use crate::event_type::EventType;
use crate::limits::Limits;
use crate::reject::{Reason, Rejection};

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
    /// The body's `writeKey` (used when there is no Basic auth): the top level's when it is a
    /// non-empty string, else, in a batch, that of the first item carrying a non-empty string
    /// one (RudderStack's and some Segment libraries put it in each item).
    pub write_key: Option<String>,
    /// The events, in request order, as sent, except that `writeKey` is removed from each (so
    /// it never reaches the DLQ or the ingest topic), each with its size as sent.
    pub items: Vec<Item<'a>>,
    /// Batch-level `context`, `integrations` and `sentAt`; empty for single events.
    pub shared: BatchFields<'a>,
}

/// One event item of a body, with the size the client sent it at.
#[derive(Debug)]
pub struct Item<'a> {
    /// The event as parsed (`writeKey` removed).
    pub value: BorrowedValue<'a>,
    /// The length of the event's JSON in the body, in bytes, as received (after gzip, a
    /// leading byte order mark removed, invalid UTF-8 replaced): for a single-event endpoint
    /// the whole body, for a batch item its bytes from its `{` to its `}`. This is what
    /// [`Limits::max_event_bytes`] limits, measured as the libraries measure an event before
    /// they send it: the Python libraries drop an item when `len(json.dumps(item)) > 32768`
    /// (`segment/analytics/consumer.py`, `MAX_MSG_SIZE`) and send the batch as
    /// `json.dumps({"batch": [...], ...})`, in which each item is those same bytes; the Node
    /// libraries likewise serialise the batch with the `JSON.stringify` they measure with.
    pub sent_bytes: usize,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Parses a request body, read as described in this module's documentation (RFC 8259 with
/// Go's and `JSON.parse`'s choices where it leaves them open).
///
/// `body` is used as scratch space by simd-json and is left changed; when it is not valid
/// UTF-8 it is replaced by its WHATWG decoding (`String::from_utf8_lossy`) first. Valid
/// bodies pay for one SIMD UTF-8 check only.
///
/// An `Err` rejects the whole body: not JSON ([`Reason::InvalidJson`], including numbers
/// beyond the largest double), nested deeper than [`Limits::max_depth`] ([`Reason::TooDeep`]),
/// an object with more than [`Limits::max_object_keys`] keys or a body with more than
/// [`Limits::max_total_keys`] ([`Reason::TooManyKeys`]; both found before parsing, so that the
/// parser's work is bounded and linear in the body whatever the key counts, and named by a JSON
/// Pointer into the body), not an object, no `batch` array, more than
/// [`Limits::max_batch_events`] events. Batch-level
/// fields of the wrong type do not (see [`BatchFields`]); per-event problems are left to
/// [`crate::normalize`].
pub fn parse_body<'a>(
    body: &'a mut Vec<u8>,
    endpoint: Endpoint,
    limits: &Limits,
) -> Result<Parsed<'a>, Rejection> {
    if simdutf8::basic::from_utf8(body).is_err() {
        *body = String::from_utf8_lossy(body).into_owned().into_bytes();
    }
    let body: &'a mut [u8] = if body.starts_with(BOM) {
        &mut body[BOM.len()..]
    } else {
        &mut body[..]
    };
    let sent_bytes = body.len();
    let spans = prescan(body, limits, endpoint == Endpoint::Batch)?;
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
    let mut write_key = take_write_key(&mut obj);
    match endpoint {
        Endpoint::Single(_) => Ok(Parsed {
            write_key,
            items: vec![Item {
                value: BorrowedValue::Object(obj),
                sent_bytes,
            }],
            shared: BatchFields::default(),
        }),
        Endpoint::Batch => {
            let mut items = match obj.remove("batch") {
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
            for item in &mut items {
                if let BorrowedValue::Object(item) = item {
                    let key = take_write_key(item);
                    if write_key.is_none() {
                        write_key = key;
                    }
                }
            }
            let shared = BatchFields::take(&mut obj);
            Ok(Parsed {
                write_key,
                items: with_sizes(items, &spans),
                shared,
            })
        }
    }
}

/// Pairs each batch item with its size as sent: the span [`prescan`] found for it (by its
/// index in the `batch` array), else (an item that is not an object or array, or a `batch`
/// key written with escapes, which the scan does not recognise) the length of its JSON as
/// simd-json writes it.
fn with_sizes<'a>(items: Vec<BorrowedValue<'a>>, spans: &[ItemSpan]) -> Vec<Item<'a>> {
    let mut spans = spans.iter().peekable();
    items
        .into_iter()
        .enumerate()
        .map(|(index, value)| {
            while spans.next_if(|span| span.index < index).is_some() {}
            let sent_bytes = match spans.next_if(|span| span.index == index) {
                Some(span) => span.len,
                None => simd_json::to_vec(&value).map_or(0, |json| json.len()),
            };
            Item { value, sent_bytes }
        })
        .collect()
}

/// Removes `writeKey` from an object, returning it when it is a non-empty string.
fn take_write_key(obj: &mut Object<'_>) -> Option<String> {
    match obj.remove("writeKey") {
        Some(BorrowedValue::String(s)) if !s.is_empty() => Some(s.into_owned()),
        _ => None,
    }
}

/// Parses one event object (a DLQ `raw_payload`, say) without endpoint rules, read as
/// [`parse_body`] reads a single event: depth check, JSON, object, `writeKey` removed.
pub fn parse_event<'a>(bytes: &'a mut Vec<u8>, limits: &Limits) -> Result<Item<'a>, Rejection> {
    parse_body(bytes, Endpoint::Single(EventType::Track), limits)
        .map(|mut parsed| parsed.items.swap_remove(0))
}

/// The `messageId` of an item's value, if it has a usable one (for naming rejected events).
pub fn message_id_of<'v>(item: &'v BorrowedValue<'_>) -> Option<&'v str> {
    match item {
        BorrowedValue::Object(obj) => match obj.get("messageId") {
            Some(BorrowedValue::String(s)) if !s.is_empty() => Some(s),
            _ => None,
        },
        _ => None,
    }
}

thread_local! {
    /// simd-json's scratch buffers, reused by every parse on this thread.
    static BUFFERS: std::cell::RefCell<simd_json::Buffers> = std::cell::RefCell::new(simd_json::Buffers::default());
}

/// One linear pass before parsing, so that the parser only ever sees bodies whose work is
/// bounded (it runs before authentication):
///
/// - refuses JSON nested deeper than [`Limits::max_depth`] ([`Reason::TooDeep`]), so that no
///   later recursive walk (serialisation, drop) can exhaust the stack;
/// - refuses an object with more than [`Limits::max_object_keys`] keys (except inside a batch
///   item: see [`in_batch_item`]), and a body with more than [`Limits::max_total_keys`] keys in
///   all ([`Reason::TooManyKeys`]), counting the `:` outside strings in a stack of one frame per
///   open object or array;
/// - rewrites each `\u` escape of a lone UTF-16 surrogate in place to `\ufffd` (the same six
///   bytes' length), so that simd-json reads U+FFFD (it would read U+0000). A high surrogate
///   escape followed by a low surrogate escape is a pair and is left alone.
/// - rewrites fractions of more than 19 digits that simd-json would misread (see
///   [`shorten_float`]).
///
/// With `batch`, it also returns the byte span of each object or array item of the top-level
/// `batch` array (of the last such key, as the parser keeps the last): the items' sizes as
/// sent ([`Item::sent_bytes`]).
///
/// Strings are skipped with a SIMD search for `"` and `\`; only escapes are looked at. The
/// refusals name the place by a JSON Pointer into the body, built only then from the frames
/// (each remembers its last key's bytes, or its element index).
fn prescan(bytes: &mut [u8], limits: &Limits, batch: bool) -> Result<Vec<ItemSpan>, Rejection> {
    let max_depth = limits.max_depth;
    let mut frames: Vec<Frame> = Vec::with_capacity(max_depth.min(64) + 1);
    let mut total_keys = 0usize;
    // The span of the last string read: an object's key when a `:` follows.
    let mut last_string = (0usize, 0usize);
    // Batch items' spans, and where the item being read started.
    let mut spans = Vec::new();
    let mut item_start = 0usize;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => {
                // Skip to the closing quote; an unterminated string is the parser's to report.
                let start = i + 1;
                i += 1;
                loop {
                    let rest = bytes.get(i..).unwrap_or_default();
                    match memchr::memchr2(b'"', b'\\', rest) {
                        None => return Ok(spans),
                        Some(j) if rest[j] == b'\\' => i += j + escape_len(bytes, i + j),
                        Some(j) => {
                            i += j + 1;
                            break;
                        }
                    }
                }
                last_string = (start, i - 1);
                continue;
            }
            b'{' | b'[' => {
                if frames.len() >= max_depth {
                    return Err(Rejection::new(
                        Reason::TooDeep,
                        pointer_of(bytes, &frames),
                        format!("JSON nested deeper than {max_depth} levels"),
                    ));
                }
                if batch && is_batch_array(bytes, &frames) {
                    match frames.len() {
                        1 => spans.clear(),
                        _ => item_start = i,
                    }
                }
                frames.push(Frame {
                    object: b == b'{',
                    count: 0,
                    key: (0, 0),
                });
            }
            b'}' | b']' => {
                frames.pop();
                if batch && frames.len() == 2 && is_batch_array(bytes, &frames) {
                    spans.push(ItemSpan {
                        index: frames[1].count,
                        len: i + 1 - item_start,
                    });
                }
            }
            b':' => {
                if let Some(frame) = frames.last_mut().filter(|f| f.object) {
                    frame.count += 1;
                    frame.key = last_string;
                    total_keys += 1;
                    if frame.count > limits.max_object_keys && !in_batch_item(bytes, &frames) {
                        let object = &frames[..frames.len() - 1];
                        return Err(Rejection::new(
                            Reason::TooManyKeys,
                            pointer_of(bytes, object),
                            format!(
                                "more than {} keys in one object (found before parsing)",
                                limits.max_object_keys
                            ),
                        ));
                    }
                    if total_keys > limits.max_total_keys {
                        return Err(Rejection::new(
                            Reason::TooManyKeys,
                            "",
                            format!(
                                "more than {} keys in the body (found before parsing)",
                                limits.max_total_keys
                            ),
                        ));
                    }
                }
            }
            b',' => {
                if let Some(frame) = frames.last_mut().filter(|f| !f.object) {
                    frame.count += 1;
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                let (mut digits, mut float) = (0usize, false);
                while let Some(&c) = bytes.get(i) {
                    match c {
                        b'0'..=b'9' => digits += 1,
                        b'.' | b'e' | b'E' => float = true,
                        b'-' | b'+' => {}
                        _ => break,
                    }
                    i += 1;
                }
                if float && digits > 19 {
                    if let Some(number) = bytes.get_mut(start..i) {
                        shorten_float(number);
                    }
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(spans)
}

/// The span of one batch item found by [`prescan`].
struct ItemSpan {
    /// The item's index in the `batch` array.
    index: usize,
    /// Its length in bytes.
    len: usize,
}

/// Whether a container opened with `frames` open is the top-level `batch` array (one frame
/// open: the body's object, at its `batch` key) or an item of it (two: that array too).
fn is_batch_array(bytes: &[u8], frames: &[Frame]) -> bool {
    match frames {
        [top] | [top, _] => {
            top.object
                && frames.get(1).is_none_or(|array| !array.object)
                && bytes.get(top.key.0..top.key.1) == Some(&b"batch"[..])
        }
        _ => false,
    }
}

/// Whether the innermost of `frames` is inside an item of a batch (`/batch/N/...`). An item's
/// object over the key limit is left to [`crate::normalize`], which rejects that item alone
/// (one event's problem never costs another); the body's total key limit still bounds the work,
/// and a repeated key costs one map insert (simd-json's `value-no-dup-keys`).
#[cold]
fn in_batch_item(bytes: &[u8], frames: &[Frame]) -> bool {
    match frames {
        [top, batch, _, ..] => {
            top.object && !batch.object && bytes.get(top.key.0..top.key.1) == Some(&b"batch"[..])
        }
        _ => false,
    }
}

/// An open object or array in [`prescan`].
struct Frame {
    object: bool,
    /// Keys so far (an object), or the index of the current element (an array).
    count: usize,
    /// The byte span of the current key (an object).
    key: (usize, usize),
}

/// The JSON Pointer (RFC 6901) of the value the innermost of `frames` is at: each object's
/// current key, each array's current index. Only built for a refusal.
#[cold]
fn pointer_of(bytes: &[u8], frames: &[Frame]) -> String {
    let mut pointer = String::new();
    for frame in frames {
        pointer.push('/');
        if frame.object {
            let raw = bytes.get(frame.key.0..frame.key.1).unwrap_or_default();
            let key = if raw.contains(&b'\\') {
                // Decode the escapes as the parser would.
                let mut quoted = Vec::with_capacity(raw.len() + 2);
                quoted.push(b'"');
                quoted.extend_from_slice(raw);
                quoted.push(b'"');
                simd_json::from_slice::<String>(&mut quoted).unwrap_or_default()
            } else {
                String::from_utf8_lossy(raw).into_owned()
            };
            pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
        } else {
            pointer.push_str(&frame.count.to_string());
        }
    }
    pointer
}

/// Rewrites a fraction of more than 19 digits in place as the nearest double's shortest form,
/// padded with spaces. simd-json 0.14.3 misreads some of them: it sums the digits into a
/// wrapping `u64` and, depending on where the number is in the body, fails to take its slow
/// path (its leading-zero count mixes a byte with an index), so that
/// `60580214494483315.40170497462772481` could read as 51.02967435455505. Rust's `f64` parsing
/// is correctly rounded (as `JSON.parse` and Go's `strconv.ParseFloat` are), and the shortest
/// form reads back as the same double. Malformed and infinite numbers are left for the parser
/// to refuse.
#[cold]
fn shorten_float(number: &mut [u8]) {
    let Some(value) = std::str::from_utf8(number)
        .ok()
        .and_then(|text| text.parse::<f64>().ok())
        .filter(|v| v.is_finite())
    else {
        return;
    };
    let forms = [format!("{value:e}"), format!("{value}")];
    if let Some(form) = forms.iter().find(|form| form.len() <= number.len()) {
        let (head, tail) = number.split_at_mut(form.len());
        head.copy_from_slice(form.as_bytes());
        tail.fill(b' ');
    }
}

/// The length of the escape at `bytes[at]` (a backslash), rewriting a lone surrogate's `\u`
/// escape to `\ufffd`. Malformed escapes are skipped as two bytes, for the parser to report.
fn escape_len(bytes: &mut [u8], at: usize) -> usize {
    let Some(unit) = u_escape(bytes, at) else {
        return 2;
    };
    match unit {
        0xD800..=0xDBFF => {
            if u_escape(bytes, at + 6).is_some_and(|low| (0xDC00..=0xDFFF).contains(&low)) {
                return 12;
            }
        }
        0xDC00..=0xDFFF => {}
        _ => return 6,
    }
    if let Some(hex) = bytes.get_mut(at + 2..at + 6) {
        hex.copy_from_slice(b"fffd");
    }
    6
}

/// The code unit of a `\uXXXX` escape at `bytes[at]`, if there is one.
fn u_escape(bytes: &[u8], at: usize) -> Option<u32> {
    match bytes.get(at..at + 6)? {
        [b'\\', b'u', hex @ ..] => hex.iter().try_fold(0u32, |acc, &c| {
            let digit = (c as char).to_digit(16)?;
            Some(acc * 16 + digit)
        }),
        _ => None,
    }
}
