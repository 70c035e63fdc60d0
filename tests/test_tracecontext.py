"""
Tests for L{meshproxy.telemetry.tracecontext}.

The traceparent and tracestate cases follow the W3C Trace Context Level 1
conformance suite (test/test.py of w3c/trace-context, branch level-1), one
test per rule; the B3 cases follow openzipkin/b3-propagation's README.
"""

import random

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.telemetry.tracecontext import (
    MAX_TRACESTATE,
    TRACE_HEADERS,
    TraceContext,
    extract,
    newSpanId,
    newTraceId,
    outgoing,
)

TRACE = "12345678901234567890123456789012"
PARENT = "1234567890123456"
TP = "00-%s-%s-01" % (TRACE, PARENT)
TP_UNSAMPLED = "00-%s-%s-00" % (TRACE, PARENT)

B3_TRACE = "80f198ee56343ba864fe8b2a57d3eff7"
B3_SPAN = "e457b5a2e4d86bd1"
B3_PARENT = "05e3ac9a4f6e3b90"
B3_TRACE64 = "463ac35c9f6413ad"


def ctx(*headers):
    """
    Extract from C{(name, value)} text pairs, with seeded randomness.
    """
    return extract(
        [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers],
        random.Random(0).getrandbits,
    )


def state(tracestate, *more):
    """
    The tracestate passed on with the valid L{TP} and the given
    C{tracestate} header values.
    """
    headers = [("traceparent", TP_UNSAMPLED), ("tracestate", tracestate)]
    headers.extend(("tracestate", value) for value in more)
    context = ctx(*headers)
    return context.traceState


def parseLines(lines):
    """
    The C{(name, value)} pairs of header lines as L{outgoing} makes them.
    """
    if not lines.endswith(b"\r\n"):
        raise ValueError(lines)
    pairs = []
    for line in lines[:-2].split(b"\r\n"):
        name, sep, value = line.partition(b": ")
        if not sep:
            raise ValueError(line)
        pairs.append((name, value))
    return pairs


class Zeros:
    """
    A C{getrandbits} stand-in that gives zero C{zeros} times, then 1, and
    records the widths asked for.
    """

    def __init__(self, zeros):
        self.zeros = zeros
        self.asked = []

    def __call__(self, bits):
        self.asked.append(bits)
        if self.zeros:
            self.zeros -= 1
            return 0
        return 1


class ContextAssertions:
    """
    Assertions shared by the extraction tests.
    """

    def assertContinues(self, context, traceId=TRACE, parentId=PARENT):
        """
        C{context} continues the given trace from the given span.
        """
        self.assertIsInstance(context, TraceContext)
        self.assertEqual((context.traceId, context.parentId), (traceId, parentId))
        self.assertFalse(context.restarted)

    def assertRestarted(self, context):
        """
        C{context} starts a new trace because the caller's ids were invalid:
        a new trace id, no parent, no tracestate, no decision.
        """
        self.assertIsInstance(context, TraceContext)
        self.assertTrue(context.restarted)
        self.assertIsNone(context.parentId)
        self.assertNotEqual(context.traceId, TRACE)
        self.assertEqual(len(context.traceId), 32)
        self.assertEqual(context.traceId.strip("0123456789abcdef"), "")
        self.assertIsNone(context.traceState)
        self.assertIsNone(context.sampled)
        self.assertFalse(context.debug)


class TraceHeadersTests(SynchronousTestCase):
    """
    Tests for L{TRACE_HEADERS}.
    """

    def test_names(self):
        """
        The headers replaced are those of W3C Trace Context and of B3, as
        lowercase bytes.
        """
        self.assertEqual(
            TRACE_HEADERS,
            {
                b"traceparent",
                b"tracestate",
                b"b3",
                b"x-b3-traceid",
                b"x-b3-spanid",
                b"x-b3-parentspanid",
                b"x-b3-sampled",
                b"x-b3-flags",
            },
        )


class NoContextTests(SynchronousTestCase):
    """
    When L{extract} finds nothing to continue, honour or count.
    """

    def test_noHeaders(self):
        """
        No headers at all: L{None}.
        """
        self.assertIsNone(ctx())

    def test_noTraceHeaders(self):
        """
        Headers, but none of trace context: L{None}.
        """
        self.assertIsNone(ctx(("host", "a"), ("x-b3", "1"), ("b3-traceid", TRACE)))

    def test_otherTraceparentNames(self):
        """
        Names that only look like traceparent are not read (TC1 suite:
        test_traceparent_header_name).
        """
        self.assertIsNone(ctx(("trace-parent", TP)))
        self.assertIsNone(ctx(("trace.parent", TP)))

    def test_tracestateWithoutTraceparent(self):
        """
        A tracestate without a traceparent "is invalid and MUST be
        discarded" (TC1 "No traceparent Received"): nothing to continue
        (TC1 suite: test_tracestate_included_traceparent_missing).
        """
        self.assertIsNone(ctx(("tracestate", "foo=1")))
        self.assertIsNone(ctx(("tracestate", "foo=1,bar=2")))

    def test_b3FlagsNotDebug(self):
        """
        An X-B3-Flags other than 1 "can be ignored": alone, it says nothing.
        """
        self.assertIsNone(ctx(("x-b3-flags", "0")))
        self.assertIsNone(ctx(("x-b3-flags", "2")))


class TraceparentTests(ContextAssertions, SynchronousTestCase):
    """
    Reading C{traceparent}: each validity rule of TC1.
    """

    def test_sampled(self):
        """
        A valid traceparent continues the trace from the caller's span, with
        its sampled flag.
        """
        context = ctx(("traceparent", TP))
        self.assertContinues(context)
        self.assertIs(context.sampled, True)
        self.assertFalse(context.debug)
        self.assertIsNone(context.traceState)
        self.assertEqual(context.b3, 0)

    def test_notSampled(self):
        """
        Flags C{00}: not sampled (a decision, not L{None}).
        """
        context = ctx(("traceparent", TP_UNSAMPLED))
        self.assertContinues(context)
        self.assertIs(context.sampled, False)

    def test_specExample(self):
        """
        The example of TC1 "Examples of HTTP traceparent Headers".
        """
        context = ctx(("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"))
        self.assertContinues(context, "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")

    def test_nameAnyCase(self):
        """
        The header name is ASCII case-insensitive (TC1 suite:
        test_traceparent_header_name_valid_casing).
        """
        for name in ("TraceParent", "TrAcEpArEnT", "TRACEPARENT"):
            self.assertContinues(ctx((name, TP)))

    def test_duplicated(self):
        """
        Two traceparent headers: the trace restarts (TC1 suite:
        test_traceparent_duplicated).
        """
        self.assertRestarted(
            ctx(
                ("traceparent", "00-12345678901234567890123456789011-1234567890123456-01"),
                ("traceparent", TP),
            )
        )

    def test_duplicatedIdentical(self):
        """
        Two identical traceparent headers restart the trace as well.
        """
        self.assertRestarted(ctx(("traceparent", TP), ("TraceParent", TP)))

    def test_combinedInOneField(self):
        """
        Two values combined in one field (as a proxy folding repeated
        headers would) are one invalid value.
        """
        self.assertRestarted(ctx(("traceparent", TP + "," + TP)))

    def test_empty(self):
        """
        An empty traceparent restarts the trace.
        """
        self.assertRestarted(ctx(("traceparent", "")))

    def test_version00TrailingCharacter(self):
        """
        Version 00 is exactly 55 characters: anything after the flags is
        invalid (TC1 suite: test_traceparent_version_0x00).
        """
        self.assertRestarted(ctx(("traceparent", TP + ".")))

    def test_version00FutureFields(self):
        """
        Version 00 with more fields is invalid: only a higher version may
        have them.
        """
        self.assertRestarted(ctx(("traceparent", TP + "-what-the-future-will-be-like")))

    def test_futureVersion(self):
        """
        A higher version is read by its first four fields (TC1 suite:
        test_traceparent_version_0xcc).
        """
        self.assertContinues(ctx(("traceparent", "cc" + TP[2:])))
        self.assertContinues(ctx(("traceparent", "01" + TP[2:])))
        self.assertContinues(ctx(("traceparent", "fe" + TP[2:])))

    def test_futureVersionMoreFields(self):
        """
        A higher version may go on after the flags, after a dash.
        """
        context = ctx(("traceparent", "cc" + TP[2:] + "-what-the-future-will-be-like"))
        self.assertContinues(context)
        self.assertIs(context.sampled, True)
        self.assertContinues(ctx(("traceparent", "cc" + TP[2:] + "-")))

    def test_futureVersionNoDashAfterFlags(self):
        """
        After the flags of a higher version comes the end or a dash.
        """
        self.assertRestarted(
            ctx(("traceparent", "cc" + TP[2:] + ".what-the-future-will-be-like"))
        )
        self.assertRestarted(ctx(("traceparent", "cc" + TP[2:] + "1")))

    def test_futureVersionShorter(self):
        """
        A higher version shorter than 55 characters is not parsed.
        """
        self.assertRestarted(ctx(("traceparent", "cc" + TP[2:-1])))
        self.assertRestarted(ctx(("traceparent", "cc-%s-%s-1-" % (TRACE, PARENT))))

    def test_futureVersionFieldsChecked(self):
        """
        A higher version's trace-id, parent-id and flags are checked as
        version 00's.
        """
        self.assertRestarted(ctx(("traceparent", "cc-%s-%s-01-x" % ("0" * 32, PARENT))))
        self.assertRestarted(ctx(("traceparent", "cc-%s-%s-01-x" % (TRACE, "0" * 16))))
        self.assertRestarted(ctx(("traceparent", "cc-%s-%s-0g-x" % (TRACE, PARENT))))

    def test_versionFF(self):
        """
        Version ff is forbidden (TC1 suite: test_traceparent_version_0xff),
        with or without more fields.
        """
        self.assertRestarted(ctx(("traceparent", "ff" + TP[2:])))
        self.assertRestarted(ctx(("traceparent", "ff" + TP[2:] + "-x")))

    def test_versionIllegalCharacters(self):
        """
        The version is two hex digits (TC1 suite:
        test_traceparent_version_illegal_characters).
        """
        self.assertRestarted(ctx(("traceparent", ".0" + TP[2:])))
        self.assertRestarted(ctx(("traceparent", "0." + TP[2:])))

    def test_versionUppercase(self):
        """
        Hex is lowercase only: an uppercase version is invalid.
        """
        self.assertRestarted(ctx(("traceparent", "0A" + TP[2:])))
        self.assertRestarted(ctx(("traceparent", "CC" + TP[2:])))

    def test_versionTooLong(self):
        """
        A version of three or four digits is invalid (TC1 suite:
        test_traceparent_version_too_long).
        """
        self.assertRestarted(ctx(("traceparent", "0" + TP)))
        self.assertRestarted(ctx(("traceparent", "00" + TP)))

    def test_versionTooShort(self):
        """
        A one-digit version is invalid (TC1 suite:
        test_traceparent_version_too_short).
        """
        self.assertRestarted(ctx(("traceparent", TP[1:])))

    def test_traceIdAllZero(self):
        """
        An all-zero trace-id is invalid (TC1 suite:
        test_traceparent_trace_id_all_zero).
        """
        context = ctx(("traceparent", "00-%s-%s-01" % ("0" * 32, PARENT)))
        self.assertRestarted(context)
        self.assertNotEqual(context.traceId, "0" * 32)

    def test_traceIdIllegalCharacters(self):
        """
        The trace-id is hex (TC1 suite:
        test_traceparent_trace_id_illegal_characters).
        """
        self.assertRestarted(ctx(("traceparent", "00-.%s-%s-01" % (TRACE[1:], PARENT))))
        self.assertRestarted(ctx(("traceparent", "00-%s.-%s-01" % (TRACE[:-1], PARENT))))

    def test_traceIdUppercase(self):
        """
        An uppercase hex digit in the trace-id is invalid.
        """
        trace = "4BF92F3577B34DA6A3CE929D0E0E4736"
        self.assertRestarted(ctx(("traceparent", "00-%s-%s-01" % (trace, PARENT))))
        self.assertRestarted(ctx(("traceparent", "00-%sA-%s-01" % (TRACE[:-1], PARENT))))

    def test_traceIdTooLong(self):
        """
        A 33-digit trace-id is invalid (TC1 suite:
        test_traceparent_trace_id_too_long).
        """
        self.assertRestarted(ctx(("traceparent", "00-%s3-%s-01" % (TRACE, PARENT))))

    def test_traceIdTooShort(self):
        """
        A 31-digit trace-id is invalid (TC1 suite:
        test_traceparent_trace_id_too_short).
        """
        self.assertRestarted(ctx(("traceparent", "00-%s-%s-01" % (TRACE[:-1], PARENT))))

    def test_parentIdAllZero(self):
        """
        An all-zero parent-id is invalid (TC1 suite:
        test_traceparent_parent_id_all_zero).
        """
        self.assertRestarted(ctx(("traceparent", "00-%s-%s-01" % (TRACE, "0" * 16))))

    def test_parentIdIllegalCharacters(self):
        """
        The parent-id is hex (TC1 suite:
        test_traceparent_parent_id_illegal_characters).
        """
        self.assertRestarted(ctx(("traceparent", "00-%s-.%s-01" % (TRACE, PARENT[1:]))))
        self.assertRestarted(ctx(("traceparent", "00-%s-%s.-01" % (TRACE, PARENT[:-1]))))

    def test_parentIdUppercase(self):
        """
        An uppercase hex digit in the parent-id is invalid.
        """
        self.assertRestarted(ctx(("traceparent", "00-%s-00F067AA0BA902B7-01" % (TRACE,))))

    def test_parentIdTooLong(self):
        """
        A 17-digit parent-id is invalid (TC1 suite:
        test_traceparent_parent_id_too_long).
        """
        self.assertRestarted(ctx(("traceparent", "00-%s-%s7-01" % (TRACE, PARENT))))

    def test_parentIdTooShort(self):
        """
        A 15-digit parent-id is invalid (TC1 suite:
        test_traceparent_parent_id_too_short).
        """
        self.assertRestarted(ctx(("traceparent", "00-%s-%s-01" % (TRACE, PARENT[:-1]))))

    def test_flagsIllegalCharacters(self):
        """
        The flags are hex (TC1 suite:
        test_traceparent_trace_flags_illegal_characters).
        """
        self.assertRestarted(ctx(("traceparent", "00-%s-%s-.0" % (TRACE, PARENT))))
        self.assertRestarted(ctx(("traceparent", "00-%s-%s-0." % (TRACE, PARENT))))

    def test_flagsUppercase(self):
        """
        Uppercase flags are invalid.
        """
        self.assertRestarted(ctx(("traceparent", "00-%s-%s-0F" % (TRACE, PARENT))))

    def test_flagsTooLong(self):
        """
        Three flag digits are invalid (TC1 suite:
        test_traceparent_trace_flags_too_long).
        """
        self.assertRestarted(ctx(("traceparent", "00-%s-%s-001" % (TRACE, PARENT))))

    def test_flagsTooShort(self):
        """
        One flag digit is invalid (TC1 suite:
        test_traceparent_trace_flags_too_short).
        """
        self.assertRestarted(ctx(("traceparent", "00-%s-%s-1" % (TRACE, PARENT))))

    def test_flagsSampledBitOnly(self):
        """
        Only the sampled bit (0x01) is read: the flags are a bit field, not
        a number to compare.
        """
        for flags, sampled in [
            ("01", True),
            ("03", True),
            ("ff", True),
            ("09", True),
            ("00", False),
            ("02", False),
            ("fe", False),
            ("10", False),
        ]:
            context = ctx(("traceparent", "00-%s-%s-%s" % (TRACE, PARENT, flags)))
            self.assertContinues(context)
            self.assertIs(context.sampled, sampled, flags)

    def test_otherFlagsNotPassedOn(self):
        """
        Flags other than sampled are not sent on: they are set to zero.
        """
        for flags, sent in [("ff", b"01"), ("fe", b"00"), ("03", b"01"), ("02", b"00")]:
            context = ctx(("traceparent", "00-%s-%s-%s" % (TRACE, PARENT, flags)))
            lines = outgoing(
                context.traceId, "00f067aa0ba902b7", context.sampled, False, None, 0
            )
            self.assertEqual(
                dict(parseLines(lines))[b"traceparent"],
                b"00-%s-00f067aa0ba902b7-%s" % (TRACE.encode(), sent),
            )

    def test_whitespaceAround(self):
        """
        Spaces and tabs before and after the value are not part of it (TC1
        suite: test_traceparent_ows_handling).
        """
        for value in (" " + TP, "\t" + TP, TP + " ", TP + "\t", "\t " + TP + " \t"):
            self.assertContinues(ctx(("traceparent", value)))

    def test_whitespaceInside(self):
        """
        Whitespace inside the value is invalid.
        """
        self.assertRestarted(ctx(("traceparent", TP.replace("-", " -", 1))))
        self.assertRestarted(ctx(("traceparent", TP[:-2] + " 1")))

    def test_otherSeparators(self):
        """
        The fields are separated by dashes only.
        """
        self.assertRestarted(ctx(("traceparent", TP.replace("-", "_"))))
        self.assertRestarted(ctx(("traceparent", TP.replace("-", "--", 1)[:55])))

    def test_nonAscii(self):
        """
        Bytes outside ASCII are invalid.
        """
        self.assertRestarted(ctx(("traceparent", TP[:10] + "\xe9" + TP[11:])))


class TracestateTests(ContextAssertions, SynchronousTestCase):
    """
    Reading C{tracestate} beside a valid C{traceparent}.
    """

    def test_passedOn(self):
        """
        A valid tracestate is kept with the traceparent it came with (TC1
        suite: test_tracestate_included_traceparent_included).
        """
        context = ctx(("traceparent", TP_UNSAMPLED), ("tracestate", "foo=1,bar=2"))
        self.assertContinues(context)
        self.assertEqual(context.traceState, b"foo=1,bar=2")

    def test_absent(self):
        """
        Without a tracestate header there is none to pass on.
        """
        self.assertIsNone(ctx(("traceparent", TP)).traceState)

    def test_droppedWithInvalidTraceparent(self):
        """
        When the traceparent is invalid the tracestate is not read: the
        trace restarts without it.
        """
        context = ctx(("traceparent", TP[:-1]), ("tracestate", "foo=1"))
        self.assertRestarted(context)

    def test_droppedWithDuplicatedTraceparent(self):
        """
        A duplicated traceparent drops the tracestate too.
        """
        self.assertRestarted(ctx(("traceparent", TP), ("tracestate", "foo=1"), ("traceparent", TP)))

    def test_nameAnyCase(self):
        """
        The header name is ASCII case-insensitive (TC1 suite:
        test_tracestate_header_name_valid_casing).
        """
        for name in ("TraceState", "TrAcEsTaTe", "TRACESTATE"):
            context = ctx(("traceparent", TP), (name, "foo=1"))
            self.assertEqual(context.traceState, b"foo=1")

    def test_otherNames(self):
        """
        Names that only look like tracestate are not read (TC1 suite:
        test_tracestate_header_name).
        """
        for name in ("trace-state", "trace.state"):
            self.assertIsNone(ctx(("traceparent", TP), (name, "foo=1")).traceState)

    def test_empty(self):
        """
        An empty tracestate is accepted and not passed on (TC1 suite:
        test_tracestate_empty_header).
        """
        context = ctx(("traceparent", TP), ("tracestate", ""))
        self.assertContinues(context)
        self.assertIsNone(context.traceState)

    def test_emptyBesideAnother(self):
        """
        An empty tracestate header beside another, before or after it,
        leaves the other's members.
        """
        self.assertEqual(state("foo=1", ""), b"foo=1")
        self.assertEqual(state("", "foo=1"), b"foo=1")

    def test_emptyMembers(self):
        """
        Empty and whitespace-only members are allowed, and dropped.
        """
        self.assertEqual(state(",foo=1,,  , \t,bar=2,"), b"foo=1,bar=2")
        self.assertIsNone(state(" , ,\t"))

    def test_multipleHeadersCombinedInOrder(self):
        """
        Several tracestate headers are combined in order (TC1 suite:
        test_tracestate_multiple_headers_different_keys).
        """
        self.assertEqual(
            state("foo=1,bar=2", "rojo=1,congo=2", "baz=3"),
            b"foo=1,bar=2,rojo=1,congo=2,baz=3",
        )

    def test_duplicatedKeys(self):
        """
        A key twice makes the tracestate invalid (TC1 "Combined Header
        Value": "Only one entry per key is allowed"; TC1 suite:
        test_tracestate_duplicated_keys), whether in one header or across
        several; the traceparent is still used.
        """
        for values in [("foo=1,foo=1",), ("foo=1,foo=2",), ("foo=1", "foo=1"), ("foo=1", "foo=2")]:
            headers = [("traceparent", TP)] + [("tracestate", v) for v in values]
            context = ctx(*headers)
            self.assertContinues(context)
            self.assertIsNone(context.traceState, values)

    def test_allAllowedCharacters(self):
        """
        Every character the key and value grammars allow is kept (TC1 suite:
        test_tracestate_all_allowed_characters).
        """
        key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/"
        tenantKey = key + "@a-z0-9_-*/"
        value = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in ",=")
        self.assertEqual(state(key + "=" + value), (key + "=" + value).encode())
        self.assertEqual(state(tenantKey + "=" + value), (tenantKey + "=" + value).encode())

    def test_whitespaceAroundMembers(self):
        """
        Spaces and tabs around members and commas are optional whitespace,
        not passed on (TC1 suite: test_tracestate_ows_handling).
        """
        self.assertEqual(state("foo=1 \t , \t bar=2, \t baz=3"), b"foo=1,bar=2,baz=3")
        self.assertEqual(state("foo=1\t \t,\t \tbar=2,\t \tbaz=3"), b"foo=1,bar=2,baz=3")
        for value in (" foo=1", "\tfoo=1", "foo=1 ", "foo=1\t", "\t foo=1 \t"):
            self.assertEqual(state(value), b"foo=1", value)

    def test_valueLeadingSpaces(self):
        """
        Spaces after the equals sign are part of the value, and kept.
        """
        self.assertEqual(state("foo=  1,bar= x y"), b"foo=  1,bar= x y")

    def test_keyIllegalCharacters(self):
        """
        A key of characters the grammar does not allow makes the tracestate
        invalid (TC1 suite: test_tracestate_key_illegal_characters).
        """
        for value in ("foo =1", "FOO=1", "foo.bar=1", "fOo=1", "_foo=1", "-foo=1", "foo\t=1"):
            self.assertIsNone(state(value + ",bar=2"), value)

    def test_keyVendorFormat(self):
        """
        A multi-tenant key is one tenant-id, one C{@}, one system-id (TC1
        suite, Level 1: test_tracestate_key_illegal_vendor_format).
        """
        for value in ("foo@=1", "@foo=1", "foo@@bar=1", "foo@bar@baz=1", "@=1"):
            self.assertIsNone(state(value + ",bar=2"), value)
        self.assertEqual(state("foo@bar=1,bar=2"), b"foo@bar=1,bar=2")

    def test_keyLengthLimit(self):
        """
        A simple key has up to 256 characters (TC1 suite:
        test_tracestate_key_length_limit).
        """
        self.assertEqual(state("foo=1", "z" * 256 + "=1"), b"foo=1," + b"z" * 256 + b"=1")
        self.assertIsNone(state("foo=1", "z" * 257 + "=1"))

    def test_tenantLengthLimit(self):
        """
        A tenant-id has up to 241 characters.
        """
        key = "t" * 241 + "@" + "v" * 14
        self.assertEqual(state("foo=1", key + "=1"), ("foo=1," + key + "=1").encode())
        self.assertIsNone(state("foo=1", "t" * 242 + "@v=1"))

    def test_systemLengthLimit(self):
        """
        A system-id has up to 14 characters.
        """
        self.assertEqual(state("t@" + "v" * 14 + "=1"), ("t@" + "v" * 14 + "=1").encode())
        self.assertIsNone(state("foo=1", "t@" + "v" * 15 + "=1"))

    def test_tenantMayStartWithDigit(self):
        """
        A tenant-id may begin with a digit; a system-id may not.
        """
        self.assertEqual(state("1tenant@vendor=1"), b"1tenant@vendor=1")
        self.assertIsNone(state("tenant@1vendor=1"))

    def test_simpleKeyMayStartWithDigit(self):
        """
        A simple key beginning with a digit is kept: TC1's note says keys
        "MUST begin with a lowercase letter or a digit" (its ABNF asks for a
        letter), and Level 2 allows it.
        """
        self.assertEqual(state("1vendor=1"), b"1vendor=1")

    def test_memberCountLimit(self):
        """
        Up to 32 members are kept; 33 make the tracestate invalid (TC1 suite:
        test_tracestate_member_count_limit).
        """
        headers = [
            ",".join("bar%02d=%02d" % (i, i) for i in range(1, 11)),
            ",".join("bar%02d=%02d" % (i, i) for i in range(11, 21)),
            ",".join("bar%02d=%02d" % (i, i) for i in range(21, 31)),
        ]
        kept = state(*headers, "bar31=31,bar32=32")
        self.assertEqual(kept.split(b",")[0], b"bar01=01")
        self.assertEqual(len(kept.split(b",")), 32)
        self.assertIsNone(state(*headers, "bar31=31,bar32=32,bar33=33"))

    def test_emptyMembersNotCounted(self):
        """
        Empty members do not count towards the 32.
        """
        members = ",".join("k%d=%d" % (i, i) for i in range(32))
        self.assertEqual(len(state(members + ",,,", ",, ,").split(b",")), 32)

    def test_manyEmptyMembers(self):
        """
        Many empty members (folded in one pass) are dropped just as a few,
        and leave the members and their values as they were.
        """
        gap = " ,\t, ," * 40
        self.assertEqual(
            state(gap + "foo=  1 " + gap + "bar@baz=x y" + gap, ",,,", gap),
            b"foo=  1,bar@baz=x y",
        )
        self.assertEqual(state("foo=1" + "," * 5000 + "foo=2"), None)
        self.assertEqual(state("foo=1 " + " ," * 3000 + "\tbar=2 "), b"foo=1,bar=2")
        members = ",".join("k%d=%d" % (i, i) for i in range(32))
        self.assertEqual(len(state(members.replace(",", ", ," * 20)).split(b",")), 32)
        self.assertIsNone(state(members.replace(",", ", ," * 20) + ",k32=1"))

    def test_valueIllegalCharacters(self):
        """
        A value with an equals sign, or an empty value, makes the tracestate
        invalid (TC1 suite: test_tracestate_value_illegal_characters).
        """
        self.assertIsNone(state("foo=bar=baz"))
        self.assertIsNone(state("foo=,bar=3"))

    def test_valueControlAndNonAscii(self):
        """
        Values are printable ASCII: a tab, a DEL, or a byte above 0x7e makes
        the tracestate invalid.
        """
        for value in ("foo=a\tb", "foo=a\x7fb", "foo=caf\xe9", "foo=a\x00b", "foo=\x1f"):
            self.assertIsNone(state(value + ",bar=2"), repr(value))

    def test_valueWhitespaceOnly(self):
        """
        A value of only spaces is empty once its trailing spaces are taken
        as optional whitespace.
        """
        self.assertIsNone(state("foo=   ,bar=2"))

    def test_valueLengthLimit(self):
        """
        A value has up to 256 characters.
        """
        self.assertEqual(state("foo=" + "v" * 256), b"foo=" + b"v" * 256)
        self.assertIsNone(state("foo=" + "v" * 257))

    def test_memberWithoutEquals(self):
        """
        A member that is not C{key=value} makes the tracestate invalid.
        """
        self.assertIsNone(state("foo,bar=2"))
        self.assertIsNone(state("=1,bar=2"))

    def test_invalidTracestateKeepsTraceparent(self):
        """
        An invalid tracestate does not affect the traceparent.
        """
        context = ctx(("traceparent", TP), ("tracestate", "FOO=1"))
        self.assertContinues(context)
        self.assertIs(context.sampled, True)
        self.assertIsNone(context.traceState)

    def test_sizeLimit(self):
        """
        A combined tracestate up to L{MAX_TRACESTATE} bytes is read; a
        longer one is dropped unread, however valid.
        """
        member = "foo=1"
        padded = member + " " * (MAX_TRACESTATE - len(member))
        self.assertEqual(state(padded), b"foo=1")
        self.assertIsNone(state(padded + " "))

    def test_sizeLimitCombined(self):
        """
        The limit applies to the headers combined, commas included.
        """
        first = "foo=1" + " " * 4000
        second = "bar=2" + " " * (MAX_TRACESTATE - len(first) - 1 - len("bar=2"))
        self.assertEqual(state(first, second), b"foo=1,bar=2")
        self.assertIsNone(state(first, second + " "))

    def test_futureVersionTracestate(self):
        """
        The tracestate of a higher traceparent version is read as well.
        """
        context = ctx(("traceparent", "cc" + TP[2:] + "-x"), ("tracestate", "foo=1"))
        self.assertEqual(context.traceState, b"foo=1")


class B3SingleTests(ContextAssertions, SynchronousTestCase):
    """
    Reading the single C{b3} header.
    """

    def test_full(self):
        """
        Trace id, span id, sampling state and parent: the trace continues
        from the caller's span (B3's example).
        """
        context = ctx(("b3", "%s-%s-1-%s" % (B3_TRACE, B3_SPAN, B3_PARENT)))
        self.assertContinues(context, B3_TRACE, B3_SPAN)
        self.assertIs(context.sampled, True)
        self.assertFalse(context.debug)
        self.assertEqual(context.b3, 1)
        self.assertIsNone(context.traceState)

    def test_idsOnly(self):
        """
        Ids without a sampling state defer the decision: C{sampled} is
        L{None}.
        """
        context = ctx(("b3", "%s-%s" % (B3_TRACE, B3_SPAN)))
        self.assertContinues(context, B3_TRACE, B3_SPAN)
        self.assertIsNone(context.sampled)

    def test_sampledStates(self):
        """
        C{1} accepts, C{0} denies, C{d} is debug (which implies accept).
        """
        for state_, sampled, debug in [("1", True, False), ("0", False, False), ("d", True, True)]:
            context = ctx(("b3", "%s-%s-%s" % (B3_TRACE, B3_SPAN, state_)))
            self.assertContinues(context, B3_TRACE, B3_SPAN)
            self.assertEqual((context.sampled, context.debug), (sampled, debug))

    def test_debugWithParent(self):
        """
        A debug child span (B3 RATIONALE's example).
        """
        context = ctx(("b3", "%s-%s-d-%s" % (B3_TRACE, B3_SPAN, B3_PARENT)))
        self.assertContinues(context, B3_TRACE, B3_SPAN)
        self.assertTrue(context.debug)
        self.assertIs(context.sampled, True)

    def test_64bitTraceId(self):
        """
        A 64-bit trace id is left-padded with 16 zeros.
        """
        context = ctx(("b3", "%s-%s-1" % (B3_TRACE64, B3_SPAN)))
        self.assertContinues(context, "0" * 16 + B3_TRACE64, B3_SPAN)

    def test_samplingOnly(self):
        """
        A sampling state alone starts a new trace here with the caller's
        decision (C{parentId} L{None}, not counted as a restart).
        """
        for value, sampled, debug in [("0", False, False), ("1", True, False), ("d", True, True)]:
            context = ctx(("b3", value))
            self.assertIsNone(context.parentId)
            self.assertEqual(len(context.traceId), 32)
            self.assertEqual((context.sampled, context.debug), (sampled, debug))
            self.assertEqual(context.b3, 1)
            self.assertFalse(context.restarted)

    def test_samplingOnlyNewTraceIdFromRandomness(self):
        """
        The new trace id comes from the C{getrandbits} given.
        """
        context = extract([(b"b3", b"0")], random.Random(5).getrandbits)
        self.assertEqual(context.traceId, newTraceId(random.Random(5).getrandbits))

    def test_nameAnyCase(self):
        """
        The header name is case-insensitive.
        """
        self.assertContinues(ctx(("B3", "%s-%s" % (B3_TRACE, B3_SPAN))), B3_TRACE, B3_SPAN)

    def test_whitespaceAround(self):
        """
        Optional whitespace around the value is not part of it.
        """
        context = ctx(("b3", " \t%s-%s-1 " % (B3_TRACE, B3_SPAN)))
        self.assertContinues(context, B3_TRACE, B3_SPAN)
        self.assertIs(ctx(("b3", " 0\t")).sampled, False)

    def test_firstWins(self):
        """
        Of two b3 headers the first is read.
        """
        context = ctx(
            ("b3", "%s-%s-1" % (B3_TRACE, B3_SPAN)), ("b3", "%s-%s-0" % (TRACE, PARENT))
        )
        self.assertContinues(context, B3_TRACE, B3_SPAN)

    def test_invalid(self):
        """
        A malformed b3 header is ignored: the trace restarts.
        """
        for value in [
            "",
            "2",
            "x",
            "01",
            "true",
            B3_TRACE.upper() + "-" + B3_SPAN,
            B3_TRACE + "-" + B3_SPAN.upper(),
            B3_TRACE[:-1] + "-" + B3_SPAN,
            B3_TRACE + "0-" + B3_SPAN,
            B3_TRACE64[:-1] + "-" + B3_SPAN,
            B3_TRACE64 + "0-" + B3_SPAN,
            B3_TRACE + "-" + B3_SPAN[:-1],
            B3_TRACE + "-" + B3_SPAN + "0",
            "0" * 32 + "-" + B3_SPAN,
            "0" * 16 + "-" + B3_SPAN,
            B3_TRACE + "-" + "0" * 16,
            B3_TRACE + "-" + B3_SPAN + "-",
            B3_TRACE + "-" + B3_SPAN + "-2",
            B3_TRACE + "-" + B3_SPAN + "-x",
            B3_TRACE + "-" + B3_SPAN + "-true",
            B3_TRACE + "-" + B3_SPAN + "-1-",
            B3_TRACE + "-" + B3_SPAN + "-1-" + B3_PARENT[:-1],
            B3_TRACE + "-" + B3_SPAN + "-1-" + B3_PARENT + "0",
            B3_TRACE + "-" + B3_SPAN + "-1-" + B3_PARENT.upper(),
            B3_TRACE + "-" + B3_SPAN + "-1-" + "0" * 16,
            B3_TRACE + "-" + B3_SPAN + "-1-" + B3_PARENT + "-1",
            B3_TRACE + "-" + B3_SPAN + "-" + B3_PARENT,
            B3_TRACE + "-" + B3_SPAN + "--" + B3_PARENT,
            B3_TRACE + "_" + B3_SPAN,
            B3_TRACE + "--" + B3_SPAN[:-1],
        ]:
            self.assertRestarted(ctx(("b3", value)))


class B3MultiTests(ContextAssertions, SynchronousTestCase):
    """
    Reading the C{X-B3-*} headers.
    """

    def test_full(self):
        """
        Trace id, span id, parent and sampled (B3's example).
        """
        context = ctx(
            ("X-B3-TraceId", B3_TRACE),
            ("X-B3-ParentSpanId", B3_PARENT),
            ("X-B3-SpanId", B3_SPAN),
            ("X-B3-Sampled", "1"),
        )
        self.assertContinues(context, B3_TRACE, B3_SPAN)
        self.assertIs(context.sampled, True)
        self.assertFalse(context.debug)
        self.assertEqual(context.b3, 2)
        self.assertIsNone(context.traceState)

    def test_idsOnly(self):
        """
        Trace and span ids alone defer the decision.
        """
        context = ctx(("x-b3-traceid", B3_TRACE), ("x-b3-spanid", B3_SPAN))
        self.assertContinues(context, B3_TRACE, B3_SPAN)
        self.assertIsNone(context.sampled)

    def test_64bitTraceId(self):
        """
        A 64-bit trace id is left-padded with 16 zeros.
        """
        context = ctx(("x-b3-traceid", B3_TRACE64), ("x-b3-spanid", B3_SPAN))
        self.assertContinues(context, "0" * 16 + B3_TRACE64, B3_SPAN)

    def test_sampledValues(self):
        """
        X-B3-Sampled is 1 or 0; true and false are accepted too, in any
        case.
        """
        for value, sampled in [
            ("1", True),
            ("0", False),
            ("true", True),
            ("false", False),
            ("True", True),
            ("FALSE", False),
            (" 1 ", True),
        ]:
            context = ctx(
                ("x-b3-traceid", B3_TRACE), ("x-b3-spanid", B3_SPAN), ("x-b3-sampled", value)
            )
            self.assertIs(context.sampled, sampled, value)

    def test_debugFlag(self):
        """
        X-B3-Flags: 1 is debug, which implies sampled, whatever
        X-B3-Sampled says.
        """
        for extra in ([], [("x-b3-sampled", "0")], [("x-b3-sampled", "1")]):
            context = ctx(
                ("x-b3-traceid", B3_TRACE), ("x-b3-spanid", B3_SPAN), ("x-b3-flags", "1"), *extra
            )
            self.assertTrue(context.debug)
            self.assertIs(context.sampled, True)

    def test_otherFlagsIgnored(self):
        """
        X-B3-Flags other than 1 are ignored.
        """
        for value in ("0", "2", "", "true", "d"):
            context = ctx(
                ("x-b3-traceid", B3_TRACE),
                ("x-b3-spanid", B3_SPAN),
                ("x-b3-sampled", "0"),
                ("x-b3-flags", value),
            )
            self.assertContinues(context, B3_TRACE, B3_SPAN)
            self.assertFalse(context.debug)
            self.assertIs(context.sampled, False)

    def test_namesAnyCase(self):
        """
        The names are case-insensitive.
        """
        context = ctx(("X-B3-TRACEID", B3_TRACE), ("x-B3-spanId", B3_SPAN), ("X-b3-SAMPLED", "0"))
        self.assertContinues(context, B3_TRACE, B3_SPAN)
        self.assertIs(context.sampled, False)

    def test_firstValueWins(self):
        """
        "When extracting state headers, the first value wins."
        """
        context = ctx(
            ("x-b3-traceid", B3_TRACE),
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", B3_SPAN),
            ("x-b3-spanid", "not an id"),
            ("x-b3-sampled", "0"),
            ("x-b3-sampled", "1"),
        )
        self.assertContinues(context, B3_TRACE, B3_SPAN)
        self.assertIs(context.sampled, False)

    def test_samplingOnly(self):
        """
        A decision without ids starts a new trace with it (a deny for a
        health check, B3's example; or a debug request).
        """
        for headers, sampled, debug in [
            ([("X-B3-Sampled", "0")], False, False),
            ([("X-B3-Sampled", "1")], True, False),
            ([("X-B3-Flags", "1")], True, True),
        ]:
            context = ctx(*headers)
            self.assertIsNone(context.parentId)
            self.assertEqual((context.sampled, context.debug), (sampled, debug))
            self.assertEqual(context.b3, 2)
            self.assertFalse(context.restarted)

    def test_invalid(self):
        """
        Malformed X-B3 headers are ignored as a whole: the trace restarts.
        """
        good = {"x-b3-traceid": B3_TRACE, "x-b3-spanid": B3_SPAN}
        for change in [
            {"x-b3-traceid": None},
            {"x-b3-spanid": None},
            {"x-b3-traceid": B3_TRACE.upper()},
            {"x-b3-traceid": B3_TRACE[:-1]},
            {"x-b3-traceid": B3_TRACE + "0"},
            {"x-b3-traceid": B3_TRACE64[:-1]},
            {"x-b3-traceid": "0" * 32},
            {"x-b3-traceid": "0" * 16},
            {"x-b3-traceid": ""},
            {"x-b3-spanid": B3_SPAN.upper()},
            {"x-b3-spanid": B3_SPAN[:-1]},
            {"x-b3-spanid": B3_SPAN + "0"},
            {"x-b3-spanid": "0" * 16},
            {"x-b3-parentspanid": "-"},
            {"x-b3-parentspanid": ""},
            {"x-b3-parentspanid": B3_PARENT[:-1]},
            {"x-b3-parentspanid": B3_PARENT.upper()},
            {"x-b3-parentspanid": "0" * 16},
            {"x-b3-sampled": ""},
            {"x-b3-sampled": "yes"},
            {"x-b3-sampled": "d"},
            {"x-b3-sampled": "2"},
        ]:
            headers = dict(good, **change)
            pairs = [(k, v) for k, v in headers.items() if v is not None]
            self.assertRestarted(ctx(*pairs))

    def test_invalidWithoutIds(self):
        """
        A parent span id without ids, or a nonsense decision, is malformed.
        """
        self.assertRestarted(ctx(("x-b3-parentspanid", B3_PARENT)))
        self.assertRestarted(ctx(("x-b3-sampled", "")))
        self.assertRestarted(ctx(("x-b3-sampled", "maybe"), ("x-b3-flags", "1")))


class PrecedenceTests(ContextAssertions, SynchronousTestCase):
    """
    Which header wins when several encodings come together.
    """

    def test_traceparentOverB3(self):
        """
        A valid traceparent wins over B3 naming another trace; that B3 is
        not this context's (C{b3} 0), and its decision is not taken.
        """
        context = ctx(
            ("b3", "%s-%s-d" % (B3_TRACE, B3_SPAN)),
            ("x-b3-traceid", B3_TRACE),
            ("x-b3-spanid", B3_SPAN),
            ("traceparent", TP_UNSAMPLED),
        )
        self.assertContinues(context)
        self.assertEqual(context.b3, 0)
        self.assertIs(context.sampled, False)
        self.assertFalse(context.debug)

    def test_sameContextSingle(self):
        """
        A b3 header naming the same trace and span as the traceparent is the
        same context in another encoding: C{b3} is 1, and its debug is taken.
        """
        context = ctx(("traceparent", TP_UNSAMPLED), ("b3", "%s-%s-d" % (TRACE, PARENT)))
        self.assertContinues(context)
        self.assertEqual(context.b3, 1)
        self.assertTrue(context.debug)
        self.assertIs(context.sampled, True)

    def test_sameContextMulti(self):
        """
        X-B3 headers naming the same context: C{b3} is 2, so that they are
        sent on too.
        """
        context = ctx(
            ("traceparent", TP),
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", PARENT),
            ("x-b3-sampled", "1"),
        )
        self.assertContinues(context)
        self.assertEqual(context.b3, 2)
        self.assertFalse(context.debug)

    def test_sameContextBothEncodings(self):
        """
        When both B3 encodings name the same context C{b3} is 2 (both are
        sent on), and debug from either is taken.
        """
        context = ctx(
            ("traceparent", TP),
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", PARENT),
            ("b3", "%s-%s" % (TRACE, PARENT)),
        )
        self.assertEqual(context.b3, 2)
        self.assertFalse(context.debug)
        context = ctx(
            ("traceparent", TP),
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", PARENT),
            ("x-b3-flags", "1"),
            ("b3", "%s-%s" % (TRACE, PARENT)),
        )
        self.assertEqual(context.b3, 2)
        self.assertTrue(context.debug)

    def test_singleWithSameMulti(self):
        """
        A b3 header and X-B3 headers naming the same context, without a
        traceparent: the context is the b3 header's, and C{b3} is 2.
        """
        context = ctx(
            ("b3", "%s-%s-1" % (B3_TRACE64, B3_SPAN)),
            ("x-b3-traceid", B3_TRACE64),
            ("x-b3-spanid", B3_SPAN),
            ("x-b3-sampled", "0"),
        )
        self.assertContinues(context, "0" * 16 + B3_TRACE64, B3_SPAN)
        self.assertIs(context.sampled, True)
        self.assertEqual(context.b3, 2)

    def test_sameContext64bit(self):
        """
        A 64-bit B3 trace id matches a traceparent whose high half is zero.
        """
        trace = "0" * 16 + B3_TRACE64
        context = ctx(
            ("traceparent", "00-%s-%s-01" % (trace, PARENT)), ("b3", "%s-%s" % (B3_TRACE64, PARENT))
        )
        self.assertContinues(context, trace, PARENT)
        self.assertEqual(context.b3, 1)

    def test_otherSpanIsNotSameContext(self):
        """
        B3 with the same trace but another span is not the same context.
        """
        context = ctx(("traceparent", TP), ("b3", "%s-%s-d" % (TRACE, B3_SPAN)))
        self.assertEqual(context.b3, 0)
        self.assertFalse(context.debug)

    def test_invalidSameContextB3Ignored(self):
        """
        Malformed B3 beside a valid traceparent changes nothing.
        """
        context = ctx(("traceparent", TP), ("x-b3-traceid", TRACE), ("x-b3-spanid", "x"))
        self.assertContinues(context)
        self.assertEqual(context.b3, 0)

    def test_invalidTraceparentValidB3(self):
        """
        An invalid traceparent beside valid B3: the trace continues from the
        B3 (not a restart), without the tracestate.
        """
        context = ctx(
            ("traceparent", TP[:-1]),
            ("tracestate", "foo=1"),
            ("b3", "%s-%s-1" % (B3_TRACE, B3_SPAN)),
        )
        self.assertContinues(context, B3_TRACE, B3_SPAN)
        self.assertIs(context.sampled, True)
        self.assertEqual(context.b3, 1)
        self.assertIsNone(context.traceState)

    def test_invalidTraceparentValidB3Multi(self):
        """
        The same with X-B3 headers.
        """
        context = ctx(("traceparent", "junk"), ("x-b3-traceid", B3_TRACE), ("x-b3-spanid", B3_SPAN))
        self.assertContinues(context, B3_TRACE, B3_SPAN)
        self.assertEqual(context.b3, 2)

    def test_invalidTraceparentSamplingOnlyB3(self):
        """
        An invalid traceparent beside a B3 decision without ids: a new trace
        with that decision, counted as a restart.
        """
        context = ctx(("traceparent", "junk"), ("b3", "0"))
        self.assertTrue(context.restarted)
        self.assertIsNone(context.parentId)
        self.assertIs(context.sampled, False)
        self.assertEqual(context.b3, 1)

    def test_singleOverMulti(self):
        """
        "The single-header variant takes precedence over the multiple header
        one."
        """
        context = ctx(
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", PARENT),
            ("b3", "%s-%s-0" % (B3_TRACE, B3_SPAN)),
        )
        self.assertContinues(context, B3_TRACE, B3_SPAN)
        self.assertEqual(context.b3, 1)

    def test_singleSamplingOnlyOverMulti(self):
        """
        A valid single header wins even when it carries a decision alone.
        """
        context = ctx(("x-b3-traceid", TRACE), ("x-b3-spanid", PARENT), ("b3", "1"))
        self.assertIsNone(context.parentId)
        self.assertNotEqual(context.traceId, TRACE)
        self.assertIs(context.sampled, True)
        self.assertEqual(context.b3, 1)

    def test_invalidSingleValidMulti(self):
        """
        A malformed single header falls back to valid X-B3 headers, and the
        trace continues from them.
        """
        context = ctx(("b3", "junk"), ("x-b3-traceid", B3_TRACE), ("x-b3-spanid", B3_SPAN))
        self.assertContinues(context, B3_TRACE, B3_SPAN)
        self.assertEqual(context.b3, 2)

    def test_invalidSingleSamplingOnlyMulti(self):
        """
        A malformed single header beside an X-B3 decision alone: a new trace
        with that decision, counted as a restart.
        """
        context = ctx(("b3", "junk"), ("x-b3-sampled", "1"))
        self.assertTrue(context.restarted)
        self.assertIs(context.sampled, True)
        self.assertEqual(context.b3, 2)

    def test_everythingInvalid(self):
        """
        Everything invalid: one restart.
        """
        self.assertRestarted(
            ctx(("traceparent", "junk"), ("b3", "junk"), ("x-b3-traceid", B3_TRACE))
        )

    def test_restartNewTraceIdFromRandomness(self):
        """
        A restart's trace id comes from the C{getrandbits} given.
        """
        context = extract([(b"traceparent", b"junk")], random.Random(9).getrandbits)
        self.assertEqual(context.traceId, newTraceId(random.Random(9).getrandbits))

    def test_noRandomnessOnValidPath(self):
        """
        Continuing a caller's trace uses no randomness.
        """
        zeros = Zeros(0)
        b3 = (b"b3", b"%s-%s" % (TRACE.encode(), b"1" * 16))
        extract([(b"traceparent", TP.encode()), b3], zeros)
        extract([b3], zeros)
        self.assertEqual(zeros.asked, [])


class IdTests(SynchronousTestCase):
    """
    Tests for L{newTraceId} and L{newSpanId}.
    """

    def test_traceIdFormat(self):
        """
        A trace id is 32 lowercase hex digits made of 128 random bits.
        """
        zeros = Zeros(0)
        self.assertEqual(newTraceId(zeros), "0" * 31 + "1")
        self.assertEqual(zeros.asked, [128])
        self.assertEqual(newTraceId(lambda bits: (1 << bits) - 1), "f" * 32)

    def test_spanIdFormat(self):
        """
        A span id is 16 lowercase hex digits made of 64 random bits.
        """
        zeros = Zeros(0)
        self.assertEqual(newSpanId(zeros), "0" * 15 + "1")
        self.assertEqual(zeros.asked, [64])
        self.assertEqual(newSpanId(lambda bits: (1 << bits) - 1), "f" * 16)

    def test_neverZero(self):
        """
        An all-zero id is never made: the draw is repeated.
        """
        zeros = Zeros(3)
        self.assertEqual(newTraceId(zeros), "0" * 31 + "1")
        self.assertEqual(zeros.asked, [128] * 4)
        zeros = Zeros(2)
        self.assertEqual(newSpanId(zeros), "0" * 15 + "1")
        self.assertEqual(zeros.asked, [64] * 3)

    def test_random(self):
        """
        With real randomness, ids are distinct and well formed.
        """
        getrandbits = random.Random(3).getrandbits
        traces = {newTraceId(getrandbits) for _ in range(200)}
        spans = {newSpanId(getrandbits) for _ in range(200)}
        self.assertEqual((len(traces), len(spans)), (200, 200))
        for t in traces:
            self.assertEqual((len(t), t.strip("0123456789abcdef")), (32, ""))
        for s in spans:
            self.assertEqual((len(s), s.strip("0123456789abcdef")), (16, ""))


class OutgoingTests(SynchronousTestCase):
    """
    Tests for L{outgoing}.
    """

    def test_sampled(self):
        """
        A sampled try: traceparent with flags 01, and b3 with 1.
        """
        self.assertEqual(
            outgoing(B3_TRACE, B3_SPAN, True, False, None, 0),
            b"traceparent: 00-80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-01\r\n"
            b"b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1\r\n",
        )

    def test_notSampled(self):
        """
        Not sampled: flags 00, b3 with 0.
        """
        self.assertEqual(
            outgoing(B3_TRACE, B3_SPAN, False, False, None, 1),
            b"traceparent: 00-80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-00\r\n"
            b"b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0\r\n",
        )

    def test_debug(self):
        """
        Debug: flags 01 (sampled), b3 with d.
        """
        pairs = dict(parseLines(outgoing(B3_TRACE, B3_SPAN, False, True, None, 0)))
        self.assertEqual(pairs[b"traceparent"][-3:], b"-01")
        self.assertEqual(pairs[b"b3"], b"%s-%s-d" % (B3_TRACE.encode(), B3_SPAN.encode()))

    def test_tracestate(self):
        """
        A tracestate is sent when there is one.
        """
        pairs = parseLines(outgoing(TRACE, PARENT, True, False, b"rojo=1,congo=2", 0))
        self.assertEqual([name for name, _ in pairs], [b"traceparent", b"b3", b"tracestate"])
        self.assertEqual(pairs[2][1], b"rojo=1,congo=2")
        for empty in (None, b""):
            names = [name for name, _ in parseLines(outgoing(TRACE, PARENT, True, False, empty, 0))]
            self.assertNotIn(b"tracestate", names)

    def test_multiHeaders(self):
        """
        With C{b3 == 2} the X-B3 headers are sent too.
        """
        self.assertEqual(
            outgoing(B3_TRACE, B3_SPAN, True, False, None, 2),
            b"traceparent: 00-80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-01\r\n"
            b"b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1\r\n"
            b"x-b3-traceid: 80f198ee56343ba864fe8b2a57d3eff7\r\n"
            b"x-b3-spanid: e457b5a2e4d86bd1\r\n"
            b"x-b3-sampled: 1\r\n",
        )
        pairs = dict(parseLines(outgoing(B3_TRACE, B3_SPAN, False, False, None, 2)))
        self.assertEqual(pairs[b"x-b3-sampled"], b"0")

    def test_multiHeadersDebug(self):
        """
        Debug in X-B3 headers is X-B3-Flags: 1, without X-B3-Sampled.
        """
        pairs = dict(parseLines(outgoing(B3_TRACE, B3_SPAN, True, True, None, 2)))
        self.assertEqual(pairs[b"x-b3-flags"], b"1")
        self.assertNotIn(b"x-b3-sampled", pairs)

    def test_noMultiHeadersOtherwise(self):
        """
        With C{b3} 0 or 1 only the single b3 header is sent.
        """
        for b3 in (0, 1):
            lines = outgoing(TRACE, PARENT, True, True, b"a=1", b3)
            names = {name for name, _ in parseLines(lines)}
            self.assertEqual(names, {b"traceparent", b"b3", b"tracestate"})

    def test_64bitTraceIdInB3(self):
        """
        A trace id whose high half is zero goes in B3 as 16 digits, and in
        traceparent as 32.
        """
        trace = "0" * 16 + B3_TRACE64
        pairs = dict(parseLines(outgoing(trace, B3_SPAN, True, False, None, 2)))
        self.assertEqual(pairs[b"traceparent"], b"00-%s-%s-01" % (trace.encode(), B3_SPAN.encode()))
        self.assertEqual(pairs[b"b3"], b"%s-%s-1" % (B3_TRACE64.encode(), B3_SPAN.encode()))
        self.assertEqual(pairs[b"x-b3-traceid"], B3_TRACE64.encode())

    def test_namesReplaced(self):
        """
        Every header sent is one meshproxy replaces, lowercase.
        """
        for b3 in (0, 2):
            for debug in (False, True):
                lines = outgoing(TRACE, PARENT, True, debug, b"a=1", b3)
                for name, _ in parseLines(lines):
                    self.assertIn(name, TRACE_HEADERS)

    def test_roundTrip(self):
        """
        What is sent reads back as the same trace, with the try's span as
        the parent, the same decisions and the same tracestate.
        """
        for sampled, debug, b3 in [
            (True, False, 0),
            (False, False, 1),
            (True, True, 2),
            (False, False, 2),
        ]:
            lines = outgoing(TRACE, B3_SPAN, sampled, debug, b"foo=1,bar@baz=2", b3)
            context = extract(parseLines(lines), Zeros(0))
            self.assertEqual(
                context,
                TraceContext(
                    TRACE,
                    B3_SPAN,
                    sampled or debug,
                    debug,
                    b"foo=1,bar@baz=2",
                    2 if b3 == 2 else 1,
                    False,
                ),
            )

    def test_roundTripB3Only(self):
        """
        The b3 header alone, or the X-B3 headers alone, read back as the
        same context too.
        """
        lines = outgoing("0" * 16 + B3_TRACE64, B3_SPAN, True, True, None, 2)
        pairs = parseLines(lines)
        for kept in (
            [(n, v) for n, v in pairs if n == b"b3"],
            [(n, v) for n, v in pairs if n.startswith(b"x-b3-")],
        ):
            context = extract(kept, Zeros(0))
            self.assertEqual((context.traceId, context.parentId), ("0" * 16 + B3_TRACE64, B3_SPAN))
            self.assertTrue(context.debug)


class TraceContextTests(SynchronousTestCase):
    """
    Tests for L{TraceContext} itself.
    """

    def test_slots(self):
        """
        A context has no instance dictionary.
        """
        context = TraceContext(TRACE, PARENT, True)
        self.assertFalse(hasattr(context, "__dict__"))
        self.assertRaises(AttributeError, setattr, context, "other", 1)

    def test_defaults(self):
        """
        Only the trace, the parent and the decision are required.
        """
        context = TraceContext(TRACE, None, None)
        self.assertEqual(
            (context.debug, context.traceState, context.b3, context.restarted),
            (False, None, 0, False),
        )

    def test_equality(self):
        """
        Contexts are equal when every field is.
        """
        self.assertEqual(TraceContext(TRACE, PARENT, True), TraceContext(TRACE, PARENT, True))
        self.assertNotEqual(TraceContext(TRACE, PARENT, True), TraceContext(TRACE, PARENT, False))
        self.assertNotEqual(
            TraceContext(TRACE, PARENT, True), TraceContext(TRACE, PARENT, True, b3=1)
        )
        self.assertNotEqual(TraceContext(TRACE, PARENT, True), object())

    def test_repr(self):
        """
        The repr names the trace, the parent and the decision.
        """
        text = repr(TraceContext(TRACE, PARENT, True, traceState=b"a=1"))
        self.assertIn(TRACE, text)
        self.assertIn(PARENT, text)
        self.assertIn("sampled=True", text)
        self.assertIn("a=1", text)
