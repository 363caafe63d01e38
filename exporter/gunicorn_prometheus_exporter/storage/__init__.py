"""Storage: the multiprocess directory and its identities (``directory``), one process's
writable file (``mmap_file``), an incremental reader (``reader``), a process's set of
files (``store``), and the native histograms' bucket layout, entries and merge
(``native``)."""
