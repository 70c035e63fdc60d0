"""
Trace context propagation: W3C Trace Context Level 1 (C{traceparent},
C{tracestate}) and Zipkin's B3 (the single C{b3} header and the C{X-B3-*}
headers), read from a request as meshproxy received it and written on each
try it sends upstream.

meshproxy is an intermediary that records its own spans. It reads the
caller's context with L{extract}, makes one CLIENT span per try, and sends
that span's id upstream as the parent id with L{outgoing}, after removing
every header named in L{TRACE_HEADERS} from the forwarded request.

Nothing here keeps state: randomness is passed in (a C{random.Random}'s
C{getrandbits}) and every function is pure.

References (cited by section title and anchor below):
  - W3C Trace Context Level 1, U{https://www.w3.org/TR/trace-context/}
    (abbreviated "TC1"). Its conformance suite is test/test.py of
    github.com/w3c/trace-context on the C{level-1} branch; the suite on its
    main branch follows Level 2, which relaxes two tracestate rules this
    module keeps (see L{_tracestate}).
  - B3 propagation, U{https://github.com/openzipkin/b3-propagation}
    (README.md, "B3").

What L{extract} takes from a request, in order of precedence:

  1. exactly one C{traceparent} header that is valid: the trace continues
     from it, with the C{tracestate} it came with (checked member by member;
     dropped whole when anything in it is invalid);
  2. otherwise a valid C{b3} header (B3: "The single-header variant takes
     precedence over the multiple header one");
  3. otherwise valid C{X-B3-*} headers.

An invalid C{traceparent} (or more than one) restarts the trace as TC1's
processing model says ("A traceparent is Received", step 2: "the vendor
creates a new traceparent header and deletes tracestate"), unless valid B3
names the trace to continue: B3 is a second, independent encoding of the
caller's context, and continuing it keeps the trace whole. The
C{tracestate} is dropped in both cases, since it belonged to the invalid
C{traceparent}.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

__all__ = [
    "TRACE_HEADERS",
    "MAX_TRACESTATE",
    "TraceContext",
    "extract",
    "newTraceId",
    "newSpanId",
    "outgoing",
]

#: The request headers meshproxy removes from a forwarded request and
#: replaces with its own (L{outgoing}), as lowercase names.
TRACE_HEADERS: frozenset[bytes] = frozenset(
    [
        b"traceparent",
        b"tracestate",
        b"b3",
        b"x-b3-traceid",
        b"x-b3-spanid",
        b"x-b3-parentspanid",
        b"x-b3-sampled",
        b"x-b3-flags",
    ]
)

#: The longest combined C{tracestate} (all its headers joined by commas, as
#: received) that is parsed; a longer one is dropped unread. TC1
#: ("tracestate Limits", #tracestate-limits): vendors "SHOULD propagate at
#: least 512 characters of a combined header", and the maximum "SHOULD be
#: documented": this is it. 8192 bytes holds 32 members of 255 characters
#: each with room for optional whitespace.
MAX_TRACESTATE = 8192

# The lengths of the names in TRACE_HEADERS: a header whose name has another
# length is skipped without lowercasing its name.
_NAME_LENGTHS = frozenset(len(name) for name in TRACE_HEADERS)

_HEXLC = b"0123456789abcdef"
_HEXDASH = _HEXLC + b"-"
# A lowercase hex digit whose value is odd: the low bit of trace-flags is
# the sampled flag (TC1 "trace-flags", "Sampled flag").
_ODD = frozenset(b"13579bdf")
_ZERO16 = b"0" * 16
_ZERO32 = b"0" * 32
_PAD64 = "0" * 16
_OWS = b" \t"

# TC1 "Key" (#key):
#   key = simple-key / multi-tenant-key
#   simple-key = lcalpha 0*255( lcalpha / DIGIT / "_" / "-"/ "*" / "/" )
#   multi-tenant-key = tenant-id "@" system-id
#   tenant-id = ( lcalpha / DIGIT ) 0*240( lcalpha / DIGIT / "_" / "-"/ "*" / "/" )
#   system-id = lcalpha 0*13( lcalpha / DIGIT / "_" / "-"/ "*" / "/" )
#
# A simple key may begin with a digit: TC1's ABNF asks for a letter but its
# note says "Identifiers MUST begin with a lowercase letter or a digit", and
# Level 2 allows it; a vendor's key is not dropped over that.
_LCALPHA = b"abcdefghijklmnopqrstuvwxyz"
_LCALPHA_DIGIT = _LCALPHA + b"0123456789"
_KEYCHARS = _LCALPHA_DIGIT + b"_-*/"
# TC1 "Value" (#value):
#   value    = 0*255(chr) nblk-chr
#   nblk-chr = %x21-2B / %x2D-3C / %x3E-7E
#   chr      = %x20 / nblk-chr
# A whole list: printable ASCII, with tabs as optional whitespace; what is
# allowed where is checked member by member.
_LISTCHARS = bytes(range(0x20, 0x7F)) + b"\t"
# A comma and what follows it up to the next member: empty members, folded
# into one comma (linear: every match starts at a comma).
_EMPTY_MEMBERS = re.compile(rb",[ \t,]*")

# What a valid B3 encoding said: (traceId as 32 hex digits, spanId, sampled,
# debug), the ids None for a sampling decision alone, and all of it None
# (and False) when it said nothing.
_B3 = tuple[str | None, str | None, bool | None, bool]
_NOTHING: _B3 = (None, None, None, False)


class TraceContext:
    """
    The trace a request belongs to, as the caller sent it (or as it starts
    here), which meshproxy's spans and its upstream requests continue.

    @ivar traceId: the trace id, 32 lowercase hex digits (a 64-bit B3 trace
        id left-padded with 16 zeros); never all zeros.
    @ivar parentId: the caller's span id, 16 lowercase hex digits: the
        parent of meshproxy's span. L{None} when a new trace starts here
        (then C{traceId} is new too).
    @ivar sampled: the caller's sampling decision; L{None} when the caller
        deferred it (B3 ids without a sampling state, or no usable context),
        so meshproxy decides.
    @ivar debug: B3's debug decision (C{b3: …-d}, C{X-B3-Flags: 1}); implies
        C{sampled}.
    @ivar traceState: the C{tracestate} to pass on (all its headers
        combined, every member checked, optional whitespace and empty
        members removed), or L{None} when there is none to pass on.
    @ivar b3: which B3 encoding the caller used for this same context: 0
        none (or one naming another trace), 1 the single C{b3} header, 2 the
        C{X-B3-*} headers. L{outgoing} sends the C{X-B3-*} headers too when
        it is 2.
    @ivar restarted: the caller sent trace ids (a C{traceparent}, B3 ids)
        but none was valid, so the trace restarts here: count it.
    """

    __slots__ = ("traceId", "parentId", "sampled", "debug", "traceState", "b3", "restarted")

    def __init__(
        self,
        traceId: str,
        parentId: str | None,
        sampled: bool | None,
        debug: bool = False,
        traceState: bytes | None = None,
        b3: int = 0,
        restarted: bool = False,
    ) -> None:
        self.traceId = traceId
        self.parentId = parentId
        self.sampled = sampled
        self.debug = debug
        self.traceState = traceState
        self.b3 = b3
        self.restarted = restarted

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TraceContext):
            return NotImplemented
        return (
            self.traceId == other.traceId
            and self.parentId == other.parentId
            and self.sampled == other.sampled
            and self.debug == other.debug
            and self.traceState == other.traceState
            and self.b3 == other.b3
            and self.restarted == other.restarted
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        return (
            "<TraceContext trace=%s parent=%s sampled=%s debug=%s b3=%d restarted=%s"
            " tracestate=%r>"
            % (
                self.traceId,
                self.parentId,
                self.sampled,
                self.debug,
                self.b3,
                self.restarted,
                self.traceState,
            )
        )


def newTraceId(getrandbits: Callable[[int], int]) -> str:
    """
    A new random trace id.

    @param getrandbits: C{random.Random().getrandbits} (or a stand-in).
    @return: 32 lowercase hex digits, never all zeros (TC1 "trace-id").
    """
    while True:
        n = getrandbits(128)
        if n:
            return "%032x" % n


def newSpanId(getrandbits: Callable[[int], int]) -> str:
    """
    A new random span id.

    @param getrandbits: C{random.Random().getrandbits} (or a stand-in).
    @return: 16 lowercase hex digits, never all zeros (TC1 "parent-id").
    """
    while True:
        n = getrandbits(64)
        if n:
            return "%016x" % n


def extract(
    headers: Iterable[tuple[bytes, bytes]], getrandbits: Callable[[int], int]
) -> TraceContext | None:
    """
    Read the caller's trace context from a request's headers.

    The request path calls this only when the request carried a header
    named in L{TRACE_HEADERS}; it reads every header once.

    @param headers: the request's headers as received, C{(name, value)}
        pairs of bytes, names in any case, repeated names kept in order.
    @param getrandbits: C{random.Random().getrandbits}; used only when a new
        trace starts here while the caller sent something to honour or to
        count (a sampling decision without ids, or invalid ids).
    @return: L{None} when there is nothing to continue, honour or count (no
        trace header, or only a C{tracestate}, which without a
        C{traceparent} "is invalid and MUST be discarded": TC1 "No
        traceparent Received", step 3); the request then starts a trace as
        any other. Otherwise a L{TraceContext}:
          - continuing the caller's trace (C{parentId} set);
          - or starting one here (C{parentId} L{None}, a new C{traceId})
            with the decision of a B3 sampling-only header (C{b3: 0},
            C{X-B3-Sampled: 1}, …: B3 "Sampling State"), C{b3} telling
            which encoding it came in;
          - or starting one here because the ids the caller sent were all
            invalid: C{restarted} is set, C{sampled} is L{None}.
    """
    traceparent = b""
    traceparents = 0
    tracestates: list[bytes] | None = None
    single: bytes | None = None
    multi: dict[bytes, bytes] | None = None
    for name, value in headers:
        if len(name) not in _NAME_LENGTHS:
            continue
        name = name.lower()
        if name == b"traceparent":
            traceparent = value
            traceparents += 1
        elif name == b"tracestate":
            if tracestates is None:
                tracestates = [value]
            else:
                tracestates.append(value)
        elif name == b"b3":
            # B3 "Multiple Headers": "When extracting state headers, the
            # first value wins"; the single header is read the same way.
            if single is None:
                single = value
        elif name in TRACE_HEADERS:
            if multi is None:
                multi = {name: value}
            elif name not in multi:
                multi[name] = value

    if traceparents == 1:
        parsed = _traceparent(traceparent.strip(_OWS))
        if parsed is not None:
            traceId, parentId, sampled = parsed
            b3, debug = _sameContext(traceId, parentId, single, multi)
            return TraceContext(
                traceId,
                parentId,
                sampled or debug,
                debug,
                None if tracestates is None else _tracestate(tracestates),
                b3,
                False,
            )
    # No traceparent, more than one (TC1's suite, test_traceparent_duplicated,
    # expects a new trace-id then), or an invalid one.
    restarted = traceparents > 0

    if single is not None:
        found = _b3Single(single.strip(_OWS))
        if found is not None:
            b3 = 1
            if multi is not None and found[0] is not None:
                b3 = _sameContext(found[0], found[1], None, multi)[0] or 1
            return _fromB3(found, b3, restarted, getrandbits)
        restarted = True
    if multi is not None:
        found = _b3Multi(multi)
        if found is None:
            restarted = True
        elif found is not _NOTHING:
            return _fromB3(found, 2, restarted, getrandbits)
    if restarted:
        return TraceContext(newTraceId(getrandbits), None, None, restarted=True)
    return None


def _fromB3(
    found: _B3, b3: int, restarted: bool, getrandbits: Callable[[int], int]
) -> TraceContext:
    """
    The context valid B3 gives: the caller's trace, or a new one with the
    caller's sampling decision (C{restarted} when invalid ids came too).
    """
    traceId, spanId, sampled, debug = found
    if traceId is None:
        return TraceContext(newTraceId(getrandbits), None, sampled, debug, None, b3, restarted)
    return TraceContext(traceId, spanId, sampled, debug, None, b3, False)


def _sameContext(
    traceId: str | None,
    parentId: str | None,
    single: bytes | None,
    multi: dict[bytes, bytes] | None,
) -> tuple[int, bool]:
    """
    Whether B3 sent beside the context read from another header names the
    same trace and span, and so is one more encoding of the same context.

    @return: which encoding did: 2 the C{X-B3-*} headers (whether or not the
        C{b3} header did too: L{outgoing} sends both then), 1 the C{b3}
        header alone, 0 none; and whether one that did asked for debug.
    """
    b3 = 0
    debug = False
    if single is not None:
        found = _b3Single(single.strip(_OWS))
        if found is not None and found[0] == traceId and found[1] == parentId:
            b3 = 1
            debug = found[3]
    if multi is not None:
        found = _b3Multi(multi)
        if found is not None and found[0] == traceId and found[1] == parentId:
            b3 = 2
            debug = debug or found[3]
    return b3, debug


def _traceparent(value: bytes) -> tuple[str, str, bool] | None:
    """
    Parse a C{traceparent} value (optional whitespace already removed).

    TC1 "traceparent Header Field Values" (#traceparent-header-field-values):
    C{version "-" trace-id "-" parent-id "-" trace-flags}, all lowercase
    hex (HEXDIGLC), version C{ff} forbidden, all-zero trace-id and
    parent-id invalid. TC1 "Versioning of traceparent"
    (#versioning-of-traceparent): a version above C{00} is read by its first
    four fields: at least 55 characters, and the flags "either at the end of
    the string or followed by a dash"; version C{00} is exactly 55.

    @return: C{(traceId, parentId, sampled)}, or L{None} when invalid. Only
        the sampled bit of the flags is taken; the other bits are not
        passed on (TC1 "Other Flags": "Vendors MUST set those to zero").
    """
    n = len(value)
    if n < 55:
        return None
    head = value[:55] if n > 55 else value
    # Every character of the four fields is lowercase hex or a dash, with
    # exactly three dashes where the fields end.
    if (
        head.translate(None, _HEXDASH)
        or head[2] != 45
        or head[35] != 45
        or head[52] != 45
        or head.count(b"-") != 3
    ):
        return None
    version = head[:2]
    if version == b"00":
        if n != 55:
            return None
    elif version == b"ff" or (n > 55 and value[55] != 45):
        return None
    traceId = head[3:35]
    parentId = head[36:52]
    if traceId == _ZERO32 or parentId == _ZERO16:
        return None
    return traceId.decode("ascii"), parentId.decode("ascii"), head[54] in _ODD


def _tracestate(values: list[bytes]) -> bytes | None:
    """
    Combine and check the C{tracestate} headers.

    TC1 "tracestate Header Field Values" (#tracestate-header-field-values):
    multiple headers "MUST be combined into a single header" (in order, with
    commas: RFC 9110 section 5.3); C{list = list-member 0*31( OWS "," OWS
    list-member )}, C{list-member = (key "=" value) / OWS}: "Empty and
    whitespace-only list members are allowed"; "There can be a maximum of
    32 list-members in a list". TC1 "Combined Header Value": "Only one entry
    per key is allowed".

    Anything invalid (a bad key or value, a repeated key, more than 32
    members, more than L{MAX_TRACESTATE} bytes) drops the whole header: TC1
    "A traceparent is Received", step 3: "If the tracestate header cannot be
    parsed the vendor MAY discard the entire header", as TC1's conformance
    suite expects. Empty members are not counted among the 32 (they are
    allowed "because it is difficult for a vendor to recognize the empty
    value when multiple tracestate headers are sent") and are not passed on.

    Trace Context Level 2 (a draft) lets keys hold C{@} anywhere and leaves
    repeated keys to the sender; this follows Level 1.

    @return: the members as C{key=value} joined by commas, or L{None} when
        the header is invalid or has no member.
    """
    if len(values) == 1:
        combined = values[0]
        if len(combined) > MAX_TRACESTATE:
            return None
    else:
        total = len(values) - 1
        for v in values:
            total += len(v)
        if total > MAX_TRACESTATE:
            return None
        combined = b",".join(values)
    # One pass over the whole value first: outside optional whitespace,
    # every character of a list is printable ASCII (keys' characters are a
    # subset of values'); and each member has exactly one "=" (neither keys
    # nor values may hold one), so more than 32 means more than 32 members.
    if combined.translate(None, _LISTCHARS) or combined.count(b"=") > 32:
        return None
    if combined.count(b",") > 64:
        # Many empty members (allowed, and not counted): fold them in one
        # pass rather than one loop turn each.
        combined = _EMPTY_MEMBERS.sub(b",", combined)
    members = []
    keys = set()
    for member in combined.split(b","):
        member = member.strip(_OWS)
        if not member:
            continue
        key, eq, value = member.partition(b"=")
        # A value is 1 to 256 characters, with no "=" and no tab (its last
        # character is not a space: strip() made it so).
        if not eq or not value or len(value) > 256 or b"=" in value or b"\t" in value:
            return None
        if key in keys or not key:
            return None
        # A simple key of key characters (the common case), or a
        # multi-tenant key.
        if key.translate(None, _KEYCHARS) or len(key) > 256 or key[0] not in _LCALPHA_DIGIT:
            if not _validTenantKey(key):
                return None
        keys.add(key)
        members.append(member)
    if not members:
        return None
    if len(members) == 1:
        return members[0]
    return b",".join(members)


def _validTenantKey(key: bytes) -> bool:
    """
    Whether C{key} is a TC1 multi-tenant tracestate key (grammar above):
    C{tenant-id "@" system-id}.
    """
    tenant, at, system = key.partition(b"@")
    return (
        at == b"@"
        and 0 < len(tenant) <= 241
        and 0 < len(system) <= 14
        and tenant[0] in _LCALPHA_DIGIT
        and system[0] in _LCALPHA
        and not tenant.translate(None, _KEYCHARS)
        and not system.translate(None, _KEYCHARS)
    )


def _hexId(value: bytes) -> bool:
    """
    Whether C{value} is lowercase hex and not all zeros (its length is
    checked by the caller).
    """
    return not value.translate(None, _HEXLC) and value.strip(b"0") != b""


def _b3Single(value: bytes) -> _B3 | None:
    """
    Parse a C{b3} header (optional whitespace already removed).

    B3 "Single Header": C{{TraceId}-{SpanId}-{SamplingState}-{ParentSpanId}}
    where the last two are optional, or the sampling state alone; a trace id
    is 16 or 32 lowercase hex digits, span ids 16, the state C{0} (deny),
    C{1} (accept) or C{d} (debug). All-zero ids are invalid (they cannot be
    sent on in a C{traceparent}).

    @return: C{(traceId, spanId, sampled, debug)}, ids L{None} for the
        sampling state alone; L{None} when invalid.
    """
    n = len(value)
    if n == 1:
        if value == b"1":
            return None, None, True, False
        if value == b"0":
            return None, None, False, False
        if value == b"d":
            return None, None, True, True
        return None
    if n >= 33 and value[16] == 45:
        width = 16
    elif n >= 49 and value[32] == 45:
        width = 32
    else:
        return None
    end = width + 17
    traceId = value[:width]
    spanId = value[width + 1 : end]
    if n == end:
        state = None
    elif value[end] != 45:
        return None
    elif n == end + 2:
        state = value[end + 1]
    elif n == end + 19 and value[end + 2] == 45 and _hexId(value[end + 3 :]):
        state = value[end + 1]
    else:
        return None
    if not _hexId(traceId) or not _hexId(spanId):
        return None
    trace = traceId.decode("ascii")
    if width == 16:
        trace = _PAD64 + trace
    span = spanId.decode("ascii")
    if state is None:
        return trace, span, None, False
    if state == 49:  # "1"
        return trace, span, True, False
    if state == 48:  # "0"
        return trace, span, False, False
    if state == 100:  # "d"
        return trace, span, True, True
    return None


def _b3Multi(headers: dict[bytes, bytes]) -> _B3 | None:
    """
    Read the C{X-B3-*} headers (the first value of each).

    B3 "Multiple Headers": C{X-B3-TraceId} (16 or 32 lowercase hex) and
    C{X-B3-SpanId} (16) go together, C{X-B3-ParentSpanId} (16) may come
    with them; C{X-B3-Sampled} is C{1} or C{0} ("a lenient implementation
    may accept" C{true} or C{false}: accepted, in any case); C{X-B3-Flags:
    1} is debug, and "Absent or any other value can be ignored". "An empty
    header … or an arbitrary nonsense value … are examples of malformed
    data": malformed B3 is invalid as a whole.

    @return: C{(traceId, spanId, sampled, debug)} (ids L{None} for a
        sampling decision alone), L{_NOTHING} when these headers say
        nothing (only an X-B3-Flags other than 1), L{None} when invalid.
    """
    debug = headers.get(b"x-b3-flags", b"").strip(_OWS) == b"1"
    sampledValue = headers.get(b"x-b3-sampled")
    sampled: bool | None
    if sampledValue is None:
        sampled = None
    else:
        sampledValue = sampledValue.strip(_OWS).lower()
        if sampledValue == b"1" or sampledValue == b"true":
            sampled = True
        elif sampledValue == b"0" or sampledValue == b"false":
            sampled = False
        else:
            return None
    if debug:
        # B3 "Debug Flag": "Debug implies an accept decision".
        sampled = True
    traceValue = headers.get(b"x-b3-traceid")
    spanValue = headers.get(b"x-b3-spanid")
    parentValue = headers.get(b"x-b3-parentspanid")
    if traceValue is None and spanValue is None:
        if parentValue is not None:
            return None
        if sampled is None:
            return _NOTHING
        return None, None, sampled, debug
    if traceValue is None or spanValue is None:
        return None
    traceValue = traceValue.strip(_OWS)
    spanValue = spanValue.strip(_OWS)
    if (
        len(traceValue) not in (16, 32)
        or len(spanValue) != 16
        or not _hexId(traceValue)
        or not _hexId(spanValue)
    ):
        return None
    if parentValue is not None:
        parentValue = parentValue.strip(_OWS)
        if len(parentValue) != 16 or not _hexId(parentValue):
            return None
    trace = traceValue.decode("ascii")
    if len(trace) == 16:
        trace = _PAD64 + trace
    return trace, spanValue.decode("ascii"), sampled, debug


def outgoing(
    traceId: str,
    spanId: str,
    sampled: bool,
    debug: bool,
    traceState: bytes | None,
    b3: int,
    more: str = "",
) -> bytes:
    """
    The trace headers of one try sent upstream.

    Always C{traceparent} (version C{00}, C{spanId} as the parent-id, flags
    C{01} or C{00}: TC1 "Mutating the traceparent Field", "Update
    parent-id", and "Downgrade the version" for a caller's higher version),
    C{tracestate} when there is one, and a single C{b3} header
    (C{{trace}-{span}-{1|0|d}}); with C{b3 == 2} also C{x-b3-traceid},
    C{x-b3-spanid} and C{x-b3-sampled}, or C{x-b3-flags: 1} in place of
    C{x-b3-sampled} when debug (B3 "Debug Flag": "Debug implies an accept
    decision, so don't also send the X-B3-Sampled header").

    No B3 parent span id is sent: B3 lets it be absent, and meshproxy sends
    its own span's id, whose parent the request path knows.

    A trace id whose high 64 bits are zero (one that came as a 64-bit B3 id)
    is sent in B3 as its 16 low digits, as the caller sent it, so that a
    64-bit-only B3 library downstream can read it; C{traceparent} always
    carries the 32 digits.

    Header names are lowercase (TC1: "tracing systems SHOULD encode the
    header name as ASCII lowercase"; B3: "prefer lowercase keys").

    @param traceId: 32 lowercase hex digits.
    @param spanId: this try's span id, 16 lowercase hex digits.
    @param sampled: whether this trace is sampled (as decided by now).
    @param debug: B3's debug decision (sends sampled).
    @param traceState: the C{tracestate} to send (L{TraceContext.traceState})
        or L{None}.
    @param b3: L{TraceContext.b3}: 2 sends the C{x-b3-*} headers too.
    @param more: header lines (ASCII) to send after these (the caller's
        own, made in the same string).
    @return: the header lines, each C{b"name: value\\r\\n"}.
    """
    if debug:
        flags = "01"
        state = "d"
    elif sampled:
        flags = "01"
        state = "1"
    else:
        flags = "00"
        state = "0"
    b3Trace = traceId[16:] if traceId.startswith(_PAD64) else traceId
    lines = "traceparent: 00-%s-%s-%s\r\nb3: %s-%s-%s\r\n%s" % (
        traceId,
        spanId,
        flags,
        b3Trace,
        spanId,
        state,
        more,
    )
    if b3 == 2:
        lines += "x-b3-traceid: %s\r\nx-b3-spanid: %s\r\n%s" % (
            b3Trace,
            spanId,
            "x-b3-flags: 1\r\n" if debug else "x-b3-sampled: %s\r\n" % (state,),
        )
    if traceState:
        return lines.encode("ascii") + b"tracestate: " + traceState + b"\r\n"
    return lines.encode("ascii")
