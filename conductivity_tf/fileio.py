"""Atomic file writing: write to a temporary name beside the target, then rename.

A crash, a SIGKILL or a bad input part-way never leaves a half-written file under the final name.
"""

import contextlib
import json
import os
import tempfile

from conductivity_tf.errors import UserError


@contextlib.contextmanager
def atomic_path(path, suffix=".tmp"):
    """Yield a temporary path in the target's directory; rename it to ``path`` on success.

    ``suffix`` ends the temporary name (for writers that choose a format by extension).

    >>> with atomic_path("out.txt") as tmp:          # doctest: +SKIP
    ...     open(tmp, "w").write("done")
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=suffix, dir=directory)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; shared datasets and runs need the usual mode
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text):
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as handle:
            handle.write(text)


def write_json(path, value):
    """Write ``value`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(value, indent=1) + "\n")


def read_json(path):
    """The JSON value in ``path``, or None when there is no such file."""
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def check_writable_dir(path, what="output directory"):
    """Create ``path`` if needed and check that files can be written there; UserError if not."""

    try:
        os.makedirs(path, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test.", delete=True)
        probe.close()
    except OSError as err:
        raise UserError(
            "{} {} is not writable ({}); choose another with --out or fix its permissions".format(
                what, path, err.strerror or err
            )
        )
