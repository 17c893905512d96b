"""Write or extend a locale domain from a Python table: ``python tools/po.py DOMAIN table.py``.

The table module defines MESSAGES = {"key": ("Vietnamese", "English"), ...}. Existing entries
in the .po files are kept unless the table changes them. A convenience for developers; the .po
files are the source of truth and can be edited by hand or by translators.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parent.parent


def write(domain: str, messages: dict[str, tuple[str, str]]) -> None:
    for index, lang in enumerate(("vi", "en")):
        path = ROOT / "locales" / lang / "LC_MESSAGES" / f"{domain}.po"
        if path.exists():
            with path.open("rb") as fh:
                catalog = read_po(fh, locale=lang)
        else:
            catalog = Catalog(locale=lang, domain=domain, project="docsach", charset="utf-8",
                              copyright_holder="docsach contributors", fuzzy=False)
        catalog.fuzzy = False
        for key, texts in messages.items():
            if key in catalog:
                catalog[key].string = texts[index]   # Catalog.add keeps the old translation
            else:
                catalog.add(key, texts[index])
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as fh:
            write_po(fh, catalog, width=0, omit_header=False, sort_output=True)


if __name__ == "__main__":
    write(sys.argv[1], runpy.run_path(sys.argv[2])["MESSAGES"])
