"""CPU seconds per process group (faastwist/providers/cpusample.py): parsed from
``/proc/PID/stat`` lines, summed per group, on a /proc tree a test writes and on the
real one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faastwist.providers.cpusample import CLOCK_TICKS, group_cpu_seconds, parse_stat


def stat_line(pid: int, comm: str, group: int, utime: int, stime: int, cutime: int,
              cstime: int) -> str:
    """pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    utime stime cutime cstime ..."""
    return (f"{pid} ({comm}) S 1 {group} {group} 0 -1 4194560 100 0 0 0 {utime} {stime} "
            f"{cutime} {cstime} 20 0 1 0 12345 1000000 200 18446744073709551615\n")


def test_a_stat_line_gives_its_group_and_all_four_cpu_times() -> None:
    line = stat_line(42, "python3", 40, 100, 50, 20, 10)
    assert parse_stat(line) == (40, 180 / CLOCK_TICKS)


def test_a_command_name_with_spaces_and_brackets_is_skipped_over() -> None:
    """A function names its own process: ``a) S 1 666`` must not be read as fields."""
    line = stat_line(42, "evil) S 1 666 (x", 40, 1, 2, 3, 4)
    assert parse_stat(line) == (40, 10 / CLOCK_TICKS)


@pytest.mark.parametrize("text", [
    "",                                     # not a stat line
    "42 (python3",                          # no closing bracket
    " ".join(str(n) for n in range(1, 30)),  # no brackets at all, however many fields
    "42 (python3) S 1 40 40 0 -1 4194560",  # cut short: no CPU fields
    stat_line(42, "p", 40, 1, 2, 3, 4).replace(" 40 40 ", " x 40 "),  # group not a number
    stat_line(42, "p", 40, 1, 2, 3, 4).replace(" 1 2 3 4 ", " 1 2 z 4 "),
])
def test_what_is_not_a_stat_line_is_none(text: str) -> None:
    assert parse_stat(text) is None


def test_a_line_with_exactly_the_cpu_fields_is_read() -> None:
    shortest = "7 (p) S 1 5 5 0 -1 0 0 0 0 0 1 1 1 1"
    assert parse_stat(shortest) == (5, 4 / CLOCK_TICKS)
    assert parse_stat(shortest[:-2]) is None


def fake_proc(tmp_path: Path, stats: dict[str, str]) -> str:
    for name, text in stats.items():
        folder = tmp_path / name
        folder.mkdir()
        if text:
            (folder / "stat").write_text(text)
    return str(tmp_path)


def test_cpu_is_summed_per_wanted_group_over_every_process(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {
        "100": stat_line(100, "watchdog", 100, 10, 10, 0, 0),
        "101": stat_line(101, "fprocess", 100, 30, 0, 0, 0),
        "200": stat_line(200, "other", 200, 99, 0, 0, 0),
        "300": stat_line(300, "third", 300, 5, 0, 0, 0),
        "self": stat_line(1, "init", 100, 1000, 0, 0, 0),   # not a pid folder
        "400": "",                                          # gone meanwhile: no stat
        "401": "garbage",
    })
    seconds = group_cpu_seconds([100, 300, 999], proc)
    assert seconds == {100: 50 / CLOCK_TICKS, 300: 5 / CLOCK_TICKS}


def test_no_group_asked_or_no_proc_gives_nothing(tmp_path: Path) -> None:
    assert group_cpu_seconds([], "/proc") == {}
    assert group_cpu_seconds([1], str(tmp_path / "absent")) == {}


def test_the_default_is_the_real_proc() -> None:
    """This test's own process group (pytest has used CPU) is found in /proc."""
    assert group_cpu_seconds([os.getpgrp()]).get(os.getpgrp(), 0.0) > 0.0


@pytest.mark.process
def test_a_real_busy_group_is_measured() -> None:
    """Measured on this machine's /proc: a child in a group of its own that spins about
    0.3 s of CPU is seen with at least 0.2 s and at most the wall time it ran."""
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import time\nend = time.process_time() + 0.3\n"
         "while time.process_time() < end: pass\nimport sys; sys.stdout.write('done\\n')\n"
         "sys.stdout.flush(); time.sleep(60)"],
        stdout=subprocess.PIPE, start_new_session=True)
    try:
        started = time.monotonic()
        assert child.stdout is not None and child.stdout.readline() == b"done\n"
        ran = time.monotonic() - started
        seconds = group_cpu_seconds([child.pid])
        assert set(seconds) == {child.pid}
        assert 0.2 <= seconds[child.pid] <= ran + 0.1
    finally:
        child.kill()
        child.wait(timeout=10)
