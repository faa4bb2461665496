"""``hydra/sweeper=relgen_optuna``: Hydra's Optuna sweeper with its study in the sweep folder
(``<sweep>/optuna.db``), resumed by running the same sweep again, and trials pruned from the
validation losses they report (``hydra.sweeper.pruner``). Needs ``pip install "relgen[search]"``;
without it this module defines nothing. The loop is :func:`relgen.sweep.optuna_search`.
"""

from dataclasses import dataclass
from typing import Any, Optional

try:
    from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # relgen[search] is not installed
    OptunaSweeper = None

if OptunaSweeper is not None:
    from hydra.core.config_store import ConfigStore

    @dataclass
    class RelgenOptunaSweeperConf(OptunaSweeperConf):
        _target_: str = "hydra_plugins.relgen_sweeper.RelgenOptunaSweeper"
        storage: Optional[Any] = "sqlite:///${hydra.sweep.dir}/optuna.db"
        study_name: Optional[str] = "relgen"
        n_jobs: int = 1
        # e.g. {_target_: optuna.pruners.MedianPruner, n_startup_trials: 5, n_warmup_steps: 100};
        # null: no pruning
        pruner: Optional[Any] = None

    class RelgenOptunaSweeper(OptunaSweeper):
        def __init__(self, sampler, direction, storage, study_name, n_trials, n_jobs, search_space,
                     custom_search_space, params, pruner=None) -> None:
            super().__init__(sampler, direction, storage, study_name, n_trials, n_jobs, search_space,
                             custom_search_space, params)
            self.pruner = pruner

        def sweep(self, arguments):
            from relgen.sweep import optuna_search

            return optuna_search(self.sweeper, self.pruner, arguments)

    ConfigStore.instance().store(group="hydra/sweeper", name="relgen_optuna", node=RelgenOptunaSweeperConf,
                                 provider="relgen")


def ensure_registered() -> None:
    """Make the sweeper known to Hydra also where its plugin scan misses this folder.

    Hydra finds plugins by listing the ``hydra_plugins`` folders on disk; an editable install
    (``pip install -e``) serves this package through an import hook that listing does not see.
    Importing this module has already stored the config (``hydra/sweeper=relgen_optuna``).
    """
    if OptunaSweeper is None:
        return
    from hydra.core.plugins import Plugins

    name = f"{RelgenOptunaSweeper.__module__}.{RelgenOptunaSweeper.__name__}"
    Plugins.instance().class_name_to_class.setdefault(name, RelgenOptunaSweeper)
