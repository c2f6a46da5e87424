"""The stages of the pipeline, one module each, in the order the data flow through them: :mod:`.input` →
:mod:`.ingest` → :mod:`.calibrate` → :mod:`.profiles` → :mod:`.peaks` → :mod:`.classify` → :mod:`.statistics` →
:mod:`.report`. Each reads the store, calls the pure science (:mod:`sendmap.science`; per block through
:mod:`sendmap.compute`) and writes the store. :mod:`.settings`, :mod:`.dose` and :mod:`.crystalline` hold what
several stages share: config → physical quantities, the dose, and the one definition of "crystalline"."""
