"""The Flask example with ``PROPAGATE_EXCEPTIONS``: Flask sends ``got_request_exception``
and then re-raises to gunicorn, the case where a failure could be counted twice."""
from app import app

app.config["PROPAGATE_EXCEPTIONS"] = True
