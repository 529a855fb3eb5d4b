"""The app's ServerApp component: a name Flower can check without importing torch (the code: server_app.py)."""

from recbole_pmtrec.federated.flower_app.server_app import app

__all__ = ["app"]
