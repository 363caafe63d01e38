"""The files one process writes, one per metric type (and gauge mode), all under the
identity the process claimed."""
from __future__ import annotations

from typing import Dict, Tuple

from .directory import NATIVE_MODE, db_path
from .mmap_file import MmapFile
from .native import entry_payload


class ProcessStore:
    def __init__(self, directory: str, identity: str) -> None:
        self.directory = directory
        self.identity = identity
        self._files: Dict[Tuple[str, str], MmapFile] = {}

    def file(self, typ: str, mode: str = "") -> MmapFile:
        key = (typ, mode)
        found = self._files.get(key)
        if found is None:
            payload = entry_payload if mode == NATIVE_MODE else 16
            found = MmapFile(db_path(self.directory, typ, self.identity, mode), payload)
            self._files[key] = found
        return found

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
