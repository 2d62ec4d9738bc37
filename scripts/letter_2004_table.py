"""The 2004 letter's table of five distributions on a population, beside the letter's own values.

    python scripts/letter_2004_table.py --population DIR [--target t|t2]

DIR is a population folder (``buig synth --out DIR``, or ``OUT/population`` of a ``buig run``;
the default ``buig run`` world is the full scale of 7,794,075 households). Prints, per column of
the letter of 14 May 2004 (K2004, engine/data/SOURCES.md: 1 = 100% historical, 2 = objective
model 2004, 3 = model 2005 without, 4 = with the granieten voorraad, 5 = 73% model 2005 incl.
GV + 27% historical), the mean absolute redistribution effect against spending and the shares
of municipalities within 10% and 15%, over the municipalities above 40,000 inhabitants, with the
letter's values beside them; then the historical share of the mix that minimises the mean
absolute effect (the letter: 27%) and the granieten voorraad's weight (the letter: 37%).
The computation is :func:`engine.rules.redistribution.seed_table`.
"""

from __future__ import annotations

import argparse
import time

# the letter of 14 May 2004 (K2004), its table: columns 1-5
LETTER = {"mean_abs_effect_pct": (7.3, 10.6, 9.6, 7.0, 6.1),
          "within_10_pct": (73.7, 59.6, 59.6, 72.7, 78.8),
          "within_15_pct": (93.9, 71.7, 72.7, 89.9, 96.0)}
LABELS = {"mean_abs_effect_pct": "mean |effect| (%)", "within_10_pct": "within +-10% (%)",
          "within_15_pct": "within +-15% (%)"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--population", required=True, help="population folder")
    ap.add_argument("--target", choices=("t", "t2"), default="t",
                    help="spending year the models are estimated on (default t, as the letter)")
    args = ap.parse_args(argv)
    from engine.model import municipal as mm
    from engine.model.population import read_population
    from engine.rules.redistribution import seed_table

    t0 = time.perf_counter()
    pop = read_population(args.population)
    data = mm.municipal_data(pop)
    table = seed_table(data, target=args.target)
    stats = table.summary()
    keys = [k for k, _, _ in table.columns]
    print(f"{int(pop.municipalities.column('households').to_numpy().sum()):,} households; "
          f"{int(table.universe.sum())} municipalities above 40,000 inhabitants compared")
    print(f"{'':<20}" + "".join(f"{'col ' + str(i + 1):>16}" for i in range(len(keys))))
    print(f"{'':<20}" + "".join(f"{'ours / letter':>16}" for _ in keys))
    for name, label in LABELS.items():
        print(f"{label:<20}" + "".join(f"{stats[k][name]:>9.1f} / {v:<4.1f}" for k, v in zip(keys, LETTER[name])))
    for i, (_, label, _) in enumerate(table.columns):
        print(f"  {i + 1}: {label}")
    o = table.optimal
    print(f"optimal historical share {100 * o.share:.1f}% (the letter: 27%), mean |effect| there "
          f"{o.mean_abs_effect_pct:.2f}%")
    print(f"granieten voorraad's weight in model 2005 incl. GV: {100 * table.granite_share:.1f}% of the objective "
          f"cost (the letter: 37%); R2 of the models: "
          + ", ".join(f"{f.spec.name} {f.r2:.3f}" for f in table.fits))
    print(f"({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
