"""buig: the Dutch bijstand (BUIG) distribution model on household microdata.

The steps of the main job as functions, importable from ``engine`` (each module is
imported on first use, so ``import engine`` stays light):

==========================  ===================================================================
``generate``                a synthetic Netherlands into a folder (:mod:`engine.world.synth`)
``read_population``         read and validate a population folder (:mod:`engine.model.population`)
``fit_model``               estimate the volume and price components (:mod:`engine.model.fitted`);
``fit_to_folder``           the same, and write the files the bootstrap reads
``predict_costs``           objective cost per municipality and household type (``engine.model.predict.predict``)
``distribute``              a regime's budgets, vangnet and redistribution effects (:mod:`engine.app.pipeline`)
``Settings``,               Monte Carlo bands on every budget, and the flags of surpluses the
``run_bootstrap``,          model does not explain (:mod:`engine.uncertainty.bootstrap`)
``bands_table``,
``flags_table``
``rob_cap``                 the Rob cap at level kappa (:mod:`engine.rules.cap`)
``budget_table``,           the tables ``buig`` writes, as pyarrow tables: budgets.parquet,
``capped_table``,           capped_budgets.parquet (and the Capped result), municipal_costs.parquet,
``municipal_costs_table``,  rekentool.parquet (``bands_table`` and ``flags_table`` above)
``rekentool_table``
``to_pandas``,              any of them as a pandas DataFrame with labelled categories and the
``labelled``                table's metadata in ``attrs`` (:mod:`engine.model.frames`)
``write_report``            ``report.html`` of a run folder (:mod:`engine.app.report.page`)
``write_rekentool_workbook`` ``rekentool.xlsx`` (:mod:`engine.app.workbook`)
``load_scenario``,          the whole job from a scenario (``engine.app.pipeline.run``), as ``buig run``
``run_scenario``
``load_sweep``,             sensitivity sweeps (:mod:`engine.app.sweep`), as ``buig sweep``
``run_sweep``
==========================  ===================================================================

``engine.model.predict`` and ``engine.app.pipeline`` are modules, so their main functions are exported
as ``predict_costs`` and ``run_scenario``.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {                        # name -> (module, attribute)
    "generate": ("engine.world.synth", "generate"),
    "read_population": ("engine.model.population", "read_population"),
    "fit_model": ("engine.model.fitted", "fit_model"),
    "fit_to_folder": ("engine.model.fitted", "fit_to_folder"),
    "read_fit": ("engine.model.fitted", "read_fit"),
    "predict_costs": ("engine.model.predict", "predict"),
    "distribute": ("engine.app.pipeline", "distribute"),
    "Settings": ("engine.uncertainty.settings", "Settings"),
    "run_bootstrap": ("engine.uncertainty.bootstrap", "run_bootstrap"),
    "bands_table": ("engine.uncertainty.summaries", "bands_table"),
    "flags_table": ("engine.uncertainty.summaries", "flags_table"),
    "rob_cap": ("engine.rules.cap", "rob_cap"),
    "budget_table": ("engine.app.budget_files", "budget_table"),
    "capped_table": ("engine.rules.cap", "capped_table"),
    "municipal_costs_table": ("engine.model.predict", "municipal_costs_table"),
    "rekentool_table": ("engine.model.predict", "rekentool_table"),
    "to_pandas": ("engine.model.frames", "to_pandas"),
    "labelled": ("engine.model.frames", "labelled"),
    "write_rekentool_workbook": ("engine.app.workbook", "write_rekentool_workbook"),
    "write_report": ("engine.app.report.page", "write_report"),
    "Scenario": ("engine.app.scenario", "Scenario"),
    "load_scenario": ("engine.app.scenario", "load_scenario"),
    "run_scenario": ("engine.app.pipeline", "run"),
    "load_sweep": ("engine.app.sweep", "load_sweep"),
    "run_sweep": ("engine.app.sweep", "run_sweep"),
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        module, attr = _API[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
