"""Storage: the multiprocess directory and its identities (``directory``), one process's
writable file (``mmap_file``), an incremental reader (``reader``) and a process's set of
files (``store``)."""
