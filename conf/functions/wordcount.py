#!/usr/bin/env python3
"""A fork-mode function: one process per request, like OpenFaaS's classic watchdog.

The request body arrives on stdin and stdout is the response body; the request's
method, path and headers are in ``Http_*`` environment variables. It counts lines,
words and bytes like ``wc``, and notes each request on stderr (the function's log).
"""

import os
import sys


def main() -> None:
    data = sys.stdin.buffer.read()
    lines = data.count(b"\n")
    words = len(data.split())
    sys.stdout.write(f"{lines} {words} {len(data)}\n")
    sys.stderr.write(f"counted {len(data)} bytes for {os.environ.get('Http_Method', '?')} "
                     f"{os.environ.get('Http_Path', '?')}\n")


if __name__ == "__main__":
    main()
