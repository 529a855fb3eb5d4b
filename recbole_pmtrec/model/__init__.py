"""The plugin's RecBole models. ``MODELS`` maps a model name (as given to ``--model``) to its class."""

MODELS: dict[str, type] = {}
