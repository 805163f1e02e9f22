//! event-model reads arbitrary JSON as a reference decoder does: V8's `JSON.parse` (Node.js),
//! the browsers' reader, after WHATWG UTF-8 decoding (`TextDecoder`), with strings then encoded
//! to UTF-8 (`Buffer.from`, which writes a lone surrogate as U+FFFD, as Go's `encoding/json`
//! reads one).
//!
//! Why Node: it is the decoder that analytics.js's own events go through, and it is a real
//! implementation of ECMA-262's `JSON.parse` (last repeated key wins, lone surrogates kept as
//! code units, numbers as the nearest double) rather than an imitation; serde_json keeps lone
//! surrogates out (an error) and serde_json_lenient has no U+FFFD mode for them. Node runs once,
//! over a batch of generated cases. Numbers are compared as doubles, JavaScript's only numbers
//! (that integers up to 2^128 are kept exactly is tested in `reading`).

use std::io::Write;
use std::process::{Command, Stdio};

use event_model::{normalize, parse_body, Endpoint, EventType, Limits, Reason};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::Value;

use super::received;

/// JSON text for a string: plain text, escapes (lone and paired surrogates among them), raw
/// non-ASCII characters and invalid UTF-8.
fn string() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        "[a-zA-Z0-9 ]{0,3}".prop_map(String::into_bytes),
        proptest::sample::select(vec![
            r"\n",
            r#"\""#,
            r"\\",
            r"\/",
            r"\t",
            r"\u00e9",
            r"\u0041",
            r"\u0000",
            r"\ud83d\ude00",
            r"\uD83D\uDE00",
            r"\ud83d",
            r"\uDBFF",
            r"\udc00",
            r"\uDFFF",
            r"\\ud83d",
            "é",
            "€",
            "😀",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        proptest::sample::select(vec![
            &b"\xff"[..],
            b"\xc3",
            b"\xe2\x82",
            b"\xed\xa0\x80",
            b"\xc0\x80",
            b"\xf0\x9f\x98",
            b"\xf4\x90\x80\x80",
        ])
        .prop_map(<[u8]>::to_vec),
    ];
    proptest::collection::vec(piece, 0..6).prop_map(|pieces| {
        let mut out = vec![b'"'];
        pieces.iter().for_each(|p| out.extend_from_slice(p));
        out.push(b'"');
        out
    })
}

/// JSON text for a number: 64-bit and larger integers, fractions, exponents (underflow too),
/// long mantissas that need correct rounding. None beyond the largest double: those are
/// refused on purpose (tested in `reading`).
fn number() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<u128>().prop_map(|n| n.to_string()),
        any::<i128>().prop_map(|n| n.to_string()),
        "-?[1-9][0-9]{20,60}",
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| f.to_string()),
        "-?(0|[1-9][0-9]{0,25})(\\.[0-9]{1,30})?([eE][+-]?[0-9]{1,2})?",
        "-?[1-9]\\.[0-9]{0,3}e-(3[2-9][0-9]|4[0-9][0-9])",
        "-?[1-9](\\.[0-9]{1,3})?e(2[0-9][0-9]|30[0-7])",
        Just("-0".to_string()),
        Just("1.7976931348623157e308".to_string()),
        Just("5e-324".to_string()),
    ]
    .prop_map(String::into_bytes)
}

/// JSON text for any value, with objects whose keys repeat.
fn value() -> BoxedStrategy<Vec<u8>> {
    let leaf = prop_oneof![
        Just(b"null".to_vec()),
        Just(b"true".to_vec()),
        Just(b"false".to_vec()),
        number(),
        string(),
    ];
    leaf.prop_recursive(3, 32, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(|items| join(b'[', items, b']')),
            object(inner),
        ]
    })
    .boxed()
}

fn object(inner: impl Strategy<Value = Vec<u8>> + Clone) -> impl Strategy<Value = Vec<u8>> {
    let key = prop_oneof![
        proptest::sample::select(vec![
            r#""a""#,
            r#""b""#,
            r#""plan""#,
            r#""1""#,
            r#""\ud800""#,
            r#""\udc01""#,
            r#""\u00e9""#,
            r#""é""#,
            r#""""#,
        ])
        .prop_map(|k| k.as_bytes().to_vec()),
        string(),
    ];
    proptest::collection::vec((key, inner), 0..6).prop_map(|pairs| {
        let members = pairs
            .into_iter()
            .map(|(mut k, v)| {
                k.push(b':');
                k.extend_from_slice(&v);
                k
            })
            .collect();
        join(b'{', members, b'}')
    })
}

fn join(open: u8, items: Vec<Vec<u8>>, close: u8) -> Vec<u8> {
    let mut out = vec![open];
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.push(close);
    out
}

/// Node's reading of each body's `properties`: `{"ok": value}`, `{"err": message}`, or
/// `{"skip": true}` when two keys of one object differ only in lone surrogates (Go's
/// `encoding/json` keeps the textually last of them, as event-model does).
const NODE_SCRIPT: &str = r#"
const chunks = [];
process.stdin.on('data', c => chunks.push(c));
process.stdin.on('end', () => {
  const cases = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  const utf8 = s => Buffer.from(s, 'utf8').toString('utf8');
  const norm = v => {
    if (typeof v === 'string') return utf8(v);
    if (Array.isArray(v)) return v.map(norm);
    if (v !== null && typeof v === 'object') {
      const out = Object.create(null);
      for (const k of Object.keys(v)) {
        const key = utf8(k);
        // Two keys that differ only in lone surrogates are one key in UTF-8: which value wins
        // then depends on JavaScript's property order, not on the text. Not compared.
        if (key in out) throw new Collision();
        out[key] = norm(v[k]);
      }
      return out;
    }
    if (typeof v === 'number' && !Number.isFinite(v)) throw new Error('not finite');
    return v;
  };
  class Collision extends Error {}
  const out = cases.map(hex => {
    try {
      const text = new TextDecoder('utf-8').decode(Buffer.from(hex, 'hex'));
      return { ok: norm(JSON.parse(text).properties) };
    } catch (e) {
      if (e instanceof Collision) return { skip: true };
      return { err: String(e) };
    }
  });
  process.stdout.write(JSON.stringify(out));
});
"#;

fn node_reads(bodies: &[Vec<u8>]) -> Vec<Value> {
    let hex = |b: &Vec<u8>| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let input = serde_json::to_vec(&bodies.iter().map(hex).collect::<Vec<_>>()).unwrap();
    let mut child = Command::new("node")
        .args(["-e", NODE_SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node (Node.js) is needed for the reference test: it is on every machine of this project");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(output.status.success(), "node failed");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Equal as JSON, numbers compared as doubles.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

#[test]
fn arbitrary_json_is_read_as_json_parse_reads_it() {
    let mut runner = TestRunner::deterministic();
    let strategy = (object(value()), any::<bool>());
    let bodies: Vec<Vec<u8>> = (0..3000)
        .map(|_| {
            let (props, bom) = strategy.new_tree(&mut runner).unwrap().current();
            let mut body = if bom { b"\xEF\xBB\xBF".to_vec() } else { Vec::new() };
            body.extend_from_slice(br#"{"anonymousId":"a","event":"e","properties":"#);
            body.extend_from_slice(&props);
            body.push(b'}');
            body
        })
        .collect();
    let expected = node_reads(&bodies);
    let limits = Limits::default();
    let skipped = expected.iter().filter(|r| r.get("skip").is_some()).count();
    assert!(skipped < bodies.len() / 10, "{skipped} cases not compared");
    for (body, reference) in bodies.iter().zip(&expected) {
        if reference.get("skip").is_some() {
            continue;
        }
        let shown = String::from_utf8_lossy(body);
        let mut bytes = body.clone();
        let ours = parse_body(&mut bytes, Endpoint::Single(EventType::Track), &limits).and_then(|parsed| {
            normalize(
                &parsed.items[0],
                Some(EventType::Track),
                &parsed.shared,
                &received(),
                &limits,
            )
        });
        match (ours, reference.get("ok")) {
            (Ok(accepted), Some(reference)) => {
                let value: Value = serde_json::from_slice(&accepted.value).unwrap();
                assert!(
                    same(&value["properties"], reference),
                    "{shown}\n  ours:  {}\n  node:  {reference}",
                    value["properties"]
                );
            }
            (Err(rejection), None) => assert_eq!(rejection.reason, Reason::InvalidJson, "{shown}"),
            (Ok(_), None) => panic!("{shown}: accepted, but JSON.parse says {}", reference["err"]),
            (Err(rejection), Some(_)) => panic!("{shown}: JSON.parse reads it, we reject: {rejection}"),
        }
    }
}
