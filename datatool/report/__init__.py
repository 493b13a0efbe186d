"""``datatool report``: the whole study in one file, from the catalogue and the stored results.

The steps, one module each: :mod:`.sections` (the dataclasses a report is made of),
:mod:`.gather` (the catalogue -> the sections), :mod:`.stored` (the results commands saved:
``agreement.json``, ``score.json`` and their figures), :mod:`.render` (the Jinja2 templates in
``templates/`` -> HTML or Markdown), :mod:`.chromium` (HTML -> PDF by headless Chromium) and
:mod:`.study` (the service: gather, render, write).
"""
