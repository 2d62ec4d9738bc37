"""``python -m engine``: the ``buig`` command line (:mod:`engine.app.cli`)."""

import sys

from engine.app.cli import command

sys.exit(command())
