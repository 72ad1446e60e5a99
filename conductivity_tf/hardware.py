"""What a strategy runs on: ``Hardware``, made by ``strategies.make_strategy`` (and ``ipu.make_strategy``)."""

from dataclasses import dataclass


@dataclass
class Hardware:
    strategy: object  # the tf.distribute strategy (IPUStrategy / PopDistStrategy on IPUs)
    kind: str  # cpu, gpu or ipu
    replicas: int  # replicas in sync (on IPUs: model replicas, each of pipeline_stages IPUs rounded up)
    description: str  # one line for the log
    worker: int = 0  # this process's index among the workers; 0 is the chief, which writes the outputs
    instances: int = 1  # processes that feed the replicas, each its own share of the data (IPU PopDist instances)
    ipus: int = 0  # IPUs attached (0 elsewhere)

    @property
    def is_chief(self):
        return self.worker == 0
