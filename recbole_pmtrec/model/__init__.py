"""The plugin's RecBole models. ``MODELS`` maps a model name (as given to ``--model``) to its class."""

from recbole_pmtrec.model.pmtrec import PMTRec

MODELS: dict[str, type] = {"PMTRec": PMTRec}
