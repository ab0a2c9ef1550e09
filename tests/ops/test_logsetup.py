"""logsetup: journald vs terminal format, one line per event, secret guard."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys

import pytest

from grouptun.ops.logsetup import MAX_BYTES_ARG, Secret, priority, setup_logging, stream_is_journal, teardown_logging


@pytest.fixture
def capture():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    handlers = {}

    def install(journald):
        handlers["h"] = setup_logging("DEBUG", journald=journald, stream=stream)
        return stream

    yield install
    teardown_logging()
    root.setLevel(saved[0])
    assert root.handlers == saved[1]


def lines(stream):
    return stream.getvalue().splitlines()


def test_journald_format_has_priority_and_no_timestamp(capture):
    out = capture(True)
    log = logging.getLogger("grouptun.daemon")
    log.debug("d")
    log.info("epoch %d installed", 7)
    log.warning("w")
    log.error("e")
    log.critical("c")
    assert lines(out) == [
        "<7>grouptun.daemon: d",
        "<6>grouptun.daemon: epoch 7 installed",
        "<4>grouptun.daemon: w",
        "<3>grouptun.daemon: e",
        "<2>grouptun.daemon: c",
    ]


def test_terminal_format_has_utc_timestamp(capture):
    out = capture(False)
    logging.getLogger("grouptun.x").info("hello")
    (line,) = lines(out)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO grouptun\.x: hello", line), line


@pytest.mark.parametrize("journald", [True, False])
def test_one_line_per_event_even_with_newlines_and_tracebacks(capture, journald):
    out = capture(journald)
    log = logging.getLogger("grouptun.t")
    log.warning("peer name %s", "evil\n<3>grouptun: forged\x1b[31m")
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        log.exception("failed")
    got = lines(out)
    assert len(got) == 2
    assert "forged\\x1b[31m" in got[0] and "\\n<3>" in got[0]
    assert "Traceback" in got[1] and "ValueError: boom\\nsecond line" in got[1]


def test_long_bytes_args_are_redacted(capture):
    out = capture(True)
    log = logging.getLogger("grouptun.k")
    key = bytes(range(32))
    log.info("key %s", key)
    log.info("key %r in %s", bytearray(key), [b"ok", memoryview(key)])
    log.info("mapping %(k)s", {"k": key})
    log.info("short id %s", b"\x01" * MAX_BYTES_ARG)
    log.info("f-string leak " + repr(key))
    log.info("wrapped %s", Secret("hunter2"))
    text = out.getvalue()
    assert "\\x1f" not in text and "hunter2" not in text
    got = lines(out)
    assert got[0] == "<6>grouptun.k: key <redacted 32 bytes>"
    assert got[1] == "<6>grouptun.k: key '<redacted 32 bytes>' in [b'ok', '<redacted 32 bytes>']"
    assert got[2] == "<6>grouptun.k: mapping <redacted 32 bytes>"
    assert got[3].endswith("short id " + repr(b"\x01" * MAX_BYTES_ARG))
    assert got[4] == "<6>grouptun.k: f-string leak <redacted 32 bytes>"
    assert got[5] == "<6>grouptun.k: wrapped <secret>"


def test_bytes_in_exception_text_are_redacted(capture):
    out = capture(False)
    try:
        raise RuntimeError(b"\xaa" * 40)
    except RuntimeError:
        logging.getLogger("grouptun.e").exception("oops")
    assert "\\xaa\\xaa" not in out.getvalue()  # the source line shows b"\xaa" * 40, once
    assert "RuntimeError: <redacted 40 bytes>" in out.getvalue()


def test_bad_format_string_still_logs(capture):
    out = capture(True)
    logging.getLogger("grouptun.b").info("%d items", "many")
    assert "unformattable" in out.getvalue()


def test_priority_mapping_of_custom_levels():
    assert priority(logging.INFO + 5) == 6
    assert priority(logging.DEBUG - 5) == 7
    assert priority(logging.CRITICAL + 10) == 2


def test_setup_is_idempotent(capture):
    out = capture(True)
    setup_logging("DEBUG", journald=True, stream=out)
    logging.getLogger("grouptun.i").info("once %s", b"\0" * 40)
    assert lines(out) == ["<6>grouptun.i: once <redacted 40 bytes>"]


def test_other_handlers_see_redacted_records(capture, caplog):
    capture(True)
    with caplog.at_level(logging.INFO):
        logging.getLogger("grouptun.o").info("k=%s", b"\x55" * 33)
    assert caplog.messages == ["k=<redacted 33 bytes>"]


def test_journal_stream_detection(tmp_path):
    f = open(tmp_path / "log", "w")
    st = os.fstat(f.fileno())
    assert stream_is_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert not stream_is_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
    assert not stream_is_journal(f, {})
    assert not stream_is_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})
    f.close()


def journal_of_child(tmp_path, code: str) -> str:
    """What ``code`` writes to stderr in a child whose stderr is its JOURNAL_STREAM."""
    prologue = "import os\nst = os.fstat(2); os.environ['JOURNAL_STREAM'] = f'{st.st_dev}:{st.st_ino}'\n"
    err = tmp_path / "err"
    with open(err, "w") as fh:
        subprocess.run([sys.executable, "-c", prologue + code], stderr=fh, check=True, timeout=60,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    return err.read_text()


def test_auto_detection_in_a_child_process(tmp_path):
    """A process whose stderr is the JOURNAL_STREAM picks journald format."""
    code = (
        "import logging\n"
        "from grouptun.ops.logsetup import setup_logging\n"
        "setup_logging('INFO'); logging.getLogger('grouptun.c').warning('hi')\n"
    )
    assert journal_of_child(tmp_path, code) == "<4>grouptun.c: hi\n"


def test_pyroute2_is_quiet_below_error_but_our_debug_stays(tmp_path):
    """Under ProcSubset=pid pyroute2 warns twice at import (/proc/net/psched) and at debug it
    dumps every netlink message; neither reaches the journal, our debug logs do."""
    code = (
        "import builtins, logging\n"
        "real_open = builtins.open\n"
        "def hidden(path, *a, **k):\n"
        "    if path == '/proc/net/psched': raise FileNotFoundError(2, 'No such file', path)\n"
        "    return real_open(path, *a, **k)\n"
        "builtins.open = hidden\n"
        "from grouptun.ops.logsetup import setup_logging\n"
        "setup_logging('DEBUG')\n"
        "from grouptun.data.netconfig import _ipr_default\n"
        "_ipr_default().close()\n"
        "logging.getLogger('pyroute2.netlink.nlsocket').debug('a netlink dump')\n"
        "logging.getLogger('pyroute2').error('a real pyroute2 error')\n"
        "logging.getLogger('grouptun.data.netconfig').debug('ours')\n"
    )
    got = [line for line in journal_of_child(tmp_path, code).splitlines() if not line.startswith("<7>asyncio:")]
    assert got == ["<3>pyroute2: a real pyroute2 error", "<7>grouptun.data.netconfig: ours"]


def test_fatal_lines_are_errors_in_the_journal(tmp_path):
    from grouptun.ops.logsetup import fatal

    with open(tmp_path / "err", "w") as fh:
        st = os.fstat(fh.fileno())
        os.environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        try:
            fatal("grouptun up: keystore does not open\nsecond line", fh)
        finally:
            del os.environ["JOURNAL_STREAM"]
    plain = io.StringIO()
    fatal("grouptun up: keystore does not open", plain)
    assert (tmp_path / "err").read_text() == "<3>grouptun up: keystore does not open\\nsecond line\n"
    assert plain.getvalue() == "grouptun up: keystore does not open\n"
