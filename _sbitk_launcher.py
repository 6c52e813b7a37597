"""The ``sbitk`` command's entry point, outside the package so that importing it loads nothing.

Importing the command line loads torch and the scientific stack, which takes about half a
second; a Ctrl-C in that time would otherwise end in a traceback of the imports. Here it is one
line and exit status 130, like a Ctrl-C once the command runs.
"""

import sys


def main():
    """Import the command line, then run it."""
    try:
        from sbitk.cli import main as cli
    except KeyboardInterrupt:
        sys.stderr.write("interrupted while sbitk was starting; nothing was done\n")
        raise SystemExit(130) from None
    return cli()
