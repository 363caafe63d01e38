"""Secrets never reach gunicorn's log, even at debug level where gunicorn dumps its whole
configuration (raw_env included)."""
import pytest

SECRET = "p@ss#1/x:%s3cr3t"


def test_debug_log_masks_raw_env_and_redis_password(start_gunicorn):
    g = start_gunicorn(workers=1, env={"REDIS_PASSWORD": SECRET},
                       extra_args=["--log-level", "debug", "-e", f"API_TOKEN={SECRET}",
                                   "-e", "PLAIN=visible"])
    g.wait_ready(workers=1)
    assert g.request("/")[0] == 200
    out = g.output()
    assert "Current configuration" in out
    assert "API_TOKEN=********" in out
    assert SECRET not in out


@pytest.mark.parametrize("text,expected", [
    ("raw_env: ['A=1', 'B=two']", "raw_env: ['A=********', 'B=********']"),
    ("connecting to redis://u:hunter2@h:6379/0", "connecting to redis://u:********@h:6379/0"),
])
def test_redact(text, expected, monkeypatch):
    from gunicorn_prometheus_exporter import redact

    monkeypatch.setenv("REDIS_URL", "redis://u:hunter2@h:6379/0")
    assert redact.redact(text, ["hunter2"]) == expected


def test_a_url_password_with_raw_separators_is_masked_whole(monkeypatch):
    """The password is found by the parser the connection uses, so `@`, `#` and `/` in it
    do not cut it short (a generic URL parser reads `p` here)."""
    from gunicorn_prometheus_exporter import redact

    monkeypatch.setenv("REDIS_URL", f"redis://u:{SECRET}@h:6379/0")
    assert SECRET in redact.secret_values()
    text = redact.redact(f"AUTH failed for password {SECRET}", redact.secret_values())
    assert text == "AUTH failed for password ********"
