"""``python -m recbole_pmtrec.federated --config properties/federated/ml100k.yaml``: a run on Flower (launcher)."""

import sys

from recbole_pmtrec.federated.launcher import main

sys.exit(main())
