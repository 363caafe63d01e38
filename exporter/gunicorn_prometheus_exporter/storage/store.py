"""The files one process writes, one per metric type (and gauge mode), all under the
identity the process claimed."""
from __future__ import annotations

from typing import Dict, Tuple

from .directory import NATIVE_MODE, db_path
from .mmap_file import MmapFile, scalar_doubles
from .native import entry_doubles


class ProcessStore:
    def __init__(self, directory: str, identity: str) -> None:
        self.directory = directory
        self.identity = identity
        self._files: Dict[Tuple[str, str], MmapFile] = {}

    def file(self, typ: str, mode: str = "") -> MmapFile:
        key = (typ, mode)
        found = self._files.get(key)
        if found is None:
            doubles_of = entry_doubles if mode == NATIVE_MODE else scalar_doubles
            found = MmapFile(db_path(self.directory, typ, self.identity, mode), doubles_of)
            self._files[key] = found
        return found

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
