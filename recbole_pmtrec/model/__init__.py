"""The plugin's RecBole models. ``MODELS`` maps a model name (as given to ``--model``) to its class."""

from recbole_pmtrec.model.cgc import CGC
from recbole_pmtrec.model.mmoe import MMoE
from recbole_pmtrec.model.ple import PLE
from recbole_pmtrec.model.pmtrec import PMTRec
from recbole_pmtrec.model.sharedbottom import SharedBottom

MODELS: dict[str, type] = {
    "PMTRec": PMTRec,
    "SharedBottom": SharedBottom,
    "MMoE": MMoE,
    "CGC": CGC,
    "PLE": PLE,
}
