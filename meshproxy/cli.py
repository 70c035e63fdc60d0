"""
The C{meshproxy} command: C{meshproxy check CONFIG} validates a config file
the way C{twistd meshproxy} would, without binding anything.

Running the proxy itself is C{twistd -n meshproxy --config CONFIG}.
"""

import sys

USAGE = """\
usage: meshproxy check CONFIG     validate a config file (exit 0 when valid)
run the proxy with: twistd -n meshproxy [--config CONFIG]
"""


def main(argv=None):
    """
    Entry point of the C{meshproxy} console script.

    @param argv: the arguments after the program name.
    @return: the exit status.
    """
    from meshproxy.config import ConfigError, loadConfig
    from meshproxy.tap import _checkSupported

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "check":
        sys.stderr.write(USAGE)
        return 2
    path = args[1]
    try:
        _checkSupported(loadConfig(path))
    except ConfigError as e:
        sys.stderr.write("%s: invalid\n%s\n" % (path, e))
        return 1
    sys.stdout.write("%s: ok\n" % (path,))
    return 0


if __name__ == "__main__":
    sys.exit(main())
