"""
The packaging lists every package: setup.cfg names them one by one (so that
C{twisted.plugins} is included), and a package left out is missing from the
installed wheel although the tests, run from the checkout, still pass. The
same goes for package data (the dashboard's files): the wheel is built and
looked into.
"""

import configparser
import importlib.util
import json
import os
import shutil
import sys
import zipfile

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

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


class WheelTests(TestCase):
    """
    The wheel built from the checkout holds the package data: the
    dashboard's files and the twistd plugin. Built from a copy of the
    checkout, so that the build leaves nothing in it.
    """

    timeout = 120

    @defer.inlineCallbacks
    def test_wheelHoldsTheDashboardAndThePlugin(self):
        if importlib.util.find_spec("setuptools") is None:
            raise SkipTest("setuptools is not installed: no wheel can be built here")
        work = os.path.abspath(self.mktemp())
        source = os.path.join(work, "src")
        os.makedirs(source)
        for name in ("setup.cfg", "pyproject.toml", "README.md"):
            shutil.copy(os.path.join(ROOT, name), source)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "dropin.cache")
        for name in ("meshproxy", "twisted"):
            shutil.copytree(os.path.join(ROOT, name), os.path.join(source, name), ignore=ignore)
        out = os.path.join(work, "out")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        stdout, stderr, code = yield getProcessOutputAndValue(
            sys.executable,
            ["-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
             "--quiet", "--disable-pip-version-check", "-w", out, source],
            env=env, path=work,
        )
        self.assertEqual(code, 0, stderr.decode("utf-8", "replace"))
        [wheel] = [os.path.join(out, n) for n in os.listdir(out) if n.endswith(".whl")]
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
        self.assertIn("twisted/plugins/meshproxy_plugin.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        static = {
            n.rsplit("/", 1)[1] for n in names if n.startswith("meshproxy/admin/static/")
        }
        self.assertEqual(
            static, {"index.html", "dashboard.js", "dashboard.css", "favicon.svg"}
        )
        # What the admin API reads from the installed package, read here
        # from the wheel itself (a zip on sys.path) by another Python.
        script = (
            "import json, sys\n"
            "sys.path.insert(0, sys.argv[1])\n"
            "from meshproxy.admin.static import loadStatic\n"
            "import meshproxy\n"
            "files = loadStatic()\n"
            "print(json.dumps({'from': meshproxy.__file__,\n"
            "                  'files': {n: len(b) for n, (t, b) in files.items()}}))\n"
        )
        stdout, stderr, code = yield getProcessOutputAndValue(
            sys.executable, ["-c", script, wheel], env=env, path=work
        )
        self.assertEqual(code, 0, stderr.decode("utf-8", "replace"))
        read = json.loads(stdout)
        self.assertTrue(read["from"].startswith(wheel), read["from"])
        for name, size in read["files"].items():
            with open(os.path.join(ROOT, "meshproxy", "admin", "static", name), "rb") as f:
                self.assertEqual(size, len(f.read()), name)
        self.assertEqual(set(read["files"]), static)
