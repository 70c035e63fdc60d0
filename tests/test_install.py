"""
docs/install.md, followed step by step as far as this machine allows without
root side effects, and the systemd unit it installs checked against the
layout it makes.

The commands of the page run as written, with C{sudo} dropped and the
system's directories moved into a temporary root; the virtual environment
is the one these tests run in (tox builds it as the page says: a venv and
C{pip install} of the package). What needs root or a running systemd
(creating a user, C{systemctl}, C{journalctl}) is named and left out.
C{systemd-analyze verify} checks the installed unit, its C{ExecStart}
pointing at this virtual environment's C{twistd}.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys

from twisted.trial.unittest import SkipTest, SynchronousTestCase

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL = os.path.join(HERE, "docs", "install.md")
UNIT = os.path.join(HERE, "etc", "meshproxy.service")
SOCKET_UNIT = os.path.join(HERE, "etc", "meshproxy.socket")
SERVICE_CONFIG = os.path.join(HERE, "etc", "service.yaml")
SYSTEMD_CONFIG = os.path.join(HERE, "etc", "meshproxy-systemd.yaml")

#: The section of the page that replaces the config of step 3 (a walk
#: through the page leaves it out; it has a walk of its own).
SOCKET_SECTION = "Socket activation"

VENV = "/opt/meshproxy"

#: The commands of the page this test does not run, and why.
NOT_RUN = {
    "useradd": "creates a system user",
    "userdel": "removes a system user",
    "python3 -m venv": "the tests run in a virtual environment made this way",
    "pip install": "the tests run with meshproxy installed this way (tox)",
    "systemctl": "needs a running systemd",
    "journalctl": "needs a running systemd",
    "curl": "needs the service running",
    "echo": "writes into the service's endpoints (needs the service running to matter)",
    "rm": "removes an installation",
    "meshproxy rules reset": "needs rules saved by a running service",
}


def unitSettings(text):
    """
    The settings of a unit file: section → key → list of values.
    """
    settings = {}
    section = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = settings.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return settings


def installCommands(section=None):
    """
    The commands of the page's C{sh} blocks, in order, without C{sudo}
    and without trailing comments.

    @param section: the title of the one section to read, or L{None} for
        every section but L{SOCKET_SECTION}.
    """
    with open(INSTALL, encoding="utf-8") as f:
        text = f.read()
    parts = re.split(r"^## (.*)$", text, flags=re.M)
    # [before the first title, title, body, title, body, ...]
    sections = [("", parts[0])] + list(zip(parts[1::2], parts[2::2], strict=True))
    if section is None:
        text = "".join(body for title, body in sections if title != SOCKET_SECTION)
    else:
        [text] = [body for title, body in sections if title == section]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("   #", 1)[0].strip()
            if line:
                commands.append(line)
    return commands


def _words(command):
    words = shlex.split(command)
    return words[1:] if words[0] == "sudo" else words


class InstallPageTests(SynchronousTestCase):
    """
    The page, step by step, in a temporary root.
    """

    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        # What a host has before the page runs.
        for directory in ("etc/systemd/system", "usr/local/bin", "opt"):
            os.makedirs(os.path.join(self.root, directory))
        self.inVenv = sys.prefix != sys.base_prefix

    def moved(self, word):
        """
        A path of the page, moved: the virtual environment's programs to
        the one running these tests, system directories into the root.
        """
        if word.startswith(VENV + "/bin/"):
            return os.path.join(sys.prefix, "bin", word[len(VENV + "/bin/"):])
        for prefix in ("/etc/", "/opt/", "/usr/local/", "/var/lib/"):
            if word.startswith(prefix):
                return self.root + word
        return word

    def notRun(self, words):
        """
        Why this test does not run a command of the page, or L{None}.
        """
        text = " ".join(words).replace(VENV + "/bin/", "")
        for start, why in NOT_RUN.items():
            if text.startswith(start):
                return why
        return None

    def run_(self, words):
        if words[0] == "meshproxy":
            words = [sys.executable, "-m", "meshproxy.cli"] + words[1:]
        elif words[0] == os.path.join(sys.prefix, "bin", "python"):
            words = [sys.executable] + words[1:]
        env = {**os.environ, "PYTHONPATH": HERE}
        result = subprocess.run(
            words, cwd=HERE, env=env, capture_output=True, text=True, timeout=60
        )
        return result

    def walk(self, commands):
        """
        Run the commands of the page that can run here.

        @return: C{(ran, skipped)}: the commands run, and those not run
            with why.
        """
        if not self.inVenv:
            raise SkipTest(
                "the tests do not run in a virtual environment: no venv to stand for /opt/meshproxy"
            )
        for program in ("twistd", "meshproxy", "python"):
            self.assertTrue(
                os.path.isfile(os.path.join(sys.prefix, "bin", program)),
                "a virtual environment with meshproxy installed has bin/%s" % (program,),
            )
        ran, skipped = [], []
        for command in commands:
            if command in ran:
                # The upgrade repeats steps of the install: once is enough.
                continue
            words = _words(command)
            why = self.notRun(words)
            if why is not None:
                skipped.append((command, why))
                continue
            if words[0] == "systemd-analyze":
                # Checked on its own, below: it needs the unit pointed at a
                # real twistd.
                continue
            words = [self.moved(word) for word in words]
            # Globs in the page (docs/*.md) are the shell's.
            expanded = []
            for word in words:
                expanded.extend(sorted(_glob(word)) if "*" in word else [word])
            result = self.run_(expanded)
            self.assertEqual(result.returncode, 0, (command, result.stdout, result.stderr))
            ran.append(command)
        return ran, skipped

    def test_followThePage(self):
        """
        Every command of the page either runs here (and succeeds) or is one
        this test knows it cannot run; the layout it leaves is what the unit
        expects.
        """
        ran, skipped = self.walk(installCommands())
        self.assertIn("meshproxy check /etc/meshproxy/meshproxy.yaml", ran)
        self.assertTrue(skipped)
        # The layout the unit expects.
        installed = os.path.join(self.root, "etc/meshproxy/meshproxy.yaml")
        with open(installed) as f, open(SERVICE_CONFIG) as g:
            self.assertEqual(f.read(), g.read())
        installed = os.path.join(self.root, "etc/systemd/system/meshproxy.service")
        with open(installed) as f, open(UNIT) as g:
            self.assertEqual(f.read(), g.read())
        self.assertTrue(os.path.isdir(os.path.join(self.root, "etc/meshproxy/endpoints")))
        with open(UNIT) as f:
            unit = unitSettings(f.read())
        [documentation] = unit["Unit"]["Documentation"]
        self.assertTrue(documentation.startswith("file:"))
        self.assertTrue(os.path.isfile(self.moved(documentation[len("file:"):])), documentation)
        link = os.path.join(self.root, "usr/local/bin/meshproxy")
        self.assertEqual(os.readlink(link), os.path.join(sys.prefix, "bin", "meshproxy"))
        socketUnit = os.path.join(self.root, "etc/systemd/system/meshproxy.socket")
        self.assertFalse(os.path.exists(socketUnit))

    def test_followTheSocketActivationSection(self):
        """
        After the install, the socket activation section puts the socket
        unit beside the service and its config in place of step 3's, checked
        (C{meshproxy check} runs on the installed file).
        """
        ran, _ = self.walk(installCommands() + installCommands(SOCKET_SECTION))
        self.assertIn(
            "sudo install -m 644 etc/meshproxy.socket /etc/systemd/system/meshproxy.socket", ran
        )
        for installed, shipped in [
            ("etc/meshproxy/meshproxy.yaml", SYSTEMD_CONFIG),
            ("etc/systemd/system/meshproxy.socket", SOCKET_UNIT),
            ("etc/systemd/system/meshproxy.service", UNIT),
        ]:
            with open(os.path.join(self.root, installed)) as f, open(shipped) as g:
                self.assertEqual(f.read(), g.read(), installed)
        # The check ran after the config was replaced.
        commands = installCommands(SOCKET_SECTION)
        self.assertLess(
            commands.index(
                "sudo install -m 644 etc/meshproxy-systemd.yaml /etc/meshproxy/meshproxy.yaml"
            ),
            commands.index("meshproxy check /etc/meshproxy/meshproxy.yaml"),
        )

    def analyze(self):
        """
        C{systemd-analyze}, if it works here.
        """
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest(
                "systemd-analyze is not installed (Debian: apt-get install systemd;"
                " .ci/run installs it)"
            )
        if not self.inVenv:
            raise SkipTest("the tests do not run in a virtual environment: no twistd for ExecStart")
        # Does the tool work here at all (a container may lack parts of systemd)?
        probe = os.path.join(self.root, "probe.service")
        with open(probe, "w") as f:
            f.write("[Service]\nExecStart=%s\n" % (sys.executable,))
        result = subprocess.run(
            [analyze, "verify", probe], capture_output=True, text=True, timeout=60
        )
        if result.returncode != 0:
            raise SkipTest(
                "systemd-analyze verify does not work here: %s" % (result.stderr.strip(),)
            )
        return analyze

    def installedUnit(self, config):
        """
        The service unit as installed on a host where the page ran: its
        twistd is this virtual environment's, its config C{config}.

        @return: its path (in the root).
        """
        with open(UNIT) as f:
            text = f.read()
        text = text.replace(VENV + "/bin/", os.path.join(sys.prefix, "bin") + "/")
        text = text.replace("/etc/meshproxy/meshproxy.yaml", config)
        path = os.path.join(self.root, "meshproxy.service")
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_unitVerifies(self):
        """
        C{systemd-analyze verify}, as the page runs it, accepts the unit
        without a warning once its C{ExecStart} exists.
        """
        analyze = self.analyze()
        self.assertIn(
            "sudo systemd-analyze verify /etc/systemd/system/meshproxy.service", installCommands()
        )
        path = self.installedUnit(SERVICE_CONFIG)
        result = subprocess.run(
            [analyze, "verify", path], capture_output=True, text=True, timeout=60
        )
        self.assertEqual((result.returncode, result.stdout, result.stderr), (0, "", ""))

    def test_socketUnitVerifies(self):
        """
        C{systemd-analyze verify}, as the socket activation section runs
        it, accepts the socket unit and the service beside it.
        """
        analyze = self.analyze()
        self.assertIn(
            "sudo systemd-analyze verify /etc/systemd/system/meshproxy.socket"
            " /etc/systemd/system/meshproxy.service",
            installCommands(SOCKET_SECTION),
        )
        service = self.installedUnit(SYSTEMD_CONFIG)
        socketUnit = os.path.join(self.root, "meshproxy.socket")
        shutil.copyfile(SOCKET_UNIT, socketUnit)
        result = subprocess.run(
            [analyze, "verify", socketUnit, service], capture_output=True, text=True, timeout=60
        )
        self.assertEqual((result.returncode, result.stdout, result.stderr), (0, "", ""))


def _glob(pattern):
    import glob

    return glob.glob(pattern, root_dir=HERE)


class UnitAndLayoutTests(SynchronousTestCase):
    """
    The unit runs what the page installs, where the page installs it, and
    its config works under the unit's sandbox as shipped.
    """

    def setUp(self):
        with open(UNIT) as f:
            self.unit = unitSettings(f.read())
        self.service = self.unit["Service"]
        self.commands = [" ".join(_words(c)) for c in installCommands()]

    def test_execStartIsTheVenvsTwistd(self):
        [execStart] = self.service["ExecStart"]
        words = shlex.split(execStart)
        self.assertEqual(words[0], VENV + "/bin/twistd")
        self.assertIn("python3 -m venv " + VENV, self.commands)
        self.assertIn(VENV + "/bin/pip install .", self.commands)
        self.assertEqual(words[1:5], ["--nodaemon", "--pidfile=", "--logfile=-", "meshproxy"])
        # The config the unit reads is the one the page installs.
        config = words[words.index("--config") + 1]
        self.assertIn("install -m 644 etc/service.yaml " + config, self.commands)

    def test_stateDirectoryIsTheConfigsStateDir(self):
        """
        Under C{ProtectSystem=strict} only the state directory is writable:
        the shipped config saves rules there, and the process starts there.
        """
        from meshproxy.config import loadConfig

        self.assertEqual(self.service["ProtectSystem"], ["strict"])
        [state] = self.service["StateDirectory"]
        config = loadConfig(SERVICE_CONFIG)
        self.assertEqual(config.admin.stateDir, "/var/lib/" + state)
        self.assertEqual(self.service["WorkingDirectory"], ["/var/lib/" + state])
        self.assertNotIn("ReadWritePaths", self.service)

    def test_userIsTheOneThePageCreates(self):
        [user] = self.service["User"]
        self.assertIn(
            "useradd --system --home-dir /var/lib/meshproxy --no-create-home"
            " --shell /usr/sbin/nologin " + user,
            self.commands,
        )
        self.assertEqual(self.service["Group"], [user])

    def test_capabilitiesOnlyForPrivilegedPorts(self):
        """
        The shipped config listens above 1023, so the unit grants no
        capability.
        """
        from twisted.internet.endpoints import _parse

        from meshproxy.config import loadConfig

        config = loadConfig(SERVICE_CONFIG)
        ports = []
        for listen in [config.admin.listen] + [r.listen for r in config.routers]:
            args, kwargs = _parse(listen)
            ports.append(int(kwargs.get("port", args[1] if len(args) > 1 else 0)))
        self.assertTrue(all(port >= 1024 for port in ports), ports)
        self.assertNotIn("AmbientCapabilities", self.service)
        self.assertEqual(self.service["CapabilityBoundingSet"], [""])

    def test_reloadSendsSighup(self):
        """
        C{systemctl reload} sends C{SIGHUP}, which meshproxy takes as a
        reload of its config.
        """
        self.assertEqual(self.service["ExecReload"], ["/bin/kill -HUP $MAINPID"])
        self.assertNotIn("Sockets", self.service)

    def test_socketUnitAndItsConfig(self):
        """
        The socket unit names its socket as the systemd config's listener
        takes it, at the address of the router of C{etc/service.yaml}; that
        config is C{etc/service.yaml} with that one listen string changed,
        and valid.
        """
        from meshproxy.config import loadConfig

        with open(SOCKET_UNIT) as f:
            socketUnit = unitSettings(f.read())["Socket"]
        systemd, plain = loadConfig(SYSTEMD_CONFIG), loadConfig(SERVICE_CONFIG)
        [router] = systemd.routers
        self.assertEqual(router.listen, "systemd:domain=INET:name=%s"
                         % (socketUnit["FileDescriptorName"][0],))
        self.assertEqual(socketUnit["ListenStream"], ["127.0.0.1:4140"])
        self.assertEqual(plain.routers[0].listen, "tcp:4140:interface=127.0.0.1")
        self.assertEqual(socketUnit["Accept"], ["no"])
        self.assertEqual(router.model_copy(update={"listen": plain.routers[0].listen}),
                         plain.routers[0])
        self.assertEqual((systemd.admin, systemd.namers), (plain.admin, plain.namers))
        import io

        from meshproxy.cli import main

        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        self.assertEqual(main(["check", SYSTEMD_CONFIG]), 0, err.getvalue())

    def test_serviceConfigIsValid(self):
        import io

        from meshproxy.cli import main

        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        self.assertEqual(main(["check", SERVICE_CONFIG]), 0, err.getvalue())
