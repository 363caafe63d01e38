"""Framework adapters: the route template a framework matched and the exceptions it turned
into a response itself, handed to the worker's recorder through the request's WSGI environ
(or ASGI scope) under two keys.

Each adapter imports its framework only when used; this package imports none, and neither
do the workers. One line in the application is the whole set-up where a framework needs it:

* Flask: ``gunicorn_prometheus_exporter.frameworks.flask.instrument(app)``
* Django: ``"gunicorn_prometheus_exporter.frameworks.django.PrometheusMiddleware"`` first
  in ``MIDDLEWARE``
* Pyramid: ``config.include("gunicorn_prometheus_exporter.frameworks.pyramid")``
* Starlette / FastAPI: nothing: the ASGI workers read the route Starlette matched from the
  scope, and Starlette's ``ServerErrorMiddleware`` re-raises what it turned into a 500.
"""
from ..routes import ROUTE_ENVIRON_KEY, UNMATCHED

#: the class name of an exception the framework handled itself (a 500 it rendered): the
#: recorder counts it as the request's failure, once, even if the exception then also
#: reaches the server
ERROR_ENVIRON_KEY = "gunicorn_prometheus_exporter.error"

__all__ = ["ERROR_ENVIRON_KEY", "ROUTE_ENVIRON_KEY", "UNMATCHED"]
