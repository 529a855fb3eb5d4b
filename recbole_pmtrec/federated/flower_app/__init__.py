"""The Flower App (``pyproject.toml`` here): ``server_app``, ``client_app``, the long-lived ClientApp worker."""
