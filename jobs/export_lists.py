"""spark-submit entry point: Export tokenised, signed risk lists.

    spark-submit jobs/export_lists.py --input IN --output OUT --ds YYYY-MM-DD [--conf FILE]
"""

import sys
from pathlib import Path

# spark-submit runs this file as a script: make the repo importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs._common import stage_main  # noqa: E402

# The pipeline stages this job runs (tests/test_dags.py checks the jobs cover them all, in order).
STAGES = ["export"]

if __name__ == "__main__":
    sys.exit(stage_main(STAGES, __doc__))
