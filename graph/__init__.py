"""ringfence: graph-based fraud ring detection for micropayment platforms.

The library. Entry points in ``jobs/`` and the ``ringfence`` CLI build a
SparkSession and pass it in; nothing in here creates one.
"""

__version__ = "0.1.0"
