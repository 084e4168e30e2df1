"""The progress helper: a redrawn line with a rate and an ETA on a terminal, plain lines elsewhere."""
import io
import logging

from t2t.progress import Progress


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_on_a_terminal_the_line_is_redrawn_with_the_rate_and_eta():
    clock, out = _Clock(), _Terminal()
    with Progress(100, "@224 crop 0.9", stream=out, clock=clock) as progress:
        for _ in range(4):
            clock.now += 1.0
            progress.update(10)  # 10 images a second
    lines = out.getvalue().split("\r")[1:]
    assert lines[0] == "@224 crop 0.9: 10/100 images (10%), 10.0 images/s, eta 0:00:09"
    assert lines[3].startswith("@224 crop 0.9: 40/100 images (40%), 10.0 images/s, eta 0:00:06")
    assert out.getvalue().endswith("\n") and out.getvalue().count("\n") == 1  # one line, finished at the end


def test_elsewhere_plain_lines_every_so_often_and_at_the_end():
    clock, out = _Clock(), io.StringIO()
    with Progress(50, "labelling", stream=out, clock=clock, every_seconds=30) as progress:
        for _ in range(5):
            clock.now += 20.0
            progress.update(10)
    assert out.getvalue().splitlines() == [
        "labelling: 20/50 images (40%), 0.5 images/s, eta 0:01:00",  # 30 s after the start, then 30 s later
        "labelling: 40/50 images (80%), 0.5 images/s, eta 0:00:20",
        "labelling: 50/50 images (100%), 0.5 images/s, eta 0:00:00"]
    assert "\r" not in out.getvalue()


def test_every_n_updates_through_a_logger_and_nothing_when_disabled(caplog):
    clock = _Clock()
    with caplog.at_level(logging.INFO, logger="t2t.labels"):
        with Progress(6, "rank 0: labelling", every_updates=2, logger=logging.getLogger("t2t.labels"),
                      stream=io.StringIO(), clock=clock) as progress:
            for _ in range(3):
                clock.now += 1.0
                progress.update(2)
    assert [r.getMessage() for r in caplog.records] == [
        "rank 0: labelling: 4/6 images (67%), 2.0 images/s, eta 0:00:01",
        "rank 0: labelling: 6/6 images (100%), 2.0 images/s, eta 0:00:00"]
    out = _Terminal()
    with Progress(6, "quiet", stream=out, enabled=False) as progress:
        progress.update(6)
    assert out.getvalue() == ""
