"""tuner: find the best denoising autoencoder for a set of images.

The notebook API, in the order the data flows::

    import tuner
    spec = tuner.load_spec("search_spaces/quickstart.yaml")
    result = tuner.tune(spec, storage="runs")         # Ray Tune + Optuna TPE + ASHA
    model = tuner.load_model(result.best_dir)        # a torch.nn.Module
    clean = tuner.denoise(model, noisy)              # (B, C, H, W) in [0, 1]

``tuner.fit`` trains one configuration without Ray (what every trial runs).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tuner.denoise import denoise, load_model
from tuner.config import TrialConfig
from tuner.spec import ExperimentSpec, SpecError, load_spec
from tuner.metrics import METRIC, MODE
from tuner.train import fit

__all__ = ["ExperimentSpec", "METRIC", "MODE", "SpecError", "TrialConfig", "denoise", "fit",
           "load_model", "load_spec", "tune"]


def tune(spec: ExperimentSpec | str | Path, *, storage: str = "./runs", address: str | None = None,
         resume: bool = False, report: bool = True, verbose: int = 1, **overrides: Any):
    """Run a search from a spec (or a spec file) and export its best model.

    Args:
        spec: an :class:`ExperimentSpec` or the path of a YAML spec.
        storage, address, resume, verbose: as ``tuner tune``'s flags.
        report: write ``<run>/report/`` at the end.
        **overrides: ``name``, ``seed``, ``num_samples``, ``max_epochs``, ``time_budget_s``, ``cpus_per_trial``,
            ``gpus_per_trial``, ``max_concurrent``, ``max_failures``, ``study_storage``, ``prior_studies``.

    Returns:
        :class:`tuner.search.SearchResult` (``best_dir``, ``best_config``, ``metrics``, ``results``).
    """
    from tuner.search import run_search

    if not isinstance(spec, ExperimentSpec):
        spec = load_spec(spec)
    result = run_search(spec.with_overrides(**overrides), storage=storage, address=address,
                        resume=resume, verbose=verbose)
    if report:
        from tuner.report import write_report

        write_report(result.run_dir)
    return result
