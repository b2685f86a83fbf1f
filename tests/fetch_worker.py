"""Subprocess worker for tests/test_devices.py: one of 2 processes downloading into one shared file.

usage: fetch_worker.py PROCESS_ID PORT URL DEST OUT.json
Writes {'path': the verified file, 'size': its bytes, 'error': None} or {'error': the PmlError message}.
"""

import json
import sys
from pathlib import Path

from pml_jax.download import download
from pml_jax.errors import PmlError
from pml_jax.hosts import process_0_first
from pml_jax.train.mesh import initialize_distributed


def main():
    process_id, port, url, dest, out = sys.argv[1:]
    initialize_distributed(f"127.0.0.1:{port}", num_processes=2, process_id=int(process_id))
    try:
        path = process_0_first(f"download {url}", lambda: download(url, Path(dest), progress=False))
        result = {"path": str(path), "size": path.stat().st_size, "error": None}
    except PmlError as e:
        result = {"error": str(e)}
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
