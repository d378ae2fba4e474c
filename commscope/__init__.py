"""commscope: communication profiling, modelling and reporting for distributed LLM inference.

The import packages are `profiler` (records), `analysis` (computes) and `dashboards` (renders);
this package holds the version and the `commscope` command line.
"""

__version__ = "0.1.0"
