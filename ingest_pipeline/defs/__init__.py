"""The Dagster layer: assets, checks, jobs, schedules, sensors and resources, built from the
settings by ``build.build_definitions``. Nothing outside this package, ``definitions.py`` and
``cli.py`` imports dagster (``.importlinter``).

The warnings below are silenced here, in one place, because each marks a Dagster feature this
project uses knowingly; they would only be noise in every process that loads the definitions.
"""

import warnings

import dagster as dg

# Day-long runs for ranged backfills (BackfillPolicy.multi_run) are beta.
warnings.filterwarnings("ignore", message=".*backfill_policy.*", category=dg.BetaWarning)
# Code references are beta; the time-partition freshness checks are "superseded" by freshness
# policies, which look at the last materialization of *any* hour (a backfilled old hour makes
# an asset fresh): only these checks tell whether each hour arrived.
warnings.filterwarnings("ignore", message=".*CodeReference.*", category=dg.BetaWarning)
warnings.filterwarnings("ignore", message=".*with_source_code_references.*")
warnings.filterwarnings("ignore", message=".*freshness_checks.*is superseded.*")
# Per-hour check results of ranged runs need partitioned check specs.
warnings.filterwarnings("ignore", message=".*partitions_def on an AssetCheckSpec.*")
# Silver's automation: conditions evaluated in the code server (so custom ones are seen by the
# daemon), and label windows that reach past the last partition.
warnings.filterwarnings("ignore", message=".*AutomationCondition.*", category=dg.BetaWarning)
warnings.filterwarnings("ignore", message=".*use_user_code_server.*", category=dg.BetaWarning)
warnings.filterwarnings("ignore", message=".*allow_nonexistent_upstream_partitions.*")
