# The Python analytics libraries from PyPI, used through their own Client and request code,
# for bins/ingest/tests/it/sdk.rs (issue 26).
#
#   python libraries.py <segment|legacy|rudder> <mixed|limit> <write-key> <ingest-url>
#
# mixed: three valid track calls and one the edge refuses (an empty event name, which every
#        library lets through), in one batch, with max_retries=2; reports what on_error saw.
# limit: one event exactly at the 32 768-byte limit as the libraries measure an item
#        (len(json.dumps(item).encode()), consumer.py), sent by the library's consumer; and
#        the same event one byte over, posted with the library's own request.post (its
#        consumer would drop it before sending); reports the library's own limit and what
#        the post raised.
#
# Prints one JSON line: {"errors": [...], "sent": [...], ...}.
import datetime
import importlib
import json
import sys

sdk, mode, write_key, host = sys.argv[1:5]
package = {"segment": "segment.analytics", "legacy": "analytics", "rudder": "rudderstack.analytics"}[sdk]
Client = importlib.import_module(package + ".client").Client
request = importlib.import_module(package + ".request")
consumer = importlib.import_module(package + ".consumer")

LIMIT = 32768
TIMESTAMP = datetime.datetime(2026, 12, 7, 12, 0, 0, 123456, tzinfo=datetime.timezone.utc)

errors = []


def on_error(error, batch):
    errors.append(
        {
            "error": str(error),
            "type": type(error).__name__,
            "status": getattr(error, "status", None),
            "code": getattr(error, "code", None),
            "events": len(batch),
        }
    )


def client(**options):
    return Client(write_key, host=host, on_error=on_error, max_retries=2, **options)


def measured(msg):
    """An item's size as the library measures it before sending (consumer.py, next())."""
    return len(json.dumps(msg, cls=request.DatetimeSerializer).encode())


def sized_event(message_id, size):
    """The message the library builds for a track call, padded to `size` bytes as measured."""
    probe = client(send=False)
    call = dict(anonymous_id="py-limit", event="Sized", timestamp=TIMESTAMP, message_id=message_id)
    _, msg = probe.track(properties={"blob": ""}, **call)
    pad = size - measured(msg)
    _, msg = probe.track(properties={"blob": "x" * pad}, **call)
    assert measured(msg) == size, (measured(msg), size)
    return call, pad, msg


report = {"sdk": sdk, "library_limit": consumer.MAX_MSG_SIZE}
if mode == "mixed":
    analytics = client()
    sent = []
    for i in range(3):
        message_id = "%s-ok-%d" % (sdk, i)
        analytics.track("py-user", "Signed Up", {"i": i}, message_id=message_id)
        sent.append(message_id)
    # Every library accepts an empty event name (require() checks the type only).
    analytics.track("py-user", "", {"bad": True}, message_id="%s-bad" % sdk)
    analytics.flush()
    analytics.shutdown()
    report["sent"] = sent
    report["invalid"] = "%s-bad" % sdk
elif mode == "limit":
    call, pad, _ = sized_event("%s-at-limit-" % sdk, LIMIT)
    analytics = client()
    analytics.track(properties={"blob": "x" * pad}, **call)
    analytics.flush()
    analytics.shutdown()
    # One byte more: the library refuses to build it (segment 2.4.0 raises in track), so the
    # message at the limit is taken and one character added to its padding.
    _, _, over = sized_event("%s-over-limit" % sdk, LIMIT)
    over["properties"]["blob"] += "x"
    assert measured(over) == LIMIT + 1
    try:
        request.post(write_key, host, batch=[over])
        report["over"] = {"status": 200}
    except request.APIError as e:
        report["over"] = {"status": e.status, "code": e.code, "message": e.message}
    report["sent"] = [call["message_id"]]
    report["over_id"] = over["messageId"]
else:
    sys.exit("unknown mode %s" % mode)
report["errors"] = errors
print(json.dumps(report))
