"""Benchmarks: ``python -m conductivity_tf.benchmark SUITE [--quick] [--csv OUT]``.

``common`` (machine, tables, CSVs, timing) <- ``solver``, ``surrogate``, ``training`` (one module per suite) <-
``cli``.

Every suite measures the things it compares side by side, in one run, on the same inputs, and prints
its ratios last. Rows go to a Markdown table on stdout and, with ``--csv``, to a CSV file whose rows
carry a description of the machine, so that CSVs from different machines can be compared.

Suites:
  solver     our conduction solver against TauFactor (CPU) and PoreSpy ``tortuosity_fd`` (anchors from
             the ``bench`` extra; a missing anchor is skipped, saying so)
  input      augmented input batches against the default model's training step; dataset build speed with
             1 and 2 worker processes
  surrogate  batched CNN inference against the solver on the same 64^3 volumes
  train      training throughput, latency, memory and FLOP utilisation per configuration of
             configs/benchmarks.yaml (CPU, GPUs, IPUs; unavailable hardware is listed as skipped), then
             our training step against a bare model.fit and gradient accumulation against one batch
  compare    the train suite's plots drawn from CSVs taken on several machines
"""

from conductivity_tf.benchmark.common import machine_description, markdown_table, read_csv_rows, write_csv
from conductivity_tf.benchmark.solver import porespy_relative_conductivity, taufactor_relative_conductivity
from conductivity_tf.benchmark.training import load_benchmarks, run_training_config

__all__ = ["load_benchmarks", "machine_description", "markdown_table", "porespy_relative_conductivity",
           "read_csv_rows", "run_training_config", "taufactor_relative_conductivity", "write_csv"]
