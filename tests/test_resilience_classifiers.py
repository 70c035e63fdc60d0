"""
Tests for L{meshproxy.resilience.classifiers}.
"""

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from meshproxy.resilience.classifiers import (
    FAILURE,
    RETRYABLE,
    SUCCESS,
    Classifier,
    IdempotentMethods,
    Kinds,
    ReadMethods,
)
from meshproxy.resilience.interfaces import IClassifier

READS = [b"GET", b"HEAD", b"OPTIONS", b"TRACE"]
WRITES_IDEMPOTENT = [b"PUT", b"DELETE"]
OTHERS = [b"POST", b"PATCH", b"CONNECT", b"get", b"PROPFIND"]
METHODS = READS + WRITES_IDEMPOTENT + OTHERS
STATUSES = [100, 200, 204, 301, 304, 400, 404, 429, 499, 500, 501, 502, 503, 504, 599]


def reference(kind, codes, keyOn, method, status, header, hasKey):
    """
    The classification rules, written out plainly, to check the table
    against.
    """
    postOk = keyOn and hasKey and method == b"POST"
    idempotent = method in (READS + WRITES_IDEMPOTENT) or postOk
    if status in codes:
        failure = True
        retryable = idempotent
    elif 500 <= status < 600:
        if kind == "allSuccessful":
            return SUCCESS
        failure = True
        if kind in ("nonRetryable5XX", "grpc"):
            # (grpc judges other responses as nonRetryable5XX)
            retryable = False
        elif kind == "retryableRead5XX":
            retryable = method in READS
        else:
            retryable = idempotent
    else:
        return SUCCESS
    if failure and (retryable or header):
        return RETRYABLE
    return FAILURE


class ClassifierTests(SynchronousTestCase):
    """
    Tests for L{Classifier}.
    """

    def test_interface(self):
        """
        Every kind provides L{IClassifier}.
        """
        for kind in Kinds:
            self.assertTrue(verifyObject(IClassifier, Classifier(kind)))

    def test_constants(self):
        """
        The three outcomes are distinct integers.
        """
        self.assertEqual(len({SUCCESS, RETRYABLE, FAILURE}), 3)
        for value in (SUCCESS, RETRYABLE, FAILURE):
            self.assertIsInstance(value, int)

    def test_methodSets(self):
        """
        The read methods are GET HEAD OPTIONS TRACE; the idempotent ones add
        PUT and DELETE, not POST.
        """
        self.assertEqual(ReadMethods, frozenset(READS))
        self.assertEqual(IdempotentMethods, frozenset(READS + WRITES_IDEMPOTENT))

    def test_nonRetryable5XX(self):
        """
        C{nonRetryable5XX} fails every 5xx answer, retrying none, GET
        included; anything below 500 succeeds.
        """
        c = Classifier("nonRetryable5XX")
        for method in METHODS:
            self.assertEqual(c.classify(method, 500, False, False), FAILURE)
            self.assertEqual(c.classify(method, 503, False, False), FAILURE)
            self.assertEqual(c.classify(method, 599, False, False), FAILURE)
            for status in (200, 304, 404, 429, 499):
                self.assertEqual(c.classify(method, status, False, False), SUCCESS)

    def test_retryableRead5XX(self):
        """
        C{retryableRead5XX} makes 5xx retryable for GET HEAD OPTIONS TRACE
        only: PUT and DELETE fail, and so does POST with a key.
        """
        c = Classifier("retryableRead5XX", idempotencyKey=True)
        for method in READS:
            self.assertEqual(c.classify(method, 502, False, False), RETRYABLE)
        for method in WRITES_IDEMPOTENT + OTHERS:
            self.assertEqual(c.classify(method, 502, False, False), FAILURE)
        self.assertEqual(c.classify(b"POST", 502, False, True), FAILURE)
        self.assertEqual(c.classify(b"GET", 404, False, False), SUCCESS)

    def test_retryableIdempotent5XX(self):
        """
        C{retryableIdempotent5XX} makes 5xx retryable for the read methods,
        PUT and DELETE, but not for POST, PATCH or a lowercase method.
        """
        c = Classifier("retryableIdempotent5XX")
        for method in READS + WRITES_IDEMPOTENT:
            self.assertEqual(c.classify(method, 500, False, False), RETRYABLE)
        for method in OTHERS:
            self.assertEqual(c.classify(method, 500, False, False), FAILURE)

    def test_postWithIdempotencyKey(self):
        """
        With C{idempotencyKey} on, a POST that had an C{Idempotency-Key} is
        idempotent: retryable on 5xx under C{retryableIdempotent5XX}; without
        the header, or with the option off, it is not.
        """
        on = Classifier("retryableIdempotent5XX", idempotencyKey=True)
        off = Classifier("retryableIdempotent5XX")
        self.assertEqual(on.classify(b"POST", 503, False, True), RETRYABLE)
        self.assertEqual(on.classify(b"POST", 503, False, False), FAILURE)
        self.assertEqual(off.classify(b"POST", 503, False, True), FAILURE)
        self.assertEqual(on.classify(b"PATCH", 503, False, True), FAILURE)
        self.assertTrue(on.isIdempotent(b"POST", True))
        self.assertFalse(on.isIdempotent(b"POST", False))
        self.assertFalse(off.isIdempotent(b"POST", True))
        self.assertFalse(on.isIdempotent(b"PATCH", True))

    def test_allSuccessful(self):
        """
        C{allSuccessful} counts every answer as a success, 5xx included,
        and the retryable header changes nothing.
        """
        c = Classifier("allSuccessful")
        for method in METHODS:
            for status in STATUSES:
                self.assertEqual(c.classify(method, status, True, True), SUCCESS)

    def test_allSuccessfulRetryableCodes(self):
        """
        Under C{allSuccessful}, a status in C{retryableStatusCodes} is still
        a failure, retryable for idempotent methods only.
        """
        c = Classifier("allSuccessful", retryableStatusCodes=(503, 429))
        self.assertEqual(c.classify(b"GET", 503, False, False), RETRYABLE)
        self.assertEqual(c.classify(b"PUT", 429, False, False), RETRYABLE)
        self.assertEqual(c.classify(b"POST", 429, False, False), FAILURE)
        self.assertEqual(c.classify(b"GET", 500, False, False), SUCCESS)

    def test_retryableStatusCodesWhateverTheKind(self):
        """
        A status in C{retryableStatusCodes}, 5xx or not, is retryable for
        every idempotent method (PUT and DELETE included) under every kind,
        and a non-retryable failure for the others: a 429 counts as a
        failure.
        """
        for kind in Kinds:
            c = Classifier(kind, retryableStatusCodes=[429, 503], idempotencyKey=True)
            for method in READS + WRITES_IDEMPOTENT:
                self.assertEqual(c.classify(method, 429, False, False), RETRYABLE, (kind, method))
                self.assertEqual(c.classify(method, 503, False, False), RETRYABLE, (kind, method))
            self.assertEqual(c.classify(b"POST", 429, False, False), FAILURE, kind)
            self.assertEqual(c.classify(b"POST", 429, False, True), RETRYABLE, kind)
            self.assertEqual(c.classify(b"PATCH", 503, False, False), FAILURE, kind)

    def test_retryableHeaderUpgradesFailures(self):
        """
        C{mesh-retryable: true} makes any failure retryable, for any
        method; it does not turn a success into a failure.
        """
        c = Classifier("nonRetryable5XX", retryableStatusCodes=[429])
        for method in METHODS:
            self.assertEqual(c.classify(method, 500, True, False), RETRYABLE)
            self.assertEqual(c.classify(method, 429, True, False), RETRYABLE)
            self.assertEqual(c.classify(method, 200, True, False), SUCCESS)
            self.assertEqual(c.classify(method, 404, True, False), SUCCESS)

    def test_fullTable(self):
        """
        Every kind, method, status, header and key combination classifies as
        the plain rules say.
        """
        for kind in Kinds:
            for codes in ((), (429, 503)):
                for keyOn in (False, True):
                    c = Classifier(kind, retryableStatusCodes=codes, idempotencyKey=keyOn)
                    for method in METHODS:
                        for status in STATUSES:
                            for header in (False, True):
                                for hasKey in (False, True):
                                    case = (kind, codes, keyOn, method, status, header, hasKey)
                                    self.assertEqual(
                                        c.classify(method, status, header, hasKey),
                                        reference(*case),
                                        case,
                                    )

    def test_defaultsOfClassify(self):
        """
        The header and key arguments default to absent.
        """
        c = Classifier("retryableIdempotent5XX", idempotencyKey=True)
        self.assertEqual(c.classify(b"POST", 500), FAILURE)
        self.assertEqual(c.classify(b"GET", 500), RETRYABLE)

    def test_isIdempotent(self):
        """
        C{isIdempotent} is true for GET HEAD OPTIONS TRACE PUT DELETE,
        whatever the kind, and false for other methods.
        """
        for kind in Kinds:
            c = Classifier(kind)
            for method in READS + WRITES_IDEMPOTENT:
                self.assertTrue(c.isIdempotent(method, False))
            for method in OTHERS:
                self.assertFalse(c.isIdempotent(method, False))

    def test_badKind(self):
        """
        An unknown kind is refused, naming the known ones.
        """
        e = self.assertRaises(ValueError, Classifier, "retryAll")
        self.assertIn("nonRetryable5XX", str(e))

    def test_badStatusCodes(self):
        """
        Status codes must be integers from 100 to 599.
        """
        for bad in ([99], [600], ["503"], [503.0], [True]):
            self.assertRaises(ValueError, Classifier, "nonRetryable5XX", retryableStatusCodes=bad)

    def test_repr(self):
        """
        The repr shows the configuration.
        """
        self.assertEqual(
            repr(Classifier("allSuccessful", [503, 429])),
            "Classifier('allSuccessful', retryableStatusCodes=[429, 503], idempotencyKey=False)",
        )
