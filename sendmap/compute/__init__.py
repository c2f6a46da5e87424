"""Per-block compute, as workers run it (in the spirit of LiberTEM's UDFs): picklable callables, ``load(item)`` →
frames of one block and ``process(loaded)`` → that block's results, apart from how the blocks are scheduled
(:func:`sendmap.engine.execute.run_blocks`) and from what the stage does with the results (:mod:`sendmap.stages`)."""
