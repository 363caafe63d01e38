"""example/gunicorn_redis_integration.conf.py: the Flask example with Redis storage, against
a redis-server of its own on a free loopback port. The mix is exact on the instance's own
metrics server and reaches a standalone exporter that reads only Redis."""
import uuid

from frameworks.mix import FLASK, MIX, Example, require, run_mix
from support.procs import Exporter
from support.redis import RedisServer


def test_redis_example_records_the_mix_and_ships_it(tmp_path):
    require("flask", "redis")
    redis = RedisServer(tmp_path)
    port = redis.port
    env = {"REDIS_URL": f"redis://127.0.0.1:{port}/0", "REDIS_KEY_PREFIX":
           "ex" + uuid.uuid4().hex[:8], "REDIS_FLUSH_INTERVAL": "0.2",
           "REDIS_SOCKET_TIMEOUT": "1"}
    g = exporter = None
    try:
        g = Example(tmp_path, "gunicorn_redis_integration.conf.py", FLASK.module, workers=2,
                    env=env)
        g.wait_ready(workers=2)
        run_mix(g, FLASK)
        exporter = Exporter(env)
        s = exporter.scrape_until(
            lambda s: s.total("gunicorn_http_requests_total") == len(MIX),
            message="the mix in Redis")
        assert s.value("gunicorn_http_requests_total", method="GET", route="unmatched",
                       status="404") == 1
        assert s.total("gunicorn_worker_failed_requests_total") == 2
    finally:
        for proc in (exporter, g, redis):
            if proc is not None:
                proc.stop()
