"""The end-of-sweep report: `bilevel train -m ... hydra/callbacks=report` writes <sweep dir>/report/ once every
job has finished (Hydra calls `on_multirun_end` in the launching process, after the last job, and never for a
single run)."""

import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from bilevel_cli.errors import UserError
from bilevel_cli.report.report import write_report

log = logging.getLogger(__name__)


class ReportCallback(Callback):
    def __init__(self, paper: bool = False):
        self.paper = paper

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        try:
            print(write_report([sweep], sweep / "report", self.paper))
        except UserError as error:  # the sweep's runs are done and kept: a report that cannot be made is a warning
            log.warning(f"no report for {sweep}: {error}")
