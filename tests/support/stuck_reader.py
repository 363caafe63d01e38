"""A storage read that cannot finish, for the tests of the scrape deadline.

Every real cause we could produce (a FIFO, a socket, a file under a lease) is now refused
without blocking, and a hung network file system cannot be mounted in a test: so while a
file ``<name>.hold`` exists next to a storage file whose name contains ``stuck``, reading
that storage file waits. Loaded as a gunicorn config file (``--config``; it sets no
setting) or run before the standalone exporter's ``main``; it also shortens the read
deadline to ``DEADLINE`` seconds (``STUCK_READER_DEADLINE``) so that the tests do not wait
ten."""
import os
import time

from gunicorn_prometheus_exporter import collector
from gunicorn_prometheus_exporter.storage.reader import FileReader

DEADLINE = 1.5
collector.READ_DEADLINE = float(os.environ.get("STUCK_READER_DEADLINE", DEADLINE))
_read = FileReader.read
#: a file a scrape's read creates as it starts (before it takes the read lock), for a test
#: that must know a scrape is waiting
STARTED = os.environ.get("STUCK_READER_STARTED")
_read_once = collector.DirectoryCollector._read_once


def _read_or_hang(self, *args, **kwargs):
    if "stuck" in os.path.basename(self.path):
        while os.path.exists(self.path + ".hold"):
            time.sleep(0.05)
    return _read(self, *args, **kwargs)


FileReader.read = _read_or_hang


def _read_once_marked(self):
    if STARTED:
        open(STARTED, "a").close()
    return _read_once(self)


collector.DirectoryCollector._read_once = _read_once_marked
