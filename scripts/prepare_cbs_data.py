"""Rebuild the CBS extracts shipped in ``engine/data/cbs/`` from the CBS files they come from.

The synthetic Netherlands needs a few CBS figures, copied into the package (CC BY 4.0; the
files, their CBS tables and where they were taken from are in ``engine/data/SOURCES.md``).
This script documents exactly how they were derived; run it only when the sources change,
with ``--source`` a folder holding ``data/gemeenten_2019_basis.csv``,
``data/cbs_bijstand_gemeenten_2015_2017.csv``, ``data/kwb_2017_gemeenten.csv`` and
``data/kwb_2017_wijken.csv.gz``:

    python scripts/prepare_cbs_data.py --source FOLDER

Outputs
- ``engine/data/cbs/municipalities_2017.csv``: the 388 municipalities of 2017 with name,
  province, inhabitants and households (1 Jan 2017), urbanity (STED), and persons with
  bijstand in 2015 and 2017 (CBS 83450NED / 84066NED, age 15 to AOW).
- ``engine/data/cbs/wijken_2017.csv.gz``: the 3,070 wijken of 2017 with households and the
  household-type, age and migration shares used by the generator.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# 2017 municipalities that no longer exist in the 2019 list (merged in 2018/2019);
# their province in 2017 (DERIVED here from the public CBS municipal reorganisations).
PROVINCE_OF_MERGED_2017 = {
    "Groningen": "GM0005 GM0007 GM0009 GM0015 GM0017 GM0018 GM0022 GM0025 GM0040 "
    "GM0048 GM0053 GM0056 GM1651 GM1663 GM1987",
    "Friesland": "GM0058 GM0063 GM0070 GM0079 GM0081 GM0140 GM1722 GM1908",
    "Gelderland": "GM0196 GM0236 GM0304 GM0733",
    "Noord-Holland": "GM0393",
    "Zuid-Holland": "GM0545 GM0576 GM0584 GM0585 GM0588 GM0611 GM0617 GM0689 GM0707 GM1927",
    "Utrecht": "GM0620",
    "Noord-Brabant": "GM0738 GM0870 GM0874",
    "Limburg": "GM0881 GM0951 GM0962",
}

WIJK_COLUMNS = [
    "WK_CODE", "WK_NAAM", "GM_CODE", "STED", "AANTAL_HH", "P_EENP_HH", "P_HH_Z_K",
    "P_HH_M_K", "P_15_24_JR", "P_25_44_JR", "P_45_64_JR", "P_65_EO_JR", "P_WEST_AL",
    "P_N_W_AL", "P_MAROKKO", "P_ANT_ARU", "P_SURINAM", "P_TURKIJE", "P_OVER_NW",
]


def _rows(path: Path) -> list[dict[str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="folder with data/ holding the CBS files")
    args = parser.parse_args()
    data = args.source / "data"

    province = {r["gm_code"]: r["provincie_naam"] for r in _rows(data / "gemeenten_2019_basis.csv")}
    for name, codes in PROVINCE_OF_MERGED_2017.items():
        for code in codes.split():
            province[code] = name

    recipients: dict[tuple[int, str], str] = {}
    for r in _rows(data / "cbs_bijstand_gemeenten_2015_2017.csv"):
        if r["regio_type"] == "GM" and r["leeftijd_code"] == "20150":
            recipients[(int(r["jaar"]), r["regio_code"])] = r["bijstandsontvangers"]

    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["code", "name", "province", "inhabitants", "households", "urbanity",
                "recipients_2015", "recipients_2017"])
    for r in _rows(data / "kwb_2017_gemeenten.csv"):
        code = r["GM_CODE"]
        w.writerow([code, r["GM_NAAM"], province[code], r["AANT_INW"], r["AANTAL_HH"], r["STED"],
                    recipients.get((2015, code), ""), recipients[(2017, code)]])
    (ROOT / "engine/data/cbs/municipalities_2017.csv").write_text(out.getvalue(), encoding="utf-8")

    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(WIJK_COLUMNS)
    for r in _rows(data / "kwb_2017_wijken.csv.gz"):
        w.writerow([r[c] for c in WIJK_COLUMNS])
    with gzip.GzipFile(ROOT / "engine/data/cbs/wijken_2017.csv.gz", "wb", mtime=0) as fh:
        fh.write(out.getvalue().encode("utf-8"))


if __name__ == "__main__":
    main()
