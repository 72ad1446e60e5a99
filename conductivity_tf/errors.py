"""User-facing errors and the one wrapper every command-line entry point runs under.

A ``UserError`` is bad input: a wrong file, a mistyped key, an inconsistent setting. It is a
``ValueError`` so that Python callers can catch it the usual way; on the command line it becomes
one line on stderr (what is wrong and how to fix it) and exit status 2, with no traceback.
"""

import sys


class UserError(ValueError):
    """Bad input, with a message that says what is wrong and how to fix it."""


def refuse_removed_inputs(fitted, directory, inputs, known, flags=""):
    """Raise a ``UserError`` if the ``fitted`` thing (e.g. "the correction") that ``directory`` keeps uses one of
    ``inputs`` that this version no longer computes (not in ``known``), naming it and the command that refits it
    (``evaluate --calibrate`` with ``flags``)."""
    gone = [name for name in inputs if name not in known]
    if gone:
        raise UserError("{} in {} was fitted on an input this version no longer computes ({}); refit it: python -m "
                        "conductivity_tf.evaluate --model {} --data DATASET --calibrate{}".format(
                            fitted, directory, gone[0], directory, flags))


def run_cli(main, argv=None):
    """Run ``main(argv)`` and turn a ``UserError`` into one line on stderr and exit status 2."""
    try:
        status = main(argv)
    except UserError as err:
        message = " ".join(str(err).split())
        prog = "conductivity_tf"
        print("{}: error: {}".format(prog, message), file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)

