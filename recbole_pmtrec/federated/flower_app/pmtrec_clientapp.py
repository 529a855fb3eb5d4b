"""The app's ClientApp component: a name Flower can check without importing torch (the code: client_app.py)."""

from recbole_pmtrec.federated.flower_app.client_app import app

__all__ = ["app"]
