"""The metrics process's tables of keys and series stay bounded while the application's
label values churn through real gunicorn workers, and every scrape stays exact
(collector.py ``outgrown``; docs/architecture.md, "A scrape's path")."""
from pathlib import Path

import pytest

from gunicorn_prometheus_exporter import speedups
from support.scrape import Scrape

TESTS = str(Path(__file__).resolve().parent)
ITEMS = 1000
RESETS = "gunicorn_exporter_table_resets_total"
SAID = "held far more than its files need"


def items(s: Scrape) -> dict:
    return {dict(labels)["item"]: value for labels, value in s.series("app_batch").items()}


@pytest.mark.parametrize("switch", ["0", "1"], ids=["C", "Python"])
def test_churning_app_labels_are_served_exactly_while_the_tables_start_afresh(
        start_gunicorn, switch):
    """Each round a worker sets 1,000 values of its live gauge under labels no round had
    before, then exits (its second request, max requests): its live gauge file is removed
    and the next worker writes another. Every round the metrics process serves exactly the
    live worker's items and the batch count, in every scrape; the tables it keeps outgrow
    the files after a few rounds and start afresh (a cold read), counted, said once. With
    the C speedups and without them (``GUNICORN_PROMETHEUS_NO_SPEEDUPS``)."""
    g = start_gunicorn(app="apps.churning_labels:app", workers=1,
                       env={speedups.SWITCH_ENV: switch},
                       extra_args=["--chdir", TESTS, "--max-requests", "2",
                                   "--max-requests-jitter", "0"]).wait_ready(workers=1)
    for round_ in range(1, 8):
        assert g.request(f"/batch?r={round_}&n={ITEMS}")[0] == 200
        want = {f"{round_}-{j}": float(j) for j in range(ITEMS)}

        def exact(s: Scrape) -> bool:
            return items(s) == want and s.value("app_batches_total") == 2 * round_ - 1

        g.scrape_until(exact, timeout=20, message=f"exactly the items of round {round_}")
        for _ in range(2):  # the files are unchanged: a fresh start among these is exact too
            assert exact(g.scrape())
        assert g.request(f"/batch?r={round_}&n=0")[0] == 200  # the worker's last request
    assert g.scrape().value(RESETS) >= 1
    assert g.output().count(SAID) == 1
