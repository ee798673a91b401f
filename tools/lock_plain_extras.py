"""Give every locked `name[extras]==version` line a plain `name==version` twin with the same hashes.

pip before 24 (the pip that `python3 -m venv` brings with Python 3.11) treats `typepy` and `typepy[datetime]` as two
requirements in hash-checking mode: a lock that pins only one of them fails with "all requirements must have their
versions pinned with ==" when a dependency asks for the other. pip-tools writes one line per package, so tools/lock
adds the twins. Idempotent.

    python tools/lock_plain_extras.py requirements.lock requirements-dev.lock
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

BLOCK = re.compile(r"^([A-Za-z0-9_.\-]+)\[[^\]]*\]==(\S+)((?: \\\n\s+--hash=sha256:[0-9a-f]{64})+)", re.M)
MARK = "# plain twins of the lines with extras (pip < 24 needs both in hash-checking mode; tools/lock_plain_extras.py)"


def add_twins(text: str) -> str:
    text = text.split("\n" + MARK + "\n")[0].rstrip("\n") + "\n"
    plain = {m.group(1).lower() for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==", text, re.M)}
    twins = [f"{name}=={version}{hashes}" for name, version, hashes in BLOCK.findall(text) if name.lower() not in plain]
    return text if not twins else text + "\n" + MARK + "\n" + "\n".join(twins) + "\n"


if __name__ == "__main__":
    for name in sys.argv[1:]:
        path = Path(name)
        path.write_text(add_twins(path.read_text()))
