"""Who owns a listening socket (faastwist/providers/sockets.py): a replica is ready only
when its own process group holds the listener on its port, told by /proc: on a tree
the test writes, and on the real one."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from faastwist.providers.sockets import LISTEN, group_pids, listening_inodes, owns_listener

HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   "
          "uid  timeout inode\n")


def row(local: str, state: str, inode: int) -> str:
    return (f"   0: {local} 00000000:0000 {state} 00000000:00000000 00:00000000 00000000  "
            f"   0        0 {inode} 1 0000000000000000 100 0 0 10 0\n")


def tables(proc: Path, tcp: list[str] | None, tcp6: list[str] | None = None) -> None:
    (proc / "net").mkdir(parents=True, exist_ok=True)
    if tcp is not None:
        (proc / "net" / "tcp").write_text(HEADER + "".join(tcp))
    if tcp6 is not None:
        (proc / "net" / "tcp6").write_text(HEADER + "".join(tcp6))


def member(proc: Path, pid: int, group: int, sockets: list[int], state: str = "S") -> None:
    folder = proc / str(pid)
    (folder / "fd").mkdir(parents=True)
    (folder / "stat").write_text(f"{pid} (name) with) spaces) {state} 1 {group} {group} 0 -1\n")
    (folder / "fd" / "0").symlink_to("/dev/null")
    for number, inode in enumerate(sockets, 3):
        (folder / "fd" / str(number)).symlink_to(f"socket:[{inode}]")


def test_listening_sockets_on_the_port_are_found_in_both_tables(tmp_path: Path) -> None:
    assert LISTEN == "0A"
    tables(tmp_path, [row("0100007F:1F90", "0A", 111), row("00000000:1F90", "0A", 112),
                      row("0100007F:1F90", "01", 113),        # established, not listening
                      row("0100007F:1F91", "0A", 114),        # another port
                      "   9: short line\n"],
           [row("00000000000000000000000001000000:1F90", "0A", 115)])
    assert listening_inodes(8080, tmp_path) == {111, 112, 115}
    assert listening_inodes(8081, tmp_path) == {114}
    assert listening_inodes(9999, tmp_path) == set()


def test_one_table_is_enough_and_none_means_proc_cannot_tell(tmp_path: Path) -> None:
    tables(tmp_path, None, [row("00000000000000000000000000000000:0050", "0A", 7)])
    assert listening_inodes(80, tmp_path) == {7}
    assert owns_listener(1, 80, tmp_path / "nothing") is None
    assert listening_inodes(80, tmp_path / "nothing") is None


def test_the_groups_living_members_are_listed(tmp_path: Path) -> None:
    member(tmp_path, 10, 10, [])
    member(tmp_path, 11, 10, [])
    member(tmp_path, 12, 10, [], state="Z")      # a zombie holds nothing
    member(tmp_path, 20, 20, [])
    (tmp_path / "30").mkdir()                    # gone meanwhile: no stat
    (tmp_path / "31").mkdir()
    (tmp_path / "31" / "stat").write_text("garbage")
    (tmp_path / "self").mkdir()
    assert sorted(group_pids(10, tmp_path)) == [10, 11]
    assert group_pids(20, tmp_path) == [20]
    assert group_pids(99, tmp_path) == []


def test_the_listener_is_owned_only_by_the_group_holding_its_inode(tmp_path: Path) -> None:
    tables(tmp_path, [row("0100007F:1F90", "0A", 500)])
    member(tmp_path, 10, 10, [400])              # the replica: another socket only
    member(tmp_path, 11, 10, [])
    member(tmp_path, 20, 20, [500])              # someone else squats the port
    assert owns_listener(10, 8080, tmp_path) is False
    assert owns_listener(20, 8080, tmp_path) is True
    member(tmp_path, 12, 10, [401, 500])         # the replica's fork takes it
    assert owns_listener(10, 8080, tmp_path) is True
    assert owns_listener(10, 8081, tmp_path) is False   # nothing listens there


def test_an_unreadable_fd_folder_or_link_is_passed_over(tmp_path: Path) -> None:
    tables(tmp_path, [row("0100007F:1F90", "0A", 500)])
    member(tmp_path, 10, 10, [])
    (tmp_path / "10" / "fd" / "0").unlink()
    (tmp_path / "10" / "fd" / "0").mkdir()       # not a link: readlink fails
    member(tmp_path, 11, 10, [])
    for entry in (tmp_path / "11" / "fd").iterdir():
        entry.unlink()
    (tmp_path / "11" / "fd").rmdir()             # gone: listdir fails
    member(tmp_path, 12, 10, [500])
    assert owns_listener(10, 8080, tmp_path) is True


def test_the_real_proc_tells_who_listens() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert listening_inodes(port) == {os.fstat(listener.fileno()).st_ino}
        assert os.getpid() in group_pids(os.getpgrp())
        assert owns_listener(os.getpgrp(), port) is True
        assert owns_listener(os.getpgrp() + 1_000_000, port) is False
    assert owns_listener(os.getpgrp(), port) is False


def test_an_unreadable_fd_does_not_hide_the_next_one_of_the_same_process(
        tmp_path: Path) -> None:
    tables(tmp_path, [row("0100007F:1F90", "0A", 500)])
    member(tmp_path, 10, 10, [])
    fd = tmp_path / "10" / "fd"
    for number in range(20, 40):                 # entries readlink cannot read
        (fd / str(number)).mkdir()
    # the socket at a name the directory lists after an unreadable entry
    for number in range(40, 80):
        (fd / str(number)).symlink_to("socket:[500]")
        listed = os.listdir(fd)
        if listed.index(str(number)) > min(listed.index(str(n)) for n in range(20, 40)):
            break
        (fd / str(number)).unlink()
    else:
        raise AssertionError(f"no name lists after an unreadable entry: {os.listdir(fd)}")
    assert owns_listener(10, 8080, tmp_path) is True


def test_the_shortest_row_the_kernel_could_write_is_read(tmp_path: Path) -> None:
    """Ten fields, the inode last: read; nine: passed over."""
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "tcp").write_text(
        HEADER + "0: 0100007F:1F90 00000000:0000 0A 0:0 0:0 0 0 0 321\n"
        "1: 0100007F:1F90 00000000:0000 0A 0:0 0:0 0 0 0\n")
    assert listening_inodes(8080, tmp_path) == {321}
