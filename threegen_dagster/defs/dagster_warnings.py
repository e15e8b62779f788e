"""The one place the project filters a Dagster warning: only warnings Dagster raises about its own
internal calls, which no change to this project's code can avoid. Imported by ``definitions.py``, so
it holds in every process that loads the code location (``dg launch``, ``dagster dev``'s code
server, the CLI). Everything else Dagster warns about is fixed at its cause instead (the
``sn17_submission_sensor`` names its job, the ``dagster.yaml`` lives in the package)."""

import warnings

import dagster as dg

# `dg launch --assets ...` / `dagster asset materialize --select ...`: Dagster's selection parser passes
# include_sources=... itself to AssetSelection.all / groups / tag / kind (for `*`, `group:`, `tag:`,
# `kind:`, `not`), and warns that this parameter is in beta. The project never passes it.
warnings.filterwarnings("ignore", category=dg.BetaWarning,
                        message=r"Parameter `include_sources` of function `AssetSelection\.")
