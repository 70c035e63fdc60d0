"""
The packaging lists every package: setup.cfg names them one by one (so that
C{twisted.plugins} is included), and a package left out is missing from the
installed wheel although the tests, run from the checkout, still pass.
"""

import configparser
import os

from twisted.trial.unittest import SynchronousTestCase

import meshproxy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(meshproxy.__file__)))


class PackagesTests(SynchronousTestCase):
    def test_everyPackageListed(self):
        config = configparser.ConfigParser()
        config.read(os.path.join(ROOT, "setup.cfg"))
        listed = set(config["options"]["packages"].split())
        found = set()
        for directory, dirs, files in os.walk(os.path.join(ROOT, "meshproxy")):
            dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
            if "__init__.py" in files:
                relative = os.path.relpath(directory, ROOT)
                found.add(relative.replace(os.sep, "."))
        self.assertEqual(found - listed, set(), "packages missing from setup.cfg")
        self.assertIn("twisted.plugins", listed)
